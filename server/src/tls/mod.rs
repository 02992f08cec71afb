//! TLS on every listener: the server's certificate authority
//! ([`authority`]), who a peer is ([`trust`]) and the rustls configuration
//! of each listener.
//!
//! The agents' listener asks for a client certificate but lets a peer
//! without one through the handshake, because enrolment (a join token and a
//! certificate request) happens before the agent has a certificate; every
//! other RPC there refuses a peer without an agent identity. The operator
//! API requires an operator certificate in the handshake itself.
//!
//! rustls with ring only: no OpenSSL, no aws-lc (nothing that breaks the
//! ARM cross-builds), TLS 1.2 and 1.3, ALPN `h2` (gRPC).

pub mod authority;
pub mod setup;
pub mod trust;

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

pub use authority::{Authority, Issued, RequestError, ServerIdentity, TlsError};
pub use trust::{Identity, KnownCert, Refused, Trust};

/// SHA-256 of a certificate's DER: how the store and the trust table name
/// a certificate.
pub type Fingerprint = [u8; 32];

pub fn fingerprint(der: &[u8]) -> Fingerprint {
    monitor::digest::sha256(der)
}

pub use monitor::digest::hex;

/// What a client certificate may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Report samples and hold a command stream, as its hostname.
    Agent,
    /// Use the operator API.
    Operator,
}

impl Role {
    /// The name the store writes (part of its format) and certificates
    /// carry as their OU.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Operator => "operator",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        [Role::Agent, Role::Operator]
            .into_iter()
            .find(|r| r.name() == name)
    }
}

/// Whether a listener's handshake requires a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCert {
    /// Asked for, not required (the agents' listener: enrolment comes
    /// first). RPCs check the identity themselves.
    Optional,
    /// Required in the handshake (the operator API).
    Required,
}

/// The rustls configuration of a listener whose clients act in `role`.
pub fn server_config(
    identity: &ServerIdentity,
    ca_der: &[u8],
    trust: Arc<Trust>,
    role: Role,
    client_cert: ClientCert,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec()))?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = match client_cert {
        ClientCert::Optional => builder.allow_unauthenticated(),
        ClientCert::Required => builder,
    };
    let webpki = builder
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let verifier = Arc::new(trust::ClientVerifier {
        webpki,
        trust,
        role,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![
                CertificateDer::from(identity.cert_der.clone()),
                CertificateDer::from(ca_der.to_vec()),
            ],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der.clone())),
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
