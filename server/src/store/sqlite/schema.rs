//! Opening the database file: the connection settings (WAL,
//! `synchronous=FULL`, page size, cache), `quick_check`, and the schema
//! version, which `migrate.rs` brings up to date. What the tables are and
//! why is `tables.rs`.
//!
//! Nothing here may panic on what it reads from the file, and a file newer
//! than this server is refused, never opened: damage to the file is
//! `Corrupt` with SQLite's words, anything else is `Open` with its cause.

use std::path::Path;
use std::time::Duration;

use monitor::files::{self, SECRET_MODE};
use rusqlite::{Connection, OpenFlags};

use super::checkpoint::WAL_KEEP_BYTES;
use super::error::{SqliteError, code_of};
use super::migrate;
use super::tables::SCHEMA_VERSION;

/// Page size of a new database file.
const PAGE_SIZE_BYTES: u32 = 1024;

/// How long a connection waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the writer's connection: creates the file if needed, switches to
/// WAL with `synchronous=FULL`, runs `quick_check` and creates the tables.
pub(crate) fn open_writer(path: &Path, cache_size_kib: u32) -> Result<Connection, SqliteError> {
    // SQLite would create a new file with the process's umask (0644 under
    // the usual 022, 0666 under 000), and its -wal and -shm files copy the
    // database's mode: made here first, owner only, all three stay so.
    files::create_if_missing(path, SECRET_MODE).map_err(|e| SqliteError::OpenFile {
        path: e.path,
        source: e.source,
    })?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| open_error(path, source))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|source| open_error(path, source))?;
    // Only takes effect while the file is new (before the first table).
    conn.execute_batch(&format!("PRAGMA page_size = {PAGE_SIZE_BYTES}"))
        .map_err(|source| open_error(path, source))?;
    // The first statement that reads the file: a file that is not a
    // database fails here.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|source| open_error(path, source))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(SqliteError::Corrupt {
            path: path.to_owned(),
            detail: format!("cannot switch to WAL journal mode (still '{mode}')"),
        });
    }
    // A WAL that restarts after a checkpoint is truncated only beyond
    // 256 MiB: under heavy ingest it grows back every round, and
    // re-allocating the truncated part costs the fsyncs of every commit
    // (measured: saturation 30-31k batches/s with a 64 MiB limit, 33k/s
    // without truncation).
    let wal_limit_bytes = WAL_KEEP_BYTES;
    conn.execute_batch(&format!(
        "PRAGMA synchronous = FULL;
         PRAGMA cache_size = -{cache_size_kib};
         PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = {wal_limit_bytes};
         PRAGMA wal_autocheckpoint = 0; -- see checkpoint.rs"
    ))
    .map_err(|source| open_error(path, source))?;
    quick_check(&conn, path)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|source| open_error(path, source))?;
    if version > SCHEMA_VERSION {
        return Err(SqliteError::Corrupt {
            path: path.to_owned(),
            detail: format!(
                "schema version {version} is newer than this server's ({SCHEMA_VERSION})"
            ),
        });
    }
    if version < SCHEMA_VERSION {
        migrate::upgrade(&conn, path, version)?;
    }
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Opens a read-only connection for queries; the writer must have created
/// the file already.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, SqliteError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| open_error(path, source))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|source| open_error(path, source))?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// `PRAGMA quick_check`: the b-tree structure is sound (no full index
/// verification, so it stays fast on a big file).
fn quick_check(conn: &Connection, path: &Path) -> Result<(), SqliteError> {
    let mut stmt = conn
        .prepare("PRAGMA quick_check(5)")
        .map_err(|source| open_error(path, source))?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|source| open_error(path, source))?;
    if lines.len() == 1 && lines[0] == "ok" {
        return Ok(());
    }
    Err(SqliteError::Corrupt {
        path: path.to_owned(),
        detail: format!("quick_check: {}", lines.join("; ")),
    })
}

/// Errors at open: damage to the file is `Corrupt` (with SQLite's words),
/// anything else is `Open` with its cause.
fn open_error(path: &Path, source: rusqlite::Error) -> SqliteError {
    match code_of(&source) {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            SqliteError::Corrupt {
                path: path.to_owned(),
                detail: source.to_string(),
            }
        }
        _ => SqliteError::Open {
            path: path.to_owned(),
            source,
        },
    }
}
