//! The dashboard's JSON API under `/api/` (the pages use it; scripts may):
//! read-only GETs, so a forged cross-site request can change nothing.
//! The shapes are an interface, documented in the README's Dashboard
//! section:
//! - `/api/metrics`: which series exist and their units (the pages hard-code
//!   no metric);
//! - `/api/hosts`, `/api/hosts/NAME`: the operator API's `ListHosts` join
//!   (`admin::host_infos`: store facts, registry liveness) as JSON, with
//!   each host's latest health values and the throttling it reports now
//!   (`/api/hosts`: one answer per 3 s shared by every page, `shared.rs`;
//!   `/api/hosts?form=rows`: what the fleet page shows, one array per
//!   host, values rounded to a tenth);
//! - `/api/hosts/NAME/series?range=1h` (or `since`/`until` in ms, and
//!   `points`): downsampled min/max/mean (`plot.rs`);
//! - `/api/hosts/NAME/health?metric=a,b&range=1h`: the health metrics the
//!   same way, one series per metric, mount point or throttling
//!   condition (`store/health_series.rs`);
//! - `/api/sparklines`: every host's last 15 minutes per series, as shapes
//!   for the fleet page's sparklines (at most every 15 s, shared: one
//!   store read of the whole fleet's range first, then only of what came
//!   since, and of the hosts whose samples came late);
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
/// A sparklines read stops this long before now: samples reach the store
/// within a few seconds of their time, so the next read, which starts
/// where this one stopped, finds them. One that comes later than that
/// (an agent's buffer after an outage, a clock behind the server's) is
/// noted by the store (`store/late.rs`) and its host alone is read again.
const SPARK_LAG_MS: i64 = 5_000;
/// Where reads start and stop: multiples of this, which divides the
/// sparklines' bucket width (30 s), so the short buckets of a read each
/// lie within one of the sparklines'.
const SPARK_EDGE_MS: i64 = 5_000;
/// On a store several servers share, this server cannot see the others'
/// late samples, so it reads the whole range again this often. A whole
/// read is the expensive one: at 5,000 hosts with 15 minutes of history
/// (4.8 million ticks) it took over 30 s on this loaded 2-core machine.
const SPARK_SHARED_FULL_READ_MS: i64 = SPARK_RANGE_MS;
/// How long one `/api/hosts` answer serves every page: the period the
/// pages poll at (they read it from the answer's `poll_ms`).
const HOSTS_PERIOD: Duration = Duration::from_secs(3);

/// The answers every open page shares (`shared.rs`): N pages cost one
/// build per period, not N.
pub struct SharedAnswers {
    /// `/api/hosts`: built again when a page asks past its period (the
    /// pages must see a host go offline).
    hosts: SharedAnswer,
    /// `/api/hosts?form=rows`, the same for the fleet page's compact form.
    host_rows: SharedAnswer,
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
            host_rows: SharedAnswer::new("rows", HOSTS_PERIOD),
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
/// `{"server_unix_ms": N, "poll_ms": N, "hosts": [HostJson...]}`; with
/// `?form=rows`, the fleet page's compact form ([`HostRow`]). One answer
/// of each form per [`HOSTS_PERIOD`] shared by every page, gzipped once,
/// with an ETag that changes only when a host's row does
/// (`If-None-Match` gets a 304, and the page keeps what it has).
pub async fn hosts(
    State(state): State<HttpState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref().unwrap_or(""));
    let (shared, form) = match params.get("form") {
        None | Some("full") => (&state.answers.hosts, HostsForm::Full),
        Some("rows") => (&state.answers.host_rows, HostsForm::Rows),
        Some(other) => {
            return Err(bad_request(format!(
                "form: expected 'full' or 'rows', got '{}'",
                monitor::text::Escaped::capped(other)
            )));
        }
    };
    let answer = shared
        .current(|| build_hosts(&state, form, shared.period_now()))
        .await?;
    Ok(answer.respond(&headers))
}

