//! How the six metrics are named and scaled outside the project, for
//! Prometheus and everything that reads its formats (`/metrics`,
//! remote-write, the Grafana dashboard), and which unit the web
//! dashboard's API gives them: one home for the mapping, so the scrape,
//! the remote-write stream and the dashboard always agree.
//!
//! Prometheus conventions: base units (ratios 0..1, bytes, seconds), the
//! unit in the name, a `hostname` label. The store keeps the agents' units
//! (percent, KiB/s); the conversion happens here and nowhere else, and it
//! is exact to one rounding of an f64 multiplication.
//!
//! The health metrics (issue 14) are data too: [`HEALTH_FAMILIES`] says
//! for each one its series name, HELP, scale and how a stored value
//! becomes series ([`Shape`]: one value, one per device with the device
//! label of `monitor::health`, or one 0/1 series per throttling condition
//! labelled `flag`, as node_exporter exports flag sets). A new health metric is a line
//! there.

use monitor::health::{HealthMetric, THROTTLE_FLAGS};
use monitor::metric::Metric;

/// The label every host series carries.
pub const HOSTNAME_LABEL: &str = "hostname";

/// One metric as Prometheus sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exported {
    /// The series name.
    pub name: &'static str,
    /// Its HELP text.
    pub help: &'static str,
    /// Stored value × this = exported value.
    pub scale: f64,
    /// The unit the store keeps (and the dashboard shows): "percent" or
    /// "KiB/s".
    pub stored_unit: &'static str,
}

/// Bytes in a KiB: the agent reports rates in KiB/s.
const KIB_BYTES: f64 = 1024.0;

/// The unit of a percentage (the store's and the web dashboard's).
pub const PERCENT: &str = "percent";
/// The unit of a condition's series on the web dashboard: 0 or 1.
pub const FLAG_UNIT: &str = "0/1";
const KIB_PER_S: &str = "KiB/s";

/// The exported form of `metric`.
pub const fn exported(metric: Metric) -> Exported {
    match metric {
        Metric::CpuPercent => Exported {
            name: "monitor_host_cpu_ratio",
            help: "Share of CPU time busy over the last sampling interval, 0 to 1 (all cores)",
            scale: 0.01,
            stored_unit: PERCENT,
        },
        Metric::MemPercent => Exported {
            name: "monitor_host_memory_used_ratio",
            help: "Share of memory in use (total minus available), 0 to 1",
            scale: 0.01,
            stored_unit: PERCENT,
        },
        Metric::DiskReadKbps => Exported {
            name: "monitor_host_disk_read_bytes_per_second",
            help: "Bytes read per second from whole physical disks",
            scale: KIB_BYTES,
            stored_unit: KIB_PER_S,
        },
        Metric::DiskWriteKbps => Exported {
            name: "monitor_host_disk_write_bytes_per_second",
            help: "Bytes written per second to whole physical disks",
            scale: KIB_BYTES,
            stored_unit: KIB_PER_S,
        },
        Metric::NetInKbps => Exported {
            name: "monitor_host_network_receive_bytes_per_second",
            help: "Bytes received per second on physical network interfaces",
            scale: KIB_BYTES,
            stored_unit: KIB_PER_S,
        },
        Metric::NetOutKbps => Exported {
            name: "monitor_host_network_transmit_bytes_per_second",
            help: "Bytes transmitted per second on physical network interfaces",
            scale: KIB_BYTES,
            stored_unit: KIB_PER_S,
        },
    }
}

/// A stored value of `metric` in exported units.
pub fn value(metric: Metric, stored: f64) -> f64 {
    stored * exported(metric).scale
}

/// The label naming a bit of a flag word ([`Shape::Bits`]).
pub const FLAG_LABEL: &str = "flag";

