//! The `--json` outputs: one JSON object per line, for scripts and tests.
//!
//! These shapes are an interface (tests/, scripts/ and bench/ parse them):
//! keys, their order and value formats must not change. Times are RFC 3339
//! UTC with milliseconds, a time never set is `null`; sample values are
//! written as Rust prints an `f64` (shortest form that reads back exactly,
//! never an exponent: `12`, `0.5`, `0.0000001`) and a value that is not
//! finite as `null`. Strings are JSON-escaped, so control characters reach
//! the terminal only as `\u001b` and the like.

use monitor::pb;
use monitor::time::Rfc3339;
use serde::ser::{Serialize, SerializeMap as _, Serializer};
use serde_json::value::RawValue;

use crate::outcome;

/// A time in ms since the epoch, written as an RFC 3339 string.
struct Time(i64);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&Rfc3339(self.0))
    }
}

/// A value written as Rust's `Display` writes an `f64`; `null` when it is
/// not finite (JSON has no NaN or infinity). serde_json's own float form
/// would turn `12` into `12.0` and small values into exponents.
struct Number(f64);

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.0.is_finite() {
            return s.serialize_none();
        }
        // A finite f64's Display is always a valid JSON number.
        match RawValue::from_string(self.0.to_string()) {
            Ok(raw) => raw.serialize(s),
            Err(e) => Err(serde::ser::Error::custom(e)),
        }
    }
}

/// A host's latest values as one object, metric → value, in the order the
/// server sent them.
struct Latest<'a>(&'a [pb::MetricValue]);

impl Serialize for Latest<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for v in self.0 {
            map.serialize_entry(&v.metric, &Number(v.value))?;
        }
        map.end()
    }
}

/// One line of `monitorctl hosts --json`.
#[derive(serde::Serialize)]
struct HostLine<'a> {
    hostname: &'a str,
    online: bool,
    agent_id: &'a str,
    agent_version: &'a str,
    peer: &'a str,
    /// `null` when the host never reported.
    last_seen: Option<Time>,
    clock_offset_ms: i64,
    dropped_batches_total: u64,
    batches_stored_total: u64,
    parse_errors_total: u64,
    interval_ms: u64,
    latest: Latest<'a>,
    /// Batches refused since the server started as contradicting stored
    /// samples (added after the fields above; new fields go last).
    batches_conflicting_total: u64,
    /// Batches refused since the server started as over the host's ingest
    /// budget (to be sent again).
    batches_rate_limited_total: u64,
    /// Batches since the server started told apart from duplicates by
    /// their samples (their run's gap memory was exhausted).
    batches_checked_by_value_total: u64,
    /// The replica holding the host, with several servers ("" otherwise).
    replica: &'a str,
    /// The latest value of each health metric, by metric then mount point.
    health: Vec<HealthValue<'a>>,
    /// New (metric, device) pairs that met the host's full table of
    /// latest health values on the server.
    health_series_over_cap_total: u64,
}

/// One latest health value of `hosts --json`.
#[derive(serde::Serialize)]
struct HealthValue<'a> {
    metric: &'a str,
    /// fs_used_percent's mount point (as in `query --json`).
    #[serde(skip_serializing_if = "str::is_empty")]
    mountpoint: &'a str,
    value: Number,
    time: Time,
}

/// One line of `monitorctl query --json`.
#[derive(serde::Serialize)]
struct SampleLine<'a> {
    time: Time,
    hostname: &'a str,
    metric: &'a str,
    /// A labelled health metric's device: fs_used_percent's mount point
    /// (the only labelled metric), named as the agent's `--stdout` names it.
    #[serde(skip_serializing_if = "str::is_empty")]
    mountpoint: &'a str,
    value: Number,
}

/// One line of `monitorctl history --json`.
#[derive(serde::Serialize)]
struct HistoryLine<'a> {
    id: &'a str,
    time: Time,
    hostname: &'a str,
    argv: &'a [String],
    /// [`outcome::name`]: "pending" until the host answered.
    outcome: &'static str,
    exit_code: Option<i32>,
    signal: Option<i32>,
    duration_ms: u64,
    stdout_bytes: u64,
    stderr_bytes: u64,
    message: &'a str,
    /// Who ran it (added last, like every new field).
    operator: &'a str,
}

fn line(out: &mut Vec<u8>, value: &impl Serialize) -> Result<(), serde_json::Error> {
    serde_json::to_writer(&mut *out, value)?;
    out.push(b'\n');
    Ok(())
}

