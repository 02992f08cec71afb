//! What the server's benches share: their knobs come from the environment,
//! and the Prometheus and dashboard benches run on a fresh SQLite store.

/// The environment variable `name` parsed, or `default` when unset or not
/// a `T`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A multi-thread runtime and, in it, a new SQLite store in `dir`: the
/// fixture of the benches that measure reads beside ingest.
// A fixture that cannot be made should stop the bench loudly; store.rs
// opens its own store, with tuned settings.
#[allow(dead_code, clippy::expect_used)]
pub fn runtime_and_store(
    dir: &std::path::Path,
) -> (tokio::runtime::Runtime, monitor_server::store::Store) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt
        .block_on(monitor_server::store::Store::open(
            monitor_server::store::SqliteConfig::new(dir.join("bench.db")),
        ))
        .expect("store");
    (rt, store)
}

/// The HTTP listener's state over `store` and `registry`, open to all (no
/// authentication), as the benches that go through the router need it.
#[allow(dead_code)]
pub fn http_state(
    store: &monitor_server::store::Store,
    registry: &std::sync::Arc<monitor_server::registry::Registry>,
) -> monitor_server::http::HttpState {
    use std::sync::Arc;
    monitor_server::http::HttpState {
        store: store.clone(),
        registry: Arc::clone(registry),
        telemetry: Arc::new(monitor_server::telemetry::Telemetry::new(0)),
        remote_write: Arc::new(Vec::new()),
        auth: Arc::new(monitor_server::http::Auth::open()),
        sessions: Default::default(),
        answers: Default::default(),
        proc_root: "/proc".into(),
    }
}

/// A batch of the six metrics from simulated host number `host`, named
/// `hostname`, sample `i` valued `value(i)`, no health values: the
/// benches' one way to make a batch to store.
#[allow(dead_code)]
pub fn six_batch(
    host: usize,
    hostname: String,
    seq: u64,
    time_unix_ms: i64,
    value: impl Fn(usize) -> f64,
) -> monitor_server::store::IncomingBatch {
    use monitor::metric::Metric;
    use monitor_server::store::{IncomingBatch, StoredSample};
    IncomingBatch {
        agent_id: format!("agent-{host:05}"),
        hostname,
        agent_version: "0.1.0".into(),
        boot_id: 1,
        seq,
        received_unix_ms: time_unix_ms + 3,
        clock_offset_ms: -3,
        dropped_batches_total: 0,
        peer: "127.0.0.1:1".into(),
        samples: Metric::ALL
            .iter()
            .enumerate()
            .map(|(i, &metric)| StoredSample {
                time_unix_ms,
                metric,
                value: value(i),
            })
            .collect(),
        health: Vec::new(),
    }
}
