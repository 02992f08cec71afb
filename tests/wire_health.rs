//! The wire contract's health samples (issue 14): every rule of
//! `Batch.health_samples` and `Sample.device` at its exact edge, and
//! compatibility in both directions with the previous contract, whose
//! `Batch` and `Sample` are copied below field for field (numbers and
//! types as proto/monitor.proto had them before the health fields): an old
//! server decodes a new agent's batch to exactly the six samples it
//! knows, and an old agent's batch is valid at a new server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use monitor::health::{HEALTH_TABLE, HealthMetric};
use monitor::pb;
use monitor::wire::{
    HealthRule, HealthSample, InvalidBatch, MAX_DEVICE_BYTES, MAX_HEALTH_SAMPLES_PER_BATCH,
    validate_batch,
};
use prost::Message;

const NOW: i64 = 1_795_608_000_000;

/// `Sample` before the health fields.
#[derive(Clone, PartialEq, prost::Message)]
struct OldSample {
    #[prost(int64, tag = "1")]
    time_unix_ms: i64,
    #[prost(string, tag = "2")]
    hostname: String,
    #[prost(string, tag = "3")]
    metric: String,
    #[prost(double, tag = "4")]
    value: f64,
}

/// `Batch` before the health fields.
#[derive(Clone, PartialEq, prost::Message)]
struct OldBatch {
    #[prost(string, tag = "1")]
    agent_id: String,
    #[prost(fixed64, tag = "2")]
    boot_id: u64,
    #[prost(uint64, tag = "3")]
    seq: u64,
    #[prost(message, repeated, tag = "4")]
    samples: Vec<OldSample>,
    #[prost(int64, tag = "5")]
    sent_unix_ms: i64,
    #[prost(uint64, tag = "6")]
    dropped_batches_total: u64,
    #[prost(string, tag = "7")]
    agent_version: String,
    #[prost(string, tag = "8")]
    hostname: String,
    #[prost(uint64, tag = "9")]
    produced_batches_total: u64,
    #[prost(uint64, tag = "10")]
    parse_errors_total: u64,
}

fn sample(metric: &str, value: f64, device: &str) -> pb::Sample {
    pb::Sample {
        time_unix_ms: NOW,
        hostname: "pi-1".into(),
        metric: metric.into(),
        value,
        device: device.into(),
    }
}

/// A new agent's batch: two of the six, and health samples.
fn batch(health: Vec<pb::Sample>) -> pb::Batch {
    pb::Batch {
        agent_id: "pi-1".into(),
        boot_id: 7,
        seq: 3,
        samples: vec![
            sample("cpu_percent", 12.5, ""),
            sample("mem_percent", 40.0, ""),
        ],
        sent_unix_ms: NOW + 5,
        agent_version: "0.2.0".into(),
        hostname: "pi-1".into(),
        health_samples: health,
        ..Default::default()
    }
}

fn check_refused(health: Vec<pb::Sample>, expected: InvalidBatch, message: &str) {
    let err = validate_batch(batch(health), NOW, 30_000).unwrap_err();
    assert_eq!(err, expected);
    assert_eq!(err.to_string(), message);
}

fn health_of(health: Vec<pb::Sample>) -> Vec<HealthSample> {
    let v = validate_batch(batch(health), NOW, 30_000).unwrap();
    assert_eq!(v.health_skipped, 0);
    v.health
}

#[test]
fn health_samples_arrive_with_their_device() {
    let v = validate_batch(
        batch(vec![
            sample("temp_celsius", 61.3, ""),
            sample("fs_used_percent", 48.2, "/"),
            sample("fs_used_percent", 12.0, "/boot/firmware"),
            sample("throttled_flags", f64::from(0x50005u32), ""),
        ]),
        NOW,
        30_000,
    )
    .unwrap();
    assert_eq!(v.samples.len(), 2);
    let got: Vec<_> = v
        .health
        .iter()
        .map(|h| (h.metric, h.device.as_str(), h.value))
        .collect();
    assert_eq!(
        got,
        vec![
            (HealthMetric::TempCelsius, "", 61.3),
            (HealthMetric::FsUsedPercent, "/", 48.2),
            (HealthMetric::FsUsedPercent, "/boot/firmware", 12.0),
            (HealthMetric::ThrottledFlags, "", 327_685.0),
        ]
    );
    assert!(v.health.iter().all(|h| h.time_unix_ms == NOW));
}

