//! Retention: samples older than `retention` are deleted host by host in
//! small transactions between flushes, and at the end of each pass the
//! writer's memory forgets what the file no longer holds (unmerged ticks
//! and latest values older than the cutoff, stale runs, idle cached runs).
//!
//! A retention step must never delete more than `retention_chunk_rows`
//! rows in one transaction (ingest waits while it runs), never delete a run
//! that an unmerged journal row names, and never stop ingest when it fails:
//! a failed step is logged and the pass is given up until the next one.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use monitor::time::now_unix_ms;
use rusqlite::{Connection, TransactionBehavior, params};

use super::memory::Memory;
use crate::store::sqlite::config::SqliteConfig;

/// A run's dedup state is dropped from memory after this long unused (and
/// no unmerged journal row names it); it is reloaded from `agent_runs` if
/// the run shows up again.
const RUN_CACHE_IDLE: Duration = Duration::from_secs(3600);
/// Most hosts one retention step looks at.
const RETENTION_HOSTS_PER_STEP: usize = 256;
/// Most stale `agent_runs` rows one retention pass deletes.
const RETENTION_RUNS_PER_PASS: i64 = 1_000;
/// Expired join tokens and certificates stay this long (30 days), so an
/// agent told "expired" can still be told so, then go.
const TRUST_KEPT_AFTER_EXPIRY_MS: i64 = 30 * 86_400_000;

/// Where retention is: a pass walks every host's range once.
#[derive(Debug)]
pub(super) struct Retention {
    /// When the next pass starts (if none is running).
    next_pass: Instant,
    /// The host id the running pass resumes at; `None` when no pass is
    /// running.
    cursor: Option<i64>,
}

impl Retention {
    /// The first pass starts at once.
    pub(super) fn new(now: Instant) -> Retention {
        Retention {
            next_pass: now,
            cursor: None,
        }
    }

    /// How long the writer may wait for requests before a step is due.
    pub(super) fn wait(&self) -> Duration {
        if self.cursor.is_some() {
            return Duration::ZERO;
        }
        self.next_pass.saturating_duration_since(Instant::now())
    }

    /// Whether a step is due now.
    pub(super) fn due(&self) -> bool {
        self.cursor.is_some() || Instant::now() >= self.next_pass
    }

    /// One small retention transaction on `conn`; logs (and gives up on
    /// the pass) on failure, so ingest never waits on a failing prune.
    pub(super) fn step(
        &mut self,
        conn: &mut Connection,
        memory: &mut Memory,
        config: &SqliteConfig,
    ) {
        let now = Instant::now();
        if self.cursor.is_none() {
            if now < self.next_pass {
                return;
            }
            self.cursor = Some(i64::MIN);
        }
        let cursor = self.cursor.unwrap_or(i64::MIN);
        let cutoff = now_unix_ms().saturating_sub(config.retention_ms());
        match prune_step(conn, cursor, cutoff, config.retention_chunk_rows) {
            Ok((next, deleted)) => {
                if deleted > 0 {
                    log::debug!("store: retention deleted {deleted} samples older than {cutoff}");
                }
                self.cursor = next;
                if next.is_none() {
                    self.end_pass(conn, memory, config, (now, cutoff));
                }
            }
            Err(e) => {
                log::error!(
                    "store: pruning samples older than {cutoff} from {} failed: {e}; \
                     trying again in {:?}",
                    config.path.display(),
                    config.retention_interval
                );
                self.end_pass(conn, memory, config, (now, i64::MIN));
            }
        }
    }

