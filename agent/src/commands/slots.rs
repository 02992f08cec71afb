//! The concurrency limit on commands: a fixed number of slots, taken before
//! a process is spawned and given back when its [`Slot`] is dropped.
//!
//! A full house is refused at once with a clear reason; there is no queue,
//! because a queued command would run at a time the operator did not choose
//! and its timeout would mean nothing. This module must never wait.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::refusal::Refusal;

/// Shared counter of running commands. Cheap to clone; clones share slots.
#[derive(Debug, Clone)]
pub struct Slots {
    semaphore: Arc<Semaphore>,
    limit: usize,
}

/// One running command's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Slots {
    /// `limit` commands may run at once (0 refuses every command).
    pub fn new(limit: usize) -> Slots {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        Slots {
            semaphore: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// Takes a slot, or refuses with "2 commands already running (limit 2)".
    pub fn try_acquire(&self) -> Result<Slot, Refusal> {
        match Arc::clone(&self.semaphore).try_acquire_owned() {
            Ok(permit) => Ok(Slot { _permit: permit }),
            Err(_) => Err(Refusal::Busy {
                running: self.running(),
                limit: self.limit,
            }),
        }
    }

    /// Commands holding a slot right now.
    pub fn running(&self) -> usize {
        self.limit - self.semaphore.available_permits()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}
