//! A latency histogram that many tasks record into at once: log-linear
//! buckets in microseconds, 32 per power of two, so every quantile it
//! reports is at most about 3 % above the true value.
//!
//! Recording is one relaxed atomic add: it sits on the path of every
//! acknowledgement the load generator receives, so it must never lock or
//! allocate. Reading takes the counts and zeroes them, which is how a
//! measurement window starts and ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SUB_BITS: u32 = 5;
/// Buckets per power of two.
const SUB: u64 = 1 << SUB_BITS;
/// Values of 2^(MAX_EXP+1) µs (about 50 days) and more share the top bucket.
const MAX_EXP: u32 = 42;
const BUCKETS: usize = ((MAX_EXP - SUB_BITS + 2) as usize) * SUB as usize;

/// The bucket holding `us` microseconds.
fn index_of(us: u64) -> usize {
    let us = us.min((1u64 << (MAX_EXP + 1)) - 1);
    if us < SUB {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros();
    let shift = exp - SUB_BITS;
    let sub = (us >> shift) & (SUB - 1);
    (shift as usize + 1) * SUB as usize + sub as usize
}

/// The largest value bucket `index` holds, in microseconds.
fn upper_bound_us(index: usize) -> u64 {
    let block = (index as u64) / SUB;
    let sub = (index as u64) % SUB;
    if block == 0 {
        return sub;
    }
    let shift = block - 1;
    ((SUB + sub) << shift) + (1u64 << shift) - 1
}

/// Concurrent recorder of durations.
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    /// Largest value recorded since the last [`Histogram::take`], in µs.
    max_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram").finish_non_exhaustive()
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counts[index_of(us)].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The counts so far; the histogram starts again from zero.
    pub fn take(&self) -> Snapshot {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .collect();
        Snapshot {
            total: counts.iter().sum(),
            counts,
            max_us: self.max_us.swap(0, Ordering::Relaxed),
        }
    }
}

/// The counts of one measurement window.
#[derive(Clone, Debug)]
pub struct Snapshot {
    counts: Vec<u64>,
    /// Values recorded.
    pub total: u64,
    /// Largest value recorded, exact, in µs.
    pub max_us: u64,
}

impl Snapshot {
    /// The value below which a share `q` (0 to 1) of the values lie,
    /// rounded up to its bucket's upper bound; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let us = upper_bound_us(i).min(self.max_us);
                return Some(Duration::from_micros(us));
            }
        }
        Some(Duration::from_micros(self.max_us))
    }

    pub fn max(&self) -> Option<Duration> {
        (self.total > 0).then(|| Duration::from_micros(self.max_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_that_holds_it() {
        let mut previous_upper = None;
        for index in 0..BUCKETS {
            let upper = upper_bound_us(index);
            if let Some(p) = previous_upper {
                assert_eq!(index_of(p + 1), index, "first value of bucket {index}");
            }
            assert_eq!(index_of(upper), index, "upper bound of bucket {index}");
            previous_upper = Some(upper);
        }
    }

    #[test]
    fn buckets_are_within_three_percent() {
        for us in [33u64, 100, 999, 1_234, 65_537, 1_000_000, 123_456_789] {
            let upper = upper_bound_us(index_of(us));
            assert!(upper >= us);
            assert!(
                (upper - us) as f64 <= us as f64 * 0.032,
                "{us} µs rounds up to {upper} µs"
            );
        }
    }

    fn check(values_us: &[u64], q: f64, expected_us: u64) {
        let h = Histogram::default();
        for &v in values_us {
            h.record(Duration::from_micros(v));
        }
        let snap = h.take();
        assert_eq!(
            snap.quantile(q),
            Some(Duration::from_micros(expected_us)),
            "q{q} of {values_us:?}"
        );
        assert_eq!(h.take().total, 0, "take starts again from zero");
    }

    #[test]
    fn quantiles() {
        let hundred: Vec<u64> = (1..=100).collect();
        check(&hundred, 0.5, 50);
        check(&hundred, 0.99, 99);
        check(&hundred, 1.0, 100);
        check(&[10_000; 5], 0.99, 10_000);
        // 1 ms ... 1000 ms: p50 within 3 % above 500 ms.
        let wide: Vec<u64> = (1..=1000).map(|ms| ms * 1000).collect();
        check(&wide, 0.5, 507_903);
        check(&[7], 0.0, 7);
    }

    #[test]
    fn empty_has_no_quantiles() {
        let snap = Histogram::default().take();
        assert_eq!(snap.quantile(0.5), None);
        assert_eq!(snap.max(), None);
    }
}
