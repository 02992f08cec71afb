//! The health metrics of issue 14 in PostgreSQL: the `health` rows and
//! each host's latest values (`host_health_latest`), written by the flush
//! that stores their batch, in its transaction, and read by queries and
//! `hosts()`.
//!
//! A batch's health rows are staged only when the batch itself is stored
//! (never for a duplicate or a refused one), so the run's de-duplication
//! state covers them: exactly once, across replicas. A value already
//! stored under the same key is kept (`ON CONFLICT DO NOTHING`). The
//! latest values follow `store/latest_health.rs` (the same rule and cap as
//! SQLite), merged under the host row's lock the flush holds. Must never
//! write outside the flush's transaction.
//!
//! The per-minute rollup (`health_minutes`, schema 4, see
//! `store/health_rollup.rs`) is made by the flush too, under the same host
//! row locks, so replicas never roll one host at once ([`roll`]): the
//! minutes a host's newest value closed, and the minute of any value
//! arriving below the host's rolled edge, from the raw rows (never the
//! batches in hand: a value stored twice is one row). The edge is read from
//! the table (the minute after the host's newest row), nothing is kept in
//! memory. [`scan`] reads a query's whole-minute part below the edge from
//! it, the rest raw.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::{GenericClient, Transaction};

use super::text::pg_text;
use crate::store::latest_health::LatestHealthTable;
use monitor::health::HealthMetric;

use crate::store::health_rollup::{self, HEALTH_ROLLUP_MS, RollupBuilder, minute_of};
use crate::store::health_series::HealthDownsampler;
use crate::store::records::{HealthQuery, HealthRow, HostRecord, SeriesQuery, StoredHealth};

/// A staged row: (host_id, metric name, time, device) and (metric, value).
type Row<'a> = (
    &'a (i64, &'static str, i64, String),
    &'a (HealthMetric, f64),
);

/// The health values a flush stores: (host_id, metric name, time, device)
/// → value; the first value of a key stays, as in the table.
#[derive(Default)]
pub(crate) struct HealthWrites {
    rows: BTreeMap<(i64, &'static str, i64, String), (HealthMetric, f64)>,
}

impl HealthWrites {
    /// Stages a stored batch's health values for `host_id`.
    pub(crate) fn stage(&mut self, host_id: i64, values: &[StoredHealth]) {
        for v in values {
            let key = (host_id, v.metric.name(), v.time_unix_ms, pg_text(&v.device));
            self.rows.entry(key).or_insert((v.metric, v.value));
        }
    }
}

/// Writes the staged rows (those at or after `horizon_unix_ms`: older
/// ones fall in dropped partitions' time) and merges them into the hosts'
/// latest values.
pub(crate) async fn write(
    tx: &Transaction<'_>,
    writes: &HealthWrites,
    horizon_unix_ms: i64,
) -> Result<(), tokio_postgres::Error> {
    let live: Vec<Row<'_>> = writes
        .rows
        .iter()
        .filter(|((_, _, t, _), _)| *t >= horizon_unix_ms)
        .collect();
    if live.is_empty() {
        return Ok(());
    }
    let hosts: Vec<i64> = live.iter().map(|((h, ..), _)| *h).collect();
    let metrics: Vec<&str> = live.iter().map(|((_, m, ..), _)| *m).collect();
    let times: Vec<i64> = live.iter().map(|((_, _, t, _), _)| *t).collect();
    let devices: Vec<&str> = live.iter().map(|((.., d), _)| d.as_str()).collect();
    let values: Vec<f64> = live.iter().map(|(_, (_, v))| *v).collect();
    tx.execute(
        "INSERT INTO health (host_id, metric, time_unix_ms, device, value)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::float8[])
         ON CONFLICT DO NOTHING",
        &[&hosts, &metrics, &times, &devices, &values],
    )
    .await?;
    write_latest(tx, &live).await
}

/// Merges the flush's values into `host_health_latest` through
/// [`LatestHealthTable`]: reads the hosts' rows (locked with their host
/// rows by the flush), notes the new values, writes what changed.
async fn write_latest(tx: &Transaction<'_>, live: &[Row<'_>]) -> Result<(), tokio_postgres::Error> {
    let mut ids: Vec<i64> = live.iter().map(|((h, ..), _)| *h).collect();
    ids.dedup();
    let mut tables = load_tables(tx, &ids).await?;
    let before: HashMap<i64, LatestHealthTable> = tables.clone();
    for ((h, _, time, device), (metric, value)) in live {
        tables
            .entry(*h)
            .or_default()
            .note(*metric, device, *time, *value);
    }
    let (mut up_h, mut up_m, mut up_d, mut up_t, mut up_v) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut del_h, mut del_m, mut del_d) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cap_h, mut cap_n) = (Vec::new(), Vec::new());
    for (&h, table) in &tables {
        let old = before
            .get(&h)
            .map(LatestHealthTable::records)
            .unwrap_or_default();
        let new = table.records();
        for o in &old {
            if !table.holds(o.metric, &o.device) {
                del_h.push(h);
                del_m.push(o.metric.name());
                del_d.push(o.device.clone());
            }
        }
        for n in new {
            if !old.contains(&n) {
                up_h.push(h);
                up_m.push(n.metric.name());
                up_d.push(n.device);
                up_t.push(n.time_unix_ms);
                up_v.push(n.value);
            }
        }
        let over =
            table.over_cap_total() - before.get(&h).map_or(0, LatestHealthTable::over_cap_total);
        if over > 0 {
            cap_h.push(h);
            cap_n.push(i64::try_from(over).unwrap_or(i64::MAX));
        }
    }
    if !del_h.is_empty() {
        tx.execute(
            "DELETE FROM host_health_latest l
             USING unnest($1::bigint[], $2::text[], $3::text[]) AS u(h, m, d)
             WHERE l.host_id = u.h AND l.metric = u.m AND l.device = u.d",
            &[&del_h, &del_m, &del_d],
        )
        .await?;
    }
    if !up_h.is_empty() {
        tx.execute(
            "INSERT INTO host_health_latest (host_id, metric, device, time_unix_ms, value)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[],
                 $5::float8[])
             ON CONFLICT (host_id, metric, device) DO UPDATE SET
                 time_unix_ms = EXCLUDED.time_unix_ms, value = EXCLUDED.value",
            &[&up_h, &up_m, &up_d, &up_t, &up_v],
        )
        .await?;
    }
    if !cap_h.is_empty() {
        tx.execute(
            "UPDATE hosts SET health_series_over_cap_total = health_series_over_cap_total + u.n
             FROM unnest($1::bigint[], $2::bigint[]) AS u(h, n) WHERE hosts.host_id = u.h",
            &[&cap_h, &cap_n],
        )
        .await?;
    }
    Ok(())
}

