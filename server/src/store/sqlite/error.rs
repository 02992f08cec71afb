//! What can go wrong inside the SQLite backend: its file, its statements,
//! its disk. The face wraps it as `StoreError::Sqlite`.
//!
//! Nothing here may flatten an SQLite error into a string: the source stays
//! reachable through [`std::error::Error::source`]. The only text field is
//! a fact that has no other form (SQLite's `quick_check` report).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything the SQLite backend can fail with.
#[derive(Debug)]
pub enum SqliteError {
    /// The database file could not be opened or set up (missing directory,
    /// permissions, a lock held by someone else...).
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The database file could not be created or opened outside SQLite
    /// (a new file is made owner-only before SQLite opens it, see
    /// `schema.rs`; the store keeps a descriptor of its own to fsync it,
    /// see `checkpoint.rs`).
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
    Sql {
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
}

impl fmt::Display for SqliteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqliteError::Open { path, .. } => {
                write!(f, "cannot open database {}", path.display())
            }
            SqliteError::OpenFile { path, .. } => {
                write!(f, "cannot open database file {}", path.display())
            }
            SqliteError::Corrupt { path, detail } => write!(
                f,
                "database {} is corrupt or not a monitor database: {detail}",
                path.display()
            ),
            SqliteError::Sql { during, .. } => write!(f, "SQLite failed while {during}"),
            SqliteError::Full { path, .. } => write!(
                f,
                "database {} is full (disk full or page limit reached); batch not stored",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SqliteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SqliteError::Open { source, .. } => Some(source),
            SqliteError::Sql { source, .. } | SqliteError::Full { source, .. } => {
                Some(source.as_ref())
            }
            SqliteError::OpenFile { source, .. } => Some(source),
            SqliteError::Corrupt { .. } => None,
        }
    }
}

impl SqliteError {
    /// Wraps an SQLite error met while doing `during`.
    pub(crate) fn sql(during: &'static str, source: rusqlite::Error) -> SqliteError {
        SqliteError::Sql {
            during,
            source: Arc::new(source),
        }
    }

    /// Whether nothing was stored for a reason that may pass (a failed
    /// statement, a full disk), so a re-send later can succeed.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, SqliteError::Sql { .. } | SqliteError::Full { .. })
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
        let e = SqliteError::Open {
            path: PathBuf::from("/nope/monitor.db"),
            source: rusqlite::Error::InvalidQuery,
        };
        assert_eq!(e.to_string(), "cannot open database /nope/monitor.db");
        assert!(e.source().is_some());
        let e = SqliteError::Corrupt {
            path: PathBuf::from("/x.db"),
            detail: "file is not a database".into(),
        };
        assert!(e.to_string().contains("/x.db"));
        assert!(!e.to_string().ends_with('.'));
    }
}
