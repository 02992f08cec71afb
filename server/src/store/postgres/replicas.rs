//! What replicas sharing the database know of each other: each replica's
//! lease (`replicas`), which replica holds each host's command stream
//! (`sessions`, with an epoch that grows at every claim), and the messages
//! between them about commands (`relay`), with `NOTIFY` on
//! [`RELAY_CHANNEL`] as the doorbell.
//!
//! Leases are timed by the database's clock, so replicas whose clocks
//! disagree still agree on who is live. Nothing here may keep rows of a
//! replica that stopped: a replica gone for [`FORGET_AFTER_MS`] loses its
//! lease row, its sessions and the messages addressed to it (bounded
//! tables whatever happens to a replica).

use tokio_postgres::GenericClient;

use super::error::PostgresError;
use super::text::pg_text;
use crate::store::records::{RelayKind, RelayRecord, SessionRecord};

/// The channel every replica listens on; the payload is the addressee.
pub(crate) const RELAY_CHANNEL: &str = "monitor_relay";
/// A replica whose lease ended this long ago (ms) is forgotten.
const FORGET_AFTER_MS: i64 = 60_000;
/// Messages one take returns at most (the rest wait for the next).
const TAKE_MAX: i64 = 1_000;
/// The database's clock in ms since the Unix epoch, as SQL.
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

fn sql(what: &'static str, target: &str) -> impl Fn(tokio_postgres::Error) -> PostgresError {
    let target = target.to_owned();
    move |e| PostgresError::of(what, &target, e)
}

/// Renews `replica`'s lease for `lease_ms`, and forgets replicas whose
/// lease ended long ago (with their sessions and undelivered messages).
pub(crate) async fn heartbeat(
    c: &impl GenericClient,
    target: &str,
    replica: &str,
    lease_ms: i64,
) -> Result<(), PostgresError> {
    let sql = sql("renewing the replica's lease", target);
    c.execute(
        &format!(
            "INSERT INTO replicas (replica_id, lease_until_unix_ms) VALUES ($1, {NOW_MS} + $2)
             ON CONFLICT (replica_id) DO UPDATE SET lease_until_unix_ms = EXCLUDED.lease_until_unix_ms"
        ),
        &[&pg_text(replica), &lease_ms],
    )
    .await
    .map_err(&sql)?;
    let gone = format!(
        "SELECT replica_id FROM replicas WHERE lease_until_unix_ms < {NOW_MS} - {FORGET_AFTER_MS}"
    );
    c.execute(
        &format!("DELETE FROM sessions WHERE replica_id IN ({gone})"),
        &[],
    )
    .await
    .map_err(&sql)?;
    c.execute(
        &format!("DELETE FROM relay WHERE to_replica IN ({gone})"),
        &[],
    )
    .await
    .map_err(&sql)?;
    c.execute(
        &format!("DELETE FROM replicas WHERE replica_id IN ({gone})"),
        &[],
    )
    .await
    .map_err(&sql)?;
    Ok(())
}

/// Records that `replica` now holds `hostname`'s command stream; returns
/// the claim's epoch.
pub(crate) async fn claim(
    c: &impl GenericClient,
    target: &str,
    hostname: &str,
    replica: &str,
) -> Result<i64, PostgresError> {
    let row = c
        .query_one(
            &format!(
                "INSERT INTO sessions (hostname, replica_id, epoch, since_unix_ms)
                 VALUES ($1, $2, 1, {NOW_MS})
                 ON CONFLICT (hostname) DO UPDATE SET replica_id = EXCLUDED.replica_id,
                     epoch = sessions.epoch + 1, since_unix_ms = EXCLUDED.since_unix_ms
                 RETURNING epoch"
            ),
            &[&pg_text(hostname), &pg_text(replica)],
        )
        .await
        .map_err(sql("claiming a session", target))?;
    Ok(row.get(0))
}

