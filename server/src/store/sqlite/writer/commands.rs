//! The command history's writes: an operator command with its targets, and
//! each host's result. They run inside a flush's transaction, like batches,
//! so a result queued after its command is committed after it.
//!
//! Nothing here may turn a result for an unknown command into a row: the
//! caller answers `UnknownCommand` instead.

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::encoding::{encode_argv, u64_to_sql};
use crate::store::records::{CommandRecord, CommandResultRecord};

/// Records a command and its targets; recording its id again is a no-op.
pub(super) fn write_command(tx: &Connection, c: &CommandRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO commands (command_id, time_unix_ms, argv, operator) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (command_id) DO NOTHING",
    )?
    .execute(params![
        c.command_id,
        c.time_unix_ms,
        encode_argv(&c.argv),
        c.operator
    ])?;
    let row: i64 = tx
        .prepare_cached("SELECT command_row FROM commands WHERE command_id = ?1")?
        .query_row([&c.command_id], |r| r.get(0))?;
    let mut target = tx.prepare_cached(
        "INSERT INTO command_results (command_row, hostname, target_index) VALUES (?1, ?2, ?3)
         ON CONFLICT (command_row, hostname) DO NOTHING",
    )?;
    for (i, host) in c.targets.iter().enumerate() {
        target.execute(params![row, host, i as i64])?;
    }
    Ok(())
}

/// Returns false if the command id was never recorded.
pub(super) fn write_command_result(
    tx: &Connection,
    r: &CommandResultRecord,
) -> rusqlite::Result<bool> {
    let row: Option<i64> = tx
        .prepare_cached("SELECT command_row FROM commands WHERE command_id = ?1")?
        .query_row([&r.command_id], |row| row.get(0))
        .optional()?;
    let Some(row) = row else {
        return Ok(false);
    };
    // A host that was not a target gets target_index -1: its result is
    // kept, but it does not appear among the command's targets.
    tx.prepare_cached(
        "INSERT INTO command_results (command_row, hostname, target_index, outcome, exit_code,
             signal, duration_ms, stdout_bytes, stderr_bytes, message, finished_unix_ms)
         VALUES (?1, ?2, -1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (command_row, hostname) DO UPDATE SET
             outcome = excluded.outcome, exit_code = excluded.exit_code,
             signal = excluded.signal, duration_ms = excluded.duration_ms,
             stdout_bytes = excluded.stdout_bytes, stderr_bytes = excluded.stderr_bytes,
             message = excluded.message, finished_unix_ms = excluded.finished_unix_ms",
    )?
    .execute(params![
        row,
        r.hostname,
        r.finished.outcome.name(),
        r.finished.exit_code,
        r.finished.signal,
        u64_to_sql(r.finished.duration_ms),
        u64_to_sql(r.finished.stdout_bytes),
        u64_to_sql(r.finished.stderr_bytes),
        r.finished.message,
        r.finished_unix_ms,
    ])?;
    Ok(true)
}
