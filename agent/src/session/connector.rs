//! What the next session connects with: plain text (only with
//! `--insecure`), or TLS with the agent's identity, enrolling first when
//! there is none (or a new join token was given), and renewing it before it
//! expires. Where it connects is [`Targets`]'s business; the server's
//! certificate is always checked against the URL's host it names.
//!
//! Enrolment failures come in two kinds: the server is not there yet
//! (retried with the session's backoff, sampling goes on into the buffer),
//! and the token was refused (final: the agent stops, see `run.rs`).

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use monitor::join::JoinToken;
use tonic::transport::{Channel, Endpoint};

use super::targets::Targets;
use crate::enrol;
use crate::identity::{Identity, IdentityError, token_digest};
use crate::operators::Operators;

/// After a failed renewal, how long until the next try.
const RENEW_RETRY: Duration = Duration::from_secs(600);

/// Why no endpoint can be had right now.
#[derive(Debug)]
pub enum ConnectError {
    /// Retrying cannot help: the agent must stop.
    Fatal(String),
    /// Try again after the backoff.
    Retry(String),
}

enum Mode {
    Insecure,
    Tls(Box<Tls>),
}

struct Tls {
    /// Where an enrolment's operator keys go.
    operators: Rc<Operators>,
    state_dir: PathBuf,
    join: Option<JoinToken>,
    hostname: String,
    identity: RefCell<Option<Identity>>,
    /// Wall clock (ms) before which no renewal is tried again.
    renew_not_before: Cell<i64>,
}

pub struct Connector {
    /// The servers (replicas sharing one store) and their addresses,
    /// tried in turn.
    targets: Targets,
    mode: Mode,
}

impl Connector {
    /// Plain text to `targets`.
    pub fn insecure(targets: Targets) -> Connector {
        Connector {
            targets,
            mode: Mode::Insecure,
        }
    }

    /// TLS to `targets`, with the identity in `state_dir` (enrolling with
    /// `join` first if needed).
    pub fn tls(
        targets: Targets,
        state_dir: PathBuf,
        join: Option<JoinToken>,
        hostname: String,
        operators: Rc<Operators>,
    ) -> Result<Connector, IdentityError> {
        let identity = Identity::load(&state_dir)?;
        if let Some(id) = &identity
            && id.hostname != hostname
        {
            log::warn!(
                "this agent's certificate is for '{}' but it reports as '{hostname}': the \
                 server will refuse it (enrol this name, or set MONITOR_HOSTNAME={})",
                id.hostname,
                id.hostname
            );
        }
        Ok(Connector {
            targets,
            mode: Mode::Tls(Box::new(Tls {
                operators,
                state_dir,
                join,
                hostname,
                identity: RefCell::new(identity),
                renew_not_before: Cell::new(0),
            })),
        })
    }

    /// What the last session connected to (the URL, and the address when
    /// it names a host), for the log.
    pub fn last_target(&self) -> String {
        self.targets.last()
    }

    /// The URL the next session goes to.
    pub fn next_url(&self) -> String {
        self.targets.next_url()
    }

    /// After a failed or ended session: the next server in the list, or
    /// the name's next address (failover to another replica); `false`
    /// when there is nowhere else.
    pub fn next_server(&self) -> bool {
        self.targets.advance()
    }

    /// Whether a start without a token would have nothing to connect with.
    pub fn needs_token(&self) -> bool {
        match &self.mode {
            Mode::Insecure => false,
            Mode::Tls(t) => t.join.is_none() && t.identity.borrow().is_none(),
        }
    }

