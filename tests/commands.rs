//! End to end, commands: monitorctl → server → agent's CommandStream →
//! process → results back, with the real binaries on loopback.

// Test support code panics on purpose when the harness cannot proceed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A server, one agent with an allowlist, and a temp dir.
struct Rig {
    _dir: TempDir,
    server: Server,
    agents: Vec<Proc>,
}

const ALLOW: &str = r#"
hello   = /bin/echo hello from the agent
fail    = /bin/sh -c "echo to-stderr >&2; exit 3"
sleep   = /bin/sleep <int:0-3600>
big     = /bin/sh -c "head -c 200000 /dev/zero | tr '\0' x"
arch    = /bin/uname -m
"#;

impl Rig {
    fn new(tag: &str, hosts: &[&str], extra_allow: &str) -> Rig {
        let dir = TempDir::new(tag);
        let allow = allowlist(&dir, &format!("{ALLOW}{extra_allow}"));
        let server = Server::start(&dir.join("m.db"));
        let agents = hosts
            .iter()
            .map(|h| server.agent(h).env("MONITOR_COMMANDS_FILE", &allow).spawn())
            .collect();
        let rig = Rig {
            _dir: dir,
            server,
            agents,
        };
        for h in hosts {
            rig.wait_online(h);
        }
        rig
    }

    fn wait_online(&self, host: &str) {
        wait_for(&format!("{host} online"), Duration::from_secs(30), || {
            let out = self.server.ctl(&["exec", "--host", host, "--", "ping"]);
            out.status.success().then_some(())
        });
    }

    /// Waits until `monitorctl history --json` (results are recorded in
    /// the background, a flush after the operator saw them) has every needle.
    fn history_with(&self, args: &[&str], needles: &[&str]) -> String {
        let mut full = vec!["history", "--json", "--limit", "1000"];
        full.extend_from_slice(args);
        wait_for("the history", Duration::from_secs(10), || {
            let h = self.server.ctl_ok(&full);
            needles.iter().all(|n| h.contains(n)).then_some(h)
        })
    }

