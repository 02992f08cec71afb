//! The writer thread: the only connection that writes, one transaction per
//! flush, answers sent only after COMMIT returned. This file is the thread
//! itself: opening ([`start`]), the loop that waits for requests, flushes,
//! runs retention and finishes checkpoints, the handling of failed
//! flushes, and closing. Its jobs live beside it:
//! - `requests.rs`: the [`Request`] queue, gathering a flush, answering;
//! - `flush.rs`: one flush's transaction, and memory brought up to it;
//! - `conflicts.rs`: refusing a batch that contradicts stored samples;
//! - `merges.rs`: which hosts' journal rows are merged when, and the merge;
//! - `retention.rs`: pruning old samples and runs between flushes;
//! - `rollups.rs`: which hosts' health minutes wait for their rollup;
//! - `load.rs`: the writer's memory rebuilt from the file at open;
//! - `memory.rs`: what that memory is; `commands.rs`: the history's writes.
//!
//! Memory (host ids, the host table, the dedup state of recent runs, which
//! hosts wait for a merge) is changed only after a commit succeeded: a
//! flush works on staged copies, so a failed transaction leaves memory
//! exactly as the file is.
//!
//! This thread must never panic on anything the file, the disk or a batch
//! can do, never answer a request before its transaction committed, and
//! never hold more than `flush_max_batches` requests off the queue.

mod commands;
mod conflicts;
mod flush;
mod load;
mod memory;
mod merges;
mod requests;
mod retention;
mod rollups;
pub(crate) mod trust;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monitor::time::now_unix_ms;
use rusqlite::Connection;
use tokio::sync::mpsc;

use super::checkpoint::{self, Checkpointer};
use super::config::SqliteConfig;
use super::error::{SqliteError, code_of};
use super::hosts::HostTable;
use super::schema;
use crate::store::error::StoreError;
use crate::store::records::FlushStats;
use memory::Memory;
use requests::{Answer, Limits, Next, Stops};
use retention::Retention;

pub(crate) use requests::Request;

/// While writes keep failing, how often the failure is logged again.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);
/// After a flush with merges failed, merges pause this long (the flush is
/// retried without them, so a merge that cannot be written never stops
/// ingest).
const MERGE_PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Opens the database, rebuilds the in-memory state (replaying the journal
/// a crash left behind) and starts the writer thread. Returns once the
/// file is open and checked, so open errors reach the caller of
/// `SqliteStore::open`.
pub(crate) fn start(
    config: SqliteConfig,
    rx: mpsc::Receiver<Request>,
) -> Result<(JoinHandle<()>, Arc<HostTable>), StoreError> {
    let started = Instant::now();
    let conn = schema::open_writer(&config.path, config.cache_size_kib)?;
    let checked = started.elapsed();
    let (memory, loaded) = load::load(&conn, Instant::now())
        .map_err(|e| SqliteError::sql("loading hosts and runs at open", e))?;
    // Timers for the flush delay, merges and retention; the thread blocks
    // on it only while it waits for requests. Timer futures must be created
    // inside `block_on`, where the runtime's context is set.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(StoreError::Writer)?;
    let db_file = checkpoint::open_db_file(&config.path)?;
    let checkpointer = Checkpointer::start(
        &config.path,
        config.checkpoint_interval,
        Arc::clone(&db_file),
    )?;
    let hosts = Arc::clone(&memory.hosts);
    if loaded.replayed_rows > 0 {
        log::info!(
            "store: {}: {} journal rows replayed; {} hosts wait for a merge",
            config.path.display(),
            loaded.replayed_rows,
            memory.merges.order.len()
        );
    }
    log::info!(
        "store: {} open: {} hosts; checked in {} ms, state loaded in {} ms",
        config.path.display(),
        memory.host_ids.len(),
        checked.as_millis(),
        (started.elapsed() - checked).as_millis()
    );
    let writer = Writer {
        checkpointer: Some(checkpointer),
        path: config.path.clone(),
        conn,
        memory,
        retention: Retention::new(Instant::now()),
        failures: Failures::default(),
        config,
        db_file,
    };
    let handle = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(&rt, rx))
        .map_err(StoreError::Writer)?;
    Ok((handle, hosts))
}