/// Ends `replica`'s claim `epoch` on `hostname` (a later claim, by it or
/// another replica, stays).
pub(crate) async fn release(
    c: &impl GenericClient,
    target: &str,
    hostname: &str,
    replica: &str,
    epoch: i64,
) -> Result<(), PostgresError> {
    c.execute(
        "DELETE FROM sessions WHERE hostname = $1 AND replica_id = $2 AND epoch = $3",
        &[&pg_text(hostname), &pg_text(replica), &epoch],
    )
    .await
    .map_err(sql("releasing a session", target))?;
    Ok(())
}

/// Every session, with whether its replica's lease holds.
pub(crate) async fn sessions(
    c: &impl GenericClient,
    target: &str,
) -> Result<Vec<SessionRecord>, PostgresError> {
    let rows = c
        .query(
            &format!(
                "SELECT s.hostname, s.replica_id,
                        COALESCE(r.lease_until_unix_ms > {NOW_MS}, false)
                 FROM sessions s LEFT JOIN replicas r USING (replica_id)
                 ORDER BY s.hostname"
            ),
            &[],
        )
        .await
        .map_err(sql("reading sessions", target))?;
    Ok(rows
        .iter()
        .map(|r| SessionRecord {
            hostname: r.get(0),
            replica: r.get(1),
            live: r.get(2),
        })
        .collect())
}

/// Lets the current transaction commit without waiting for its WAL to
/// reach the disk (`synchronous_commit = off`, this transaction only).
/// For the relay's messages only: they live for milliseconds, and one lost
/// in a database crash costs its command a "lost connection" or its time
/// limit, never a sample or a history row; waiting for two flushes a hop
/// was most of a relayed command's round trip (BENCHMARKS.md).
pub(crate) async fn without_flush_wait(
    c: &impl GenericClient,
    target: &str,
) -> Result<(), PostgresError> {
    c.batch_execute("SET LOCAL synchronous_commit = off")
        .await
        .map_err(sql("relaying without waiting for the disk", target))
}

/// Leaves `message` for replica `to` and rings its bell.
pub(crate) async fn send(
    c: &impl GenericClient,
    target: &str,
    to: &str,
    message: &RelayRecord,
) -> Result<(), PostgresError> {
    let sql = sql("relaying to another replica", target);
    c.execute(
        "INSERT INTO relay (to_replica, kind, from_replica, hostname, command_id, body)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &pg_text(to),
            &(message.kind as i16),
            &pg_text(&message.from),
            &pg_text(&message.hostname),
            &pg_text(&message.command_id),
            &message.body,
        ],
    )
    .await
    .map_err(&sql)?;
    c.execute("SELECT pg_notify($1, $2)", &[&RELAY_CHANNEL, &pg_text(to)])
        .await
        .map_err(&sql)?;
    Ok(())
}

/// Takes (deletes and returns, oldest first) the messages left for
/// `replica`.
pub(crate) async fn take(
    c: &impl GenericClient,
    target: &str,
    replica: &str,
) -> Result<Vec<RelayRecord>, PostgresError> {
    let rows = c
        .query(
            "WITH taken AS (
                 DELETE FROM relay WHERE id IN (
                     SELECT id FROM relay WHERE to_replica = $1 ORDER BY id LIMIT $2)
                 RETURNING id, kind, from_replica, hostname, command_id, body)
             SELECT kind, from_replica, hostname, command_id, body FROM taken ORDER BY id",
            &[&pg_text(replica), &TAKE_MAX],
        )
        .await
        .map_err(sql("taking relayed messages", target))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let kind = match r.get::<_, i16>(0) {
                1 => RelayKind::Run,
                2 => RelayKind::Cancel,
                3 => RelayKind::Response,
                other => {
                    log::warn!("store: a relayed message of unknown kind {other} dropped");
                    return None;
                }
            };
            Some(RelayRecord {
                kind,
                from: r.get(1),
                hostname: r.get(2),
                command_id: r.get(3),
                body: r.get(4),
            })
        })
        .collect())
}
