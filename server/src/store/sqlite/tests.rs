//! Unit tests that need the store's insides: a full disk, simulated with
//! SQLite's `max_page_count` through the writer's test hook; and an unclean
//! stop (the writer abandoned without folding its journal), which must
//! reopen to exactly the state that was acknowledged.

use std::time::Duration;

use monitor::metric::Metric;

use super::*;
use crate::store::records::StoredSample;
use crate::store::sqlite::error::SqliteError;

/// A directory of its own in the temp directory, removed when dropped.
fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("monitor-store-unit-{name}-"))
        .tempdir()
        .unwrap()
}

fn batch(seq: u64, base: i64) -> IncomingBatch {
    batch_of("pi", 9, seq, base)
}

/// A batch of `host`'s agent; values and counters derive from seq.
fn batch_of(host: &str, boot_id: u64, seq: u64, base: i64) -> IncomingBatch {
    let time_unix_ms = base + seq as i64 * 1000;
    IncomingBatch {
        agent_id: format!("{host}-agent"),
        hostname: host.into(),
        agent_version: format!("0.{boot_id}.0"),
        boot_id,
        seq,
        received_unix_ms: time_unix_ms + 5,
        clock_offset_ms: seq as i64 % 7,
        dropped_batches_total: seq / 3,
        peer: format!("127.0.0.1:{seq}"),
        samples: Metric::ALL
            .iter()
            .map(|&metric| StoredSample {
                time_unix_ms,
                metric,
                value: seq as f64,
            })
            .collect(),
        health: Vec::new(),
    }
}

/// Seqs stored for host "pi", from the cpu samples (value = seq), checking
/// that every seq has its six samples exactly once.
async fn stored_seqs(store: &SqliteStore) -> Vec<u64> {
    let rows = store
        .query(SampleQuery {
            hostname: "pi".into(),
            metric: None,
            since_unix_ms: i64::MIN,
            until_unix_ms: None,
            limit: None,
        })
        .await
        .unwrap();
    let seqs: Vec<u64> = rows
        .iter()
        .filter(|r| r.metric == Metric::CpuPercent)
        .map(|r| r.value as u64)
        .collect();
    assert_eq!(
        rows.len(),
        seqs.len() * 6,
        "every stored batch has its 6 samples"
    );
    seqs
}

#[tokio::test]
async fn a_full_disk_fails_batches_unacknowledged_then_ingest_resumes() {
    let dir = temp_dir("disk-full");
    let mut config = SqliteConfig::new(dir.path().join("monitor.db"));
    config.flush_max_delay = Duration::ZERO;
    let store = SqliteStore::open(config).unwrap();
    let base = monitor::time::now_unix_ms() - 3_600_000;
    assert_eq!(
        store.submit(batch(1, base)).await.unwrap(),
        SubmitOutcome::Stored
    );
    // Cap the file at its current size (SQLite cannot go below it).
    let pages = store.set_max_page_count(1).await.unwrap();
    assert!(pages > 1);

    // Submit until the file is full: the failing batch is an error, not an
    // acknowledgement.
    let mut seq = 1;
    let failed = loop {
        seq += 1;
        assert!(seq < 100_000, "the page limit never filled the file");
        match store.submit(batch(seq, base)).await {
            Ok(SubmitOutcome::Stored) => continue,
            Ok(other) => panic!("seq {seq}: {other:?}"),
            Err(e) => break (seq, e),
        }
    };
    let (failed_seq, err) = failed;
    assert!(
        matches!(err, StoreError::Sqlite(SqliteError::Full { .. })),
        "got {err:?}"
    );
    assert!(err.to_string().contains("monitor.db"), "{err}");
    assert!(err.is_transient());
    let before: Vec<u64> = (1..failed_seq).collect();
    assert_eq!(
        stored_seqs(&store).await,
        before,
        "nothing of the failed batch"
    );

    // The disk gets space again. A later batch of the same run commits
    // first (it was queued behind the failed one); then the agent re-sends
    // the failed one, which must be stored, not taken for a duplicate.
    store.set_max_page_count(1 << 30).await.unwrap();
    assert_eq!(
        store.submit(batch(failed_seq + 1, base)).await.unwrap(),
        SubmitOutcome::Stored
    );
    assert_eq!(
        store.submit(batch(failed_seq, base)).await.unwrap(),
        SubmitOutcome::Stored
    );
    assert_eq!(
        store.submit(batch(failed_seq, base)).await.unwrap(),
        SubmitOutcome::Duplicate
    );
    let all: Vec<u64> = (1..=failed_seq + 1).collect();
    let mut got = stored_seqs(&store).await;
    got.sort_unstable();
    assert_eq!(got, all, "nothing lost, nothing doubled");
    store.close().await.unwrap();
}

