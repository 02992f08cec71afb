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
//!
//! But under continuous ingest a PASSIVE round never lets the WAL start
//! over: the writer appends frames while the round copies, so the round
//! never ends with every frame copied, and SQLite restarts the WAL only
//! then. The WAL grew until a RESTART checkpoint (past 256 MiB, every
//! second round at 10,000 batches/s) stopped the writer for the whole copy:
//! 0.5-0.6 s stalls, p99 0.4-0.5 s over a minute. So after each round this
//! thread raises [`Checkpointer::tail_due`], and the writer, between two
//! flushes, copies the frames appended during the round itself; nothing
//! writes meanwhile, so that copy ends complete, SQLite fsyncs the file,
//! and the writer's next commit restarts the WAL. A RESTART past a size
//! limit stays as a backstop (a long read can keep frames from being
//! copied, and so the WAL from restarting).
//!
//! SQLite fsyncs the database file only at the end of a checkpoint that
//! copied every frame, which under ingest is the writer's: it then waited
//! 0.25-0.45 s for the kernel to write out every page this thread had
//! copied (tens of thousands of 1 KiB pages, each a 4 KiB block). So this
//! thread fsyncs the file itself right after its round, and the writer's
//! fsync only covers the few pages it copies. That takes a descriptor of
//! our own on the database file, which must stay open until SQLite's are
//! closed: closing any descriptor of a file drops every POSIX lock the
//! process holds on it, SQLite's included (see [`DbFile`]).
//!
//! This thread must never write anything but checkpoints, and must never be
//! needed for correctness: with it stopped, the WAL only grows.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::error::SqliteError;
use crate::store::error::StoreError;

/// The WAL's `journal_size_limit` (see `schema.rs`): a restarted WAL keeps
/// up to this much of its file to write over instead of growing it again.
pub(crate) const WAL_KEEP_BYTES: u64 = 256 * 1024 * 1024;

/// Above this WAL size a round ends with a RESTART checkpoint: the WAL has
/// not restarted for a long time (at 30,000 batches/s a 10 s round writes
/// ~750 MB and restarts normally).
const WAL_RESTART_BYTES: u64 = 4 * WAL_KEEP_BYTES;

/// A descriptor of the database file of our own, to fsync it. Shared by
/// the writer and this thread; the writer holds it in its last field, so it
/// is closed only after the writer's connection (closing a descriptor drops
/// the process's POSIX locks on the file, which keep another process, an
/// operator's `sqlite3` say, from taking the file over and deleting the WAL
/// under us).
pub(crate) type DbFile = Arc<std::fs::File>;

/// Opens the database file for [`DbFile`]. Read-only is enough: Linux
/// fsyncs a file's dirty pages whatever the descriptor's mode.
pub(crate) fn open_db_file(path: &Path) -> Result<DbFile, SqliteError> {
    std::fs::File::open(path)
        .map(Arc::new)
        .map_err(|source| SqliteError::OpenFile {
            path: path.to_owned(),
            source,
        })
}

/// The running checkpointer; stopped (and joined) by [`Checkpointer::stop`].
pub(crate) struct Checkpointer {
    stop: mpsc::Sender<()>,
    handle: JoinHandle<()>,
    /// Raised after each round: the writer should finish the checkpoint
    /// (see the module doc); it lowers the flag when it does.
    pub(crate) tail_due: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Opens a connection to `path` (already created by the writer) and
    /// checkpoints every `interval`, fsyncing `db_file` after each round.
    pub(crate) fn start(
        path: &Path,
        interval: Duration,
        db_file: DbFile,
    ) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| {
            c.busy_timeout(Duration::from_secs(5))?;
            Ok(c)
        })
        .map_err(|source| SqliteError::Open {
            path: path.to_owned(),
            source,
        })?;
        let (stop, stopped) = mpsc::channel();
        let path = path.to_owned();
        let tail_due = Arc::new(AtomicBool::new(false));
        let due = Arc::clone(&tail_due);
        let handle = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || run(conn, &path, interval, &stopped, &due, &db_file))
            .map_err(StoreError::Writer)?;
        Ok(Checkpointer {
            stop,
            handle,
            tail_due,
        })
    }

    /// Stops the thread after its current round.
    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        if self.handle.join().is_err() {
            log::error!("store: the checkpoint thread panicked");
        }
    }
}

fn run(
    conn: Connection,
    path: &Path,
    interval: Duration,
    stopped: &mpsc::Receiver<()>,
    tail_due: &AtomicBool,
    db_file: &std::fs::File,
) {
    let wal = wal_path(path);
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
        checkpoint(&conn, path, "PASSIVE", "checkpointer");
        let started = Instant::now();
        match db_file.sync_data() {
            Ok(()) => log::debug!(
                "store: fsync of {} after the round: {} ms",
                path.display(),
                started.elapsed().as_millis()
            ),
            // Not fatal: the writer's checkpoint fsyncs the file anyway.
            Err(e) => log::warn!("store: fsync of {} failed: {e}", path.display()),
        }
        tail_due.store(true, Ordering::Release);
        let wal_bytes = std::fs::metadata(&wal).map_or(0, |m| m.len());
        if wal_bytes > WAL_RESTART_BYTES {
            checkpoint(&conn, path, "RESTART", "checkpointer");
        }
    }
}

/// Runs one checkpoint and logs what it did, naming `who` ran it; a
/// failure is logged, not returned (the frames stay in the WAL and the next
/// round retries).
pub(crate) fn checkpoint(conn: &Connection, path: &Path, mode: &str, who: &str) {
    let sql = format!("PRAGMA wal_checkpoint({mode})");
    let started = Instant::now();
    match conn.query_row(&sql, [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    }) {
        Ok((busy, frames, copied)) => log::debug!(
            "store: {mode} checkpoint of {} by the {who}: {copied} of {frames} WAL frames \
             copied in {} ms{}",
            path.display(),
            started.elapsed().as_millis(),
            if busy != 0 { " (busy)" } else { "" }
        ),
        // Not fatal: the frames stay in the WAL and the next round retries.
        Err(e) => log::warn!(
            "store: {mode} checkpoint of {} by the {who} failed: {e}",
            path.display()
        ),
    }
}

fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}
