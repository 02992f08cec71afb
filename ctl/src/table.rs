//! The tables people read: hosts (`hosts`, `top`), samples (`query`) and
//! the command history (`history`).
//!
//! Every string from the server (hostnames, metric names, command ids and
//! arguments) is escaped and capped before it is padded into a column, so
//! no cell can move the cursor, retitle the terminal or widen a row without
//! bound. Nothing here talks to the server or writes to the terminal.

use std::fmt::Write as _;
use std::time::Duration;

use monitor::command::{MAX_ARGS, MAX_ARGV_BYTES};
use monitor::health::{HealthMetric, THROTTLE_FLAGS};
use monitor::metric::Metric;
use monitor::pb;
use monitor::text::Escaped;
use monitor::time::{Rfc3339, format_duration_short};

use crate::outcome;

/// A server's string as one safe cell (padding needs a `String`: the
/// `Escaped` adapter writes past the formatter's width).
fn cell(text: &str) -> String {
    Escaped::capped(text).to_string()
}

/// "12s ago", or "never" for a time that was never set.
fn ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".into();
    }
    let d = Duration::from_millis(u64::try_from(now_ms.saturating_sub(then_ms)).unwrap_or(0));
    format!("{} ago", format_duration_short(d))
}

fn latest_of(h: &pb::HostInfo, m: Metric) -> Option<f64> {
    h.latest
        .iter()
        .find(|v| v.metric == m.name())
        .map(|v| v.value)
}

fn health_of(h: &pb::HostInfo, m: HealthMetric) -> impl Iterator<Item = &pb::MetricValue> {
    h.health.iter().filter(move |v| v.metric == m.name())
}

/// Longest mount point shown in the hosts table, in bytes (escaped).
const MOUNTPOINT_CELL_BYTES: usize = 16;

/// The TEMP cell: the latest temperature, "-" without one.
fn temp_cell(h: &pb::HostInfo) -> String {
    fmt_opt(
        health_of(h, HealthMetric::TempCelsius)
            .next()
            .map(|v| v.value),
    )
}

/// The THROTTLE cell: "ok" when the Pi's firmware reports nothing; else a
/// letter per condition (`THROTTLE_FLAGS`), upper case while it holds now,
/// lower case when it only held since the agent started ("U" under-voltage
/// now, "ut" both earlier); "-" on a box that is not a Pi.
fn throttle_cell(h: &pb::HostInfo) -> String {
    let Some(word) = health_of(h, HealthMetric::ThrottledFlags)
        .next()
        .map(|v| v.value)
    else {
        return "-".into();
    };
    let letters: String = THROTTLE_FLAGS
        .iter()
        .filter_map(|f| {
            if f.is_set(word, false) {
                Some(f.letter)
            } else if f.is_set(word, true) {
                Some(f.letter.to_ascii_lowercase())
            } else {
                None
            }
        })
        .collect();
    if letters.is_empty() {
        "ok".into()
    } else {
        letters
    }
}

/// The FULLEST FS cell: the file system with the highest use, "93% /data"
/// (its mount point escaped and capped); "-" without one.
fn fullest_fs_cell(h: &pb::HostInfo) -> String {
    health_of(h, HealthMetric::FsUsedPercent)
        .max_by(|a, b| a.value.total_cmp(&b.value))
        .map_or_else(
            || "-".into(),
            |v| {
                format!(
                    "{:.0}% {}",
                    v.value,
                    Escaped::with_limit(&v.device, MOUNTPOINT_CELL_BYTES)
                )
            },
        )
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into())
}

