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
