//! Which processes the agent may start: the allowlist format, its parser,
//! and the rules that turn an operator's argv into the argv that is
//! executed. Processes are denied unless allowed, and an operator's
//! argument never becomes something the entry did not say it may be.
//!
//! # The allowlist format
//!
//! ```text
//! # name = /absolute/program [fixed argument | placeholder]... [...]
//! uptime   = /usr/bin/uptime                       # no operator arguments
//! os       = /bin/cat /etc/os-release              # see also /etc/issue
//! df       = /bin/df -h -- <path>*                 # any number of paths
//! uname    = /bin/uname <one-of:-a|-m|-r|-s>*      # options, listed
//! journal  = /bin/journalctl --no-pager -n <int:1-500> -u <word:*.service>
//! logs     = /usr/bin/find <path:/var/log/*> -maxdepth 1 -name <word:*.log>
//! sleep    = /bin/sleep ...                        # trusted: anything
//! ```
//!
//! **Lines.** A line ends at LF or CRLF. A carriage return not followed by
//! a line feed is an error (a CR-only file is one long line), and so is a
//! NUL byte anywhere. Outside double quotes, any other control character
//! (tab excepted) is an error, comments included, and so is a non-ASCII
//! character in an entry (quote the argument that needs one; comments may
//! hold any printable text). Errors are reported as `FILE:LINE:COLUMN:
//! message`, columns counting characters from 1, and every bad line is
//! reported (up to [`MAX_REPORTED_ERRORS`]), not just the first.
//!
//! **Comments.** `#` starts a comment, to the end of the line, when it is
//! the first character of a token (at the start of the line, after a space
//! or tab, or right after the `=`) and outside double quotes. A `#` inside
//! a token (`a#b`) or inside quotes (`"#"`) is part of the argument.
//!
//! **Entries.** `name = program arguments...`. The name is made of
//! `A-Z a-z 0-9 . _ -`; spaces and tabs may surround the `=`; built-in
//! names ([`RESERVED_NAMES`]) cannot be defined, nor a name twice. Then
//! come tokens separated by spaces and tabs:
//! - `"text"`: a fixed argument holding exactly `text` (spaces, `#`, `<`,
//!   `...` included); `\"` is a quote and `\\` a backslash, any other
//!   backslash is itself. Whitespace, the end of the line (or, after
//!   whitespace, a comment) must follow the closing quote.
//! - `...` (unquoted, exactly): any number of operator arguments of any
//!   kind, options included, unchecked. Meant for trusted setups, it must
//!   be the last token.
//! - `<TYPE>` or `<TYPE:PARAMETER>`, optionally followed by `?` (zero or
//!   one argument) or `*` (zero or more): a placeholder for the operator's
//!   arguments, see below. A placeholder is a whole token.
//! - anything else: a fixed argument, taken as written. It may not hold a
//!   `"`, `<` or `>` (quote the argument for those).
//!
//! The first token is the program: a fixed, absolute path.
//!
//! **Placeholders** ([`super::argspec`]): `<any>` (one argument), `<word>`
//! or `<word:GLOB>` (letters, digits and `. _ - + : @ , =`), `<path>` or
//! `<path:GLOB>` (an absolute path without `.`, `..` or empty components;
//! in a glob, `*` and `?` never match `/`), `<int:MIN-MAX>` (plain decimal)
//! and `<one-of:A|B|...>`. Globs know only `*` and `?`.
//!
//! **Operator arguments** fill the placeholders in order: each plain
//! placeholder takes exactly one, then each `?` takes one if any are left,
//! then a final `*` (or `...`) takes the rest; so fixed arguments and plain
//! placeholders may mix freely, but only `?` placeholders, then one `*` or
//! `...`, may come after the first `?`, and nothing after a `*` or `...`.
//! An entry without placeholders takes no operator arguments.
//!
//! **No surprise options.** An operator argument beginning with `-` is
//! refused unless its placeholder was written to allow options: a
//! `<one-of:...>` listing it, a `<word:GLOB>` whose glob begins with `-`,
//! or `...`. Nothing is ever inserted implicitly: where a program honours
//! `--` as the end of options, the entry writes it before the placeholders.
//!
//! Parsing ([`Allowlist::parse`]) does no I/O; the file is read, and its
//! owner and permissions checked, by [`super::allowfile`], once, at start.
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
use std::path::{Path, PathBuf};