/// The latest health values of the hosts `ids`, as tables. A metric name
/// this build does not know is skipped.
async fn load_tables(
    c: &impl GenericClient,
    ids: &[i64],
) -> Result<HashMap<i64, LatestHealthTable>, tokio_postgres::Error> {
    let mut tables: HashMap<i64, LatestHealthTable> = HashMap::new();
    for r in c
        .query(
            "SELECT host_id, metric, device, time_unix_ms, value FROM host_health_latest
             WHERE host_id = ANY($1)",
            &[&ids],
        )
        .await?
    {
        let Ok(metric) = r.try_get::<_, &str>(1)?.parse() else {
            continue;
        };
        let device: &str = r.try_get(2)?;
        tables
            .entry(r.try_get(0)?)
            .or_default()
            .note(metric, device, r.try_get(3)?, r.try_get(4)?);
    }
    Ok(tables)
}

/// The values of one health metric of `host_id`, in time then device
/// order, up to `q.limit`: one range scan of the primary key.
pub(crate) async fn query(
    c: &impl GenericClient,
    host_id: i64,
    q: &HealthQuery,
) -> Result<Vec<HealthRow>, tokio_postgres::Error> {
    let until = q.until_unix_ms.unwrap_or(i64::MAX);
    let limit: Option<i64> = q.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
    let rows = c
        .query(
            "SELECT time_unix_ms, device, value FROM health
             WHERE host_id = $1 AND metric = $2 AND time_unix_ms >= $3 AND time_unix_ms < $4
             ORDER BY time_unix_ms, device LIMIT $5",
            &[&host_id, &q.metric.name(), &q.since_unix_ms, &until, &limit],
        )
        .await?;
    rows.iter()
        .map(|r| Ok(q.row((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))))
        .collect()
}

