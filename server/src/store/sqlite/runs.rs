//! The dedup state of agent runs as the writer holds it: a cache of
//! [`RunEntry`] by (agent_id, boot_id) ([`RunCache`]), loaded from
//! `agent_runs` on a miss, and the SQL that reads, creates and folds those
//! rows.
//!
//! The `agent_runs` row of a run lags behind its cached entry until the
//! hosts of its batches are merged: the seqs stored since are in `journal`
//! rows (see `journal.rs`). An entry that unmerged journal rows name must
//! never leave the cache, or the next miss would reload a row that forgot
//! batches and take their re-sends for new ones.

use std::collections::HashMap;
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::dedup::SeqSet;
use crate::store::encoding::{u64_from_sql, u64_to_sql};
use crate::store::records::IncomingBatch;

/// A run's identity: (agent_id, boot_id).
pub(crate) type RunKey = (String, u64);

/// The dedup state of one agent run, as cached and staged.
#[derive(Clone, Debug)]
pub(crate) struct RunEntry {
    pub(crate) run_id: i64,
    pub(crate) seqs: SeqSet,
    /// Server time of the latest stored batch, ms since the Unix epoch.
    pub(crate) last_seen_unix_ms: i64,
    /// When a flush last used the entry (for evicting idle runs).
    pub(crate) last_used: Instant,
}

impl RunEntry {
    /// Marks `seq` (of a batch received at `received_unix_ms`) stored;
    /// false when it already was.
    pub(crate) fn store(&mut self, seq: u64, received_unix_ms: i64) -> bool {
        if !self.seqs.insert(seq) {
            return false;
        }
        self.last_seen_unix_ms = self.last_seen_unix_ms.max(received_unix_ms);
        true
    }
}

/// The writer's cache of run states: by key for batches, by id for the
/// journal rows that name runs. Bounded by the runs seen within the last
/// hour plus those unmerged journal rows name (see the retention pass).
#[derive(Debug, Default)]
pub(crate) struct RunCache {
    by_key: HashMap<RunKey, RunEntry>,
    /// run_id → key of every entry of `by_key`.
    keys: HashMap<i64, RunKey>,
}

impl RunCache {
    pub(crate) fn get(&self, key: &RunKey) -> Option<&RunEntry> {
        self.by_key.get(key)
    }

    pub(crate) fn get_mut(&mut self, key: &RunKey) -> Option<&mut RunEntry> {
        self.by_key.get_mut(key)
    }

    pub(crate) fn by_id(&self, run_id: i64) -> Option<&RunEntry> {
        self.keys.get(&run_id).and_then(|k| self.by_key.get(k))
    }

    /// Caches `entry` under `key`, replacing what was there.
    pub(crate) fn insert(&mut self, key: RunKey, entry: RunEntry) {
        self.keys.insert(entry.run_id, key.clone());
        self.by_key.insert(key, entry);
    }

    /// Caches `entry` under `key` unless the key is cached already.
    pub(crate) fn insert_if_absent(&mut self, key: RunKey, entry: RunEntry) {
        if !self.by_key.contains_key(&key) {
            self.insert(key, entry);
        }
    }

    pub(crate) fn remove_id(&mut self, run_id: i64) {
        if let Some(key) = self.keys.remove(&run_id) {
            self.by_key.remove(&key);
        }
    }

    /// Keeps only the entries `keep` says yes to.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&RunEntry) -> bool) {
        let keys = &mut self.keys;
        self.by_key.retain(|_, r| {
            let kept = keep(r);
            if !kept {
                keys.remove(&r.run_id);
            }
            kept
        });
    }
}

fn invalid_gaps(run_id: i64) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        2,
        rusqlite::types::Type::Blob,
        format!("agent_runs row {run_id}: invalid gaps blob").into(),
    )
}

/// Reads the columns (run_id, high_seq, gaps, last_seen_unix_ms).
fn entry_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunEntry> {
    let run_id: i64 = r.get(0)?;
    let high_seq = u64_from_sql(r.get(1)?);
    let gaps: Vec<u8> = r.get(2)?;
    let seqs = SeqSet::decode(high_seq, &gaps).ok_or_else(|| invalid_gaps(run_id))?;
    Ok(RunEntry {
        run_id,
        seqs,
        last_seen_unix_ms: r.get(3)?,
        last_used: Instant::now(),
    })
}

/// The run of `batch` from `agent_runs`, or a new row for it.
pub(crate) fn load_or_create(tx: &Connection, batch: &IncomingBatch) -> rusqlite::Result<RunEntry> {
    let boot_id = u64_to_sql(batch.boot_id);
    let found = tx
        .prepare_cached(
            "SELECT run_id, high_seq, gaps, last_seen_unix_ms FROM agent_runs
             WHERE agent_id = ?1 AND boot_id = ?2",
        )?
        .query_row(params![batch.agent_id, boot_id], entry_of)
        .optional()?;
    if let Some(entry) = found {
        return Ok(entry);
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

/// The run stored under `run_id`, with its key; `None` if there is no
/// such row.
pub(crate) fn load_by_id(
    conn: &Connection,
    run_id: i64,
) -> rusqlite::Result<Option<(RunKey, RunEntry)>> {
    conn.prepare_cached(
        "SELECT run_id, high_seq, gaps, last_seen_unix_ms, agent_id, boot_id FROM agent_runs
         WHERE run_id = ?1",
    )?
    .query_row([run_id], |r| {
        let key = (r.get::<_, String>(4)?, u64_from_sql(r.get(5)?));
        Ok((key, entry_of(r)?))
    })
    .optional()
}

/// Writes a run's state into its `agent_runs` row (part of a merge).
pub(crate) fn write(tx: &Connection, run: &RunEntry) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE agent_runs SET high_seq = ?2, gaps = ?3, last_seen_unix_ms = ?4
         WHERE run_id = ?1",
    )?
    .execute(params![
        run.run_id,
        u64_to_sql(run.seqs.high_seq()),
        run.seqs.encode_gaps(),
        run.last_seen_unix_ms,
    ])?;
    Ok(())
}
