//! The store's guarantees, tested through its public API, one test body
//! for each backend: on SQLite files in the temp directory (with the
//! journal merged at once and not), and on databases of a PostgreSQL
//! server the tests start themselves (see `tests/common/pg.rs`; without
//! PostgreSQL installed those print a `skipped:` line). Round trips,
//! exactly-once storage of re-sent batches (also from two replicas at
//! once), restart, retention, backpressure, command history, and a
//! SIGKILLed writer process whose acknowledged batches must all be there
//! afterwards; then what only one backend has (SQLite's files and their
//! conversions, PostgreSQL's URL and migrations).
//!
//! Waits poll a condition with a deadline; nothing sleeps a guessed time.

// Helpers here are test code too: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::{Command, Stdio};
use std::task::Poll;
use std::time::{Duration, Instant};

use monitor::command::{Finished, Outcome};
use monitor::metric::Metric;
use monitor_server::store::{
    CommandRecord, CommandResultRecord, Conflict, IncomingBatch, PostgresConfig, SampleQuery,
    SqliteConfig, SqliteError, Store, StoreConfig, StoreError, StoredSample, SubmitOutcome,
};
use tempfile::TempDir;

#[path = "../../tests/common/pg.rs"]
mod pg;
use pg::Postgres;

/// A directory of the test's own in the temp directory (removed when
/// dropped), named after the test so a failed run's leftovers are easy to
/// find.
fn temp_dir(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("monitor-store-test-{name}-"))
        .tempdir()
        .unwrap()
}

/// The database file of a test's directory.
trait Db {
    fn db(&self) -> PathBuf;
}

impl Db for TempDir {
    fn db(&self) -> PathBuf {
        self.path().join("monitor.db")
    }
}

/// An hour ago, so the default 7-day retention keeps everything.
fn base_ms() -> i64 {
    monitor::time::now_unix_ms() - 3_600_000
}

/// A batch of `hostname`'s agent with one sample per metric at
/// `base + seq` seconds; values encode (seq, metric) so they can be checked.
fn batch(hostname: &str, boot_id: u64, seq: u64, base: i64) -> IncomingBatch {
    let time_unix_ms = base + seq as i64 * 1000;
    IncomingBatch {
        agent_id: format!("{hostname}-agent"),
        hostname: hostname.into(),
        agent_version: "0.1.0".into(),
        boot_id,
        seq,
        received_unix_ms: time_unix_ms + 250,
        clock_offset_ms: -40,
        dropped_batches_total: seq / 10,
        peer: "127.0.0.1:40000".into(),
        samples: Metric::ALL
            .iter()
            .enumerate()
            .map(|(i, &metric)| StoredSample {
                time_unix_ms,
                metric,
                value: value_of(seq, i),
            })
            .collect(),
        health: Vec::new(),
    }
}

fn value_of(seq: u64, metric_index: usize) -> f64 {
    seq as f64 + metric_index as f64 / 10.0
}

fn config(dir: &TempDir) -> SqliteConfig {
    let mut c = SqliteConfig::new(dir.db());
    c.flush_max_delay = Duration::from_millis(1);
    c
}

/// Which backend a test body runs on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// SQLite, batches left in the journal (in memory) for the whole test.
    Sqlite,
    /// SQLite, batches merged from the journal into the tables at once.
    SqliteMerging,
    /// A database of the tests' own PostgreSQL server.
    Postgres,
}

/// A test's store, wherever it lives; opening it again (a restart) finds
/// the same data.
struct TestDb {
    kind: Kind,
    dir: TempDir,
    /// The PostgreSQL database's URL.
    url: Option<String>,
}

/// The settings a test body may change, whatever the backend.
struct Knobs {
    retention: Duration,
    retention_interval: Duration,
    queue_capacity: usize,
    flush_max_batches: usize,
    flush_max_delay: Duration,
}

impl TestDb {
    /// `None` (after a `skipped:` line) for PostgreSQL where it is not
    /// installed.
    fn new(kind: Kind, name: &str) -> Option<TestDb> {
        let url = match kind {
            Kind::Postgres => Some(Postgres::shared(name)?.database(name)),
            Kind::Sqlite | Kind::SqliteMerging => None,
        };
        Some(TestDb {
            kind,
            dir: temp_dir(name),
            url,
        })
    }

    fn config(&self) -> StoreConfig {
        self.tuned(|_| {})
    }

    fn tuned(&self, tune: impl FnOnce(&mut Knobs)) -> StoreConfig {
        let mut k = Knobs {
            retention: Duration::from_secs(7 * 86_400),
            retention_interval: Duration::from_secs(60),
            queue_capacity: 16_384,
            flush_max_batches: 2_048,
            flush_max_delay: Duration::from_millis(1),
        };
        tune(&mut k);
        match (self.kind, &self.url) {
            (Kind::Postgres, Some(url)) => StoreConfig::Postgres(PostgresConfig {
                retention: k.retention,
                retention_interval: k.retention_interval,
                queue_capacity: k.queue_capacity,
                flush_max_batches: k.flush_max_batches,
                flush_max_delay: k.flush_max_delay,
                ..PostgresConfig::new(url.clone())
            }),
            _ => StoreConfig::Sqlite(SqliteConfig {
                retention: k.retention,
                retention_interval: k.retention_interval,
                queue_capacity: k.queue_capacity,
                flush_max_batches: k.flush_max_batches,
                flush_max_delay: k.flush_max_delay,
                // Fewer than one host's old ticks: a pass needs several steps.
                retention_chunk_rows: 2,
                merge_interval: match self.kind {
                    Kind::SqliteMerging => Duration::ZERO,
                    _ => SqliteConfig::new(self.dir.db()).merge_interval,
                },
                ..SqliteConfig::new(self.dir.db())
            }),
        }
    }

    async fn open(&self) -> Store {
        Store::open(self.config()).await.unwrap()
    }

    /// The store keeping an hour, its retention running every 20 ms.
    async fn open_with_hour_retention(&self) -> Store {
        Store::open(self.tuned(|k| {
            k.retention = Duration::from_secs(3600);
            k.retention_interval = Duration::from_millis(20);
        }))
        .await
        .unwrap()
    }

    /// SQLite's `integrity_check` of the file (PostgreSQL keeps its own).
    fn check_integrity(&self) {
        if self.kind != Kind::Postgres {
            assert_eq!(integrity_check(&self.dir.db()), "ok");
        }
    }

    /// Holds a lock that stops the store's writer in its next flush, until
    /// [`Blocker::release`].
    async fn block_writes(&self) -> Blocker {
        match &self.url {
            None => {
                // The writer waits for SQLite's write lock (busy timeout 5 s).
                let c = rusqlite::Connection::open(self.dir.db()).unwrap();
                c.execute_batch("BEGIN IMMEDIATE").unwrap();
                Blocker::Sqlite(c)
            }
            Some(url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                // Every flush of a batch inserts into hosts first.
                client
                    .batch_execute("BEGIN; LOCK TABLE hosts IN ACCESS EXCLUSIVE MODE")
                    .await
                    .unwrap();
                Blocker::Postgres(client)
            }
        }
    }
}

/// Someone else holding the database's write lock.
enum Blocker {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

impl Blocker {
    async fn release(self) {
        match self {
            Blocker::Sqlite(c) => c.execute_batch("ROLLBACK").unwrap(),
            Blocker::Postgres(c) => c.batch_execute("ROLLBACK").await.unwrap(),
        }
    }
}

/// One test per backend running `body`: `NAME_sqlite`, `NAME_merging`
/// (SQLite, journal merged at once) and `NAME_postgres`.
macro_rules! on_every_backend {
    ($body:ident: $($name:ident => $kind:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(db) = TestDb::new(Kind::$kind, stringify!($name)) {
                    $body(db).await;
                }
            }
        )+
    };
}

fn all(hostname: &str) -> SampleQuery {
    SampleQuery {
        hostname: hostname.into(),
        metric: None,
        since_unix_ms: i64::MIN,
        until_unix_ms: None,
        limit: None,
    }
}

/// Runs `q` and compares (time, metric, value) of every row with `expected`.
async fn check(store: &Store, q: SampleQuery, expected: &[(i64, Metric, f64)]) {
    let rows = store.query(q.clone()).await.unwrap();
    let got: Vec<(i64, Metric, f64)> = rows
        .iter()
        .map(|r| (r.time_unix_ms, r.metric, r.value))
        .collect();
    assert_eq!(got, expected, "query {q:?}");
    assert!(rows.iter().all(|r| r.hostname == q.hostname));
}

/// The rows `batch(_, _, seq, base)` stored, for the given metrics.
fn rows_of(
    seqs: impl IntoIterator<Item = u64>,
    base: i64,
    metrics: &[Metric],
) -> Vec<(i64, Metric, f64)> {
    let mut out = Vec::new();
    for seq in seqs {
        for (i, &m) in Metric::ALL.iter().enumerate() {
            if metrics.contains(&m) {
                out.push((base + seq as i64 * 1000, m, value_of(seq, i)));
            }
        }
    }
    out
}

async fn submit_all(
    store: &Store,
    host: &str,
    boot: u64,
    seqs: impl IntoIterator<Item = u64>,
    base: i64,
) -> Vec<SubmitOutcome> {
    let mut out = Vec::new();
    for seq in seqs {
        out.push(store.submit(batch(host, boot, seq, base)).await.unwrap());
    }
    out
}

async fn stored_count(store: &Store, host: &str) -> usize {
    store.query(all(host)).await.unwrap().len()
}

/// Polls `cond` until it holds or `deadline` passes.
async fn eventually<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    while !cond().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn integrity_check(path: &Path) -> String {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

on_every_backend!(submit_then_query_round_trips:
    submit_then_query_round_trips_sqlite => Sqlite,
    submit_then_query_round_trips_postgres => Postgres,
);

async fn submit_then_query_round_trips(db: TestDb) {
    let store = db.open().await;
    let base = base_ms();
    assert_eq!(
        submit_all(&store, "pi-1", 7, 1..=3, base).await,
        [SubmitOutcome::Stored; 3]
    );
    submit_all(&store, "pi-2", 8, 1..=1, base).await;

    let every = &Metric::ALL;
    check(&store, all("pi-1"), &rows_of(1..=3, base, every)).await;
    check(&store, all("pi-2"), &rows_of(1..=1, base, every)).await;
    let cpu = SampleQuery {
        metric: Some(Metric::CpuPercent),
        ..all("pi-1")
    };
    check(
        &store,
        cpu.clone(),
        &rows_of(1..=3, base, &[Metric::CpuPercent]),
    )
    .await;
    // since is inclusive, until exclusive.
    let range = SampleQuery {
        since_unix_ms: base + 2000,
        until_unix_ms: Some(base + 3000),
        ..cpu.clone()
    };
    check(&store, range, &rows_of(2..=2, base, &[Metric::CpuPercent])).await;
    let limited = SampleQuery {
        limit: Some(8),
        ..all("pi-1")
    };
    check(&store, limited, &rows_of(1..=2, base, every)[..8]).await;
    let none = SampleQuery {
        limit: Some(0),
        ..all("pi-1")
    };
    check(&store, none, &[]).await;

    let rows = store.query(all("pi-1")).await.unwrap();
    assert!(
        rows.iter()
            .all(|r| r.received_unix_ms == r.time_unix_ms + 250)
    );
    store.close().await.unwrap();
}

/// A batch with health values: the load, and two file systems' usage.
fn health_batch(hostname: &str, boot_id: u64, seq: u64, base: i64) -> IncomingBatch {
    use monitor::health::HealthMetric;
    use monitor_server::store::StoredHealth;
    let mut b = batch(hostname, boot_id, seq, base);
    let time_unix_ms = b.samples[0].time_unix_ms;
    let value = |device: &str, metric, value| StoredHealth {
        time_unix_ms,
        metric,
        device: device.into(),
        value,
    };
    b.health = vec![
        value("", HealthMetric::Load1, seq as f64 / 10.0),
        value("/", HealthMetric::FsUsedPercent, 50.0 + seq as f64),
        value("/media/pi/USB SSD", HealthMetric::FsUsedPercent, 90.0),
    ];
    b
}

on_every_backend!(check_health:
    health_values_are_stored_queried_and_latest_sqlite => Sqlite,
    health_values_are_stored_queried_and_latest_merging => SqliteMerging,
    health_values_are_stored_queried_and_latest_postgres => Postgres,
);

/// Health values are stored exactly once with their batch, queried by
/// metric, and each host shows its newest per (metric, device), after a
/// restart too.
async fn check_health(db: TestDb) {
    use monitor::health::HealthMetric;
    use monitor_server::store::HealthQuery;
    let base = base_ms();
    let query = |metric, limit| HealthQuery {
        hostname: "pi-h".into(),
        metric,
        since_unix_ms: i64::MIN,
        until_unix_ms: None,
        limit,
    };
    let rows = |store: Store, q: HealthQuery| async move {
        let rows: Vec<(i64, String, f64)> = store
            .query_health(q)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.time_unix_ms - base, r.device, r.value))
            .collect();
        (store, rows)
    };
    {
        let store = db.open().await;
        for seq in 1..=2 {
            let outcome = store
                .submit(health_batch("pi-h", 3, seq, base))
                .await
                .unwrap();
            assert_eq!(outcome, SubmitOutcome::Stored);
        }
        // A re-send (lost ack) is acknowledged and stores nothing twice.
        let again = store
            .submit(health_batch("pi-h", 3, 2, base))
            .await
            .unwrap();
        assert_eq!(again, SubmitOutcome::Duplicate);
        store.close().await.unwrap();
    }
    // After a restart, from the file.
    let store = db.open().await;
    let (store, fs) = rows(store, query(HealthMetric::FsUsedPercent, None)).await;
    assert_eq!(
        fs,
        vec![
            (1000, "/".to_string(), 51.0),
            (1000, "/media/pi/USB SSD".to_string(), 90.0),
            (2000, "/".to_string(), 52.0),
            (2000, "/media/pi/USB SSD".to_string(), 90.0),
        ]
    );
    let (store, load) = rows(store, query(HealthMetric::Load1, Some(1))).await;
    assert_eq!(load, vec![(1000, String::new(), 0.1)]);
    let (store, none) = rows(store, query(HealthMetric::TempCelsius, None)).await;
    assert!(none.is_empty());
    // The six are unaffected by the health values beside them.
    check(&store, all("pi-h"), &rows_of(1..=2, base, &Metric::ALL)).await;
    // The newest value per (metric, device), in table then device order.
    let latest = |h: &monitor_server::store::HostRecord| -> Vec<(&'static str, String, i64, f64)> {
        h.health
            .iter()
            .map(|l| {
                (
                    l.metric.name(),
                    l.device.clone(),
                    l.time_unix_ms - base,
                    l.value,
                )
            })
            .collect()
    };
    let want = vec![
        ("load1", String::new(), 2000, 0.2),
        ("fs_used_percent", "/".to_string(), 2000, 52.0),
        (
            "fs_used_percent",
            "/media/pi/USB SSD".to_string(),
            2000,
            90.0,
        ),
    ];
    let host = store.host("pi-h").await.unwrap().unwrap();
    assert_eq!(latest(&host), want);
    assert_eq!(host.health_series_over_cap_total, 0);
    // An older batch (a late re-send of another run) changes no latest value.
    assert_eq!(
        store
            .submit(health_batch("pi-h", 4, 1, base - 5000))
            .await
            .unwrap(),
        SubmitOutcome::Stored
    );
    assert_eq!(latest(&store.hosts().await.unwrap()[0]), want);
    let unknown = store
        .query_health(HealthQuery {
            hostname: "nobody".into(),
            ..query(HealthMetric::Load1, None)
        })
        .await;
    assert!(matches!(unknown, Err(StoreError::UnknownHost(h)) if h == "nobody"));
    store.close().await.unwrap();
}

