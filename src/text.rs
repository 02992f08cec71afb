//! Strings from the network, made safe to log or print.
//!
//! Anything a peer sends (a hostname, a rejection message, a command's
//! output) may hold a newline that forges a log line, an escape sequence
//! that retitles or rewrites the operator's terminal (CVE-2019-6109 was
//! exactly this, in scp), or megabytes that fill a Pi's SD card one log
//! line at a time. Before such text reaches a log or a terminal it goes
//! through [`Escaped`] (one line, capped) or [`escape_output`] (newlines and
//! tabs kept, everything else visible).

use std::fmt::{self, Write as _};

/// Longest piece of a peer's text written into one log line, in bytes.
pub const LOG_FIELD_MAX_BYTES: usize = 256;

/// Displays a string on one line: control characters (newline included)
/// and backslashes written as escapes, and at most `max_bytes` of the input
/// shown, then a note of how much was left out.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a> {
    text: &'a str,
    max_bytes: usize,
}

impl<'a> Escaped<'a> {
    /// At most [`LOG_FIELD_MAX_BYTES`] of `text`.
    pub fn capped(text: &'a str) -> Escaped<'a> {
        Escaped {
            text,
            max_bytes: LOG_FIELD_MAX_BYTES,
        }
    }

    /// At most `max_bytes` of `text`.
    pub fn with_limit(text: &'a str, max_bytes: usize) -> Escaped<'a> {
        Escaped { text, max_bytes }
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut used = 0;
        for c in self.text.chars() {
            if used + c.len_utf8() > self.max_bytes {
                return write!(f, "…({} more bytes)", self.text.len() - used);
            }
            used += c.len_utf8();
            escape_char(f, c, false)?;
        }
        Ok(())
    }
}

/// Writes `c`, or its escape when it could move the cursor or change the
/// terminal: C0 and C1 controls and DEL as `\xHH` / `\u{HHHH}`, backslash
/// doubled (so an escape in the input cannot pass for ours). With
/// `keep_lines`, `\n` and `\t` pass as they are.
fn escape_char(out: &mut impl fmt::Write, c: char, keep_lines: bool) -> fmt::Result {
    match c {
        '\n' | '\t' if keep_lines => out.write_char(c),
        '\\' => out.write_str("\\\\"),
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        c if (c as u32) < 0x80 && c.is_control() => write!(out, "\\x{:02x}", c as u32),
        c if c.is_control() => write!(out, "\\u{{{:04x}}}", c as u32),
        c => out.write_char(c),
    }
}

/// A command's output made safe for a terminal, in the spirit of OpenSSH's
/// fix for CVE-2019-6109: newlines and tabs kept, every other control
/// character (ESC, CR, BEL, C1 controls, DEL) and every byte that is not
/// UTF-8 made visible as an escape, backslashes doubled. Linear in the
/// input. `bytes` may end inside a UTF-8 sequence: the caller carries
/// [`Utf8Tail`] between chunks so a character split across two chunks is
/// printed whole.
pub fn escape_output(out: &mut String, bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                push_escaped(out, s);
                return;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                // Valid by construction: `valid_up_to` says so.
                push_escaped(out, std::str::from_utf8(good).unwrap_or_default());
                let skip = e.error_len().unwrap_or(bad.len()).max(1);
                for b in &bad[..skip] {
                    let _ = write!(out, "\\x{b:02x}");
                }
                rest = &bad[skip..];
            }
        }
    }
}

fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        let _ = escape_char(out, c, true);
    }
}

/// The incomplete UTF-8 sequence at the end of one output chunk, kept to be
/// completed by the next one (at most 3 bytes: never grows).
#[derive(Clone, Debug, Default)]
pub struct Utf8Tail {
    pending: Vec<u8>,
}

impl Utf8Tail {
    /// Escapes `chunk` (after what was pending) into `out`, keeping back a
    /// trailing incomplete character for the next call.
    pub fn push(&mut self, out: &mut String, chunk: &[u8]) {
        let mut joined;
        let bytes: &[u8] = if self.pending.is_empty() {
            chunk
        } else {
            joined = std::mem::take(&mut self.pending);
            joined.extend_from_slice(chunk);
            &joined
        };
        let keep = incomplete_tail(bytes);
        escape_output(out, &bytes[..bytes.len() - keep]);
        self.pending = bytes[bytes.len() - keep..].to_vec();
    }

    /// Whether no incomplete character is held back.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Escapes whatever is still pending (the stream ended inside a
    /// character).
    pub fn finish(&mut self, out: &mut String) {
        let pending = std::mem::take(&mut self.pending);
        escape_output(out, &pending);
    }
}

/// How many bytes at the end of `bytes` start a UTF-8 character that is not
/// complete yet (0 to 3).
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=3.min(bytes.len()) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back
        }
        let len = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if len > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_log(input: &str, max: usize, expected: &str) {
        assert_eq!(Escaped::with_limit(input, max).to_string(), expected);
    }

    #[test]
    fn log_fields_stay_on_one_line_and_are_capped() {
        check_log("pi-1", 10, "pi-1");
        check_log("a\nINFO forged", 100, "a\\nINFO forged");
        check_log("\x1b]0;owned\x07", 100, "\\x1b]0;owned\\x07");
        check_log("back\\slash", 100, "back\\\\slash");
        check_log("tab\there\r", 100, "tab\\there\\r");
        check_log("\u{9b}31m", 100, "\\u{009b}31m");
        check_log("0123456789", 10, "0123456789");
        check_log("0123456789a", 10, "0123456789…(1 more bytes)");
        // A character is never cut in half.
        check_log("ééé", 5, "éé…(2 more bytes)");
        let huge = "x".repeat(1 << 20);
        assert!(Escaped::capped(&huge).to_string().len() < LOG_FIELD_MAX_BYTES + 40);
    }

    fn check_output(chunks: &[&[u8]], expected: &str) {
        let mut out = String::new();
        let mut tail = Utf8Tail::default();
        for c in chunks {
            tail.push(&mut out, c);
        }
        tail.finish(&mut out);
        assert_eq!(out, expected);
    }

    #[test]
    fn output_keeps_lines_and_shows_controls() {
        check_output(&[b"line 1\nline\t2\n"], "line 1\nline\t2\n");
        check_output(&[b"\x1b]0;owned\x07rest"], "\\x1b]0;owned\\x07rest");
        check_output(&[b"cr\rover"], "cr\\rover");
        check_output(&[b"\xff\xfe ok"], "\\xff\\xfe ok");
        check_output(&[b"del\x7f"], "del\\x7f");
    }

    #[test]
    fn a_character_split_across_chunks_is_printed_whole() {
        let e = "é".as_bytes();
        check_output(&[b"a", &e[..1], &e[1..], b"b"], "aéb");
        let euro = "€".as_bytes();
        check_output(&[&euro[..1], &euro[1..2], &euro[2..]], "€");
        // The stream ends inside a character: its bytes are shown escaped.
        check_output(&[&euro[..2]], "\\xe2\\x82");
        let mut tail = Utf8Tail::default();
        let mut out = String::new();
        tail.push(&mut out, &euro[..2]);
        assert!(!tail.is_empty());
        tail.push(&mut out, &euro[2..]);
        assert!(tail.is_empty());
        assert_eq!(incomplete_tail(b"abc"), 0);
        assert_eq!(incomplete_tail(&euro[..1]), 1);
        assert_eq!(incomplete_tail(&euro[..2]), 2);
        assert_eq!(incomplete_tail(euro), 0);
    }
}
