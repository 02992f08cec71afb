//! Which hosts have closed minutes of health values not yet rolled up
//! (`store/health_rollup.rs`, the rows in `sqlite/health.rs`), and rolling
//! them in a flush, a bounded number of minutes per flush.
//!
//! A minute is closed once the host stored a value in a later minute (its
//! newest value's minute is the open one, read raw). The rows are made from
//! the raw table, never from the batches in hand: a value stored twice is
//! one row there (`INSERT OR IGNORE`), so a minute row sums exactly what a
//! raw read would. A value arriving below a host's rolled edge has its
//! minute made again by the flush storing it (see `flush.rs`).
//!
//! Like merges, [`Rollups::write`] runs inside a flush's transaction and
//! changes nothing in memory; [`Rollups::done`] applies what it returned
//! after COMMIT. Must never leave a minute below a host's edge (in memory or
//! in the file) without its row while the minute holds raw values.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::store::health_rollup::{HEALTH_ROLLUP_MS, minute_of};
use crate::store::sqlite::health;

/// Minutes a flush rolls up, all hosts together: a steady fleet closes one
/// minute per host per minute (10,000 hosts: ~3 per flush at 50 flushes a
/// second); a file upgraded from schema 7 is rolled up this much at a time
/// (a Pi's 60 minutes at 5 s: ~5,800 raw rows read, a few ms), so no flush
/// stalls behind it.
const ROLL_MINUTES_PER_FLUSH: i64 = 60;
/// Hosts a flush looks at.
const ROLL_HOSTS_PER_FLUSH: usize = 64;

/// What the writer knows of each host's rollup.
#[derive(Debug, Default)]
pub(super) struct Rollups {
    hosts: HashMap<i64, RollState>,
    /// Hosts with closed minutes not rolled up, in the order they became
    /// due; each at most once.
    due: VecDeque<i64>,
    /// After a failed flush with rolls: none before this.
    pub(super) paused_until: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
struct RollState {
    /// Every minute before it has its row if it holds values (`None`:
    /// nothing rolled). At least the file's edge (`health::rolled_until`):
    /// minutes rolled without values leave no row.
    rolled_until: Option<i64>,
    /// The time of the newest health value stored.
    newest_unix_ms: i64,
    /// In `due`.
    queued: bool,
}

impl RollState {
    fn is_due(&self) -> bool {
        minute_of(self.newest_unix_ms) > self.rolled_until.unwrap_or(i64::MIN)
    }
}

impl Rollups {
    /// Each host's edge and newest value as the file holds them (two
    /// index lookups per host, once at open).
    pub(super) fn load(
        conn: &Connection,
        host_ids: impl Iterator<Item = i64>,
    ) -> rusqlite::Result<Rollups> {
        let mut r = Rollups::default();
        for host_id in host_ids {
            let Some(newest_unix_ms) = health::newest_time(conn, host_id)? else {
                continue;
            };
            let rolled_until = health::rolled_until(conn, host_id)?;
            r.hosts.insert(
                host_id,
                RollState {
                    rolled_until,
                    newest_unix_ms,
                    queued: false,
                },
            );
            r.queue_if_due(host_id);
        }
        Ok(r)
    }

    /// The host's rolled edge in memory (see [`RollState::rolled_until`]).
    pub(super) fn rolled_until(&self, host_id: i64) -> Option<i64> {
        self.hosts.get(&host_id).and_then(|s| s.rolled_until)
    }

    /// Whether a flush should run for rolls alone.
    pub(super) fn is_due(&self, now: Instant) -> bool {
        !self.due.is_empty() && self.paused_until.is_none_or(|p| now >= p)
    }

    /// How long the writer may wait before a flush for rolls alone.
    pub(super) fn wait(&self, now: Instant) -> Duration {
        match self.paused_until {
            _ if self.due.is_empty() => Duration::MAX,
            Some(p) => p.saturating_duration_since(now),
            None => Duration::ZERO,
        }
    }

