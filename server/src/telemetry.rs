//! The server's own health counters: what ingest, the store's writer, the
//! command router and enrolment count as they work, for `/metrics` (see
//! `http/metrics.rs`) and `monitorctl status`.
//!
//! Plain atomics, no metrics library: counting is one relaxed `fetch_add`
//! on the hot path, and reading copies them without any lock. (The
//! `prometheus-client` crate was considered: it encodes OpenMetrics only,
//! while `promtool check metrics` and Prometheus' default expect the
//! 0.0.4 text format, and its registry adds nothing these few fixed
//! counters need; `http/exposition.rs` writes both formats.)
//!
//! Nothing here may block, allocate per event or grow: every counter is a
//! fixed slot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use monitor::command::Outcome;

use crate::store::{FlushObserver, FlushStats};

/// Why a batch (or a stream) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The batch broke a rule of the wire contract.
    Invalid,
    /// It contradicts stored samples.
    Conflict,
    /// No (valid) client certificate.
    Unauthenticated,
    /// A certificate for one host, a batch naming another.
    WrongHost,
    /// The store could not commit it (not acknowledged; the agent re-sends).
    Unavailable,
    /// Its host is over its ingest budget (ACK_CODE_RATE_LIMITED; the
    /// agent sends it again later, so one batch may count more than once).
    RateLimited,
    /// Its seq jumped further than any real agent's could
    /// (ACK_CODE_SEQUENCE_OUT_OF_RANGE).
    SequenceOutOfRange,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Refusal::Invalid,
        Refusal::Conflict,
        Refusal::Unauthenticated,
        Refusal::WrongHost,
        Refusal::Unavailable,
        Refusal::RateLimited,
        Refusal::SequenceOutOfRange,
    ];

    /// The `reason` label.
    pub const fn name(self) -> &'static str {
        match self {
            Refusal::Invalid => "invalid",
            Refusal::Conflict => "conflict",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::WrongHost => "wrong_host",
            Refusal::Unavailable => "unavailable",
            Refusal::RateLimited => "rate_limited",
            Refusal::SequenceOutOfRange => "sequence_out_of_range",
        }
    }
}

/// What an enrolment or renewal came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enrolled {
    Enrolled,
    Renewed,
    Refused,
}

impl Enrolled {
    pub const ALL: [Enrolled; 3] = [Enrolled::Enrolled, Enrolled::Renewed, Enrolled::Refused];

    /// The `result` label.
    pub const fn name(self) -> &'static str {
        match self {
            Enrolled::Enrolled => "enrolled",
            Enrolled::Renewed => "renewed",
            Enrolled::Refused => "refused",
        }
    }
}

/// Upper bounds of the commit-time histogram, seconds: an fsync on an SSD
/// takes ~1 ms, on an SD card tens of ms; a stalled disk shows in the top.
pub const COMMIT_BUCKETS_SECONDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A histogram of durations with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket of [`COMMIT_BUCKETS_SECONDS`] (not cumulative).
    buckets: [AtomicU64; COMMIT_BUCKETS_SECONDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// A histogram's state as `/metrics` writes it.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, observations at most that), cumulative.
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = COMMIT_BUCKETS_SECONDS.iter().position(|&b| s <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        // Buckets first, then the count, which is at least their sum
        // (observations racing this read only add): `+Inf` (= count) is
        // never below a bucket, as the formats require.
        let mut cumulative = 0;
        let buckets = COMMIT_BUCKETS_SECONDS
            .iter()
            .zip(&self.buckets)
            .map(|(&b, n)| {
                cumulative += n.load(Ordering::Relaxed);
                (b, cumulative)
            })
            .collect();
        let count = self.count.load(Ordering::Relaxed).max(cumulative);
        HistogramSnapshot {
            buckets,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count,
        }
    }
}

/// Every counter of the server's own health.
#[derive(Debug)]
pub struct Telemetry {
    /// When this process started serving, ms since the Unix epoch.
    pub started_unix_ms: i64,
    pub batches_stored: AtomicU64,
    pub samples_stored: AtomicU64,
    /// The store's latest flush failed (disk full, I/O error): health
    /// reports NOT_SERVING until one succeeds.
    pub store_failing: AtomicBool,
    /// How long the store's commits take.
    pub commit: Histogram,
    refusals: [AtomicU64; Refusal::ALL.len()],
    commands: [AtomicU64; Outcome::ALL.len()],
    enrolments: [AtomicU64; Enrolled::ALL.len()],
}