/// The hosts table that `hosts` and `top` print.
pub fn hosts(resp: &pb::ListHostsResponse) -> String {
    let now = resp.server_unix_ms;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<7} {:>10} {:>6} {:>6} {:>17} {:>17} {:>8} {:>8} {:>6} {:<8} {:<24}",
        "HOST",
        "STATE",
        "LAST SEEN",
        "CPU%",
        "MEM%",
        "DISK R/W KiB/s",
        "NET IN/OUT KiB/s",
        "CLOCK",
        "DROPPED",
        "TEMP",
        "THROTTLE",
        "FULLEST FS"
    );
    for h in &resp.hosts {
        let disk = format!(
            "{}/{}",
            fmt_opt(latest_of(h, Metric::DiskReadKbps)),
            fmt_opt(latest_of(h, Metric::DiskWriteKbps))
        );
        let net = format!(
            "{}/{}",
            fmt_opt(latest_of(h, Metric::NetInKbps)),
            fmt_opt(latest_of(h, Metric::NetOutKbps))
        );
        let clock = format!("{:+.1}s", h.clock_offset_ms as f64 / 1000.0);
        let _ = writeln!(
            out,
            "{:<20} {:<7} {:>10} {:>6} {:>6} {:>17} {:>17} {:>8} {:>8} {:>6} {:<8} {:<24}",
            cell(&h.hostname),
            if h.online { "online" } else { "offline" },
            ago(now, h.last_seen_unix_ms),
            fmt_opt(latest_of(h, Metric::CpuPercent)),
            fmt_opt(latest_of(h, Metric::MemPercent)),
            disk,
            net,
            clock,
            h.dropped_batches_total,
            temp_cell(h),
            throttle_cell(h),
            fullest_fs_cell(h)
        );
    }
    out
}

/// The header of the samples table.
pub fn samples_header(out: &mut String) {
    let _ = writeln!(
        out,
        "{:<24} {:<20} {:<16} {:>12}",
        "TIME", "HOST", "METRIC", "VALUE"
    );
}

/// One row of the samples table.
pub fn sample_row(out: &mut String, s: &pb::Sample) {
    // A labelled metric shows its device the way Prometheus writes labels:
    // fs_used_percent{mountpoint="/boot"}.
    let metric = if s.device.is_empty() {
        cell(&s.metric)
    } else {
        format!("{}{{mountpoint=\"{}\"}}", cell(&s.metric), cell(&s.device))
    };
    let _ = writeln!(
        out,
        "{:<24} {:<20} {:<16} {:>12.3}",
        Rfc3339(s.time_unix_ms).to_string(),
        cell(&s.hostname),
        metric,
        s.value
    );
}

