//! The server's store, as the rest of the server sees it: one small face
//! over the backend that keeps every sample every agent sends, the facts
//! about the hosts that sent them, and the history of operator commands.
//!
//! The face is all the ingest, the command router, the operator API and
//! `server.rs` may use:
//! - write: [`Store::enqueue`] a batch (or [`Store::enqueue_command`],
//!   [`Store::enqueue_command_result`]) and get a [`Ticket`] that resolves
//!   once the request is durable (or refused); [`Store::submit`] and the
//!   `record_*` methods do both steps;
//! - read: [`Store::query`] samples, [`Store::series`] (samples
//!   downsampled per bucket, for plots; [`Store::fleet_series`] for every
//!   host at once), [`Store::hosts`] /
//!   [`Store::hosts_page`] / [`Store::host`]
//!   (the host facts: the store is their one owner, the registry only
//!   knows who is connected), [`Store::history`];
//! - forward (remote-write): [`Store::forward_batch`] reads stored batches
//!   in commit order after a cursor, [`Store::register_forwarders`] keeps
//!   each destination's cursor in the store (a restart resumes where it
//!   stopped), and a [`ForwardClaim`] ([`Store::forward_claim`]) says
//!   whether this server is the one forwarding to a destination and moves
//!   its cursor;
//! - [`Store::close`].
//!
//! Records crossing it are plain structs of `records.rs`; errors are
//! [`StoreError`], whose backend failures are one variant per backend.
//!
//! Why an enum and not a trait object: the backends are a closed set that
//! lives in this crate and is chosen once at start ([`StoreConfig`]). An
//! enum keeps `Store` a cheap, concrete `Clone` handle, keeps the write
//! path free of a boxed future per batch, and when a backend is added, the
//! compiler points at every method of the face that must learn it. A trait
//! would need boxed futures (`dyn`) or a type parameter rippling through
//! ingest, router, admin and server.
//!
//! Adding a backend (PostgreSQL, for several server replicas): a folder
//! `store/postgres/` with a handle that offers the methods `SqliteStore`
//! offers (same tickets, same records), a variant of [`StoreConfig`] and of
//! `Backend`, a variant of [`StoreError`] for its own errors, and one arm
//! per method below. Nothing outside `store/` changes.
//!
//! Contract of every backend (the tests in `server/tests/store.rs` hold the
//! SQLite one to it):
//! - A batch's ticket resolves `Ok(Stored)` only after the transaction
//!   holding it committed durably: an acknowledged batch survives `kill -9`
//!   of the server and a power cut.
//! - A batch, identified by (agent_id, boot_id, seq), is stored at most
//!   once whatever the order and number of re-sends.
//! - A batch is stored whole or refused whole. A (host, time, metric) has
//!   one value: a batch that gives a stored one another value (or sends
//!   one twice with two values) is `SubmitOutcome::Conflict` and nothing of
//!   it is stored; the same value again is acknowledged and not stored
//!   twice.
//! - Requests queued one after the other are handled in that order.
//! - Nothing queues without bound: a full queue makes `enqueue` wait,
//!   which slows the gRPC streams, which leaves batches in the agents'
//!   buffers.
//! - A failed transaction (disk full, I/O error) fails every request in it
//!   and changes nothing, in the database or in the backend's memory.
//! - `hosts()` reflects every batch acknowledged so far.
//! - `series` gives what `query` over the same range would, summarised by
//!   the shared pure code of `series.rs`: a backend scans the host's
//!   samples in the range oldest first (per metric) and pushes each one
//!   into the [`Downsampler`] it is handed, nothing more (PostgreSQL can
//!   do the same over one `SELECT ... ORDER BY time`, or aggregate in SQL
//!   if it keeps `Bucket`'s meaning, `max_gap_ms` included).
//! - `fleet_series` gives each host exactly what `series` gives it, in
//!   one read of the backend for every host (one statement, one
//!   snapshot), never one query per host.
//! - `forward_batch` returns every stored batch exactly once across calls
//!   that pass on the previous `through`, in commit order (also while
//!   several handles write at once), and nothing a registered
//!   destination's cursor has not passed is discarded (but, on a shared
//!   store, rows older than every destination's maximum lag).
//! - At most one [`ForwardClaim`] of a destination is held at a time,
//!   across every server sharing the store.
//!
//! The store must never see protobuf types and never block the async
//! runtime (blocking work runs on its own threads or tokio's blocking pool).

