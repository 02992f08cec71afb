//! The writer thread: the only connection that writes, one transaction per
//! flush, answers sent only after COMMIT returned. A flush appends each
//! stored batch to the journal, and merges the journal rows of a few hosts
//! that waited `merge_interval` into `ticks`, `hosts` and `agent_runs` (see
//! `journal.rs`). Between flushes: retention in small transactions, and the
//! end of each checkpoint round (see `checkpoint.rs`).
//!
//! Memory (host ids, the host table, the dedup state of recent runs, which
//! hosts wait for a merge) is changed only after a commit succeeded: a
//! flush works on staged copies, so a failed transaction leaves memory
//! exactly as the file is.
//!
//! This thread must never panic on anything the file, the disk or a batch
//! can do, never answer a request before its transaction committed, and
//! never hold more than `flush_max_batches` requests off the queue.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monitor::time::now_unix_ms;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::{self, Checkpointer};
use super::error::{StoreError, code_of};
use super::hosts::{BatchMeta, HostEntry, HostTable};
use super::journal;
use super::runs::{self, RunEntry, RunKey};
use super::schema::{self, encode_argv, metric_id, u64_from_sql, u64_to_sql};
use super::ticks::{self, METRICS, PendingTick, TickRow};
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
    /// Commit what came before, then stop without merging the journal or
    /// checkpointing: the file is left as `kill -9` would leave it.
    #[cfg(test)]
    Abandon {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// A run's dedup state is dropped from memory after this long unused (and
/// no unmerged journal row names it); it is reloaded from `agent_runs` if
/// the run shows up again.
const RUN_CACHE_IDLE: Duration = Duration::from_secs(3600);
/// Most hosts one retention step looks at.
const RETENTION_HOSTS_PER_STEP: usize = 256;
/// Most stale `agent_runs` rows one retention pass deletes.
const RETENTION_RUNS_PER_PASS: i64 = 1_000;
/// While writes keep failing, how often the failure is logged again.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);
/// Unmerged ticks a flush merges (whole hosts, at least one) while merges
/// keep up: at 10,000 batches/s, 10,000 ticks/s are due, 200 per flush at
/// 50 flushes/s; a small steady amount keeps each flush short (merging
/// ~1,000 ticks takes a few ms).
const MERGE_TICKS_PER_FLUSH: usize = 1_000;
/// Unmerged ticks a flush merges once the oldest waiting host is a whole
/// `merge_interval` late, or memory holds too many.
const MERGE_TICKS_PER_FLUSH_BEHIND: usize = 8_000;
/// Most journal rows one flush deletes: deleting ~1 µs a row, a backlog
/// (after a burst of merges frees 30 s of journal at once) is worked off
/// over many flushes instead of stalling one for hundreds of ms.
const JOURNAL_DELETES_PER_FLUSH: i64 = 5_000;
/// Above this many unmerged ticks in memory (~100 bytes each) merges go at
/// the faster pace: 30 s at 10,000 batches/s is 300,000.
const MAX_PENDING_TICKS: usize = 600_000;
/// After a flush with merges failed, merges pause this long (the flush is
/// retried without them, so a merge that cannot be written never stops
/// ingest).
const MERGE_PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// A flush that takes longer is logged at debug level.
const SLOW_FLUSH: Duration = Duration::from_millis(100);
/// How many of a host's newest rows are read at open for its latest value
/// of each metric (a metric not among them shows no latest value).
const LATEST_SCAN_TICKS: i64 = 10;

/// Opens the database, rebuilds the in-memory state (replaying and merging
/// the journal a crash left behind) and starts the writer thread. Returns
/// once the file is open and checked, so open errors reach the caller of
/// `Store::open`.
pub(crate) fn start(
    config: StoreConfig,
    rx: mpsc::Receiver<Request>,
) -> Result<(JoinHandle<()>, Arc<HostTable>), StoreError> {
    let started = Instant::now();
    let conn = schema::open_writer(&config.path, config.cache_size_kib)?;
    let checked = started.elapsed();
    let loaded =
        load_state(&conn).map_err(|e| StoreError::sqlite("loading hosts and runs at open", e))?;
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
    let hosts = Arc::new(HostTable::new(loaded.hosts));
    let replayed_rows = loaded.replayed.rows;
    let mut writer = Writer {
        checkpointer: Some(checkpointer),
        path: config.path.clone(),
        conn,
        host_ids: loaded.host_ids,
        hosts: Arc::clone(&hosts),
        run_keys: loaded
            .runs
            .iter()
            .map(|(k, r)| (r.run_id, k.clone()))
            .collect(),
        runs: loaded.runs,
        merges: Merges::default(),
        retention: Retention {
            next_pass: Instant::now(),
            cursor: None,
        },
        failures: Failures::default(),
        config,
        #[cfg(test)]
        abandon: None,
        db_file,
    };
    writer.merges.last_journal_id = loaded.replayed.last_journal_id;
    // Rows below the journal's first are gone already: deletes start there,
    // not at id 1 (ids keep growing across restarts).
    writer.merges.deleted_through = loaded
        .replayed
        .first_journal_id
        .map_or(loaded.replayed.last_journal_id, |first| first - 1);
    // The journal is part of the file's state, after a crash as after a
    // clean close: its hosts are merged over the next `merge_interval` like
    // any others, not all at once (at 60,000 batches/s the journal holds
    // 2M ticks, a 10 s transaction).
    let now = Instant::now();
    for u in loaded.replayed.unmerged {
        writer
            .merges
            .enqueue(u.host_id, (now, u.first_journal_id), &u.runs, u.ticks);
    }
    writer.merges.pending_ticks = loaded.hosts_pending_ticks;
    if replayed_rows > 0 {
        log::info!(
            "store: {}: {replayed_rows} journal rows replayed; {} hosts wait for a merge",
            writer.path.display(),
            writer.merges.order.len()
        );
    }
    log::info!(
        "store: {} open: {} hosts; checked in {} ms, state loaded in {} ms",
        writer.path.display(),
        writer.host_ids.len(),
        checked.as_millis(),
        (started.elapsed() - checked).as_millis()
    );
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
    replayed: journal::Replayed,
    /// Unmerged ticks the replay put back in memory.
    hosts_pending_ticks: usize,
}

/// Loads `hosts`, replays the journal over them, and reads each host's
/// latest values from its newest rows.
fn load_state(conn: &Connection) -> rusqlite::Result<Loaded> {
    let mut hosts = load_hosts(conn)?;
    let mut runs = HashMap::new();
    let replayed = journal::replay(conn, &mut hosts, &mut runs)?;
    load_latest(conn, &mut hosts)?;
    let host_ids = hosts
        .iter()
        .map(|(&id, h)| (h.hostname.clone(), id))
        .collect();
    let hosts_pending_ticks = hosts.values().map(|h| h.pending.len()).sum();
    Ok(Loaded {
        host_ids,
        hosts,
        runs,
        replayed,
        hosts_pending_ticks,
    })
}

fn load_hosts(conn: &Connection) -> rusqlite::Result<HashMap<i64, HostEntry>> {
    let mut stmt = conn.prepare(
        "SELECT host_id, hostname, agent_id, agent_version, peer, first_seen_unix_ms,
             last_seen_unix_ms, clock_offset_ms, dropped_batches_total, batches_stored_total,
             merged_journal_id
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
                pending: Vec::new(),
                merged_journal_id: r.get(10)?,
                applied_journal_id: r.get(10)?,
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

/// A host whose journal rows are not all merged.
#[derive(Debug)]
struct Waiting {
    /// When its oldest unmerged row was committed.
    since: Instant,
    /// Its oldest unmerged journal row.
    first_journal_id: i64,
    /// The runs of its unmerged rows (their `agent_runs` rows are written
    /// with its merge).
    runs: Vec<i64>,
    /// Its unmerged ticks.
    ticks: usize,
}

/// Which hosts wait for a merge, oldest first, and how far the journal is
/// deleted.
#[derive(Debug, Default)]
struct Merges {
    waiting: HashMap<i64, Waiting>,
    /// Host ids of `waiting`, by `since` and so by `first_journal_id`.
    order: VecDeque<i64>,
    /// The newest journal id written.
    last_journal_id: i64,
    /// Journal rows up to this id are deleted.
    deleted_through: i64,
    /// After a failed flush with merges: no merges before this.
    paused_until: Option<Instant>,
    /// Unmerged ticks held in memory (for queries), all hosts together.
    pending_ticks: usize,
}

impl Merges {
    /// Notes unmerged journal rows of `host_id`, the first `journal_id`,
    /// of runs `runs`, holding `ticks` ticks.
    fn enqueue(
        &mut self,
        host_id: i64,
        (since, journal_id): (Instant, i64),
        runs: &[i64],
        ticks: usize,
    ) {
        let w = self.waiting.entry(host_id).or_insert_with(|| {
            self.order.push_back(host_id);
            Waiting {
                since,
                first_journal_id: journal_id,
                runs: Vec::new(),
                ticks: 0,
            }
        });
        w.ticks += ticks;
        for &r in runs {
            if !w.runs.contains(&r) {
                w.runs.push(r);
            }
        }
    }

    /// Hosts from the front whose oldest row waited `interval`, as many as
    /// fit in `tick_budget` unmerged ticks (at least one).
    fn due(&self, now: Instant, interval: Duration, tick_budget: usize) -> Vec<i64> {
        if self.paused_until.is_some_and(|t| now < t) {
            return Vec::new();
        }
        let mut ticks = 0usize;
        let mut due = Vec::new();
        for id in &self.order {
            let Some(w) = self.waiting.get(id) else { break };
            if w.since + interval > now || (!due.is_empty() && ticks + w.ticks > tick_budget) {
                break;
            }
            ticks += w.ticks;
            due.push(*id);
        }
        due
    }

    /// How many unmerged ticks the next flush merges.
    fn budget(&self, now: Instant, interval: Duration) -> usize {
        let late = self
            .order
            .front()
            .and_then(|id| self.waiting.get(id))
            .is_some_and(|w| w.since + interval + interval.max(Duration::from_secs(1)) <= now);
        if late || self.pending_ticks > MAX_PENDING_TICKS {
            MERGE_TICKS_PER_FLUSH_BEHIND
        } else {
            MERGE_TICKS_PER_FLUSH
        }
    }

    /// The journal rows to delete once the first `merging` hosts of `order`
    /// are merged: those every host merged past, at most
    /// [`JOURNAL_DELETES_PER_FLUSH`] ids on from the last delete (`None`:
    /// nothing new to delete).
    fn deletable_through(&self, merging: usize) -> Option<i64> {
        let bound = match self.order.get(merging) {
            Some(id) => self.waiting.get(id)?.first_journal_id - 1,
            None => self.last_journal_id,
        };
        let bound = bound.min(
            self.deleted_through
                .saturating_add(JOURNAL_DELETES_PER_FLUSH),
        );
        (bound > self.deleted_through).then_some(bound)
    }

    /// How long until the oldest waiting host is due.
    fn wait(&self, interval: Duration) -> Duration {
        let now = Instant::now();
        if let Some(t) = self.paused_until.filter(|&t| now < t) {
            return t - now;
        }
        match self.order.front().and_then(|id| self.waiting.get(id)) {
            Some(w) => (w.since + interval).saturating_duration_since(now),
            None => Duration::MAX,
        }
    }

    /// Runs that unmerged journal rows name.
    fn referenced_runs(&self) -> HashSet<i64> {
        self.waiting
            .values()
            .flat_map(|w| w.runs.iter().copied())
            .collect()
    }
}

struct Writer {
    path: PathBuf,
    /// Copies the WAL into the file in the background; stopped at close.
    checkpointer: Option<Checkpointer>,
    config: StoreConfig,
    conn: Connection,
    /// hostname → host_id of every row of `hosts` (bounded by the table).
    host_ids: HashMap<String, i64>,
    /// Every host's state and unmerged ticks, shared with the readers.
    hosts: Arc<HostTable>,
    /// (agent_id, boot_id) → dedup state of recently seen runs, and of
    /// every run an unmerged journal row names.
    runs: HashMap<RunKey, RunEntry>,
    /// run_id → key of every entry of `runs`.
    run_keys: HashMap<i64, RunKey>,
    merges: Merges,
    retention: Retention,
    failures: Failures,
    /// Set by [`Request::Abandon`].
    #[cfg(test)]
    abandon: Option<oneshot::Sender<Result<(), StoreError>>>,
    /// Our own descriptor of the database file (see `checkpoint.rs`); the
    /// last field, so it is closed after `conn`. Only held, never used.
    #[allow(dead_code)]
    db_file: checkpoint::DbFile,
}

/// What a flush changed, applied to memory only after COMMIT succeeded.
#[derive(Default)]
struct Staged {
    new_host_ids: HashMap<String, i64>,
    new_hosts: Vec<(i64, HostEntry)>,
    runs: HashMap<RunKey, RunEntry>,
    /// Hosts merged: (host_id, the journal id their row now includes).
    merged: Vec<(i64, i64)>,
    /// Journal rows deleted up to this id.
    deleted_through: Option<i64>,
    /// The batches stored, in commit order.
    stored: Vec<StoredBatch>,
    /// The ticks of the stored batches, see [`StoredBatch::rows`].
    rows: Vec<TickRow>,
}

/// A batch the flush stored.
struct StoredBatch {
    /// Index of its request in the flush.
    request: usize,
    host_id: i64,
    run_id: i64,
    journal_id: i64,
    /// Its ticks in [`Staged::rows`].
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
            let wait = self
                .retention_wait()
                .min(self.merges.wait(self.config.merge_interval));
            let first = match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                Ok(Some(r)) => Some(r),
                Ok(None) => break, // every Store handle is gone
                Err(_) => None,
            };
            let flush = match first {
                Some(first) => !self.gather(rt, &mut rx, first, &mut pending, &mut closing),
                None => false,
            };
            let budget = self
                .merges
                .budget(Instant::now(), self.config.merge_interval);
            if flush || self.merges.wait(self.config.merge_interval).is_zero() {
                self.flush(std::mem::take(&mut pending), budget);
            }
            if !closing.is_empty() {
                break;
            }
            #[cfg(test)]
            if let Some(reply) = self.abandon.take() {
                drop(self);
                let _ = reply.send(Ok(()));
                return;
            }
            if self.retention.cursor.is_some() || Instant::now() >= self.retention.next_pass {
                self.retention_step();
            }
            self.finish_checkpoint();
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
        self.flush(std::mem::take(&mut pending), 0);
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

    /// Writes `requests` and merges up to `merge_budget` due hosts in one
    /// transaction, then answers every request: with its result if COMMIT
    /// succeeded, with the failure otherwise. A failed transaction that
    /// held merges is retried once without them, and merges pause a while:
    /// a merge that cannot be written must not stop ingest.
    fn flush(&mut self, requests: Vec<Request>, merge_budget: usize) {
        let now = Instant::now();
        let mut merging = self
            .merges
            .due(now, self.config.merge_interval, merge_budget);
        if requests.is_empty() && merging.is_empty() {
            return;
        }
        let mut result = self.write(&requests, &merging);
        if let Err(e) = &result
            && !merging.is_empty()
        {
            log::warn!(
                "store: a flush of {} requests with {} host merges failed: {e}; retrying it \
                 without merges, which pause for {:?}",
                requests.len(),
                merging.len(),
                MERGE_PAUSE_AFTER_FAILURE
            );
            self.merges.paused_until = Some(now + MERGE_PAUSE_AFTER_FAILURE);
            merging.clear();
            if !requests.is_empty() {
                result = self.write(&requests, &merging);
            }
        }
        match result {
            Ok((answers, staged)) => {
                self.apply(&requests, staged, now);
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

    fn write(
        &mut self,
        requests: &[Request],
        merging: &[i64],
    ) -> rusqlite::Result<(Vec<Answer>, Staged)> {
        let retention_ms = i64::try_from(self.config.retention.as_millis()).unwrap_or(i64::MAX);
        let plan = Plan {
            merging,
            deletable_through: self.merges.deletable_through(merging.len()),
            retention_cutoff: now_unix_ms().saturating_sub(retention_ms),
        };
        let state = State {
            host_ids: &self.host_ids,
            hosts: &self.hosts,
            runs: &self.runs,
            run_keys: &self.run_keys,
            merges: &self.merges,
        };
        write_flush(&mut self.conn, &state, &plan, requests)
    }

    /// Brings memory up to a flush that committed at `now`.
    fn apply(&mut self, requests: &[Request], staged: Staged, now: Instant) {
        let mut hosts = self.hosts.lock();
        for &(host_id, through) in &staged.merged {
            if let Some(h) = hosts.get_mut(&host_id) {
                let before = h.pending.len();
                h.pending.retain(|p| p.journal_id > through);
                self.merges.pending_ticks -=
                    (before - h.pending.len()).min(self.merges.pending_ticks);
                h.merged_journal_id = through;
            }
            self.merges.waiting.remove(&host_id);
            if self.merges.order.front() == Some(&host_id) {
                self.merges.order.pop_front();
            } else {
                self.merges.order.retain(|&id| id != host_id);
            }
        }
        if let Some(through) = staged.deleted_through {
            self.merges.deleted_through = through;
        }
        for (id, entry) in staged.new_hosts {
            self.host_ids.insert(entry.hostname.clone(), id);
            hosts.insert(id, entry);
        }
        for stored in &staged.stored {
            let Some(Request::Batch { batch, .. }) = requests.get(stored.request) else {
                continue;
            };
            let rows = staged.rows.get(stored.rows.clone()).unwrap_or_default();
            if let Some(host) = hosts.get_mut(&stored.host_id) {
                host.count_batch(BatchMeta::of(batch));
                host.applied_journal_id = stored.journal_id;
                self.merges.pending_ticks += rows.len();
                for row in rows {
                    host.note_values(stored.run_id, row);
                    host.pending.push(PendingTick {
                        journal_id: stored.journal_id,
                        run_id: stored.run_id,
                        received_unix_ms: batch.received_unix_ms,
                        row: *row,
                    });
                }
            }
            self.merges.enqueue(
                stored.host_id,
                (now, stored.journal_id),
                &[stored.run_id],
                rows.len(),
            );
            self.merges.last_journal_id = stored.journal_id;
        }
        drop(hosts);
        for (key, run) in staged.runs {
            self.run_keys.insert(run.run_id, key.clone());
            self.runs.insert(key, run);
        }
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

    /// Ends a pass: the hosts forget unmerged ticks and latest values older
    /// than the samples kept (merges skip such ticks too); runs not seen
    /// since `cutoff` (`i64::MIN` after a failed pass:
    /// none) and named by no unmerged journal row are deleted; the cache
    /// forgets runs idle for an hour.
    fn end_retention_pass(&mut self, now: Instant, cutoff: i64) {
        self.retention.cursor = None;
        self.retention.next_pass = now + self.config.retention_interval;
        let referenced = self.merges.referenced_runs();
        if cutoff != i64::MIN {
            for host in self.hosts.lock().values_mut() {
                let before = host.pending.len();
                host.pending.retain(|p| p.row.time_unix_ms >= cutoff);
                let gone = before - host.pending.len();
                self.merges.pending_ticks -= gone.min(self.merges.pending_ticks);
                for l in &mut host.latest {
                    if l.is_some_and(|l| l.time_unix_ms < cutoff) {
                        *l = None;
                    }
                }
            }
            match prune_runs(&mut self.conn, cutoff, &referenced) {
                Ok(deleted) => {
                    for run_id in deleted {
                        if let Some(key) = self.run_keys.remove(&run_id) {
                            self.runs.remove(&key);
                        }
                    }
                }
                Err(e) => log::error!(
                    "store: deleting runs not seen since {cutoff} from {} failed: {e}; trying \
                     again after the next retention pass",
                    self.path.display()
                ),
            }
        }
        let run_keys = &mut self.run_keys;
        self.runs.retain(|_, r| {
            let keep =
                referenced.contains(&r.run_id) || now.duration_since(r.last_used) < RUN_CACHE_IDLE;
            if !keep {
                run_keys.remove(&r.run_id);
            }
            keep
        });
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

/// What a flush reads of the writer's memory.
struct State<'a> {
    host_ids: &'a HashMap<String, i64>,
    hosts: &'a HostTable,
    runs: &'a HashMap<RunKey, RunEntry>,
    run_keys: &'a HashMap<i64, RunKey>,
    merges: &'a Merges,
}

/// The merges a flush carries.
struct Plan<'a> {
    /// Hosts to merge: the first of `Merges::order`.
    merging: &'a [i64],
    /// Journal rows to delete once those are merged.
    deletable_through: Option<i64>,
    /// Ticks older than this (ms since the Unix epoch) are not merged:
    /// retention would delete them.
    retention_cutoff: i64,
}

/// Writes one flush in one IMMEDIATE transaction: the merges of `plan`
/// first (they write memory's state, which excludes this flush), then the
/// requests. Returns one answer per request and what to apply to memory,
/// or the error that rolled it all back.
fn write_flush(
    conn: &mut Connection,
    state: &State<'_>,
    plan: &Plan<'_>,
    requests: &[Request],
) -> rusqlite::Result<(Vec<Answer>, Staged)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut staged = Staged::default();
    let now = Instant::now();
    if !plan.merging.is_empty() {
        let mut insert_tick = tx.prepare_cached(journal::INSERT_TICK)?;
        for &host_id in plan.merging {
            // A copy: the table stays unlocked while this writes.
            let Some(host) = state.hosts.lock().get(&host_id).cloned() else {
                continue;
            };
            let runs: Vec<&RunEntry> = state
                .merges
                .waiting
                .get(&host_id)
                .map(|w| w.runs.as_slice())
                .unwrap_or_default()
                .iter()
                .filter_map(|id| state.run_keys.get(id).and_then(|k| state.runs.get(k)))
                .collect();
            let m = journal::merge_host(
                &tx,
                &mut insert_tick,
                (host_id, &host),
                &runs,
                plan.retention_cutoff,
            )?;
            if m.ignored > 0 {
                log::warn!(
                    "store: {}: {} samples repeat a (metric, time) already stored for their \
                     run; kept the first",
                    host.hostname,
                    m.ignored
                );
            }
            staged.merged.push((host_id, host.applied_journal_id));
        }
        if let Some(through) = plan.deletable_through {
            journal::delete_through(&tx, through)?;
            staged.deleted_through = Some(through);
        }
    }
    let mut answers = Vec::with_capacity(requests.len());
    let mut grouped = Vec::new();
    {
        // Prepared once per flush: a cache lookup per batch costs more than
        // the append it prepares.
        let mut append = tx.prepare_cached(journal::APPEND)?;
        for (index, request) in requests.iter().enumerate() {
            let answer = match request {
                Request::Batch { batch, .. } => {
                    let host_id = resolve_host(&tx, state.host_ids, &mut staged, batch)?;
                    let run = resolve_run(&tx, state.runs, &mut staged, batch, now)?;
                    let run_id = run.run_id;
                    if run.store(batch.seq, batch.received_unix_ms) {
                        let dropped = ticks::group_samples(
                            &batch.samples,
                            |m| metric_id(m) as usize,
                            &mut grouped,
                        );
                        let journal_id =
                            journal::append(&mut append, (host_id, run_id), batch, &grouped)?;
                        if dropped.repeats > 0 || dropped.not_finite > 0 {
                            log::warn!(
                                "store: {} {} seq {}: {} samples repeat a (metric, time) of the \
                                 batch, {} are not finite numbers; not stored",
                                batch.hostname,
                                batch.agent_id,
                                batch.seq,
                                dropped.repeats,
                                dropped.not_finite
                            );
                        }
                        let start = staged.rows.len();
                        staged.rows.extend_from_slice(&grouped);
                        staged.stored.push(StoredBatch {
                            request: index,
                            host_id,
                            run_id,
                            journal_id,
                            rows: start..staged.rows.len(),
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
    }
    let written = now.elapsed();
    tx.commit()?;
    let committed = now.elapsed() - written;
    // A slow flush delays every batch in it and behind it: say why.
    let level = if now.elapsed() >= SLOW_FLUSH {
        log::Level::Debug
    } else {
        log::Level::Trace
    };
    log::log!(
        level,
        "store: flush of {} requests, {} merges{}: written in {} µs, committed in {} µs",
        requests.len(),
        staged.merged.len(),
        staged
            .deleted_through
            .map_or(String::new(), |j| format!(", journal deleted through {j}")),
        written.as_micros(),
        committed.as_micros()
    );
    Ok((answers, staged))
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
        r.finished.outcome.name(),
        r.finished.exit_code,
        r.finished.signal,
        u64_to_sql(r.finished.duration_ms),
        u64_to_sql(r.finished.stdout_bytes),
        u64_to_sql(r.finished.stderr_bytes),
        r.finished.message,
        r.finished_unix_ms,
    ])?;
    Ok(true)
}

/// Deletes up to [`RETENTION_RUNS_PER_PASS`] runs not seen since `cutoff`
/// that no unmerged journal row names (their rows are current, since a
/// merge wrote them after their last batch). Returns their ids.
fn prune_runs(
    conn: &mut Connection,
    cutoff: i64,
    referenced: &HashSet<i64>,
) -> rusqlite::Result<Vec<i64>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let stale: Vec<i64> = tx
        .prepare_cached("SELECT run_id FROM agent_runs WHERE last_seen_unix_ms < ?1 LIMIT ?2")?
        .query_map(params![cutoff, RETENTION_RUNS_PER_PASS], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut deleted = Vec::new();
    {
        let mut delete = tx.prepare_cached("DELETE FROM agent_runs WHERE run_id = ?1")?;
        for run_id in stale {
            if !referenced.contains(&run_id) {
                delete.execute([run_id])?;
                deleted.push(run_id);
            }
        }
    }
    tx.commit()?;
    Ok(deleted)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_merge_oldest_first_and_the_journal_goes_behind_them() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let interval = Duration::from_secs(30);
        let mut m = Merges::default();
        m.enqueue(10, (t0, 1), &[100], 600);
        m.enqueue(11, (t0 + s, 2), &[101], 500);
        // Already waiting: keeps its place, gains the run and the ticks.
        m.enqueue(10, (t0 + 2 * s, 3), &[102, 100], 100);
        m.last_journal_id = 3;
        assert_eq!(m.waiting[&10].runs, [100, 102]);
        assert_eq!(m.waiting[&10].ticks, 700);
        assert_eq!(m.referenced_runs(), HashSet::from([100, 101, 102]));

        assert_eq!(m.due(t0 + 29 * s, interval, 2000), [0i64; 0]);
        assert_eq!(m.due(t0 + 30 * s, interval, 2000), [10]);
        assert_eq!(m.due(t0 + 31 * s, interval, 2000), [10, 11]);
        assert_eq!(m.due(t0 + 31 * s, interval, 1000), [10], "budget in ticks");
        assert_eq!(m.due(t0 + 31 * s, interval, 1), [10], "at least one host");

        // Host 10 holds row 1 back, host 11 row 2; merged, all of them go.
        assert_eq!(m.deletable_through(0), None);
        assert_eq!(m.deletable_through(1), Some(1));
        assert_eq!(m.deletable_through(2), Some(3));
        m.deleted_through = 1;
        assert_eq!(m.deletable_through(1), None);
        // A backlog goes in bounded steps.
        m.last_journal_id = 3 * JOURNAL_DELETES_PER_FLUSH;
        assert_eq!(m.deletable_through(2), Some(1 + JOURNAL_DELETES_PER_FLUSH));

        assert_eq!(m.budget(t0 + 31 * s, interval), MERGE_TICKS_PER_FLUSH);
        assert_eq!(
            m.budget(t0 + 60 * s, interval),
            MERGE_TICKS_PER_FLUSH_BEHIND,
            "a whole interval late"
        );
        m.pending_ticks = MAX_PENDING_TICKS + 1;
        assert_eq!(m.budget(t0, interval), MERGE_TICKS_PER_FLUSH_BEHIND);

        m.paused_until = Some(t0 + 40 * s);
        assert_eq!(m.due(t0 + 39 * s, interval, 2000), [0i64; 0], "paused");
        assert_eq!(m.due(t0 + 40 * s, interval, 2000), [10, 11]);
    }
}
