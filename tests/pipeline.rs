//! End to end, metrics pipeline: real agents report to a real server on
//! loopback; what was stored comes back through monitorctl; a restart keeps
//! it; bad input gets a clear error and a meaningful exit code.

// Test support code panics on purpose when the harness cannot proceed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use monitor_agent::testing::{DiskKind, FakeCpu, FakeHost, InterfaceKind};

const METRICS: [&str; 6] = [
    "cpu_percent",
    "mem_percent",
    "disk_read_kbps",
    "disk_write_kbps",
    "net_in_kbps",
    "net_out_kbps",
];

fn metrics_of(samples: &[JsonSample]) -> BTreeSet<String> {
    samples.iter().map(|s| s.metric.clone()).collect()
}

#[test]
fn three_agents_six_metrics_stored_and_kept_across_a_server_restart() {
    let dir = TempDir::new("pipeline");
    let db = dir.join("monitor.db");
    let server = Server::start(&db);
    let hosts = ["e2e-a", "e2e-b", "e2e-c"];
    let _agents: Vec<Proc> = hosts.iter().map(|h| server.agent(h).spawn()).collect();

    for h in hosts {
        wait_for(
            &format!("all six metrics of {h}"),
            Duration::from_secs(30),
            || {
                let s = server.samples(h, "10m");
                (metrics_of(&s).len() == 6).then_some(())
            },
        );
    }
    // Every sample has the handout's shape and the right hostname.
    for h in hosts {
        let samples = server.samples(h, "10m");
        assert!(samples.iter().all(|s| s.hostname == h));
        assert!(
            samples
                .iter()
                .all(|s| s.time.ends_with('Z') && s.time.len() == 24)
        );
        assert_eq!(
            metrics_of(&samples),
            METRICS.iter().map(|m| m.to_string()).collect()
        );
        for s in &samples {
            assert!(s.value >= 0.0, "{s:?}");
            if s.metric.ends_with("percent") {
                assert!(s.value <= 100.0, "{s:?}");
            }
        }
    }

    // `hosts` shows all three online with the latest value of every metric.
    let json = server.ctl_ok(&["hosts", "--json"]);
    for h in hosts {
        let line = json
            .lines()
            .find(|l| l.contains(&format!("\"hostname\":\"{h}\"")))
            .unwrap_or_else(|| panic!("{h} missing from {json}"));
        assert!(line.contains("\"online\":true"), "{line}");
        for m in METRICS {
            assert!(line.contains(&format!("\"{m}\":")), "{m} missing in {line}");
        }
    }
    let table = server.ctl_ok(&["hosts"]);
    assert!(
        table.contains("e2e-b") && table.contains("online"),
        "{table}"
    );
    let top = server.ctl_ok(&["top", "--once"]);
    assert!(top.contains("3 hosts, 3 online"), "{top}");

    // One metric only.
    let out = server.ctl_ok(&["query", "e2e-a", "--metric", "cpu_percent", "--json"]);
    assert!(!out.is_empty());
    assert!(
        out.lines()
            .all(|l| l.contains("\"metric\":\"cpu_percent\""))
    );

    // Restart the server in place: stored samples survive, agents resume.
    let before: BTreeMap<&str, usize> = hosts
        .iter()
        .map(|h| (*h, server.samples(h, "10m").len()))
        .collect();
    let listen = server.agents_addr.to_string();
    let mut server = server;
    server.proc.signal("TERM");
    let status = server.proc.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "server exit status {status}");
    assert!(server.proc.stderr.contains("store closed"));
    drop(server);

    let server = Server::start_with(&db, &listen, &[]);
    for h in hosts {
        let n = server.samples(h, "10m").len();
        assert!(
            n >= before[h],
            "{h}: {n} samples after restart, {} before",
            before[h]
        );
    }
    for h in hosts {
        wait_for(
            &format!("{h} to report again after the restart"),
            Duration::from_secs(30),
            || (server.samples(h, "10m").len() > before[h] + 6).then_some(()),
        );
    }
    let json = server.ctl_ok(&["hosts", "--json"]);
    assert_eq!(json.matches("\"online\":true").count(), 3, "{json}");
}

