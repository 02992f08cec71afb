//! The connection to the server: connect, run a session, back off, repeat.
//!
//! A session is one HTTP/2 connection carrying two streams: `Report`
//! (batches up, acknowledgements down) and `CommandStream` (results up,
//! commands down). When either ends, both are torn down and the agent
//! reconnects after a backoff (1 s, ×1.6, ±20 %, capped at 2 min), forever;
//! the backoff resets once a session proved healthy. HTTP/2 keepalive pings,
//! sent while idle too, notice a dead or frozen server within 40 s (see
//! [`monitor::keepalive`], which also holds the tests' knob).
//!
//! Invariant: batches go out in sequence order, starting after a reconnect
//! from the oldest unacknowledged one. The server's de-duplication relies on
//! it.

mod commands;
mod connector;
mod error;
pub mod gate;
mod report;
mod targets;

use std::cell::Cell;
use std::rc::Rc;

use monitor::pb::collector_client::CollectorClient;
use tonic::transport::Channel;

pub use commands::CommandContext;
pub use connector::{ConnectError, Connector};
pub use error::SessionError;
pub use targets::{Targets, first_server};

use crate::backoff::{Backoff, unit_random};
use crate::state::Shared;

/// Largest message the agent accepts from the server: a command is at most
/// 8 KiB of argv plus its signed grant, an ack a few dozen bytes. A
/// server that sends more (a security review saw 4 MiB requests fill a
/// Pi's log) ends the session instead.
pub const MAX_SERVER_MESSAGE_BYTES: usize = 64 * 1024;

/// Connects and reconnects forever; returns only when the agent cannot go
/// on (its join token was refused, its identity cannot be used): the
/// caller stops the agent with that message.
pub async fn run(connector: Connector, shared: Rc<Shared>, commands: Rc<CommandContext>) -> String {
    let mut backoff = Backoff::default();
    let mut failures = 0u32;
    loop {
        let healthy = Cell::new(false);
        let result = match connector.endpoint().await {
            Err(ConnectError::Fatal(why)) => return why,
            Err(ConnectError::Retry(why)) => Err(SessionError::Enrol(why)),
            Ok(endpoint) => match endpoint.connect().await {
                Ok(channel) => session(channel, &connector, &shared, &commands, &healthy).await,
                Err(e) => Err(SessionError::Connect(e)),
            },
        };
        shared.connected.set(false);
        shared
            .sessions_ended_total
            .set(shared.sessions_ended_total.get() + 1);
        if let Ok(Ended::Renewed) = result {
            // A new certificate: reconnect with it at once, no backoff.
            log::info!("reconnecting with the renewed certificate");
            backoff.reset();
            failures = 0;
            continue;
        }
        if healthy.get() {
            backoff.reset();
            failures = 0;
        }
        failures += 1;
        let delay = backoff.next_delay(unit_random());
        let err = match &result {
            Ok(_) => "session ended".to_owned(),
            Err(e) => e.to_string(),
        };
        // The first failure after a good session is news; the rest of a
        // long outage is logged quietly once a minute or so by the backoff.
        if failures == 1 {
            log::warn!(
                "{}: {err}; retrying in {:.1}s ({} batches buffered)",
                connector.last_target(),
                delay.as_secs_f64(),
                shared.buffer.borrow().len()
            );
        } else {
            log::info!(
                "{}: {err}; retry {failures} in {:.1}s ({} batches buffered, {} dropped)",
                connector.last_target(),
                delay.as_secs_f64(),
                shared.buffer.borrow().len(),
                shared.buffer.borrow().dropped_total()
            );
        }
        // With several servers (replicas), or a name with several
        // addresses, the next try goes to the next one: an agent whose
        // server died fails over after one backoff.
        if connector.next_server() {
            log::info!("next server: {}", connector.next_url());
        }
        tokio::time::sleep(delay).await;
    }
}

/// How a session ended without an error.
enum Ended {
    /// A stream closed.
    Closed,
    /// The certificate was renewed: reconnect with it.
    Renewed,
}

/// One session: both streams until either ends, or until the certificate
/// is due for renewal (renewed on this connection, then the session ends
/// so the next one uses the new certificate).
async fn session(
    channel: Channel,
    connector: &Connector,
    shared: &Shared,
    commands: &Rc<CommandContext>,
    healthy: &Cell<bool>,
) -> Result<Ended, SessionError> {
    let client =
        CollectorClient::new(channel.clone()).max_decoding_message_size(MAX_SERVER_MESSAGE_BYTES);
    let renewal = async {
        loop {
            match connector.renew_in(monitor::time::now_unix_ms()) {
                None => std::future::pending::<()>().await,
                Some(wait) => tokio::time::sleep(wait).await,
            }
            if connector.renew(channel.clone()).await {
                return;
            }
        }
    };
    tokio::select! {
        r = report::run(channel.clone(), shared, healthy) => r.map(|()| Ended::Closed),
        r = commands::run(client, shared, commands, healthy) => r.map(|()| Ended::Closed),
        () = renewal => Ok(Ended::Renewed),
    }
}
