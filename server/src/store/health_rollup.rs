//! The per-minute rollup of a host's health values (issue 14), pure code
//! shared by both backends: what one closed minute of one health series is
//! summed up as ([`MinuteAgg`]), how a minute's series are packed into one
//! stored row ([`encode_minute`], [`decode_minute`]), building them from raw
//! rows ([`RollupBuilder`]), and which part of a query the rollup may answer
//! ([`rolled_part`]).
//!
//! Why: a 7-day health read of one Pi at 5 s scanned ~968,000 raw rows
//! (0.5-0.9 s); the same range is ~10,000 minute rows. The answer must stay
//! exactly what the raw rows give: a [`MinuteAgg`] keeps, besides count,
//! min, max and sum, the first and last sample time, the longest gap inside
//! the minute and every gap inside it with its count (in the order they
//! first occur), so [`crate::store::series::Downsampler::push_rolled`]
//! gives the same buckets, longest gaps and interval as pushing the
//! minute's samples one by one. Only the sum can differ, in its last bits:
//! floating-point addition grouped by minute instead of sample by sample.
//!
//! A minute row is used only for a query whose buckets hold whole minutes
//! (a step of whole minutes, starting on a minute) and only below the
//! host's rolled edge: every minute below it has its row, made from every
//! raw value stored in it (a value arriving later into such a minute has
//! the minute made again, in the transaction storing it). Above the edge,
//! and for any other query, the raw rows are read as before.
//!
//! Must never do I/O; decoding never panics on a damaged row (it is
//! refused as a whole, and the caller reads the raw rows instead).

use std::collections::BTreeMap;

use monitor::health::{HealthMetric, THROTTLE_FLAGS};

use super::records::SeriesQuery;

/// The rollup's interval: one row per host and minute.
pub const HEALTH_ROLLUP_MS: i64 = 60_000;

/// The start of the minute holding `time_unix_ms`.
pub(crate) fn minute_of(time_unix_ms: i64) -> i64 {
    time_unix_ms.div_euclid(HEALTH_ROLLUP_MS) * HEALTH_ROLLUP_MS
}

/// Where the rolled part of `q` ends: `[q.since, end)` may be read from the
/// minute rows, `[end, q.until)` must be read raw. `rolled_until` is the
/// host's rolled edge (`None`: nothing rolled). Returns `q.since` (all raw)
/// unless every bucket of `q` holds whole minutes.
pub(crate) fn rolled_part(q: &SeriesQuery, rolled_until: Option<i64>) -> i64 {
    let whole_minutes =
        q.step_ms % HEALTH_ROLLUP_MS == 0 && q.since_unix_ms.rem_euclid(HEALTH_ROLLUP_MS) == 0;
    match rolled_until {
        Some(edge) if whole_minutes => edge.min(minute_of(q.until_unix_ms)).max(q.since_unix_ms),
        _ => q.since_unix_ms,
    }
}

/// The values of the health series one stored value feeds, each given to
/// `f` as (offset, series name, value): a labelled or one-per-host metric
/// feeds one series (offset 0, named by its device, "" for none); the
/// throttling word one 0/1 series per condition holding now, in
/// [`THROTTLE_FLAGS`] order, named by the condition. The one place that
/// says so: `health_series.rs` and the rollup both go through it.
pub(crate) fn each_series(
    metric: HealthMetric,
    device: &str,
    value: f64,
    mut f: impl FnMut(usize, &str, f64),
) {
    if metric == HealthMetric::ThrottledFlags {
        for (i, flag) in THROTTLE_FLAGS.iter().enumerate() {
            f(i, flag.name, f64::from(u8::from(flag.is_set(value, false))));
        }
    } else {
        f(0, device, value);
    }
}

/// One series' values in one minute, as a bucket needs them, plus what
/// the gaps between its samples were.
#[derive(Clone, Debug, PartialEq)]
pub struct MinuteAgg {
    /// Samples (at least 1).
    pub count: u32,
    pub min: f64,
    pub max: f64,
    /// Of the values, added oldest first.
    pub sum: f64,
    /// The first and last sample's time, ms since the Unix epoch.
    pub first_unix_ms: i64,
    pub last_unix_ms: i64,
    /// The longest time between two consecutive samples inside the minute,
    /// ms (0 with one sample).
    pub max_gap_ms: i64,
    /// Every positive gap inside the minute (ms) with how often it occurs,
    /// in the order each first occurs.
    pub gaps: Vec<(i64, u32)>,
}

