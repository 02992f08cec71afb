//! The answer to a queued store request: the pipelining half of the store's
//! face. Every backend answers a request through a oneshot channel, so a
//! caller can queue many requests in order and await their answers later.
//!
//! A ticket must never resolve `Ok` before the backend committed what the
//! request asked for.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::error::StoreError;

/// Where a backend sends the answer of one request.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Resolves once the store handled the request (for a batch: committed,
/// known to be a duplicate, or refused), or with `Closed` if the store
/// stopped before answering.
#[derive(Debug)]
pub struct Ticket<T>(oneshot::Receiver<Result<T, StoreError>>);

impl<T> Ticket<T> {
    /// A ticket and the reply its backend answers through.
    pub(crate) fn new() -> (Reply<T>, Ticket<T>) {
        let (reply, answer) = oneshot::channel();
        (reply, Ticket(answer))
    }
}

impl<T> Future for Ticket<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // A dropped reply means the backend stopped before answering.
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::Closed)))
    }
}
