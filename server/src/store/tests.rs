//! Unit tests that need the store's insides: a full disk, simulated with
//! SQLite's `max_page_count` through the writer's test hook.

use std::time::Duration;

use monitor::metric::Metric;

use super::*;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("monitor-store-unit-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn batch(seq: u64, base: i64) -> IncomingBatch {
    let time_unix_ms = base + seq as i64 * 1000;
    IncomingBatch {
        agent_id: "pi-agent".into(),
        hostname: "pi".into(),
        agent_version: "0.1.0".into(),
        boot_id: 9,
        seq,
        received_unix_ms: time_unix_ms + 5,
        clock_offset_ms: 0,
        dropped_batches_total: 0,
        peer: "127.0.0.1:1".into(),
        samples: Metric::ALL
            .iter()
            .map(|&metric| StoredSample {
                time_unix_ms,
                metric,
                value: seq as f64,
            })
            .collect(),
    }
}

/// Seqs stored for host "pi", from the cpu samples (value = seq), checking
/// that every seq has its six samples exactly once.
async fn stored_seqs(store: &Store) -> Vec<u64> {
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
    let dir = TempDir::new("disk-full");
    let mut config = StoreConfig::new(dir.0.join("monitor.db"));
    config.flush_max_delay = Duration::ZERO;
    let store = Store::open(config).unwrap();
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
            Ok(SubmitOutcome::Duplicate) => panic!("seq {seq} taken for a duplicate"),
            Err(e) => break (seq, e),
        }
    };
    let (failed_seq, err) = failed;
    assert!(matches!(err, StoreError::Full { .. }), "got {err:?}");
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