on_every_backend!(check_health_series:
    health_series_are_downsampled_per_device_sqlite => Sqlite,
    health_series_are_downsampled_per_device_merging => SqliteMerging,
    health_series_are_downsampled_per_device_postgres => Postgres,
);

/// `health_series` gives one series per metric and per device, each
/// bucket the min, max, sum and count of the stored values in it, only
/// for the metrics asked for.
async fn check_health_series(db: TestDb) {
    use monitor::health::HealthMetric;
    use monitor_server::store::SeriesQuery;
    let base = base_ms();
    let store = db.open().await;
    for seq in 1..=5 {
        let b = health_batch("pi-s", 3, seq, base);
        assert_eq!(store.submit(b).await.unwrap(), SubmitOutcome::Stored);
    }
    let q = SeriesQuery {
        hostname: "pi-s".into(),
        since_unix_ms: base,
        until_unix_ms: base + 10_000,
        step_ms: 2000,
    };
    let all = [
        HealthMetric::Load1,
        HealthMetric::FsUsedPercent,
        HealthMetric::TempCelsius,
    ];
    let found = store.health_series(q.clone(), &all).await.unwrap();
    // (metric, label, [(bucket start, count, min, max, sum)]).
    let got: Vec<_> = found
        .series
        .iter()
        .map(|s| {
            let label = s.metric.label.as_ref().map(|(k, v)| format!("{k}={v}"));
            let buckets: Vec<_> = s
                .buckets
                .iter()
                .map(|b| (b.start_unix_ms - base, b.count, b.min, b.max, b.sum))
                .collect();
            (s.metric.metric.name(), label, buckets)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "load1",
                None,
                vec![
                    (0, 1, 0.1, 0.1, 0.1),
                    (2000, 2, 0.2, 0.3, 0.5),
                    (4000, 2, 0.4, 0.5, 0.9),
                ]
            ),
            (
                "fs_used_percent",
                Some("mountpoint=/".into()),
                vec![
                    (0, 1, 51.0, 51.0, 51.0),
                    (2000, 2, 52.0, 53.0, 105.0),
                    (4000, 2, 54.0, 55.0, 109.0),
                ]
            ),
            (
                "fs_used_percent",
                Some("mountpoint=/media/pi/USB SSD".into()),
                vec![
                    (0, 1, 90.0, 90.0, 90.0),
                    (2000, 2, 90.0, 90.0, 180.0),
                    (4000, 2, 90.0, 90.0, 180.0),
                ]
            ),
        ]
    );
    assert_eq!(found.series[0].interval_ms, Some(1000));
    assert_eq!(found.devices_left_out, 0);
    // Only what is asked for.
    let load = store
        .health_series(q.clone(), &[HealthMetric::Load1])
        .await
        .unwrap();
    assert_eq!(load.series.len(), 1);
    let unknown = store
        .health_series(
            SeriesQuery {
                hostname: "nobody".into(),
                ..q.clone()
            },
            &all,
        )
        .await;
    assert!(matches!(unknown, Err(StoreError::UnknownHost(h)) if h == "nobody"));
    let empty = store
        .health_series(
            SeriesQuery {
                until_unix_ms: base,
                ..q
            },
            &all,
        )
        .await;
    assert!(
        matches!(empty, Err(StoreError::BadSeriesQuery(_))),
        "{empty:?}"
    );
    store.close().await.unwrap();
}

on_every_backend!(check_health_cap:
    latest_health_is_capped_per_host_sqlite => Sqlite,
    latest_health_is_capped_per_host_postgres => Postgres,
);

