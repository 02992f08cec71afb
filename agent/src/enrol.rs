//! Getting a certificate: enrolment with a join token (first start), and
//! renewal over the current identity (before it expires).
//!
//! Enrolment connects with TLS already, checking the server against the CA
//! the token carries: a man in the middle has no certificate this CA signed,
//! so the token's secret never reaches anyone but the server. The key is
//! made here and only a certificate request leaves the box.
//!
//! A refusal of the token (unknown, used, expired, for another host) is
//! final: retrying cannot change it, so the agent stops with a clear
//! message and the exit code systemd's unit treats as "do not restart".
//! A server that cannot be reached is retried by the caller.

use std::fmt;

use monitor::csr::{KeyError, PrivateKey};
use monitor::join::JoinToken;
use monitor::pb;
use monitor::pb::collector_client::CollectorClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::identity::{Identity, token_digest};

/// Why no certificate came back.
#[derive(Debug)]
pub enum EnrolError {
    /// The server refused the token or the request: final.
    Refused(tonic::Status),
    /// The server could not be reached or answered UNAVAILABLE: retry.
    Unreachable(String),
    /// A key could not be made or used here.
    Key(KeyError),
    /// The server's answer was not a usable certificate.
    BadAnswer(&'static str),
}

impl fmt::Display for EnrolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnrolError::Refused(s) => write!(
                f,
                "the server refused: {}",
                monitor::text::Escaped::capped(s.message())
            ),
            EnrolError::Unreachable(why) => write!(f, "{why}"),
            EnrolError::Key(e) => write!(f, "{e}"),
            EnrolError::BadAnswer(what) => write!(f, "the server's answer has {what}"),
        }
    }
}

impl std::error::Error for EnrolError {}

impl EnrolError {
    /// Whether trying again later may work.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EnrolError::Unreachable(_))
    }

    fn from_status(s: tonic::Status) -> EnrolError {
        match s.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::ResourceExhausted => EnrolError::Unreachable(format!(
                "{}: {}",
                s.code(),
                monitor::text::Escaped::capped(s.message())
            )),
            _ => EnrolError::Refused(s),
        }
    }
}

/// The TLS settings that check the server against `ca_der`, under the
/// name `server_name` (the host of the URL the agent was given, never the
/// address a name resolved to) and, when given, present `identity`.
pub fn client_tls(
    ca_der: &[u8],
    identity: Option<&Identity>,
    server_name: &str,
) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(monitor::pem::encode(
            "CERTIFICATE",
            ca_der,
        )))
        .domain_name(server_name);
    match identity {
        Some(id) => {
            let c = id.credential();
            tls.identity(tonic::transport::Identity::from_pem(
                c.cert_pem(),
                c.key_pem(),
            ))
        }
        None => tls,
    }
}

fn identity_from(
    answer: pb::IssuedCertificate,
    hostname: &str,
    key: PrivateKey,
    join_token_sha256: String,
) -> Result<Identity, EnrolError> {
    if answer.certificate.is_empty() {
        return Err(EnrolError::BadAnswer("no certificate"));
    }
    if answer.ca_certificate.is_empty() {
        return Err(EnrolError::BadAnswer("no CA certificate"));
    }
    Ok(Identity {
        hostname: hostname.to_owned(),
        not_after_unix_ms: answer.not_after_unix_ms,
        renew_after_unix_ms: answer.renew_after_unix_ms,
        join_token_sha256,
        cert_der: answer.certificate,
        key_pkcs8_der: key.pkcs8_der,
        ca_der: answer.ca_certificate,
    })
}

/// Enrols `hostname` with `token` at the agent listener `endpoint`
/// (already configured for its address; TLS is added here, checking the
/// server under `server_name`).
pub async fn enrol(
    endpoint: Endpoint,
    server_name: &str,
    token: &JoinToken,
    hostname: &str,
) -> Result<Identity, EnrolError> {
    let endpoint = endpoint
        .tls_config(client_tls(&token.ca_der, None, server_name))
        .map_err(|e| EnrolError::Unreachable(format!("TLS settings: {e}")))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| EnrolError::Unreachable(monitor::cli::error_chain(&e)))?;
    let key = PrivateKey::generate().map_err(EnrolError::Key)?;
    let request = key.csr_der(hostname).map_err(EnrolError::Key)?;
    let answer = CollectorClient::new(channel)
        .enrol(pb::EnrolRequest {
            token_secret: token.secret.to_vec(),
            hostname: hostname.to_owned(),
            certificate_request: request,
        })
        .await
        .map_err(EnrolError::from_status)?
        .into_inner();
    identity_from(answer, hostname, key, token_digest(&token.secret))
}

/// Asks for a new certificate (for a new key) over an mTLS `channel`.
pub async fn renew(channel: Channel, current: &Identity) -> Result<Identity, EnrolError> {
    let key = PrivateKey::generate().map_err(EnrolError::Key)?;
    let request = key.csr_der(&current.hostname).map_err(EnrolError::Key)?;
    let answer = CollectorClient::new(channel)
        .renew(pb::RenewRequest {
            certificate_request: request,
        })
        .await
        .map_err(EnrolError::from_status)?
        .into_inner();
    identity_from(
        answer,
        &current.hostname,
        key,
        current.join_token_sha256.clone(),
    )
}
