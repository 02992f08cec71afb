//! The sampler's clock: a `timerfd` on `CLOCK_MONOTONIC` that the kernel
//! fires on the fixed schedule (first tick, then every interval), awaited
//! through tokio's reactor like any other descriptor.
//!
//! Why not tokio's timer: its wheel files a deadline more than 64 ms away
//! in a coarser level and wakes the runtime once more, at the start of that
//! level's slot, only to move the deadline down a level. With a tick every
//! 0.1 s or 1 s that is one extra `epoll_wait` return and scheduler turn per
//! tick, a third of the agent's wake-ups (strace of the release agent at
//! 0.1 s: the waits returning 0 at 64 ms boundaries between ticks). The
//! kernel's timer wakes the thread once, at the tick; reading the count
//! costs one `read` instead.
//!
//! Must never block the thread (the descriptor is non-blocking) nor burst
//! missed ticks: a late wake-up reads how many expirations passed and is one
//! tick, and the schedule keeps its phase.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::time::{ClockId as Clock, clock_gettime};
use tokio::io::unix::AsyncFd;

/// The timer descriptor, in the form tokio's `AsyncFd` registers.
struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct Ticker {
    fd: AsyncFd<Fd>,
}

impl std::fmt::Debug for Ticker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticker").finish_non_exhaustive()
    }
}

/// The monotonic clock's reading (the timeline ticks are planned on).
pub fn now() -> Duration {
    // CLOCK_MONOTONIC cannot fail on Linux (EINVAL is for unknown clocks);
    // zero would only make the next tick due at once.
    clock_gettime(Clock::CLOCK_MONOTONIC)
        .map(Duration::from)
        .unwrap_or_default()
}

impl Ticker {
    /// A disarmed timer registered with the current runtime's reactor.
    pub fn new() -> io::Result<Ticker> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        // `AsyncFd::new` is deprecated because a type's `as_raw_fd` might
        // change or close its descriptor while registered; the safe
        // replacement, `register`, is `unsafe` (which the workspace
        // forbids) only to make the caller promise it does not. `Fd` owns
        // its `TimerFd` (an `OwnedFd`) and returns that one descriptor until
        // it is dropped, which is that promise kept.
        #[allow(deprecated)]
        let fd = AsyncFd::new(Fd(timer))?;
        Ok(Ticker { fd })
    }

    /// The next tick at `first` (on the [`now`] timeline; a time already
    /// past fires at once), then one every `every`. Replaces any schedule,
    /// and forgets expirations not yet awaited.
    pub fn schedule(&self, first: Duration, every: Duration) -> io::Result<()> {
        // A zero `it_value` would disarm the timer: one nanosecond is as
        // good as "at once".
        let first = first.max(Duration::from_nanos(1));
        let every = every.max(Duration::from_millis(1));
        self.fd
            .get_ref()
            .0
            .set(
                Expiration::IntervalDelayed(TimeSpec::from(first), TimeSpec::from(every)),
                TimerSetTimeFlags::TFD_TIMER_ABSTIME,
            )
            .map_err(io::Error::from)
    }

    /// Waits for the next tick (at once if one is due already).
    pub async fn tick(&self) -> io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            // A read that finds nothing (the schedule was replaced after the
            // readiness was seen) clears the readiness: wait again.
            match ready.try_io(|fd| fd.get_ref().0.wait().map_err(io::Error::from)) {
                Ok(result) => {
                    // The read took every expiration: the descriptor is not
                    // readable until the next one, whose wake-up sets the
                    // readiness again. Clearing it now spares the next wait
                    // a read that would only find nothing.
                    ready.clear_ready();
                    return result;
                }
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn ticks_follow_the_schedule_without_bursting_after_a_stall() {
        runtime().block_on(async {
            let ticker = Ticker::new().unwrap();
            let every = Duration::from_millis(20);
            let start = now();
            ticker.schedule(start + every, every).unwrap();
            for n in 1..=3u32 {
                ticker.tick().await.unwrap();
                // Never early: the n-th tick is at least n intervals in.
                assert!(now() >= start + every * n, "tick {n} came early");
            }
            // Stall past five ticks: they count as one, and the schedule
            // goes on at the interval. Waiting ticks until 100 ms have
            // passed then takes at most 7 (the one for the stall, five on
            // the grid, one more that the last check of the clock let in);
            // a burst (one tick per missed expiration) would add 4 or 5.
            std::thread::sleep(every * 5);
            let after_stall = now();
            let mut ticks = 0;
            while now() < after_stall + Duration::from_millis(100) {
                ticker.tick().await.unwrap();
                ticks += 1;
            }
            assert!(
                ticks <= 7,
                "{ticks} ticks in 100 ms at 20 ms: missed ticks burst"
            );
        });
    }

    #[test]
    fn a_new_schedule_replaces_an_expiration_not_yet_awaited() {
        runtime().block_on(async {
            let ticker = Ticker::new().unwrap();
            let start = now();
            ticker.schedule(start, Duration::from_millis(10)).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            // Due several times over, then rescheduled 200 ms out: the
            // next tick waits for the new time.
            let later = now() + Duration::from_millis(200);
            ticker.schedule(later, Duration::from_secs(1)).unwrap();
            ticker.tick().await.unwrap();
            assert!(
                now() >= later,
                "an old expiration fired after the reschedule"
            );
        });
    }

    #[test]
    fn a_time_already_past_fires_at_once() {
        runtime().block_on(async {
            let ticker = Ticker::new().unwrap();
            ticker
                .schedule(Duration::ZERO, Duration::from_secs(3600))
                .unwrap();
            tokio::time::timeout(Duration::from_secs(10), ticker.tick())
                .await
                .expect("a past first tick did not fire")
                .unwrap();
        });
    }
}