    fn exec(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let mut full = vec!["exec"];
        full.extend_from_slice(args);
        let out = self.server.ctl(&full);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts `monitorctl exec ...` in the background.
    fn exec_bg(&self, args: &[&str]) -> Proc {
        let mut cmd = self.server.ctl_command();
        cmd.arg("exec").args(args);
        Proc::spawn(cmd, "monitorctl exec")
    }
}

#[test]
fn allowed_refused_failing_and_capped_commands() {
    let rig = Rig::new("cmd-basic", &["cmd-a"], "");

    let (code, out, err) = rig.exec(&["--host", "cmd-a", "--", "hello"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "cmd-a: hello from the agent\n");
    assert!(err.contains("cmd-a: exit 0"), "{err}");

    // Non-zero exit: stderr kept apart, exit code reported, monitorctl fails.
    let (code, out, err) = rig.exec(&["--host", "cmd-a", "--", "fail"]);
    assert_eq!(code, Some(1));
    assert_eq!(out, "");
    assert!(err.contains("cmd-a: to-stderr"), "{err}");
    assert!(err.contains("cmd-a: exit 3"), "{err}");

    // Not on the allowlist: refused with the reason, nothing runs.
    let (code, _, err) = rig.exec(&["--host", "cmd-a", "--", "rm", "-rf", "/tmp/x"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("rejected: 'rm' is not on the allowlist"),
        "{err}"
    );

    // Extra arguments only where the entry allows them.
    let (code, _, err) = rig.exec(&["--host", "cmd-a", "--", "hello", "extra"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("takes no extra arguments"), "{err}");

    // Output cap: 64 KiB forwarded, the rest counted, truncation reported.
    let (code, out, err) = rig.exec(&["--host", "cmd-a", "--", "big"]);
    assert_eq!(code, Some(0), "{err}");
    let forwarded: usize = out
        .lines()
        .map(|l| l.trim_start_matches("cmd-a: ").len())
        .sum();
    assert_eq!(forwarded, 65_536, "forwarded bytes");
    assert!(
        err.contains("output truncated: 200000 bytes stdout"),
        "{err}"
    );

    // Built-ins.
    let (code, out, _) = rig.exec(&["--host", "cmd-a", "--", "info"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("cmd-a: hostname: cmd-a"), "{out}");
    assert!(out.contains("cmd-a: arch: "), "{out}");
    let (code, _, err) = rig.exec(&["--host", "cmd-a", "--", "set-interval", "nope"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("set-interval: expected seconds"), "{err}");

    // Every command is in the history, with its outcome.
    rig.history_with(
        &["--host", "cmd-a"],
        &[
            "\"argv\":[\"fail\"]",
            "\"exit_code\":3",
            "\"outcome\":\"rejected\"",
            "\"stdout_bytes\":200000",
        ],
    );
    let table = rig.server.ctl_ok(&["history"]);
    assert!(
        table.contains("cmd-a") && table.contains("hello"),
        "{table}"
    );
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let dir_hint = TempDir::new("pidfile");
    let pidfile = dir_hint.join("grandchild.pid");
    let extra = format!(
        "spawn = /bin/sh -c \"sleep 300 & echo $! > {}; sleep 300\"\n",
        pidfile.display()
    );
    let rig = Rig::new("cmd-timeout", &["cmd-t"], &extra);
    let started = Instant::now();
    let (code, _, err) = rig.exec(&["--host", "cmd-t", "--timeout", "1", "--", "spawn"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    wait_for("the grandchild to be gone", Duration::from_secs(10), || {
        (!pid_alive(pid)).then_some(())
    });
    rig.history_with(&[], &["\"outcome\":\"timed_out\""]);
}

#[test]
fn cancel_by_id_and_by_ctrl_c() {
    let rig = Rig::new("cmd-cancel", &["cmd-c"], "");

    let mut exec = rig.exec_bg(&["--host", "cmd-c", "--", "sleep", "300"]);
    let id = command_id(&exec);
    wait_for("the sleep to start", Duration::from_secs(10), || {
        rig.agents[0]
            .stderr
            .contains(&format!("command {id}: running"))
            .then_some(())
    });
    let out = rig.server.ctl_ok(&["cancel", &id]);
    assert!(out.contains("sent to 1 hosts: cmd-c"), "{out}");
    let status = exec.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(1));
    assert!(
        exec.stderr.contains("cmd-c: cancelled"),
        "{}",
        exec.stderr.dump()
    );

    // Cancelling again: nothing runs under that id any more.
    let out = rig.server.ctl(&["cancel", &id]);
    assert_eq!(out.status.code(), Some(1));

    // Ctrl-C on monitorctl exec cancels its command on the host.
    let mut exec = rig.exec_bg(&["--host", "cmd-c", "--", "sleep", "301"]);
    let id = command_id(&exec);
    wait_for("the sleep to start", Duration::from_secs(10), || {
        rig.agents[0]
            .stderr
            .contains(&format!("command {id}: running"))
            .then_some(())
    });
    exec.signal("INT");
    let status = exec.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(1));
    assert!(
        exec.stderr.contains("cmd-c: cancelled"),
        "{}",
        exec.stderr.dump()
    );
    // No sleep 301 left on the machine.
    wait_for("sleep 301 gone", Duration::from_secs(10), || {
        processes_matching("sleep 301").is_empty().then_some(())
    });
}

#[test]
fn unknown_offline_and_lost_hosts_fail_at_once() {
    let mut rig = Rig::new("cmd-lost", &["cmd-l", "cmd-o"], "");

    // Unknown host: a clear per-host error, fast.
    let t = Instant::now();
    let (code, _, err) = rig.exec(&["--host", "nosuch", "--", "ping"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("nosuch: unreachable: unknown host"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));

    // Offline host: its agent stopped.
    rig.agents[1].signal("TERM");
    rig.agents[1].wait_exit(Duration::from_secs(10));
    wait_for("cmd-o offline", Duration::from_secs(10), || {
        let (_, _, err) = rig.exec(&["--host", "cmd-o", "--", "ping"]);
        err.contains("cmd-o: unreachable: offline").then_some(())
    });

    // Mixed targets: the reachable host still runs it.
    let (code, out, err) = rig.exec(&["--host", "cmd-l", "--host", "nosuch", "--", "ping"]);
    assert_eq!(code, Some(1));
    assert_eq!(out, "cmd-l: pong\n");
    assert!(err.contains("2 hosts: 1 ok, 1 failed"), "{err}");

    // The agent killed mid-command: "lost connection", promptly.
    let mut exec = rig.exec_bg(&["--host", "cmd-l", "--", "sleep", "302"]);
    let id = command_id(&exec);
    wait_for("the sleep to start", Duration::from_secs(10), || {
        rig.agents[0]
            .stderr
            .contains(&format!("command {id}: running"))
            .then_some(())
    });
    rig.agents[0].signal("KILL");
    let status = exec.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(1));
    assert!(
        exec.stderr.contains("cmd-l: lost connection"),
        "{}",
        exec.stderr.dump()
    );
    rig.history_with(
        &[],
        &[
            "\"outcome\":\"lost_connection\"",
            "\"outcome\":\"unreachable\"",
        ],
    );
}

#[test]
fn fan_out_reaches_every_agent() {
    let hosts = ["fan-1", "fan-2", "fan-3", "fan-4"];
    let rig = Rig::new("cmd-fan", &hosts, "");
    let (code, out, err) = rig.exec(&["--all", "--", "ping"]);
    assert_eq!(code, Some(0), "{err}");
    for h in hosts {
        assert!(out.contains(&format!("{h}: pong")), "{out}");
    }
    assert!(err.contains("4 hosts: 4 ok, 0 failed"), "{err}");
    // `arch` runs a real process on every host.
    let (code, out, _) = rig.exec(&["--all", "--", "arch"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 4, "{out}");
}

/// Median gap between consecutive cpu_percent samples in a window.
fn median_gap(samples: &[JsonSample]) -> Option<f64> {
    let mut times: Vec<f64> = samples
        .iter()
        .filter(|s| s.metric == "mem_percent")
        .map(|s| rfc3339_secs(&s.time))
        .collect();
    times.sort_by(f64::total_cmp);
    let mut gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_by(f64::total_cmp);
    gaps.get(gaps.len() / 2).copied()
}

/// Seconds of the day of an RFC 3339 time (enough for gaps within a test).
fn rfc3339_secs(t: &str) -> f64 {
    let hms = &t[11..23];
    let h: f64 = hms[0..2].parse().unwrap_or(0.0);
    let m: f64 = hms[3..5].parse().unwrap_or(0.0);
    let s: f64 = hms[6..12].parse().unwrap_or(0.0);
    h * 3600.0 + m * 60.0 + s
}

#[test]
fn set_interval_changes_the_sampling_rate_and_long_commands_do_not_stall_it() {
    let rig = Rig::new("cmd-interval", &["cmd-i"], "");
    // Sampling continues on schedule (0.2 s) while a 3 s command runs.
    let before = rig.server.samples("cmd-i", "10m").len();
    let (code, _, err) = rig.exec(&["--host", "cmd-i", "--", "sleep", "3"]);
    assert_eq!(code, Some(0), "{err}");
    let during = rig.server.samples("cmd-i", "10m");
    let mem_during = during.iter().filter(|s| s.metric == "mem_percent").count();
    let mem_before = before / 6;
    assert!(
        mem_during >= mem_before + 12,
        "only {} ticks in 3 s of command",
        mem_during.saturating_sub(mem_before)
    );
    assert!(
        median_gap(&during).is_some_and(|g| g < 0.3),
        "{:?}",
        median_gap(&during)
    );

    // set-interval 1: stored samples are now a second apart.
    let (code, out, _) = rig.exec(&["--host", "cmd-i", "--", "set-interval", "1"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("interval 0.2s -> 1s"), "{out}");
    let changed_at = monitor::time::now_unix_ms();
    let after = wait_for(
        "five ticks at the new interval",
        Duration::from_secs(20),
        || {
            let s: Vec<JsonSample> = rig
                .server
                .samples("cmd-i", "10m")
                .into_iter()
                .filter(|s| {
                    rfc3339_secs(&s.time) * 1000.0 > (changed_at % 86_400_000) as f64 + 1100.0
                })
                .collect();
            (s.iter().filter(|x| x.metric == "mem_percent").count() >= 5).then_some(s)
        },
    );
    let gap = median_gap(&after).expect("gaps");
    assert!(
        (0.9..1.2).contains(&gap),
        "median gap after set-interval 1: {gap}"
    );
    let hosts = rig.server.ctl_ok(&["hosts", "--json"]);
    assert!(hosts.contains("\"interval_ms\":"), "{hosts}");
}

#[test]
fn exec_usage_errors_exit_2() {
    let out = Command::new(bin("monitorctl"))
        .args(["exec", "--host", "a", "--all", "--", "ping"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(bin("monitorctl"))
        .args(["exec", "--host", "a", "--timeout", "soon", "--", "ping"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--timeout: expected seconds"));
}
