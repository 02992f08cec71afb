//! The edge between protobuf and the project's own types, for batches, and
//! the size rules of every identity string on the wire.
//!
//! The agent writes a [`TickBatch`] straight into the bytes of a
//! [`pb::Batch`] when it puts it on the wire ([`encode_batch`], in
//! `wire/encode.rs`: the same bytes as prost's encoding of [`batch_to_pb`],
//! which tests and the load generator use); the server turns a [`pb::Batch`] into a [`ValidBatch`] or a
//! [`InvalidBatch`] naming the first thing wrong. Nothing past this module
//! looks at a prost struct for samples.
//!
//! Every limit a peer's message is held to lives here once: string lengths
//! ([`MAX_ID_BYTES`], [`MAX_HOSTNAME_BYTES`]), the hostname alphabet, each
//! metric's physical range ([`value_range`]) and the largest sequence number
//! ([`MAX_SEQ`]). A refusal ([`InvalidBatch`], [`FieldError`]) names the
//! field as the proto spells it and the rule it broke, and shows a peer's
//! text only escaped and capped.

use std::fmt;

mod encode;
pub use encode::{Envelope, encode_batch};

use crate::batch::TickBatch;
use crate::health::HealthMetric;
use crate::metric::Metric;
use crate::pb;

/// Who produced a batch: constant for one run of an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentIdentity {
    pub agent_id: String,
    pub hostname: String,
    pub agent_version: String,
    /// New at every start of the agent process.
    pub boot_id: u64,
}

/// Running totals an agent reports with every batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentCounters {
    pub produced_batches_total: u64,
    pub dropped_batches_total: u64,
    pub parse_errors_total: u64,
}

/// Builds the wire form of a buffered batch.
pub fn batch_to_pb(
    id: &AgentIdentity,
    batch: &TickBatch,
    sent_unix_ms: i64,
    counters: AgentCounters,
) -> pb::Batch {
    pb::Batch {
        agent_id: id.agent_id.clone(),
        boot_id: batch.boot_id,
        seq: batch.seq,
        samples: batch
            .values
            .iter()
            .map(|(metric, value)| pb::Sample {
                time_unix_ms: batch.time_unix_ms,
                hostname: id.hostname.clone(),
                metric: metric.name().to_owned(),
                value,
                device: String::new(),
            })
            .collect(),
        sent_unix_ms,
        dropped_batches_total: counters.dropped_batches_total,
        agent_version: id.agent_version.clone(),
        hostname: id.hostname.clone(),
        produced_batches_total: counters.produced_batches_total,
        parse_errors_total: counters.parse_errors_total,
        health_samples: batch
            .health
            .iter()
            .map(|h| pb::Sample {
                time_unix_ms: batch.time_unix_ms,
                hostname: id.hostname.clone(),
                metric: h.metric.name().to_owned(),
                value: h.value,
                // `str`'s copy, not `to_string` (which formats an
                // `Arc<str>` through `Display` on every tick).
                device: String::from(&*h.device),
            })
            .collect(),
        // Set by the agent's Report stream, which knows its window.
        ack_window: 0,
    }
}

/// Most samples a batch may carry: six metrics per tick, with room to grow.
pub const MAX_SAMPLES_PER_BATCH: usize = 64;
/// Longest hostname (DNS limit).
pub const MAX_HOSTNAME_BYTES: usize = 253;
/// Longest agent id or version string.
pub const MAX_ID_BYTES: usize = 256;
/// A sample may not be taken more than this long after the batch was sent
/// by the agent's own clock.
pub const MAX_SAMPLE_AFTER_SEND_MS: i64 = 60_000;
/// Samples dated before 2000-01-01 are a clock that was never set.
pub const MIN_SAMPLE_UNIX_MS: i64 = 946_684_800_000;
/// Most health samples a batch may carry (`Batch.health_samples`).
pub const MAX_HEALTH_SAMPLES_PER_BATCH: usize = 64;
/// Longest `Sample.device` (a mount point, as the agent names it).
pub const MAX_DEVICE_BYTES: usize = 256;
/// Highest rate a batch may carry, in KiB/s: 1 TiB/s (2^30 KiB/s). The
/// whole PCIe bus of a two-socket server carries about 0.5 TB/s, so no sum
/// of disks or network adapters reaches it (a Pi's disk does 0.1 GB/s, its
/// network 1 Gbit/s); a larger value is a broken or forged counter, and it
/// would break every table that prints it (1e308 has 309 digits).
pub const MAX_RATE_KIB_PER_S: f64 = 1_073_741_824.0;
/// Highest sequence number a batch may carry: 2^32. An agent's seq grows by
/// one per tick, at most ten a second (its shortest interval is 100 ms), so
/// a run would need 13.6 years without a restart to get there; a larger seq
/// can only be forged or garbage, and would open a gap of a trillion seqs in
/// the server's de-duplication state.
pub const MAX_SEQ: u64 = 1 << 32;

/// The values a metric may take, inclusive: percentages 0 to 100, rates 0
/// to [`MAX_RATE_KIB_PER_S`].
pub const fn value_range(metric: Metric) -> (f64, f64) {
    if metric.is_percent() {
        (0.0, 100.0)
    } else {
        (0.0, MAX_RATE_KIB_PER_S)
    }
}

/// A field of a request (a hello, an operator's request) that breaks its
/// rule. The field is named as the proto spells it (`hosts[2]` for an
/// element of a list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldError {
    /// Required, but empty.
    Empty(String),
    /// Longer than its limit.
    TooLong {
        field: String,
        bytes: usize,
        limit: usize,
    },
    /// A hostname with characters outside the alphabet.
    BadHostname { field: String, value: String },
    /// A list with more entries than its limit.
    TooMany {
        field: String,
        count: usize,
        limit: usize,
    },
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::text::Escaped;
        match self {
            FieldError::Empty(field) => write!(f, "{field}: required, but empty"),
            FieldError::TooLong {
                field,
                bytes,
                limit,
            } => write!(f, "{field}: {bytes} bytes long, at most {limit}"),
            FieldError::BadHostname { field, value } => write!(
                f,
                "{field}: '{}' has characters other than ASCII letters, digits, '.', '-' and '_'",
                Escaped::capped(value)
            ),
            FieldError::TooMany {
                field,
                count,
                limit,
            } => write!(f, "{field}: {count} entries, at most {limit}"),
        }
    }
}