/// How one stored health value becomes exported series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    /// One series per host.
    Plain,
    /// One series per device, labelled with the metric's label
    /// (`HealthSpec::label`, e.g. `mountpoint`).
    PerDevice,
    /// One 0/1 series per condition of the throttling word
    /// (`monitor::health::THROTTLE_FLAGS`), its name as the [`FLAG_LABEL`]
    /// label: whether it holds now, or (`occurred`) held since the agent
    /// started.
    Flags { occurred: bool },
}

/// One exported family of a health metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HealthFamily {
    pub metric: HealthMetric,
    /// The series name.
    pub name: &'static str,
    /// Its HELP text.
    pub help: &'static str,
    /// Stored value × this = exported value (not used by `Flags`).
    pub scale: f64,
    pub shape: Shape,
}

/// Every exported health family, in [`HealthMetric::ALL`] order.
pub const HEALTH_FAMILIES: &[HealthFamily] = &[
    HealthFamily {
        metric: HealthMetric::TempCelsius,
        name: "monitor_host_temperature_celsius",
        help: "Hottest thermal zone (or the one named by MONITOR_THERMAL_ZONE), degrees Celsius",
        scale: 1.0,
        shape: Shape::Plain,
    },
    HealthFamily {
        metric: HealthMetric::UnderVoltage,
        name: "monitor_host_under_voltage",
        help: "1 while the Raspberry Pi's supply is below about 4.63 V (hwmon rpi_volt), else 0",
        scale: 1.0,
        shape: Shape::Plain,
    },
    HealthFamily {
        metric: HealthMetric::ThrottledFlags,
        name: "monitor_host_throttled",
        help: "1 while the Raspberry Pi firmware reports the condition now, else 0",
        scale: 1.0,
        shape: Shape::Flags { occurred: false },
    },
    HealthFamily {
        metric: HealthMetric::ThrottledFlags,
        name: "monitor_host_throttled_since_agent_start",
        help: "1 if the Raspberry Pi firmware reported the condition since the agent started",
        scale: 1.0,
        shape: Shape::Flags { occurred: true },
    },
    HealthFamily {
        metric: HealthMetric::Load1,
        name: "monitor_host_load1",
        help: "One-minute load average: runnable plus uninterruptible tasks (/proc/loadavg)",
        scale: 1.0,
        shape: Shape::Plain,
    },
    HealthFamily {
        metric: HealthMetric::UptimeSeconds,
        name: "monitor_host_uptime_seconds",
        help: "Seconds since the host booted (/proc/uptime)",
        scale: 1.0,
        shape: Shape::Plain,
    },
    HealthFamily {
        metric: HealthMetric::SwapPercent,
        name: "monitor_host_swap_used_ratio",
        help: "Share of swap in use, 0 to 1 (absent without swap)",
        scale: 0.01,
        shape: Shape::Plain,
    },
    HealthFamily {
        metric: HealthMetric::FsUsedPercent,
        name: "monitor_host_filesystem_used_ratio",
        help: "Share of a file system's space in use as df's Use% counts it, 0 to 1",
        scale: 0.01,
        shape: Shape::PerDevice,
    },
    HealthFamily {
        metric: HealthMetric::RootInodesUsedPercent,
        name: "monitor_host_root_filesystem_inodes_used_ratio",
        help: "Share of the root file system's inodes in use, 0 to 1",
        scale: 0.01,
        shape: Shape::Plain,
    },
];

/// A label of an exported health series: (name, value).
pub type HealthLabel<'a> = Option<(&'static str, &'a str)>;

impl HealthFamily {
    /// The exported samples of one stored value of [`HealthFamily::metric`]
    /// (`device` is its device, empty for a one-per-host metric): each
    /// with its extra label, if any, and its value in exported units.
    pub fn samples<'a>(
        &self,
        device: &'a str,
        stored: f64,
    ) -> impl Iterator<Item = (HealthLabel<'a>, f64)> + 'a {
        let (one, flags) = match self.shape {
            Shape::Plain => (Some((None, stored * self.scale)), None),
            Shape::PerDevice => (
                Some((
                    self.metric.spec().label.map(|l| (l, device)),
                    stored * self.scale,
                )),
                None,
            ),
            Shape::Flags { occurred } => (None, Some(occurred)),
        };
        let flags = flags.into_iter().flat_map(move |occurred| {
            THROTTLE_FLAGS.iter().map(move |f| {
                let set = f.is_set(stored, occurred);
                (Some((FLAG_LABEL, f.name)), f64::from(u8::from(set)))
            })
        });
        one.into_iter().chain(flags)
    }
}

