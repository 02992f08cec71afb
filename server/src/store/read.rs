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
use rusqlite::{Connection, Rows};

use super::error::StoreError;
use super::schema::{self, decode_argv, metric_id, u64_from_sql};
use super::{CommandOutcome, HistoryRow, HostRecord, LatestValue, SampleQuery, StoredSampleRow};

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

/// One row of one metric's range scan.
struct Head {
    time_unix_ms: i64,
    run_id: i64,
    metric_index: usize,
    value: f64,
    receive_lag_ms: i64,
}

fn next_head(rows: &mut Rows<'_>, metric_index: usize) -> rusqlite::Result<Option<Head>> {
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    Ok(Some(Head {
        time_unix_ms: r.get(0)?,
        run_id: r.get(1)?,
        metric_index,
        value: r.get(2)?,
        receive_lag_ms: r.get(3)?,
    }))
}

/// Samples of one host, oldest first. With every metric, the six range
/// scans of the primary key are merged by time here, so a limit stops the
/// work early instead of sorting the whole range.
pub(crate) fn samples(
    conn: &mut Connection,
    q: &SampleQuery,
) -> Result<Vec<StoredSampleRow>, StoreError> {
    let during = "querying samples";
    let tx = conn.transaction().map_err(sql(during))?;
    let host_id = schema::host_id(&tx, &q.hostname)
        .map_err(sql(during))?
        .ok_or_else(|| StoreError::UnknownHost(q.hostname.clone()))?;
    let limit = q.limit.unwrap_or(usize::MAX);
    let until = q.until_unix_ms.unwrap_or(i64::MAX);
    let metrics: Vec<usize> = match q.metric {
        Some(m) => Metric::ALL
            .iter()
            .position(|&x| x == m)
            .into_iter()
            .collect(),
        None => (0..Metric::ALL.len()).collect(),
    };
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let mut stmts = Vec::with_capacity(metrics.len());
    for _ in &metrics {
        stmts.push(
            tx.prepare(
                "SELECT time_unix_ms, run_id, value, receive_lag_ms FROM samples
                 WHERE host_id = ?1 AND metric_id = ?2
                   AND time_unix_ms >= ?3 AND time_unix_ms < ?4
                 ORDER BY time_unix_ms, run_id",
            )
            .map_err(sql(during))?,
        );
    }
    let mut scans = Vec::with_capacity(metrics.len());
    for (stmt, &mi) in stmts.iter_mut().zip(&metrics) {
        let mut rows = stmt
            .query(rusqlite::params![
                host_id,
                metric_id(Metric::ALL[mi]),
                q.since_unix_ms,
                until
            ])
            .map_err(sql(during))?;
        let head = next_head(&mut rows, mi).map_err(sql(during))?;
        scans.push((rows, head));
    }
    while out.len() < limit {
        // The oldest head; ties go to the metric order, then the run.
        let best = scans
            .iter()
            .enumerate()
            .filter_map(|(i, (_, h))| {
                h.as_ref()
                    .map(|h| ((h.time_unix_ms, h.metric_index, h.run_id), i))
            })
            .min();
        let Some((_, i)) = best else { break };
        let (rows, head) = &mut scans[i];
        let next = next_head(rows, metrics[i]).map_err(sql(during))?;
        if let Some(h) = std::mem::replace(head, next) {
            out.push(StoredSampleRow {
                time_unix_ms: h.time_unix_ms,
                hostname: q.hostname.clone(),
                metric: Metric::ALL[h.metric_index],
                value: h.value,
                received_unix_ms: h.time_unix_ms.saturating_add(h.receive_lag_ms),
            });
        }
    }
    Ok(out)
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
                "SELECT time_unix_ms, value FROM samples WHERE host_id = ?1 AND metric_id = ?2
                 ORDER BY time_unix_ms DESC LIMIT 1",
            )
            .map_err(sql(during))?;
        let mut rows = list.query([]).map_err(sql(during))?;
        while let Some(r) = rows.next().map_err(sql(during))? {
            let host_id: i64 = r.get(0).map_err(sql(during))?;
            let mut record = host_row(r).map_err(sql(during))?;
            for m in Metric::ALL {
                let mut l = latest
                    .query(rusqlite::params![host_id, metric_id(m)])
                    .map_err(sql(during))?;
                if let Some(row) = l.next().map_err(sql(during))? {
                    record.latest.push(LatestValue {
                        metric: m,
                        time_unix_ms: row.get(0).map_err(sql(during))?,
                        value: row.get(1).map_err(sql(during))?,
                    });
                }
            }
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
