//! Whether a command from the server may run: the agent's gatekeeper.
//!
//! The server is not trusted to command this host: it may be compromised
//! (Salt's 2020 master compromise put miners on every minion because they
//! obeyed the master). So a command runs only if an operator whose key
//! this agent trusts signed it (see `operators.rs`), for this host, within
//! its validity, once; the read-only built-ins `ping` and `info` are the
//! only exceptions (unless `--allow-unsigned-commands`).
//!
//! Checked in this order, each refusal naming its reason:
//! 1. a usable id;
//! 2. the signature, verified over the grant's exact bytes before they are
//!    decoded, by a trusted key; or an unsigned `ping`/`info`;
//! 3. the grant: for this host, issued at most 5 minutes in this host's
//!    future, valid at most 10 minutes, not expired, by this host's own
//!    clock (TLS needs a right clock anyway); the request's id, argv and
//!    timeout agree with it;
//! 4. the rate: the built-ins that change the agent (`collect-now`,
//!    `set-interval`) at most [`BURST`] at once and one a second after
//!    (counted only once 1 to 3 passed, so forged requests cannot use up
//!    an operator's);
//! 5. not seen before (`replay.rs`, kept across restarts).
//!
//! What runs is the grant's argv, never the request's fields.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monitor::command::{GrantRefusal, MAX_ID_BYTES, runs_unsigned};
use monitor::pb;
use prost::Message;

use crate::operators::Operators;
use crate::replay::{ReplayCache, ReplayRefusal};

/// Built-ins that change the agent, allowed at once before the rate
/// applies.
pub const BURST: u32 = 5;
/// And then one per this long.
pub const REFILL: Duration = Duration::from_secs(1);

/// A command that may run, as the operator granted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approved {
    pub id: String,
    pub argv: Vec<String>,
    pub timeout_ms: u32,
    /// Who signed it (the name this agent knows the key by); `None` for an
    /// unsigned built-in.
    pub signer: Option<String>,
}

/// Why a command may not run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    BadId,
    RateLimited,
    Unsigned,
    UntrustedKey { key: String },
    BadSignature,
    Undecodable,
    Grant(GrantRefusal),
    Mismatch(&'static str),
    Expired { ago_ms: i64 },
    Replay(ReplayRefusal),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::BadId => f.write_str("unusable command id"),
            Refusal::RateLimited => {
                f.write_str("too many collect-now/set-interval requests: try again in a second")
            }
            Refusal::Unsigned => f.write_str(
                "not signed by an operator: only ping and info run unsigned (monitorctl signs \
                 commands with the operator's key)",
            ),
            Refusal::UntrustedKey { key } => write!(
                f,
                "signed by a key this host does not trust ({key}…): add the operator's line \
                 ('monitorctl key show') to /etc/monitor/operators"
            ),
            Refusal::BadSignature => f.write_str("the signature does not match the command"),
            Refusal::Undecodable => f.write_str("the signed grant cannot be read"),
            Refusal::Grant(g) => write!(f, "{g}"),
            Refusal::Mismatch(field) => {
                write!(
                    f,
                    "the request's {field} differs from what the operator signed"
                )
            }
            Refusal::Expired { ago_ms } => write!(
                f,
                "request expired {} ago",
                monitor::time::format_duration_short(Duration::from_millis(ago_ms.unsigned_abs()))
            ),
            Refusal::Replay(r) => write!(f, "{r}"),
        }
    }
}

