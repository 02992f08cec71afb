//! A running command's output from many hosts, made into lines an operator
//! can read and a terminal can show safely: each line prefixed with its
//! host, control characters made visible (`monitor::text`, in the spirit of
//! OpenSSH's fix for CVE-2019-6109), a UTF-8 character split across two
//! chunks printed whole.
//!
//! It must never let a host's output cost more than linear time or more
//! than bounded memory: each input byte is looked at a fixed number of
//! times, a line longer than [`MAX_LINE_BYTES`] is printed in pieces (each
//! with its host prefix), and the partial lines held for all hosts
//! together never exceed [`MAX_HELD_BYTES`] (past that, a partial line is
//! printed as it is rather than held).

use std::collections::BTreeMap;

use monitor::text::{Escaped, Utf8Tail};

use crate::term::Stream;

/// Longest piece of one line printed at once, in bytes of output (its
/// escaped form is at most four times as long).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Most bytes held in partial lines for all hosts and streams together.
pub const MAX_HELD_BYTES: usize = 4 << 20;
/// Printed text is handed on once this many bytes are ready.
const EMIT_BYTES: usize = 64 * 1024;

/// The partial lines of every (host, stream) that has one.
#[derive(Debug, Default)]
pub struct LineBuffers {
    partial: BTreeMap<(String, Stream), Partial>,
    /// Sum of [`Partial::held_bytes`] over `partial`.
    held_bytes: usize,
    /// Complete lines waiting to be handed on (reused).
    out: String,
}

/// What is held for one host's stream between two chunks.
#[derive(Debug)]
struct Partial {
    /// The escaped host and ": ", written before every line.
    prefix: String,
    /// An incomplete UTF-8 character at the end of the last chunk.
    tail: Utf8Tail,
    /// The escaped text since the last newline or piece.
    line: String,
    /// Output bytes in `line`, at most [`MAX_LINE_BYTES`] (plus the up to 3
    /// bytes of a character a piece cut and the next piece completed).
    line_bytes: usize,
}

impl Partial {
    fn new(host: &str) -> Partial {
        Partial {
            prefix: format!("{}: ", Escaped::capped(host)),
            tail: Utf8Tail::default(),
            line: String::new(),
            line_bytes: 0,
        }
    }

    /// What keeping this costs, the map key (`host`) included; the
    /// incomplete character counts as its longest (3 bytes).
    fn held_bytes(&self, host: &str) -> usize {
        host.len() + self.prefix.len() + self.line.len() + 3
    }

    /// Takes output bytes: every newline ends a line, and a line reaching
    /// [`MAX_LINE_BYTES`] without one is printed as a piece. Complete lines
    /// and pieces go to `out`; once it holds [`EMIT_BYTES`] this returns
    /// what it has not read yet, so `out` stays small even when a chunk of
    /// empty lines multiplies into prefixes.
    fn feed<'d>(&mut self, mut data: &'d [u8], out: &mut String) -> &'d [u8] {
        while !data.is_empty() && out.len() < EMIT_BYTES {
            let room = MAX_LINE_BYTES - self.line_bytes;
            // Look one byte past the room: a newline there still ends a
            // line of exactly MAX_LINE_BYTES. Nothing is scanned twice but
            // that byte, so this is linear in the input.
            let window = &data[..data.len().min(room + 1)];
            if let Some(newline) = window.iter().position(|&b| b == b'\n') {
                self.tail.push(&mut self.line, &window[..newline]);
                // A newline cannot be part of a character: whatever was
                // incomplete before it stays incomplete, shown escaped.
                self.tail.finish(&mut self.line);
                self.end_line(out);
                data = &data[newline + 1..];
            } else if window.len() > room {
                // A character cut here is completed at the next piece.
                self.tail.push(&mut self.line, &window[..room]);
                self.end_line(out);
                data = &data[room..];
            } else {
                self.tail.push(&mut self.line, window);
                self.line_bytes += window.len();
                data = &[];
            }
        }
        data
    }

    /// Prints the line (even an empty one) into `out` and starts a new one.
    fn end_line(&mut self, out: &mut String) {
        out.push_str(&self.prefix);
        out.push_str(&self.line);
        out.push('\n');
        self.line.clear();
        self.line_bytes = 0;
    }

    /// Prints whatever is held (the stream ended or memory ran short).
    fn finish(&mut self, out: &mut String) {
        self.tail.finish(&mut self.line);
        if !self.line.is_empty() {
            self.end_line(out);
        }
    }

    fn is_empty(&self) -> bool {
        self.line.is_empty() && self.tail.is_empty()
    }
}

