//! The SQLite backend of the store: every sample, the hosts that sent them
//! and the command history in one SQLite file (WAL, `synchronous=FULL`).
//!
//! Shape: ONE writer thread (`writer/`) owns the only write connection and
//! receives requests from a bounded queue; it groups them into one
//! transaction per flush (up to `flush_max_batches` requests or
//! `flush_max_delay` after the first, whichever comes first) and answers
//! each request only after that transaction committed. A batch is one row
//! appended to `journal`; a host's journal rows are merged into `ticks`,
//! `hosts` and `agent_runs` once they waited `merge_interval`, a few hosts
//! per flush (see `tables.rs` for why, `journal.rs` for how). Sample
//! queries and history run on tokio's blocking pool against read-only
//! connections (`read.rs`; WAL lets them read while the writer writes);
//! queries add the host's unmerged ticks from memory, and `hosts()` copies
//! the writer's in-memory host table (`hosts.rs`). A second thread copies
//! the WAL back into the file (`checkpoint.rs`).
//!
//! Files, from the bottom: `tables.rs` (the file format: tables, ids,
//! encodings), `ticks.rs` (rows per tick, pure), `dedup.rs` (stored seqs,
//! pure), `runs.rs` and `journal.rs` (their SQL), `hosts.rs` (the host
//! table in memory), `migrate.rs` and `schema.rs` (opening a file),
//! `read.rs`, `checkpoint.rs`, `writer/`, and this handle.
//!
//! On top of the face's contract (see `store/mod.rs`), this backend never
//! deletes more than `retention_chunk_rows` rows in one transaction, and
//! an acknowledged batch is in the file (journal or tables) before its
//! answer is sent, so `kill -9` loses nothing acknowledged.

mod checkpoint;
mod config;
pub(super) mod error;
mod forward;
mod health;
mod hosts;
mod journal;
mod migrate;
mod read;
mod runs;
mod schema;
mod tables;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use crate::store::error::StoreError;
use crate::store::health_series::HealthDownsampler;
use crate::store::records::{
    CertificateRecord, CursorRecord, CursorWrite, FleetSeriesQuery, ForwardBatch, HealthQuery,
    HealthRow, HistoryRow, HostRecord, HostSeries, JoinTokenRecord, SampleQuery, Series,
    SeriesQuery, SigningKeyRecord, StoredSampleRow,
};
use crate::store::series::Downsampler;
use crate::store::ticket::Ticket;

pub use config::SqliteConfig;
pub use error::SqliteError;

use hosts::HostTable;
use read::Readers;
use writer::Request;

