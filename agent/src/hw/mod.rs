//! Pure parsers for the hardware-health attributes the agent reads from
//! /sys: thermal zone temperatures, the Raspberry Pi's under-voltage alarm
//! (hwmon `rpi_volt`) and its firmware's throttling word.
//!
//! Each takes the attribute's text and returns a typed value or a
//! [`ParseError`](crate::proc::ParseError) naming the attribute. Must never
//! do I/O and never allocate unless it returns an error; finding the files
//! is the collector's job (`thermal.rs`, `throttling.rs`).

pub mod thermal;
pub mod throttled;

/// The value of a one-value sysfs attribute: its first line, which must be
/// its only content but for the newline the kernel adds.
fn single_value(text: &str) -> &str {
    text.strip_suffix('\n').unwrap_or(text)
}
