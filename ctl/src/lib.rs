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
pub mod error;
pub mod exec;
pub mod history;
pub mod hosts;
pub mod json;
pub mod lines;
pub mod outcome;
pub mod query;
pub mod table;
pub mod term;
pub mod top;
pub mod trust;

use args::{Command, Config};
use error::CtlError;

/// Runs one monitorctl invocation: connect, then the command.
pub async fn run(config: Config) -> Result<(), CtlError> {
    let mut conn = connect::connect(config.server).await?;
    let client = &mut conn.client;
    match config.command {
        Command::Hosts { json } => hosts::hosts(client, json).await,
        Command::Query(q) => query::query(client, q).await,
        Command::Top(t) => top::top(client, t).await,
        Command::Exec(e) => exec::exec(client, e).await,
        Command::Cancel { id } => exec::cancel(client, id).await,
        Command::History(h) => history::history(client, h).await,
        Command::Enrol(e) => match &e.files {
            Some(dir) => trust::enrol_files(&mut conn, e.hostname, dir).await,
            None => trust::enrol(&mut conn, e.hostname, e.ttl).await,
        },
        Command::Revoke { hostname } => trust::revoke(&mut conn, hostname).await,
        Command::OperatorAdd { name, out } => trust::operator_add(&mut conn, name, &out).await,
        Command::OperatorRemove { name } => trust::operator_remove(&mut conn, name).await,
        Command::OperatorList => trust::operator_list(&mut conn).await,
    }
}
