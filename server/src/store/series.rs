//! Downsampling a host's samples into per-bucket min, max and mean
//! ([`crate::store::Store::series`]): pure code over samples in time
//! order, shared by every backend. A backend only scans the host's samples
//! in the range, oldest first, and hands each one to [`Downsampler::push`];
//! what a bucket, a gap and an interval are is decided here once.
//!
//! It must never do I/O or allocate per sample: memory is one bucket per
//! bucket holding data, plus a small bounded table of the gaps seen.

use std::collections::HashMap;

use monitor::metric::Metric;

use super::health_rollup::MinuteAgg;
use super::records::{Bucket, Series, SeriesQuery};

/// Distinct gaps counted per series to find its interval. Agents tick on a
/// schedule, so a handful of values covers nearly every gap; new values
/// past this many are not counted (the estimate stays among those seen).
const MAX_DISTINCT_GAPS: usize = 256;

/// Buckets a query may ask for: beyond this the step is too small for the
/// range to be a plot (a caller's bug, refused by [`Downsampler::new`]).
pub const MAX_BUCKETS: i64 = 100_000;

/// Why a series query cannot be answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadSeriesQuery(pub String);

impl std::fmt::Display for BadSeriesQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Builds the [`Series`] of one query from its samples. `K` names a
/// series: one of the six [`Metric`]s, or a health metric with its label
/// (`health_series.rs`). A clone made before the first sample serves the
/// same query for another host.
#[derive(Clone, Debug)]
pub struct Downsampler<K = Metric> {
    since_unix_ms: i64,
    until_unix_ms: i64,
    step_ms: i64,
    series: Vec<SeriesState<K>>,
}

#[derive(Clone, Debug)]
struct SeriesState<K> {
    key: K,
    buckets: Vec<Bucket>,
    last_time_unix_ms: Option<i64>,
    /// Gap (ms) → how many times it was seen.
    gaps: HashMap<i64, u32>,
}

impl<K> SeriesState<K> {
    /// Counts `n` more gaps of `gap_ms` (a positive one) towards the
    /// series' interval.
    fn note_gap(&mut self, gap_ms: i64, n: u32) {
        if gap_ms <= 0 {
            return;
        }
        let known = self.gaps.len();
        if let Some(c) = self.gaps.get_mut(&gap_ms) {
            *c = c.saturating_add(n);
        } else if known < MAX_DISTINCT_GAPS {
            self.gaps.insert(gap_ms, n);
        }
    }

    /// Adds `part` (samples of one bucket, newer than those in it) to the
    /// bucket starting at `start_unix_ms`.
    fn add_to(&mut self, start_unix_ms: i64, part: &Bucket) {
        match self.buckets.last_mut() {
            Some(b) if b.start_unix_ms == start_unix_ms => {
                b.count = b.count.saturating_add(part.count);
                b.min = b.min.min(part.min);
                b.max = b.max.max(part.max);
                b.sum += part.sum;
                b.max_gap_ms = b.max_gap_ms.max(part.max_gap_ms);
            }
            _ => self.buckets.push(*part),
        }
    }
}

impl<K: Clone> Downsampler<K> {
    /// A downsampler for `q` whose series `i` is `keys[i]`; refuses an
    /// empty range, a step under 1 ms or more than [`MAX_BUCKETS`] buckets.
    pub fn new(q: &SeriesQuery, keys: &[K]) -> Result<Downsampler<K>, BadSeriesQuery> {
        if q.until_unix_ms <= q.since_unix_ms {
            return Err(BadSeriesQuery(format!(
                "the range is empty: until ({}) must be after since ({})",
                q.until_unix_ms, q.since_unix_ms
            )));
        }
        if q.step_ms < 1 {
            return Err(BadSeriesQuery(format!(
                "step_ms must be at least 1, got {}",
                q.step_ms
            )));
        }
        let span_ms = q.until_unix_ms.saturating_sub(q.since_unix_ms);
        let buckets = span_ms / q.step_ms + i64::from(span_ms % q.step_ms != 0);
        if buckets > MAX_BUCKETS {
            return Err(BadSeriesQuery(format!(
                "{buckets} buckets asked for, at most {MAX_BUCKETS}: use a larger step"
            )));
        }
        Ok(Downsampler {
            since_unix_ms: q.since_unix_ms,
            until_unix_ms: q.until_unix_ms,
            step_ms: q.step_ms,
            series: Vec::new(),
        }
        .with(keys))
    }

