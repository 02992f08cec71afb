//! Trust decisions: join tokens, certificates for agents and operators,
//! revocation. The gRPC services (`ingest.rs` for Enrol and Renew,
//! `admin.rs` for the operator's RPCs) delegate here.
//!
//! Order of every change: the store first (it is the truth), then the
//! in-memory trust table the handshakes read. A join token is spent in the
//! same transaction that records the certificate it bought, so two agents
//! racing with one token get one certificate between them; a certificate
//! the store did not record opens nothing (see `tls/trust.rs`).
//!
//! Never trusted from a request: the name in a certificate (it comes from
//! the token or the operator's command), and the role.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use monitor::join::JoinToken;
use monitor::pb;
use monitor::text::Escaped;
use monitor::time::Rfc3339;
use tonic::Status;

use crate::registry::Registry;
use crate::store::{CertificateRecord, JoinTokenRecord, SigningKeyRecord, Store, TokenRefusal};
use crate::tls::{Authority, Identity, Issued, KnownCert, Role, Trust};

/// A join token lives this long unless the operator says otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// And at most this long.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 86_400);
/// Operators' certificates live this long (a new one: `operator add`).
pub const OPERATOR_CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// What the trust RPCs need.
pub struct Enrolment {
    pub authority: Arc<Authority>,
    pub trust: Arc<Trust>,
    pub store: Store,
    pub registry: Arc<Registry>,
    /// The agents' URL join tokens carry.
    pub public_url: String,
    pub agent_cert_lifetime: Duration,
    /// Operators' public signing keys → (operator, revoked), the store's
    /// copy: join tokens carry the good ones, and a signed exec must be
    /// signed by a key of the operator who sends it.
    pub signing_keys: RwLock<HashMap<[u8; 32], (String, bool)>>,
}

/// The in-memory copy of the registered signing keys.
pub fn signing_key_table(
    records: Vec<SigningKeyRecord>,
) -> RwLock<HashMap<[u8; 32], (String, bool)>> {
    RwLock::new(
        records
            .into_iter()
            .map(|r| (r.public_key, (r.operator, r.revoked_unix_ms.is_some())))
            .collect(),
    )
}

fn issued_to_pb(issued: &Issued, ca_der: &[u8]) -> pb::IssuedCertificate {
    pb::IssuedCertificate {
        certificate: issued.cert_der.clone(),
        ca_certificate: ca_der.to_vec(),
        not_after_unix_ms: issued.not_after_unix_ms,
        renew_after_unix_ms: issued.renew_after_unix_ms,
    }
}

fn record_of(issued: &Issued, now_unix_ms: i64) -> CertificateRecord {
    CertificateRecord {
        fingerprint: issued.fingerprint,
        role: issued.role.name().to_owned(),
        name: issued.name.clone(),
        issued_unix_ms: now_unix_ms,
        not_after_unix_ms: issued.not_after_unix_ms,
        revoked_unix_ms: None,
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn checked_name<'a>(what: &str, name: &'a str) -> Result<&'a str, Status> {
    if monitor::wire::valid_hostname(name) {
        Ok(name)
    } else {
        Err(Status::invalid_argument(format!(
            "{what}: '{}' has characters other than ASCII letters, digits, '.', '-' and '_' \
             (or is empty or longer than 253 bytes)",
            Escaped::capped(name)
        )))
    }
}

/// The check of [`Enrolment::check_signed`] against a key table (operator,
/// revoked) by public key: a function of its own so that it is tested
/// without a store.
fn signed_by(
    keys: &HashMap<[u8; 32], (String, bool)>,
    operator: &str,
    signed: &pb::SignedCommand,
) -> Result<(), Status> {
    if !monitor::signing::verify(&signed.public_key, &signed.grant, &signed.signature) {
        return Err(Status::invalid_argument(
            "signed: the signature does not match the grant",
        ));
    }
    let key: [u8; 32] = signed.public_key.as_slice().try_into().unwrap_or([0; 32]);
    match keys.get(&key) {
        Some((owner, false)) if owner == operator => Ok(()),
        Some((_, true)) => Err(Status::permission_denied(
            "this signing key was revoked with its operator",
        )),
        _ => Err(Status::permission_denied(format!(
            "signing key {} is not registered to operator {operator}: run 'monitorctl key \
             register'",
            monitor::signing::short(&key)
        ))),
    }
}

