//! The health metrics of issue 14 on the wire: their names, their value
//! ranges and, for those with one value per file system, what their
//! `device` label names.
//!
//! They travel in `Batch.health_samples`, apart from the six of
//! [`crate::metric::Metric`], so that a server older than them ignores them
//! (an unknown field) instead of refusing the batch for an unknown metric
//! name. A new health metric is one line of [`health_table!`] below; the
//! validation in `wire.rs` reads its range and label from here. Must never
//! hold logic beyond lookups.

use std::fmt;
use std::str::FromStr;

/// What the wire knows of one health metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HealthSpec {
    /// The name on the wire, in the store and on the command line.
    pub name: &'static str,
    /// Smallest value accepted (inclusive).
    pub min: f64,
    /// Largest value accepted (inclusive).
    pub max: f64,
    /// What `Sample.device` names for this metric (`Some("mountpoint")`):
    /// then required, else it must be empty.
    pub label: Option<&'static str>,
}

macro_rules! health_table {
    ($( $variant:ident { name: $name:literal, min: $min:expr, max: $max:expr,
        label: $label:expr $(,)? } )*) => {
        /// A health metric (see [`HealthSpec`] for each one's rules).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum HealthMetric { $( $variant ),* }

        impl HealthMetric {
            /// Every health metric, in table order.
            pub const ALL: [HealthMetric; [$( stringify!($variant) ),*].len()] =
                [$( HealthMetric::$variant ),*];

            /// This metric's line of the table.
            pub const fn spec(self) -> &'static HealthSpec {
                &HEALTH_TABLE[self as usize]
            }
        }

        /// The table itself, indexed by [`HealthMetric`].
        pub const HEALTH_TABLE: [HealthSpec; HealthMetric::ALL.len()] = [$(
            HealthSpec { name: $name, min: $min, max: $max, label: $label }
        ),*];
    };
}

health_table! {
    // A thermal zone's sensor range: below absolute zero or above 1000 °C
    // is a broken driver.
    TempCelsius { name: "temp_celsius", min: -273.15, max: 1000.0, label: None }
    UnderVoltage { name: "under_voltage", min: 0.0, max: 1.0, label: None }
    // The firmware's 32-bit word.
    ThrottledFlags { name: "throttled_flags", min: 0.0, max: 4_294_967_295.0, label: None }
    // Runnable plus uninterruptible tasks: the kernel's pid limit is 2^22.
    Load1 { name: "load1", min: 0.0, max: 4_194_304.0, label: None }
    // A century.
    UptimeSeconds { name: "uptime_seconds", min: 0.0, max: 3_155_760_000.0, label: None }
    SwapPercent { name: "swap_percent", min: 0.0, max: 100.0, label: None }
    FsUsedPercent { name: "fs_used_percent", min: 0.0, max: 100.0, label: Some("mountpoint") }
    RootInodesUsedPercent { name: "root_inodes_used_percent", min: 0.0, max: 100.0, label: None }
}

/// One condition of the Raspberry Pi firmware's throttling word
/// (`throttled_flags`): bit [`ThrottleFlag::bit`] while it holds now, bit
/// `bit + THROTTLE_OCCURRED_SHIFT` once it held since the agent started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleFlag {
    pub bit: u32,
    /// Its name (a Prometheus label value, a JSON key).
    pub name: &'static str,
    /// Its letter in a terminal's compact column.
    pub letter: char,
}

/// The four conditions, in bit order.
pub const THROTTLE_FLAGS: [ThrottleFlag; 4] = [
    ThrottleFlag {
        bit: 0,
        name: "under_voltage",
        letter: 'U',
    },
    ThrottleFlag {
        bit: 1,
        name: "arm_frequency_capped",
        letter: 'F',
    },
    ThrottleFlag {
        bit: 2,
        name: "throttled",
        letter: 'T',
    },
    ThrottleFlag {
        bit: 3,
        name: "soft_temperature_limit",
        letter: 'S',
    },
];

/// From a condition's "now" bit to its "since the agent started" bit.
pub const THROTTLE_OCCURRED_SHIFT: u32 = 16;

impl ThrottleFlag {
    /// Whether the condition holds in `word` now, or (`occurred`) held
    /// since the agent started.
    pub fn is_set(self, word: f64, occurred: bool) -> bool {
        let shift = if occurred { THROTTLE_OCCURRED_SHIFT } else { 0 };
        // The word is validated as 0..=u32::MAX on the wire.
        (word as u64 >> (self.bit + shift)) & 1 == 1
    }
}

impl HealthMetric {
    /// The name used on the wire (see [`HealthSpec::name`]).
    pub const fn name(self) -> &'static str {
        self.spec().name
    }
}

impl fmt::Display for HealthMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not one of [`HealthMetric::ALL`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownHealthMetric;

impl FromStr for HealthMetric {
    type Err = UnknownHealthMetric;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HealthMetric::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or(UnknownHealthMetric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::Metric;

    #[test]
    fn names_round_trip_and_are_unique_across_both_sets() {
        for m in HealthMetric::ALL {
            assert_eq!(m.name().parse::<HealthMetric>(), Ok(m));
            assert!(m.name().parse::<Metric>().is_err(), "{m}");
            assert!(m.spec().min < m.spec().max, "{m}");
        }
        let mut names: Vec<_> = HEALTH_TABLE.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), HealthMetric::ALL.len());
        assert_eq!(
            "cpu_percent".parse::<HealthMetric>(),
            Err(UnknownHealthMetric)
        );
    }
}
