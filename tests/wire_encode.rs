//! The agent's batch encoder (`wire::encode_batch`) against prost: for
//! random batches (every varint length, 0.0, -0.0, NaN and other doubles,
//! empty and long strings, health values with and without devices, empty
//! batches) its bytes are exactly prost's encoding of `batch_to_pb` of the
//! same batch, so every server, old or new, reads the same batch.
//!
//! The seed is printed (`MONITOR_FUZZ_SEED` repeats a run, see
//! `common/fuzz.rs`).

// Test support code panics on purpose when the harness cannot proceed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fuzz::Fuzzer;
use monitor::batch::{HealthValue, MetricValues, TickBatch};
use monitor::health::HealthMetric;
use monitor::metric::Metric;
use monitor::wire::{AgentCounters, AgentIdentity, Envelope, batch_to_pb, encode_batch};
use prost::Message;

/// Integers of every varint length, with 0 and the extremes often.
fn integer(f: &mut Fuzzer) -> u64 {
    match f.below(6) {
        0 => 0,
        1 => u64::MAX,
        2 => f.next() % 128,
        _ => f.next() >> f.below(64),
    }
}

/// The doubles prost treats apart: 0.0 and -0.0 (left out), NaN and
/// infinities (written), subnormals, ordinary values, any bit pattern.
fn value(f: &mut Fuzzer) -> f64 {
    match f.below(8) {
        0 => 0.0,
        1 => -0.0,
        2 => f64::NAN,
        3 => f64::NEG_INFINITY,
        4 => f64::MIN_POSITIVE / 3.0,
        5 => f64::from_bits(f.next()),
        _ => (f.below(100_000) as f64) / 7.0,
    }
}

/// Strings of 0 to 300 bytes (one- and two-byte length prefixes), some
/// not ASCII.
fn text(f: &mut Fuzzer) -> String {
    let len = match f.below(4) {
        0 => 0,
        1 => f.below(300),
        _ => f.below(20),
    };
    (0..len)
        .map(|i| {
            if i % 17 == 16 {
                'é'
            } else {
                char::from(b'a' + (i % 26) as u8)
            }
        })
        .collect()
}

#[test]
fn encode_batch_writes_prost_s_bytes_for_random_batches() {
    let mut f = Fuzzer::from_env(5_000);
    let mut ours = Vec::new();
    for _ in 0..f.iterations {
        let id = AgentIdentity {
            agent_id: text(&mut f),
            hostname: text(&mut f),
            agent_version: text(&mut f),
            boot_id: integer(&mut f),
        };
        let mut values = MetricValues::default();
        for metric in Metric::ALL {
            if f.below(3) != 0 {
                values.set(metric, value(&mut f));
            }
        }
        let health: Vec<HealthValue> = (0..f.below(20))
            .map(|_| HealthValue {
                metric: HealthMetric::ALL[f.below(HealthMetric::ALL.len())],
                device: text(&mut f).into(),
                value: value(&mut f),
            })
            .collect();
        let batch = TickBatch {
            boot_id: integer(&mut f),
            seq: integer(&mut f),
            time_unix_ms: integer(&mut f) as i64,
            values,
            health: health.into_boxed_slice(),
        };
        let envelope = Envelope {
            id: &id,
            sent_unix_ms: integer(&mut f) as i64,
            counters: AgentCounters {
                produced_batches_total: integer(&mut f),
                dropped_batches_total: integer(&mut f),
                parse_errors_total: integer(&mut f),
            },
            ack_window: integer(&mut f) as u32,
        };
        let mut pb = batch_to_pb(&id, &batch, envelope.sent_unix_ms, envelope.counters);
        pb.ack_window = envelope.ack_window;
        ours.clear();
        encode_batch(&envelope, &batch, &mut ours);
        assert_eq!(ours, pb.encode_to_vec(), "{batch:?} with {envelope:?}");
    }
}
