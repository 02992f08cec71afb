//! The row-per-tick layout of samples: how a batch's samples become rows of
//! the `ticks` table (one row per (host, sample time, run) holding up to six
//! values), how those rows travel in a journal row until they are merged
//! into `ticks` (see `journal.rs`), and how rows from both places become
//! samples again for a query.
//!
//! Why one row per tick rather than one per sample: a batch is one tick of
//! one host, so its six samples share host, time, run and receive time.
//! Stored as one row, the key and the receive lag are written once instead of
//! six times, a batch costs one b-tree insert instead of six, and a row is
//! about 75 bytes where six sample rows took about 190.
//!
//! This module is pure data: no SQL, no I/O. It must never invent a value
//! (a metric absent from a tick stays absent: `None`, NULL in the file),
//! and never keep one of two different values of a (time, metric) quietly:
//! that is a conflict, and the batch is refused.

use monitor::metric::Metric;

use crate::store::records::{Conflict, StoredSample, StoredSampleRow};

/// How many metrics a row holds: one column per metric, indexed by the
/// metric's id (see `encoding::metric_id`).
pub(crate) const METRICS: usize = Metric::ALL.len();

/// The samples of one batch that share a sample time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct TickRow {
    /// Sample time, ms since the Unix epoch.
    pub(crate) time_unix_ms: i64,
    /// Indexed by metric id; `None`: the batch has no sample of that metric
    /// at this time.
    pub(crate) values: [Option<f64>; METRICS],
}

/// What [`group_samples`] left out of the rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// Samples repeating a (time, metric, value) earlier in the same batch:
    /// the same measurement twice, kept once.
    pub(crate) repeats: usize,
    /// Samples whose value is NaN or infinite (SQLite cannot store them as
    /// REAL; the ingest refuses them, so only a direct caller can send one).
    pub(crate) not_finite: usize,
}

/// Groups a batch's samples into one row per distinct sample time, in the
/// order the times first appear (a batch normally has exactly one). A
/// batch that sends one (time, metric) twice with two values contradicts
/// itself: that is the `Err`, and `rows` must then not be stored.
pub(crate) fn group_samples(
    samples: &[StoredSample],
    metric_index: impl Fn(Metric) -> usize,
    rows: &mut Vec<TickRow>,
) -> Result<Dropped, Conflict> {
    rows.clear();
    let mut dropped = Dropped::default();
    for s in samples {
        if !s.value.is_finite() {
            dropped.not_finite += 1;
            continue;
        }
        let row = match rows.iter().position(|r| r.time_unix_ms == s.time_unix_ms) {
            Some(i) => &mut rows[i],
            None => {
                rows.push(TickRow {
                    time_unix_ms: s.time_unix_ms,
                    values: [None; METRICS],
                });
                let last = rows.len() - 1;
                &mut rows[last]
            }
        };
        match &mut row.values[metric_index(s.metric)] {
            Some(first) if *first == s.value => dropped.repeats += 1,
            Some(first) => {
                return Err(Conflict {
                    time_unix_ms: s.time_unix_ms,
                    metric: s.metric,
                    stored_value: *first,
                    sent_value: s.value,
                    within_batch: true,
                });
            }
            slot @ None => *slot = Some(s.value),
        }
    }
    Ok(dropped)
}

/// A value of a new tick that differs from the stored one of its (time,
/// metric): (metric id, stored value, sent value).
pub(crate) type Clash = (usize, f64, f64);

/// Takes out of `new` the values already stored: `stored` are the stored
/// ticks of the same host and time (one per run), and a value equal to one
/// of theirs for its metric is the same measurement, not stored twice. A
/// value that differs from every stored one of its metric is the `Err`
/// (naming the first stored one); `new` is then partly changed and must
/// not be stored. Values compare as numbers (`0.0 == -0.0`: SQLite may read
/// a stored -0.0 back as 0).
pub(crate) fn drop_stored(
    new: &mut [Option<f64>; METRICS],
    stored: &[[Option<f64>; METRICS]],
) -> Result<(), Clash> {
    for (i, slot) in new.iter_mut().enumerate() {
        let Some(sent) = *slot else { continue };
        let mut olds = stored.iter().filter_map(|s| s[i]);
        let Some(first) = olds.clone().next() else {
            continue;
        };
        if olds.any(|old| old == sent) {
            *slot = None;
        } else {
            return Err((i, first, sent));
        }
    }
    Ok(())
}

