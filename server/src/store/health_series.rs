//! Downsampling a host's health values (issue 14) into series
//! ([`crate::store::Store::health_series`]): pure code over stored rows,
//! shared by both backends, on top of [`Downsampler`]. What a health
//! series is, is decided here once:
//! - a one-per-host metric (temperature, load…) is one series;
//! - a labelled one (`fs_used_percent`) is one series per device, named by
//!   its label (`mountpoint`), at most [`MAX_DEVICES_PER_METRIC`] of them
//!   (the first ones the scan meets; the others are counted, not kept);
//! - the throttling word is one 0/1 series per condition holding now
//!   (`monitor::health::THROTTLE_FLAGS`, labelled `flag` as `/metrics`
//!   labels them), so a bucket's max says whether it held at all and its
//!   mean for what share of the samples: a min, max and mean of the word
//!   itself would mean nothing.
//!
//! A backend scans the host's health rows in the range, each series' rows
//! oldest first, and hands every row to [`HealthDownsampler::push`],
//! nothing more; or, for the part of the range the per-minute rollup
//! answers (`health_rollup.rs`), each minute's row to
//! [`HealthDownsampler::push_minute`] first, then the raw rows after it. Must never do I/O or allocate per row: memory is the
//! buckets plus one key per series.

use monitor::health::{HealthMetric, THROTTLE_FLAGS};

use super::health_rollup::{MinuteSeries, each_series};
use super::records::{HealthSeriesKey, Series, SeriesQuery};
use super::series::{BadSeriesQuery, Downsampler};
use crate::exported::FLAG_LABEL;

/// Series of one labelled metric an answer holds at most (a plot's legend
/// stays readable; the wire allows 64 health series per host).
pub const MAX_DEVICES_PER_METRIC: usize = 16;
/// Devices left out that are told apart (for the count); more are not
/// counted.
const MAX_LEFT_OUT: usize = 64;

/// The downsampled health series of one query, and how many devices the
/// cap left out.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthSeries {
    /// By metric ([`HealthMetric::ALL`] order), then a labelled metric's
    /// devices by name; a throttling word's conditions in bit order.
    pub series: Vec<Series<HealthSeriesKey>>,
    /// Distinct (metric, device) pairs with values in the range that are
    /// not among `series` (over [`MAX_DEVICES_PER_METRIC`]); counted up to
    /// 64.
    pub devices_left_out: usize,
}

/// Builds the [`HealthSeries`] of one query from its rows (a clone made
/// before the first row starts the query over).
#[derive(Clone, Debug)]
pub struct HealthDownsampler {
    down: Downsampler<HealthSeriesKey>,
    /// By `HealthMetric as usize` (no hashing per row).
    wanted: [bool; HealthMetric::ALL.len()],
    /// By `HealthMetric as usize`: (device, series index); a flag word's
    /// first condition's index under the device "" (the others follow it).
    index: [Vec<(String, usize)>; HealthMetric::ALL.len()],
    left_out: Vec<(HealthMetric, String)>,
}

impl HealthDownsampler {
    /// A downsampler for the `metrics` of `q`; refuses what
    /// [`Downsampler::new`] refuses.
    pub fn new(
        q: &SeriesQuery,
        metrics: &[HealthMetric],
    ) -> Result<HealthDownsampler, BadSeriesQuery> {
        let mut wanted = [false; HealthMetric::ALL.len()];
        for &m in metrics {
            wanted[m as usize] = true;
        }
        Ok(HealthDownsampler {
            down: Downsampler::new(q, &[])?,
            wanted,
            index: Default::default(),
            left_out: Vec::new(),
        })
    }

    /// Whether rows of `metric` are wanted (a backend may skip the others
    /// before reading their device).
    pub fn wants(&self, metric: HealthMetric) -> bool {
        self.wanted[metric as usize]
    }

    /// Adds one stored value. Rows of a metric not asked for, out of the
    /// range or not finite are ignored, as is a device over the cap.
    pub fn push(&mut self, metric: HealthMetric, device: &str, time_unix_ms: i64, value: f64) {
        // Checked here, before a series is made for the row.
        if !self.wants(metric) || !value.is_finite() {
            return;
        }
        let Some(first) = self.series_index(metric, device) else {
            return;
        };
        let down = &mut self.down;
        each_series(metric, device, value, |offset, _, v| {
            down.push(first + offset, time_unix_ms, v);
        });
    }