/// Rows in the journal (read-only, beside the running store).
fn journal_rows(path: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
        .unwrap()
}

/// (hostname, batches_stored_total, last_seen_unix_ms, peer) of every row
/// of the `hosts` table, by hostname.
fn hosts_table(path: &std::path::Path) -> Vec<(String, u64, i64, String)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT hostname, batches_stored_total, last_seen_unix_ms, peer FROM hosts
             ORDER BY hostname",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?, r.get(3)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn summary(hosts: &[HostRecord]) -> Vec<(String, u64, i64, String)> {
    hosts
        .iter()
        .map(|h| {
            (
                h.hostname.clone(),
                h.batches_stored_total,
                h.last_seen_unix_ms,
                h.peer.clone(),
            )
        })
        .collect()
}

/// Submits (host, boot, seq) in order; returns the outcomes.
async fn submit_each(
    store: &SqliteStore,
    batches: &[(&str, u64, u64)],
    base: i64,
) -> Vec<SubmitOutcome> {
    let mut out = Vec::new();
    for &(host, boot, seq) in batches {
        out.push(store.submit(batch_of(host, boot, seq, base)).await.unwrap());
    }
    out
}

#[tokio::test]
async fn an_unclean_stop_is_replayed_from_the_journal() {
    use SubmitOutcome::{Duplicate, Stored};
    let dir = temp_dir("replay");
    let path = dir.path().join("monitor.db");
    let mut config = SqliteConfig::new(&path);
    config.flush_max_delay = Duration::ZERO;
    // Merged at once: the first two batches are in the tables.
    config.merge_interval = Duration::ZERO;
    let base = monitor::time::now_unix_ms() - 3_600_000;
    let store = SqliteStore::open(config.clone()).unwrap();
    submit_each(&store, &[("pi", 1, 1), ("pi", 1, 2)], base).await;
    journal_drains(&path, "the first batches were never merged").await;
    store.close().await.unwrap();

    // No merge while the next store runs: all it stores stays in the
    // journal. pi leaves a gap (5, 6), a second run and host appear.
    config.merge_interval = Duration::from_secs(3600);
    let store = SqliteStore::open(config.clone()).unwrap();
    let sent = [
        ("pi", 1, 3),
        ("pi", 1, 4),
        ("pi", 1, 7),
        ("pi", 2, 1),
        ("pj", 1, 1),
    ];
    assert_eq!(submit_each(&store, &sent, base).await, [Stored; 5]);
    let before = store.hosts().await.unwrap();
    store.abandon().await.unwrap();
    // The tables lag behind: the journal holds the rest.
    assert_eq!(journal_rows(&path), 5);
    assert_eq!(summary(&before)[0].1, 6, "pi stored 6 batches");
    assert_eq!(hosts_table(&path)[0].1, 2, "4 of them only in the journal");
    assert_eq!(ticks_rows(&path), 2);

    // Replayed at open: memory is as before the crash, still unmerged.
    let store = SqliteStore::open(config.clone()).unwrap();
    assert_eq!(store.hosts().await.unwrap(), before);
    let mut seqs = stored_seqs(&store).await;
    seqs.sort_unstable();
    // Run 2's seq 1 repeats run 1's seq 1 (same time, same values): the
    // same measurement, acknowledged as stored but not written twice.
    assert_eq!(seqs, [1, 2, 3, 4, 7]);
    let again = [
        ("pi", 1, 1),
        ("pi", 1, 4),
        ("pi", 1, 7),
        ("pi", 2, 1),
        ("pj", 1, 1),
    ];
    assert_eq!(submit_each(&store, &again, base).await, [Duplicate; 5]);
    store.abandon().await.unwrap();

    // Replayed again and merged: the tables catch up exactly (nothing
    // counted twice, though the seqs were replayed twice).
    config.merge_interval = Duration::ZERO;
    let store = SqliteStore::open(config).unwrap();
    journal_drains(&path, "the replayed journal was never merged").await;
    assert_eq!(store.hosts().await.unwrap(), before);
    assert_eq!(hosts_table(&path), summary(&before));
    assert_eq!(ticks_rows(&path), 6, "pi's 5 and pj's 1");
    // Dedup state: every stored seq is known, the gap is not.
    assert_eq!(submit_each(&store, &again, base).await, [Duplicate; 5]);
    assert_eq!(
        submit_each(&store, &[("pi", 1, 6), ("pi", 1, 5), ("pi", 1, 6)], base).await,
        [Stored, Stored, Duplicate]
    );
    let mut seqs = stored_seqs(&store).await;
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6, 7]);
    store.close().await.unwrap();
}

