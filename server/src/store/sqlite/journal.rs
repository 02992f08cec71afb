//! The journal: what a flush writes. Each stored batch is one appended row
//! holding its ticks and what it changes in its host's and its run's rows;
//! the writer later merges a host's journal rows into `ticks`, `hosts` and
//! `agent_runs` in one go, and deletes journal rows once every host has
//! merged past them.
//!
//! Why: written directly, a batch dirtied four to five pages scattered over
//! the file (its host's newest leaf of `ticks`, often a split, its `hosts`
//! row, its `agent_runs` row), each written whole to the WAL at every commit
//! and copied back at every checkpoint. Journal rows are appended to the
//! last page of a rowid table: a flush of 200 batches dirties about twenty
//! journal pages, and a merge rewrites a host's pages once for all the
//! batches it gathered (`merge_interval`, 30 s by default).
//!
//! Invariants, after every commit:
//! - A host's `hosts` row includes exactly the journal rows of that host up
//!   to its `merged_journal_id`, and `ticks` holds their ticks.
//! - A journal row is deleted only once its host merged past it, which
//!   wrote its ticks, its host's row and its run's `agent_runs` row (the
//!   run's state at that time, which includes the row's seq).
//! - Replaying the journal over the tables (rows above their host's
//!   `merged_journal_id`; every row's seq, which is idempotent) gives
//!   exactly the state the writer held in memory: [`replay`] does that at
//!   open after a crash.
//!
//! Nothing here may apply a journal row to a host twice or drop one.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::hosts::{BatchMeta, HostEntry};
use super::runs::{self, RunCache, RunEntry, RunKey};
use crate::store::encoding::{u64_from_sql, u64_to_sql};
use crate::store::records::IncomingBatch;
use crate::store::ticks::{self, PendingTick, TickRow};

/// Appends the journal row of a stored batch; prepared once per flush.
pub(crate) const APPEND: &str = "INSERT INTO journal (host_id, run_id, seq, received_unix_ms,
         clock_offset_ms, dropped_batches_total, agent_version, peer, ticks)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// Appends the journal row of a stored batch whose ticks are `rows`
/// (inside the flush's transaction) with the statement prepared from
/// [`APPEND`]. Returns the row's journal id.
pub(crate) fn append(
    append: &mut rusqlite::Statement<'_>,
    (host_id, run_id): (i64, i64),
    batch: &IncomingBatch,
    rows: &[TickRow],
) -> rusqlite::Result<i64> {
    append.insert(params![
        host_id,
        run_id,
        u64_to_sql(batch.seq),
        batch.received_unix_ms,
        batch.clock_offset_ms,
        u64_to_sql(batch.dropped_batches_total),
        batch.agent_version,
        batch.peer,
        crate::store::journal_record::encode(rows, &batch.health),
    ])
}

/// A host whose journal rows are not all merged, as replay found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unmerged {
    pub(crate) host_id: i64,
    /// Its oldest journal row above its `merged_journal_id`.
    pub(crate) first_journal_id: i64,
    /// The runs of those rows.
    pub(crate) runs: Vec<i64>,
    /// The ticks of those rows.
    pub(crate) ticks: usize,
}

/// What [`replay`] found.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    /// Journal rows applied to a host (above its `merged_journal_id`).
    pub(crate) rows: u64,
    /// In the order of their first such row.
    pub(crate) unmerged: Vec<Unmerged>,
    /// The oldest journal id, `None` if the journal is empty.
    pub(crate) first_journal_id: Option<i64>,
    /// The newest journal id ever used (0 if none).
    pub(crate) last_journal_id: i64,
}

fn corrupt(journal_id: i64, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        1,
        rusqlite::types::Type::Integer,
        format!("journal row {journal_id}: {what}").into(),
    )
}

/// Applies the journal, in order, to `hosts` (loaded from the `hosts`
/// table) and `runs` (loaded from `agent_runs` as the rows name them):
/// every row's seq to its run, and rows above their host's
/// `merged_journal_id` to the host (counters, pending ticks).
pub(crate) fn replay(
    conn: &Connection,
    hosts: &mut HashMap<i64, HostEntry>,
    runs: &mut RunCache,
) -> rusqlite::Result<Replayed> {
    let mut out = Replayed::default();
    let mut keys: HashMap<i64, RunKey> = HashMap::new();
    let mut index: HashMap<i64, usize> = HashMap::new();
    // AUTOINCREMENT remembers the newest id even when the journal is empty.
    out.last_journal_id = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'journal'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let mut stmt = conn.prepare(
        "SELECT journal_id, host_id, run_id, seq, received_unix_ms, clock_offset_ms,
             dropped_batches_total, agent_version, peer, ticks
         FROM journal ORDER BY journal_id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let journal_id: i64 = r.get(0)?;
        out.first_journal_id.get_or_insert(journal_id);
        out.last_journal_id = out.last_journal_id.max(journal_id);
        let host_id: i64 = r.get(1)?;
        let run_id: i64 = r.get(2)?;
        let key = match keys.get(&run_id) {
            Some(k) => k.clone(),
            None => {
                let Some((key, entry)) = runs::load_by_id(conn, run_id)? else {
                    let what = format!("names run {run_id}, which agent_runs lacks");
                    return Err(corrupt(journal_id, what));
                };
                keys.insert(run_id, key.clone());
                runs.insert_if_absent(key.clone(), entry);
                key
            }
        };
        let received_unix_ms: i64 = r.get(4)?;
        if let Some(run) = runs.get_mut(&key) {
            // Already in the run's row if its host merged past this row;
            // storing a seq twice changes nothing.
            run.store(u64_from_sql(r.get(3)?), received_unix_ms);
        }
        let Some(host) = hosts.get_mut(&host_id) else {
            return Err(corrupt(
                journal_id,
                format!("names host {host_id}, which hosts lacks"),
            ));
        };
        if journal_id <= host.merged_journal_id {
            continue;
        }
        let agent_version: String = r.get(7)?;
        let peer: String = r.get(8)?;
        host.count_batch(BatchMeta {
            agent_id: &key.0,
            agent_version: &agent_version,
            peer: &peer,
            received_unix_ms,
            clock_offset_ms: r.get(5)?,
            dropped_batches_total: u64_from_sql(r.get(6)?),
        });
        host.applied_journal_id = journal_id;
        let pending_before = host.pending.len();
        // NULL: a schema 2 row, whose ticks are in `ticks` already.
        if let Some(blob) = r.get::<_, Option<Vec<u8>>>(9)? {
            // The health values are in `health` already (written in the
            // same transaction), which the load reads.
            let rows = crate::store::journal_record::decode(&blob)
                .ok_or_else(|| corrupt(journal_id, "invalid ticks blob".into()))?
                .ticks;
            for row in rows {
                host.note_values(run_id, &row);
                host.pending.push(PendingTick {
                    journal_id,
                    run_id,
                    received_unix_ms,
                    row,
                });
            }
        }
        let ticks = host.pending.len() - pending_before;
        let i = *index.entry(host_id).or_insert_with(|| {
            out.unmerged.push(Unmerged {
                host_id,
                first_journal_id: journal_id,
                runs: Vec::new(),
                ticks: 0,
            });
            out.unmerged.len() - 1
        });
        if let Some(u) = out.unmerged.get_mut(i) {
            u.ticks += ticks;
            if !u.runs.contains(&run_id) {
                u.runs.push(run_id);
            }
        }
        out.rows += 1;
    }
    Ok(out)
}