    fn with(mut self, keys: &[K]) -> Downsampler<K> {
        for k in keys {
            self.add(k.clone());
        }
        self
    }

    /// Adds a series named `key` (for series found while scanning) and
    /// returns its index for [`Downsampler::push`].
    pub fn add(&mut self, key: K) -> usize {
        self.series.push(SeriesState {
            key,
            buckets: Vec::new(),
            last_time_unix_ms: None,
            gaps: HashMap::new(),
        });
        self.series.len() - 1
    }

    /// Adds one sample of series `index`. Samples of a series come oldest
    /// first (equal times allowed); one outside the range, of an unknown
    /// series or not finite is ignored.
    pub fn push(&mut self, index: usize, time_unix_ms: i64, value: f64) {
        if time_unix_ms < self.since_unix_ms || time_unix_ms >= self.until_unix_ms {
            return;
        }
        if !value.is_finite() {
            return;
        }
        let start_unix_ms = self.bucket_of(time_unix_ms);
        let Some(s) = self.series.get_mut(index) else {
            return;
        };
        let gap_ms = match s.last_time_unix_ms {
            Some(last) => (time_unix_ms - last).max(0),
            None => 0,
        };
        s.last_time_unix_ms = Some(time_unix_ms);
        s.note_gap(gap_ms, 1);
        s.add_to(
            start_unix_ms,
            &Bucket {
                start_unix_ms,
                count: 1,
                min: value,
                max: value,
                sum: value,
                max_gap_ms: gap_ms,
            },
        );
    }

    /// Adds one minute of series `index` as summed up by the health rollup
    /// (`health_rollup.rs`): the same buckets, gaps and interval as pushing
    /// its samples one by one (the sum grouped by minute). The minute must
    /// lie inside one bucket of the range, after the series' earlier
    /// samples; one that does not is ignored (callers only push whole
    /// minutes of whole-minute buckets).
    pub(crate) fn push_rolled(&mut self, index: usize, agg: &MinuteAgg) {
        let start_unix_ms = self.bucket_of(agg.first_unix_ms);
        if agg.first_unix_ms < self.since_unix_ms
            || agg.last_unix_ms >= self.until_unix_ms
            || self.bucket_of(agg.last_unix_ms) != start_unix_ms
        {
            return;
        }
        let Some(s) = self.series.get_mut(index) else {
            return;
        };
        let gap_ms = match s.last_time_unix_ms {
            Some(last) => (agg.first_unix_ms - last).max(0),
            None => 0,
        };
        s.last_time_unix_ms = Some(agg.last_unix_ms);
        s.note_gap(gap_ms, 1);
        for &(gap, n) in &agg.gaps {
            s.note_gap(gap, n);
        }
        s.add_to(
            start_unix_ms,
            &Bucket {
                start_unix_ms,
                count: agg.count,
                min: agg.min,
                max: agg.max,
                sum: agg.sum,
                max_gap_ms: gap_ms.max(agg.max_gap_ms),
            },
        );
    }

    /// The start of the bucket holding `time_unix_ms` (in the range).
    fn bucket_of(&self, time_unix_ms: i64) -> i64 {
        let k = (time_unix_ms - self.since_unix_ms) / self.step_ms;
        self.since_unix_ms + k * self.step_ms
    }

