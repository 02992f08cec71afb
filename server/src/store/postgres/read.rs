//! Reads: hosts with their latest values, sample queries and command
//! history, each on a pooled connection (never the writer's), in one
//! statement or one read-only transaction so it sees one snapshot.
//!
//! Nothing here writes. A value the server cannot read back (a column of
//! another type, an unknown outcome name) is an error naming the table,
//! never a panic.

use std::collections::HashMap;

use monitor::command::Outcome;
use monitor::metric::Metric;
use tokio_postgres::{GenericClient, Row};

use super::error::PostgresError;
use crate::store::encoding::{METRIC_COLUMNS, decode_argv, metric_id, u64_from_sql};
use crate::store::error::StoreError;
use crate::store::records::{
    FleetSeriesQuery, HistoryRow, HostRecord, HostSeries, LatestValue, SampleQuery, Series,
    SeriesQuery, StoredSampleRow,
};
use crate::store::series::Downsampler;
use crate::store::ticks::{METRICS, StoredTick, Unpacker};

/// Turns a driver error met while doing `during` into the store's.
fn sql(during: &'static str, target: &str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    let target = target.to_owned();
    move |e| PostgresError::of(during, &target, e).into()
}

const HOST_COLUMNS: &str = "host_id, hostname, agent_id, agent_version, peer, first_seen_unix_ms,
    last_seen_unix_ms, clock_offset_ms, dropped_batches_total, batches_stored_total,
    health_series_over_cap_total";

fn host_of(r: &Row) -> Result<(i64, HostRecord), tokio_postgres::Error> {
    Ok((
        r.try_get(0)?,
        HostRecord {
            hostname: r.try_get(1)?,
            agent_id: r.try_get(2)?,
            agent_version: r.try_get(3)?,
            peer: r.try_get(4)?,
            first_seen_unix_ms: r.try_get(5)?,
            last_seen_unix_ms: r.try_get(6)?,
            clock_offset_ms: r.try_get(7)?,
            dropped_batches_total: u64_from_sql(r.try_get(8)?),
            batches_stored_total: u64_from_sql(r.try_get(9)?),
            // Counted in the handle's memory (see `writer.rs`).
            batches_checked_by_value_total: 0,
            latest: Vec::new(),
            health: Vec::new(),
            health_series_over_cap_total: u64_from_sql(r.try_get(10)?),
        },
    ))
}

/// Fills each host's `latest` (in [`Metric::ALL`] order) from `host_latest`.
async fn add_latest(
    c: &impl GenericClient,
    hosts: &mut [(i64, HostRecord)],
) -> Result<(), tokio_postgres::Error> {
    let ids: Vec<i64> = hosts.iter().map(|(id, _)| *id).collect();
    let rows = c
        .query(
            "SELECT host_id, metric_id, time_unix_ms, value FROM host_latest
             WHERE host_id = ANY($1)",
            &[&ids],
        )
        .await?;
    let mut by_host: HashMap<i64, [Option<(i64, f64)>; METRICS]> = HashMap::new();
    for r in rows {
        let metric: i16 = r.try_get(1)?;
        let slot = by_host.entry(r.try_get(0)?).or_insert([None; METRICS]);
        if let Some(s) = slot.get_mut(metric as usize) {
            *s = Some((r.try_get(2)?, r.try_get(3)?));
        }
    }
    for (id, host) in hosts.iter_mut() {
        if let Some(latest) = by_host.get(id) {
            host.latest = Metric::ALL
                .iter()
                .zip(latest)
                .filter_map(|(&metric, l)| {
                    l.map(|(time_unix_ms, value)| LatestValue {
                        metric,
                        time_unix_ms,
                        value,
                    })
                })
                .collect();
        }
    }
    Ok(())
}

