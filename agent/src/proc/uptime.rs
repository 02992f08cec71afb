//! Parser for /proc/uptime: seconds since boot (`uptime_seconds`).
//!
//! The kernel prints one line, `10365.01 5974.08`: seconds since boot
//! (CLOCK_BOOTTIME, so time suspended counts) and the sum of every CPU's
//! idle time. Only the first is read; the second must be there, so a file
//! of another shape is an error rather than a misreading.
//!
//! Must never do I/O and never allocate unless it returns an error.

use super::{Fields, ParseError, first_line, malformed, parse_decimal};

const FILE: &str = "/proc/uptime";

/// Seconds since boot, to the hundredth the kernel prints.
pub fn parse(text: &[u8]) -> Result<f64, ParseError> {
    let mut fields = Fields::new(first_line(text));
    let mut next = |field: &'static str| -> Result<f64, ParseError> {
        let text = fields.required(FILE, 1, field)?;
        parse_decimal(text)
            .ok_or_else(|| malformed(FILE, Some(1), field, "seconds like 10365.01", text))
    };
    let uptime = next("uptime")?;
    next("idle")?;
    Ok(uptime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_field_is_the_value_and_the_idle_time_must_be_there() {
        assert_eq!(parse(b"10365.01 5974.08\n"), Ok(10365.01));
        assert_eq!(
            parse(b"10365.01\n").unwrap_err().to_string(),
            "/proc/uptime line 1: field idle: missing (line too short)"
        );
    }
}
