//! The writer task: takes requests off the bounded queue in order, groups
//! them into one transaction per flush (up to `flush_max_batches`, or
//! `flush_max_delay` after the first), answers each only after COMMIT, and
//! runs retention between flushes.
//!
//! It owns one connection of its own (not the read pool's, so reads never
//! delay an acknowledgement). When the database goes away, every request of
//! the flush fails (the agents keep their batches and re-send), the outage
//! is logged once when it starts and once when it ends, and the next flush
//! connects again; [`Health`] tells the rest of the server.
//!
//! It must never answer a request before its transaction committed, and
//! never keep a request's answer from a flush that rolled back.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};

use super::config::PostgresConfig;
use super::error::{PostgresError, is_connection_error, is_retryable};
use super::flush;
use super::journal;
use super::partitions;
use super::schema::Schema;
use super::trust;
use crate::store::TRUST_KEPT_AFTER_EXPIRY_MS;
use crate::store::error::StoreError;
use crate::store::records::{FlushStats, HostRecord, SubmitOutcome};
use crate::store::requests::{Answer, Request, answer};
use crate::store::ticket::Reply;
use crate::throttle::LogThrottle;

/// Attempts of one flush that fail only because of a concurrent
/// transaction (deadlock, serialization) or a partition dropped meanwhile.
const FLUSH_ATTEMPTS: usize = 3;
/// Most stale `agent_runs` rows one retention pass deletes.
const RETENTION_RUNS_PER_PASS: i64 = 10_000;

/// What the writer tells the handle: whether the database answers, as
/// it last saw it, and the per-host counts this store keeps in memory.
#[derive(Debug, Default)]
pub(crate) struct Health {
    down: AtomicBool,
    /// When the current outage began, ms since the Unix epoch (0: none).
    down_since_unix_ms: AtomicI64,
    /// Batches told apart by their samples since the store opened, by
    /// hostname (one entry per host that sent one: bounded by the hosts).
    checked_by_value: std::sync::Mutex<HashMap<String, u64>>,
}

impl Health {
    pub(crate) fn is_up(&self) -> bool {
        !self.down.load(Ordering::SeqCst)
    }

    pub(crate) fn down_since_unix_ms(&self) -> Option<i64> {
        let t = self.down_since_unix_ms.load(Ordering::SeqCst);
        (!self.is_up() && t != 0).then_some(t)
    }

    /// Sets each host's count of batches told apart by value.
    pub(crate) fn add_counts(&self, hosts: &mut [HostRecord]) {
        let counts = self
            .checked_by_value
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if counts.is_empty() {
            return;
        }
        for h in hosts {
            h.batches_checked_by_value_total = counts.get(&h.hostname).copied().unwrap_or(0);
        }
    }
}

pub(crate) struct Writer {
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) config: PostgresConfig,
    pub(crate) target: String,
    pub(crate) schema: Schema,
    pub(crate) client: Option<Client>,
    /// Partitions known to exist (made here or seen at start).
    pub(crate) partitions: BTreeSet<i64>,
    pub(crate) health: Arc<Health>,
    /// When the current outage began (for the "back" line).
    pub(crate) down_since: Option<Instant>,
    /// At most one line a minute about batches told apart by value.
    pub(crate) checked_by_value_log: LogThrottle,
}