use super::argspec::{self, ArgSpec, Count, Placeholder, SpecError};
use super::refusal::Refusal;

/// Names the agent answers itself; an allowlist may not define them.
pub const RESERVED_NAMES: [&str; 4] = monitor::command::BUILTINS;

/// Most arguments an operator may give after the command name (the
/// contract's argv limit, name included: see `monitor::command`).
pub const MAX_EXTRA_ARGS: usize = monitor::command::MAX_ARGS - 1;

/// Most bytes the operator's whole argv may add up to (sum of the lengths).
pub const MAX_ARGV_BYTES: usize = monitor::command::MAX_ARGV_BYTES;

/// Most errors one parse reports; past it the file is obviously not an
/// allowlist, and the list stays bounded.
pub const MAX_REPORTED_ERRORS: usize = 50;

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name the operator uses as argv[0].
    pub name: String,
    /// The program to execute: an absolute path.
    pub program: String,
    /// What follows the program, in order.
    pub args: Vec<Arg>,
    /// 1-based line number in the allowlist file, for messages.
    pub line: usize,
}

/// One argument of an entry after the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// Passed as written.
    Fixed(String),
    /// Filled from the operator's arguments (`...` is `Anything`, `Many`).
    Operator(Placeholder),
}

/// The parsed allowlist: which names may run, and from which file they came.
#[derive(Debug, Clone)]
pub struct Allowlist {
    path: PathBuf,
    state: State,
    entries: BTreeMap<String, Entry>,
}

/// Where an allowlist's entries came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Parsed from the file.
    Parsed,
    /// The (default) file does not exist: nothing is allowed.
    Missing,
    /// The file was refused at start (unsafe owner or permissions): nothing
    /// runs, and refusals say why.
    Refused(String),
}

/// A line of the allowlist that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    pub kind: ParseErrorKind,
}

/// Every error of one parse (at most [`MAX_REPORTED_ERRORS`]), and the file
/// they are in. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseErrors {
    pub path: PathBuf,
    pub errors: Vec<ParseError>,
    /// True when parsing stopped at [`MAX_REPORTED_ERRORS`].
    pub truncated: bool,
}

/// What was wrong, at a line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// A NUL byte, anywhere.
    Nul,
    /// A carriage return not followed by a line feed.
    LoneCarriageReturn,
    /// A control character outside double quotes.
    Control(char),
    /// A non-ASCII character in an entry, outside double quotes.
    NonAscii(char),
    /// The file is not UTF-8 (found when reading it).
    InvalidUtf8,
    /// Something other than a name where the entry starts.
    NameExpected(char),
    /// The name is followed by neither `=` nor whitespace.
    BadNameChar {
        name: String,
        c: char,
    },
    /// No `=` after the name.
    MissingEquals(String),
    ReservedName(String),
    DuplicateName {
        name: String,
        first_line: usize,
    },
    MissingProgram,
    /// The first token is a placeholder or `...`.
    ProgramNotFixed(String),
    RelativeProgram(String),
    UnterminatedQuote,
    QuoteInsideToken,
    TextAfterQuote,
    /// A `<` or `>` inside an unquoted argument that is not a placeholder.
    AngleInsideToken(char),
    Placeholder(SpecError),
    /// A fixed argument or plain placeholder after a `?` placeholder.
    AfterOptional,
    /// Anything after a `*` placeholder or `...`.
    AfterRepeated,
}

/// The decision maker: allowlist plus the `allow_any` opt-in.
#[derive(Debug, Clone)]
pub struct Policy {
    allowlist: Allowlist,
    allow_any: bool,
}

impl Allowlist {
    /// Parses allowlist text; `path` only names the source in errors and
    /// refusals. Reports every bad line (up to [`MAX_REPORTED_ERRORS`]).
    pub fn parse(text: &str, path: &Path) -> Result<Allowlist, ParseErrors> {
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        let mut errors = Vec::new();
        let mut truncated = false;
        for (index, raw) in text.split('\n').enumerate() {
            let line = index + 1;
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let (column, kind) = match parse_line(raw, line) {
                Err(e) => e,
                Ok(None) => continue,
                Ok(Some((entry, name_column))) => match entries.get(&entry.name) {
                    Some(first) => (
                        name_column,
                        ParseErrorKind::DuplicateName {
                            name: entry.name,
                            first_line: first.line,
                        },
                    ),
                    None => {
                        entries.insert(entry.name.clone(), entry);
                        continue;
                    }
                },
            };
            if errors.len() == MAX_REPORTED_ERRORS {
                truncated = true;
                break;
            }
            errors.push(ParseError { line, column, kind });
        }
        if !errors.is_empty() {
            return Err(ParseErrors {
                path: path.to_path_buf(),
                errors,
                truncated,
            });
        }
        Ok(Allowlist {
            path: path.to_path_buf(),
            state: State::Parsed,
            entries,
        })
    }

