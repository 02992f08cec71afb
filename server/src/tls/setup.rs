//! TLS at server start: the certificate authority and the server's
//! certificate from the TLS directory (made on first start), the trust
//! table from the store, the local operator's credential, and the rustls
//! configuration of both listeners.
//!
//! The local operator credential (`admin.cred` in the TLS directory) is how
//! the first operator, on the server box, reaches the operator API: it is
//! made at first start and again when its certificate is revoked, unknown
//! to the store, or has less than a third of its life left. Readable only
//! by the server's user, or by its group too when that group is `monitor`
//! (install.sh makes it so operators on the box can be added to it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use monitor::credential::Credential;
use monitor::files::{self, GROUP_SECRET_MODE, SECRET_MODE};

use super::authority::{Authority, TlsError};
use super::{ClientCert, KnownCert, Role, Trust, fingerprint, server_config};
use crate::config::TlsConfig;
use crate::enrolment::{Enrolment, OPERATOR_CERT_LIFETIME};
use crate::listener::TlsSetup;
use crate::registry::Registry;
use crate::store::{CertificateRecord, Store, StoreError};

/// The local operator's credential file, in the TLS directory.
pub const ADMIN_CREDENTIAL_FILE: &str = "admin.cred";
/// The local operator's name.
pub const LOCAL_OPERATOR: &str = "admin";
/// The group whose members may read the local operator's credential.
pub const OPERATOR_GROUP: &str = "monitor";

/// What TLS start-up produced.
pub struct Secured {
    pub enrolment: Arc<Enrolment>,
    pub agents: TlsSetup,
    pub admin: TlsSetup,
    /// The HTTP listener: operator certificates optional (a bearer token
    /// does too), ALPN h2 and http/1.1.
    pub http: TlsSetup,
    pub admin_credential: PathBuf,
}

/// Why TLS could not be set up.
#[derive(Debug)]
pub enum SetupError {
    Tls(TlsError),
    Store(StoreError),
    Rustls(rustls::Error),
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupError::Tls(e) => write!(f, "TLS: {e}"),
            SetupError::Store(e) => write!(f, "TLS: {e}"),
            SetupError::Rustls(e) => write!(f, "TLS settings: {e}"),
        }
    }
}

impl std::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SetupError::Tls(e) => Some(e),
            SetupError::Store(e) => Some(e),
            SetupError::Rustls(e) => Some(e),
        }
    }
}