/// The first `limit` hosts whose hostname sorts after `after` (every
/// host when `None`), by hostname in byte order (as `String` sorts: the
/// "C" collation, whatever the database's).
pub(crate) async fn hosts(
    c: &mut impl GenericClient,
    target: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<HostRecord>, StoreError> {
    let during = sql("reading hosts", target);
    let tx = c.transaction().await.map_err(&during)?;
    let rows = tx
        .query(
            &format!(
                "SELECT {HOST_COLUMNS} FROM hosts
                 WHERE $1::text IS NULL OR hostname COLLATE \"C\" > $1
                 ORDER BY hostname COLLATE \"C\" LIMIT $2"
            ),
            &[&after, &limit],
        )
        .await
        .map_err(&during)?;
    let mut hosts = rows
        .iter()
        .map(host_of)
        .collect::<Result<Vec<_>, _>>()
        .map_err(&during)?;
    add_latest(&tx, &mut hosts).await.map_err(&during)?;
    super::health::add_latest(&tx, &mut hosts)
        .await
        .map_err(&during)?;
    tx.commit().await.map_err(&during)?;
    Ok(hosts.into_iter().map(|(_, h)| h).collect())
}

/// One host, if it ever stored a batch.
pub(crate) async fn host(
    c: &mut impl GenericClient,
    target: &str,
    hostname: &str,
) -> Result<Option<HostRecord>, StoreError> {
    let during = sql("reading a host", target);
    let tx = c.transaction().await.map_err(&during)?;
    let Some(row) = tx
        .query_opt(
            &format!("SELECT {HOST_COLUMNS} FROM hosts WHERE hostname = $1"),
            &[&hostname],
        )
        .await
        .map_err(&during)?
    else {
        return Ok(None);
    };
    let mut one = [host_of(&row).map_err(&during)?];
    add_latest(&tx, &mut one).await.map_err(&during)?;
    super::health::add_latest(&tx, &mut one)
        .await
        .map_err(&during)?;
    tx.commit().await.map_err(&during)?;
    let [(_, h)] = one;
    Ok(Some(h))
}

fn tick_of(r: &Row) -> Result<StoredTick, tokio_postgres::Error> {
    let mut tick = StoredTick {
        time_unix_ms: r.try_get(0)?,
        run_id: r.try_get(1)?,
        receive_lag_ms: r.try_get(2)?,
        values: [None; METRICS],
    };
    for (i, v) in tick.values.iter_mut().enumerate() {
        *v = r.try_get(3 + i)?;
    }
    Ok(tick)
}

/// The id of `hostname`, or `UnknownHost` for a host that never sent a
/// batch.
async fn host_id(
    tx: &tokio_postgres::Transaction<'_>,
    hostname: &str,
    during: &impl Fn(tokio_postgres::Error) -> StoreError,
) -> Result<i64, StoreError> {
    match tx
        .query_opt(
            "SELECT host_id FROM hosts WHERE hostname = $1",
            &[&hostname],
        )
        .await
        .map_err(during)?
    {
        Some(r) => r.try_get(0).map_err(during),
        None => Err(StoreError::UnknownHost(hostname.to_owned())),
    }
}

/// Samples of one host, oldest first: one range scan of the primary key
/// (host, time, run) over the partitions the range touches. A limit is
/// applied in SQL to rows (each row holds at least one sample), then the
/// rest of the last time's rows are read so the (time, metric, run) order
/// of that time stays exact.
pub(crate) async fn samples(
    c: &mut impl GenericClient,
    target: &str,
    q: &SampleQuery,
) -> Result<Vec<StoredSampleRow>, StoreError> {
    let during = sql("querying samples", target);
    let tx = c.transaction().await.map_err(&during)?;
    let host_id = host_id(&tx, &q.hostname, &during).await?;
    let until = q.until_unix_ms.unwrap_or(i64::MAX);
    let metric_index = q.metric.map(|m| metric_id(m) as usize);
    let filter = match metric_index.and_then(|i| METRIC_COLUMNS.get(i)) {
        Some(column) => format!("AND {column} IS NOT NULL"),
        None => String::new(),
    };
    let columns = format!(
        "time_unix_ms, run_id, receive_lag_ms, {}",
        METRIC_COLUMNS.join(", ")
    );
    let limit: Option<i64> = q.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
    let rows = tx
        .query(
            &format!(
                "SELECT {columns} FROM ticks
                 WHERE host_id = $1 AND time_unix_ms >= $2 AND time_unix_ms < $3 {filter}
                 ORDER BY time_unix_ms, run_id LIMIT $4"
            ),
            &[&host_id, &q.since_unix_ms, &until, &limit],
        )
        .await
        .map_err(&during)?;
    let mut ticks = rows
        .iter()
        .map(tick_of)
        .collect::<Result<Vec<_>, _>>()
        .map_err(&during)?;
    if let (Some(l), Some(last)) = (limit, ticks.last().copied())
        && ticks.len() as i64 == l
    {
        let rest = tx
            .query(
                &format!(
                    "SELECT {columns} FROM ticks
                     WHERE host_id = $1 AND time_unix_ms = $2 AND run_id > $3 {filter}
                     ORDER BY run_id"
                ),
                &[&host_id, &last.time_unix_ms, &last.run_id],
            )
            .await
            .map_err(&during)?;
        for r in &rest {
            ticks.push(tick_of(r).map_err(&during)?);
        }
    }
    tx.commit().await.map_err(&during)?;
    let mut unpacker = Unpacker::new(metric_index, q.limit);
    let mut unpacked = Vec::new();
    for t in ticks {
        if unpacker.is_full() {
            break;
        }
        unpacker.push(t, &mut unpacked);
    }
    Ok(unpacker.into_rows(unpacked, &q.hostname))
}

/// Every metric of one host in a range, downsampled: the host's ticks in
/// the range streamed in (time, run) order (never all held at once), each
/// value pushed into `down` (whose series `i` is `Metric::ALL[i]`, the
/// metric id, as the store's face builds it).
pub(crate) async fn series(
    c: &mut impl GenericClient,
    target: &str,
    q: &SeriesQuery,
    mut down: Downsampler,
) -> Result<Vec<Series>, StoreError> {
    use tokio_stream::StreamExt;
    let during = sql("querying a series", target);
    let tx = c.transaction().await.map_err(&during)?;
    let host_id = host_id(&tx, &q.hostname, &during).await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&host_id, &q.since_unix_ms, &q.until_unix_ms];
    let rows = tx
        .query_raw(
            &format!(
                "SELECT time_unix_ms, run_id, receive_lag_ms, {} FROM ticks
                 WHERE host_id = $1 AND time_unix_ms >= $2 AND time_unix_ms < $3
                 ORDER BY time_unix_ms, run_id",
                METRIC_COLUMNS.join(", ")
            ),
            params,
        )
        .await
        .map_err(&during)?;
    tokio::pin!(rows);
    while let Some(row) = rows.next().await {
        let tick = tick_of(&row.map_err(&during)?).map_err(&during)?;
        down.push_tick(tick.time_unix_ms, &tick.values);
    }
    tx.commit().await.map_err(&during)?;
    Ok(down.finish())
}

