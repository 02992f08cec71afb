//! The agent's batch written straight into protobuf bytes, without building
//! a [`pb::Batch`](crate::pb::Batch) first.
//!
//! [`batch_to_pb`](super::batch_to_pb) copies the hostname and a metric
//! name into new `String`s for every sample (35 allocations for a tick with
//! the health values), and prost then walks the struct twice (lengths, then
//! bytes) before it is all freed again. On a Pi that wakes once a second to
//! send a few hundred bytes, that was a tenth of the agent's user-space work
//! per tick. [`encode_batch`] writes the same fields from the buffered
//! [`TickBatch`] and the agent's identity in place.
//!
//! Must never write anything but what `prost::Message::encode` writes for
//! `batch_to_pb` of the same batch (with `ack_window` set): the fields in
//! tag order, proto3 defaults (0, 0.0, "") left out, every sample a
//! length-delimited message even when empty. Old and new servers decode it
//! with prost and must read the same batch; the tests compare the bytes.

use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint};

use super::{AgentCounters, AgentIdentity};
use crate::batch::TickBatch;

/// What a batch carries on the wire besides its own values: who sent it,
/// when, its running totals and the window the agent announces.
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'a> {
    pub id: &'a AgentIdentity,
    pub sent_unix_ms: i64,
    pub counters: AgentCounters,
    /// `Batch.ack_window` (0: no cumulative acks asked for).
    pub ack_window: u32,
}

// The field numbers of `Batch` and `Sample` in proto/monitor.proto.
const BATCH_AGENT_ID: u32 = 1;
const BATCH_BOOT_ID: u32 = 2;
const BATCH_SEQ: u32 = 3;
const BATCH_SAMPLES: u32 = 4;
const BATCH_SENT_UNIX_MS: u32 = 5;
const BATCH_DROPPED_BATCHES_TOTAL: u32 = 6;
const BATCH_AGENT_VERSION: u32 = 7;
const BATCH_HOSTNAME: u32 = 8;
const BATCH_PRODUCED_BATCHES_TOTAL: u32 = 9;
const BATCH_PARSE_ERRORS_TOTAL: u32 = 10;
const BATCH_HEALTH_SAMPLES: u32 = 11;
const BATCH_ACK_WINDOW: u32 = 12;
const SAMPLE_TIME_UNIX_MS: u32 = 1;
const SAMPLE_HOSTNAME: u32 = 2;
const SAMPLE_METRIC: u32 = 3;
const SAMPLE_VALUE: u32 = 4;
const SAMPLE_DEVICE: u32 = 5;

/// Writes `batch` as the protobuf bytes of `pb::Batch` (no gRPC framing):
/// exactly the bytes prost writes for `batch_to_pb(envelope.id, batch,
/// envelope.sent_unix_ms, envelope.counters)` with `ack_window` set.
pub fn encode_batch(envelope: &Envelope<'_>, batch: &TickBatch, buf: &mut impl BufMut) {
    let id = envelope.id;
    let host = id.hostname.as_str();
    string(BATCH_AGENT_ID, &id.agent_id, buf);
    if batch.boot_id != 0 {
        encode_key(BATCH_BOOT_ID, WireType::SixtyFourBit, buf);
        buf.put_u64_le(batch.boot_id);
    }
    varint(BATCH_SEQ, batch.seq, buf);
    // Every sample of the batch starts with the same two fields (the
    // tick's time, then the hostname): encoded once, copied into each.
    let mut common = Small::default();
    common.varint_field(SAMPLE_TIME_UNIX_MS, batch.time_unix_ms as u64);
    common.string_head(SAMPLE_HOSTNAME, host);
    let common = Common {
        head: common,
        hostname: host,
    };
    for (metric, value) in batch.values.iter() {
        common.sample(BATCH_SAMPLES, metric.name(), value, "", buf);
    }
    varint(BATCH_SENT_UNIX_MS, envelope.sent_unix_ms as u64, buf);
    let counters = envelope.counters;
    varint(
        BATCH_DROPPED_BATCHES_TOTAL,
        counters.dropped_batches_total,
        buf,
    );
    string(BATCH_AGENT_VERSION, &id.agent_version, buf);
    string(BATCH_HOSTNAME, host, buf);
    varint(
        BATCH_PRODUCED_BATCHES_TOTAL,
        counters.produced_batches_total,
        buf,
    );
    varint(BATCH_PARSE_ERRORS_TOTAL, counters.parse_errors_total, buf);
    for health in &batch.health {
        common.sample(
            BATCH_HEALTH_SAMPLES,
            health.metric.name(),
            health.value,
            &health.device,
            buf,
        );
    }
    varint(BATCH_ACK_WINDOW, u64::from(envelope.ack_window), buf);
}

