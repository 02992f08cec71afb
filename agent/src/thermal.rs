//! `temp_celsius`: the hottest thermal zone, or the one the operator named.
//!
//! Zones are found once, at start, under `SYS_ROOT/class/thermal/
//! thermal_zone*`; each zone's `temp` stays open and is re-read every tick
//! (one `pread`: a sysfs attribute is produced whole). A box without zones
//! (most VMs) reports no temperature at all, never 0. A zone whose read
//! fails this tick (some drivers answer ENODATA while their device sleeps)
//! is left out of this tick's maximum.
//!
//! Must never block on anything but these reads. Reading a zone runs its
//! driver's `get_temp`: a register read on a Raspberry Pi's SoC sensor, but
//! an ACPI method on some PCs, which is why a zone can be named instead.

use std::path::Path;

use crate::hw::thermal;
use crate::source::{Source, text};

/// Which zones count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZoneChoice {
    /// Every zone; the hottest is reported.
    Hottest,
    /// Only the zone with this directory name (`thermal_zone0`) or `type`
    /// (`cpu-thermal`).
    Named(String),
}

/// The thermal zones read every tick.
#[derive(Debug)]
pub struct Thermal {
    zones: Vec<Source>,
}

impl Thermal {
    /// Finds the zones under `sys_root` (reading each one's `type` once when
    /// a zone is named). None found is not an error: the metric is absent.
    pub fn open(sys_root: &Path, choice: &ZoneChoice) -> Thermal {
        let dir = sys_root.join("class/thermal");
        let mut names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("thermal_zone"))
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort_by_key(|n| (n.len(), n.clone()));
        let zones: Vec<Source> = names
            .into_iter()
            .filter(|name| match choice {
                ZoneChoice::Hottest => true,
                ZoneChoice::Named(wanted) => {
                    name == wanted
                        || std::fs::read_to_string(dir.join(name).join("type"))
                            .is_ok_and(|t| t.trim_end() == wanted)
                }
            })
            .map(|name| Source::attribute(dir.join(name).join("temp")))
            .collect();
        match (choice, zones.len()) {
            (ZoneChoice::Named(wanted), 0) => log::warn!(
                "no thermal zone named {wanted} under {}: temp_celsius is not reported",
                dir.display()
            ),
            (_, 0) => log::debug!("no thermal zone under {}", dir.display()),
            (_, n) => log::debug!("{n} thermal zone(s) under {}", dir.display()),
        }
        Thermal { zones }
    }

    /// The hottest zone's temperature this tick, °C; `None` when no zone
    /// could be read.
    pub fn sample(&mut self, parse_errors: &mut u32) -> Option<f64> {
        let mut hottest: Option<f64> = None;
        for zone in &mut self.zones {
            if let Some(celsius) = zone.read_parsed(text(thermal::parse_celsius), parse_errors) {
                hottest = Some(hottest.map_or(celsius, |h| h.max(celsius)));
            }
        }
        hottest
    }

    /// The `temp` files read each tick.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.zones.iter().map(Source::path)
    }
}
