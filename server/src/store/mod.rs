//! The server's embedded store: every sample every agent sends, the hosts
//! that sent them, and the history of operator commands, in one SQLite file.
//!
//! Shape: ONE writer thread owns the only write connection and receives
//! requests from a bounded queue; it groups them into one transaction per
//! flush (up to `flush_max_batches` requests or `flush_max_delay` after the
//! first, whichever comes first) and answers each request only after that
//! transaction committed. A batch is one row appended to `journal`; a
//! host's journal rows are merged into `ticks`, `hosts` and `agent_runs`
//! once they waited `merge_interval`, a few hosts per flush (see
//! `schema.rs` for why, `journal.rs` for how). Sample queries and history
//! run on tokio's blocking pool against read-only connections (WAL lets
//! them read while the writer writes); queries add the host's unmerged
//! ticks from memory, and `hosts()` copies the writer's in-memory host
//! table (`hosts.rs`).
//!
//! Invariants (the tests in `server/tests/store.rs` hold us to them):
//! - `submit` resolves `Ok` only after the transaction holding the batch
//!   committed with `synchronous=FULL`: an acknowledged batch survives
//!   `kill -9` of the server and a power cut.
//! - A batch, identified by (agent_id, boot_id, seq), is stored at most once
//!   whatever the order and number of re-sends (see `dedup.rs`).
//! - Nothing queues without bound: a full queue makes `submit` wait, which
//!   slows the gRPC streams, which leaves batches in the agents' buffers.
//! - A failed transaction (disk full, I/O error) fails every request in it
//!   and changes nothing, in the file or in the writer's memory.
//!
//! The store must never see protobuf types, never block the async runtime,
//! and never delete more than `retention_chunk_rows` rows in one
//! transaction.

mod checkpoint;
mod dedup;
mod error;
mod hosts;
mod journal;
mod migrate;
mod read;
mod runs;
mod schema;
mod ticks;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use monitor::command::Finished;
use monitor::command::Outcome;
use monitor::metric::Metric;
use tokio::sync::{mpsc, oneshot};

pub use error::StoreError;

use hosts::HostTable;
use read::Readers;
use writer::Request;

/// How the store is opened and how its writer batches and prunes.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The database file (`--db PATH`); created if missing. SQLite keeps
    /// `PATH-wal` and `PATH-shm` beside it.
    pub path: PathBuf,
    /// Samples older than this (by sample time) are pruned. Default 7 days.
    pub retention: Duration,
    /// Requests (batches, command records) waiting for the writer; when
    /// full, `submit` waits. Default 16,384. At least 1.
    pub queue_capacity: usize,
    /// A flush commits at most this many requests. Default 2,048. At least 1.
    pub flush_max_batches: usize,
    /// A flush waits at most this long after its first request for more to
    /// arrive. Default 20 ms; zero commits whatever is queued at once.
    pub flush_max_delay: Duration,
    /// How often a retention pass starts. Default 60 s.
    pub retention_interval: Duration,
    /// Most rows (ticks of one host, up to six samples each) one retention
    /// transaction deletes. Default 5,000.
    pub retention_chunk_rows: usize,
    /// How long a host's batches wait in the journal before the writer
    /// merges them into the host's pages (see `journal.rs`). Longer: each
    /// host's pages are rewritten less often, fewer pages per checkpoint;
    /// shorter: less memory (the unmerged ticks are kept for queries) and a
    /// shorter replay after a crash. Default 30 s; zero merges at once.
    pub merge_interval: Duration,
    /// How often the WAL is copied back into the database file, by a
    /// thread of its own. Default 10 s.
    pub checkpoint_interval: Duration,
    /// SQLite page cache of the writer connection, in KiB. Default 64 MiB:
    /// the hot pages are the newest page of each host's range of `ticks`
    /// and the tree above.
    pub cache_size_kib: u32,
}

impl StoreConfig {
    /// The defaults, for a database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            retention: Duration::from_secs(7 * 24 * 3600),
            queue_capacity: 16_384,
            flush_max_batches: 2_048,
            flush_max_delay: Duration::from_millis(20),
            retention_interval: Duration::from_secs(60),
            retention_chunk_rows: 5_000,
            merge_interval: Duration::from_secs(30),
            checkpoint_interval: Duration::from_secs(10),
            cache_size_kib: 64 * 1024,
        }
    }

    fn validate(&self) -> Result<(), StoreError> {
        let bad = |field, detail| Err(StoreError::InvalidConfig { field, detail });
        if self.queue_capacity == 0 {
            return bad("queue_capacity", "must be at least 1");
        }
        if self.queue_capacity > tokio::sync::Semaphore::MAX_PERMITS {
            return bad("queue_capacity", "is too large");
        }
        if self.flush_max_batches == 0 {
            return bad("flush_max_batches", "must be at least 1");
        }
        if self.retention_chunk_rows == 0 {
            return bad("retention_chunk_rows", "must be at least 1");
        }
        if self.retention.is_zero() {
            return bad("retention", "must be longer than zero");
        }
        if i64::try_from(self.retention.as_millis()).is_err() {
            return bad("retention", "is too long");
        }
        Ok(())
    }
}

