//! One flush: the merges that are due and a group of requests in one
//! IMMEDIATE transaction ([`write`]), then memory brought up to what
//! committed ([`apply`]). A batch is stored whole, or is a duplicate
//! (its seq is stored already, see `dedup.rs`), or is refused whole as a
//! conflict (see `conflicts.rs`). A batch whose seq the run's state can no
//! longer place (its gaps were forgotten) is told apart by its samples:
//! every one already stored with the same value makes it a duplicate,
//! anything new is stored; either way it is counted and logged (at most a
//! line a minute), never dropped in silence.
//!
//! [`write`] reads memory but never changes it: what the flush changes (new
//! hosts, run states, stored batches, merged hosts) is staged and applied
//! only after COMMIT returned, so a failed transaction leaves memory
//! exactly as the file is. Nothing here answers a request.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ops::Range;
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior, params};

use super::commands::{write_command, write_command_result};
use super::conflicts;
use super::memory::Memory;
use super::merges::Merged;
use super::requests::{Answer, Request};
use crate::store::dedup::Seen;
use crate::store::encoding::{metric_id, u64_to_sql};
use crate::store::error::StoreError;
use crate::store::health_rollup::{HEALTH_ROLLUP_MS, minute_of};
use crate::store::records::{CursorRecord, CursorWrite, IncomingBatch, SubmitOutcome};
use crate::store::sqlite::hosts::{BatchMeta, HostEntry};
use crate::store::sqlite::runs::{self, RunCache, RunEntry, RunKey};
use crate::store::sqlite::{forward, journal};
use crate::store::ticks::{self, PendingTick, TickRow};

/// A flush that takes longer is logged at debug level.
const SLOW_FLUSH: Duration = Duration::from_millis(100);

/// The merges a flush carries.
pub(super) struct Plan<'a> {
    /// Hosts to merge: the first of `Merges::order`.
    pub(super) merging: &'a [i64],
    /// Hosts whose closed health minutes to roll up (`Rollups::next`).
    pub(super) rolling: &'a [i64],
    /// Ticks older than this (ms since the Unix epoch) are not merged:
    /// retention would delete them.
    pub(super) retention_cutoff: i64,
}

/// What a flush changed, applied to memory only after COMMIT succeeded.
#[derive(Default)]
pub(super) struct Staged {
    new_host_ids: HashMap<String, i64>,
    new_hosts: Vec<(i64, HostEntry)>,
    runs: HashMap<RunKey, RunEntry>,
    /// host_id → the newest sample time stored so far, this flush included.
    newest: HashMap<i64, i64>,
    merged: Merged,
    /// (host_id, its new rolled edge) of the hosts rolled up.
    rolled: Vec<(i64, i64)>,
    /// The batches stored, in commit order.
    stored: Vec<StoredBatch>,
    /// The ticks of the stored batches, see [`StoredBatch::rows`].
    rows: Vec<TickRow>,
    /// host_id → batches told apart from duplicates by their samples (see
    /// `dedup.rs`), with the last one's (hostname, agent id, seq) for the
    /// log.
    checked_by_value: HashMap<i64, (u64, (String, String, u64))>,
    /// Every forwarding cursor after this flush, if it changed any.
    cursors: Option<HashMap<String, i64>>,
    /// How long COMMIT took.
    pub(super) commit: Duration,
}

