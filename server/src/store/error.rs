//! The store's error type: one enum whose variants say what went wrong and
//! carry the cause, so the server can print the whole chain once in `main`.
//!
//! Nothing here may flatten an SQLite error into a string: the source stays
//! reachable through [`std::error::Error::source`]. The only text fields are
//! facts that have no other form (SQLite's `quick_check` report, an id).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong in the store.
#[derive(Debug)]
pub enum StoreError {
    /// The database file could not be opened or set up (missing directory,
    /// permissions, a lock held by someone else...).
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The database file could not be opened outside SQLite (the store
    /// keeps a descriptor of its own to fsync it, see `checkpoint.rs`).
    OpenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a database, is truncated, or failed `quick_check`.
    Corrupt {
        path: PathBuf,
        /// What SQLite reported (the first lines of `quick_check`, or the
        /// error text when the file could not even be read as a database).
        detail: String,
    },
    /// An SQLite call failed after the database was open.
    Sqlite {
        /// What the store was doing, e.g. "committing batches".
        during: &'static str,
        /// Shared because one failed transaction fails every batch in it.
        source: Arc<rusqlite::Error>,
    },
    /// The disk (or the database's page limit) is full: the batch was not
    /// stored and must not be acknowledged; the agent keeps it and re-sends.
    Full {
        path: PathBuf,
        source: Arc<rusqlite::Error>,
    },
    /// A query named a host that never sent a batch.
    UnknownHost(String),
    /// A command result named a command id that was never recorded.
    UnknownCommand(String),
    /// The store was closed (or its writer stopped): nothing was done.
    Closed,
    /// A [`super::StoreConfig`] field is out of range.
    InvalidConfig {
        field: &'static str,
        detail: &'static str,
    },
    /// The writer thread (or its timer runtime) could not be started.
    Writer(std::io::Error),
    /// A read on the blocking pool panicked or was cancelled at shutdown.
    Reader(tokio::task::JoinError),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Open { path, .. } => {
                write!(f, "cannot open database {}", path.display())
            }
            StoreError::OpenFile { path, .. } => {
                write!(f, "cannot open database file {}", path.display())
            }
            StoreError::Corrupt { path, detail } => write!(
                f,
                "database {} is corrupt or not a monitor database: {detail}",
                path.display()
            ),
            StoreError::Sqlite { during, .. } => write!(f, "SQLite failed while {during}"),
            StoreError::Full { path, .. } => write!(
                f,
                "database {} is full (disk full or page limit reached); batch not stored",
                path.display()
            ),
            StoreError::UnknownHost(h) => write!(f, "unknown host '{h}'"),
            StoreError::UnknownCommand(id) => write!(f, "unknown command id '{id}'"),
            StoreError::Closed => write!(f, "the store is closed"),
            StoreError::InvalidConfig { field, detail } => {
                write!(f, "store configuration {field}: {detail}")
            }
            StoreError::Writer(_) => write!(f, "cannot start the store's writer thread"),
            StoreError::Reader(_) => write!(f, "a store read did not complete"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Open { source, .. } => Some(source),
            StoreError::Sqlite { source, .. } | StoreError::Full { source, .. } => {
                Some(source.as_ref())
            }
            StoreError::Writer(e) | StoreError::OpenFile { source: e, .. } => Some(e),
            StoreError::Reader(e) => Some(e),
            StoreError::Corrupt { .. }
            | StoreError::UnknownHost(_)
            | StoreError::UnknownCommand(_)
            | StoreError::Closed
            | StoreError::InvalidConfig { .. } => None,
        }
    }
}

impl StoreError {
    /// Wraps an SQLite error met while doing `during`.
    pub(crate) fn sqlite(during: &'static str, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            during,
            source: Arc::new(source),
        }
    }

    /// Whether the agent should simply re-send later (the failure is on
    /// the server's side and nothing was stored).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite { .. } | StoreError::Full { .. } | StoreError::Closed
        )
    }
}

/// The SQLite result code of an error, if it came from SQLite itself.
pub(crate) fn code_of(e: &rusqlite::Error) -> Option<rusqlite::ErrorCode> {
    e.sqlite_error_code()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn messages_name_the_file_and_keep_the_cause() {
        let e = StoreError::Open {
            path: PathBuf::from("/nope/monitor.db"),
            source: rusqlite::Error::InvalidQuery,
        };
        assert_eq!(e.to_string(), "cannot open database /nope/monitor.db");
        assert!(e.source().is_some());
        let e = StoreError::Corrupt {
            path: PathBuf::from("/x.db"),
            detail: "file is not a database".into(),
        };
        assert!(e.to_string().contains("/x.db"));
        assert!(!e.to_string().ends_with('.'));
        assert_eq!(
            StoreError::UnknownHost("pi-7".into()).to_string(),
            "unknown host 'pi-7'"
        );
    }
}
