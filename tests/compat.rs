//! Old and new binaries together across issue 14's wire change: an agent
//! built before `Batch.health_samples` reports to this server, and this
//! agent to a server built before it; both store the six metrics, nothing
//! is refused. Needs the old binaries: `MONITOR_COMPAT_OLD_BIN_DIR` names a
//! directory with `monitor-agent`, `monitor-server` and `monitorctl` built
//! from before the change (`scripts/compat-check.sh REV` builds them from
//! git and runs this test); without it the test says so and passes, like
//! the other slow tests switched on by a variable.

// Test support code panics on purpose when the harness cannot proceed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use monitor::metric::Metric;

const OLD_DIR_VAR: &str = "MONITOR_COMPAT_OLD_BIN_DIR";

/// A server binary started with `--insecure` on free loopback ports:
/// the process and its (agents, admin) addresses.
fn start_server(binary: &Path, db: &Path) -> (Proc, SocketAddr, SocketAddr) {
    let mut cmd = Command::new(binary);
    cmd.args([
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--db",
    ])
    .arg(db)
    .env("MONITOR_LOG", "info");
    let proc = Proc::spawn(cmd, &format!("server {}", binary.display()));
    let (agents, admin) = listening_addrs(&proc);
    (proc, agents, admin)
}

/// Runs `agent` for six ticks at 0.2 s against `agents`, to completion
/// (`--count` waits for the acknowledgements); returns its stderr.
fn report(agent: &Path, agents: SocketAddr, host: &str) -> String {
    let out = Command::new(agent)
        .args([
            "--insecure",
            "--interval",
            "0.2",
            "--count",
            "6",
            "--hostname",
            host,
        ])
        .arg("--server")
        .arg(format!("http://{agents}"))
        .env("MONITOR_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run the agent");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{} failed: {stderr}", agent.display());
    stderr
}

/// How many samples of each metric `ctl` gets back for `host`.
fn stored(ctl: &Path, admin: SocketAddr, host: &str) -> BTreeMap<String, usize> {
    let out = Command::new(ctl)
        .arg("--server")
        .arg(format!("http://{admin}"))
        .args(["--insecure", "query", host, "--since", "1h", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("run monitorctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let s = JsonSample::parse(line).unwrap_or_else(|| panic!("bad json line {line:?}"));
        *counts.entry(s.metric).or_insert(0) += 1;
    }
    counts
}

fn check_six(counts: &BTreeMap<String, usize>, what: &str) {
    for metric in Metric::ALL.map(Metric::name) {
        // The first tick has no rates; five ticks of each, six of memory.
        assert!(
            counts.get(metric).copied().unwrap_or(0) >= 5,
            "{what}: {counts:?}"
        );
    }
}

#[test]
fn an_old_agent_reports_to_a_new_server_and_a_new_agent_to_an_old_one() {
    let Some(old_dir) = std::env::var_os(OLD_DIR_VAR).map(PathBuf::from) else {
        eprintln!("{OLD_DIR_VAR} is not set: skipped (scripts/compat-check.sh runs it)");
        return;
    };
    let old = |name: &str| {
        let path = old_dir.join(name);
        assert!(path.is_file(), "{} is missing", path.display());
        path
    };
    let dir = TempDir::new("compat");

    // New agent, old server: the health samples are an unknown field there.
    let (mut server, agents, admin) = start_server(&old("monitor-server"), &dir.join("old.db"));
    let log = report(&bin("monitor-agent"), agents, "new-agent");
    assert!(!log.contains("refused"), "{log}");
    check_six(
        &stored(&old("monitorctl"), admin, "new-agent"),
        "new agent, old server",
    );
    server.signal("TERM");
    server.wait_exit(Duration::from_secs(10));
    assert!(
        !server.stderr.contains("invalid"),
        "{}",
        server.stderr.dump()
    );

    // Old agent, new server: no health samples, the six as always.
    let (mut server, agents, admin) = start_server(&bin("monitor-server"), &dir.join("new.db"));
    let log = report(&old("monitor-agent"), agents, "old-agent");
    assert!(!log.contains("refused"), "{log}");
    check_six(
        &stored(&bin("monitorctl"), admin, "old-agent"),
        "old agent, new server",
    );
    // And the new agent there stores its health values too.
    report(&bin("monitor-agent"), agents, "new-agent");
    let out = Command::new(bin("monitorctl"))
        .arg("--server")
        .arg(format!("http://{admin}"))
        .args([
            "--insecure",
            "query",
            "new-agent",
            "--metric",
            "uptime_seconds",
            "--since",
            "1h",
        ])
        .output()
        .expect("run monitorctl");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("uptime_seconds"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.signal("TERM");
    server.wait_exit(Duration::from_secs(10));
}
