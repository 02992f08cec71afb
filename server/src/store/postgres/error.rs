//! What can go wrong inside the PostgreSQL backend: reaching the database,
//! its schema, a statement. The face wraps it as `StoreError::Postgres`.
//!
//! Nothing here may flatten a driver error into a string (the source stays
//! reachable), and nothing may show the database's password: errors name
//! the target as `PostgresConfig::target` gives it.

use std::fmt;
use std::sync::Arc;

/// Everything the PostgreSQL backend can fail with. `Clone`: one failed
/// flush fails every request in it with the same error.
#[derive(Clone, Debug)]
pub enum PostgresError {
    /// The database could not be reached (refused, timed out, bad
    /// credentials, shutting down). Nothing was stored.
    Unreachable {
        target: String,
        /// Shared because one outage fails every request of a flush.
        source: Arc<tokio_postgres::Error>,
    },
    /// A statement failed after the connection was up.
    Sql {
        /// What the store was doing, e.g. "committing batches".
        during: &'static str,
        source: Arc<tokio_postgres::Error>,
    },
    /// The database holds tables of a newer schema than this server knows.
    SchemaTooNew { found: i32, known: i32 },
    /// A stored value this server cannot read back (names the table).
    BadValue(String),
}

impl fmt::Display for PostgresError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PostgresError::Unreachable { target, .. } => {
                write!(f, "PostgreSQL at {target} is unreachable")
            }
            PostgresError::Sql { during, .. } => write!(f, "PostgreSQL failed while {during}"),
            PostgresError::SchemaTooNew { found, known } => write!(
                f,
                "the database has schema version {found}; this server knows up to {known} \
                 (a newer server made it)"
            ),
            PostgresError::BadValue(what) => write!(f, "unreadable value in the database: {what}"),
        }
    }
}

impl std::error::Error for PostgresError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PostgresError::Unreachable { source, .. } | PostgresError::Sql { source, .. } => {
                Some(source.as_ref())
            }
            PostgresError::SchemaTooNew { .. } | PostgresError::BadValue(_) => None,
        }
    }
}

impl PostgresError {
    /// Wraps a driver error met while doing `during`: a lost or refused
    /// connection is `Unreachable`, anything else `Sql`.
    pub(crate) fn of(during: &'static str, target: &str, e: tokio_postgres::Error) -> Self {
        if is_connection_error(&e) {
            PostgresError::Unreachable {
                target: target.to_owned(),
                source: Arc::new(e),
            }
        } else {
            PostgresError::Sql {
                during,
                source: Arc::new(e),
            }
        }
    }

    /// Whether nothing was stored for a reason that may pass (the database
    /// is down or restarting, a statement failed), so a re-send can work.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            PostgresError::Unreachable { .. } | PostgresError::Sql { .. }
        )
    }

    /// Whether this is the database being unreachable.
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(self, PostgresError::Unreachable { .. })
    }
}

/// Whether `e` means the connection is gone or was never made (as opposed
/// to a statement the server refused). A server shutting down (57P01..03)
/// counts as gone.
pub(crate) fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => matches!(
            code.code(),
            "57P01" | "57P02" | "57P03" | "08000" | "08001" | "08003" | "08004" | "08006"
        ),
        // No SQLSTATE: an I/O error, a timeout, a refused connection.
        None => std::error::Error::source(e).is_some(),
    }
}

/// Whether a transaction failed only because another one ran beside it
/// (deadlock, serialization): the same flush again can succeed.
pub(crate) fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(e.code().map(|c| c.code()), Some("40P01" | "40001"))
}
