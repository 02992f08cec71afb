//! The health metrics of issue 14 in the file: the `health` table's rows
//! (one per value, keyed by host, time, metric and device), written in the
//! flush that stores their batch, read by queries and (each host's newest,
//! at open) by the host table's latest values, pruned by retention. The
//! journal row of their batch carries them too (`store/journal_record.rs`),
//! for remote-write.
//!
//! The per-minute rollup (`health_minutes`, schema 8, see
//! `store/health_rollup.rs`) is made here from the raw rows: [`roll`]
//! (re)makes the rows of a span of minutes, called by the writer for the
//! minutes a host closed (`writer/rollups.rs`) and, in the flush storing
//! it, for the minute of a value arriving below the host's rolled edge.
//! [`scan`] reads a query's whole-minute part below the edge from it.
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

use monitor::health::HealthMetric;
use rusqlite::{Connection, params};

use crate::store::health_rollup::{self, HEALTH_ROLLUP_MS, RollupBuilder};
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

/// Pushes every health value of `host_id` in `q`'s range into `down`, in
/// one read transaction: the part the rollup answers
/// ([`health_rollup::rolled_part`]) from `health_minutes`, then the rest
/// from the raw rows. A minute row that cannot be decoded makes the whole
/// query read raw (and is logged): never a wrong answer.
pub(crate) fn scan(
    conn: &mut Connection,
    host_id: i64,
    q: &SeriesQuery,
    down: &mut HealthDownsampler,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let split = health_rollup::rolled_part(q, rolled_until(&tx, host_id)?);
    let mut raw_from = split;
    if split > q.since_unix_ms {
        let fresh = down.clone();
        if let Err(minute) = scan_minutes(&tx, host_id, (q.since_unix_ms, split), down)? {
            log::warn!(
                "store: the health rollup of host {host_id} at minute {minute} cannot be \
                 read; answering from the raw rows"
            );
            *down = fresh;
            raw_from = q.since_unix_ms;
        }
    }
    scan_raw(&tx, host_id, (raw_from, q.until_unix_ms), down)
}

/// Pushes the minute rows of `host_id` in `[from, until)` into `down`;
/// `Err(minute)` for a row that cannot be decoded.
fn scan_minutes(
    conn: &Connection,
    host_id: i64,
    (from, until): (i64, i64),
    down: &mut HealthDownsampler,
) -> rusqlite::Result<Result<(), i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT minute_unix_ms, series FROM health_minutes
         WHERE host_id = ?1 AND minute_unix_ms >= ?2 AND minute_unix_ms < ?3
         ORDER BY minute_unix_ms",
    )?;
    let mut rows = stmt.query(params![host_id, from, until])?;
    while let Some(r) = rows.next()? {
        // Borrows the row: made per row (a few thousand a week).
        let mut minute = Vec::new();
        let start: i64 = r.get(0)?;
        let blob = r.get_ref(1)?.as_blob().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Blob, Box::new(e))
        })?;
        if health_rollup::decode_minute(start, blob, &mut minute).is_err() {
            return Ok(Err(start));
        }
        down.push_minute(&mut minute);
    }
    Ok(Ok(()))
}

/// Pushes the raw rows of `host_id` in `[from, until)` into `down` (see
/// [`each_raw`]).
fn scan_raw(
    conn: &Connection,
    host_id: i64,
    span: (i64, i64),
    down: &mut HealthDownsampler,
) -> rusqlite::Result<()> {
    // By `HealthMetric as usize`: no borrow of `down` while it is pushed to.
    let wanted = HealthMetric::ALL.map(|m| down.wants(m));
    each_raw(
        conn,
        host_id,
        span,
        |m| wanted[m as usize],
        |m, d, t, v| {
            down.push(m, d, t, v);
        },
    )
    .map(|_| ())
}

