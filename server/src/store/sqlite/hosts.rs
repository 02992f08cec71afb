//! Every host the store knows, in memory: what `Store::hosts` and
//! `Store::host` return, what the writer merges into the `hosts` table, and
//! the host's ticks that are still in the journal, which sample queries add
//! to what `ticks` holds.
//!
//! The store is the one owner of a host's facts (agent id and version,
//! first and last seen, batch counters, latest values); the server's
//! registry only knows which hosts are connected right now.
//!
//! Why in memory: a host's row is written only when its journal rows are
//! merged (see `journal.rs`), so the table lags behind; and reading the
//! latest value of six metrics for 10,000 hosts from the file took 0.5 s
//! on an empty database and 2 s on a filled one. Here `hosts()` is a copy
//! of a few MiB at most.
//!
//! The writer is the only one that changes the table, and only with what a
//! committed transaction stored (or what the file holds at open): the table
//! must never show a batch that is not durable. Readers only copy it. The
//! lock is held for one flush's updates or one copy, never across I/O other
//! than the writer's fold.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use monitor::metric::Metric;

use crate::store::latest_health::LatestHealthTable;
use crate::store::records::{HostRecord, IncomingBatch, LatestValue, StoredHealth};
use crate::store::ticks::{METRICS, PendingTick, StoredTick, TickRow};

/// The newest stored value of one metric of a host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Latest {
    /// Sample time, ms since the Unix epoch.
    pub(crate) time_unix_ms: i64,
    /// Breaks ties between runs that share a sample time (the higher wins,
    /// as the newest row of the host's range).
    pub(crate) run_id: i64,
    pub(crate) value: f64,
}

/// One host as the store knows it: the truth for the host's facts, each
/// as of the latest stored batch (the server's `registry::Live` only says
/// who is connected).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HostEntry {
    pub(crate) hostname: String,
    pub(crate) agent_id: String,
    pub(crate) agent_version: String,
    pub(crate) peer: String,
    /// Server time of the first stored batch, ms since the Unix epoch.
    pub(crate) first_seen_unix_ms: i64,
    /// Server time of the latest stored batch, ms since the Unix epoch.
    pub(crate) last_seen_unix_ms: i64,
    pub(crate) clock_offset_ms: i64,
    pub(crate) dropped_batches_total: u64,
    pub(crate) batches_stored_total: u64,
    /// Batches since the store opened that were told apart from duplicates
    /// by their samples (see `dedup.rs`); memory only.
    pub(crate) batches_checked_by_value_total: u64,
    /// Indexed by metric id.
    pub(crate) latest: [Option<Latest>; METRICS],
    /// The newest health value per (metric, device), bounded.
    pub(crate) health: LatestHealthTable,
    /// The host's ticks still in the journal, in journal order.
    pub(crate) pending: Vec<PendingTick>,
    /// The newest journal row the `hosts` row includes (see `journal.rs`).
    pub(crate) merged_journal_id: i64,
    /// The newest journal row this entry includes.
    pub(crate) applied_journal_id: i64,
}

impl HostEntry {
    /// A host first seen with `batch`, before the batch is counted.
    pub(crate) fn first_seen(batch: &IncomingBatch) -> HostEntry {
        HostEntry {
            hostname: batch.hostname.clone(),
            agent_id: batch.agent_id.clone(),
            agent_version: batch.agent_version.clone(),
            peer: batch.peer.clone(),
            first_seen_unix_ms: batch.received_unix_ms,
            last_seen_unix_ms: batch.received_unix_ms,
            clock_offset_ms: batch.clock_offset_ms,
            dropped_batches_total: batch.dropped_batches_total,
            batches_stored_total: 0,
            batches_checked_by_value_total: 0,
            latest: [None; METRICS],
            health: LatestHealthTable::default(),
            pending: Vec::new(),
            merged_journal_id: 0,
            applied_journal_id: 0,
        }
    }

    /// The host's ticks still in the journal with a sample time in
    /// [since, until), in journal order.
    fn pending_in(&self, since_unix_ms: i64, until_unix_ms: i64) -> Vec<StoredTick> {
        self.pending
            .iter()
            .filter(|p| (since_unix_ms..until_unix_ms).contains(&p.row.time_unix_ms))
            .map(PendingTick::stored)
            .collect()
    }

