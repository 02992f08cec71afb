//! Parser for a thermal zone's `temp` attribute
//! (`/sys/class/thermal/thermal_zone*/temp`): a signed decimal in
//! millidegrees Celsius (`48686` is 48.686 °C), per the kernel's
//! Documentation/driver-api/thermal/sysfs-api.rst.
//!
//! Must never do I/O and never allocate unless it returns an error.

use super::single_value;
use crate::proc::{ParseError, malformed, parse_u64};

const FILE: &str = "/sys/class/thermal/thermal_zone*/temp";

/// Degrees Celsius from the attribute's millidegrees. Negative values are
/// real (a Pi outdoors in winter); anything but an optional `-` and digits
/// fitting 64 bits is an error.
pub fn parse_celsius(text: &str) -> Result<f64, ParseError> {
    let value = single_value(text);
    let (negative, digits) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let millidegrees = parse_u64(digits.as_bytes())
        .and_then(|m| i64::try_from(m).ok())
        .ok_or_else(|| {
            malformed(
                FILE,
                Some(1),
                "temp",
                "millidegrees like 48686",
                value.as_bytes(),
            )
        })?;
    let signed = if negative {
        -millidegrees
    } else {
        millidegrees
    };
    Ok(signed as f64 / 1000.0)
}
