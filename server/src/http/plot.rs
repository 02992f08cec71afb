//! The series answers of `/api/hosts/NAME/series` and `/health`, built
//! from the store's buckets (pure code, no I/O): which step a range gets, one time axis all
//! series share (uPlot's aligned data), and nulls where a series has no
//! data or ticks are missing (for more than two intervals and at least a
//! bucket's width), so a plot shows an outage as a gap and not as a line
//! across it.
//!
//! Values are rounded to 4 significant digits (a relative error of at most
//! 0.05 %): far below what a plot shows, and it keeps a 7-day answer
//! small. Whole numbers (every time, most rates above 1,000 KiB/s) are
//! written without a ".0" (the same number to JSON, two bytes fewer).

use serde::{Serialize, Serializer};

use std::collections::BTreeMap;

use monitor::metric::Metric;

use crate::exported::{exported, health_unit};
use crate::store::{HEALTH_ROLLUP_MS, HealthSeriesKey, Series, SeriesQuery};

/// Points per series a plot asks for, at most (about one per pixel of a
/// wide screen).
pub const MAX_POINTS: i64 = 2000;
/// The smallest bucket: agents tick once a second at most.
const MIN_STEP_MS: i64 = 1000;
/// Ticks further apart than this many intervals (and than a bucket) mean
/// some are missing.
const GAP_INTERVALS: i64 = 2;

/// The store query for `[since, until)` in at most `points` buckets: the
/// step is a whole number of seconds (at least one), of minutes once a
/// point spans more than half a minute, and the first bucket starts at a
/// multiple of it so that bucket times stay whole seconds and a refresh
/// finds the same buckets. Whole minutes let the store answer a long
/// health range from its per-minute rollup (`store::HEALTH_ROLLUP_MS`):
/// 7 days read ~10,000 minute rows instead of ~968,000 raw ones.
pub fn query(hostname: &str, since_unix_ms: i64, until_unix_ms: i64, points: i64) -> SeriesQuery {
    let points = points.clamp(1, MAX_POINTS);
    let span_ms = until_unix_ms.saturating_sub(since_unix_ms).max(1);
    let per_point = span_ms / points + i64::from(span_ms % points != 0);
    let unit_ms = if per_point > HEALTH_ROLLUP_MS / 2 {
        HEALTH_ROLLUP_MS
    } else {
        1000
    };
    // Rounded up to whole units.
    let step_ms =
        ((per_point / unit_ms + i64::from(per_point % unit_ms != 0)) * unit_ms).max(MIN_STEP_MS);
    let since_unix_ms = since_unix_ms.div_euclid(step_ms) * step_ms;
    SeriesQuery {
        hostname: hostname.to_owned(),
        since_unix_ms,
        until_unix_ms,
        step_ms,
    }
}

/// What an answer says of what a series is of.
pub trait PlotKey {
    /// The metric's name.
    fn metric(&self) -> &'static str;
    /// Its labels (an agent's string escaped and capped).
    fn labels(&self) -> BTreeMap<String, String>;
    /// The unit of its values, as the store keeps them.
    fn unit(&self) -> &'static str;
}

impl PlotKey for Metric {
    fn metric(&self) -> &'static str {
        self.name()
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn unit(&self) -> &'static str {
        exported(*self).stored_unit
    }
}

impl PlotKey for HealthSeriesKey {
    fn metric(&self) -> &'static str {
        self.metric.name()
    }

    fn labels(&self) -> BTreeMap<String, String> {
        self.label
            .iter()
            .map(|(k, v)| {
                let v = monitor::text::Escaped::capped(v).to_string();
                ((*k).to_owned(), v)
            })
            .collect()
    }

    fn unit(&self) -> &'static str {
        health_unit(self.metric)
    }
}

/// The JSON answer.
#[derive(Debug, Serialize, PartialEq)]
pub struct Plot {
    pub hostname: String,
    pub since_unix_ms: i64,
    pub until_unix_ms: i64,
    pub step_ms: i64,
    /// Unix seconds (uPlot's x axis): every bucket holding data, plus one
    /// point inside each gap where every series is null.
    #[serde(serialize_with = "compact_times")]
    pub times: Vec<f64>,
    pub series: Vec<PlotSeries>,
}

/// One series, aligned with [`Plot::times`].
#[derive(Debug, Serialize, PartialEq)]
pub struct PlotSeries {
    pub metric: &'static str,
    /// Empty for one of the six; a labelled health metric's mount point
    /// (`mountpoint`) or throttling condition (`flag`).
    pub labels: BTreeMap<String, String>,
    pub unit: &'static str,
    /// The interval found between its samples, ms.
    pub interval_ms: Option<i64>,
    #[serde(serialize_with = "compact_values")]
    pub min: Vec<Option<f64>>,
    #[serde(serialize_with = "compact_values")]
    pub max: Vec<Option<f64>>,
    #[serde(serialize_with = "compact_values")]
    pub mean: Vec<Option<f64>>,
}