/// Pushes the values of the health metrics `down` wants of `host_id` in
/// `q`'s range into it: the part the rollup answers
/// ([`health_rollup::rolled_part`]) from `health_minutes`, then the rest
/// from the raw rows; `c` must hold one snapshot for all three statements
/// (a REPEATABLE READ transaction). A minute row that cannot be decoded
/// makes the whole query read raw (and is logged).
pub(crate) async fn scan(
    c: &impl GenericClient,
    host_id: i64,
    q: &SeriesQuery,
    down: &mut HealthDownsampler,
) -> Result<(), tokio_postgres::Error> {
    let edge: Option<i64> = c
        .query_one(
            "SELECT max(minute_unix_ms) FROM health_minutes WHERE host_id = $1",
            &[&host_id],
        )
        .await?
        .try_get(0)?;
    let split = health_rollup::rolled_part(q, edge.map(|m| m + HEALTH_ROLLUP_MS));
    let mut raw_from = split;
    if split > q.since_unix_ms {
        let fresh = down.clone();
        if let Err(minute) = scan_minutes(c, host_id, (q.since_unix_ms, split), down).await? {
            log::warn!(
                "store: the health rollup of host {host_id} at minute {minute} cannot be \
                 read; answering from the raw rows"
            );
            *down = fresh;
            raw_from = q.since_unix_ms;
        }
    }
    scan_raw(c, host_id, (raw_from, q.until_unix_ms), down).await
}

/// Pushes the minute rows of `host_id` in `[from, until)` into `down`,
/// streamed; `Err(minute)` for a row that cannot be decoded.
async fn scan_minutes(
    c: &impl GenericClient,
    host_id: i64,
    (from, until): (i64, i64),
    down: &mut HealthDownsampler,
) -> Result<Result<(), i64>, tokio_postgres::Error> {
    use tokio_stream::StreamExt;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&host_id, &from, &until];
    let rows = c
        .query_raw(
            "SELECT minute_unix_ms, series FROM health_minutes
             WHERE host_id = $1 AND minute_unix_ms >= $2 AND minute_unix_ms < $3
             ORDER BY minute_unix_ms",
            params,
        )
        .await?;
    tokio::pin!(rows);
    while let Some(row) = rows.next().await {
        let row = row?;
        let start: i64 = row.try_get(0)?;
        let mut minute = Vec::new();
        if health_rollup::decode_minute(start, row.try_get(1)?, &mut minute).is_err() {
            return Ok(Err(start));
        }
        down.push_minute(&mut minute);
    }
    Ok(Ok(()))
}

