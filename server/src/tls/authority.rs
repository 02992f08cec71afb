//! The server's own certificate authority: made on first start in the TLS
//! directory, it signs the server's certificate, every agent's certificate
//! (from the agent's certificate request at enrolment and renewal) and every
//! operator's.
//!
//! A certificate request is trusted for one thing only: its public key,
//! after its signature proved the requester holds the private key. The name
//! in a certificate comes from the server (the join token's hostname, the
//! operator's name), never from the request, and the role (agent or
//! operator) is recorded by the server beside the certificate's fingerprint
//! (see `trust.rs`).
//!
//! Files, in the TLS directory (0700): `ca.key` (0600), `ca.pem`,
//! `server.key` (0600), `server.pem`. The CA key never leaves this
//! directory and is never logged.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use monitor::files::{self, FileError, PUBLIC_MODE, SECRET_MODE};
use monitor::pem;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};

use super::{Fingerprint, Role, fingerprint};

pub const CA_KEY_FILE: &str = "ca.key";
pub const CA_CERT_FILE: &str = "ca.pem";
pub const SERVER_KEY_FILE: &str = "server.key";
pub const SERVER_CERT_FILE: &str = "server.pem";

/// How long the CA is valid.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How long the server's own certificate is valid; it is made again at a
/// start once a third of it is left, or when its names change.
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// Certificates start this long before they are made, so a peer whose
/// clock is a little behind still accepts them.
const BACKDATE: Duration = Duration::from_secs(300);

/// Why the TLS directory or a certificate could not be used.
#[derive(Debug)]
pub enum TlsError {
    File(FileError),
    /// A file that exists but is not what it should be.
    BadFile {
        path: PathBuf,
        detail: String,
    },
    /// rcgen refused to make or sign something.
    Make {
        what: &'static str,
        source: rcgen::Error,
    },
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::File(e) => write!(f, "{e}"),
            TlsError::BadFile { path, detail } => {
                write!(f, "{} is not usable: {detail}", path.display())
            }
            TlsError::Make { what, source } => write!(f, "cannot make {what}: {source}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::File(e) => Some(e),
            TlsError::Make { source, .. } => Some(source),
            TlsError::BadFile { .. } => None,
        }
    }
}

impl From<FileError> for TlsError {
    fn from(e: FileError) -> Self {
        TlsError::File(e)
    }
}

/// Why a certificate request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Not a PKCS#10 request, or its signature does not verify (the
    /// requester does not hold the key).
    BadRequest(String),
    /// The name cannot go in a certificate.
    BadName(String),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::BadRequest(why) => write!(f, "certificate request refused: {why}"),
            RequestError::BadName(name) => write!(
                f,
                "'{}' cannot be a certificate name",
                monitor::text::Escaped::capped(name)
            ),
        }
    }
}

impl std::error::Error for RequestError {}

/// A certificate this authority signed.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_der: Vec<u8>,
    pub fingerprint: Fingerprint,
    pub role: Role,
    pub name: String,
    pub not_after_unix_ms: i64,
    /// When the holder should ask for a new one (two thirds of its life).
    pub renew_after_unix_ms: i64,
}

/// The server's key pair and certificate, PKCS#8 and X.509 DER.
pub struct ServerIdentity {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

pub struct Authority {
    ca_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority(..)")
    }
}

