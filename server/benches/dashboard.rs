//! Figures for BENCHMARKS.md: the dashboard's host page asking for 7 days
//! of one host at a 5 s interval (about 121,000 ticks, 726,000 samples,
//! and a Raspberry Pi's 8 health values per tick: 968,000 health rows):
//! the store's downsampling read (health: from the per-minute rollup, and
//! from the raw rows as before it), the whole `/api/hosts/NAME/series` and
//! `/api/hosts/NAME/health` answers through the router (store read,
//! layout, JSON, gzip), and the bytes on the wire with and without gzip.
//!
//! `cargo bench -p monitor-server --bench dashboard`; knobs: `DAYS` (7),
//! `INTERVAL_MS` (5000), `RUNS` (10), `PG_URL` (a PostgreSQL database to
//! run on, without host "pi-bench"; default a new SQLite file).

// A benchmark on fixtures it makes itself: a failure should stop it loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::env_or;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::BodyExt;
use monitor::health::HealthMetric;
use monitor::metric::Metric;
use monitor_server::http;
use monitor_server::registry::Registry;
use monitor_server::store::{IncomingBatch, SeriesQuery, StoredHealth, StoredSample};

/// Values that look like an agent's (noisy, many decimals), so gzip gets
/// no easier job than in real life.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let days: i64 = env_or("DAYS", 7);
    let interval_ms: i64 = env_or("INTERVAL_MS", 5000);
    let runs: usize = env_or("RUNS", 10);
    // A PostgreSQL database to run on instead of a new SQLite file (one
    // holding no host "pi-bench" yet).
    let pg_url: Option<String> = std::env::var("PG_URL").ok();
    let dir = tempfile::tempdir().expect("temp dir");
    let (rt, store) = common::runtime_and_store(dir.path());
    let store = match &pg_url {
        None => store,
        Some(url) => {
            rt.block_on(store.close()).expect("close");
            rt.block_on(monitor_server::store::Store::open(
                monitor_server::store::PostgresConfig::new(url.clone()),
            ))
            .expect("PostgreSQL store")
        }
    };
    rt.block_on(async {
        let until = monitor::time::now_unix_ms();
        let since = until - days * 86_400_000;
        let ticks = (until - since) / interval_ms;
        // A minute of ticks per batch, as an agent on a slow link would.
        let per_batch = (60_000 / interval_ms).max(1);
        let mut noise = Noise(7);
        let started = Instant::now();
        let mut tickets = Vec::new();
        let mut seq = 0u64;
        let mut t = since;
        while t < until {
            seq += 1;
            let mut samples = Vec::new();
            let mut health = Vec::new();
            for k in 0..per_batch {
                let time_unix_ms = t + k * interval_ms;
                if time_unix_ms >= until {
                    break;
                }
                // A Pi's health values: what `health_series` reads.
                let throttled = if noise.next() < 0.01 { 0x50005 } else { 0 };
                for (metric, device, value) in [
                    (HealthMetric::TempCelsius, "", 40.0 + 30.0 * noise.next()),
                    (HealthMetric::UnderVoltage, "", f64::from(throttled & 1)),
                    (HealthMetric::ThrottledFlags, "", f64::from(throttled)),
                    (HealthMetric::Load1, "", 4.0 * noise.next()),
                    (
                        HealthMetric::UptimeSeconds,
                        "",
                        ((time_unix_ms - since) / 1000) as f64,
                    ),
                    (HealthMetric::FsUsedPercent, "/", 60.0 + noise.next()),
                    (HealthMetric::FsUsedPercent, "/boot/firmware", 20.0),
                    (HealthMetric::RootInodesUsedPercent, "", 10.0 + noise.next()),
                ] {
                    health.push(StoredHealth {
                        time_unix_ms,
                        metric,
                        device: device.into(),
                        value,
                    });
                }
                for (i, &metric) in Metric::ALL.iter().enumerate() {
                    let value = if metric.is_percent() {
                        20.0 + 60.0 * noise.next()
                    } else {
                        noise.next() * 1000.0 * (i as f64)
                    };
                    samples.push(StoredSample {
                        time_unix_ms,
                        metric,
                        value,
                    });
                }
            }
            t += per_batch * interval_ms;
            let b = IncomingBatch {
                agent_id: "agent-1".into(),
                hostname: "pi-bench".into(),
                agent_version: "0.1.0".into(),
                boot_id: 1,
                seq,
                received_unix_ms: t,
                clock_offset_ms: 0,
                dropped_batches_total: 0,
                peer: "127.0.0.1:1".into(),
                samples,
                health,
            };
            tickets.push(store.enqueue(b).await.expect("enqueue"));
            if tickets.len() >= 512 {
                for t in tickets.drain(..) {
                    t.await.expect("stored");
                }
            }
        }
        for t in tickets {
            t.await.expect("stored");
        }
        println!(
            "stored {ticks} ticks ({} samples) of one host over {days} d at {interval_ms} ms \
             in {:.1} s",
            ticks * Metric::ALL.len() as i64,
            started.elapsed().as_secs_f64()
        );

        // The health values are rolled up per minute by the writer, a
        // bounded number of minutes per flush: wait until the closed ones
        // are (the newest minute is open and read raw).
        let rolled_started = Instant::now();
        let newest = since + (until - since - 1) / interval_ms * interval_ms;
        let closed = newest.div_euclid(60_000) * 60_000 - 60_000;
        let sql = "SELECT max(minute_unix_ms) FROM health_minutes";
        loop {
            let newest: Option<i64> = match &pg_url {
                None => rusqlite::Connection::open_with_flags(
                    dir.path().join("bench.db"),
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .and_then(|db| db.query_row(sql, [], |r| r.get(0)))
                .expect("health_minutes"),
                Some(url) => {
                    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                        .await
                        .expect("connect");
                    tokio::spawn(conn);
                    client
                        .query_one(sql, &[])
                        .await
                        .expect("health_minutes")
                        .get(0)
                }
            };
            if newest.is_some_and(|m| m >= closed) {
                break;
            }
            assert!(
                rolled_started.elapsed().as_secs() < 600,
                "the health rollup did not catch up in 10 minutes"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        println!(
            "health values rolled up per minute {:.1} s after the last batch was stored",
            rolled_started.elapsed().as_secs_f64()
        );

        // The store's part alone.
        let q = http::plot::query("pi-bench", since, until, http::plot::MAX_POINTS);
        let mut store_ms = Vec::new();
        for _ in 0..runs {
            let started = Instant::now();
            let series = store.series(q.clone()).await.expect("series");
            store_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(series.len(), Metric::ALL.len());
        }
        // The raw read the rollup replaced: main's 303 s buckets (2,000
        // points, whole seconds) do not hold whole minutes, so the same
        // store reads every raw row for them.
        let raw_step_ms = 303_000;
        let raw_q = SeriesQuery {
            hostname: "pi-bench".into(),
            since_unix_ms: since.div_euclid(raw_step_ms) * raw_step_ms,
            until_unix_ms: until,
            step_ms: raw_step_ms,
        };
        let (mut health_store_ms, mut health_raw_ms) = (Vec::new(), Vec::new());
        for (query, times_ms) in [(&q, &mut health_store_ms), (&raw_q, &mut health_raw_ms)] {
            for _ in 0..runs {
                let started = Instant::now();
                let found = store
                    .health_series(query.clone(), &HealthMetric::ALL)
                    .await
                    .expect("health series");
                times_ms.push(started.elapsed().as_secs_f64() * 1000.0);
                // 5 one-per-host series (no swap), the word's 4 conditions,
                // 2 mount points.
                assert_eq!(found.series.len(), 11);
            }
        }

        // The whole answer through the router, as a browser asks for it.
        let state = common::http_state(&store, &Arc::new(Registry::default()));
        let router = http::router(state);
        // The most points the server gives, the most the host page asks
        // for (one per pixel, its plots are at most 1,200 px wide), and
        // what a 1,000-pixel-wide plot asks for.
        let answers = [http::plot::MAX_POINTS, 1200, 1000]
            .map(|p| ("series", p))
            .into_iter()
            .chain([("health", 1200), ("health", http::plot::MAX_POINTS)]);
        for (what, points) in answers {
            let path =
                format!("/api/hosts/pi-bench/{what}?since={since}&until={until}&points={points}");
            let mut line = format!("{what} for {days} d at {points} points:");
            for gzip in [true, false] {
                let mut times_ms = Vec::new();
                let mut size = 0;
                for _ in 0..runs {
                    let mut req = axum::http::Request::builder().uri(&path);
                    if gzip {
                        req = req.header("accept-encoding", "gzip");
                    }
                    let req = req.body(axum::body::Body::empty()).unwrap();
                    let started = Instant::now();
                    let resp = tower::ServiceExt::oneshot(router.clone(), req)
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 200);
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    times_ms.push(started.elapsed().as_secs_f64() * 1000.0);
                    size = body.len();
                }
                line.push_str(&format!(
                    " {} {:.1} ms, {:.1} KB;",
                    if gzip { "gzip" } else { "identity" },
                    median_ms(times_ms),
                    size as f64 / 1000.0
                ));
            }
            println!("{line} (whole answer: store read, layout, JSON, compression)");
        }
        println!(
            "store read alone (2,000 points asked, step {} s): series {:.1} ms, health {:.1} ms \
             (rolled up); health from the raw rows (303 s buckets, main's read) {:.1} ms \
             (median of {runs})",
            q.step_ms / 1000,
            median_ms(store_ms),
            median_ms(health_store_ms),
            median_ms(health_raw_ms)
        );
        store.close().await.expect("close");
    });
}