#[test]
fn health_times_are_corrected_like_the_samples() {
    // A Pi without a real-time clock, one day after 1970.
    let mut b = batch(vec![sample("load1", 0.5, "")]);
    b.sent_unix_ms = 86_400_005;
    for s in b.samples.iter_mut().chain(&mut b.health_samples) {
        s.time_unix_ms = 86_400_000;
    }
    let v = validate_batch(b, NOW, 30_000).unwrap();
    assert!(v.time_corrected);
    assert_eq!(v.samples[0].0, NOW - 5);
    assert_eq!(v.health[0].time_unix_ms, NOW - 5);
}

#[test]
fn every_range_holds_exactly_at_its_edges() {
    for spec in HEALTH_TABLE {
        let device = if spec.label.is_some() { "/" } else { "" };
        for ok in [spec.min, spec.max] {
            assert_eq!(
                health_of(vec![sample(spec.name, ok, device)]).len(),
                1,
                "{}",
                spec.name
            );
        }
        let metric: HealthMetric = spec.name.parse().unwrap();
        for bad in [
            spec.min - spec.min.abs().max(1.0) * 1e-9,
            spec.max + spec.max * 1e-9,
        ] {
            check_refused(
                vec![sample(spec.name, bad, device)],
                InvalidBatch::Health {
                    sample: 0,
                    rule: HealthRule::OutOfRange(metric, bad),
                },
                &format!(
                    "health_samples[0].value: {} = {bad} is out of range (must be from {} to {})",
                    spec.name, spec.min, spec.max
                ),
            );
        }
        check_refused(
            vec![sample(spec.name, f64::NAN, device)],
            InvalidBatch::Health {
                sample: 0,
                rule: HealthRule::NotFinite(metric),
            },
            &format!(
                "health_samples[0].value: {} must be a finite number",
                spec.name
            ),
        );
    }
}

#[test]
fn devices_are_required_exactly_where_a_metric_has_a_label() {
    check_refused(
        vec![sample("fs_used_percent", 50.0, "")],
        InvalidBatch::Health {
            sample: 0,
            rule: HealthRule::DeviceMissing(HealthMetric::FsUsedPercent),
        },
        "health_samples[0].device: required for fs_used_percent (its mountpoint)",
    );
    check_refused(
        vec![sample("load1", 0.1, ""), sample("temp_celsius", 50.0, "/")],
        InvalidBatch::Health {
            sample: 1,
            rule: HealthRule::DeviceNotAllowed(HealthMetric::TempCelsius),
        },
        "health_samples[1].device: must be empty for temp_celsius (one value per host)",
    );
    let mut b = batch(Vec::new());
    b.samples[1].device = "/".into();
    let err = validate_batch(b, NOW, 30_000).unwrap_err();
    assert_eq!(err, InvalidBatch::DeviceOnSample { sample: 1 });
    assert_eq!(
        err.to_string(),
        "samples[1].device: must be empty (only health_samples carry a device)"
    );
}

#[test]
fn device_length_and_characters_are_capped_at_the_edge() {
    let longest = format!("/{}", "d".repeat(MAX_DEVICE_BYTES - 1));
    assert_eq!(
        health_of(vec![sample("fs_used_percent", 1.0, &longest)]).len(),
        1
    );
    let too_long = format!("{longest}d");
    check_refused(
        vec![sample("fs_used_percent", 1.0, &too_long)],
        InvalidBatch::Health {
            sample: 0,
            rule: HealthRule::DeviceTooLong(MAX_DEVICE_BYTES + 1),
        },
        "health_samples[0].device: 257 bytes long, at most 256",
    );
    // A mount point with a space (as the kernel's \040 decodes) is fine; a
    // control character is refused and escaped in the message.
    assert_eq!(
        health_of(vec![sample("fs_used_percent", 1.0, "/media/pi/USB SSD")]).len(),
        1
    );
    check_refused(
        vec![sample("fs_used_percent", 1.0, "/mnt/\x1b[2J")],
        InvalidBatch::Health {
            sample: 0,
            rule: HealthRule::DeviceControl("/mnt/\x1b[2J".into()),
        },
        "health_samples[0].device: '/mnt/\\x1b[2J' has control characters",
    );
}

#[test]
fn a_health_sample_twice_is_refused_but_two_devices_are_not() {
    assert_eq!(
        health_of(vec![
            sample("fs_used_percent", 1.0, "/"),
            sample("fs_used_percent", 1.0, "/boot"),
        ])
        .len(),
        2
    );
    check_refused(
        vec![
            sample("fs_used_percent", 1.0, "/"),
            sample("fs_used_percent", 2.0, "/"),
        ],
        InvalidBatch::Health {
            sample: 1,
            rule: HealthRule::Duplicate(HealthMetric::FsUsedPercent, "/".into()),
        },
        "health_samples[1].metric: fs_used_percent for device '/' twice at the same time",
    );
}

