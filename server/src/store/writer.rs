//! The writer thread: the only connection that writes, one transaction per
//! flush, answers sent only after COMMIT returned; and retention, pruned in
//! small transactions between flushes.
//!
//! Caches (host ids, the dedup state of recent runs) are changed only after
//! a commit succeeded: a flush works on staged copies, so a failed
//! transaction leaves memory exactly as the file is.
//!
//! This thread must never panic on anything the file, the disk or a batch
//! can do, never answer a request before its transaction committed, and
//! never hold more than `flush_max_batches` requests off the queue.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monitor::time::now_unix_ms;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::Checkpointer;
use super::dedup::SeqSet;
use super::error::{StoreError, code_of};
use super::schema::{self, encode_argv, metric_id, u64_to_sql};
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

/// Opens the database and starts the writer thread. Returns once the file
/// is open and checked, so open errors reach the caller of `Store::open`.
pub(crate) fn start(
    config: StoreConfig,
    rx: mpsc::Receiver<Request>,
) -> Result<JoinHandle<()>, StoreError> {
    let conn = schema::open_writer(&config.path, config.cache_size_kib)?;
    let hosts =
        load_hosts(&conn).map_err(|e| StoreError::sqlite("loading the known hosts at open", e))?;
    // Timers for the flush delay and retention; the thread blocks on it
    // only while it waits for requests. Timer futures must be created
    // inside `block_on`, where the runtime's context is set.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(StoreError::Writer)?;
    let checkpointer = Checkpointer::start(&config.path, config.checkpoint_interval)?;
    let writer = Writer {
        checkpointer: Some(checkpointer),
        path: config.path.clone(),
        conn,
        hosts,
        runs: HashMap::new(),
        retention: Retention {
            next_pass: Instant::now(),
            cursor: None,
        },
        failures: Failures::default(),
        config,
    };
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(&rt, rx))
        .map_err(StoreError::Writer)
}

