//! The dashboard's JSON API under `/api/` (the pages use it; scripts may):
//! read-only GETs, so a forged cross-site request can change nothing.
//! The shapes are an interface, documented in the README's Dashboard
//! section:
//! - `/api/metrics`: which series exist and their units (the pages hard-code
//!   no metric);
//! - `/api/hosts`, `/api/hosts/NAME`: the operator API's `ListHosts` join
//!   (`admin::host_infos`: store facts, registry liveness) as JSON, with
//!   each host's latest health values and the throttling it reports now
//!   (`/api/hosts`: one answer per 3 s shared by every page, `shared.rs`);
//! - `/api/hosts/NAME/series?range=1h` (or `since`/`until` in ms, and
//!   `points`): downsampled min/max/mean (`plot.rs`);
//! - `/api/hosts/NAME/health?metric=a,b&range=1h`: the health metrics the
//!   same way, one series per metric, mount point or throttling
//!   condition (`store/health_series.rs`);
//! - `/api/sparklines`: every host's last 15 minutes per series, as shapes
//!   for the fleet page's sparklines (one store read for the whole fleet,
//!   at most every 15 s, shared);
//! - `/api/commands?host=NAME&limit=N`: the command history.
//!
//! Every string an agent sent goes out as a JSON string (serde escapes it)
//! and is capped; the pages put it in the document with `textContent`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use monitor::health::{HealthMetric, THROTTLE_FLAGS};
use monitor::metric::Metric;
use monitor::pb;
use serde::Serialize;

use super::HttpState;
use super::plot;
use super::shared::{self, Built, SharedAnswer, SharedError};
use crate::admin::host_infos;
use crate::exported::{FLAG_LABEL, FLAG_UNIT, PERCENT, exported, health_unit};
use crate::store::{HistoryRow, StoreError};

/// Command history rows when the request names no limit, and the most it
/// may name.
const DEFAULT_COMMANDS: usize = 100;
const MAX_COMMANDS: usize = 1000;
/// The longest range a series request may cover.
const MAX_RANGE_MS: i64 = 400 * 86_400_000;
/// Bytes of an agent's message kept in a history row.
const MAX_MESSAGE_BYTES: usize = 1024;

/// What the sparklines cover, in how many points, and how long one
/// computation serves every page.
const SPARK_RANGE_MS: i64 = 15 * 60_000;
const SPARK_POINTS: i64 = 30;
const SPARK_PERIOD: Duration = Duration::from_secs(15);
/// How long a page waits for the very first sparklines: past it, it is
/// answered `pending` and the read goes on (at 5,000 hosts with 15 minutes
/// of history the first read took over 30 s and pages timed out).
const SPARK_FIRST_WAIT: Duration = Duration::from_secs(2);
/// A sparklines bucket that ended this long ago is taken as final: agents
/// send within seconds, so the next computation reads only the samples
/// after it (15 s of the fleet, not 15 minutes).
const SPARK_SETTLE_MS: i64 = 30_000;
/// Once per range the whole 15 minutes are read again, so samples that
/// came late (an agent's buffer after an outage) show within this time.
/// A full read is the expensive one: at 5,000 hosts with 15 minutes of
/// history (4.8 million ticks) it took over 30 s on this loaded 2-core
/// machine, so it is not made more often than it must.
const SPARK_FULL_READ_MS: i64 = SPARK_RANGE_MS;
/// How long one `/api/hosts` answer serves every page: the period the
/// pages poll at (they read it from the answer's `poll_ms`).
const HOSTS_PERIOD: Duration = Duration::from_secs(3);

/// The answers every open page shares (`shared.rs`): N pages cost one
/// build per period, not N.
pub struct SharedAnswers {
    /// `/api/hosts`: built again when a page asks past its period (the
    /// pages must see a host go offline).
    hosts: SharedAnswer,
    /// `/api/sparklines`: a page is answered from the last one while the
    /// next is made in the background, so no page waits on a large fleet's
    /// computation but the very first.
    sparklines: SharedAnswer,
    /// What the last sparklines read found (`SparkMemory`).
    spark_memory: std::sync::Mutex<Option<SparkMemory>>,
}