impl std::error::Error for FieldError {}

/// `value` (the field `field`) is at most `limit` bytes long.
pub fn check_len(field: &str, value: &str, limit: usize) -> Result<(), FieldError> {
    if value.len() > limit {
        return Err(FieldError::TooLong {
            field: field.to_owned(),
            bytes: value.len(),
            limit,
        });
    }
    Ok(())
}

/// `value` (the field `field`) is a hostname: 1 to [`MAX_HOSTNAME_BYTES`]
/// bytes of ASCII letters, digits, '.', '-' and '_'.
pub fn check_hostname(field: &str, value: &str) -> Result<(), FieldError> {
    check_len(field, value, MAX_HOSTNAME_BYTES)?;
    if value.is_empty() {
        return Err(FieldError::Empty(field.to_owned()));
    }
    if !valid_hostname(value) {
        return Err(FieldError::BadHostname {
            field: field.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// An agent's hello holds to the rules of the same fields of a batch:
/// agent_id required, agent_id and agent_version at most [`MAX_ID_BYTES`],
/// a valid hostname.
pub fn validate_hello(h: &pb::AgentHello) -> Result<(), FieldError> {
    check_len("agent_id", &h.agent_id, MAX_ID_BYTES)?;
    check_len("agent_version", &h.agent_version, MAX_ID_BYTES)?;
    check_hostname("hostname", &h.hostname)?;
    if h.agent_id.is_empty() {
        return Err(FieldError::Empty("agent_id".to_owned()));
    }
    Ok(())
}

/// A batch that passed validation, with sample times corrected for the
/// agent's clock offset where that offset exceeded the server's threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidBatch {
    pub agent_id: String,
    pub hostname: String,
    pub agent_version: String,
    pub boot_id: u64,
    pub seq: u64,
    /// Agent clock minus server clock at receipt, in milliseconds.
    pub clock_offset_ms: i64,
    /// Whether sample times were shifted by `-clock_offset_ms`.
    pub time_corrected: bool,
    pub counters: AgentCounters,
    /// (time, metric, value); the hostname is `hostname` for every sample.
    pub samples: Vec<(i64, Metric, f64)>,
    /// The health samples, times corrected like `samples`.
    pub health: Vec<HealthSample>,
    /// Health samples skipped because this build does not know their
    /// metric (an agent newer than the server).
    pub health_skipped: usize,
}

/// One validated health sample.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthSample {
    /// Sample time, ms since the Unix epoch (server-corrected if needed).
    pub time_unix_ms: i64,
    pub metric: HealthMetric,
    /// The mount point (or device) for a labelled metric, else empty.
    pub device: String,
    pub value: f64,
}

/// What is wrong with one of `Batch.health_samples`.
#[derive(Clone, Debug, PartialEq)]
pub enum HealthRule {
    HostnameMismatch(String),
    NotFinite(HealthMetric),
    OutOfRange(HealthMetric, f64),
    TimeAfterSend {
        time_unix_ms: i64,
        sent_unix_ms: i64,
    },
    TimeBeforeEpoch(i64),
    DeviceMissing(HealthMetric),
    DeviceNotAllowed(HealthMetric),
    DeviceTooLong(usize),
    DeviceControl(String),
    Duplicate(HealthMetric, String),
}

impl ValidBatch {
    /// Its ticks: the distinct times of its samples, each a row the store
    /// writes (a real agent's batch is one tick).
    pub fn ticks(&self) -> usize {
        let mut times: Vec<i64> = self.samples.iter().map(|s| s.0).collect();
        times.sort_unstable();
        times.dedup();
        times.len()
    }
}

/// Why a batch was refused. Each message names the field (as the proto
/// spells it, `samples[i].field` for a sample) and the rule it broke.
#[derive(Clone, Debug, PartialEq)]
pub enum InvalidBatch {
    /// agent_id, agent_version or hostname.
    Field(FieldError),
    ZeroSeq,
    /// Above [`MAX_SEQ`].
    SeqOutOfRange(u64),
    MissingSentTime,
    TooManySamples(usize),
    HostnameMismatch {
        sample: usize,
        got: String,
    },
    UnknownMetric {
        sample: usize,
        name: String,
    },
    NotFinite {
        sample: usize,
        metric: Metric,
    },
    OutOfRange {
        sample: usize,
        metric: Metric,
        value: f64,
    },
    TimeAfterSend {
        sample: usize,
        time_unix_ms: i64,
        sent_unix_ms: i64,
    },
    TimeBeforeEpoch {
        sample: usize,
        time_unix_ms: i64,
    },
    /// `samples[i].device` set: only health samples carry one.
    DeviceOnSample {
        sample: usize,
    },
    TooManyHealthSamples(usize),
    Health {
        sample: usize,
        rule: HealthRule,
    },
}

impl fmt::Display for InvalidBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::text::Escaped;
        use crate::time::Rfc3339;
        match self {
            InvalidBatch::Field(e) => e.fmt(f),
            InvalidBatch::ZeroSeq => f.write_str("seq: must be at least 1, got 0"),
            InvalidBatch::SeqOutOfRange(seq) => write!(
                f,
                "seq: {seq} is more than any agent can have produced (at most {MAX_SEQ}: 13.6 \
                 years of batches at the fastest interval)"
            ),
            InvalidBatch::MissingSentTime => f.write_str(
                "sent_unix_ms: required (the agent's wall clock when it sent the batch, \
                 ms since the Unix epoch), got 0",
            ),
            InvalidBatch::TooManySamples(n) => write!(
                f,
                "samples: {n} in one batch, at most {MAX_SAMPLES_PER_BATCH}"
            ),
            InvalidBatch::HostnameMismatch { sample, got } => write!(
                f,
                "samples[{sample}].hostname: '{}' differs from the batch's hostname",
                Escaped::capped(got)
            ),
            InvalidBatch::UnknownMetric { sample, name } => write!(
                f,
                "samples[{sample}].metric: {}",
                crate::metric::UnknownMetric(Escaped::capped(name).to_string())
            ),
            InvalidBatch::NotFinite { sample, metric } => write!(
                f,
                "samples[{sample}].value: {metric} must be a finite number"
            ),
            InvalidBatch::OutOfRange {
                sample,
                metric,
                value,
            } => {
                let (low, high) = value_range(*metric);
                let unit = if metric.is_percent() { "" } else { " KiB/s" };
                write!(
                    f,
                    "samples[{sample}].value: {metric} = {value} is out of range (must be from \
                     {low} to {high}{unit})"
                )
            }
            InvalidBatch::TimeAfterSend {
                sample,
                time_unix_ms,
                sent_unix_ms,
            } => write!(
                f,
                "samples[{sample}].time_unix_ms: {} is more than {} s after the batch's \
                 sent_unix_ms ({})",
                Rfc3339(*time_unix_ms),
                MAX_SAMPLE_AFTER_SEND_MS / 1000,
                Rfc3339(*sent_unix_ms)
            ),
            InvalidBatch::TimeBeforeEpoch {
                sample,
                time_unix_ms,
            } => write!(
                f,
                "samples[{sample}].time_unix_ms: {} is before 2000-01-01 even after the \
                 clock correction",
                Rfc3339(*time_unix_ms)
            ),
            InvalidBatch::DeviceOnSample { sample } => write!(
                f,
                "samples[{sample}].device: must be empty (only health_samples carry a device)"
            ),
            InvalidBatch::TooManyHealthSamples(n) => write!(
                f,
                "health_samples: {n} in one batch, at most {MAX_HEALTH_SAMPLES_PER_BATCH}"
            ),
            InvalidBatch::Health { sample, rule } => {
                write!(f, "health_samples[{sample}].")?;
                write_health_rule(f, rule)
            }
        }
    }
}