/// The address the local operator's credential names for the admin API
/// listening on `addr`: loopback when it listens on every address.
fn credential_ip(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

/// The admin API's URL as the credential gives it: loopback when the API
/// listens on every address or on loopback.
pub fn admin_url(addr: SocketAddr) -> String {
    format!(
        "https://{}",
        SocketAddr::new(credential_ip(addr), addr.port())
    )
}

/// The names in the server's certificate: the configured ones, plus the
/// address the local operator's credential names when they lack it, so that
/// monitorctl on this box reaches the operator API whatever `--tls-name`
/// says (with only `--tls-name monitor.lan` it could not: its URL is
/// https://127.0.0.1:50052).
pub fn certificate_names(configured: &[String], admin_addr: SocketAddr) -> Vec<String> {
    let ip = credential_ip(admin_addr);
    let mut names = configured.to_vec();
    if !names.iter().any(|n| n.parse::<IpAddr>() == Ok(ip)) {
        names.push(ip.to_string());
    }
    names
}

/// Sets TLS up; see the module doc.
pub async fn start(
    config: &TlsConfig,
    store: &Store,
    registry: &Arc<Registry>,
    admin_addr: SocketAddr,
) -> Result<Secured, SetupError> {
    let now = monitor::time::now_unix_ms();
    let authority = Arc::new(Authority::open(&config.dir, now).map_err(SetupError::Tls)?);
    let names = certificate_names(&config.names, admin_addr);
    let identity = authority
        .server_identity(&config.dir, &names, now)
        .map_err(SetupError::Tls)?;
    let known = store.certificates().await.map_err(SetupError::Store)?;
    let trust = Arc::new(Trust::new(known.into_iter().filter_map(|c| {
        Some((
            c.fingerprint,
            KnownCert {
                role: Role::from_name(&c.role)?,
                name: c.name,
                not_after_unix_ms: c.not_after_unix_ms,
                revoked: c.revoked_unix_ms.is_some(),
            },
        ))
    })));
    trust.prune(now);
    let admin_credential = config.dir.join(ADMIN_CREDENTIAL_FILE);
    ensure_admin_credential(
        &admin_credential,
        &authority,
        store,
        &trust,
        &admin_url(admin_addr),
        now,
    )
    .await?;
    let ca = authority.ca_der().to_vec();
    let agents = TlsSetup {
        config: server_config(
            &identity,
            &ca,
            Arc::clone(&trust),
            Role::Agent,
            ClientCert::Optional,
        )
        .map_err(SetupError::Rustls)?,
        trust: Arc::clone(&trust),
        role: Role::Agent,
    };
    let admin = TlsSetup {
        config: server_config(
            &identity,
            &ca,
            Arc::clone(&trust),
            Role::Operator,
            ClientCert::Required,
        )
        .map_err(SetupError::Rustls)?,
        trust: Arc::clone(&trust),
        role: Role::Operator,
    };
    let mut http = (*server_config(
        &identity,
        &ca,
        Arc::clone(&trust),
        Role::Operator,
        ClientCert::Optional,
    )
    .map_err(SetupError::Rustls)?)
    .clone();
    http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let http = TlsSetup {
        config: Arc::new(http),
        trust: Arc::clone(&trust),
        role: Role::Operator,
    };
    log::info!(
        "TLS on every listener: CA {} in {}, server certificate for {}; {} client \
         certificates known",
        super::hex(&fingerprint(&ca)[..8]),
        config.dir.display(),
        names.join(", "),
        trust.len()
    );
    let signing_keys =
        crate::enrolment::signing_key_table(store.signing_keys().await.map_err(SetupError::Store)?);
    Ok(Secured {
        enrolment: Arc::new(Enrolment {
            signing_keys,
            authority,
            trust,
            store: store.clone(),
            registry: Arc::clone(registry),
            public_url: config.public_url.clone(),
            agent_cert_lifetime: config.agent_cert_lifetime,
        }),
        agents,
        admin,
        http,
        admin_credential,
    })
}

/// Keeps `path` a working credential of the local operator: makes it anew
/// when it is missing, unreadable, unknown to the store, revoked or has
/// less than a third of its life left.
async fn ensure_admin_credential(
    path: &Path,
    authority: &Authority,
    store: &Store,
    trust: &Trust,
    url: &str,
    now: i64,
) -> Result<(), SetupError> {
    let third = i64::try_from(OPERATOR_CERT_LIFETIME.as_millis() / 3).unwrap_or(i64::MAX);
    if let Ok(text) = files::read_text(path)
        && let Ok(c) = Credential::decode(&text)
        && c.ca_der == authority.ca_der()
        && c.fact("server") == Some(url)
    {
        let fp = fingerprint(&c.cert_der);
        let still_good = trust.identify(&fp, Role::Operator).is_ok()
            && store
                .certificates()
                .await
                .map_err(SetupError::Store)?
                .iter()
                .any(|r| r.fingerprint == fp && r.not_after_unix_ms - now > third);
        if still_good {
            return keep_mode(path);
        }
    }
    let (issued, key) = authority
        .issue_with_new_key(Role::Operator, LOCAL_OPERATOR, OPERATOR_CERT_LIFETIME, now)
        .map_err(SetupError::Tls)?;
    store
        .record_certificate(CertificateRecord {
            fingerprint: issued.fingerprint,
            role: Role::Operator.name().to_owned(),
            name: LOCAL_OPERATOR.to_owned(),
            issued_unix_ms: now,
            not_after_unix_ms: issued.not_after_unix_ms,
            revoked_unix_ms: None,
        })
        .await
        .map_err(SetupError::Store)?;
    trust.add(
        issued.fingerprint,
        KnownCert {
            role: Role::Operator,
            name: LOCAL_OPERATOR.to_owned(),
            not_after_unix_ms: issued.not_after_unix_ms,
            revoked: false,
        },
    );
    let credential = Credential {
        facts: vec![
            ("server".into(), url.to_owned()),
            ("operator".into(), LOCAL_OPERATOR.to_owned()),
        ],
        cert_der: issued.cert_der,
        key_pkcs8_der: key,
        ca_der: authority.ca_der().to_vec(),
    };
    let text = credential.encode(&format!(
        "monitor operator credential of \"{LOCAL_OPERATOR}\", the server box's own operator,\n\
         for {url}. Whoever can read this file is this operator: keep it private."
    ));
    let mode = credential_mode(path);
    files::write_atomic(path, text.as_bytes(), mode)
        .map_err(|e| SetupError::Tls(TlsError::File(e)))?;
    log::info!(
        "wrote the local operator's credential to {} (mode {mode:o}); monitorctl on this box \
         finds it there, or with --credentials",
        path.display()
    );
    Ok(())
}

/// The mode `admin.cred` at `path` should have: readable by the group too
/// when that group is `monitor`.
fn credential_mode(path: &Path) -> u32 {
    if our_group_is(OPERATOR_GROUP, path) {
        GROUP_SECRET_MODE
    } else {
        SECRET_MODE
    }
}

/// Gives a credential that is kept its mode for the group it has now: one
/// written 0600 before the server's group was `monitor` (an install from
/// before the unit had `Group=monitor`, under `DynamicUser=`) becomes
/// readable by the group, and one whose directory left the group `monitor`
/// becomes private.
fn keep_mode(path: &Path) -> Result<(), SetupError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = credential_mode(path);
    let file_error = |what, source| {
        SetupError::Tls(TlsError::File(files::FileError {
            path: path.to_owned(),
            what,
            source,
        }))
    };
    let now = std::fs::metadata(path)
        .map_err(|e| file_error("read the mode of", e))?
        .permissions()
        .mode()
        & 0o777;
    if now != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| file_error("set the mode of", e))?;
        log::info!("{}: mode {now:o} changed to {mode:o}", path.display());
    }
    Ok(())
}