fn time_of(unix_ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn add_ms(unix_ms: i64, d: Duration) -> i64 {
    unix_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn bad_file(path: &Path, detail: impl std::fmt::Display) -> TlsError {
    TlsError::BadFile {
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

/// The DER of the first `label` block of the PEM file at `path`.
fn read_pem(path: &Path, label: &str) -> Result<Vec<u8>, TlsError> {
    let text = files::read_text(path)?;
    let blocks = pem::decode_all(&text).map_err(|e| bad_file(path, e))?;
    blocks
        .into_iter()
        .find(|b| b.label == label)
        .map(|b| b.der)
        .ok_or_else(|| bad_file(path, format!("no {label} block")))
}

/// Writes a private key (0600) and then its certificate: a crash between
/// the two leaves a key without a certificate, which the next start
/// reports, never a certificate without its key.
fn write_pair(
    key_path: &Path,
    key_der: &[u8],
    cert_path: &Path,
    cert_der: &[u8],
) -> Result<(), FileError> {
    files::write_atomic(
        key_path,
        pem::encode("PRIVATE KEY", key_der).as_bytes(),
        SECRET_MODE,
    )?;
    files::write_atomic(
        cert_path,
        pem::encode("CERTIFICATE", cert_der).as_bytes(),
        PUBLIC_MODE,
    )
}

fn random_serial() -> SerialNumber {
    let mut bytes = monitor::random::random_bytes::<16>();
    // A positive INTEGER, never a leading zero byte.
    bytes[0] = (bytes[0] & 0x7F) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn make(what: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |source| TlsError::Make { what, source }
}

impl Authority {
    /// Loads the CA from `dir`, or makes one (and the directory, 0700) on
    /// first start.
    pub fn open(dir: &Path, now_unix_ms: i64) -> Result<Authority, TlsError> {
        files::create_private_dir(dir)?;
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        if key_path.exists() {
            let key_der = read_pem(&key_path, "PRIVATE KEY")?;
            let key = KeyPair::try_from(key_der.as_slice()).map_err(|e| bad_file(&key_path, e))?;
            let ca_der = read_pem(&cert_path, "CERTIFICATE")?;
            let issuer = Issuer::from_ca_cert_der(&ca_der.clone().into(), key)
                .map_err(|e| bad_file(&cert_path, e))?;
            return Ok(Authority { ca_der, issuer });
        }
        let key = KeyPair::generate().map_err(make("the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "monitor");
        dn.push(
            DnType::CommonName,
            format!("monitor CA {}", &monitor::random::random_id()[..8]),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        params.not_before = time_of(now_unix_ms.saturating_sub(BACKDATE.as_millis() as i64));
        params.not_after = time_of(add_ms(now_unix_ms, CA_LIFETIME));
        let cert = params
            .self_signed(&key)
            .map_err(make("the CA certificate"))?;
        write_pair(&key_path, key.serialized_der(), &cert_path, cert.der())?;
        log::info!(
            "made a new certificate authority in {} (fingerprint {})",
            dir.display(),
            super::hex(&fingerprint(cert.der()))
        );
        Ok(Authority {
            ca_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// The server's certificate for `names` (DNS names or IP addresses),
    /// from `dir` if the one there still fits, else made anew.
    pub fn server_identity(
        &self,
        dir: &Path,
        names: &[String],
        now_unix_ms: i64,
    ) -> Result<ServerIdentity, TlsError> {
        let key_path = dir.join(SERVER_KEY_FILE);
        let cert_path = dir.join(SERVER_CERT_FILE);
        if key_path.exists() && cert_path.exists() {
            let cert_der = read_pem(&cert_path, "CERTIFICATE")?;
            let key_der = read_pem(&key_path, "PRIVATE KEY")?;
            match self.server_cert_fits(&cert_der, names, now_unix_ms) {
                Ok(()) => return Ok(ServerIdentity { cert_der, key_der }),
                Err(why) => log::info!("making a new server certificate: {why}"),
            }
        }
        let mut sans = Vec::with_capacity(names.len());
        for name in names {
            sans.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.as_str()
                        .try_into()
                        .map_err(make("the server certificate's names"))?,
                ),
            });
        }
        let key = KeyPair::generate().map_err(make("the server key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "monitor");
        dn.push(
            DnType::CommonName,
            names.first().map_or("monitor-server", String::as_str),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = time_of(now_unix_ms.saturating_sub(BACKDATE.as_millis() as i64));
        params.not_after = time_of(add_ms(now_unix_ms, SERVER_CERT_LIFETIME));
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(make("the server certificate"))?;
        write_pair(&key_path, key.serialized_der(), &cert_path, cert.der())?;
        log::info!("server certificate for {}", names.join(", "));
        Ok(ServerIdentity {
            cert_der: cert.der().to_vec(),
            key_der: key.serialized_der().to_vec(),
        })
    }

    /// Whether the server certificate in `der` was signed by this CA, names
    /// exactly `names`, and has more than a third of its life left.
    fn server_cert_fits(
        &self,
        der: &[u8],
        names: &[String],
        now_unix_ms: i64,
    ) -> Result<(), String> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let (_, ca) = X509Certificate::from_der(&self.ca_der).map_err(|e| e.to_string())?;
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|_| "it was signed by another CA".to_owned())?;
        let mut have: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .map(|n| match n {
                        GeneralName::DNSName(d) => (*d).to_owned(),
                        GeneralName::IPAddress(b) => match b.len() {
                            4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())
                                .to_string(),
                            16 => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())
                                .to_string(),
                            _ => String::new(),
                        },
                        other => format!("{other:?}"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut want: Vec<String> = names
            .iter()
            .map(|n| {
                n.parse::<IpAddr>()
                    .map_or_else(|_| n.clone(), |ip| ip.to_string())
            })
            .collect();
        have.sort();
        want.sort();
        if have != want {
            return Err(format!("its names are {have:?}, wanted {want:?}"));
        }
        let start = cert.validity().not_before.timestamp().saturating_mul(1000);
        let end = cert.validity().not_after.timestamp().saturating_mul(1000);
        let third = (end - start) / 3;
        if now_unix_ms > end.saturating_sub(third) {
            return Err("less than a third of its life is left".to_owned());
        }
        Ok(())
    }

    /// Signs a client certificate for `name` in `role` from a certificate
    /// request (DER), valid for `lifetime` from `now_unix_ms`.
    pub fn issue_from_request(
        &self,
        role: Role,
        name: &str,
        request_der: &[u8],
        lifetime: Duration,
        now_unix_ms: i64,
    ) -> Result<Issued, RequestError> {
        let request = CertificateSigningRequestParams::from_der(&request_der.to_vec().into())
            .map_err(|e| RequestError::BadRequest(e.to_string()))?;
        self.issue(role, name, &request.public_key, lifetime, now_unix_ms)
    }

    /// Makes a key pair here and signs a client certificate for it (for
    /// the operator credential the server writes at first start, and for
    /// tests). Returns the certificate and the key (PKCS#8 DER).
    pub fn issue_with_new_key(
        &self,
        role: Role,
        name: &str,
        lifetime: Duration,
        now_unix_ms: i64,
    ) -> Result<(Issued, Vec<u8>), TlsError> {
        let key = KeyPair::generate().map_err(make("a client key"))?;
        let issued = self
            .issue(role, name, &key, lifetime, now_unix_ms)
            .map_err(|e| TlsError::BadFile {
                path: PathBuf::new(),
                detail: e.to_string(),
            })?;
        Ok((issued, key.serialized_der().to_vec()))
    }

    fn issue(
        &self,
        role: Role,
        name: &str,
        public_key: &impl PublicKeyData,
        lifetime: Duration,
        now_unix_ms: i64,
    ) -> Result<Issued, RequestError> {
        if !monitor::wire::valid_hostname(name) {
            return Err(RequestError::BadName(name.to_owned()));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "monitor");
        dn.push(DnType::OrganizationalUnitName, role.name());
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let not_before = now_unix_ms.saturating_sub(BACKDATE.as_millis() as i64);
        let not_after = add_ms(now_unix_ms, lifetime);
        params.not_before = time_of(not_before);
        params.not_after = time_of(not_after);
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| RequestError::BadRequest(e.to_string()))?;
        let der = cert.der().to_vec();
        // Seconds, as the certificate says it (the milliseconds are cut).
        let not_after = not_after.div_euclid(1000) * 1000;
        Ok(Issued {
            fingerprint: fingerprint(&der),
            cert_der: der,
            role,
            name: name.to_owned(),
            not_after_unix_ms: not_after,
            renew_after_unix_ms: now_unix_ms + (not_after - now_unix_ms) * 2 / 3,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_608_000_000;

    fn temp() -> tempdir::Dir {
        tempdir::Dir::new()
    }

    /// A private directory for one test (removed on drop).
    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "monitor-ca-{}-{}",
                    std::process::id(),
                    monitor::random::random_id()
                ));
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn the_ca_is_made_once_and_its_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp();
        let tls = dir.0.join("tls");
        let a = Authority::open(&tls, NOW).unwrap();
        let mode = |f: &str| std::fs::metadata(tls.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(CA_KEY_FILE), 0o600);
        assert_eq!(mode(CA_CERT_FILE), 0o644);
        assert_eq!(
            std::fs::metadata(&tls).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let again = Authority::open(&tls, NOW + 1000).unwrap();
        assert_eq!(a.ca_der(), again.ca_der());
    }

    #[test]
    fn a_request_gets_the_servers_name_not_its_own() {
        let dir = temp();
        let a = Authority::open(&dir.0, NOW).unwrap();
        let key = monitor::csr::PrivateKey::generate().unwrap();
        let request = key.csr_der("i-am-someone-else").unwrap();
        let day = Duration::from_secs(86_400);
        let issued = a
            .issue_from_request(Role::Agent, "pi-1", &request, 90 * day, NOW)
            .unwrap();
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(&issued.cert_der).unwrap();
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(cn, ["pi-1"]);
        // The certificate carries the requester's key.
        let point = key.public_point().unwrap();
        assert_eq!(cert.public_key().subject_public_key.data.as_ref(), point);
        assert_eq!(issued.not_after_unix_ms, NOW + 90 * 86_400_000);
        assert_eq!(issued.renew_after_unix_ms, NOW + 60 * 86_400_000);
        let (_, ca) = X509Certificate::from_der(a.ca_der()).unwrap();
        cert.verify_signature(Some(ca.public_key())).unwrap();
        // A request whose signature is broken is refused: the requester
        // does not hold the key.
        let mut forged = request.clone();
        let last = forged.len() - 3;
        forged[last] ^= 1;
        assert!(matches!(
            a.issue_from_request(Role::Agent, "pi-1", &forged, day, NOW),
            Err(RequestError::BadRequest(_))
        ));
        assert!(matches!(
            a.issue_from_request(Role::Agent, "bad name", &request, day, NOW),
            Err(RequestError::BadName(_))
        ));
    }

    #[test]
    fn the_server_certificate_is_kept_until_its_names_or_life_change() {
        let dir = temp();
        let a = Authority::open(&dir.0, NOW).unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let first = a.server_identity(&dir.0, &names, NOW).unwrap();
        let same = a.server_identity(&dir.0, &names, NOW + 1000).unwrap();
        assert_eq!(first.cert_der, same.cert_der);
        let other_names = vec!["localhost".to_owned()];
        let renamed = a.server_identity(&dir.0, &other_names, NOW).unwrap();
        assert_ne!(renamed.cert_der, first.cert_der);
        let late = NOW + 300 * 86_400_000;
        let aged = a.server_identity(&dir.0, &other_names, late).unwrap();
        assert_ne!(aged.cert_der, renamed.cert_der);
    }
}
