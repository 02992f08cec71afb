//! Figures for BENCHMARKS.md: what the host lists cost when every host
//! holds the wire's cap of health values (64 per host: a Pi's temperature,
//! load, uptime, swap, root inodes, throttling and under-voltage, and 57
//! mount points). Timed per call, with the bytes each answer is:
//! `Store::hosts()` (the store's part of all three lists),
//! `admin::host_infos` (`monitorctl hosts`, `ListHosts`: the join and its
//! protobuf), `/metrics` (snapshot and text exposition) and `/api/hosts`
//! (the dashboard's list, through the router, gzip and identity).
//!
//! `cargo bench -p monitor-server --bench hosts_health`; knobs: `HOSTS`
//! (1000, every one online), `RUNS` (10).

// A benchmark on fixtures it makes itself: a failure should stop it loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::env_or;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::BodyExt;
use monitor::health::HealthMetric;
use monitor_server::http;
use monitor_server::http::exposition::Format;
use monitor_server::registry::Registry;
use monitor_server::store::{IncomingBatch, MAX_HEALTH_SERIES_PER_HOST, StoredHealth};

/// One batch of host `h` holding the cap's worth of health values.
fn batch(h: usize, time_unix_ms: i64) -> IncomingBatch {
    let one = |metric, device: &str, value| StoredHealth {
        time_unix_ms,
        metric,
        device: device.into(),
        value,
    };
    let mut health = vec![
        one(HealthMetric::TempCelsius, "", 48.312),
        one(HealthMetric::Load1, "", 0.87),
        one(HealthMetric::UptimeSeconds, "", 1_234_567.0),
        one(HealthMetric::SwapPercent, "", 3.25),
        one(HealthMetric::RootInodesUsedPercent, "", 11.7),
        one(HealthMetric::ThrottledFlags, "", f64::from(0x5_0005)),
        one(HealthMetric::UnderVoltage, "", 1.0),
    ];
    let mut i = 0;
    while health.len() < MAX_HEALTH_SERIES_PER_HOST {
        let device = format!("/media/pi/disk-{i:02}");
        health.push(one(HealthMetric::FsUsedPercent, &device, 10.0 + i as f64));
        i += 1;
    }
    IncomingBatch {
        health,
        ..common::six_batch(h, format!("pi-{h:05}"), 1, time_unix_ms, |_| 12.5)
    }
}

/// Times `f` `runs` times: (median ms, slowest ms, the last answer's
/// bytes). The slowest is the first call where an answer is cached.
async fn timed<F, Fut>(runs: usize, mut f: F) -> (f64, f64, usize)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut times_ms = Vec::with_capacity(runs);
    let mut bytes = 0;
    for _ in 0..runs {
        let started = Instant::now();
        bytes = f().await;
        times_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times_ms.sort_by(f64::total_cmp);
    (
        times_ms[times_ms.len() / 2],
        times_ms[times_ms.len() - 1],
        bytes,
    )
}

fn main() {
    let hosts: usize = env_or("HOSTS", 1000);
    let runs: usize = env_or("RUNS", 10);
    let dir = tempfile::tempdir().expect("temp dir");
    let (rt, store) = common::runtime_and_store(dir.path());
    rt.block_on(async {
        let now = monitor::time::now_unix_ms();
        let registry = Arc::new(Registry::default());
        let mut tickets = Vec::with_capacity(hosts);
        for h in 0..hosts {
            tickets.push(store.enqueue(batch(h, now)).await.expect("enqueue"));
            registry.report_opened(&format!("pi-{h:05}"), "127.0.0.1:1", now);
        }
        for t in tickets {
            t.await.expect("stored");
        }
        let stored = store.hosts().await.expect("hosts");
        assert_eq!(stored.len(), hosts);
        assert!(
            stored
                .iter()
                .all(|h| h.health.len() == MAX_HEALTH_SERIES_PER_HOST)
        );
        println!(
            "{hosts} hosts online, {MAX_HEALTH_SERIES_PER_HOST} health values each \
             (median of {runs} calls):"
        );

        let (ms, max_ms, _) =
            timed(runs, || async { store.hosts().await.expect("hosts").len() }).await;
        println!("  Store::hosts(): {ms:.1} ms (slowest {max_ms:.1})");

        let (ms, max_ms, bytes) = timed(runs, || async {
            let stored = store.hosts().await.expect("hosts");
            let infos = monitor_server::admin::host_infos(stored, registry.snapshot(), usize::MAX);
            infos.iter().map(prost::Message::encoded_len).sum()
        })
        .await;
        println!(
            "  monitorctl hosts (Store::hosts + admin::host_infos + protobuf size): {ms:.1} ms \
             (slowest {max_ms:.1}), {:.1} KB of HostInfo",
            bytes as f64 / 1000.0
        );

        let state = common::http_state(&store, &registry);
        let (ms, max_ms, bytes) = timed(runs, || async {
            let snap = http::metrics::snapshot(&state).await.expect("snapshot");
            http::metrics::encode(&snap, &state.telemetry, &[], Format::Text).len()
        })
        .await;
        println!(
            "  /metrics (snapshot + text exposition): {ms:.1} ms (slowest {max_ms:.1}), {:.1} KB",
            bytes as f64 / 1000.0
        );

        let router = http::router(state);
        for gzip in [true, false] {
            let (ms, max_ms, bytes) = timed(runs, || async {
                let mut req = axum::http::Request::builder().uri("/api/hosts");
                if gzip {
                    req = req.header("accept-encoding", "gzip");
                }
                let req = req.body(axum::body::Body::empty()).unwrap();
                let resp = tower::ServiceExt::oneshot(router.clone(), req)
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap().to_bytes().len()
            })
            .await;
            println!(
                "  /api/hosts ({}): {ms:.1} ms (slowest {max_ms:.1}: an answer is shared \
                 while fresh), {:.1} KB",
                if gzip { "gzip" } else { "identity" },
                bytes as f64 / 1000.0
            );
        }
        store.close().await.expect("close");
    });
}