/// The unit of a health metric's series on the web dashboard, as the
/// store keeps the values (the throttling word as its conditions, 0 or 1
/// each: see `store/health_series.rs`).
pub const fn health_unit(metric: HealthMetric) -> &'static str {
    match metric {
        HealthMetric::TempCelsius => "°C",
        HealthMetric::UnderVoltage | HealthMetric::ThrottledFlags => FLAG_UNIT,
        HealthMetric::Load1 => "tasks",
        HealthMetric::UptimeSeconds => "s",
        HealthMetric::SwapPercent
        | HealthMetric::FsUsedPercent
        | HealthMetric::RootInodesUsedPercent => PERCENT,
    }
}

/// The exported families of `metric`.
pub fn health_families(metric: HealthMetric) -> impl Iterator<Item = &'static HealthFamily> {
    HEALTH_FAMILIES.iter().filter(move |f| f.metric == metric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_health_metric_is_exported_once_or_more_with_its_unit_in_the_name() {
        for m in HealthMetric::ALL {
            assert!(health_families(m).next().is_some(), "{m}");
        }
        let mut names: Vec<&str> = HEALTH_FAMILIES.iter().map(|f| f.name).collect();
        names.extend(Metric::ALL.iter().map(|&m| exported(m).name));
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
        for f in HEALTH_FAMILIES {
            assert!(f.name.starts_with("monitor_host_"), "{}", f.name);
            if f.metric.name().ends_with("_percent") {
                assert!(f.name.ends_with("_ratio") && f.scale == 0.01, "{}", f.name);
            }
        }
    }

    /// The samples of `family` for (device, stored value).
    fn check(family: usize, device: &str, stored: f64, want: &[(HealthLabel<'_>, f64)]) {
        let got: Vec<_> = HEALTH_FAMILIES[family].samples(device, stored).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn health_values_become_series() {
        check(0, "", 51.5, &[(None, 51.5)]);
        // fs_used_percent: the mount point as `mountpoint`, a ratio.
        check(7, "/boot", 25.0, &[(Some(("mountpoint", "/boot")), 0.25)]);
        // 0x50005: under-voltage and throttled now, both since start.
        let now = [
            (Some((FLAG_LABEL, "under_voltage")), 1.0),
            (Some((FLAG_LABEL, "arm_frequency_capped")), 0.0),
            (Some((FLAG_LABEL, "throttled")), 1.0),
            (Some((FLAG_LABEL, "soft_temperature_limit")), 0.0),
        ];
        check(2, "", f64::from(0x50005), &now);
        check(3, "", f64::from(0x50005), &now);
        check(
            3,
            "",
            f64::from(0x80000),
            &[
                (Some((FLAG_LABEL, "under_voltage")), 0.0),
                (Some((FLAG_LABEL, "arm_frequency_capped")), 0.0),
                (Some((FLAG_LABEL, "throttled")), 0.0),
                (Some((FLAG_LABEL, "soft_temperature_limit")), 1.0),
            ],
        );
    }

    #[test]
    fn names_are_distinct_and_follow_prometheus_conventions() {
        let names: Vec<&str> = Metric::ALL.iter().map(|&m| exported(m).name).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        for n in names {
            assert!(n.starts_with("monitor_host_"), "{n}");
            assert!(
                n.ends_with("_ratio") || n.ends_with("_bytes_per_second"),
                "{n}"
            );
        }
        assert_eq!(value(Metric::CpuPercent, 50.0), 0.5);
        assert_eq!(value(Metric::DiskReadKbps, 2.0), 2048.0);
    }
}
