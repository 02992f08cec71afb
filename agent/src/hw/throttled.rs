//! The Raspberry Pi firmware's throttling state: its bits, the two kernel
//! attributes that expose it, and the agent's latch of the "has occurred"
//! bits.
//!
//! Where it comes from (Raspberry Pi kernels, 4.14 to 6.12 at least):
//! - hwmon `rpi_volt` (`drivers/hwmon/raspberrypi-hwmon.c`) asks the
//!   firmware for `GET_THROTTLED` every 2 s and exposes one bit of it as
//!   `in0_lcrit_alarm`: under-voltage seen since its previous poll. It asks
//!   the firmware to clear the sticky bits at each poll, so the firmware's
//!   own "since boot" bits only ever cover the last 2 s on such kernels.
//! - `get_throttled` on the firmware device
//!   (`drivers/firmware/raspberrypi.c`, e.g.
//!   `/sys/devices/platform/soc/soc:firmware/get_throttled`) prints the
//!   whole word that poll last got, as bare hex (`50005`). It is marked
//!   deprecated: its first read after boot logs one kernel warning
//!   ("deprecated, use hwmon sysfs instead").
//!
//! Must never do I/O; the latch is plain state.

use super::single_value;
use crate::proc::{ParseError, malformed};

/// Bit 0: under-voltage now (below about 4.63 V).
pub const UNDER_VOLTAGE_NOW: u32 = 1 << 0;
/// Bit 1: ARM frequency capped now.
pub const FREQ_CAPPED_NOW: u32 = 1 << 1;
/// Bit 2: throttled now.
pub const THROTTLED_NOW: u32 = 1 << 2;
/// Bit 3: soft temperature limit active now.
pub const SOFT_TEMP_LIMIT_NOW: u32 = 1 << 3;
/// Bits 16 to 19: the same four conditions, "has occurred" (sticky).
pub const OCCURRED_SHIFT: u32 = 16;
/// The four "now" bits.
pub const NOW_MASK: u32 = 0xf;
/// The four "has occurred" bits.
pub const OCCURRED_MASK: u32 = NOW_MASK << OCCURRED_SHIFT;

/// `in0_lcrit_alarm`: `0` or `1`.
pub fn parse_alarm(text: &str) -> Result<bool, ParseError> {
    match single_value(text) {
        "0" => Ok(false),
        "1" => Ok(true),
        other => Err(malformed(
            "/sys/class/hwmon/hwmon*/in0_lcrit_alarm",
            Some(1),
            "in0_lcrit_alarm",
            "0 or 1",
            other.as_bytes(),
        )),
    }
}

/// `get_throttled`: the firmware's word as bare hex (`50005`); a `0x`
/// prefix is accepted too. Bits outside the eight documented ones are kept.
pub fn parse_word(text: &str) -> Result<u32, ParseError> {
    let value = single_value(text);
    let digits = value.strip_prefix("0x").unwrap_or(value);
    let parsed =
        if !digits.is_empty() && digits.len() <= 8 && digits.bytes().all(|b| b.is_ascii_hexdigit())
        {
            u32::from_str_radix(digits, 16).ok()
        } else {
            None
        };
    parsed.ok_or_else(|| {
        malformed(
            "/sys/devices/platform/soc/soc:firmware/get_throttled",
            Some(1),
            "get_throttled",
            "a 32-bit hex word like 50005",
            value.as_bytes(),
        )
    })
}

/// The "has occurred" bits since the agent started: the firmware's sticky
/// bits are cleared every 2 s by `rpi_volt` (see the module docs), so the
/// agent keeps its own. A condition seen now also counts as occurred.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latch {
    occurred: u32,
}

impl Latch {
    /// Folds in a word just read and returns what the agent reports: the
    /// word's "now" bits as they are, and bits 16 to 19 set for every
    /// condition seen since the agent started.
    pub fn observe(&mut self, word: u32) -> u32 {
        self.occurred |= (word & OCCURRED_MASK) | ((word & NOW_MASK) << OCCURRED_SHIFT);
        (word & NOW_MASK) | self.occurred
    }

    /// Folds in the hwmon alarm (under-voltage since its last poll).
    pub fn observe_under_voltage(&mut self, alarm: bool) {
        if alarm {
            self.occurred |= UNDER_VOLTAGE_NOW << OCCURRED_SHIFT;
        }
    }

    /// Whether under-voltage was seen since the agent started.
    pub fn under_voltage_occurred(&self) -> bool {
        self.occurred & (UNDER_VOLTAGE_NOW << OCCURRED_SHIFT) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latch_keeps_what_occurred_and_reports_now_as_it_is() {
        let mut latch = Latch::default();
        assert_eq!(latch.observe(0), 0);
        // Under-voltage and throttled now (0x5): occurred bits follow.
        assert_eq!(latch.observe(0x5), 0x50005);
        // Gone now, and the firmware's sticky bits were cleared by rpi_volt:
        // the agent still remembers.
        assert_eq!(latch.observe(0), 0x50000);
        // A soft temperature limit the firmware saw between two reads.
        assert_eq!(latch.observe(0x80000), 0xd0000);
        assert!(latch.under_voltage_occurred());
        let mut fresh = Latch::default();
        fresh.observe_under_voltage(false);
        assert!(!fresh.under_voltage_occurred());
        fresh.observe_under_voltage(true);
        assert!(fresh.under_voltage_occurred());
    }
}