impl Default for SharedAnswers {
    fn default() -> SharedAnswers {
        SharedAnswers {
            hosts: SharedAnswer::new("hosts", HOSTS_PERIOD),
            sparklines: SharedAnswer::new("sparklines", SPARK_PERIOD),
            spark_memory: std::sync::Mutex::new(None),
        }
    }
}

impl From<SharedError<ApiError>> for ApiError {
    fn from(e: SharedError<ApiError>) -> ApiError {
        match e {
            SharedError::Build(e) => e,
            SharedError::Encode(e) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }
}

/// An error answer: `{"error": "..."}` with its status.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: String,
        }
        (self.0, Json(Body { error: self.1 })).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::UnknownHost(h) => not_found(&h),
            StoreError::BadSeriesQuery(e) => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
            other => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the store is unavailable: {other}"),
            ),
        }
    }
}

fn not_found(hostname: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "unknown host '{}'",
            monitor::text::Escaped::capped(hostname)
        ),
    )
}

fn bad_request(what: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, what)
}

#[derive(Serialize)]
pub struct MetricsAnswer {
    pub metrics: Vec<MetricJson>,
    /// The health metrics (issue 14) `/api/hosts/NAME/health` serves.
    pub health: Vec<HealthMetricJson>,
}

#[derive(Serialize)]
pub struct HealthMetricJson {
    pub metric: &'static str,
    /// The label naming its series, if it has several: `mountpoint`, or
    /// `flag` for the throttling conditions.
    pub label: Option<&'static str>,
    pub unit: &'static str,
    /// Values are 0..=100.
    pub percent: bool,
    /// Values are 0 or 1 (a condition): a step plot.
    pub flag: bool,
}

fn health_metric_json(m: HealthMetric) -> HealthMetricJson {
    let unit = health_unit(m);
    HealthMetricJson {
        metric: m.name(),
        label: match m {
            HealthMetric::ThrottledFlags => Some(FLAG_LABEL),
            _ => m.spec().label,
        },
        unit,
        percent: unit == PERCENT,
        flag: unit == FLAG_UNIT,
    }
}

#[derive(Serialize)]
pub struct MetricJson {
    pub metric: &'static str,
    pub labels: BTreeMap<String, String>,
    pub unit: &'static str,
    /// Values are 0..=100.
    pub percent: bool,
}

/// `GET /api/metrics`.
pub async fn metrics() -> Json<MetricsAnswer> {
    Json(MetricsAnswer {
        metrics: Metric::ALL
            .iter()
            .map(|&m| MetricJson {
                metric: m.name(),
                labels: BTreeMap::new(),
                unit: exported(m).stored_unit,
                percent: m.is_percent(),
            })
            .collect(),
        health: HealthMetric::ALL
            .into_iter()
            .map(health_metric_json)
            .collect(),
    })
}

#[derive(Serialize)]
pub struct HostJson {
    pub hostname: String,
    pub online: bool,
    /// 0 while offline.
    pub connected_since_unix_ms: i64,
    pub last_seen_unix_ms: i64,
    pub peer: String,
    pub agent_version: String,
    pub clock_offset_ms: i64,
    pub interval_ms: u64,
    pub dropped_batches_total: u64,
    pub batches_stored_total: u64,
    pub latest: Vec<LatestJson>,
    /// The latest health values (issue 14), a file system's mount point as
    /// the `mountpoint` label (escaped and capped like every agent string).
    pub health: Vec<LatestJson>,
    /// The names (`monitor::health::THROTTLE_FLAGS`) of the throttling
    /// conditions the Pi's firmware reports now; empty when none or not a
    /// Pi.
    pub throttled_now: Vec<&'static str>,
}

#[derive(Serialize)]
pub struct LatestJson {
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    pub time_unix_ms: i64,
}