fn load_hosts(conn: &Connection) -> rusqlite::Result<HashMap<String, i64>> {
    let mut stmt = conn.prepare("SELECT hostname, host_id FROM hosts")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// The dedup state of one agent run, as cached and staged.
#[derive(Clone, Debug)]
struct RunEntry {
    run_id: i64,
    seqs: SeqSet,
    last_seen_unix_ms: i64,
    last_used: Instant,
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

struct Writer {
    path: PathBuf,
    /// Copies the WAL into the file in the background; stopped at close.
    checkpointer: Option<Checkpointer>,
    config: StoreConfig,
    conn: Connection,
    /// hostname → host_id of every row of `hosts` (bounded by the table).
    hosts: HashMap<String, i64>,
    /// (agent_id, boot_id) → dedup state of recently seen runs.
    runs: HashMap<(String, u64), RunEntry>,
    retention: Retention,
    failures: Failures,
}

/// What a flush changed in memory, applied only after COMMIT succeeded.
#[derive(Default)]
struct Staged {
    new_hosts: HashMap<String, i64>,
    runs: HashMap<(String, u64), RunEntry>,
}

/// The latest state of a host within one flush.
struct HostUpdate<'a> {
    batch: &'a IncomingBatch,
    batches_stored: i64,
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
            let wait = self.retention_wait();
            let first = match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                Ok(Some(r)) => r,
                Ok(None) => break, // every Store handle is gone
                Err(_) => {
                    self.retention_step();
                    continue;
                }
            };
            if !self.gather(rt, &mut rx, first, &mut pending, &mut closing) {
                self.flush(std::mem::take(&mut pending));
                if !closing.is_empty() {
                    break;
                }
            }
            if self.retention.cursor.is_some() || Instant::now() >= self.retention.next_pass {
                self.retention_step();
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
        let result = write_flush(&mut self.conn, &self.hosts, &self.runs, &requests);
        match result {
            Ok((answers, staged)) => {
                self.hosts.extend(staged.new_hosts);
                self.runs.extend(staged.runs);
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

    /// Ends a pass; the cache forgets runs idle for an hour and runs whose
    /// `agent_runs` row the pass may have deleted (last seen before
    /// `cutoff`), so it never refers to a row that is gone.
    fn end_retention_pass(&mut self, now: Instant, cutoff: i64) {
        self.retention.cursor = None;
        self.retention.next_pass = now + self.config.retention_interval;
        self.runs.retain(|_, r| {
            now.duration_since(r.last_used) < RUN_CACHE_IDLE && r.last_seen_unix_ms >= cutoff
        });
    }

    /// Checkpoints the WAL into the file and closes the connection.
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
    }
}

/// Writes one flush in one IMMEDIATE transaction. Returns one answer per
/// request and what to apply to the caches, or the error that rolled it all
/// back.
fn write_flush(
    conn: &mut Connection,
    hosts: &HashMap<String, i64>,
    runs: &HashMap<(String, u64), RunEntry>,
    requests: &[Request],
) -> rusqlite::Result<(Vec<Answer>, Staged)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut staged = Staged::default();
    let mut answers = Vec::with_capacity(requests.len());
    let mut host_updates: HashMap<i64, HostUpdate<'_>> = HashMap::new();
    let now = Instant::now();
    {
        let mut insert_sample = tx.prepare_cached(
            "INSERT OR IGNORE INTO samples
                 (host_id, metric_id, time_unix_ms, run_id, value, receive_lag_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for request in requests {
            let answer = match request {
                Request::Batch { batch, .. } => {
                    let host_id = resolve_host(&tx, hosts, &mut staged, batch)?;
                    let run = resolve_run(&tx, runs, &mut staged, batch, now)?;
                    if !run.seqs.insert(batch.seq) {
                        Answer::Batch(SubmitOutcome::Duplicate)
                    } else {
                        run.last_seen_unix_ms = run.last_seen_unix_ms.max(batch.received_unix_ms);
                        let run_id = run.run_id;
                        let mut ignored = 0usize;
                        for s in &batch.samples {
                            let n = insert_sample.execute(params![
                                host_id,
                                metric_id(s.metric),
                                s.time_unix_ms,
                                run_id,
                                s.value,
                                batch.received_unix_ms.saturating_sub(s.time_unix_ms),
                            ])?;
                            ignored += usize::from(n == 0);
                        }
                        if ignored > 0 {
                            log::warn!(
                                "store: {} {} seq {}: {ignored} samples repeat a (metric, time) \
                                 already stored for this run; kept the first",
                                batch.hostname,
                                batch.agent_id,
                                batch.seq
                            );
                        }
                        let update = host_updates.entry(host_id).or_insert(HostUpdate {
                            batch,
                            batches_stored: 0,
                        });
                        update.batch = batch;
                        update.batches_stored += 1;
                        Answer::Batch(SubmitOutcome::Stored)
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
                Request::SetMaxPageCount { .. } => Answer::Done,
            };
            answers.push(answer);
        }
    }
    {
        let mut update_host = tx.prepare_cached(
            "UPDATE hosts SET agent_id = ?2, agent_version = ?3, peer = ?4,
                 last_seen_unix_ms = ?5, clock_offset_ms = ?6, dropped_batches_total = ?7,
                 batches_stored_total = batches_stored_total + ?8
             WHERE host_id = ?1",
        )?;
        for (host_id, u) in &host_updates {
            let b = u.batch;
            update_host.execute(params![
                host_id,
                b.agent_id,
                b.agent_version,
                b.peer,
                b.received_unix_ms,
                b.clock_offset_ms,
                u64_to_sql(b.dropped_batches_total),
                u.batches_stored,
            ])?;
        }
        let mut update_run = tx.prepare_cached(
            "UPDATE agent_runs SET high_seq = ?2, gaps = ?3, last_seen_unix_ms = ?4
             WHERE run_id = ?1",
        )?;
        for run in staged.runs.values() {
            update_run.execute(params![
                run.run_id,
                u64_to_sql(run.seqs.high_seq()),
                run.seqs.encode_gaps(),
                run.last_seen_unix_ms,
            ])?;
        }
    }
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

/// The host id of a batch's hostname, inserting the host on first sight.
fn resolve_host(
    tx: &Connection,
    hosts: &HashMap<String, i64>,
    staged: &mut Staged,
    batch: &IncomingBatch,
) -> rusqlite::Result<i64> {
    if let Some(&id) = hosts.get(&batch.hostname) {
        return Ok(id);
    }
    if let Some(&id) = staged.new_hosts.get(&batch.hostname) {
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
    staged.new_hosts.insert(batch.hostname.clone(), id);
    Ok(id)
}

/// The staged dedup state of a batch's run: copied from the cache, loaded
/// from `agent_runs`, or a new row.
fn resolve_run<'s>(
    tx: &Connection,
    runs: &HashMap<(String, u64), RunEntry>,
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
        None => load_or_create_run(tx, batch)?,
    };
    entry.last_used = now;
    Ok(slot.insert(entry))
}

fn load_or_create_run(tx: &Connection, batch: &IncomingBatch) -> rusqlite::Result<RunEntry> {
    let boot_id = u64_to_sql(batch.boot_id);
    let found = tx
        .prepare_cached(
            "SELECT run_id, high_seq, gaps, last_seen_unix_ms FROM agent_runs
             WHERE agent_id = ?1 AND boot_id = ?2",
        )?
        .query_row(params![batch.agent_id, boot_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .optional()?;
    if let Some((run_id, high_seq, gaps, last_seen_unix_ms)) = found {
        let high_seq = schema::u64_from_sql(high_seq);
        let seqs = SeqSet::decode(high_seq, &gaps).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Blob,
                format!("agent_runs row {run_id}: invalid gaps blob").into(),
            )
        })?;
        return Ok(RunEntry {
            run_id,
            seqs,
            last_seen_unix_ms,
            last_used: Instant::now(),
        });
    }
    let run_id = tx
        .prepare_cached(
            "INSERT INTO agent_runs (agent_id, boot_id, high_seq, gaps, first_seen_unix_ms,
                 last_seen_unix_ms)
             VALUES (?1, ?2, 0, x'', ?3, ?3)
             RETURNING run_id",
        )?
        .query_row(
            params![batch.agent_id, boot_id, batch.received_unix_ms],
            |r| r.get(0),
        )?;
    Ok(RunEntry {
        run_id,
        seqs: SeqSet::default(),
        last_seen_unix_ms: batch.received_unix_ms,
        last_used: Instant::now(),
    })
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
            "DELETE FROM samples WHERE host_id = ?1 AND time_unix_ms <
                 coalesce((SELECT time_unix_ms FROM samples
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
        if next.is_none() {
            // The pass is complete: forget runs not seen within the
            // retention (their samples are gone or going).
            tx.prepare_cached(
                "DELETE FROM agent_runs WHERE run_id IN (SELECT run_id FROM agent_runs
                     WHERE last_seen_unix_ms < ?1 LIMIT ?2)",
            )?
            .execute(params![cutoff, RETENTION_RUNS_PER_STEP])?;
        }
    }
    tx.commit()?;
    Ok((next, deleted))
}
