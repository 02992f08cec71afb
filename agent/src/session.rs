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

use std::cell::Cell;
use std::error::Error as _;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use monitor::pb;
use monitor::pb::collector_client::CollectorClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::backoff::{Backoff, unit_random};
use crate::command_session::{self, CommandContext};
use crate::state::Shared;

/// Most batches sent and not yet acknowledged on one session: enough to
/// cover the round trip while catching up after an outage, small enough to
/// bound what is re-sent after a drop.
pub const SEND_WINDOW: usize = 64;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a session ended.
#[derive(Debug)]
pub enum SessionError {
    Connect(tonic::transport::Error),
    Status(tonic::Status),
    /// The server closed a stream without an error.
    Closed(&'static str),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Connect(e) => {
                write!(f, "cannot connect: {e}")?;
                let mut source = e.source();
                while let Some(s) = source {
                    write!(f, ": {s}")?;
                    source = s.source();
                }
                Ok(())
            }
            SessionError::Status(s) => write!(f, "{}: {}", s.code(), s.message()),
            SessionError::Closed(what) => write!(f, "the server closed the {what} stream"),
        }
    }
}

impl std::error::Error for SessionError {}

impl From<tonic::Status> for SessionError {
    fn from(s: tonic::Status) -> Self {
        SessionError::Status(s)
    }
}

/// The endpoint with the connection settings every session uses.
pub fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    let (interval, timeout) = monitor::keepalive::from_env();
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(interval)
        .keep_alive_timeout(timeout)
        .keep_alive_while_idle(true))
}

/// Connects and reconnects forever; returns only if `endpoint` is unusable.
pub async fn run(endpoint: Endpoint, shared: Rc<Shared>, commands: Rc<CommandContext>) {
    let mut backoff = Backoff::default();
    let mut failures = 0u32;
    loop {
        let healthy = Cell::new(false);
        let result = match endpoint.connect().await {
            Ok(channel) => session(channel, &shared, &commands, &healthy).await,
            Err(e) => Err(SessionError::Connect(e)),
        };
        shared.connected.set(false);
        if healthy.get() {
            backoff.reset();
            failures = 0;
        }
        failures += 1;
        let delay = backoff.next_delay(unit_random());
        let err = match &result {
            Ok(()) => "session ended".to_owned(),
            Err(e) => e.to_string(),
        };
        // The first failure after a good session is news; the rest of a
        // long outage is logged quietly once a minute or so by the backoff.
        if failures == 1 {
            log::warn!(
                "{}: {err}; retrying in {:.1}s ({} batches buffered)",
                endpoint.uri(),
                delay.as_secs_f64(),
                shared.buffer.borrow().len()
            );
        } else {
            log::info!(
                "{}: {err}; retry {failures} in {:.1}s ({} batches buffered, {} dropped)",
                endpoint.uri(),
                delay.as_secs_f64(),
                shared.buffer.borrow().len(),
                shared.buffer.borrow().dropped_total()
            );
        }
        tokio::time::sleep(delay).await;
    }
}

async fn session(
    channel: Channel,
    shared: &Shared,
    commands: &Rc<CommandContext>,
    healthy: &Cell<bool>,
) -> Result<(), SessionError> {
    let client = CollectorClient::new(channel);
    tokio::select! {
        r = report(client.clone(), shared, healthy) => r,
        r = command_session::run(client, shared, commands, healthy) => r,
    }
}

/// The Report stream: sends buffered batches in order within the window,
/// frees them as acknowledgements arrive.
async fn report(
    mut client: CollectorClient<Channel>,
    shared: &Shared,
    healthy: &Cell<bool>,
) -> Result<(), SessionError> {
    let (tx, rx) = mpsc::channel::<pb::Batch>(8);
    shared.buffer.borrow_mut().rewind();
    let mut acks = client.report(ReceiverStream::new(rx)).await?.into_inner();
    if !shared.connected.replace(true) {
        log::info!(
            "connected to the server ({} batches to send)",
            shared.buffer.borrow().len()
        );
    }
    loop {
        let can_send = {
            let buffer = shared.buffer.borrow();
            buffer.has_unsent() && buffer.in_flight() < SEND_WINDOW
        };
        tokio::select! {
            biased;
            msg = acks.message() => {
                let Some(ack) = msg? else {
                    return Err(SessionError::Closed("report"));
                };
                healthy.set(true);
                on_ack(shared, &ack);
            }
            permit = tx.reserve(), if can_send => {
                let Ok(permit) = permit else {
                    return Err(SessionError::Closed("report"));
                };
                let next = shared.buffer.borrow_mut().next_to_send();
                if let Some(batch) = next {
                    let pb = monitor::wire::batch_to_pb(
                        &shared.identity,
                        &batch,
                        monitor::time::now_unix_ms(),
                        shared.counters(),
                    );
                    permit.send(pb);
                }
            }
            () = shared.batch_ready.notified(), if !can_send => {}
        }
    }
}

fn on_ack(shared: &Shared, ack: &pb::Ack) {
    if ack.code != 0 {
        log::error!(
            "the server rejected batch {} (code {}): {}",
            ack.seq,
            ack.code,
            ack.message
        );
    }
    let freed = shared.buffer.borrow_mut().ack(ack.boot_id, ack.seq);
    if freed > 0 {
        if shared.buffer.borrow().is_empty() {
            shared.with_spool(|spool, _| spool.clear());
        }
        shared.buffer_drained.notify_waiters();
    } else {
        log::debug!(
            "acknowledgement for batch {:016x}/{} not held",
            ack.boot_id,
            ack.seq
        );
    }
}