/// One batch as the ingest hands it over: validated, converted from the
/// wire, sample times already corrected for the agent's clock where needed.
#[derive(Clone, Debug, PartialEq)]
pub struct IncomingBatch {
    pub agent_id: String,
    pub hostname: String,
    pub agent_version: String,
    /// New at every start of the agent process.
    pub boot_id: u64,
    /// Unique within (agent_id, boot_id); starts at 1.
    pub seq: u64,
    /// Server wall clock when the batch arrived, ms since the Unix epoch.
    pub received_unix_ms: i64,
    /// Agent clock minus server clock, estimated from this batch, in ms.
    pub clock_offset_ms: i64,
    /// Batches the agent run dropped so far (a running total).
    pub dropped_batches_total: u64,
    /// The agent's address as the server saw it, e.g. "192.0.2.7:40312".
    pub peer: String,
    pub samples: Vec<StoredSample>,
}

/// One measurement of a batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StoredSample {
    /// Sample time, ms since the Unix epoch (server-corrected if needed).
    pub time_unix_ms: i64,
    pub metric: Metric,
    pub value: f64,
}

/// What happened to a submitted batch. Both mean "acknowledge it".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Committed by this submit.
    Stored,
    /// Already committed earlier (a re-send); nothing was written.
    Duplicate,
}

/// Samples of one host in a time range, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleQuery {
    pub hostname: String,
    /// `None`: every metric, merged by time.
    pub metric: Option<Metric>,
    /// Inclusive lower bound, ms since the Unix epoch.
    pub since_unix_ms: i64,
    /// Exclusive upper bound, ms since the Unix epoch; `None`: no bound.
    pub until_unix_ms: Option<i64>,
    /// At most this many rows; `None`: all of them.
    pub limit: Option<usize>,
}

/// One stored sample as queries return it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSampleRow {
    /// Sample time, ms since the Unix epoch.
    pub time_unix_ms: i64,
    pub hostname: String,
    pub metric: Metric,
    pub value: f64,
    /// Server wall clock when the batch holding it arrived, ms.
    pub received_unix_ms: i64,
}

/// The newest stored value of one metric of a host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatestValue {
    pub metric: Metric,
    /// Sample time, ms since the Unix epoch.
    pub time_unix_ms: i64,
    pub value: f64,
}

/// Everything the store knows about a host, from the batches it stored.
#[derive(Clone, Debug, PartialEq)]
pub struct HostRecord {
    pub hostname: String,
    /// Of the agent that sent the latest stored batch.
    pub agent_id: String,
    pub agent_version: String,
    /// Peer address of the latest stored batch.
    pub peer: String,
    /// Server time of the first stored batch, ms since the Unix epoch.
    pub first_seen_unix_ms: i64,
    /// Server time of the latest stored batch, ms since the Unix epoch.
    pub last_seen_unix_ms: i64,
    /// Agent clock minus server clock at the latest stored batch, ms.
    pub clock_offset_ms: i64,
    /// The running total reported by the latest stored batch (it restarts
    /// at 0 with each agent run).
    pub dropped_batches_total: u64,
    /// Batches of this host ever stored (duplicates not counted).
    pub batches_stored_total: u64,
    /// Newest value of each metric that has samples, in [`Metric::ALL`]
    /// order.
    pub latest: Vec<LatestValue>,
}

/// An operator command, recorded when it is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRecord {
    /// Unique per operator command; recording the same id again is a no-op.
    pub command_id: String,
    /// Server time the operator asked, ms since the Unix epoch.
    pub time_unix_ms: i64,
    /// Every host the command targets.
    pub targets: Vec<String>,
    pub argv: Vec<String>,
}

/// How a recorded command ended on one host. Recording a result again for
/// the same (command, host) replaces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandResultRecord {
    pub command_id: String,
    pub hostname: String,
    /// How it ended (the truncation flags are not stored).
    pub finished: Finished,
    /// Server time the result arrived, ms since the Unix epoch.
    pub finished_unix_ms: i64,
}

/// One (command, host) of the history. Result fields are `None`/0/empty
/// while the host has not answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRow {
    pub command_id: String,
    /// When the operator asked, ms since the Unix epoch.
    pub time_unix_ms: i64,
    pub hostname: String,
    pub argv: Vec<String>,
    /// Every host the command targeted, in the operator's order.
    pub targets: Vec<String>,
    /// `None` while the result is pending.
    pub outcome: Option<Outcome>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration_ms: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub message: String,
    /// When the result arrived, ms since the Unix epoch.
    pub finished_unix_ms: Option<i64>,
}

/// The answer to a queued request: resolves once the writer handled it
/// (for a batch: committed, or known to be a duplicate).
#[derive(Debug)]
pub struct Ticket<T>(oneshot::Receiver<Result<T, StoreError>>);

impl<T> std::future::Future for Ticket<T> {
    type Output = Result<T, StoreError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        // A dropped reply means the writer stopped before answering.
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::Closed)))
    }
}