    /// Adds the values of one tick: `values[i]` (when there is one) to
    /// series `i`, as [`Downsampler::push`] does.
    pub fn push_tick(&mut self, time_unix_ms: i64, values: &[Option<f64>]) {
        for (i, v) in values.iter().enumerate() {
            if let Some(v) = v {
                self.push(i, time_unix_ms, *v);
            }
        }
    }

    /// The series, in the order of their keys (given to
    /// [`Downsampler::new`], then added).
    pub fn finish(self) -> Vec<Series<K>> {
        self.series
            .into_iter()
            .map(|s| Series {
                metric: s.key,
                // The most frequent gap; the smaller one on a tie.
                interval_ms: s
                    .gaps
                    .iter()
                    .max_by_key(|&(&gap, &n)| (n, std::cmp::Reverse(gap)))
                    .map(|(&gap, _)| gap),
                buckets: s.buckets,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(since: i64, until: i64, step: i64) -> SeriesQuery {
        SeriesQuery {
            hostname: "h".into(),
            since_unix_ms: since,
            until_unix_ms: until,
            step_ms: step,
        }
    }

    #[test]
    fn buckets_keep_min_max_and_sum_and_skip_empty_ones() {
        let mut d = Downsampler::new(&query(1000, 2000, 100), &[Metric::CpuPercent]).unwrap();
        // A spike inside a bucket survives as its max; a dip as its min.
        for (t, v) in [(1000, 5.0), (1010, 99.0), (1020, 1.0), (1090, 5.0)] {
            d.push(0, t, v);
        }
        // Nothing in 1100..1300; then one sample.
        d.push(0, 1300, 7.0);
        // Out of range, unknown series, not finite: ignored.
        d.push(0, 2000, 1e9);
        d.push(0, 999, 1e9);
        d.push(1, 1400, 1.0);
        d.push(0, 1400, f64::NAN);
        let s = d.finish();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].metric, Metric::CpuPercent);
        assert_eq!(
            s[0].buckets,
            vec![
                Bucket {
                    start_unix_ms: 1000,
                    count: 4,
                    min: 1.0,
                    max: 99.0,
                    sum: 110.0,
                    max_gap_ms: 70,
                },
                Bucket {
                    start_unix_ms: 1300,
                    count: 1,
                    min: 7.0,
                    max: 7.0,
                    sum: 7.0,
                    max_gap_ms: 210,
                },
            ]
        );
        assert_eq!(s[0].interval_ms, Some(10));
    }

    #[test]
    fn the_interval_is_the_most_frequent_gap_and_outages_show_in_max_gap() {
        let metrics = [Metric::CpuPercent, Metric::MemPercent];
        let mut d = Downsampler::new(&query(0, 100_000, 10_000), &metrics).unwrap();
        let mut times: Vec<i64> = (0..10).map(|i| i * 1000).collect();
        // An outage: nothing from 9 s to 40 s.
        times.extend((40..50).map(|i| i * 1000));
        for t in times {
            d.push(0, t, 1.0);
        }
        d.push(1, 5000, 2.0);
        let s = d.finish();
        assert_eq!(s[0].interval_ms, Some(1000));
        let gaps: Vec<(i64, i64)> = s[0]
            .buckets
            .iter()
            .map(|b| (b.start_unix_ms, b.max_gap_ms))
            .collect();
        assert_eq!(gaps, vec![(0, 1000), (40_000, 31_000)]);
        assert_eq!(s[1].interval_ms, None);
        assert_eq!(s[1].buckets.len(), 1);
    }

    #[test]
    fn bad_queries_are_refused_with_the_reason() {
        let m = [Metric::CpuPercent];
        let e = Downsampler::new(&query(10, 10, 1), &m).unwrap_err();
        assert!(e.0.contains("empty"), "{e}");
        let e = Downsampler::new(&query(0, 10, 0), &m).unwrap_err();
        assert!(e.0.contains("step_ms"), "{e}");
        let e = Downsampler::new(&query(0, 1_000_000, 1), &m).unwrap_err();
        assert!(e.0.contains("at most 100000"), "{e}");
    }
}