/// A host naming more devices than the cap keeps the cap's worth of latest
/// values, counts the rest, and every value is still stored.
async fn check_health_cap(db: TestDb) {
    use monitor::health::HealthMetric;
    use monitor_server::store::{HealthQuery, MAX_HEALTH_SERIES_PER_HOST, StoredHealth};
    let store = db.open().await;
    let base = base_ms();
    let cap = MAX_HEALTH_SERIES_PER_HOST as u64;
    // Two batches of `cap` distinct mount points each, the second newer.
    for seq in 1..=2u64 {
        let mut b = batch("pi-many", 1, seq, base);
        let time_unix_ms = b.samples[0].time_unix_ms;
        b.health = (0..cap)
            .map(|i| StoredHealth {
                time_unix_ms,
                metric: HealthMetric::FsUsedPercent,
                device: format!("/mnt/{seq}-{i}"),
                value: i as f64,
            })
            .collect();
        assert_eq!(store.submit(b).await.unwrap(), SubmitOutcome::Stored);
    }
    let host = store.host("pi-many").await.unwrap().unwrap();
    assert_eq!(host.health.len(), MAX_HEALTH_SERIES_PER_HOST);
    // The newer batch's devices replaced the older ones, each counted.
    assert!(host.health.iter().all(|l| l.device.starts_with("/mnt/2-")));
    assert_eq!(host.health_series_over_cap_total, cap);
    let stored = store
        .query_health(HealthQuery {
            hostname: "pi-many".into(),
            metric: HealthMetric::FsUsedPercent,
            since_unix_ms: i64::MIN,
            until_unix_ms: None,
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(stored.len() as u64, 2 * cap);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_2_postgres_database_gains_the_health_tables_and_keeps_its_samples() {
    let Some((db, base)) = postgres_with_samples("pg_schema_2", "pi-v1", 1..=2).await else {
        return;
    };
    // What a server of schema 2 (the journal, no health values) leaves
    // behind.
    let (client, connection) =
        tokio_postgres::connect(db.url.as_deref().unwrap(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "DROP TABLE health; DROP TABLE host_health_latest;
             ALTER TABLE hosts DROP COLUMN health_series_over_cap_total;
             UPDATE monitor_schema SET version = 2;",
        )
        .await
        .unwrap();
    let store = db.open().await;
    let version: i32 = client
        .query_one("SELECT version FROM monitor_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 4);
    check(&store, all("pi-v1"), &rows_of(1..=2, base, &Metric::ALL)).await;
    health_is_stored_and_queried(&store, "pi-v1", base).await;
    assert_eq!(store.host("pi-v1").await.unwrap().unwrap().health.len(), 3);
    store.close().await.unwrap();
}

/// A PostgreSQL database of the tests' own named `name`, holding `host`'s
/// batches `seqs` (closed again); None (skipped) without PostgreSQL.
async fn postgres_with_samples(
    name: &str,
    host: &str,
    seqs: std::ops::RangeInclusive<u64>,
) -> Option<(TestDb, i64)> {
    let db = TestDb::new(Kind::Postgres, name)?;
    let base = base_ms();
    let store = db.open().await;
    submit_all(&store, host, 1, seqs, base).await;
    store.close().await.unwrap();
    Some((db, base))
}

/// An upgraded store takes `host`'s health values and answers for them.
async fn health_is_stored_and_queried(store: &Store, host: &str, base: i64) {
    use monitor::health::HealthMetric;
    use monitor_server::store::HealthQuery;
    let outcome = store.submit(health_batch(host, 1, 3, base)).await;
    assert_eq!(outcome.unwrap(), SubmitOutcome::Stored);
    let load = store
        .query_health(HealthQuery {
            hostname: host.into(),
            metric: HealthMetric::Load1,
            since_unix_ms: i64::MIN,
            until_unix_ms: None,
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(load.len(), 1);
}

#[tokio::test]
async fn a_schema_6_file_gains_the_health_table_and_keeps_its_samples() {
    let dir = temp_dir("schema-6");
    let base = base_ms();
    {
        let store = Store::open(config(&dir)).await.unwrap();
        submit_all(&store, "pi-6", 1, 1..=2, base).await;
        store.close().await.unwrap();
    }
    // What a server of schema 6 (forwarding cursors, no health values)
    // leaves behind.
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    conn.execute_batch("DROP TABLE health; PRAGMA user_version = 6;")
        .unwrap();
    drop(conn);
    let store = Store::open(config(&dir)).await.unwrap();
    assert_eq!(pragma(&dir.db(), "PRAGMA user_version"), 8);
    check(&store, all("pi-6"), &rows_of(1..=2, base, &Metric::ALL)).await;
    health_is_stored_and_queried(&store, "pi-6", base).await;
    store.close().await.unwrap();
}

on_every_backend!(unknown_host_is_its_own_error:
    unknown_host_is_its_own_error_sqlite => Sqlite,
    unknown_host_is_its_own_error_postgres => Postgres,
);

async fn unknown_host_is_its_own_error(db: TestDb) {
    let store = db.open().await;
    match store.query(all("nope")).await {
        Err(StoreError::UnknownHost(h)) => assert_eq!(h, "nope"),
        other => panic!("expected UnknownHost, got {other:?}"),
    }
    store.close().await.unwrap();
}

/// `config` with batches merged from the journal into the tables at once,
/// for tests that run both ways (with `config` they stay in the journal, in
/// memory, for the whole test).
fn merging_config(dir: &TempDir) -> SqliteConfig {
    SqliteConfig {
        merge_interval: Duration::ZERO,
        ..config(dir)
    }
}

on_every_backend!(check_dedup:
    re_sent_batches_are_acknowledged_and_stored_once_sqlite => Sqlite,
    re_sent_batches_are_acknowledged_and_stored_once_merging => SqliteMerging,
    re_sent_batches_are_acknowledged_and_stored_once_postgres => Postgres,
);

async fn check_dedup(db: TestDb) {
    let store = db.open().await;
    let base = base_ms();
    use SubmitOutcome::{Duplicate, Stored};
    assert_eq!(submit_all(&store, "pi", 1, 1..=5, base).await, [Stored; 5]);
    // The same batch again, then a re-send of an older range that runs on
    // into new batches.
    assert_eq!(submit_all(&store, "pi", 1, [5], base).await, [Duplicate]);
    assert_eq!(
        submit_all(&store, "pi", 1, 3..=7, base).await,
        [Duplicate, Duplicate, Duplicate, Stored, Stored]
    );
    // A new boot of the same agent starts its seqs again at 1.
    assert_eq!(submit_all(&store, "pi", 2, [1], base + 500).await, [Stored]);
    // Concurrent copies of one batch (two streams of the same agent).
    let (a, b) = tokio::join!(
        store.submit(batch("pi", 1, 8, base)),
        store.submit(batch("pi", 1, 8, base))
    );
    let mut both = [a.unwrap(), b.unwrap()];
    both.sort_by_key(|o| *o == Duplicate);
    assert_eq!(both, [Stored, Duplicate]);

    assert_eq!(stored_count(&store, "pi").await, 9 * 6);
    let hosts = store.hosts().await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].batches_stored_total, 9);
    store.close().await.unwrap();
}

on_every_backend!(check_forgotten_gaps:
    a_forged_seq_jump_cannot_make_real_batches_vanish_sqlite => Sqlite,
    a_forged_seq_jump_cannot_make_real_batches_vanish_merging => SqliteMerging,
    a_forged_seq_jump_cannot_make_real_batches_vanish_postgres => Postgres,
);

/// Finding 4 of the hostile-input review: a batch with a far seq opened a
/// gap, 257 more pushed it out of the 256-gap memory, and from then on
/// every real batch below was acknowledged as a duplicate and thrown away,
/// counted nowhere. Now such a batch is told apart by its samples (new
/// ones stored, known ones a duplicate, different ones a conflict) and
/// counted, before and after a restart.
async fn check_forgotten_gaps(db: TestDb) {
    use SubmitOutcome::{Duplicate, Stored};
    let base = base_ms();
    let store = db.open().await;
    assert_eq!(
        submit_all(&store, "pi", 7, 1..=10, base).await,
        [Stored; 10]
    );
    // The forgery: a jump, then 256 more one-seq gaps.
    let forged: Vec<u64> = (0..=256).map(|k| 1_000_000 + 2 * k).collect();
    let outcomes = submit_all(&store, "pi", 7, forged.iter().copied(), base).await;
    assert!(outcomes.iter().all(|o| *o == Stored));
    // The real agent goes on: every batch stored, none taken for a
    // duplicate.
    assert_eq!(
        submit_all(&store, "pi", 7, 11..=20, base).await,
        [Stored; 10]
    );
    // Real duplicates (from before and after the forgery) are still
    // recognised, by their samples.
    assert_eq!(
        submit_all(&store, "pi", 7, [5, 15], base).await,
        [Duplicate; 2]
    );
    // A batch with the seq of a stored one but other values conflicts.
    let mut other = batch("pi", 7, 16, base);
    other.samples[0].value += 1.0;
    assert!(matches!(
        store.submit(other).await.unwrap(),
        SubmitOutcome::Conflict(_)
    ));
    check(
        &store,
        all("pi"),
        &rows_of((1..=20).chain(forged.iter().copied()), base, &Metric::ALL),
    )
    .await;
    let host = store.host("pi").await.unwrap().unwrap();
    assert_eq!(host.batches_checked_by_value_total, 13);
    assert_eq!(host.batches_stored_total, 10 + 257 + 10);
    store.close().await.unwrap();

    // After a restart the store still knows it forgot: nothing below the
    // forgotten gaps reads as stored.
    let store = db.open().await;
    assert_eq!(
        submit_all(&store, "pi", 7, [21, 12], base).await,
        [Stored, Duplicate]
    );
    assert_eq!(
        stored_count(&store, "pi").await,
        (20 + 257 + 1) * Metric::ALL.len()
    );
    let host = store.host("pi").await.unwrap().unwrap();
    assert_eq!(
        host.batches_checked_by_value_total, 2,
        "counted since the store opened"
    );
    store.close().await.unwrap();
    db.check_integrity();
}

on_every_backend!(data_and_dedup_state_survive_a_restart:
    data_and_dedup_state_survive_a_restart_sqlite => Sqlite,
    data_and_dedup_state_survive_a_restart_postgres => Postgres,
);

async fn data_and_dedup_state_survive_a_restart(db: TestDb) {
    let base = base_ms();
    let store = db.open().await;
    submit_all(&store, "pi", 42, 1..=4, base).await;
    store.close().await.unwrap();

    let store = db.open().await;
    check(&store, all("pi"), &rows_of(1..=4, base, &Metric::ALL)).await;
    assert_eq!(
        submit_all(&store, "pi", 42, 3..=5, base).await,
        [
            SubmitOutcome::Duplicate,
            SubmitOutcome::Duplicate,
            SubmitOutcome::Stored
        ]
    );
    check(&store, all("pi"), &rows_of(1..=5, base, &Metric::ALL)).await;
    store.close().await.unwrap();
    db.check_integrity();
}

on_every_backend!(dropping_the_store_without_close_loses_nothing_acknowledged:
    dropping_the_store_without_close_loses_nothing_acknowledged_sqlite => Sqlite,
    dropping_the_store_without_close_loses_nothing_acknowledged_postgres => Postgres,
);

async fn dropping_the_store_without_close_loses_nothing_acknowledged(db: TestDb) {
    let base = base_ms();
    let store = db.open().await;
    submit_all(&store, "pi", 1, 1..=3, base).await;
    drop(store);
    // The old writer may still be finishing; the new one waits for its lock.
    let store = db.open().await;
    check(&store, all("pi"), &rows_of(1..=3, base, &Metric::ALL)).await;
    store.close().await.unwrap();
    db.check_integrity();
}

on_every_backend!(check_hosts:
    hosts_are_known_after_a_restart_with_their_latest_values_sqlite => Sqlite,
    hosts_are_known_after_a_restart_with_their_latest_values_merging => SqliteMerging,
    hosts_are_known_after_a_restart_with_their_latest_values_postgres => Postgres,
);

async fn check_hosts(db: TestDb) {
    let base = base_ms();
    let store = db.open().await;
    submit_all(&store, "pi-b", 1, 1..=12, base).await;
    submit_all(&store, "pi-a", 1, 1..=2, base).await;
    // Only one metric in the newest batch of pi-a: the others keep their
    // older latest value.
    let mut b = batch("pi-a", 1, 3, base);
    b.samples.truncate(1);
    b.peer = "127.0.0.1:50000".into();
    b.agent_version = "0.2.0".into();
    store.submit(b).await.unwrap();
    store.close().await.unwrap();

    let store = db.open().await;
    let hosts = store.hosts().await.unwrap();
    let names: Vec<&str> = hosts.iter().map(|h| h.hostname.as_str()).collect();
    assert_eq!(names, ["pi-a", "pi-b"]);
    let a = &hosts[0];
    assert_eq!(a.agent_id, "pi-a-agent");
    assert_eq!(a.agent_version, "0.2.0");
    assert_eq!(a.peer, "127.0.0.1:50000");
    assert_eq!(a.first_seen_unix_ms, base + 1000 + 250);
    assert_eq!(a.last_seen_unix_ms, base + 3000 + 250);
    assert_eq!(a.clock_offset_ms, -40);
    assert_eq!(a.batches_stored_total, 3);
    let latest: Vec<(Metric, i64, f64)> = a
        .latest
        .iter()
        .map(|l| (l.metric, l.time_unix_ms, l.value))
        .collect();
    let mut expected = vec![(Metric::CpuPercent, base + 3000, value_of(3, 0))];
    for (i, &m) in Metric::ALL.iter().enumerate().skip(1) {
        expected.push((m, base + 2000, value_of(2, i)));
    }
    assert_eq!(latest, expected);
    let b = &hosts[1];
    assert_eq!(b.batches_stored_total, 12);
    assert_eq!(b.dropped_batches_total, 1);
    store.close().await.unwrap();
}

on_every_backend!(check_retention:
    retention_prunes_only_old_samples_sqlite => Sqlite,
    retention_prunes_only_old_samples_merging => SqliteMerging,
    retention_prunes_only_old_samples_postgres => Postgres,
);

/// (SQLite deletes in chunks smaller than one host's old ticks, so a pass
/// takes several steps; PostgreSQL drops whole partitions.)
async fn check_retention(db: TestDb) {
    let store = db.open_with_hour_retention().await;
    let now = monitor::time::now_unix_ms();
    let old = now - 2 * 3_600_000;
    let recent = now - 60_000;
    submit_all(&store, "pi", 1, 1..=5, old).await;
    submit_all(&store, "pi", 1, 6..=8, recent - 6000).await;
    submit_all(&store, "other", 1, 1..=2, old).await;
    // Old health values go too (rows and latest), recent ones stay.
    for (seq, base) in [(9, old), (10, recent - 6000)] {
        let mut b = health_batch("pi", 1, seq, base);
        b.samples.clear();
        let outcome = store.submit(b).await;
        assert_eq!(outcome.unwrap(), SubmitOutcome::Stored);
    }
    let load1 = || monitor_server::store::HealthQuery {
        hostname: "pi".into(),
        metric: monitor::health::HealthMetric::Load1,
        since_unix_ms: i64::MIN,
        until_unix_ms: None,
        limit: None,
    };
    eventually(
        "old health values pruned",
        Duration::from_secs(10),
        || async { store.query_health(load1()).await.unwrap().len() == 1 },
    )
    .await;
    let kept = store.query_health(load1()).await.unwrap();
    assert_eq!(kept[0].time_unix_ms, recent - 6000 + 10_000);
    eventually(
        "old latest health dropped",
        Duration::from_secs(10),
        || async {
            let hosts = store.hosts().await.unwrap();
            hosts[1]
                .health
                .iter()
                .all(|l| l.time_unix_ms == recent - 6000 + 10_000)
                && hosts[1].health.len() == 3
        },
    )
    .await;
    eventually("old samples pruned", Duration::from_secs(10), || async {
        stored_count(&store, "pi").await == 3 * 6 && stored_count(&store, "other").await == 0
    })
    .await;
    check(
        &store,
        all("pi"),
        &rows_of(6..=8, recent - 6000, &Metric::ALL),
    )
    .await;
    // The hosts stay known; a latest value goes with its samples.
    eventually(
        "old latest values dropped",
        Duration::from_secs(10),
        || async { store.hosts().await.unwrap()[0].latest.is_empty() },
    )
    .await;
    let hosts = store.hosts().await.unwrap();
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0].hostname, "other");
    assert_eq!(hosts[1].latest.len(), 6);
    assert!(
        hosts[1]
            .latest
            .iter()
            .all(|l| l.time_unix_ms == recent - 6000 + 8000)
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_a_clear_error() {
    let dir = temp_dir("garbage");
    std::fs::write(dir.db(), vec![0x5a; 64 * 1024]).unwrap();
    match Store::open(config(&dir)).await {
        Err(e @ StoreError::Sqlite(SqliteError::Corrupt { .. })) => {
            let msg = e.to_string();
            assert!(msg.contains(&dir.db().display().to_string()), "{msg}");
            assert!(msg.contains("not a database"), "{msg}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn a_truncated_database_is_a_clear_error() {
    let dir = temp_dir("truncated");
    let store = Store::open(config(&dir)).await.unwrap();
    for host in 0..20 {
        submit_all(&store, &format!("pi-{host}"), 1, 1..=20, base_ms()).await;
    }
    store.close().await.unwrap();
    let len = std::fs::metadata(dir.db()).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.db())
        .unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    match Store::open(config(&dir)).await {
        Err(e @ StoreError::Sqlite(SqliteError::Corrupt { .. })) => {
            assert!(e.to_string().contains(&dir.db().display().to_string()));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_directory_is_an_open_error_naming_the_file() {
    let dir = temp_dir("missing");
    let path = dir.path().join("no/such/dir/monitor.db");
    match Store::open(SqliteConfig::new(&path)).await {
        // The store makes a new file itself (owner-only) before SQLite
        // opens it: the missing directory shows there, with the OS's
        // reason.
        Err(e @ StoreError::Sqlite(SqliteError::OpenFile { .. })) => {
            assert!(e.to_string().contains("no/such/dir/monitor.db"));
            assert!(std::error::Error::source(&e).is_some());
        }
        other => panic!("expected OpenFile, got {other:?}"),
    }
}

on_every_backend!(bad_config_is_refused:
    bad_config_is_refused_sqlite => Sqlite,
    bad_config_is_refused_postgres => Postgres,
);

async fn bad_config_is_refused(db: TestDb) {
    assert!(matches!(
        Store::open(db.tuned(|k| k.queue_capacity = 0)).await,
        Err(StoreError::InvalidConfig {
            field: "queue_capacity",
            ..
        })
    ));
}

/// Polls `fut` once: whether it is still waiting.
async fn is_pending<F: Future>(fut: std::pin::Pin<&mut F>) -> bool {
    let mut fut = fut;
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_pending())).await
}

on_every_backend!(a_full_queue_makes_submit_wait:
    a_full_queue_makes_submit_wait_sqlite => Sqlite,
    a_full_queue_makes_submit_wait_postgres => Postgres,
);

async fn a_full_queue_makes_submit_wait(db: TestDb) {
    let store = Store::open(db.tuned(|k| {
        k.queue_capacity = 2;
        k.flush_max_batches = 1;
    }))
    .await
    .unwrap();
    let base = base_ms();
    // Someone else holds the write lock: the writer blocks in its first
    // flush, so the queue fills behind it.
    let blocker = db.block_writes().await;

    // One batch for the (blocked) writer, two for the queue; their order
    // does not matter to the store.
    let mut tasks = Vec::new();
    for seq in 1..=3 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.submit(batch("pi", 1, seq, base)).await
        }));
    }
    eventually("queue full", Duration::from_secs(5), || {
        let s = store.clone();
        async move { s.queued() == 2 }
    })
    .await;
    let mut fourth = pin!(store.submit(batch("pi", 1, 4, base)));
    assert!(
        is_pending(fourth.as_mut()).await,
        "submit must wait on a full queue"
    );
    assert_eq!(store.queued(), 2, "nothing queues beyond the capacity");

    blocker.release().await;
    assert_eq!(fourth.await.unwrap(), SubmitOutcome::Stored);
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), SubmitOutcome::Stored);
    }
    check(&store, all("pi"), &rows_of(1..=4, base, &Metric::ALL)).await;
    store.close().await.unwrap();
}

on_every_backend!(close_is_idempotent_and_later_requests_fail_closed:
    close_is_idempotent_and_later_requests_fail_closed_sqlite => Sqlite,
    close_is_idempotent_and_later_requests_fail_closed_postgres => Postgres,
);

async fn close_is_idempotent_and_later_requests_fail_closed(db: TestDb) {
    let store = db.open().await;
    let base = base_ms();
    submit_all(&store, "pi", 1, [1], base).await;
    let clone = store.clone();
    store.close().await.unwrap();
    clone.close().await.unwrap();
    assert!(matches!(
        clone.submit(batch("pi", 1, 2, base)).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(clone.hosts().await, Err(StoreError::Closed)));
}

on_every_backend!(command_history_round_trips_newest_first:
    command_history_round_trips_newest_first_sqlite => Sqlite,
    command_history_round_trips_newest_first_postgres => Postgres,
);

async fn command_history_round_trips_newest_first(db: TestDb) {
    let store = db.open().await;
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let targets = argv(&["pi-1", "pi-2"]);
    store
        .record_command(CommandRecord {
            command_id: "c1".into(),
            operator: "alice".into(),
            time_unix_ms: 1_000,
            targets: targets.clone(),
            argv: argv(&["df", "-h"]),
        })
        .await
        .unwrap();
    let result = CommandResultRecord {
        command_id: "c1".into(),
        hostname: "pi-1".into(),
        finished: Finished {
            exit_code: Some(0),
            duration_ms: 12,
            stdout_bytes: 345,
            ..Finished::without_process(Outcome::Exited, "")
        },
        finished_unix_ms: 1_020,
    };
    store.record_command_result(result.clone()).await.unwrap();
    store
        .record_command(CommandRecord {
            command_id: "c2".into(),
            operator: "alice".into(),
            time_unix_ms: 2_000,
            targets: argv(&["pi-2"]),
            argv: argv(&["uptime"]),
        })
        .await
        .unwrap();
    store
        .record_command_result(CommandResultRecord {
            command_id: "c2".into(),
            hostname: "pi-2".into(),
            finished: Finished {
                signal: Some(9),
                duration_ms: 30_000,
                stderr_bytes: 10,
                ..Finished::without_process(Outcome::TimedOut, "timed out after 30 s")
            },
            finished_unix_ms: 32_000,
        })
        .await
        .unwrap();

    let rows = store.history(None, 10).await.unwrap();
    let summary: Vec<(&str, &str, Option<Outcome>)> = rows
        .iter()
        .map(|r| (r.command_id.as_str(), r.hostname.as_str(), r.outcome))
        .collect();
    assert_eq!(
        summary,
        [
            ("c2", "pi-2", Some(Outcome::TimedOut)),
            ("c1", "pi-1", Some(Outcome::Exited)),
            ("c1", "pi-2", None),
        ]
    );
    let c1 = &rows[1];
    assert_eq!(c1.argv, ["df", "-h"]);
    assert_eq!(c1.targets, targets);
    assert_eq!(c1.time_unix_ms, 1_000);
    assert_eq!(
        (c1.exit_code, c1.signal, c1.duration_ms),
        (Some(0), None, 12)
    );
    assert_eq!((c1.stdout_bytes, c1.stderr_bytes), (345, 0));
    assert_eq!(c1.finished_unix_ms, Some(1_020));
    assert_eq!(rows[0].message, "timed out after 30 s");
    assert_eq!(rows[0].signal, Some(9));
    assert_eq!(rows[2].finished_unix_ms, None);

    let pi2 = store.history(Some("pi-2".into()), 10).await.unwrap();
    let ids: Vec<&str> = pi2.iter().map(|r| r.command_id.as_str()).collect();
    assert_eq!(ids, ["c2", "c1"]);
    assert_eq!(store.history(None, 1).await.unwrap().len(), 1);

    match store
        .record_command_result(CommandResultRecord {
            command_id: "nope".into(),
            ..result
        })
        .await
    {
        Err(StoreError::UnknownCommand(id)) => assert_eq!(id, "nope"),
        other => panic!("expected UnknownCommand, got {other:?}"),
    }
    store.close().await.unwrap();
    // And after a restart.
    let store = db.open().await;
    assert_eq!(store.history(None, 10).await.unwrap(), rows);
    store.close().await.unwrap();
}

/// Environment variable that turns [`crash_child`] into the ingesting
/// child process of the SIGKILL tests.
const CRASH_CHILD_DB: &str = "MONITOR_STORE_CRASH_CHILD_DB";
/// The child's `merge_interval`, in ms.
const CRASH_CHILD_MERGE_MS: &str = "MONITOR_STORE_CRASH_CHILD_MERGE_MS";
/// The child's database when it is PostgreSQL (a URL).
const CRASH_CHILD_PG: &str = "MONITOR_STORE_CRASH_CHILD_PG";

/// In a normal run: nothing. As the child: ingests batches of 4 hosts as
/// fast as it can, printing "acked HOST SEQ BASE" after each commit, until
/// it is killed (or 60 s pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let c = match (
        std::env::var_os(CRASH_CHILD_DB),
        std::env::var(CRASH_CHILD_PG),
    ) {
        (Some(db), _) => {
            let mut c = SqliteConfig::new(PathBuf::from(db));
            c.flush_max_delay = Duration::from_millis(2);
            if let Ok(ms) = std::env::var(CRASH_CHILD_MERGE_MS) {
                c.merge_interval = Duration::from_millis(ms.parse().unwrap());
            }
            StoreConfig::Sqlite(c)
        }
        (None, Ok(url)) => StoreConfig::Postgres(PostgresConfig {
            flush_max_delay: Duration::from_millis(2),
            ..PostgresConfig::new(url)
        }),
        (None, Err(_)) => return,
    };
    let store = Store::open(c).await.unwrap();
    let base = base_ms();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for h in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let host = format!("crash-{h}");
            let mut seq = 0;
            while Instant::now() < deadline {
                seq += 1;
                store.submit(batch(&host, 1, seq, base)).await.unwrap();
                println!("acked {host} {seq} {base}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Runs [`crash_child`] on `db` (SQLite: with the given merge interval),
/// SIGKILLs it after 400 acknowledgements, and checks what it left: intact,
/// every acknowledged batch stored, and the hosts' counters and the dedup
/// state in step with the samples (SQLite's journal replayed, not lost or
/// doubled).
async fn check_sigkill(db: TestDb, merge_ms: u64) {
    let mut child = Command::new(std::env::current_exe().unwrap());
    child.args(["--exact", "crash_child", "--nocapture", "--test-threads=1"]);
    match &db.url {
        None => child
            .env(CRASH_CHILD_DB, db.dir.db())
            .env(CRASH_CHILD_MERGE_MS, merge_ms.to_string()),
        Some(url) => child.env(CRASH_CHILD_PG, url),
    };
    let mut child = child
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Read acks on a thread; kill the child mid-ingest after 400 of them.
    let reader = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let f: Vec<&str> = line.split_whitespace().collect();
            if let ["acked", host, seq, base] = f[..] {
                acked.push((
                    host.to_string(),
                    seq.parse::<u64>().unwrap(),
                    base.parse::<i64>().unwrap(),
                ));
                if acked.len() == 400 {
                    break;
                }
            }
        }
        acked
    });
    let acked = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert_eq!(acked.len(), 400, "the child stopped early");

    db.check_integrity();
    let store = Store::open(match db.kind {
        Kind::Postgres => db.config(),
        _ => config(&db.dir).into(),
    })
    .await
    .unwrap();
    for (host, seq, base) in &acked {
        let q = SampleQuery {
            since_unix_ms: base + *seq as i64 * 1000,
            until_unix_ms: Some(base + *seq as i64 * 1000 + 1),
            ..all(host)
        };
        check(&store, q, &rows_of([*seq], *base, &Metric::ALL)).await;
    }
    // Batches committed but not yet acknowledged when the child died are
    // stored too: each host's counter equals its batches in the file.
    let hosts = store.hosts().await.unwrap();
    assert_eq!(hosts.len(), 4);
    for h in &hosts {
        let stored = stored_count(&store, &h.hostname).await as u64 / 6;
        assert_eq!(h.batches_stored_total, stored, "{}", h.hostname);
        assert_eq!(
            h.last_seen_unix_ms,
            h.first_seen_unix_ms + (stored as i64 - 1) * 1000
        );
    }
    for (host, seq, base) in acked.iter().step_by(7) {
        assert_eq!(
            store.submit(batch(host, 1, *seq, *base)).await.unwrap(),
            SubmitOutcome::Duplicate,
            "{host} seq {seq} was stored before the kill"
        );
    }
    store.close().await.unwrap();
}