impl Staged {
    /// Batches and samples this flush stored.
    pub(super) fn stored_counts(&self) -> (usize, usize) {
        let samples = self
            .rows
            .iter()
            .map(|r| r.values.iter().flatten().count())
            .sum();
        (self.stored.len(), samples)
    }
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

/// Writes one flush in one IMMEDIATE transaction: the merges of `plan`
/// first (they write memory's state, which excludes this flush), then the
/// requests. Returns one answer per request and what to apply to memory,
/// or the error that rolled it all back.
pub(super) fn write(
    conn: &mut Connection,
    memory: &Memory,
    plan: &Plan<'_>,
    requests: &[Request],
) -> rusqlite::Result<(Vec<Answer>, Staged)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut staged = Staged::default();
    let now = Instant::now();
    staged.merged = memory.merges.write(
        &tx,
        plan.merging,
        (&memory.hosts, &memory.runs),
        plan.retention_cutoff,
    )?;
    staged.rolled = memory.rollups.write(&tx, plan.rolling)?;
    let mut answers = Vec::with_capacity(requests.len());
    let mut grouped = Vec::new();
    {
        // Prepared once per flush: a cache lookup per batch costs more than
        // the append it prepares.
        let mut append = tx.prepare_cached(journal::APPEND)?;
        for (index, request) in requests.iter().enumerate() {
            let answer = match request {
                Request::Batch { batch, .. } => Answer::Batch(write_batch(
                    &tx,
                    memory,
                    &mut staged,
                    (&mut append, &mut grouped),
                    (index, batch),
                    now,
                )?),
                Request::Command { record, .. } => {
                    write_command(&tx, record)?;
                    Answer::Done
                }
                Request::CommandResult { record, .. } => match write_command_result(&tx, record)? {
                    true => Answer::Done,
                    false => Answer::Failed(StoreError::UnknownCommand(record.command_id.clone())),
                },
                Request::Trust { write, .. } => Answer::Trust(super::trust::write(
                    &tx,
                    write,
                    monitor::time::now_unix_ms(),
                )?),
                Request::Cursors { write, .. } => {
                    Answer::Cursors(write_cursors(&tx, memory, &mut staged, write)?)
                }
                Request::Close { .. } => Answer::Done,
                #[cfg(test)]
                Request::SetMaxPageCount { pages, .. } => Answer::Pages(tx.query_row(
                    &format!("PRAGMA max_page_count = {pages}"),
                    [],
                    |r| r.get::<_, i64>(0),
                )? as u64),
                #[cfg(test)]
                Request::Abandon { .. } => Answer::Done,
            };
            answers.push(answer);
        }
    }
    let written = now.elapsed();
    tx.commit()?;
    let committed = now.elapsed() - written;
    staged.commit = committed;
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
        staged.merged.hosts.len(),
        staged
            .merged
            .deleted_through
            .map_or(String::new(), |j| format!(", journal deleted through {j}")),
        written.as_micros(),
        committed.as_micros()
    );
    Ok((answers, staged))
}

/// Writes a change of the forwarding cursors; a cursor never moves back.
fn write_cursors(
    tx: &Connection,
    memory: &Memory,
    staged: &mut Staged,
    write: &CursorWrite,
) -> rusqlite::Result<Vec<CursorRecord>> {
    let now_unix_ms = monitor::time::now_unix_ms();
    let cursors = staged.cursors.get_or_insert_with(|| memory.cursors.clone());
    match write {
        CursorWrite::Register(destinations) => {
            let start = memory.merges.deleted_through;
            let out = forward::register(tx, cursors, destinations, start, now_unix_ms)?;
            *cursors = out
                .iter()
                .map(|c| (c.destination.clone(), c.journal_id))
                .collect();
            Ok(out)
        }
        CursorWrite::Set {
            destination,
            journal_id,
        } => {
            let old = cursors.get(destination).copied().unwrap_or(i64::MIN);
            let journal_id = old.max(*journal_id);
            forward::set(tx, destination, journal_id, now_unix_ms)?;
            cursors.insert(destination.clone(), journal_id);
            Ok(vec![CursorRecord {
                destination: destination.clone(),
                journal_id,
                sending_through: 0,
            }])
        }
        CursorWrite::Sending {
            destination,
            through,
        } => {
            forward::set_sending(tx, destination, *through)?;
            Ok(vec![CursorRecord {
                destination: destination.clone(),
                journal_id: cursors.get(destination).copied().unwrap_or(0),
                sending_through: *through,
            }])
        }
    }
}