/// Counts of what one host's merge wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Merged {
    pub(crate) ticks: usize,
    /// Sample values ignored because `ticks` already had a value for that
    /// (time, metric, run). Conflicts are refused before a batch is
    /// journaled, so only a file written before that can hold such.
    pub(crate) ignored: usize,
}

/// Writes a host's pending ticks into `ticks` (in key order, combining
/// those of one (time, run); none older than `retention_cutoff`, which
/// retention would delete), its state into its `hosts` row with
/// `merged_journal_id` = its `applied_journal_id`, and the state of `runs`
/// into their `agent_runs` rows. Part of a flush's transaction.
pub(crate) fn merge_host(
    tx: &Connection,
    insert_tick: &mut rusqlite::Statement<'_>,
    (host_id, host): (i64, &HostEntry),
    runs: &[&RunEntry],
    retention_cutoff: i64,
) -> rusqlite::Result<Merged> {
    let mut merged = Merged::default();
    let pending = ticks::combine_pending(
        host.pending
            .iter()
            .filter(|p| p.row.time_unix_ms >= retention_cutoff)
            .map(PendingTick::stored)
            .collect(),
    );
    for t in &pending {
        let row = TickRow {
            time_unix_ms: t.time_unix_ms,
            values: t.values,
        };
        let ignored = write_tick(tx, insert_tick, (host_id, t.run_id), t.receive_lag_ms, &row)?;
        merged.ticks += 1;
        merged.ignored += ignored;
    }
    tx.prepare_cached(
        "UPDATE hosts SET agent_id = ?2, agent_version = ?3, peer = ?4,
             last_seen_unix_ms = ?5, clock_offset_ms = ?6, dropped_batches_total = ?7,
             batches_stored_total = ?8, merged_journal_id = ?9
         WHERE host_id = ?1",
    )?
    .execute(params![
        host_id,
        host.agent_id,
        host.agent_version,
        host.peer,
        host.last_seen_unix_ms,
        host.clock_offset_ms,
        u64_to_sql(host.dropped_batches_total),
        u64_to_sql(host.batches_stored_total),
        host.applied_journal_id,
    ])?;
    for run in runs {
        runs::write(tx, run)?;
    }
    Ok(merged)
}

/// Inserts a row of `ticks`, unless the run already has one at that time.
pub(crate) const INSERT_TICK: &str = "INSERT INTO ticks (host_id, time_unix_ms, run_id,
         receive_lag_ms, cpu_percent, mem_percent, disk_read_kbps, disk_write_kbps,
         net_in_kbps, net_out_kbps)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
     ON CONFLICT (host_id, time_unix_ms, run_id) DO NOTHING";

/// Inserts one row; if the run already has a row at that time (an earlier
/// batch of the run with other metrics of that tick), fills only the
/// metrics it lacks. Returns how many values were ignored (none, unless
/// the file predates refusing conflicts).
fn write_tick(
    tx: &Connection,
    insert_tick: &mut rusqlite::Statement<'_>,
    (host_id, run_id): (i64, i64),
    receive_lag_ms: i64,
    row: &TickRow,
) -> rusqlite::Result<usize> {
    let v = row.values;
    let inserted = insert_tick.execute(params![
        host_id,
        row.time_unix_ms,
        run_id,
        receive_lag_ms,
        v[0],
        v[1],
        v[2],
        v[3],
        v[4],
        v[5]
    ])?;
    if inserted == 1 {
        return Ok(0);
    }
    let key = params![host_id, row.time_unix_ms, run_id];
    let mut existing = [None; ticks::METRICS];
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
    Ok(filled.ignored)
}

/// Deletes the journal rows up to `journal_id` (every host merged past
/// them). Rows are deleted from the front of the table: whole pages free.
pub(crate) fn delete_through(tx: &Connection, journal_id: i64) -> rusqlite::Result<usize> {
    tx.prepare_cached("DELETE FROM journal WHERE journal_id <= ?1")?
        .execute([journal_id])
}
