//! Parser for /proc/loadavg: the one-minute load average (`load1`).
//!
//! The kernel prints one line, `0.52 0.58 0.59 1/467 12345`: the 1, 5 and
//! 15 minute averages of runnable plus uninterruptible tasks, then
//! running/total scheduling entities and the last PID. Only the first field
//! is read; the rest must merely be there, so that a file of another shape
//! is an error rather than a misreading.
//!
//! Must never do I/O and never allocate unless it returns an error.

use super::{Fields, ParseError, find_byte, first_line, malformed, parse_decimal};

const FILE: &str = "/proc/loadavg";

/// The 1-minute load average: runnable plus uninterruptible (D state)
/// tasks, exponentially averaged over one minute. Not a percentage: a
/// 4-core Pi is saturated at 4.0.
pub fn parse(text: &[u8]) -> Result<f64, ParseError> {
    let mut fields = Fields::new(first_line(text));
    let load1 = fields.required(FILE, 1, "load1")?;
    let value = parse_decimal(load1)
        .ok_or_else(|| malformed(FILE, Some(1), "load1", "a decimal like 0.52", load1))?;
    for field in ["load5", "load15", "running/total"] {
        let text = fields.required(FILE, 1, field)?;
        let shaped = if field == "running/total" {
            find_byte(b'/', text).is_some()
        } else {
            parse_decimal(text).is_some()
        };
        if !shaped {
            let expected = if field == "running/total" {
                "running/total like 1/467"
            } else {
                "a decimal like 0.52"
            };
            return Err(malformed(FILE, Some(1), field, expected, text));
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_field_is_the_value_and_the_rest_must_have_their_shape() {
        assert_eq!(parse(b"0.52 0.58 0.59 1/467 12345\n"), Ok(0.52));
        assert_eq!(parse(b"12.25 3.00 1.00 9/100 7"), Ok(12.25));
        assert_eq!(parse(b"0.52 0.58 0.59 1/467 12345\nmore\n"), Ok(0.52));
        // A field of the wrong shape is named with what it should look like.
        let err = |text: &str| parse(text.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            err("0.52 0.58 0.59 1467 12345"),
            "/proc/loadavg line 1: field running/total: expected running/total like 1/467, \
             got '1467'"
        );
        assert_eq!(
            err("0.52 x 0.59 1/467 12345"),
            "/proc/loadavg line 1: field load5: expected a decimal like 0.52, got 'x'"
        );
    }
}
