//! The health metrics of issue 14 in the file: the `health` table's rows
//! (one per value, keyed by host, time, metric and device), written in the
//! flush that stores their batch, read by queries and (each host's newest,
//! at open) by the host table's latest values, pruned by retention. The
//! journal row of their batch carries them too (`store/journal_record.rs`),
//! for remote-write.
//!
//! Kept apart from `ticks` on purpose: the six keep their packed,
//! journalled layout (what the server's capacity rests on), and the health
//! values, a few per batch from the agents that send them, are plain rows
//! written at once (the journal's copy is only read by the forwarder, never
//! merged). A batch's health rows are written only when the batch itself is
//! stored (never for a duplicate or a refused one); a value already stored
//! under the same key is kept (`INSERT OR IGNORE`: a re-send after a lost
//! ack writes nothing twice). Must never be written outside the flush's
//! transaction.

use std::collections::HashMap;

use rusqlite::{Connection, params};

use crate::store::health_series::HealthDownsampler;
use crate::store::records::{HealthQuery, HealthRow, SeriesQuery, StoredHealth};
use crate::store::sqlite::hosts::HostEntry;

/// How many of a host's newest health rows are read at open for its latest
/// values: a (metric, device) pair not among them shows no latest value
/// until the host sends it again (four full batches' worth).
const LATEST_SCAN_ROWS: i64 = 4 * crate::store::MAX_HEALTH_SERIES_PER_HOST as i64;

/// Writes a stored batch's health values for `host_id`.
pub(crate) fn insert(
    tx: &Connection,
    host_id: i64,
    values: &[StoredHealth],
) -> rusqlite::Result<()> {
    if values.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO health (host_id, time_unix_ms, metric, device, value)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for v in values {
        stmt.execute(params![
            host_id,
            v.time_unix_ms,
            v.metric.name(),
            v.device,
            v.value
        ])?;
    }
    Ok(())
}

/// The values of one health metric of `host_id` (named `q.hostname`), in
/// time order then device order, up to `q.limit`. A metric name in the
/// file that this build does not know cannot match `q.metric`, so it is
/// never misread.
pub(crate) fn query(
    conn: &Connection,
    host_id: i64,
    q: &HealthQuery,
) -> rusqlite::Result<Vec<HealthRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT time_unix_ms, device, value FROM health
         WHERE host_id = ?1 AND time_unix_ms >= ?2 AND time_unix_ms < ?3 AND metric = ?4
         ORDER BY time_unix_ms, device
         LIMIT ?5",
    )?;
    let limit = q.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let until = q.until_unix_ms.unwrap_or(i64::MAX);
    let rows = stmt.query_map(
        params![host_id, q.since_unix_ms, until, q.metric.name(), limit],
        |r| Ok(q.row((r.get(0)?, r.get(1)?, r.get(2)?))),
    )?;
    rows.collect()
}

/// Pushes every health value of `host_id` in `q`'s range into `down`: one
/// range scan of the primary key (host, time, metric, device), so each
/// series comes oldest first; a metric `down` does not want is skipped
/// before its device is read, and a name this build does not know too.
pub(crate) fn scan(
    conn: &Connection,
    host_id: i64,
    q: &SeriesQuery,
    down: &mut HealthDownsampler,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT time_unix_ms, metric, device, value FROM health
         WHERE host_id = ?1 AND time_unix_ms >= ?2 AND time_unix_ms < ?3
         ORDER BY time_unix_ms, metric, device",
    )?;
    let mut rows = stmt.query(params![host_id, q.since_unix_ms, q.until_unix_ms])?;
    while let Some(r) = rows.next()? {
        let Ok(metric) = text_at(r, 1)?.parse() else {
            continue;
        };
        if down.wants(metric) {
            down.push(metric, text_at(r, 2)?, r.get(0)?, r.get(3)?);
        }
    }
    Ok(())
}

/// Column `i` of `r` as text, borrowed (no copy per row).
fn text_at<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<&'r str> {
    r.get_ref(i)?.as_str().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Deletes up to `max_rows` health values older than `cutoff` (ms since
/// the Unix epoch); returns how many went.
pub(crate) fn prune(tx: &Connection, cutoff: i64, max_rows: usize) -> rusqlite::Result<usize> {
    let max_rows = i64::try_from(max_rows).unwrap_or(i64::MAX);
    tx.prepare_cached(
        "DELETE FROM health WHERE (host_id, time_unix_ms, metric, device) IN (
             SELECT host_id, time_unix_ms, metric, device FROM health
             WHERE time_unix_ms < ?1 LIMIT ?2)",
    )?
    .execute(params![cutoff, max_rows])
}

/// Fills each host's latest health values from its newest rows: one short
/// range scan of the primary key per host, once at open. A metric name this
/// build does not know is skipped.
pub(crate) fn load_latest(
    conn: &Connection,
    hosts: &mut HashMap<i64, HostEntry>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(
        "SELECT time_unix_ms, metric, device, value FROM health
         WHERE host_id = ?1 ORDER BY time_unix_ms DESC LIMIT ?2",
    )?;
    for (&host_id, host) in hosts.iter_mut() {
        let mut rows = stmt.query(params![host_id, LATEST_SCAN_ROWS])?;
        while let Some(r) = rows.next()? {
            let name: String = r.get(1)?;
            let Ok(metric) = name.parse() else { continue };
            let device: String = r.get(2)?;
            host.health.note(metric, &device, r.get(0)?, r.get(3)?);
        }
        host.health.clear_over_cap();
    }
    Ok(())
}