/// [`drop_stored`] for one row of a batch, a clash given as the batch's
/// [`Conflict`]; `metric_of` names a column (one that names no metric
/// clashes with nothing).
pub(crate) fn check_stored(
    row: &mut TickRow,
    stored: &[[Option<f64>; METRICS]],
    metric_of: impl Fn(usize) -> Option<Metric>,
) -> Result<(), Conflict> {
    match drop_stored(&mut row.values, stored) {
        Err((i, stored_value, sent_value)) => match metric_of(i) {
            Some(metric) => Err(Conflict {
                time_unix_ms: row.time_unix_ms,
                metric,
                stored_value,
                sent_value,
                within_batch: false,
            }),
            None => Ok(()),
        },
        Ok(()) => Ok(()),
    }
}

/// What merging a tick into a stored row of the same (host, time, run) gave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Filled {
    /// The row as it is to be stored.
    pub(crate) merged: [Option<f64>; METRICS],
    /// The values the new tick added (the stored row lacked them).
    pub(crate) added: [Option<f64>; METRICS],
    /// Values of the new tick ignored because the row already had one.
    pub(crate) ignored: usize,
}

/// Fills the metrics `existing` lacks from `new`, keeping every value
/// already stored (the first stored value of a (time, metric, run) wins).
pub(crate) fn fill_missing(
    existing: [Option<f64>; METRICS],
    new: [Option<f64>; METRICS],
) -> Filled {
    let mut f = Filled {
        merged: existing,
        added: [None; METRICS],
        ignored: 0,
    };
    for i in 0..METRICS {
        match (existing[i], new[i]) {
            (Some(_), Some(_)) => f.ignored += 1,
            (None, Some(v)) => {
                f.merged[i] = Some(v);
                f.added[i] = Some(v);
            }
            (_, None) => {}
        }
    }
    f
}

/// Encodes rows for `journal.ticks`: per row the sample time (i64 LE), a
/// byte whose bit i says metric id i is present, then the present values
/// (f64 LE) in metric id order. About 60 bytes for a full tick.
pub(crate) fn encode_rows(rows: &[TickRow]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * (9 + 8 * METRICS));
    for r in rows {
        out.extend_from_slice(&r.time_unix_ms.to_le_bytes());
        let mut present = 0u8;
        for (i, v) in r.values.iter().enumerate() {
            if v.is_some() {
                present |= 1 << i;
            }
        }
        out.push(present);
        for v in r.values.iter().flatten() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// The inverse of [`encode_rows`]; `None` if the blob is not one.
pub(crate) fn decode_rows(mut blob: &[u8]) -> Option<Vec<TickRow>> {
    let mut rows = Vec::new();
    while !blob.is_empty() {
        let (time, rest) = blob.split_first_chunk::<8>()?;
        let (&present, mut rest) = rest.split_first()?;
        if present >> METRICS != 0 {
            return None;
        }
        let mut row = TickRow {
            time_unix_ms: i64::from_le_bytes(*time),
            values: [None; METRICS],
        };
        for (i, slot) in row.values.iter_mut().enumerate() {
            if present & (1 << i) != 0 {
                let (v, after) = rest.split_first_chunk::<8>()?;
                *slot = Some(f64::from_le_bytes(*v));
                rest = after;
            }
        }
        rows.push(row);
        blob = rest;
    }
    Some(rows)
}

/// A stored tick that is still in the journal, not yet in `ticks`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct PendingTick {
    /// The journal row holding it.
    pub(crate) journal_id: i64,
    pub(crate) run_id: i64,
    /// Server time its batch arrived, ms since the Unix epoch.
    pub(crate) received_unix_ms: i64,
    pub(crate) row: TickRow,
}

impl PendingTick {
    /// As a query reads it.
    pub(crate) fn stored(&self) -> StoredTick {
        StoredTick {
            time_unix_ms: self.row.time_unix_ms,
            run_id: self.run_id,
            receive_lag_ms: self.received_unix_ms.saturating_sub(self.row.time_unix_ms),
            values: self.row.values,
        }
    }
}