/// A number written shortest: a whole one as an integer (no ".0").
struct Compact(f64);

impl Serialize for Compact {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Below 2^53 every whole f64 is exactly an i64 (and a JS number).
        const EXACT: f64 = 9_007_199_254_740_992.0;
        if self.0.fract() == 0.0 && self.0.abs() < EXACT {
            s.serialize_i64(self.0 as i64)
        } else {
            s.serialize_f64(self.0)
        }
    }
}

fn compact_times<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|&t| Compact(t)))
}

fn compact_values<S: Serializer>(v: &[Option<f64>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| x.map(Compact)))
}

/// Lays `series` (from the store, for `q`) out for a plot.
pub fn plot<K: PlotKey>(q: &SeriesQuery, series: Vec<Series<K>>) -> Plot {
    // Every row: (time in ms, is it a gap marker).
    let mut rows: Vec<i64> = Vec::new();
    let mut gaps: Vec<i64> = Vec::new();
    for s in &series {
        // A hole shorter than a bucket cannot be seen at this resolution:
        // only one of at least a bucket's width breaks the line.
        let threshold = s.interval_ms.map(|i| (i * GAP_INTERVALS).max(q.step_ms));
        for b in &s.buckets {
            rows.push(b.start_unix_ms);
            if threshold.is_some_and(|t| b.max_gap_ms > t) {
                // Half a step before the bucket: after the previous one.
                gaps.push(b.start_unix_ms - q.step_ms / 2);
            }
        }
    }
    rows.extend(&gaps);
    rows.sort_unstable();
    rows.dedup();
    let index_of = |t: i64| rows.binary_search(&t).ok();
    let out = series
        .into_iter()
        .map(|s| {
            let mut min = vec![None; rows.len()];
            let mut max = vec![None; rows.len()];
            let mut mean = vec![None; rows.len()];
            for b in &s.buckets {
                if let Some(i) = index_of(b.start_unix_ms) {
                    min[i] = Some(round(b.min));
                    max[i] = Some(round(b.max));
                    mean[i] = Some(round(b.sum / f64::from(b.count.max(1))));
                }
            }
            PlotSeries {
                metric: s.metric.metric(),
                labels: s.metric.labels(),
                unit: s.metric.unit(),
                interval_ms: s.interval_ms,
                min,
                max,
                mean,
            }
        })
        .collect();
    Plot {
        hostname: q.hostname.clone(),
        since_unix_ms: q.since_unix_ms,
        until_unix_ms: q.until_unix_ms,
        step_ms: q.step_ms,
        times: rows.iter().map(|&t| t as f64 / 1000.0).collect(),
        series: out,
    }
}