/// Rows in `ticks` (read-only, beside the running store).
fn ticks_rows(path: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT count(*) FROM ticks", [], |r| r.get(0))
        .unwrap()
}

/// Polls until the journal is empty (every host merged), or panics after
/// 10 s naming `what`.
async fn journal_drains(path: &std::path::Path, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while journal_rows(path) != 0 {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn merging_at_once_keeps_tables_and_memory_equal() {
    let dir = temp_dir("merge");
    let path = dir.path().join("monitor.db");
    let mut config = SqliteConfig::new(&path);
    config.flush_max_delay = Duration::ZERO;
    config.merge_interval = Duration::ZERO;
    let base = monitor::time::now_unix_ms() - 3_600_000;
    let store = SqliteStore::open(config).unwrap();
    let sent = [("pi", 1, 1), ("pj", 1, 1), ("pi", 1, 2), ("pi", 1, 2)];
    submit_each(&store, &sent, base).await;
    journal_drains(&path, "the journal was never merged").await;
    let hosts = store.hosts().await.unwrap();
    assert_eq!(hosts_table(&path), summary(&hosts));
    assert_eq!(summary(&hosts)[0].1, 2);
    assert_eq!(ticks_rows(&path), 3);
    assert_eq!(stored_seqs(&store).await, [1, 2]);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_failing_merge_never_stops_ingest_and_is_retried() {
    let dir = temp_dir("merge-fails");
    let path = dir.path().join("monitor.db");
    let mut config = SqliteConfig::new(&path);
    config.flush_max_delay = Duration::ZERO;
    config.merge_interval = Duration::ZERO;
    let base = monitor::time::now_unix_ms() - 3_600_000;
    let store = SqliteStore::open(config.clone()).unwrap();
    submit_each(&store, &[("pi", 1, 1)], base).await;
    journal_drains(&path, "the first batch was never merged").await;
    // Writing a host's row fails from now on: every merge rolls back.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER fail_merge BEFORE UPDATE ON hosts
         BEGIN SELECT RAISE(ABORT, 'injected merge failure'); END;",
    )
    .unwrap();
    let sent: Vec<(&str, u64, u64)> = (2..=6).map(|seq| ("pi", 1, seq)).collect();
    assert_eq!(
        submit_each(&store, &sent, base).await,
        [SubmitOutcome::Stored; 5],
        "ingest goes on while merges fail"
    );
    assert_eq!(journal_rows(&path), 5);
    assert_eq!(hosts_table(&path)[0].1, 1, "the table lags behind");
    let before = store.hosts().await.unwrap();
    assert_eq!(before[0].batches_stored_total, 6);
    assert_eq!(
        stored_seqs(&store).await,
        [1, 2, 3, 4, 5, 6],
        "queries see the journal"
    );

    // Merges work again: a later one brings the tables up to memory.
    conn.execute_batch("DROP TRIGGER fail_merge").unwrap();
    journal_drains(&path, "the merge was never retried").await;
    assert_eq!(hosts_table(&path), summary(&before));
    assert_eq!(ticks_rows(&path), 6);
    assert_eq!(
        submit_each(&store, &[("pi", 1, 3)], base).await,
        [SubmitOutcome::Duplicate]
    );
    store.close().await.unwrap();
}

/// A new database file (and the WAL SQLite makes beside it) is the
/// owner's only, whatever the umask would have given it.
#[test]
fn a_new_database_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("mode");
    let path = dir.path().join("m.db");
    let conn = super::schema::open_writer(&path, 1024).unwrap();
    conn.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
        .unwrap();
    for file in ["m.db", "m.db-wal"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert!(mode == 0o600, "{file} is {mode:o}, not 600");
    }
}