/// Sorts pending ticks by (time, run) and combines those of the same
/// (time, run) as storing them one after the other in journal order would
/// have: the first value of each metric wins, the first receive time stays.
pub(crate) fn combine_pending(mut ticks: Vec<StoredTick>) -> Vec<StoredTick> {
    // Stable: ticks of one key keep their journal order.
    ticks.sort_by_key(|t| (t.time_unix_ms, t.run_id));
    let mut out: Vec<StoredTick> = Vec::with_capacity(ticks.len());
    for t in ticks {
        match out.last_mut() {
            Some(last) if (last.time_unix_ms, last.run_id) == (t.time_unix_ms, t.run_id) => {
                last.values = fill_missing(last.values, t.values).merged;
            }
            _ => out.push(t),
        }
    }
    out
}

/// One stored row as a query reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct StoredTick {
    pub(crate) time_unix_ms: i64,
    pub(crate) run_id: i64,
    /// Server receive time minus sample time, ms.
    pub(crate) receive_lag_ms: i64,
    pub(crate) values: [Option<f64>; METRICS],
}

/// One sample unpacked from a row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Unpacked {
    pub(crate) time_unix_ms: i64,
    /// Index into the row's values (the metric id).
    pub(crate) metric_index: usize,
    pub(crate) value: f64,
    pub(crate) received_unix_ms: i64,
}

/// Turns rows ordered by (time, run) into samples ordered by (time, metric,
/// run), the order queries promise, keeping only `metric_index` if given
/// and stopping after `limit` samples.
///
/// Rows of one time are buffered (normally one row; more only when two runs
/// of a host share a sample time), so the output order is exact.
#[derive(Debug)]
pub(crate) struct Unpacker {
    metric_index: Option<usize>,
    remaining: usize,
    group: Vec<StoredTick>,
}

impl Unpacker {
    pub(crate) fn new(metric_index: Option<usize>, limit: Option<usize>) -> Unpacker {
        Unpacker {
            metric_index,
            remaining: limit.unwrap_or(usize::MAX),
            group: Vec::new(),
        }
    }

    /// Whether the limit is reached (no more rows are needed).
    pub(crate) fn is_full(&self) -> bool {
        self.remaining == 0
    }

    /// Takes the next row (in (time, run) order); emits the samples of the
    /// previous time once a new time starts.
    pub(crate) fn push(&mut self, row: StoredTick, out: &mut Vec<Unpacked>) {
        if self
            .group
            .first()
            .is_some_and(|g| g.time_unix_ms != row.time_unix_ms)
        {
            self.emit(out);
        }
        self.group.push(row);
    }

    /// Emits what is still buffered; call after the last row.
    pub(crate) fn finish(mut self, out: &mut Vec<Unpacked>) {
        self.emit(out);
    }

    /// Emits what is still buffered and gives every sample as a query's
    /// row of `hostname`.
    pub(crate) fn into_rows(
        self,
        mut unpacked: Vec<Unpacked>,
        hostname: &str,
    ) -> Vec<StoredSampleRow> {
        self.finish(&mut unpacked);
        unpacked
            .into_iter()
            .filter_map(|u| {
                Some(StoredSampleRow {
                    time_unix_ms: u.time_unix_ms,
                    hostname: hostname.to_owned(),
                    metric: *Metric::ALL.get(u.metric_index)?,
                    value: u.value,
                    received_unix_ms: u.received_unix_ms,
                })
            })
            .collect()
    }

    fn emit(&mut self, out: &mut Vec<Unpacked>) {
        let metrics = match self.metric_index {
            Some(i) => i..i + 1,
            None => 0..METRICS,
        };
        'metrics: for m in metrics {
            for row in &self.group {
                if self.remaining == 0 {
                    break 'metrics;
                }
                if let Some(value) = row.values.get(m).copied().flatten() {
                    out.push(Unpacked {
                        time_unix_ms: row.time_unix_ms,
                        metric_index: m,
                        value,
                        received_unix_ms: row.time_unix_ms.saturating_add(row.receive_lag_ms),
                    });
                    self.remaining -= 1;
                }
            }
        }
        self.group.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(m: Metric) -> usize {
        m as usize
    }

    fn s(time_unix_ms: i64, metric: Metric, value: f64) -> StoredSample {
        StoredSample {
            time_unix_ms,
            metric,
            value,
        }
    }

    fn row(time_unix_ms: i64, values: &[(usize, f64)]) -> TickRow {
        let mut r = TickRow {
            time_unix_ms,
            values: [None; METRICS],
        };
        for &(i, v) in values {
            r.values[i] = Some(v);
        }
        r
    }

