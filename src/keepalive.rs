//! HTTP/2 keepalive settings, the same on both ends of a connection.
//!
//! Pings every [`KEEPALIVE_INTERVAL`], also while idle, and a peer that has
//! not answered within [`KEEPALIVE_TIMEOUT`] is dead: a frozen server or an
//! unplugged Pi is noticed within 40 s by the other side.
//!
//! For tests only, `MONITOR_KEEPALIVE=2s` (a duration from 100ms to 30s)
//! sets both the interval and the timeout, so fault tests notice a frozen
//! peer in seconds. It is a test knob, not configuration: an unusable value
//! is logged and ignored rather than refused.

use std::time::Duration;

pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The test knob's variable.
pub const KEEPALIVE_ENV: &str = "MONITOR_KEEPALIVE";

/// The keepalive (interval, timeout) for a value of [`KEEPALIVE_ENV`]: the
/// defaults when unset or unusable.
pub fn keepalive(env_value: Option<&str>) -> (Duration, Duration) {
    let defaults = (KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT);
    let Some(raw) = env_value else {
        return defaults;
    };
    match crate::time::parse_duration(raw) {
        Ok(d) if d >= Duration::from_millis(100) && d <= KEEPALIVE_INTERVAL => (d, d),
        _ => {
            log::warn!(
                "{KEEPALIVE_ENV}: expected a duration from 100ms to 30s, got '{raw}'; \
                 keeping the defaults"
            );
            defaults
        }
    }
}

/// [`keepalive`] for this process's environment.
pub fn from_env() -> (Duration, Duration) {
    keepalive(std::env::var(KEEPALIVE_ENV).ok().as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(env_value: Option<&str>, expected: (u64, u64)) {
        let (interval, timeout) = keepalive(env_value);
        assert_eq!(
            (interval.as_millis() as u64, timeout.as_millis() as u64),
            expected,
            "{env_value:?}"
        );
    }

    #[test]
    fn keepalive_test_knob() {
        check(None, (30_000, 10_000));
        check(Some("2s"), (2_000, 2_000));
        check(Some("500ms"), (500, 500));
        check(Some("100ms"), (100, 100));
        check(Some("50ms"), (30_000, 10_000));
        check(Some("0"), (30_000, 10_000));
        check(Some("5m"), (30_000, 10_000));
        check(Some("soon"), (30_000, 10_000));
    }
}