/// To 4 significant digits (dividing or multiplying by an exact power of
/// ten, so the shortest decimal form is at most 4 digits long).
fn round(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let e = v.abs().log10().floor() as i32;
    let k = 3 - e;
    if k >= 0 {
        let scale = 10f64.powi(k.min(22));
        (v * scale).round() / scale
    } else {
        let scale = 10f64.powi((-k).min(22));
        (v / scale).round() * scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Bucket, Downsampler};
    use monitor::metric::Metric;

    #[test]
    fn steps_are_whole_seconds_and_ranges_give_at_most_max_points() {
        let day = 86_400_000;
        for (span, step) in [
            (15 * 60_000, 1000),
            (3_600_000, 2000),
            (16 * 3_600_000, 29_000),
            // Over half a minute a point: whole minutes.
            (17 * 3_600_000, 60_000),
            (day, 60_000),
            (7 * day, 360_000),
        ] {
            let q = query("h", 1_700_000_000_123, 1_700_000_000_123 + span, MAX_POINTS);
            assert_eq!(q.step_ms, step, "span {span}");
            assert_eq!(q.since_unix_ms % step, 0);
            assert!(q.since_unix_ms <= 1_700_000_000_123);
            let buckets = (q.until_unix_ms - q.since_unix_ms).div_euclid(step) + 1;
            assert!(buckets <= MAX_POINTS + 1, "{buckets} for span {span}");
        }
        // Fewer points asked: bigger steps; nonsense is clamped.
        assert_eq!(query("h", 0, 3_600_000, 60).step_ms, 60_000);
        assert_eq!(query("h", 0, 3_600_000, 0).step_ms, 3_600_000);
    }

    #[test]
    fn an_outage_is_a_null_row_and_values_keep_min_max_mean() {
        let q = SeriesQuery {
            hostname: "pi".into(),
            since_unix_ms: 0,
            until_unix_ms: 100_000,
            step_ms: 2000,
        };
        let mut d = Downsampler::new(&q, &[Metric::CpuPercent, Metric::NetInKbps]).unwrap();
        // 1 s ticks from 0 to 9 s, then nothing until 30 s.
        let times: Vec<i64> = (0..10).chain(30..34).map(|s| s * 1000).collect();
        for &t in &times {
            d.push(0, t, (t / 1000) as f64 + 0.12345);
            // The rate only from the second tick on (as after a start).
            if t > 0 {
                d.push(1, t, 2.0);
            }
        }
        let p = plot(&q, d.finish());
        // Buckets 0,2,4,6,8 s, a gap marker at 29 s, then 30, 32 s.
        assert_eq!(p.times, vec![0.0, 2.0, 4.0, 6.0, 8.0, 29.0, 30.0, 32.0]);
        let cpu = &p.series[0];
        assert_eq!(cpu.metric, "cpu_percent");
        assert_eq!(cpu.unit, "percent");
        assert_eq!(cpu.interval_ms, Some(1000));
        assert_eq!(cpu.min[1], Some(2.123));
        assert_eq!(cpu.max[1], Some(3.123));
        assert_eq!(cpu.mean[1], Some(2.623));
        assert_eq!(cpu.mean[5], None, "the outage is a gap");
        assert_eq!(cpu.mean[6], Some(30.62));
        let net = &p.series[1];
        assert_eq!(net.unit, "KiB/s");
        assert_eq!(net.mean[0], Some(2.0));
        assert_eq!(net.mean[5], None);
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains(r#""labels":{}"#), "{json}");
        // Whole numbers without ".0", the others as they are.
        assert!(json.contains(r#""times":[0,2,4,6,8,29,30,32]"#), "{json}");
        assert!(json.contains(r#""mean":[2,2,2,2,2,null,2,2]"#), "{json}");
        assert!(json.contains(r#""min":[0.1235,2.123,"#), "{json}");
    }

    #[test]
    fn values_keep_four_significant_digits_and_print_short() {
        for (v, want, text) in [
            (53.123456, 53.12, "53.12"),
            (0.000123456, 0.0001235, "0.0001235"),
            (123456.7, 123500.0, "123500.0"),
            (-7.77777, -7.778, "-7.778"),
            (0.0, 0.0, "0.0"),
            (99.99999, 100.0, "100.0"),
        ] {
            assert_eq!(round(v), want, "{v}");
            assert_eq!(serde_json::to_string(&round(v)).unwrap(), text);
        }
    }

    #[test]
    fn a_hole_narrower_than_a_bucket_is_no_gap() {
        let q = SeriesQuery {
            hostname: "pi".into(),
            since_unix_ms: 0,
            until_unix_ms: 60_000,
            step_ms: 3000,
        };
        let mut d = Downsampler::new(&q, &[Metric::CpuPercent]).unwrap();
        // 200 ms ticks with one 600 ms stall: three intervals, but a fifth
        // of a bucket.
        let mut t = 0;
        while t < 12_000 {
            d.push(0, t, 1.0);
            t += if t == 5000 { 600 } else { 200 };
        }
        let p = plot(&q, d.finish());
        assert_eq!(p.times, vec![0.0, 3.0, 6.0, 9.0]);
        assert!(p.series[0].mean.iter().all(Option::is_some));
    }

    #[test]
    fn a_quiet_series_without_interval_has_no_gap_rows() {
        let q = query("h", 0, 10_000, MAX_POINTS);
        let s = vec![Series {
            metric: Metric::MemPercent,
            interval_ms: None,
            buckets: vec![Bucket {
                start_unix_ms: 5000,
                count: 1,
                min: 1.0,
                max: 1.0,
                sum: 1.0,
                max_gap_ms: 0,
            }],
        }];
        let p = plot(&q, s);
        assert_eq!(p.times, vec![5.0]);
        assert_eq!(p.series[0].mean, vec![Some(1.0)]);
    }

    #[test]
    fn health_series_carry_their_escaped_label_and_unit() {
        use crate::store::HealthSeriesKey;
        use monitor::health::HealthMetric;
        let q = query("pi", 0, 10_000, MAX_POINTS);
        let bucket = |v: f64| Bucket {
            start_unix_ms: 0,
            count: 1,
            min: v,
            max: v,
            sum: v,
            max_gap_ms: 0,
        };
        let s = vec![
            Series {
                metric: HealthSeriesKey {
                    metric: HealthMetric::TempCelsius,
                    label: None,
                },
                interval_ms: None,
                buckets: vec![bucket(61.3)],
            },
            Series {
                metric: HealthSeriesKey {
                    metric: HealthMetric::FsUsedPercent,
                    label: Some(("mountpoint", "/media/\u{1b}[2J".to_owned())),
                },
                interval_ms: None,
                buckets: vec![bucket(93.0)],
            },
        ];
        let json = serde_json::to_value(plot(&q, s)).unwrap();
        assert_eq!(json["series"][0]["unit"], "°C");
        assert_eq!(json["series"][0]["labels"], serde_json::json!({}));
        assert_eq!(json["series"][1]["unit"], "percent");
        assert_eq!(
            json["series"][1]["labels"],
            serde_json::json!({"mountpoint": "/media/\\x1b[2J"})
        );
        assert_eq!(json["series"][1]["mean"], serde_json::json!([93]));
    }
}