    /// Takes a stored batch's health values as latest where they are newer.
    pub(crate) fn note_health(&mut self, values: &[StoredHealth]) {
        for v in values {
            self.health
                .note(v.metric, &v.device, v.time_unix_ms, v.value);
        }
    }

    /// Counts one more stored batch whose metadata is `seen`: the host now
    /// shows the latest stored batch's agent, version, peer and counters.
    pub(crate) fn count_batch(&mut self, seen: BatchMeta<'_>) {
        set_if_changed(&mut self.agent_id, seen.agent_id);
        set_if_changed(&mut self.agent_version, seen.agent_version);
        set_if_changed(&mut self.peer, seen.peer);
        self.last_seen_unix_ms = seen.received_unix_ms;
        self.clock_offset_ms = seen.clock_offset_ms;
        self.dropped_batches_total = seen.dropped_batches_total;
        self.batches_stored_total = self.batches_stored_total.saturating_add(1);
    }

    /// Takes the values of a stored row as latest where they are newer
    /// (by sample time, then run) than what the host shows.
    pub(crate) fn note_values(&mut self, run_id: i64, row: &TickRow) {
        for (slot, v) in self.latest.iter_mut().zip(row.values) {
            let Some(value) = v else { continue };
            let newer =
                slot.is_none_or(|l| (row.time_unix_ms, run_id) > (l.time_unix_ms, l.run_id));
            if newer {
                *slot = Some(Latest {
                    time_unix_ms: row.time_unix_ms,
                    run_id,
                    value,
                });
            }
        }
    }

    fn record(&self) -> HostRecord {
        HostRecord {
            hostname: self.hostname.clone(),
            agent_id: self.agent_id.clone(),
            agent_version: self.agent_version.clone(),
            peer: self.peer.clone(),
            first_seen_unix_ms: self.first_seen_unix_ms,
            last_seen_unix_ms: self.last_seen_unix_ms,
            clock_offset_ms: self.clock_offset_ms,
            dropped_batches_total: self.dropped_batches_total,
            batches_stored_total: self.batches_stored_total,
            batches_checked_by_value_total: self.batches_checked_by_value_total,
            latest: Metric::ALL
                .iter()
                .zip(self.latest)
                .filter_map(|(&metric, l)| {
                    l.map(|l| LatestValue {
                        metric,
                        time_unix_ms: l.time_unix_ms,
                        value: l.value,
                    })
                })
                .collect(),
            health: self.health.records(),
            health_series_over_cap_total: self.health.over_cap_total(),
        }
    }
}

/// What a stored batch says about its host; from the batch at ingest, from
/// its journal row at replay.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchMeta<'a> {
    pub(crate) agent_id: &'a str,
    pub(crate) agent_version: &'a str,
    pub(crate) peer: &'a str,
    pub(crate) received_unix_ms: i64,
    pub(crate) clock_offset_ms: i64,
    pub(crate) dropped_batches_total: u64,
}

impl<'a> BatchMeta<'a> {
    pub(crate) fn of(batch: &'a IncomingBatch) -> BatchMeta<'a> {
        BatchMeta {
            agent_id: &batch.agent_id,
            agent_version: &batch.agent_version,
            peer: &batch.peer,
            received_unix_ms: batch.received_unix_ms,
            clock_offset_ms: batch.clock_offset_ms,
            dropped_batches_total: batch.dropped_batches_total,
        }
    }
}

/// Reuses the string's buffer when the value is new (it rarely is).
fn set_if_changed(s: &mut String, v: &str) {
    if s != v {
        v.clone_into(s);
    }
}

/// Every host by id, with an index by hostname; shared by the writer (who
/// changes it) and the readers.
#[derive(Debug, Default)]
pub(crate) struct HostTable {
    hosts: Mutex<Hosts>,
}

/// The table behind [`HostTable`]'s lock.
#[derive(Debug, Default)]
pub(crate) struct Hosts {
    by_id: HashMap<i64, HostEntry>,
    /// hostname → host_id of every entry of `by_id` (a host's id and name
    /// never change).
    ids: HashMap<String, i64>,
}

impl Hosts {
    pub(crate) fn get(&self, host_id: &i64) -> Option<&HostEntry> {
        self.by_id.get(host_id)
    }