mod claim;
mod dedup;
mod encoding;
mod error;
mod feed;
mod health_rollup;
pub mod health_series;
mod journal_record;
pub mod late;
mod latest_health;
mod postgres;
mod records;
mod requests;
pub mod series;
mod sqlite;
mod ticket;
mod ticks;

pub use claim::ForwardClaim;
pub use error::StoreError;
pub use health_rollup::HEALTH_ROLLUP_MS;
pub use health_series::{HealthDownsampler, HealthSeries};
pub use latest_health::MAX_HEALTH_SERIES_PER_HOST;
pub use postgres::{PostgresConfig, PostgresError};
pub use records::{
    AuthorityRecord, Bucket, CertificateRecord, CommandRecord, CommandResultRecord, Conflict,
    CursorRecord, FleetSeriesQuery, FlushObserver, FlushStats, ForwardBatch, ForwardRow,
    HealthQuery, HealthRow, HealthSeriesKey, HistoryRow, HostRecord, HostSeries, IncomingBatch,
    JoinTokenRecord, LatestHealth, LatestValue, RelayKind, RelayRecord, SampleQuery, Series,
    SeriesQuery, SessionRecord, SigningKeyRecord, StoredHealth, StoredSample, StoredSampleRow,
    SubmitOutcome, TokenRefusal,
};
pub use series::Downsampler;
pub use sqlite::{SqliteConfig, SqliteError};
pub use ticket::Ticket;

use std::sync::Arc;
use std::time::Duration;

use monitor::health::HealthMetric;
use monitor::metric::Metric;
use postgres::PostgresStore;
use records::{CursorWrite, TrustAnswer, TrustWrite};
use requests::Request;
use sqlite::SqliteStore;

/// Expired join tokens and certificates stay this long (30 days) in every
/// backend, so an agent told "expired" can still be told so, then go.
pub(crate) const TRUST_KEPT_AFTER_EXPIRY_MS: i64 = 30 * 86_400_000;

/// Which backend the store runs on, and its settings.
#[derive(Clone, Debug)]
pub enum StoreConfig {
    /// One SQLite file on this server (see `sqlite/mod.rs`).
    Sqlite(SqliteConfig),
    /// A PostgreSQL database, shared by several server replicas (see
    /// `postgres/mod.rs`).
    Postgres(PostgresConfig),
}

impl From<PostgresConfig> for StoreConfig {
    fn from(c: PostgresConfig) -> StoreConfig {
        StoreConfig::Postgres(c)
    }
}

impl StoreConfig {
    /// Told after every flush what it stored (or that it failed), on the
    /// writer's thread or task.
    pub fn set_observer(&mut self, observer: FlushObserver) {
        match self {
            StoreConfig::Sqlite(c) => c.observer = Some(observer),
            StoreConfig::Postgres(c) => c.observer = Some(observer),
        }
    }
}

impl From<SqliteConfig> for StoreConfig {
    fn from(c: SqliteConfig) -> StoreConfig {
        StoreConfig::Sqlite(c)
    }
}