#[tokio::test]
async fn acknowledged_batches_survive_sigkill() {
    // The default interval: the child dies before its first merge.
    check_sigkill(TestDb::new(Kind::Sqlite, "sigkill").unwrap(), 10_000).await;
}

#[tokio::test]
async fn acknowledged_batches_survive_sigkill_between_merges() {
    check_sigkill(TestDb::new(Kind::Sqlite, "sigkill-merges").unwrap(), 3).await;
}

#[tokio::test]
async fn acknowledged_batches_survive_sigkill_postgres() {
    if let Some(db) = TestDb::new(Kind::Postgres, "sigkill_postgres") {
        check_sigkill(db, 0).await;
    }
}

/// The tables of schema 1 (one row per sample), as that server created
/// them, to test the conversion at open.
const SCHEMA_1: &str = "
PRAGMA page_size = 1024;
PRAGMA journal_mode = WAL;
CREATE TABLE hosts (
    host_id INTEGER PRIMARY KEY, hostname TEXT NOT NULL UNIQUE, agent_id TEXT NOT NULL,
    agent_version TEXT NOT NULL, peer TEXT NOT NULL, first_seen_unix_ms INTEGER NOT NULL,
    last_seen_unix_ms INTEGER NOT NULL, clock_offset_ms INTEGER NOT NULL,
    dropped_batches_total INTEGER NOT NULL, batches_stored_total INTEGER NOT NULL
);
CREATE TABLE agent_runs (
    run_id INTEGER PRIMARY KEY, agent_id TEXT NOT NULL, boot_id INTEGER NOT NULL,
    high_seq INTEGER NOT NULL, gaps BLOB NOT NULL, first_seen_unix_ms INTEGER NOT NULL,
    last_seen_unix_ms INTEGER NOT NULL, UNIQUE (agent_id, boot_id)
);
CREATE INDEX agent_runs_by_last_seen ON agent_runs (last_seen_unix_ms);
CREATE TABLE samples (
    host_id INTEGER NOT NULL, metric_id INTEGER NOT NULL, time_unix_ms INTEGER NOT NULL,
    run_id INTEGER NOT NULL, value REAL NOT NULL, receive_lag_ms INTEGER NOT NULL,
    PRIMARY KEY (host_id, time_unix_ms, metric_id, run_id)
) WITHOUT ROWID;
CREATE TABLE commands (
    command_row INTEGER PRIMARY KEY, command_id TEXT NOT NULL UNIQUE,
    time_unix_ms INTEGER NOT NULL, argv BLOB NOT NULL
);
CREATE TABLE command_results (
    command_row INTEGER NOT NULL, hostname TEXT NOT NULL, target_index INTEGER NOT NULL,
    outcome TEXT, exit_code INTEGER, signal INTEGER, duration_ms INTEGER,
    stdout_bytes INTEGER, stderr_bytes INTEGER, message TEXT, finished_unix_ms INTEGER,
    PRIMARY KEY (command_row, hostname)
) WITHOUT ROWID;
CREATE INDEX command_results_by_host ON command_results (hostname, command_row);
PRAGMA user_version = 1;
";