impl MinuteAgg {
    fn new(time_unix_ms: i64, value: f64) -> MinuteAgg {
        MinuteAgg {
            count: 1,
            min: value,
            max: value,
            sum: value,
            first_unix_ms: time_unix_ms,
            last_unix_ms: time_unix_ms,
            max_gap_ms: 0,
            gaps: Vec::new(),
        }
    }

    /// Adds a sample no older than the last one.
    fn add(&mut self, time_unix_ms: i64, value: f64) {
        let gap_ms = (time_unix_ms - self.last_unix_ms).max(0);
        if gap_ms > 0 {
            match self.gaps.iter_mut().find(|(g, _)| *g == gap_ms) {
                Some((_, n)) => *n = n.saturating_add(1),
                None => self.gaps.push((gap_ms, 1)),
            }
        }
        self.max_gap_ms = self.max_gap_ms.max(gap_ms);
        self.last_unix_ms = time_unix_ms;
        self.count = self.count.saturating_add(1);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += value;
    }
}

/// One series of one minute: its metric, its name (device or throttling
/// condition, as [`each_series`] names it) and its values.
#[derive(Clone, Debug, PartialEq)]
pub struct MinuteSeries<S = String> {
    pub metric: HealthMetric,
    pub series: S,
    pub agg: MinuteAgg,
}

/// Builds the minute rows of one host from its raw health values, each
/// series' values oldest first (any order across series: SQLite's scan is
/// by time, PostgreSQL's by metric).
#[derive(Debug, Default)]
pub struct RollupBuilder {
    /// minute → (metric, series) → values.
    minutes: BTreeMap<i64, BTreeMap<(HealthMetric, String), MinuteAgg>>,
}

impl RollupBuilder {
    /// Adds one stored value; one that is not finite is left out, as the
    /// downsampler leaves it out.
    pub fn push(&mut self, metric: HealthMetric, device: &str, time_unix_ms: i64, value: f64) {
        if !value.is_finite() {
            return;
        }
        let minute = self.minutes.entry(minute_of(time_unix_ms)).or_default();
        each_series(metric, device, value, |_, series, v| {
            // A lookup by borrowed key first: no String made per value.
            if let Some(agg) = minute
                .iter_mut()
                .find(|((m, s), _)| *m == metric && s == series)
                .map(|(_, a)| a)
            {
                agg.add(time_unix_ms, v);
            } else {
                minute.insert((metric, series.to_owned()), MinuteAgg::new(time_unix_ms, v));
            }
        });
    }

    /// The minute rows: (minute start, its encoded series), oldest first.
    pub fn finish(self) -> Vec<(i64, Vec<u8>)> {
        self.minutes
            .into_iter()
            .map(|(minute, series)| {
                let series: Vec<MinuteSeries<&str>> = series
                    .iter()
                    .map(|((metric, s), agg)| MinuteSeries {
                        metric: *metric,
                        series: s.as_str(),
                        agg: agg.clone(),
                    })
                    .collect();
                (minute, encode_minute(minute, &series))
            })
            .collect()
    }
}

/// Format version of a minute row, its first byte.
const FORMAT: u8 = 1;

