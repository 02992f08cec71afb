//! Which hosts had samples stored that are older than what the fleet's
//! sparklines have already read ("late" samples: an agent's buffer sent
//! after an outage, or an agent whose clock is behind the server's). The
//! dashboard (`http/api.rs`) reads each new stretch of the fleet's samples
//! once, then re-reads only the hosts noted here, instead of the whole
//! fleet's 15 minutes again.
//!
//! The protocol: the reader raises the watermark to the end of the range
//! it is about to read *before* it reads ([`LateSamples::advance`]), and a
//! batch is noted *after* it is visible to readers ([`LateSamples::note`]
//! from ingest once its ticket says stored). So a sample the read cannot
//! have seen is either older than the previous watermark (noted before
//! the advance, handed to this read) or older than the new one (noted
//! after it, handed to the next read).
//!
//! Bounded: past [`MAX_LATE_HOSTS`] hosts it keeps only that there were
//! too many and the oldest late sample's time (the reader then reads every
//! host from there, e.g. when a busy server stored the whole fleet's
//! batches late). It must never make
//! ingest wait: one atomic load per stored batch, a short lock only for a
//! late one. It only knows the batches this server stored: servers
//! sharing a store (PostgreSQL) do not see each other's.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};

/// The most hosts noted between two reads; past it, only "too many".
pub const MAX_LATE_HOSTS: usize = 256;

/// The hosts noted since the last [`LateSamples::advance`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LateHosts {
    pub hosts: BTreeSet<String>,
    /// More than [`MAX_LATE_HOSTS`] were noted: which is not known.
    pub overflowed: bool,
    /// The oldest late sample noted, ms since the Unix epoch.
    pub oldest_unix_ms: Option<i64>,
}

/// See the module doc.
#[derive(Debug)]
pub struct LateSamples {
    /// Samples older than this (ms since the Unix epoch) are late.
    /// `i64::MIN` until a reader sets it: nothing is noted while no page
    /// reads.
    watermark_unix_ms: AtomicI64,
    noted: Mutex<LateHosts>,
}

impl Default for LateSamples {
    fn default() -> LateSamples {
        LateSamples {
            watermark_unix_ms: AtomicI64::new(i64::MIN),
            noted: Mutex::new(LateHosts::default()),
        }
    }
}

impl LateSamples {
    /// A batch of `hostname` whose oldest sample is at `oldest_unix_ms`
    /// is visible to readers now.
    pub fn note(&self, hostname: &str, oldest_unix_ms: i64) {
        if oldest_unix_ms >= self.watermark_unix_ms.load(Ordering::SeqCst) {
            return;
        }
        let mut noted = self.noted.lock().unwrap_or_else(PoisonError::into_inner);
        noted.oldest_unix_ms = Some(
            noted
                .oldest_unix_ms
                .map_or(oldest_unix_ms, |o| o.min(oldest_unix_ms)),
        );
        if noted.overflowed || noted.hosts.contains(hostname) {
            return;
        }
        if noted.hosts.len() >= MAX_LATE_HOSTS {
            noted.hosts.clear();
            noted.overflowed = true;
        } else {
            noted.hosts.insert(hostname.to_owned());
        }
    }

    /// Samples older than `watermark_unix_ms` stored from now on are late;
    /// returns the hosts noted since the last call. Call it before
    /// reading the range that ends at `watermark_unix_ms`.
    pub fn advance(&self, watermark_unix_ms: i64) -> LateHosts {
        self.watermark_unix_ms
            .store(watermark_unix_ms, Ordering::SeqCst);
        std::mem::take(&mut *self.noted.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_samples_older_than_the_watermark_are_noted() {
        let late = LateSamples::default();
        // No reader yet: nothing is late.
        late.note("a", 0);
        assert_eq!(late.advance(1_000), LateHosts::default());
        late.note("a", 1_000);
        late.note("b", 999);
        late.note("b", 5);
        let taken = late.advance(2_000);
        assert_eq!(taken.hosts.iter().collect::<Vec<_>>(), ["b"]);
        assert!(!taken.overflowed);
        assert_eq!(taken.oldest_unix_ms, Some(5));
        // Taken once.
        assert_eq!(late.advance(2_000), LateHosts::default());
    }

    #[test]
    fn too_many_late_hosts_are_kept_as_too_many() {
        let late = LateSamples::default();
        late.advance(1_000);
        for i in 0..=MAX_LATE_HOSTS {
            late.note(&format!("h{i}"), 900 - i as i64);
        }
        late.note("h0", 700);
        let taken = late.advance(1_000);
        assert!(taken.overflowed && taken.hosts.is_empty());
        // Where the reader must read every host from.
        assert_eq!(taken.oldest_unix_ms, Some(900 - MAX_LATE_HOSTS as i64));
        late.note("h0", 0);
        assert_eq!(late.advance(1_000).hosts.len(), 1);
    }
}
