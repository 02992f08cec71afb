//! Why a session ended: what the connection loop logs before it backs off.

use std::fmt;

/// Why a session ended.
#[derive(Debug)]
pub enum SessionError {
    Connect(tonic::transport::Error),
    /// Enrolment could not reach the server (retried).
    Enrol(String),
    Status(tonic::Status),
    /// The server closed a stream without an error.
    Closed(&'static str),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Connect(e) => {
                write!(f, "cannot connect: {}", monitor::cli::error_chain(e))
            }
            SessionError::Enrol(why) => f.write_str(why),
            SessionError::Status(s) => {
                write!(
                    f,
                    "{}: {}",
                    s.code(),
                    monitor::text::Escaped::capped(s.message())
                )?;
                // A transport failure (a refused handshake, a reset) says
                // what happened only in its causes.
                if let Some(cause) = std::error::Error::source(s) {
                    write!(f, ": {}", monitor::cli::error_chain(cause))?;
                }
                Ok(())
            }
            SessionError::Closed(what) => write!(f, "the server closed the {what} stream"),
        }
    }
}

impl std::error::Error for SessionError {}

impl From<tonic::Status> for SessionError {
    fn from(s: tonic::Status) -> Self {
        SessionError::Status(s)
    }
}