impl Enrolment {
    fn keys(&self) -> std::sync::RwLockReadGuard<'_, HashMap<[u8; 32], (String, bool)>> {
        self.signing_keys.read().unwrap_or_else(|p| p.into_inner())
    }

    /// `Admin.RegisterSigningKey`: the calling operator's public key.
    pub async fn register_signing_key(&self, operator: &str, key: &[u8]) -> Result<(), Status> {
        let key: [u8; 32] = key.try_into().map_err(|_| {
            Status::invalid_argument(format!(
                "public_key: {} bytes, an Ed25519 public key is 32",
                key.len()
            ))
        })?;
        match self.keys().get(&key) {
            Some((owner, false)) if owner == operator => return Ok(()),
            Some((owner, _)) => {
                return Err(Status::permission_denied(format!(
                    "this key is registered to operator '{owner}'"
                )));
            }
            None => {}
        }
        self.store
            .register_signing_key(SigningKeyRecord {
                public_key: key,
                operator: operator.to_owned(),
                registered_unix_ms: monitor::time::now_unix_ms(),
                revoked_unix_ms: None,
            })
            .await
            .map_err(internal)?;
        self.signing_keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (operator.to_owned(), false));
        log::info!(
            "operator {operator} registered signing key {}",
            monitor::signing::short(&key)
        );
        Ok(())
    }

    /// A signed exec from `operator`: the signature holds and the key is
    /// one `operator` registered (and was not revoked). The agents check
    /// again, against keys the server does not control; this only refuses
    /// early, with a clear message, what they would refuse.
    pub fn check_signed(&self, operator: &str, signed: &pb::SignedCommand) -> Result<(), Status> {
        signed_by(&self.keys(), operator, signed)
    }

    /// The unrevoked signing keys, which join tokens carry.
    fn token_keys(&self) -> Vec<[u8; 32]> {
        let mut keys: Vec<[u8; 32]> = self
            .keys()
            .iter()
            .filter(|(_, (_, revoked))| !revoked)
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        keys.truncate(usize::from(u8::MAX));
        keys
    }

    fn remember(&self, issued: &Issued) {
        self.trust.add(
            issued.fingerprint,
            KnownCert {
                role: issued.role,
                name: issued.name.clone(),
                not_after_unix_ms: issued.not_after_unix_ms,
                revoked: false,
            },
        );
    }

    /// `Collector.Enrol`: a join token and a certificate request from an
    /// agent without a certificate yet.
    pub async fn enrol(
        &self,
        peer: &str,
        req: pb::EnrolRequest,
    ) -> Result<pb::IssuedCertificate, Status> {
        let hostname = checked_name("hostname", &req.hostname)?.to_owned();
        let secret_sha256 = monitor::digest::sha256(&req.token_secret);
        let now = monitor::time::now_unix_ms();
        // Checked before the certificate is made, so a wrong token costs no
        // signature; checked again when it is spent.
        let token = self
            .store
            .join_token(secret_sha256)
            .await
            .map_err(internal)?;
        let refusal = match &token {
            None => Some(TokenRefusal::Unknown),
            Some(t) => t.refusal(&hostname, now),
        };
        if let Some(r) = refusal {
            log::warn!(
                "{peer}: enrolment as '{hostname}' refused: {}",
                Escaped::capped(&r.to_string())
            );
            return Err(status_of_refusal(&r));
        }
        let issued = self.agent_certificate(&hostname, &req.certificate_request, now)?;
        match self
            .store
            .redeem_join_token(
                secret_sha256,
                hostname.clone(),
                peer.to_owned(),
                record_of(&issued, now),
            )
            .await
            .map_err(internal)?
        {
            Ok(()) => {}
            Err(r) => return Err(status_of_refusal(&r)),
        }
        self.remember(&issued);
        log::info!(
            "{hostname} ({peer}) enrolled: certificate valid until {}",
            Rfc3339(issued.not_after_unix_ms)
        );
        Ok(issued_to_pb(&issued, self.authority.ca_der()))
    }

    /// An agent certificate for `name` from its certificate request (a
    /// malformed request is the caller's error).
    fn agent_certificate(&self, name: &str, csr_der: &[u8], now: i64) -> Result<Issued, Status> {
        self.authority
            .issue_from_request(Role::Agent, name, csr_der, self.agent_cert_lifetime, now)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    /// `Collector.Renew`: a new certificate for an enrolled agent's new key.
    pub async fn renew(
        &self,
        identity: &Identity,
        req: pb::RenewRequest,
    ) -> Result<pb::IssuedCertificate, Status> {
        let now = monitor::time::now_unix_ms();
        let issued = self.agent_certificate(&identity.name, &req.certificate_request, now)?;
        self.store
            .record_certificate(record_of(&issued, now))
            .await
            .map_err(internal)?;
        self.remember(&issued);
        log::info!(
            "{}: certificate renewed, valid until {}",
            identity.name,
            Rfc3339(issued.not_after_unix_ms)
        );
        Ok(issued_to_pb(&issued, self.authority.ca_der()))
    }

    /// `Admin.CreateJoinToken`.
    pub async fn create_join_token(
        &self,
        operator: &str,
        req: pb::CreateJoinTokenRequest,
    ) -> Result<pb::CreateJoinTokenResponse, Status> {
        let hostname = checked_name("hostname", &req.hostname)?.to_owned();
        let ttl = match req.ttl_ms {
            0 => DEFAULT_TOKEN_TTL,
            ms => Duration::from_millis(ms),
        };
        if ttl > MAX_TOKEN_TTL {
            return Err(Status::invalid_argument(format!(
                "ttl_ms: {} ms is longer than the limit of 7 days",
                req.ttl_ms
            )));
        }
        let now = monitor::time::now_unix_ms();
        let expires = now.saturating_add(ttl.as_millis() as i64);
        let secret = monitor::random::random_bytes::<{ monitor::join::SECRET_BYTES }>();
        let token = JoinToken {
            secret,
            expires_unix_ms: expires,
            hostname: hostname.clone(),
            server_url: self.public_url.clone(),
            ca_der: self.authority.ca_der().to_vec(),
            operator_keys: self.token_keys(),
        };
        let text = token.encode().map_err(internal)?;
        self.store
            .create_join_token(JoinTokenRecord {
                secret_sha256: monitor::digest::sha256(&secret),
                hostname: hostname.clone(),
                created_unix_ms: now,
                expires_unix_ms: expires,
                created_by: operator.to_owned(),
                used_unix_ms: None,
                used_by: None,
            })
            .await
            .map_err(internal)?;
        log::info!(
            "operator {operator} made a join token for {hostname}, valid until {}",
            Rfc3339(expires)
        );
        Ok(pb::CreateJoinTokenResponse {
            token: text,
            expires_unix_ms: expires,
        })
    }

    /// `Admin.IssueAgentCertificate` and `Admin.AddOperator`: a certificate
    /// for a request made elsewhere.
    pub async fn issue(
        &self,
        operator: &str,
        role: Role,
        req: pb::IssueCertificateRequest,
    ) -> Result<pb::IssuedCertificate, Status> {
        let name = checked_name("name", &req.name)?.to_owned();
        let now = monitor::time::now_unix_ms();
        let lifetime = match role {
            Role::Agent => self.agent_cert_lifetime,
            Role::Operator => OPERATOR_CERT_LIFETIME,
        };
        let issued = self
            .authority
            .issue_from_request(role, &name, &req.certificate_request, lifetime, now)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.store
            .record_certificate(record_of(&issued, now))
            .await
            .map_err(internal)?;
        self.remember(&issued);
        log::info!(
            "operator {operator} issued an {} certificate for {name}, valid until {}",
            role.name(),
            Rfc3339(issued.not_after_unix_ms)
        );
        Ok(issued_to_pb(&issued, self.authority.ca_der()))
    }

    /// Revokes every certificate of (`role`, `name`): recorded, then the
    /// trust table, then (for an agent) its open streams end.
    pub async fn revoke(
        &self,
        operator: &str,
        role: Role,
        name: &str,
    ) -> Result<(u32, bool), Status> {
        let name = checked_name("name", name)?;
        let now = monitor::time::now_unix_ms();
        let stored = self
            .store
            .revoke_certificates(role.name().to_owned(), name.to_owned(), now)
            .await
            .map_err(internal)?;
        self.trust.revoke(role, name);
        if role == Role::Operator {
            for (owner, revoked) in self
                .signing_keys
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .values_mut()
            {
                if owner == name {
                    *revoked = true;
                }
            }
        }
        let was_connected = role == Role::Agent && self.registry.is_online(name);
        log::warn!(
            "operator {operator} revoked {stored} {} certificates of {name}{}",
            role.name(),
            if was_connected {
                "; its streams were closed"
            } else {
                ""
            }
        );
        Ok((stored, was_connected))
    }

    /// `Admin.ListOperators`: from the certificates the store keeps.
    pub async fn operators(&self) -> Result<pb::ListOperatorsResponse, Status> {
        let certs = self.store.certificates().await.map_err(internal)?;
        let mut by_name: std::collections::BTreeMap<String, pb::OperatorInfo> = Default::default();
        for c in certs.iter().filter(|c| c.role == Role::Operator.name()) {
            let e = by_name.entry(c.name.clone()).or_insert(pb::OperatorInfo {
                name: c.name.clone(),
                created_unix_ms: c.issued_unix_ms,
                not_after_unix_ms: c.not_after_unix_ms,
                removed: true,
                signing_keys: Vec::new(),
            });
            e.created_unix_ms = e.created_unix_ms.min(c.issued_unix_ms);
            if c.revoked_unix_ms.is_none() {
                e.removed = false;
                e.not_after_unix_ms = e.not_after_unix_ms.max(c.not_after_unix_ms);
            }
        }
        for (key, (owner, revoked)) in self.keys().iter() {
            if let Some(e) = by_name.get_mut(owner)
                && !revoked
            {
                e.signing_keys.push(key.to_vec());
            }
        }
        Ok(pb::ListOperatorsResponse {
            operators: by_name.into_values().collect(),
        })
    }
}