/// Cheap to clone; every clone submits to the same single writer thread.
#[derive(Clone)]
pub struct Store {
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

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("queued", &self.queued())
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database, checks it, starts the writer
    /// thread. Blocks for as long as `quick_check` takes: call it before
    /// serving, or from `spawn_blocking`.
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        config.validate()?;
        let (requests, rx) = mpsc::channel(config.queue_capacity);
        let path = config.path.clone();
        let (handle, hosts) = writer::start(config, rx)?;
        Ok(Store {
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

    /// The database file.
    pub fn path(&self) -> &std::path::Path {
        &self.inner.path
    }

    /// Requests waiting for the writer right now (for the server's own
    /// metrics and for tests of backpressure).
    pub fn queued(&self) -> usize {
        let tx = &self.inner.requests;
        tx.max_capacity() - tx.capacity()
    }

    /// Resolves once the batch is durably committed (or known to be a
    /// duplicate). Waits while the queue is full. On `Err` nothing of the
    /// batch was stored and it must not be acknowledged.
    pub async fn submit(&self, batch: IncomingBatch) -> Result<SubmitOutcome, StoreError> {
        self.enqueue(batch).await?.await
    }

    /// Queues a batch (waiting while the queue is full: that is the
    /// backpressure) and returns a [`Ticket`] that resolves like
    /// [`Store::submit`]. Requests queued one after the other are handled in
    /// that order, so a stream can keep many batches in flight and still
    /// have them committed in sequence.
    pub async fn enqueue(&self, batch: IncomingBatch) -> Result<Ticket<SubmitOutcome>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Batch { batch, reply }, answer).await
    }

    /// Queues an operator command record; see [`Store::enqueue`]. A result
    /// recorded after this returns is handled after the command.
    pub async fn enqueue_command(&self, c: CommandRecord) -> Result<Ticket<()>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Command { record: c, reply }, answer)
            .await
    }

    /// Samples of a host in a time range, oldest first, up to `q.limit`.
    /// A host that never sent a batch is `Err(StoreError::UnknownHost)`.
    pub async fn query(&self, q: SampleQuery) -> Result<Vec<StoredSampleRow>, StoreError> {
        let hosts = Arc::clone(&self.inner.hosts);
        self.inner
            .readers
            .run(move |c| read::samples(c, &hosts, &q))
            .await
    }

    /// Every host ever stored, by hostname, with its latest value per metric
    /// (among what is stored: values older than the retention are gone; and
    /// after a restart, a metric missing from a host's newest ten ticks
    /// shows none). Reflects every batch acknowledged so far.
    pub async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        // On the blocking pool: the writer holds the table during a fold.
        let hosts = Arc::clone(&self.inner.hosts);
        tokio::task::spawn_blocking(move || hosts.snapshot())
            .await
            .map_err(StoreError::Reader)
    }

    /// Records an operator command and its targets (results pending).
    pub async fn record_command(&self, c: CommandRecord) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Command { record: c, reply }, answer)
            .await
    }

    /// Records how a command ended on one host. An unrecorded command id is
    /// `Err(StoreError::UnknownCommand)`.
    pub async fn record_command_result(&self, r: CommandResultRecord) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::CommandResult { record: r, reply }, answer)
            .await
    }

    /// Command history, newest command first (one row per targeted host),
    /// for every host or only `hostname`, at most `limit` rows.
    pub async fn history(
        &self,
        hostname: Option<String>,
        limit: usize,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        self.inner
            .readers
            .run(move |c| read::history(c, hostname.as_deref(), limit))
            .await
    }

    /// Drains the queue, commits, stops the writer, closes. Idempotent:
    /// later calls (and every other request) return at once.
    pub async fn close(&self) -> Result<(), StoreError> {
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(handle) = handle else {
            return Ok(());
        };
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.readers.close();
        let (reply, answer) = oneshot::channel();
        let result = match self.inner.requests.send(Request::Close { reply }).await {
            Ok(()) => answer.await.unwrap_or(Err(StoreError::Closed)),
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

    async fn send<T>(
        &self,
        request: Request,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<Ticket<T>, StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        self.inner
            .requests
            .send(request)
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(Ticket(answer))
    }

    async fn request<T>(
        &self,
        request: Request,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        self.inner
            .requests
            .send(request)
            .await
            .map_err(|_| StoreError::Closed)?;
        // A dropped reply means the writer stopped before answering.
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Test hook: caps the database at `pages` pages (SQLite's
    /// `max_page_count`) to simulate a full disk.
    #[cfg(test)]
    pub(crate) async fn set_max_page_count(&self, pages: u64) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::SetMaxPageCount { pages, reply }, answer)
            .await
    }

    /// Test hook: stops the writer the way `kill -9` would, as far as the
    /// file can tell (everything acknowledged is committed; the journal is
    /// not merged, the WAL not checkpointed), and waits for its thread.
    #[cfg(test)]
    pub(crate) async fn abandon(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.request(Request::Abandon { reply }, answer).await?;
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.readers.close();
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
