//! The six metrics every agent reports, and their names on the wire.

use std::fmt;
use std::str::FromStr;

/// A metric the agent computes from the kernel's counters.
///
/// The wire carries the name as a string so that a newer agent's metric is
/// a clear rejection at an older server, not a silent misreading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Busy share of all CPU time over the interval, 0 to 100.
    CpuPercent,
    /// (MemTotal − MemAvailable) / MemTotal, 0 to 100.
    MemPercent,
    /// KiB/s read from whole physical disks.
    DiskReadKbps,
    /// KiB/s written to whole physical disks.
    DiskWriteKbps,
    /// KiB/s received on physical interfaces.
    NetInKbps,
    /// KiB/s transmitted on physical interfaces.
    NetOutKbps,
}

impl Metric {
    /// Every metric, in the order the agent emits them.
    pub const ALL: [Metric; 6] = [
        Metric::CpuPercent,
        Metric::MemPercent,
        Metric::DiskReadKbps,
        Metric::DiskWriteKbps,
        Metric::NetInKbps,
        Metric::NetOutKbps,
    ];

    /// The name used on the wire, in the store and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Metric::CpuPercent => "cpu_percent",
            Metric::MemPercent => "mem_percent",
            Metric::DiskReadKbps => "disk_read_kbps",
            Metric::DiskWriteKbps => "disk_write_kbps",
            Metric::NetInKbps => "net_in_kbps",
            Metric::NetOutKbps => "net_out_kbps",
        }
    }

    /// Whether values are bounded to 0..=100.
    pub const fn is_percent(self) -> bool {
        matches!(self, Metric::CpuPercent | Metric::MemPercent)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metric name that is not one of [`Metric::ALL`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownMetric(pub String);

impl fmt::Display for UnknownMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown metric '{}' (known: ", self.0)?;
        for (i, m) in Metric::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(m.name())?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for UnknownMetric {}

impl FromStr for Metric {
    type Err = UnknownMetric;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownMetric(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in Metric::ALL {
            assert_eq!(m.name().parse::<Metric>(), Ok(m));
        }
    }

    #[test]
    fn unknown_name_is_an_error_listing_the_known_ones() {
        let err = "cpu".parse::<Metric>().unwrap_err();
        assert_eq!(err, UnknownMetric("cpu".into()));
        assert!(err.to_string().contains("cpu_percent, mem_percent"));
    }
}
