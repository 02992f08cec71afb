//! Operators' signing keys and signed commands: what lets an agent obey
//! only what an operator allowed, even if the server is compromised.
//!
//! An operator's Ed25519 key lives with monitorctl (never on the server);
//! only its public key is registered with the server, which puts it in the
//! join tokens it makes. Agents trust the public keys in their operators
//! file (`/etc/monitor/operators`, installed outside the server's reach) and
//! those their join token carried (trust on enrolment).
//!
//! A signed command is a [`pb::CommandGrant`] encoded to bytes, signed over
//! `"monitor-command-v1" || 0x00 || bytes`, and sent with the signature and
//! the public key. The agent verifies the signature over the exact bytes
//! before decoding them ([`verify`]), then checks the grant itself
//! (`monitor::command::check_grant`).
//!
//! The operators file, one key per line, `#` comments:
//!
//! ```text
//! # name  key
//! alice   ed25519:3q2-7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
//! ```

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::base64::{self, Alphabet};

/// What every signature covers before the grant's bytes (domain
/// separation: no other signature by the same key can pass for a command).
pub const SIGNATURE_CONTEXT: &[u8] = b"monitor-command-v1\0";
/// Bytes of an Ed25519 public key.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;
/// Prefix of a public key in an operators file.
pub const KEY_PREFIX: &str = "ed25519:";

/// An operator's private signing key (PKCS#8, what PEM calls `PRIVATE KEY`).
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    pkcs8: Vec<u8>,
    public: [u8; PUBLIC_KEY_BYTES],
}

impl fmt::Debug for SigningKey {
    // Key material never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", short(&self.public))
    }
}

/// A signing key that could not be made or read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<SigningKey, KeyError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| KeyError("cannot generate an Ed25519 key".into()))?;
        SigningKey::from_pkcs8(doc.as_ref().to_vec())
    }

    pub fn from_pkcs8(pkcs8: Vec<u8>) -> Result<SigningKey, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
            .map_err(|_| KeyError("not an Ed25519 private key (PKCS#8)".into()))?;
        let mut public = [0; PUBLIC_KEY_BYTES];
        public.copy_from_slice(pair.public_key().as_ref());
        Ok(SigningKey { pkcs8, public })
    }

    /// The key as a PEM file's text.
    pub fn to_pem(&self) -> String {
        crate::pem::encode("PRIVATE KEY", &self.pkcs8)
    }

    /// Reads a key from a PEM file's text.
    pub fn from_pem(text: &str) -> Result<SigningKey, KeyError> {
        let blocks = crate::pem::decode_all(text).map_err(|e| KeyError(e.to_string()))?;
        let block = blocks
            .into_iter()
            .find(|b| b.label == "PRIVATE KEY")
            .ok_or_else(|| KeyError("no PRIVATE KEY block".into()))?;
        SigningKey::from_pkcs8(block.der)
    }

    pub fn public_key(&self) -> [u8; PUBLIC_KEY_BYTES] {
        self.public
    }

    /// Signs `grant` (an encoded `CommandGrant`).
    pub fn sign(&self, grant: &[u8]) -> Result<[u8; SIGNATURE_BYTES], KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&self.pkcs8)
            .map_err(|_| KeyError("not an Ed25519 private key (PKCS#8)".into()))?;
        let mut message = Vec::with_capacity(SIGNATURE_CONTEXT.len() + grant.len());
        message.extend_from_slice(SIGNATURE_CONTEXT);
        message.extend_from_slice(grant);
        let mut out = [0; SIGNATURE_BYTES];
        out.copy_from_slice(pair.sign(&message).as_ref());
        Ok(out)
    }
}

/// Whether `signature` is `public_key`'s signature over `grant` (with the
/// context prefix). Anything malformed is simply false.
pub fn verify(public_key: &[u8], grant: &[u8], signature: &[u8]) -> bool {
    if public_key.len() != PUBLIC_KEY_BYTES || signature.len() != SIGNATURE_BYTES {
        return false;
    }
    let mut message = Vec::with_capacity(SIGNATURE_CONTEXT.len() + grant.len());
    message.extend_from_slice(SIGNATURE_CONTEXT);
    message.extend_from_slice(grant);
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&message, signature)
        .is_ok()
}

/// The first 8 bytes of a key, in hex: how logs name a key.
pub fn short(key: &[u8]) -> String {
    crate::digest::hex(&key[..key.len().min(8)])
}

/// A public key as an operators file writes it.
pub fn key_text(key: &[u8; PUBLIC_KEY_BYTES]) -> String {
    format!("{KEY_PREFIX}{}", base64::encode(key, Alphabet::UrlSafe))
}

/// A trusted operator key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorKey {
    /// For logs only.
    pub name: String,
    pub key: [u8; PUBLIC_KEY_BYTES],
}

