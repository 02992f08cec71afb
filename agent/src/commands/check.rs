//! `monitor-agent --check-commands FILE`: validates an allowlist with the
//! rules the agent applies at start (format, owner and permissions), then
//! says in plain words what each entry lets an operator run, or lists every
//! error with its line and column.
//!
//! Owner and permissions are judged for the user running the check, as the
//! agent judges them for its own user: run it as the agent's user, or check
//! a file owned by root (the only choice under systemd's `DynamicUser=`).
//!
//! This module must never start anything of the agent: it reads one file
//! and writes text.

use std::io::{self, Write};
use std::path::Path;

use super::allowfile::{self, AllowlistError};
use super::argspec::ArgSpec;
use super::policy::{Allowlist, Arg, quote_arg};

/// Exit code for a valid file.
pub const VALID: u8 = 0;
/// Exit code for a file the agent would not use as it is.
pub const INVALID: u8 = 1;

/// Checks the allowlist at `path` for the user `agent_uid`: the report to
/// `out` when the file is valid, every error to `err` otherwise. Returns
/// the exit code ([`VALID`] or [`INVALID`]); a write failure is an error.
pub fn check(
    path: &Path,
    agent_uid: u32,
    out: &mut impl Write,
    err: &mut impl Write,
) -> io::Result<u8> {
    let inspection = match allowfile::inspect(path, agent_uid) {
        Ok(inspection) => inspection,
        Err(e) => {
            writeln!(err, "{}", monitor::cli::error_chain(&e))?;
            return Ok(INVALID);
        }
    };
    let mut errors = 0;
    if let Err(parse) = &inspection.parsed {
        for message in parse.messages() {
            writeln!(err, "{message}")?;
        }
        errors += parse.errors.len();
    }
    if !inspection.problems.is_empty() {
        let unsafe_file = AllowlistError::Unsafe {
            path: path.to_path_buf(),
            problems: inspection.problems.clone(),
        };
        writeln!(err, "{unsafe_file}")?;
        errors += inspection.problems.len();
    }
    let list = match inspection.parsed {
        Ok(list) if errors == 0 => list,
        parsed => {
            let consequence = if parsed.is_err() {
                "the agent would not start with it"
            } else {
                "the agent would start but run no processes"
            };
            let noun = if errors == 1 { "error" } else { "errors" };
            writeln!(
                err,
                "{}: invalid ({errors} {noun}): {consequence}",
                path.display()
            )?;
            return Ok(INVALID);
        }
    };
    report(&list, agent_uid, out)?;
    Ok(VALID)
}

/// The plain-words description of a valid allowlist, entries in file
/// order.
fn report(list: &Allowlist, agent_uid: u32, out: &mut impl Write) -> io::Result<()> {
    let count = list.entries().count();
    writeln!(
        out,
        "{}: valid, {count} {} (owner and permissions checked for root and uid {agent_uid}, \
         the user running this check)",
        list.path().display(),
        if count == 1 { "entry" } else { "entries" }
    )?;
    let mut entries: Vec<_> = list.entries().collect();
    entries.sort_by_key(|e| e.line);
    for entry in entries {
        writeln!(out)?;
        writeln!(
            out,
            "{} (line {}): {}",
            entry.name,
            entry.line,
            entry.template()
        )?;
        let fixed: Vec<String> = entry
            .args
            .iter()
            .filter_map(|a| match a {
                Arg::Fixed(text) => Some(quote_arg(text)),
                Arg::Operator(_) => None,
            })
            .collect();
        if fixed.is_empty() {
            writeln!(
                out,
                "  program {}, no fixed arguments",
                quote_arg(&entry.program)
            )?;
        } else {
            writeln!(
                out,
                "  program {}, fixed arguments: {}",
                quote_arg(&entry.program),
                fixed.join(" ")
            )?;
        }
        for line in entry.describe() {
            writeln!(out, "  {line}")?;
        }
        if entry.placeholders().any(|p| p.spec == ArgSpec::Anything) {
            writeln!(
                out,
                "  warning: '...' passes options too: the operator may change what {} \
                 reads, writes or runs",
                quote_arg(&entry.program)
            )?;
        }
    }
    Ok(())
}
