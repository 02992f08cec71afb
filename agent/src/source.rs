//! A kept-open kernel file re-read every tick: `pread` at offset 0 into a
//! buffer kept between ticks, no open or close per tick.
//!
//! Failures are logged once per change of state (not every tick): a file
//! that cannot be read is closed and reopened on a later tick, and its
//! metrics are omitted meanwhile. Must never panic and never allocate per
//! tick once the buffer has grown to the file's size.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::proc::ParseError;

/// Initial size of each read buffer, in bytes; it grows (and stays grown)
/// when a file is larger.
const INITIAL_BUFFER_BYTES: usize = 4096;

/// Buffer size for one-value sysfs attributes: the kernel caps their text
/// at a page, and they hold a number.
const ATTRIBUTE_BUFFER_BYTES: usize = 64;

/// How the end of the file is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A seq_file of many records (/proc/diskstats, /proc/net/dev): the
    /// kernel may return short reads at its page-sized buffer's end before
    /// the end of the file, so the end is the read that returns 0.
    Records,
    /// A file the kernel produces whole at every read (`single_open`
    /// seq_files such as /proc/stat, /proc/meminfo, /proc/loadavg,
    /// /proc/uptime; sysfs attributes): a read shorter than the buffer is
    /// the end, which saves one `pread` per file per tick.
    Whole,
}

/// One kept-open file and its reused buffer.
#[derive(Debug)]
pub struct Source {
    path: PathBuf,
    file: Option<File>,
    shape: Shape,
    /// Zero-filled once and grown when a file outgrows it; reused every tick.
    buf: Vec<u8>,
    /// Whether the last attempt to open or read failed (warn on changes only).
    failing: bool,
    /// Whether the last read had malformed lines (warn on changes only).
    pub had_parse_errors: bool,
}

impl Source {
    /// A source for `path` with `file` already open (or `None` to open it
    /// on the first read).
    pub fn new(path: PathBuf, file: Option<File>, shape: Shape) -> Source {
        Source {
            path,
            file,
            shape,
            buf: vec![0; INITIAL_BUFFER_BYTES],
            failing: false,
            had_parse_errors: false,
        }
    }

    /// A source for a one-value sysfs attribute (small buffer, [`Shape::Whole`]).
    pub fn attribute(path: PathBuf) -> Source {
        let mut source = Source::new(path, None, Shape::Whole);
        source.buf = vec![0; ATTRIBUTE_BUFFER_BYTES];
        source.reopen();
        source
    }

    /// Opens the file, warning when that newly fails.
    pub fn open(path: PathBuf, shape: Shape) -> Source {
        let mut source = Source::new(path, None, shape);
        source.reopen();
        source
    }

    /// The path it reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How its end is found.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    fn reopen(&mut self) {
        match File::open(&self.path) {
            Ok(file) => {
                if self.failing {
                    log::info!("{} can be opened again", self.path.display());
                }
                self.file = Some(file);
                self.failing = false;
            }
            Err(err) => self.fail("open", &err),
        }
    }

    fn fail(&mut self, what: &str, err: &io::Error) {
        if !self.failing {
            log::warn!(
                "cannot {what} {}: {err}; its metrics are omitted until it can be read again",
                self.path.display()
            );
        }
        self.failing = true;
        self.file = None;
    }

    /// Re-reads the whole file from offset 0 into the buffer. Returns its
    /// bytes as read (the parsers take bytes: the kernel prints ASCII, so
    /// the whole file is never checked for UTF-8), or `None` when the file
    /// cannot be read this tick.
    pub fn read(&mut self) -> Option<&[u8]> {
        if self.file.is_none() {
            self.reopen();
        }
        let file = self.file.as_ref()?;
        let mut filled = 0;
        let result = loop {
            if filled == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            match file.read_at(&mut self.buf[filled..], filled as u64) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    filled += n;
                    if self.shape == Shape::Whole && filled < self.buf.len() {
                        break Ok(());
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => break Err(err),
            }
        };
        if let Err(err) = result {
            self.fail("read", &err);
            return None;
        }
        if self.failing {
            log::info!("{} can be read again", self.path.display());
            self.failing = false;
        }
        self.buf.get(..filled)
    }

    /// Reads and parses the file in one step: the parsed value, or `None`
    /// (unreadable, or malformed: logged once per change, counted in
    /// `parse_errors`).
    pub fn read_parsed<T>(
        &mut self,
        parse: impl FnOnce(&[u8]) -> Result<T, ParseError>,
        parse_errors: &mut u32,
    ) -> Option<T> {
        let parsed = parse(self.read()?);
        match parsed {
            Ok(value) => {
                self.had_parse_errors = false;
                Some(value)
            }
            Err(err) => {
                report_parse_error(self.had_parse_errors, &err);
                self.had_parse_errors = true;
                *parse_errors = parse_errors.saturating_add(1);
                None
            }
        }
    }
}

/// A parser of a few bytes of text (a sysfs attribute) as a parser of the
/// bytes read: invalid UTF-8 is replaced (so the value fails its parser),
/// which costs a copy only then.
pub fn text<T>(
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> impl FnOnce(&[u8]) -> Result<T, ParseError> {
    move |bytes| parse(&String::from_utf8_lossy(bytes))
}

/// Logs a malformed line: a warning the first time a file goes bad, debug
/// while it stays bad (a broken line would otherwise warn every tick).
pub fn report_parse_error(already_bad: bool, err: &ParseError) {
    if already_bad {
        log::debug!("{err}");
    } else {
        log::warn!(
            "{err}; skipping that line (further errors in this file are logged at debug level until it parses cleanly)"
        );
    }
}
