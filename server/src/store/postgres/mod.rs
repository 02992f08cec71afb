//! The PostgreSQL backend of the store: every sample, the hosts that sent
//! them, the command history and the trust tables in one PostgreSQL
//! database that several `monitor-server` replicas share.
//!
//! Shape: ONE writer task per replica (`writer.rs`) owns a connection of
//! its own and receives requests from a bounded queue; it groups them into
//! one transaction per flush and answers each request only after that
//! transaction committed (`flush.rs`). Reads (`read.rs`, `trust.rs`) run on
//! a small pool of other connections. Nothing is kept in memory between
//! flushes except which partitions exist: the database is the truth, and
//! what another replica committed is seen at once.
//!
//! Files, from the bottom: `text.rs` (text without NUL), `config.rs`,
//! `error.rs`, `schema.rs` (tables, migration under an advisory lock),
//! `partitions.rs` (time partitions of `ticks`, retention by dropping
//! them), `trust.rs`, `health.rs` (the health metrics), `journal.rs`
//! (remote-write's change feed in commit order, one forwarder per
//! destination in the cluster), `flush.rs`, `read.rs`, `writer.rs`, and
//! this handle.
//!
//! On top of the face's contract (see `store/mod.rs`): the de-duplication
//! state of a run commits in the same transaction as its samples, with
//! its row locked, so an agent that re-sends its buffer to another replica
//! after a failover stores nothing twice; retention drops whole partitions
//! (samples live between `retention` and `retention` plus one partition
//! width); and the database's password never reaches a log.

mod config;
pub(super) mod error;
mod flush;
mod health;
pub(super) mod journal;
mod partitions;
mod read;
mod replicas;
mod schema;
mod text;
mod trust;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

use crate::store::error::StoreError;
use crate::store::records::{
    AuthorityRecord, CertificateRecord, CursorRecord, ForwardBatch, HistoryRow, HostRecord,
    JoinTokenRecord, RelayRecord, SampleQuery, Series, SeriesQuery, SessionRecord,
    SigningKeyRecord, StoredSampleRow,
};
use crate::store::requests::Request;
use crate::store::ticket::Ticket;

pub use config::PostgresConfig;
pub use error::PostgresError;

use writer::{Health, Writer};

use crate::throttle::LogThrottle;

/// How long the relay's listener waits before connecting again.
const LISTEN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// One listening connection, until it fails or nobody listens.
async fn listen_once(
    pg: &tokio_postgres::Config,
    replica: &str,
    doorbell: &mpsc::Sender<()>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = pg.connect(NoTls).await?;
    let (notes_tx, mut notes) = mpsc::channel::<String>(64);
    // The connection must be polled for LISTEN to complete, and for the
    // notifications after it.
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    // Full: a ring is pending already, which is enough.
                    let _ = notes_tx.try_send(n.payload().to_owned());
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!("LISTEN {}", replicas::RELAY_CHANNEL))
        .await?;
    while let Some(to) = notes.recv().await {
        if to == replica && doorbell.try_send(()).is_err() && doorbell.is_closed() {
            break;
        }
    }
    driver.abort();
    Ok(())
}

/// Cheap to clone; every clone submits to the same writer task.
#[derive(Clone)]
pub(crate) struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The URL without its password.
    target: String,
    /// How to connect (for the relay's listening connection).
    pg: tokio_postgres::Config,
    requests: mpsc::Sender<Request>,
    reads: Pool,
    health: Arc<Health>,
    /// Set by the first `close`; later requests fail with `Closed`.
    closed: AtomicBool,
    /// Taken (and awaited) by the first `close`.
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.inner.target)
            .field("queued", &self.queued())
            .finish()
    }
}

