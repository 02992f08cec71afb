//! How a monitorctl invocation ends: [`CtlError`] and its exit code (0 ok,
//! 1 the operation failed, 2 usage error, 3 server unreachable or no usable
//! operator credential).
//!
//! The exit codes are decided here and only here. An error keeps its cause
//! (a transport error, a gRPC status, an I/O error) so `main` can print
//! the whole chain once; a server's message is escaped when displayed,
//! never trusted to be printable.

use std::fmt;

use monitor::text::Escaped;

use crate::args::UsageError;
use crate::term::{MESSAGE_MAX_BYTES, WriteError};

/// Why monitorctl stops early or fails.
#[derive(Debug)]
pub enum CtlError {
    /// Bad arguments: exit 2.
    Usage(UsageError),
    /// No usable operator credential: exit 3 (the server cannot be used).
    Credential(String),
    /// A file monitorctl writes (a credential, a key) could not be: exit 1.
    File(monitor::files::FileError),
    /// The server cannot be reached: exit 3.
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    /// The server answered with an error: exit 3 when it is unavailable, 2
    /// when it calls the request invalid, 1 otherwise.
    Status(tonic::Status),
    /// The output could not be written (other than a closed pipe): exit 1.
    Stdout(std::io::Error),
    /// The output could not be encoded as JSON: exit 1.
    Json(serde_json::Error),
    /// Ctrl-C twice during an exec: exit 1.
    Interrupted,
    /// The failure was already printed (e.g. per-host results): exit 1.
    Reported,
    /// Stdout was closed by its reader (`monitorctl ... | head`): exit 0.
    StdoutClosed,
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => 2,
            CtlError::Connect { .. } | CtlError::Credential(_) => 3,
            CtlError::File(_) => 1,
            // The connection broke under the call (a refused handshake, a
            // plain-text client at a TLS port): the server is not usable
            // from here.
            CtlError::Status(s) if std::error::Error::source(s).is_some() => 3,
            CtlError::Status(s) => match s.code() {
                tonic::Code::Unavailable => 3,
                tonic::Code::InvalidArgument => 2,
                _ => 1,
            },
            CtlError::Stdout(_) | CtlError::Json(_) | CtlError::Interrupted => 1,
            CtlError::Reported => 1,
            CtlError::StdoutClosed => 0,
        }
    }

    /// Whether `main` still has to print this error (some end quietly
    /// because they were printed already or nobody is reading).
    pub fn needs_report(&self) -> bool {
        !matches!(self, CtlError::Reported | CtlError::StdoutClosed)
    }
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlError::Usage(e) => e.fmt(f),
            CtlError::Connect { url, .. } => write!(f, "cannot reach the server at {url}"),
            CtlError::Credential(why) => f.write_str(why),
            CtlError::File(e) => write!(f, "{e}"),
            CtlError::Status(s) => {
                let message = Escaped::with_limit(s.message(), MESSAGE_MAX_BYTES);
                match s.code() {
                    tonic::Code::Unavailable => write!(f, "server unavailable: {message}")?,
                    _ => message.fmt(f)?,
                }
                if let Some(cause) = std::error::Error::source(s) {
                    let chain = monitor::cli::error_chain(cause);
                    write!(f, ": {chain}")?;
                    // A refused certificate says so in its alert; anything
                    // else below the call is most often a plain-text client
                    // at a TLS server or the reverse.
                    if chain.contains("Certificate") || chain.contains("certificate") {
                        f.write_str(" (the server refused this credential: revoked or expired?)")?;
                    } else {
                        f.write_str(
                            " (a server started with --insecure needs monitorctl --insecure, \
                             and one with TLS needs it without)",
                        )?;
                    }
                }
                Ok(())
            }
            CtlError::Stdout(_) => f.write_str("cannot write to stdout"),
            CtlError::Json(_) => f.write_str("cannot encode the JSON output"),
            CtlError::Interrupted => f.write_str("interrupted"),
            CtlError::Reported => f.write_str("failed"),
            CtlError::StdoutClosed => f.write_str("stdout closed"),
        }
    }
}

impl std::error::Error for CtlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CtlError::Connect { source, .. } => Some(source),
            CtlError::File(e) => Some(e),
            CtlError::Stdout(e) => Some(e),
            CtlError::Json(e) => Some(e),
            _ => None,
        }
    }
}

impl From<UsageError> for CtlError {
    fn from(e: UsageError) -> CtlError {
        CtlError::Usage(e)
    }
}

impl From<tonic::Status> for CtlError {
    fn from(s: tonic::Status) -> CtlError {
        CtlError::Status(s)
    }
}

impl From<WriteError> for CtlError {
    fn from(e: WriteError) -> CtlError {
        match e {
            WriteError::Closed => CtlError::StdoutClosed,
            WriteError::Failed(e) => CtlError::Stdout(e),
        }
    }
}

impl From<serde_json::Error> for CtlError {
    fn from(e: serde_json::Error) -> CtlError {
        CtlError::Json(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_exit_codes_and_escaped_messages() {
        let e = CtlError::from(tonic::Status::unavailable("down"));
        assert_eq!(
            (e.exit_code(), e.to_string()),
            (3, "server unavailable: down".into())
        );
        let e = CtlError::from(tonic::Status::invalid_argument("bad limit"));
        assert_eq!((e.exit_code(), e.to_string()), (2, "bad limit".into()));
        let e = CtlError::from(tonic::Status::not_found("unknown host 'x\x1b[2J'"));
        assert_eq!(
            (e.exit_code(), e.to_string()),
            (1, "unknown host 'x\\x1b[2J'".into())
        );
        assert_eq!(CtlError::StdoutClosed.exit_code(), 0);
        assert!(!CtlError::Reported.needs_report());
        assert!(CtlError::Interrupted.needs_report());
    }
}