/// Gives `f` each raw row of `host_id` in `[from, until)` whose metric
/// `wants`: one range scan of the primary key (host, time, metric,
/// device), so each series comes oldest first; a metric not wanted is
/// skipped before its device is read, and a name this build does not know
/// too. Returns the rows read.
fn each_raw(
    conn: &Connection,
    host_id: i64,
    (from, until): (i64, i64),
    wants: impl Fn(HealthMetric) -> bool,
    mut f: impl FnMut(HealthMetric, &str, i64, f64),
) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare_cached(
        "SELECT time_unix_ms, metric, device, value FROM health
         WHERE host_id = ?1 AND time_unix_ms >= ?2 AND time_unix_ms < ?3
         ORDER BY time_unix_ms, metric, device",
    )?;
    let mut rows = stmt.query(params![host_id, from, until])?;
    let mut read = 0;
    while let Some(r) = rows.next()? {
        read += 1;
        let Ok(metric) = text_at(r, 1)?.parse() else {
            continue;
        };
        if wants(metric) {
            f(metric, text_at(r, 2)?, r.get(0)?, r.get(3)?);
        }
    }
    Ok(read)
}

/// The host's rolled edge: every minute before it has its row in
/// `health_minutes` if it holds values (the minute after the newest row;
/// `None`: no row).
pub(crate) fn rolled_until(conn: &Connection, host_id: i64) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT max(minute_unix_ms) FROM health_minutes WHERE host_id = ?1")?
        .query_row([host_id], |r| r.get::<_, Option<i64>>(0))
        .map(|m| m.map(|m| m + HEALTH_ROLLUP_MS))
}

/// The time of the host's oldest health value at or after `from` (`None`:
/// none).
pub(crate) fn first_time_from(
    conn: &Connection,
    host_id: i64,
    from: i64,
) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT min(time_unix_ms) FROM health WHERE host_id = ?1 AND time_unix_ms >= ?2",
    )?
    .query_row(params![host_id, from], |r| r.get(0))
}

/// The time of the host's newest health value (`None`: none).
pub(crate) fn newest_time(conn: &Connection, host_id: i64) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT max(time_unix_ms) FROM health WHERE host_id = ?1")?
        .query_row([host_id], |r| r.get(0))
}

/// (Re)makes the minute rows of `host_id` for the minutes in `[from,
/// until)` (both minute starts) from its raw rows: the old rows go, a
/// minute with values gets its row. Returns the raw rows read. Must run
/// in a writing transaction.
pub(crate) fn roll(
    tx: &Connection,
    host_id: i64,
    (from, until): (i64, i64),
) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "DELETE FROM health_minutes
         WHERE host_id = ?1 AND minute_unix_ms >= ?2 AND minute_unix_ms < ?3",
    )?
    .execute(params![host_id, from, until])?;
    let mut builder = RollupBuilder::default();
    let read = each_raw(
        tx,
        host_id,
        (from, until),
        |_| true,
        |m, d, t, v| {
            builder.push(m, d, t, v);
        },
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO health_minutes (host_id, minute_unix_ms, series) VALUES (?1, ?2, ?3)",
    )?;
    for (minute, series) in builder.finish() {
        insert.execute(params![host_id, minute, series])?;
    }
    Ok(read)
}

/// Column `i` of `r` as text, borrowed (no copy per row).
fn text_at<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<&'r str> {
    r.get_ref(i)?.as_str().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Deletes up to `max_rows` health values older than the minute holding
/// `cutoff` (ms since the Unix epoch), minute rows first; returns how many
/// went. Whole minutes go, so a minute row never sums up values that are
/// gone while others of its minute stay (values are kept up to a minute
/// longer than the retention).
pub(crate) fn prune(tx: &Connection, cutoff: i64, max_rows: usize) -> rusqlite::Result<usize> {
    let cutoff = health_rollup::minute_of(cutoff);
    let max_rows = i64::try_from(max_rows).unwrap_or(i64::MAX);
    let minutes = tx
        .prepare_cached(
            "DELETE FROM health_minutes WHERE (host_id, minute_unix_ms) IN (
                 SELECT host_id, minute_unix_ms FROM health_minutes
                 WHERE minute_unix_ms < ?1 LIMIT ?2)",
        )?
        .execute(params![cutoff, max_rows])?;
    let left = max_rows.saturating_sub(i64::try_from(minutes).unwrap_or(i64::MAX));
    let raw = tx
        .prepare_cached(
            "DELETE FROM health WHERE (host_id, time_unix_ms, metric, device) IN (
                 SELECT host_id, time_unix_ms, metric, device FROM health
                 WHERE time_unix_ms < ?1 LIMIT ?2)",
        )?
        .execute(params![cutoff, left])?;
    Ok(minutes + raw)
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