/// Cheap to clone; every clone submits to the same single writer thread.
#[derive(Clone)]
pub(crate) struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    requests: mpsc::Sender<Request>,
    readers: Arc<Readers>,
    /// The writer's host table: copied by `hosts()`, unmerged ticks for
    /// `query()`.
    hosts: Arc<HostTable>,
    /// Set by the first `close`; later requests fail with `Closed`.
    closed: AtomicBool,
    /// Taken (and joined) by the first `close`.
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("queued", &self.queued())
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database, checks it, starts the writer
    /// thread. Blocks for as long as `quick_check` takes.
    pub(crate) fn open(config: SqliteConfig) -> Result<SqliteStore, StoreError> {
        config.validate()?;
        let (requests, rx) = mpsc::channel(config.queue_capacity);
        let path = config.path.clone();
        let (handle, hosts) = writer::start(config, rx)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                readers: Arc::new(Readers::new(path.clone())),
                hosts,
                path,
                requests,
                closed: AtomicBool::new(false),
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    pub(crate) fn queued(&self) -> usize {
        let tx = &self.inner.requests;
        tx.max_capacity() - tx.capacity()
    }

    pub(crate) async fn query(&self, q: SampleQuery) -> Result<Vec<StoredSampleRow>, StoreError> {
        let hosts = Arc::clone(&self.inner.hosts);
        self.inner
            .readers
            .run(move |c| read::samples(c, &hosts, &q))
            .await
    }

    pub(crate) async fn query_health(&self, q: HealthQuery) -> Result<Vec<HealthRow>, StoreError> {
        self.inner
            .readers
            .run(move |c| {
                let during = "querying health values";
                let host_id = read::known_host_id(c, &q.hostname, during)?;
                health::query(c, host_id, &q).map_err(read::sql(during))
            })
            .await
    }

    pub(crate) async fn health_series(
        &self,
        q: SeriesQuery,
        mut down: HealthDownsampler,
    ) -> Result<HealthDownsampler, StoreError> {
        self.inner
            .readers
            .run(move |c| {
                let during = "querying health series";
                let host_id = read::known_host_id(c, &q.hostname, during)?;
                health::scan(c, host_id, &q, &mut down).map_err(read::sql(during))?;
                Ok(down)
            })
            .await
    }

    pub(crate) async fn series(
        &self,
        q: SeriesQuery,
        down: Downsampler,
    ) -> Result<Vec<Series>, StoreError> {
        let hosts = Arc::clone(&self.inner.hosts);
        self.inner
            .readers
            .run(move |c| read::series(c, &hosts, &q, down))
            .await
    }

    pub(crate) async fn fleet_series(
        &self,
        q: FleetSeriesQuery,
        down: Downsampler,
    ) -> Result<Vec<HostSeries>, StoreError> {
        let hosts = Arc::clone(&self.inner.hosts);
        self.inner
            .readers
            .run(move |c| read::fleet_series(c, &hosts, &q, &down))
            .await
    }

    pub(crate) async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        // On the blocking pool: the writer holds the table while it applies
        // a flush.
        let hosts = Arc::clone(&self.inner.hosts);
        tokio::task::spawn_blocking(move || hosts.snapshot())
            .await
            .map_err(StoreError::Reader)
    }

    pub(crate) async fn hosts_page(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<HostRecord>, StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        // On the blocking pool, like `hosts()`.
        let hosts = Arc::clone(&self.inner.hosts);
        tokio::task::spawn_blocking(move || hosts.page(after.as_deref(), limit))
            .await
            .map_err(StoreError::Reader)
    }

    pub(crate) async fn host(&self, hostname: String) -> Result<Option<HostRecord>, StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        // On the blocking pool, like `hosts()`.
        let hosts = Arc::clone(&self.inner.hosts);
        tokio::task::spawn_blocking(move || hosts.record_of(&hostname))
            .await
            .map_err(StoreError::Reader)
    }

    pub(crate) async fn history(
        &self,
        hostname: Option<String>,
        limit: usize,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        self.inner
            .readers
            .run(move |c| read::history(c, hostname.as_deref(), limit))
            .await
    }

    /// Stored batches after journal id `after`, in commit order, up to
    /// `max_samples` samples (whole batches, at least one).
    pub(crate) async fn forward_batch(
        &self,
        after: (i64, Option<i64>),
        max_samples: usize,
    ) -> Result<ForwardBatch, StoreError> {
        self.inner
            .readers
            .run(move |c| {
                let tx = c
                    .transaction()
                    .map_err(|e| SqliteError::sql("reading the journal", e))?;
                forward::read_after(&tx, after, max_samples)
                    .map_err(|e| StoreError::from(SqliteError::sql("reading the journal", e)))
            })
            .await
    }

    /// `destination`'s cursor as committed (`None`: not registered).
    pub(crate) async fn cursor(
        &self,
        destination: String,
    ) -> Result<Option<CursorRecord>, StoreError> {
        self.inner
            .readers
            .run(move |c| {
                forward::cursor(c, &destination)
                    .map_err(|e| StoreError::from(SqliteError::sql("reading a cursor", e)))
            })
            .await
    }

    /// A change to the forwarding cursors, in order with everything else;
    /// resolves once committed.
    pub(crate) async fn cursors(
        &self,
        write: CursorWrite,
    ) -> Result<Vec<CursorRecord>, StoreError> {
        let (reply, ticket) = Ticket::new();
        self.send(Request::Cursors { write, reply }).await?;
        ticket.await
    }

    pub(crate) async fn join_token(
        &self,
        secret_sha256: [u8; 32],
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        self.inner
            .readers
            .run(move |c| {
                writer::trust::join_token(c, &secret_sha256)
                    .map_err(|e| StoreError::from(SqliteError::sql("reading a join token", e)))
            })
            .await
    }

    pub(crate) async fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        self.inner
            .readers
            .run(move |c| {
                writer::trust::certificates(c)
                    .map_err(|e| StoreError::from(SqliteError::sql("reading certificates", e)))
            })
            .await
    }

    pub(crate) async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        self.inner
            .readers
            .run(move |c| {
                writer::trust::signing_keys(c)
                    .map_err(|e| StoreError::from(SqliteError::sql("reading signing keys", e)))
            })
            .await
    }

    pub(crate) async fn close(&self) -> Result<(), StoreError> {
        let Some(handle) = self.take_writer() else {
            return Ok(());
        };
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.readers.close();
        let (reply, answer) = Ticket::new();
        let result = match self.inner.requests.send(Request::Close { reply }).await {
            Ok(()) => answer.await,
            // The writer is already gone (it panicked or the runtime
            // stopped it): there is nothing left to drain.
            Err(_) => Ok(()),
        };
        // The writer answers as its very last act, so this join is quick.
        let joined = tokio::task::spawn_blocking(move || handle.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            log::error!(
                "store: the writer thread of {} panicked",
                self.inner.path.display()
            );
        }
        result
    }

    /// The writer thread's handle, for the first caller only.
    fn take_writer(&self) -> Option<JoinHandle<()>> {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
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

    /// For tests: queues a batch, then waits for its ticket.
    #[cfg(test)]
    pub(crate) async fn submit(
        &self,
        batch: crate::store::IncomingBatch,
    ) -> Result<crate::store::SubmitOutcome, StoreError> {
        let (reply, ticket) = Ticket::new();
        self.send(Request::Batch { batch, reply }).await?;
        ticket.await
    }

    /// Test hook: caps the database at `pages` pages (SQLite's
    /// `max_page_count`) to simulate a full disk.
    #[cfg(test)]
    pub(crate) async fn set_max_page_count(&self, pages: u64) -> Result<u64, StoreError> {
        let (reply, answer) = Ticket::new();
        self.send(Request::SetMaxPageCount { pages, reply }).await?;
        answer.await
    }

    /// Test hook: stops the writer the way `kill -9` would, as far as the
    /// file can tell (everything acknowledged is committed; the journal is
    /// not merged, the WAL not checkpointed), and waits for its thread.
    #[cfg(test)]
    pub(crate) async fn abandon(&self) -> Result<(), StoreError> {
        let (reply, answer) = Ticket::new();
        self.send(Request::Abandon { reply }).await?;
        answer.await?;
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.readers.close();
        if let Some(h) = self.take_writer() {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
