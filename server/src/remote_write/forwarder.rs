//! One destination's loop: read the stored batches after its cursor (at
//! most [`MAX_SAMPLES_PER_REQUEST`] samples), send them as one
//! remote-write request, and move the cursor in the store once the
//! receiver took them, or once they are given up:
//! - 2xx: sent;
//! - 5xx, 429, no connection: retried with exponential backoff (250 ms
//!   doubling to 30 s), the same request, for as long as its batches are
//!   within the maximum lag;
//! - any other 4xx: the receiver will never take them (out of order, too
//!   old, malformed, unauthorised): dropped and counted, the receiver's
//!   message logged (escaped, capped, at most once a minute);
//! - batches that arrived longer than `max_lag` ago: dropped and counted
//!   without sending (a receiver that was down for longer would refuse
//!   them anyway, and the journal must not grow without bound).
//!
//! On a store several replicas share, every replica runs this loop for
//! each destination it is configured with, but only the one holding the
//! destination's claim (`store/claim.rs`) forwards; the others wait to
//! take over when it dies, from the cursor it stored.
//!
//! The loop never holds anything the store's writer waits for: it reads on
//! the store's read connections and moves its cursor through the writer's
//! queue (SQLite) or the claim's own connection (PostgreSQL). It must
//! never move a cursor past a batch that was neither accepted nor counted
//! as dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use monitor::text::Escaped;
use tokio::sync::watch;

use super::Stats;
use super::client::{Client, Sent};
use super::destination::Destination;
use super::proto;
use crate::store::{CursorRecord, ForwardClaim, ForwardRow, Store, StoreError};

/// Most samples in one request (Prometheus' own sender sends 2,000 by
/// default; receivers take far more; fewer requests cost less CPU).
pub const MAX_SAMPLES_PER_REQUEST: usize = 10_000;
/// While caught up, how often the journal is read when no flush woke us.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// While another replica forwards to the destination, how often this one
/// tries to take it over.
const CLAIM_POLL: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A failing destination is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// A log line that says itself at most once per [`LOG_EVERY`], with the
/// count of times it kept quiet.
struct Quiet {
    last: Option<Instant>,
    quiet: u64,
}

impl Quiet {
    fn new() -> Quiet {
        Quiet {
            last: None,
            quiet: 0,
        }
    }

    /// `Some(times kept quiet)` when a line is due.
    fn due(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            self.quiet += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.quiet))
    }
}

/// The forwarder's throttled log lines.
struct Logs {
    read_errors: Quiet,
    refusals: Quiet,
    too_old: Quiet,
}

impl Default for Logs {
    fn default() -> Logs {
        Logs {
            read_errors: Quiet::new(),
            refusals: Quiet::new(),
            too_old: Quiet::new(),
        }
    }
}

/// One destination's forwarding task.
pub struct Forwarder {
    pub store: Store,
    pub destination: Destination,
    pub stats: Arc<Stats>,
    pub max_lag: Duration,
    /// Bumped after each flush that stored batches: new data to send.
    pub stored: watch::Receiver<u64>,
    /// Turns true when the server stops.
    pub stop: watch::Receiver<bool>,
}

/// What became of one request's batches.
enum Delivery {
    Accepted,
    /// Dropped (counted): the cursor moves past them.
    Dropped,
    /// The server stops: the cursor stays.
    Stopped,
}

/// How a forwarding step ended.
enum Step {
    /// The cursor is here now.
    Moved(i64),
    /// The server stops: the cursor stays.
    Stopped,
    /// Another replica forwards to the destination now: this one's claim
    /// went with its connection to the store.
    Lost,
}

