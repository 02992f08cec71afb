//! The dashboard's JSON API under `/api/` (the pages use it; scripts may):
//! read-only GETs, so a forged cross-site request can change nothing.
//! The shapes are an interface, documented in the README's Dashboard
//! section:
//! - `/api/metrics`: which series exist and their units (the pages hard-code
//!   no metric);
//! - `/api/hosts`, `/api/hosts/NAME`: the operator API's `ListHosts` join
//!   (`admin::host_infos`: store facts, registry liveness) as JSON, with
//!   each host's latest health values and the throttling it reports now;
//! - `/api/hosts/NAME/series?range=1h` (or `since`/`until` in ms, and
//!   `points`): downsampled min/max/mean (`plot.rs`);
//! - `/api/hosts/NAME/health?metric=a,b&range=1h`: the health metrics the
//!   same way, one series per metric, mount point or throttling
//!   condition (`store/health_series.rs`);
//! - `/api/sparklines`: every host's last 15 minutes per series, as shapes
//!   for the fleet page's sparklines (computed at most every 15 s, shared);
//! - `/api/commands?host=NAME&limit=N`: the command history.
//!
//! Every string an agent sent goes out as a JSON string (serde escapes it)
//! and is capped; the pages put it in the document with `textContent`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use monitor::health::{HealthMetric, THROTTLE_FLAGS};
use monitor::metric::Metric;
use monitor::pb;
use serde::Serialize;

use super::HttpState;
use super::plot;
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
const SPARK_CACHE: std::time::Duration = std::time::Duration::from_secs(15);

/// The last sparklines answer, shared by every page. One computation at a
/// time (`computing`); a page is answered from the last one while the next
/// is made in the background, so no page waits on a large fleet's
/// computation but the very first. A computation that took T is not
/// started again within 4 T: however large the fleet, sparklines cost at
/// most a quarter of a core.
#[derive(Default)]
pub struct SparkCache {
    last: std::sync::Mutex<Option<SparkAnswer>>,
    computing: tokio::sync::Mutex<()>,
}

/// One computed sparklines answer.
#[derive(Clone)]
struct SparkAnswer {
    made: std::time::Instant,
    took: std::time::Duration,
    body: axum::body::Bytes,
}

impl SparkAnswer {
    fn fresh(&self) -> bool {
        self.made.elapsed() < SPARK_CACHE.max(self.took * 4)
    }
}

impl SparkCache {
    fn last(&self) -> Option<SparkAnswer> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Computes a new answer unless another computation runs (then waits
    /// for it) or the last one is fresh.
    async fn refresh(&self, state: &HttpState) -> Result<SparkAnswer, ApiError> {
        let _one_at_a_time = self.computing.lock().await;
        if let Some(last) = self.last()
            && last.fresh()
        {
            return Ok(last);
        }
        let started = std::time::Instant::now();
        let body = compute_sparklines(state).await?;
        let answer = SparkAnswer {
            made: std::time::Instant::now(),
            took: started.elapsed(),
            body,
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(answer.clone());
        Ok(answer)
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
pub struct HostsAnswer {
    pub server_unix_ms: i64,
    pub hosts: Vec<HostJson>,
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

/// `GET /api/hosts`: every host, by name.
pub async fn hosts(State(state): State<HttpState>) -> Result<Json<HostsAnswer>, ApiError> {
    let stored = state.store.hosts().await?;
    let live = state.registry.snapshot();
    Ok(Json(HostsAnswer {
        server_unix_ms: monitor::time::now_unix_ms(),
        hosts: host_infos(stored, live, usize::MAX)
            .into_iter()
            .map(host_json)
            .collect(),
    }))
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
}

/// `GET /api/sparklines`: the last answer (a new one made in the
/// background when it is stale), or the first one made now.
pub async fn sparklines(State(state): State<HttpState>) -> Result<Response, ApiError> {
    let cache = state.sparklines.clone();
    match cache.last() {
        Some(last) => {
            if !last.fresh() && cache.computing.try_lock().is_ok() {
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = cache.refresh(&state).await {
                        log::warn!("dashboard: sparklines not computed: {}", e.1);
                    }
                });
            }
            Ok(json_bytes(last.body))
        }
        None => Ok(json_bytes(cache.refresh(&state).await?.body)),
    }
}

/// Every host's sparklines, encoded.
async fn compute_sparklines(state: &HttpState) -> Result<axum::body::Bytes, ApiError> {
    let now = monitor::time::now_unix_ms();
    let grid = plot::query("", now - SPARK_RANGE_MS, now, SPARK_POINTS);
    let buckets = usize::try_from((now - grid.since_unix_ms) / grid.step_ms + 1).unwrap_or(0);
    let mut hosts = BTreeMap::new();
    for h in state.store.hosts().await? {
        let q = crate::store::SeriesQuery {
            hostname: h.hostname.clone(),
            ..grid.clone()
        };
        let series = match state.store.series(q).await {
            Ok(s) => s,
            Err(StoreError::UnknownHost(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut per = BTreeMap::new();
        for s in series {
            let means: Vec<(usize, f64)> = s
                .buckets
                .iter()
                .filter_map(|b| {
                    let k = usize::try_from((b.start_unix_ms - grid.since_unix_ms) / grid.step_ms);
                    Some((k.ok()?, b.sum / f64::from(b.count.max(1))))
                })
                .collect();
            let lo = means.iter().map(|m| m.1).fold(f64::INFINITY, f64::min);
            let hi = means.iter().map(|m| m.1).fold(f64::NEG_INFINITY, f64::max);
            let mut levels = vec![None; buckets];
            for (k, m) in means {
                if let Some(l) = levels.get_mut(k) {
                    let level = if hi > lo {
                        (m - lo) / (hi - lo) * 100.0
                    } else {
                        50.0
                    };
                    *l = Some(level.round().clamp(0.0, 100.0) as u8);
                }
            }
            per.insert(s.metric.name(), levels);
        }
        hosts.insert(h.hostname, per);
    }
    let answer = SparklinesAnswer {
        since_unix_ms: grid.since_unix_ms,
        step_ms: grid.step_ms,
        hosts,
    };
    Ok(axum::body::Bytes::from(
        serde_json::to_vec(&answer)
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
    ))
}

fn json_bytes(body: axum::body::Bytes) -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], body).into_response()
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