/// Every host's metrics in a range, downsampled (`down` cloned for each),
/// by hostname: ONE statement over `ticks` for every host, streamed in
/// (host, time, run) order (never all held at once), in the transaction
/// that lists the hosts. A host without a sample in the range has empty
/// series.
pub(crate) async fn fleet_series(
    c: &mut impl GenericClient,
    target: &str,
    q: &FleetSeriesQuery,
    down: &Downsampler,
) -> Result<Vec<HostSeries>, StoreError> {
    use tokio_stream::StreamExt;
    let during = sql("querying every host's samples", target);
    let tx = c.transaction().await.map_err(&during)?;
    let mut hosts: Vec<(i64, String, Downsampler)> = tx
        .query("SELECT host_id, hostname FROM hosts ORDER BY host_id", &[])
        .await
        .map_err(&during)?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, down.clone())))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(&during)?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
        [&q.since_unix_ms, &q.until_unix_ms];
    let rows = tx
        .query_raw(
            &format!(
                "SELECT time_unix_ms, run_id, receive_lag_ms, {}, host_id FROM ticks
                 WHERE time_unix_ms >= $1 AND time_unix_ms < $2
                 ORDER BY host_id, time_unix_ms, run_id",
                METRIC_COLUMNS.join(", ")
            ),
            params,
        )
        .await
        .map_err(&during)?;
    tokio::pin!(rows);
    // Both by host id; a row of a host added since the list was read (the
    // snapshot holds none) is passed over.
    let mut at = 0;
    while let Some(row) = rows.next().await {
        let row = row.map_err(&during)?;
        let host_id: i64 = row.try_get(3 + METRICS).map_err(&during)?;
        while hosts.get(at).is_some_and(|h| h.0 < host_id) {
            at += 1;
        }
        if let Some((_, _, host_down)) = hosts.get_mut(at).filter(|h| h.0 == host_id) {
            let tick = tick_of(&row).map_err(&during)?;
            host_down.push_tick(tick.time_unix_ms, &tick.values);
        }
    }
    tx.commit().await.map_err(&during)?;
    let mut out: Vec<HostSeries> = hosts
        .into_iter()
        .map(|(_, hostname, d)| HostSeries {
            hostname,
            series: d.finish(),
        })
        .collect();
    out.sort_unstable_by(|a, b| a.hostname.cmp(&b.hostname));
    Ok(out)
}

