//! Why the agent will not run a command: the one typed reason that policy
//! checks and the concurrency limit hand back before anything is spawned.
//!
//! Every message names the thing that was wrong and reads well after
//! "rejected: ", because it travels to the operator verbatim. Names the
//! operator typed are shown with `escape_debug`, and arguments escaped and
//! capped (`monitor::text::Escaped`), so a control character in a request
//! cannot forge lines in a log or a terminal. This module
//! must never hold anything but the facts needed to say so: no protobuf, no
//! process state.

use std::fmt;
use std::path::PathBuf;

use monitor::text::Escaped;

use super::argspec::Mismatch;

/// Most bytes of an operator's argument repeated in a refusal.
const SHOWN_ARG_MAX_BYTES: usize = 80;

/// A command refused before it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The argv was empty or its first element was the empty string.
    Empty,
    /// The name is not on the allowlist (and `--allow-any-command` is off).
    NotAllowed {
        name: String,
        /// The allowlist file that was consulted.
        allowlist: PathBuf,
        /// False when that file did not exist, so the allowlist was empty.
        allowlist_exists: bool,
    },
    /// The operator gave fewer or more arguments than the allowlist entry's
    /// placeholders take.
    ArgCount {
        name: String,
        given: usize,
        min: usize,
        /// `None`: no upper bound (a `*` placeholder or `...`).
        max: Option<usize>,
    },
    /// An operator argument does not fit its placeholder.
    BadArgument {
        name: String,
        /// Position in the operator's argv (0 is the command name).
        index: usize,
        arg: String,
        why: Mismatch,
    },
    /// The allowlist file was refused when the agent started (for example
    /// it is writable by another user), so no process runs at all.
    AllowlistRefused {
        /// The reason given at start, naming the file.
        why: String,
    },
    /// The name is one of the agent's built-in commands; those are answered
    /// by the agent itself and never reach the process runner.
    Builtin { name: String },
    /// An argument holds a NUL byte, which no exec call can pass on.
    NulByte {
        /// Position in the operator's argv (0 is the command name).
        index: usize,
    },
    /// More arguments after the name than the agent accepts.
    TooManyArgs { count: usize, limit: usize },
    /// The operator's argv is longer in total than the agent accepts.
    ArgvTooLong {
        argv_bytes: usize,
        limit_bytes: usize,
    },
    /// Under `--allow-any-command`, a program path that is neither absolute
    /// nor a bare name to look up in PATH (it would depend on the working
    /// directory).
    RelativeProgram { program: String },
    /// The concurrency limit is reached; nothing is queued.
    Busy { running: usize, limit: usize },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Empty => write!(f, "empty command"),
            Refusal::NotAllowed {
                name,
                allowlist,
                allowlist_exists,
            } => {
                write!(
                    f,
                    "'{}' is not on the allowlist {}",
                    name.escape_debug(),
                    allowlist.display()
                )?;
                if !allowlist_exists {
                    write!(f, " (the file does not exist, so nothing is allowed)")?;
                }
                Ok(())
            }
            Refusal::ArgCount {
                name,
                given,
                min,
                max,
            } => {
                let noun = |n: usize| if n == 1 { "argument" } else { "arguments" };
                match (*min, *max) {
                    (_, Some(0)) => return write!(f, "'{name}' takes no extra arguments"),
                    (min, Some(max)) if min == max => {
                        write!(f, "'{name}' takes exactly {min} {}", noun(min))?
                    }
                    (min, Some(max)) => write!(f, "'{name}' takes {min} to {max} arguments")?,
                    (min, None) => write!(f, "'{name}' takes at least {min} {}", noun(min))?,
                }
                write!(f, ", got {given}")
            }
            Refusal::BadArgument {
                name,
                index,
                arg,
                why,
            } => write!(
                f,
                "argument {index} of '{name}' is '{}': {why}",
                Escaped::with_limit(arg, SHOWN_ARG_MAX_BYTES)
            ),
            Refusal::AllowlistRefused { why } => {
                write!(f, "this agent runs no processes: {why}")
            }
            Refusal::Builtin { name } => {
                write!(f, "'{name}' is a built-in command, not a program")
            }
            Refusal::NulByte { index } => write!(f, "argument {index} contains a NUL byte"),
            Refusal::TooManyArgs { count, limit } => {
                write!(f, "too many arguments: {count} (limit {limit})")
            }
            Refusal::ArgvTooLong {
                argv_bytes,
                limit_bytes,
            } => write!(
                f,
                "arguments too long: {argv_bytes} bytes (limit {limit_bytes})"
            ),
            Refusal::RelativeProgram { program } => write!(
                f,
                "program '{}' is a relative path: give an absolute path or a bare name to look up in PATH",
                program.escape_debug()
            ),
            Refusal::Busy { running, limit } => {
                let noun = if *running == 1 { "command" } else { "commands" };
                write!(f, "{running} {noun} already running (limit {limit})")
            }
        }
    }
}

impl std::error::Error for Refusal {}
