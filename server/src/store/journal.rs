//! The journal: one small appended row per stored batch, in the batch's own
//! transaction, instead of updating the host's `hosts` row and the run's
//! `agent_runs` row with every batch; and the fold that writes the state the
//! writer holds in memory into those tables every few seconds and empties
//! the journal, in one transaction.
//!
//! Why: `hosts` and `agent_runs` rows of 10,000 hosts are spread over about
//! 2,000 pages, so updating them per batch dirtied two to three pages per
//! batch on top of the samples' page; each dirty page is written whole to
//! the WAL at every commit. Journal rows are appended to the last page of a
//! rowid table: a flush of 200 batches dirties about five journal pages.
//! A fold rewrites each changed `hosts`/`agent_runs` row once per fold
//! instead of once per batch.
//!
//! Invariant, after every commit: the `hosts` and `agent_runs` rows plus the
//! journal rows (applied in `journal_id` order) give exactly the state of
//! every committed batch, which is also what the writer holds in memory. At
//! open, [`replay`] rebuilds that memory state from the file after a crash.
//! A journal row must never be deleted except by the fold that wrote its
//! effect into `hosts` and `agent_runs` in the same transaction.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, TransactionBehavior, params};

use super::IncomingBatch;
use super::hosts::{BatchMeta, HostEntry};
use super::runs::{self, RunEntry, RunKey};
use super::schema::{u64_from_sql, u64_to_sql};

/// Appends the journal row of a stored batch; prepared once per flush.
pub(crate) const APPEND: &str = "INSERT INTO journal (host_id, run_id, seq, received_unix_ms,
         clock_offset_ms, dropped_batches_total, agent_version, peer)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// Appends the journal row of a stored batch (inside the flush's
/// transaction) with the statement prepared from [`APPEND`].
pub(crate) fn append(
    append: &mut rusqlite::Statement<'_>,
    host_id: i64,
    run_id: i64,
    batch: &IncomingBatch,
) -> rusqlite::Result<()> {
    append.execute(params![
        host_id,
        run_id,
        u64_to_sql(batch.seq),
        batch.received_unix_ms,
        batch.clock_offset_ms,
        u64_to_sql(batch.dropped_batches_total),
        batch.agent_version,
        batch.peer,
    ])?;
    Ok(())
}

/// The state rebuilt at open.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    /// Journal rows applied.
    pub(crate) rows: u64,
    /// Hosts the journal changed (their `hosts` rows are behind).
    pub(crate) dirty_hosts: HashSet<i64>,
}

fn corrupt(journal_id: i64, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        1,
        rusqlite::types::Type::Integer,
        format!("journal row {journal_id}: {what}").into(),
    )
}

/// Applies every journal row, in order, to `hosts` (loaded from the `hosts`
/// table) and `runs` (loaded from `agent_runs` as the rows name them).
pub(crate) fn replay(
    conn: &Connection,
    hosts: &mut HashMap<i64, HostEntry>,
    runs: &mut HashMap<RunKey, RunEntry>,
) -> rusqlite::Result<Replayed> {
    let mut out = Replayed::default();
    let mut keys: HashMap<i64, RunKey> = HashMap::new();
    let mut stmt = conn.prepare(
        "SELECT journal_id, host_id, run_id, seq, received_unix_ms, clock_offset_ms,
             dropped_batches_total, agent_version, peer
         FROM journal ORDER BY journal_id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let journal_id: i64 = r.get(0)?;
        let host_id: i64 = r.get(1)?;
        let run_id: i64 = r.get(2)?;
        let key = match keys.get(&run_id) {
            Some(k) => k.clone(),
            None => {
                let Some((key, entry)) = runs::load_by_id(conn, run_id)? else {
                    return Err(corrupt(
                        journal_id,
                        format!("names run {run_id}, which agent_runs lacks"),
                    ));
                };
                keys.insert(run_id, key.clone());
                runs.entry(key.clone()).or_insert(entry);
                key
            }
        };
        let received_unix_ms: i64 = r.get(4)?;
        if let Some(run) = runs.get_mut(&key) {
            // Each journal row is one batch stored once, after the fold
            // that wrote the run's row: its seq is new to the entry.
            run.store(u64_from_sql(r.get(3)?), received_unix_ms);
            run.dirty = true;
        }
        let Some(host) = hosts.get_mut(&host_id) else {
            return Err(corrupt(
                journal_id,
                format!("names host {host_id}, which hosts lacks"),
            ));
        };
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
        out.dirty_hosts.insert(host_id);
        out.rows += 1;
    }
    Ok(out)
}

/// Writes every dirty host and run into its row, empties the journal, and
/// (when a retention pass asked for it) deletes runs not seen since
/// `prune_runs_before`, all in one transaction. The caller clears its dirty
/// marks only if this returns `Ok`. Returns the runs deleted.
pub(crate) fn fold(
    conn: &mut Connection,
    hosts: &HashMap<i64, HostEntry>,
    dirty_hosts: &HashSet<i64>,
    runs: &HashMap<RunKey, RunEntry>,
    prune_runs_before: Option<(i64, i64)>,
) -> rusqlite::Result<usize> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut update_host = tx.prepare_cached(
            "UPDATE hosts SET agent_id = ?2, agent_version = ?3, peer = ?4,
                 last_seen_unix_ms = ?5, clock_offset_ms = ?6, dropped_batches_total = ?7,
                 batches_stored_total = ?8
             WHERE host_id = ?1",
        )?;
        // In host id order: neighbouring rows share pages.
        let mut ids: Vec<i64> = dirty_hosts.iter().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(h) = hosts.get(&id) else { continue };
            update_host.execute(params![
                id,
                h.agent_id,
                h.agent_version,
                h.peer,
                h.last_seen_unix_ms,
                h.clock_offset_ms,
                u64_to_sql(h.dropped_batches_total),
                u64_to_sql(h.batches_stored_total),
            ])?;
        }
        let mut dirty: Vec<&RunEntry> = runs.values().filter(|r| r.dirty).collect();
        dirty.sort_unstable_by_key(|r| r.run_id);
        for run in dirty {
            runs::write(&tx, run)?;
        }
    }
    // Without a WHERE clause SQLite frees the table's pages wholesale.
    tx.execute("DELETE FROM journal", [])?;
    let pruned = match prune_runs_before {
        Some((cutoff, limit)) => runs::prune(&tx, cutoff, limit)?,
        None => 0,
    };
    tx.commit()?;
    Ok(pruned)
}