fn host_json(h: pb::HostInfo) -> HostJson {
    let capped = |s: String| monitor::text::Escaped::capped(&s).to_string();
    let throttled_now = h
        .health
        .iter()
        .find(|v| v.metric == HealthMetric::ThrottledFlags.name())
        .map(|v| {
            THROTTLE_FLAGS
                .iter()
                .filter(|f| f.is_set(v.value, false))
                .map(|f| f.name)
                .collect()
        })
        .unwrap_or_default();
    let health = h
        .health
        .into_iter()
        .map(|v| {
            let label = HealthMetric::ALL
                .into_iter()
                .find(|m| m.name() == v.metric)
                .and_then(|m| m.spec().label);
            LatestJson {
                metric: v.metric,
                labels: label
                    .map(|l| BTreeMap::from([(l.to_owned(), capped(v.device))]))
                    .unwrap_or_default(),
                value: v.value,
                time_unix_ms: v.time_unix_ms,
            }
        })
        .collect();
    HostJson {
        hostname: h.hostname,
        online: h.online,
        connected_since_unix_ms: h.connected_since_unix_ms,
        last_seen_unix_ms: h.last_seen_unix_ms,
        peer: h.peer,
        agent_version: capped(h.agent_version),
        clock_offset_ms: h.clock_offset_ms,
        interval_ms: h.interval_ms,
        dropped_batches_total: h.dropped_batches_total,
        batches_stored_total: h.batches_stored_total,
        latest: h
            .latest
            .into_iter()
            .map(|v| LatestJson {
                metric: v.metric,
                labels: BTreeMap::new(),
                value: v.value,
                time_unix_ms: v.time_unix_ms,
            })
            .collect(),
        health,
        throttled_now,
    }
}

/// `GET /api/hosts`: every host, by name, as
/// `{"server_unix_ms": N, "poll_ms": N, "hosts": [HostJson...]}`: one
/// answer per [`HOSTS_PERIOD`] shared by every page, gzipped once, with an
/// ETag that changes only when a host's row does (`If-None-Match` gets a
/// 304, and the page keeps what it has).
pub async fn hosts(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let answer = state.answers.hosts.current(|| build_hosts(&state)).await?;
    Ok(answer.respond(&headers))
}

/// The `/api/hosts` JSON: copies of the store's host table and the
/// registry, joined and encoded on the blocking pool.
async fn build_hosts(state: &HttpState) -> Result<Built, ApiError> {
    let stored = state.store.hosts().await?;
    let live = state.registry.snapshot();
    tokio::task::spawn_blocking(move || {
        let hosts: Vec<HostJson> = host_infos(stored, live, usize::MAX)
            .into_iter()
            .map(host_json)
            .collect();
        // The time of the build is left out of the tag: the rows decide.
        let mut json = format!(
            "{{\"server_unix_ms\":{},\"poll_ms\":{},\"hosts\":",
            monitor::time::now_unix_ms(),
            HOSTS_PERIOD.as_millis()
        )
        .into_bytes();
        let tag_from = json.len();
        serde_json::to_writer(&mut json, &hosts).map_err(internal)?;
        json.push(b'}');
        Ok(Built { json, tag_from })
    })
    .await
    .map_err(internal)?
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// `GET /api/hosts/NAME`: one host, 404 if neither the store nor the
/// registry knows it.
pub async fn host(
    State(state): State<HttpState>,
    Path(hostname): Path<String>,
) -> Result<Json<HostJson>, ApiError> {
    let stored: Vec<_> = state.store.host(&hostname).await?.into_iter().collect();
    let live: Vec<_> = state
        .registry
        .snapshot()
        .into_iter()
        .filter(|l| l.hostname == hostname)
        .collect();
    host_infos(stored, live, 1)
        .into_iter()
        .next()
        .map(|h| Json(host_json(h)))
        .ok_or_else(|| not_found(&hostname))
}

/// `GET /api/hosts/NAME/series?range=1h&points=2000` or
/// `?since=MS&until=MS`: every metric downsampled.
pub async fn series(
    State(state): State<HttpState>,
    Path(hostname): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref().unwrap_or(""));
    let q = series_query(&hostname, &params)?;
    let started = std::time::Instant::now();
    let series = state.store.series(q.clone()).await?;
    let read_ms = started.elapsed().as_millis();
    timed_json(started, read_ms, move || plot::plot(&q, series)).await
}