/// Pushes the raw values of the health metrics `down` wants of `host_id`
/// in `[from, until)` into it, streamed: one range scan of the primary key
/// (host, metric, time, device) per metric, so each series comes oldest
/// first. A name this build does not know cannot be asked for.
async fn scan_raw(
    c: &impl GenericClient,
    host_id: i64,
    (from, until): (i64, i64),
    down: &mut HealthDownsampler,
) -> Result<(), tokio_postgres::Error> {
    use tokio_stream::StreamExt;
    let metrics: Vec<&str> = HealthMetric::ALL
        .into_iter()
        .filter(|&m| down.wants(m))
        .map(HealthMetric::name)
        .collect();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
        [&host_id, &metrics, &from, &until];
    let rows = c
        .query_raw(
            "SELECT metric, device, time_unix_ms, value FROM health
             WHERE host_id = $1 AND metric = ANY($2)
                 AND time_unix_ms >= $3 AND time_unix_ms < $4
             ORDER BY metric, time_unix_ms, device",
            params,
        )
        .await?;
    tokio::pin!(rows);
    while let Some(row) = rows.next().await {
        let row = row?;
        if let Ok(metric) = row.try_get::<_, &str>(0)?.parse() {
            down.push(metric, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        }
    }
    Ok(())
}

/// Minutes one flush rolls up beyond those it stored values in, all hosts
/// together (a steady fleet closes one minute per host per minute; an
/// upgraded database is rolled up this much at a time, oldest first, so
/// no flush stalls behind it).
const ROLL_MINUTES_PER_FLUSH: i64 = 240;

/// Rolls up, in the flush's transaction and under its host row locks, the
/// minutes of the flush's hosts that their newest values closed (within
/// [`ROLL_MINUTES_PER_FLUSH`]), and makes again the minute rows below a
/// host's edge that the flush stored values in. Runs after [`write`].
pub(crate) async fn roll(
    tx: &Transaction<'_>,
    writes: &HealthWrites,
    horizon_unix_ms: i64,
) -> Result<(), tokio_postgres::Error> {
    // host → (its newest value and the minutes it stored values in) in
    // this flush.
    let mut flushed: BTreeMap<i64, (i64, Vec<i64>)> = BTreeMap::new();
    for &(h, _, t, _) in writes.rows.keys() {
        if t < horizon_unix_ms {
            continue;
        }
        let (newest, minutes) = flushed.entry(h).or_insert((t, Vec::new()));
        *newest = (*newest).max(t);
        let m = minute_of(t);
        if !minutes.contains(&m) {
            minutes.push(m);
        }
    }
    if flushed.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = flushed.keys().copied().collect();
    let names: Vec<&str> = HealthMetric::ALL
        .into_iter()
        .map(HealthMetric::name)
        .collect();
    // Each host's edge and (to step over minutes without values) its
    // oldest value at or after it: one index lookup per metric.
    let rows = tx
        .query(
            "SELECT u.h, e.edge, (SELECT min(x.time_unix_ms) FROM unnest($2::text[]) AS n(m),
                     LATERAL (SELECT min(time_unix_ms) AS time_unix_ms FROM health
                              WHERE host_id = u.h AND metric = n.m
                                  AND time_unix_ms >= coalesce(e.edge, $3)) x)
             FROM unnest($1::bigint[]) AS u(h),
                 LATERAL (SELECT max(minute_unix_ms) + $4 AS edge FROM health_minutes
                          WHERE host_id = u.h) e",
            &[&ids, &names, &horizon_unix_ms, &HEALTH_ROLLUP_MS],
        )
        .await?;
    let mut spans: Vec<(i64, i64, i64)> = Vec::new();
    // Plus the minutes this flush stored values in: rolls only happen in
    // flushes holding the host, so a flush must roll at least as many
    // minutes as it may close, or a backlog would wait for more batches.
    let stored_minutes: usize = flushed.values().map(|(_, m)| m.len()).sum();
    let mut budget =
        ROLL_MINUTES_PER_FLUSH.saturating_add(i64::try_from(stored_minutes).unwrap_or(i64::MAX));
    for r in rows {
        let (h, edge, first): (i64, Option<i64>, Option<i64>) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        let Some((newest, minutes)) = flushed.get(&h) else {
            continue;
        };
        if let Some(edge) = edge {
            for &m in minutes.iter().filter(|&&m| m < edge) {
                spans.push((h, m, m + HEALTH_ROLLUP_MS));
            }
        }
        let target = minute_of(*newest);
        let start = match (first, edge) {
            (Some(t), e) => minute_of(t).max(e.unwrap_or(i64::MIN)),
            (None, _) => target,
        };
        if start < target && budget > 0 {
            let end = target.min(start.saturating_add(budget * HEALTH_ROLLUP_MS));
            budget -= (end - start) / HEALTH_ROLLUP_MS;
            spans.push((h, start, end));
        }
    }
    if spans.is_empty() {
        return Ok(());
    }
    let span_h: Vec<i64> = spans.iter().map(|s| s.0).collect();
    let span_from: Vec<i64> = spans.iter().map(|s| s.1).collect();
    let span_until: Vec<i64> = spans.iter().map(|s| s.2).collect();
    tx.execute(
        "DELETE FROM health_minutes m
         USING unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS s(h, f, t)
         WHERE m.host_id = s.h AND m.minute_unix_ms >= s.f AND m.minute_unix_ms < s.t",
        &[&span_h, &span_from, &span_until],
    )
    .await?;
    let mut builders: BTreeMap<i64, RollupBuilder> = BTreeMap::new();
    for r in tx
        .query(
            "SELECT s.h, x.metric, x.device, x.time_unix_ms, x.value
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS s(h, f, t),
                 LATERAL (SELECT metric, device, time_unix_ms, value FROM health
                          WHERE host_id = s.h AND metric = ANY($4)
                              AND time_unix_ms >= s.f AND time_unix_ms < s.t) x
             ORDER BY s.h, x.metric, x.time_unix_ms, x.device",
            &[&span_h, &span_from, &span_until, &names],
        )
        .await?
    {
        let Ok(metric) = r.try_get::<_, &str>(1)?.parse() else {
            continue;
        };
        builders.entry(r.try_get(0)?).or_default().push(
            metric,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?,
        );
    }
    let (mut in_h, mut in_m, mut in_s) = (Vec::new(), Vec::new(), Vec::new());
    for (h, builder) in builders {
        for (minute, series) in builder.finish() {
            in_h.push(h);
            in_m.push(minute);
            in_s.push(series);
        }
    }
    tx.execute(
        "INSERT INTO health_minutes (host_id, minute_unix_ms, series)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])",
        &[&in_h, &in_m, &in_s],
    )
    .await?;
    Ok(())
}

/// Fills each host's latest health values (and its over-cap count, read
/// with the host's row) from `host_health_latest`.
pub(crate) async fn add_latest(
    c: &impl GenericClient,
    hosts: &mut [(i64, HostRecord)],
) -> Result<(), tokio_postgres::Error> {
    let ids: Vec<i64> = hosts.iter().map(|(id, _)| *id).collect();
    let tables = load_tables(c, &ids).await?;
    for (id, host) in hosts.iter_mut() {
        if let Some(t) = tables.get(id) {
            host.health = t.records();
        }
    }
    Ok(())
}