/// Stores one batch (request `index` of the flush) unless it is a
/// duplicate or a conflict: appends its journal row with `append` and
/// stages what memory learns. `grouped` is a reused buffer.
fn write_batch(
    tx: &Connection,
    memory: &Memory,
    staged: &mut Staged,
    (append, grouped): (&mut rusqlite::Statement<'_>, &mut Vec<TickRow>),
    (index, batch): (usize, &IncomingBatch),
    now: Instant,
) -> rusqlite::Result<SubmitOutcome> {
    // A batch that contradicts itself is refused before anything of it,
    // even its host, is written.
    let dropped = match ticks::group_samples(&batch.samples, |m| metric_id(m) as usize, grouped) {
        Ok(dropped) => dropped,
        Err(conflict) => return Ok(SubmitOutcome::Conflict(conflict)),
    };
    if dropped.not_finite > 0 {
        log::warn!(
            "store: {} {} seq {}: {} samples are not finite numbers; not stored",
            batch.hostname,
            monitor::text::Escaped::capped(&batch.agent_id),
            batch.seq,
            dropped.not_finite
        );
    }
    let host_id = resolve_host(tx, &memory.host_ids, staged, batch)?;
    let run = resolve_run(tx, &memory.runs, &mut staged.runs, batch, now)?;
    let by_value = match run.seqs.seen(batch.seq) {
        Seen::Stored => return Ok(SubmitOutcome::Duplicate),
        Seen::Missing => false,
        Seen::Forgotten => true,
    };
    let newest = staged
        .newest
        .get(&host_id)
        .or_else(|| memory.newest_sample_unix_ms.get(&host_id))
        .copied()
        .unwrap_or(i64::MIN);
    if by_value {
        let counted = staged.checked_by_value.entry(host_id).or_default();
        counted.0 += 1;
        counted.1 = (batch.hostname.clone(), batch.agent_id.clone(), batch.seq);
    }
    // A batch told apart by value is checked whatever its times: its
    // samples already stored must go, so that nothing is stored twice.
    if by_value || grouped.iter().any(|r| r.time_unix_ms <= newest) {
        let earlier: Vec<&TickRow> = staged
            .stored
            .iter()
            .filter(|b| b.host_id == host_id)
            .flat_map(|b| staged.rows.get(b.rows.clone()).unwrap_or_default())
            .collect();
        let checked = conflicts::check(tx, (host_id, newest), grouped, &earlier, &memory.hosts)?;
        if let Err(conflict) = checked {
            return Ok(SubmitOutcome::Conflict(conflict));
        }
    }
    if by_value && grouped.is_empty() {
        // Every sample is stored already: the batch was.
        return Ok(SubmitOutcome::Duplicate);
    }
    run.store(batch.seq, batch.received_unix_ms);
    let run_id = run.run_id;
    let journal_id = journal::append(append, (host_id, run_id), batch, grouped)?;
    crate::store::sqlite::health::insert(tx, host_id, &batch.health)?;
    if !batch.health.is_empty() {
        reroll_late_minutes(tx, memory, staged, host_id, batch)?;
    }
    if let Some(t) = grouped.iter().map(|r| r.time_unix_ms).max() {
        staged.newest.insert(host_id, newest.max(t));
    }
    let start = staged.rows.len();
    staged.rows.extend_from_slice(grouped);
    staged.stored.push(StoredBatch {
        request: index,
        host_id,
        run_id,
        journal_id,
        rows: start..staged.rows.len(),
    });
    Ok(SubmitOutcome::Stored)
}

/// Makes again the rollup rows of the minutes below the host's rolled
/// edge that `batch` stored health values in (a late batch, an agent's
/// clock stepped back): the rollup must sum every raw value of a rolled
/// minute (see `rollups.rs`).
fn reroll_late_minutes(
    tx: &Connection,
    memory: &Memory,
    staged: &Staged,
    host_id: i64,
    batch: &IncomingBatch,
) -> rusqlite::Result<()> {
    let edge = staged
        .rolled
        .iter()
        .find(|(h, _)| *h == host_id)
        .map(|(_, e)| *e)
        .or_else(|| memory.rollups.rolled_until(host_id));
    let Some(edge) = edge else {
        return Ok(());
    };
    let mut minutes: Vec<i64> = batch
        .health
        .iter()
        .filter(|v| v.time_unix_ms < edge)
        .map(|v| minute_of(v.time_unix_ms))
        .collect();
    minutes.sort_unstable();
    minutes.dedup();
    for m in minutes {
        crate::store::sqlite::health::roll(tx, host_id, (m, m + HEALTH_ROLLUP_MS))?;
    }
    Ok(())
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
    runs: &RunCache,
    staged_runs: &'s mut HashMap<RunKey, RunEntry>,
    batch: &IncomingBatch,
    now: Instant,
) -> rusqlite::Result<&'s mut RunEntry> {
    let key = (batch.agent_id.clone(), batch.boot_id);
    let slot = match staged_runs.entry(key) {
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

/// Brings memory up to a flush of `requests` that committed at `now`.
pub(super) fn apply(memory: &mut Memory, requests: &[Request], staged: Staged, now: Instant) {
    let merges = &mut memory.merges;
    if let Some(cursors) = staged.cursors {
        merges.forward_hold = cursors.values().copied().min();
        memory.cursors = cursors;
    }
    let mut hosts = memory.hosts.lock();
    for &(host_id, through) in &staged.merged.hosts {
        if let Some(h) = hosts.get_mut(&host_id) {
            let before = h.pending.len();
            h.pending.retain(|p| p.journal_id > through);
            merges.pending_ticks -= (before - h.pending.len()).min(merges.pending_ticks);
            h.merged_journal_id = through;
        }
        merges.done(host_id);
    }
    if let Some(through) = staged.merged.deleted_through {
        merges.deleted_through = through;
    }
    memory.rollups.done(&staged.rolled);
    for (id, entry) in staged.new_hosts {
        memory.host_ids.insert(entry.hostname.clone(), id);
        hosts.insert(id, entry);
    }
    for stored in &staged.stored {
        let Some(Request::Batch { batch, .. }) = requests.get(stored.request) else {
            continue;
        };
        let rows = staged.rows.get(stored.rows.clone()).unwrap_or_default();
        if let Some(t) = batch.health.iter().map(|v| v.time_unix_ms).max() {
            memory.rollups.note_value(stored.host_id, t);
        }
        if let Some(host) = hosts.get_mut(&stored.host_id) {
            host.count_batch(BatchMeta::of(batch));
            host.note_health(&batch.health);
            host.applied_journal_id = stored.journal_id;
            merges.pending_ticks += rows.len();
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
        merges.enqueue(
            stored.host_id,
            (now, stored.journal_id),
            &[stored.run_id],
            rows.len(),
        );
        merges.last_journal_id = stored.journal_id;
    }
    drop(hosts);
    for (host_id, t) in staged.newest {
        let newest = memory.newest_sample_unix_ms.entry(host_id).or_insert(t);
        *newest = (*newest).max(t);
    }
    for (key, run) in staged.runs {
        memory.runs.insert(key, run);
    }
    let mut hosts = memory.hosts.lock();
    for (host_id, (n, (hostname, agent_id, seq))) in staged.checked_by_value {
        let Some(host) = hosts.get_mut(&host_id) else {
            continue;
        };
        host.batches_checked_by_value_total = host.batches_checked_by_value_total.saturating_add(n);
        if let Some(left_out) = memory.checked_by_value_log.hit(now) {
            // Without TLS the agent id is the batch's field: shown escaped.
            let agent_id = monitor::text::Escaped::capped(&agent_id);
            log::warn!(
                "store: {hostname} (agent {agent_id}) batch {seq}: its run left more than {} \
                 separate gaps, so the store no longer knows whether this seq is stored; \
                 compared its samples with the stored ones instead ({} such batches of this \
                 host so far; {left_out} of all hosts since the last such line)",
                crate::store::dedup::MAX_GAPS,
                host.batches_checked_by_value_total
            );
        }
    }
}