    fn check_group(samples: &[StoredSample], expected: &[TickRow], dropped: Dropped) {
        let mut rows = vec![row(-1, &[(0, 9.0)])]; // cleared first
        assert_eq!(group_samples(samples, index, &mut rows), Ok(dropped));
        assert_eq!(rows, expected);
    }

    #[test]
    fn a_normal_batch_is_one_row() {
        let samples: Vec<StoredSample> = Metric::ALL
            .iter()
            .map(|&m| s(1000, m, m as usize as f64))
            .collect();
        let all: Vec<(usize, f64)> = (0..METRICS).map(|i| (i, i as f64)).collect();
        check_group(&samples, &[row(1000, &all)], Dropped::default());
    }

    #[test]
    fn grouping_keeps_times_apart_and_an_identical_repeat_once() {
        use Metric::*;
        check_group(&[], &[], Dropped::default());
        check_group(
            &[
                s(2000, MemPercent, 1.0),
                s(1000, CpuPercent, 2.0),
                s(2000, CpuPercent, 3.0),
                s(2000, MemPercent, 1.0),
                s(1000, NetOutKbps, f64::NAN),
                s(1000, NetInKbps, f64::INFINITY),
            ],
            &[row(2000, &[(1, 1.0), (0, 3.0)]), row(1000, &[(0, 2.0)])],
            Dropped {
                repeats: 1,
                not_finite: 2,
            },
        );
    }

    #[test]
    fn a_batch_that_contradicts_itself_is_a_conflict() {
        use Metric::*;
        let mut rows = Vec::new();
        let got = group_samples(
            &[
                s(2000, MemPercent, 1.0),
                s(2000, CpuPercent, 3.0),
                s(2000, MemPercent, 4.0),
            ],
            index,
            &mut rows,
        );
        assert_eq!(
            got,
            Err(Conflict {
                time_unix_ms: 2000,
                metric: MemPercent,
                stored_value: 1.0,
                sent_value: 4.0,
                within_batch: true,
            })
        );
    }

    /// Drops from `new` what the `stored` ticks hold and compares the
    /// outcome.
    fn check_drop(
        new: &[(usize, f64)],
        stored: &[&[(usize, f64)]],
        expected: Result<&[(usize, f64)], Clash>,
    ) {
        let mut values = row(0, new).values;
        let stored: Vec<[Option<f64>; METRICS]> = stored.iter().map(|s| row(0, s).values).collect();
        let got = drop_stored(&mut values, &stored);
        match expected {
            Ok(left) => {
                assert_eq!(got, Ok(()));
                assert_eq!(values, row(0, left).values);
            }
            Err(clash) => assert_eq!(got, Err(clash)),
        }
    }

    #[test]
    fn stored_values_are_dropped_and_different_ones_refused() {
        check_drop(&[(0, 1.0), (1, 2.0)], &[], Ok(&[(0, 1.0), (1, 2.0)]));
        check_drop(&[(0, 1.0), (1, 2.0)], &[&[(0, 1.0)]], Ok(&[(1, 2.0)]));
        check_drop(&[(0, 1.0)], &[&[(0, 1.0), (5, 9.0)]], Ok(&[]));
        check_drop(&[(0, 0.0)], &[&[(0, -0.0)]], Ok(&[]));
        check_drop(&[(0, 1.0), (3, 4.0)], &[&[(3, 4.5)]], Err((3, 4.5, 4.0)));
        // Two runs stored two values (before conflicts were refused): one
        // of them, whichever run, is the same measurement.
        let two_runs: &[&[(usize, f64)]] = &[&[(0, 2.0)], &[(0, 1.0)]];
        check_drop(&[(0, 1.0)], two_runs, Ok(&[]));
        check_drop(&[(0, 3.0)], two_runs, Err((0, 2.0, 3.0)));
    }

    #[test]
    fn filling_keeps_stored_values() {
        let a = row(0, &[(0, 1.0), (2, 2.0)]).values;
        let b = row(0, &[(0, 5.0), (1, 6.0), (3, 7.0)]).values;
        assert_eq!(
            fill_missing(a, b),
            Filled {
                merged: row(0, &[(0, 1.0), (1, 6.0), (2, 2.0), (3, 7.0)]).values,
                added: row(0, &[(1, 6.0), (3, 7.0)]).values,
                ignored: 1,
            }
        );
        assert_eq!(
            fill_missing(a, [None; METRICS]),
            Filled {
                merged: a,
                added: [None; METRICS],
                ignored: 0
            }
        );
    }

