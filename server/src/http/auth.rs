//! Who may use the HTTP listener. Every request must prove one of:
//! - a bearer token (`Authorization: Bearer ...`) from `metrics.token` in
//!   the TLS directory (made at first start: 256 random bits as hex, mode
//!   0600) or from `--metrics-token-file`, compared in constant time
//!   (SHA-256 of both sides, then every byte);
//! - an operator's client certificate, presented in the TLS handshake
//!   (the listener asks for one but does not require it) and not revoked
//!   since;
//! - a dashboard session cookie (`session.rs`: from a one-time login URL
//!   `monitorctl dashboard` prints), naming the operator who asked.
//!
//! With `--insecure` the listener speaks plain HTTP and lets everyone in.
//!
//! Tokens are never logged; a refusal is a 401 that names no secret.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::HeaderMap;
use monitor::files::{self, SECRET_MODE};

use super::session::{self, Sessions};
use crate::listener::PeerInfo;
use crate::tls::{Role, Trust};

/// The token file the server makes in its TLS directory.
pub const TOKEN_FILE: &str = "metrics.token";

/// Who a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// `--insecure`: anyone.
    Anyone,
    /// A holder of a configured bearer token.
    Token,
    /// An operator, by their client certificate's name.
    Operator(String),
    /// An operator, by their dashboard session.
    Session(String),
}

/// Why a request was refused (a 401 says so, without secrets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    NoCredentials,
    BadToken,
}

impl Refused {
    pub fn message(self) -> &'static str {
        match self {
            Refused::NoCredentials => {
                "authentication required: Authorization: Bearer <the server's metrics.token>, \
                 an operator's client certificate, or a dashboard session (monitorctl dashboard \
                 prints a login URL)"
            }
            Refused::BadToken => "the bearer token is not one this server accepts",
        }
    }
}

/// The listener's authentication.
pub struct Auth {
    mode: Mode,
}

enum Mode {
    Open,
    Required {
        /// SHA-256 of each accepted token.
        token_digests: Vec<[u8; 32]>,
        /// To refuse a certificate revoked after its handshake.
        trust: Arc<Trust>,
        sessions: Arc<Sessions>,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.mode {
            Mode::Open => f.write_str("Auth::Open"),
            Mode::Required { token_digests, .. } => {
                write!(f, "Auth::Required({} tokens)", token_digests.len())
            }
        }
    }
}

/// Why the tokens could not be set up.
#[derive(Debug)]
pub struct TokenError {
    pub path: PathBuf,
    pub what: String,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "metrics token {}: {}", self.path.display(), self.what)
    }
}

impl std::error::Error for TokenError {}

impl Auth {
    /// No authentication (`--insecure`).
    pub fn open() -> Auth {
        Auth { mode: Mode::Open }
    }

    /// Tokens from `tls_dir/metrics.token` (made if missing) and from
    /// `extra_file`; certificates checked against `trust`; session cookies
    /// against `sessions`.
    pub fn required(
        tls_dir: &Path,
        extra_file: Option<&Path>,
        trust: Arc<Trust>,
        sessions: Arc<Sessions>,
    ) -> Result<Auth, TokenError> {
        let own = tls_dir.join(TOKEN_FILE);
        ensure_token_file(&own)?;
        let mut token_digests = vec![read_token(&own)?];
        if let Some(f) = extra_file {
            token_digests.push(read_token(f)?);
        }
        Ok(Auth {
            mode: Mode::Required {
                token_digests,
                trust,
                sessions,
            },
        })
    }

    /// Whether a request with `headers`, on a connection from `peer`, may
    /// go on, and as whom.
    pub fn check(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerInfo>,
    ) -> Result<Principal, Refused> {
        let Mode::Required {
            token_digests,
            trust,
            sessions,
        } = &self.mode
        else {
            return Ok(Principal::Anyone);
        };
        if let Some(given) = bearer(headers) {
            let digest = monitor::digest::sha256(given.as_bytes());
            // Every digest is compared, whichever matches.
            let matched = token_digests
                .iter()
                .fold(false, |any, d| any | constant_time_eq(d, &digest));
            return if matched {
                Ok(Principal::Token)
            } else {
                Err(Refused::BadToken)
            };
        }
        if let Some(id) = peer.and_then(|p| p.identity.as_ref())
            && id.role == Role::Operator
            && !trust.is_revoked(&id.fingerprint)
        {
            return Ok(Principal::Operator(id.name.clone()));
        }
        let cookie = headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session::cookie_value);
        match cookie.and_then(|c| sessions.check(c, monitor::time::now_unix_ms())) {
            Some(operator) => Ok(Principal::Session(operator)),
            None => Err(Refused::NoCredentials),
        }
    }

    /// Whether requests need no credentials (`--insecure`).
    pub fn is_open(&self) -> bool {
        matches!(self.mode, Mode::Open)
    }
}