impl std::error::Error for InvalidBatch {}

/// The field and rule of a [`HealthRule`], after `health_samples[i].`.
fn write_health_rule(f: &mut fmt::Formatter<'_>, rule: &HealthRule) -> fmt::Result {
    use crate::text::Escaped;
    use crate::time::Rfc3339;
    match rule {
        HealthRule::HostnameMismatch(got) => write!(
            f,
            "hostname: '{}' differs from the batch's hostname",
            Escaped::capped(got)
        ),
        HealthRule::NotFinite(metric) => {
            write!(f, "value: {metric} must be a finite number")
        }
        HealthRule::OutOfRange(metric, value) => {
            let spec = metric.spec();
            write!(
                f,
                "value: {metric} = {value} is out of range (must be from {} to {})",
                spec.min, spec.max
            )
        }
        HealthRule::TimeAfterSend {
            time_unix_ms,
            sent_unix_ms,
        } => write!(
            f,
            "time_unix_ms: {} is more than {} s after the batch's sent_unix_ms ({})",
            Rfc3339(*time_unix_ms),
            MAX_SAMPLE_AFTER_SEND_MS / 1000,
            Rfc3339(*sent_unix_ms)
        ),
        HealthRule::TimeBeforeEpoch(time_unix_ms) => write!(
            f,
            "time_unix_ms: {} is before 2000-01-01 even after the clock correction",
            Rfc3339(*time_unix_ms)
        ),
        HealthRule::DeviceMissing(metric) => write!(
            f,
            "device: required for {metric} (its {})",
            metric.spec().label.unwrap_or("device")
        ),
        HealthRule::DeviceNotAllowed(metric) => {
            write!(f, "device: must be empty for {metric} (one value per host)")
        }
        HealthRule::DeviceTooLong(bytes) => {
            write!(f, "device: {bytes} bytes long, at most {MAX_DEVICE_BYTES}")
        }
        HealthRule::DeviceControl(device) => write!(
            f,
            "device: '{}' has control characters",
            Escaped::capped(device)
        ),
        HealthRule::Duplicate(metric, device) => write!(
            f,
            "metric: {metric} for device '{}' twice at the same time",
            Escaped::capped(device)
        ),
    }
}

/// Validates `Batch.health_samples` (see the proto for the rules): the
/// samples of known metrics with corrected times, and how many were skipped
/// for naming a metric this build does not know.
fn validate_health(
    health_samples: Vec<pb::Sample>,
    hostname: &str,
    sent_unix_ms: i64,
    shift: i64,
) -> Result<(Vec<HealthSample>, usize), InvalidBatch> {
    if health_samples.len() > MAX_HEALTH_SAMPLES_PER_BATCH {
        return Err(InvalidBatch::TooManyHealthSamples(health_samples.len()));
    }
    let mut out: Vec<HealthSample> = Vec::with_capacity(health_samples.len());
    let mut skipped = 0;
    for (i, s) in health_samples.into_iter().enumerate() {
        let refuse = |rule| InvalidBatch::Health { sample: i, rule };
        if s.hostname != hostname {
            return Err(refuse(HealthRule::HostnameMismatch(s.hostname)));
        }
        let Ok(metric) = s.metric.parse::<HealthMetric>() else {
            skipped += 1;
            continue;
        };
        let spec = metric.spec();
        if !s.value.is_finite() {
            return Err(refuse(HealthRule::NotFinite(metric)));
        }
        if !(spec.min..=spec.max).contains(&s.value) {
            return Err(refuse(HealthRule::OutOfRange(metric, s.value)));
        }
        match (spec.label, s.device.is_empty()) {
            (Some(_), true) => return Err(refuse(HealthRule::DeviceMissing(metric))),
            (None, false) => return Err(refuse(HealthRule::DeviceNotAllowed(metric))),
            _ => {}
        }
        if s.device.len() > MAX_DEVICE_BYTES {
            return Err(refuse(HealthRule::DeviceTooLong(s.device.len())));
        }
        if s.device.chars().any(char::is_control) {
            return Err(refuse(HealthRule::DeviceControl(s.device)));
        }
        if s.time_unix_ms > sent_unix_ms.saturating_add(MAX_SAMPLE_AFTER_SEND_MS) {
            return Err(refuse(HealthRule::TimeAfterSend {
                time_unix_ms: s.time_unix_ms,
                sent_unix_ms,
            }));
        }
        let time_unix_ms = s.time_unix_ms.saturating_sub(shift);
        if time_unix_ms < MIN_SAMPLE_UNIX_MS {
            return Err(refuse(HealthRule::TimeBeforeEpoch(time_unix_ms)));
        }
        if out
            .iter()
            .any(|o| o.time_unix_ms == time_unix_ms && o.metric == metric && o.device == s.device)
        {
            return Err(refuse(HealthRule::Duplicate(metric, s.device)));
        }
        out.push(HealthSample {
            time_unix_ms,
            metric,
            device: s.device,
            value: s.value,
        });
    }
    Ok((out, skipped))
}

