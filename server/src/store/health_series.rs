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
//! nothing more. Must never do I/O or allocate per row: memory is the
//! buckets plus one key per series.

use monitor::health::{HealthMetric, THROTTLE_FLAGS};

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

/// Builds the [`HealthSeries`] of one query from its rows.
#[derive(Debug)]
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
        if metric == HealthMetric::ThrottledFlags {
            let first = self.first_index(metric, "", |down| {
                let first = THROTTLE_FLAGS.map(|f| {
                    down.add(HealthSeriesKey {
                        metric,
                        label: Some((FLAG_LABEL, f.name.to_owned())),
                    })
                })[0];
                Some(first)
            });
            if let Some(first) = first {
                for (i, f) in THROTTLE_FLAGS.iter().enumerate() {
                    let set = f64::from(u8::from(f.is_set(value, false)));
                    self.down.push(first + i, time_unix_ms, set);
                }
            }
            return;
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
        match index {
            Some(i) => self.down.push(i, time_unix_ms, value),
            None => {
                if self.left_out.len() < MAX_LEFT_OUT
                    && !self
                        .left_out
                        .iter()
                        .any(|(m, d)| *m == metric && d == device)
                {
                    self.left_out.push((metric, device.to_owned()));
                }
            }
        }
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
mod tests {
    use super::*;

    fn query(since: i64, until: i64, step: i64) -> SeriesQuery {
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

    #[test]
    fn bad_ranges_are_refused() {
        let e = HealthDownsampler::new(&query(5, 5, 1), &[HealthMetric::Load1]).unwrap_err();
        assert!(e.0.contains("empty"), "{e}");
    }
}
