//! Fuzz: the wire decoder the server runs on every message from the
//! network — prost decoding of `Batch`, `CommandRequest`, `CommandResponse`
//! and `Ack`, then `validate_batch` — over mutated bytes.
//!
//! Checks, for every input: no panic; no allocation out of proportion to
//! the input (an allocator that counts bytes wraps the system one, so a
//! length field that claims gigabytes and gets them would fail here, not
//! in production); a decoded message re-encodes and decodes to itself; a
//! batch that passes validation holds only values the store accepts.
//!
//! One `#[test]` only: the allocation counter is process-wide, and a second
//! test running in parallel would blur its figures.

// Test support code panics on purpose when the harness cannot proceed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fuzz::Fuzzer;
use monitor::batch::{MetricValues, TickBatch};
use monitor::metric::Metric;
use monitor::pb;
use monitor::wire::{
    AgentCounters, AgentIdentity, MAX_SAMPLES_PER_BATCH, MIN_SAMPLE_UNIX_MS, batch_to_pb,
    validate_batch,
};
use prost::Message;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Bytes a decode may allocate per input byte, plus a constant. A `Sample`
/// is 64 bytes in memory and at least 2 on the wire, and a growing `Vec`
/// allocates about twice its final size in total: 128 per byte covers the
/// worst honest case; a decoder that trusted a length field would not fit.
const ALLOC_PER_INPUT_BYTE: usize = 128;
const ALLOC_BASE_BYTES: usize = 64 * 1024;

/// Largest input: the server's message cap is 256 KiB; 64 KiB reaches every
/// field and keeps the run short.
const MAX_INPUT_BYTES: usize = 64 * 1024;

const NOW_UNIX_MS: i64 = 1_795_608_000_000;

fn seeds() -> Vec<Vec<u8>> {
    let id = AgentIdentity {
        agent_id: "pi-1".into(),
        hostname: "pi-1".into(),
        agent_version: "0.1.0".into(),
        boot_id: 0x0123_4567_89ab_cdef,
    };
    let mut values = MetricValues::default();
    for (i, m) in Metric::ALL.iter().enumerate() {
        values.set(*m, i as f64 * 10.5);
    }
    let tick = TickBatch {
        boot_id: id.boot_id,
        seq: 42,
        time_unix_ms: NOW_UNIX_MS - 5_000,
        values,
        // Health samples too, so mutations reach their fields and device.
        health: vec![
            monitor::batch::HealthValue {
                metric: monitor::health::HealthMetric::TempCelsius,
                device: "".into(),
                value: 61.3,
            },
            monitor::batch::HealthValue {
                metric: monitor::health::HealthMetric::FsUsedPercent,
                device: "/boot/firmware".into(),
                value: 48.5,
            },
        ]
        .into_boxed_slice(),
    };
    let counters = AgentCounters {
        produced_batches_total: 42,
        dropped_batches_total: 3,
        parse_errors_total: 1,
    };
    let batch = batch_to_pb(&id, &tick, NOW_UNIX_MS, counters);
    let one_sample = TickBatch {
        values: [(Metric::MemPercent, 25.0)].into_iter().collect(),
        ..tick
    };
    let requests = [
        pb::CommandRequest {
            kind: Some(pb::command_request::Kind::Hello(pb::ServerHello {
                server_unix_ms: NOW_UNIX_MS,
            })),
        },
        pb::CommandRequest {
            kind: Some(pb::command_request::Kind::Run(pb::RunCommand {
                command_id: "c0ffee".into(),
                argv: vec!["df".into(), "-h".into(), "/".into()],
                timeout_ms: 5_000,
                expires_unix_ms: NOW_UNIX_MS + 30_000,
                signed: Some(pb::SignedCommand {
                    grant: vec![0x0a, 0x02, b'i', b'd'],
                    signature: vec![7; 64],
                    public_key: vec![9; 32],
                }),
            })),
        },
        pb::CommandRequest {
            kind: Some(pb::command_request::Kind::Cancel(pb::CancelCommand {
                command_id: "c0ffee".into(),
            })),
        },
    ];
    let responses = [
        pb::CommandResponse {
            command_id: String::new(),
            kind: Some(pb::command_response::Kind::Hello(pb::AgentHello {
                agent_id: "pi-1".into(),
                hostname: "pi-1".into(),
                agent_version: "0.1.0".into(),
                boot_id: 7,
                interval_ms: 5_000,
            })),
        },
        pb::CommandResponse {
            command_id: "c0ffee".into(),
            kind: Some(pb::command_response::Kind::Output(pb::Output {
                stream: pb::OutputStream::Stdout as i32,
                data: b"Filesystem Size Used\n/dev/root 29G 3G\n".to_vec(),
            })),
        },
        pb::CommandResponse {
            command_id: "c0ffee".into(),
            kind: Some(pb::command_response::Kind::Finished(pb::Finished {
                outcome: pb::Outcome::Exited as i32,
                exit_code: Some(0),
                signal: None,
                stdout_truncated: false,
                stderr_truncated: true,
                duration_ms: 12,
                stdout_bytes: 40,
                stderr_bytes: 0,
                message: String::new(),
            })),
        },
    ];
    let ack = pb::Ack {
        boot_id: 7,
        seq: 42,
        code: pb::AckCode::Invalid as i32,
        message: "samples[0].value: mem_percent = 250 is out of range (must be from 0 to 100)"
            .into(),
        server_unix_ms: NOW_UNIX_MS,
        batches: 0,
    };
    let mut seeds = vec![
        batch.encode_to_vec(),
        batch_to_pb(&id, &one_sample, NOW_UNIX_MS, counters).encode_to_vec(),
        ack.encode_to_vec(),
    ];
    seeds.extend(requests.iter().map(Message::encode_to_vec));
    seeds.extend(responses.iter().map(Message::encode_to_vec));
    // Hand-made length bombs: field 4 (samples) and field 1 (agent_id)
    // claiming far more bytes than follow.
    seeds.push(vec![0x22, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x0a, 0x00]);
    seeds.push(vec![
        0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
    ]);
    seeds
}