impl InvalidBatch {
    /// The acknowledgement code that refuses a batch for this reason.
    pub fn ack_code(&self) -> pb::AckCode {
        match self {
            InvalidBatch::SeqOutOfRange(_) => pb::AckCode::SequenceOutOfRange,
            _ => pb::AckCode::Invalid,
        }
    }
}

/// Whether a hostname is acceptable: DNS-ish characters plus '_'.
pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= MAX_HOSTNAME_BYTES
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Validates a batch received at `received_unix_ms` (server clock). When
/// the agent's clock is off by more than `max_clock_skew_ms`, sample times
/// are shifted onto the server's clock, so a Pi that booted in 1970 still
/// stores samples at the right time.
pub fn validate_batch(
    b: pb::Batch,
    received_unix_ms: i64,
    max_clock_skew_ms: i64,
) -> Result<ValidBatch, InvalidBatch> {
    check_len("agent_id", &b.agent_id, MAX_ID_BYTES).map_err(InvalidBatch::Field)?;
    check_len("agent_version", &b.agent_version, MAX_ID_BYTES).map_err(InvalidBatch::Field)?;
    check_len("hostname", &b.hostname, MAX_HOSTNAME_BYTES).map_err(InvalidBatch::Field)?;
    if b.agent_id.is_empty() {
        return Err(InvalidBatch::Field(FieldError::Empty("agent_id".into())));
    }
    check_hostname("hostname", &b.hostname).map_err(InvalidBatch::Field)?;
    if b.seq == 0 {
        return Err(InvalidBatch::ZeroSeq);
    }
    if b.seq > MAX_SEQ {
        return Err(InvalidBatch::SeqOutOfRange(b.seq));
    }
    if b.sent_unix_ms == 0 {
        return Err(InvalidBatch::MissingSentTime);
    }
    if b.samples.len() > MAX_SAMPLES_PER_BATCH {
        return Err(InvalidBatch::TooManySamples(b.samples.len()));
    }
    let clock_offset_ms = b.sent_unix_ms.saturating_sub(received_unix_ms);
    let time_corrected = clock_offset_ms.saturating_abs() > max_clock_skew_ms;
    let shift = if time_corrected { clock_offset_ms } else { 0 };
    let mut samples = Vec::with_capacity(b.samples.len());
    for (i, s) in b.samples.into_iter().enumerate() {
        if s.hostname != b.hostname {
            return Err(InvalidBatch::HostnameMismatch {
                sample: i,
                got: s.hostname,
            });
        }
        if !s.device.is_empty() {
            return Err(InvalidBatch::DeviceOnSample { sample: i });
        }
        let metric: Metric = s.metric.parse().map_err(|_| InvalidBatch::UnknownMetric {
            sample: i,
            name: s.metric.clone(),
        })?;
        if !s.value.is_finite() {
            return Err(InvalidBatch::NotFinite { sample: i, metric });
        }
        let (low, high) = value_range(metric);
        if !(low..=high).contains(&s.value) {
            return Err(InvalidBatch::OutOfRange {
                sample: i,
                metric,
                value: s.value,
            });
        }
        if s.time_unix_ms > b.sent_unix_ms.saturating_add(MAX_SAMPLE_AFTER_SEND_MS) {
            return Err(InvalidBatch::TimeAfterSend {
                sample: i,
                time_unix_ms: s.time_unix_ms,
                sent_unix_ms: b.sent_unix_ms,
            });
        }
        let time = s.time_unix_ms.saturating_sub(shift);
        if time < MIN_SAMPLE_UNIX_MS {
            return Err(InvalidBatch::TimeBeforeEpoch {
                sample: i,
                time_unix_ms: time,
            });
        }
        samples.push((time, metric, s.value));
    }
    let (health, health_skipped) =
        validate_health(b.health_samples, &b.hostname, b.sent_unix_ms, shift)?;
    Ok(ValidBatch {
        agent_id: b.agent_id,
        hostname: b.hostname,
        agent_version: b.agent_version,
        boot_id: b.boot_id,
        seq: b.seq,
        clock_offset_ms,
        time_corrected,
        counters: AgentCounters {
            produced_batches_total: b.produced_batches_total,
            dropped_batches_total: b.dropped_batches_total,
            parse_errors_total: b.parse_errors_total,
        },
        samples,
        health,
        health_skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::MetricValues;

    const NOW: i64 = 1_795_608_000_000;

    fn identity() -> AgentIdentity {
        AgentIdentity {
            agent_id: "pi-1".into(),
            hostname: "pi-1".into(),
            agent_version: "0.1.0".into(),
            boot_id: 7,
        }
    }

    fn batch(time: i64, values: &[(Metric, f64)]) -> pb::Batch {
        let tick = TickBatch {
            boot_id: 7,
            seq: 3,
            time_unix_ms: time,
            values: values.iter().copied().collect::<MetricValues>(),
            health: Box::default(),
        };
        batch_to_pb(&identity(), &tick, time + 5, AgentCounters::default())
    }

    #[test]
    fn round_trip_keeps_the_handout_shape() {
        let b = batch(NOW, &[(Metric::CpuPercent, 12.5), (Metric::NetInKbps, 3.0)]);
        assert_eq!(b.samples.len(), 2);
        assert_eq!(b.samples[0].hostname, "pi-1");
        assert_eq!(b.samples[0].metric, "cpu_percent");
        let v = validate_batch(b, NOW + 10, 30_000).unwrap();
        assert_eq!(v.seq, 3);
        assert_eq!(v.clock_offset_ms, -5);
        assert!(!v.time_corrected);
        assert_eq!(
            v.samples,
            vec![
                (NOW, Metric::CpuPercent, 12.5),
                (NOW, Metric::NetInKbps, 3.0)
            ]
        );
    }

    /// Validates the default batch changed by `mutate` at `NOW` and checks
    /// the refusal and its whole message.
    fn check_invalid(mutate: impl FnOnce(&mut pb::Batch), expected: InvalidBatch, message: &str) {
        let mut b = batch(NOW, &[(Metric::CpuPercent, 1.0)]);
        mutate(&mut b);
        let err = validate_batch(b, NOW, 30_000).unwrap_err();
        assert_eq!(err, expected);
        assert_eq!(err.to_string(), message);
    }

    /// Validates the default batch changed by `mutate`; it must pass.
    fn check_valid(mutate: impl FnOnce(&mut pb::Batch)) -> ValidBatch {
        let mut b = batch(NOW, &[(Metric::CpuPercent, 1.0)]);
        mutate(&mut b);
        validate_batch(b, NOW, 30_000).unwrap()
    }

    #[test]
    fn ticks_are_the_distinct_times_of_the_samples() {
        // The ingest budget charges a batch per tick it holds: one time
        // twice is one tick, two times are two.
        let v = check_valid(|b| {
            let mut earlier = b.samples[0].clone();
            earlier.time_unix_ms = NOW - 1000;
            let mut other = earlier.clone();
            other.metric = "mem_percent".into();
            b.samples.push(earlier);
            b.samples.push(other);
        });
        assert_eq!(v.samples.len(), 3);
        assert_eq!(v.ticks(), 2);
        assert_eq!(check_valid(|_| {}).ticks(), 1);
    }

    #[test]
    fn invalid_batches_are_named_by_field_and_rule() {
        use InvalidBatch as I;
        check_invalid(
            |b| b.hostname.clear(),
            I::Field(FieldError::Empty("hostname".into())),
            "hostname: required, but empty",
        );
        check_invalid(
            |b| b.agent_id.clear(),
            I::Field(FieldError::Empty("agent_id".into())),
            "agent_id: required, but empty",
        );
        check_invalid(
            |b| b.hostname = "a b\n".into(),
            I::Field(FieldError::BadHostname {
                field: "hostname".into(),
                value: "a b\n".into(),
            }),
            "hostname: 'a b\\n' has characters other than ASCII letters, digits, '.', '-' and '_'",
        );
        check_invalid(|b| b.seq = 0, I::ZeroSeq, "seq: must be at least 1, got 0");
        check_invalid(
            |b| b.sent_unix_ms = 0,
            I::MissingSentTime,
            "sent_unix_ms: required (the agent's wall clock when it sent the batch, ms since \
             the Unix epoch), got 0",
        );
        check_invalid(
            |b| b.samples[0].metric = "cpu".into(),
            I::UnknownMetric {
                sample: 0,
                name: "cpu".into(),
            },
            "samples[0].metric: unknown metric 'cpu' (known: cpu_percent, mem_percent, \
             disk_read_kbps, disk_write_kbps, net_in_kbps, net_out_kbps)",
        );
        check_invalid(
            |b| b.samples[0].value = f64::NAN,
            I::NotFinite {
                sample: 0,
                metric: Metric::CpuPercent,
            },
            "samples[0].value: cpu_percent must be a finite number",
        );
        check_invalid(
            |b| b.samples[0].value = 100.5,
            I::OutOfRange {
                sample: 0,
                metric: Metric::CpuPercent,
                value: 100.5,
            },
            "samples[0].value: cpu_percent = 100.5 is out of range (must be from 0 to 100)",
        );
        check_invalid(
            |b| {
                b.samples[0].metric = "net_in_kbps".into();
                b.samples[0].value = -0.5;
            },
            I::OutOfRange {
                sample: 0,
                metric: Metric::NetInKbps,
                value: -0.5,
            },
            "samples[0].value: net_in_kbps = -0.5 is out of range (must be from 0 to 1073741824 \
             KiB/s)",
        );
        check_invalid(
            |b| b.samples[0].hostname = "other".into(),
            I::HostnameMismatch {
                sample: 0,
                got: "other".into(),
            },
            "samples[0].hostname: 'other' differs from the batch's hostname",
        );
        check_invalid(
            |b| b.samples[0].time_unix_ms = NOW + 3_600_000,
            I::TimeAfterSend {
                sample: 0,
                time_unix_ms: NOW + 3_600_000,
                sent_unix_ms: NOW + 5,
            },
            "samples[0].time_unix_ms: 2026-11-25T13:00:00.000Z is more than 60 s after the \
             batch's sent_unix_ms (2026-11-25T12:00:00.005Z)",
        );
        check_invalid(
            |b| b.samples = vec![b.samples[0].clone(); 65],
            I::TooManySamples(65),
            "samples: 65 in one batch, at most 64",
        );
        check_invalid(
            |b| b.agent_id = "x".repeat(300),
            I::Field(FieldError::TooLong {
                field: "agent_id".into(),
                bytes: 300,
                limit: MAX_ID_BYTES,
            }),
            "agent_id: 300 bytes long, at most 256",
        );
    }

    #[test]
    fn every_limit_holds_exactly_at_its_edge() {
        use InvalidBatch as I;
        // Lengths: the limit passes, one more byte fails.
        check_valid(|b| b.agent_id = "a".repeat(MAX_ID_BYTES));
        check_valid(|b| b.agent_version = "v".repeat(MAX_ID_BYTES));
        check_invalid(
            |b| b.agent_version = "v".repeat(MAX_ID_BYTES + 1),
            I::Field(FieldError::TooLong {
                field: "agent_version".into(),
                bytes: MAX_ID_BYTES + 1,
                limit: MAX_ID_BYTES,
            }),
            "agent_version: 257 bytes long, at most 256",
        );
        let long_host = "h".repeat(MAX_HOSTNAME_BYTES);
        check_valid(|b| {
            b.hostname = long_host.clone();
            b.samples[0].hostname = long_host.clone();
        });
        check_invalid(
            |b| b.hostname = "h".repeat(MAX_HOSTNAME_BYTES + 1),
            I::Field(FieldError::TooLong {
                field: "hostname".into(),
                bytes: MAX_HOSTNAME_BYTES + 1,
                limit: MAX_HOSTNAME_BYTES,
            }),
            "hostname: 254 bytes long, at most 253",
        );
        // Sample count.
        let v = check_valid(|b| b.samples = vec![b.samples[0].clone(); MAX_SAMPLES_PER_BATCH]);
        assert_eq!(v.samples.len(), MAX_SAMPLES_PER_BATCH);
        // Values: both ends of a percentage, and a rate of exactly 0 (an
        // idle disk, the most common value there is).
        for value in [0.0, 100.0] {
            let v = check_valid(|b| b.samples[0].value = value);
            assert_eq!(v.samples[0].2, value);
        }
        let v = check_valid(|b| {
            b.samples[0].metric = "disk_write_kbps".into();
            b.samples[0].value = 0.0;
        });
        assert_eq!(v.samples[0], (NOW, Metric::DiskWriteKbps, 0.0));
        check_invalid(
            |b| b.samples[0].value = -0.0001,
            I::OutOfRange {
                sample: 0,
                metric: Metric::CpuPercent,
                value: -0.0001,
            },
            "samples[0].value: cpu_percent = -0.0001 is out of range (must be from 0 to 100)",
        );
        // A sample exactly 60 s after the send time passes; 1 ms more fails.
        let sent = NOW + 5;
        check_valid(|b| b.samples[0].time_unix_ms = sent + MAX_SAMPLE_AFTER_SEND_MS);
        check_invalid(
            |b| b.samples[0].time_unix_ms = sent + MAX_SAMPLE_AFTER_SEND_MS + 1,
            I::TimeAfterSend {
                sample: 0,
                time_unix_ms: sent + MAX_SAMPLE_AFTER_SEND_MS + 1,
                sent_unix_ms: sent,
            },
            "samples[0].time_unix_ms: 2026-11-25T12:01:00.006Z is more than 60 s after the \
             batch's sent_unix_ms (2026-11-25T12:00:00.005Z)",
        );
    }

    #[test]
    fn every_rate_is_capped_at_one_tib_per_second_exactly() {
        // Finding 5 of the hostile-input review: rates up to 1e308 were
        // stored and broke the hosts table. The bound passes, the next
        // representable number above it fails, for every rate metric.
        let above = f64::from_bits(MAX_RATE_KIB_PER_S.to_bits() + 1);
        for metric in Metric::ALL.into_iter().filter(|m| !m.is_percent()) {
            let v = check_valid(|b| {
                b.samples[0].metric = metric.name().into();
                b.samples[0].value = MAX_RATE_KIB_PER_S;
            });
            assert_eq!(v.samples[0].2, MAX_RATE_KIB_PER_S);
            for value in [above, 1e308] {
                check_invalid(
                    |b| {
                        b.samples[0].metric = metric.name().into();
                        b.samples[0].value = value;
                    },
                    InvalidBatch::OutOfRange {
                        sample: 0,
                        metric,
                        value,
                    },
                    &format!(
                        "samples[0].value: {metric} = {value} is out of range (must be from 0 \
                         to 1073741824 KiB/s)"
                    ),
                );
            }
        }
        assert_eq!(value_range(Metric::MemPercent), (0.0, 100.0));
        assert_eq!(MAX_RATE_KIB_PER_S, (1u64 << 30) as f64);
    }

    #[test]
    fn a_seq_beyond_any_agent_is_refused_with_its_own_code() {
        // Finding 4: a batch with seq 10^12 opened a gap of a trillion
        // seqs in the de-duplication state.
        let v = check_valid(|b| b.seq = MAX_SEQ);
        assert_eq!(v.seq, MAX_SEQ);
        for seq in [MAX_SEQ + 1, 1_000_000_000_000, u64::MAX] {
            let mut b = batch(NOW, &[(Metric::CpuPercent, 1.0)]);
            b.seq = seq;
            let err = validate_batch(b, NOW, 30_000).unwrap_err();
            assert_eq!(err, InvalidBatch::SeqOutOfRange(seq));
            assert_eq!(err.ack_code(), pb::AckCode::SequenceOutOfRange);
            assert_eq!(
                err.to_string(),
                format!(
                    "seq: {seq} is more than any agent can have produced (at most 4294967296: \
                     13.6 years of batches at the fastest interval)"
                )
            );
        }
        assert_eq!(InvalidBatch::ZeroSeq.ack_code(), pb::AckCode::Invalid);
    }

    fn hello() -> pb::AgentHello {
        pb::AgentHello {
            agent_id: "pi-1".into(),
            hostname: "pi-1".into(),
            agent_version: "0.1.0".into(),
            boot_id: 7,
            interval_ms: 5000,
        }
    }

    fn check_hello(mutate: impl FnOnce(&mut pb::AgentHello), message: Option<&str>) {
        let mut h = hello();
        mutate(&mut h);
        assert_eq!(
            validate_hello(&h)
                .map_err(|e| e.to_string())
                .err()
                .as_deref(),
            message
        );
    }

    #[test]
    fn a_hello_holds_to_the_rules_of_a_batch() {
        // Finding 2: hellos with 256 KiB agent_id and agent_version were
        // taken, kept and logged whole.
        check_hello(|_| {}, None);
        check_hello(|h| h.agent_id = "a".repeat(MAX_ID_BYTES), None);
        check_hello(|h| h.agent_version = "v".repeat(MAX_ID_BYTES), None);
        check_hello(|h| h.agent_version.clear(), None);
        check_hello(
            |h| h.agent_id = "a".repeat(256 * 1024),
            Some("agent_id: 262144 bytes long, at most 256"),
        );
        check_hello(
            |h| h.agent_version = "v".repeat(MAX_ID_BYTES + 1),
            Some("agent_version: 257 bytes long, at most 256"),
        );
        check_hello(
            |h| h.agent_id.clear(),
            Some("agent_id: required, but empty"),
        );
        check_hello(
            |h| h.hostname = "pi\nINFO forged line".into(),
            Some(
                "hostname: 'pi\\nINFO forged line' has characters other than ASCII letters, \
                 digits, '.', '-' and '_'",
            ),
        );
        check_hello(
            |h| h.hostname = "h".repeat(MAX_HOSTNAME_BYTES + 1),
            Some("hostname: 254 bytes long, at most 253"),
        );
        check_hello(
            |h| h.hostname.clear(),
            Some("hostname: required, but empty"),
        );
    }

    #[test]
    fn a_bad_hostname_is_shown_escaped_and_capped() {
        let long = format!("{}\x1b[2J", "x".repeat(300));
        let e = check_hostname("hosts[3]", &long).unwrap_err();
        assert_eq!(e.to_string(), "hosts[3]: 304 bytes long, at most 253");
        let e = check_hostname("hosts[0]", "a\x1b]0;owned\x07").unwrap_err();
        assert_eq!(
            e.to_string(),
            "hosts[0]: 'a\\x1b]0;owned\\x07' has characters other than ASCII letters, digits, \
             '.', '-' and '_'"
        );
        assert!(check_hostname("hostname", &"h".repeat(MAX_HOSTNAME_BYTES)).is_ok());
        assert_eq!(
            check_len("command_id", &"c".repeat(129), 128)
                .unwrap_err()
                .to_string(),
            "command_id: 129 bytes long, at most 128"
        );
    }

    #[test]
    fn the_year_2000_floor_is_exact() {
        // No clock correction (the batch was sent at the server's time):
        // a sample at 2000-01-01T00:00:00Z passes, 1 ms earlier fails.
        let at = |t: i64| {
            let mut b = batch(t, &[(Metric::MemPercent, 1.0)]);
            b.sent_unix_ms = NOW;
            validate_batch(b, NOW, 30_000)
        };
        assert_eq!(
            at(MIN_SAMPLE_UNIX_MS).unwrap().samples[0].0,
            MIN_SAMPLE_UNIX_MS
        );
        let err = at(MIN_SAMPLE_UNIX_MS - 1).unwrap_err();
        assert_eq!(
            err,
            InvalidBatch::TimeBeforeEpoch {
                sample: 0,
                time_unix_ms: MIN_SAMPLE_UNIX_MS - 1
            }
        );
        assert_eq!(
            err.to_string(),
            "samples[0].time_unix_ms: 1999-12-31T23:59:59.999Z is before 2000-01-01 even after \
             the clock correction"
        );
    }

    #[test]
    fn the_skew_threshold_is_exact() {
        // Offset exactly at the threshold: left alone; 1 ms more: corrected.
        let at = |offset: i64| {
            let mut b = batch(NOW, &[(Metric::MemPercent, 1.0)]);
            b.sent_unix_ms = NOW + offset;
            validate_batch(b, NOW, 30_000).unwrap()
        };
        let v = at(30_000);
        assert!(!v.time_corrected);
        assert_eq!(v.samples[0].0, NOW);
        let v = at(30_001);
        assert!(v.time_corrected);
        assert_eq!(v.samples[0].0, NOW - 30_001);
        let v = at(-30_001);
        assert!(v.time_corrected);
        assert_eq!(v.samples[0].0, NOW + 30_001);
    }

    #[test]
    fn absurd_times_do_not_overflow() {
        for sent in [i64::MIN, i64::MAX, -1] {
            let mut b = batch(NOW, &[(Metric::MemPercent, 1.0)]);
            b.sent_unix_ms = sent;
            for received in [i64::MIN, 0, NOW, i64::MAX] {
                // Either verdict is fine; what matters is no panic.
                let _ = validate_batch(b.clone(), received, 30_000);
            }
        }
    }

    #[test]
    fn a_clock_far_off_is_corrected_onto_the_server_clock() {
        // A Pi without an RTC that booted at 1970 + 1 day.
        // The sample was taken 5 ms before the batch was sent (see `batch`).
        let sample_time = 86_400_000;
        let b = batch(sample_time, &[(Metric::MemPercent, 40.0)]);
        let v = validate_batch(b, NOW, 30_000).unwrap();
        assert!(v.time_corrected);
        assert_eq!(v.clock_offset_ms, sample_time + 5 - NOW);
        assert_eq!(v.samples[0].0, NOW - 5);
    }

    #[test]
    fn a_small_offset_is_left_alone() {
        let b = batch(NOW - 1000, &[(Metric::MemPercent, 40.0)]);
        let v = validate_batch(b, NOW + 2000, 30_000).unwrap();
        assert!(!v.time_corrected);
        assert_eq!(v.samples[0].0, NOW - 1000);
    }

    /// A health sample of the default batch's host at `NOW`.
    fn health(metric: &str, device: &str, value: f64) -> pb::Sample {
        pb::Sample {
            time_unix_ms: NOW,
            hostname: "pi-1".into(),
            metric: metric.into(),
            value,
            device: device.into(),
        }
    }

    /// Validates the default batch with `samples` as its health samples.
    fn check_health(samples: Vec<pb::Sample>) -> Result<ValidBatch, InvalidBatch> {
        let mut b = batch(NOW, &[(Metric::CpuPercent, 1.0)]);
        b.health_samples = samples;
        validate_batch(b, NOW, 30_000)
    }

    /// The default batch with `samples` must be refused for sample `i`'s
    /// `rule`, with exactly `message`.
    fn check_health_refused(samples: Vec<pb::Sample>, i: usize, rule: HealthRule, message: &str) {
        let err = check_health(samples).unwrap_err();
        assert_eq!(err, InvalidBatch::Health { sample: i, rule });
        assert_eq!(err.to_string(), message);
    }

    #[test]
    fn health_samples_hold_to_their_rules_at_each_edge() {
        use HealthMetric as H;
        let ok = health("temp_celsius", "", 48.5);
        let mount = |device: &str| health("fs_used_percent", device, 0.0);
        // Valid samples come back in order with their device; unknown
        // metrics (a newer agent's) are skipped and counted.
        let v = check_health(vec![
            ok.clone(),
            health("from_a_newer_agent", "", 1.0),
            mount("/"),
            mount("/boot"),
            health("also_newer", "x", 2.0),
        ])
        .unwrap();
        let got: Vec<(H, &str, f64)> = v
            .health
            .iter()
            .map(|h| (h.metric, h.device.as_str(), h.value))
            .collect();
        assert_eq!(
            got,
            [
                (H::TempCelsius, "", 48.5),
                (H::FsUsedPercent, "/", 0.0),
                (H::FsUsedPercent, "/boot", 0.0)
            ]
        );
        assert_eq!(v.health[0].time_unix_ms, NOW);
        assert_eq!(v.health_skipped, 2);
        assert_eq!(check_health(vec![]).unwrap().health_skipped, 0);

        // Count: the limit passes, one more fails (one sample a second).
        let seconds = |n: usize| -> Vec<pb::Sample> {
            (0..n)
                .map(|i| pb::Sample {
                    time_unix_ms: NOW - 1000 * i as i64,
                    ..health("load1", "", 0.5)
                })
                .collect()
        };
        let full = check_health(seconds(MAX_HEALTH_SAMPLES_PER_BATCH));
        assert_eq!(full.unwrap().health.len(), MAX_HEALTH_SAMPLES_PER_BATCH);
        let err = check_health(seconds(MAX_HEALTH_SAMPLES_PER_BATCH + 1)).unwrap_err();
        assert_eq!(
            err,
            InvalidBatch::TooManyHealthSamples(MAX_HEALTH_SAMPLES_PER_BATCH + 1)
        );
        assert_eq!(
            err.to_string(),
            "health_samples: 65 in one batch, at most 64"
        );

        let mut other_host = ok.clone();
        other_host.hostname = "pi-2".into();
        check_health_refused(
            vec![ok.clone(), other_host],
            1,
            HealthRule::HostnameMismatch("pi-2".into()),
            "health_samples[1].hostname: 'pi-2' differs from the batch's hostname",
        );
        check_health_refused(
            vec![health("load1", "", f64::NAN)],
            0,
            HealthRule::NotFinite(H::Load1),
            "health_samples[0].value: load1 must be a finite number",
        );
        // Both ends of the range pass; just outside fails.
        for value in [0.0, 100.0] {
            assert!(check_health(vec![health("swap_percent", "", value)]).is_ok());
        }
        check_health_refused(
            vec![health("swap_percent", "", 100.5)],
            0,
            HealthRule::OutOfRange(H::SwapPercent, 100.5),
            "health_samples[0].value: swap_percent = 100.5 is out of range (must be from 0 to 100)",
        );
        check_health_refused(
            vec![mount("")],
            0,
            HealthRule::DeviceMissing(H::FsUsedPercent),
            "health_samples[0].device: required for fs_used_percent (its mountpoint)",
        );
        check_health_refused(
            vec![health("temp_celsius", "zone0", 40.0)],
            0,
            HealthRule::DeviceNotAllowed(H::TempCelsius),
            "health_samples[0].device: must be empty for temp_celsius (one value per host)",
        );
        // Device length: the limit passes, one more byte fails.
        assert!(check_health(vec![mount(&"d".repeat(MAX_DEVICE_BYTES))]).is_ok());
        check_health_refused(
            vec![mount(&"d".repeat(MAX_DEVICE_BYTES + 1))],
            0,
            HealthRule::DeviceTooLong(MAX_DEVICE_BYTES + 1),
            "health_samples[0].device: 257 bytes long, at most 256",
        );
        // Time: exactly 60 s after the send time passes, 1 ms more fails;
        // 2000-01-01 passes, 1 ms earlier fails.
        let sent = NOW + 5;
        let at = |time_unix_ms: i64| pb::Sample {
            time_unix_ms,
            ..ok.clone()
        };
        let v = check_health(vec![
            at(sent + MAX_SAMPLE_AFTER_SEND_MS),
            at(MIN_SAMPLE_UNIX_MS),
        ]);
        let times: Vec<i64> = v.unwrap().health.iter().map(|h| h.time_unix_ms).collect();
        assert_eq!(times, [sent + MAX_SAMPLE_AFTER_SEND_MS, MIN_SAMPLE_UNIX_MS]);
        check_health_refused(
            vec![at(sent + MAX_SAMPLE_AFTER_SEND_MS + 1)],
            0,
            HealthRule::TimeAfterSend {
                time_unix_ms: sent + MAX_SAMPLE_AFTER_SEND_MS + 1,
                sent_unix_ms: sent,
            },
            "health_samples[0].time_unix_ms: 2026-11-25T12:01:00.006Z is more than 60 s after \
             the batch's sent_unix_ms (2026-11-25T12:00:00.005Z)",
        );
        check_health_refused(
            vec![at(MIN_SAMPLE_UNIX_MS - 1)],
            0,
            HealthRule::TimeBeforeEpoch(MIN_SAMPLE_UNIX_MS - 1),
            "health_samples[0].time_unix_ms: 1999-12-31T23:59:59.999Z is before 2000-01-01 \
             even after the clock correction",
        );
        // A duplicate is the same time, metric and device; any one of
        // them differing is another sample (above: "/" and "/boot").
        check_health_refused(
            vec![mount("/"), mount("/boot"), mount("/")],
            2,
            HealthRule::Duplicate(H::FsUsedPercent, "/".into()),
            "health_samples[2].metric: fs_used_percent for device '/' twice at the same time",
        );
        assert!(check_health(vec![ok.clone(), at(NOW - 1000), health("load1", "", 1.0)]).is_ok());
    }
}