impl Forwarder {
    /// Runs until the server stops: takes the destination's claim (at once
    /// on a store of one server; on a shared store when no other replica
    /// holds it), then forwards from its cursor (first the request in
    /// flight when the last forwarder stopped, if any), and takes the
    /// claim again if it is lost.
    pub async fn run(mut self) {
        let url = self.destination.url.clone();
        let mut client = match Client::new(self.destination.clone()) {
            Ok(c) => c,
            Err(e) => {
                log::error!("remote-write {url}: {e}; not forwarding to it");
                return;
            }
        };
        let mut claim = self.store.forward_claim(&url, self.max_lag);
        let mut logs = Logs::default();
        let mut told_waiting = false;
        loop {
            if *self.stop.borrow() {
                break;
            }
            let start = match claim.take().await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    if !told_waiting {
                        told_waiting = true;
                        log::info!(
                            "remote-write {url}: another replica forwards to it; this one \
                             takes over if that one stops"
                        );
                    }
                    if self.pause(CLAIM_POLL).await {
                        break;
                    }
                    continue;
                }
                Err(StoreError::Closed) => break,
                Err(e) => {
                    if let Some(n) = logs.read_errors.due() {
                        log::error!(
                            "remote-write {url}: cannot take the destination's cursor: {e} \
                             ({n} more)"
                        );
                    }
                    if self.pause(CLAIM_POLL).await {
                        break;
                    }
                    continue;
                }
            };
            told_waiting = false;
            log::info!(
                "remote-write to {url} from journal id {} (max lag {:?})",
                start.journal_id,
                self.max_lag
            );
            match self
                .forward_from(&mut client, &mut claim, start, &mut logs)
                .await
            {
                Step::Lost => log::warn!(
                    "remote-write {url}: this server lost the destination to another replica \
                     (its claim's connection to the store closed); taking it again once free"
                ),
                Step::Stopped | Step::Moved(_) => break,
            }
        }
    }

    /// Forwards from the cursor `start` while the claim is held.
    async fn forward_from(
        &mut self,
        client: &mut Client,
        claim: &mut ForwardClaim,
        start: CursorRecord,
        logs: &mut Logs,
    ) -> Step {
        let url = self.destination.url.clone();
        let mut cursor = start.journal_id;
        self.stats.cursor.store(cursor, Ordering::Relaxed);
        // Exactly the request in flight at the last stop, alone: a receiver
        // that applies requests whole then has each sample once (or
        // refuses this one as already had: logged, counted as refused).
        let mut until = (start.sending_through > cursor).then_some(start.sending_through);
        if let Some(u) = until {
            log::info!(
                "remote-write {url}: sending again the request in flight when the last \
                 forwarder stopped (journal ids {} to {u})",
                cursor + 1
            );
        }
        loop {
            if *self.stop.borrow() {
                return Step::Stopped;
            }
            let read = self
                .store
                .forward_batch(cursor, until, MAX_SAMPLES_PER_REQUEST)
                .await;
            let batch = match read {
                Ok(b) => b,
                Err(StoreError::Closed) => return Step::Stopped,
                Err(e) => {
                    if let Some(n) = logs.read_errors.due() {
                        log::error!("remote-write {url}: cannot read the store: {e} ({n} more)");
                    }
                    if self.pause(IDLE_POLL).await {
                        return Step::Stopped;
                    }
                    continue;
                }
            };
            self.stats.newest.store(batch.newest, Ordering::Relaxed);
            let step = if let Some(u) = until.take() {
                // Rows the journal no longer holds were dropped already.
                self.forward(client, claim, batch.rows, u, logs).await
            } else if batch.rows.is_empty() {
                self.stats.oldest_unsent_unix_ms.store(0, Ordering::Relaxed);
                let step = if batch.through > cursor {
                    self.advance(claim, batch.through).await
                } else {
                    Step::Moved(cursor)
                };
                if matches!(step, Step::Moved(_)) && self.idle().await {
                    return Step::Stopped;
                }
                step
            } else {
                self.forward(client, claim, batch.rows, batch.through, logs)
                    .await
            };
            match step {
                Step::Moved(c) => cursor = c,
                other => return other,
            }
        }
    }

    /// Sends `rows` (the batches after the cursor up to `through`) or drops
    /// them, then moves the cursor to `through`.
    async fn forward(
        &mut self,
        client: &mut Client,
        claim: &mut ForwardClaim,
        rows: Vec<ForwardRow>,
        through: i64,
        logs: &mut Logs,
    ) -> Step {
        let first_received = rows.first().map_or(0, |r| r.received_unix_ms);
        self.stats
            .oldest_unsent_unix_ms
            .store(first_received.max(1), Ordering::Relaxed);
        let cutoff = self.cutoff();
        let (old, fresh): (Vec<ForwardRow>, Vec<ForwardRow>) =
            rows.into_iter().partition(|r| r.received_unix_ms < cutoff);
        if !old.is_empty() {
            self.drop_too_old(&old, &mut logs.too_old);
        }
        if !fresh.is_empty() {
            // The request is noted before it leaves, so a restart (or the
            // replica taking over) sends exactly it again, never a mix of
            // it and newer batches.
            while let Err(e) = claim.set_sending(through).await {
                if matches!(e, StoreError::Closed) || self.pause(IDLE_POLL).await {
                    return Step::Stopped;
                }
                if !claim.is_held() {
                    return Step::Lost;
                }
                if let Some(n) = logs.read_errors.due() {
                    log::error!(
                        "remote-write {}: cannot note a request in the store: {e} ({n} more)",
                        self.destination.url
                    );
                }
            }
            match self.deliver(client, &fresh, logs).await {
                Delivery::Accepted | Delivery::Dropped => {}
                Delivery::Stopped => return Step::Stopped,
            }
        }
        self.advance(claim, through).await
    }

    /// Sends `rows` until the receiver takes them, refuses them, they grow
    /// older than the maximum lag, or the server stops.
    async fn deliver(
        &mut self,
        client: &mut Client,
        rows: &[ForwardRow],
        logs: &mut Logs,
    ) -> Delivery {
        let url = self.destination.url.clone();
        let samples: u64 = rows.iter().map(|r| r.samples.len() as u64).sum();
        let body = match proto::encode(rows) {
            Ok(b) => b,
            Err(e) => {
                // snappy fails only on inputs over ~4 GiB: a request is
                // at most a few MiB. Counted like a refusal.
                log::error!("remote-write {url}: cannot compress a request: {e}");
                self.stats
                    .refused_samples
                    .fetch_add(samples, Ordering::Relaxed);
                return Delivery::Dropped;
            }
        };
        let mut backoff = BACKOFF_FIRST;
        let mut failures = Quiet::new();
        loop {
            match client.post(body.clone()).await {
                Sent::Accepted => {
                    self.stats
                        .sent_samples
                        .fetch_add(samples, Ordering::Relaxed);
                    self.stats.sent_requests.fetch_add(1, Ordering::Relaxed);
                    return Delivery::Accepted;
                }
                Sent::Refused { status, message } => {
                    self.stats
                        .refused_samples
                        .fetch_add(samples, Ordering::Relaxed);
                    if let Some(n) = logs.refusals.due() {
                        log::warn!(
                            "remote-write {url}: the receiver refused {samples} samples with \
                             HTTP {status}: {}; dropped ({n} more refusals since the last such line)",
                            Escaped::capped(&message)
                        );
                    }
                    return Delivery::Dropped;
                }
                Sent::Retry { status, message } => {
                    if let Some(n) = failures.due() {
                        log::warn!(
                            "remote-write {url}: HTTP {status}: {}; retrying with backoff \
                             ({n} more failures)",
                            Escaped::capped(&message)
                        );
                    }
                }
                Sent::Unreachable(why) => {
                    if let Some(n) = failures.due() {
                        log::warn!(
                            "remote-write {url}: {}; retrying with backoff ({n} more failures)",
                            Escaped::capped(&why)
                        );
                    }
                }
            }
            self.stats
                .failed_samples
                .fetch_add(samples, Ordering::Relaxed);
            if self.pause(backoff).await {
                return Delivery::Stopped;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            // Still down past the maximum lag: give these up, go on with
            // newer batches (which the receiver may still take).
            if rows
                .first()
                .is_some_and(|r| r.received_unix_ms < self.cutoff())
            {
                self.drop_too_old(rows, &mut logs.too_old);
                return Delivery::Dropped;
            }
        }
    }

    /// Batches that arrived before this (ms since the Unix epoch) are too
    /// old to send.
    fn cutoff(&self) -> i64 {
        let lag_ms = i64::try_from(self.max_lag.as_millis()).unwrap_or(i64::MAX);
        monitor::time::now_unix_ms().saturating_sub(lag_ms)
    }

    fn drop_too_old(&self, rows: &[ForwardRow], quiet: &mut Quiet) {
        let samples: u64 = rows.iter().map(|r| r.samples.len() as u64).sum();
        self.stats
            .too_old_samples
            .fetch_add(samples, Ordering::Relaxed);
        if let Some(n) = quiet.due() {
            log::warn!(
                "remote-write {}: dropped {samples} samples that arrived more than {:?} ago \
                 (--remote-write-max-lag) without sending them ({n} more such drops)",
                self.destination.url,
                self.max_lag
            );
        }
    }

    /// Moves the cursor to `through` in memory and in the store. A failed
    /// store write is not fatal while the claim holds: the next one
    /// carries it (after a restart the batches since the last stored
    /// cursor are sent again). `Lost` if the claim went meanwhile.
    async fn advance(&self, claim: &mut ForwardClaim, through: i64) -> Step {
        self.stats.cursor.store(through, Ordering::Relaxed);
        if let Err(e) = claim.set_cursor(through).await {
            if !claim.is_held() {
                return Step::Lost;
            }
            if !matches!(e, StoreError::Closed) {
                log::warn!(
                    "remote-write {}: cannot store the cursor: {e}",
                    self.destination.url
                );
            }
        }
        Step::Moved(through)
    }

    /// Waits for a flush that stored batches, at most [`IDLE_POLL`]; true
    /// when the server stops.
    async fn idle(&mut self) -> bool {
        let stopped = tokio::select! {
            _ = self.stop.wait_for(|s| *s) => None,
            changed = self.stored.changed() => Some(changed.is_ok()),
            () = tokio::time::sleep(IDLE_POLL) => Some(true),
        };
        match stopped {
            None => true,
            Some(true) => false,
            // No more flush news (only while stopping): poll.
            Some(false) => self.pause(IDLE_POLL).await,
        }
    }

    /// Sleeps `d`; true when the server stops meanwhile.
    async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = self.stop.wait_for(|s| *s) => true,
            () = tokio::time::sleep(d) => false,
        }
    }
}