impl OperatorKey {
    /// The operators file's line for this key.
    pub fn line(&self) -> String {
        format!("{} {}", self.name, key_text(&self.key))
    }
}

/// An operators file line that is not `NAME ed25519:KEY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeysError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for KeysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for KeysError {}

/// Parses an operators file: `NAME ed25519:KEY` per line, `#` comments and
/// blank lines ignored, names of letters, digits, '.', '-', '_'.
pub fn parse_keys(text: &str) -> Result<Vec<OperatorKey>, KeysError> {
    let mut keys = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |message: String| KeysError {
            line: i + 1,
            message,
        };
        let mut words = line.split_whitespace();
        let (Some(name), Some(key), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad("expected 'NAME ed25519:KEY'".into()));
        };
        if !crate::wire::valid_hostname(name) {
            return Err(bad(format!(
                "the name '{}' has characters other than letters, digits, '.', '-' and '_'",
                crate::text::Escaped::capped(name)
            )));
        }
        let encoded = key
            .strip_prefix(KEY_PREFIX)
            .ok_or_else(|| bad(format!("the key must start with '{KEY_PREFIX}'")))?;
        let bytes = base64::decode(encoded, Alphabet::UrlSafe)
            .map_err(|e| bad(format!("the key is damaged: {e}")))?;
        let key: [u8; PUBLIC_KEY_BYTES] = bytes.try_into().map_err(|b: Vec<u8>| {
            bad(format!(
                "the key is {} bytes, an Ed25519 key is {PUBLIC_KEY_BYTES}",
                b.len()
            ))
        })?;
        keys.push(OperatorKey {
            name: name.to_owned(),
            key,
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_for_the_exact_bytes_only() {
        let key = SigningKey::generate().unwrap();
        let grant = b"the grant's exact bytes".to_vec();
        let sig = key.sign(&grant).unwrap();
        let public = key.public_key();
        assert!(verify(&public, &grant, &sig));
        // One byte changed anywhere: refused.
        for i in 0..grant.len() {
            let mut g = grant.clone();
            g[i] ^= 1;
            assert!(!verify(&public, &g, &sig), "byte {i}");
        }
        let mut s = sig;
        s[10] ^= 1;
        assert!(!verify(&public, &grant, &s));
        let other = SigningKey::generate().unwrap();
        assert!(!verify(&other.public_key(), &grant, &sig));
        // Malformed lengths are false, never a panic.
        assert!(!verify(&public[..31], &grant, &sig));
        assert!(!verify(&public, &grant, &sig[..63]));
        // The context is part of what is signed: a bare signature of the
        // grant by the same key does not pass.
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&key.pkcs8).unwrap();
        let bare = pair.sign(&grant);
        assert!(!verify(&public, &grant, bare.as_ref()));
    }

    #[test]
    fn a_key_is_named_by_its_first_8_bytes_and_errors_by_their_message() {
        let key: Vec<u8> = (0xa0..0xc0).collect();
        assert_eq!(short(&key), "a0a1a2a3a4a5a6a7");
        assert_eq!(short(&key[..3]), "a0a1a2");
        let generated = SigningKey::generate().unwrap();
        assert_eq!(
            format!("{generated:?}"),
            format!("SigningKey({})", short(&generated.public_key()))
        );
        let err = SigningKey::from_pkcs8(vec![1, 2, 3]).unwrap_err();
        assert_eq!(err.to_string(), "not an Ed25519 private key (PKCS#8)");
    }

    #[test]
    fn keys_round_trip_through_pem_and_operators_files() {
        let key = SigningKey::generate().unwrap();
        let back = SigningKey::from_pem(&key.to_pem()).unwrap();
        assert_eq!(back, key);
        assert!(format!("{key:?}").starts_with("SigningKey("));
        let line = OperatorKey {
            name: "alice".into(),
            key: key.public_key(),
        }
        .line();
        let text = format!("# operators\n\n{line}  # laptop\n");
        let keys = parse_keys(&text).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].name, "alice");
        assert_eq!(keys[0].key, key.public_key());
    }

    #[test]
    fn broken_operators_files_are_named() {
        let check = |text: &str, expected: &str| {
            assert_eq!(parse_keys(text).unwrap_err().to_string(), expected);
        };
        check("alice\n", "line 1: expected 'NAME ed25519:KEY'");
        check("\nalice x y\n", "line 2: expected 'NAME ed25519:KEY'");
        check(
            "alice rsa:AAAA\n",
            "line 1: the key must start with 'ed25519:'",
        );
        check(
            "alice ed25519:AAAA\n",
            "line 1: the key is 3 bytes, an Ed25519 key is 32",
        );
        check(
            "alice ed25519:!!!!\n",
            "line 1: the key is damaged: invalid base64 character at offset 0",
        );
        check(
            "al/ice ed25519:AAAA\n",
            "line 1: the name 'al/ice' has characters other than letters, digits, '.', '-' and '_'",
        );
    }
}
