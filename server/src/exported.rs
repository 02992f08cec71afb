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

const PERCENT: &str = "percent";
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

#[cfg(test)]
mod tests {
    use super::*;

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