/// A schema 1 file holding host pi with run 1 (boot 7: seqs 1, 3 and 4
/// stored, 2 a gap; seq 4 with only four metrics) and run 2 (another
/// agent claiming pi, one cpu sample at seq 4's time), and one command.
/// Seq 1's cpu sample gets metric id `cpu_metric_id` (0 is right).
fn write_schema_1(path: &Path, base: i64, cpu_metric_id: i64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(SCHEMA_1).unwrap();
    conn.execute(
        "INSERT INTO hosts VALUES (1, 'pi', 'pi-agent', '0.1.0', '127.0.0.1:40000', ?1, ?2, -40,
             0, 4)",
        [base + 1250, base + 4250],
    )
    .unwrap();
    let gap: Vec<u8> = [2u64.to_le_bytes(), 2u64.to_le_bytes()].concat();
    conn.execute(
        "INSERT INTO agent_runs VALUES (1, 'pi-agent', 7, 4, ?1, ?2, ?3)",
        rusqlite::params![gap, base + 1250, base + 4250],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO agent_runs VALUES (2, 'other-agent', 1, 1, x'', ?1, ?1)",
        [base + 4250],
    )
    .unwrap();
    let mut sample = conn
        .prepare("INSERT INTO samples VALUES (1, ?1, ?2, ?3, ?4, 250)")
        .unwrap();
    for seq in [1u64, 3, 4] {
        let metrics = if seq == 4 { 4 } else { 6 };
        for i in 0..metrics {
            let id = if seq == 1 && i == 0 {
                cpu_metric_id
            } else {
                i as i64
            };
            sample
                .execute(rusqlite::params![
                    id,
                    base + seq as i64 * 1000,
                    1,
                    value_of(seq, i)
                ])
                .unwrap();
        }
    }
    sample
        .execute(rusqlite::params![0, base + 4000, 2, 99.0])
        .unwrap();
    conn.execute(
        "INSERT INTO commands VALUES (1, 'c1', 1000, x'06000000757074696d65')",
        [],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO command_results (command_row, hostname, target_index) VALUES (1, 'pi', 0)",
        [],
    )
    .unwrap();
}

fn pragma(path: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn a_schema_1_file_is_converted_with_every_sample_and_seq() {
    use SubmitOutcome::{Duplicate, Stored};
    let dir = temp_dir("migrate");
    let base = base_ms();
    write_schema_1(&dir.db(), base, 0);
    let store = Store::open(config(&dir)).await.unwrap();
    assert_eq!(pragma(&dir.db(), "PRAGMA user_version"), 8);
    assert_eq!(
        pragma(
            &dir.db(),
            "SELECT count(*) FROM sqlite_schema WHERE name IN ('samples', 'agent_runs_by_last_seen')"
        ),
        0
    );

    // Every sample, in (time, metric, run) order: at seq 4's time run 1's
    // cpu comes before run 2's.
    let mut expected = rows_of([1, 3], base, &Metric::ALL);
    expected.push((base + 4000, Metric::CpuPercent, value_of(4, 0)));
    expected.push((base + 4000, Metric::CpuPercent, 99.0));
    for (i, &m) in Metric::ALL.iter().enumerate().take(4).skip(1) {
        expected.push((base + 4000, m, value_of(4, i)));
    }
    check(&store, all("pi"), &expected).await;
    let rows = store.query(all("pi")).await.unwrap();
    assert!(
        rows.iter()
            .all(|r| r.received_unix_ms == r.time_unix_ms + 250)
    );

    // The dedup state came along: stored seqs are duplicates, the gap is not.
    let outcomes = [
        store.submit(batch("pi", 7, 1, base)).await.unwrap(),
        store.submit(batch("pi", 7, 4, base)).await.unwrap(),
        store.submit(batch("pi", 7, 2, base)).await.unwrap(),
    ];
    assert_eq!(outcomes, [Duplicate, Duplicate, Stored]);
    let hosts = store.hosts().await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].batches_stored_total, 5);
    // The latest cpu value is run 2's: same time, the higher run.
    assert_eq!(hosts[0].latest[0].value, 99.0);
    assert_eq!(store.history(None, 10).await.unwrap()[0].argv, ["uptime"]);
    store.close().await.unwrap();
    assert_eq!(integrity_check(&dir.db()), "ok");
}

#[tokio::test]
async fn a_failed_conversion_leaves_the_schema_1_file_as_it_was() {
    let dir = temp_dir("migrate-fail");
    // Metric id 9 does not exist: the conversion must stop, not guess.
    write_schema_1(&dir.db(), base_ms(), 9);
    match Store::open(config(&dir)).await {
        Err(e @ StoreError::Sqlite(SqliteError::Sql { .. })) => {
            let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
            assert!(chain.contains("upgrading the database schema"), "{chain}");
            assert!(chain.contains("unknown metric id 9"), "{chain}");
        }
        other => panic!("expected Sqlite, got {other:?}"),
    }
    assert_eq!(pragma(&dir.db(), "PRAGMA user_version"), 1);
    assert_eq!(
        pragma(&dir.db(), "SELECT count(*) FROM samples"),
        6 + 6 + 4 + 1
    );
    assert_eq!(integrity_check(&dir.db()), "ok");
}

/// `batch(host, boot, seq, base)` with only its first `metrics` samples,
/// all at `time_unix_ms` (a clock stepped back to an earlier tick).
fn batch_at(
    (hostname, boot_id, seq): (&str, u64, u64),
    base: i64,
    metrics: usize,
    time_unix_ms: i64,
) -> IncomingBatch {
    let mut b = batch(hostname, boot_id, seq, base);
    b.samples.truncate(metrics);
    for s in &mut b.samples {
        s.time_unix_ms = time_unix_ms;
    }
    b
}

/// Waits until every journal row is merged into the tables, so lookups of
/// stored samples go to `ticks` (with `config`, nothing is ever merged and
/// they stay in memory).
async fn merged(dir: &TempDir) {
    eventually("the journal merged", Duration::from_secs(10), || async {
        pragma(&dir.db(), "SELECT count(*) FROM journal") == 0
    })
    .await;
}

on_every_backend!(check_conflicts:
    a_different_value_for_a_stored_sample_is_refused_whole_sqlite => Sqlite,
    a_different_value_for_a_stored_sample_is_refused_whole_merging => SqliteMerging,
    a_different_value_for_a_stored_sample_is_refused_whole_postgres => Postgres,
);

async fn check_conflicts(db: TestDb) {
    use SubmitOutcome::{Duplicate, Stored};
    let merging = db.kind == Kind::SqliteMerging;
    let dir = &db.dir;
    let store = db.open().await;
    let base = base_ms();
    let t1 = base + 1000;
    let conflict = |metric, stored_value, sent_value| {
        SubmitOutcome::Conflict(Conflict {
            time_unix_ms: t1,
            metric,
            stored_value,
            sent_value,
            within_batch: false,
        })
    };
    // seq 1: cpu and mem at t1.
    assert_eq!(
        store
            .submit(batch_at(("pi", 1, 1), base, 2, t1))
            .await
            .unwrap(),
        Stored
    );
    if merging {
        merged(dir).await;
    }
    // seq 2, the clock stepped back to t1: cpu and mem with other values,
    // and a new disk_read. Refused whole, naming the first contradiction.
    let cpu_conflict = conflict(Metric::CpuPercent, value_of(1, 0), value_of(2, 0));
    let second = batch_at(("pi", 1, 2), base, 3, t1);
    assert_eq!(store.submit(second.clone()).await.unwrap(), cpu_conflict);
    // Its seq was not stored: sent again, it is refused again.
    assert_eq!(store.submit(second).await.unwrap(), cpu_conflict);
    // seq 3 at t1: cpu and mem as stored (the same measurement), and
    // disk_read: acknowledged; only disk_read is new.
    let mut third = batch_at(("pi", 1, 3), base, 3, t1);
    third.samples[0].value = value_of(1, 0);
    third.samples[1].value = value_of(1, 1);
    assert_eq!(store.submit(third.clone()).await.unwrap(), Stored);
    assert_eq!(store.submit(third).await.unwrap(), Duplicate);
    // Another run of the host (its agent restarted) is held to the same
    // samples: (host, time, metric) is what must not have two values.
    let mut other_run = batch_at(("pi", 2, 1), base, 1, t1);
    other_run.samples[0].value = value_of(1, 0);
    assert_eq!(store.submit(other_run.clone()).await.unwrap(), Stored);
    other_run.seq = 2;
    other_run.samples[0].value = 99.0;
    assert_eq!(
        store.submit(other_run).await.unwrap(),
        conflict(Metric::CpuPercent, value_of(1, 0), 99.0)
    );
    // Two batches queued back to back (one flush, most likely): the
    // second contradicts the first.
    let first_of_two = store.enqueue(batch("pi", 1, 4, base)).await.unwrap();
    let mut clash = batch("pi", 1, 5, base);
    for s in &mut clash.samples {
        s.time_unix_ms = base + 4000;
    }
    let second_of_two = store.enqueue(clash).await.unwrap();
    assert_eq!(first_of_two.await.unwrap(), Stored);
    assert_eq!(
        second_of_two.await.unwrap(),
        SubmitOutcome::Conflict(Conflict {
            time_unix_ms: base + 4000,
            metric: Metric::CpuPercent,
            stored_value: value_of(4, 0),
            sent_value: value_of(5, 0),
            within_batch: false,
        })
    );
    let mut expected = vec![
        (t1, Metric::CpuPercent, value_of(1, 0)),
        (t1, Metric::MemPercent, value_of(1, 1)),
        (t1, Metric::DiskReadKbps, value_of(3, 2)),
    ];
    expected.extend(rows_of([4], base, &Metric::ALL));
    check(&store, all("pi"), &expected).await;
    let host = &store.hosts().await.unwrap()[0];
    assert_eq!(host.batches_stored_total, 4, "seqs 1, 3, 4 and run 2's 1");
    assert!(
        host.latest
            .iter()
            .all(|l| l.time_unix_ms == base + 4000 && l.value != value_of(5, 0)),
        "{host:?}"
    );
    store.close().await.unwrap();

    // After a restart (the samples replayed from the journal, or read
    // from `ticks`), the same holds.
    let store = db.open().await;
    if merging {
        merged(dir).await;
    }
    let mut again = batch_at(("pi", 1, 6), base, 2, t1);
    assert_eq!(
        store.submit(again.clone()).await.unwrap(),
        conflict(Metric::CpuPercent, value_of(1, 0), value_of(6, 0))
    );
    again.samples[0].value = value_of(1, 0);
    again.samples[1].value = value_of(1, 1);
    assert_eq!(store.submit(again).await.unwrap(), Stored);
    check(&store, all("pi"), &expected).await;
    store.close().await.unwrap();
    if merging {
        assert_eq!(
            pragma(&dir.db(), "SELECT count(*) FROM ticks"),
            2,
            "one row per tick, nothing written twice"
        );
    }
}

on_every_backend!(samples_of_one_batch_at_several_times_and_bad_values:
    samples_of_one_batch_at_several_times_and_bad_values_sqlite => Sqlite,
    samples_of_one_batch_at_several_times_and_bad_values_postgres => Postgres,
);