/// Packs one minute's series into a row (all little-endian): the format
/// byte, then per series: metric name and series name (each a u8 length
/// and UTF-8, names over 255 bytes cut at a character boundary), count
/// (u32), min, max, sum (f64), first and last time as ms after the minute
/// (u16), the longest gap (u16), the number of gaps (u16) and each gap
/// (u16 ms) with its count (u32). Gaps inside a minute are under 60,000 ms.
pub(crate) fn encode_minute(minute_unix_ms: i64, series: &[MinuteSeries<&str>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + series.len() * 64);
    out.push(FORMAT);
    let ms = |t: i64| u16::try_from(t.clamp(0, HEALTH_ROLLUP_MS - 1)).unwrap_or(u16::MAX);
    for s in series {
        put_name(&mut out, s.metric.name());
        put_name(&mut out, s.series);
        let a = &s.agg;
        out.extend_from_slice(&a.count.to_le_bytes());
        for v in [a.min, a.max, a.sum] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for t in [
            a.first_unix_ms - minute_unix_ms,
            a.last_unix_ms - minute_unix_ms,
            a.max_gap_ms,
        ] {
            out.extend_from_slice(&ms(t).to_le_bytes());
        }
        let gaps = &a.gaps[..a.gaps.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(gaps.len() as u16).to_le_bytes());
        for &(gap, n) in gaps {
            out.extend_from_slice(&ms(gap).to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    out
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    let mut end = name.len().min(255);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&name.as_bytes()[..end]);
}

/// A minute row that cannot be read (damaged, or written by a newer
/// format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadMinuteRow;

/// Unpacks a row made by [`encode_minute`] into `out` (cleared first),
/// names borrowed from `row`. A series of a metric this build does not
/// know is skipped; anything malformed refuses the whole row.
pub(crate) fn decode_minute<'r>(
    minute_unix_ms: i64,
    row: &'r [u8],
    out: &mut Vec<MinuteSeries<&'r str>>,
) -> Result<(), BadMinuteRow> {
    out.clear();
    let mut r = Reader(row);
    if r.take(1)? != [FORMAT] {
        return Err(BadMinuteRow);
    }
    while !r.0.is_empty() {
        let metric = r.name()?;
        let series = r.name()?;
        let count = u32::from_le_bytes(r.array()?);
        let mut float = || r.array().map(f64::from_le_bytes);
        let (min, max, sum) = (float()?, float()?, float()?);
        let mut ms = || r.array().map(|b| i64::from(u16::from_le_bytes(b)));
        let (first, last, max_gap) = (ms()?, ms()?, ms()?);
        let n = u16::from_le_bytes(r.array()?);
        let mut gaps = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let gap = u16::from_le_bytes(r.array()?);
            gaps.push((i64::from(gap), u32::from_le_bytes(r.array()?)));
        }
        let Ok(metric) = metric.parse::<HealthMetric>() else {
            continue;
        };
        if count == 0 {
            return Err(BadMinuteRow);
        }
        out.push(MinuteSeries {
            metric,
            series,
            agg: MinuteAgg {
                count,
                min,
                max,
                sum,
                first_unix_ms: minute_unix_ms + first,
                last_unix_ms: minute_unix_ms + last,
                max_gap_ms: max_gap,
                gaps,
            },
        });
    }
    Ok(())
}

/// A cursor over a row's bytes.
struct Reader<'r>(&'r [u8]);

