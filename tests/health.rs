//! End to end, the health metrics (issue 14): the real agent over a fake
//! Raspberry Pi (its /proc, /sys and mount table under a temp directory,
//! measured under `--rootfs`) reports to the real server on loopback, and
//! `monitorctl query` returns temperature, the throttling flags, load and
//! each real file system's usage under its mount point.

// Test support code panics on purpose when the harness cannot proceed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

/// `(mountpoint or "", value)` of each line of `monitorctl query --json`
/// for `metric`, newest last.
fn values(server: &Server, host: &str, metric: &str) -> Vec<(String, f64)> {
    let out = server.ctl(&["query", host, "--metric", metric, "--since", "1h", "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let s = JsonSample::parse(l).unwrap_or_else(|| panic!("bad json line {l:?}"));
            assert_eq!(s.metric, metric, "{l}");
            let mountpoint = l
                .split("\"mountpoint\":\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
                .to_owned();
            (mountpoint, s.value)
        })
        .collect()
}

#[test]
fn a_pis_health_arrives_and_is_queryable_with_its_mount_points() {
    let host = fake_pi();
    let dir = TempDir::new("health-e2e");
    let server = Server::start(&dir.join("monitor.db"));
    let agent = fake_pi_agent(&server, &host, "e2e-pi").spawn();

    // Both real file systems, under the mount point the table names (the
    // tmpfs is left out); statvfs of the temp directory gives a real share.
    let fs = wait_for(
        "fs_used_percent of / and /boot/firmware",
        Duration::from_secs(30),
        || {
            let v = values(&server, "e2e-pi", "fs_used_percent");
            let by_mount: BTreeMap<String, f64> = v.into_iter().collect();
            (by_mount.len() == 2).then_some(by_mount)
        },
    );
    assert_eq!(
        fs.keys().map(String::as_str).collect::<Vec<_>>(),
        ["/", "/boot/firmware"],
        "{}",
        agent.stderr.dump()
    );
    assert!(fs.values().all(|p| (0.0..=100.0).contains(p)), "{fs:?}");

    for (metric, expected) in [
        ("temp_celsius", 61.3),
        ("throttled_flags", f64::from(0x50005u32)),
        ("under_voltage", 0.0),
        ("load1", 0.42),
    ] {
        let got = wait_for(metric, Duration::from_secs(10), || {
            values(&server, "e2e-pi", metric).pop()
        });
        assert_eq!(got, (String::new(), expected), "{metric}");
    }
    // No swap in the fake meminfo: absent, not 0.
    assert!(values(&server, "e2e-pi", "swap_percent").is_empty());

    // The table shows the mount point the way Prometheus writes a label.
    let table = server.ctl_ok(&[
        "query",
        "e2e-pi",
        "--metric",
        "fs_used_percent",
        "--since",
        "1h",
    ]);
    assert!(
        table.contains("fs_used_percent{mountpoint=\"/boot/firmware\"}"),
        "{table}"
    );
    // `monitorctl hosts`: the compact health columns; `--json`: every
    // latest health value, with its mount point.
    let table = wait_for("the health columns", Duration::from_secs(10), || {
        let t = server.ctl_ok(&["hosts"]);
        t.contains("61.3").then_some(t)
    });
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("TEMP") && header.contains("THROTTLE") && header.contains("FULLEST FS"),
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    // 0x50005: under-voltage and throttling now; then the fullest of the
    // two file systems, under its mount point.
    let at = row.iter().position(|c| *c == "61.3").unwrap();
    assert_eq!(row[at + 1], "UT", "{table}");
    assert!(row[at + 2].ends_with('%'), "{table}");
    assert!(["/", "/boot/firmware"].contains(&row[at + 3]), "{table}");
    let json = server.ctl_ok(&["hosts", "--json"]);
    let host: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let health = host["health"].as_array().unwrap();
    let named = |metric: &str, mountpoint: Option<&str>| {
        health
            .iter()
            .find(|v| v["metric"] == metric && v["mountpoint"].as_str() == mountpoint)
            .unwrap_or_else(|| panic!("{metric} {mountpoint:?} in {json}"))["value"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(named("temp_celsius", None), 61.3);
    assert_eq!(named("throttled_flags", None), f64::from(0x50005u32));
    assert_eq!(named("load1", None), 0.42);
    assert!((0.0..=100.0).contains(&named("fs_used_percent", Some("/boot/firmware"))));
    assert!((0.0..=100.0).contains(&named("fs_used_percent", Some("/"))));
    assert_eq!(host["health_series_over_cap_total"], 0);

    // A name that is neither one of the six nor a health metric: a usage
    // error naming both lists.
    let bad = server.ctl(&["query", "e2e-pi", "--metric", "fan_rpm"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("health metrics: temp_celsius"), "{err}");
}
