//! Two small rate rules the server applies to its peers: a token bucket
//! (how many batches a host may send) and a log throttle (at most one line
//! of a kind per interval, with how many were left out).
//!
//! Both are pure: no clock of their own, no I/O. Callers pass the time
//! (`Instant`), so tests drive them with made-up instants. They must never
//! allocate per call or grow: one of each lives beside every host, and a
//! flooding peer calls them thousands of times a second.

use std::time::{Duration, Instant};

/// How fast a bucket refills and how much it holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Tokens added per second, sustained.
    pub per_second: f64,
    /// Tokens a full bucket holds: the burst taken at once.
    pub burst: f64,
}

impl Rate {
    /// Reads `RATE,BURST` (e.g. `50,600`); `None` unless both are positive
    /// numbers.
    pub fn parse(text: &str) -> Option<Rate> {
        let (rate, burst) = text.split_once(',')?;
        let per_second: f64 = rate.trim().parse().ok()?;
        let burst: f64 = burst.trim().parse().ok()?;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        (positive(per_second) && positive(burst)).then_some(Rate { per_second, burst })
    }
}

/// A token bucket: full at first, one token per thing let through,
/// refilled at the rate's pace up to its burst.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenBucket {
    /// Tokens left after the last refill; meaningless while `last` is None.
    tokens: f64,
    /// When it was last refilled; `None`: never used, full.
    last: Option<Instant>,
}

impl TokenBucket {
    /// Takes one token at `now` if there is one; false when the bucket is
    /// empty (the caller refuses, and nothing is taken).
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.take_n(rate, 1.0, now)
    }

    /// Takes `cost` tokens at `now` if there are that many; false, taking
    /// nothing, when there are not. A cost above the burst is charged as
    /// the burst, so nothing waits for a bucket that can never hold it.
    pub fn take_n(&mut self, rate: Rate, cost: f64, now: Instant) -> bool {
        let cost = cost.clamp(0.0, rate.burst);
        let tokens = match self.last {
            None => rate.burst,
            Some(last) => {
                let elapsed = now.saturating_duration_since(last).as_secs_f64();
                (self.tokens + elapsed * rate.per_second).min(rate.burst)
            }
        };
        self.last = Some(now);
        if tokens >= cost {
            self.tokens = tokens - cost;
            true
        } else {
            self.tokens = tokens;
            false
        }
    }
}

/// Lets one log line of a kind through per interval and counts the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogThrottle {
    /// When the last line went out.
    last: Option<Instant>,
    /// Events since then (the one that printed included).
    since_last: u64,
}

impl LogThrottle {
    /// One line a minute: what every "limit reached" line uses.
    pub const EVERY: Duration = Duration::from_secs(60);

    /// Counts an event at `now`; `Some(n)` when a line is due, with the
    /// events it stands for (this one and the `n - 1` left out since the
    /// last line).
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.since_last = self.since_last.saturating_add(1);
        let due = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= Self::EVERY);
        if !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since_last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        per_second: 50.0,
        burst: 600.0,
    };

    /// How many of `n` takes at `at` succeed.
    fn takes(bucket: &mut TokenBucket, rate: Rate, at: Instant, n: usize) -> usize {
        (0..n).filter(|_| bucket.take(rate, at)).count()
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::default();
        assert_eq!(takes(&mut b, RATE, t0, 1000), 600);
        // 100 ms later: 5 more.
        assert_eq!(takes(&mut b, RATE, t0 + Duration::from_millis(100), 100), 5);
        // Ten seconds idle refill it to the burst, never past it.
        assert_eq!(takes(&mut b, RATE, t0 + Duration::from_secs(60), 1000), 600);
    }

    #[test]
    fn a_steady_sender_below_the_rate_is_never_refused() {
        // A real agent at its fastest interval (100 ms) after a burst of
        // catching up that emptied the bucket.
        let t0 = Instant::now();
        let mut b = TokenBucket::default();
        takes(&mut b, RATE, t0, 600);
        for i in 1..=1000u64 {
            assert!(
                b.take(RATE, t0 + Duration::from_millis(100 * i)),
                "tick {i}"
            );
        }
    }

    #[test]
    fn a_flood_gets_the_rate_and_no_more() {
        // 3,000 batches a second for ten seconds: 600 + 50 × 10 get through.
        let t0 = Instant::now();
        let mut b = TokenBucket::default();
        let mut allowed = 0;
        for ms in 0..10_000u64 {
            allowed += takes(&mut b, RATE, t0 + Duration::from_millis(ms), 3);
        }
        assert!((1099..=1101).contains(&allowed), "allowed {allowed}");
    }

    #[test]
    fn a_costly_take_needs_all_its_tokens_and_takes_none_when_refused() {
        let t0 = Instant::now();
        let mut b = TokenBucket::default();
        // 600 tokens: nine takes of 64, then 24 left, not enough for 64.
        let nine = (0..20).filter(|_| b.take_n(RATE, 64.0, t0)).count();
        assert_eq!(nine, 9);
        // The refusal took nothing: the 24 left still serve 24 takes of one.
        assert_eq!(takes(&mut b, RATE, t0, 100), 24);
        // A cost above the burst is charged as the burst, once it is full.
        assert!(b.take_n(RATE, 1e9, t0 + Duration::from_secs(60)));
        assert!(!b.take(RATE, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::default();
        takes(&mut b, RATE, t0, 600);
        assert!(!b.take(RATE, t0 - Duration::from_secs(5)));
    }

    #[test]
    fn rates_parse_from_the_test_knob() {
        assert_eq!(
            Rate::parse("3,5"),
            Some(Rate {
                per_second: 3.0,
                burst: 5.0
            })
        );
        assert_eq!(Rate::parse(" 0.5 , 2 ").map(|r| r.per_second), Some(0.5));
        for bad in ["", "3", "3,", "0,5", "3,-1", "x,5", "inf,5", "3,5,6"] {
            assert_eq!(Rate::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn one_line_a_minute_with_the_count() {
        let t0 = Instant::now();
        let mut t = LogThrottle::default();
        assert_eq!(t.hit(t0), Some(1));
        for s in 1..60 {
            assert_eq!(t.hit(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(t.hit(t0 + Duration::from_secs(60)), Some(60));
        assert_eq!(t.hit(t0 + Duration::from_secs(61)), None);
    }
}
