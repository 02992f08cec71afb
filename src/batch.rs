//! One tick's worth of samples in the compact form the agent buffers.
//!
//! A batch is what the agent produced at one tick: the run's boot id, a sequence number,
//! the wall-clock time of the tick, up to six values inline, and the health
//! values (issue 14) in one boxed slice. It is 96 bytes plus the health
//! slice (about 25 bytes a value; mount point labels are shared, not
//! copied), and the buffer never holds the hostname or agent id: they are
//! added when a batch is put on the wire (see [`crate::wire`]).

use std::sync::Arc;

use crate::health::HealthMetric;
use crate::metric::Metric;

/// Values for some of the six metrics, indexed by [`Metric::ALL`] order.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MetricValues {
    /// Bit i set when `values[i]` holds a value for `Metric::ALL[i]`.
    present: u8,
    values: [f64; 6],
}

impl MetricValues {
    pub fn set(&mut self, metric: Metric, value: f64) {
        let i = metric as usize;
        self.present |= 1 << i;
        self.values[i] = value;
    }

    pub fn get(&self, metric: Metric) -> Option<f64> {
        let i = metric as usize;
        (self.present & (1 << i) != 0).then_some(self.values[i])
    }

    pub fn len(&self) -> usize {
        self.present.count_ones() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.present == 0
    }

    /// The values present, in [`Metric::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Metric, f64)> + '_ {
        Metric::ALL
            .into_iter()
            .filter_map(|m| self.get(m).map(|v| (m, v)))
    }
}

impl FromIterator<(Metric, f64)> for MetricValues {
    fn from_iter<I: IntoIterator<Item = (Metric, f64)>>(iter: I) -> Self {
        let mut v = MetricValues::default();
        for (m, x) in iter {
            v.set(m, x);
        }
        v
    }
}

/// One health value of a tick (see [`crate::health`]).
#[derive(Clone, Debug, PartialEq)]
pub struct HealthValue {
    pub metric: HealthMetric,
    /// The mount point (or device) of a labelled metric; empty for a
    /// metric with one value per host. Shared with the collector's own
    /// label, so a tick does not copy it.
    pub device: Arc<str>,
    pub value: f64,
}

/// A batch as the agent buffers it until the server acknowledges it.
#[derive(Clone, Debug, PartialEq)]
pub struct TickBatch {
    /// The agent run that produced it (a batch restored from the spool
    /// keeps the boot id of the run that took it).
    pub boot_id: u64,
    /// Grows by one per batch within a boot id, starting at 1.
    pub seq: u64,
    /// Agent's wall clock at the tick, milliseconds since the Unix epoch.
    pub time_unix_ms: i64,
    pub values: MetricValues,
    /// The health values (an empty slice does not allocate).
    pub health: Box<[HealthValue]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_order_and_presence() {
        let mut v = MetricValues::default();
        assert!(v.is_empty());
        v.set(Metric::NetOutKbps, 3.0);
        v.set(Metric::CpuPercent, 1.0);
        assert_eq!(v.len(), 2);
        assert_eq!(v.get(Metric::MemPercent), None);
        let got: Vec<_> = v.iter().collect();
        assert_eq!(
            got,
            vec![(Metric::CpuPercent, 1.0), (Metric::NetOutKbps, 3.0)]
        );
    }

    #[test]
    fn batch_stays_small() {
        // 80 bytes of the six and the ids, 16 of the health slice's pointer.
        assert!(std::mem::size_of::<TickBatch>() <= 96);
        // README's buffer size counts 32 bytes per health value.
        assert!(std::mem::size_of::<HealthValue>() <= 32);
    }
}
