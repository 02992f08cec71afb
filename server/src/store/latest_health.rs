//! Each host's newest health value per (metric, device), as both backends
//! keep it for `hosts()`: the one rule for "newer" and for the per-host
//! cap, shared so that SQLite (in memory) and PostgreSQL (a table the
//! flush merges into) show the same thing.
//!
//! Bounded: an agent names its devices (mount points), so a host keeps at
//! most [`MAX_HEALTH_SERIES_PER_HOST`] (metric, device) pairs. Past the
//! cap, a new pair takes the place of the pair updated least recently if
//! that one is older than the new value (a file system unmounted long
//! ago), else it is not kept; either way the host's
//! `health_series_over_cap_total` counts it. The values themselves are
//! stored (and queryable) whatever the cap. Pure: no I/O, no clock.

use std::collections::BTreeMap;

use monitor::health::HealthMetric;

use crate::store::records::LatestHealth;

/// Most (metric, device) pairs whose latest value a host keeps: a batch
/// carries at most this many health values, so one agent's whole batch
/// always fits.
pub const MAX_HEALTH_SERIES_PER_HOST: usize = monitor::wire::MAX_HEALTH_SAMPLES_PER_BATCH;

/// The newest value of each (metric, device) pair of one host.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct LatestHealthTable {
    /// (metric, device) → (sample time in ms since the Unix epoch, value).
    values: BTreeMap<(HealthMetric, String), (i64, f64)>,
    /// New pairs that met a full table (see the module doc).
    over_cap_total: u64,
}

impl LatestHealthTable {
    /// Takes `value` at `time_unix_ms` as the pair's latest if it is newer
    /// than the one held (at the same time the first one stays, as the
    /// stored row does). Returns false if the pair met a full table and
    /// was not kept.
    pub(crate) fn note(
        &mut self,
        metric: HealthMetric,
        device: &str,
        time_unix_ms: i64,
        value: f64,
    ) -> bool {
        let key = (metric, device.to_owned());
        if let Some(held) = self.values.get_mut(&key) {
            if time_unix_ms > held.0 {
                *held = (time_unix_ms, value);
            }
            return true;
        }
        if self.values.len() >= MAX_HEALTH_SERIES_PER_HOST {
            self.over_cap_total = self.over_cap_total.saturating_add(1);
            let stalest = self
                .values
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, (t, _))| (k.clone(), *t));
            match stalest {
                Some((old, t)) if t < time_unix_ms => {
                    self.values.remove(&old);
                }
                _ => return false,
            }
        }
        self.values.insert(key, (time_unix_ms, value));
        true
    }

    /// Forgets the values older than `cutoff_unix_ms` (retention deleted
    /// their rows).
    pub(crate) fn forget_older(&mut self, cutoff_unix_ms: i64) {
        self.values.retain(|_, (t, _)| *t >= cutoff_unix_ms);
    }

    /// Forgets the over-cap count (after loading from the file, whose
    /// older rows met the cap only because they are read newest first).
    pub(crate) fn clear_over_cap(&mut self) {
        self.over_cap_total = 0;
    }

    /// How many new pairs met a full table so far.
    pub(crate) fn over_cap_total(&self) -> u64 {
        self.over_cap_total
    }

    /// Whether `(metric, device)` is held.
    pub(crate) fn holds(&self, metric: HealthMetric, device: &str) -> bool {
        self.values.contains_key(&(metric, device.to_owned()))
    }

    /// Every pair held, by metric (in [`HealthMetric::ALL`] order) then
    /// device.
    pub(crate) fn records(&self) -> Vec<LatestHealth> {
        self.values
            .iter()
            .map(|((metric, device), &(time_unix_ms, value))| LatestHealth {
                metric: *metric,
                device: device.clone(),
                time_unix_ms,
                value,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Notes `(metric, device, time, value)` in order; compares what is
    /// held (metric name, device, time, value) and the over-cap count.
    fn check(notes: &[(HealthMetric, &str, i64, f64)], held: &[(&str, &str, i64, f64)], over: u64) {
        let mut t = LatestHealthTable::default();
        for &(m, d, time, v) in notes {
            t.note(m, d, time, v);
        }
        let got: Vec<(&str, String, i64, f64)> = t
            .records()
            .into_iter()
            .map(|l| (l.metric.name(), l.device, l.time_unix_ms, l.value))
            .collect();
        let want: Vec<(&str, String, i64, f64)> = held
            .iter()
            .map(|&(m, d, time, v)| (m, d.to_owned(), time, v))
            .collect();
        assert_eq!(got, want);
        assert_eq!(t.over_cap_total(), over);
    }

    #[test]
    fn the_newest_value_per_metric_and_device_is_kept() {
        use HealthMetric::*;
        check(
            &[
                (TempCelsius, "", 2000, 50.0),
                (TempCelsius, "", 1000, 40.0),
                (TempCelsius, "", 2000, 60.0),
                (FsUsedPercent, "/", 1000, 10.0),
                (FsUsedPercent, "/boot", 1000, 20.0),
                (FsUsedPercent, "/", 3000, 11.0),
            ],
            &[
                ("temp_celsius", "", 2000, 50.0),
                ("fs_used_percent", "/", 3000, 11.0),
                ("fs_used_percent", "/boot", 1000, 20.0),
            ],
            0,
        );
    }

    #[test]
    fn past_the_cap_a_new_device_replaces_only_an_older_one_and_is_counted() {
        let mut t = LatestHealthTable::default();
        for i in 0..MAX_HEALTH_SERIES_PER_HOST {
            assert!(t.note(
                HealthMetric::FsUsedPercent,
                &format!("/m{i}"),
                1000 + i as i64,
                1.0
            ));
        }
        // Older than every held value: not kept.
        assert!(!t.note(HealthMetric::FsUsedPercent, "/late", 999, 2.0));
        assert!(!t.holds(HealthMetric::FsUsedPercent, "/late"));
        // Newer: replaces the stalest (/m0).
        assert!(t.note(HealthMetric::FsUsedPercent, "/new", 5000, 3.0));
        assert!(t.holds(HealthMetric::FsUsedPercent, "/new"));
        assert!(!t.holds(HealthMetric::FsUsedPercent, "/m0"));
        assert_eq!(t.records().len(), MAX_HEALTH_SERIES_PER_HOST);
        assert_eq!(t.over_cap_total(), 2);
        // A held pair is updated whatever the cap.
        assert!(t.note(HealthMetric::FsUsedPercent, "/m1", 6000, 4.0));
        assert_eq!(t.over_cap_total(), 2);
    }
}
