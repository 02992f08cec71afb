//! Who a peer is: every client certificate the authority signed, by
//! fingerprint, with its role (agent or operator), its name and whether it
//! was revoked; and the TLS client-certificate verifier that consults it
//! during the handshake.
//!
//! The store is the truth (this table is loaded from it at start and every
//! change is written there first); this is its in-memory copy, read on
//! every handshake and every RPC. A certificate counts only if it chains to
//! the CA *and* is in this table, unrevoked, in the listener's role: an
//! agent's certificate opens nothing on the operator API, a revoked one
//! fails its handshake, and a certificate the CA signed that the store does
//! not know (a database restored from an old backup) opens nothing either.
//!
//! Size: one entry per certificate issued and not yet expired (about 1.5
//! per agent, with renewal at two thirds of the life); expired entries are
//! pruned.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::sync::watch;

use super::{Fingerprint, Role, fingerprint};

/// A certificate the store knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownCert {
    pub role: Role,
    pub name: String,
    pub not_after_unix_ms: i64,
    pub revoked: bool,
}

/// A peer that presented a known, valid, unrevoked certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    pub name: String,
    pub fingerprint: Fingerprint,
}

/// Why a certificate opens nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    Unknown,
    Revoked,
    WrongRole { role: Role },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Unknown => f.write_str("certificate not issued by this server's store"),
            Refused::Revoked => f.write_str("certificate revoked"),
            Refused::WrongRole { role } => {
                write!(f, "an {} certificate cannot be used here", role.name())
            }
        }
    }
}

#[derive(Debug)]
pub struct Trust {
    certs: RwLock<HashMap<Fingerprint, KnownCert>>,
    /// Bumped at every revocation, so open streams can check whether
    /// their certificate is still good.
    revocations: watch::Sender<u64>,
}