/// The token of an `Authorization: Bearer TOKEN` header, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Equal, in a time that does not depend on where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Makes `path` with a new random 256-bit token (hex, mode 0600) unless it
/// exists.
pub fn ensure_token_file(path: &Path) -> Result<(), TokenError> {
    if path.exists() {
        return Ok(());
    }
    let token = monitor::digest::hex(&monitor::random::random_bytes::<32>());
    files::write_atomic(path, format!("{token}\n").as_bytes(), SECRET_MODE).map_err(|e| {
        TokenError {
            path: path.to_owned(),
            what: e.to_string(),
        }
    })?;
    log::info!(
        "wrote a bearer token for /metrics to {} (mode 600): give it to Prometheus as \
         authorization: credentials_file",
        path.display()
    );
    Ok(())
}

/// The SHA-256 of a token file's first line.
fn read_token(path: &Path) -> Result<[u8; 32], TokenError> {
    let err = |what: String| TokenError {
        path: path.to_owned(),
        what,
    };
    let text = files::read_text(path).map_err(|e| err(e.to_string()))?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.len() < 16 {
        return Err(err("the token must be at least 16 characters".into()));
    }
    Ok(monitor::digest::sha256(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn sessions() -> Arc<Sessions> {
        Arc::new(Sessions::default())
    }

    #[test]
    fn a_session_cookie_names_its_operator_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let trust = Arc::new(Trust::new(HashMap::new()));
        let sessions = sessions();
        let auth = Auth::required(dir.path(), None, trust, Arc::clone(&sessions)).unwrap();
        let now = monitor::time::now_unix_ms();
        let (token, _) = sessions.issue_login("alice", now);
        let s = sessions.redeem(&token, now).unwrap();
        let mut h = HeaderMap::new();
        let cookie = format!("theme=dark; monitor_session={}", s.cookie_value);
        h.insert(http::header::COOKIE, cookie.parse().unwrap());
        assert_eq!(auth.check(&h, None), Ok(Principal::Session("alice".into())));
        sessions.end_all_of("alice");
        assert_eq!(auth.check(&h, None), Err(Refused::NoCredentials));
        // A login token is not a session.
        let (token, _) = sessions.issue_login("alice", now);
        let mut h = HeaderMap::new();
        let cookie = format!("monitor_session={token}");
        h.insert(http::header::COOKIE, cookie.parse().unwrap());
        assert_eq!(auth.check(&h, None), Err(Refused::NoCredentials));
    }

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn tokens_are_made_once_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let trust = Arc::new(Trust::new(HashMap::new()));
        let auth = Auth::required(dir.path(), None, Arc::clone(&trust), sessions()).unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let token = std::fs::read_to_string(&path).unwrap().trim().to_owned();
        assert_eq!(token.len(), 64);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A second start keeps the file.
        Auth::required(dir.path(), None, Arc::clone(&trust), sessions()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), token);

        assert_eq!(
            auth.check(&headers(&format!("Bearer {token}")), None),
            Ok(Principal::Token)
        );
        assert_eq!(
            auth.check(&headers(&format!("bearer  {token} ")), None),
            Ok(Principal::Token)
        );
        assert_eq!(
            auth.check(&headers("Bearer nope"), None),
            Err(Refused::BadToken)
        );
        assert_eq!(
            auth.check(&headers(&format!("Basic {token}")), None),
            Err(Refused::NoCredentials)
        );
        assert_eq!(
            auth.check(&HeaderMap::new(), None),
            Err(Refused::NoCredentials)
        );
        assert_eq!(
            Auth::open().check(&HeaderMap::new(), None),
            Ok(Principal::Anyone)
        );
    }

    #[test]
    fn an_extra_token_file_counts_too_and_short_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let trust = Arc::new(Trust::new(HashMap::new()));
        let extra = dir.path().join("extra");
        std::fs::write(&extra, "short\n").unwrap();
        let e =
            Auth::required(dir.path(), Some(&extra), Arc::clone(&trust), sessions()).unwrap_err();
        assert!(e.to_string().contains("at least 16"), "{e}");
        std::fs::write(&extra, "0123456789abcdef-extra\n").unwrap();
        let auth = Auth::required(dir.path(), Some(&extra), trust, sessions()).unwrap();
        assert_eq!(
            auth.check(&headers("Bearer 0123456789abcdef-extra"), None),
            Ok(Principal::Token)
        );
    }
}
