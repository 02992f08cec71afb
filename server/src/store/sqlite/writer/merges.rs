//! Which hosts wait for a merge, and writing a merge: a host's journal
//! rows go into `ticks`, `hosts` and `agent_runs` once its oldest row waited
//! `merge_interval`, a few hosts per flush (within a budget of ticks), oldest
//! first, and journal rows are deleted behind them (see `journal.rs` for the
//! invariants the file keeps).
//!
//! The schedule here is pure data; [`Merges::write`] runs inside a flush's
//! transaction and changes nothing in memory: the flush applies what it
//! returns only after COMMIT. A merge must never write a host's state that
//! includes a batch that is not committed, and never delete a journal row
//! that a host has not merged past.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::store::sqlite::hosts::HostTable;
use crate::store::sqlite::journal;
use crate::store::sqlite::runs::{RunCache, RunEntry};

/// Unmerged ticks a flush merges (whole hosts, at least one) while merges
/// keep up: at 10,000 batches/s, 10,000 ticks/s are due, 200 per flush at
/// 50 flushes/s; a small steady amount keeps each flush short (merging
/// ~1,000 ticks takes a few ms).
const MERGE_TICKS_PER_FLUSH: usize = 1_000;
/// Unmerged ticks a flush merges once the oldest waiting host is a whole
/// `merge_interval` late, or memory holds too many.
const MERGE_TICKS_PER_FLUSH_BEHIND: usize = 8_000;
/// Most journal rows one flush deletes: deleting ~1 µs a row, a backlog
/// (after a burst of merges frees 30 s of journal at once) is worked off
/// over many flushes instead of stalling one for hundreds of ms.
const JOURNAL_DELETES_PER_FLUSH: i64 = 5_000;
/// Above this many unmerged ticks in memory (~100 bytes each) merges go at
/// the faster pace: 30 s at 10,000 batches/s is 300,000.
const MAX_PENDING_TICKS: usize = 600_000;

/// A host whose journal rows are not all merged.
#[derive(Debug)]
pub(super) struct Waiting {
    /// When its oldest unmerged row was committed.
    pub(super) since: Instant,
    /// Its oldest unmerged journal row.
    pub(super) first_journal_id: i64,
    /// The runs of its unmerged rows (their `agent_runs` rows are written
    /// with its merge).
    pub(super) runs: Vec<i64>,
    /// Its unmerged ticks.
    pub(super) ticks: usize,
}

/// Which hosts wait for a merge, oldest first, and how far the journal is
/// deleted.
#[derive(Debug, Default)]
pub(super) struct Merges {
    pub(super) waiting: HashMap<i64, Waiting>,
    /// Host ids of `waiting`, by `since` and so by `first_journal_id`.
    pub(super) order: VecDeque<i64>,
    /// The newest journal id written.
    pub(super) last_journal_id: i64,
    /// Journal rows up to this id are deleted.
    pub(super) deleted_through: i64,
    /// After a failed flush with merges: no merges before this.
    pub(super) paused_until: Option<Instant>,
    /// Unmerged ticks held in memory (for queries), all hosts together.
    pub(super) pending_ticks: usize,
    /// The lowest forwarding cursor: journal rows above it are not
    /// deleted, merged or not (a remote-write destination has not had
    /// them). `None`: no destination.
    pub(super) forward_hold: Option<i64>,
}

impl Merges {
    /// Notes unmerged journal rows of `host_id`, the first `journal_id`,
    /// of runs `runs`, holding `ticks` ticks.
    pub(super) fn enqueue(
        &mut self,
        host_id: i64,
        (since, journal_id): (Instant, i64),
        runs: &[i64],
        ticks: usize,
    ) {
        let w = self.waiting.entry(host_id).or_insert_with(|| {
            self.order.push_back(host_id);
            Waiting {
                since,
                first_journal_id: journal_id,
                runs: Vec::new(),
                ticks: 0,
            }
        });
        w.ticks += ticks;
        for &r in runs {
            if !w.runs.contains(&r) {
                w.runs.push(r);
            }
        }
    }

