//! Wall-clock helpers shared by the agent, the server and monitorctl:
//! milliseconds since the Unix epoch, RFC 3339 formatting, and the
//! human durations that flags take ("500ms", "10m", "7d", "1h30m").
//!
//! No calendar crate: the civil-date conversion is Howard Hinnant's
//! `civil_from_days`, exact for every date a monitor will meet.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch by the wall clock; negative before 1970
/// (a Pi without a real-time clock can boot there).
pub fn now_unix_ms() -> i64 {
    let real = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    };
    real.saturating_add(test_clock_offset_ms())
}

/// For tests only: `MONITOR_TEST_CLOCK_OFFSET_MS` (whole milliseconds, may
/// be negative) shifts this process's wall clock, so an end-to-end test can
/// run an agent whose clock is wrong without touching the machine's clock.
/// Read once; unset or unreadable means no shift. Never set it in
/// production.
pub const TEST_CLOCK_OFFSET_ENV: &str = "MONITOR_TEST_CLOCK_OFFSET_MS";

fn test_clock_offset_ms() -> i64 {
    static OFFSET_MS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET_MS.get_or_init(|| {
        std::env::var(TEST_CLOCK_OFFSET_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// Formats milliseconds since the epoch as RFC 3339 UTC with milliseconds,
/// e.g. `2026-11-25T12:00:00.123Z`.
pub fn format_rfc3339_ms(unix_ms: i64) -> String {
    Rfc3339(unix_ms).to_string()
}

/// Display adapter for [`format_rfc3339_ms`] that writes without an
/// intermediate allocation.
#[derive(Clone, Copy, Debug)]
pub struct Rfc3339(pub i64);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.rem_euclid(1000);
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        )
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A duration flag or variable that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadDuration {
    pub input: String,
    pub reason: &'static str,
}

impl fmt::Display for BadDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "expected a duration like 500ms, 30s, 10m, 2h or 7d, got '{}' ({})",
            self.input, self.reason
        )
    }
}

impl std::error::Error for BadDuration {}

/// Parses "1h30m", "10m", "7d", "2.5s", "500ms". A bare number is seconds.
/// Zero is allowed here; callers that need a positive value check it.
pub fn parse_duration(input: &str) -> Result<Duration, BadDuration> {
    let bad = |reason| BadDuration {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if let Ok(secs) = s.parse::<f64>() {
        return seconds(secs).ok_or_else(|| bad("out of range"));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("missing unit"))?;
        if num_len == 0 {
            return Err(bad("expected a number"));
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad("bad number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 604_800.0,
            _ => return Err(bad("unknown unit")),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    seconds(total).ok_or_else(|| bad("out of range"))
}

fn seconds(secs: f64) -> Option<Duration> {
    if (0.0..1e12).contains(&secs) {
        Some(Duration::from_secs_f64(secs))
    } else {
        None
    }
}

/// Formats a duration compactly for people: "850ms", "12s", "3m04s", "2h05m", "3d04h".
pub fn format_duration_short(d: Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        match s % 60 {
            0 => format!("{}m", s / 60),
            r => format!("{}m{r:02}s", s / 60),
        }
    } else if s < 86_400 {
        match (s / 60) % 60 {
            0 => format!("{}h", s / 3600),
            r => format!("{}h{r:02}m", s / 3600),
        }
    } else {
        match (s / 3600) % 24 {
            0 => format!("{}d", s / 86_400),
            r => format!("{}d{r:02}h", s / 86_400),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_fmt(ms: i64, expected: &str) {
        assert_eq!(format_rfc3339_ms(ms), expected, "for {ms}");
    }

    #[test]
    fn rfc3339() {
        check_fmt(0, "1970-01-01T00:00:00.000Z");
        check_fmt(1, "1970-01-01T00:00:00.001Z");
        check_fmt(-1, "1969-12-31T23:59:59.999Z");
        check_fmt(951_782_400_000, "2000-02-29T00:00:00.000Z");
        check_fmt(1_795_608_000_123, "2026-11-25T12:00:00.123Z");
        check_fmt(4_102_444_799_999, "2099-12-31T23:59:59.999Z");
    }

    fn check_dur(input: &str, expected: Option<Duration>) {
        assert_eq!(parse_duration(input).ok(), expected, "for {input:?}");
    }

    #[test]
    fn durations() {
        check_dur("5", Some(Duration::from_secs(5)));
        check_dur("0.5", Some(Duration::from_millis(500)));
        check_dur("500ms", Some(Duration::from_millis(500)));
        check_dur("10m", Some(Duration::from_secs(600)));
        check_dur("1h30m", Some(Duration::from_secs(5400)));
        check_dur("7d", Some(Duration::from_secs(7 * 86_400)));
        check_dur("2.5s", Some(Duration::from_millis(2500)));
        check_dur("", None);
        check_dur("abc", None);
        check_dur("10x", None);
        check_dur("-5", None);
        check_dur("m", None);
        check_dur("NaN", None);
        check_dur("1e300", None);
    }

    #[test]
    fn bad_duration_message_names_the_input() {
        let e = parse_duration("ten").unwrap_err();
        assert!(e.to_string().contains("got 'ten'"), "{e}");
    }

    #[test]
    fn short_format() {
        assert_eq!(format_duration_short(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration_short(Duration::from_secs(184)), "3m04s");
        assert_eq!(format_duration_short(Duration::from_secs(7500)), "2h05m");
        assert_eq!(format_duration_short(Duration::from_secs(60)), "1m");
        assert_eq!(format_duration_short(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration_short(Duration::from_secs(90_000)), "1d01h");
    }
}
