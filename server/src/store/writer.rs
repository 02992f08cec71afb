//! The writer thread: the only connection that writes, one transaction per
//! flush, answers sent only after COMMIT returned; retention, pruned in
//! small transactions between flushes; and the journal fold (see
//! `journal.rs`), every `journal_fold_interval`.
//!
//! Memory (host ids, the host table, the dedup state of recent runs) is
//! changed only after a commit succeeded: a flush works on staged copies,
//! so a failed transaction leaves memory exactly as the file is.
//!
//! This thread must never panic on anything the file, the disk or a batch
//! can do, never answer a request before its transaction committed, and
//! never hold more than `flush_max_batches` requests off the queue.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monitor::time::now_unix_ms;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::Checkpointer;
use super::error::{StoreError, code_of};
use super::hosts::{BatchMeta, HostEntry, HostTable};
use super::journal;
use super::runs::{self, RunEntry, RunKey};
use super::schema::{self, encode_argv, metric_id, u64_from_sql, u64_to_sql};
use super::ticks::{self, METRICS, TickRow};
use super::{CommandRecord, CommandResultRecord, IncomingBatch, StoreConfig, SubmitOutcome};

/// What the writer thread is asked to do.
pub(crate) enum Request {
    Batch {
        batch: IncomingBatch,
        reply: oneshot::Sender<Result<SubmitOutcome, StoreError>>,
    },
    Command {
        record: CommandRecord,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    CommandResult {
        record: CommandResultRecord,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Commit what came before, close the connection, stop.
    Close {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    #[cfg(test)]
    SetMaxPageCount {
        pages: u64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Commit what came before, then stop without folding the journal or
    /// checkpointing: the file is left as `kill -9` would leave it.
    #[cfg(test)]
    Abandon {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// A run's dedup state is dropped from memory after this long unused; it
/// is reloaded from `agent_runs` if the run shows up again.
const RUN_CACHE_IDLE: Duration = Duration::from_secs(3600);
/// Most hosts one retention step looks at.
const RETENTION_HOSTS_PER_STEP: usize = 256;
/// Most stale `agent_runs` rows one retention step deletes.
const RETENTION_RUNS_PER_STEP: i64 = 1_000;
/// While writes keep failing, how often the failure is logged again.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);
/// A fold starts early once the journal holds this many rows, which bounds
/// the journal's size and the replay after a crash (~20 s at 10,000
/// batches/s).
const FOLD_MAX_JOURNAL_ROWS: u64 = 200_000;
/// After a failed fold, the next waits at least this long.
const FOLD_RETRY_AFTER: Duration = Duration::from_secs(1);
/// How many of a host's newest rows are read at open for its latest value
/// of each metric (a metric not among them shows no latest value).
const LATEST_SCAN_TICKS: i64 = 10;

/// Opens the database, rebuilds the in-memory state (replaying the journal
/// a crash left behind) and starts the writer thread. Returns once the file
/// is open and checked, so open errors reach the caller of `Store::open`.
pub(crate) fn start(
    config: StoreConfig,
    rx: mpsc::Receiver<Request>,
) -> Result<(JoinHandle<()>, Arc<HostTable>), StoreError> {
    let started = Instant::now();
    let mut conn = schema::open_writer(&config.path, config.cache_size_kib)?;
    let checked = started.elapsed();
    let loaded = load_state(&mut conn, &config)
        .map_err(|e| StoreError::sqlite("loading hosts and runs at open", e))?;
    log::info!(
        "store: {} open: {} hosts; checked in {} ms, state loaded in {} ms",
        config.path.display(),
        loaded.hosts.len(),
        checked.as_millis(),
        (started.elapsed() - checked).as_millis()
    );
    // Timers for the flush delay and retention; the thread blocks on it
    // only while it waits for requests. Timer futures must be created
    // inside `block_on`, where the runtime's context is set.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(StoreError::Writer)?;
    let checkpointer = Checkpointer::start(&config.path, config.checkpoint_interval)?;
    let hosts = Arc::new(HostTable::new(loaded.hosts));
    let writer = Writer {
        checkpointer: Some(checkpointer),
        path: config.path.clone(),
        conn,
        host_ids: loaded.host_ids,
        hosts: Arc::clone(&hosts),
        runs: loaded.runs,
        fold: Fold {
            next: match loaded.unfolded.rows {
                0 => Instant::now() + config.journal_fold_interval,
                _ => Instant::now(),
            },
            dirty_hosts: loaded.unfolded.dirty_hosts,
            journal_rows: loaded.unfolded.rows,
            prune_runs_before: None,
            failing: false,
        },
        retention: Retention {
            next_pass: Instant::now(),
            cursor: None,
        },
        failures: Failures::default(),
        config,
        #[cfg(test)]
        abandon: None,
    };
    let handle = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(&rt, rx))
        .map_err(StoreError::Writer)?;
    Ok((handle, hosts))
}

/// The writer's memory as rebuilt from the file.
struct Loaded {
    host_ids: HashMap<String, i64>,
    hosts: HashMap<i64, HostEntry>,
    runs: HashMap<RunKey, RunEntry>,
    /// What the fold at open could not write (normally nothing).
    unfolded: journal::Replayed,
}

/// Loads `hosts`, replays and folds the journal a crash left behind, and
/// reads each host's latest values from its newest rows.
fn load_state(conn: &mut Connection, config: &StoreConfig) -> rusqlite::Result<Loaded> {
    let mut hosts = load_hosts(conn)?;
    let mut runs = HashMap::new();
    let mut replayed = journal::replay(conn, &mut hosts, &mut runs)?;
    if replayed.rows > 0 {
        log::info!(
            "store: {}: replayed {} journal rows left by an unclean stop",
            config.path.display(),
            replayed.rows
        );
        match journal::fold(conn, &hosts, &replayed.dirty_hosts, &runs, None) {
            Ok(_) => {
                for r in runs.values_mut() {
                    r.dirty = false;
                }
                replayed = journal::Replayed::default();
            }
            // Memory is complete either way; the writer folds later.
            Err(e) => log::warn!(
                "store: folding the replayed journal of {} failed: {e}; retrying later",
                config.path.display()
            ),
        }
    }
    load_latest(conn, &mut hosts)?;
    let host_ids = hosts
        .iter()
        .map(|(&id, h)| (h.hostname.clone(), id))
        .collect();
    Ok(Loaded {
        host_ids,
        hosts,
        runs,
        unfolded: replayed,
    })
}

fn load_hosts(conn: &Connection) -> rusqlite::Result<HashMap<i64, HostEntry>> {
    let mut stmt = conn.prepare(
        "SELECT host_id, hostname, agent_id, agent_version, peer, first_seen_unix_ms,
             last_seen_unix_ms, clock_offset_ms, dropped_batches_total, batches_stored_total
         FROM hosts",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            HostEntry {
                hostname: r.get(1)?,
                agent_id: r.get(2)?,
                agent_version: r.get(3)?,
                peer: r.get(4)?,
                first_seen_unix_ms: r.get(5)?,
                last_seen_unix_ms: r.get(6)?,
                clock_offset_ms: r.get(7)?,
                dropped_batches_total: u64_from_sql(r.get(8)?),
                batches_stored_total: u64_from_sql(r.get(9)?),
                latest: [None; METRICS],
            },
        ))
    })?;
    rows.collect()
}

/// Each host's latest value per metric, from its newest rows: one short
/// range scan per host, once at open.
fn load_latest(conn: &Connection, hosts: &mut HashMap<i64, HostEntry>) -> rusqlite::Result<()> {
    let mut newest = conn.prepare(
        "SELECT time_unix_ms, run_id, cpu_percent, mem_percent, disk_read_kbps,
             disk_write_kbps, net_in_kbps, net_out_kbps
         FROM ticks WHERE host_id = ?1 ORDER BY time_unix_ms DESC, run_id DESC LIMIT ?2",
    )?;
    for (&host_id, host) in hosts.iter_mut() {
        let mut rows = newest.query(params![host_id, LATEST_SCAN_TICKS])?;
        // Newest first: once every metric has a value, older rows cannot
        // change it (normally after the first row).
        while !host.latest.iter().all(Option::is_some)
            && let Some(r) = rows.next()?
        {
            let mut row = TickRow {
                time_unix_ms: r.get(0)?,
                values: [None; METRICS],
            };
            for (i, v) in row.values.iter_mut().enumerate() {
                *v = r.get(2 + i)?;
            }
            host.note_values(r.get(1)?, &row);
        }
    }
    Ok(())
}

/// Where retention is: a pass walks every host's range once.
struct Retention {
    /// When the next pass starts (if none is running).
    next_pass: Instant,
    /// The host id the running pass resumes at; `None` when no pass is
    /// running.
    cursor: Option<i64>,
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

/// What the next journal fold has to write, and when it is due.
struct Fold {
    /// Hosts changed since the last fold.
    dirty_hosts: HashSet<i64>,
    /// Journal rows written since the last fold.
    journal_rows: u64,
    /// When the next fold is due (if there is anything to fold).
    next: Instant,
    /// Set when a retention pass completed: the fold also deletes runs not
    /// seen since this server time (ms since the Unix epoch).
    prune_runs_before: Option<i64>,
    /// The last fold failed: the next waits for `next` even if the journal
    /// is long, so a failing fold is not retried after every flush.
    failing: bool,
}

struct Writer {
    path: PathBuf,
    /// Copies the WAL into the file in the background; stopped at close.
    checkpointer: Option<Checkpointer>,
    config: StoreConfig,
    conn: Connection,
    /// hostname → host_id of every row of `hosts` (bounded by the table).
    host_ids: HashMap<String, i64>,
    /// Every host's state, shared with `Store::hosts`.
    hosts: Arc<HostTable>,
    /// (agent_id, boot_id) → dedup state of recently seen runs, and of
    /// every run changed since the last fold.
    runs: HashMap<RunKey, RunEntry>,
    fold: Fold,
    retention: Retention,
    failures: Failures,
    /// Set by [`Request::Abandon`].
    #[cfg(test)]
    abandon: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// What a flush changed in memory, applied only after COMMIT succeeded.
#[derive(Default)]
struct Staged {
    new_host_ids: HashMap<String, i64>,
    new_hosts: Vec<(i64, HostEntry)>,
    runs: HashMap<RunKey, RunEntry>,
    /// The batches stored, in commit order.
    stored: Vec<StoredBatch>,
    /// The values each stored batch added, see [`StoredBatch::rows`].
    rows: Vec<TickRow>,
}

/// A batch the flush stored.
struct StoredBatch {
    /// Index of its request in the flush.
    request: usize,
    host_id: i64,
    run_id: i64,
    /// Its rows in [`Staged::rows`], holding only the values it added.
    rows: Range<usize>,
}

/// A request's answer before the flush committed.
enum Answer {
    Batch(SubmitOutcome),
    Done,
    Failed(StoreError),
}

impl Writer {
    fn run(mut self, rt: &tokio::runtime::Runtime, mut rx: mpsc::Receiver<Request>) {
        let mut pending = Vec::with_capacity(self.config.flush_max_batches.min(4096));
        let mut closing = Vec::new();
        loop {
            let wait = self.retention_wait().min(self.fold_wait());
            let first = match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                Ok(Some(r)) => Some(r),
                Ok(None) => break, // every Store handle is gone
                Err(_) => None,
            };
            if let Some(first) = first
                && !self.gather(rt, &mut rx, first, &mut pending, &mut closing)
            {
                self.flush(std::mem::take(&mut pending));
                if !closing.is_empty() {
                    break;
                }
                #[cfg(test)]
                if let Some(reply) = self.abandon.take() {
                    drop(self);
                    let _ = reply.send(Ok(()));
                    return;
                }
            }
            if self.retention.cursor.is_some() || Instant::now() >= self.retention.next_pass {
                self.retention_step();
            }
            if self.fold_wait().is_zero() {
                self.fold_journal();
            }
        }
        // Stop taking requests. What raced in behind the Close is still
        // committed and answered: refusing it would gain nothing.
        rx.close();
        while let Ok(r) = rx.try_recv() {
            match r {
                Request::Close { reply } => closing.push(reply),
                other => pending.push(other),
            }
        }
        self.flush(std::mem::take(&mut pending));
        let result = self.shut_down();
        let mut result = Some(result);
        for reply in closing {
            let r = result.take().unwrap_or(Ok(()));
            let _ = reply.send(r);
        }
    }