    /// Ends a pass: the hosts forget unmerged ticks and latest values older
    /// than the samples kept (merges skip such ticks too); runs not seen
    /// since `cutoff` (`i64::MIN` after a failed pass: none) and named by no
    /// unmerged journal row are deleted; the cache forgets runs idle for an
    /// hour.
    fn end_pass(
        &mut self,
        conn: &mut Connection,
        memory: &mut Memory,
        config: &SqliteConfig,
        (now, cutoff): (Instant, i64),
    ) {
        self.cursor = None;
        self.next_pass = now + config.retention_interval;
        let referenced = memory.merges.referenced_runs();
        if cutoff != i64::MIN {
            for host in memory.hosts.lock().values_mut() {
                let before = host.pending.len();
                host.pending.retain(|p| p.row.time_unix_ms >= cutoff);
                let gone = before - host.pending.len();
                memory.merges.pending_ticks -= gone.min(memory.merges.pending_ticks);
                for l in &mut host.latest {
                    if l.is_some_and(|l| l.time_unix_ms < cutoff) {
                        *l = None;
                    }
                }
                host.health.forget_older(cutoff);
            }
            // Tokens and certificates expired a month ago open nothing
            // and are forgotten (the trust table forgets them at expiry).
            let trust_cutoff =
                monitor::time::now_unix_ms().saturating_sub(TRUST_KEPT_AFTER_EXPIRY_MS);
            if let Err(e) = conn
                .execute_batch("BEGIN IMMEDIATE")
                .and_then(|()| super::trust::prune(conn, trust_cutoff))
                .and_then(|_| conn.execute_batch("COMMIT"))
            {
                let _ = conn.execute_batch("ROLLBACK");
                log::error!(
                    "store: pruning expired join tokens and certificates from {} failed: {e}",
                    config.path.display()
                );
            }
            match prune_runs(conn, cutoff, &referenced) {
                Ok(deleted) => {
                    for run_id in deleted {
                        memory.runs.remove_id(run_id);
                    }
                }
                Err(e) => log::error!(
                    "store: deleting runs not seen since {cutoff} from {} failed: {e}; trying \
                     again after the next retention pass",
                    config.path.display()
                ),
            }
        }
        memory.runs.retain(|r| {
            referenced.contains(&r.run_id) || now.duration_since(r.last_used) < RUN_CACHE_IDLE
        });
    }
}

/// Deletes up to [`RETENTION_RUNS_PER_PASS`] runs not seen since `cutoff`
/// that no unmerged journal row names (their rows are current, since a
/// merge wrote them after their last batch). Returns their ids.
fn prune_runs(
    conn: &mut Connection,
    cutoff: i64,
    referenced: &HashSet<i64>,
) -> rusqlite::Result<Vec<i64>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let stale: Vec<i64> = tx
        .prepare_cached("SELECT run_id FROM agent_runs WHERE last_seen_unix_ms < ?1 LIMIT ?2")?
        .query_map(params![cutoff, RETENTION_RUNS_PER_PASS], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut deleted = Vec::new();
    {
        let mut delete = tx.prepare_cached("DELETE FROM agent_runs WHERE run_id = ?1")?;
        for run_id in stale {
            if !referenced.contains(&run_id) {
                delete.execute([run_id])?;
                deleted.push(run_id);
            }
        }
    }
    tx.commit()?;
    Ok(deleted)
}

/// One retention transaction: from host id `cursor` on, deletes samples
/// older than `cutoff`, host by host (the oldest rows of a host are the
/// first of its range), until `chunk_rows` are deleted or
/// [`RETENTION_HOSTS_PER_STEP`] hosts were looked at. Returns where to
/// resume (`None`: the pass is complete) and how many samples were deleted.
fn prune_step(
    conn: &mut Connection,
    cursor: i64,
    cutoff: i64,
    chunk_rows: usize,
) -> rusqlite::Result<(Option<i64>, usize)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut deleted = 0usize;
    let mut next = None;
    {
        let mut next_host =
            tx.prepare_cached("SELECT min(host_id) FROM hosts WHERE host_id >= ?1")?;
        // Deletes at most ?3 rows: everything older than the ?3-th oldest
        // row below the cutoff (or than the cutoff, if fewer are that old).
        let mut delete = tx.prepare_cached(
            "DELETE FROM ticks WHERE host_id = ?1 AND time_unix_ms <
                 coalesce((SELECT time_unix_ms FROM ticks
                           WHERE host_id = ?1 AND time_unix_ms < ?2
                           ORDER BY time_unix_ms LIMIT 1 OFFSET ?3), ?2)",
        )?;
        let mut floor = cursor;
        let mut hosts = 0;
        while let Some(host_id) = next_host.query_row([floor], |r| r.get::<_, Option<i64>>(0))? {
            let budget = chunk_rows - deleted;
            let n = delete.execute(params![host_id, cutoff, budget as i64])?;
            deleted += n;
            hosts += 1;
            // A host that used its whole budget may have more to delete.
            let resume = if n >= budget {
                Some(host_id)
            } else {
                host_id.checked_add(1)
            };
            let Some(resume) = resume else { break };
            if deleted >= chunk_rows || hosts >= RETENTION_HOSTS_PER_STEP {
                next = Some(resume);
                break;
            }
            floor = resume;
        }
    }
    // The health values past the cutoff, within what is left of the step's
    // budget; a pass's last step (no host left) always gets a share, so a
    // backlog of them shrinks by at least that much per pass.
    let budget = chunk_rows
        .saturating_sub(deleted)
        .max(chunk_rows / 4)
        .max(1);
    deleted += crate::store::sqlite::health::prune(&tx, cutoff, budget)?;
    tx.commit()?;
    Ok((next, deleted))
}
