//! `under_voltage` and `throttled_flags`: the Raspberry Pi's power and
//! throttling state, read from the kernel without spawning `vcgencmd`.
//!
//! Found once, at start (see `hw/throttled.rs` for what each file means):
//! - the hwmon device whose `name` is `rpi_volt`: its `in0_lcrit_alarm`
//!   gives `under_voltage` (1 when the firmware reported under-voltage in
//!   the driver's last 2 s poll);
//! - the firmware device's `get_throttled`, found through the driver's
//!   bound devices (`SYS_ROOT/bus/platform/drivers/raspberrypi-firmware/
//!   */get_throttled`, which covers the Pi 4's `soc:firmware` and the Pi
//!   5's longer device name alike): gives `throttled_flags`.
//!
//! Both are absent on boxes that are not Raspberry Pis. Not used: the
//! `/dev/vcio` mailbox `ioctl` (needs `unsafe` code, the `video` group the
//! hardened unit does not grant, and a firmware round trip per tick), and
//! `vcgencmd` (a process per tick). Must never block on anything but the
//! kept-open reads.

use std::path::{Path, PathBuf};

use crate::hw::throttled::{self, Latch};
use crate::source::{Source, text};

/// The two Pi attributes read every tick, where they exist.
#[derive(Debug)]
pub struct Throttling {
    alarm: Option<Source>,
    firmware: Option<Source>,
    latch: Latch,
}

/// What one tick found.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ThrottlingReading {
    /// `in0_lcrit_alarm` as 0 or 1.
    pub under_voltage: Option<f64>,
    /// The firmware's word with the agent's latched "has occurred" bits.
    pub throttled_flags: Option<f64>,
}

impl Throttling {
    /// Looks for `rpi_volt` and the firmware's `get_throttled` under
    /// `sys_root`; neither found is not an error.
    pub fn open(sys_root: &Path) -> Throttling {
        let alarm = find_rpi_volt(sys_root).map(Source::attribute);
        let firmware = find_get_throttled(sys_root).map(Source::attribute);
        for (what, source) in [("rpi_volt alarm", &alarm), ("get_throttled", &firmware)] {
            if let Some(s) = source {
                log::info!(
                    "reading the Raspberry Pi {what} from {}",
                    s.path().display()
                );
            }
        }
        Throttling {
            alarm,
            firmware,
            latch: Latch::default(),
        }
    }

    /// This tick's values.
    pub fn sample(&mut self, parse_errors: &mut u32) -> ThrottlingReading {
        let alarm = self
            .alarm
            .as_mut()
            .and_then(|s| s.read_parsed(text(throttled::parse_alarm), parse_errors));
        if let Some(alarm) = alarm {
            self.latch.observe_under_voltage(alarm);
        }
        let word = self
            .firmware
            .as_mut()
            .and_then(|s| s.read_parsed(text(throttled::parse_word), parse_errors));
        ThrottlingReading {
            under_voltage: alarm.map(|a| if a { 1.0 } else { 0.0 }),
            throttled_flags: word.map(|w| f64::from(self.latch.observe(w))),
        }
    }

    /// The files read each tick (none, one or two).
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.alarm.iter().chain(&self.firmware).map(Source::path)
    }
}

/// `SYS_ROOT/class/hwmon/hwmon*/in0_lcrit_alarm` of the device named
/// `rpi_volt`.
fn find_rpi_volt(sys_root: &Path) -> Option<PathBuf> {
    let dir = sys_root.join("class/hwmon");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    names.sort();
    names.into_iter().map(|n| dir.join(n)).find_map(|hwmon| {
        let name = std::fs::read_to_string(hwmon.join("name")).ok()?;
        (name.trim_end() == "rpi_volt").then(|| hwmon.join("in0_lcrit_alarm"))
    })
}

/// The bound firmware device's `get_throttled`.
fn find_get_throttled(sys_root: &Path) -> Option<PathBuf> {
    let driver = sys_root.join("bus/platform/drivers/raspberrypi-firmware");
    let mut names: Vec<_> = std::fs::read_dir(&driver)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| driver.join(n).join("get_throttled"))
        .find(|path| path.exists())
}