    /// The hosts the next flush rolls.
    pub(super) fn next(&self, now: Instant) -> Vec<i64> {
        if !self.is_due(now) {
            return Vec::new();
        }
        self.due
            .iter()
            .take(ROLL_HOSTS_PER_FLUSH)
            .copied()
            .collect()
    }

    /// Notes a stored health value of `host_id` at `time_unix_ms` (after
    /// COMMIT).
    pub(super) fn note_value(&mut self, host_id: i64, time_unix_ms: i64) {
        let state = self.hosts.entry(host_id).or_insert(RollState {
            rolled_until: None,
            newest_unix_ms: time_unix_ms,
            queued: false,
        });
        state.newest_unix_ms = state.newest_unix_ms.max(time_unix_ms);
        self.queue_if_due(host_id);
    }

    fn queue_if_due(&mut self, host_id: i64) {
        if let Some(s) = self.hosts.get_mut(&host_id)
            && !s.queued
            && s.is_due()
        {
            s.queued = true;
            self.due.push_back(host_id);
        }
    }

    /// Rolls up the closed minutes of `hosts` (from [`Rollups::next`]),
    /// oldest first, within [`ROLL_MINUTES_PER_FLUSH`], in the flush's
    /// transaction: returns each host rolled with its new edge, for
    /// [`Rollups::done`]. Minutes without values are stepped over.
    pub(super) fn write(
        &self,
        tx: &Connection,
        hosts: &[i64],
    ) -> rusqlite::Result<Vec<(i64, i64)>> {
        let mut budget = ROLL_MINUTES_PER_FLUSH;
        let mut rolled = Vec::new();
        for &host_id in hosts {
            if budget <= 0 {
                break;
            }
            let Some(state) = self.hosts.get(&host_id) else {
                continue;
            };
            let target = minute_of(state.newest_unix_ms);
            let from = state.rolled_until.unwrap_or(i64::MIN);
            let start = match health::first_time_from(tx, host_id, from)? {
                Some(t) => minute_of(t).max(from),
                None => target,
            };
            let end = if start >= target {
                target
            } else {
                let end = target.min(start.saturating_add(budget * HEALTH_ROLLUP_MS));
                health::roll(tx, host_id, (start, end))?;
                budget -= (end - start) / HEALTH_ROLLUP_MS;
                end
            };
            rolled.push((host_id, end.max(from)));
        }
        Ok(rolled)
    }

    /// Applies what [`Rollups::write`] returned, after COMMIT; a host
    /// with closed minutes left goes to the back of the queue.
    pub(super) fn done(&mut self, rolled: &[(i64, i64)]) {
        if rolled.is_empty() {
            return;
        }
        let ids: HashSet<i64> = rolled.iter().map(|(h, _)| *h).collect();
        self.due.retain(|h| !ids.contains(h));
        for &(host_id, edge) in rolled {
            if let Some(s) = self.hosts.get_mut(&host_id) {
                s.rolled_until = Some(edge);
                s.queued = false;
            }
            self.queue_if_due(host_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_due_once_its_newest_value_is_in_a_later_minute() {
        let mut r = Rollups::default();
        let now = Instant::now();
        let m = HEALTH_ROLLUP_MS;
        r.note_value(1, 10 * m + 5);
        // Nothing rolled yet: its first minute is due (to find where to
        // start); rolled up to the open minute it is not.
        assert_eq!(r.next(now), [1]);
        r.done(&[(1, 10 * m)]);
        assert!(r.next(now).is_empty());
        r.note_value(1, 10 * m + 59_999);
        assert!(!r.is_due(now));
        r.note_value(2, 3 * m);
        r.note_value(1, 11 * m);
        assert_eq!(r.next(now), [2, 1]);
        // A partial roll (budget) sends the host to the back.
        r.done(&[(2, 3 * m), (1, 10 * m)]);
        assert_eq!(r.next(now), [1]);
        r.paused_until = Some(now + Duration::from_secs(1));
        assert!(r.next(now).is_empty());
        assert_eq!(r.wait(now), Duration::from_secs(1));
        assert_eq!(r.rolled_until(2), Some(3 * m));
    }
}
