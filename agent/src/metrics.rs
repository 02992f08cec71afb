//! The agent's metric set as data: one table naming every metric the agent
//! computes, its unit, its label (for per-filesystem values), where it
//! comes from, and the wire metric it is sent as.
//!
//! A new metric is one line in [`metric_table!`] below (and one in the
//! wire's table, `monitor::health`) plus the code that computes it in the
//! collector; names, units, the `--stdout` output and the wire mapping all
//! read this table. Must never hold logic beyond
//! lookups: the collectors decide values, this module only describes them.

use monitor::health::HealthMetric;
use monitor::metric::Metric;

/// How a metric goes on the wire: as one of the six (`Batch.samples`) or as
/// a health metric (`Batch.health_samples`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Six(Metric),
    Health(HealthMetric),
}

/// What describes one metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricSpec {
    /// The name on `--stdout`, in logs and (for wire metrics) on the wire.
    pub name: &'static str,
    /// The unit of its values, as a person reads it.
    pub unit: &'static str,
    /// For a metric with one value per device or file system: what its
    /// label names (`None` for one value per host).
    pub label: Option<&'static str>,
    /// Where the value comes from, in a few words.
    pub source: &'static str,
    /// The wire metric it is sent as.
    pub wire: Wire,
}

macro_rules! metric_table {
    ($( $variant:ident { name: $name:literal, unit: $unit:literal, label: $label:expr,
        source: $source:literal, wire: $wire:expr $(,)? } )*) => {
        /// A metric the agent computes (see [`MetricSpec`] for each one's
        /// name, unit and source).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum AgentMetric { $( $variant ),* }

        impl AgentMetric {
            /// Every metric, in table order (the order `--stdout` prints).
            pub const ALL: [AgentMetric; [$( stringify!($variant) ),*].len()] =
                [$( AgentMetric::$variant ),*];
            /// How many there are.
            pub const COUNT: usize = AgentMetric::ALL.len();

            /// This metric's line of the table.
            pub const fn spec(self) -> &'static MetricSpec {
                &TABLE[self as usize]
            }
        }

        /// The table itself, indexed by [`AgentMetric`].
        pub const TABLE: [MetricSpec; AgentMetric::COUNT] = [$(
            MetricSpec { name: $name, unit: $unit, label: $label, source: $source, wire: $wire }
        ),*];
    };
}

metric_table! {
    CpuPercent { name: "cpu_percent", unit: "%", label: None,
        source: "/proc/stat, busy share of all CPUs over the interval",
        wire: Wire::Six(Metric::CpuPercent) }
    MemPercent { name: "mem_percent", unit: "%", label: None,
        source: "/proc/meminfo, (MemTotal - MemAvailable) / MemTotal",
        wire: Wire::Six(Metric::MemPercent) }
    DiskReadKbps { name: "disk_read_kbps", unit: "KiB/s", label: None,
        source: "/proc/diskstats, whole physical disks",
        wire: Wire::Six(Metric::DiskReadKbps) }
    DiskWriteKbps { name: "disk_write_kbps", unit: "KiB/s", label: None,
        source: "/proc/diskstats, whole physical disks",
        wire: Wire::Six(Metric::DiskWriteKbps) }
    NetInKbps { name: "net_in_kbps", unit: "KiB/s", label: None,
        source: "/proc/net/dev, physical interfaces",
        wire: Wire::Six(Metric::NetInKbps) }
    NetOutKbps { name: "net_out_kbps", unit: "KiB/s", label: None,
        source: "/proc/net/dev, physical interfaces",
        wire: Wire::Six(Metric::NetOutKbps) }
    TempCelsius { name: "temp_celsius", unit: "°C", label: None,
        source: "/sys/class/thermal/thermal_zone*/temp, the hottest or MONITOR_THERMAL_ZONE",
        wire: Wire::Health(HealthMetric::TempCelsius) }
    UnderVoltage { name: "under_voltage", unit: "0/1", label: None,
        source: "hwmon rpi_volt in0_lcrit_alarm, under-voltage in the last 2 s",
        wire: Wire::Health(HealthMetric::UnderVoltage) }
    ThrottledFlags { name: "throttled_flags", unit: "bits", label: None,
        source: "firmware get_throttled: bits 0-3 now, 16-19 since the agent started",
        wire: Wire::Health(HealthMetric::ThrottledFlags) }
    Load1 { name: "load1", unit: "tasks", label: None,
        source: "/proc/loadavg, 1-minute load average",
        wire: Wire::Health(HealthMetric::Load1) }
    UptimeSeconds { name: "uptime_seconds", unit: "s", label: None,
        source: "/proc/uptime, seconds since boot",
        wire: Wire::Health(HealthMetric::UptimeSeconds) }
    SwapPercent { name: "swap_percent", unit: "%", label: None,
        source: "/proc/meminfo, (SwapTotal - SwapFree) / SwapTotal",
        wire: Wire::Health(HealthMetric::SwapPercent) }
    FsUsedPercent { name: "fs_used_percent", unit: "%", label: Some("mountpoint"),
        source: "statvfs of each real mounted file system, like df's Use%",
        wire: Wire::Health(HealthMetric::FsUsedPercent) }
    RootInodesUsedPercent { name: "root_inodes_used_percent", unit: "%", label: None,
        source: "statvfs of the root file system, like df -i's IUse%",
        wire: Wire::Health(HealthMetric::RootInodesUsedPercent) }
}

impl AgentMetric {
    /// The metric's name (see [`MetricSpec::name`]).
    pub const fn name(self) -> &'static str {
        self.spec().name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_indexed_by_the_enum_and_names_are_unique() {
        for (i, metric) in AgentMetric::ALL.into_iter().enumerate() {
            assert_eq!(metric as usize, i);
            assert_eq!(TABLE[i].name, metric.name());
        }
        let mut names: Vec<_> = TABLE.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), AgentMetric::COUNT);
    }

    #[test]
    fn every_wire_metric_is_in_the_table_once_under_its_own_name() {
        for wire in Metric::ALL
            .map(Wire::Six)
            .into_iter()
            .chain(HealthMetric::ALL.map(Wire::Health))
        {
            let found: Vec<_> = TABLE.iter().filter(|s| s.wire == wire).collect();
            assert_eq!(found.len(), 1, "{wire:?}");
            let name = match wire {
                Wire::Six(m) => m.name(),
                Wire::Health(m) => m.name(),
            };
            assert_eq!(found[0].name, name);
        }
        // A labelled metric here is a labelled one on the wire.
        for spec in TABLE {
            if let Wire::Health(m) = spec.wire {
                assert_eq!(spec.label, m.spec().label, "{}", spec.name);
            }
        }
    }

    #[test]
    fn names_carry_their_unit() {
        for spec in TABLE {
            let ok = match spec.unit {
                "%" => spec.name.ends_with("_percent"),
                "KiB/s" => spec.name.ends_with("_kbps"),
                "°C" => spec.name.ends_with("_celsius"),
                "s" => spec.name.ends_with("_seconds"),
                _ => true,
            };
            assert!(ok, "{} in {}", spec.name, spec.unit);
        }
    }
}
