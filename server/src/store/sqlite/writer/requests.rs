//! The writer's queue: what the writer can be asked ([`Request`]), how it
//! gathers queued requests into one flush ([`gather`]), and how each
//! request gets its answer ([`answer`]).
//!
//! Requests are taken off the queue in the order they were queued and
//! answered in that order, which is what lets a stream keep many batches in
//! flight. Nothing here may answer a request with anything but what its
//! flush did, or take more than `flush_max_batches` requests off the queue
//! at once (the queue, not the writer, is what holds the backlog).

use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::error::StoreError;
use crate::store::records::{
    CommandRecord, CommandResultRecord, CursorRecord, CursorWrite, IncomingBatch, SubmitOutcome,
    TrustAnswer, TrustWrite,
};
use crate::store::ticket::Reply;

/// What the writer thread is asked to do.
pub(crate) enum Request {
    Batch {
        batch: IncomingBatch,
        reply: Reply<SubmitOutcome>,
    },
    Command {
        record: CommandRecord,
        reply: Reply<()>,
    },
    CommandResult {
        record: CommandResultRecord,
        reply: Reply<()>,
    },
    /// A join token, a certificate, a revocation.
    Trust {
        write: TrustWrite,
        reply: Reply<TrustAnswer>,
    },
    /// A forwarding cursor moved, or the set of destinations changed.
    Cursors {
        write: CursorWrite,
        reply: Reply<Vec<CursorRecord>>,
    },
    /// Commit what came before, close the connection, stop.
    Close { reply: Reply<()> },
    /// Sets SQLite's `max_page_count` (within a flush of its own or with
    /// the requests around it) and answers the count in force.
    #[cfg(test)]
    SetMaxPageCount { pages: u64, reply: Reply<u64> },
    /// Commit what came before, then stop without merging the journal or
    /// checkpointing: the file is left as `kill -9` would leave it.
    #[cfg(test)]
    Abandon { reply: Reply<()> },
}

/// A request's answer, decided inside the flush's transaction and sent
/// only once that transaction committed (or with the failure that rolled
/// it back).
pub(super) enum Answer {
    Batch(SubmitOutcome),
    Trust(TrustAnswer),
    Cursors(Vec<CursorRecord>),
    Done,
    #[cfg(test)]
    Pages(u64),
    Failed(StoreError),
}

/// Sends `answer` to whoever queued `request`.
pub(super) fn answer(request: Request, answer: Answer) {
    // A send fails only if the submitter stopped waiting (its stream is
    // gone): the batch is committed all the same, and a re-send is a
    // duplicate.
    match (request, answer) {
        (Request::Batch { reply, .. }, Answer::Batch(o)) => {
            let _ = reply.send(Ok(o));
        }
        (Request::Batch { reply, .. }, Answer::Failed(e)) => {
            let _ = reply.send(Err(e));
        }
        (Request::Batch { reply, .. }, _) => {
            let _ = reply.send(Err(StoreError::Closed));
        }
        (Request::Command { reply, .. } | Request::CommandResult { reply, .. }, answer) => {
            let _ = reply.send(match answer {
                Answer::Failed(e) => Err(e),
                _ => Ok(()),
            });
        }
        (Request::Trust { reply, .. }, answer) => {
            let _ = reply.send(match answer {
                Answer::Trust(a) => Ok(a),
                Answer::Failed(e) => Err(e),
                _ => Err(StoreError::Closed),
            });
        }
        (Request::Cursors { reply, .. }, answer) => {
            let _ = reply.send(match answer {
                Answer::Cursors(c) => Ok(c),
                Answer::Failed(e) => Err(e),
                _ => Err(StoreError::Closed),
            });
        }
        (Request::Close { reply }, _) => {
            let _ = reply.send(Ok(()));
        }
        #[cfg(test)]
        (Request::SetMaxPageCount { reply, .. }, answer) => {
            let _ = reply.send(match answer {
                Answer::Pages(n) => Ok(n),
                Answer::Failed(e) => Err(e),
                _ => Err(StoreError::Closed),
            });
        }
        #[cfg(test)]
        (Request::Abandon { reply }, _) => {
            let _ = reply.send(Err(StoreError::Closed));
        }
    }
}

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
