//! Reads from the file: sample queries (with the host's unmerged ticks from
//! memory) and command history. They run on tokio's blocking pool against
//! read-only connections, each in one read transaction so it sees one
//! snapshot. (`hosts()` reads memory only, see `hosts.rs`.)
//!
//! Reads must never touch the writer's connection or run on an async
//! worker thread: a slow query may not delay an acknowledgement.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;

use monitor::command::Outcome;
use rusqlite::OptionalExtension;

use super::error::SqliteError;
use super::hosts::HostTable;
use super::schema;
use crate::store::encoding::{METRIC_COLUMNS, decode_argv, metric_id, u64_from_sql};
use crate::store::error::StoreError;
use crate::store::records::{
    FleetSeriesQuery, HistoryRow, HostSeries, SampleQuery, Series, SeriesQuery, StoredSampleRow,
};
use crate::store::series::Downsampler;
use crate::store::ticks::{METRICS, StoredTick, Unpacker, fill_missing};

/// Idle read connections kept for reuse; more are opened on demand.
const MAX_IDLE_READERS: usize = 4;

/// A small pool of read-only connections.
pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    closed: AtomicBool,
}

impl Readers {
    pub(crate) fn new(path: PathBuf) -> Readers {
        Readers {
            path,
            idle: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// Runs `f` with a read connection on the blocking pool.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let popped = this
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let mut conn = match popped {
                Some(c) => c,
                None => schema::open_reader(&this.path)?,
            };
            let result = f(&mut conn);
            if !this.closed.load(Ordering::SeqCst) {
                let mut idle = this.idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < MAX_IDLE_READERS {
                    idle.push(conn);
                }
            }
            result
        })
        .await
        .map_err(StoreError::Reader)?
    }

    /// Refuses further reads and closes the idle connections.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

pub(crate) fn sql(during: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| SqliteError::sql(during, e).into()
}

/// Samples of one host, oldest first (see [`merged_ticks`]), unpacked
/// into samples (see `ticks.rs`); a limit stops the scan early. With one
/// metric, rows lacking it are skipped by SQLite and the limit is SQL's.
pub(crate) fn samples(
    conn: &mut Connection,
    hosts: &HostTable,
    q: &SampleQuery,
) -> Result<Vec<StoredSampleRow>, StoreError> {
    let range = TickRange {
        hostname: &q.hostname,
        since_unix_ms: q.since_unix_ms,
        until_unix_ms: q.until_unix_ms.unwrap_or(i64::MAX),
        metric_index: q.metric.map(|m| metric_id(m) as usize),
        limit: q.limit,
    };
    let mut unpacker = Unpacker::new(range.metric_index, q.limit);
    let mut unpacked = Vec::new();
    merged_ticks(conn, hosts, &range, |tick| {
        if unpacker.is_full() {
            return false;
        }
        unpacker.push(tick, &mut unpacked);
        !unpacker.is_full()
    })?;
    Ok(unpacker.into_rows(unpacked, &q.hostname))
}

/// Every metric of one host in a range, downsampled: the same scan as
/// [`samples`], each value pushed into `down` (whose series `i` is
/// `Metric::ALL[i]`, the metric id, as the store's face builds it).
pub(crate) fn series(
    conn: &mut Connection,
    hosts: &HostTable,
    q: &SeriesQuery,
    mut down: Downsampler,
) -> Result<Vec<Series>, StoreError> {
    let range = TickRange {
        hostname: &q.hostname,
        since_unix_ms: q.since_unix_ms,
        until_unix_ms: q.until_unix_ms,
        metric_index: None,
        limit: None,
    };
    merged_ticks(conn, hosts, &range, |tick| {
        down.push_tick(tick.time_unix_ms, &tick.values);
        true
    })?;
    Ok(down.finish())
}

