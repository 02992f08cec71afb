//! The agent's TLS identity, kept in its state directory: its private key
//! (made on this box at enrolment, never sent anywhere), the certificate
//! the server signed for it, the server's CA, and when to renew.
//!
//! One file, `identity.pem` (mode 0600, replaced atomically), so a key and
//! its certificate always change together. The state directory is the
//! unit's `StateDirectory=` (`/var/lib/monitor-agent`), or `--state-dir`.
//!
//! Also remembered: the SHA-256 of the join token that made it, so a start
//! with the same `MONITOR_JOIN` still in the environment file does not try
//! to spend the token again; a different token means "enrol again".

use std::fmt;
use std::path::{Path, PathBuf};

use monitor::credential::{Credential, CredentialError};
use monitor::files::{self, FileError, SECRET_MODE};

/// The file in the state directory.
pub const IDENTITY_FILE: &str = "identity.pem";

/// An identity the server issued.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name in the certificate: what the server knows this agent as.
    pub hostname: String,
    pub not_after_unix_ms: i64,
    pub renew_after_unix_ms: i64,
    /// Hex SHA-256 of the join token's secret that made it (empty after a
    /// renewal kept the enrolment's).
    pub join_token_sha256: String,
    pub cert_der: Vec<u8>,
    pub key_pkcs8_der: Vec<u8>,
    pub ca_der: Vec<u8>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("hostname", &self.hostname)
            .field("not_after_unix_ms", &self.not_after_unix_ms)
            .field("renew_after_unix_ms", &self.renew_after_unix_ms)
            .finish_non_exhaustive()
    }
}

/// The identity file exists but cannot be used.
#[derive(Debug)]
pub enum IdentityError {
    File(FileError),
    Bad { path: PathBuf, detail: String },
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::File(e) => write!(f, "{e}"),
            IdentityError::Bad { path, detail } => write!(
                f,
                "{} is damaged ({detail}): remove it and enrol again with a new join token",
                path.display()
            ),
        }
    }
}

impl std::error::Error for IdentityError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IdentityError::File(e) => Some(e),
            IdentityError::Bad { .. } => None,
        }
    }
}

/// Hex SHA-256 of a join token's secret.
pub fn token_digest(secret: &[u8]) -> String {
    monitor::digest::hex(&monitor::digest::sha256(secret))
}

impl Identity {
    /// The identity in `state_dir`, or `None` if the agent never enrolled.
    pub fn load(state_dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = state_dir.join(IDENTITY_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = files::read_text(&path).map_err(IdentityError::File)?;
        let bad = |detail: String| IdentityError::Bad {
            path: path.clone(),
            detail,
        };
        let c = Credential::decode(&text).map_err(|e: CredentialError| bad(e.to_string()))?;
        let number = |key: &'static str| -> Result<i64, IdentityError> {
            c.fact(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad(format!("no {key}")))
        };
        let hostname = c
            .fact("hostname")
            .filter(|h| monitor::wire::valid_hostname(h))
            .ok_or_else(|| bad("no usable hostname".into()))?
            .to_owned();
        Ok(Some(Identity {
            hostname,
            not_after_unix_ms: number("not_after_unix_ms")?,
            renew_after_unix_ms: number("renew_after_unix_ms")?,
            join_token_sha256: c.fact("join_token_sha256").unwrap_or("").to_owned(),
            cert_der: c.cert_der,
            key_pkcs8_der: c.key_pkcs8_der,
            ca_der: c.ca_der,
        }))
    }

    /// Writes the identity into `state_dir` (created 0700 if missing).
    pub fn save(&self, state_dir: &Path) -> Result<(), IdentityError> {
        files::create_private_dir(state_dir).map_err(IdentityError::File)?;
        let c = self.credential();
        let text = c.encode(&format!(
            "monitor-agent identity of \"{}\": its private key, its certificate and the\n\
             server's CA. Made on this box at enrolment; keep it private.",
            self.hostname
        ));
        files::write_atomic(&state_dir.join(IDENTITY_FILE), text.as_bytes(), SECRET_MODE)
            .map_err(IdentityError::File)
    }

    /// The same facts in the shared identity-file form (PEM helpers).
    pub fn credential(&self) -> Credential {
        Credential {
            facts: vec![
                ("hostname".into(), self.hostname.clone()),
                (
                    "not_after_unix_ms".into(),
                    self.not_after_unix_ms.to_string(),
                ),
                (
                    "renew_after_unix_ms".into(),
                    self.renew_after_unix_ms.to_string(),
                ),
                ("join_token_sha256".into(), self.join_token_sha256.clone()),
            ],
            cert_der: self.cert_der.clone(),
            key_pkcs8_der: self.key_pkcs8_der.clone(),
            ca_der: self.ca_der.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_private_and_loads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("agent-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(Identity::load(&dir).unwrap(), None);
        let id = Identity {
            hostname: "pi-1".into(),
            not_after_unix_ms: 2_000,
            renew_after_unix_ms: 1_500,
            join_token_sha256: token_digest(b"secret"),
            cert_der: vec![1, 2, 3],
            key_pkcs8_der: vec![4, 5, 6],
            ca_der: vec![7, 8],
        };
        id.save(&dir).unwrap();
        let file = dir.join(IDENTITY_FILE);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Identity::load(&dir).unwrap(), Some(id));
        std::fs::write(&file, "hostname = x\n").unwrap();
        let err = Identity::load(&dir).unwrap_err().to_string();
        assert!(err.contains("is damaged (no certificate in it)"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