/// The downsampling of a series request's `range` (or `since`/`until`, ms)
/// and `points`.
fn series_query(hostname: &str, params: &Params) -> Result<crate::store::SeriesQuery, ApiError> {
    let now = monitor::time::now_unix_ms();
    let until = match params.get("until") {
        Some(v) => parse_ms("until", v)?,
        None => now,
    };
    let since = match (params.get("since"), params.get("range")) {
        (Some(v), _) => parse_ms("since", v)?,
        (None, Some(r)) => {
            let d =
                monitor::time::parse_duration(r).map_err(|e| bad_request(format!("range: {e}")))?;
            until.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        }
        (None, None) => until.saturating_sub(3_600_000),
    };
    if until
        .checked_sub(since)
        .is_none_or(|span| span <= 0 || span > MAX_RANGE_MS)
    {
        return Err(bad_request(format!(
            "the range must be non-empty and at most 400 days: since {since}, until {until}"
        )));
    }
    let points = match params.get("points") {
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|p| (1..=plot::MAX_POINTS).contains(p))
            .ok_or_else(|| {
                bad_request(format!(
                    "points: expected 1 to {}, got '{}'",
                    plot::MAX_POINTS,
                    monitor::text::Escaped::capped(v)
                ))
            })?,
        None => plot::MAX_POINTS,
    };
    Ok(plot::query(hostname, since, until, points))
}

/// `make()`'s answer encoded off the async threads, with a Server-Timing
/// header: what the store read took (`read_ms`; the bench reports it) and
/// the whole since `started`.
async fn timed_json<T: Serialize + Send + 'static>(
    started: std::time::Instant,
    read_ms: u128,
    make: impl FnOnce() -> T + Send + 'static,
) -> Result<Response, ApiError> {
    let answer = tokio::task::spawn_blocking(move || serde_json::to_vec(&make()))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [
            (http::header::CONTENT_TYPE, "application/json".to_owned()),
            (
                http::HeaderName::from_static("server-timing"),
                format!(
                    "store;dur={read_ms}, total;dur={}",
                    started.elapsed().as_millis()
                ),
            ),
        ],
        answer,
    )
        .into_response())
}

/// The answer of `/api/hosts/NAME/health`: a series answer, plus how many
/// devices the per-metric cap left out.
#[derive(Serialize)]
pub struct HealthAnswer {
    #[serde(flatten)]
    pub plot: plot::Plot,
    /// Devices (e.g. mount points) with values in the range but not among
    /// the series: a labelled metric gives at most
    /// `store::health_series::MAX_DEVICES_PER_METRIC` series.
    pub devices_left_out: usize,
}

/// `GET /api/hosts/NAME/health?metric=temp_celsius,fs_used_percent&range=1h`
/// (the range as for `series`): the health metrics named (every one
/// without `metric`) downsampled the same way, one series per metric, per
/// mount point and per throttling condition; only those with values in
/// the range.
pub async fn health(
    State(state): State<HttpState>,
    Path(hostname): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref().unwrap_or(""));
    let metrics = match params.get("metric") {
        None => HealthMetric::ALL.to_vec(),
        Some(list) => health_metrics(list)?,
    };
    let q = series_query(&hostname, &params)?;
    let started = std::time::Instant::now();
    let found = state.store.health_series(q.clone(), &metrics).await?;
    let read_ms = started.elapsed().as_millis();
    timed_json(started, read_ms, move || HealthAnswer {
        plot: plot::plot(&q, found.series),
        devices_left_out: found.devices_left_out,
    })
    .await
}