    /// The empty allowlist of a default file that does not exist.
    pub fn missing(path: &Path) -> Allowlist {
        Allowlist {
            path: path.to_path_buf(),
            state: State::Missing,
            entries: BTreeMap::new(),
        }
    }

    /// The allowlist of a file refused at start (`why` says why): no
    /// process runs, and each refusal repeats `why`.
    pub fn refused(path: &Path, why: String) -> Allowlist {
        Allowlist {
            path: path.to_path_buf(),
            state: State::Refused(why),
            entries: BTreeMap::new(),
        }
    }

    /// The file this allowlist came from (or would have, if it was missing).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// False when the file did not exist and the allowlist is empty for it.
    pub fn exists(&self) -> bool {
        self.state != State::Missing
    }

    /// Why the file was refused at start, if it was.
    pub fn refusal(&self) -> Option<&str> {
        match &self.state {
            State::Refused(why) => Some(why),
            State::Parsed | State::Missing => None,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// Entries in name order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }
}

impl Entry {
    /// The fewest and most operator arguments the entry takes (`None`: no
    /// upper bound but [`MAX_EXTRA_ARGS`]).
    pub fn arity(&self) -> (usize, Option<usize>) {
        let mut min = 0;
        let mut max = Some(0);
        for placeholder in self.placeholders() {
            match placeholder.count {
                Count::One => {
                    min += 1;
                    max = max.map(|m| m + 1);
                }
                Count::Optional => max = max.map(|m| m + 1),
                Count::Many => max = None,
            }
        }
        (min, max)
    }

    /// The placeholders, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.args.iter().filter_map(|a| match a {
            Arg::Operator(p) => Some(p),
            Arg::Fixed(_) => None,
        })
    }

    /// The argv to execute for the operator's arguments (the name already
    /// removed), or why not.
    fn apply(&self, operator: &[String]) -> Result<Vec<String>, Refusal> {
        let given = operator.len();
        let (min, max) = self.arity();
        if given < min || max.is_some_and(|max| given > max) {
            return Err(Refusal::ArgCount {
                name: self.name.clone(),
                given,
                min,
                max,
            });
        }
        let mut argv = Vec::with_capacity(1 + self.args.len() + given);
        argv.push(self.program.clone());
        let mut next = 0;
        for arg in &self.args {
            let placeholder = match arg {
                Arg::Fixed(text) => {
                    argv.push(text.clone());
                    continue;
                }
                Arg::Operator(p) => p,
            };
            // Plain placeholders come before every `?` and `*`, and the
            // count check guaranteed one argument for each of them.
            let take = match placeholder.count {
                Count::One => 1,
                Count::Optional => usize::from(next < given),
                Count::Many => given - next,
            };
            for arg in &operator[next..next + take] {
                next += 1;
                placeholder
                    .spec
                    .check(arg)
                    .map_err(|why| Refusal::BadArgument {
                        name: self.name.clone(),
                        index: next,
                        arg: arg.clone(),
                        why,
                    })?;
                argv.push(arg.clone());
            }
        }
        Ok(argv)
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
        if let Some(why) = self.allowlist.refusal() {
            return Err(Refusal::AllowlistRefused {
                why: why.to_owned(),
            });
        }
        let entry = self.allowlist.get(name);
        if entry.is_none() && !self.allow_any {
            return Err(Refusal::NotAllowed {
                name: name.clone(),
                allowlist: self.allowlist.path.clone(),
                allowlist_exists: self.allowlist.exists(),
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
            Some(entry) => entry.apply(extra),
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

/// A token after the `=`, with the column it starts at.
struct Token {
    text: String,
    quoted: bool,
    column: usize,
}

/// An error's column and kind, before the line number is added.
type LineError = (usize, ParseErrorKind);

/// Parses one line (without its line end) into an entry and the column
/// of its name; `Ok(None)` for blank lines and comments.
fn parse_line(raw: &str, line: usize) -> Result<Option<(Entry, usize)>, LineError> {
    // NUL and a lone CR are errors everywhere, quotes included: find the
    // first before anything else.
    if let Some((i, c)) = raw
        .chars()
        .enumerate()
        .find(|&(_, c)| c == '\0' || c == '\r')
    {
        let kind = if c == '\0' {
            ParseErrorKind::Nul
        } else {
            ParseErrorKind::LoneCarriageReturn
        };
        return Err((i + 1, kind));
    }
    let mut lexer = Lexer::new(raw);
    lexer.skip_blanks();
    let name_column = lexer.column;
    match lexer.peek() {
        None => return Ok(None),
        Some('#') => {
            lexer.comment()?;
            return Ok(None);
        }
        Some(_) => {}
    }
    let name = lexer.name()?;
    lexer.skip_blanks();
    if lexer.next_if('=').is_none() {
        return Err((lexer.column, ParseErrorKind::MissingEquals(name)));
    }
    if RESERVED_NAMES.contains(&name.as_str()) {
        return Err((name_column, ParseErrorKind::ReservedName(name)));
    }
    let after_equals = lexer.column;
    let tokens = lexer.tokens()?;
    let Some((program, rest)) = tokens.split_first() else {
        return Err((after_equals, ParseErrorKind::MissingProgram));
    };
    if !program.quoted && (program.text == "..." || program.text.starts_with('<')) {
        return Err((
            program.column,
            ParseErrorKind::ProgramNotFixed(program.text.clone()),
        ));
    }
    if !program.text.starts_with('/') {
        return Err((
            program.column,
            ParseErrorKind::RelativeProgram(program.text.clone()),
        ));
    }
    let mut args = Vec::with_capacity(rest.len());
    // The strictest count seen so far: nothing but `?` may follow a `?`,
    // nothing at all a `*`.
    let mut seen = Count::One;
    for token in rest {
        let arg = classify(token)?;
        let count = match &arg {
            Arg::Fixed(_) => Count::One,
            Arg::Operator(p) => p.count,
        };
        match (seen, count) {
            (Count::Many, _) => return Err((token.column, ParseErrorKind::AfterRepeated)),
            (Count::Optional, Count::One) => {
                return Err((token.column, ParseErrorKind::AfterOptional));
            }
            _ => seen = count,
        }
        args.push(arg);
    }
    let entry = Entry {
        name,
        program: program.text.clone(),
        args,
        line,
    };
    Ok(Some((entry, name_column)))
}

/// What a token after the program stands for.
fn classify(token: &Token) -> Result<Arg, LineError> {
    if token.quoted {
        return Ok(Arg::Fixed(token.text.clone()));
    }
    if token.text == "..." {
        return Ok(Arg::Operator(Placeholder {
            spec: ArgSpec::Anything,
            count: Count::Many,
        }));
    }
    if token.text.starts_with('<') {
        return argspec::parse_placeholder(&token.text)
            .map(Arg::Operator)
            .map_err(|(offset, e)| (token.column + offset, ParseErrorKind::Placeholder(e)));
    }
    if let Some((i, c)) = token
        .text
        .chars()
        .enumerate()
        .find(|&(_, c)| c == '<' || c == '>')
    {
        return Err((token.column + i, ParseErrorKind::AngleInsideToken(c)));
    }
    Ok(Arg::Fixed(token.text.clone()))
}

/// Reads one line character by character, knowing the column.
struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    /// 1-based column of the next character.
    column: usize,
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A character of a name or an unquoted token (blanks never get here)
/// must be printable ASCII.
fn check_plain(c: char, column: usize) -> Result<(), LineError> {
    if c.is_control() {
        return Err((column, ParseErrorKind::Control(c)));
    }
    if !c.is_ascii() {
        return Err((column, ParseErrorKind::NonAscii(c)));
    }
    Ok(())
}

impl<'a> Lexer<'a> {
    fn new(line: &'a str) -> Lexer<'a> {
        Lexer {
            chars: line.chars().peekable(),
            column: 1,
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }

    fn next_if(&mut self, want: char) -> Option<char> {
        let c = self.chars.next_if_eq(&want)?;
        self.column += 1;
        Some(c)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        self.column += 1;
        Some(c)
    }

    fn skip_blanks(&mut self) {
        while self.peek().is_some_and(is_blank) {
            self.bump();
        }
    }

    /// The rest of the line is a comment: any printable text.
    fn comment(&mut self) -> Result<(), LineError> {
        while let Some(c) = self.peek() {
            if c.is_control() && c != '\t' {
                return Err((self.column, ParseErrorKind::Control(c)));
            }
            self.bump();
        }
        Ok(())
    }

    /// The entry's name, up to whitespace or `=`.
    fn name(&mut self) -> Result<String, LineError> {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if is_blank(c) || c == '=' {
                break;
            }
            check_plain(c, self.column)?;
            if !is_name_char(c) {
                let kind = if name.is_empty() {
                    ParseErrorKind::NameExpected(c)
                } else {
                    ParseErrorKind::BadNameChar { name, c }
                };
                return Err((self.column, kind));
            }
            name.push(c);
            self.bump();
        }
        if name.is_empty() {
            return Err((self.column, ParseErrorKind::NameExpected('=')));
        }
        Ok(name)
    }

    /// The tokens after the `=`, up to the end of the line or a comment.
    fn tokens(&mut self) -> Result<Vec<Token>, LineError> {
        let mut tokens = Vec::new();
        loop {
            self.skip_blanks();
            let column = self.column;
            match self.peek() {
                None => return Ok(tokens),
                Some('#') => {
                    self.comment()?;
                    return Ok(tokens);
                }
                Some('"') => {
                    self.bump();
                    let text = self.quoted(column)?;
                    tokens.push(Token {
                        text,
                        quoted: true,
                        column,
                    });
                }
                Some(_) => {
                    let mut text = String::new();
                    while let Some(c) = self.peek().filter(|&c| !is_blank(c)) {
                        check_plain(c, self.column)?;
                        if c == '"' {
                            return Err((self.column, ParseErrorKind::QuoteInsideToken));
                        }
                        text.push(c);
                        self.bump();
                    }
                    tokens.push(Token {
                        text,
                        quoted: false,
                        column,
                    });
                }
            }
        }
    }

    /// The rest of a quoted token, its opening quote (at `column`) consumed.
    fn quoted(&mut self, column: usize) -> Result<String, LineError> {
        let mut text = String::new();
        loop {
            match self.bump() {
                None => return Err((column, ParseErrorKind::UnterminatedQuote)),
                Some('"') => break,
                Some('\\') => match self.peek() {
                    Some(c @ ('"' | '\\')) => {
                        self.bump();
                        text.push(c);
                    }
                    _ => text.push('\\'),
                },
                Some(c) => text.push(c),
            }
        }
        match self.peek() {
            Some(c) if !is_blank(c) => Err((self.column, ParseErrorKind::TextAfterQuote)),
            _ => Ok(text),
        }
    }
}

impl fmt::Display for ParseError {
    /// `LINE:COLUMN: message`; see [`ParseErrors`] for the file name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.kind)
    }
}

impl ParseErrors {
    /// Each error as `FILE:LINE:COLUMN: message`, then a note if parsing
    /// stopped early.
    pub fn messages(&self) -> impl Iterator<Item = String> + '_ {
        let path = &self.path;
        self.errors
            .iter()
            .map(move |e| format!("{}:{e}", path.display()))
            .chain(self.truncated.then(|| {
                format!(
                    "{}: stopped after {MAX_REPORTED_ERRORS} errors",
                    path.display()
                )
            }))
    }
}

impl fmt::Display for ParseErrors {
    /// Every message on one line, separated by "; " (for a log line).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, message) in self.messages().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(&message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseErrors {}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseErrorKind::Nul => f.write_str("NUL byte"),
            ParseErrorKind::LoneCarriageReturn => f.write_str(
                "carriage return not followed by a line feed (lines end with LF or CRLF)",
            ),
            ParseErrorKind::Control(c) => write!(
                f,
                "control character U+{:04X} outside double quotes",
                u32::from(*c)
            ),
            ParseErrorKind::NonAscii(c) => write!(
                f,
                "non-ASCII character U+{:04X} outside double quotes (quote the argument)",
                u32::from(*c)
            ),
            ParseErrorKind::InvalidUtf8 => f.write_str("not valid UTF-8"),
            ParseErrorKind::NameExpected(c) => write!(
                f,
                "expected a name (A-Z a-z 0-9 . _ -), found '{}'",
                c.escape_debug()
            ),
            ParseErrorKind::BadNameChar { name, c } => write!(
                f,
                "'{}' cannot follow the name '{name}': names are made of A-Z a-z 0-9 . _ -, \
                 then '='",
                c.escape_debug()
            ),
            ParseErrorKind::MissingEquals(name) => {
                write!(f, "expected '=' after the name '{name}'")
            }
            ParseErrorKind::ReservedName(name) => {
                write!(f, "'{name}' is a built-in command and cannot be defined")
            }
            ParseErrorKind::DuplicateName { name, first_line } => {
                write!(f, "'{name}' is already defined on line {first_line}")
            }
            ParseErrorKind::MissingProgram => f.write_str("no program after '='"),
            ParseErrorKind::ProgramNotFixed(token) => write!(
                f,
                "expected the program (an absolute path) first, found '{token}'"
            ),
            ParseErrorKind::RelativeProgram(program) => write!(
                f,
                "program '{}' is not an absolute path",
                program.escape_debug()
            ),
            ParseErrorKind::UnterminatedQuote => f.write_str("unterminated double quote"),
            ParseErrorKind::QuoteInsideToken => {
                f.write_str("double quote inside an unquoted argument")
            }
            ParseErrorKind::TextAfterQuote => {
                f.write_str("text right after a closing double quote")
            }
            ParseErrorKind::AngleInsideToken(c) => write!(
                f,
                "'{c}' inside an argument: a placeholder is a whole argument, and a literal \
                 '{c}' must be quoted"
            ),
            ParseErrorKind::Placeholder(e) => e.fmt(f),
            ParseErrorKind::AfterOptional => f.write_str(
                "only '?' placeholders, then one '*' or '...', may follow a '?' placeholder",
            ),
            ParseErrorKind::AfterRepeated => {
                f.write_str("nothing may follow a '*' placeholder or '...'")
            }
        }
    }
}

/// An argument as an allowlist line would write it: quoted when it has to
/// be, with control characters escaped so the text is safe on a terminal.
pub fn quote_arg(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg != "..."
        && !arg.starts_with('#')
        && arg
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '<' | '>' | '\\'));
    if plain {
        return arg.to_owned();
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    for c in arg.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.extend(c.escape_debug()),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl fmt::Display for Placeholder {
    /// The placeholder as written in the file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.spec == ArgSpec::Anything {
            return f.write_str("...");
        }
        match &self.spec {
            ArgSpec::Any => f.write_str("<any")?,
            ArgSpec::Word(None) => f.write_str("<word")?,
            ArgSpec::Word(Some(glob)) => write!(f, "<word:{glob}")?,
            ArgSpec::Path(None) => f.write_str("<path")?,
            ArgSpec::Path(Some(glob)) => write!(f, "<path:{glob}")?,
            ArgSpec::Int { min, max } => write!(f, "<int:{min}-{max}")?,
            ArgSpec::OneOf(choices) => write!(f, "<one-of:{}", choices.join("|"))?,
            ArgSpec::Anything => {}
        }
        f.write_str(match self.count {
            Count::One => ">",
            Count::Optional => ">?",
            Count::Many => ">*",
        })
    }
}