async fn samples_of_one_batch_at_several_times_and_bad_values(db: TestDb) {
    let store = db.open().await;
    let base = base_ms();
    let sample = |t: i64, metric, value| StoredSample {
        time_unix_ms: base + t,
        metric,
        value,
    };
    let mut b = batch("pi", 1, 1, base);
    b.samples = vec![
        sample(2000, Metric::MemPercent, 1.0),
        sample(1000, Metric::CpuPercent, 2.0),
        sample(2000, Metric::CpuPercent, 3.0),
        // The same (time, metric, value) twice in the batch: kept once.
        sample(2000, Metric::MemPercent, 1.0),
        // Not storable: skipped, the rest of the batch (and flush) is not.
        sample(1000, Metric::NetInKbps, f64::NAN),
        sample(3000, Metric::NetOutKbps, f64::INFINITY),
    ];
    assert_eq!(store.submit(b).await.unwrap(), SubmitOutcome::Stored);
    check(
        &store,
        all("pi"),
        &[
            (base + 1000, Metric::CpuPercent, 2.0),
            (base + 2000, Metric::CpuPercent, 3.0),
            (base + 2000, Metric::MemPercent, 1.0),
        ],
    )
    .await;
    let mem = SampleQuery {
        metric: Some(Metric::MemPercent),
        ..all("pi")
    };
    check(&store, mem, &[(base + 2000, Metric::MemPercent, 1.0)]).await;
    let first_two = SampleQuery {
        limit: Some(2),
        ..all("pi")
    };
    check(
        &store,
        first_two,
        &[
            (base + 1000, Metric::CpuPercent, 2.0),
            (base + 2000, Metric::CpuPercent, 3.0),
        ],
    )
    .await;
    // A batch that sends one (time, metric) with two values contradicts
    // itself: refused whole, down to its host, which is new here.
    let mut torn = batch("pj", 1, 1, base);
    let cpu = torn.samples[0];
    torn.samples.push(StoredSample { value: 50.0, ..cpu });
    assert_eq!(
        store.submit(torn).await.unwrap(),
        SubmitOutcome::Conflict(Conflict {
            time_unix_ms: cpu.time_unix_ms,
            metric: Metric::CpuPercent,
            stored_value: cpu.value,
            sent_value: 50.0,
            within_batch: true,
        })
    );
    assert!(matches!(
        store.query(all("pj")).await,
        Err(StoreError::UnknownHost(_))
    ));
    assert_eq!(store.hosts().await.unwrap().len(), 1, "pi only");
    store.close().await.unwrap();
}

#[tokio::test]
async fn queries_merge_the_journal_with_stored_ticks() {
    let dir = temp_dir("mixed");
    let base = base_ms();
    // seq 1 (cpu, mem) and seq 2 (all six) merged into the tables.
    let store = Store::open(merging_config(&dir)).await.unwrap();
    let mut first = batch("pi", 1, 1, base);
    first.samples.truncate(2);
    store.submit(first).await.unwrap();
    store.submit(batch("pi", 1, 2, base)).await.unwrap();
    eventually("both merged", Duration::from_secs(10), || async {
        pragma(&dir.db(), "SELECT count(*) FROM journal") == 0
    })
    .await;
    assert_eq!(pragma(&dir.db(), "SELECT count(*) FROM ticks"), 2);
    store.close().await.unwrap();
    // Then, unmerged: seq 3 (the clock stepped back to seq 1's time: cpu
    // and mem again, and disk_read), seq 4 and a re-sent seq 2 (a
    // duplicate).
    let store = Store::open(config(&dir)).await.unwrap();
    let mut third = batch_at(("pi", 1, 3), base, 3, base + 1000);
    // The same cpu and mem values (a different one would be refused).
    third.samples[0].value = value_of(1, 0);
    third.samples[1].value = value_of(1, 1);
    assert_eq!(store.submit(third).await.unwrap(), SubmitOutcome::Stored);
    store.submit(batch("pi", 1, 4, base)).await.unwrap();
    assert_eq!(
        store.submit(batch("pi", 1, 2, base)).await.unwrap(),
        SubmitOutcome::Duplicate
    );
    let mut expected = vec![
        (base + 1000, Metric::CpuPercent, value_of(1, 0)),
        (base + 1000, Metric::MemPercent, value_of(1, 1)),
        (base + 1000, Metric::DiskReadKbps, value_of(3, 2)),
    ];
    expected.extend(rows_of([2, 4], base, &Metric::ALL));
    check(&store, all("pi"), &expected).await;
    for limit in [0, 2, 3, 4, 9, 15, 16] {
        let q = SampleQuery {
            limit: Some(limit),
            ..all("pi")
        };
        check(&store, q, &expected[..limit.min(expected.len())]).await;
    }
    let disk = SampleQuery {
        metric: Some(Metric::DiskReadKbps),
        ..all("pi")
    };
    let disk_rows = [
        (base + 1000, Metric::DiskReadKbps, value_of(3, 2)),
        (base + 2000, Metric::DiskReadKbps, value_of(2, 2)),
        (base + 4000, Metric::DiskReadKbps, value_of(4, 2)),
    ];
    check(&store, disk.clone(), &disk_rows).await;
    let disk_two = SampleQuery {
        limit: Some(2),
        ..disk
    };
    check(&store, disk_two, &disk_rows[..2]).await;
    let range = SampleQuery {
        since_unix_ms: base + 2000,
        until_unix_ms: Some(base + 4000),
        ..all("pi")
    };
    check(&store, range, &rows_of([2], base, &Metric::ALL)).await;
    assert_eq!(store.hosts().await.unwrap()[0].batches_stored_total, 4);
    assert_eq!(
        pragma(&dir.db(), "SELECT count(*) FROM ticks"),
        2,
        "seq 3 and 4 were still in the journal"
    );
    store.close().await.unwrap();
}

/// The tables of schema 2 (one row per tick, journal rows without ticks),
/// as that server created them.
const SCHEMA_2: &str = "
PRAGMA page_size = 1024;
PRAGMA journal_mode = WAL;
CREATE TABLE hosts (
    host_id INTEGER PRIMARY KEY, hostname TEXT NOT NULL UNIQUE, agent_id TEXT NOT NULL,
    agent_version TEXT NOT NULL, peer TEXT NOT NULL, first_seen_unix_ms INTEGER NOT NULL,
    last_seen_unix_ms INTEGER NOT NULL, clock_offset_ms INTEGER NOT NULL,
    dropped_batches_total INTEGER NOT NULL, batches_stored_total INTEGER NOT NULL
);
CREATE TABLE agent_runs (
    run_id INTEGER PRIMARY KEY, agent_id TEXT NOT NULL, boot_id INTEGER NOT NULL,
    high_seq INTEGER NOT NULL, gaps BLOB NOT NULL, first_seen_unix_ms INTEGER NOT NULL,
    last_seen_unix_ms INTEGER NOT NULL, UNIQUE (agent_id, boot_id)
);
CREATE TABLE ticks (
    host_id INTEGER NOT NULL, time_unix_ms INTEGER NOT NULL, run_id INTEGER NOT NULL,
    receive_lag_ms INTEGER NOT NULL, cpu_percent REAL, mem_percent REAL, disk_read_kbps REAL,
    disk_write_kbps REAL, net_in_kbps REAL, net_out_kbps REAL,
    PRIMARY KEY (host_id, time_unix_ms, run_id)
) WITHOUT ROWID;
CREATE TABLE journal (
    journal_id INTEGER PRIMARY KEY, host_id INTEGER NOT NULL, run_id INTEGER NOT NULL,
    seq INTEGER NOT NULL, received_unix_ms INTEGER NOT NULL, clock_offset_ms INTEGER NOT NULL,
    dropped_batches_total INTEGER NOT NULL, agent_version TEXT NOT NULL, peer TEXT NOT NULL
);
CREATE TABLE commands (
    command_row INTEGER PRIMARY KEY, command_id TEXT NOT NULL UNIQUE,
    time_unix_ms INTEGER NOT NULL, argv BLOB NOT NULL
);
CREATE TABLE command_results (
    command_row INTEGER NOT NULL, hostname TEXT NOT NULL, target_index INTEGER NOT NULL,
    outcome TEXT, exit_code INTEGER, signal INTEGER, duration_ms INTEGER,
    stdout_bytes INTEGER, stderr_bytes INTEGER, message TEXT, finished_unix_ms INTEGER,
    PRIMARY KEY (command_row, hostname)
) WITHOUT ROWID;
CREATE INDEX command_results_by_host ON command_results (hostname, command_row);
PRAGMA user_version = 2;
";

#[tokio::test]
async fn a_schema_2_file_is_converted_with_its_unfolded_journal() {
    use SubmitOutcome::{Duplicate, Stored};
    let dir = temp_dir("migrate-2");
    let base = base_ms();
    {
        // pi stored seqs 1 and 2 of boot 7, both in `ticks`; the hosts and
        // agent_runs rows were folded after seq 1 only, seq 2 is in the
        // journal (schema 2's crash state).
        let conn = rusqlite::Connection::open(dir.db()).unwrap();
        conn.execute_batch(SCHEMA_2).unwrap();
        conn.execute(
            "INSERT INTO hosts VALUES (1, 'pi', 'pi-agent', '0.1.0', '127.0.0.1:1', ?1, ?1, -40,
                 0, 1)",
            [base + 1250],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO agent_runs VALUES (1, 'pi-agent', 7, 1, x'', ?1, ?1)",
            [base + 1250],
        )
        .unwrap();
        for seq in [1u64, 2] {
            let t = base + seq as i64 * 1000;
            let v: Vec<f64> = (0..6).map(|i| value_of(seq, i)).collect();
            conn.execute(
                "INSERT INTO ticks VALUES (1, ?1, 1, 250, ?2, ?3, ?4, ?5, ?6, ?7)",
                rusqlite::params![t, v[0], v[1], v[2], v[3], v[4], v[5]],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO journal VALUES (1, 1, 1, 2, ?1, -40, 0, '0.2.0', '127.0.0.1:2')",
            [base + 2250],
        )
        .unwrap();
    }
    let store = Store::open(merging_config(&dir)).await.unwrap();
    assert_eq!(pragma(&dir.db(), "PRAGMA user_version"), 8);
    check(&store, all("pi"), &rows_of(1..=2, base, &Metric::ALL)).await;
    let hosts = store.hosts().await.unwrap();
    assert_eq!(hosts[0].batches_stored_total, 2);
    assert_eq!(hosts[0].agent_version, "0.2.0");
    assert_eq!(hosts[0].last_seen_unix_ms, base + 2250);
    let outcomes = [
        store.submit(batch("pi", 7, 2, base)).await.unwrap(),
        store.submit(batch("pi", 7, 3, base)).await.unwrap(),
    ];
    assert_eq!(outcomes, [Duplicate, Stored]);
    check(&store, all("pi"), &rows_of(1..=3, base, &Metric::ALL)).await;
    store.close().await.unwrap();
    let store = Store::open(config(&dir)).await.unwrap();
    assert_eq!(store.hosts().await.unwrap()[0].batches_stored_total, 3);
    store.close().await.unwrap();
    assert_eq!(integrity_check(&dir.db()), "ok");
}