    /// Collects requests into `pending` until `flush_max_batches`, the flush
    /// delay, or a Close. Returns true if nothing needs flushing (only
    /// happens for test hooks answered in place).
    fn gather(
        &mut self,
        rt: &tokio::runtime::Runtime,
        rx: &mut mpsc::Receiver<Request>,
        first: Request,
        pending: &mut Vec<Request>,
        closing: &mut Vec<oneshot::Sender<Result<(), StoreError>>>,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + self.config.flush_max_delay;
        let mut next = Some(first);
        loop {
            match next.take() {
                Some(Request::Close { reply }) => {
                    closing.push(reply);
                    return false;
                }
                #[cfg(test)]
                Some(Request::SetMaxPageCount { pages, reply }) => {
                    let r = self
                        .conn
                        .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                            r.get::<_, i64>(0)
                        })
                        .map(|n| n as u64)
                        .map_err(|e| StoreError::sqlite("setting max_page_count", e));
                    let _ = reply.send(r);
                    if pending.is_empty() {
                        return true;
                    }
                }
                #[cfg(test)]
                Some(Request::Abandon { reply }) => {
                    self.abandon = Some(reply);
                    return false;
                }
                Some(r) => pending.push(r),
                None => {}
            }
            if pending.len() >= self.config.flush_max_batches {
                return false;
            }
            next = match rx.try_recv() {
                Ok(r) => Some(r),
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if tokio::time::Instant::now() >= deadline {
                        return false;
                    }
                    match rt.block_on(async { tokio::time::timeout_at(deadline, rx.recv()).await })
                    {
                        Ok(Some(r)) => Some(r),
                        Ok(None) | Err(_) => return false,
                    }
                }
            };
        }
    }

    /// Writes `requests` in one transaction, then answers every one of them:
    /// with its result if COMMIT succeeded, with the failure otherwise.
    fn flush(&mut self, requests: Vec<Request>) {
        if requests.is_empty() {
            return;
        }
        let result = write_flush(&mut self.conn, &self.host_ids, &self.runs, &requests);
        match result {
            Ok((answers, staged)) => {
                self.apply(&requests, staged);
                self.note_success(requests.len());
                for (request, answer) in requests.into_iter().zip(answers) {
                    answer_request(request, answer);
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                self.note_failure(requests.len(), &e);
                for request in requests {
                    let err = self.failure_error(&e);
                    answer_request(request, Answer::Failed(err));
                }
            }
        }
    }

    /// Brings memory up to a flush that committed.
    fn apply(&mut self, requests: &[Request], staged: Staged) {
        let mut hosts = self.hosts.lock();
        for (id, entry) in staged.new_hosts {
            self.host_ids.insert(entry.hostname.clone(), id);
            hosts.insert(id, entry);
        }
        for stored in &staged.stored {
            let Some(Request::Batch { batch, .. }) = requests.get(stored.request) else {
                continue;
            };
            if let Some(host) = hosts.get_mut(&stored.host_id) {
                host.count_batch(BatchMeta::of(batch));
                for row in staged.rows.get(stored.rows.clone()).unwrap_or_default() {
                    host.note_values(stored.run_id, row);
                }
            }
            self.fold.dirty_hosts.insert(stored.host_id);
        }
        drop(hosts);
        self.fold.journal_rows += staged.stored.len() as u64;
        self.runs.extend(staged.runs);
    }

    /// How long until a journal fold is due; `Duration::MAX` when there is
    /// nothing to fold.
    fn fold_wait(&self) -> Duration {
        let f = &self.fold;
        if f.journal_rows == 0 && f.prune_runs_before.is_none() {
            return Duration::MAX;
        }
        if f.journal_rows >= FOLD_MAX_JOURNAL_ROWS && !f.failing {
            return Duration::ZERO;
        }
        f.next.saturating_duration_since(Instant::now())
    }

    /// Writes what changed since the last fold into `hosts` and
    /// `agent_runs` and empties the journal (see `journal.rs`). On failure
    /// everything stays dirty and the next fold retries: nothing is lost,
    /// the journal only grows.
    fn fold_journal(&mut self) {
        let started = Instant::now();
        self.fold.next = started + self.config.journal_fold_interval;
        self.fold.failing = false;
        let prune = self
            .fold
            .prune_runs_before
            .map(|cutoff| (cutoff, RETENTION_RUNS_PER_STEP));
        // The host table stays locked for the fold (tens of ms): a
        // `hosts()` call waits that long, which is cheaper than copying
        // every dirty entry out first.
        let result = {
            let hosts = self.hosts.lock();
            journal::fold(
                &mut self.conn,
                &hosts,
                &self.fold.dirty_hosts,
                &self.runs,
                prune,
            )
        };
        match result {
            Ok(pruned_runs) => {
                log::debug!(
                    "store: folded {} journal rows ({} hosts) in {} ms; {pruned_runs} stale \
                     runs deleted",
                    self.fold.journal_rows,
                    self.fold.dirty_hosts.len(),
                    started.elapsed().as_millis()
                );
                self.fold.dirty_hosts.clear();
                self.fold.journal_rows = 0;
                for r in self.runs.values_mut() {
                    r.dirty = false;
                }
                if let Some(cutoff) = self.fold.prune_runs_before.take() {
                    // Their rows are current, so a run seen again is
                    // reloaded exactly (or is new, if its row was deleted).
                    self.runs.retain(|_, r| r.last_seen_unix_ms >= cutoff);
                }
            }
            Err(e) => {
                self.fold.failing = true;
                self.fold.next = started + self.config.journal_fold_interval.max(FOLD_RETRY_AFTER);
                log::error!(
                    "store: folding the journal of {} into hosts and agent_runs failed: {e}; \
                     {} journal rows kept, retrying in {:?}",
                    self.path.display(),
                    self.fold.journal_rows,
                    self.fold.next.saturating_duration_since(started)
                );
            }
        }
    }

    fn failure_error(&self, e: &Arc<rusqlite::Error>) -> StoreError {
        if code_of(e) == Some(rusqlite::ErrorCode::DiskFull) {
            StoreError::Full {
                path: self.path.clone(),
                source: Arc::clone(e),
            }
        } else {
            StoreError::Sqlite {
                during: "committing batches",
                source: Arc::clone(e),
            }
        }
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

    fn note_success(&mut self, _requests: usize) {
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

    /// How long the thread may wait for requests before a retention step is
    /// due.
    fn retention_wait(&self) -> Duration {
        if self.retention.cursor.is_some() {
            return Duration::ZERO;
        }
        self.retention
            .next_pass
            .saturating_duration_since(Instant::now())
    }

    /// One small retention transaction; logs (and gives up on the pass) on
    /// failure, so ingest never waits on a failing prune.
    fn retention_step(&mut self) {
        let now = Instant::now();
        if self.retention.cursor.is_none() {
            if now < self.retention.next_pass {
                return;
            }
            self.retention.cursor = Some(i64::MIN);
        }
        let cursor = self.retention.cursor.unwrap_or(i64::MIN);
        let retention_ms = i64::try_from(self.config.retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_unix_ms().saturating_sub(retention_ms);
        match prune_step(
            &mut self.conn,
            cursor,
            cutoff,
            self.config.retention_chunk_rows,
        ) {
            Ok((next, deleted)) => {
                if deleted > 0 {
                    log::debug!("store: retention deleted {deleted} samples older than {cutoff}");
                }
                self.retention.cursor = next;
                if next.is_none() {
                    self.end_retention_pass(now, cutoff);
                }
            }
            Err(e) => {
                log::error!(
                    "store: pruning samples older than {cutoff} from {} failed: {e}; \
                     trying again in {:?}",
                    self.path.display(),
                    self.config.retention_interval
                );
                self.end_retention_pass(now, i64::MIN);
            }
        }
    }

    /// Ends a pass: the cache forgets runs idle for an hour (unless a fold
    /// still has to write them), the hosts forget latest values older than
    /// the samples kept, and the next fold deletes runs not seen since
    /// `cutoff` (`i64::MIN` after a failed pass: none).
    fn end_retention_pass(&mut self, now: Instant, cutoff: i64) {
        self.retention.cursor = None;
        self.retention.next_pass = now + self.config.retention_interval;
        self.runs
            .retain(|_, r| r.dirty || now.duration_since(r.last_used) < RUN_CACHE_IDLE);
        if cutoff == i64::MIN {
            return;
        }
        for host in self.hosts.lock().values_mut() {
            for l in &mut host.latest {
                if l.is_some_and(|l| l.time_unix_ms < cutoff) {
                    *l = None;
                }
            }
        }
        self.fold.prune_runs_before = Some(cutoff);
    }

    /// Checkpoints the WAL into the file and closes the connection.
    fn shut_down(mut self) -> Result<(), StoreError> {
        if let Some(c) = self.checkpointer.take() {
            c.stop();
        }
        // Not needed for correctness (the next open replays the journal),
        // but a cleanly closed file then opens without a replay.
        if self.fold.journal_rows > 0 || self.fold.prune_runs_before.is_some() {
            self.fold_journal();
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
            .map_err(|(_, e)| StoreError::sqlite("closing the database", e))
    }
}

fn answer_request(request: Request, answer: Answer) {
    // A send fails only if the submitter stopped waiting (its stream is
    // gone): the batch is committed all the same, and a re-send is a
    // duplicate.
    match (request, answer) {
        (Request::Batch { reply, .. }, Answer::Batch(o)) => {
            let _ = reply.send(Ok(o));
        }
        (Request::Batch { reply, .. }, Answer::Failed(e)) => {
            let _ = reply.send(Err(e));
        }
        (Request::Command { reply, .. } | Request::CommandResult { reply, .. }, answer) => {
            let _ = reply.send(match answer {
                Answer::Failed(e) => Err(e),
                Answer::Done | Answer::Batch(_) => Ok(()),
            });
        }
        (Request::Batch { reply, .. }, Answer::Done) => {
            let _ = reply.send(Err(StoreError::Closed));
        }
        (Request::Close { reply }, _) => {
            let _ = reply.send(Ok(()));
        }
        #[cfg(test)]
        (Request::SetMaxPageCount { reply, .. }, _) => {
            let _ = reply.send(Err(StoreError::Closed));
        }
        #[cfg(test)]
        (Request::Abandon { reply }, _) => {
            let _ = reply.send(Err(StoreError::Closed));
        }
    }
}

/// Writes one flush in one IMMEDIATE transaction. Returns one answer per
/// request and what to apply to memory, or the error that rolled it all
/// back.
fn write_flush(
    conn: &mut Connection,
    host_ids: &HashMap<String, i64>,
    runs: &HashMap<RunKey, RunEntry>,
    requests: &[Request],
) -> rusqlite::Result<(Vec<Answer>, Staged)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut staged = Staged::default();
    let mut answers = Vec::with_capacity(requests.len());
    let mut grouped = Vec::new();
    let now = Instant::now();
    // Prepared once per flush: a cache lookup per batch costs more than the
    // b-tree insert it prepares.
    let mut statements = BatchStatements {
        insert_tick: tx.prepare_cached(INSERT_TICK)?,
        append_journal: tx.prepare_cached(journal::APPEND)?,
    };
    for (index, request) in requests.iter().enumerate() {
        let answer = match request {
            Request::Batch { batch, .. } => {
                let host_id = resolve_host(&tx, host_ids, &mut staged, batch)?;
                let run = resolve_run(&tx, runs, &mut staged, batch, now)?;
                let run_id = run.run_id;
                if run.store(batch.seq, batch.received_unix_ms) {
                    let ids = (host_id, run_id);
                    write_batch(&tx, &mut statements, ids, batch, &mut grouped, &mut staged)?;
                    staged.stored.push(StoredBatch {
                        request: index,
                        host_id,
                        run_id,
                        rows: staged.rows.len() - grouped.len()..staged.rows.len(),
                    });
                    Answer::Batch(SubmitOutcome::Stored)
                } else {
                    Answer::Batch(SubmitOutcome::Duplicate)
                }
            }
            Request::Command { record, .. } => {
                write_command(&tx, record)?;
                Answer::Done
            }
            Request::CommandResult { record, .. } => match write_command_result(&tx, record)? {
                true => Answer::Done,
                false => Answer::Failed(StoreError::UnknownCommand(record.command_id.clone())),
            },
            Request::Close { .. } => Answer::Done,
            #[cfg(test)]
            Request::SetMaxPageCount { .. } | Request::Abandon { .. } => Answer::Done,
        };
        answers.push(answer);
    }
    drop(statements);
    let written = now.elapsed();
    tx.commit()?;
    log::trace!(
        "store: flush of {} requests: written in {} µs, committed in {} µs",
        requests.len(),
        written.as_micros(),
        (now.elapsed() - written).as_micros()
    );
    Ok((answers, staged))
}

/// Inserts a row of `ticks`, unless the run already has one at that time.
const INSERT_TICK: &str = "INSERT INTO ticks (host_id, time_unix_ms, run_id, receive_lag_ms,
         cpu_percent, mem_percent, disk_read_kbps, disk_write_kbps, net_in_kbps, net_out_kbps)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
     ON CONFLICT (host_id, time_unix_ms, run_id) DO NOTHING";

/// The statements every stored batch runs, prepared once per flush.
struct BatchStatements<'c> {
    insert_tick: rusqlite::CachedStatement<'c>,
    append_journal: rusqlite::CachedStatement<'c>,
}

/// Writes a new batch of (host_id, run_id) `ids`: its rows (normally one)
/// and its journal row. Pushes the values it added to `staged.rows`, one
/// row per row of `grouped`.
fn write_batch(
    tx: &Connection,
    statements: &mut BatchStatements<'_>,
    ids: (i64, i64),
    batch: &IncomingBatch,
    grouped: &mut Vec<TickRow>,
    staged: &mut Staged,
) -> rusqlite::Result<()> {
    let (host_id, run_id) = ids;
    let dropped = ticks::group_samples(&batch.samples, |m| metric_id(m) as usize, grouped);
    let mut ignored = dropped.repeats;
    for row in grouped.iter() {
        let (added, n) = write_tick(tx, &mut statements.insert_tick, ids, batch, row)?;
        ignored += n;
        staged.rows.push(added);
    }
    journal::append(&mut statements.append_journal, host_id, run_id, batch)?;
    if ignored > 0 {
        log::warn!(
            "store: {} {} seq {}: {ignored} samples repeat a (metric, time) already stored \
             for this run; kept the first",
            batch.hostname,
            batch.agent_id,
            batch.seq
        );
    }
    if dropped.not_finite > 0 {
        log::warn!(
            "store: {} {} seq {}: {} samples are not finite numbers; not stored",
            batch.hostname,
            batch.agent_id,
            batch.seq,
            dropped.not_finite
        );
    }
    Ok(())
}

/// Inserts one row; if the run already has a row at that time (a clock
/// stepped back within one agent run), fills only the metrics it lacks.
/// Returns the values added and how many were ignored.
fn write_tick(
    tx: &Connection,
    insert_tick: &mut rusqlite::Statement<'_>,
    (host_id, run_id): (i64, i64),
    batch: &IncomingBatch,
    row: &TickRow,
) -> rusqlite::Result<(TickRow, usize)> {
    let v = row.values;
    let inserted = insert_tick.execute(params![
        host_id,
        row.time_unix_ms,
        run_id,
        batch.received_unix_ms.saturating_sub(row.time_unix_ms),
        v[0],
        v[1],
        v[2],
        v[3],
        v[4],
        v[5]
    ])?;
    if inserted == 1 {
        return Ok((*row, 0));
    }
    let key = params![host_id, row.time_unix_ms, run_id];
    let mut existing = [None; METRICS];
    tx.prepare_cached(
        "SELECT cpu_percent, mem_percent, disk_read_kbps, disk_write_kbps, net_in_kbps,
             net_out_kbps
         FROM ticks WHERE host_id = ?1 AND time_unix_ms = ?2 AND run_id = ?3",
    )?
    .query_row(key, |r| {
        for (i, slot) in existing.iter_mut().enumerate() {
            *slot = r.get(i)?;
        }
        Ok(())
    })?;
    let filled = ticks::fill_missing(existing, row.values);
    if filled.added.iter().any(Option::is_some) {
        let m = filled.merged;
        tx.prepare_cached(
            "UPDATE ticks SET cpu_percent = ?4, mem_percent = ?5, disk_read_kbps = ?6,
                 disk_write_kbps = ?7, net_in_kbps = ?8, net_out_kbps = ?9
             WHERE host_id = ?1 AND time_unix_ms = ?2 AND run_id = ?3",
        )?
        .execute(params![
            host_id,
            row.time_unix_ms,
            run_id,
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5]
        ])?;
    }
    let added = TickRow {
        time_unix_ms: row.time_unix_ms,
        values: filled.added,
    };
    Ok((added, filled.ignored))
}