/// A `metric=` list (comma-separated health metric names), each once.
fn health_metrics(list: &str) -> Result<Vec<HealthMetric>, ApiError> {
    let mut metrics = Vec::new();
    for name in list.split(',') {
        let metric = name.parse::<HealthMetric>().map_err(|_| {
            let known: Vec<&str> = HealthMetric::ALL.iter().map(|m| m.name()).collect();
            let six = if name.parse::<Metric>().is_ok() {
                " (one of the six: see /api/hosts/NAME/series)"
            } else {
                ""
            };
            bad_request(format!(
                "metric: unknown health metric '{}'{six}; known: {}",
                monitor::text::Escaped::capped(name),
                known.join(", ")
            ))
        })?;
        if !metrics.contains(&metric) {
            metrics.push(metric);
        }
    }
    Ok(metrics)
}

#[derive(Serialize)]
pub struct SparklinesAnswer {
    pub since_unix_ms: i64,
    pub step_ms: i64,
    /// Hostname → series key (metric, or metric{label=value}) → one level
    /// per bucket from `since`: 0 (the series' lowest mean in the range) to
    /// 100 (its highest), `null` without samples. Shapes, not values.
    pub hosts: BTreeMap<String, BTreeMap<&'static str, Vec<Option<u8>>>>,
    /// The first sparklines are still being made (a large fleet's first
    /// read takes longer than [`SPARK_FIRST_WAIT`]): ask again soon.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

/// `GET /api/sparklines`: the last answer (a new one made in the
/// background when it is stale), or the first one made now; ETag and
/// gzip as `/api/hosts`.
pub async fn sparklines(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let shared = &state.answers.sparklines;
    let answer = match shared.last() {
        Some(last) => {
            if !shared.is_fresh() && !shared.is_building() {
                let state = state.clone();
                tokio::spawn(async move {
                    let shared = &state.answers.sparklines;
                    if let Err(e) = shared.current(|| compute_sparklines(&state)).await {
                        log::warn!(
                            "dashboard: sparklines not computed: {}",
                            ApiError::from(e).1
                        );
                    }
                });
            }
            last
        }
        None if shared.is_building() => return Ok(pending_sparklines()),
        None => {
            let first = {
                let state = state.clone();
                async move {
                    let shared = &state.answers.sparklines;
                    shared.current(|| compute_sparklines(&state)).await
                }
            };
            match shared::within(SPARK_FIRST_WAIT, first).await {
                Some(done) => done.map_err(internal)??,
                None => return Ok(pending_sparklines()),
            }
        }
    };
    Ok(answer.respond(&headers))
}

/// The answer while the first sparklines are still being made: no hosts,
/// `pending`, and nothing a page may keep (no tag, `no-store`).
fn pending_sparklines() -> Response {
    let now = monitor::time::now_unix_ms();
    let grid = plot::query("", now - SPARK_RANGE_MS, now, SPARK_POINTS);
    let answer = SparklinesAnswer {
        since_unix_ms: grid.since_unix_ms,
        step_ms: grid.step_ms,
        hosts: BTreeMap::new(),
        pending: true,
    };
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(answer),
    )
        .into_response()
}

/// One host's bucket means per series (in [`Metric::ALL`] order): (bucket
/// start, mean), oldest first.
type Means = Vec<Vec<(i64, f64)>>;

/// What the last sparklines read found: each host's bucket means, and up
/// to where they are final (see [`SPARK_SETTLE_MS`]).
struct SparkMemory {
    step_ms: i64,
    settled_until_unix_ms: i64,
    /// When the whole range was last read.
    full_read_unix_ms: i64,
    hosts: BTreeMap<String, Means>,
}