/// Two replicas (two stores on one database) sent the same batches at once,
/// as an agent re-sending its buffer to another replica after a failover
/// while the first still commits: each batch is stored exactly once,
/// counted once, and answered `Stored` by exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_store_each_batch_once_postgres() {
    let Some(db) = TestDb::new(Kind::Postgres, "two_replicas") else {
        return;
    };
    let (a, b) = tokio::join!(db.open(), db.open());
    let base = base_ms();
    let mut tasks = Vec::new();
    for store in [a.clone(), b.clone()] {
        tasks.push(tokio::spawn(async move {
            let mut tickets = Vec::new();
            for host in ["pi-1", "pi-2", "pi-3"] {
                for seq in 1..=40 {
                    tickets.push(store.enqueue(batch(host, 9, seq, base)).await.unwrap());
                }
            }
            let mut stored = 0;
            for t in tickets {
                match t.await.unwrap() {
                    SubmitOutcome::Stored => stored += 1,
                    SubmitOutcome::Duplicate => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            stored
        }));
    }
    let mut stored_total = 0;
    for t in tasks {
        stored_total += t.await.unwrap();
    }
    assert_eq!(stored_total, 3 * 40, "each batch Stored by one replica");
    let pg = Postgres::shared("two_replicas").unwrap();
    let url = db.url.as_deref().unwrap();
    assert_eq!(pg.psql(url, "SELECT count(*) FROM ticks").trim(), "120");
    assert_eq!(
        pg.psql(
            url,
            "SELECT count(*) FROM (SELECT host_id, time_unix_ms FROM ticks
             GROUP BY 1, 2 HAVING count(*) > 1) d"
        )
        .trim(),
        "0"
    );
    for store in [&a, &b] {
        let hosts = store.hosts().await.unwrap();
        assert_eq!(hosts.len(), 3);
        assert!(
            hosts.iter().all(|h| h.batches_stored_total == 40),
            "{hosts:?}"
        );
        check(store, all("pi-2"), &rows_of(1..=40, base, &Metric::ALL)).await;
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// Several replicas starting at once on a new database: one makes the
/// tables, the others wait for it (an advisory lock) and find them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_make_the_tables_once_postgres() {
    let Some(db) = TestDb::new(Kind::Postgres, "start_at_once") else {
        return;
    };
    let (a, b, c) = tokio::join!(
        Store::open(db.config()),
        Store::open(db.config()),
        Store::open(db.config())
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let base = base_ms();
    assert_eq!(
        a.submit(batch("pi", 1, 1, base)).await.unwrap(),
        SubmitOutcome::Stored
    );
    assert_eq!(
        b.submit(batch("pi", 1, 1, base)).await.unwrap(),
        SubmitOutcome::Duplicate
    );
    assert_eq!(c.hosts().await.unwrap()[0].batches_stored_total, 1);
    for s in [a, b, c] {
        s.close().await.unwrap();
    }
}

/// A database that is not there: a clear error naming it, without its
/// password, and no hang.
#[tokio::test]
async fn an_unreachable_database_is_a_clear_error() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://monitor:s3cret@127.0.0.1:{port}/monitor");
    let started = Instant::now();
    match Store::open(PostgresConfig::new(url)).await {
        Err(e @ StoreError::Postgres(monitor_server::store::PostgresError::Unreachable { .. })) => {
            let msg = e.to_string();
            assert!(msg.contains(&format!("127.0.0.1:{port}/monitor")), "{msg}");
            assert!(!msg.contains("s3cret"), "{msg}");
            assert!(std::error::Error::source(&e).is_some());
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

on_every_backend!(series_downsample_every_metric:
    series_downsample_every_metric_sqlite => Sqlite,
    series_downsample_every_metric_merging => SqliteMerging,
    series_downsample_every_metric_postgres => Postgres,
);

/// The dashboard's downsampled series, the same on every backend: six
/// ticks a second apart in two buckets of 3 s, every metric, their values
/// as sent; an unknown host is its own error.
async fn series_downsample_every_metric(db: TestDb) {
    use monitor_server::store::SeriesQuery;
    let store = db.open().await;
    let base = base_ms() - base_ms() % 3000;
    submit_all(&store, "pi", 1, 1..=6, base - 1000).await;
    let q = SeriesQuery {
        hostname: "pi".into(),
        since_unix_ms: base,
        until_unix_ms: base + 6000,
        step_ms: 3000,
    };
    let series = store.series(q.clone()).await.unwrap();
    assert_eq!(series.len(), Metric::ALL.len());
    for (i, s) in series.iter().enumerate() {
        assert_eq!(s.metric, Metric::ALL[i]);
        assert_eq!(s.interval_ms, Some(1000), "{s:?}");
        let counts: Vec<u32> = s.buckets.iter().map(|b| b.count).collect();
        assert_eq!(counts, [3, 3], "{s:?}");
        let sum: f64 = (1..=6).map(|seq| value_of(seq, i)).sum();
        let got: f64 = s.buckets.iter().map(|b| b.sum).sum();
        assert!((got - sum).abs() < 1e-9, "{s:?}: sum {got}, sent {sum}");
    }
    match store
        .series(SeriesQuery {
            hostname: "nope".into(),
            ..q
        })
        .await
    {
        Err(StoreError::UnknownHost(h)) => assert_eq!(h, "nope"),
        other => panic!("expected UnknownHost, got {other:?}"),
    }
    store.close().await.unwrap();
}

on_every_backend!(fleet_series_match_each_hosts_series:
    fleet_series_match_each_hosts_series_sqlite => Sqlite,
    fleet_series_match_each_hosts_series_merging => SqliteMerging,
    fleet_series_match_each_hosts_series_postgres => Postgres,
);

/// The dashboard's sparklines read every host at once: the same series as
/// one query per host gives, every host listed by name (one without a
/// sample in the range with empty series), a bad range refused.
async fn fleet_series_match_each_hosts_series(db: TestDb) {
    use monitor_server::store::FleetSeriesQuery;
    let store = db.open().await;
    let base = base_ms() - base_ms() % 3000;
    // Sent out of name order; pi-c only outside the range.
    submit_all(&store, "pi-b", 1, 3..=9, base - 1000).await;
    submit_all(&store, "pi-a", 1, 1..=6, base - 1000).await;
    submit_all(&store, "pi-c", 1, 20..=21, base - 1000).await;
    let q = FleetSeriesQuery {
        since_unix_ms: base,
        until_unix_ms: base + 6000,
        step_ms: 3000,
    };
    let fleet = store.fleet_series(q.clone()).await.unwrap();
    let names: Vec<&str> = fleet.iter().map(|h| h.hostname.as_str()).collect();
    assert_eq!(names, ["pi-a", "pi-b", "pi-c"]);
    for h in &fleet {
        let alone = store.series(q.for_host(&h.hostname)).await.unwrap();
        assert_eq!(h.series, alone, "{}", h.hostname);
        assert_eq!(h.series.len(), Metric::ALL.len());
    }
    let counts =
        |i: usize| -> Vec<u32> { fleet[i].series[0].buckets.iter().map(|b| b.count).collect() };
    assert_eq!(counts(0), [3, 3]);
    assert_eq!(counts(1), [1, 3]);
    assert!(fleet[2].series.iter().all(|s| s.buckets.is_empty()));
    let sum: f64 = (4..=6).map(|seq| value_of(seq, 0)).sum();
    assert!((fleet[1].series[0].buckets[1].sum - sum).abs() < 1e-9);
    match store
        .fleet_series(FleetSeriesQuery {
            until_unix_ms: base,
            ..q
        })
        .await
    {
        Err(StoreError::BadSeriesQuery(_)) => {}
        other => panic!("expected BadSeriesQuery, got {other:?}"),
    }
    store.close().await.unwrap();
}

on_every_backend!(check_feed:
    the_feed_gives_each_batch_once_in_commit_order_sqlite => Sqlite,
    the_feed_gives_each_batch_once_in_commit_order_merging => SqliteMerging,
    the_feed_gives_each_batch_once_in_commit_order_postgres => Postgres,
);

/// Remote-write's change feed while two handles write at once (on
/// PostgreSQL two replicas; SQLite has one writer per file, so both use
/// it): a reader that follows its cursor the whole time, moving it as a
/// forwarder does, gets every stored batch exactly once, in increasing
/// journal ids. On PostgreSQL, an id taken in sequence order rather than
/// commit order would let the cursor pass a batch committed late.
async fn check_feed(db: TestDb) {
    let small_flushes = |k: &mut Knobs| k.flush_max_batches = 3;
    let a = Store::open(db.tuned(small_flushes)).await.unwrap();
    let b = match db.kind {
        Kind::Postgres => Store::open(db.tuned(small_flushes)).await.unwrap(),
        Kind::Sqlite | Kind::SqliteMerging => a.clone(),
    };
    let lag = Duration::from_secs(3600);
    let cursors = a
        .register_forwarders(vec!["dest".into()], lag)
        .await
        .unwrap();
    assert_eq!(cursors.len(), 1);
    let mut claim = a.forward_claim("dest", lag);
    let start = claim.take().await.unwrap().expect("the only forwarder");
    assert_eq!(start.sending_through, 0);
    let base = base_ms();
    const SEQS: u64 = 60;
    let mut writers = Vec::new();
    for (store, hosts) in [(a.clone(), ["a-1", "a-2"]), (b.clone(), ["b-1", "b-2"])] {
        writers.push(tokio::spawn(async move {
            for seq in 1..=SEQS {
                let mut tickets = Vec::new();
                for h in hosts {
                    tickets.push(store.enqueue(batch(h, 1, seq, base)).await.unwrap());
                }
                for t in tickets {
                    assert_eq!(t.await.unwrap(), SubmitOutcome::Stored);
                }
            }
        }));
    }
    // Follows the feed while the writers run, then once more after.
    let mut got: Vec<(String, i64)> = Vec::new();
    let mut cursor = start.journal_id;
    let mut last_id = start.journal_id;
    let mut done = false;
    loop {
        let finished = writers.iter().all(|w| w.is_finished());
        loop {
            let read = a.forward_batch(cursor, None, 30).await.unwrap();
            if read.rows.is_empty() {
                break;
            }
            for row in &read.rows {
                assert!(
                    row.journal_id > last_id,
                    "ids go up: {} after {last_id}",
                    row.journal_id
                );
                last_id = row.journal_id;
                assert_eq!(row.samples.len(), Metric::ALL.len());
                got.push((row.hostname.clone(), row.samples[0].time_unix_ms));
            }
            claim.set_sending(read.through).await.unwrap();
            claim.set_cursor(read.through).await.unwrap();
            cursor = read.through;
        }
        if done {
            break;
        }
        done = finished;
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut expected: Vec<(String, i64)> = Vec::new();
    for h in ["a-1", "a-2", "b-1", "b-2"] {
        for seq in 1..=SEQS {
            expected.push((h.to_owned(), base + seq as i64 * 1000));
        }
    }
    got.sort();
    expected.sort();
    assert_eq!(got.len(), expected.len(), "every batch once");
    assert_eq!(got, expected);
    // A restart resumes at the stored cursor, with nothing after it.
    let again = claim.take().await.unwrap().unwrap();
    assert_eq!(again.journal_id, cursor);
    assert_eq!(again.sending_through, 0);
    assert!(
        a.forward_batch(cursor, None, 30)
            .await
            .unwrap()
            .rows
            .is_empty()
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// One forwarder per destination across replicas: while one replica holds
/// the destination's claim, another's take gives `None`; when the holder
/// goes (its connection closes, as when it is killed), the other takes
/// it, at the cursor the first stored. The journal is written only while
/// a destination is registered, and emptied behind the cursors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_forwards_to_a_destination_and_another_takes_over_postgres() {
    let Some(db) = TestDb::new(Kind::Postgres, "forward_claims") else {
        return;
    };
    let fast_retention = |k: &mut Knobs| k.retention_interval = Duration::from_millis(200);
    let a = Store::open(db.tuned(fast_retention)).await.unwrap();
    let b = Store::open(db.tuned(fast_retention)).await.unwrap();
    let pg = Postgres::shared("forward_claims").unwrap();
    let url = db.url.as_deref().unwrap();
    let base = base_ms();
    // No destination yet: nothing journalled.
    submit_all(&a, "pi", 1, 1..=3, base).await;
    assert_eq!(pg.psql(url, "SELECT count(*) FROM journal").trim(), "0");
    let lag = Duration::from_secs(3600);
    a.register_forwarders(vec!["dest".into()], lag)
        .await
        .unwrap();
    b.register_forwarders(vec!["dest".into()], lag)
        .await
        .unwrap();
    submit_all(&b, "pi", 1, 4..=9, base).await;
    let mut first = a.forward_claim("dest", lag);
    let mut second = b.forward_claim("dest", lag);
    let start = first.take().await.unwrap().expect("free");
    assert!(second.take().await.unwrap().is_none(), "held by the first");
    let read = a.forward_batch(start.journal_id, None, 24).await.unwrap();
    assert_eq!(read.rows.len(), 4, "whole batches within 24 samples");
    first.set_sending(read.through).await.unwrap();
    first.set_cursor(read.through).await.unwrap();
    first.set_sending(read.newest).await.unwrap();
    drop(first);
    let until = Instant::now() + Duration::from_secs(10);
    let taken = loop {
        if let Some(c) = second.take().await.unwrap() {
            break Some(c);
        }
        assert!(Instant::now() < until, "the second replica never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let taken = taken.unwrap();
    assert_eq!(taken.journal_id, read.through);
    assert_eq!(taken.sending_through, read.newest, "the request in flight");
    let rest = b
        .forward_batch(taken.journal_id, Some(taken.sending_through), 1000)
        .await
        .unwrap();
    let times: Vec<i64> = rest
        .rows
        .iter()
        .map(|r| r.samples[0].time_unix_ms)
        .collect();
    assert_eq!(times, (8..=9).map(|s| base + s * 1000).collect::<Vec<_>>());
    second.set_cursor(rest.through).await.unwrap();
    eventually(
        "the journal emptied behind the cursor",
        Duration::from_secs(10),
        || async { pg.psql(url, "SELECT count(*) FROM journal").trim() == "0" },
    )
    .await;
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// A database of schema 1 (before the remote-write journal) gains the
/// journal and the cursors at the next start, keeping its samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_1_database_gains_the_journal_and_keeps_its_samples_postgres() {
    let Some((db, base)) = postgres_with_samples("schema_1_upgrade", "pi", 1..=3).await else {
        return;
    };
    let pg = Postgres::shared("schema_1_upgrade").unwrap();
    let url = db.url.as_deref().unwrap();
    // What a server of schema 1 left.
    pg.psql(
        url,
        "DROP TABLE journal, forward_cursors; DROP SEQUENCE journal_ids;
         UPDATE monitor_schema SET version = 1",
    );
    let store = db.open().await;
    assert_eq!(
        pg.psql(url, "SELECT version FROM monitor_schema").trim(),
        "4"
    );
    check(&store, all("pi"), &rows_of(1..=3, base, &Metric::ALL)).await;
    let lag = Duration::from_secs(3600);
    store
        .register_forwarders(vec!["d".into()], lag)
        .await
        .unwrap();
    submit_all(&store, "pi", 1, 4..=5, base).await;
    let read = store.forward_batch(0, None, 100).await.unwrap();
    assert_eq!(read.rows.len(), 2, "the batches stored since registration");
    store.close().await.unwrap();
}

// The health rollup (store/health_rollup.rs): a whole-minute query below a
// host's rolled edge is answered from its minute rows, and must give what
// the raw rows give, bucket by bucket.

/// A batch of `host` holding the health values of its agent's minute
/// `minute` after `base` (ticks every 5 s, some a few ms late): the
/// temperature, load, the throttling word, `/` and (from minute 5) `/boot`.
fn health_minute_batch(host: &str, seq: u64, base: i64, minute: i64) -> IncomingBatch {
    use monitor::health::HealthMetric;
    use monitor_server::store::StoredHealth;
    let mut b = batch(host, 7, seq, base);
    b.samples.clear();
    for k in 0..12 {
        let time_unix_ms = base + minute * 60_000 + k * 5000 + i64::from(k % 5 == 2) * 3;
        let x = (minute * 12 + k) as f64;
        let word = if (minute * 12 + k) % 17 == 0 {
            0x5_0005
        } else {
            0
        };
        let mut one = |metric, device: &str, value| {
            b.health.push(StoredHealth {
                time_unix_ms,
                metric,
                device: device.into(),
                value,
            });
        };
        one(HealthMetric::TempCelsius, "", 40.0 + (x * 0.37).sin() * 9.1);
        one(HealthMetric::Load1, "", (x * 0.11).cos().abs());
        one(HealthMetric::ThrottledFlags, "", f64::from(word));
        one(HealthMetric::FsUsedPercent, "/", 60.0 + x / 1000.0);
        if minute >= 5 {
            one(HealthMetric::FsUsedPercent, "/boot", 20.5);
        }
    }
    b
}

/// What the raw rows give for `q`: every stored value of each metric (as
/// `query_health` returns them) through the same downsampler.
async fn raw_health_series(
    store: &Store,
    q: &monitor_server::store::SeriesQuery,
) -> monitor_server::store::HealthSeries {
    use monitor::health::HealthMetric;
    use monitor_server::store::{HealthDownsampler, HealthQuery};
    let mut down = HealthDownsampler::new(q, &HealthMetric::ALL).unwrap();
    for metric in HealthMetric::ALL {
        let rows = store
            .query_health(HealthQuery {
                hostname: q.hostname.clone(),
                metric,
                since_unix_ms: q.since_unix_ms,
                until_unix_ms: Some(q.until_unix_ms),
                limit: None,
            })
            .await
            .unwrap();
        for r in rows {
            down.push(metric, &r.device, r.time_unix_ms, r.value);
        }
    }
    down.finish()
}

/// `got` is `want` bucket by bucket: counts, min, max, longest gaps,
/// intervals, labels, devices left out exactly; sums to rounding (a
/// minute row adds its values first).
fn assert_same_health(
    got: &monitor_server::store::HealthSeries,
    want: &monitor_server::store::HealthSeries,
) {
    assert_eq!(got.devices_left_out, want.devices_left_out);
    let keys = |h: &monitor_server::store::HealthSeries| -> Vec<_> {
        h.series.iter().map(|s| s.metric.clone()).collect()
    };
    assert_eq!(keys(got), keys(want));
    for (a, b) in got.series.iter().zip(&want.series) {
        assert_eq!(a.interval_ms, b.interval_ms, "{:?}", a.metric);
        assert_eq!(a.buckets.len(), b.buckets.len(), "{:?}", a.metric);
        for (x, y) in a.buckets.iter().zip(&b.buckets) {
            assert!(
                (x.sum - y.sum).abs() <= 1e-9 * y.sum.abs().max(1.0),
                "{:?}: {x:?} vs {y:?}",
                a.metric
            );
            assert_eq!(
                (x.start_unix_ms, x.count, x.min, x.max, x.max_gap_ms),
                (y.start_unix_ms, y.count, y.min, y.max, y.max_gap_ms),
                "{:?}",
                a.metric
            );
        }
    }
}

impl TestDb {
    /// How many minute rows of the health rollup start before
    /// `before_unix_ms`, and the newest one's start, read from the
    /// database itself.
    async fn rolled_minutes(&self, before_unix_ms: i64) -> (i64, Option<i64>) {
        let sql = "SELECT count(*) FILTER (WHERE minute_unix_ms < $1), max(minute_unix_ms)
                   FROM health_minutes";
        match &self.url {
            None => {
                let c = rusqlite::Connection::open_with_flags(
                    self.dir.db(),
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .unwrap();
                c.query_row(&sql.replace("$1", "?1"), [before_unix_ms], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .unwrap()
            }
            Some(url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                let r = client.query_one(sql, &[&before_unix_ms]).await.unwrap();
                (r.get(0), r.get(1))
            }
        }
    }

    /// Waits until the rollup's newest minute row is at least `minute`.
    async fn wait_rolled(&self, minute: i64) {
        let until = Instant::now() + Duration::from_secs(30);
        while self
            .rolled_minutes(i64::MAX)
            .await
            .1
            .is_none_or(|m| m < minute)
        {
            assert!(
                Instant::now() < until,
                "the rollup never reached minute {minute}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

on_every_backend!(check_health_rollup:
    health_rollup_answers_as_the_raw_rows_sqlite => Sqlite,
    health_rollup_answers_as_the_raw_rows_merging => SqliteMerging,
    health_rollup_answers_as_the_raw_rows_postgres => Postgres,
);

/// Closed minutes are rolled up, and a whole-minute query answers from
/// them exactly what the raw rows give: with an outage, two mount points
/// (one appearing later), throttling, and values arriving late into
/// rolled minutes (one into a minute that had none).
async fn check_health_rollup(db: TestDb) {
    use monitor::health::HealthMetric;
    use monitor_server::store::{SeriesQuery, StoredHealth};
    let store = db.open().await;
    let base = base_ms().div_euclid(60_000) * 60_000;
    let mut seq = 0;
    // Minutes 0-29, without 10-14 (an outage).
    for minute in (0..30).filter(|m| !(10..15).contains(m)) {
        seq += 1;
        let b = health_minute_batch("pi-r", seq, base, minute);
        assert_eq!(store.submit(b).await.unwrap(), SubmitOutcome::Stored);
    }
    // Minute 29 is open (the newest value is in it).
    db.wait_rolled(base + 28 * 60_000).await;
    let (before_29, newest) = db.rolled_minutes(base + 29 * 60_000).await;
    assert_eq!(newest, Some(base + 28 * 60_000));
    assert_eq!(before_29, 24, "one row per closed minute with values");
    // Late values: into rolled minute 3 (between its ticks) and into the
    // outage.
    let mut late = batch("pi-r", 7, 1000, base);
    late.samples.clear();
    for (time_unix_ms, value) in [
        (base + 3 * 60_000 + 2500, 99.5),
        (base + 12 * 60_000 + 1, 1.5),
    ] {
        for device in ["/", "/late"] {
            late.health.push(StoredHealth {
                time_unix_ms,
                metric: HealthMetric::FsUsedPercent,
                device: device.into(),
                value,
            });
        }
    }
    assert_eq!(store.submit(late).await.unwrap(), SubmitOutcome::Stored);
    assert_eq!(db.rolled_minutes(base + 29 * 60_000).await.0, 25);
    let query = |step_ms, until_unix_ms| SeriesQuery {
        hostname: "pi-r".into(),
        since_unix_ms: base,
        until_unix_ms,
        step_ms,
    };
    let end = base + 30 * 60_000;
    for q in [
        query(60_000, end),
        query(120_000, end),
        query(300_000, end + 7),
        query(420_000, base + 20 * 60_000 + 30_000),
        // Not whole minutes: read raw.
        query(44_000, end),
    ] {
        let got = store
            .health_series(q.clone(), &HealthMetric::ALL)
            .await
            .unwrap();
        let want = raw_health_series(&store, &q).await;
        // Temperature, load, 4 conditions, `/`, `/boot`, `/late`.
        assert_eq!(want.series.len(), 9, "{q:?}");
        assert!(
            want.series
                .iter()
                .any(|s| s.buckets.iter().any(|b| b.max_gap_ms > 5 * 60_000))
        );
        assert_same_health(&got, &want);
    }
    // After a restart the edge is read from the file, and a new minute is
    // rolled on from it.
    store.close().await.unwrap();
    let store = db.open().await;
    seq += 1;
    let b = health_minute_batch("pi-r", seq + 2000, base, 30);
    assert_eq!(store.submit(b).await.unwrap(), SubmitOutcome::Stored);
    db.wait_rolled(base + 29 * 60_000).await;
    let q = query(60_000, end + 60_000);
    let got = store
        .health_series(q.clone(), &HealthMetric::ALL)
        .await
        .unwrap();
    assert_same_health(&got, &raw_health_series(&store, &q).await);
    store.close().await.unwrap();
    db.check_integrity();
}

on_every_backend!(check_health_rollup_retention:
    health_rollup_goes_with_retention_sqlite => Sqlite,
    health_rollup_goes_with_retention_postgres => Postgres,
);

/// Retention deletes minute rows with the raw values, and the answers
/// stay those of the raw rows.
async fn check_health_rollup_retention(db: TestDb) {
    use monitor::health::HealthMetric;
    use monitor_server::store::SeriesQuery;
    let store = db.open_with_hour_retention().await;
    let now = monitor::time::now_unix_ms();
    let old = (now - 2 * 3_600_000).div_euclid(60_000) * 60_000;
    let recent = (now - 10 * 60_000).div_euclid(60_000) * 60_000;
    let mut seq = 0;
    for (base, minutes) in [(old, 0..3), (recent, 0..3)] {
        for minute in minutes {
            seq += 1;
            let b = health_minute_batch("pi-rr", seq, base, minute);
            assert_eq!(store.submit(b).await.unwrap(), SubmitOutcome::Stored);
        }
    }
    db.wait_rolled(recent + 60_000).await;
    let q = SeriesQuery {
        hostname: "pi-rr".into(),
        since_unix_ms: old,
        until_unix_ms: recent + 3 * 60_000,
        step_ms: 60_000,
    };
    // Until a pass is complete, the oldest minutes may be half deleted.
    let cutoff = now - 3_600_000;
    eventually(
        "old values and minute rows pruned",
        Duration::from_secs(20),
        || async {
            let want = raw_health_series(&store, &q).await;
            db.rolled_minutes(cutoff).await.0 == 0
                && want
                    .series
                    .iter()
                    .all(|s| s.buckets.iter().all(|b| b.start_unix_ms >= recent))
        },
    )
    .await;
    assert_eq!(db.rolled_minutes(i64::MAX).await.0, 2);
    let got = store
        .health_series(q.clone(), &HealthMetric::ALL)
        .await
        .unwrap();
    let want = raw_health_series(&store, &q).await;
    assert_eq!(want.series.len(), 7);
    assert_same_health(&got, &want);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_schema_7_file_gains_the_health_rollup_and_rolls_up_its_old_values() {
    use monitor::health::HealthMetric;
    use monitor_server::store::SeriesQuery;
    let dir = temp_dir("schema-7");
    let base = base_ms().div_euclid(60_000) * 60_000;
    {
        let store = Store::open(config(&dir)).await.unwrap();
        for minute in 0..4 {
            let b = health_minute_batch("pi-7", minute as u64 + 1, base, minute);
            assert_eq!(store.submit(b).await.unwrap(), SubmitOutcome::Stored);
        }
        store.close().await.unwrap();
    }
    // What a server of schema 7 (health values, no rollup) leaves behind.
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    conn.execute_batch("DROP TABLE health_minutes; PRAGMA user_version = 7;")
        .unwrap();
    drop(conn);
    let store = Store::open(config(&dir)).await.unwrap();
    assert_eq!(pragma(&dir.db(), "PRAGMA user_version"), 8);
    let q = SeriesQuery {
        hostname: "pi-7".into(),
        since_unix_ms: base,
        until_unix_ms: base + 4 * 60_000,
        step_ms: 120_000,
    };
    // Rolled up at open (minutes 0-2: 3 is open), and the same answer.
    let rows = || {
        let c = rusqlite::Connection::open(dir.db()).unwrap();
        c.query_row("SELECT count(*) FROM health_minutes", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
    };
    eventually("old values rolled up", Duration::from_secs(10), || async {
        rows() == 3
    })
    .await;
    let got = store
        .health_series(q.clone(), &HealthMetric::ALL)
        .await
        .unwrap();
    assert_same_health(&got, &raw_health_series(&store, &q).await);
    assert_eq!(got.series.len(), 7);
    store.close().await.unwrap();
}
