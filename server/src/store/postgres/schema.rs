//! The database's tables and bringing them up to this server's version at
//! start, safely when several replicas start at once: the whole migration
//! runs in one transaction holding a transaction-level advisory lock, so
//! one replica creates or upgrades the tables and the others wait, then
//! find them done.
//!
//! Layout, for several replicas writing at once:
//! - `hosts` rows are locked (`FOR UPDATE`) by the flush that writes a
//!   host's batches, so two replicas storing batches of one host (an agent
//!   that failed over while its old replica was still committing) take
//!   turns: the conflict check and the counters see each other's commits.
//! - `agent_runs` holds each run's de-duplication state (high seq and gaps,
//!   see `store/dedup.rs`), locked and updated in the same transaction as
//!   the samples: exactly once across replicas.
//! - `ticks` is one row per (host, sample time, run) with one column per
//!   metric (as in SQLite), partitioned by range of sample time; retention
//!   drops whole partitions (see `partitions.rs`).
//! - `authority` holds the certificate authority all replicas sign with
//!   (its private key too: the database is as secret as a `ca.key`).
//! - `replicas` (each replica's lease), `sessions` (which replica holds
//!   each host's command stream, with an epoch) and `relay` (commands and
//!   their output between replicas; `LISTEN/NOTIFY` rings the bell, the
//!   table is the truth): see `replicas.rs`.
//! - `host_latest` keeps each host's newest value per metric, so `hosts()`
//!   never scans samples.
//! - `journal` (schema 2) is the change feed remote-write forwards from:
//!   one row per stored batch, ids in commit order, written only while a
//!   destination has a cursor in `forward_cursors`; see `journal.rs`.
//! - `health` (schema 3) holds the health values (issue 14), one row per
//!   (host, metric, time, device), written in the flush that stores their
//!   batch; `host_health_latest` each host's newest per (metric, device),
//!   bounded as `store/latest_health.rs` says. Retention deletes them by
//!   time when it drops a `ticks` partition, to the same boundary (see
//!   `partitions.rs`).
//! - `health_minutes` (schema 4): the health values rolled up per host and
//!   minute, so a long range reads ~60 times fewer rows (see `health.rs`).
//!
//! Metric ids and columns come from `store/encoding.rs`. Never change a
//! table below in place: add a migration step and bump [`SCHEMA_VERSION`].

use tokio_postgres::Client;

use super::error::PostgresError;
use crate::store::encoding::METRIC_COLUMNS;

/// The version of the tables below.
pub(crate) const SCHEMA_VERSION: i32 = 4;

/// The advisory lock keys of this schema (one namespace: "monitor" in
/// ASCII, then a number per purpose).
pub(crate) const LOCK_MIGRATE: i64 = 0x6d6f_6e69_746f_7201;
/// Taken while partitions are created or dropped.
pub(crate) const LOCK_PARTITIONS: i64 = 0x6d6f_6e69_746f_7202;
/// Held (per transaction) from allocating journal ids to commit: ids in
/// commit order (see `journal.rs`).
pub(crate) const LOCK_JOURNAL: i64 = 0x6d6f_6e69_746f_7203;
/// Shared by every flush while it decides whether to journal, exclusive
/// while a destination is registered (see `journal.rs`).
pub(crate) const LOCK_JOURNAL_GATE: i64 = 0x6d6f_6e69_746f_7204;
/// The first key of a forwarding destination's session lock (the
/// two-`int4` form, a key space apart from the `bigint` keys above): its
/// second key is the destination's `forward_cursors.lock_id`.
pub(crate) const LOCK_FORWARD_CLASS: i32 = 0x6d6f_6e69;