/// Consecutive failed flushes, to log a failure clearly but not 50 times a
/// second.
#[derive(Default)]
struct Failures {
    since: Option<Instant>,
    flushes: u64,
    requests: u64,
    last_logged: Option<Instant>,
}

struct Writer {
    path: PathBuf,
    /// Copies the WAL into the file in the background; stopped at close.
    checkpointer: Option<Checkpointer>,
    config: SqliteConfig,
    conn: Connection,
    memory: Memory,
    retention: Retention,
    failures: Failures,
    /// Our own descriptor of the database file (see `checkpoint.rs`); the
    /// last field, so it is closed after `conn`. Only held, never used.
    #[allow(dead_code)]
    db_file: checkpoint::DbFile,
}

impl Writer {
    fn run(mut self, rt: &tokio::runtime::Runtime, mut rx: mpsc::Receiver<Request>) {
        let mut pending = Vec::with_capacity(self.config.flush_max_batches.min(4096));
        let mut stops = Stops::default();
        let limits = Limits {
            max_requests: self.config.flush_max_batches,
            max_delay: self.config.flush_max_delay,
        };
        let interval = self.config.merge_interval;
        loop {
            let wait = self
                .retention
                .wait()
                .min(self.memory.merges.wait(interval))
                .min(self.memory.rollups.wait(Instant::now()));
            let gathered = match requests::next(rt, &mut rx, wait) {
                Next::Request(first) => {
                    requests::gather(rt, &mut rx, first, &mut pending, limits, &mut stops);
                    true
                }
                Next::Idle => false,
                Next::Disconnected => break, // every store handle is gone
            };
            let budget = self.memory.merges.budget(Instant::now(), interval);
            if gathered
                || self.memory.merges.wait(interval).is_zero()
                || self.memory.rollups.is_due(Instant::now())
            {
                self.flush(std::mem::take(&mut pending), budget);
            }
            #[cfg(test)]
            if let Some(reply) = stops.abandon.take() {
                drop(self);
                let _ = reply.send(Ok(()));
                return;
            }
            if stops.any() {
                break;
            }
            if self.retention.due() {
                self.retention
                    .step(&mut self.conn, &mut self.memory, &self.config);
            }
            self.finish_checkpoint();
        }
        requests::drain(&mut rx, &mut pending, &mut stops);
        self.flush(std::mem::take(&mut pending), 0);
        let mut result = Some(self.shut_down());
        for reply in stops.closing {
            let r = result.take().unwrap_or(Ok(()));
            let _ = reply.send(r);
        }
    }

    /// Writes `requests` and merges up to `merge_budget` due hosts in one
    /// transaction, then answers every request: with its result if COMMIT
    /// succeeded, with the failure otherwise. A failed transaction that
    /// held merges is retried once without them, and merges pause a while:
    /// a merge that cannot be written must not stop ingest.
    fn flush(&mut self, requests: Vec<Request>, merge_budget: usize) {
        let now = Instant::now();
        let mut merging = self
            .memory
            .merges
            .due(now, self.config.merge_interval, merge_budget);
        let mut rolling = self.memory.rollups.next(now);
        if requests.is_empty() && merging.is_empty() && rolling.is_empty() {
            return;
        }
        let mut result = self.write(&requests, &merging, &rolling);
        if let Err(e) = &result
            && !(merging.is_empty() && rolling.is_empty())
        {
            log::warn!(
                "store: a flush of {} requests with {} host merges and {} health rollups \
                 failed: {e}; retrying it without them, which pause for {:?}",
                requests.len(),
                merging.len(),
                rolling.len(),
                MERGE_PAUSE_AFTER_FAILURE
            );
            self.memory.merges.paused_until = Some(now + MERGE_PAUSE_AFTER_FAILURE);
            self.memory.rollups.paused_until = Some(now + MERGE_PAUSE_AFTER_FAILURE);
            merging.clear();
            rolling.clear();
            if !requests.is_empty() {
                result = self.write(&requests, &merging, &rolling);
            }
        }
        match result {
            Ok((answers, staged)) => {
                if let Some(observer) = &self.config.observer {
                    let (batches_stored, samples_stored) = staged.stored_counts();
                    (observer.0)(&FlushStats {
                        failed: false,
                        commit: staged.commit,
                        requests: requests.len(),
                        batches_stored,
                        samples_stored,
                    });
                }
                flush::apply(&mut self.memory, &requests, staged, now);
                self.note_success();
                for (request, answer) in requests.into_iter().zip(answers) {
                    requests::answer(request, answer);
                }
            }
            Err(e) => {
                if let Some(observer) = &self.config.observer {
                    (observer.0)(&FlushStats {
                        failed: true,
                        commit: Duration::ZERO,
                        requests: requests.len(),
                        batches_stored: 0,
                        samples_stored: 0,
                    });
                }
                let e = Arc::new(e);
                self.note_failure(requests.len(), &e);
                for request in requests {
                    let err = self.failure_error(&e);
                    requests::answer(request, Answer::Failed(err));
                }
            }
        }
    }

