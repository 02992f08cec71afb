//! What the binaries' configurations share: a value taken from a flag or,
//! failing that, from its environment variable, that remembers where it
//! came from, so a bad value is an error naming the flag or the variable
//! ("MONITOR_INTERVAL: expected …, got 'abc'") and the binary exits 2.
//!
//! The environment is passed in as a function, so tests never touch the
//! process environment.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::time::{format_duration_short, parse_duration};

/// The process environment as a function, for [`pick`].
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A flag or variable with a value the program cannot use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// "--interval" or "MONITOR_INTERVAL" (or a description of the default
    /// that could not be used, e.g. "hostname").
    pub source: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A raw value and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raw {
    /// "--flag-name" or "VARIABLE".
    pub source: String,
    pub value: String,
}

/// The flag's value if it was given, else the environment variable's.
pub fn pick(flag: Option<String>, flag_name: &str, var: &str, env: Env<'_>) -> Option<Raw> {
    match flag {
        Some(value) => Some(Raw {
            source: format!("--{flag_name}"),
            value,
        }),
        None => env(var).map(|value| Raw {
            source: var.to_owned(),
            value,
        }),
    }
}

impl Raw {
    /// "SOURCE: expected EXPECTED, got 'VALUE'".
    pub fn error(&self, expected: &str) -> ConfigError {
        ConfigError {
            source: self.source.clone(),
            message: format!(
                "expected {expected}, got '{}'",
                crate::text::Escaped::capped(&self.value)
            ),
        }
    }

    /// A duration like `5`, `2.5`, `500ms`, `30s`, `5m`, `7d`, from `min`
    /// to `max` inclusive.
    pub fn duration(&self, min: Duration, max: Duration) -> Result<Duration, ConfigError> {
        match parse_duration(&self.value) {
            Ok(d) if d >= min && d <= max => Ok(d),
            Ok(_) => Err(self.error(&format!(
                "a duration from {} to {}",
                format_duration_short(min),
                format_duration_short(max)
            ))),
            Err(_) => Err(self.error("a duration like 5, 2.5, 500ms, 30s or 5m")),
        }
    }

    /// A whole number from `min` to `max` inclusive.
    pub fn count(&self, min: u64, max: u64) -> Result<u64, ConfigError> {
        match self.value.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.error(&format!("a whole number from {min} to {max}"))),
        }
    }

    /// `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off`/empty.
    pub fn bool(&self) -> Result<bool, ConfigError> {
        match self.value.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            _ => Err(self.error("1/true/yes or 0/false/no")),
        }
    }

    /// A log level name, any case.
    pub fn log_level(&self) -> Result<log::LevelFilter, ConfigError> {
        log::LevelFilter::from_str(self.value.trim())
            .map_err(|_| self.error("error, warn, info, debug, trace or off"))
    }

    /// An IP address and port, like `0.0.0.0:50051` or `[::1]:50051`.
    pub fn socket_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.value
            .trim()
            .parse()
            .map_err(|_| self.error("an address like 0.0.0.0:50051 or [::1]:50051"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(value: &str) -> Raw {
        Raw {
            source: "X".into(),
            value: value.into(),
        }
    }

    #[test]
    fn the_flag_wins_over_the_variable() {
        let env = |k: &str| (k == "V").then(|| "env".to_owned());
        let flag = pick(Some("flag".into()), "f", "V", &env).unwrap();
        assert_eq!((flag.source.as_str(), flag.value.as_str()), ("--f", "flag"));
        let var = pick(None, "f", "V", &env).unwrap();
        assert_eq!((var.source.as_str(), var.value.as_str()), ("V", "env"));
        assert_eq!(pick(None, "f", "W", &env), None);
    }

    #[test]
    fn values_parse_or_name_the_rule() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(86_400));
        assert_eq!(
            raw("1.5").duration(min, max),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(raw("100ms").duration(min, max), Ok(min));
        assert_eq!(raw("1d").duration(min, max), Ok(max));
        assert_eq!(
            raw("99ms").duration(min, max).unwrap_err().to_string(),
            "X: expected a duration from 100ms to 1d, got '99ms'"
        );
        assert_eq!(
            raw("abc").duration(min, max).unwrap_err().to_string(),
            "X: expected a duration like 5, 2.5, 500ms, 30s or 5m, got 'abc'"
        );
        assert_eq!(raw(" 7 ").count(1, 7), Ok(7));
        assert_eq!(
            raw("8").count(1, 7).unwrap_err().to_string(),
            "X: expected a whole number from 1 to 7, got '8'"
        );
        assert_eq!(raw("Yes").bool(), Ok(true));
        assert_eq!(raw("").bool(), Ok(false));
        assert!(raw("maybe").bool().is_err());
        assert_eq!(raw("DEBUG").log_level(), Ok(log::LevelFilter::Debug));
        assert_eq!(raw("off").log_level(), Ok(log::LevelFilter::Off));
        assert_eq!(
            raw("loud").log_level().unwrap_err().to_string(),
            "X: expected error, warn, info, debug, trace or off, got 'loud'"
        );
        assert_eq!(
            raw("[::1]:1").socket_addr(),
            Ok(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 1)))
        );
        assert!(raw("nowhere").socket_addr().is_err());
        // A value with a newline cannot forge a second line of the error.
        assert_eq!(
            raw("a\nb").count(1, 2).unwrap_err().to_string(),
            "X: expected a whole number from 1 to 2, got 'a\\nb'"
        );
    }
}