impl LineBuffers {
    /// Takes a chunk of `host`'s output on `stream` and hands every
    /// complete line (and every full piece of an overlong one) to `emit`,
    /// in pieces of about [`EMIT_BYTES`]. What follows the last newline is
    /// held until more comes or [`LineBuffers::flush`] is called.
    pub fn push<E>(
        &mut self,
        host: &str,
        stream: Stream,
        data: &[u8],
        emit: &mut impl FnMut(Stream, &str) -> Result<(), E>,
    ) -> Result<(), E> {
        let key = (host.to_owned(), stream);
        let mut partial = match self.partial.remove(&key) {
            Some(p) => {
                self.held_bytes -= p.held_bytes(host);
                p
            }
            None => Partial::new(host),
        };
        let mut fed = Ok(());
        let mut rest = data;
        while !rest.is_empty() && fed.is_ok() {
            rest = partial.feed(rest, &mut self.out);
            if !rest.is_empty() {
                fed = self.hand_on(stream, emit);
            }
        }
        if self.held_bytes + partial.held_bytes(host) > MAX_HELD_BYTES {
            // Holding more would grow with the number of hosts: print this
            // partial line now; it continues on the next line.
            partial.finish(&mut self.out);
        } else if !partial.is_empty() {
            self.held_bytes += partial.held_bytes(host);
            self.partial.insert(key, partial);
        }
        if let Err(e) = fed {
            // Nothing of this stream may be handed on later as another's.
            self.out.clear();
            return Err(e);
        }
        self.hand_on(stream, emit)
    }