/// Command history, newest command first; within a command, by hostname.
pub(crate) async fn history(
    c: &mut impl GenericClient,
    target: &str,
    hostname: Option<&str>,
    limit: usize,
) -> Result<Vec<HistoryRow>, StoreError> {
    let during = sql("reading command history", target);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let tx = c.transaction().await.map_err(&during)?;
    let rows = tx
        .query(
            "SELECT c.command_row, c.command_id, c.time_unix_ms, c.argv, r.hostname,
                 r.outcome, r.exit_code, r.signal, r.duration_ms, r.stdout_bytes,
                 r.stderr_bytes, r.message, r.finished_unix_ms, c.operator,
                 ARRAY(SELECT t.hostname FROM command_results t
                       WHERE t.command_row = c.command_row AND t.target_index >= 0
                       ORDER BY t.target_index) AS targets
             FROM command_results r JOIN commands c ON c.command_row = r.command_row
             WHERE $1::text IS NULL OR r.hostname = $1
             ORDER BY r.command_row DESC, r.hostname COLLATE \"C\"
             LIMIT $2",
            &[&hostname, &limit],
        )
        .await
        .map_err(&during)?;
    tx.commit().await.map_err(&during)?;
    rows.iter()
        .map(|r| history_row(r).map_err(|e| e.into_store(&during)))
        .collect()
}

/// Why a history row could not be read.
enum RowError {
    Sql(tokio_postgres::Error),
    Bad(String),
}

impl From<tokio_postgres::Error> for RowError {
    fn from(e: tokio_postgres::Error) -> RowError {
        RowError::Sql(e)
    }
}

impl RowError {
    fn into_store(self, during: &impl Fn(tokio_postgres::Error) -> StoreError) -> StoreError {
        match self {
            RowError::Sql(e) => during(e),
            RowError::Bad(what) => PostgresError::BadValue(what).into(),
        }
    }
}

fn history_row(r: &Row) -> Result<HistoryRow, RowError> {
    let command_id: String = r.try_get(1)?;
    let argv_blob: &[u8] = r.try_get(3)?;
    let argv = decode_argv(argv_blob)
        .ok_or_else(|| RowError::Bad(format!("commands.argv of command {command_id}")))?;
    let outcome = match r.try_get::<_, Option<String>>(5)? {
        None => None,
        Some(name) => Some(Outcome::from_name(&name).ok_or_else(|| {
            RowError::Bad(format!(
                "command_results.outcome '{name}' of command {command_id}"
            ))
        })?),
    };
    let u = |idx: usize| -> Result<u64, tokio_postgres::Error> {
        Ok(r.try_get::<_, Option<i64>>(idx)?.map_or(0, u64_from_sql))
    };
    Ok(HistoryRow {
        time_unix_ms: r.try_get(2)?,
        hostname: r.try_get(4)?,
        argv,
        targets: r.try_get(14)?,
        outcome,
        exit_code: r.try_get(6)?,
        signal: r.try_get(7)?,
        duration_ms: u(8)?,
        stdout_bytes: u(9)?,
        stderr_bytes: u(10)?,
        message: r.try_get::<_, Option<String>>(11)?.unwrap_or_default(),
        finished_unix_ms: r.try_get(12)?,
        operator: r.try_get(13)?,
        command_id,
    })
}

/// The values of one health metric of a host (see `health.rs`).
pub(crate) async fn health(
    c: &mut impl GenericClient,
    target: &str,
    q: &crate::store::records::HealthQuery,
) -> Result<Vec<crate::store::records::HealthRow>, StoreError> {
    let during = sql("querying health values", target);
    let tx = c.transaction().await.map_err(&during)?;
    let host_id = host_id(&tx, &q.hostname, &during).await?;
    let rows = super::health::query(&tx, host_id, q)
        .await
        .map_err(&during)?;
    tx.commit().await.map_err(&during)?;
    Ok(rows)
}

/// The health series of one host (`health.rs`'s scan), in one read-only
/// snapshot.
pub(crate) async fn health_series(
    c: &mut impl GenericClient,
    target: &str,
    q: &SeriesQuery,
    mut down: crate::store::health_series::HealthDownsampler,
) -> Result<crate::store::health_series::HealthDownsampler, StoreError> {
    let during = sql("querying health series", target);
    // One snapshot: the rollup's edge, its minute rows and the raw rows
    // after it (see `health.rs`).
    let tx = c.transaction().await.map_err(&during)?;
    tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(&during)?;
    let host_id = host_id(&tx, &q.hostname, &during).await?;
    super::health::scan(&tx, host_id, q, &mut down)
        .await
        .map_err(&during)?;
    tx.commit().await.map_err(&during)?;
    Ok(down)
}
