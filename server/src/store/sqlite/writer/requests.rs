//! The writer's queue: how the writer thread gathers queued requests
//! (`store/requests.rs`) into one flush ([`gather`]).
//!
//! Requests are taken off the queue in the order they were queued and
//! answered in that order, which is what lets a stream keep many batches in
//! flight. Nothing here may answer a request with anything but what its
//! flush did, or take more than `flush_max_batches` requests off the queue
//! at once (the queue, not the writer, is what holds the backlog).

use std::time::Duration;

use tokio::sync::mpsc;

pub(crate) use crate::store::requests::{Answer, Request, answer};
use crate::store::ticket::Reply;

/// How many requests one flush takes, and how long it waits for them.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub(super) max_requests: usize,
    /// Counted from the flush's first request.
    pub(super) max_delay: Duration,
}

/// Requests that end the writer's loop once what came before them is
/// committed.
#[derive(Default)]
pub(super) struct Stops {
    pub(super) closing: Vec<Reply<()>>,
    #[cfg(test)]
    pub(super) abandon: Option<Reply<()>>,
}

impl Stops {
    pub(super) fn any(&self) -> bool {
        #[cfg(test)]
        if self.abandon.is_some() {
            return true;
        }
        !self.closing.is_empty()
    }
}

/// What [`next`] found on the queue.
pub(super) enum Next {
    Request(Request),
    /// Nothing arrived within the wait.
    Idle,
    /// Every sender is gone.
    Disconnected,
}

/// Waits up to `wait` for the next request.
pub(super) fn next(
    rt: &tokio::runtime::Runtime,
    rx: &mut mpsc::Receiver<Request>,
    wait: Duration,
) -> Next {
    match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
        Ok(Some(r)) => Next::Request(r),
        Ok(None) => Next::Disconnected,
        Err(_) => Next::Idle,
    }
}

/// Collects requests into `pending`, starting with `first`, until
/// `limits.max_requests`, `limits.max_delay` after `first`, a Close (or the
/// Abandon test hook, both noted in `stops`), or every sender gone.
pub(super) fn gather(
    rt: &tokio::runtime::Runtime,
    rx: &mut mpsc::Receiver<Request>,
    first: Request,
    pending: &mut Vec<Request>,
    limits: Limits,
    stops: &mut Stops,
) {
    let deadline = tokio::time::Instant::now() + limits.max_delay;
    let mut next = Some(first);
    loop {
        match next.take() {
            Some(Request::Close { reply }) => {
                stops.closing.push(reply);
                return;
            }
            #[cfg(test)]
            Some(Request::Abandon { reply }) => {
                stops.abandon = Some(reply);
                return;
            }
            Some(r) => pending.push(r),
            None => {}
        }
        if pending.len() >= limits.max_requests {
            return;
        }
        next = match rx.try_recv() {
            Ok(r) => Some(r),
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) => {
                if tokio::time::Instant::now() >= deadline {
                    return;
                }
                match rt.block_on(async { tokio::time::timeout_at(deadline, rx.recv()).await }) {
                    Ok(Some(r)) => Some(r),
                    Ok(None) | Err(_) => return,
                }
            }
        };
    }
}

/// After a Close: stops the queue and takes what raced in behind the
/// Close, which is still committed and answered (refusing it would gain
/// nothing).
pub(super) fn drain(
    rx: &mut mpsc::Receiver<Request>,
    pending: &mut Vec<Request>,
    stops: &mut Stops,
) {
    rx.close();
    while let Ok(r) = rx.try_recv() {
        match r {
            Request::Close { reply } => stops.closing.push(reply),
            other => pending.push(other),
        }
    }
}
