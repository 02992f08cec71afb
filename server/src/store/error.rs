//! The store's error type as its callers see it: what the caller must act
//! on (an unknown host or command, a closed store, a bad configuration) is
//! a variant of its own; what went wrong inside a backend is that backend's
//! own error type, one variant per backend, with its cause kept.
//!
//! Nothing here may flatten a backend's error into a string: the source
//! stays reachable through [`std::error::Error::source`].

use std::fmt;

use super::postgres::error::PostgresError;
use super::series::BadSeriesQuery;
use super::sqlite::error::SqliteError;

/// Everything that can go wrong in the store.
#[derive(Debug)]
pub enum StoreError {
    /// The SQLite backend failed: its file could not be opened, is
    /// corrupt, is full, or a statement failed (see [`SqliteError`]).
    Sqlite(SqliteError),
    /// The PostgreSQL backend failed: the database is unreachable, a
    /// statement failed, or its tables are not this server's (see
    /// [`PostgresError`]).
    Postgres(PostgresError),
    /// A query named a host that never sent a batch.
    UnknownHost(String),
    /// A command result named a command id that was never recorded.
    UnknownCommand(String),
    /// The store was closed (or its writer stopped): nothing was done.
    Closed,
    /// A remote-write destination has no cursor in the store (it was not
    /// registered).
    UnknownDestination(String),
    /// A series query cannot be answered (empty range, too many buckets).
    BadSeriesQuery(BadSeriesQuery),
    /// A configuration field is out of range.
    InvalidConfig {
        field: &'static str,
        detail: &'static str,
    },
    /// The store's writer (a thread, or the task opening it) could not be
    /// started.
    Writer(std::io::Error),
    /// A read on the blocking pool panicked or was cancelled at shutdown.
    Reader(tokio::task::JoinError),
    /// What was asked is not available on this backend.
    Unsupported {
        what: &'static str,
        backend: &'static str,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Transparent: the backend's error says what happened, and its
            // source is the next link of the chain.
            StoreError::Sqlite(e) => e.fmt(f),
            StoreError::Postgres(e) => e.fmt(f),
            StoreError::UnknownHost(h) => write!(f, "unknown host '{h}'"),
            StoreError::UnknownCommand(id) => write!(f, "unknown command id '{id}'"),
            StoreError::Closed => write!(f, "the store is closed"),
            StoreError::UnknownDestination(d) => {
                write!(f, "remote-write destination {d} has no cursor in the store")
            }
            StoreError::BadSeriesQuery(e) => e.fmt(f),
            StoreError::InvalidConfig { field, detail } => {
                write!(f, "store configuration {field}: {detail}")
            }
            StoreError::Writer(_) => write!(f, "cannot start the store's writer thread"),
            StoreError::Reader(_) => write!(f, "a store read did not complete"),
            StoreError::Unsupported { what, backend } => {
                write!(f, "{what} is not available with the {backend} store yet")
            }
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Sqlite(e) => e.source(),
            StoreError::Postgres(e) => e.source(),
            StoreError::Writer(e) => Some(e),
            StoreError::Reader(e) => Some(e),
            StoreError::UnknownHost(_)
            | StoreError::UnknownCommand(_)
            | StoreError::Closed
            | StoreError::UnknownDestination(_)
            | StoreError::BadSeriesQuery(_)
            | StoreError::InvalidConfig { .. }
            | StoreError::Unsupported { .. } => None,
        }
    }
}

impl From<SqliteError> for StoreError {
    fn from(e: SqliteError) -> StoreError {
        StoreError::Sqlite(e)
    }
}

impl From<PostgresError> for StoreError {
    fn from(e: PostgresError) -> StoreError {
        StoreError::Postgres(e)
    }
}

impl StoreError {
    /// Whether the agent should simply re-send later (the failure is on
    /// the server's side and nothing was stored).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sqlite(e) => e.is_transient(),
            StoreError::Postgres(e) => e.is_transient(),
            StoreError::Closed => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_was_wrong() {
        assert_eq!(
            StoreError::UnknownHost("pi-7".into()).to_string(),
            "unknown host 'pi-7'"
        );
        assert_eq!(
            StoreError::InvalidConfig {
                field: "queue_capacity",
                detail: "must be at least 1"
            }
            .to_string(),
            "store configuration queue_capacity: must be at least 1"
        );
        assert!(StoreError::Closed.is_transient());
        assert!(!StoreError::UnknownCommand("x".into()).is_transient());
    }
}