/// Which ticks [`merged_ticks`] reads.
struct TickRange<'a> {
    hostname: &'a str,
    since_unix_ms: i64,
    /// Exclusive.
    until_unix_ms: i64,
    /// Only ticks holding this metric (and SQL may then apply `limit`).
    metric_index: Option<usize>,
    /// With a metric: at most this many rows.
    limit: Option<usize>,
}

/// Visits a host's ticks in the range in (time, run) order until `visit`
/// returns false: one range scan of the primary key (host, time, run) of
/// `ticks`, which is already in time order, merged with the host's ticks
/// still in the journal (from memory).
fn merged_ticks(
    conn: &mut Connection,
    hosts: &HostTable,
    range: &TickRange<'_>,
    visit: impl FnMut(StoredTick) -> bool,
) -> Result<(), StoreError> {
    let during = "querying samples";
    // A host's id never changes: looked up on its own, before the copy of
    // its unmerged ticks, which must come before the snapshot the scan
    // reads. Then a tick a merge moves meanwhile is in the copy, or in the
    // snapshot, or both (the same values), never in neither.
    let host_id = host_id(conn, range.hostname)
        .map_err(sql(during))?
        .ok_or_else(|| StoreError::UnknownHost(range.hostname.to_owned()))?;
    let (since, until) = (range.since_unix_ms, range.until_unix_ms);
    let metric_index = range.metric_index;
    let pending = hosts.pending_of(host_id, since, until, metric_index);
    let tx = conn.transaction().map_err(sql(during))?;
    // Only with one metric is a row one sample, so only then can SQL apply
    // the limit (the first n samples need at most n rows of the table).
    let (filter, sql_limit) = match metric_index.and_then(|i| METRIC_COLUMNS.get(i)) {
        Some(column) => (
            format!("AND {column} IS NOT NULL"),
            range
                .limit
                .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX)),
        ),
        None => (String::new(), -1),
    };
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT time_unix_ms, run_id, receive_lag_ms, cpu_percent, mem_percent,
                 disk_read_kbps, disk_write_kbps, net_in_kbps, net_out_kbps
             FROM ticks
             WHERE host_id = ?1 AND time_unix_ms >= ?2 AND time_unix_ms < ?3 {filter}
             ORDER BY time_unix_ms, run_id
             LIMIT ?4"
        ))
        .map_err(sql(during))?;
    let mut rows = stmt
        .query(rusqlite::params![host_id, since, until, sql_limit])
        .map_err(sql(during))?;
    merge(
        || match rows.next().map_err(sql(during))? {
            Some(r) => tick_of(r, 0).map(Some).map_err(sql(during)),
            None => Ok(None),
        },
        pending,
        visit,
    )
}

