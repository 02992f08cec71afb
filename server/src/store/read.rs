//! Reads: sample queries, the hosts table with latest values, command
//! history. They run on tokio's blocking pool against read-only
//! connections, each in one read transaction so it sees one snapshot.
//!
//! Reads must never touch the writer's connection or run on an async
//! worker thread: a slow query may not delay an acknowledgement.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use monitor::metric::Metric;
use rusqlite::Connection;

use super::error::StoreError;
use super::schema::{self, decode_argv, metric_column, metric_id, u64_from_sql};
use super::{CommandOutcome, HistoryRow, HostRecord, LatestValue, SampleQuery, StoredSampleRow};

/// How many of a host's newest samples `hosts()` looks at for the latest
/// value of each metric (ten batches of six).
const LATEST_SCAN_ROWS: i64 = 60;

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

fn sql(during: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::sqlite(during, e)
}

/// Samples of one host, oldest first: one range scan of the primary key
/// (host, time, metric, run), which is already the order wanted, so a limit
/// stops the scan early. With one metric, the other metrics' rows of the
/// same pages are read and skipped.
pub(crate) fn samples(
    conn: &mut Connection,
    q: &SampleQuery,
) -> Result<Vec<StoredSampleRow>, StoreError> {
    let during = "querying samples";
    let tx = conn.transaction().map_err(sql(during))?;
    let host_id = schema::host_id(&tx, &q.hostname)
        .map_err(sql(during))?
        .ok_or_else(|| StoreError::UnknownHost(q.hostname.clone()))?;
    let limit = q.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let until = q.until_unix_ms.unwrap_or(i64::MAX);
    let mut stmt = tx
        .prepare_cached(
            "SELECT time_unix_ms, metric_id, value, receive_lag_ms FROM samples
             WHERE host_id = ?1 AND time_unix_ms >= ?2 AND time_unix_ms < ?3
               AND (?4 IS NULL OR metric_id = ?4)
             ORDER BY time_unix_ms, metric_id, run_id
             LIMIT ?5",
        )
        .map_err(sql(during))?;
    let metric = q.metric.map(metric_id);
    let rows = stmt
        .query_map(
            rusqlite::params![host_id, q.since_unix_ms, until, metric, limit],
            |r| {
                let time_unix_ms: i64 = r.get(0)?;
                let lag_ms: i64 = r.get(3)?;
                Ok(StoredSampleRow {
                    time_unix_ms,
                    hostname: q.hostname.clone(),
                    metric: metric_column(r, 1)?,
                    value: r.get(2)?,
                    received_unix_ms: time_unix_ms.saturating_add(lag_ms),
                })
            },
        )
        .map_err(sql(during))?;
    rows.collect::<Result<_, _>>().map_err(sql(during))
}

/// Every host, by hostname, with its newest value of each metric.
pub(crate) fn hosts(conn: &mut Connection) -> Result<Vec<HostRecord>, StoreError> {
    let during = "listing hosts";
    let tx = conn.transaction().map_err(sql(during))?;
    let mut out = Vec::new();
    {
        let mut list = tx
            .prepare(
                "SELECT host_id, hostname, agent_id, agent_version, peer, first_seen_unix_ms,
                     last_seen_unix_ms, clock_offset_ms, dropped_batches_total,
                     batches_stored_total
                 FROM hosts ORDER BY hostname",
            )
            .map_err(sql(during))?;
        let mut latest = tx
            .prepare(
                "SELECT time_unix_ms, metric_id, value FROM samples WHERE host_id = ?1
                 ORDER BY time_unix_ms DESC, metric_id DESC, run_id DESC LIMIT ?2",
            )
            .map_err(sql(during))?;
        let mut rows = list.query([]).map_err(sql(during))?;
        while let Some(r) = rows.next().map_err(sql(during))? {
            let host_id: i64 = r.get(0).map_err(sql(during))?;
            let mut record = host_row(r).map_err(sql(during))?;
            // The newest rows of the host, newest first: the first row of
            // each metric is its latest value. Bounded, so a metric a host
            // stopped reporting long ago never costs a scan of its history.
            let mut found: [Option<LatestValue>; Metric::ALL.len()] = [None; Metric::ALL.len()];
            let mut l = latest
                .query(rusqlite::params![host_id, LATEST_SCAN_ROWS])
                .map_err(sql(during))?;
            while let Some(row) = l.next().map_err(sql(during))? {
                let metric = metric_column(row, 1).map_err(sql(during))?;
                let Some(i) = Metric::ALL.iter().position(|&m| m == metric) else {
                    continue;
                };
                if found[i].is_none() {
                    found[i] = Some(LatestValue {
                        metric,
                        time_unix_ms: row.get(0).map_err(sql(during))?,
                        value: row.get(2).map_err(sql(during))?,
                    });
                }
            }
            record.latest = found.into_iter().flatten().collect();
            out.push(record);
        }
    }
    Ok(out)
}

fn host_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<HostRecord> {
    Ok(HostRecord {
        hostname: r.get(1)?,
        agent_id: r.get(2)?,
        agent_version: r.get(3)?,
        peer: r.get(4)?,
        first_seen_unix_ms: r.get(5)?,
        last_seen_unix_ms: r.get(6)?,
        clock_offset_ms: r.get(7)?,
        dropped_batches_total: u64_from_sql(r.get(8)?),
        batches_stored_total: u64_from_sql(r.get(9)?),
        latest: Vec::new(),
    })
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
        r.message, r.finished_unix_ms
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
            CommandOutcome::from_name(&name)
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
        command_id,
    })
}