/// Appends the `hosts --json` line of `h`.
pub fn host(out: &mut Vec<u8>, h: &pb::HostInfo) -> Result<(), serde_json::Error> {
    line(
        out,
        &HostLine {
            hostname: &h.hostname,
            online: h.online,
            agent_id: &h.agent_id,
            agent_version: &h.agent_version,
            peer: &h.peer,
            last_seen: (h.last_seen_unix_ms > 0).then_some(Time(h.last_seen_unix_ms)),
            clock_offset_ms: h.clock_offset_ms,
            dropped_batches_total: h.dropped_batches_total,
            batches_stored_total: h.batches_stored_total,
            parse_errors_total: h.parse_errors_total,
            interval_ms: h.interval_ms,
            latest: Latest(&h.latest),
            batches_conflicting_total: h.batches_conflicting_total,
            batches_rate_limited_total: h.batches_rate_limited_total,
            batches_checked_by_value_total: h.batches_checked_by_value_total,
            replica: &h.replica,
            health: h
                .health
                .iter()
                .map(|v| HealthValue {
                    metric: &v.metric,
                    mountpoint: &v.device,
                    value: Number(v.value),
                    time: Time(v.time_unix_ms),
                })
                .collect(),
            health_series_over_cap_total: h.health_series_over_cap_total,
        },
    )
}

/// Appends the `query --json` line of `s`.
pub fn sample(out: &mut Vec<u8>, s: &pb::Sample) -> Result<(), serde_json::Error> {
    line(
        out,
        &SampleLine {
            time: Time(s.time_unix_ms),
            hostname: &s.hostname,
            metric: &s.metric,
            mountpoint: &s.device,
            value: Number(s.value),
        },
    )
}