/// A `ticks` row's tick, its columns from `first` on: time, run, receive
/// lag, then one per metric.
fn tick_of(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<StoredTick> {
    let mut tick = StoredTick {
        time_unix_ms: r.get(first)?,
        run_id: r.get(first + 1)?,
        receive_lag_ms: r.get(first + 2)?,
        values: [None; METRICS],
    };
    for (i, v) in tick.values.iter_mut().enumerate() {
        *v = r.get(first + 3 + i)?;
    }
    Ok(tick)
}

/// Visits one host's stored ticks (`next_stored`, in (time, run) order)
/// merged with its unmerged ones (`pending`, in the same order) until
/// `visit` returns false: a tick in both is the stored row with what the
/// unmerged one adds (the first value stored wins).
fn merge(
    mut next_stored: impl FnMut() -> Result<Option<StoredTick>, StoreError>,
    pending: Vec<StoredTick>,
    mut visit: impl FnMut(StoredTick) -> bool,
) -> Result<(), StoreError> {
    let mut stored = next_stored()?;
    let mut pending = pending.into_iter().peekable();
    loop {
        let key = |t: &StoredTick| (t.time_unix_ms, t.run_id);
        let tick = match (stored, pending.peek().copied()) {
            (None, None) => break,
            (Some(s), None) => {
                stored = next_stored()?;
                s
            }
            (None, Some(p)) => {
                pending.next();
                p
            }
            (Some(s), Some(p)) => match key(&s).cmp(&key(&p)) {
                std::cmp::Ordering::Less => {
                    stored = next_stored()?;
                    s
                }
                std::cmp::Ordering::Greater => {
                    pending.next();
                    p
                }
                std::cmp::Ordering::Equal => {
                    stored = next_stored()?;
                    pending.next();
                    StoredTick {
                        values: fill_missing(s.values, p.values).merged,
                        ..s
                    }
                }
            },
        };
        if !visit(tick) {
            break;
        }
    }
    Ok(())
}

/// Every host's metrics in a range, downsampled (`down` cloned for each):
/// ONE range scan of `ticks` for every host (SQLite seeks each host's
/// range of the primary key), in (host, time, run) order, each host's rows
/// merged with its ticks still in the journal as [`merged_ticks`] does.
/// Hosts are in hostname order; a host without a sample in the range has
/// empty series.
pub(crate) fn fleet_series(
    conn: &mut Connection,
    hosts: &HostTable,
    q: &FleetSeriesQuery,
    down: &Downsampler,
) -> Result<Vec<HostSeries>, StoreError> {
    let during = "querying every host's samples";
    // The unmerged ticks are copied before the snapshot the scan reads
    // (see `merged_ticks`).
    let every = hosts.every_pending(q.since_unix_ms, q.until_unix_ms);
    let tx = conn.transaction().map_err(sql(during))?;
    let mut stmt = tx
        .prepare_cached(
            "SELECT host_id, time_unix_ms, run_id, receive_lag_ms, cpu_percent, mem_percent,
                 disk_read_kbps, disk_write_kbps, net_in_kbps, net_out_kbps
             FROM ticks
             WHERE host_id IN (SELECT host_id FROM hosts)
                 AND time_unix_ms >= ?1 AND time_unix_ms < ?2
             ORDER BY host_id, time_unix_ms, run_id",
        )
        .map_err(sql(during))?;
    let mut rows = stmt
        .query(rusqlite::params![q.since_unix_ms, q.until_unix_ms])
        .map_err(sql(during))?;
    let mut next_row = || -> Result<Option<(i64, StoredTick)>, StoreError> {
        match rows.next().map_err(sql(during))? {
            Some(r) => {
                let host_id: i64 = r.get(0).map_err(sql(during))?;
                Ok(Some((host_id, tick_of(r, 1).map_err(sql(during))?)))
            }
            None => Ok(None),
        }
    };
    let mut peeked = next_row()?;
    let mut out = Vec::with_capacity(every.len());
    // Both by host id: the rows of a host the table does not list (none
    // should be) are passed over.
    for (host_id, hostname, pending) in every {
        while peeked.as_ref().is_some_and(|(id, _)| *id < host_id) {
            peeked = next_row()?;
        }
        let mut host_down = down.clone();
        merge(
            || match peeked.take() {
                Some((id, tick)) if id == host_id => {
                    peeked = next_row()?;
                    Ok(Some(tick))
                }
                other => {
                    peeked = other;
                    Ok(None)
                }
            },
            pending,
            |tick| {
                host_down.push_tick(tick.time_unix_ms, &tick.values);
                true
            },
        )?;
        out.push(HostSeries {
            hostname,
            series: host_down.finish(),
        });
    }
    out.sort_unstable_by(|a, b| a.hostname.cmp(&b.hostname));
    Ok(out)
}

/// Command history, newest command first; within a command, by hostname.
pub(crate) fn history(
    conn: &mut Connection,
    hostname: Option<&str>,
    limit: usize,
) -> Result<Vec<HistoryRow>, StoreError> {
    let during = "reading command history";
    let tx = conn.transaction().map_err(sql(during))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    const COLUMNS: &str = "c.command_row, c.command_id, c.time_unix_ms, c.argv, r.hostname,
        r.outcome, r.exit_code, r.signal, r.duration_ms, r.stdout_bytes, r.stderr_bytes,
        r.message, r.finished_unix_ms, c.operator
        FROM command_results r JOIN commands c ON c.command_row = r.command_row";
    let mut out = Vec::new();
    {
        let mut stmt = match hostname {
            Some(_) => tx.prepare(&format!(
                "SELECT {COLUMNS} WHERE r.hostname = ?1 ORDER BY r.command_row DESC LIMIT ?2"
            )),
            None => tx.prepare(&format!(
                "SELECT {COLUMNS} ORDER BY r.command_row DESC, r.hostname LIMIT ?1"
            )),
        }
        .map_err(sql(during))?;
        let mut targets_of = tx
            .prepare(
                "SELECT hostname FROM command_results
                 WHERE command_row = ?1 AND target_index >= 0 ORDER BY target_index",
            )
            .map_err(sql(during))?;
        let mut targets_cache: Option<(i64, Vec<String>)> = None;
        let mut rows = match hostname {
            Some(h) => stmt.query(rusqlite::params![h, limit]),
            None => stmt.query(rusqlite::params![limit]),
        }
        .map_err(sql(during))?;
        while let Some(r) = rows.next().map_err(sql(during))? {
            let command_row: i64 = r.get(0).map_err(sql(during))?;
            let targets = match &targets_cache {
                Some((row, t)) if *row == command_row => t.clone(),
                _ => {
                    let t: Vec<String> = targets_of
                        .query_map([command_row], |r| r.get(0))
                        .and_then(|rows| rows.collect())
                        .map_err(sql(during))?;
                    targets_cache = Some((command_row, t.clone()));
                    t
                }
            };
            out.push(history_row(r, targets).map_err(sql(during))?);
        }
    }
    Ok(out)
}

fn history_row(r: &rusqlite::Row<'_>, targets: Vec<String>) -> rusqlite::Result<HistoryRow> {
    let bad = |idx: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Blob, what.into())
    };
    let command_id: String = r.get(1)?;
    let argv_blob: Vec<u8> = r.get(3)?;
    let argv = decode_argv(&argv_blob)
        .ok_or_else(|| bad(3, format!("command {command_id}: invalid argv blob")))?;
    let outcome = match r.get::<_, Option<String>>(5)? {
        None => None,
        Some(name) => Some(
            Outcome::from_name(&name)
                .ok_or_else(|| bad(5, format!("command {command_id}: unknown outcome '{name}'")))?,
        ),
    };
    let u = |idx: usize| -> rusqlite::Result<u64> {
        Ok(r.get::<_, Option<i64>>(idx)?.map_or(0, u64_from_sql))
    };
    Ok(HistoryRow {
        time_unix_ms: r.get(2)?,
        hostname: r.get(4)?,
        argv,
        targets,
        outcome,
        exit_code: r.get(6)?,
        signal: r.get(7)?,
        duration_ms: u(8)?,
        stdout_bytes: u(9)?,
        stderr_bytes: u(10)?,
        message: r.get::<_, Option<String>>(11)?.unwrap_or_default(),
        finished_unix_ms: r.get(12)?,
        operator: r.get(13)?,
        command_id,
    })
}

/// Looks up a host's id.
/// The id of `hostname`: `Err(StoreError::UnknownHost)` if it never stored
/// a batch, a failed statement an error while `during`.
pub(crate) fn known_host_id(
    conn: &Connection,
    hostname: &str,
    during: &'static str,
) -> Result<i64, StoreError> {
    host_id(conn, hostname)
        .map_err(sql(during))?
        .ok_or_else(|| StoreError::UnknownHost(hostname.to_owned()))
}

pub(crate) fn host_id(conn: &Connection, hostname: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT host_id FROM hosts WHERE hostname = ?1")?
        .query_row([hostname], |r| r.get(0))
        .optional()
}
