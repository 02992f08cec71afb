//! Pure parsers for the /proc files the agent reads: `stat`, `meminfo`,
//! `diskstats`, `net/dev`, `loadavg`, `uptime` and `self/mounts`.
//!
//! Every parser takes the file's text and returns typed values whose field
//! names carry their unit, converted once at this boundary (kB become
//! `_bytes`, for instance). A line that cannot be read is a [`ParseError`]
//! naming the file, the 1-based line and the field, so an operator can find
//! it with `sed -n Np`.
//!
//! These modules must never do I/O, read globals or allocate on the success
//! path: the collector calls them on every tick with text it has already
//! read, and they are tested on captures from other machines.

pub mod diskstats;
pub mod loadavg;
pub mod meminfo;
pub mod mounts;
pub mod netdev;
pub mod stat;
pub mod uptime;

use std::fmt;

/// The longest excerpt of an offending value kept in a [`ParseError`], in
/// characters; a garbage line must not turn into a huge log message.
const MAX_GOT_CHARS: usize = 40;

/// A line (or a whole file) that does not have the shape the kernel prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The file as the kernel names it, e.g. `/proc/diskstats` (not the path
    /// under an injected root: the reader adds that where it matters).
    pub file: &'static str,
    /// 1-based line number; `None` when the problem is the file as a whole
    /// (a required line or key that never appears).
    pub line: Option<usize>,
    /// The field that was wrong, named as in the kernel's documentation.
    pub field: &'static str,
    /// What was wrong with it.
    pub kind: ParseErrorKind,
}

/// What was wrong with a field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// The field holds something other than a decimal unsigned integer that
    /// fits in 64 bits (the offending text, shortened).
    NotAnUnsignedInteger { got: String },
    /// The line ends before this field.
    Missing,
    /// A required line or key is absent from the whole file.
    NotFound,
    /// The value overflows 64 bits once converted to the unit we store.
    Overflow,
    /// A unit other than the one the kernel prints for this field.
    UnexpectedUnit { got: String },
    /// The field does not have the shape `expected` describes (the
    /// offending text, shortened).
    Malformed { expected: &'static str, got: String },
}

impl ParseError {
    pub(crate) fn new(
        file: &'static str,
        line: Option<usize>,
        field: &'static str,
        kind: ParseErrorKind,
    ) -> ParseError {
        ParseError {
            file,
            line,
            field,
            kind,
        }
    }

    /// An error for a field that is not a number, keeping a short excerpt.
    pub(crate) fn not_a_number(
        file: &'static str,
        line: usize,
        field: &'static str,
        got: &str,
    ) -> ParseError {
        ParseError::new(
            file,
            Some(line),
            field,
            ParseErrorKind::NotAnUnsignedInteger { got: excerpt(got) },
        )
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file)?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        write!(f, ": field {}: ", self.field)?;
        match &self.kind {
            ParseErrorKind::NotAnUnsignedInteger { got } => {
                write!(f, "expected an unsigned integer, got '{got}'")
            }
            ParseErrorKind::Missing => f.write_str("missing (line too short)"),
            ParseErrorKind::NotFound => f.write_str("not found in the file"),
            ParseErrorKind::Overflow => f.write_str("value overflows 64 bits"),
            ParseErrorKind::UnexpectedUnit { got } => {
                write!(f, "expected unit 'kB', got '{got}'")
            }
            ParseErrorKind::Malformed { expected, got } => {
                write!(f, "expected {expected}, got '{got}'")
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses a decimal unsigned integer the way the kernel prints one: ASCII
/// digits only, no sign, no spaces, at most 64 bits. `str::parse` would also
/// accept a leading `+`, which the kernel never prints.
#[inline]
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &b in bytes {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(digit))?;
    }
    Some(value)
}

/// An error for a field that does not have the shape `expected` describes,
/// keeping a short excerpt of it.
pub(crate) fn malformed(
    file: &'static str,
    line: Option<usize>,
    field: &'static str,
    expected: &'static str,
    got: &str,
) -> ParseError {
    ParseError::new(
        file,
        line,
        field,
        ParseErrorKind::Malformed {
            expected,
            got: excerpt(got),
        },
    )
}

/// Parses a non-negative decimal the way the kernel prints one in
/// /proc/loadavg and /proc/uptime: ASCII digits, optionally a `.` and more
/// digits (`0.52`, `10365.01`). No sign, no exponent, no `inf`/`nan`, which
/// `f64::from_str` would all accept.
pub(crate) fn parse_decimal(s: &str) -> Option<f64> {
    let (whole, fraction) = match s.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (s, None),
    };
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || fraction.is_some_and(|f| !digits(f)) {
        return None;
    }
    s.parse().ok()
}

/// Parses `s` as field `field` of `line`, or says why it is not a number.
#[inline]
pub(crate) fn field_u64(
    file: &'static str,
    line: usize,
    field: &'static str,
    s: &str,
) -> Result<u64, ParseError> {
    parse_u64(s).ok_or_else(|| ParseError::not_a_number(file, line, field, s))
}