/// Appends the `history --json` line of `e`.
pub fn history(out: &mut Vec<u8>, e: &pb::HistoryEntry) -> Result<(), serde_json::Error> {
    line(
        out,
        &HistoryLine {
            id: &e.command_id,
            time: Time(e.time_unix_ms),
            hostname: &e.hostname,
            argv: &e.argv,
            outcome: outcome::name(e.outcome),
            exit_code: e.exit_code,
            signal: e.signal,
            duration_ms: e.duration_ms,
            stdout_bytes: e.stdout_bytes,
            stderr_bytes: e.stderr_bytes,
            message: &e.message,
            operator: &e.operator,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(write: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>) -> String {
        let mut out = Vec::new();
        write(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn query_lines_keep_their_shape() {
        let s = pb::Sample {
            time_unix_ms: 1_764_072_000_123,
            hostname: "pi-1".into(),
            metric: "cpu_percent".into(),
            value: 12.0,
            device: String::new(),
        };
        assert_eq!(
            text(|o| sample(o, &s)),
            "{\"time\":\"2025-11-25T12:00:00.123Z\",\"hostname\":\"pi-1\",\
             \"metric\":\"cpu_percent\",\"value\":12}\n"
        );
    }

    #[test]
    fn values_are_written_as_before() {
        for (value, expected) in [
            (12.0, "12"),
            (0.5, "0.5"),
            (12.345, "12.345"),
            (-0.25, "-0.25"),
            (1e-7, "0.0000001"),
            (1e21, "1000000000000000000000"),
            (f64::NAN, "null"),
            (f64::INFINITY, "null"),
        ] {
            let s = pb::Sample {
                value,
                ..Default::default()
            };
            let line = text(|o| sample(o, &s));
            assert!(
                line.ends_with(&format!(",\"value\":{expected}}}\n")),
                "{value}: {line}"
            );
        }
    }

    #[test]
    fn hosts_lines_keep_their_shape() {
        let h = pb::HostInfo {
            hostname: "pi-1".into(),
            agent_id: "a1".into(),
            online: true,
            peer: "127.0.0.1:4000".into(),
            agent_version: "0.1.0".into(),
            connected_since_unix_ms: 5,
            last_seen_unix_ms: 1_000,
            latest: vec![
                pb::MetricValue {
                    metric: "mem_percent".into(),
                    value: 40.5,
                    time_unix_ms: 1_000,
                    ..Default::default()
                },
                pb::MetricValue {
                    metric: "cpu_percent".into(),
                    value: 3.0,
                    time_unix_ms: 1_000,
                    ..Default::default()
                },
            ],
            clock_offset_ms: -20,
            dropped_batches_total: 1,
            interval_ms: 1000,
            batches_stored_total: 99,
            parse_errors_total: 2,
            batches_conflicting_total: 4,
            batches_rate_limited_total: 5,
            batches_checked_by_value_total: 6,
            replica: "r-2".into(),
            health: vec![
                pb::MetricValue {
                    metric: "temp_celsius".into(),
                    value: 61.3,
                    time_unix_ms: 1_000,
                    device: String::new(),
                },
                pb::MetricValue {
                    metric: "fs_used_percent".into(),
                    value: 93.0,
                    time_unix_ms: 1_000,
                    device: "/media/\"usb\"\u{1b}".into(),
                },
            ],
            health_series_over_cap_total: 7,
        };
        assert_eq!(
            text(|o| host(o, &h)),
            "{\"hostname\":\"pi-1\",\"online\":true,\"agent_id\":\"a1\",\
             \"agent_version\":\"0.1.0\",\"peer\":\"127.0.0.1:4000\",\
             \"last_seen\":\"1970-01-01T00:00:01.000Z\",\"clock_offset_ms\":-20,\
             \"dropped_batches_total\":1,\"batches_stored_total\":99,\
             \"parse_errors_total\":2,\"interval_ms\":1000,\
             \"latest\":{\"mem_percent\":40.5,\"cpu_percent\":3},\
             \"batches_conflicting_total\":4,\"batches_rate_limited_total\":5,\
             \"batches_checked_by_value_total\":6,\"replica\":\"r-2\",\
             \"health\":[{\"metric\":\"temp_celsius\",\"value\":61.3,\
             \"time\":\"1970-01-01T00:00:01.000Z\"},{\"metric\":\"fs_used_percent\",\
             \"mountpoint\":\"/media/\\\"usb\\\"\\u001b\",\"value\":93,\
             \"time\":\"1970-01-01T00:00:01.000Z\"}],\"health_series_over_cap_total\":7}\n"
        );
        let never = pb::HostInfo {
            hostname: "new".into(),
            ..Default::default()
        };
        let line = text(|o| host(o, &never));
        assert!(line.contains(",\"last_seen\":null,"), "{line}");
        assert!(
            line.ends_with(
                ",\"latest\":{},\"batches_conflicting_total\":0,\"batches_rate_limited_total\":0,\
                 \"batches_checked_by_value_total\":0,\"replica\":\"\",\"health\":[],\
                 \"health_series_over_cap_total\":0}\n"
            ),
            "{line}"
        );
    }

    #[test]
    fn history_lines_keep_their_shape() {
        let e = pb::HistoryEntry {
            command_id: "c-1".into(),
            time_unix_ms: 2_000,
            hostname: "pi-1".into(),
            argv: vec!["echo".into(), "a \"b\"".into()],
            outcome: pb::Outcome::Exited as i32,
            exit_code: Some(3),
            signal: None,
            duration_ms: 15,
            stdout_bytes: 200_000,
            stderr_bytes: 0,
            message: String::new(),
            targets: vec!["pi-1".into()],
            operator: "alice".into(),
        };
        assert_eq!(
            text(|o| history(o, &e)),
            "{\"id\":\"c-1\",\"time\":\"1970-01-01T00:00:02.000Z\",\"hostname\":\"pi-1\",\
             \"argv\":[\"echo\",\"a \\\"b\\\"\"],\"outcome\":\"exited\",\"exit_code\":3,\
             \"signal\":null,\"duration_ms\":15,\"stdout_bytes\":200000,\"stderr_bytes\":0,\
             \"message\":\"\",\"operator\":\"alice\"}\n"
        );
        let pending = pb::HistoryEntry {
            outcome: pb::Outcome::Unspecified as i32,
            signal: Some(9),
            message: "x\n\u{1b}]0;t\u{7}".into(),
            ..Default::default()
        };
        let line = text(|o| history(o, &pending));
        assert!(
            line.contains("\"argv\":[],\"outcome\":\"pending\",\"exit_code\":null,\"signal\":9,"),
            "{line}"
        );
        // Control characters leave only as JSON escapes.
        assert!(
            line.ends_with("\"message\":\"x\\n\\u001b]0;t\\u0007\",\"operator\":\"\"}\n"),
            "{line}"
        );
    }
}

/// One remote-write destination in `status --json`.
#[derive(serde::Serialize)]
struct RemoteWriteLine<'a> {
    url: &'a str,
    lag_seconds: Number,
    sent_samples: u64,
    failed_samples: u64,
    dropped_samples: u64,
    refused_samples: u64,
    too_old_samples: u64,
    cursor: i64,
    newest: i64,
}

/// The line of `monitorctl status --json`.
#[derive(serde::Serialize)]
struct StatusLine<'a> {
    version: &'a str,
    started: Time,
    uptime_seconds: Number,
    agents_connected: u32,
    hosts_known: u32,
    store_queued: u64,
    batches_ingested: u64,
    samples_ingested: u64,
    http_listen: Option<&'a str>,
    remote_write: Vec<RemoteWriteLine<'a>>,
}

/// Appends the `status --json` line of `s`.
pub fn status(out: &mut Vec<u8>, s: &pb::StatusResponse) -> Result<(), serde_json::Error> {
    line(
        out,
        &StatusLine {
            version: &s.version,
            started: Time(s.started_unix_ms),
            uptime_seconds: Number((s.server_unix_ms - s.started_unix_ms).max(0) as f64 / 1000.0),
            agents_connected: s.agents_connected,
            hosts_known: s.hosts_known,
            store_queued: s.store_queued,
            batches_ingested: s.batches_ingested,
            samples_ingested: s.samples_ingested,
            http_listen: (!s.http_listen.is_empty()).then_some(s.http_listen.as_str()),
            remote_write: s
                .remote_write
                .iter()
                .map(|r| RemoteWriteLine {
                    url: &r.url,
                    lag_seconds: Number(r.lag_seconds),
                    sent_samples: r.sent_samples,
                    failed_samples: r.failed_samples,
                    dropped_samples: r.dropped_samples,
                    refused_samples: r.refused_samples,
                    too_old_samples: r.too_old_samples,
                    cursor: r.cursor,
                    newest: r.newest,
                })
                .collect(),
        },
    )
}