#[test]
fn the_count_and_the_hostname_and_times_are_checked() {
    let full: Vec<_> = (0..MAX_HEALTH_SAMPLES_PER_BATCH)
        .map(|i| sample("fs_used_percent", 1.0, &format!("/mnt/{i}")))
        .collect();
    assert_eq!(health_of(full.clone()).len(), MAX_HEALTH_SAMPLES_PER_BATCH);
    let mut over = full;
    over.push(sample("load1", 1.0, ""));
    check_refused(
        over,
        InvalidBatch::TooManyHealthSamples(65),
        "health_samples: 65 in one batch, at most 64",
    );
    let mut other_host = sample("load1", 1.0, "");
    other_host.hostname = "pi-2".into();
    check_refused(
        vec![other_host],
        InvalidBatch::Health {
            sample: 0,
            rule: HealthRule::HostnameMismatch("pi-2".into()),
        },
        "health_samples[0].hostname: 'pi-2' differs from the batch's hostname",
    );
    // 60 s after the batch's sent time is the last accepted millisecond.
    let mut edge = sample("load1", 1.0, "");
    edge.time_unix_ms = NOW + 5 + 60_000;
    assert_eq!(health_of(vec![edge.clone()]).len(), 1);
    edge.time_unix_ms += 1;
    let err = validate_batch(batch(vec![edge]), NOW, 30_000).unwrap_err();
    assert!(
        matches!(
            err,
            InvalidBatch::Health {
                sample: 0,
                rule: HealthRule::TimeAfterSend { .. }
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_metric_this_server_does_not_know_is_skipped_not_refused() {
    let v = validate_batch(
        batch(vec![
            sample("fan_rpm", 3000.0, "fan0"),
            sample("load1", 0.25, ""),
        ]),
        NOW,
        30_000,
    )
    .unwrap();
    assert_eq!(v.health_skipped, 1);
    assert_eq!(v.health.len(), 1);
    assert_eq!(v.health[0].metric, HealthMetric::Load1);
}

#[test]
fn an_old_server_decodes_a_new_batch_to_the_six_it_knows() {
    let new = batch(vec![
        sample("temp_celsius", 61.3, ""),
        sample("fs_used_percent", 48.2, "/"),
    ]);
    let old = OldBatch::decode(new.encode_to_vec().as_slice()).unwrap();
    assert_eq!(old.agent_id, new.agent_id);
    assert_eq!((old.boot_id, old.seq), (new.boot_id, new.seq));
    assert_eq!(old.sent_unix_ms, new.sent_unix_ms);
    assert_eq!(old.hostname, new.hostname);
    let six: Vec<_> = old
        .samples
        .iter()
        .map(|s| {
            (
                s.time_unix_ms,
                s.hostname.as_str(),
                s.metric.as_str(),
                s.value,
            )
        })
        .collect();
    assert_eq!(
        six,
        vec![
            (NOW, "pi-1", "cpu_percent", 12.5),
            (NOW, "pi-1", "mem_percent", 40.0)
        ]
    );
    // What the old server would answer: its rules only see these fields,
    // which the new server's validation accepts as they are.
    let as_new = pb::Batch::decode(old.encode_to_vec().as_slice()).unwrap();
    assert!(as_new.health_samples.is_empty());
    assert!(validate_batch(as_new, NOW, 30_000).is_ok());
}

#[test]
fn an_old_agents_batch_is_valid_at_a_new_server() {
    let old = OldBatch {
        agent_id: "pi-old".into(),
        boot_id: 1,
        seq: 1,
        samples: vec![OldSample {
            time_unix_ms: NOW,
            hostname: "pi-old".into(),
            metric: "net_in_kbps".into(),
            value: 3.5,
        }],
        sent_unix_ms: NOW,
        agent_version: "0.1.0".into(),
        hostname: "pi-old".into(),
        ..Default::default()
    };
    let new = pb::Batch::decode(old.encode_to_vec().as_slice()).unwrap();
    let v = validate_batch(new, NOW, 30_000).unwrap();
    assert_eq!(
        v.samples,
        vec![(NOW, monitor::metric::Metric::NetInKbps, 3.5)]
    );
    assert!(v.health.is_empty());
    assert_eq!(v.health_skipped, 0);
}
