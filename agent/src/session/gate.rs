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
