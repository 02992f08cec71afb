//! Refusing a batch that contradicts what is stored: a sample of a (host,
//! time, metric) that already has a value, with another value, makes the
//! whole batch a [`Conflict`]; a sample with the same value is the same
//! measurement again and is left out, so nothing is written twice.
//!
//! Cheap on the hot path: the writer keeps, per host, an upper bound of its
//! newest stored sample time; a batch whose samples are all newer (every
//! batch of an agent whose clock runs forward) cannot conflict and is not
//! checked. Only an older sample is looked up: in the flush's own earlier
//! batches, in the host's unmerged ticks in memory, and in `ticks` (one
//! primary-key lookup of (host, time), every run).
//!
//! This check runs inside the flush's transaction and changes neither the
//! file nor memory; it must never let a different value for a stored
//! (host, time, metric) through, nor refuse an identical one.

use rusqlite::Connection;

use crate::store::encoding::metric_from_id;
use crate::store::records::Conflict;
use crate::store::sqlite::hosts::HostTable;
use crate::store::ticks::{self, METRICS, TickRow};

/// Checks the ticks `rows` of one batch of host `host_id` against what is
/// stored at their times, for the rows not newer than `newest_unix_ms`
/// (no stored sample of the host is newer). `earlier` are the ticks of
/// this host that earlier batches of the same flush store. On `Ok(Ok)`,
/// values already stored are gone from `rows` (and rows left empty too);
/// on `Ok(Err)`, `rows` must not be stored.
pub(super) fn check(
    tx: &Connection,
    (host_id, newest_unix_ms): (i64, i64),
    rows: &mut Vec<TickRow>,
    earlier: &[&TickRow],
    hosts: &HostTable,
) -> rusqlite::Result<Result<(), Conflict>> {
    let mut stored_at = tx.prepare_cached(
        "SELECT cpu_percent, mem_percent, disk_read_kbps, disk_write_kbps, net_in_kbps,
             net_out_kbps
         FROM ticks WHERE host_id = ?1 AND time_unix_ms = ?2",
    )?;
    for row in rows.iter_mut() {
        if row.time_unix_ms > newest_unix_ms {
            continue;
        }
        let time = row.time_unix_ms;
        // Every stored tick of the host at this time: one per run, in the
        // file, in memory, or earlier in this flush.
        let mut stored: Vec<[Option<f64>; METRICS]> = earlier
            .iter()
            .filter(|r| r.time_unix_ms == time)
            .map(|r| r.values)
            .collect();
        if let Some(host) = hosts.lock().get(&host_id) {
            stored.extend(
                host.pending
                    .iter()
                    .filter(|p| p.row.time_unix_ms == time)
                    .map(|p| p.row.values),
            );
        }
        let mut found = stored_at.query(rusqlite::params![host_id, time])?;
        while let Some(r) = found.next()? {
            let mut values = [None; METRICS];
            for (i, v) in values.iter_mut().enumerate() {
                *v = r.get(i)?;
            }
            stored.push(values);
        }
        if let Err(conflict) = ticks::check_stored(row, &stored, |i| metric_from_id(i as i64)) {
            return Ok(Err(conflict));
        }
    }
    rows.retain(|r| r.values.iter().any(Option::is_some));
    Ok(Ok(()))
}