    fn tick(time_unix_ms: i64, run_id: i64, values: &[(usize, f64)]) -> StoredTick {
        StoredTick {
            time_unix_ms,
            run_id,
            receive_lag_ms: 5,
            values: row(time_unix_ms, values).values,
        }
    }

    /// Unpacks `rows` and compares (time, metric index, value).
    fn check_unpack(
        rows: &[StoredTick],
        metric: Option<usize>,
        limit: Option<usize>,
        expected: &[(i64, usize, f64)],
    ) {
        let mut u = Unpacker::new(metric, limit);
        let mut out = Vec::new();
        for &r in rows {
            if u.is_full() {
                break;
            }
            u.push(r, &mut out);
        }
        u.finish(&mut out);
        let got: Vec<(i64, usize, f64)> = out
            .iter()
            .map(|u| (u.time_unix_ms, u.metric_index, u.value))
            .collect();
        assert_eq!(got, expected);
        assert!(out.iter().all(|u| u.received_unix_ms == u.time_unix_ms + 5));
    }

    fn check_rows(rows: &[TickRow]) {
        let blob = encode_rows(rows);
        assert_eq!(decode_rows(&blob).as_deref(), Some(rows));
    }

    #[test]
    fn rows_round_trip_through_the_journal_blob() {
        check_rows(&[]);
        check_rows(&[row(
            1000,
            &[(0, 1.5), (1, -2.0), (2, 0.0), (3, 4e9), (4, 5.0), (5, 6.0)],
        )]);
        check_rows(&[
            row(-5, &[]),
            row(i64::MAX, &[(5, f64::MIN_POSITIVE)]),
            row(7, &[(2, 3.0)]),
        ]);
        assert_eq!(
            encode_rows(&[row(1, &[(0, 1.0), (4, 2.0)])]).len(),
            8 + 1 + 16
        );
    }

    #[test]
    fn bad_journal_blobs_are_refused() {
        let good = encode_rows(&[row(1, &[(0, 1.0), (4, 2.0)])]);
        assert_eq!(
            decode_rows(&good[..good.len() - 1]),
            None,
            "truncated value"
        );
        assert_eq!(decode_rows(&good[..8]), None, "no presence byte");
        assert_eq!(decode_rows(&good[..5]), None, "truncated time");
        let mut unknown = good.clone();
        unknown[8] |= 1 << 6;
        assert_eq!(decode_rows(&unknown), None, "a seventh metric");
    }

    #[test]
    fn pending_ticks_of_one_key_combine_in_journal_order() {
        let got = combine_pending(vec![
            tick(2000, 1, &[(0, 1.0)]),
            tick(1000, 2, &[(0, 2.0)]),
            tick(2000, 1, &[(0, 3.0), (1, 4.0)]),
            tick(1000, 1, &[(5, 5.0)]),
        ]);
        assert_eq!(
            got,
            [
                tick(1000, 1, &[(5, 5.0)]),
                tick(1000, 2, &[(0, 2.0)]),
                tick(2000, 1, &[(0, 1.0), (1, 4.0)]),
            ]
        );
    }

    #[test]
    fn unpacking_orders_by_time_metric_run() {
        let rows = [
            tick(1000, 1, &[(0, 1.0), (1, 2.0)]),
            tick(2000, 1, &[(0, 3.0), (2, 4.0)]),
            tick(2000, 2, &[(0, 5.0), (1, 6.0)]),
            tick(3000, 1, &[(5, 7.0)]),
        ];
        let every = [
            (1000, 0, 1.0),
            (1000, 1, 2.0),
            (2000, 0, 3.0),
            (2000, 0, 5.0),
            (2000, 1, 6.0),
            (2000, 2, 4.0),
            (3000, 5, 7.0),
        ];
        check_unpack(&rows, None, None, &every);
        check_unpack(&rows, None, Some(4), &every[..4]);
        check_unpack(&rows, None, Some(0), &[]);
        check_unpack(
            &rows,
            Some(0),
            None,
            &[(1000, 0, 1.0), (2000, 0, 3.0), (2000, 0, 5.0)],
        );
        check_unpack(&rows, Some(4), None, &[]);
        check_unpack(&[], None, None, &[]);
    }
}
