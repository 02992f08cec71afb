//! The join token: one line an operator copies from `monitorctl enrol` to a
//! new box, carrying everything the agent needs for its first contact to be
//! authenticated both ways.
//!
//! - a 128-bit secret the server keeps only as a SHA-256 hash, usable once,
//!   until an expiry, for one hostname (the server checks all three);
//! - the server's CA certificate, so the agent pins the server from its
//!   first connection (a man in the middle has no certificate this CA
//!   signed), as kubeadm's join string pins the CA by hash;
//! - the agent listener's URL, so `--join` alone is enough;
//! - the operators' Ed25519 public keys the agent will trust for signed
//!   commands (trust-on-enrolment; `/etc/monitor/operators` is the way that
//!   does not go through the server).
//!
//! Text form: `monitor-join-1.` then the payload in URL-safe base64, so it
//! survives a shell, an environment file and a URL. The payload is a small
//! binary layout (below) read strictly: a wrong version, a truncated field
//! or trailing bytes are errors, never a guess.
//!
//! ```text
//! u8  version (1)
//! 16  secret
//! i64 expires_unix_ms, big-endian
//! u8  hostname length, hostname (ASCII)
//! u16 server URL length, big-endian, URL (may be empty)
//! u16 CA certificate length, big-endian, CA certificate (DER)
//! u8  operator key count, 32 bytes each
//! ```

use std::fmt;

use crate::base64::{self, Alphabet};

/// What a join token starts with.
pub const PREFIX: &str = "monitor-join-1.";
/// Bytes of the secret.
pub const SECRET_BYTES: usize = 16;
/// Bytes of an Ed25519 public key.
pub const OPERATOR_KEY_BYTES: usize = 32;
/// Longest token text accepted (a CA certificate is about 500 bytes).
pub const MAX_TOKEN_CHARS: usize = 16 * 1024;

/// A decoded join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub secret: [u8; SECRET_BYTES],
    pub expires_unix_ms: i64,
    /// The only hostname this token enrols.
    pub hostname: String,
    /// The agent listener, e.g. `https://monitor.lan:50051`; may be empty.
    pub server_url: String,
    /// The server's CA certificate, DER.
    pub ca_der: Vec<u8>,
    /// Operators' Ed25519 public keys for signed commands.
    pub operator_keys: Vec<[u8; OPERATOR_KEY_BYTES]>,
}

impl fmt::Debug for JoinToken {
    // The secret never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("hostname", &self.hostname)
            .field("expires_unix_ms", &self.expires_unix_ms)
            .field("server_url", &self.server_url)
            .field("ca_der_bytes", &self.ca_der.len())
            .field("operator_keys", &self.operator_keys.len())
            .finish_non_exhaustive()
    }
}

/// Why a text is not a join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinTokenError {
    NotAToken,
    TooLong(usize),
    Base64(base64::DecodeError),
    UnknownVersion(u8),
    Truncated(&'static str),
    TrailingBytes(usize),
    BadHostname,
    BadUrl,
    FieldTooLong(&'static str),
}

impl fmt::Display for JoinTokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinTokenError::NotAToken => write!(
                f,
                "not a join token (it starts with '{PREFIX}'; get one from 'monitorctl enrol HOSTNAME')"
            ),
            JoinTokenError::TooLong(n) => {
                write!(f, "join token is {n} characters, at most {MAX_TOKEN_CHARS}")
            }
            JoinTokenError::Base64(e) => write!(f, "join token is damaged: {e}"),
            JoinTokenError::UnknownVersion(v) => write!(
                f,
                "join token has version {v}, this agent reads version 1 (upgrade the agent)"
            ),
            JoinTokenError::Truncated(field) => {
                write!(f, "join token is damaged: it ends inside {field}")
            }
            JoinTokenError::TrailingBytes(n) => {
                write!(f, "join token is damaged: {n} bytes after its end")
            }
            JoinTokenError::BadHostname => f.write_str("join token names an unusable hostname"),
            JoinTokenError::BadUrl => f.write_str("join token carries an unusable server URL"),
            JoinTokenError::FieldTooLong(field) => {
                write!(f, "cannot make a join token: {field} is too long")
            }
        }
    }
}

impl std::error::Error for JoinTokenError {}

impl JoinToken {
    /// The token's text form.
    pub fn encode(&self) -> Result<String, JoinTokenError> {
        let mut p = Vec::with_capacity(64 + self.ca_der.len() + 32 * self.operator_keys.len());
        p.push(1);
        p.extend_from_slice(&self.secret);
        p.extend_from_slice(&self.expires_unix_ms.to_be_bytes());
        let host = u8::try_from(self.hostname.len())
            .map_err(|_| JoinTokenError::FieldTooLong("hostname"))?;
        p.push(host);
        p.extend_from_slice(self.hostname.as_bytes());
        for (field, bytes) in [
            ("server URL", self.server_url.as_bytes()),
            ("CA certificate", &self.ca_der[..]),
        ] {
            let len =
                u16::try_from(bytes.len()).map_err(|_| JoinTokenError::FieldTooLong(field))?;
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(bytes);
        }
        let keys = u8::try_from(self.operator_keys.len())
            .map_err(|_| JoinTokenError::FieldTooLong("operator keys"))?;
        p.push(keys);
        for k in &self.operator_keys {
            p.extend_from_slice(k);
        }
        Ok(format!("{PREFIX}{}", base64::encode(&p, Alphabet::UrlSafe)))
    }