/// The tables of version 1. `{METRICS}` is replaced by one nullable
/// `double precision` column per metric.
const CREATE_V1: &str = "
CREATE TABLE monitor_schema (
    version            integer NOT NULL,
    partition_width_ms bigint NOT NULL
);
CREATE TABLE hosts (
    host_id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hostname              text NOT NULL UNIQUE,
    agent_id              text NOT NULL,
    agent_version         text NOT NULL,
    peer                  text NOT NULL,
    first_seen_unix_ms    bigint NOT NULL,
    last_seen_unix_ms     bigint NOT NULL,
    clock_offset_ms       bigint NOT NULL,
    dropped_batches_total bigint NOT NULL,   -- the u64 bit pattern
    batches_stored_total  bigint NOT NULL,
    -- The newest sample time stored for the host: batches with only newer
    -- samples cannot conflict and skip the lookup.
    newest_sample_unix_ms bigint NOT NULL
);
CREATE TABLE host_latest (
    host_id      bigint NOT NULL,
    metric_id    smallint NOT NULL,
    time_unix_ms bigint NOT NULL,
    run_id       bigint NOT NULL,
    value        double precision NOT NULL,
    PRIMARY KEY (host_id, metric_id)
);
CREATE TABLE agent_runs (
    run_id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id           text NOT NULL,
    boot_id            bigint NOT NULL,  -- the u64 bit pattern
    high_seq           bigint NOT NULL,
    gaps               bytea NOT NULL,   -- see store/dedup.rs
    first_seen_unix_ms bigint NOT NULL,
    last_seen_unix_ms  bigint NOT NULL,
    UNIQUE (agent_id, boot_id)
);
CREATE INDEX agent_runs_by_last_seen ON agent_runs (last_seen_unix_ms);
CREATE TABLE ticks (
    host_id        bigint NOT NULL,
    time_unix_ms   bigint NOT NULL,
    run_id         bigint NOT NULL,
    receive_lag_ms bigint NOT NULL,
    {METRICS},
    PRIMARY KEY (host_id, time_unix_ms, run_id)
) PARTITION BY RANGE (time_unix_ms);
CREATE TABLE commands (
    command_row  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    command_id   text NOT NULL UNIQUE,
    time_unix_ms bigint NOT NULL,
    argv         bytea NOT NULL, -- see encoding::encode_argv
    operator     text NOT NULL
);
CREATE TABLE command_results (
    command_row      bigint NOT NULL,
    hostname         text NOT NULL,
    target_index     integer NOT NULL,
    outcome          text,
    exit_code        integer,
    signal           integer,
    duration_ms      bigint,
    stdout_bytes     bigint,
    stderr_bytes     bigint,
    message          text,
    finished_unix_ms bigint,
    PRIMARY KEY (command_row, hostname)
);
CREATE INDEX command_results_by_host ON command_results (hostname, command_row);
CREATE TABLE join_tokens (
    secret_sha256   bytea PRIMARY KEY,
    hostname        text NOT NULL,
    created_unix_ms bigint NOT NULL,
    expires_unix_ms bigint NOT NULL,
    created_by      text NOT NULL,
    used_unix_ms    bigint,
    used_by         text
);
CREATE TABLE certificates (
    fingerprint       bytea PRIMARY KEY,
    role              text NOT NULL,
    name              text NOT NULL,
    issued_unix_ms    bigint NOT NULL,
    not_after_unix_ms bigint NOT NULL,
    revoked_unix_ms   bigint
);
CREATE INDEX certificates_by_name ON certificates (role, name);
-- Replicas, their sessions and the messages between them (replicas.rs).
CREATE TABLE replicas (
    replica_id          text PRIMARY KEY,
    lease_until_unix_ms bigint NOT NULL
);
CREATE TABLE sessions (
    hostname      text PRIMARY KEY,
    replica_id    text NOT NULL,
    epoch         bigint NOT NULL,
    since_unix_ms bigint NOT NULL
);
CREATE TABLE relay (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    to_replica text NOT NULL,
    kind       smallint NOT NULL,
    from_replica text NOT NULL,
    hostname   text NOT NULL,
    command_id text NOT NULL,
    body       bytea NOT NULL
);
CREATE INDEX relay_by_replica ON relay (to_replica, id);
-- The one certificate authority of every replica (see trust.rs).
CREATE TABLE authority (
    id       smallint PRIMARY KEY CHECK (id = 1),
    key_der  bytea NOT NULL,
    cert_der bytea NOT NULL
);
CREATE TABLE operator_keys (
    public_key         bytea PRIMARY KEY,
    operator           text NOT NULL,
    registered_unix_ms bigint NOT NULL,
    revoked_unix_ms    bigint
);
";

/// Version 2: the change feed remote-write forwards from (`journal.rs`).
/// `record` is the journal record of SQLite's journal (`journal_record.rs`).
const CREATE_V2: &str = "
CREATE SEQUENCE journal_ids AS bigint;
CREATE TABLE journal (
    journal_id       bigint PRIMARY KEY,
    host_id          bigint NOT NULL,
    received_unix_ms bigint NOT NULL,
    record           bytea NOT NULL
);
CREATE TABLE forward_cursors (
    destination     text PRIMARY KEY,
    lock_id         integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    journal_id      bigint NOT NULL,
    sending_through bigint NOT NULL,
    max_lag_ms      bigint NOT NULL,
    updated_unix_ms bigint NOT NULL
);
";