/// A token bucket for the built-ins that change the agent.
#[derive(Debug)]
struct Bucket {
    tokens: u32,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let refilled = (now.saturating_duration_since(self.last).as_millis()
            / REFILL.as_millis().max(1)) as u32;
        if refilled > 0 {
            self.tokens = (self.tokens.saturating_add(refilled)).min(BURST);
            self.last = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

pub struct Gate {
    pub operators: Rc<Operators>,
    replay: RefCell<ReplayCache>,
    hostname: String,
    allow_unsigned: bool,
    bucket: RefCell<Bucket>,
}

impl Gate {
    pub fn new(
        operators: Rc<Operators>,
        replay: ReplayCache,
        hostname: String,
        allow_unsigned: bool,
    ) -> Gate {
        Gate {
            operators,
            replay: RefCell::new(replay),
            hostname,
            allow_unsigned,
            bucket: RefCell::new(Bucket {
                tokens: BURST,
                last: Instant::now(),
            }),
        }
    }

    /// Decides on `run` at `now_unix_ms` (this host's wall clock) and `now`
    /// (monotonic, for the rate).
    pub fn decide(
        &self,
        run: &pb::RunCommand,
        now_unix_ms: i64,
        now: Instant,
    ) -> Result<Approved, Refusal> {
        if run.command_id.is_empty() || run.command_id.len() > MAX_ID_BYTES {
            return Err(Refusal::BadId);
        }
        let approved = match &run.signed {
            Some(signed) => self.check_signed(run, signed, now_unix_ms)?,
            None => {
                if !(self.allow_unsigned || runs_unsigned(&run.argv)) {
                    return Err(Refusal::Unsigned);
                }
                if run.expires_unix_ms <= now_unix_ms {
                    return Err(Refusal::Expired {
                        ago_ms: now_unix_ms.saturating_sub(run.expires_unix_ms),
                    });
                }
                (
                    Approved {
                        id: run.command_id.clone(),
                        argv: run.argv.clone(),
                        timeout_ms: run.timeout_ms,
                        signer: None,
                    },
                    run.expires_unix_ms,
                )
            }
        };
        let (approved, expires) = approved;
        let changes_agent = approved
            .argv
            .first()
            .is_some_and(|a| a == "collect-now" || a == "set-interval");
        if changes_agent && !self.bucket.borrow_mut().take(now) {
            return Err(Refusal::RateLimited);
        }
        self.replay
            .borrow_mut()
            .first_sighting(&approved.id, expires, now_unix_ms)
            .map_err(Refusal::Replay)?;
        Ok(approved)
    }

    fn check_signed(
        &self,
        run: &pb::RunCommand,
        signed: &pb::SignedCommand,
        now_unix_ms: i64,
    ) -> Result<(Approved, i64), Refusal> {
        let signer =
            self.operators
                .trusts(&signed.public_key)
                .ok_or_else(|| Refusal::UntrustedKey {
                    key: monitor::signing::short(&signed.public_key),
                })?;
        if !monitor::signing::verify(&signed.public_key, &signed.grant, &signed.signature) {
            return Err(Refusal::BadSignature);
        }
        let grant =
            pb::CommandGrant::decode(signed.grant.as_slice()).map_err(|_| Refusal::Undecodable)?;
        monitor::command::check_grant(&grant, &self.hostname, now_unix_ms)
            .map_err(Refusal::Grant)?;
        if grant.command_id != run.command_id {
            return Err(Refusal::Mismatch("command id"));
        }
        if grant.argv != run.argv {
            return Err(Refusal::Mismatch("argv"));
        }
        if grant.timeout_ms != run.timeout_ms {
            return Err(Refusal::Mismatch("timeout"));
        }
        let expires = grant.expires_unix_ms;
        Ok((
            Approved {
                id: grant.command_id,
                argv: grant.argv,
                timeout_ms: grant.timeout_ms,
                signer: Some(signer),
            },
            expires,
        ))
    }
}

/// Refusals logged without flooding the log: the first of a minute in
/// full, the rest counted into one line when the next minute's first
/// arrives. A hostile server that sends thousands of bad commands costs a
/// line a minute, not a line each.
#[derive(Debug)]
pub struct RefusalLog {
    window_start: Option<Instant>,
    suppressed: u64,
}

/// How long one summary covers.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

impl RefusalLog {
    pub fn new() -> RefusalLog {
        RefusalLog {
            window_start: None,
            suppressed: 0,
        }
    }

    /// Logs (or counts) a refusal of `id` for `reason`.
    pub fn refused(&mut self, id: &str, reason: &Refusal, now: Instant) {
        let open = self
            .window_start
            .is_some_and(|t| now.saturating_duration_since(t) < REFUSAL_LOG_EVERY);
        if open {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            log::warn!(
                "{} more commands refused in the last {}s (not logged one by one)",
                self.suppressed,
                REFUSAL_LOG_EVERY.as_secs()
            );
        }
        log::warn!(
            "command {}: refused: {}",
            monitor::text::Escaped::with_limit(id, MAX_ID_BYTES),
            reason
        );
        self.window_start = Some(now);
        self.suppressed = 0;
    }

    /// How many refusals the current window did not log.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_log::take_lines;
    use monitor::signing::SigningKey;

    const NOW_MS: i64 = 1_800_000_000_000;
    const HOST: &str = "pi-1";

    struct Fixture {
        gate: Gate,
        key: SigningKey,
        _state: tempfile::TempDir,
    }

    fn fixture(allow_unsigned: bool) -> Fixture {
        let state = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let operators = Operators::default();
        operators
            .add_enrolled(state.path(), &[key.public_key()])
            .unwrap();
        let gate = Gate::new(
            Rc::new(operators),
            ReplayCache::in_memory(),
            HOST.into(),
            allow_unsigned,
        );
        Fixture {
            gate,
            key,
            _state: state,
        }
    }

    fn unsigned(id: &str, argv: &[&str], expires_unix_ms: i64) -> pb::RunCommand {
        pb::RunCommand {
            command_id: id.into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            timeout_ms: 5_000,
            expires_unix_ms,
            signed: None,
        }
    }

    fn grant(id: &str, argv: &[&str]) -> pb::CommandGrant {
        pb::CommandGrant {
            command_id: id.into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            timeout_ms: 5_000,
            issued_unix_ms: NOW_MS - 1_000,
            expires_unix_ms: NOW_MS + 60_000,
            hosts: vec![HOST.into()],
            all_hosts: false,
            operator: "alice".into(),
        }
    }

    /// A request carrying `grant` signed by `key`, its fields copied.
    fn signed(key: &SigningKey, grant: &pb::CommandGrant) -> pb::RunCommand {
        let bytes = grant.encode_to_vec();
        pb::RunCommand {
            command_id: grant.command_id.clone(),
            argv: grant.argv.clone(),
            timeout_ms: grant.timeout_ms,
            expires_unix_ms: grant.expires_unix_ms,
            signed: Some(pb::SignedCommand {
                signature: key.sign(&bytes).unwrap().to_vec(),
                grant: bytes,
                public_key: key.public_key().to_vec(),
            }),
        }
    }

    #[test]
    fn an_id_must_be_one_to_max_id_bytes_long() {
        let f = fixture(false);
        let now = Instant::now();
        let decide = |id: &str| {
            f.gate
                .decide(&unsigned(id, &["ping"], NOW_MS + 1), NOW_MS, now)
        };
        assert_eq!(decide(""), Err(Refusal::BadId));
        assert_eq!(decide(&"x".repeat(MAX_ID_BYTES + 1)), Err(Refusal::BadId));
        assert!(decide(&"x".repeat(MAX_ID_BYTES)).is_ok());
        assert!(decide("a").is_ok());
    }

    #[test]
    fn unsigned_only_ping_and_info_run_unless_allowed_and_never_after_expiry() {
        let f = fixture(false);
        let now = Instant::now();
        let run = unsigned("1", &["ping"], NOW_MS + 1);
        assert_eq!(
            f.gate.decide(&run, NOW_MS, now),
            Ok(Approved {
                id: "1".into(),
                argv: vec!["ping".into()],
                timeout_ms: 5_000,
                signer: None,
            })
        );
        assert!(
            f.gate
                .decide(&unsigned("2", &["info"], NOW_MS + 1), NOW_MS, now)
                .is_ok()
        );
        assert_eq!(
            f.gate
                .decide(&unsigned("3", &["uptime"], NOW_MS + 1), NOW_MS, now),
            Err(Refusal::Unsigned)
        );
        assert_eq!(
            f.gate
                .decide(&unsigned("4", &["ping"], NOW_MS), NOW_MS, now),
            Err(Refusal::Expired { ago_ms: 0 })
        );
        assert_eq!(
            f.gate
                .decide(&unsigned("5", &["ping"], NOW_MS - 7), NOW_MS, now),
            Err(Refusal::Expired { ago_ms: 7 })
        );

        let allowed = fixture(true);
        assert!(
            allowed
                .gate
                .decide(&unsigned("3", &["uptime"], NOW_MS + 1), NOW_MS, now)
                .is_ok()
        );
        assert_eq!(
            allowed
                .gate
                .decide(&unsigned("4", &["uptime"], NOW_MS), NOW_MS, now),
            Err(Refusal::Expired { ago_ms: 0 })
        );
    }

    #[test]
    fn an_id_runs_once() {
        let f = fixture(false);
        let now = Instant::now();
        let run = unsigned("once", &["ping"], NOW_MS + 1_000);
        assert!(f.gate.decide(&run, NOW_MS, now).is_ok());
        assert_eq!(
            f.gate.decide(&run, NOW_MS + 1, now),
            Err(Refusal::Replay(ReplayRefusal::Replay))
        );
        let g = grant("signed-once", &["uptime"]);
        assert!(f.gate.decide(&signed(&f.key, &g), NOW_MS, now).is_ok());
        assert_eq!(
            f.gate.decide(&signed(&f.key, &g), NOW_MS, now),
            Err(Refusal::Replay(ReplayRefusal::Replay))
        );
    }

    #[test]
    fn a_signed_grant_runs_what_the_operator_signed_and_nothing_else() {
        let f = fixture(false);
        let now = Instant::now();
        let g = grant("g1", &["uptime"]);
        assert_eq!(
            f.gate.decide(&signed(&f.key, &g), NOW_MS, now),
            Ok(Approved {
                id: "g1".into(),
                argv: vec!["uptime".into()],
                timeout_ms: 5_000,
                signer: Some("enrolled-1".into()),
            })
        );

        let stranger = SigningKey::generate().unwrap();
        assert_eq!(
            f.gate
                .decide(&signed(&stranger, &grant("g2", &["uptime"])), NOW_MS, now),
            Err(Refusal::UntrustedKey {
                key: monitor::signing::short(&stranger.public_key())
            })
        );

        let mut forged = signed(&f.key, &grant("g3", &["uptime"]));
        let other = grant("g3", &["reboot"]).encode_to_vec();
        forged.signed.as_mut().unwrap().grant = other;
        forged.argv = vec!["reboot".into()];
        assert_eq!(
            f.gate.decide(&forged, NOW_MS, now),
            Err(Refusal::BadSignature)
        );

        let mut garbage = signed(&f.key, &grant("g4", &["uptime"]));
        let s = garbage.signed.as_mut().unwrap();
        s.grant = vec![0xff; 8];
        s.signature = f.key.sign(&s.grant).unwrap().to_vec();
        assert_eq!(
            f.gate.decide(&garbage, NOW_MS, now),
            Err(Refusal::Undecodable)
        );

        let mut elsewhere = grant("g5", &["uptime"]);
        elsewhere.hosts = vec!["pi-2".into()];
        assert_eq!(
            f.gate.decide(&signed(&f.key, &elsewhere), NOW_MS, now),
            Err(Refusal::Grant(GrantRefusal::NotForThisHost))
        );

        let base = signed(&f.key, &grant("g6", &["uptime"]));
        let mut id = base.clone();
        id.command_id = "g7".into();
        assert_eq!(
            f.gate.decide(&id, NOW_MS, now),
            Err(Refusal::Mismatch("command id"))
        );
        let mut argv = base.clone();
        argv.argv = vec!["reboot".into()];
        assert_eq!(
            f.gate.decide(&argv, NOW_MS, now),
            Err(Refusal::Mismatch("argv"))
        );
        let mut timeout = base.clone();
        timeout.timeout_ms += 1;
        assert_eq!(
            f.gate.decide(&timeout, NOW_MS, now),
            Err(Refusal::Mismatch("timeout"))
        );
        // None of the refusals used up the id.
        assert!(f.gate.decide(&base, NOW_MS, now).is_ok());
    }

    #[test]
    fn the_builtins_that_change_the_agent_are_rate_limited_and_no_others() {
        let f = fixture(false);
        let t0 = Instant::now();
        let mut n = 0;
        let mut decide = |argv: &[&str], at: Instant| {
            n += 1;
            let g = grant(&format!("r{n}"), argv);
            f.gate.decide(&signed(&f.key, &g), NOW_MS, at)
        };
        for _ in 0..BURST + 2 {
            assert!(decide(&["ping"], t0).is_ok(), "ping is never limited");
        }
        for i in 0..BURST {
            let argv: &[&str] = if i % 2 == 0 {
                &["collect-now"]
            } else {
                &["set-interval", "5"]
            };
            assert!(decide(argv, t0).is_ok(), "{i} of the burst");
        }
        assert_eq!(decide(&["collect-now"], t0), Err(Refusal::RateLimited));
        assert_eq!(
            decide(&["set-interval", "5"], t0),
            Err(Refusal::RateLimited)
        );
        // Half a refill later: still nothing (and the half is not lost).
        let half = t0 + REFILL / 2;
        assert_eq!(decide(&["collect-now"], half), Err(Refusal::RateLimited));
        assert!(decide(&["collect-now"], t0 + REFILL).is_ok());
        assert_eq!(
            decide(&["collect-now"], t0 + REFILL),
            Err(Refusal::RateLimited)
        );
        // A long pause refills the burst, not more.
        let later = t0 + REFILL * 100;
        for _ in 0..BURST {
            assert!(decide(&["collect-now"], later).is_ok());
        }
        assert_eq!(decide(&["collect-now"], later), Err(Refusal::RateLimited));
    }

    #[test]
    fn refusals_are_logged_once_a_minute_with_a_count_of_the_rest() {
        take_lines();
        let mut log = RefusalLog::default();
        assert_eq!(log.suppressed(), 0);
        let t0 = Instant::now();
        log.refused("c1", &Refusal::Unsigned, t0);
        let lines = take_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("command c1: refused: not signed"),
            "{lines:?}"
        );
        log.refused("c2", &Refusal::BadId, t0 + Duration::from_secs(1));
        log.refused(
            "c3",
            &Refusal::BadId,
            t0 + REFUSAL_LOG_EVERY - Duration::from_millis(1),
        );
        assert_eq!(log.suppressed(), 2);
        assert!(take_lines().is_empty());
        // The next minute starts exactly REFUSAL_LOG_EVERY after the first.
        let t1 = t0 + REFUSAL_LOG_EVERY;
        log.refused("c4", &Refusal::BadSignature, t1);
        let lines = take_lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("2 more commands refused"), "{lines:?}");
        assert!(lines[1].starts_with("command c4: refused"), "{lines:?}");
        assert_eq!(log.suppressed(), 0);
        // A minute with only its first refusal has no summary line.
        log.refused("c5", &Refusal::BadId, t1 + REFUSAL_LOG_EVERY);
        let lines = take_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
    }

    #[test]
    fn every_refusal_says_what_was_wrong() {
        let cases = [
            (Refusal::BadId, "unusable command id"),
            (Refusal::RateLimited, "too many collect-now"),
            (Refusal::Unsigned, "not signed by an operator"),
            (
                Refusal::UntrustedKey { key: "abcd".into() },
                "signed by a key this host does not trust (abcd…)",
            ),
            (Refusal::BadSignature, "the signature does not match"),
            (Refusal::Undecodable, "the signed grant cannot be read"),
            (
                Refusal::Grant(GrantRefusal::NotForThisHost),
                "the operator's grant is not for this host",
            ),
            (
                Refusal::Mismatch("argv"),
                "the request's argv differs from what the operator signed",
            ),
            (Refusal::Expired { ago_ms: 2_000 }, "request expired 2s ago"),
            (
                Refusal::Replay(ReplayRefusal::Replay),
                "this command id was seen before",
            ),
        ];
        for (refusal, text) in cases {
            assert!(
                refusal.to_string().starts_with(text),
                "{refusal:?}: {refusal}"
            );
        }
    }
}