    /// Hosts from the front whose oldest row waited `interval`, as many as
    /// fit in `tick_budget` unmerged ticks (at least one).
    pub(super) fn due(&self, now: Instant, interval: Duration, tick_budget: usize) -> Vec<i64> {
        if self.paused_until.is_some_and(|t| now < t) {
            return Vec::new();
        }
        let mut ticks = 0usize;
        let mut due = Vec::new();
        for id in &self.order {
            let Some(w) = self.waiting.get(id) else { break };
            if w.since + interval > now || (!due.is_empty() && ticks + w.ticks > tick_budget) {
                break;
            }
            ticks += w.ticks;
            due.push(*id);
        }
        due
    }

    /// How many unmerged ticks the next flush merges.
    pub(super) fn budget(&self, now: Instant, interval: Duration) -> usize {
        let late = self
            .order
            .front()
            .and_then(|id| self.waiting.get(id))
            .is_some_and(|w| w.since + interval + interval.max(Duration::from_secs(1)) <= now);
        if late || self.pending_ticks > MAX_PENDING_TICKS {
            MERGE_TICKS_PER_FLUSH_BEHIND
        } else {
            MERGE_TICKS_PER_FLUSH
        }
    }

    /// The journal rows to delete once the first `merging` hosts of `order`
    /// are merged: those every host merged past and every forwarding
    /// destination passed, at most
    /// [`JOURNAL_DELETES_PER_FLUSH`] ids on from the last delete (`None`:
    /// nothing new to delete).
    pub(super) fn deletable_through(&self, merging: usize) -> Option<i64> {
        let bound = match self.order.get(merging) {
            Some(id) => self.waiting.get(id)?.first_journal_id - 1,
            None => self.last_journal_id,
        };
        let bound = bound.min(self.forward_hold.unwrap_or(i64::MAX));
        let bound = bound.min(
            self.deleted_through
                .saturating_add(JOURNAL_DELETES_PER_FLUSH),
        );
        (bound > self.deleted_through).then_some(bound)
    }

    /// How long until the oldest waiting host is due.
    pub(super) fn wait(&self, interval: Duration) -> Duration {
        let now = Instant::now();
        if let Some(t) = self.paused_until.filter(|&t| now < t) {
            return t - now;
        }
        match self.order.front().and_then(|id| self.waiting.get(id)) {
            Some(w) => (w.since + interval).saturating_duration_since(now),
            None => Duration::MAX,
        }
    }

    /// Runs that unmerged journal rows name.
    pub(super) fn referenced_runs(&self) -> HashSet<i64> {
        self.waiting
            .values()
            .flat_map(|w| w.runs.iter().copied())
            .collect()
    }
}

/// What a flush's merges wrote, to apply to memory once it committed.
#[derive(Debug, Default)]
pub(super) struct Merged {
    /// Hosts merged: (host_id, the journal id their row now includes).
    pub(super) hosts: Vec<(i64, i64)>,
    /// Journal rows deleted up to this id.
    pub(super) deleted_through: Option<i64>,
}