/// The steps from one version to the next: (version reached, SQL), in
/// order. A new database is made at version 1 and goes through them all.
const UPGRADES: &[(i32, &str)] = &[(2, CREATE_V2), (3, UPGRADE_V3), (4, UPGRADE_V4)];

/// Version 3: the health metrics. Deleted by time (not partitioned like
/// `ticks`): a few rows per batch, and a delete to the boundary of each
/// dropped `ticks` partition keeps one retention schedule for both. Each
/// statement may run again (`IF NOT EXISTS`), so a database a test took
/// back to an older version upgrades all the same.
const UPGRADE_V3: &str = "
CREATE TABLE IF NOT EXISTS health (
    host_id      bigint NOT NULL,
    metric       text NOT NULL,
    time_unix_ms bigint NOT NULL,
    device       text NOT NULL,  -- '' for a one-per-host metric
    value        double precision NOT NULL,
    PRIMARY KEY (host_id, metric, time_unix_ms, device)
);
CREATE INDEX IF NOT EXISTS health_by_time ON health (time_unix_ms);
CREATE TABLE IF NOT EXISTS host_health_latest (
    host_id      bigint NOT NULL,
    metric       text NOT NULL,
    device       text NOT NULL,
    time_unix_ms bigint NOT NULL,
    value        double precision NOT NULL,
    PRIMARY KEY (host_id, metric, device)
);
ALTER TABLE hosts ADD COLUMN IF NOT EXISTS health_series_over_cap_total bigint NOT NULL DEFAULT 0;
";

/// Version 4: the health values rolled up per host and minute (see
/// `health.rs` and `store/health_rollup.rs`), made in the flush that closes
/// a minute, deleted by time with `health`. An older database's values are
/// read raw until its hosts' flushes have rolled them up (a bounded number
/// of minutes per flush, oldest first).
const UPGRADE_V4: &str = "
CREATE TABLE IF NOT EXISTS health_minutes (
    host_id        bigint NOT NULL,
    minute_unix_ms bigint NOT NULL,
    series         bytea NOT NULL,  -- see store/health_rollup.rs
    PRIMARY KEY (host_id, minute_unix_ms)
);
CREATE INDEX IF NOT EXISTS health_minutes_by_time ON health_minutes (minute_unix_ms);
";

/// What the schema says once it is up to date.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schema {
    /// Width of one `ticks` partition, fixed when the tables were made.
    pub(crate) partition_width_ms: i64,
}

/// Creates the tables (with `partition_width_ms` for a new database) or
/// checks their version, in one transaction under [`LOCK_MIGRATE`].
pub(crate) async fn migrate(
    client: &mut Client,
    target: &str,
    partition_width_ms: i64,
) -> Result<Schema, PostgresError> {
    let sql = |e| PostgresError::of("creating or upgrading the tables", target, e);
    let tx = client.transaction().await.map_err(sql)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_MIGRATE])
        .await
        .map_err(sql)?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('monitor_schema') IS NOT NULL", &[])
        .await
        .map_err(sql)?
        .get(0);
    if !exists {
        let columns: Vec<String> = METRIC_COLUMNS
            .iter()
            .map(|c| format!("{c} double precision"))
            .collect();
        tx.batch_execute(&CREATE_V1.replace("{METRICS}", &columns.join(",\n    ")))
            .await
            .map_err(sql)?;
        tx.execute(
            "INSERT INTO monitor_schema (version, partition_width_ms) VALUES (1, $1)",
            &[&partition_width_ms],
        )
        .await
        .map_err(sql)?;
        log::info!(
            "store: made the tables (schema 1, partitions of {} s)",
            partition_width_ms / 1000
        );
    }
    let row = tx
        .query_one(
            "SELECT version, partition_width_ms FROM monitor_schema",
            &[],
        )
        .await
        .map_err(sql)?;
    let (version, width): (i32, i64) = (row.get(0), row.get(1));
    if version > SCHEMA_VERSION {
        return Err(PostgresError::SchemaTooNew {
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    for &(to, step) in UPGRADES {
        if version < to {
            tx.batch_execute(step).await.map_err(sql)?;
            tx.execute("UPDATE monitor_schema SET version = $1", &[&to])
                .await
                .map_err(sql)?;
            if exists {
                log::info!("store: upgraded the tables to schema {to}");
            }
        }
    }
    if width <= 0 {
        return Err(PostgresError::BadValue(format!(
            "monitor_schema.partition_width_ms is {width}"
        )));
    }
    tx.commit().await.map_err(sql)?;
    Ok(Schema {
        partition_width_ms: width,
    })
}
