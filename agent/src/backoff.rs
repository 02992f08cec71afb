//! Reconnect delays in the shape of gRPC's connection backoff: 1 s at first,
//! ×1.6 after every failure, ±20 % jitter, capped at 120 s. Reset after a
//! healthy session so a brief blip is retried quickly.
//!
//! Randomness is passed in, so the sequence is testable.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub multiplier: f64,
    /// Fraction of the delay added or removed at random.
    pub jitter: f64,
    pub max: Duration,
    /// The un-jittered delay the next failure waits.
    current: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_secs(1), 1.6, 0.2, Duration::from_secs(120))
    }
}

impl Backoff {
    pub fn new(initial: Duration, multiplier: f64, jitter: f64, max: Duration) -> Backoff {
        Backoff {
            initial,
            multiplier,
            jitter,
            max,
            current: initial,
        }
    }

    /// The delay before the next attempt. `unit_random` is uniform in [0, 1).
    pub fn next_delay(&mut self, unit_random: f64) -> Duration {
        let base = self.current.as_secs_f64();
        let factor = 1.0 + self.jitter * (2.0 * unit_random.clamp(0.0, 1.0) - 1.0);
        let next = (base * self.multiplier).min(self.max.as_secs_f64());
        self.current = Duration::from_secs_f64(next);
        Duration::from_secs_f64((base * factor).min(self.max.as_secs_f64() * (1.0 + self.jitter)))
    }

    /// After a healthy session: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// A uniform value in [0, 1) from the process's random source.
pub fn unit_random() -> f64 {
    (monitor::random::random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_1_6_and_caps() {
        let mut b = Backoff::default();
        let delays: Vec<f64> = (0..14).map(|_| b.next_delay(0.5).as_secs_f64()).collect();
        assert!((delays[0] - 1.0).abs() < 1e-9);
        assert!((delays[1] - 1.6).abs() < 1e-9);
        assert!((delays[2] - 2.56).abs() < 1e-9);
        assert!((delays[13] - 120.0).abs() < 1e-9, "{delays:?}");
    }

    #[test]
    fn jitter_stays_within_20_percent() {
        let mut lo = Backoff::default();
        let mut hi = Backoff::default();
        for _ in 0..20 {
            let a = lo.next_delay(0.0).as_secs_f64();
            let b = hi.next_delay(0.999_999).as_secs_f64();
            assert!(b / a > 1.49 && b / a < 1.51, "{a} {b}");
            assert!(b <= 144.0);
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_delay(0.5);
        }
        b.reset();
        assert_eq!(b.next_delay(0.5), Duration::from_secs(1));
    }

    #[test]
    fn unit_random_is_in_range() {
        for _ in 0..1000 {
            let r = unit_random();
            assert!((0.0..1.0).contains(&r));
        }
    }
}
