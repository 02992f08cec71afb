//! How a command ended, in the operator's words: the outcome's name for
//! the history (the contract's [`Outcome::name`], or "pending") and the
//! one-line result `exec` prints per host.
//!
//! Names come from `monitor::command`, never from a local copy, so the
//! history here reads the same as the store and the server.

use std::fmt::Write as _;
use std::time::Duration;

use monitor::command::Outcome;
use monitor::pb;
use monitor::text::Escaped;
use monitor::time::format_duration_short;

use crate::term::MESSAGE_MAX_BYTES;

/// The outcome's name, "pending" while the host has not answered (or for
/// a number this version does not know).
pub fn name(code: i32) -> &'static str {
    Outcome::from_pb(code).map_or("pending", Outcome::name)
}

/// Whether the command succeeded on the host, and the words for it, e.g.
/// "exit 3 in 1s" or "rejected: 'rm' is not on the allowlist" (the
/// message escaped: it comes from the agent).
pub fn result_text(f: &pb::Finished) -> (bool, String) {
    let took = format_duration_short(Duration::from_millis(f.duration_ms));
    let message = Escaped::with_limit(&f.message, MESSAGE_MAX_BYTES);
    let mut extra = String::new();
    if f.stdout_truncated || f.stderr_truncated {
        let _ = write!(
            extra,
            " (output truncated: {} bytes stdout, {} bytes stderr)",
            f.stdout_bytes, f.stderr_bytes
        );
    }
    match Outcome::from_pb(f.outcome) {
        Some(Outcome::Exited) => match (f.exit_code, f.signal) {
            (Some(0), _) => (true, format!("exit 0 in {took}{extra}")),
            (Some(code), _) => (false, format!("exit {code} in {took}{extra}")),
            (None, Some(sig)) => (false, format!("killed by signal {sig} after {took}{extra}")),
            (None, None) => (false, format!("ended in {took}{extra}")),
        },
        Some(Outcome::TimedOut) => (false, format!("timed out after {took}, killed{extra}")),
        Some(Outcome::Cancelled) => (false, format!("cancelled after {took}{extra}")),
        Some(Outcome::FailedToStart) => (false, format!("failed to start: {message}")),
        Some(Outcome::Rejected) => (false, format!("rejected: {message}")),
        Some(Outcome::LostConnection) => (false, format!("lost connection: {message}")),
        Some(Outcome::Unreachable) => (false, format!("unreachable: {message}")),
        None => (false, format!("unknown outcome: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(f: pb::Finished, expected: (bool, &str)) {
        let (ok, text) = result_text(&f);
        assert_eq!((ok, text.as_str()), expected);
    }

    #[test]
    fn outcomes_read_well() {
        check(
            pb::Finished {
                outcome: pb::Outcome::Exited as i32,
                exit_code: Some(3),
                duration_ms: 1500,
                ..Default::default()
            },
            (false, "exit 3 in 1s"),
        );
        check(
            pb::Finished {
                outcome: pb::Outcome::Exited as i32,
                exit_code: Some(0),
                duration_ms: 20,
                stdout_truncated: true,
                stdout_bytes: 200_000,
                stderr_bytes: 5,
                ..Default::default()
            },
            (
                true,
                "exit 0 in 20ms (output truncated: 200000 bytes stdout, 5 bytes stderr)",
            ),
        );
        check(
            pb::Finished {
                outcome: pb::Outcome::Rejected as i32,
                message: "'rm' is not on the allowlist".into(),
                ..Default::default()
            },
            (false, "rejected: 'rm' is not on the allowlist"),
        );
        check(
            pb::Finished {
                outcome: pb::Outcome::Unspecified as i32,
                message: "?".into(),
                ..Default::default()
            },
            (false, "unknown outcome: ?"),
        );
    }

    #[test]
    fn messages_from_the_agent_are_escaped() {
        check(
            pb::Finished {
                outcome: pb::Outcome::FailedToStart as i32,
                message: "no\x1b]0;owned\x07\nsuch".into(),
                ..Default::default()
            },
            (false, "failed to start: no\\x1b]0;owned\\x07\\nsuch"),
        );
    }

    #[test]
    fn names_come_from_the_contract() {
        assert_eq!(name(pb::Outcome::TimedOut as i32), "timed_out");
        assert_eq!(name(pb::Outcome::Unspecified as i32), "pending");
        assert_eq!(name(99), "pending");
    }
}