    pub(crate) fn get_mut(&mut self, host_id: &i64) -> Option<&mut HostEntry> {
        self.by_id.get_mut(host_id)
    }

    /// Adds a host (or replaces the entry of `host_id`).
    pub(crate) fn insert(&mut self, host_id: i64, entry: HostEntry) {
        self.ids.insert(entry.hostname.clone(), host_id);
        self.by_id.insert(host_id, entry);
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut HostEntry> {
        self.by_id.values_mut()
    }

    /// The entry of `hostname`.
    fn named(&self, hostname: &str) -> Option<&HostEntry> {
        self.ids.get(hostname).and_then(|id| self.by_id.get(id))
    }
}

impl HostTable {
    pub(crate) fn new(by_id: HashMap<i64, HostEntry>) -> HostTable {
        let ids = by_id
            .iter()
            .map(|(&id, h)| (h.hostname.clone(), id))
            .collect();
        HostTable {
            hosts: Mutex::new(Hosts { by_id, ids }),
        }
    }

    /// The table, for the writer to change or fold. A panic while it was
    /// held cannot leave a half-applied update that matters: the writer
    /// thread is gone then, and with it every further change.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Hosts> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pending ticks of a host with a sample time in [since, until)
    /// and (if given) a value of metric id `metric_index`, as a query reads
    /// them, sorted and combined (see [`crate::store::ticks::combine_pending`]).
    pub(crate) fn pending_of(
        &self,
        host_id: i64,
        since_unix_ms: i64,
        until_unix_ms: i64,
        metric_index: Option<usize>,
    ) -> Vec<StoredTick> {
        let ticks = self
            .lock()
            .get(&host_id)
            .map(|h| h.pending_in(since_unix_ms, until_unix_ms))
            .unwrap_or_default();
        let mut ticks = crate::store::ticks::combine_pending(ticks);
        if let Some(i) = metric_index {
            ticks.retain(|t| t.values.get(i).is_some_and(Option::is_some));
        }
        ticks
    }

    /// Every host's id and name, by id, each with its pending ticks in
    /// [since, until) as [`HostTable::pending_of`] gives them: one copy
    /// under one lock, for a read of every host.
    pub(crate) fn every_pending(
        &self,
        since_unix_ms: i64,
        until_unix_ms: i64,
    ) -> Vec<(i64, String, Vec<StoredTick>)> {
        let copied: Vec<(i64, String, Vec<StoredTick>)> = self
            .lock()
            .by_id
            .iter()
            .map(|(&id, h)| {
                (
                    id,
                    h.hostname.clone(),
                    h.pending_in(since_unix_ms, until_unix_ms),
                )
            })
            .collect();
        let mut out: Vec<_> = copied
            .into_iter()
            .map(|(id, name, ticks)| (id, name, crate::store::ticks::combine_pending(ticks)))
            .collect();
        out.sort_unstable_by_key(|h| h.0);
        out
    }

    /// Every host, by hostname.
    pub(crate) fn snapshot(&self) -> Vec<HostRecord> {
        self.page(None, usize::MAX)
    }

    /// The first `limit` hosts by hostname whose name sorts after `after`
    /// (from the first when `None`): a scan of the names, a copy of only
    /// those hosts.
    pub(crate) fn page(&self, after: Option<&str>, limit: usize) -> Vec<HostRecord> {
        let hosts = self.lock();
        crate::pages::first_after(
            hosts.ids.iter().map(|(name, id)| (name.as_str(), id)),
            after,
            limit,
        )
        .into_iter()
        .filter_map(|id| hosts.by_id.get(id).map(HostEntry::record))
        .collect()
    }

