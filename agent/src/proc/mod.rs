//! Pure parsers for the /proc files the agent reads: `stat`, `meminfo`,
//! `diskstats`, `net/dev`, `loadavg`, `uptime` and `self/mounts`.
//!
//! Every parser takes the file's bytes as read (the kernel prints ASCII, so
//! a whole file is never checked for UTF-8: only the offending text of an
//! error is, lossily) and returns typed values whose field names carry
//! their unit, converted once at this boundary (kB become `_bytes`, for
//! instance). A line that cannot be read is a [`ParseError`]
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
        got: &[u8],
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
pub(crate) fn parse_u64(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    if bytes.len() <= SAFE_U64_DIGITS {
        // Cannot overflow: the checks below are only for longer fields.
        for &b in bytes {
            let digit = b.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            value = value * 10 + u64::from(digit);
        }
        return Some(value);
    }
    for &b in bytes {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(digit))?;
    }
    Some(value)
}

/// Decimal digits that always fit in a `u64` (10^19 − 1 < 2^64).
const SAFE_U64_DIGITS: usize = 19;

/// An error for a field that does not have the shape `expected` describes,
/// keeping a short excerpt of it.
pub(crate) fn malformed(
    file: &'static str,
    line: Option<usize>,
    field: &'static str,
    expected: &'static str,
    got: &[u8],
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
///
/// The same value as `f64::from_str` on the same text, without its general
/// machinery: with at most [`EXACT_DIGITS`] digits in all, the digits as an
/// integer and the power of ten are both exact in an `f64`, so their
/// quotient is the correctly rounded value (IEEE division rounds once).
/// Longer numbers, which the kernel does not print, go to `f64::from_str`.
pub(crate) fn parse_decimal(s: &[u8]) -> Option<f64> {
    let (whole, fraction) = match find_byte(b'.', s) {
        Some(dot) => (&s[..dot], Some(&s[dot + 1..])),
        None => (s, None),
    };
    let digits = |part: &[u8]| !part.is_empty() && part.iter().all(u8::is_ascii_digit);
    if !digits(whole) || fraction.is_some_and(|f| !digits(f)) {
        return None;
    }
    let fraction = fraction.unwrap_or_default();
    if whole.len() + fraction.len() > EXACT_DIGITS {
        return std::str::from_utf8(s).ok()?.parse().ok();
    }
    let mantissa = whole
        .iter()
        .chain(fraction)
        .fold(0u64, |m, &d| m * 10 + u64::from(d - b'0'));
    Some(mantissa as f64 / POWERS_OF_TEN[fraction.len()])
}

/// Decimal digits every integer of which is exact in an `f64` (10^15 < 2^53).
const EXACT_DIGITS: usize = 15;

/// 10^0 to 10^15, each exact in an `f64`.
const POWERS_OF_TEN: [f64; EXACT_DIGITS + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// The first `needle` in `haystack`, eight bytes at a time: the files'
/// lines are found with this, so the tick pays about one instruction per
/// byte of text where a byte loop pays four or five.
#[inline]
pub(crate) fn find_byte(needle: u8, haystack: &[u8]) -> Option<usize> {
    let pattern = ONES * u64::from(needle);
    let mut chunks = haystack.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        // A byte of `x` is 0 where the text has `needle`; the lowest byte
        // flagged by this classic test is always a real zero (a borrow can
        // only flag bytes above one).
        let x = u64::from_le_bytes(word) ^ pattern;
        let zeros = x.wrapping_sub(ONES) & !x & HIGHS;
        if zeros != 0 {
            return Some(offset + (zeros.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    haystack[offset..]
        .iter()
        .position(|&b| b == needle)
        .map(|i| offset + i)
}

/// Parses `s` as field `field` of `line`, or says why it is not a number.
#[inline]
pub(crate) fn field_u64(
    file: &'static str,
    line: usize,
    field: &'static str,
    s: &[u8],
) -> Result<u64, ParseError> {
    parse_u64(s).ok_or_else(|| ParseError::not_a_number(file, line, field, s))
}

/// Splits a line into whitespace-separated fields, like
/// `split_ascii_whitespace` but as a plain byte loop: on the tick's hot
/// path that generic iterator cost more than reading the file did.
#[derive(Clone, Debug)]
pub(crate) struct Fields<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    #[inline]
    pub(crate) fn new(text: &'a [u8]) -> Fields<'a> {
        Fields { text, pos: 0 }
    }

    /// The next field of line `line` of `file`, or an error naming `field`
    /// as missing.
    pub(crate) fn required(
        &mut self,
        file: &'static str,
        line: usize,
        field: &'static str,
    ) -> Result<&'a [u8], ParseError> {
        self.next()
            .ok_or_else(|| ParseError::new(file, Some(line), field, ParseErrorKind::Missing))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let bytes = self.text;
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
        bytes.get(start..i)
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;
/// Iterates the lines of a file as `(1-based line number, line)`, without
/// the newline, finding each end with [`find_byte`]. The kernel never
/// prints `\r`, so unlike `str::lines` none is stripped.
#[derive(Clone, Debug)]
pub(crate) struct Lines<'a> {
    text: &'a [u8],
    pos: usize,
    number: usize,
}

impl<'a> Lines<'a> {
    #[inline]
    pub(crate) fn new(text: &'a [u8]) -> Lines<'a> {
        Lines {
            text,
            pos: 0,
            number: 0,
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = (usize, &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<(usize, &'a [u8])> {
        let rest = self.text.get(self.pos..).filter(|r| !r.is_empty())?;
        let end = find_byte(b'\n', rest).unwrap_or(rest.len());
        self.pos += end + 1;
        self.number += 1;
        Some((self.number, &rest[..end]))
    }
}

/// The first line of a file (all of it when it has no newline).
#[inline]
pub(crate) fn first_line(text: &[u8]) -> &[u8] {
    find_byte(b'\n', text).map_or(text, |end| &text[..end])
}

/// The first [`MAX_GOT_CHARS`] characters of `got` (invalid UTF-8
/// replaced), marked when cut.
fn excerpt(got: &[u8]) -> String {
    let s = String::from_utf8_lossy(got);
    match s.char_indices().nth(MAX_GOT_CHARS) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.into_owned(),
    }
}

/// Test support for the per-line parsers of named counters (diskstats,
/// net/dev): compares `(name, counter, counter)` per line with `expected`,
/// names as text with invalid UTF-8 shown as U+FFFD.
#[cfg(test)]
pub(crate) fn check_named_counters<'a>(
    input: &'a [u8],
    got: impl Iterator<Item = Result<(&'a [u8], u64, u64), ParseError>>,
    expected: &[Result<(&str, u64, u64), ParseError>],
) {
    let got: Vec<_> = got
        .map(|r| r.map(|(name, a, b)| (String::from_utf8_lossy(name).into_owned(), a, b)))
        .collect();
    let expected: Vec<_> = expected
        .iter()
        .map(|r| r.clone().map(|(name, a, b)| (name.to_owned(), a, b)))
        .collect();
    assert_eq!(got, expected, "input:\n{}", String::from_utf8_lossy(input));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed pseudo-random sequence (xorshift64): the same inputs every
    /// run, with no dependency.
    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    #[test]
    fn parse_u64_accepts_only_what_the_kernel_prints() {
        fn check(input: &str, expected: Option<u64>) {
            assert_eq!(parse_u64(input.as_bytes()), expected, "input {input:?}");
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
            assert_eq!(parse_decimal(input.as_bytes()), expected, "input {input:?}");
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
            let ours: Vec<_> = Fields::new(input.as_bytes()).collect();
            let std: Vec<_> = input.split_ascii_whitespace().map(str::as_bytes).collect();
            assert_eq!(ours, std, "input {input:?}");
        }
        // Long runs of spaces and long tokens (passed a word at a time),
        // with a tab, a form feed, a carriage return, a vertical tab (not
        // white space), a control byte and a `!` (just above a space) at
        // every offset of a word.
        let specials = ["\t", "\x0c", "\r", "\x0b", "\x01", "!", " ", "\n"];
        for special in specials {
            for at in 0..20 {
                for (token, gap) in [("1234567890123", "          "), ("7", " "), ("", "   ")] {
                    let mut input = format!("{gap}{token}{gap}{token}{gap}{token}");
                    input.insert_str(at.min(input.len()), special);
                    let ours: Vec<_> = Fields::new(input.as_bytes()).collect();
                    let std: Vec<_> = input.split_ascii_whitespace().map(str::as_bytes).collect();
                    assert_eq!(ours, std, "input {input:?}");
                }
            }
        }
    }

    #[test]
    fn fields_split_any_bytes_like_the_standard_split() {
        // Pseudo-random lines of 0 to 200 bytes (past three 64-byte
        // blocks) from an alphabet of every white space byte, the control
        // and high bytes around them, and runs of spaces and digits.
        let alphabet: &[&[u8]] = &[
            b" ",
            b"   ",
            b"        ",
            b"\t",
            b"\n",
            b"\x0b",
            b"\x0c",
            b"\r",
            b"\x00",
            b"\x1f",
            b"!",
            b"\x80",
            b"\xff",
            b"7",
            b"1234567890123",
            b"eth0:",
            b"\xa0",
        ];
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5_000 {
            let target = (next() % 200) as usize;
            let mut line = Vec::new();
            while line.len() < target {
                line.extend_from_slice(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            let ours: Vec<_> = Fields::new(&line).collect();
            let std: Vec<_> = line
                .split(u8::is_ascii_whitespace)
                .filter(|field| !field.is_empty())
                .collect();
            assert_eq!(ours, std, "line {line:?}");
        }
    }

    #[test]
    fn parse_u64_overflows_only_past_u64_max() {
        for digits in 1..=22 {
            let input = "9".repeat(digits);
            assert_eq!(
                parse_u64(input.as_bytes()),
                input.parse::<u64>().ok(),
                "input {input}"
            );
            let input = format!("1{}", "0".repeat(digits - 1));
            assert_eq!(parse_u64(input.as_bytes()), input.parse::<u64>().ok());
        }
    }

    #[test]
    fn lines_are_numbered_from_one_and_keep_empty_ones() {
        let got: Vec<_> = Lines::new(b"a\n\nb c\nlast").collect();
        assert_eq!(got, [(1, &b"a"[..]), (2, b""), (3, b"b c"), (4, b"last")]);
        assert_eq!(Lines::new(b"").count(), 0);
        assert_eq!(Lines::new(b"x\n").collect::<Vec<_>>(), [(1, &b"x"[..])]);
        // Lines longer than a word, ends at every offset within one.
        for len in 0..40 {
            let line = "y".repeat(len);
            let text = format!("{line}\n{line}");
            let got: Vec<_> = Lines::new(text.as_bytes()).collect();
            let expected: Vec<_> = text
                .split('\n')
                .map(str::as_bytes)
                .enumerate()
                .map(|(i, l)| (i + 1, l))
                .filter(|(i, l)| *i == 1 || !l.is_empty())
                .collect();
            assert_eq!(got, expected, "len {len}");
        }
    }

    #[test]
    fn error_message_names_file_line_and_field() {
        let err = ParseError::not_a_number("/proc/diskstats", 3, "sectors_read", b"x1");
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
        let err = ParseError::not_a_number("/proc/stat", 1, "user", garbage.as_bytes());
        let ParseErrorKind::NotAnUnsignedInteger { got } = err.kind else {
            panic!("wrong kind");
        };
        assert_eq!(got.chars().count(), MAX_GOT_CHARS + 3);
        assert!(got.ends_with("..."));
    }

    #[test]
    fn find_byte_finds_what_position_finds() {
        // Every length up to three words, the byte at every offset, twice
        // or not at all, with high bytes around it (the word test's
        // borrows must not flag a byte before the first match).
        for len in 0usize..24 {
            for at in 0..=len {
                for (fill, other) in [
                    (b'a', None),
                    (0xff, Some(len.saturating_sub(1))),
                    (0x0b, Some(0)),
                ] {
                    let mut text = vec![fill; len];
                    if at < len {
                        text[at] = b'\n';
                    }
                    if let Some(o) = other.filter(|&o| o < len) {
                        text[o] = b'\n';
                    }
                    let expected = text.iter().position(|&b| b == b'\n');
                    assert_eq!(find_byte(b'\n', &text), expected, "{text:?}");
                    assert_eq!(find_byte(b'.', &text), text.iter().position(|&b| b == b'.'));
                }
            }
        }
        // A byte one above the needle next to it, the case where a borrow
        // could flag a false match.
        assert_eq!(
            find_byte(b'\n', b"\x0b\x0b\x0b\n\x0b\x0b\x0b\x0b\x0b"),
            Some(3)
        );
        assert_eq!(
            find_byte(0x01, b"\x00\x01\x00\x00\x00\x00\x00\x00"),
            Some(1)
        );
    }

    #[test]
    fn parse_decimal_gives_what_f64_from_str_gives() {
        // A fixed pseudo-random sequence (no dependency, the same every
        // run): whole parts of 1 to 10 digits, fractions of 0 to 9 digits,
        // leading zeros too; plus the long ones that take the slow path.
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let mut inputs: Vec<String> = [
            "0",
            "0.0",
            "0.00",
            "00.5",
            "1.1",
            "0.1",
            "0.2",
            "0.3",
            "2.675",
            "9007199254740993",
            "123456789012345",
            "1234567890123456",
            "0.000000000000001",
            "99999999999999.99",
            "17976931348623157.5",
            "4294967295.99",
            "18446744073709551615.99",
        ]
        .map(String::from)
        .into();
        for _ in 0..20_000 {
            let whole_digits = 1 + (next() % 10) as usize;
            let fraction_digits = (next() % 10) as usize;
            let digits = |n: usize, next: &mut dyn FnMut() -> u64| -> String {
                (0..n)
                    .map(|_| char::from(b'0' + (next() % 10) as u8))
                    .collect()
            };
            let whole = digits(whole_digits, &mut next);
            let fraction = digits(fraction_digits, &mut next);
            inputs.push(if fraction.is_empty() {
                whole
            } else {
                format!("{whole}.{fraction}")
            });
        }
        for input in &inputs {
            let std: f64 = input.parse().unwrap();
            assert_eq!(
                parse_decimal(input.as_bytes()).map(f64::to_bits),
                Some(std.to_bits()),
                "input {input}"
            );
        }
    }
}