/// The host id of a batch's hostname, inserting the host on first sight.
fn resolve_host(
    tx: &Connection,
    host_ids: &HashMap<String, i64>,
    staged: &mut Staged,
    batch: &IncomingBatch,
) -> rusqlite::Result<i64> {
    if let Some(&id) = host_ids.get(&batch.hostname) {
        return Ok(id);
    }
    if let Some(&id) = staged.new_host_ids.get(&batch.hostname) {
        return Ok(id);
    }
    let id = tx
        .prepare_cached(
            "INSERT INTO hosts (hostname, agent_id, agent_version, peer, first_seen_unix_ms,
                 last_seen_unix_ms, clock_offset_ms, dropped_batches_total, batches_stored_total)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, 0)
             RETURNING host_id",
        )?
        .query_row(
            params![
                batch.hostname,
                batch.agent_id,
                batch.agent_version,
                batch.peer,
                batch.received_unix_ms,
                batch.clock_offset_ms,
                u64_to_sql(batch.dropped_batches_total),
            ],
            |r| r.get(0),
        )?;
    staged.new_host_ids.insert(batch.hostname.clone(), id);
    staged.new_hosts.push((id, HostEntry::first_seen(batch)));
    Ok(id)
}

/// The staged dedup state of a batch's run: copied from the cache, loaded
/// from `agent_runs`, or a new row.
fn resolve_run<'s>(
    tx: &Connection,
    runs: &HashMap<RunKey, RunEntry>,
    staged: &'s mut Staged,
    batch: &IncomingBatch,
    now: Instant,
) -> rusqlite::Result<&'s mut RunEntry> {
    let key = (batch.agent_id.clone(), batch.boot_id);
    let slot = match staged.runs.entry(key) {
        Entry::Occupied(o) => return Ok(o.into_mut()),
        Entry::Vacant(v) => v,
    };
    let mut entry = match runs.get(slot.key()) {
        Some(e) => e.clone(),
        None => runs::load_or_create(tx, batch)?,
    };
    entry.last_used = now;
    Ok(slot.insert(entry))
}

