//! When the batches waiting in the buffer go out: the flush interval
//! (`--flush-interval`, Telegraf's `flush_interval`).
//!
//! Each tick still makes its own batch (its own seq, acknowledged, spooled
//! and replayed exactly as before); what the flush interval changes is only
//! how many of them the Report stream hands to the connection at once. At a
//! short interval the ticks of one flush interval go out together: tonic
//! encodes every message that is ready into one buffer, so they leave in one
//! HTTP/2 DATA frame, one TLS record and one `writev`, and the agent's send
//! path (and, on loopback, the server's receive path that the kernel runs
//! in the sender's context) is paid once per flush instead of once per tick.
//! At 1 s and longer intervals, with the default, every tick is sent at once.
//!
//! Must never hold a batch longer than the flush interval (the first of a
//! group waits `ticks_per_write - 1` intervals), nor more batches than half
//! the send window or half the buffer: a write must fit in the window, and
//! a buffer that drops its oldest batch must never drop one that was only
//! waiting for its write.

use std::time::Duration;

/// The flush interval when none is given: at intervals under a second,
/// a second's ticks go out together; at a second and above, each tick.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// The longest flush interval accepted: a sample the dashboard shows a
/// minute late is as stale as a monitor may let it get.
pub const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(60);
/// Most batches one write carries: half the Report stream's send window
/// (`outbox::SEND_WINDOW`, which checks this at compile time), so that a
/// whole write is always in flight at once, and the server (which holds its
/// cumulative acknowledgements for at most half the window) can answer it.
pub const MAX_TICKS_PER_WRITE: usize = 32;

/// How many ticks' batches go out together: as many as fit in `flush` at
/// `interval`, at least one, at most [`MAX_TICKS_PER_WRITE`] and half of a
/// buffer of `buffer_batches`.
pub fn ticks_per_write(flush: Duration, interval: Duration, buffer_batches: usize) -> usize {
    let fit = flush.as_nanos() / interval.as_nanos().max(1);
    let fit = usize::try_from(fit).unwrap_or(usize::MAX);
    fit.min(MAX_TICKS_PER_WRITE).min(buffer_batches / 2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(flush_ms: u64, interval_ms: u64, buffer_batches: usize, expected: usize) {
        assert_eq!(
            ticks_per_write(
                Duration::from_millis(flush_ms),
                Duration::from_millis(interval_ms),
                buffer_batches
            ),
            expected,
            "flush {flush_ms} ms, interval {interval_ms} ms, buffer {buffer_batches}"
        );
    }

    #[test]
    fn a_flush_interval_holds_the_ticks_that_fit_in_it() {
        // The default at 0.1 s: ten ticks per write, the first held 0.9 s.
        check(1000, 100, 8192, 10);
        // At 1 s and above, each tick at once.
        check(1000, 1000, 8192, 1);
        check(1000, 5000, 8192, 1);
        // A part of an interval does not fit: never held past the flush.
        check(1000, 300, 8192, 3);
        check(999, 100, 8192, 9);
        // Zero: each tick at once, as before flush intervals existed.
        check(0, 100, 8192, 1);
    }

    #[test]
    fn a_write_fits_in_half_the_window_and_half_the_buffer() {
        check(60_000, 100, 8192, MAX_TICKS_PER_WRITE);
        check(1000, 100, 8, 4);
        check(1000, 100, 1, 1);
    }
}