impl Entry {
    /// The entry as an allowlist line would write it (without the name).
    pub fn template(&self) -> String {
        let mut out = quote_arg(&self.program);
        for arg in &self.args {
            out.push(' ');
            match arg {
                Arg::Fixed(text) => out.push_str(&quote_arg(text)),
                Arg::Operator(p) => out.push_str(&p.to_string()),
            }
        }
        out
    }

    /// What the operator may pass, in plain words: one line for the count,
    /// then one per placeholder.
    pub fn describe(&self) -> Vec<String> {
        let (min, max) = self.arity();
        let count = match (min, max) {
            (_, Some(0)) => return vec!["takes no operator arguments".to_owned()],
            (1, Some(1)) => "takes exactly 1 operator argument".to_owned(),
            (min, Some(max)) if min == max => format!("takes exactly {min} operator arguments"),
            (min, Some(max)) => format!("takes {min} to {max} operator arguments"),
            (min, None) => {
                format!("takes {min} or more operator arguments (at most {MAX_EXTRA_ARGS})")
            }
        };
        let mut lines = vec![count];
        for (position, p) in (1..).zip(self.placeholders()) {
            lines.push(match p.count {
                Count::One => format!("argument {position}: {}", p.spec),
                Count::Optional => format!("argument {position} (optional): {}", p.spec),
                Count::Many => format!("arguments {position} and on (each): {}", p.spec),
            });
        }
        lines
    }
}

#[cfg(test)]
mod tests;