impl<'r> Reader<'r> {
    fn take(&mut self, n: usize) -> Result<&'r [u8], BadMinuteRow> {
        if self.0.len() < n {
            return Err(BadMinuteRow);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BadMinuteRow> {
        self.take(N)?.try_into().map_err(|_| BadMinuteRow)
    }

    fn name(&mut self) -> Result<&'r str, BadMinuteRow> {
        let len = self.take(1)?[0];
        std::str::from_utf8(self.take(usize::from(len))?).map_err(|_| BadMinuteRow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::health_series::tests::query;

    #[test]
    fn only_whole_minute_buckets_below_the_edge_are_rolled() {
        let m = HEALTH_ROLLUP_MS;
        // Whole minutes: rolled up to the edge, or up to the minute holding
        // `until` when the edge is past it.
        assert_eq!(rolled_part(&query(0, 10 * m, 2 * m), Some(4 * m)), 4 * m);
        assert_eq!(rolled_part(&query(0, 10 * m + 5, m), Some(20 * m)), 10 * m);
        // Nothing rolled, an edge before the range, a step or a start
        // that cuts minutes: all raw.
        assert_eq!(rolled_part(&query(0, 10 * m, m), None), 0);
        assert_eq!(rolled_part(&query(5 * m, 10 * m, m), Some(2 * m)), 5 * m);
        assert_eq!(rolled_part(&query(0, 10 * m, 44_000), Some(8 * m)), 0);
        assert_eq!(rolled_part(&query(1000, 10 * m, m), Some(8 * m)), 1000);
    }

    #[test]
    fn a_minute_keeps_its_gaps_in_the_order_they_first_occur() {
        let mut b = RollupBuilder::default();
        let t0 = 1_700_000_040_000; // a minute's start
        for (t, v) in [
            (0, 5.0),
            (5000, 7.0),
            (6000, 1.0),
            (11_000, 2.0),
            (11_000, 3.0),
        ] {
            b.push(HealthMetric::Load1, "", t0 + t, v);
        }
        b.push(HealthMetric::Load1, "", t0 + 12_000, f64::NAN);
        let rows = b.finish();
        assert_eq!(rows.len(), 1);
        let mut out = Vec::new();
        decode_minute(rows[0].0, &rows[0].1, &mut out).unwrap();
        assert_eq!(rows[0].0, t0);
        assert_eq!(
            out,
            [MinuteSeries {
                metric: HealthMetric::Load1,
                series: "",
                agg: MinuteAgg {
                    count: 5,
                    min: 1.0,
                    max: 7.0,
                    sum: 18.0,
                    first_unix_ms: t0,
                    last_unix_ms: t0 + 11_000,
                    max_gap_ms: 5000,
                    gaps: vec![(5000, 2), (1000, 1)],
                },
            }]
        );
    }

    #[test]
    fn the_throttling_word_rolls_into_one_series_per_condition() {
        let mut b = RollupBuilder::default();
        b.push(HealthMetric::ThrottledFlags, "", 0, f64::from(0x5_0005));
        b.push(HealthMetric::ThrottledFlags, "", 1000, 0.0);
        b.push(HealthMetric::FsUsedPercent, "/boot", 59_999, 20.0);
        b.push(HealthMetric::FsUsedPercent, "/", 60_000, 50.0);
        let rows = b.finish();
        let mut out = Vec::new();
        decode_minute(0, &rows[0].1, &mut out).unwrap();
        let got: Vec<_> = out
            .iter()
            .map(|s| (s.metric.name(), s.series, s.agg.count, s.agg.sum))
            .collect();
        assert_eq!(
            got,
            [
                ("throttled_flags", "arm_frequency_capped", 2, 0.0),
                ("throttled_flags", "soft_temperature_limit", 2, 0.0),
                ("throttled_flags", "throttled", 2, 1.0),
                ("throttled_flags", "under_voltage", 2, 1.0),
                ("fs_used_percent", "/boot", 1, 20.0),
            ]
        );
        assert_eq!(rows[1].0, 60_000);
    }

    #[test]
    fn damaged_rows_are_refused_and_unknown_metrics_skipped() {
        let agg = MinuteAgg::new(30, 1.0);
        let row = encode_minute(
            0,
            &[
                MinuteSeries {
                    metric: HealthMetric::Load1,
                    series: "",
                    agg: agg.clone(),
                },
                MinuteSeries {
                    metric: HealthMetric::TempCelsius,
                    series: "",
                    agg: agg.clone(),
                },
            ],
        );
        // Cut anywhere but between series: refused.
        let one = encode_minute(
            0,
            &[MinuteSeries {
                metric: HealthMetric::Load1,
                series: "",
                agg: agg.clone(),
            }],
        )
        .len();
        for cut in 0..row.len() {
            let whole = cut == 1 || cut == one;
            let mut out = Vec::new();
            assert_eq!(
                decode_minute(0, &row[..cut], &mut out).is_ok(),
                whole,
                "cut {cut}"
            );
        }
        let mut out = Vec::new();
        // A metric a newer build added is skipped.
        let mut renamed = row.clone();
        let at = renamed.iter().position(|&b| b == b'l').unwrap();
        renamed[at] = b'x';
        decode_minute(0, &renamed, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].metric, HealthMetric::TempCelsius);
        let mut newer = row.clone();
        newer[0] = FORMAT + 1;
        assert_eq!(decode_minute(0, &newer, &mut Vec::new()), Err(BadMinuteRow));
    }
}
