//! The writer's memory rebuilt from the file at open: the `hosts` table,
//! the journal a crash (or a clean close) left unmerged replayed over it,
//! each host's latest values read from its newest rows, the merge
//! schedule of the replayed hosts, and each host's health rollup edge.
//!
//! After loading, memory must be exactly what the writer held when it last
//! committed: queries, `hosts()` and de-duplication see exactly what was
//! acknowledged. Loading never writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rusqlite::{Connection, params};

use super::memory::Memory;
use super::merges::Merges;
use super::rollups::Rollups;
use crate::store::encoding::u64_from_sql;
use crate::store::latest_health::LatestHealthTable;
use crate::store::sqlite::hosts::{HostEntry, HostTable};
use crate::store::sqlite::runs::RunCache;
use crate::store::sqlite::{forward, journal};
use crate::store::ticks::{METRICS, TickRow};

/// How many of a host's newest rows are read at open for its latest value
/// of each metric (a metric not among them shows no latest value).
const LATEST_SCAN_TICKS: i64 = 10;

/// What [`load`] found, for the open's log line.
#[derive(Debug)]
pub(super) struct Loaded {
    /// Journal rows replayed onto their hosts.
    pub(super) replayed_rows: u64,
}

/// Loads `hosts`, replays the journal over them, reads each host's latest
/// values from its newest rows, and schedules the replayed hosts' merges
/// as if their rows had been committed `now`.
pub(super) fn load(conn: &Connection, now: Instant) -> rusqlite::Result<(Memory, Loaded)> {
    let mut hosts = load_hosts(conn)?;
    let mut runs = RunCache::default();
    let replayed = journal::replay(conn, &mut hosts, &mut runs)?;
    let mut newest_sample_unix_ms = load_latest(conn, &mut hosts)?;
    crate::store::sqlite::health::load_latest(conn, &mut hosts)?;
    // The replayed ticks are stored too (in the journal).
    for (&host_id, host) in &hosts {
        if let Some(t) = host.pending.iter().map(|p| p.row.time_unix_ms).max() {
            let newest = newest_sample_unix_ms.entry(host_id).or_insert(t);
            *newest = (*newest).max(t);
        }
    }
    let host_ids = hosts
        .iter()
        .map(|(&id, h)| (h.hostname.clone(), id))
        .collect();
    let cursors = forward::load(conn)?;
    let mut merges = Merges {
        forward_hold: cursors.values().copied().min(),
        last_journal_id: replayed.last_journal_id,
        // Rows below the journal's first are gone already: deletes start
        // there, not at id 1 (ids keep growing across restarts).
        deleted_through: replayed
            .first_journal_id
            .map_or(replayed.last_journal_id, |first| first - 1),
        pending_ticks: hosts.values().map(|h| h.pending.len()).sum(),
        ..Merges::default()
    };
    // The journal is part of the file's state, after a crash as after a
    // clean close: its hosts are merged over the next `merge_interval` like
    // any others, not all at once (at 60,000 batches/s the journal holds
    // 2M ticks, a 10 s transaction).
    for u in replayed.unmerged {
        merges.enqueue(u.host_id, (now, u.first_journal_id), &u.runs, u.ticks);
    }
    let rollups = Rollups::load(conn, hosts.keys().copied())?;
    let memory = Memory {
        rollups,
        host_ids,
        newest_sample_unix_ms,
        hosts: Arc::new(HostTable::new(hosts)),
        runs,
        merges,
        checked_by_value_log: crate::throttle::LogThrottle::default(),
        cursors,
    };
    Ok((
        memory,
        Loaded {
            replayed_rows: replayed.rows,
        },
    ))
}

fn load_hosts(conn: &Connection) -> rusqlite::Result<HashMap<i64, HostEntry>> {
    let mut stmt = conn.prepare(
        "SELECT host_id, hostname, agent_id, agent_version, peer, first_seen_unix_ms,
             last_seen_unix_ms, clock_offset_ms, dropped_batches_total, batches_stored_total,
             merged_journal_id
         FROM hosts",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            HostEntry {
                hostname: r.get(1)?,
                agent_id: r.get(2)?,
                agent_version: r.get(3)?,
                peer: r.get(4)?,
                first_seen_unix_ms: r.get(5)?,
                last_seen_unix_ms: r.get(6)?,
                clock_offset_ms: r.get(7)?,
                dropped_batches_total: u64_from_sql(r.get(8)?),
                batches_stored_total: u64_from_sql(r.get(9)?),
                batches_checked_by_value_total: 0,
                latest: [None; METRICS],
                health: LatestHealthTable::default(),
                pending: Vec::new(),
                merged_journal_id: r.get(10)?,
                applied_journal_id: r.get(10)?,
            },
        ))
    })?;
    rows.collect()
}

/// Each host's latest value per metric, from its newest rows: one short
/// range scan per host, once at open. Returns each host's newest sample
/// time in `ticks`.
fn load_latest(
    conn: &Connection,
    hosts: &mut HashMap<i64, HostEntry>,
) -> rusqlite::Result<HashMap<i64, i64>> {
    let mut newest = conn.prepare(
        "SELECT time_unix_ms, run_id, cpu_percent, mem_percent, disk_read_kbps,
             disk_write_kbps, net_in_kbps, net_out_kbps
         FROM ticks WHERE host_id = ?1 ORDER BY time_unix_ms DESC, run_id DESC LIMIT ?2",
    )?;
    let mut newest_times = HashMap::with_capacity(hosts.len());
    for (&host_id, host) in hosts.iter_mut() {
        let mut rows = newest.query(params![host_id, LATEST_SCAN_TICKS])?;
        // Newest first: the first row is the host's newest, and once every
        // metric has a value, older rows cannot change it (normally after
        // the first row).
        while let Some(r) = rows.next()? {
            let mut row = TickRow {
                time_unix_ms: r.get(0)?,
                values: [None; METRICS],
            };
            for (i, v) in row.values.iter_mut().enumerate() {
                *v = r.get(2 + i)?;
            }
            newest_times.entry(host_id).or_insert(row.time_unix_ms);
            host.note_values(r.get(1)?, &row);
            if host.latest.iter().all(Option::is_some) {
                break;
            }
        }
    }
    Ok(newest_times)
}
