//! The file format: the tables of the database file and how the store's
//! values are represented in them (metric ids and columns, u64s, argv).
//! Both `schema.rs` (opening a file) and `migrate.rs` (upgrading one) build
//! on it; it depends on neither.
//!
//! Layout, chosen for 10,000 batches (60,000 samples) per second on two
//! cores, and measured with `cargo bench -p monitor-server --bench store`.
//! What limits ingest is the number of pages a flush dirties: SQLite writes
//! each dirty page whole to the WAL and fsyncs it at every commit. So:
//! - `ticks` holds one row per (host_id, time_unix_ms, run_id) with one
//!   nullable REAL column per metric, WITHOUT ROWID and clustered on that
//!   key (see `ticks.rs`): a batch is one b-tree insert into its host's
//!   newest page, and a query for one host is one range scan in time order.
//!   Schema 1 stored one row per sample: six inserts per batch, the key
//!   stored six times.
//! - A flush writes nothing but appends: each stored batch is one row of
//!   `journal` (a rowid table, so appends fill its last page) holding its
//!   ticks and what it changes in its host's and run's rows. Writing the
//!   ticks into their host's range and updating `hosts`/`agent_runs` per
//!   batch dirtied four to five pages scattered over the file per batch,
//!   each written whole to the WAL and again into the file at every
//!   checkpoint. The writer merges each host's journal rows into `ticks`,
//!   `hosts` and `agent_runs` every `merge_interval` (see `journal.rs`), so
//!   a host's pages are rewritten once per merge, not once per batch.
//! - Pages are 1 KiB: adding a ~75-byte row rewrites a whole page in the
//!   WAL, so a smaller page is a smaller WAL; reads pay a slightly deeper
//!   tree.
//! - `run_id` in the key only keeps the rows of two runs apart when they
//!   share a sample time (an agent restarted with its clock stepped back,
//!   or two agents claiming one hostname). Since refusing conflicts (see
//!   `writer/conflicts.rs`), a (host, time, metric) holds one value across
//!   runs: a different one is refused, the same one is not written again.
//!   Two rows of one (host, time) can still hold different metrics.
//! - The receive time is stored per row as `receive_lag_ms` (received −
//!   sample time): a varint of 1–3 bytes.
//!
//! Why not write ticks straight into `ticks` (schema 2): at 10,000 batches/s
//! every host's newest leaf is rewritten every second, about 2.5 pages of
//! WAL per batch, and every checkpoint round then has all 10,000 leaves to
//! copy and fsync; the last part of that copy must run with the writer
//! stopped (see `checkpoint.rs`), which over a minute gave a p99 of 0.3 s.
//! Why not one big periodic merge of a staging table: simulated, merging
//! 100,000 rows holds the write lock for ~0.8 s. Merging host by host, a
//! few hosts per flush, keeps every transaction small.
//!
//! Metric ids, metric columns and outcome names are part of the file format
//! (see `store/encoding.rs`, shared with the PostgreSQL backend): never
//! renumber or rename them; add new ones instead.

/// Bumped on every incompatible change of the tables below; older files
/// are migrated at open (see `migrate.rs`).
pub(crate) const SCHEMA_VERSION: i64 = 8;