/// Connects a client whose connection runs on its own task.
pub(crate) async fn connect(
    pg: &tokio_postgres::Config,
    target: &str,
) -> Result<Client, PostgresError> {
    let (client, connection) = pg
        .connect(NoTls)
        .await
        .map_err(|e| PostgresError::of("connecting", target, e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::debug!("store: a PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}

impl Writer {
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut next_retention = tokio::time::Instant::now();
        loop {
            let first = tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
                () = tokio::time::sleep_until(next_retention) => {
                    self.retention().await;
                    next_retention = tokio::time::Instant::now() + self.config.retention_interval;
                    continue;
                }
            };
            let mut pending = Vec::new();
            let mut closing = Vec::new();
            self.gather(&mut rx, first, &mut pending, &mut closing)
                .await;
            if !closing.is_empty() {
                // What raced in behind the Close is still committed.
                rx.close();
                while let Ok(r) = rx.try_recv() {
                    match r {
                        Request::Close { reply } => closing.push(reply),
                        other => pending.push(other),
                    }
                }
            }
            if !pending.is_empty() {
                self.flush(pending).await;
            }
            if !closing.is_empty() {
                for reply in closing {
                    let _ = reply.send(Ok(()));
                }
                return;
            }
        }
    }

    /// Collects requests into `pending`, starting with `first`, until
    /// `flush_max_batches`, `flush_max_delay` after `first`, or a Close.
    async fn gather(
        &self,
        rx: &mut mpsc::Receiver<Request>,
        first: Request,
        pending: &mut Vec<Request>,
        closing: &mut Vec<Reply<()>>,
    ) {
        let deadline = tokio::time::Instant::now() + self.config.flush_max_delay;
        let mut next = Some(first);
        loop {
            match next.take() {
                Some(Request::Close { reply }) => {
                    closing.push(reply);
                    return;
                }
                Some(r) => pending.push(r),
                None => {}
            }
            if pending.len() >= self.config.flush_max_batches {
                return;
            }
            next = match rx.try_recv() {
                Ok(r) => Some(r),
                Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(r)) => Some(r),
                        Ok(None) | Err(_) => return,
                    }
                }
            };
        }
    }

    /// The writer's connection, made anew when the last one broke.
    async fn client(&mut self) -> Result<&mut Client, PostgresError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            self.client = Some(connect(&self.pg, &self.target).await?);
        }
        self.client
            .as_mut()
            .ok_or_else(|| PostgresError::BadValue("no connection".into()))
    }

    /// Sample times below this fall in partitions retention dropped.
    fn horizon(&self) -> i64 {
        let w = self.schema.partition_width_ms;
        let cutoff = monitor::time::now_unix_ms().saturating_sub(self.config.retention_ms());
        partitions::index_of(cutoff, w).saturating_mul(w)
    }

    /// Makes the partitions the batches of `requests` need.
    async fn ensure_partitions(
        &mut self,
        requests: &[Request],
        horizon: i64,
    ) -> Result<(), tokio_postgres::Error> {
        let w = self.schema.partition_width_ms;
        let wanted: BTreeSet<i64> = requests
            .iter()
            .filter_map(|r| match r {
                Request::Batch { batch, .. } => Some(batch),
                _ => None,
            })
            .flat_map(|b| b.samples.iter().map(|s| s.time_unix_ms))
            .filter(|&t| t >= horizon)
            .map(|t| partitions::index_of(t, w))
            .filter(|k| !self.partitions.contains(k))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        partitions::create(client, &wanted, w).await?;
        self.partitions.extend(wanted);
        Ok(())
    }

    /// One flush, retried when only a concurrent transaction spoiled it.
    async fn flush(&mut self, requests: Vec<Request>) {
        let started = Instant::now();
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            match self.try_flush(&requests).await {
                Ok(answers) => break Ok(answers),
                Err(Attempt::Again(e)) if attempt < FLUSH_ATTEMPTS => {
                    log::debug!("store: flush attempt {attempt} failed, again: {e}");
                }
                Err(Attempt::Again(e) | Attempt::Failed(e)) => break Err(e),
            }
        };
        match result {
            Ok(flushed) => {
                self.up();
                self.observe(&requests, Some((&flushed.answers, flushed.commit)));
                self.count_checked_by_value(flushed.checked_by_value);
                let answers = flushed.answers;
                log::trace!(
                    "store: flush of {} requests committed in {} µs",
                    requests.len(),
                    started.elapsed().as_micros()
                );
                for (r, a) in requests.into_iter().zip(answers) {
                    answer(r, a);
                }
            }
            Err(e) => {
                self.down(&e);
                self.observe(&requests, None);
                for r in requests {
                    answer(r, Answer::Failed(StoreError::Postgres(e.clone())));
                }
            }
        }
    }

    async fn try_flush(&mut self, requests: &[Request]) -> Result<flush::Flushed, Attempt> {
        let horizon = self.horizon();
        self.client().await.map_err(Attempt::Failed)?;
        self.ensure_partitions(requests, horizon)
            .await
            .map_err(|e| Attempt::Failed(flush::failed(&self.target, e)))?;
        let Some(client) = self.client.as_mut() else {
            return Err(Attempt::Failed(PostgresError::BadValue(
                "the writer has no connection".into(),
            )));
        };
        match flush::write(client, requests, horizon).await {
            Ok(done) => Ok(done),
            Err(e) => {
                // "No partition for the row": another replica dropped one
                // this writer thought it had; learn them again.
                let missing_partition = e.code().map(|c| c.code()) == Some("23514");
                if missing_partition {
                    self.partitions.clear();
                }
                let again = missing_partition || is_retryable(&e);
                let e = flush::failed(&self.target, e);
                Err(if again {
                    Attempt::Again(e)
                } else {
                    Attempt::Failed(e)
                })
            }
        }
    }

    /// Counts (and logs, at most once a minute) the batches a committed
    /// flush told apart by their samples.
    fn count_checked_by_value(&mut self, checked: Vec<flush::CheckedByValue>) {
        if checked.is_empty() {
            return;
        }
        let mut counts = self
            .health
            .checked_by_value
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (hostname, agent_id, seq) in checked {
            let n = counts.entry(hostname.clone()).or_default();
            *n = n.saturating_add(1);
            if let Some(left_out) = self.checked_by_value_log.hit(Instant::now()) {
                // Without TLS the agent id is the batch's field: shown escaped.
                let agent_id = monitor::text::Escaped::capped(&agent_id);
                log::warn!(
                    "store: {hostname} (agent {agent_id}) batch {seq}: its run left more than {} \
                     separate gaps, so the store no longer knows whether this seq is stored; \
                     compared its samples with the stored ones instead ({n} such batches of \
                     this host so far; {left_out} of all hosts since the last such line)",
                    crate::store::dedup::MAX_GAPS,
                );
            }
        }
    }

    /// Tells the observer what a flush stored (`None`: it failed).
    fn observe(&self, requests: &[Request], done: Option<(&[Answer], Duration)>) {
        let Some(observer) = &self.config.observer else {
            return;
        };
        let mut stats = FlushStats {
            failed: done.is_none(),
            commit: Duration::ZERO,
            requests: requests.len(),
            batches_stored: 0,
            samples_stored: 0,
        };
        if let Some((answers, commit)) = done {
            stats.commit = commit;
            for (r, a) in requests.iter().zip(answers) {
                if let (Request::Batch { batch, .. }, Answer::Batch(SubmitOutcome::Stored)) = (r, a)
                {
                    stats.batches_stored += 1;
                    stats.samples_stored += batch.samples.len();
                }
            }
        }
        (observer.0)(&stats);
    }

    fn up(&mut self) {
        if let Some(since) = self.down_since.take() {
            log::warn!(
                "store: PostgreSQL at {} is back after {} s; acknowledging again",
                self.target,
                since.elapsed().as_secs()
            );
        }
        self.health.down.store(false, Ordering::SeqCst);
        self.health.down_since_unix_ms.store(0, Ordering::SeqCst);
    }

    fn down(&mut self, e: &PostgresError) {
        if !e.is_unreachable() {
            log::error!(
                "store: a flush failed: {}; its batches are not acknowledged",
                monitor::cli::error_chain(e)
            );
            return;
        }
        self.client = None;
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            self.health
                .down_since_unix_ms
                .store(monitor::time::now_unix_ms(), Ordering::SeqCst);
            self.health.down.store(true, Ordering::SeqCst);
            log::error!(
                "store: {}; batches are not acknowledged (agents keep them) until it is back",
                monitor::cli::error_chain(e)
            );
        }
    }

    /// Drops expired partitions, forgets stale runs and expired trust
    /// rows, deletes the journal rows every remote-write cursor passed. A failure is logged and waits for the next pass.
    async fn retention(&mut self) {
        let now = monitor::time::now_unix_ms();
        let cutoff = now.saturating_sub(self.config.retention_ms());
        let width = self.schema.partition_width_ms;
        let Ok(client) = self.client().await else {
            return;
        };
        let pass = async {
            let dropped = partitions::drop_expired(client, width, cutoff).await?;
            let runs = client
                .execute(
                    "DELETE FROM agent_runs WHERE run_id IN (
                         SELECT run_id FROM agent_runs WHERE last_seen_unix_ms < $1 LIMIT $2)",
                    &[&cutoff, &RETENTION_RUNS_PER_PASS],
                )
                .await?;
            let trust =
                trust::prune(&*client, now.saturating_sub(TRUST_KEPT_AFTER_EXPIRY_MS)).await?;
            let journal = journal::prune(client, now).await?;
            Ok::<_, tokio_postgres::Error>((dropped, runs, trust, journal))
        };
        match pass.await {
            Ok((dropped, runs, trust, journal)) => {
                if journal.cursors > 0 {
                    log::warn!(
                        "store: deleted {} remote-write cursors no replica moved for longer \
                         than their maximum lag (no replica forwards to them any more)",
                        journal.cursors
                    );
                }
                log::debug!(
                    "store: {} journal rows every cursor passed deleted",
                    journal.rows
                );
                for k in &dropped {
                    self.partitions.remove(k);
                }
                if !dropped.is_empty() || runs > 0 || trust > 0 {
                    log::info!(
                        "store: retention dropped {} partitions, {runs} stale runs, {trust} \
                         expired tokens and certificates",
                        dropped.len()
                    );
                }
            }
            Err(e) => {
                if is_connection_error(&e) {
                    self.client = None;
                }
                log::warn!(
                    "store: retention pass failed: {}; trying again in {} s",
                    monitor::cli::error_chain(&e),
                    self.config.retention_interval.as_secs()
                );
            }
        }
    }
}

/// How one try of a flush failed.
enum Attempt {
    /// Only a concurrent transaction (or a dropped partition) spoiled it.
    Again(PostgresError),
    Failed(PostgresError),
}
