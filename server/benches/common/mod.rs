//! What the server's benches share: their knobs come from the environment.

/// The environment variable `name` parsed, or `default` when unset or not
/// a `T`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
