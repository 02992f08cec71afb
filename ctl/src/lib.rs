//! monitorctl, the operator's tool: look at hosts and samples, watch a live
//! table, run commands on agents, see what ran.
//!
//! It is a client of the server's operator API (`--server`, or
//! `MONITOR_ADMIN`, default: the credential's URL) as the operator its
//! credential names (see [`connect`]), and of nothing else:
//! it shares the wire contract (`monitor`) with the server, never the
//! server's code. Exit codes: 0 on success, 1 when the operation failed
//! (unknown host or metric, a command that failed on some host), 2 for a
//! usage error, 3 when the server cannot be reached (see [`error`]).
//!
//! Text from the server never reaches the terminal raw: tables and result
//! lines escape it, a command's output goes through [`lines`], and the
//! `--json` outputs are JSON-escaped.

pub mod args;
pub mod connect;
pub mod dashboard;
pub mod error;
pub mod exec;
pub mod history;
pub mod hosts;
pub mod json;
pub mod lines;
pub mod outcome;
pub mod query;
pub mod signing;
pub mod status;
pub mod table;
pub mod term;
pub mod top;
pub mod trust;

use args::{Command, Config};
use error::CtlError;

/// Runs one monitorctl invocation: connect, then the command.
pub async fn run(config: Config) -> Result<(), CtlError> {
    let key_path = signing::key_path(&config.server);
    if let Command::KeyShow = config.command {
        // Needs no server: the line goes into agents' operators files,
        // named after the credential's operator when there is one.
        let credential = connect::find_credential(&config.server).ok();
        return signing::show(key_path, credential.as_ref());
    }
    let mut conn = connect::connect(config.server).await?;
    match config.command {
        // ping and info run unsigned (they read, and change nothing), so
        // they work on agents that do not know this operator's key yet.
        Command::Exec(e) if monitor::command::runs_unsigned(&e.argv) => {
            exec::exec(&mut conn.client, e, None).await
        }
        Command::Exec(e) => {
            // Signed on this side, with the operator's own key: the server
            // forwards the signature, it cannot make one.
            let key = signing::key_for_exec(&mut conn, key_path).await?;
            let operator = signing::operator_of(&conn);
            let signed = signing::sign(&key, &operator, &e.argv, e.timeout_ms, &e.targets)?;
            exec::exec(&mut conn.client, e, Some(signed)).await
        }
        other => run_other(&mut conn, other, key_path).await,
    }
}

/// Every command but `exec` and `key show`.
async fn run_other(
    conn: &mut connect::Connection,
    command: Command,
    key_path: Option<std::path::PathBuf>,
) -> Result<(), CtlError> {
    let client = &mut conn.client;
    match command {
        Command::Hosts { json } => hosts::hosts(client, json).await,
        Command::Status { json } => status::status(client, json).await,
        Command::Dashboard => dashboard::dashboard(client).await,
        Command::Query(q) => query::query(client, q).await,
        Command::Top(t) => top::top(client, t).await,
        Command::Exec(e) => exec::exec(client, e, None).await,
        Command::Cancel { id } => exec::cancel(client, id).await,
        Command::History(h) => history::history(client, h).await,
        Command::Enrol(e) => {
            signing::ensure_registered(conn, key_path).await?;
            match &e.files {
                Some(dir) => trust::enrol_files(conn, e.hostname, dir).await,
                None => trust::enrol(conn, e.hostname, e.ttl).await,
            }
        }
        Command::Revoke { hostname } => trust::revoke(conn, hostname).await,
        Command::OperatorAdd { name, out } => trust::operator_add(conn, name, &out).await,
        Command::OperatorRemove { name } => trust::operator_remove(conn, name).await,
        Command::OperatorList => trust::operator_list(conn).await,
        Command::KeyShow => Ok(()),
        Command::KeyRegister => {
            let path = key_path.ok_or_else(|| {
                CtlError::Credential(
                    "no place for the signing key: set HOME or --signing-key".into(),
                )
            })?;
            let (key, _) = signing::load_or_create(&path)?;
            signing::register(conn, &key).await?;
            term::write(
                term::Stream::Stdout,
                &format!(
                    "registered signing key {} (join tokens carry it from now on)\n",
                    monitor::signing::short(&key.public_key())
                ),
            )?;
            Ok(())
        }
    }
}
