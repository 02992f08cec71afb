//! The operator's signing key, and the signed grants `monitorctl exec`
//! sends.
//!
//! The key is an Ed25519 private key in a file of the operator's own
//! (`--signing-key`, `MONITOR_SIGNING_KEY`, else
//! `~/.config/monitor/signing.key`, mode 0600 in a 0700 directory), made
//! on first use. It never goes to the server: only its public key is
//! registered there (`monitorctl key register`, done on first use too),
//! so join tokens made afterwards carry it to new agents; agents enrolled
//! earlier trust it once its line (`monitorctl key show`) is in their
//! `/etc/monitor/operators`.

use std::path::{Path, PathBuf};

use monitor::command::GrantTargets;
use monitor::credential::Credential;
use monitor::files::{self, SECRET_MODE};
use monitor::pb;
use monitor::signing::{OperatorKey, SigningKey};

use crate::args::{Server, Targets};
use crate::connect::Connection;
use crate::error::CtlError;
use crate::term::{self, Stream};

/// Where the signing key is: the one named, else the operator's config
/// directory.
pub fn key_path(server: &Server) -> Option<PathBuf> {
    if let Some(p) = &server.signing_key {
        return Some(p.clone());
    }
    server
        .xdg_config_home
        .clone()
        .or_else(|| server.home.as_ref().map(|h| h.join(".config")))
        .map(|dir| dir.join("monitor").join("signing.key"))
}

/// The key at `path`, made there first if there is none (then `true`).
pub fn load_or_create(path: &Path) -> Result<(SigningKey, bool), CtlError> {
    if path.exists() {
        let text = files::read_text(path).map_err(CtlError::File)?;
        let key = SigningKey::from_pem(&text)
            .map_err(|e| CtlError::Credential(format!("{}: {e}", path.display())))?;
        return Ok((key, false));
    }
    let key = SigningKey::generate().map_err(|e| CtlError::Credential(e.to_string()))?;
    if let Some(dir) = path.parent() {
        files::create_private_dir(dir).map_err(CtlError::File)?;
    }
    files::write_atomic(path, key.to_pem().as_bytes(), SECRET_MODE).map_err(CtlError::File)?;
    Ok((key, true))
}

/// The operator's name for the operators file line: the credential's, else
/// "operator".
fn operator_name(credential: Option<&Credential>) -> String {
    credential
        .and_then(|c| c.fact("operator"))
        .filter(|n| monitor::wire::valid_hostname(n))
        .unwrap_or("operator")
        .to_owned()
}

/// Registers `key` with the server (idempotent).
pub async fn register(conn: &mut Connection, key: &SigningKey) -> Result<(), CtlError> {
    conn.client
        .register_signing_key(pb::RegisterSigningKeyRequest {
            public_key: key.public_key().to_vec(),
        })
        .await?;
    Ok(())
}

/// The key for signing, registered with the server when it was just made.
pub async fn key_for_exec(
    conn: &mut Connection,
    server_path: Option<PathBuf>,
) -> Result<SigningKey, CtlError> {
    let path = server_path.ok_or_else(|| {
        CtlError::Credential(
            "no place for the signing key: set HOME, --signing-key or MONITOR_SIGNING_KEY".into(),
        )
    })?;
    let (key, made) = load_or_create(&path)?;
    if made {
        announce_new_key(conn, &key, &path)?;
        if conn.credential.is_some() {
            register(conn, &key).await?;
        }
    }
    Ok(key)
}

/// Before `monitorctl enrol`: the operator's key, made if missing, is
/// registered, so the join token carries it and the new agent runs this
/// operator's signed commands from its first connection. Without a place
/// for a key the token is still made; the note says what that means.
pub async fn ensure_registered(
    conn: &mut Connection,
    server_path: Option<PathBuf>,
) -> Result<(), CtlError> {
    if conn.credential.is_none() {
        return Ok(()); // --insecure: no tokens, no registry of keys
    }
    let Some(path) = server_path else {
        term::write(
            Stream::Stderr,
            "note: no signing key (set HOME, --signing-key or MONITOR_SIGNING_KEY): \
             the token carries only keys already registered\n",
        )?;
        return Ok(());
    };
    let (key, made) = load_or_create(&path)?;
    if made {
        announce_new_key(conn, &key, &path)?;
    }
    register(conn, &key).await
}

/// Tells the operator a key was just made, and the line for agents
/// enrolled before it.
fn announce_new_key(conn: &Connection, key: &SigningKey, path: &Path) -> Result<(), CtlError> {
    let line = OperatorKey {
        name: operator_name(conn.credential.as_ref()),
        key: key.public_key(),
    }
    .line();
    term::write(
        Stream::Stderr,
        &format!(
            "made a new signing key in {}; agents enrolled from now on trust it, others once \
             this line is in their /etc/monitor/operators:\n  {line}\n",
            path.display()
        ),
    )?;
    Ok(())
}

/// A signed grant for `argv` with `timeout_ms` on `targets`.
pub fn sign(
    key: &SigningKey,
    operator: &str,
    argv: &[String],
    timeout_ms: u32,
    targets: &Targets,
) -> Result<pb::SignedCommand, CtlError> {
    let targets = match targets {
        Targets::Hosts(h) => GrantTargets::Hosts(h.clone()),
        Targets::All => GrantTargets::All,
    };
    monitor::command::sign_grant(key, operator, argv, timeout_ms, &targets)
        .map_err(|e| CtlError::Credential(e.to_string()))
}

/// The operator's name as grants give it.
pub fn operator_of(conn: &Connection) -> String {
    operator_name(conn.credential.as_ref())
}

/// `monitorctl key show`: the operators-file line of this operator's key
/// (made if missing).
pub fn show(path: Option<PathBuf>, credential: Option<&Credential>) -> Result<(), CtlError> {
    let path = path.ok_or_else(|| {
        CtlError::Credential("no place for the signing key: set HOME or --signing-key".into())
    })?;
    let (key, _) = load_or_create(&path)?;
    let line = OperatorKey {
        name: operator_name(credential),
        key: key.public_key(),
    }
    .line();
    term::write(Stream::Stdout, &format!("{line}\n"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor::command::DEFAULT_GRANT_TTL;
    use prost::Message;

    #[test]
    fn a_grant_is_signed_for_exactly_what_was_asked() {
        let key = SigningKey::generate().unwrap();
        let argv = vec!["uptime".to_owned()];
        let targets = Targets::Hosts(vec!["pi-1".into()]);
        let signed = sign(&key, "alice", &argv, 1500, &targets).unwrap();
        assert!(monitor::signing::verify(
            &signed.public_key,
            &signed.grant,
            &signed.signature
        ));
        let grant = pb::CommandGrant::decode(signed.grant.as_slice()).unwrap();
        assert_eq!(grant.argv, argv);
        assert_eq!(grant.hosts, ["pi-1"]);
        assert!(!grant.all_hosts);
        assert_eq!(grant.timeout_ms, 1500);
        assert_eq!(grant.command_id.len(), 32);
        assert_eq!(
            grant.expires_unix_ms - grant.issued_unix_ms,
            DEFAULT_GRANT_TTL.as_millis() as i64
        );
        monitor::command::check_grant(&grant, "pi-1", grant.issued_unix_ms).unwrap();
    }

    #[test]
    fn the_key_file_is_made_private_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/monitor/signing.key");
        let (first, made) = load_or_create(&path).unwrap();
        assert!(made);
        let (again, made) = load_or_create(&path).unwrap();
        assert!(!made);
        assert_eq!(first, again);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
    }
}