/// `d` in ms, saturated.
fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The store's handle. Cheap to clone; every clone reaches the same
/// backend (for SQLite, the same single writer thread).
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    /// Hosts whose samples came later than the dashboard's last read
    /// (`late.rs`).
    late: Arc<late::LateSamples>,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Store {
    /// Opens the backend: for SQLite, creates the file if needed, checks
    /// it and starts the writer thread (on the blocking pool, as long as
    /// that takes); for PostgreSQL, connects, brings the tables up to date
    /// and starts the writer task.
    pub async fn open(config: impl Into<StoreConfig>) -> Result<Store, StoreError> {
        let backend = match config.into() {
            StoreConfig::Sqlite(c) => Backend::Sqlite(
                tokio::task::spawn_blocking(move || SqliteStore::open(c))
                    .await
                    .map_err(StoreError::Reader)??,
            ),
            StoreConfig::Postgres(c) => Backend::Postgres(PostgresStore::open(c).await?),
        };
        Ok(Store {
            backend,
            late: Arc::default(),
        })
    }

    /// Ingest: a batch of `hostname` whose oldest sample is at
    /// `oldest_unix_ms` is stored and visible to readers (see `late.rs`).
    pub fn note_stored(&self, hostname: &str, oldest_unix_ms: i64) {
        self.late.note(hostname, oldest_unix_ms);
    }

    /// The dashboard's sparklines: samples older than `watermark_unix_ms`
    /// stored from now on are late; returns the hosts that had late ones
    /// since the last call (see `late.rs`).
    pub fn advance_late(&self, watermark_unix_ms: i64) -> late::LateHosts {
        self.late.advance(watermark_unix_ms)
    }

    /// When the backend stopped answering, if it did (ms since the Unix
    /// epoch): a PostgreSQL database that is down or restarting. Batches
    /// are not acknowledged meanwhile. An embedded SQLite file is always
    /// there (its failures are per flush).
    pub fn unavailable_since_unix_ms(&self) -> Option<i64> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(s) => s.unavailable_since_unix_ms(),
        }
    }

    /// Whether several servers share this store (PostgreSQL): then the
    /// certificate authority, the trust tables and the hosts are the
    /// fleet's, and each server reloads what the others wrote.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The certificate authority of every server on this store: the first
    /// one offered is kept and returned to every later caller, so replicas
    /// starting at once agree on one. A store of one server (SQLite) keeps
    /// none: the TLS directory holds it, and `candidate` comes back.
    pub async fn share_authority(
        &self,
        candidate: AuthorityRecord,
    ) -> Result<AuthorityRecord, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(candidate),
            Backend::Postgres(s) => s.share_authority(candidate).await,
        }
    }

    /// Renews this replica's lease on a shared store (its sessions count
    /// as live until it runs out); a store of one server has no replicas.
    pub async fn heartbeat(&self, replica: &str, lease: Duration) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(s) => s.heartbeat(replica, ms(lease)).await,
        }
    }

    /// Records that `replica` holds `hostname`'s command stream now;
    /// returns the claim's epoch (0 on a store of one server).
    pub async fn claim_session(&self, hostname: &str, replica: &str) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(0),
            Backend::Postgres(s) => s.claim_session(hostname, replica).await,
        }
    }

    /// Ends a claim made by [`Store::claim_session`], unless a later one
    /// replaced it.
    pub async fn release_session(
        &self,
        hostname: &str,
        replica: &str,
        epoch: i64,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(s) => s.release_session(hostname, replica, epoch).await,
        }
    }

    /// Which replica holds each host's command stream (empty on a store
    /// of one server).
    pub async fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Vec::new()),
            Backend::Postgres(s) => s.sessions().await,
        }
    }

    /// Leaves `message` for replica `to` (and rings its bell).
    pub async fn relay(&self, to: &str, message: &RelayRecord) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Err(StoreError::Unsupported {
                what: "relaying between replicas",
                backend: "SQLite",
            }),
            Backend::Postgres(s) => s.relay(to, message).await,
        }
    }

    /// Takes the messages other replicas left for `replica`, oldest first.
    pub async fn take_relayed(&self, replica: &str) -> Result<Vec<RelayRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Vec::new()),
            Backend::Postgres(s) => s.take_relayed(replica).await,
        }
    }

    /// Rings `doorbell` when a message is left for `replica` (never on a
    /// store of one server).
    pub fn listen_relay(&self, replica: &str, doorbell: tokio::sync::mpsc::Sender<()>) {
        if let Backend::Postgres(s) = &self.backend {
            s.listen_relay(replica.to_owned(), doorbell);
        }
    }

    /// Which backend this is, for logs ("SQLite" or "PostgreSQL").
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "SQLite",
            Backend::Postgres(_) => "PostgreSQL",
        }
    }

    /// Requests waiting for the writer right now (for the server's own
    /// metrics and for tests of backpressure).
    pub fn queued(&self) -> usize {
        match &self.backend {
            Backend::Sqlite(s) => s.queued(),
            Backend::Postgres(s) => s.queued(),
        }
    }

    /// Queues a batch (waiting while the queue is full: that is the
    /// backpressure) and returns a [`Ticket`] that resolves once the batch
    /// is durably committed, known to be a duplicate, or refused. Requests
    /// queued one after the other are handled in that order, so a stream
    /// can keep many batches in flight and still have them committed in
    /// sequence. On `Err` nothing of the batch was stored and it must not
    /// be acknowledged.
    pub async fn enqueue(&self, batch: IncomingBatch) -> Result<Ticket<SubmitOutcome>, StoreError> {
        let (reply, ticket) = Ticket::new();
        self.send(Request::Batch { batch, reply }).await?;
        Ok(ticket)
    }

    /// [`Store::enqueue`], then waits for the ticket.
    pub async fn submit(&self, batch: IncomingBatch) -> Result<SubmitOutcome, StoreError> {
        self.enqueue(batch).await?.await
    }

    /// Queues an operator command record (results pending); see
    /// [`Store::enqueue`]. A result queued after this returns is handled
    /// after the command.
    pub async fn enqueue_command(&self, c: CommandRecord) -> Result<Ticket<()>, StoreError> {
        let (reply, ticket) = Ticket::new();
        self.send(Request::Command { record: c, reply }).await?;
        Ok(ticket)
    }

    /// Records an operator command and its targets (results pending).
    pub async fn record_command(&self, c: CommandRecord) -> Result<(), StoreError> {
        self.enqueue_command(c).await?.await
    }

    /// Queues how a command ended on one host; the ticket resolves to
    /// `Err(StoreError::UnknownCommand)` for a command id never recorded.
    pub async fn enqueue_command_result(
        &self,
        r: CommandResultRecord,
    ) -> Result<Ticket<()>, StoreError> {
        let (reply, ticket) = Ticket::new();
        self.send(Request::CommandResult { record: r, reply })
            .await?;
        Ok(ticket)
    }

    /// Records how a command ended on one host; see
    /// [`Store::enqueue_command_result`].
    pub async fn record_command_result(&self, r: CommandResultRecord) -> Result<(), StoreError> {
        self.enqueue_command_result(r).await?.await
    }

    /// Samples of a host in a time range, oldest first, up to `q.limit`.
    /// A host that never sent a batch is `Err(StoreError::UnknownHost)`.
    pub async fn query(&self, q: SampleQuery) -> Result<Vec<StoredSampleRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.query(q).await,
            Backend::Postgres(s) => s.query(q).await,
        }
    }

    /// The values of one health metric of a host in a time range, oldest
    /// first (then by device), up to `q.limit`. A host that never sent a
    /// batch is `Err(StoreError::UnknownHost)`.
    pub async fn query_health(&self, q: HealthQuery) -> Result<Vec<HealthRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.query_health(q).await,
            Backend::Postgres(s) => s.query_health(q).await,
        }
    }

    /// Every metric's samples of a host in `[since, until)`, downsampled
    /// into buckets of `step_ms` (min, max, sum, count and the longest gap
    /// per bucket holding data; see `series.rs`), in [`Metric::ALL`]
    /// order. A host that never sent a batch is
    /// `Err(StoreError::UnknownHost)`; an empty range or more than
    /// [`series::MAX_BUCKETS`] buckets is `Err(StoreError::BadSeriesQuery)`.
    pub async fn series(&self, q: SeriesQuery) -> Result<Vec<Series>, StoreError> {
        let down = Downsampler::new(&q, &Metric::ALL).map_err(StoreError::BadSeriesQuery)?;
        match &self.backend {
            Backend::Sqlite(s) => s.series(q, down).await,
            Backend::Postgres(s) => s.series(q, down).await,
        }
    }

    /// [`Store::series`] for every host at once, by hostname, in one read
    /// of the backend (the dashboard's sparklines: one query, not one per
    /// host). Every host ever stored is listed, one without a sample in the
    /// range with empty series; the same refusals as [`Store::series`].
    pub async fn fleet_series(&self, q: FleetSeriesQuery) -> Result<Vec<HostSeries>, StoreError> {
        let down =
            Downsampler::new(&q.for_host(""), &Metric::ALL).map_err(StoreError::BadSeriesQuery)?;
        match &self.backend {
            Backend::Sqlite(s) => s.fleet_series(q, down).await,
            Backend::Postgres(s) => s.fleet_series(q, down).await,
        }
    }

    /// The `metrics` (health metrics) of a host in `[since, until)`,
    /// downsampled like [`Store::series`] into one series per metric, per
    /// device of a labelled one (capped) and per throttling condition (see
    /// `health_series.rs`). Errors as [`Store::series`].
    pub async fn health_series(
        &self,
        q: SeriesQuery,
        metrics: &[HealthMetric],
    ) -> Result<HealthSeries, StoreError> {
        let down = HealthDownsampler::new(&q, metrics).map_err(StoreError::BadSeriesQuery)?;
        let down = match &self.backend {
            Backend::Sqlite(s) => s.health_series(q, down).await?,
            Backend::Postgres(s) => s.health_series(q, down).await?,
        };
        Ok(down.finish())
    }

    /// Every host ever stored, by hostname, with its latest value per metric
    /// (among what is stored: values older than the retention are gone; and
    /// after a restart, a metric missing from a host's newest ten ticks
    /// shows none) and per health metric and device (bounded, see
    /// `latest_health.rs`; on SQLite after a restart, a pair missing from
    /// the host's newest 256 health rows shows none). Reflects every batch
    /// acknowledged so far.
    pub async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.hosts().await,
            Backend::Postgres(s) => s.hosts().await,
        }
    }

    /// [`Store::hosts`], one page: the first `limit` hosts whose hostname
    /// sorts after `after` (from the first when `None`), by hostname.
    pub async fn hosts_page(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<HostRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.hosts_page(after, limit).await,
            Backend::Postgres(s) => s.hosts_page(after, limit).await,
        }
    }

    /// What the store knows about one host; `None` if it never stored a
    /// batch. Reflects every batch acknowledged so far.
    pub async fn host(&self, hostname: &str) -> Result<Option<HostRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.host(hostname.to_owned()).await,
            Backend::Postgres(s) => s.host(hostname.to_owned()).await,
        }
    }

    /// Command history, newest command first (one row per targeted host),
    /// for every host or only `hostname`, at most `limit` rows.
    pub async fn history(
        &self,
        hostname: Option<String>,
        limit: usize,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.history(hostname, limit).await,
            Backend::Postgres(s) => s.history(hostname, limit).await,
        }
    }

    /// Records a join token (its secret only as a hash).
    pub async fn create_join_token(&self, t: JoinTokenRecord) -> Result<(), StoreError> {
        self.trust(TrustWrite::CreateJoinToken(t)).await.map(drop)
    }

    /// The join token whose secret hashes to `secret_sha256`, if any.
    pub async fn join_token(
        &self,
        secret_sha256: [u8; 32],
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.join_token(secret_sha256).await,
            Backend::Postgres(s) => s.join_token(secret_sha256).await,
        }
    }

    /// Spends a join token and records the certificate it bought, in one
    /// transaction: `Ok(Err(_))` (nothing written) if the token is
    /// unknown, used, expired or for another host by then.
    pub async fn redeem_join_token(
        &self,
        secret_sha256: [u8; 32],
        hostname: String,
        peer: String,
        cert: CertificateRecord,
    ) -> Result<Result<(), TokenRefusal>, StoreError> {
        let write = TrustWrite::Redeem {
            secret_sha256,
            hostname,
            peer,
            cert,
        };
        Ok(match self.trust(write).await? {
            TrustAnswer::Refused(r) => Err(r),
            _ => Ok(()),
        })
    }

    /// Records a certificate the server issued.
    pub async fn record_certificate(&self, c: CertificateRecord) -> Result<(), StoreError> {
        self.trust(TrustWrite::RecordCertificate(c)).await.map(drop)
    }

    /// Registers an operator's public signing key (again: no change).
    pub async fn register_signing_key(&self, k: SigningKeyRecord) -> Result<(), StoreError> {
        self.trust(TrustWrite::RegisterSigningKey(k))
            .await
            .map(drop)
    }

    /// Every registered signing key, revoked ones included.
    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.signing_keys().await,
            Backend::Postgres(s) => s.signing_keys().await,
        }
    }

    /// Revokes every unrevoked certificate of (`role`, `name`) (and, for an
    /// operator, their signing keys); returns how many certificates.
    pub async fn revoke_certificates(
        &self,
        role: String,
        name: String,
        now_unix_ms: i64,
    ) -> Result<u32, StoreError> {
        let write = TrustWrite::Revoke {
            role,
            name,
            now_unix_ms,
        };
        Ok(match self.trust(write).await? {
            TrustAnswer::Revoked(n) => n,
            _ => 0,
        })
    }

    /// Every certificate not expired more than a retention period ago,
    /// revoked ones included.
    pub async fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.certificates().await,
            Backend::Postgres(s) => s.certificates().await,
        }
    }

    /// A trust write, in order with everything else; resolves once
    /// committed.
    async fn trust(&self, write: TrustWrite) -> Result<TrustAnswer, StoreError> {
        let (reply, ticket) = Ticket::new();
        self.send(Request::Trust { write, reply }).await?;
        ticket.await
    }

    /// Queues a request for the backend's writer, waiting while its queue
    /// is full (the backpressure); `Closed` once the store is closed.
    async fn send(&self, request: Request) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.send(request).await,
            Backend::Postgres(s) => s.send(request).await,
        }
    }

    /// Stored batches after `after` (a cursor: a journal id, 0 for the
    /// beginning) and up to `until` (if given), in commit order, whole, up
    /// to `max_samples` samples (at least one batch). Pass `through` of the
    /// answer as the next `after`.
    pub async fn forward_batch(
        &self,
        after: i64,
        until: Option<i64>,
        max_samples: usize,
    ) -> Result<ForwardBatch, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.forward_batch((after, until), max_samples).await,
            Backend::Postgres(s) => s.forward_batch((after, until), max_samples).await,
        }
    }

    /// Makes `destinations` the forwarding destinations: their cursors are
    /// kept (a new one starts at the oldest batch still held). Returns
    /// every destination's cursor, in the order given. On SQLite any other
    /// destination's cursor is deleted so it holds nothing back; on a
    /// shared store other replicas may forward to others, so theirs stay
    /// until nobody moved them for longer than `max_lag`, the most a
    /// destination may fall behind.
    pub async fn register_forwarders(
        &self,
        destinations: Vec<String>,
        max_lag: Duration,
    ) -> Result<Vec<CursorRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.cursors(CursorWrite::Register(destinations)).await,
            Backend::Postgres(s) => s.register_forwarders(destinations, ms(max_lag)).await,
        }
    }

    /// This server's claim to forward to `destination` (registered by
    /// [`Store::register_forwarders`]), not taken yet: see
    /// [`ForwardClaim::take`].
    pub fn forward_claim(&self, destination: &str, max_lag: Duration) -> ForwardClaim {
        match &self.backend {
            Backend::Sqlite(s) => ForwardClaim::sqlite(s.clone(), destination),
            Backend::Postgres(s) => {
                ForwardClaim::postgres(s.forward_lock(destination, ms(max_lag)), destination)
            }
        }
    }

    /// Drains the queue, commits, stops the writer, closes. Idempotent:
    /// later calls (and every other request) return at once.
    pub async fn close(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.close().await,
            Backend::Postgres(s) => s.close().await,
        }
    }
}