/// `hosts` rows hold each host's state up to `merged_journal_id`,
/// `agent_runs` rows each run's as of its last merge; `journal` holds every
/// stored batch not yet merged (see `journal.rs`).
pub(crate) const CREATE_TABLES: &str = "
CREATE TABLE IF NOT EXISTS hosts (
    host_id               INTEGER PRIMARY KEY,
    hostname              TEXT NOT NULL UNIQUE,
    agent_id              TEXT NOT NULL,
    agent_version         TEXT NOT NULL,
    peer                  TEXT NOT NULL,
    first_seen_unix_ms    INTEGER NOT NULL,
    last_seen_unix_ms     INTEGER NOT NULL,
    clock_offset_ms       INTEGER NOT NULL,
    dropped_batches_total INTEGER NOT NULL,
    batches_stored_total  INTEGER NOT NULL,
    merged_journal_id     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS agent_runs (
    run_id             INTEGER PRIMARY KEY,
    agent_id           TEXT NOT NULL,
    boot_id            INTEGER NOT NULL, -- the u64 bit pattern as i64
    high_seq           INTEGER NOT NULL,
    gaps               BLOB NOT NULL,    -- see dedup.rs
    first_seen_unix_ms INTEGER NOT NULL,
    last_seen_unix_ms  INTEGER NOT NULL,
    UNIQUE (agent_id, boot_id)
);
CREATE TABLE IF NOT EXISTS ticks (
    host_id         INTEGER NOT NULL,
    time_unix_ms    INTEGER NOT NULL,
    run_id          INTEGER NOT NULL,
    receive_lag_ms  INTEGER NOT NULL,
    cpu_percent     REAL,
    mem_percent     REAL,
    disk_read_kbps  REAL,
    disk_write_kbps REAL,
    net_in_kbps     REAL,
    net_out_kbps    REAL,
    PRIMARY KEY (host_id, time_unix_ms, run_id)
) WITHOUT ROWID;
-- Schema 7: the health metrics (issue 14), one row per value, written with
-- the batch's journal row (see health.rs); metric is the wire name.
CREATE TABLE IF NOT EXISTS health (
    host_id      INTEGER NOT NULL,
    time_unix_ms INTEGER NOT NULL,
    metric       TEXT NOT NULL,
    device       TEXT NOT NULL, -- '' for a one-per-host metric
    value        REAL NOT NULL,
    PRIMARY KEY (host_id, time_unix_ms, metric, device)
) WITHOUT ROWID;
-- Schema 8: the health values rolled up per host and minute (see
-- health.rs and store/health_rollup.rs): one row per minute below the
-- host's rolled edge that holds values. A Pi's row (~500 bytes) is more
-- than a 1 KiB page keeps of a WITHOUT ROWID row: its tail sits in an
-- overflow page, read with it.
CREATE TABLE IF NOT EXISTS health_minutes (
    host_id        INTEGER NOT NULL,
    minute_unix_ms INTEGER NOT NULL,
    series         BLOB NOT NULL, -- see store/health_rollup.rs
    PRIMARY KEY (host_id, minute_unix_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal (
    -- AUTOINCREMENT: ids never go back, even when the journal was emptied,
    -- so merged_journal_id keeps meaning what it says.
    journal_id            INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id               INTEGER NOT NULL,
    run_id                INTEGER NOT NULL,
    seq                   INTEGER NOT NULL, -- the u64 bit pattern as i64
    received_unix_ms      INTEGER NOT NULL,
    clock_offset_ms       INTEGER NOT NULL,
    dropped_batches_total INTEGER NOT NULL,
    agent_version         TEXT NOT NULL,
    peer                  TEXT NOT NULL,
    ticks                 BLOB -- see ticks.rs; NULL: already in ticks (schema 2)
);
CREATE TABLE IF NOT EXISTS commands (
    command_row  INTEGER PRIMARY KEY,
    command_id   TEXT NOT NULL UNIQUE,
    time_unix_ms INTEGER NOT NULL,
    argv         BLOB NOT NULL, -- see encode_argv
    operator     TEXT NOT NULL DEFAULT '' -- schema 4
);
CREATE TABLE IF NOT EXISTS command_results (
    command_row       INTEGER NOT NULL,
    hostname          TEXT NOT NULL,
    target_index      INTEGER NOT NULL,
    outcome           TEXT,             -- NULL until the result is in
    exit_code         INTEGER,
    signal            INTEGER,
    duration_ms       INTEGER,
    stdout_bytes      INTEGER,
    stderr_bytes      INTEGER,
    message           TEXT,
    finished_unix_ms  INTEGER,
    PRIMARY KEY (command_row, hostname)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS command_results_by_host ON command_results (hostname, command_row);
-- Schema 4: trust. A token's secret is kept only as its SHA-256.
CREATE TABLE IF NOT EXISTS join_tokens (
    secret_sha256   BLOB PRIMARY KEY,
    hostname        TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    expires_unix_ms INTEGER NOT NULL,
    created_by      TEXT NOT NULL,
    used_unix_ms    INTEGER,
    used_by         TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS certificates (
    fingerprint       BLOB PRIMARY KEY, -- SHA-256 of the DER
    role              TEXT NOT NULL,    -- 'agent' or 'operator'
    name              TEXT NOT NULL,
    issued_unix_ms    INTEGER NOT NULL,
    not_after_unix_ms INTEGER NOT NULL,
    revoked_unix_ms   INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS certificates_by_name ON certificates (role, name);
-- Schema 5: operators' public signing keys (the private keys never come
-- here); join tokens carry the unrevoked ones.
CREATE TABLE IF NOT EXISTS operator_keys (
    public_key         BLOB PRIMARY KEY, -- Ed25519, 32 bytes
    operator           TEXT NOT NULL,
    registered_unix_ms INTEGER NOT NULL,
    revoked_unix_ms    INTEGER
) WITHOUT ROWID;
-- Schema 6: how far each remote-write destination has forwarded the
-- journal (see forward.rs); journal rows above the lowest are kept.
CREATE TABLE IF NOT EXISTS forward_cursors (
    destination     TEXT PRIMARY KEY, -- its URL without credentials
    journal_id      INTEGER NOT NULL, -- every row up to it was sent or dropped
    sending_through INTEGER NOT NULL DEFAULT 0, -- a request in flight: rows up to it
    updated_unix_ms INTEGER NOT NULL
) WITHOUT ROWID;
";
