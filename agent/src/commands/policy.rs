//! Which processes the agent may start: the allowlist file and the rules
//! that turn an operator's argv into the argv that is executed.
//!
//! Processes are denied unless allowed. The allowlist is a small line format
//! (no TOML crate in the agent):
//!
//! ```text
//! # name = program [fixed args...] [...]
//! uptime  = /usr/bin/uptime
//! df      = /bin/df -h
//! journal = /usr/bin/journalctl -n 50 --no-pager ...
//! ```
//!
//! - Blank lines and lines whose first non-blank character is `#` are
//!   ignored; there are no comments after an entry (an argument may hold `#`).
//! - The name is everything before the first `=`, trimmed, and matches
//!   `[A-Za-z0-9._-]+`. Built-in names ([`RESERVED_NAMES`]) cannot be defined.
//! - After the `=` come whitespace-separated tokens. A token may be written
//!   in double quotes to hold spaces; inside quotes `\"` is a quote and `\\`
//!   a backslash, every other character is literal. A quote may not appear
//!   inside an unquoted token.
//! - The first token is the program and must be an absolute path.
//! - A last, unquoted `...` lets the operator append arguments; without it,
//!   extra arguments are refused. A quoted `"..."` is a literal argument.
//!
//! Parsing ([`Allowlist::parse`]) does no I/O; [`Allowlist::load`] reads the
//! file once, at startup, before the runtime serves commands.
//!
//! With the explicit opt-in `allow_any` (`--allow-any-command`) any argv runs:
//! an absolute program as given, a bare name looked up in the runner's fixed
//! PATH (see [`super::exec::CHILD_ENV`]); a relative path such as `bin/x` is
//! refused because it would depend on the working directory. Allowlist names
//! still take precedence. Nothing here ever involves a shell: a shell runs
//! only if the argv itself names one.
//!
//! This module must never run, spawn or stat anything, and never see
//! protobuf types.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::refusal::Refusal;

/// Where the agent looks for its allowlist when no path is given.
pub const DEFAULT_ALLOWLIST_PATH: &str = "/etc/monitor/commands.allow";

/// Names the agent answers itself; an allowlist may not define them.
pub const RESERVED_NAMES: [&str; 4] = monitor::command::BUILTINS;

/// Most arguments an operator may give after the command name (the
/// contract's argv limit, name included: see `monitor::command`).
pub const MAX_EXTRA_ARGS: usize = monitor::command::MAX_ARGS - 1;

/// Most bytes the operator's whole argv may add up to (sum of the lengths).
pub const MAX_ARGV_BYTES: usize = monitor::command::MAX_ARGV_BYTES;

/// One allowlist line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name the operator uses as argv[0].
    pub name: String,
    /// The program (absolute path) followed by the fixed arguments.
    pub argv: Vec<String>,
    /// True when the line ended in `...`: operator arguments are appended.
    pub extra_args: bool,
    /// 1-based line number in the allowlist file, for messages.
    pub line: usize,
}

/// The parsed allowlist: which names may run, and from which file they came.
#[derive(Debug, Clone)]
pub struct Allowlist {
    path: PathBuf,
    exists: bool,
    entries: BTreeMap<String, Entry>,
}

/// What [`Allowlist::load`] does when the file does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMissing {
    /// Use an empty allowlist: right for the default path, which a host
    /// that runs no commands simply does not have.
    Empty,
    /// Fail: right for a path the operator gave explicitly.
    Error,
}

/// A line of the allowlist that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    pub kind: ParseErrorKind,
}

/// What was wrong with an allowlist line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseErrorKind {
    MissingEquals,
    BadName(String),
    ReservedName(String),
    DuplicateName { name: String, first_line: usize },
    MissingProgram,
    RelativeProgram(String),
    UnterminatedQuote,
    QuoteInsideToken,
    TextAfterQuote,
    MisplacedEllipsis,
    NulByte,
}

/// The allowlist file could not be used.
#[derive(Debug)]
pub enum AllowlistError {
    Read { path: PathBuf, source: io::Error },
    Parse(ParseError),
}

/// The decision maker: allowlist plus the `allow_any` opt-in.
#[derive(Debug, Clone)]
pub struct Policy {
    allowlist: Allowlist,
    allow_any: bool,
}