    /// The endpoint for the next session.
    pub async fn endpoint(&self) -> Result<Endpoint, ConnectError> {
        let target = self
            .targets
            .next()
            .await
            .map_err(|e| ConnectError::Retry(e.to_string()))?;
        let Mode::Tls(tls) = &self.mode else {
            return Ok(target.endpoint);
        };
        let Tls {
            operators,
            state_dir,
            join,
            hostname,
            identity,
            ..
        } = &**tls;
        let must_enrol = match (join, &*identity.borrow()) {
            (None, None) => {
                return Err(ConnectError::Fatal(
                    "this agent is not enrolled: run 'monitorctl enrol HOSTNAME' where the \
                     server runs and start the agent with the token it prints, as \
                     MONITOR_JOIN or --join"
                        .into(),
                ));
            }
            (Some(token), Some(id)) => token_digest(&token.secret) != id.join_token_sha256,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if must_enrol && let Some(token) = join {
            if token.hostname != *hostname {
                return Err(ConnectError::Fatal(format!(
                    "the join token is for host '{}', but this agent reports as '{hostname}' \
                     (set MONITOR_HOSTNAME={} or make a token for '{hostname}')",
                    token.hostname, token.hostname
                )));
            }
            log::info!("enrolling as '{hostname}' with the join token");
            let id = match enrol::enrol(target.endpoint.clone(), &target.tls_name, token, hostname)
                .await
            {
                Ok(id) => id,
                Err(e) if e.is_retryable() => {
                    return Err(ConnectError::Retry(format!("enrolment: {e}")));
                }
                Err(e) => return Err(ConnectError::Fatal(format!("enrolment: {e}"))),
            };
            // The token's operator keys first: a crash between the two
            // leaves keys without an identity (enrolment runs again), never
            // an identity whose operators were forgotten.
            operators
                .add_enrolled(state_dir, &token.operator_keys)
                .map_err(|e| ConnectError::Fatal(e.to_string()))?;
            id.save(state_dir)
                .map_err(|e| ConnectError::Fatal(e.to_string()))?;
            log::info!(
                "enrolled: certificate for '{hostname}' valid until {}",
                monitor::time::Rfc3339(id.not_after_unix_ms)
            );
            *identity.borrow_mut() = Some(id);
        }
        let identity = identity.borrow();
        let Some(id) = identity.as_ref() else {
            return Err(ConnectError::Fatal("no identity".into()));
        };
        target
            .endpoint
            .tls_config(enrol::client_tls(&id.ca_der, Some(id), &target.tls_name))
            .map_err(|e| ConnectError::Fatal(format!("TLS settings: {e}")))
    }

    /// How long until the identity should be renewed (`None`: never, i.e.
    /// plain text).
    pub fn renew_in(&self, now_unix_ms: i64) -> Option<Duration> {
        let Mode::Tls(tls) = &self.mode else {
            return None;
        };
        let Tls {
            identity,
            renew_not_before,
            ..
        } = &**tls;
        let at = identity
            .borrow()
            .as_ref()?
            .renew_after_unix_ms
            .max(renew_not_before.get());
        Some(Duration::from_millis(
            u64::try_from(at.saturating_sub(now_unix_ms)).unwrap_or(0),
        ))
    }

    /// Renews the identity over `channel` and saves it; the caller then
    /// reconnects so the new certificate is used. A failure is logged and
    /// the next try waits [`RENEW_RETRY`].
    pub async fn renew(&self, channel: Channel) -> bool {
        let Mode::Tls(tls) = &self.mode else {
            return false;
        };
        let Tls {
            state_dir,
            identity,
            renew_not_before,
            ..
        } = &**tls;
        let Some(current) = identity.borrow().clone() else {
            return false;
        };
        let retry_later = |e: &dyn std::fmt::Display| {
            log::warn!(
                "cannot renew the certificate (valid until {}): {e}; trying again in {}",
                monitor::time::Rfc3339(current.not_after_unix_ms),
                monitor::time::format_duration_short(RENEW_RETRY)
            );
            renew_not_before
                .set(monitor::time::now_unix_ms().saturating_add(RENEW_RETRY.as_millis() as i64));
        };
        match enrol::renew(channel, &current).await {
            Ok(new) => {
                if let Err(e) = new.save(state_dir) {
                    retry_later(&e);
                    return false;
                }
                log::info!(
                    "certificate renewed, valid until {}",
                    monitor::time::Rfc3339(new.not_after_unix_ms)
                );
                *identity.borrow_mut() = Some(new);
                true
            }
            Err(e) => {
                retry_later(&e);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn after_a_failure_the_next_server_is_tried_then_the_first_again() {
        let urls: Vec<String> = [
            "http://127.0.0.1:1",
            "http://127.0.0.2:2",
            "http://127.0.0.3:3",
        ]
        .iter()
        .map(|u| (*u).to_owned())
        .collect();
        let first = super::super::targets::first_server("pi-2", 3);
        let c = Connector::insecure(Targets::new(&urls, "pi-2").unwrap());
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(c.endpoint().await.unwrap().uri().to_string());
            assert!(c.next_server());
        }
        let expected: Vec<String> = (0..4)
            .map(|k| format!("{}/", urls[(first + k) % 3]))
            .collect();
        assert_eq!(seen, expected);
        let one = Connector::insecure(Targets::new(&urls[..1], "pi-2").unwrap());
        assert!(!one.next_server());
        assert_eq!(one.next_url(), "http://127.0.0.1:1/");
    }
}