impl Trust {
    pub fn new(known: impl IntoIterator<Item = (Fingerprint, KnownCert)>) -> Trust {
        Trust {
            certs: RwLock::new(known.into_iter().collect()),
            revocations: watch::channel(0).0,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Fingerprint, KnownCert>> {
        self.certs.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Fingerprint, KnownCert>> {
        self.certs.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a certificate just issued (and already stored).
    pub fn add(&self, fingerprint: Fingerprint, cert: KnownCert) {
        self.write().insert(fingerprint, cert);
    }

    /// Who holds the certificate with this fingerprint, if it may act in
    /// `role`.
    pub fn identify(&self, fp: &Fingerprint, role: Role) -> Result<Identity, Refused> {
        let certs = self.read();
        let known = certs.get(fp).ok_or(Refused::Unknown)?;
        if known.revoked {
            return Err(Refused::Revoked);
        }
        if known.role != role {
            return Err(Refused::WrongRole { role: known.role });
        }
        Ok(Identity {
            role,
            name: known.name.clone(),
            fingerprint: *fp,
        })
    }

    /// Marks every certificate of (`role`, `name`) revoked (already
    /// recorded in the store); returns how many were live.
    pub fn revoke(&self, role: Role, name: &str) -> usize {
        let mut n = 0;
        for cert in self.write().values_mut() {
            if cert.role == role && cert.name == name && !cert.revoked {
                cert.revoked = true;
                n += 1;
            }
        }
        self.revocations.send_modify(|g| *g += 1);
        n
    }

    /// Takes in what the store knows now (certificates other servers on a
    /// shared store issued or revoked since this one started); returns how
    /// many were new and how many newly revoked. Open streams hear of the
    /// revocations as with [`Trust::revoke`].
    pub fn sync(
        &self,
        known: impl IntoIterator<Item = (Fingerprint, KnownCert)>,
    ) -> (usize, usize) {
        let (mut added, mut revoked) = (0, 0);
        {
            let mut certs = self.write();
            for (fp, cert) in known {
                match certs.get_mut(&fp) {
                    Some(have) => {
                        if cert.revoked && !have.revoked {
                            have.revoked = true;
                            revoked += 1;
                        }
                    }
                    None => {
                        certs.insert(fp, cert);
                        added += 1;
                    }
                }
            }
        }
        if revoked > 0 {
            self.revocations.send_modify(|g| *g += 1);
        }
        (added, revoked)
    }

    pub fn is_revoked(&self, fp: &Fingerprint) -> bool {
        self.read().get(fp).is_none_or(|c| c.revoked)
    }

    /// Changes at every revocation.
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    /// Forgets certificates that expired before `now_unix_ms` (a handshake
    /// with them fails on the date anyway).
    pub fn prune(&self, now_unix_ms: i64) -> usize {
        let mut certs = self.write();
        let before = certs.len();
        certs.retain(|_, c| c.not_after_unix_ms >= now_unix_ms);
        before - certs.len()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The verifier of one listener: the CA's chain and dates (webpki), then
/// the trust table for the listener's role.
#[derive(Debug)]
pub struct ClientVerifier {
    pub webpki: Arc<dyn ClientCertVerifier>,
    pub trust: Arc<Trust>,
    pub role: Role,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.webpki.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        match self.trust.identify(&fingerprint(end_entity), self.role) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(Refused::Revoked) => {
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
            Err(_) => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(role: Role, name: &str) -> KnownCert {
        KnownCert {
            role,
            name: name.into(),
            not_after_unix_ms: 1000,
            revoked: false,
        }
    }

    #[test]
    fn identity_needs_a_known_unrevoked_certificate_in_the_right_role() {
        let t = Trust::new([([1; 32], known(Role::Agent, "pi-1"))]);
        t.add([2; 32], known(Role::Operator, "alice"));
        t.add([3; 32], known(Role::Agent, "pi-1"));
        assert_eq!(t.identify(&[1; 32], Role::Agent).unwrap().name, "pi-1");
        assert_eq!(t.identify(&[9; 32], Role::Agent), Err(Refused::Unknown));
        assert_eq!(
            t.identify(&[2; 32], Role::Agent),
            Err(Refused::WrongRole {
                role: Role::Operator
            })
        );
        let seen = t.revocations();
        assert_eq!(t.revoke(Role::Agent, "pi-1"), 2);
        assert!(seen.has_changed().unwrap());
        assert_eq!(t.identify(&[1; 32], Role::Agent), Err(Refused::Revoked));
        assert_eq!(t.identify(&[3; 32], Role::Agent), Err(Refused::Revoked));
        assert!(t.is_revoked(&[1; 32]));
        assert!(t.is_revoked(&[9; 32]), "unknown counts as revoked");
        assert!(!t.is_revoked(&[2; 32]));
        assert_eq!(t.prune(1000), 0);
        assert_eq!(t.prune(1001), 3);
        assert!(t.is_empty());
    }

    #[test]
    fn revoke_counts_only_the_live_certificates_of_that_role_and_name() {
        let t = Trust::new([
            ([1; 32], known(Role::Agent, "pi-1")),
            ([2; 32], known(Role::Operator, "pi-1")),
            ([3; 32], known(Role::Agent, "pi-2")),
        ]);
        assert_eq!(t.len(), 3);
        assert!(!t.is_empty());
        let seen = t.revocations();
        assert_eq!(t.revoke(Role::Agent, "pi-1"), 1);
        assert!(seen.has_changed().unwrap());
        assert_eq!(t.revoke(Role::Agent, "pi-1"), 0, "already revoked");
        assert!(t.is_revoked(&[1; 32]));
        assert!(!t.is_revoked(&[2; 32]) && !t.is_revoked(&[3; 32]));
        assert_eq!(t.identify(&[3; 32], Role::Agent).unwrap().name, "pi-2");
    }

    #[test]
    fn sync_adds_what_is_new_and_revokes_what_the_store_revoked() {
        let t = Trust::new([
            ([1; 32], known(Role::Agent, "pi-1")),
            ([2; 32], known(Role::Agent, "pi-2")),
        ]);
        let mut seen = t.revocations();
        let revoked = KnownCert {
            revoked: true,
            ..known(Role::Agent, "pi-1")
        };
        // Nothing new: no revocation is announced.
        assert_eq!(t.sync([([2; 32], known(Role::Agent, "pi-2"))]), (0, 0));
        assert!(!seen.has_changed().unwrap());
        assert_eq!(
            t.sync([
                ([1; 32], revoked.clone()),
                ([2; 32], known(Role::Agent, "pi-2")),
                ([3; 32], known(Role::Agent, "pi-3")),
                ([4; 32], known(Role::Operator, "alice")),
            ]),
            (2, 1)
        );
        assert!(seen.has_changed().unwrap());
        seen.mark_unchanged();
        assert_eq!(t.identify(&[1; 32], Role::Agent), Err(Refused::Revoked));
        assert_eq!(t.identify(&[3; 32], Role::Agent).unwrap().name, "pi-3");
        assert_eq!(t.len(), 4);
        // Revoked twice counts once; a live copy never un-revokes.
        assert_eq!(
            t.sync([([1; 32], revoked), ([1; 32], known(Role::Agent, "pi-1"))]),
            (0, 0)
        );
        assert!(!seen.has_changed().unwrap());
        assert!(t.is_revoked(&[1; 32]));
    }
}
