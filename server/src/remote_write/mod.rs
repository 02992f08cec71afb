//! Prometheus remote-write: every sample the store durably stored, sent to
//! each configured receiver (Prometheus with
//! `--web.enable-remote-write-receiver`, VictoriaMetrics, Mimir, ...) in
//! commit order, from a cursor per destination kept in the store.
//!
//! - `destination.rs`: the `--remote-write` value (URL and options) and
//!   its files;
//! - `proto.rs`: remote-write 1.0's messages, snappy;
//! - `client.rs`: one HTTP connection per destination (hyper, rustls);
//! - `forwarder.rs`: the loop: read after the cursor, send, retry or drop,
//!   move the cursor; the maximum lag.
//!
//! Guarantees: nothing stored is skipped unless it is older than the
//! maximum lag or a receiver refused it (both counted and logged); a
//! server restart resumes at the cursor. Each request is noted in the
//! store before it is sent (`sending_through`), and after a crash exactly
//! that request is sent again, alone: a receiver that applies a request
//! whole (Prometheus, Mimir) then holds each sample once (it refuses the
//! repeat as out of order, which is logged and counted as refused); one
//! that appends everything (VictoriaMetrics) may hold that one request's
//! samples twice, which its `-dedup.minScrapeInterval` removes.
//! Ingest never waits on a destination: a slow or dead one only lets its
//! cursor fall behind, and holds journal rows on disk (not memory) for at
//! most the maximum lag.

mod client;
pub mod destination;
mod forwarder;
pub mod proto;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

pub use destination::{Destination, DestinationSpec};
pub use forwarder::{Forwarder, MAX_SAMPLES_PER_REQUEST};

/// Default `--remote-write-max-lag`: Prometheus refuses samples older than
/// about an hour (its head block's lower bound) anyway.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(3600);

/// One destination's counters, read by `/metrics` and `monitorctl status`.
#[derive(Debug, Default)]
pub struct Stats {
    /// The destination's URL (its name).
    pub url: String,
    /// Samples the receiver accepted.
    pub sent_samples: AtomicU64,
    /// Samples of attempts that failed and were retried (one sample
    /// counts once per failed attempt).
    pub failed_samples: AtomicU64,
    /// Samples given up: refused by the receiver (4xx other than 429).
    pub refused_samples: AtomicU64,
    /// Samples given up: older than the maximum lag when their turn came.
    pub too_old_samples: AtomicU64,
    /// Requests that got a 2xx.
    pub sent_requests: AtomicU64,
    /// Journal id every sample up to which was sent or dropped.
    pub cursor: AtomicI64,
    /// Newest journal id stored, at the last read.
    pub newest: AtomicI64,
    /// Arrival time of the oldest batch not sent yet (ms since the Unix
    /// epoch); 0 when caught up.
    pub oldest_unsent_unix_ms: AtomicI64,
}

impl Stats {
    pub fn new(url: &str) -> Stats {
        Stats {
            url: url.to_owned(),
            ..Stats::default()
        }
    }

    /// How far behind the destination is, in seconds (0 when caught up).
    pub fn lag_seconds(&self, now_unix_ms: i64) -> f64 {
        match self.oldest_unsent_unix_ms.load(Ordering::Relaxed) {
            0 => 0.0,
            t => (now_unix_ms - t).max(0) as f64 / 1000.0,
        }
    }

    /// Samples dropped for any reason.
    pub fn dropped_samples(&self) -> u64 {
        self.refused_samples.load(Ordering::Relaxed) + self.too_old_samples.load(Ordering::Relaxed)
    }
}

/// Every destination's counters, in the order configured.
pub type AllStats = Arc<Vec<Arc<Stats>>>;

/// The running forwarders.
pub struct Started {
    pub stats: AllStats,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Reads each destination's files, registers the destinations' cursors in
/// the store (on SQLite dropping those of destinations no longer
/// configured) and starts one forwarder per destination (on a shared
/// store, one replica of the cluster forwards to each at a time). An unreadable file or a store
/// error stops the server from starting: the operator asked for every
/// sample to go there.
pub async fn start(
    store: &crate::store::Store,
    specs: &[DestinationSpec],
    max_lag: Duration,
    stored: tokio::sync::watch::Receiver<u64>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Started, String> {
    let destinations = specs
        .iter()
        .map(Destination::load)
        .collect::<Result<Vec<_>, _>>()?;
    store
        .register_forwarders(
            destinations.iter().map(|d| d.url.clone()).collect(),
            max_lag,
        )
        .await
        .map_err(|e| format!("remote-write cursors: {e}"))?;
    let mut stats = Vec::with_capacity(destinations.len());
    let mut tasks = Vec::with_capacity(destinations.len());
    for destination in destinations {
        let s = Arc::new(Stats::new(&destination.url));
        stats.push(Arc::clone(&s));
        let forwarder = Forwarder {
            store: store.clone(),
            destination,
            stats: s,
            max_lag,
            stored: stored.clone(),
            stop: stop.clone(),
        };
        tasks.push(tokio::spawn(forwarder.run()));
    }
    Ok(Started {
        stats: Arc::new(stats),
        tasks,
    })
}
