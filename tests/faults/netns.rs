//! The network-namespace harness: two namespaces joined by a veth pair, so
//! a test can cut the link between a server and an agent and heal it.
//!
//! It must never touch the machine's own interfaces or addresses: the pair
//! lives only inside the namespaces it creates (10.213.7.0/30, which exists
//! nowhere else), and dropping it deletes both.

use std::process::Command;

use crate::common::ip_bin;

/// Two network namespaces joined by a veth pair, deleted on drop. The /30
/// exists only inside them.
pub struct NetnsPair {
    pub server_ns: String,
    pub agent_ns: String,
}

/// The server's end of the pair, in `server_ns`.
pub const SERVER_IP: &str = "10.213.7.1";
/// The agent's end of the pair, in `agent_ns`.
const AGENT_IP: &str = "10.213.7.2";

/// Runs `ip ARGS`; the error names the command and what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let ip = ip_bin().ok_or("ip(8) not found")?;
    let out = Command::new(ip)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetnsPair {
    /// Creates both namespaces and the pair (root only: `ip netns add`
    /// needs CAP_SYS_ADMIN). The error names the `ip` command that failed;
    /// what was made before it is deleted again.
    pub fn create() -> Result<NetnsPair, String> {
        let tag = std::process::id() % 100_000;
        let pair = NetnsPair {
            server_ns: format!("mon-srv-{tag}"),
            agent_ns: format!("mon-agt-{tag}"),
        };
        let (s, a) = (pair.server_ns.as_str(), pair.agent_ns.as_str());
        let (vs, va) = (format!("mvs{tag}"), format!("mva{tag}"));
        ip(&["netns", "add", s])?;
        ip(&["netns", "add", a])?;
        ip(&["link", "add", &vs, "type", "veth", "peer", "name", &va])?;
        ip(&["link", "set", &vs, "netns", s])?;
        ip(&["link", "set", &va, "netns", a])?;
        ip(&[
            "-n",
            s,
            "addr",
            "add",
            &format!("{SERVER_IP}/30"),
            "dev",
            &vs,
        ])?;
        ip(&[
            "-n",
            a,
            "addr",
            "add",
            &format!("{AGENT_IP}/30"),
            "dev",
            &va,
        ])?;
        for (ns, dev) in [(s, vs.as_str()), (a, va.as_str())] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(pair)
    }

    fn agent_dev(&self) -> String {
        format!("mva{}", std::process::id() % 100_000)
    }

    /// Takes the agent's end of the link down (the partition) or up again.
    pub fn set_agent_link(&self, up: bool) {
        ip(&[
            "-n",
            &self.agent_ns,
            "link",
            "set",
            &self.agent_dev(),
            if up { "up" } else { "down" },
        ])
        .expect("set link");
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and so the pair.
        let _ = ip(&["netns", "del", &self.server_ns]);
        let _ = ip(&["netns", "del", &self.agent_ns]);
    }
}