/// The forms of `/api/hosts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HostsForm {
    /// Every fact of every host ([`HostJson`]).
    Full,
    /// What the fleet page shows, one array per host ([`HostRow`]).
    Rows,
}

/// One host in `/api/hosts?form=rows`, an array: hostname, online, last
/// seen (ms; `null` while online: the page shows it only offline), clock
/// offset (ms), dropped batches, the latest values in the order of the
/// answer's `latest` names (`null`: none), the temperature (°C or
/// `null`), each file system as `[mount point, used %]`, the throttling
/// conditions now. Values are rounded to a tenth, what the page shows: at
/// 5,000 hosts it is about a sixth of the full form's bytes, and an
/// answer whose shown values did not change keeps its tag.
#[derive(Debug, PartialEq, Serialize)]
pub struct HostRow(
    pub String,
    pub bool,
    pub Option<i64>,
    pub i64,
    pub u64,
    pub Vec<Option<f64>>,
    pub Option<f64>,
    pub Vec<(String, f64)>,
    pub Vec<&'static str>,
);

/// A value as the fleet page shows it (a tenth at most).
fn shown(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn host_row(h: pb::HostInfo) -> HostRow {
    let full = host_json(h);
    let latest = Metric::ALL
        .iter()
        .map(|m| {
            full.latest
                .iter()
                .find(|v| v.metric == m.name())
                .map(|v| shown(v.value))
        })
        .collect();
    let temp = full
        .health
        .iter()
        .find(|v| v.metric == HealthMetric::TempCelsius.name())
        .map(|v| shown(v.value));
    let file_systems = full
        .health
        .iter()
        .filter(|v| v.metric == HealthMetric::FsUsedPercent.name())
        .map(|v| {
            let mount = v.labels.values().next().cloned().unwrap_or_default();
            (mount, shown(v.value))
        })
        .collect();
    HostRow(
        full.hostname,
        full.online,
        (!full.online).then_some(full.last_seen_unix_ms),
        full.clock_offset_ms,
        full.dropped_batches_total,
        latest,
        temp,
        file_systems,
        full.throttled_now,
    )
}

/// The `/api/hosts` JSON in `form`: copies of the store's host table and
/// the registry, joined and encoded on the blocking pool.
async fn build_hosts(
    state: &HttpState,
    form: HostsForm,
    poll: Duration,
) -> Result<Built, ApiError> {
    let stored = state.store.hosts().await?;
    let live = state.registry.snapshot();
    tokio::task::spawn_blocking(move || {
        let infos = host_infos(stored, live, usize::MAX);
        // The time of the build is left out of the tag: the rows decide.
        let mut json = format!(
            "{{\"server_unix_ms\":{},\"poll_ms\":{},",
            monitor::time::now_unix_ms(),
            poll.as_millis()
        )
        .into_bytes();
        let tag_from = json.len();
        match form {
            HostsForm::Full => {
                let hosts: Vec<HostJson> = infos.into_iter().map(host_json).collect();
                json.extend_from_slice(b"\"hosts\":");
                serde_json::to_writer(&mut json, &hosts).map_err(internal)?;
            }
            HostsForm::Rows => {
                let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
                let rows: Vec<HostRow> = infos.into_iter().map(host_row).collect();
                json.extend_from_slice(b"\"form\":\"rows\",\"latest\":");
                serde_json::to_writer(&mut json, &names).map_err(internal)?;
                json.extend_from_slice(b",\"hosts\":");
                serde_json::to_writer(&mut json, &rows).map_err(internal)?;
            }
        }
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

/// One host's bucket sums per series (in [`Metric::ALL`] order): (bucket
/// start, sum of the values, count), oldest first. Sums, not means, so
/// that a bucket read in two parts (before and after a read's edge) adds
/// up.
type Sums = Vec<Vec<(i64, f64, u64)>>;

/// What the last sparklines read found: each host's bucket sums, and up
/// to where every host's samples were read.
struct SparkMemory {
    step_ms: i64,
    /// Every sample before this was read (or is noted late); a multiple
    /// of [`SPARK_EDGE_MS`].
    read_until_unix_ms: i64,
    /// When the whole range was last read.
    full_read_unix_ms: i64,
    hosts: BTreeMap<String, Sums>,
}

/// Every host's sparklines, encoded. The first read covers the whole
/// range; every later one only what came since the last one (the fleet's
/// last 15 s, not 15 minutes), plus a re-read of just the hosts whose
/// samples came late (`store/late.rs`; when more were late than it names,
/// every host from the oldest late sample on). The whole range is read
/// again only when no page asked for a whole range, or, on a store
/// several servers share (whose late samples this server cannot see),
/// every [`SPARK_SHARED_FULL_READ_MS`].
async fn compute_sparklines(state: &HttpState) -> Result<Built, ApiError> {
    let now = monitor::time::now_unix_ms();
    let grid = plot::query("", now - SPARK_RANGE_MS, now, SPARK_POINTS);
    let until_unix_ms = (now - SPARK_LAG_MS).div_euclid(SPARK_EDGE_MS) * SPARK_EDGE_MS;
    // Before the reads: a sample stored after this that the reads cannot
    // have seen is noted for the next computation.
    let late = state.store.advance_late(until_unix_ms);
    let memory = state
        .answers
        .spark_memory
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .filter(|m| {
            m.step_ms == grid.step_ms
                && grid.step_ms % SPARK_EDGE_MS == 0
                && m.read_until_unix_ms > grid.since_unix_ms
                && m.read_until_unix_ms <= until_unix_ms
                && (!state.store.is_shared()
                    || now - m.full_read_unix_ms < SPARK_SHARED_FULL_READ_MS)
        });
    // Where this read starts: where the last one stopped; or, when more
    // hosts were late than could be named, at the grid's bucket of the
    // oldest late sample (every host's buckets from there are read again).
    let memory = memory
        .map(|m| {
            let from = match (late.overflowed, late.oldest_unix_ms) {
                (false, _) => m.read_until_unix_ms,
                (true, Some(oldest)) => m.read_until_unix_ms.min(
                    grid.since_unix_ms
                        + (oldest - grid.since_unix_ms).div_euclid(grid.step_ms) * grid.step_ms,
                ),
                (true, None) => grid.since_unix_ms,
            };
            (m, from)
        })
        .filter(|&(_, from)| from > grid.since_unix_ms);
    let (hosts, full_read_unix_ms) = match memory {
        None => {
            let fresh = state
                .store
                .fleet_series(crate::store::FleetSeriesQuery {
                    since_unix_ms: grid.since_unix_ms,
                    until_unix_ms,
                    step_ms: grid.step_ms,
                })
                .await?;
            let grid = grid.clone();
            let hosts = tokio::task::spawn_blocking(move || {
                join_sums(BTreeMap::new(), fresh, &grid, grid.since_unix_ms)
            })
            .await
            .map_err(internal)?;
            (hosts, now)
        }
        Some((m, from)) => {
            let mut hosts = if from < until_unix_ms {
                // Buckets of the edge's width, so each lies in one of the
                // grid's and adds to what the last read left in it.
                let fresh = state
                    .store
                    .fleet_series(crate::store::FleetSeriesQuery {
                        since_unix_ms: from,
                        until_unix_ms,
                        step_ms: SPARK_EDGE_MS,
                    })
                    .await?;
                let grid = grid.clone();
                tokio::task::spawn_blocking(move || join_sums(m.hosts, fresh, &grid, from))
                    .await
                    .map_err(internal)?
            } else {
                m.hosts
            };
            // The late hosts' whole range again, one host at a time
            // (at most `MAX_LATE_HOSTS`).
            for hostname in late.hosts {
                let q = crate::store::SeriesQuery {
                    hostname: hostname.clone(),
                    since_unix_ms: grid.since_unix_ms,
                    until_unix_ms,
                    step_ms: grid.step_ms,
                };
                match state.store.series(q).await {
                    Ok(series) => {
                        hosts.insert(hostname, sums_of(&series));
                    }
                    // Gone meanwhile: the next fleet read drops it.
                    Err(crate::store::StoreError::UnknownHost(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            (hosts, m.full_read_unix_ms)
        }
    };
    let (built, memory) = tokio::task::spawn_blocking(move || {
        let answer = SparklinesAnswer {
            since_unix_ms: grid.since_unix_ms,
            step_ms: grid.step_ms,
            hosts: hosts
                .iter()
                .map(|(name, sums)| (name.clone(), spark_levels(&grid, sums)))
                .collect(),
            pending: false,
        };
        let json = serde_json::to_vec(&answer).map_err(internal)?;
        let memory = SparkMemory {
            step_ms: grid.step_ms,
            read_until_unix_ms: until_unix_ms,
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

/// A store read's series as bucket sums.
fn sums_of(series: &[crate::store::Series]) -> Sums {
    series
        .iter()
        .map(|s| {
            s.buckets
                .iter()
                .map(|b| (b.start_unix_ms, b.sum, u64::from(b.count)))
                .collect()
        })
        .collect()
}

/// Each host of `fresh` (read from `from_unix_ms` on, in buckets that each
/// lie within one of `grid`'s) with the sums `kept` holds for it from the
/// grid's start, `fresh`'s added into the grid's buckets: the hosts are
/// those of `fresh` (every host the store knows).
fn join_sums(
    mut kept: BTreeMap<String, Sums>,
    fresh: Vec<crate::store::HostSeries>,
    grid: &crate::store::SeriesQuery,
    from_unix_ms: i64,
) -> BTreeMap<String, Sums> {
    let grid_start = |t: i64| {
        grid.since_unix_ms + (t - grid.since_unix_ms).div_euclid(grid.step_ms) * grid.step_ms
    };
    fresh
        .into_iter()
        .map(|h| {
            let mut old = kept.remove(&h.hostname).unwrap_or_default();
            let sums = h
                .series
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut m: Vec<(i64, f64, u64)> = old
                        .get_mut(i)
                        .map(std::mem::take)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|&(t, _, _)| t >= grid.since_unix_ms && t < from_unix_ms)
                        .collect();
                    for b in &s.buckets {
                        let start = grid_start(b.start_unix_ms);
                        match m.last_mut() {
                            Some(last) if last.0 == start => {
                                last.1 += b.sum;
                                last.2 += u64::from(b.count);
                            }
                            _ => m.push((start, b.sum, u64::from(b.count))),
                        }
                    }
                    m
                })
                .collect();
            (h.hostname, sums)
        })
        .collect()
}

/// One host's sparklines on `grid`: per series (named in [`Metric::ALL`]
/// order), each bucket's mean as a level from 0 (the series' lowest mean
/// in the range) to 100 (its highest), `None` for a bucket without
/// samples.
fn spark_levels(
    grid: &crate::store::SeriesQuery,
    sums: &Sums,
) -> BTreeMap<&'static str, Vec<Option<u8>>> {
    let buckets =
        usize::try_from((grid.until_unix_ms - grid.since_unix_ms) / grid.step_ms + 1).unwrap_or(0);
    let mut per = BTreeMap::new();
    for (metric, sums) in Metric::ALL.iter().zip(sums) {
        let means: Vec<(i64, f64)> = sums
            .iter()
            .map(|&(start, sum, count)| (start, sum / count.max(1) as f64))
            .collect();
        let lo = means.iter().map(|m| m.1).fold(f64::INFINITY, f64::min);
        let hi = means.iter().map(|m| m.1).fold(f64::NEG_INFINITY, f64::max);
        let mut levels = vec![None; buckets];
        for &(start, m) in &means {
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
    fn sparklines_add_a_read_into_what_the_last_left_in_each_bucket() {
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
        // Means 1, 2 and 3 (the last bucket read up to 65 s only).
        let kept_sums =
            vec![vec![(0, 2.0, 2), (30_000, 4.0, 2), (60_000, 6.0, 2)]; Metric::ALL.len()];
        let kept = BTreeMap::from([
            ("a".to_owned(), kept_sums.clone()),
            ("gone".to_owned(), kept_sums),
        ]);
        // The range now starts at 30 s; read from 65 s on in 5 s buckets.
        let grid = plot::query("", 30_000, 120_000, 3);
        assert_eq!((grid.since_unix_ms, grid.step_ms), (30_000, 30_000));
        let fresh = vec![
            host(
                "a",
                vec![
                    bucket(65_000, 8.0),
                    bucket(85_000, 2.0),
                    bucket(90_000, 20.0),
                ],
            ),
            host("b", vec![bucket(95_000, 2.0)]),
        ];
        let joined = join_sums(kept, fresh, &grid, 65_000);
        assert_eq!(joined.keys().collect::<Vec<_>>(), ["a", "b"]);
        // Before the range: dropped; before the edge: kept, and the new
        // read's buckets added into the grid's bucket each lies in.
        assert_eq!(
            joined["a"][0],
            [(30_000, 4.0, 2), (60_000, 16.0, 6), (90_000, 20.0, 2)]
        );
        assert_eq!(joined["b"][5], [(90_000, 2.0, 2)]);

        let levels = spark_levels(&grid, &joined["a"]);
        assert_eq!(levels.len(), Metric::ALL.len());
        // Means 2, 2.67 and 10.
        assert_eq!(levels["cpu_percent"], [Some(0), Some(8), Some(100), None]);
        assert_eq!(
            spark_levels(&grid, &joined["b"])["cpu_percent"][2],
            Some(50)
        );
        // A late host's whole range read again replaces what was kept.
        let series = vec![
            Series {
                metric: Metric::ALL[0],
                interval_ms: None,
                buckets: vec![bucket(30_000, 7.0)],
            };
            Metric::ALL.len()
        ];
        assert_eq!(sums_of(&series)[0], [(30_000, 7.0, 2)]);
    }

    #[test]
    fn a_host_row_holds_what_the_fleet_page_shows_rounded() {
        let value = |metric: &str, device: &str, value| pb::MetricValue {
            metric: metric.into(),
            value,
            time_unix_ms: 5,
            device: device.into(),
        };
        let info = pb::HostInfo {
            hostname: "pi".into(),
            online: true,
            last_seen_unix_ms: 77,
            clock_offset_ms: -3,
            dropped_batches_total: 2,
            latest: vec![
                value("mem_percent", "", 40.04),
                value("cpu_percent", "", 12.36),
            ],
            health: vec![
                value("temp_celsius", "", 82.25),
                value("throttled_flags", "", f64::from(0x50005)),
                value("fs_used_percent", "/", 95.0),
                value("fs_used_percent", "/media/\u{1b}[2J", 10.0),
            ],
            ..Default::default()
        };
        let row = host_row(info.clone());
        let mut latest = vec![None; Metric::ALL.len()];
        latest[0] = Some(12.4);
        latest[1] = Some(40.0);
        assert_eq!(Metric::ALL[0].name(), "cpu_percent");
        assert_eq!(Metric::ALL[1].name(), "mem_percent");
        assert_eq!(
            row,
            HostRow(
                "pi".into(),
                true,
                None,
                -3,
                2,
                latest,
                Some(82.3),
                vec![("/".into(), 95.0), ("/media/\\x1b[2J".into(), 10.0)],
                vec!["under_voltage", "throttled"],
            )
        );
        let json = serde_json::to_string(&row).unwrap();
        assert!(
            json.starts_with(r#"["pi",true,null,-3,2,[12.4,40.0,null"#),
            "{json}"
        );
        // Offline: when it was last seen.
        let offline = host_row(pb::HostInfo {
            online: false,
            ..info
        });
        assert_eq!(offline.2, Some(77));
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