impl Allowlist {
    /// Parses allowlist text; `path` only names the source in errors and
    /// refusals.
    pub fn parse(text: &str, path: &Path) -> Result<Allowlist, ParseError> {
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let error = |kind| ParseError {
                path: path.to_path_buf(),
                line,
                kind,
            };
            match parse_line(raw, line).map_err(error)? {
                None => {}
                Some(entry) => {
                    if let Some(first) = entries.get(&entry.name) {
                        return Err(error(ParseErrorKind::DuplicateName {
                            name: entry.name,
                            first_line: first.line,
                        }));
                    }
                    entries.insert(entry.name.clone(), entry);
                }
            }
        }
        Ok(Allowlist {
            path: path.to_path_buf(),
            exists: true,
            entries,
        })
    }

    /// Reads and parses the allowlist at `path`. Blocking file I/O: call it
    /// at startup, not from a task on the running agent.
    pub fn load(path: &Path, if_missing: IfMissing) -> Result<Allowlist, AllowlistError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Allowlist::parse(&text, path).map_err(AllowlistError::Parse),
            Err(e) if e.kind() == io::ErrorKind::NotFound && if_missing == IfMissing::Empty => {
                Ok(Allowlist {
                    path: path.to_path_buf(),
                    exists: false,
                    entries: BTreeMap::new(),
                })
            }
            Err(source) => Err(AllowlistError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Loads the allowlist the way the agent's flag means it: an explicit
    /// path must exist; without one, [`DEFAULT_ALLOWLIST_PATH`] is read if
    /// present and an empty allowlist is used otherwise.
    pub fn load_configured(explicit: Option<&Path>) -> Result<Allowlist, AllowlistError> {
        match explicit {
            Some(path) => Allowlist::load(path, IfMissing::Error),
            None => Allowlist::load(Path::new(DEFAULT_ALLOWLIST_PATH), IfMissing::Empty),
        }
    }

    /// The file this allowlist came from (or would have, if it was missing).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// False when the file did not exist and the allowlist is empty for it.
    pub fn exists(&self) -> bool {
        self.exists
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// Entries in name order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Policy {
    /// `allow_any` is the explicit `--allow-any-command` opt-in.
    pub fn new(allowlist: Allowlist, allow_any: bool) -> Policy {
        Policy {
            allowlist,
            allow_any,
        }
    }

    pub fn allowlist(&self) -> &Allowlist {
        &self.allowlist
    }

    pub fn allows_any(&self) -> bool {
        self.allow_any
    }

    /// Turns the operator's argv into the argv to execute, or says why not.
    ///
    /// Built-in names are refused here as a second line of defence: the
    /// caller answers them itself and must never hand them to the runner.
    pub fn resolve(&self, argv: &[String]) -> Result<Vec<String>, Refusal> {
        let Some((name, extra)) = argv.split_first() else {
            return Err(Refusal::Empty);
        };
        if name.is_empty() {
            return Err(Refusal::Empty);
        }
        if let Some(index) = argv.iter().position(|arg| arg.contains('\0')) {
            return Err(Refusal::NulByte { index });
        }
        if RESERVED_NAMES.contains(&name.as_str()) {
            return Err(Refusal::Builtin { name: name.clone() });
        }
        let entry = self.allowlist.get(name);
        if entry.is_none() && !self.allow_any {
            return Err(Refusal::NotAllowed {
                name: name.clone(),
                allowlist: self.allowlist.path.clone(),
                allowlist_exists: self.allowlist.exists,
            });
        }
        if extra.len() > MAX_EXTRA_ARGS {
            return Err(Refusal::TooManyArgs {
                count: extra.len(),
                limit: MAX_EXTRA_ARGS,
            });
        }
        let argv_bytes: usize = argv.iter().map(String::len).sum();
        if argv_bytes > MAX_ARGV_BYTES {
            return Err(Refusal::ArgvTooLong {
                argv_bytes,
                limit_bytes: MAX_ARGV_BYTES,
            });
        }
        match entry {
            Some(entry) => {
                if !extra.is_empty() && !entry.extra_args {
                    return Err(Refusal::ExtraArgs { name: name.clone() });
                }
                let mut resolved = entry.argv.clone();
                resolved.extend_from_slice(extra);
                Ok(resolved)
            }
            None => {
                if !name.starts_with('/') && name.contains('/') {
                    return Err(Refusal::RelativeProgram {
                        program: name.clone(),
                    });
                }
                Ok(argv.to_vec())
            }
        }
    }
}

/// Parses one line; `Ok(None)` for blank lines and comments.
fn parse_line(raw: &str, line: usize) -> Result<Option<Entry>, ParseErrorKind> {
    let text = raw.trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    if text.contains('\0') {
        return Err(ParseErrorKind::NulByte);
    }
    let Some((name, rest)) = text.split_once('=') else {
        return Err(ParseErrorKind::MissingEquals);
    };
    let name = name.trim();
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !name_ok {
        return Err(ParseErrorKind::BadName(name.to_owned()));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(ParseErrorKind::ReservedName(name.to_owned()));
    }
    let mut tokens = tokenize(rest)?;
    let extra_args = tokens.last().is_some_and(Token::is_ellipsis);
    if extra_args {
        tokens.pop();
    }
    if tokens.iter().any(Token::is_ellipsis) {
        return Err(ParseErrorKind::MisplacedEllipsis);
    }
    let argv: Vec<String> = tokens.into_iter().map(|t| t.text).collect();
    let Some(program) = argv.first() else {
        return Err(ParseErrorKind::MissingProgram);
    };
    if !program.starts_with('/') {
        return Err(ParseErrorKind::RelativeProgram(program.clone()));
    }
    Ok(Some(Entry {
        name: name.to_owned(),
        argv,
        extra_args,
        line,
    }))
}

struct Token {
    text: String,
    quoted: bool,
}

impl Token {
    fn is_ellipsis(&self) -> bool {
        !self.quoted && self.text == "..."
    }
}

/// Splits the part after `=` into tokens, honouring double quotes.
fn tokenize(text: &str) -> Result<Vec<Token>, ParseErrorKind> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else {
            return Ok(tokens);
        };
        let mut token = String::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(ParseErrorKind::UnterminatedQuote),
                    Some('"') => break,
                    Some('\\') => match chars.next_if(|&c| c == '"' || c == '\\') {
                        Some(escaped) => token.push(escaped),
                        None => token.push('\\'),
                    },
                    Some(c) => token.push(c),
                }
            }
            if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                return Err(ParseErrorKind::TextAfterQuote);
            }
            tokens.push(Token {
                text: token,
                quoted: true,
            });
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '"' {
                    return Err(ParseErrorKind::QuoteInsideToken);
                }
                token.push(c);
            }
            tokens.push(Token {
                text: token,
                quoted: false,
            });
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.kind)
    }
}

