//! Writing to the terminal (or whatever reads monitorctl's output).
//!
//! Results go to stdout, where a closed pipe (`monitorctl ... | head`) ends
//! monitorctl quietly; a command's stderr and monitorctl's own notes go to
//! stderr. Nothing here escapes text: callers hand over text that is
//! already safe (see `lines.rs`, `table.rs` and `monitor::text`).

use std::io::Write as _;

/// Longest message from the server (a rejection, an error) shown to the
/// operator, in bytes: long enough for any honest one.
pub const MESSAGE_MAX_BYTES: usize = 4096;

/// One of the two outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// Where a command's output stream number from the wire goes: its
    /// stderr to stderr, anything else to stdout.
    pub fn of_output(stream: i32) -> Stream {
        if stream == monitor::pb::OutputStream::Stderr as i32 {
            Stream::Stderr
        } else {
            Stream::Stdout
        }
    }
}

/// Why stdout could not be written.
#[derive(Debug)]
pub enum WriteError {
    /// Its reader went away (`monitorctl ... | head`).
    Closed,
    Failed(std::io::Error),
}

/// Writes `text` to `stream` and flushes it.
pub fn write(stream: Stream, text: &str) -> Result<(), WriteError> {
    match stream {
        Stream::Stdout => print_out(text.as_bytes()),
        Stream::Stderr => {
            // A failed write to stderr has nowhere left to be reported;
            // the exit code still tells how the operation went.
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
            Ok(())
        }
    }
}

/// Writes `bytes` to stdout and flushes them.
pub fn print_out(bytes: &[u8]) -> Result<(), WriteError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(WriteError::Closed),
        Err(e) => Err(WriteError::Failed(e)),
    }
}
