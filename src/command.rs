//! The command contract: what an operator's command may look like, how it
//! ended, and the conversions to and from the wire, in one place.
//!
//! monitorctl checks a command before sending it, the server checks it
//! again before fanning it out, the agent checks it a last time before its
//! policy: all three use the limits here, so a command one accepts the
//! others accept too. An outcome is named once ([`Outcome::name`], which is
//! also what the store writes and `monitorctl history --json` prints) and
//! converted to and from protobuf only by [`Outcome::to_pb`] /
//! [`Outcome::from_pb`] and [`Finished::to_pb`] / [`Finished::from_pb`].

use std::fmt;
use std::time::Duration;

use crate::pb;

/// Commands the agent runs itself, without starting a process.
pub const BUILTINS: [&str; 4] = ["ping", "info", "set-interval", "collect-now"];
/// Most argv entries one command may have, program name included.
pub const MAX_ARGS: usize = 64;
/// Most bytes of all argv entries together.
pub const MAX_ARGV_BYTES: usize = 8 * 1024;
/// Longest command id.
pub const MAX_ID_BYTES: usize = 128;
/// Timeout when the operator names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Built-ins an agent runs without an operator's signature: they read,
/// and change nothing.
pub const UNSIGNED_BUILTINS: [&str; 2] = ["ping", "info"];
/// Longest a signed grant may be valid for (from issue to expiry).
pub const MAX_GRANT_TTL: Duration = Duration::from_secs(600);
/// How long monitorctl makes its grants valid for.
pub const DEFAULT_GRANT_TTL: Duration = Duration::from_secs(300);
/// How far ahead of the agent's clock a grant's issue time may be (the
/// operator's clock and the agent's are not the same clock).
pub const MAX_GRANT_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Longest timeout an operator may ask for (each agent caps it further).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Why an argv is not a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgvError {
    /// No program name, or an empty one.
    Empty,
    /// More than [`MAX_ARGS`] entries.
    TooMany { args: usize },
    /// More than [`MAX_ARGV_BYTES`] bytes in all.
    TooLong { bytes: usize },
}

impl fmt::Display for ArgvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgvError::Empty => f.write_str("argv: empty command"),
            ArgvError::TooMany { args } => {
                write!(f, "argv: {args} arguments (at most {MAX_ARGS})")
            }
            ArgvError::TooLong { bytes } => {
                write!(f, "argv: {bytes} bytes (at most {MAX_ARGV_BYTES})")
            }
        }
    }
}

impl std::error::Error for ArgvError {}

/// Checks the limits every side applies to a command line.
pub fn check_argv<S: AsRef<str>>(argv: &[S]) -> Result<(), ArgvError> {
    match argv.first() {
        None => return Err(ArgvError::Empty),
        Some(p) if p.as_ref().is_empty() => return Err(ArgvError::Empty),
        Some(_) => {}
    }
    if argv.len() > MAX_ARGS {
        return Err(ArgvError::TooMany { args: argv.len() });
    }
    let bytes: usize = argv.iter().map(|a| a.as_ref().len()).sum();
    if bytes > MAX_ARGV_BYTES {
        return Err(ArgvError::TooLong { bytes });
    }
    Ok(())
}

/// A timeout above [`MAX_TIMEOUT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeoutTooLong(pub Duration);

impl fmt::Display for TimeoutTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timeout_ms: {} ms is longer than the limit of 24h",
            self.0.as_millis()
        )
    }
}

impl std::error::Error for TimeoutTooLong {}

/// The timeout a request's `timeout_ms` means: 0 is [`DEFAULT_TIMEOUT`].
pub fn timeout_from_ms(ms: u32) -> Result<Duration, TimeoutTooLong> {
    let d = match ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(u64::from(ms)),
    };
    if d > MAX_TIMEOUT {
        return Err(TimeoutTooLong(d));
    }
    Ok(d)
}

/// Whether `argv` may run without an operator's signature: a read-only
/// built-in with no argument.
pub fn runs_unsigned<S: AsRef<str>>(argv: &[S]) -> bool {
    argv.len() == 1 && UNSIGNED_BUILTINS.contains(&argv[0].as_ref())
}

