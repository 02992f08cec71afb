//! Forwarding what the store durably stored, in commit order: the journal
//! read after a cursor ([`read_after`]) and the cursors of the forwarding
//! destinations (`forward_cursors`: remote-write receivers), which hold
//! journal rows back from deletion until every destination passed them.
//!
//! Why the journal: it is every stored batch, appended in commit order with
//! an id that never goes back (AUTOINCREMENT), so "everything after id N"
//! is exactly what a destination has not had yet, across restarts. The
//! writer deletes journal rows only below every cursor (see
//! `writer/merges.rs`); the forwarder keeps its cursor within its maximum
//! lag, so a destination that is down holds at most that much journal.
//!
//! This module must never skip or repeat a row for a cursor: rows are read
//! in id order, whole, and a cursor only moves forward.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::feed;
use crate::store::records::{CursorRecord, ForwardBatch};

/// Journal rows read after `after` (up to `until`, if given), oldest
/// first, as many whole rows as fit in `max_samples` samples (at least one
/// row). Rows of schema 2 (no ticks blob: their ticks went to `ticks`
/// directly) are passed over.
pub(crate) fn read_after(
    conn: &Connection,
    (after, until): (i64, Option<i64>),
    max_samples: usize,
) -> rusqlite::Result<ForwardBatch> {
    let newest: i64 = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'journal'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let mut gather = feed::Gather::new(after, newest, max_samples);
    let mut stmt = conn.prepare_cached(
        "SELECT j.journal_id, h.hostname, j.received_unix_ms, j.ticks
         FROM journal j JOIN hosts h ON h.host_id = j.host_id
         WHERE j.journal_id > ?1 AND j.journal_id <= ?3 ORDER BY j.journal_id LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![
        after,
        gather.row_limit(),
        until.unwrap_or(i64::MAX)
    ])?;
    while let Some(r) = rows.next()? {
        let journal_id: i64 = r.get(0)?;
        let Some(blob) = r.get::<_, Option<Vec<u8>>>(3)? else {
            gather.pass_over(journal_id);
            continue;
        };
        let row = feed::forward_row(journal_id, r.get(1)?, r.get(2)?, &blob).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                3,
                rusqlite::types::Type::Blob,
                format!("journal row {journal_id}: invalid ticks blob").into(),
            )
        })?;
        if !gather.push(row) {
            break;
        }
    }
    Ok(gather.finish())
}

/// Every cursor in the file.
pub(crate) fn load(conn: &Connection) -> rusqlite::Result<HashMap<String, i64>> {
    let mut stmt = conn.prepare("SELECT destination, journal_id FROM forward_cursors")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Makes `destinations` the only cursors (inside a flush's transaction):
/// deletes the others, starts missing ones at `start` (everything after it
/// is still in the journal). Returns the cursors as they are now.
pub(crate) fn register(
    tx: &Connection,
    current: &HashMap<String, i64>,
    destinations: &[String],
    start: i64,
    now_unix_ms: i64,
) -> rusqlite::Result<Vec<CursorRecord>> {
    for old in current.keys() {
        if !destinations.contains(old) {
            tx.prepare_cached("DELETE FROM forward_cursors WHERE destination = ?1")?
                .execute([old])?;
        }
    }
    let mut out = Vec::with_capacity(destinations.len());
    for d in destinations {
        let (journal_id, sending_through) = match current.get(d) {
            Some(&id) => {
                let sending: i64 = tx
                    .prepare_cached(
                        "SELECT sending_through FROM forward_cursors WHERE destination = ?1",
                    )?
                    .query_row([d], |r| r.get(0))?;
                (id, sending)
            }
            None => {
                set(tx, d, start, now_unix_ms)?;
                (start, 0)
            }
        };
        out.push(CursorRecord {
            destination: d.clone(),
            journal_id,
            sending_through,
        });
    }
    Ok(out)
}

/// Notes a request in flight (inside a flush's transaction).
pub(crate) fn set_sending(
    tx: &Connection,
    destination: &str,
    through: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE forward_cursors SET sending_through = ?2 WHERE destination = ?1")?
        .execute(params![destination, through])?;
    Ok(())
}

/// Stores a cursor, no request in flight (inside a flush's transaction).
pub(crate) fn set(
    tx: &Connection,
    destination: &str,
    journal_id: i64,
    now_unix_ms: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO forward_cursors (destination, journal_id, sending_through, updated_unix_ms)
         VALUES (?1, ?2, 0, ?3)
         ON CONFLICT (destination) DO UPDATE SET journal_id = ?2, sending_through = 0,
             updated_unix_ms = ?3",
    )?
    .execute(params![destination, journal_id, now_unix_ms])?;
    Ok(())
}

/// `destination`'s cursor as committed (`None`: not registered).
pub(crate) fn cursor(
    conn: &Connection,
    destination: &str,
) -> rusqlite::Result<Option<CursorRecord>> {
    conn.prepare_cached(
        "SELECT journal_id, sending_through FROM forward_cursors WHERE destination = ?1",
    )?
    .query_row([destination], |r| {
        Ok(CursorRecord {
            destination: destination.to_owned(),
            journal_id: r.get(0)?,
            sending_through: r.get(1)?,
        })
    })
    .optional()
}