/// Every host's sparklines, encoded: one store read for the whole fleet,
/// from where the last read's buckets were final (or, every
/// [`SPARK_FULL_READ_MS`], the whole range).
async fn compute_sparklines(state: &HttpState) -> Result<Built, ApiError> {
    let now = monitor::time::now_unix_ms();
    let grid = plot::query("", now - SPARK_RANGE_MS, now, SPARK_POINTS);
    let memory = state
        .answers
        .spark_memory
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .filter(|m| {
            m.step_ms == grid.step_ms
                && m.settled_until_unix_ms > grid.since_unix_ms
                && m.settled_until_unix_ms <= now
                && now - m.full_read_unix_ms < SPARK_FULL_READ_MS
        });
    let from_unix_ms = memory
        .as_ref()
        .map_or(grid.since_unix_ms, |m| m.settled_until_unix_ms);
    let fresh = state
        .store
        .fleet_series(crate::store::FleetSeriesQuery {
            since_unix_ms: from_unix_ms,
            until_unix_ms: grid.until_unix_ms,
            step_ms: grid.step_ms,
        })
        .await?;
    let (built, memory) = tokio::task::spawn_blocking(move || {
        let full_read_unix_ms = memory.as_ref().map_or(now, |m| m.full_read_unix_ms);
        let hosts = join_means(
            memory.map(|m| m.hosts).unwrap_or_default(),
            fresh,
            grid.since_unix_ms,
            from_unix_ms,
        );
        let answer = SparklinesAnswer {
            since_unix_ms: grid.since_unix_ms,
            step_ms: grid.step_ms,
            hosts: hosts
                .iter()
                .map(|(name, means)| (name.clone(), spark_levels(&grid, means)))
                .collect(),
            pending: false,
        };
        let json = serde_json::to_vec(&answer).map_err(internal)?;
        let memory = SparkMemory {
            step_ms: grid.step_ms,
            settled_until_unix_ms: (now - SPARK_SETTLE_MS).div_euclid(grid.step_ms) * grid.step_ms,
            full_read_unix_ms,
            hosts,
        };
        Ok::<_, ApiError>((Built { json, tag_from: 0 }, memory))
    })
    .await
    .map_err(internal)??;
    *state
        .answers
        .spark_memory
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(memory);
    Ok(built)
}

/// Each host of `fresh` (read from `from_unix_ms` on) with the means `kept`
/// holds for it in [`since_unix_ms`, `from_unix_ms`) before its own: the
/// hosts are those of `fresh` (every host the store knows).
fn join_means(
    mut kept: BTreeMap<String, Means>,
    fresh: Vec<crate::store::HostSeries>,
    since_unix_ms: i64,
    from_unix_ms: i64,
) -> BTreeMap<String, Means> {
    fresh
        .into_iter()
        .map(|h| {
            let mut old = kept.remove(&h.hostname).unwrap_or_default();
            let means = h
                .series
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut m: Vec<(i64, f64)> = old
                        .get_mut(i)
                        .map(std::mem::take)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|&(t, _)| t >= since_unix_ms && t < from_unix_ms)
                        .collect();
                    m.extend(
                        s.buckets
                            .iter()
                            .map(|b| (b.start_unix_ms, b.sum / f64::from(b.count.max(1)))),
                    );
                    m
                })
                .collect();
            (h.hostname, means)
        })
        .collect()
}

/// One host's sparklines on `grid`: per series (named in [`Metric::ALL`]
/// order), each bucket's mean as a level from 0 (the series' lowest mean
/// in the range) to 100 (its highest), `None` for a bucket without
/// samples.
fn spark_levels(
    grid: &crate::store::SeriesQuery,
    means: &Means,
) -> BTreeMap<&'static str, Vec<Option<u8>>> {
    let buckets =
        usize::try_from((grid.until_unix_ms - grid.since_unix_ms) / grid.step_ms + 1).unwrap_or(0);
    let mut per = BTreeMap::new();
    for (metric, means) in Metric::ALL.iter().zip(means) {
        let lo = means.iter().map(|m| m.1).fold(f64::INFINITY, f64::min);
        let hi = means.iter().map(|m| m.1).fold(f64::NEG_INFINITY, f64::max);
        let mut levels = vec![None; buckets];
        for &(start, m) in means {
            let k = usize::try_from((start - grid.since_unix_ms) / grid.step_ms).ok();
            if let Some(l) = k.and_then(|k| levels.get_mut(k)) {
                let level = if hi > lo {
                    (m - lo) / (hi - lo) * 100.0
                } else {
                    50.0
                };
                *l = Some(level.round().clamp(0.0, 100.0) as u8);
            }
        }
        per.insert(metric.name(), levels);
    }
    per
}