impl std::error::Error for ParseError {}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseErrorKind::MissingEquals => {
                write!(f, "expected 'name = program [args...]', found no '='")
            }
            ParseErrorKind::BadName(name) => write!(
                f,
                "invalid name '{}': names are made of A-Z a-z 0-9 . _ -",
                name.escape_debug()
            ),
            ParseErrorKind::ReservedName(name) => {
                write!(f, "'{name}' is a built-in command and cannot be defined")
            }
            ParseErrorKind::DuplicateName { name, first_line } => {
                write!(f, "'{name}' is already defined on line {first_line}")
            }
            ParseErrorKind::MissingProgram => write!(f, "no program after '='"),
            ParseErrorKind::RelativeProgram(program) => write!(
                f,
                "program '{}' is not an absolute path",
                program.escape_debug()
            ),
            ParseErrorKind::UnterminatedQuote => write!(f, "unterminated double quote"),
            ParseErrorKind::QuoteInsideToken => {
                write!(f, "double quote inside an unquoted argument")
            }
            ParseErrorKind::TextAfterQuote => {
                write!(f, "text right after a closing double quote")
            }
            ParseErrorKind::MisplacedEllipsis => {
                write!(f, "'...' is only allowed as the last token")
            }
            ParseErrorKind::NulByte => write!(f, "line contains a NUL byte"),
        }
    }
}

impl fmt::Display for AllowlistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowlistError::Read { path, .. } => {
                write!(f, "cannot read allowlist {}", path.display())
            }
            // Transparent: the parse error already names the file and line.
            AllowlistError::Parse(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AllowlistError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AllowlistError::Read { source, .. } => Some(source),
            AllowlistError::Parse(_) => None,
        }
    }
}