    /// Adds one minute of the host's values as the rollup stored it
    /// (`health_rollup.rs`): its series in the order their first samples
    /// came, so the device cap keeps the same devices as
    /// [`HealthDownsampler::push`] given the minute's rows. `minute` is
    /// reordered.
    pub(crate) fn push_minute(&mut self, minute: &mut [MinuteSeries<&str>]) {
        minute
            .sort_by(|a, b| (a.agg.first_unix_ms, a.series).cmp(&(b.agg.first_unix_ms, b.series)));
        for s in minute.iter() {
            if !self.wants(s.metric) {
                continue;
            }
            // A throttling condition is found by its name under the word's
            // series; anything else is its device's series.
            let (device, offset) = if s.metric == HealthMetric::ThrottledFlags {
                match THROTTLE_FLAGS.iter().position(|f| f.name == s.series) {
                    Some(i) => ("", i),
                    None => continue,
                }
            } else {
                (s.series, 0)
            };
            if let Some(first) = self.series_index(s.metric, device) {
                self.down.push_rolled(first + offset, &s.agg);
            }
        }
    }

    /// The index of the (first) series of (`metric`, `device`), made the
    /// first time: all of a throttling word's conditions at once; none for
    /// a device over the cap (counted as left out).
    fn series_index(&mut self, metric: HealthMetric, device: &str) -> Option<usize> {
        if metric == HealthMetric::ThrottledFlags {
            return self.first_index(metric, "", |down| {
                let first = THROTTLE_FLAGS.map(|f| {
                    down.add(HealthSeriesKey {
                        metric,
                        label: Some((FLAG_LABEL, f.name.to_owned())),
                    })
                })[0];
                Some(first)
            });
        }
        let label = metric.spec().label;
        let devices = self.index[metric as usize].len();
        let full = label.is_some() && devices >= MAX_DEVICES_PER_METRIC;
        let index = self.first_index(metric, device, |down| {
            (!full).then(|| {
                down.add(HealthSeriesKey {
                    metric,
                    label: label.map(|l| (l, device.to_owned())),
                })
            })
        });
        if index.is_none()
            && self.left_out.len() < MAX_LEFT_OUT
            && !self
                .left_out
                .iter()
                .any(|(m, d)| *m == metric && d == device)
        {
            self.left_out.push((metric, device.to_owned()));
        }
        index
    }

    /// The series index of (`metric`, `device`), made by `add` (which may
    /// refuse) the first time.
    fn first_index(
        &mut self,
        metric: HealthMetric,
        device: &str,
        add: impl FnOnce(&mut Downsampler<HealthSeriesKey>) -> Option<usize>,
    ) -> Option<usize> {
        let known = &mut self.index[metric as usize];
        if let Some((_, i)) = known.iter().find(|(d, _)| d == device) {
            return Some(*i);
        }
        let i = add(&mut self.down)?;
        known.push((device.to_owned(), i));
        Some(i)
    }