impl PostgresStore {
    /// Connects, brings the tables up to date (one replica at a time),
    /// starts the writer task.
    pub(crate) async fn open(config: PostgresConfig) -> Result<PostgresStore, StoreError> {
        let pg = config.validate()?;
        let pg_config = pg.clone();
        let target = config.target();
        let mut client = writer::connect(&pg, &target).await?;
        let schema = schema::migrate(
            &mut client,
            &target,
            partitions::width_for(config.retention_ms()),
        )
        .await?;
        let existing = partitions::existing(&client)
            .await
            .map_err(|e| PostgresError::of("listing partitions", &target, e))?;
        let hosts: i64 = client
            .query_one("SELECT count(*) FROM hosts", &[])
            .await
            .map_err(|e| PostgresError::of("counting hosts", &target, e))?
            .get(0);
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let reads = Pool::builder(manager)
            .max_size(config.read_connections)
            .build()
            .map_err(|e| StoreError::Writer(std::io::Error::other(e.to_string())))?;
        log::info!(
            "store: PostgreSQL at {target}: {hosts} hosts, {} partitions of {} s",
            existing.len(),
            schema.partition_width_ms / 1000
        );
        let (requests, rx) = mpsc::channel(config.queue_capacity);
        let health = Arc::new(Health::default());
        let writer = Writer {
            pg,
            target: target.clone(),
            config,
            schema,
            client: Some(client),
            partitions: existing,
            health: Arc::clone(&health),
            down_since: None,
            checked_by_value_log: LogThrottle::default(),
        };
        let handle = tokio::spawn(writer.run(rx));
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pg: pg_config,
                target,
                requests,
                reads,
                health,
                closed: AtomicBool::new(false),
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    pub(crate) fn queued(&self) -> usize {
        let tx = &self.inner.requests;
        tx.max_capacity() - tx.capacity()
    }

    /// Whether the database answered the last flush; when not, since when
    /// (ms since the Unix epoch).
    pub(crate) fn unavailable_since_unix_ms(&self) -> Option<i64> {
        self.inner.health.down_since_unix_ms()
    }

    /// A read connection from the pool.
    async fn reader(&self) -> Result<deadpool_postgres::Object, StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        self.inner.reads.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => {
                PostgresError::of("connecting", &self.inner.target, e).into()
            }
            other => StoreError::Writer(std::io::Error::other(other.to_string())),
        })
    }

    pub(crate) async fn query(&self, q: SampleQuery) -> Result<Vec<StoredSampleRow>, StoreError> {
        let mut c = self.reader().await?;
        read::samples(&mut **c, &self.inner.target, &q).await
    }

    pub(crate) async fn query_health(
        &self,
        q: crate::store::records::HealthQuery,
    ) -> Result<Vec<crate::store::records::HealthRow>, StoreError> {
        let mut c = self.reader().await?;
        read::health(&mut **c, &self.inner.target, &q).await
    }

    pub(crate) async fn health_series(
        &self,
        q: SeriesQuery,
        down: crate::store::health_series::HealthDownsampler,
    ) -> Result<crate::store::health_series::HealthDownsampler, StoreError> {
        let mut c = self.reader().await?;
        read::health_series(&mut **c, &self.inner.target, &q, down).await
    }

    pub(crate) async fn series(
        &self,
        q: SeriesQuery,
        down: crate::store::series::Downsampler,
    ) -> Result<Vec<Series>, StoreError> {
        let mut c = self.reader().await?;
        read::series(&mut **c, &self.inner.target, &q, down).await
    }

    pub(crate) async fn fleet_series(
        &self,
        q: crate::store::records::FleetSeriesQuery,
        down: crate::store::series::Downsampler,
    ) -> Result<Vec<crate::store::records::HostSeries>, StoreError> {
        let mut c = self.reader().await?;
        read::fleet_series(&mut **c, &self.inner.target, &q, &down).await
    }

    pub(crate) async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.hosts_page(None, usize::MAX).await
    }

    pub(crate) async fn hosts_page(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<HostRecord>, StoreError> {
        let mut c = self.reader().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut hosts = read::hosts(&mut **c, &self.inner.target, after.as_deref(), limit).await?;
        self.inner.health.add_counts(&mut hosts);
        Ok(hosts)
    }

    pub(crate) async fn host(&self, hostname: String) -> Result<Option<HostRecord>, StoreError> {
        let mut c = self.reader().await?;
        let mut host = read::host(&mut **c, &self.inner.target, &hostname).await?;
        self.inner.health.add_counts(host.as_mut_slice());
        Ok(host)
    }

    pub(crate) async fn history(
        &self,
        hostname: Option<String>,
        limit: usize,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        let mut c = self.reader().await?;
        read::history(&mut **c, &self.inner.target, hostname.as_deref(), limit).await
    }

    pub(crate) async fn join_token(
        &self,
        secret_sha256: [u8; 32],
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        let c = self.reader().await?;
        Ok(trust::join_token(&**c, &self.inner.target, &secret_sha256).await?)
    }

    pub(crate) async fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        let c = self.reader().await?;
        Ok(trust::certificates(&**c, &self.inner.target).await?)
    }

    pub(crate) async fn share_authority(
        &self,
        candidate: AuthorityRecord,
    ) -> Result<AuthorityRecord, StoreError> {
        let c = self.reader().await?;
        Ok(trust::share_authority(&**c, &self.inner.target, &candidate).await?)
    }

    pub(crate) async fn heartbeat(&self, replica: &str, lease_ms: i64) -> Result<(), StoreError> {
        let c = self.reader().await?;
        Ok(replicas::heartbeat(&**c, &self.inner.target, replica, lease_ms).await?)
    }

    pub(crate) async fn claim_session(
        &self,
        hostname: &str,
        replica: &str,
    ) -> Result<i64, StoreError> {
        let c = self.reader().await?;
        Ok(replicas::claim(&**c, &self.inner.target, hostname, replica).await?)
    }

    pub(crate) async fn release_session(
        &self,
        hostname: &str,
        replica: &str,
        epoch: i64,
    ) -> Result<(), StoreError> {
        let c = self.reader().await?;
        Ok(replicas::release(&**c, &self.inner.target, hostname, replica, epoch).await?)
    }

    pub(crate) async fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let c = self.reader().await?;
        Ok(replicas::sessions(&**c, &self.inner.target).await?)
    }

    pub(crate) async fn relay(&self, to: &str, message: &RelayRecord) -> Result<(), StoreError> {
        let mut c = self.reader().await?;
        let target = &self.inner.target;
        let fail = |e| PostgresError::of("relaying to another replica", target, e);
        let tx = (**c).transaction().await.map_err(fail)?;
        replicas::without_flush_wait(&tx, target).await?;
        replicas::send(&tx, target, to, message).await?;
        tx.commit().await.map_err(fail)?;
        Ok(())
    }

    pub(crate) async fn take_relayed(&self, replica: &str) -> Result<Vec<RelayRecord>, StoreError> {
        let mut c = self.reader().await?;
        let target = &self.inner.target;
        let fail = |e| PostgresError::of("taking relayed messages", target, e);
        let tx = (**c).transaction().await.map_err(fail)?;
        replicas::without_flush_wait(&tx, target).await?;
        let taken = replicas::take(&tx, target, replica).await?;
        tx.commit().await.map_err(fail)?;
        Ok(taken)
    }

    /// Rings `doorbell` whenever a message is left for `replica`: a
    /// connection of its own that `LISTEN`s, connecting again (after
    /// [`LISTEN_RETRY`]) whenever it is lost. Ends when `doorbell`'s
    /// receiver is dropped. A ring can be missed while it reconnects: the
    /// caller also looks on its own now and then.
    pub(crate) fn listen_relay(&self, replica: String, doorbell: mpsc::Sender<()>) {
        let pg = self.inner.pg.clone();
        let target = self.inner.target.clone();
        tokio::spawn(async move {
            while !doorbell.is_closed() {
                if let Err(e) = listen_once(&pg, &replica, &doorbell).await {
                    log::debug!("store: listening for relayed messages at {target}: {e}");
                }
                tokio::time::sleep(LISTEN_RETRY).await;
            }
        });
    }

    /// Stored batches after journal id `after`, in commit order (see
    /// `journal.rs`).
    pub(crate) async fn forward_batch(
        &self,
        after: (i64, Option<i64>),
        max_samples: usize,
    ) -> Result<ForwardBatch, StoreError> {
        let c = self.reader().await?;
        Ok(journal::read_after(&**c, &self.inner.target, after, max_samples).await?)
    }

    /// Makes the cursors of `destinations` (kept if they exist).
    pub(crate) async fn register_forwarders(
        &self,
        destinations: Vec<String>,
        max_lag_ms: i64,
    ) -> Result<Vec<CursorRecord>, StoreError> {
        let mut c = self.reader().await?;
        let cursors =
            journal::register(&mut **c, &self.inner.target, &destinations, max_lag_ms).await?;
        Ok(cursors.into_iter().map(|(_, c)| c).collect())
    }

    /// This replica's (not yet taken) claim to forward to `destination`.
    pub(crate) fn forward_lock(&self, destination: &str, max_lag_ms: i64) -> journal::ForwardLock {
        journal::ForwardLock::new(
            self.inner.pg.clone(),
            self.inner.target.clone(),
            destination.to_owned(),
            max_lag_ms,
        )
    }

    pub(crate) async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let c = self.reader().await?;
        Ok(trust::signing_keys(&**c, &self.inner.target).await?)
    }

    pub(crate) async fn close(&self) -> Result<(), StoreError> {
        let Some(handle) = self.inner.writer.lock().await.take() else {
            return Ok(());
        };
        self.inner.closed.store(true, Ordering::SeqCst);
        let (reply, answer) = Ticket::new();
        let result = match self.inner.requests.send(Request::Close { reply }).await {
            Ok(()) => answer.await,
            Err(_) => Ok(()),
        };
        if handle.await.is_err() {
            log::error!("store: the writer task of {} panicked", self.inner.target);
        }
        self.inner.reads.close();
        result
    }

    /// Queues a request, waiting while the queue is full.
    pub(crate) async fn send(&self, request: Request) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        self.inner
            .requests
            .send(request)
            .await
            .map_err(|_| StoreError::Closed)
    }
}
