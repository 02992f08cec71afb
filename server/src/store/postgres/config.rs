//! How the PostgreSQL backend is reached and how its writer batches and
//! prunes: every knob with its default and why.
//!
//! Validation happens once, at open; nothing else may accept a value out of
//! the ranges [`PostgresConfig::validate`] checks. The URL may hold a
//! password: it is never logged or shown whole, only [`PostgresConfig::target`].

use std::time::Duration;

use crate::store::error::StoreError;
use crate::store::records::FlushObserver;
use crate::store::requests::check_settings;

/// How the store reaches its database and how its writer batches and
/// prunes.
#[derive(Clone)]
pub struct PostgresConfig {
    /// `postgres://user[:password]@host[:port]/dbname[?options]` or the
    /// `key=value` form libpq takes (`--db`, `MONITOR_DB`).
    pub url: String,
    /// Samples older than this (by sample time) are dropped, a whole
    /// partition at a time. Default 7 days.
    pub retention: Duration,
    /// Requests waiting for the writer; when full, `enqueue` waits.
    /// Default 16,384. At least 1.
    pub queue_capacity: usize,
    /// A flush commits at most this many requests. Default 2,048.
    pub flush_max_batches: usize,
    /// A flush waits at most this long after its first request for more.
    /// Default 20 ms; zero commits whatever is queued at once.
    pub flush_max_delay: Duration,
    /// How often a retention pass runs (on any replica; one at a time).
    /// Default 60 s.
    pub retention_interval: Duration,
    /// Connections for reads (queries, history, hosts), beside the
    /// writer's own. Default 4.
    pub read_connections: usize,
    /// How long connecting to the database may take. Default 5 s.
    pub connect_timeout: Duration,
    /// Told after every flush what it stored (the server's telemetry and
    /// remote-write wake-ups). Default none.
    pub observer: Option<FlushObserver>,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("target", &self.target())
            .field("retention", &self.retention)
            .field("queue_capacity", &self.queue_capacity)
            .field("flush_max_batches", &self.flush_max_batches)
            .field("flush_max_delay", &self.flush_max_delay)
            .finish_non_exhaustive()
    }
}

impl PostgresConfig {
    /// The defaults, for the database at `url`.
    pub fn new(url: impl Into<String>) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            retention: Duration::from_secs(7 * 24 * 3600),
            queue_capacity: 16_384,
            flush_max_batches: 2_048,
            flush_max_delay: Duration::from_millis(20),
            retention_interval: Duration::from_secs(60),
            read_connections: 4,
            connect_timeout: Duration::from_secs(5),
            observer: None,
        }
    }

    /// Whether `db` (a `--db` value) names a PostgreSQL database.
    pub fn is_url(db: &str) -> bool {
        db.starts_with("postgres://") || db.starts_with("postgresql://")
    }

    /// The URL without its password, for logs and errors.
    pub fn target(&self) -> String {
        redact(&self.url)
    }

    /// Refuses values the writer cannot work with, naming the field.
    pub(crate) fn validate(&self) -> Result<tokio_postgres::Config, StoreError> {
        let bad = |field, detail| Err(StoreError::InvalidConfig { field, detail });
        check_settings(self.queue_capacity, self.flush_max_batches, self.retention)?;
        if self.read_connections == 0 {
            return bad("read_connections", "must be at least 1");
        }
        let mut pg: tokio_postgres::Config = match self.url.parse() {
            Ok(c) => c,
            Err(_) => return bad("url", "is not a PostgreSQL URL (postgres://user@host/db)"),
        };
        pg.connect_timeout(self.connect_timeout)
            .application_name("monitor-server");
        Ok(pg)
    }

    /// The retention in ms (validated to fit).
    pub(crate) fn retention_ms(&self) -> i64 {
        i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX)
    }
}

/// `url` with the password between `user:` and `@` replaced by `***`.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        // The key=value form: drop a password=... pair.
        return url
            .split_whitespace()
            .map(|kv| {
                if kv.starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end],
                    &userinfo[..colon],
                    &rest[at..]
                ),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let check = |url: &str, shown: &str| assert_eq!(redact(url), shown, "{url}");
        check(
            "postgres://u:secret@db:5432/m",
            "postgres://u:***@db:5432/m",
        );
        check("postgres://u@db/m", "postgres://u@db/m");
        check(
            "postgresql://db/m?sslmode=disable",
            "postgresql://db/m?sslmode=disable",
        );
        check("postgres://u:p@ss@db/m", "postgres://u:***@db/m");
        check("host=db password=x user=u", "host=db password=*** user=u");
    }

    #[test]
    fn urls_are_recognised_and_checked() {
        assert!(PostgresConfig::is_url("postgres://db/m"));
        assert!(PostgresConfig::is_url("postgresql://db/m"));
        assert!(!PostgresConfig::is_url("/var/lib/monitor.db"));
        assert!(
            PostgresConfig::new("postgres://u@127.0.0.1:5/m")
                .validate()
                .is_ok()
        );
        assert!(matches!(
            PostgresConfig::new("postgres://u@[::1:5/m").validate(),
            Err(StoreError::InvalidConfig { field: "url", .. })
        ));
        let mut c = PostgresConfig::new("postgres://db/m");
        c.queue_capacity = 0;
        assert!(matches!(
            c.validate(),
            Err(StoreError::InvalidConfig {
                field: "queue_capacity",
                ..
            })
        ));
    }
}