impl Telemetry {
    pub fn new(started_unix_ms: i64) -> Telemetry {
        Telemetry {
            started_unix_ms,
            batches_stored: AtomicU64::new(0),
            samples_stored: AtomicU64::new(0),
            store_failing: AtomicBool::new(false),
            commit: Histogram::default(),
            refusals: Default::default(),
            commands: Default::default(),
            enrolments: Default::default(),
        }
    }

    /// Counts a committed flush (called on the store's writer thread).
    pub fn flushed(&self, f: &FlushStats) {
        self.store_failing.store(f.failed, Ordering::Relaxed);
        if f.failed {
            return;
        }
        self.commit.observe(f.commit);
        self.batches_stored
            .fetch_add(f.batches_stored as u64, Ordering::Relaxed);
        self.samples_stored
            .fetch_add(f.samples_stored as u64, Ordering::Relaxed);
    }

    /// The store's hook into [`Telemetry::flushed`]; `stored` is bumped
    /// after each flush that stored batches (remote-write waits on it).
    pub fn flush_observer(
        self: &std::sync::Arc<Self>,
        stored: tokio::sync::watch::Sender<u64>,
    ) -> FlushObserver {
        let me = std::sync::Arc::clone(self);
        FlushObserver(std::sync::Arc::new(move |f: &FlushStats| {
            me.flushed(f);
            if f.batches_stored > 0 {
                stored.send_modify(|n| *n = n.wrapping_add(1));
            }
        }))
    }

    pub fn refused(&self, why: Refusal) {
        let i = Refusal::ALL.iter().position(|&r| r == why).unwrap_or(0);
        self.refusals[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn command_finished(&self, outcome: Outcome) {
        let i = Outcome::ALL.iter().position(|&o| o == outcome).unwrap_or(0);
        self.commands[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn enrolment(&self, result: Enrolled) {
        let i = Enrolled::ALL.iter().position(|&e| e == result).unwrap_or(0);
        self.enrolments[i].fetch_add(1, Ordering::Relaxed);
    }

    /// (reason, count) for every reason.
    pub fn refusals(&self) -> impl Iterator<Item = (Refusal, u64)> + '_ {
        Refusal::ALL
            .into_iter()
            .zip(&self.refusals)
            .map(|(r, n)| (r, n.load(Ordering::Relaxed)))
    }

    /// (outcome, count) for every outcome.
    pub fn commands(&self) -> impl Iterator<Item = (Outcome, u64)> + '_ {
        Outcome::ALL
            .into_iter()
            .zip(&self.commands)
            .map(|(o, n)| (o, n.load(Ordering::Relaxed)))
    }

    /// (result, count) for every result.
    pub fn enrolments(&self) -> impl Iterator<Item = (Enrolled, u64)> + '_ {
        Enrolled::ALL
            .into_iter()
            .zip(&self.enrolments)
            .map(|(e, n)| (e, n.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0005, 1));
        assert_eq!(s.buckets[3], (0.005, 2));
        assert_eq!(s.buckets.last(), Some(&(2.5, 2)));
        assert!((s.sum_seconds - 10.0033).abs() < 1e-9);
    }

    #[test]
    fn counters_by_label() {
        let t = Telemetry::new(0);
        t.refused(Refusal::Conflict);
        t.refused(Refusal::Conflict);
        t.command_finished(Outcome::TimedOut);
        t.enrolment(Enrolled::Renewed);
        let refusals: Vec<_> = t.refusals().collect();
        assert_eq!(refusals[1], (Refusal::Conflict, 2));
        assert_eq!(refusals[0], (Refusal::Invalid, 0));
        assert!(t.commands().any(|c| c == (Outcome::TimedOut, 1)));
        assert!(t.enrolments().any(|e| e == (Enrolled::Renewed, 1)));
    }
}