#[test]
fn unknown_host_or_metric_is_a_clear_error() {
    let dir = TempDir::new("unknown");
    let server = Server::start(&dir.join("m.db"));
    let _agent = server.agent("known-1").spawn();
    wait_for("known-1 stored", Duration::from_secs(20), || {
        (!server.samples("known-1", "10m").is_empty()).then_some(())
    });

    let out = server.ctl(&["query", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown host 'nosuch'") && err.contains("known-1"),
        "{err}"
    );

    let out = server.ctl(&["query", "known-1", "--metric", "cpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown metric 'cpu'"));

    let out = server.ctl(&["history", "--host", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bad_flags_and_environment_exit_2_naming_the_culprit() {
    let check = |mut cmd: std::process::Command, expected: &str| {
        let out = cmd.output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "stderr: {err}");
        assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        assert!(err.lines().count() <= 3, "not a short message: {err}");
    };
    let mut c = std::process::Command::new(bin("monitor-agent"));
    c.env("MONITOR_INTERVAL", "abc");
    check(c, "MONITOR_INTERVAL: expected");
    let mut c = std::process::Command::new(bin("monitor-agent"));
    c.args(["--interval", "-1"]);
    check(c, "--interval: expected");
    let mut c = std::process::Command::new(bin("monitor-agent"));
    c.env("MONITOR_SERVER", "ftp://x");
    check(
        c,
        "MONITOR_SERVER: expected a URL like https://server:50051",
    );
    let mut c = std::process::Command::new(bin("monitor-agent"));
    c.arg("--no-such-flag");
    check(c, "Unrecognized argument: --no-such-flag");
    let mut c = std::process::Command::new(bin("monitor-server"));
    c.args(["--listen", "nowhere"]);
    check(c, "--listen: expected an address");
    let mut c = std::process::Command::new(bin("monitor-server"));
    c.env("MONITOR_RETENTION", "forever");
    check(c, "MONITOR_RETENTION: expected a duration");
    let mut c = std::process::Command::new(bin("monitorctl"));
    c.arg("frobnicate");
    check(c, "Unrecognized argument: frobnicate");
    let mut c = std::process::Command::new(bin("monitorctl"));
    c.args(["exec", "--all"]);
    check(c, "exec: name a command");
}

#[test]
fn monitorctl_without_a_server_exits_3() {
    // A port nothing listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let out = ctl(
        &format!("http://127.0.0.1:{port}"),
        &["--insecure", "hosts"],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the server"));
}

#[test]
fn agent_keeps_sampling_while_the_server_is_away_and_delivers_later() {
    let dir = TempDir::new("late-server");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    // Enrolled beforehand (with TLS an agent needs its certificate, and
    // the server that signs it keeps its CA beside the database), then the
    // server goes away before the agent starts.
    let server = Server::start_with(&dir.join("m.db"), &addr.to_string(), &[]);
    let state = server.enrol_ahead("late-1");
    let url = server.url();
    drop(server);
    let mut agent = AgentCmd::with_identity(&url, "late-1", &state).spawn();
    wait_for("two failed attempts", Duration::from_secs(20), || {
        (agent.stderr.count("retry") >= 1 && agent.stderr.contains("retrying")).then_some(())
    });
    assert!(
        agent.is_running(),
        "the agent must not exit when the server is away"
    );
    let server = Server::start_with(&dir.join("m.db"), &addr.to_string(), &[]);
    // Samples taken before the server existed arrive (the buffer held them).
    let first = wait_for("buffered samples", Duration::from_secs(30), || {
        let s = server.samples("late-1", "10m");
        (s.len() > 10).then_some(s)
    });
    let server_started = server.proc.stderr.lines().len();
    assert!(server_started > 0);
    let earliest = first
        .iter()
        .map(|s| s.time.clone())
        .min()
        .unwrap_or_default();
    let hosts = server.ctl_ok(&["hosts", "--json"]);
    assert!(hosts.contains("\"dropped_batches_total\":0"), "{hosts}");
    assert!(!earliest.is_empty());
}

/// The agent binary over a fake /proc and /sys whose counters this test
/// advances by known amounts between ticks (synchronised on the agent's
/// own --stdout lines).
#[test]
fn agent_binary_computes_the_six_values_from_a_fixture_tree() {
    let mut host = FakeHost::new();
    host.set_cpu(FakeCpu {
        user_ticks: 1000,
        system_ticks: 500,
        idle_ticks: 8000,
        iowait_ticks: 500,
        ..FakeCpu::default()
    });
    host.add_disk("sda", DiskKind::Physical)
        .add_disk(
            "sda1",
            DiskKind::Partition {
                parent: "sda".into(),
            },
        )
        .add_disk("loop0", DiskKind::Virtual)
        .add_interface("eth0", InterfaceKind::Physical)
        .add_interface("lo", InterfaceKind::Virtual)
        .add_interface("docker0", InterfaceKind::Virtual);
    // eth0's receive counter is 1000 bytes short of 2^32: it will wrap.
    let near_wrap = (1u64 << 32) - 1000;
    host.set_net_bytes("eth0", near_wrap, 0);
    host.set_disk_sectors("sda", 1_000_000, 0);

    let mut agent = std::process::Command::new(bin("monitor-agent"));
    agent
        .args([
            "--stdout",
            "--interval",
            "1",
            "--count",
            "4",
            "--hostname",
            "fixture",
        ])
        .arg("--proc-root")
        .arg(host.proc_root())
        .arg("--sys-root")
        .arg(host.sys_root())
        .env("MONITOR_LOG", "warn");
    let agent = Proc::spawn(agent, "fixture-agent");
    let tick_lines = |n: usize| {
        wait_for(&format!("tick {n}"), Duration::from_secs(10), || {
            let lines = agent.stdout.lines();
            let ticks: BTreeSet<String> = lines
                .iter()
                .filter_map(|l| JsonSample::parse(l))
                .map(|s| s.time)
                .collect();
            (ticks.len() >= n).then_some(lines)
        })
    };
    let values_at = |lines: &[String], tick: usize| -> BTreeMap<String, f64> {
        let samples: Vec<JsonSample> = lines.iter().filter_map(|l| JsonSample::parse(l)).collect();
        let times: BTreeSet<String> = samples.iter().map(|s| s.time.clone()).collect();
        let t = times.iter().nth(tick - 1).cloned().unwrap_or_default();
        samples
            .into_iter()
            // The six; the health metrics --stdout prints beside them
            // are tests/health.rs's.
            .filter(|s| s.time == t && METRICS.contains(&s.metric.as_str()))
            .map(|s| (s.metric, s.value))
            .collect()
    };

    // Tick 1: only the memory gauge (rates need two readings).
    let lines = tick_lines(1);
    let t1 = values_at(&lines, 1);
    assert_eq!(t1.keys().collect::<Vec<_>>(), vec!["mem_percent"]);
    let mem = host_mem_percent();
    assert!((t1["mem_percent"] - mem).abs() < 0.001, "{t1:?} vs {mem}");

    // Before tick 2: 300 busy + 100 idle ticks → 75 %; 1 MiB read from sda
    // (partitions and loop devices move too, and must not count); eth0
    // receives 102400 bytes across its 32-bit wrap; lo moves and must not.
    host.advance_cpu(300, 100);
    host.set_disk_sectors("sda", 1_000_000 + 2048, 4096);
    host.set_disk_sectors("sda1", 5_000_000, 5_000_000);
    host.set_disk_sectors("loop0", 9_000_000, 9_000_000);
    host.set_net_bytes("eth0", (near_wrap + 102_400) % (1 << 32), 51_200);
    host.set_net_bytes("lo", 1 << 30, 1 << 30);
    host.set_net_bytes("docker0", 1 << 30, 1 << 30);
    let lines = tick_lines(2);
    let t2 = values_at(&lines, 2);
    assert_eq!(t2.len(), 6, "{t2:?}");
    assert!((t2["cpu_percent"] - 75.0).abs() < 0.001, "{t2:?}");
    // Rates divide by the real elapsed time (about 1 s): allow 10 %.
    let close = |got: f64, want: f64| (got - want).abs() <= want * 0.10;
    assert!(close(t2["disk_read_kbps"], 1024.0), "{t2:?}");
    assert!(close(t2["disk_write_kbps"], 2048.0), "{t2:?}");
    assert!(close(t2["net_in_kbps"], 100.0), "wrap not handled: {t2:?}");
    assert!(close(t2["net_out_kbps"], 50.0), "{t2:?}");

    // Before tick 3: sda's counters go backwards (a reset, not a wrap: they
    // do not fit the wrap rule): its rate is dropped, never negative.
    host.advance_cpu(100, 300);
    host.set_disk_sectors("sda", 10, 10);
    let lines = tick_lines(3);
    let t3 = values_at(&lines, 3);
    assert!((t3["cpu_percent"] - 25.0).abs() < 0.001, "{t3:?}");
    assert!(
        !t3.contains_key("disk_read_kbps"),
        "reset must drop the rate: {t3:?}"
    );
    assert!(!t3.contains_key("disk_write_kbps"), "{t3:?}");
    assert_eq!(t3["net_in_kbps"], 0.0);

    let mut agent = agent;
    let status = agent.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "--count 4 must end with exit 0, got {status}"
    );
}

/// mem_percent of FakeHost's default meminfo, computed independently.
fn host_mem_percent() -> f64 {
    let m = monitor_agent::testing::FakeMem::default();
    (m.mem_total_kib - m.mem_available_kib.unwrap_or(0)) as f64 / m.mem_total_kib as f64 * 100.0
}