/// What every sample of one batch starts with: its time field and the
/// hostname's key and length (`head`), then the hostname.
struct Common<'a> {
    head: Small,
    hostname: &'a str,
}

impl Common<'_> {
    /// Writes one `Sample` as field `tag` of the batch: key, length, then
    /// its fields in tag order, each left out when it holds its default.
    /// A few copies of small pieces built on the stack rather than a call
    /// per byte: this runs for every sample of every tick.
    fn sample(&self, tag: u32, metric: &str, value: f64, device: &str, buf: &mut impl BufMut) {
        let mut metric_head = Small::default();
        metric_head.string_head(SAMPLE_METRIC, metric);
        let mut tail = Small::default();
        // prost leaves out a proto3 double equal to 0.0 (so -0.0 too);
        // NaN is not equal to it and is written.
        if value != 0.0 {
            tail.key(SAMPLE_VALUE, WireType::SixtyFourBit);
            tail.extend(&value.to_le_bytes());
        }
        tail.string_head(SAMPLE_DEVICE, device);
        let body_len = self.head.len()
            + self.hostname.len()
            + metric_head.len()
            + metric.len()
            + tail.len()
            + device.len();
        let mut head = Small::default();
        head.key(tag, WireType::LengthDelimited);
        head.varint(body_len as u64);
        buf.put_slice(head.bytes());
        buf.put_slice(self.head.bytes());
        buf.put_slice(self.hostname.as_bytes());
        buf.put_slice(metric_head.bytes());
        buf.put_slice(metric.as_bytes());
        buf.put_slice(tail.bytes());
        buf.put_slice(device.as_bytes());
    }
}

/// A few encoded bytes built on the stack: keys, varints, a double, at
/// most [`Small::CAPACITY`] bytes (what the pieces above need at most).
struct Small {
    bytes: [u8; Small::CAPACITY],
    len: usize,
}

impl Default for Small {
    fn default() -> Small {
        Small {
            bytes: [0; Small::CAPACITY],
            len: 0,
        }
    }
}

impl Small {
    /// Two keys, two varints of 10 bytes and a double (the value and the
    /// device's head; the time and the hostname's head), with room left.
    const CAPACITY: usize = 48;

    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn len(&self) -> usize {
        self.len
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.bytes[self.len] = (value as u8) | 0x80;
            self.len += 1;
            value >>= 7;
        }
        self.bytes[self.len] = value as u8;
        self.len += 1;
    }

    fn key(&mut self, tag: u32, wire_type: WireType) {
        self.varint(u64::from((tag << 3) | wire_type as u32));
    }

    /// A varint field, left out when 0.
    fn varint_field(&mut self, tag: u32, value: u64) {
        if value != 0 {
            self.key(tag, WireType::Varint);
            self.varint(value);
        }
    }

    /// A string field's key and length (its bytes follow), left out when
    /// the string is empty.
    fn string_head(&mut self, tag: u32, value: &str) {
        if !value.is_empty() {
            self.key(tag, WireType::LengthDelimited);
            self.varint(value.len() as u64);
        }
    }
}

