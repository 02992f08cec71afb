//! What a backend's writer can be asked ([`Request`]) and how each request
//! gets its answer ([`answer`]): the same for every backend, so both keep
//! requests in queue order and answer each once, after its transaction.
//!
//! Nothing here may answer a request with anything but what its flush did.
//! The test-only requests are the SQLite backend's hooks; another backend
//! answers them `Closed`.

use std::time::Duration;

use crate::store::error::StoreError;
use crate::store::records::{
    CommandRecord, CommandResultRecord, CursorRecord, CursorWrite, IncomingBatch, SubmitOutcome,
    TrustAnswer, TrustWrite,
};
use crate::store::ticket::Reply;

/// What a backend's writer is asked to do.
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
    /// A forwarding cursor moved, or the set of destinations changed
    /// (SQLite only: another backend answers it `Unsupported`).
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
pub(crate) enum Answer {
    Batch(SubmitOutcome),
    Trust(TrustAnswer),
    Cursors(Vec<CursorRecord>),
    Done,
    #[cfg(test)]
    Pages(u64),
    Failed(StoreError),
}

/// Sends `answer` to whoever queued `request`.
pub(crate) fn answer(request: Request, answer: Answer) {
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

/// Refuses writer settings no backend can work with, naming the field:
/// the queue, the flush size and the retention every backend has.
pub(crate) fn check_settings(
    queue_capacity: usize,
    flush_max_batches: usize,
    retention: Duration,
) -> Result<(), StoreError> {
    let bad = |field, detail| Err(StoreError::InvalidConfig { field, detail });
    if queue_capacity == 0 {
        return bad("queue_capacity", "must be at least 1");
    }
    if queue_capacity > tokio::sync::Semaphore::MAX_PERMITS {
        return bad("queue_capacity", "is too large");
    }
    if flush_max_batches == 0 {
        return bad("flush_max_batches", "must be at least 1");
    }
    if retention.is_zero() {
        return bad("retention", "must be longer than zero");
    }
    if i64::try_from(retention.as_millis()).is_err() {
        return bad("retention", "is too long");
    }
    Ok(())
}
