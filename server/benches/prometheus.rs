//! Figures for BENCHMARKS.md: `/metrics` with 10,000 hosts while ingest
//! runs, and how fast remote-write reads and encodes the stored samples
//! (the store's journal → protobuf → snappy, the part that is the
//! server's; the receiver's own speed is not measured here).
//!
//! `cargo bench -p monitor-server --bench prometheus`; knobs:
//! `HOSTS` (10000), `SCRAPES` (20), `TICKS` (12, stored per host before the
//! remote-write pass).

// A benchmark on fixtures it makes itself: a failure should stop it loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::env_or;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use monitor::metric::Metric;
use monitor_server::http;
use monitor_server::http::exposition::Format;
use monitor_server::registry::Registry;
use monitor_server::remote_write::{self, MAX_SAMPLES_PER_REQUEST};
use monitor_server::store::IncomingBatch;

fn batch(host: usize, seq: u64, time_unix_ms: i64) -> IncomingBatch {
    common::six_batch(host, format!("host-{host:05}"), seq, time_unix_ms, |i| {
        ((seq as usize * 7 + host + i) % 1000) as f64 / 10.0
    })
}

fn main() {
    let hosts: usize = env_or("HOSTS", 10_000);
    let scrapes: usize = env_or("SCRAPES", 20);
    let ticks: u64 = env_or("TICKS", 12);
    let dir = tempfile::tempdir().expect("temp dir");
    let (rt, store) = common::runtime_and_store(dir.path());
    rt.block_on(async {
        let registry = Arc::new(Registry::default());
        // A destination holds the journal, as remote-write does.
        store
            .register_forwarders(
                vec!["bench".into()],
                monitor_server::remote_write::DEFAULT_MAX_LAG,
            )
            .await
            .expect("cursor");
        let t0 = monitor::time::now_unix_ms() - 120_000;
        // Every host stored `ticks` times and online.
        let started = Instant::now();
        for seq in 1..=ticks {
            let mut tickets = Vec::with_capacity(hosts);
            for h in 0..hosts {
                let b = batch(h, seq, t0 + seq as i64 * 5_000);
                tickets.push(store.enqueue(b).await.expect("enqueue"));
            }
            for t in tickets {
                t.await.expect("stored");
            }
        }
        let stored_samples = hosts as u64 * ticks * Metric::ALL.len() as u64;
        println!(
            "stored {stored_samples} samples of {hosts} hosts in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        for h in 0..hosts {
            registry.report_opened(&format!("host-{h:05}"), "127.0.0.1:1", t0);
        }

        // Remote-write's read and encode path, alone.
        let started = Instant::now();
        let (mut cursor, mut samples, mut bytes, mut requests) = (0i64, 0u64, 0usize, 0u64);
        loop {
            let b = store
                .forward_batch(cursor, None, MAX_SAMPLES_PER_REQUEST)
                .await
                .expect("read");
            if b.rows.is_empty() {
                break;
            }
            samples += b.rows.iter().map(|r| r.samples.len() as u64).sum::<u64>();
            bytes += remote_write::proto::encode(&b.rows).expect("encode").len();
            requests += 1;
            cursor = b.through;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "remote-write read+encode: {samples} samples in {requests} requests ({} KiB \
             compressed) in {secs:.2} s = {:.0} samples/s",
            bytes / 1024,
            samples as f64 / secs
        );
        assert_eq!(samples, stored_samples, "every stored sample read once");

        // /metrics with every host online while ingest goes on (10,000
        // batches/s would be one tick of every host per second).
        let ingesting = Arc::new(AtomicBool::new(true));
        let ingested = Arc::new(AtomicU64::new(0));
        let load = {
            let (store, ingesting, ingested) =
                (store.clone(), Arc::clone(&ingesting), Arc::clone(&ingested));
            tokio::spawn(async move {
                let mut seq = ticks;
                while ingesting.load(Ordering::Relaxed) {
                    seq += 1;
                    let mut tickets = Vec::with_capacity(hosts);
                    for h in 0..hosts {
                        let b = batch(h, seq, t0 + seq as i64 * 5_000);
                        match store.enqueue(b).await {
                            Ok(t) => tickets.push(t),
                            Err(_) => return,
                        }
                    }
                    for t in tickets {
                        let _ = t.await;
                    }
                    ingested.fetch_add(hosts as u64, Ordering::Relaxed);
                }
            })
        };
        let state = common::http_state(&store, &registry);
        let mut times = Vec::with_capacity(scrapes);
        let mut size = 0;
        let ingest_started = Instant::now();
        for _ in 0..scrapes {
            let started = Instant::now();
            let snap = http::metrics::snapshot(&state).await.expect("snapshot");
            let body = http::metrics::encode(&snap, &state.telemetry, &[], Format::Text);
            times.push(started.elapsed());
            size = body.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ingesting.store(false, Ordering::Relaxed);
        let _ = load.await;
        let rate = ingested.load(Ordering::Relaxed) as f64 / ingest_started.elapsed().as_secs_f64();
        times.sort();
        println!(
            "/metrics with {hosts} hosts online: median {} ms, max {} ms, {} KiB, while \
             ingesting {rate:.0} batches/s",
            times[times.len() / 2].as_millis(),
            times[times.len() - 1].as_millis(),
            size / 1024
        );
        store.close().await.expect("close");
    });
}