/// Decodes `bytes` as `M`; on success its encoding must decode to a
/// message with the same encoding (bytes, not `==`: a NaN value is never
/// equal to itself).
fn decode_roundtrip<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    let encoded = m.encode_to_vec();
    let again = M::decode(encoded.as_slice()).expect("re-encoded message decodes");
    assert_eq!(encoded, again.encode_to_vec());
    Some(m)
}

/// What the server does with a `Batch` from the network: 0 when it does
/// not decode, 1 when validation refuses it, 2 when it would be stored.
fn server_side(bytes: &[u8]) -> usize {
    let Some(batch) = decode_roundtrip::<pb::Batch>(bytes) else {
        return 0;
    };
    let Ok(valid) = validate_batch(batch, NOW_UNIX_MS, 30_000) else {
        return 1;
    };
    assert!(valid.samples.len() <= MAX_SAMPLES_PER_BATCH);
    for &(time, metric, value) in &valid.samples {
        assert!(value.is_finite(), "{metric}: {value}");
        if metric.is_percent() {
            assert!((0.0..=100.0).contains(&value), "{metric}: {value}");
        } else {
            assert!(value >= 0.0, "{metric}: {value}");
        }
        assert!(time >= MIN_SAMPLE_UNIX_MS, "{time}");
    }
    2
}

#[test]
fn fuzz_wire_decoders_and_validate_batch() {
    let seeds = seeds();
    let mut fuzzer = Fuzzer::from_env(100_000);
    let mut worst_ratio = 0f64;
    let mut decoded = 0usize;
    let mut validated = 0usize;
    type Target = (&'static str, fn(&[u8]) -> usize);
    let targets: [Target; 4] = [
        ("batch+validate", server_side),
        ("command_request", |b| {
            usize::from(decode_roundtrip::<pb::CommandRequest>(b).is_some())
        }),
        ("command_response", |b| {
            usize::from(decode_roundtrip::<pb::CommandResponse>(b).is_some())
        }),
        ("ack", |b| {
            usize::from(decode_roundtrip::<pb::Ack>(b).is_some())
        }),
    ];
    for (name, target) in targets {
        fuzzer.run(name, &seeds, MAX_INPUT_BYTES, |input| {
            let region = Region::new(GLOBAL);
            let ok = target(input);
            let allocated = region.change().bytes_allocated;
            let bound = ALLOC_PER_INPUT_BYTE * input.len() + ALLOC_BASE_BYTES;
            assert!(
                allocated <= bound,
                "{name}: {allocated} bytes allocated for a {}-byte input",
                input.len()
            );
            if input.len() >= 256 {
                worst_ratio = worst_ratio.max(allocated as f64 / input.len() as f64);
            }
            decoded += usize::from(ok > 0);
            validated += usize::from(ok == 2);
        });
    }
    // The seeds themselves are valid: a fuzzer that never reaches the
    // validator tests nothing.
    assert!(decoded >= 8, "only {decoded} inputs decoded");
    assert!(validated >= 2, "only {validated} batches passed validation");
    println!(
        "fuzz wire: {decoded} inputs decoded, {validated} batches valid; worst allocation \
         {worst_ratio:.1} bytes per input byte for inputs of 256 bytes or more (bound \
         {ALLOC_PER_INPUT_BYTE} per byte + {ALLOC_BASE_BYTES} B)"
    );
}