/// The status a token refusal becomes (the agent names it and stops).
pub fn status_of_refusal(r: &TokenRefusal) -> Status {
    let message = r.to_string();
    match r {
        TokenRefusal::Unknown => Status::not_found(message),
        TokenRefusal::Used { .. } | TokenRefusal::Expired { .. } => {
            Status::failed_precondition(message)
        }
        TokenRefusal::WrongHost { .. } => Status::permission_denied(message),
    }
}

impl std::fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenRefusal::Unknown => f.write_str(
                "unknown join token (not made by this server, or older than its records)",
            ),
            TokenRefusal::Used { at_unix_ms, by } => write!(
                f,
                "join token already used at {} by {}: make a new one with 'monitorctl enrol'",
                Rfc3339(*at_unix_ms),
                Escaped::capped(by)
            ),
            TokenRefusal::Expired { at_unix_ms } => write!(
                f,
                "join token expired at {}: make a new one with 'monitorctl enrol'",
                Rfc3339(*at_unix_ms)
            ),
            TokenRefusal::WrongHost { token_hostname } => write!(
                f,
                "join token is for host '{}', not this one",
                Escaped::capped(token_hostname)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor::signing::SigningKey;
    use tonic::Code;

    fn signed(key: &SigningKey, grant: &[u8]) -> pb::SignedCommand {
        pb::SignedCommand {
            grant: grant.to_vec(),
            signature: key.sign(grant).unwrap().to_vec(),
            public_key: key.public_key().to_vec(),
        }
    }

    #[test]
    fn a_signed_exec_needs_a_good_signature_by_an_unrevoked_key_of_its_operator() {
        let alice = SigningKey::generate().unwrap();
        let bob = SigningKey::generate().unwrap();
        let carol = SigningKey::generate().unwrap();
        let keys = HashMap::from([
            (alice.public_key(), ("alice".to_owned(), false)),
            (bob.public_key(), ("bob".to_owned(), true)),
        ]);
        let good = signed(&alice, b"grant");
        assert!(signed_by(&keys, "alice", &good).is_ok());

        let mut forged = good.clone();
        forged.grant = b"grunt".to_vec();
        let e = signed_by(&keys, "alice", &forged).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("signature does not match"), "{e:?}");

        let e = signed_by(&keys, "mallory", &good).unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(
            e.message().contains("not registered to operator mallory"),
            "{e:?}"
        );

        let e = signed_by(&keys, "bob", &signed(&bob, b"grant")).unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(e.message().contains("revoked"), "{e:?}");

        let e = signed_by(&keys, "carol", &signed(&carol, b"grant")).unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(e.message().contains("not registered"), "{e:?}");
    }

    #[test]
    fn a_name_is_kept_when_valid_and_refused_with_what_it_was_for() {
        assert_eq!(checked_name("hostname", "pi-1.lan").unwrap(), "pi-1.lan");
        let e = checked_name("hostname", "pi 1\n").unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("hostname: 'pi 1\\n' has"), "{e:?}");
    }

    #[test]
    fn each_token_refusal_has_its_own_status() {
        let cases = [
            (TokenRefusal::Unknown, Code::NotFound),
            (
                TokenRefusal::Used {
                    at_unix_ms: 0,
                    by: "127.0.0.1:1".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                TokenRefusal::Expired { at_unix_ms: 0 },
                Code::FailedPrecondition,
            ),
            (
                TokenRefusal::WrongHost {
                    token_hostname: "pi-1".into(),
                },
                Code::PermissionDenied,
            ),
        ];
        for (refusal, code) in cases {
            let status = status_of_refusal(&refusal);
            assert_eq!(status.code(), code, "{refusal:?}");
            assert_eq!(status.message(), refusal.to_string());
        }
    }
}
