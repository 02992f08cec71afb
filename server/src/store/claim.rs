//! A replica's claim to forward to one remote-write destination
//! ([`ForwardClaim`]): whether it is this replica's turn, where the
//! destination's cursor stands, and the cursor's writes.
//!
//! On SQLite the one server is the only forwarder: the claim is always
//! held and its writes go through the writer like every request. On
//! PostgreSQL, several replicas share the destinations: the claim is a
//! session lock on a connection of its own, held by one replica of the
//! cluster at a time and handed over when that one dies
//! (`postgres/journal.rs`); the cursor's writes go through that
//! connection, so a replica that lost the claim cannot move the cursor.
//!
//! A claim must never let two replicas move one cursor at once.

use super::error::StoreError;
use super::postgres::journal::ForwardLock;
use super::records::{CursorRecord, CursorWrite};
use super::sqlite::SqliteStore;

/// One destination's claim; see the module doc.
pub struct ForwardClaim {
    destination: String,
    inner: Inner,
}

enum Inner {
    Sqlite(SqliteStore),
    // Boxed: a connection's settings are large, the SQLite handle a pointer.
    Postgres(Box<ForwardLock>),
}

impl std::fmt::Debug for ForwardClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardClaim")
            .field("destination", &self.destination)
            .field("held", &self.is_held())
            .finish()
    }
}

impl ForwardClaim {
    pub(crate) fn sqlite(store: SqliteStore, destination: &str) -> ForwardClaim {
        ForwardClaim {
            destination: destination.to_owned(),
            inner: Inner::Sqlite(store),
        }
    }

    pub(crate) fn postgres(lock: ForwardLock, destination: &str) -> ForwardClaim {
        ForwardClaim {
            destination: destination.to_owned(),
            inner: Inner::Postgres(Box::new(lock)),
        }
    }

    /// Tries to become the destination's forwarder: `Some(cursor)` (as
    /// stored now) when this server forwards to it, `None` while another
    /// replica does (try again later).
    pub async fn take(&mut self) -> Result<Option<CursorRecord>, StoreError> {
        match &mut self.inner {
            Inner::Sqlite(s) => match s.cursor(self.destination.clone()).await? {
                Some(c) => Ok(Some(c)),
                None => Err(StoreError::UnknownDestination(self.destination.clone())),
            },
            Inner::Postgres(l) => Ok(l.take().await?),
        }
    }

    /// Whether this server still forwards to the destination (after a
    /// failed write: whether to go on or to take the claim again).
    pub fn is_held(&self) -> bool {
        match &self.inner {
            Inner::Sqlite(_) => true,
            Inner::Postgres(l) => l.is_held(),
        }
    }

    /// Records that the batches after the cursor up to `through` are about
    /// to be sent (see [`CursorRecord::sending_through`]);
    /// [`ForwardClaim::set_cursor`] clears it.
    pub async fn set_sending(&mut self, through: i64) -> Result<(), StoreError> {
        match &mut self.inner {
            Inner::Sqlite(s) => {
                let write = CursorWrite::Sending {
                    destination: self.destination.clone(),
                    through,
                };
                s.cursors(write).await.map(drop)
            }
            Inner::Postgres(l) => Ok(l.set_sending(through).await?),
        }
    }

    /// Records that every batch up to `journal_id` was sent (or dropped);
    /// a cursor never moves back. Batches every destination passed may
    /// then be deleted.
    pub async fn set_cursor(&mut self, journal_id: i64) -> Result<(), StoreError> {
        match &mut self.inner {
            Inner::Sqlite(s) => {
                let write = CursorWrite::Set {
                    destination: self.destination.clone(),
                    journal_id,
                };
                s.cursors(write).await.map(drop)
            }
            Inner::Postgres(l) => Ok(l.set_cursor(journal_id).await?),
        }
    }
}