/// Splits a line into whitespace-separated fields, like
/// `str::split_ascii_whitespace` but as a plain byte loop: on the tick's hot
/// path that generic iterator cost more than reading the file did. Slicing
/// is always at ASCII whitespace or the ends, so on char boundaries.
#[derive(Clone, Debug)]
pub(crate) struct Fields<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Fields<'a> {
    #[inline]
    pub(crate) fn new(text: &'a str) -> Fields<'a> {
        Fields { text, pos: 0 }
    }

    /// The next field of line `line` of `file`, or an error naming `field`
    /// as missing.
    pub(crate) fn required(
        &mut self,
        file: &'static str,
        line: usize,
        field: &'static str,
    ) -> Result<&'a str, ParseError> {
        self.next()
            .ok_or_else(|| ParseError::new(file, Some(line), field, ParseErrorKind::Missing))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let bytes = self.text.as_bytes();
        let mut i = self.pos;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == bytes.len() {
            self.pos = i;
            return None;
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        self.pos = i;
        self.text.get(start..i)
    }
}

/// Iterates the lines of a file as `(1-based line number, line)`, without
/// the newline; a plain byte loop for the same reason as [`Fields`]. The
/// kernel never prints `\r`, so unlike `str::lines` none is stripped.
#[derive(Clone, Debug)]
pub(crate) struct Lines<'a> {
    text: &'a str,
    pos: usize,
    number: usize,
}

impl<'a> Lines<'a> {
    #[inline]
    pub(crate) fn new(text: &'a str) -> Lines<'a> {
        Lines {
            text,
            pos: 0,
            number: 0,
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = (usize, &'a str);

    #[inline]
    fn next(&mut self) -> Option<(usize, &'a str)> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        if start >= bytes.len() {
            return None;
        }
        let mut end = start;
        while end < bytes.len() && bytes[end] != b'\n' {
            end += 1;
        }
        self.pos = end + 1;
        self.number += 1;
        Some((self.number, self.text.get(start..end)?))
    }
}

/// The first [`MAX_GOT_CHARS`] characters of `s`, marked when cut.
fn excerpt(s: &str) -> String {
    match s.char_indices().nth(MAX_GOT_CHARS) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_u64_accepts_only_what_the_kernel_prints() {
        fn check(input: &str, expected: Option<u64>) {
            assert_eq!(parse_u64(input), expected, "input {input:?}");
        }
        check("0", Some(0));
        check("18446744073709551615", Some(u64::MAX));
        check("18446744073709551616", None);
        check("", None);
        check("+1", None);
        check("-1", None);
        check("1x", None);
        check("x1", None);
        check("１", None);
    }

    #[test]
    fn parse_decimal_accepts_only_what_the_kernel_prints() {
        fn check(input: &str, expected: Option<f64>) {
            assert_eq!(parse_decimal(input), expected, "input {input:?}");
        }
        check("0.52", Some(0.52));
        check("10365.01", Some(10365.01));
        check("7", Some(7.0));
        check("", None);
        check(".5", None);
        check("5.", None);
        check("-1.0", None);
        check("+1.0", None);
        check("1e3", None);
        check("inf", None);
        check("NaN", None);
        check("1.2.3", None);
        check("1,5", None);
    }

    #[test]
    fn fields_split_like_split_ascii_whitespace() {
        for input in ["", "   ", "a", " a  b\tc ", "é x\u{a0}y  z", "eth0: 1 2"] {
            let ours: Vec<_> = Fields::new(input).collect();
            let std: Vec<_> = input.split_ascii_whitespace().collect();
            assert_eq!(ours, std, "input {input:?}");
        }
    }

    #[test]
    fn lines_are_numbered_from_one_and_keep_empty_ones() {
        let got: Vec<_> = Lines::new("a\n\nb c\nlast").collect();
        assert_eq!(got, [(1, "a"), (2, ""), (3, "b c"), (4, "last")]);
        assert_eq!(Lines::new("").count(), 0);
        assert_eq!(Lines::new("x\n").collect::<Vec<_>>(), [(1, "x")]);
    }

    #[test]
    fn error_message_names_file_line_and_field() {
        let err = ParseError::not_a_number("/proc/diskstats", 3, "sectors_read", "x1");
        assert_eq!(
            err.to_string(),
            "/proc/diskstats line 3: field sectors_read: expected an unsigned integer, got 'x1'"
        );
        let whole = ParseError::new("/proc/stat", None, "cpu", ParseErrorKind::NotFound);
        assert_eq!(
            whole.to_string(),
            "/proc/stat: field cpu: not found in the file"
        );
    }

    #[test]
    fn long_garbage_is_shortened_in_the_message() {
        let garbage = "é".repeat(100);
        let err = ParseError::not_a_number("/proc/stat", 1, "user", &garbage);
        let ParseErrorKind::NotAnUnsignedInteger { got } = err.kind else {
            panic!("wrong kind");
        };
        assert_eq!(got.chars().count(), MAX_GOT_CHARS + 3);
        assert!(got.ends_with("..."));
    }
}