fn write_command(tx: &Connection, c: &CommandRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO commands (command_id, time_unix_ms, argv) VALUES (?1, ?2, ?3)
         ON CONFLICT (command_id) DO NOTHING",
    )?
    .execute(params![c.command_id, c.time_unix_ms, encode_argv(&c.argv)])?;
    let row: i64 = tx
        .prepare_cached("SELECT command_row FROM commands WHERE command_id = ?1")?
        .query_row([&c.command_id], |r| r.get(0))?;
    let mut target = tx.prepare_cached(
        "INSERT INTO command_results (command_row, hostname, target_index) VALUES (?1, ?2, ?3)
         ON CONFLICT (command_row, hostname) DO NOTHING",
    )?;
    for (i, host) in c.targets.iter().enumerate() {
        target.execute(params![row, host, i as i64])?;
    }
    Ok(())
}

/// Returns false if the command id was never recorded.
fn write_command_result(tx: &Connection, r: &CommandResultRecord) -> rusqlite::Result<bool> {
    let row: Option<i64> = tx
        .prepare_cached("SELECT command_row FROM commands WHERE command_id = ?1")?
        .query_row([&r.command_id], |row| row.get(0))
        .optional()?;
    let Some(row) = row else {
        return Ok(false);
    };
    // A host that was not a target gets target_index -1: its result is
    // kept, but it does not appear among the command's targets.
    tx.prepare_cached(
        "INSERT INTO command_results (command_row, hostname, target_index, outcome, exit_code,
             signal, duration_ms, stdout_bytes, stderr_bytes, message, finished_unix_ms)
         VALUES (?1, ?2, -1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (command_row, hostname) DO UPDATE SET
             outcome = excluded.outcome, exit_code = excluded.exit_code,
             signal = excluded.signal, duration_ms = excluded.duration_ms,
             stdout_bytes = excluded.stdout_bytes, stderr_bytes = excluded.stderr_bytes,
             message = excluded.message, finished_unix_ms = excluded.finished_unix_ms",
    )?
    .execute(params![
        row,
        r.hostname,
        r.outcome.name(),
        r.exit_code,
        r.signal,
        u64_to_sql(r.duration_ms),
        u64_to_sql(r.stdout_bytes),
        u64_to_sql(r.stderr_bytes),
        r.message,
        r.finished_unix_ms,
    ])?;
    Ok(true)
}

