//! Brings a database file up to the current schema at open: creates the
//! tables of a new file, converts older files in place.
//!
//! Every upgrade runs in one IMMEDIATE transaction with the version bump, so
//! a crash (or a full disk) mid-way leaves the file exactly as it was, and
//! the next open simply starts over. This module must never lose a stored
//! sample or a dedup state, and never run on a file newer than this server
//! (`schema.rs` refuses those before calling it).

use std::path::Path;
use std::time::Instant;

use rusqlite::{Connection, params};

use super::error::SqliteError;
use super::tables::{CREATE_TABLES, SCHEMA_VERSION};
use crate::store::encoding::{metric_from_id, metric_id};
use crate::store::ticks::METRICS;

/// Upgrades the file from `version` (0 for a new file) to
/// [`SCHEMA_VERSION`].
pub(crate) fn upgrade(conn: &Connection, path: &Path, version: i64) -> Result<(), SqliteError> {
    let during = "upgrading the database schema";
    let started = Instant::now();
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| SqliteError::sql(during, e))?;
    let result = (|| {
        if version == 1 {
            log::info!(
                "store: converting {} from schema 1 (one row per sample) to {SCHEMA_VERSION} \
                 (one row per tick); this runs once and may take a while on a large file",
                path.display()
            );
        }
        if version == 1 || version == 2 {
            conn.execute_batch(
                "ALTER TABLE hosts ADD COLUMN merged_journal_id INTEGER NOT NULL DEFAULT 0",
            )?;
        }
        if (1..=3).contains(&version) {
            // Schema 4: who ran each command (older rows: nobody known).
            conn.execute_batch(
                "ALTER TABLE commands ADD COLUMN operator TEXT NOT NULL DEFAULT ''",
            )?;
        }
        if version == 2 {
            // Schema 2's journal rows carry no ticks (they were written to
            // `ticks` at once): kept with NULL ticks, replayed for the
            // hosts' and runs' rows only.
            conn.execute_batch("ALTER TABLE journal RENAME TO journal_2")?;
        }
        // New tables of later schemas (4: trust, 5: operator keys, 6:
        // forwarding cursors, 7: health values) need nothing but their
        // CREATE.
        // Schema 8 only adds `health_minutes`: an older file's health values
        // are read raw until the writer has rolled them up, oldest first,
        // a bounded number of minutes per flush (see `writer/rollups.rs`).
        conn.execute_batch(CREATE_TABLES)?;
        if version == 2 {
            conn.execute_batch(
                "INSERT INTO journal (journal_id, host_id, run_id, seq, received_unix_ms,
                     clock_offset_ms, dropped_batches_total, agent_version, peer, ticks)
                 SELECT journal_id, host_id, run_id, seq, received_unix_ms, clock_offset_ms,
                     dropped_batches_total, agent_version, peer, NULL
                 FROM journal_2;
                 DROP TABLE journal_2;",
            )?;
        }
        if version == 1 {
            let ticks = samples_to_ticks(conn)?;
            conn.execute_batch(
                "DROP TABLE samples;
                 DROP INDEX IF EXISTS agent_runs_by_last_seen;",
            )?;
            log::info!(
                "store: converted {ticks} ticks of {} in {:.1} s",
                path.display(),
                started.elapsed().as_secs_f64()
            );
        }
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"))
    })();
    if let Err(e) = result {
        // Nothing of the upgrade stays; the file is as it was.
        let _ = conn.execute_batch("ROLLBACK");
        return Err(SqliteError::sql(during, e));
    }
    Ok(())
}

/// One tick being rebuilt from schema 1's sample rows.
struct Pending {
    run_id: i64,
    receive_lag_ms: i64,
    values: [Option<f64>; METRICS],
}

/// Schema 1 → 2: copies `samples` (one row per sample, keyed by (host,
/// time, metric, run)) into `ticks` (one row per (host, time, run)). Reads
/// in key order, so each (host, time) is one run of consecutive rows and
/// memory stays bounded by one tick. Returns the rows written.
fn samples_to_ticks(conn: &Connection) -> rusqlite::Result<u64> {
    let mut read = conn.prepare(
        "SELECT host_id, time_unix_ms, metric_id, run_id, value, receive_lag_ms FROM samples
         ORDER BY host_id, time_unix_ms, metric_id, run_id",
    )?;
    let mut insert = conn.prepare(
        "INSERT INTO ticks (host_id, time_unix_ms, run_id, receive_lag_ms, cpu_percent,
             mem_percent, disk_read_kbps, disk_write_kbps, net_in_kbps, net_out_kbps)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    let mut written = 0u64;
    let mut key: Option<(i64, i64)> = None;
    let mut group: Vec<Pending> = Vec::new();
    let mut write = |key: (i64, i64), group: &mut Vec<Pending>| -> rusqlite::Result<()> {
        group.sort_by_key(|p| p.run_id);
        for p in group.drain(..) {
            let v = p.values;
            insert.execute(params![
                key.0,
                key.1,
                p.run_id,
                p.receive_lag_ms,
                v[0],
                v[1],
                v[2],
                v[3],
                v[4],
                v[5]
            ])?;
            written += 1;
        }
        Ok(())
    };
    let mut rows = read.query([])?;
    while let Some(r) = rows.next()? {
        let this = (r.get::<_, i64>(0)?, r.get::<_, i64>(1)?);
        if let Some(k) = key
            && k != this
        {
            write(k, &mut group)?;
        }
        key = Some(this);
        let id: i64 = r.get(2)?;
        let metric = metric_from_id(id).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Integer,
                format!("unknown metric id {id} in samples").into(),
            )
        })?;
        let run_id: i64 = r.get(3)?;
        let value: f64 = r.get(4)?;
        let lag: i64 = r.get(5)?;
        let i = match group.iter().position(|p| p.run_id == run_id) {
            Some(i) => i,
            None => {
                group.push(Pending {
                    run_id,
                    receive_lag_ms: lag,
                    values: [None; METRICS],
                });
                group.len() - 1
            }
        };
        let p = &mut group[i];
        p.receive_lag_ms = p.receive_lag_ms.min(lag);
        // The key made (time, metric, run) unique: no slot is filled twice.
        p.values[metric_id(metric) as usize] = Some(value);
    }
    if let Some(k) = key {
        write(k, &mut group)?;
    }
    Ok(written)
}
