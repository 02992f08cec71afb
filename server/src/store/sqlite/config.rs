//! How the SQLite backend is opened and how its writer batches, merges and
//! prunes: every knob with its default and why.
//!
//! Validation happens once, at open; nothing else may accept a value out of
//! the ranges [`SqliteConfig::validate`] checks.

use std::path::PathBuf;
use std::time::Duration;

use crate::store::error::StoreError;
use crate::store::records::FlushObserver;

/// How the store is opened and how its writer batches and prunes.
#[derive(Clone, Debug)]
pub struct SqliteConfig {
    /// The database file (`--db PATH`); created if missing. SQLite keeps
    /// `PATH-wal` and `PATH-shm` beside it.
    pub path: PathBuf,
    /// Samples older than this (by sample time) are pruned. Default 7 days.
    pub retention: Duration,
    /// Requests (batches, command records) waiting for the writer; when
    /// full, `submit` waits. Default 16,384. At least 1.
    pub queue_capacity: usize,
    /// A flush commits at most this many requests. Default 2,048. At least 1.
    pub flush_max_batches: usize,
    /// A flush waits at most this long after its first request for more to
    /// arrive. Default 20 ms; zero commits whatever is queued at once.
    pub flush_max_delay: Duration,
    /// How often a retention pass starts. Default 60 s.
    pub retention_interval: Duration,
    /// Most rows (ticks of one host, up to six samples each) one retention
    /// transaction deletes. Default 5,000.
    pub retention_chunk_rows: usize,
    /// How long a host's batches wait in the journal before the writer
    /// merges them into the host's pages (see `journal.rs`). Longer: each
    /// host's pages are rewritten less often, fewer pages per checkpoint;
    /// shorter: less memory (the unmerged ticks are kept for queries) and a
    /// shorter replay after a crash. Default 30 s; zero merges at once.
    pub merge_interval: Duration,
    /// How often the WAL is copied back into the database file, by a
    /// thread of its own. Default 10 s.
    pub checkpoint_interval: Duration,
    /// SQLite page cache of the writer connection, in KiB. Default 64 MiB:
    /// the hot pages are the newest page of each host's range of `ticks`
    /// and the tree above.
    pub cache_size_kib: u32,
    /// Told about every committed flush (the server's metrics time
    /// commits with it). Default none.
    pub observer: Option<FlushObserver>,
}

impl SqliteConfig {
    /// The defaults, for a database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            path: path.into(),
            retention: Duration::from_secs(7 * 24 * 3600),
            queue_capacity: 16_384,
            flush_max_batches: 2_048,
            flush_max_delay: Duration::from_millis(20),
            retention_interval: Duration::from_secs(60),
            retention_chunk_rows: 5_000,
            merge_interval: Duration::from_secs(30),
            checkpoint_interval: Duration::from_secs(10),
            cache_size_kib: 64 * 1024,
            observer: None,
        }
    }

    /// Refuses values the writer cannot work with, naming the field.
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        let bad = |field, detail| Err(StoreError::InvalidConfig { field, detail });
        if self.queue_capacity == 0 {
            return bad("queue_capacity", "must be at least 1");
        }
        if self.queue_capacity > tokio::sync::Semaphore::MAX_PERMITS {
            return bad("queue_capacity", "is too large");
        }
        if self.flush_max_batches == 0 {
            return bad("flush_max_batches", "must be at least 1");
        }
        if self.retention_chunk_rows == 0 {
            return bad("retention_chunk_rows", "must be at least 1");
        }
        if self.retention.is_zero() {
            return bad("retention", "must be longer than zero");
        }
        if i64::try_from(self.retention.as_millis()).is_err() {
            return bad("retention", "is too long");
        }
        Ok(())
    }

    /// The retention in ms (validated to fit).
    pub(crate) fn retention_ms(&self) -> i64 {
        i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX)
    }
}