/// The history table, newest first as the server sends it.
pub fn history(entries: &[pb::HistoryEntry]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<32} {:<20} {:<16} {:>5} {:>8} {:>9}  COMMAND",
        "TIME", "ID", "HOST", "OUTCOME", "EXIT", "TOOK", "OUT BYTES"
    );
    for e in entries {
        let exit = match (e.exit_code, e.signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("sig{s}"),
            _ => "-".into(),
        };
        // A whole command line as the contract allows it, spaces included.
        let command = e.argv.join(" ");
        let _ = writeln!(
            out,
            "{:<24} {:<32} {:<20} {:<16} {:>5} {:>8} {:>9}  {}",
            Rfc3339(e.time_unix_ms).to_string(),
            cell(&e.command_id),
            cell(&e.hostname),
            outcome::name(e.outcome),
            exit,
            format_duration_short(Duration::from_millis(e.duration_ms)),
            e.stdout_bytes.saturating_add(e.stderr_bytes),
            Escaped::with_limit(&command, MAX_ARGV_BYTES + MAX_ARGS)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> pb::HostInfo {
        pb::HostInfo {
            hostname: name.into(),
            online: true,
            last_seen_unix_ms: 9_000,
            latest: vec![pb::MetricValue {
                metric: "cpu_percent".into(),
                value: 12.34,
                time_unix_ms: 9_000,
                ..Default::default()
            }],
            clock_offset_ms: -1500,
            dropped_batches_total: 7,
            ..Default::default()
        }
    }

    #[test]
    fn hosts_table_has_one_row_per_host() {
        let resp = pb::ListHostsResponse {
            hosts: vec![host("pi-1")],
            server_unix_ms: 12_000,
            next_page_token: String::new(),
        };
        let table = hosts(&resp);
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].starts_with("HOST "));
        let cells: Vec<&str> = rows[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "pi-1", "online", "3s", "ago", "12.3", "-", "-/-", "-/-", "-1.5s", "7", "-", "-",
                "-"
            ]
        );
    }

    #[test]
    fn the_hosts_table_shows_temperature_throttling_and_the_fullest_file_system() {
        let value = |metric: &str, device: &str, value| pb::MetricValue {
            metric: metric.into(),
            value,
            time_unix_ms: 9_000,
            device: device.into(),
        };
        let cells = |health: Vec<pb::MetricValue>| -> Vec<String> {
            let resp = pb::ListHostsResponse {
                hosts: vec![pb::HostInfo {
                    health,
                    ..host("pi")
                }],
                server_unix_ms: 12_000,
                next_page_token: String::new(),
            };
            let table = hosts(&resp);
            let row = table.lines().nth(1).unwrap().to_owned();
            row.split_whitespace().skip(10).map(str::to_owned).collect()
        };
        // Under-voltage and throttling now, both also earlier: "UT".
        assert_eq!(
            cells(vec![
                value("temp_celsius", "", 81.3),
                value("throttled_flags", "", f64::from(0x50005)),
                value("fs_used_percent", "/", 40.0),
                value("fs_used_percent", "/media/usb", 93.4),
            ]),
            ["81.3", "UT", "93%", "/media/usb"]
        );
        // Only earlier: lower case; nothing: "ok".
        assert_eq!(
            cells(vec![value("throttled_flags", "", f64::from(0x10000))])[1],
            "u"
        );
        assert_eq!(cells(vec![value("throttled_flags", "", 0.0)])[1], "ok");
        // An agent's mount point is escaped and capped.
        let long = cells(vec![value(
            "fs_used_percent",
            "/mnt/\x1b]0;owned\x07/a-very-long-directory-name",
            95.0,
        )]);
        assert_eq!(long[2], "95%");
        assert!(
            !long[3].contains('\x1b') && long[3].starts_with("/mnt/\\x1b"),
            "{long:?}"
        );
        assert!(long[3].len() < 30, "{long:?}");
    }

    #[test]
    fn server_strings_are_escaped_in_every_table() {
        let resp = pb::ListHostsResponse {
            hosts: vec![host("pi\x1b]0;owned\x07")],
            server_unix_ms: 12_000,
            next_page_token: String::new(),
        };
        let table = hosts(&resp);
        assert!(table.contains("pi\\x1b]0;owned\\x07 "), "{table}");
        assert!(!table.contains('\x1b'));

        let mut rows = String::new();
        sample_row(
            &mut rows,
            &pb::Sample {
                time_unix_ms: 0,
                hostname: "h\r".into(),
                metric: "m\x1b[2J".into(),
                value: 1.0,
                device: String::new(),
            },
        );
        assert!(rows.starts_with("1970-01-01T00:00:00.000Z "), "{rows}");
        assert!(
            rows.contains("h\\r ") && rows.contains("m\\x1b[2J "),
            "{rows}"
        );

        let table = history(&[pb::HistoryEntry {
            command_id: "id\x07".into(),
            hostname: "h\n".into(),
            argv: vec!["echo".into(), "\x1b[31mred".into()],
            outcome: pb::Outcome::Exited as i32,
            exit_code: Some(0),
            ..Default::default()
        }]);
        assert!(!table.contains(['\x1b', '\x07', '\r']), "{table}");
        assert_eq!(table.lines().count(), 2, "{table}");
        assert!(
            table.contains("id\\x07 ") && table.contains("h\\n "),
            "{table}"
        );
        assert!(table.ends_with("  echo \\x1b[31mred\n"), "{table}");
        assert!(table.contains(" exited "), "{table}");
    }
}