    fn write(
        &mut self,
        requests: &[Request],
        merging: &[i64],
        rolling: &[i64],
    ) -> rusqlite::Result<(Vec<Answer>, flush::Staged)> {
        let plan = flush::Plan {
            merging,
            rolling,
            retention_cutoff: now_unix_ms().saturating_sub(self.config.retention_ms()),
        };
        flush::write(&mut self.conn, &self.memory, &plan, requests)
    }

    /// When the checkpointer finished a round, copies what was appended
    /// during it, so the next commit restarts the WAL (see `checkpoint.rs`).
    fn finish_checkpoint(&mut self) {
        let due = self
            .checkpointer
            .as_ref()
            .is_some_and(|c| c.tail_due.swap(false, AtomicOrdering::AcqRel));
        if due {
            checkpoint::checkpoint(&self.conn, &self.path, "PASSIVE", "writer");
        }
    }

    fn failure_error(&self, e: &Arc<rusqlite::Error>) -> StoreError {
        let e = if code_of(e) == Some(rusqlite::ErrorCode::DiskFull) {
            SqliteError::Full {
                path: self.path.clone(),
                source: Arc::clone(e),
            }
        } else {
            SqliteError::Sql {
                during: "committing batches",
                source: Arc::clone(e),
            }
        };
        e.into()
    }

    fn note_failure(&mut self, requests: usize, e: &rusqlite::Error) {
        let f = &mut self.failures;
        let now = Instant::now();
        f.since.get_or_insert(now);
        f.flushes += 1;
        f.requests += requests as u64;
        let due = f
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= FAILURE_LOG_EVERY);
        if due {
            f.last_logged = Some(now);
            log::error!(
                "store: cannot write to {}: {e}; {} requests in {} flushes failed so far, \
                 none acknowledged (agents keep and re-send them); retrying with the next flush",
                self.path.display(),
                f.requests,
                f.flushes
            );
        }
    }

    fn note_success(&mut self) {
        if let Some(since) = self.failures.since {
            log::warn!(
                "store: writes to {} succeed again after {} failed flushes over {:.1} s",
                self.path.display(),
                self.failures.flushes,
                since.elapsed().as_secs_f64()
            );
            self.failures = Failures::default();
        }
    }

    /// Checkpoints the WAL into the file and closes the connection. The
    /// journal stays as it is: the next open replays it (merging it all
    /// here would make a close after heavy ingest take seconds).
    fn shut_down(mut self) -> Result<(), StoreError> {
        if let Some(c) = self.checkpointer.take() {
            c.stop();
        }
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            // Not fatal: the WAL is replayed at the next open.
            log::warn!(
                "store: checkpoint of {} at close failed: {e}",
                self.path.display()
            );
        }
        self.conn
            .close()
            .map_err(|(_, e)| SqliteError::sql("closing the database", e).into())
    }
}