/// One retention transaction: from host id `cursor` on, deletes samples
/// older than `cutoff`, host by host (the oldest rows of a host are the
/// first of its range), until `chunk_rows` are deleted or
/// [`RETENTION_HOSTS_PER_STEP`] hosts were looked at. Returns where to
/// resume (`None`: the pass is complete) and how many samples were deleted.
fn prune_step(
    conn: &mut Connection,
    cursor: i64,
    cutoff: i64,
    chunk_rows: usize,
) -> rusqlite::Result<(Option<i64>, usize)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut deleted = 0usize;
    let mut next = None;
    {
        let mut next_host =
            tx.prepare_cached("SELECT min(host_id) FROM hosts WHERE host_id >= ?1")?;
        // Deletes at most ?3 rows: everything older than the ?3-th oldest
        // row below the cutoff (or than the cutoff, if fewer are that old).
        let mut delete = tx.prepare_cached(
            "DELETE FROM ticks WHERE host_id = ?1 AND time_unix_ms <
                 coalesce((SELECT time_unix_ms FROM ticks
                           WHERE host_id = ?1 AND time_unix_ms < ?2
                           ORDER BY time_unix_ms LIMIT 1 OFFSET ?3), ?2)",
        )?;
        let mut floor = cursor;
        let mut hosts = 0;
        while let Some(host_id) = next_host.query_row([floor], |r| r.get::<_, Option<i64>>(0))? {
            let budget = chunk_rows - deleted;
            let n = delete.execute(params![host_id, cutoff, budget as i64])?;
            deleted += n;
            hosts += 1;
            // A host that used its whole budget may have more to delete.
            let resume = if n >= budget {
                Some(host_id)
            } else {
                host_id.checked_add(1)
            };
            let Some(resume) = resume else { break };
            if deleted >= chunk_rows || hosts >= RETENTION_HOSTS_PER_STEP {
                next = Some(resume);
                break;
            }
            floor = resume;
        }
    }
    tx.commit()?;
    Ok((next, deleted))
}