    /// Reads a token's text form (surrounding white space ignored).
    pub fn decode(text: &str) -> Result<JoinToken, JoinTokenError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_CHARS {
            return Err(JoinTokenError::TooLong(text.len()));
        }
        let body = text.strip_prefix(PREFIX).ok_or(JoinTokenError::NotAToken)?;
        let bytes = base64::decode(body, Alphabet::UrlSafe).map_err(JoinTokenError::Base64)?;
        let mut r = Reader(&bytes);
        let version = r.take(1, "the version")?[0];
        if version != 1 {
            return Err(JoinTokenError::UnknownVersion(version));
        }
        let mut secret = [0; SECRET_BYTES];
        secret.copy_from_slice(r.take(SECRET_BYTES, "the secret")?);
        let mut expiry = [0; 8];
        expiry.copy_from_slice(r.take(8, "the expiry")?);
        let host_len = usize::from(r.take(1, "the hostname")?[0]);
        let hostname = String::from_utf8(r.take(host_len, "the hostname")?.to_vec())
            .map_err(|_| JoinTokenError::BadHostname)?;
        if !crate::wire::valid_hostname(&hostname) {
            return Err(JoinTokenError::BadHostname);
        }
        let url = r.take_u16_prefixed("the server URL")?;
        let server_url = String::from_utf8(url.to_vec()).map_err(|_| JoinTokenError::BadUrl)?;
        if server_url
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(JoinTokenError::BadUrl);
        }
        let ca_der = r.take_u16_prefixed("the CA certificate")?.to_vec();
        let keys = usize::from(r.take(1, "the operator keys")?[0]);
        let mut operator_keys = Vec::with_capacity(keys);
        for _ in 0..keys {
            let mut k = [0; OPERATOR_KEY_BYTES];
            k.copy_from_slice(r.take(OPERATOR_KEY_BYTES, "the operator keys")?);
            operator_keys.push(k);
        }
        if !r.0.is_empty() {
            return Err(JoinTokenError::TrailingBytes(r.0.len()));
        }
        Ok(JoinToken {
            secret,
            expires_unix_ms: i64::from_be_bytes(expiry),
            hostname,
            server_url,
            ca_der,
            operator_keys,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], JoinTokenError> {
        if self.0.len() < n {
            return Err(JoinTokenError::Truncated(field));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn take_u16_prefixed(&mut self, field: &'static str) -> Result<&'a [u8], JoinTokenError> {
        let len = self.take(2, field)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        self.take(len, field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken {
            secret: [7; SECRET_BYTES],
            expires_unix_ms: 1_795_608_000_000,
            hostname: "pi-kitchen".into(),
            server_url: "https://monitor.lan:50051".into(),
            ca_der: (0..=255).cycle().take(480).collect(),
            operator_keys: vec![[1; 32], [2; 32]],
        }
    }

    #[test]
    fn round_trips_and_stays_one_shell_word() {
        let t = token();
        let text = t.encode().unwrap();
        assert!(text.starts_with(PREFIX));
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "{text}"
        );
        assert_eq!(JoinToken::decode(&format!("  {text}\n")).unwrap(), t);
        // The secret never shows in Debug.
        assert!(!format!("{t:?}").contains("7, 7"));
    }

    #[test]
    fn damaged_tokens_are_named() {
        let text = token().encode().unwrap();
        assert_eq!(JoinToken::decode("hello"), Err(JoinTokenError::NotAToken));
        let body = base64::decode(&text[PREFIX.len()..], Alphabet::UrlSafe).unwrap();
        let reencode = |b: &[u8]| format!("{PREFIX}{}", base64::encode(b, Alphabet::UrlSafe));
        // Every truncation is an error, never a panic or a shorter token.
        for cut in 0..body.len() {
            assert!(
                matches!(
                    JoinToken::decode(&reencode(&body[..cut])),
                    Err(JoinTokenError::Truncated(_))
                ),
                "cut at {cut}"
            );
        }
        let mut longer = body.clone();
        longer.push(0);
        assert_eq!(
            JoinToken::decode(&reencode(&longer)),
            Err(JoinTokenError::TrailingBytes(1))
        );
        let mut v2 = body.clone();
        v2[0] = 2;
        assert_eq!(
            JoinToken::decode(&reencode(&v2)),
            Err(JoinTokenError::UnknownVersion(2))
        );
        let mut bad_host = body.clone();
        bad_host[1 + SECRET_BYTES + 8 + 1] = b' ';
        assert_eq!(
            JoinToken::decode(&reencode(&bad_host)),
            Err(JoinTokenError::BadHostname)
        );
        assert!(matches!(
            JoinToken::decode(&format!("{PREFIX}%%%")),
            Err(JoinTokenError::Base64(_))
        ));
        // The length cap is exact: at the cap the text is read (and is no
        // token), one more character is refused before any decoding.
        assert_eq!(
            JoinToken::decode(&"x".repeat(MAX_TOKEN_CHARS)),
            Err(JoinTokenError::NotAToken)
        );
        assert_eq!(
            JoinToken::decode(&"x".repeat(MAX_TOKEN_CHARS + 1)),
            Err(JoinTokenError::TooLong(MAX_TOKEN_CHARS + 1))
        );
    }

    #[test]
    fn a_server_url_with_a_space_or_a_control_character_is_refused() {
        // The URL goes into the agent's settings file and its logs: a space
        // (white space, not a control character) and an escape (a control
        // character, not white space) are each refused on their own.
        for url in [
            "https://monitor.lan:50051 x",
            "https://monitor.lan\u{1b}[2J",
        ] {
            let text = JoinToken {
                server_url: url.into(),
                ..token()
            }
            .encode()
            .unwrap();
            assert_eq!(
                JoinToken::decode(&text),
                Err(JoinTokenError::BadUrl),
                "{url:?}"
            );
        }
    }
}