/// Why a signed grant does not allow a command here and now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantRefusal {
    /// Not for this host.
    NotForThisHost,
    /// Its id is empty or longer than [`MAX_ID_BYTES`].
    BadId,
    /// It expired (by the checker's clock), this long ago.
    Expired { ago_ms: i64 },
    /// Issued more than [`MAX_GRANT_CLOCK_SKEW`] in the checker's future.
    NotYetValid { ahead_ms: i64 },
    /// Valid for longer than [`MAX_GRANT_TTL`].
    TooLong { ttl_ms: i64 },
    /// Its argv breaks the limits.
    Argv(ArgvError),
    /// Its timeout is above the limit.
    Timeout(TimeoutTooLong),
}

impl fmt::Display for GrantRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dur =
            |ms: i64| crate::time::format_duration_short(Duration::from_millis(ms.unsigned_abs()));
        match self {
            GrantRefusal::NotForThisHost => {
                f.write_str("the operator's grant is not for this host")
            }
            GrantRefusal::BadId => f.write_str("the grant's command id is empty or too long"),
            GrantRefusal::Expired { ago_ms } => {
                write!(f, "the operator's grant expired {} ago", dur(*ago_ms))
            }
            GrantRefusal::NotYetValid { ahead_ms } => write!(
                f,
                "the operator's grant was issued {} in this host's future (is its clock right?)",
                dur(*ahead_ms)
            ),
            GrantRefusal::TooLong { ttl_ms } => write!(
                f,
                "the grant is valid for {}, longer than the limit of {}",
                dur(*ttl_ms),
                crate::time::format_duration_short(MAX_GRANT_TTL)
            ),
            GrantRefusal::Argv(e) => write!(f, "{e}"),
            GrantRefusal::Timeout(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for GrantRefusal {}

/// Checks a decoded grant for `hostname` at `now_unix_ms` (the checker's
/// own clock): targeted here, fresh, not valid for too long, within the
/// command limits. The signature is checked before (see
/// `monitor::signing::verify`).
pub fn check_grant(
    grant: &pb::CommandGrant,
    hostname: &str,
    now_unix_ms: i64,
) -> Result<(), GrantRefusal> {
    if grant.command_id.is_empty() || grant.command_id.len() > MAX_ID_BYTES {
        return Err(GrantRefusal::BadId);
    }
    if !grant.all_hosts && !grant.hosts.iter().any(|h| h == hostname) {
        return Err(GrantRefusal::NotForThisHost);
    }
    let ttl_ms = grant.expires_unix_ms.saturating_sub(grant.issued_unix_ms);
    if ttl_ms > MAX_GRANT_TTL.as_millis() as i64 || ttl_ms <= 0 {
        return Err(GrantRefusal::TooLong { ttl_ms });
    }
    let ahead_ms = grant.issued_unix_ms.saturating_sub(now_unix_ms);
    if ahead_ms > MAX_GRANT_CLOCK_SKEW.as_millis() as i64 {
        return Err(GrantRefusal::NotYetValid { ahead_ms });
    }
    if now_unix_ms >= grant.expires_unix_ms {
        return Err(GrantRefusal::Expired {
            ago_ms: now_unix_ms.saturating_sub(grant.expires_unix_ms),
        });
    }
    check_argv(&grant.argv).map_err(GrantRefusal::Argv)?;
    timeout_from_ms(grant.timeout_ms).map_err(GrantRefusal::Timeout)?;
    Ok(())
}

/// Who a grant is for: named hosts, or every host (`all_hosts`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantTargets {
    Hosts(Vec<String>),
    All,
}

/// Makes and signs a grant for `argv` with `timeout_ms` on `targets`, by
/// `operator`, issued now and valid for [`DEFAULT_GRANT_TTL`], with a fresh
/// command id: what an operator's client sends as `ExecRequest.signed`.
pub fn sign_grant(
    key: &crate::signing::SigningKey,
    operator: &str,
    argv: &[String],
    timeout_ms: u32,
    targets: &GrantTargets,
) -> Result<pb::SignedCommand, crate::signing::KeyError> {
    use prost::Message;
    let issued = crate::time::now_unix_ms();
    let (hosts, all_hosts) = match targets {
        GrantTargets::Hosts(h) => (h.clone(), false),
        GrantTargets::All => (Vec::new(), true),
    };
    let grant = pb::CommandGrant {
        command_id: crate::random::random_id(),
        argv: argv.to_vec(),
        timeout_ms,
        issued_unix_ms: issued,
        expires_unix_ms: issued + DEFAULT_GRANT_TTL.as_millis() as i64,
        hosts,
        all_hosts,
        operator: operator.to_owned(),
    }
    .encode_to_vec();
    let signature = key.sign(&grant)?;
    Ok(pb::SignedCommand {
        grant,
        signature: signature.to_vec(),
        public_key: key.public_key().to_vec(),
    })
}

/// How a command ended on one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Ran to the end; see the exit code or signal.
    Exited,
    /// Killed after its timeout.
    TimedOut,
    /// Killed because the operator cancelled it.
    Cancelled,
    /// Could not be started (exec failed).
    FailedToStart,
    /// Refused before it started (policy, expiry, concurrency, argument).
    Rejected,
    /// The agent went away before the result came back (server side).
    LostConnection,
    /// The host was unknown or offline (server side).
    Unreachable,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 7] = [
        Outcome::Exited,
        Outcome::TimedOut,
        Outcome::Cancelled,
        Outcome::FailedToStart,
        Outcome::Rejected,
        Outcome::LostConnection,
        Outcome::Unreachable,
    ];

    /// The name the store writes (part of its file format) and monitorctl
    /// prints.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Exited => "exited",
            Outcome::TimedOut => "timed_out",
            Outcome::Cancelled => "cancelled",
            Outcome::FailedToStart => "failed_to_start",
            Outcome::Rejected => "rejected",
            Outcome::LostConnection => "lost_connection",
            Outcome::Unreachable => "unreachable",
        }
    }

    pub fn from_name(name: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.name() == name)
    }

    pub const fn to_pb(self) -> pb::Outcome {
        match self {
            Outcome::Exited => pb::Outcome::Exited,
            Outcome::TimedOut => pb::Outcome::TimedOut,
            Outcome::Cancelled => pb::Outcome::Cancelled,
            Outcome::FailedToStart => pb::Outcome::FailedToStart,
            Outcome::Rejected => pb::Outcome::Rejected,
            Outcome::LostConnection => pb::Outcome::LostConnection,
            Outcome::Unreachable => pb::Outcome::Unreachable,
        }
    }

    /// `None` for `OUTCOME_UNSPECIFIED` (a result still pending) and for a
    /// number this version does not know.
    pub fn from_pb(code: i32) -> Option<Outcome> {
        match pb::Outcome::try_from(code).ok()? {
            pb::Outcome::Unspecified => None,
            pb::Outcome::Exited => Some(Outcome::Exited),
            pb::Outcome::TimedOut => Some(Outcome::TimedOut),
            pb::Outcome::Cancelled => Some(Outcome::Cancelled),
            pb::Outcome::FailedToStart => Some(Outcome::FailedToStart),
            pb::Outcome::Rejected => Some(Outcome::Rejected),
            pb::Outcome::LostConnection => Some(Outcome::LostConnection),
            pb::Outcome::Unreachable => Some(Outcome::Unreachable),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a command ended on one host, as the agent reports it, the server
/// records it and monitorctl shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub outcome: Outcome,
    /// Set when the process exited normally.
    pub exit_code: Option<i32>,
    /// Set when the process was ended by a signal.
    pub signal: Option<i32>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
    /// Bytes the command wrote to stdout, including any not forwarded.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Human-readable detail (rejection reason, start error); may be empty.
    pub message: String,
}

impl Finished {
    /// An ending with no process behind it (rejected, unreachable, lost).
    pub fn without_process(outcome: Outcome, message: impl Into<String>) -> Finished {
        Finished {
            outcome,
            exit_code: None,
            signal: None,
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: 0,
            stdout_bytes: 0,
            stderr_bytes: 0,
            message: message.into(),
        }
    }

    /// Whether the command did what was asked: it ran and exited 0.
    pub fn succeeded(&self) -> bool {
        self.outcome == Outcome::Exited && self.exit_code == Some(0)
    }

    pub fn to_pb(&self) -> pb::Finished {
        pb::Finished {
            outcome: self.outcome.to_pb() as i32,
            exit_code: self.exit_code,
            signal: self.signal,
            stdout_truncated: self.stdout_truncated,
            stderr_truncated: self.stderr_truncated,
            duration_ms: self.duration_ms,
            stdout_bytes: self.stdout_bytes,
            stderr_bytes: self.stderr_bytes,
            message: self.message.clone(),
        }
    }

    /// An agent's final result. An unspecified or unknown outcome is read
    /// as [`Outcome::LostConnection`]: the agent's answer could not be
    /// understood, so nothing is known of how the command ended.
    pub fn from_pb(f: pb::Finished) -> Finished {
        Finished {
            outcome: Outcome::from_pb(f.outcome).unwrap_or(Outcome::LostConnection),
            exit_code: f.exit_code,
            signal: f.signal,
            stdout_truncated: f.stdout_truncated,
            stderr_truncated: f.stderr_truncated,
            duration_ms: f.duration_ms,
            stdout_bytes: f.stdout_bytes,
            stderr_bytes: f.stderr_bytes,
            message: f.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_and_numbers_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_name(o.name()), Some(o));
            assert_eq!(Outcome::from_pb(o.to_pb() as i32), Some(o));
        }
        assert_eq!(Outcome::from_name("pending"), None);
        assert_eq!(Outcome::from_pb(pb::Outcome::Unspecified as i32), None);
        assert_eq!(Outcome::from_pb(99), None);
    }

    #[test]
    fn finished_round_trips_and_reads_unknown_outcomes_as_lost() {
        let f = Finished {
            outcome: Outcome::Exited,
            exit_code: Some(3),
            signal: None,
            stdout_truncated: true,
            stderr_truncated: false,
            duration_ms: 12,
            stdout_bytes: 70_000,
            stderr_bytes: 1,
            message: "m".into(),
        };
        assert_eq!(Finished::from_pb(f.to_pb()), f);
        assert!(!f.succeeded());
        let unknown = pb::Finished {
            outcome: 42,
            ..Default::default()
        };
        assert_eq!(Finished::from_pb(unknown).outcome, Outcome::LostConnection);
        let ok = Finished {
            exit_code: Some(0),
            ..Finished::without_process(Outcome::Exited, "")
        };
        assert!(ok.succeeded());
        assert!(!Finished::without_process(Outcome::Rejected, "no").succeeded());
    }

    #[test]
    fn argv_limits_are_exact() {
        assert_eq!(check_argv::<&str>(&[]), Err(ArgvError::Empty));
        assert_eq!(check_argv(&[""]), Err(ArgvError::Empty));
        let max = vec!["a"; MAX_ARGS];
        assert_eq!(check_argv(&max), Ok(()));
        let over = vec!["a"; MAX_ARGS + 1];
        assert_eq!(
            check_argv(&over),
            Err(ArgvError::TooMany { args: MAX_ARGS + 1 })
        );
        let long = ["x".repeat(MAX_ARGV_BYTES)];
        assert_eq!(check_argv(&long), Ok(()));
        let longer = ["x".repeat(MAX_ARGV_BYTES), "y".to_owned()];
        assert_eq!(
            check_argv(&longer),
            Err(ArgvError::TooLong {
                bytes: MAX_ARGV_BYTES + 1
            })
        );
    }

    fn grant(now: i64) -> pb::CommandGrant {
        pb::CommandGrant {
            command_id: "0123456789abcdef0123456789abcdef".into(),
            argv: vec!["uptime".into()],
            timeout_ms: 0,
            issued_unix_ms: now,
            expires_unix_ms: now + DEFAULT_GRANT_TTL.as_millis() as i64,
            hosts: vec!["pi-1".into(), "pi-2".into()],
            all_hosts: false,
            operator: "alice".into(),
        }
    }

    #[test]
    fn grants_are_checked_at_every_edge() {
        const NOW: i64 = 1_795_608_000_000;
        let g = grant(NOW);
        assert_eq!(check_grant(&g, "pi-2", NOW), Ok(()));
        assert_eq!(
            check_grant(&g, "pi-3", NOW),
            Err(GrantRefusal::NotForThisHost)
        );
        let all = pb::CommandGrant {
            all_hosts: true,
            hosts: vec![],
            ..g.clone()
        };
        assert_eq!(check_grant(&all, "anyone", NOW), Ok(()));
        // Expiry: the last millisecond before passes, the expiry refuses.
        let exp = g.expires_unix_ms;
        assert_eq!(check_grant(&g, "pi-1", exp - 1), Ok(()));
        assert_eq!(
            check_grant(&g, "pi-1", exp),
            Err(GrantRefusal::Expired { ago_ms: 0 })
        );
        // Issued in the future: up to the skew allowed.
        let skew = MAX_GRANT_CLOCK_SKEW.as_millis() as i64;
        assert_eq!(check_grant(&g, "pi-1", NOW - skew), Ok(()));
        assert_eq!(
            check_grant(&g, "pi-1", NOW - skew - 1),
            Err(GrantRefusal::NotYetValid { ahead_ms: skew + 1 })
        );
        // Valid for exactly the limit passes; 1 ms more does not.
        let max = MAX_GRANT_TTL.as_millis() as i64;
        let long = pb::CommandGrant {
            expires_unix_ms: NOW + max,
            ..g.clone()
        };
        assert_eq!(check_grant(&long, "pi-1", NOW), Ok(()));
        let longer = pb::CommandGrant {
            expires_unix_ms: NOW + max + 1,
            ..g.clone()
        };
        assert_eq!(
            check_grant(&longer, "pi-1", NOW),
            Err(GrantRefusal::TooLong { ttl_ms: max + 1 })
        );
        let backwards = pb::CommandGrant {
            expires_unix_ms: NOW,
            ..g.clone()
        };
        assert_eq!(
            check_grant(&backwards, "pi-1", NOW),
            Err(GrantRefusal::TooLong { ttl_ms: 0 })
        );
        // Absurd times never overflow.
        let absurd = pb::CommandGrant {
            issued_unix_ms: i64::MIN,
            expires_unix_ms: i64::MAX,
            ..g.clone()
        };
        assert!(check_grant(&absurd, "pi-1", NOW).is_err());
        let absurd = pb::CommandGrant {
            issued_unix_ms: i64::MAX,
            expires_unix_ms: i64::MIN,
            ..g.clone()
        };
        assert!(check_grant(&absurd, "pi-1", i64::MIN).is_err());
        let no_id = pb::CommandGrant {
            command_id: String::new(),
            ..g.clone()
        };
        assert_eq!(check_grant(&no_id, "pi-1", NOW), Err(GrantRefusal::BadId));
        let long_id = pb::CommandGrant {
            command_id: "x".repeat(MAX_ID_BYTES + 1),
            ..g.clone()
        };
        assert_eq!(check_grant(&long_id, "pi-1", NOW), Err(GrantRefusal::BadId));
        let id_at_limit = pb::CommandGrant {
            command_id: "x".repeat(MAX_ID_BYTES),
            ..g.clone()
        };
        assert_eq!(check_grant(&id_at_limit, "pi-1", NOW), Ok(()));
        let empty = pb::CommandGrant {
            argv: vec![],
            ..g.clone()
        };
        assert_eq!(
            check_grant(&empty, "pi-1", NOW),
            Err(GrantRefusal::Argv(ArgvError::Empty))
        );
        let slow = pb::CommandGrant {
            timeout_ms: u32::MAX,
            ..g
        };
        assert!(matches!(
            check_grant(&slow, "pi-1", NOW),
            Err(GrantRefusal::Timeout(_))
        ));
    }

    #[test]
    fn only_bare_read_only_builtins_run_unsigned() {
        assert!(runs_unsigned(&["ping"]));
        assert!(runs_unsigned(&["info"]));
        assert!(!runs_unsigned(&["ping", "x"]));
        assert!(!runs_unsigned(&["collect-now"]));
        assert!(!runs_unsigned(&["set-interval", "1"]));
        assert!(!runs_unsigned(&["uptime"]));
        assert!(!runs_unsigned::<&str>(&[]));
    }

    #[test]
    fn timeouts_default_and_cap() {
        assert_eq!(timeout_from_ms(0), Ok(DEFAULT_TIMEOUT));
        assert_eq!(timeout_from_ms(1), Ok(Duration::from_millis(1)));
        let max = u32::try_from(MAX_TIMEOUT.as_millis()).unwrap();
        assert_eq!(timeout_from_ms(max), Ok(MAX_TIMEOUT));
        assert!(timeout_from_ms(max + 1).is_err());
        assert!(timeout_from_ms(u32::MAX).is_err());
    }
}
