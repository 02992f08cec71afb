//! The checkpointer thread: copies the WAL back into the database file on
//! its own connection, so the writer's commits are only sequential appends
//! to the WAL plus one fsync.
//!
//! Why a thread of its own: every flush rewrites the newest page of each
//! host it touches. Checkpointing from the writer (SQLite's default, every
//! 1,000 pages) would copy those pages into the file many times a second,
//! each a random write, and stall ingest while it does; measured, that
//! halved throughput. Checkpointing every few seconds writes each hot page
//! once per round instead, and a PASSIVE checkpoint never blocks the writer.
//! Only when the WAL has grown past a limit anyway (a PASSIVE round cannot
//! reset it under continuous writes) does a RESTART checkpoint briefly wait
//! for the writer, so the WAL starts over from its beginning.
//!
//! This thread must never write anything but checkpoints, and must never be
//! needed for correctness: with it stopped, the WAL only grows.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::error::StoreError;

/// Above this WAL size a round ends with a RESTART checkpoint. Also the
/// WAL's `journal_size_limit` (see `schema.rs`): a restarted WAL keeps up
/// to this much of its file to write over instead of growing it again.
pub(crate) const WAL_RESTART_BYTES: u64 = 256 * 1024 * 1024;

/// The running checkpointer; stopped (and joined) by [`Checkpointer::stop`].
pub(crate) struct Checkpointer {
    stop: mpsc::Sender<()>,
    handle: JoinHandle<()>,
}

impl Checkpointer {
    /// Opens a connection to `path` (already created by the writer) and
    /// checkpoints every `interval`.
    pub(crate) fn start(path: &Path, interval: Duration) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| {
            c.busy_timeout(Duration::from_secs(5))?;
            Ok(c)
        })
        .map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        let (stop, stopped) = mpsc::channel();
        let path = path.to_owned();
        let handle = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || run(conn, &path, interval, &stopped))
            .map_err(StoreError::Writer)?;
        Ok(Checkpointer { stop, handle })
    }

    /// Stops the thread after its current round.
    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        if self.handle.join().is_err() {
            log::error!("store: the checkpoint thread panicked");
        }
    }
}

fn run(conn: Connection, path: &Path, interval: Duration, stopped: &mpsc::Receiver<()>) {
    let wal = wal_path(path);
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
        checkpoint(&conn, path, "PASSIVE");
        let wal_bytes = std::fs::metadata(&wal).map_or(0, |m| m.len());
        if wal_bytes > WAL_RESTART_BYTES {
            checkpoint(&conn, path, "RESTART");
        }
    }
}

fn checkpoint(conn: &Connection, path: &Path, mode: &str) {
    let sql = format!("PRAGMA wal_checkpoint({mode})");
    match conn.query_row(&sql, [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    }) {
        Ok((busy, frames, copied)) => log::debug!(
            "store: {mode} checkpoint of {}: {copied} of {frames} WAL frames copied{}",
            path.display(),
            if busy != 0 { " (busy)" } else { "" }
        ),
        // Not fatal: the frames stay in the WAL and the next round retries.
        Err(e) => log::warn!("store: {mode} checkpoint of {} failed: {e}", path.display()),
    }
}

fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}
