//! What every fault test starts from: a fake host whose ticks make a known
//! number of rows, agents over it at 100 ms ticks, loopback addresses
//! nothing listens on, and the wait for an agent to flush and exit.
//!
//! Nothing here reads the database (that is `db`) or creates network
//! namespaces (that is `netns`).

use std::time::Duration;

use crate::common::*;
use monitor_agent::testing::{DiskKind, FakeHost, InterfaceKind};

/// Whether the long variants run (`MONITOR_SLOW_TESTS=1`).
pub fn slow() -> bool {
    std::env::var("MONITOR_SLOW_TESTS").is_ok_and(|v| v == "1")
}

/// A loopback address nothing listens on (bound, then released).
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// A loopback URL nothing listens on (plain text: for agents that never
/// reach a server).
pub fn free_url() -> String {
    format!("http://{}", free_addr())
}

/// A fake /proc + /sys with one physical disk and one physical interface
/// whose counters never move: the first tick yields mem_percent only (rates
/// need two readings), every later tick mem_percent and the four rates (0);
/// cpu_percent is absent because no CPU tick passes. So N ticks make
/// exactly `rows_for(N)` samples.
pub fn fake_host() -> FakeHost {
    let mut host = FakeHost::new();
    host.add_disk("sda", DiskKind::Physical)
        .add_interface("eth0", InterfaceKind::Physical);
    host
}

/// The samples `ticks` ticks of one agent over `fake_host` store.
pub fn rows_for(ticks: u64) -> u64 {
    5 * ticks - 4
}

/// `cmd` over `host`, ticking every 100 ms.
pub fn over(cmd: AgentCmd, host: &FakeHost) -> AgentCmd {
    cmd.env("MONITOR_INTERVAL", "0.1")
        .arg("--proc-root")
        .arg(host.proc_root())
        .arg("--sys-root")
        .arg(host.sys_root())
}

/// An agent `name` over `host` reporting to `server` at `url` (the
/// server's own, or an address in front of it), enrolled with a join token
/// (or in plain text with an `--insecure` server), in `netns` if given.
pub fn agent_in(
    netns: Option<&str>,
    server: &Server,
    url: &str,
    name: &str,
    host: &FakeHost,
) -> AgentCmd {
    over(server.agent_at(netns, url, name), host)
}

/// An agent `name` over `host` reporting to `server`, in this process's
/// network namespace.
pub fn agent(server: &Server, name: &str, host: &FakeHost) -> AgentCmd {
    over(server.agent(name), host)
}

/// A plain-text agent `name` over `host` for `url`, where no server is
/// (the agent only buffers, spools or stops).
pub fn lone_agent(url: &str, name: &str, host: &FakeHost) -> AgentCmd {
    over(AgentCmd::insecure(url, name), host)
}

/// Waits for an agent started with `--count` to flush and exit; asserts a
/// clean exit with nothing left unacknowledged.
pub fn wait_flushed(agent: &mut Proc, name: &str, timeout: Duration) {
    let status = agent.wait_exit(timeout);
    assert!(
        status.success(),
        "{name} exited with {status}:\n{}",
        agent.stderr.dump()
    );
    assert!(
        !agent.stderr.contains("not acknowledged") && !agent.stderr.contains("kept in the spool"),
        "{name} left batches unacknowledged:\n{}",
        agent.stderr.dump()
    );
}