/// A varint field (uint64, int64 as its two's complement, uint32), left
/// out when 0.
fn varint(tag: u32, value: u64, buf: &mut impl BufMut) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

/// A string field, left out when empty.
fn string(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.put_slice(value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{HealthValue, MetricValues};
    use crate::health::HealthMetric;
    use crate::metric::Metric;
    use crate::wire::batch_to_pb;
    use prost::Message;

    /// The bytes prost writes for the same batch: what every server reads.
    fn prost_bytes(envelope: &Envelope<'_>, batch: &TickBatch) -> Vec<u8> {
        let mut pb = batch_to_pb(envelope.id, batch, envelope.sent_unix_ms, envelope.counters);
        pb.ack_window = envelope.ack_window;
        pb.encode_to_vec()
    }

    fn check(envelope: &Envelope<'_>, batch: &TickBatch) {
        let mut ours = Vec::new();
        encode_batch(envelope, batch, &mut ours);
        assert_eq!(
            ours,
            prost_bytes(envelope, batch),
            "{batch:?} with {envelope:?}"
        );
    }

    fn identity(agent_id: &str, hostname: &str, version: &str, boot_id: u64) -> AgentIdentity {
        AgentIdentity {
            agent_id: agent_id.into(),
            hostname: hostname.into(),
            agent_version: version.into(),
            boot_id,
        }
    }

    #[test]
    fn the_bytes_are_prost_s_for_an_empty_batch_and_a_full_one() {
        let id = identity("pi-1", "pi-1", "0.1.0", 0x0123_4567_89ab_cdef);
        let empty = TickBatch {
            boot_id: 0,
            seq: 0,
            time_unix_ms: 0,
            values: MetricValues::default(),
            health: Box::default(),
        };
        let nothing = AgentIdentity {
            agent_id: String::new(),
            hostname: String::new(),
            agent_version: String::new(),
            boot_id: 0,
        };
        let zero = Envelope {
            id: &nothing,
            sent_unix_ms: 0,
            counters: AgentCounters::default(),
            ack_window: 0,
        };
        check(&zero, &empty);
        let mut out = Vec::new();
        encode_batch(&zero, &empty, &mut out);
        assert!(out.is_empty(), "an all-default batch is zero bytes");

        // A tick as the agent makes it: the six, a device-less health
        // value and labelled ones, a negative clock (before 1970) too.
        let full = TickBatch {
            boot_id: id.boot_id,
            seq: 42,
            time_unix_ms: -1,
            values: Metric::ALL
                .into_iter()
                .enumerate()
                .map(|(i, m)| (m, i as f64 * 10.5))
                .collect(),
            health: vec![
                HealthValue {
                    metric: HealthMetric::TempCelsius,
                    device: "".into(),
                    value: 61.3,
                },
                HealthValue {
                    metric: HealthMetric::FsUsedPercent,
                    device: "/boot/firmware".into(),
                    value: 48.5,
                },
                HealthValue {
                    metric: HealthMetric::FsUsedPercent,
                    device: "/".into(),
                    value: 0.0,
                },
            ]
            .into_boxed_slice(),
        };
        let envelope = Envelope {
            id: &id,
            sent_unix_ms: 1_795_608_000_123,
            counters: AgentCounters {
                produced_batches_total: 42,
                dropped_batches_total: 3,
                parse_errors_total: 1,
            },
            ack_window: 64,
        };
        check(&envelope, &full);
        // And prost reads back the batch `batch_to_pb` makes.
        let mut out = Vec::new();
        encode_batch(&envelope, &full, &mut out);
        let decoded = crate::pb::Batch::decode(out.as_slice()).unwrap();
        let mut expected = batch_to_pb(&id, &full, envelope.sent_unix_ms, envelope.counters);
        expected.ack_window = 64;
        assert_eq!(decoded, expected);
    }
}
