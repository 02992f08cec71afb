//! State shared by the agent's tasks on its single thread.
//!
//! Every task runs on one current-thread runtime (`spawn_local`), so sharing
//! is `Rc` + `Cell`/`RefCell`. Invariant: no `RefCell` borrow is ever held
//! across an `.await`, so a borrow can never fail at run time.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use monitor::wire::{AgentCounters, AgentIdentity};
use tokio::sync::{Notify, watch};

use crate::buffer::Buffer;
use crate::outbox::Outbox;
use crate::spool::Spool;

pub struct Shared {
    pub identity: AgentIdentity,
    /// Batches not yet acknowledged by the server.
    pub buffer: RefCell<Buffer>,
    /// The open Report stream's sending side (`outbox.rs`), while a
    /// stream is open: whoever makes a write due sends it through
    /// [`Shared::send_due`], so no task is woken only to pass it on.
    pub outbox: RefCell<Option<Outbox>>,
    /// The sampler has stopped (`sampling_done`): wakes the Report task,
    /// which then ends its half of the stream once everything is sent.
    pub sampler_stopped: Notify,
    /// Longest a batch waits before it is sent (`--flush-interval`,
    /// `flush.rs`).
    pub flush_interval: Duration,
    /// Send what waits now, whatever the flush interval (a `collect-now`
    /// tick): set by the sampler, cleared by the sender when it starts the
    /// write.
    pub flush_now: Cell<bool>,
    /// The buffer shrank (acks): wakes whoever waits for it to drain.
    pub buffer_drained: Notify,
    /// Current sampling interval; `set-interval` writes it.
    pub interval: watch::Sender<Duration>,
    /// `collect-now` asks the sampler for an extra tick.
    pub collect_now: Notify,
    /// /proc lines that failed to parse since start.
    pub parse_errors_total: Cell<u64>,
    /// When the sampler last ticked (the watchdog checks it).
    pub last_tick: Cell<Option<Instant>>,
    pub started: Instant,
    /// Whether a session with the server is up.
    pub connected: Cell<bool>,
    /// Sessions (or attempts) that ended since start: a reconnection
    /// touched code the steady state does not (`run.rs` releases it).
    pub sessions_ended_total: Cell<u64>,
    /// The on-disk copy of `buffer`, when `--spool` is set.
    pub spool: RefCell<Option<Spool>>,
    /// Spool errors since start (logged once per burst, never fatal).
    pub spool_errors_total: Cell<u64>,
    /// The sampler has stopped (shutdown, or `--count` reached): once
    /// everything is sent, the Report stream ends its half, so that the
    /// server answers at once what it holds for a cumulative ack.
    pub sampling_done: Cell<bool>,
}

impl Shared {
    pub fn new(identity: AgentIdentity, buffer_batches: usize, interval: Duration) -> Shared {
        Shared {
            identity,
            buffer: RefCell::new(Buffer::new(buffer_batches)),
            outbox: RefCell::new(None),
            sampler_stopped: Notify::new(),
            flush_interval: crate::flush::DEFAULT_FLUSH_INTERVAL,
            flush_now: Cell::new(false),
            buffer_drained: Notify::new(),
            interval: watch::Sender::new(interval),
            collect_now: Notify::new(),
            parse_errors_total: Cell::new(0),
            last_tick: Cell::new(None),
            started: Instant::now(),
            connected: Cell::new(false),
            sessions_ended_total: Cell::new(0),
            spool: RefCell::new(None),
            spool_errors_total: Cell::new(0),
            sampling_done: Cell::new(false),
        }
    }

    /// Runs `f` on the spool if there is one; an error is logged (the first
    /// of a run of errors at warn level) and counted, never fatal: the
    /// in-memory buffer still holds everything.
    pub fn with_spool(
        &self,
        f: impl FnOnce(&mut Spool, &Buffer) -> Result<(), crate::spool::SpoolError>,
    ) {
        let mut spool = self.spool.borrow_mut();
        let Some(spool) = spool.as_mut() else {
            return;
        };
        match f(spool, &self.buffer.borrow()) {
            Ok(()) => self.spool_errors_total.set(0),
            Err(e) => {
                let n = self.spool_errors_total.get() + 1;
                self.spool_errors_total.set(n);
                if n == 1 {
                    log::warn!("{e} (batches stay in memory)");
                } else {
                    log::debug!("{e}");
                }
            }
        }
    }

    /// Whether the batches waiting should go out now: a flush interval's
    /// worth of ticks waits (`flush.rs`), a `collect-now` tick asked for it,
    /// or the sampler has stopped.
    pub fn write_due(&self) -> bool {
        let buffer = self.buffer.borrow();
        if !buffer.has_unsent() {
            return false;
        }
        self.flush_now.get()
            || self.sampling_done.get()
            || buffer.unsent()
                >= crate::flush::ticks_per_write(
                    self.flush_interval,
                    *self.interval.borrow(),
                    buffer.capacity(),
                )
    }

    /// Sends what is due on the open Report stream, if one is open: starts
    /// a write when one is due (`write_due`), then sends while the write
    /// lasts and the window and pacing allow (`Outbox::send`). Called by
    /// the sampler after each tick and by the Report task when an ack or
    /// the end of a pause makes room.
    pub fn send_due(&self) {
        let mut outbox = self.outbox.borrow_mut();
        let Some(outbox) = outbox.as_mut() else {
            return;
        };
        if !outbox.writing() {
            if !self.write_due() {
                return;
            }
            outbox.start_write();
            self.flush_now.set(false);
        }
        let counters = self.counters();
        outbox.send(
            &mut self.buffer.borrow_mut(),
            &self.identity,
            counters,
            tokio::time::Instant::now(),
        );
    }

    /// The running totals that travel with every batch.
    pub fn counters(&self) -> AgentCounters {
        let buffer = self.buffer.borrow();
        AgentCounters {
            produced_batches_total: buffer.produced_total(),
            dropped_batches_total: buffer.dropped_total(),
            parse_errors_total: self.parse_errors_total.get(),
        }
    }
}