/// Whether this process's group (as files it creates in `path`'s directory
/// get it) is named `group` in /etc/group.
fn our_group_is(group: &str, path: &Path) -> bool {
    let Some(dir) = path.parent() else {
        return false;
    };
    let Ok(gid) = std::fs::metadata(dir).map(|m| m.gid()) else {
        return false;
    };
    std::fs::read_to_string("/etc/group").is_ok_and(|text| {
        text.lines().any(|line| {
            let mut f = line.split(':');
            f.next() == Some(group) && f.nth(1).and_then(|g| g.parse::<u32>().ok()) == Some(gid)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_url_is_loopback_for_wildcard_addresses() {
        assert_eq!(
            admin_url("0.0.0.0:50052".parse().unwrap()),
            "https://127.0.0.1:50052"
        );
        assert_eq!(admin_url("[::]:7".parse().unwrap()), "https://[::1]:7");
        assert_eq!(
            admin_url("10.1.2.3:50052".parse().unwrap()),
            "https://10.1.2.3:50052"
        );
    }

    #[test]
    fn a_kept_credential_gets_the_mode_for_its_group() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ADMIN_CREDENTIAL_FILE);
        files::write_atomic(&path, b"x", GROUP_SECRET_MODE).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // A temporary directory's group is the test user's, not `monitor`
        // (unless a machine names it so: then 0640 is right and stays).
        let want = credential_mode(&path);
        keep_mode(&path).unwrap();
        assert_eq!(mode(&path), want);
        if !our_group_is(OPERATOR_GROUP, &path) {
            assert_eq!(
                mode(&path),
                SECRET_MODE,
                "a credential outside the group is private"
            );
        }
        let e = keep_mode(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the mode of"), "{e}");
    }

    #[test]
    fn the_certificate_always_names_the_credentials_address() {
        let names = |configured: &[&str], admin: &str| {
            let configured: Vec<String> = configured.iter().map(|n| n.to_string()).collect();
            certificate_names(&configured, admin.parse().unwrap())
        };
        assert_eq!(
            names(&["monitor.lan"], "127.0.0.1:50052"),
            ["monitor.lan", "127.0.0.1"]
        );
        assert_eq!(names(&["mon", "::1"], "[::]:7"), ["mon", "::1"]);
        assert_eq!(names(&["mon"], "[::]:7"), ["mon", "::1"]);
        assert_eq!(
            names(&["localhost", "127.0.0.1"], "0.0.0.0:50052"),
            ["localhost", "127.0.0.1"]
        );
        assert_eq!(names(&["mon"], "10.1.2.3:50052"), ["mon", "10.1.2.3"]);
    }
}