#[derive(Serialize)]
pub struct CommandsAnswer {
    pub commands: Vec<CommandJson>,
}

#[derive(Serialize)]
pub struct CommandJson {
    pub command_id: String,
    pub time_unix_ms: i64,
    pub hostname: String,
    pub argv: Vec<String>,
    pub targets: Vec<String>,
    pub operator: String,
    /// `null` while pending.
    pub outcome: Option<&'static str>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration_ms: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub message: String,
    pub finished_unix_ms: Option<i64>,
}

fn command_json(r: HistoryRow) -> CommandJson {
    CommandJson {
        command_id: r.command_id,
        time_unix_ms: r.time_unix_ms,
        hostname: r.hostname,
        argv: r.argv,
        targets: r.targets,
        operator: r.operator,
        outcome: r.outcome.map(|o| o.name()),
        exit_code: r.exit_code,
        signal: r.signal,
        duration_ms: r.duration_ms,
        stdout_bytes: r.stdout_bytes,
        stderr_bytes: r.stderr_bytes,
        message: monitor::text::Escaped::with_limit(&r.message, MAX_MESSAGE_BYTES).to_string(),
        finished_unix_ms: r.finished_unix_ms,
    }
}

/// `GET /api/commands?host=NAME&limit=N`: newest first.
pub async fn commands(
    State(state): State<HttpState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<CommandsAnswer>, ApiError> {
    let params = Params::parse(raw.as_deref().unwrap_or(""));
    let limit = match params.get("limit") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_COMMANDS).contains(l))
            .ok_or_else(|| {
                bad_request(format!(
                    "limit: expected 1 to {MAX_COMMANDS}, got '{}'",
                    monitor::text::Escaped::capped(v)
                ))
            })?,
        None => DEFAULT_COMMANDS,
    };
    let host = params.get("host").map(str::to_owned);
    let rows = state.store.history(host, limit).await?;
    Ok(Json(CommandsAnswer {
        commands: rows.into_iter().map(command_json).collect(),
    }))
}

fn parse_ms(name: &str, v: &str) -> Result<i64, ApiError> {
    v.parse::<i64>().map_err(|_| {
        bad_request(format!(
            "{name}: expected ms since the Unix epoch, got '{}'",
            monitor::text::Escaped::capped(v)
        ))
    })
}

