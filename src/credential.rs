//! A TLS client identity in one file: a certificate, its private key, the
//! server's CA certificate, and a few `key = value` facts about them.
//!
//! Two uses, one format:
//! - an operator credential (`admin.cred`, or what `monitorctl operator
//!   add` writes): facts `server` (the admin API's URL) and `operator`;
//! - the agent's identity in its state directory (`identity.pem`): facts
//!   `hostname`, `not_after_unix_ms`, `renew_after_unix_ms`,
//!   `join_token_sha256`.
//!
//! One file, so a key and its certificate are replaced together (the file
//! is written atomically, mode 0600): a crash can never pair a new key
//! with an old certificate.
//!
//! ```text
//! # comment lines
//! server = https://127.0.0.1:50052
//! operator = admin
//! -----BEGIN CERTIFICATE-----      the holder's certificate
//! -----BEGIN PRIVATE KEY-----      its key (PKCS#8)
//! -----BEGIN CERTIFICATE-----      the server's CA
//! ```

use std::fmt;

use crate::pem;

/// What an identity file holds.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Credential {
    /// `key = value` facts, in file order.
    pub facts: Vec<(String, String)>,
    pub cert_der: Vec<u8>,
    pub key_pkcs8_der: Vec<u8>,
    pub ca_der: Vec<u8>,
}

impl fmt::Debug for Credential {
    // Key material never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("facts", &self.facts)
            .finish_non_exhaustive()
    }
}

/// Why a file is not a usable identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialError {
    Pem(pem::PemError),
    /// A block that should be there is not.
    Missing(&'static str),
    /// A line before the blocks that is not `key = value` (key of a-z, 0-9, _).
    BadLine(usize),
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialError::Pem(e) => write!(f, "{e}"),
            CredentialError::Missing(what) => write!(f, "no {what} in it"),
            CredentialError::BadLine(n) => write!(f, "line {n}: expected 'key = value'"),
        }
    }
}

impl std::error::Error for CredentialError {}

impl Credential {
    /// The value of fact `key`, if present.
    pub fn fact(&self, key: &str) -> Option<&str> {
        self.facts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The file's text, with `comment` (one or more lines) at the top.
    pub fn encode(&self, comment: &str) -> String {
        let mut out = String::new();
        for line in comment.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
        for (k, v) in &self.facts {
            out.push_str(k);
            out.push_str(" = ");
            out.push_str(v);
            out.push('\n');
        }
        out.push_str(&pem::encode("CERTIFICATE", &self.cert_der));
        out.push_str(&pem::encode("PRIVATE KEY", &self.key_pkcs8_der));
        out.push_str(&pem::encode("CERTIFICATE", &self.ca_der));
        out
    }

    /// Reads an identity file's text.
    pub fn decode(text: &str) -> Result<Credential, CredentialError> {
        let mut facts = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.starts_with("-----BEGIN") {
                break;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or(CredentialError::BadLine(i + 1))?;
            let key = key.trim();
            if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(CredentialError::BadLine(i + 1));
            }
            facts.push((key.to_owned(), value.trim().to_owned()));
        }
        let blocks = pem::decode_all(text).map_err(CredentialError::Pem)?;
        let mut certs = blocks.iter().filter(|b| b.label == "CERTIFICATE");
        let cert_der = certs
            .next()
            .ok_or(CredentialError::Missing("certificate"))?
            .der
            .clone();
        let ca_der = certs
            .next()
            .ok_or(CredentialError::Missing("CA certificate"))?
            .der
            .clone();
        let key_pkcs8_der = blocks
            .iter()
            .find(|b| b.label == "PRIVATE KEY")
            .ok_or(CredentialError::Missing("private key"))?
            .der
            .clone();
        Ok(Credential {
            facts,
            cert_der,
            key_pkcs8_der,
            ca_der,
        })
    }

    /// The certificate as PEM (what tonic's `Identity::from_pem` takes).
    pub fn cert_pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.cert_der)
    }

    /// The private key as PEM.
    pub fn key_pem(&self) -> String {
        pem::encode("PRIVATE KEY", &self.key_pkcs8_der)
    }

    /// The CA certificate as PEM.
    pub fn ca_pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.ca_der)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_what_is_missing() {
        let c = Credential {
            facts: vec![
                ("server".into(), "https://127.0.0.1:50052".into()),
                ("operator".into(), "admin".into()),
            ],
            cert_der: vec![1; 40],
            key_pkcs8_der: vec![2; 30],
            ca_der: vec![3; 50],
        };
        let text = c.encode("monitor operator credential\nkeep it private");
        assert!(text.starts_with("# monitor operator credential\n# keep it private\n"));
        let back = Credential::decode(&text).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.fact("operator"), Some("admin"));
        assert_eq!(back.fact("nope"), None);
        assert!(!format!("{c:?}").contains("2, 2"));
        let mut no_ca = String::from("server = x\n");
        no_ca.push_str(&pem::encode("CERTIFICATE", &[1]));
        no_ca.push_str(&pem::encode("PRIVATE KEY", &[2]));
        assert_eq!(
            Credential::decode(&no_ca),
            Err(CredentialError::Missing("CA certificate"))
        );
        assert_eq!(
            Credential::decode("Colour = blue\n"),
            Err(CredentialError::BadLine(1))
        );
        assert_eq!(
            Credential::decode("just words\n"),
            Err(CredentialError::BadLine(1))
        );
    }
}