    /// The series (see [`HealthSeries::series`] for their order).
    pub fn finish(self) -> HealthSeries {
        let mut series = self.down.finish();
        // Stable: a flag word's conditions keep their bit order.
        series.sort_by(|a, b| {
            let (a, b) = (&a.metric, &b.metric);
            a.metric.cmp(&b.metric).then_with(|| {
                if a.metric == HealthMetric::ThrottledFlags {
                    std::cmp::Ordering::Equal
                } else {
                    a.label.cmp(&b.label)
                }
            })
        });
        HealthSeries {
            series,
            devices_left_out: self.left_out.len(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A query of host "pi" (also `health_rollup.rs`'s tests).
    pub(crate) fn query(since: i64, until: i64, step: i64) -> SeriesQuery {
        SeriesQuery {
            hostname: "pi".into(),
            since_unix_ms: since,
            until_unix_ms: until,
            step_ms: step,
        }
    }

    /// The (metric, label) of each series.
    fn keys(h: &HealthSeries) -> Vec<(&'static str, Option<(&'static str, &str)>)> {
        h.series
            .iter()
            .map(|s| {
                let label = s.metric.label.as_ref().map(|(k, v)| (*k, v.as_str()));
                (s.metric.metric.name(), label)
            })
            .collect()
    }

    #[test]
    fn each_mount_point_is_a_series_and_buckets_keep_min_and_max() {
        use HealthMetric::{FsUsedPercent, Load1, TempCelsius};
        let mut d =
            HealthDownsampler::new(&query(0, 10_000, 5000), &[FsUsedPercent, TempCelsius]).unwrap();
        // Not finite: no series made for it.
        d.push(FsUsedPercent, "/nan", 0, f64::NAN);
        // The SQLite order: time, then metric, then device.
        for t in [0, 1000, 2000, 6000] {
            d.push(FsUsedPercent, "/boot", t, 20.0);
            d.push(FsUsedPercent, "/", t, 50.0 + t as f64 / 1000.0);
            d.push(Load1, "", t, 1.0);
            d.push(TempCelsius, "", t, if t == 1000 { 80.0 } else { 40.0 });
        }
        let h = d.finish();
        assert_eq!(
            keys(&h),
            [
                ("temp_celsius", None),
                ("fs_used_percent", Some(("mountpoint", "/"))),
                ("fs_used_percent", Some(("mountpoint", "/boot"))),
            ]
        );
        assert_eq!(h.devices_left_out, 0);
        let temp = &h.series[0];
        assert_eq!(temp.interval_ms, Some(1000));
        assert_eq!((temp.buckets[0].min, temp.buckets[0].max), (40.0, 80.0));
        assert_eq!(temp.buckets[0].count, 3);
        let root = &h.series[1];
        assert_eq!((root.buckets[0].min, root.buckets[0].max), (50.0, 52.0));
        assert_eq!(root.buckets[1].start_unix_ms, 5000);
        assert_eq!(root.buckets[1].max_gap_ms, 4000);
    }

    #[test]
    fn the_throttling_word_is_one_0_1_series_per_condition_now() {
        let mut d =
            HealthDownsampler::new(&query(0, 10_000, 10_000), &[HealthMetric::ThrottledFlags])
                .unwrap();
        // Under-voltage now at 0 s; throttled now at 1 s (and under-voltage
        // only "since start"); nothing now at 2 s.
        for (t, word) in [(0, 0x1), (1000, 0x10004), (2000, 0x50000)] {
            d.push(HealthMetric::ThrottledFlags, "", t, f64::from(word));
        }
        let h = d.finish();
        let names: Vec<_> = keys(&h).into_iter().map(|(_, l)| l.unwrap().1).collect();
        assert_eq!(
            names,
            [
                "under_voltage",
                "arm_frequency_capped",
                "throttled",
                "soft_temperature_limit"
            ]
        );
        let b = |i: usize| h.series[i].buckets[0];
        assert_eq!((b(0).min, b(0).max, b(0).sum), (0.0, 1.0, 1.0));
        assert_eq!((b(1).max, b(1).count), (0.0, 3));
        assert_eq!((b(2).max, b(2).sum), (1.0, 1.0));
        assert_eq!(b(3).max, 0.0);
    }

    #[test]
    fn devices_over_the_cap_are_counted_not_kept() {
        let mut d =
            HealthDownsampler::new(&query(0, 1000, 1000), &[HealthMetric::FsUsedPercent]).unwrap();
        for t in [0, 500] {
            for i in 0..MAX_DEVICES_PER_METRIC + 3 {
                d.push(HealthMetric::FsUsedPercent, &format!("/m{i:02}"), t, 1.0);
            }
        }
        let h = d.finish();
        assert_eq!(h.series.len(), MAX_DEVICES_PER_METRIC);
        assert_eq!(h.devices_left_out, 3);
        assert_eq!(keys(&h)[0].1, Some(("mountpoint", "/m00")));
    }

    /// A Pi's values over `minutes` minutes every 5 s, with an outage,
    /// two mount points (one only later), throttling now and then, and a
    /// value that is not finite: (metric, device, time, value), each
    /// series oldest first.
    fn pi_rows(since: i64, minutes: i64) -> Vec<(HealthMetric, &'static str, i64, f64)> {
        use HealthMetric::{FsUsedPercent, Load1, TempCelsius, ThrottledFlags};
        let mut rows = Vec::new();
        let mut x = 7u64;
        let mut noise = || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        for k in 0..minutes * 12 {
            // A 7-minute outage, and ticks 1-3 ms late now and then.
            let t = since + k * 5000 + i64::from(k % 7 == 3) * (1 + k % 3);
            if (40 * 12..47 * 12).contains(&k) {
                continue;
            }
            let word = if noise() < 0.05 { 0x5_0005 } else { 0 };
            rows.push((TempCelsius, "", t, 40.0 + 30.0 * noise()));
            rows.push((Load1, "", t, if k == 100 { f64::NAN } else { noise() }));
            rows.push((ThrottledFlags, "", t, f64::from(word)));
            rows.push((FsUsedPercent, "/", t, 60.0 + noise()));
            if k > 300 {
                rows.push((FsUsedPercent, "/mnt/usb", t, 90.0));
            }
        }
        rows
    }

    /// Every bucket the same as from the raw rows: sums to rounding.
    pub(crate) fn assert_same(rolled: &HealthSeries, raw: &HealthSeries) {
        assert_eq!(rolled.devices_left_out, raw.devices_left_out);
        assert_eq!(keys(rolled), keys(raw));
        for (a, b) in rolled.series.iter().zip(&raw.series) {
            assert_eq!(a.interval_ms, b.interval_ms, "{:?}", a.metric);
            assert_eq!(a.buckets.len(), b.buckets.len(), "{:?}", a.metric);
            for (x, y) in a.buckets.iter().zip(&b.buckets) {
                let same_sum = (x.sum - y.sum).abs() <= 1e-9 * y.sum.abs().max(1.0);
                assert!(same_sum, "{:?}: {x:?} vs {y:?}", a.metric);
                assert_eq!(
                    (x.start_unix_ms, x.count, x.min, x.max, x.max_gap_ms),
                    (y.start_unix_ms, y.count, y.min, y.max, y.max_gap_ms),
                    "{:?}",
                    a.metric
                );
            }
        }
    }

    #[test]
    fn rolled_minutes_give_the_raw_rows_series() {
        use crate::store::health_rollup::{RollupBuilder, decode_minute, rolled_part};
        let minute = 60_000;
        let since = 1_700_000_000_000 / minute * minute;
        let rows = pi_rows(since, 120);
        let all = HealthMetric::ALL;
        for (step, edge) in [
            (minute, 100),
            (2 * minute, 100),
            (10 * minute, 37),
            (7 * minute, 120),
        ] {
            let q = query(since, since + 120 * minute, step);
            let edge = since + edge * minute;
            let mut raw = HealthDownsampler::new(&q, &all).unwrap();
            for &(m, d, t, v) in &rows {
                raw.push(m, d, t, v);
            }
            let mut builder = RollupBuilder::default();
            for &(m, d, t, v) in rows.iter().filter(|r| r.2 < edge) {
                builder.push(m, d, t, v);
            }
            let split = rolled_part(&q, Some(edge));
            assert_eq!(split, edge);
            let mut rolled = HealthDownsampler::new(&q, &all).unwrap();
            for (start, row) in builder.finish() {
                let mut out = Vec::new();
                decode_minute(start, &row, &mut out).unwrap();
                rolled.push_minute(&mut out);
            }
            for &(m, d, t, v) in rows.iter().filter(|r| r.2 >= split) {
                rolled.push(m, d, t, v);
            }
            let (rolled, raw) = (rolled.finish(), raw.finish());
            assert_eq!(raw.series.len(), 8);
            assert!(
                raw.series
                    .iter()
                    .any(|s| s.buckets.iter().any(|b| b.max_gap_ms > 400_000))
            );
            assert_same(&rolled, &raw);
        }
    }

    #[test]
    fn rolled_minutes_keep_the_same_devices_under_the_cap() {
        use crate::store::health_rollup::{RollupBuilder, decode_minute};
        let q = query(0, 120_000, 60_000);
        let mut rows = Vec::new();
        for t in [0, 30_000, 60_000] {
            // Devices met late in the minute sort first by name: the cap
            // keeps those met first in time.
            for i in 0..MAX_DEVICES_PER_METRIC + 2 {
                let late = i64::from(i < 3) * 20_000;
                rows.push((t + late, format!("/m{i:02}")));
            }
        }
        rows.sort();
        let mut raw = HealthDownsampler::new(&q, &[HealthMetric::FsUsedPercent]).unwrap();
        let mut builder = RollupBuilder::default();
        for (t, d) in &rows {
            raw.push(HealthMetric::FsUsedPercent, d, *t, 1.0);
            builder.push(HealthMetric::FsUsedPercent, d, *t, 1.0);
        }
        let mut rolled = HealthDownsampler::new(&q, &[HealthMetric::FsUsedPercent]).unwrap();
        for (start, row) in builder.finish() {
            let mut out = Vec::new();
            decode_minute(start, &row, &mut out).unwrap();
            rolled.push_minute(&mut out);
        }
        let (rolled, raw) = (rolled.finish(), raw.finish());
        assert_eq!(raw.devices_left_out, 2);
        let kept = keys(&raw);
        assert!(kept.contains(&("fs_used_percent", Some(("mountpoint", "/m00")))));
        assert!(!kept.contains(&("fs_used_percent", Some(("mountpoint", "/m01")))));
        assert_same(&rolled, &raw);
    }

    #[test]
    fn bad_ranges_are_refused() {
        let e = HealthDownsampler::new(&query(5, 5, 1), &[HealthMetric::Load1]).unwrap_err();
        assert!(e.0.contains("empty"), "{e}");
    }
}