    /// Prints what is held for `host` (its command ended), stdout first.
    pub fn flush<E>(
        &mut self,
        host: &str,
        emit: &mut impl FnMut(Stream, &str) -> Result<(), E>,
    ) -> Result<(), E> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            if let Some(mut partial) = self.partial.remove(&(host.to_owned(), stream)) {
                self.held_bytes -= partial.held_bytes(host);
                partial.finish(&mut self.out);
                self.hand_on(stream, emit)?;
            }
        }
        Ok(())
    }

    /// Prints what is held for every host (the event stream ended).
    pub fn flush_all<E>(
        &mut self,
        emit: &mut impl FnMut(Stream, &str) -> Result<(), E>,
    ) -> Result<(), E> {
        self.held_bytes = 0;
        for ((_, stream), mut partial) in std::mem::take(&mut self.partial) {
            partial.finish(&mut self.out);
            self.hand_on(stream, emit)?;
        }
        Ok(())
    }

    /// Bytes held in partial lines now.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Hands the complete lines on and empties the buffer, even on error.
    fn hand_on<E>(
        &mut self,
        stream: Stream,
        emit: &mut impl FnMut(Stream, &str) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = emit(stream, &self.out);
        self.out.clear();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What was handed on, per stream, and the largest single hand-over.
    #[derive(Default)]
    struct Sink {
        stdout: String,
        stderr: String,
        largest_bytes: usize,
    }

    impl Sink {
        fn emit(&mut self) -> impl FnMut(Stream, &str) -> Result<(), ()> + '_ {
            |stream, text| {
                self.largest_bytes = self.largest_bytes.max(text.len());
                match stream {
                    Stream::Stdout => self.stdout.push_str(text),
                    Stream::Stderr => self.stderr.push_str(text),
                }
                Ok(())
            }
        }
    }

    fn push(b: &mut LineBuffers, sink: &mut Sink, host: &str, stream: Stream, data: &[u8]) {
        b.push(host, stream, data, &mut sink.emit()).unwrap();
    }

    #[test]
    fn lines_are_prefixed_and_partial_lines_kept() {
        let mut b = LineBuffers::default();
        let mut s = Sink::default();
        push(&mut b, &mut s, "h", Stream::Stdout, b"one\ntw");
        assert_eq!(s.stdout, "h: one\n");
        push(&mut b, &mut s, "h", Stream::Stdout, b"o\n\n");
        assert_eq!(s.stdout, "h: one\nh: two\nh: \n");
        push(&mut b, &mut s, "h", Stream::Stderr, b"err");
        push(&mut b, &mut s, "g", Stream::Stdout, b"other");
        assert_eq!(s.stderr, "");
        b.flush("h", &mut s.emit()).unwrap();
        assert_eq!(s.stderr, "h: err\n");
        assert_eq!(s.stdout, "h: one\nh: two\nh: \n");
        b.flush_all(&mut s.emit()).unwrap();
        assert_eq!(s.stdout, "h: one\nh: two\nh: \ng: other\n");
        assert_eq!(b.held_bytes(), 0);
    }

    #[test]
    fn a_huge_line_without_newline_is_printed_in_bounded_pieces() {
        let mut b = LineBuffers::default();
        let mut s = Sink::default();
        let chunk = vec![b'x'; 100_000];
        let chunks = 100; // 10 MB, no newline
        for _ in 0..chunks {
            push(&mut b, &mut s, "h", Stream::Stdout, &chunk);
            assert!(b.held_bytes() <= MAX_LINE_BYTES + 16, "{}", b.held_bytes());
        }
        b.flush("h", &mut s.emit()).unwrap();
        let mut total = 0;
        for line in s.stdout.lines() {
            let piece = line.strip_prefix("h: ").expect("every piece has its host");
            assert!(piece.len() <= MAX_LINE_BYTES, "{}", piece.len());
            assert!(piece.bytes().all(|c| c == b'x'));
            total += piece.len();
        }
        assert_eq!(total, chunk.len() * chunks);
        assert_eq!(s.stdout.lines().count(), (total).div_ceil(MAX_LINE_BYTES));
        // Hand-overs stay small too: a chunk's output never piles up whole.
        assert!(s.largest_bytes <= EMIT_BYTES + MAX_LINE_BYTES + 8);
    }

    #[test]
    fn a_chunk_of_empty_lines_is_handed_on_in_bounded_pieces() {
        let mut b = LineBuffers::default();
        let mut s = Sink::default();
        let host = "h".repeat(253);
        let newlines = vec![b'\n'; 1 << 20];
        push(&mut b, &mut s, &host, Stream::Stdout, &newlines);
        assert_eq!(s.stdout.lines().count(), newlines.len());
        let line_bytes = host.len() + 3;
        assert!(
            s.largest_bytes < EMIT_BYTES + line_bytes,
            "{}",
            s.largest_bytes
        );
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_one_line() {
        let mut b = LineBuffers::default();
        let mut s = Sink::default();
        let mut data = vec![b'y'; MAX_LINE_BYTES];
        data.push(b'\n');
        push(&mut b, &mut s, "h", Stream::Stdout, &data[..1000]);
        push(&mut b, &mut s, "h", Stream::Stdout, &data[1000..]);
        assert_eq!(s.stdout.lines().count(), 1);
        assert_eq!(s.stdout.len(), "h: ".len() + MAX_LINE_BYTES + 1);
    }

    #[test]
    fn escape_sequences_are_printed_visibly() {
        let mut b = LineBuffers::default();
        let mut s = Sink::default();
        push(
            &mut b,
            &mut s,
            "h",
            Stream::Stdout,
            b"\x1b]0;owned\x07title\n\x1b[2Jclear\r\tok\n",
        );
        assert_eq!(
            s.stdout,
            "h: \\x1b]0;owned\\x07title\nh: \\x1b[2Jclear\\r\tok\n"
        );
        // A hostname from the server is escaped in the prefix too.
        push(&mut b, &mut s, "evil\x1b[31m", Stream::Stderr, b"x\n");
        assert_eq!(s.stderr, "evil\\x1b[31m: x\n");
        // An escape right after a piece boundary is shown whole.
        let mut long = vec![b'z'; MAX_LINE_BYTES];
        long.extend_from_slice(b"\x1b\n");
        push(&mut b, &mut s, "l", Stream::Stderr, &long);
        assert!(
            s.stderr.ends_with("zz\nl: \\x1b\n"),
            "{}",
            &s.stderr[s.stderr.len() - 20..]
        );
    }

    #[test]
    fn a_utf8_character_split_across_chunks_prints_whole() {
        let mut b = LineBuffers::default();
        let mut s = Sink::default();
        let euro = "€".as_bytes();
        push(
            &mut b,
            &mut s,
            "h",
            Stream::Stdout,
            &[b"price ", &euro[..1]].concat(),
        );
        push(&mut b, &mut s, "h", Stream::Stdout, &euro[1..2]);
        push(
            &mut b,
            &mut s,
            "h",
            Stream::Stdout,
            &[&euro[2..], b"5\n"].concat(),
        );
        assert_eq!(s.stdout, "h: price €5\n");
        // A piece boundary never cuts a character in half.
        let mut long = vec![b'a'; MAX_LINE_BYTES - 1];
        long.extend_from_slice("é\n".as_bytes());
        push(&mut b, &mut s, "p", Stream::Stdout, &long);
        let tail: Vec<&str> = s.stdout.lines().skip(1).collect();
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[1], "p: é");
        // Output that ends inside a character shows its bytes escaped.
        push(&mut b, &mut s, "q", Stream::Stdout, &euro[..2]);
        b.flush("q", &mut s.emit()).unwrap();
        assert!(s.stdout.ends_with("q: \\xe2\\x82\n"), "{}", s.stdout);
    }

    #[test]
    fn partial_lines_of_many_hosts_stay_within_the_budget() {
        let mut b = LineBuffers::default();
        let mut s = Sink::default();
        let chunk = vec![b'w'; MAX_LINE_BYTES - 10];
        let hosts = 2 * MAX_HELD_BYTES / MAX_LINE_BYTES;
        for i in 0..hosts {
            push(&mut b, &mut s, &format!("host-{i}"), Stream::Stdout, &chunk);
            assert!(b.held_bytes() <= MAX_HELD_BYTES);
        }
        // Hosts past the budget were printed at once, not lost.
        b.flush_all(&mut s.emit()).unwrap();
        let printed: usize = s
            .stdout
            .lines()
            .map(|l| l.split_once(": ").map_or(0, |(_, rest)| rest.len()))
            .sum();
        assert_eq!(printed, hosts * chunk.len());
    }
}