    /// The host named `hostname`, if it ever stored a batch.
    pub(crate) fn record_of(&self, hostname: &str) -> Option<HostRecord> {
        self.lock().named(hostname).map(HostEntry::record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> HostEntry {
        HostEntry {
            hostname: "pi".into(),
            agent_id: "a".into(),
            agent_version: "1".into(),
            peer: "p".into(),
            first_seen_unix_ms: 10,
            last_seen_unix_ms: 10,
            clock_offset_ms: 0,
            dropped_batches_total: 0,
            batches_stored_total: 0,
            batches_checked_by_value_total: 0,
            latest: [None; METRICS],
            health: LatestHealthTable::default(),
            pending: Vec::new(),
            merged_journal_id: 0,
            applied_journal_id: 0,
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

    /// Notes `rows` (run, row) in order and compares the latest (time,
    /// value) of each metric with `expected`.
    fn check_latest(rows: &[(i64, TickRow)], expected: [Option<(i64, f64)>; METRICS]) {
        let mut e = entry();
        for (run, r) in rows {
            e.note_values(*run, r);
        }
        let got = e.latest.map(|l| l.map(|l| (l.time_unix_ms, l.value)));
        assert_eq!(got, expected);
    }

    #[test]
    fn latest_is_the_newest_by_time_then_run() {
        check_latest(&[], [None; METRICS]);
        check_latest(
            &[
                (1, row(2000, &[(0, 1.0), (1, 2.0)])),
                // Older: ignored. Same time and run: the first stays.
                (1, row(1000, &[(0, 9.0), (2, 3.0)])),
                (1, row(2000, &[(0, 8.0)])),
                // Same time, higher run: newer.
                (2, row(2000, &[(1, 4.0)])),
            ],
            [
                Some((2000, 1.0)),
                Some((2000, 4.0)),
                Some((1000, 3.0)),
                None,
                None,
                None,
            ],
        );
    }

    #[test]
    fn counting_shows_the_latest_batch() {
        let mut e = entry();
        e.count_batch(BatchMeta {
            agent_id: "b",
            agent_version: "2",
            peer: "q",
            received_unix_ms: 50,
            clock_offset_ms: -3,
            dropped_batches_total: 4,
        });
        assert_eq!(
            (
                e.agent_id.as_str(),
                e.agent_version.as_str(),
                e.peer.as_str()
            ),
            ("b", "2", "q")
        );
        assert_eq!((e.first_seen_unix_ms, e.last_seen_unix_ms), (10, 50));
        assert_eq!((e.clock_offset_ms, e.dropped_batches_total), (-3, 4));
        assert_eq!(e.batches_stored_total, 1);
    }

    #[test]
    fn snapshots_are_sorted_by_hostname() {
        let mut hosts = HashMap::new();
        for (id, name) in [(1, "pi-b"), (2, "pi-a"), (3, "Pi-c")] {
            hosts.insert(
                id,
                HostEntry {
                    hostname: name.into(),
                    ..entry()
                },
            );
        }
        let names: Vec<String> = HostTable::new(hosts)
            .snapshot()
            .into_iter()
            .map(|h| h.hostname)
            .collect();
        assert_eq!(names, ["Pi-c", "pi-a", "pi-b"]);
    }

    #[test]
    fn pages_copy_only_the_hosts_after_the_token() {
        let mut hosts = HashMap::new();
        for id in 0..50 {
            hosts.insert(
                id,
                HostEntry {
                    hostname: format!("pi-{:02}", 49 - id),
                    ..entry()
                },
            );
        }
        let table = HostTable::new(hosts);
        let names =
            |v: Vec<HostRecord>| -> Vec<String> { v.into_iter().map(|h| h.hostname).collect() };
        assert_eq!(names(table.page(None, 3)), ["pi-00", "pi-01", "pi-02"]);
        assert_eq!(names(table.page(Some("pi-02"), 2)), ["pi-03", "pi-04"]);
        assert_eq!(names(table.page(Some("pi-47"), 5)), ["pi-48", "pi-49"]);
        assert!(table.page(Some("pi-49"), 5).is_empty());
        assert_eq!(table.page(None, 1000).len(), 50);
    }

    #[test]
    fn hosts_are_found_by_name() {
        let table = HostTable::new(HashMap::from([(7, entry())]));
        assert_eq!(table.record_of("pi").map(|r| r.agent_id), Some("a".into()));
        assert_eq!(table.record_of("nope"), None);
        let added = HostEntry {
            hostname: "pi-2".into(),
            ..entry()
        };
        table.lock().insert(8, added);
        assert!(table.record_of("pi-2").is_some());
    }
}