impl Merges {
    /// Merges the hosts `merging` (the first of `order`) inside the flush's
    /// transaction `tx`, from their state in `hosts` and `runs`, skipping
    /// ticks older than `retention_cutoff` (retention would delete them),
    /// then deletes the journal rows every host merged past.
    pub(super) fn write(
        &self,
        tx: &Connection,
        merging: &[i64],
        (hosts, runs): (&HostTable, &RunCache),
        retention_cutoff: i64,
    ) -> rusqlite::Result<Merged> {
        let mut merged = Merged::default();
        if merging.is_empty() {
            // Forwarding cursors may have moved on: delete behind them.
            if let Some(through) = self.deletable_through(0) {
                journal::delete_through(tx, through)?;
                merged.deleted_through = Some(through);
            }
            return Ok(merged);
        }
        let mut insert_tick = tx.prepare_cached(journal::INSERT_TICK)?;
        for &host_id in merging {
            // A copy: the table stays unlocked while this writes.
            let Some(host) = hosts.lock().get(&host_id).cloned() else {
                continue;
            };
            let host_runs: Vec<&RunEntry> = self
                .waiting
                .get(&host_id)
                .map(|w| w.runs.as_slice())
                .unwrap_or_default()
                .iter()
                .filter_map(|&id| runs.by_id(id))
                .collect();
            let m = journal::merge_host(
                tx,
                &mut insert_tick,
                (host_id, &host),
                &host_runs,
                retention_cutoff,
            )?;
            if m.ignored > 0 {
                log::warn!(
                    "store: {}: {} samples repeat a (metric, time) already stored for their \
                     run (journaled before conflicts were refused); kept the first",
                    host.hostname,
                    m.ignored
                );
            }
            merged.hosts.push((host_id, host.applied_journal_id));
        }
        if let Some(through) = self.deletable_through(merging.len()) {
            journal::delete_through(tx, through)?;
            merged.deleted_through = Some(through);
        }
        Ok(merged)
    }

    /// Forgets a host whose merge committed.
    pub(super) fn done(&mut self, host_id: i64) {
        self.waiting.remove(&host_id);
        if self.order.front() == Some(&host_id) {
            self.order.pop_front();
        } else {
            self.order.retain(|&id| id != host_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_merge_oldest_first_and_the_journal_goes_behind_them() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let interval = Duration::from_secs(30);
        let mut m = Merges::default();
        m.enqueue(10, (t0, 1), &[100], 600);
        m.enqueue(11, (t0 + s, 2), &[101], 500);
        // Already waiting: keeps its place, gains the run and the ticks.
        m.enqueue(10, (t0 + 2 * s, 3), &[102, 100], 100);
        m.last_journal_id = 3;
        assert_eq!(m.waiting[&10].runs, [100, 102]);
        assert_eq!(m.waiting[&10].ticks, 700);
        assert_eq!(m.referenced_runs(), HashSet::from([100, 101, 102]));

        assert_eq!(m.due(t0 + 29 * s, interval, 2000), [0i64; 0]);
        assert_eq!(m.due(t0 + 30 * s, interval, 2000), [10]);
        assert_eq!(m.due(t0 + 31 * s, interval, 2000), [10, 11]);
        assert_eq!(m.due(t0 + 31 * s, interval, 1000), [10], "budget in ticks");
        assert_eq!(m.due(t0 + 31 * s, interval, 1), [10], "at least one host");

        // Host 10 holds row 1 back, host 11 row 2; merged, all of them go.
        assert_eq!(m.deletable_through(0), None);
        assert_eq!(m.deletable_through(1), Some(1));
        assert_eq!(m.deletable_through(2), Some(3));
        m.deleted_through = 1;
        assert_eq!(m.deletable_through(1), None);
        // A forwarding destination holds rows back, merged or not.
        m.forward_hold = Some(2);
        assert_eq!(m.deletable_through(2), Some(2));
        m.forward_hold = Some(1);
        assert_eq!(m.deletable_through(2), None);
        m.forward_hold = None;
        // A backlog goes in bounded steps.
        m.last_journal_id = 3 * JOURNAL_DELETES_PER_FLUSH;
        assert_eq!(m.deletable_through(2), Some(1 + JOURNAL_DELETES_PER_FLUSH));

        assert_eq!(m.budget(t0 + 31 * s, interval), MERGE_TICKS_PER_FLUSH);
        assert_eq!(
            m.budget(t0 + 60 * s, interval),
            MERGE_TICKS_PER_FLUSH_BEHIND,
            "a whole interval late"
        );
        m.pending_ticks = MAX_PENDING_TICKS + 1;
        assert_eq!(m.budget(t0, interval), MERGE_TICKS_PER_FLUSH_BEHIND);

        m.paused_until = Some(t0 + 40 * s);
        assert_eq!(m.due(t0 + 39 * s, interval, 2000), [0i64; 0], "paused");
        assert_eq!(m.due(t0 + 40 * s, interval, 2000), [10, 11]);
    }
}