/// A query string's parameters (`a=1&b=x%20y`), percent-decoded; the
/// first of a repeated name wins.
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(raw: &str) -> Params {
        Params(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Percent-decoding (and `+` as a space); invalid escapes stay as they
/// are, invalid UTF-8 becomes U+FFFD.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded() {
        let p = Params::parse("host=pi%2D7&range=1h&x=a+b&bad=%zz&end=%4");
        assert_eq!(p.get("host"), Some("pi-7"));
        assert_eq!(p.get("range"), Some("1h"));
        assert_eq!(p.get("x"), Some("a b"));
        assert_eq!(p.get("bad"), Some("%zz"));
        assert_eq!(p.get("end"), Some("%4"));
        assert_eq!(p.get("none"), None);
    }

    #[test]
    fn sparklines_keep_final_buckets_and_take_the_rest_from_the_new_read() {
        use crate::store::{Bucket, HostSeries, Series};
        let bucket = |start_unix_ms, sum| Bucket {
            start_unix_ms,
            count: 2,
            min: 0.0,
            max: 0.0,
            sum,
            max_gap_ms: 0,
        };
        let host = |name: &str, buckets: Vec<Bucket>| HostSeries {
            hostname: name.into(),
            series: Metric::ALL
                .iter()
                .map(|&metric| Series {
                    metric,
                    interval_ms: None,
                    buckets: buckets.clone(),
                })
                .collect(),
        };
        let kept_means = vec![vec![(0, 1.0), (30_000, 2.0), (60_000, 9.0)]; Metric::ALL.len()];
        let kept = BTreeMap::from([
            ("a".to_owned(), kept_means.clone()),
            ("gone".to_owned(), kept_means),
        ]);
        // Read from 60 s on; the range now starts at 30 s.
        let fresh = vec![
            host("a", vec![bucket(60_000, 8.0)]),
            host("b", vec![bucket(90_000, 2.0)]),
        ];
        let joined = join_means(kept, fresh, 30_000, 60_000);
        assert_eq!(joined.keys().collect::<Vec<_>>(), ["a", "b"]);
        // Before the range: dropped; final: kept; from the read on: new.
        assert_eq!(joined["a"][0], [(30_000, 2.0), (60_000, 4.0)]);
        assert_eq!(joined["b"][5], [(90_000, 1.0)]);

        let grid = plot::query("", 30_000, 120_000, 3);
        assert_eq!((grid.since_unix_ms, grid.step_ms), (30_000, 30_000));
        let levels = spark_levels(&grid, &joined["a"]);
        assert_eq!(levels.len(), Metric::ALL.len());
        assert_eq!(levels["cpu_percent"], [Some(0), Some(100), None, None]);
        assert_eq!(
            spark_levels(&grid, &joined["b"])["cpu_percent"][2],
            Some(50)
        );
    }

    #[test]
    fn hosts_carry_their_health_with_labels_and_throttling_now() {
        let value = |metric: &str, device: &str, value| pb::MetricValue {
            metric: metric.into(),
            value,
            time_unix_ms: 5,
            device: device.into(),
        };
        let h = host_json(pb::HostInfo {
            hostname: "pi".into(),
            health: vec![
                value("temp_celsius", "", 82.0),
                value("throttled_flags", "", f64::from(0x50005)),
                value("fs_used_percent", "/media/\u{1b}[2J", 95.0),
            ],
            ..Default::default()
        });
        assert_eq!(h.throttled_now, ["under_voltage", "throttled"]);
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["health"][0]["metric"], "temp_celsius");
        assert_eq!(json["health"][0]["labels"], serde_json::json!({}));
        assert_eq!(
            json["health"][2]["labels"],
            serde_json::json!({"mountpoint": "/media/\\x1b[2J"})
        );
        let none = host_json(pb::HostInfo::default());
        assert!(none.health.is_empty() && none.throttled_now.is_empty());
    }

    #[test]
    fn health_metric_lists_are_checked_and_named_in_the_error() {
        let m = health_metrics("temp_celsius,fs_used_percent,temp_celsius")
            .ok()
            .unwrap();
        assert_eq!(m, [HealthMetric::TempCelsius, HealthMetric::FsUsedPercent]);
        for (bad, says) in [
            (
                "fan_rpm",
                "unknown health metric 'fan_rpm'; known: temp_celsius, ",
            ),
            ("cpu_percent", "one of the six: see /api/hosts/NAME/series"),
            ("load1,", "unknown health metric ''"),
            ("\u{1b}[2J", "'\\x1b[2J'"),
        ] {
            let e = health_metrics(bad).err().unwrap();
            assert_eq!(e.0, StatusCode::BAD_REQUEST);
            assert!(e.1.contains(says), "{bad}: {}", e.1);
        }
        let all: Vec<_> = HealthMetric::ALL
            .into_iter()
            .map(health_metric_json)
            .collect();
        let fs = all.iter().find(|m| m.metric == "fs_used_percent").unwrap();
        assert_eq!(
            (fs.label, fs.percent, fs.flag),
            (Some("mountpoint"), true, false)
        );
        let t = all.iter().find(|m| m.metric == "throttled_flags").unwrap();
        assert_eq!((t.label, t.unit, t.flag), (Some("flag"), "0/1", true));
    }
}
