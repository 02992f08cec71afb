//! Who may talk to the server: join tokens for new agents, certificates
//! made off the box, revocation, operators.
//!
//! Keys are made here, on the operator's side (`monitor::csr`), and only
//! certificate requests go to the server: the server never holds an
//! operator's or a `--files` agent's private key.

use std::path::Path;
use std::time::Duration;

use monitor::credential::Credential;
use monitor::csr::PrivateKey;
use monitor::files::{self, PUBLIC_MODE, SECRET_MODE};
use monitor::pb;
use monitor::text::Escaped;
use monitor::time::Rfc3339;

use crate::connect::Connection;
use crate::error::CtlError;
use crate::term;

/// `monitorctl enrol HOSTNAME [--ttl D]`: prints the join token.
pub async fn enrol(c: &mut Connection, hostname: String, ttl: Duration) -> Result<(), CtlError> {
    let answer = c
        .client
        .create_join_token(pb::CreateJoinTokenRequest {
            hostname: hostname.clone(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        })
        .await?
        .into_inner();
    term::write(
        term::Stream::Stderr,
        &format!(
            "join token for {hostname}, usable once until {}:\n",
            Rfc3339(answer.expires_unix_ms)
        ),
    )?;
    // The token is URL-safe base64 behind a fixed prefix: printable as is,
    // but escaped anyway (it came from the network), up to a token's size.
    let token = Escaped::with_limit(&answer.token, monitor::join::MAX_TOKEN_CHARS);
    term::write(term::Stream::Stdout, &format!("{token}\n"))?;
    Ok(())
}

/// `monitorctl enrol HOSTNAME --files DIR`: a key made here, its
/// certificate and the CA, written into `dir`.
pub async fn enrol_files(c: &mut Connection, hostname: String, dir: &Path) -> Result<(), CtlError> {
    let key = PrivateKey::generate().map_err(|e| CtlError::Credential(e.to_string()))?;
    let request = key
        .csr_der(&hostname)
        .map_err(|e| CtlError::Credential(e.to_string()))?;
    let issued = c
        .client
        .issue_agent_certificate(pb::IssueCertificateRequest {
            name: hostname.clone(),
            certificate_request: request,
        })
        .await?
        .into_inner();
    files::create_private_dir(dir).map_err(CtlError::File)?;
    let pem = monitor::pem::encode;
    let key_path = dir.join(format!("{hostname}.key"));
    let cert_path = dir.join(format!("{hostname}.pem"));
    let ca_path = dir.join("ca.pem");
    files::write_atomic(
        &key_path,
        pem("PRIVATE KEY", &key.pkcs8_der).as_bytes(),
        SECRET_MODE,
    )
    .map_err(CtlError::File)?;
    files::write_atomic(
        &cert_path,
        pem("CERTIFICATE", &issued.certificate).as_bytes(),
        PUBLIC_MODE,
    )
    .map_err(CtlError::File)?;
    files::write_atomic(
        &ca_path,
        pem("CERTIFICATE", &issued.ca_certificate).as_bytes(),
        PUBLIC_MODE,
    )
    .map_err(CtlError::File)?;
    term::write(
        term::Stream::Stderr,
        &format!(
            "wrote {} (the private key, made HERE, off the box: copy it to {hostname} over a \
         secure channel and delete this copy), {} (valid until {}) and {}\n",
            key_path.display(),
            cert_path.display(),
            Rfc3339(issued.not_after_unix_ms),
            ca_path.display()
        ),
    )?;
    Ok(())
}

/// `monitorctl revoke HOSTNAME`.
pub async fn revoke(c: &mut Connection, hostname: String) -> Result<(), CtlError> {
    let answer = c
        .client
        .revoke(pb::RevokeRequest {
            hostname: hostname.clone(),
        })
        .await?
        .into_inner();
    term::write(
        term::Stream::Stdout,
        &format!(
            "revoked {} certificates of {hostname}{}\n",
            answer.certificates_revoked,
            if answer.was_connected {
                "; its streams were closed"
            } else {
                ""
            }
        ),
    )?;
    Ok(())
}

/// `monitorctl operator add NAME --out FILE`.
pub async fn operator_add(c: &mut Connection, name: String, out: &Path) -> Result<(), CtlError> {
    if out.exists() {
        return Err(CtlError::Credential(format!(
            "{} exists already: not overwriting a credential",
            out.display()
        )));
    }
    let key = PrivateKey::generate().map_err(|e| CtlError::Credential(e.to_string()))?;
    let request = key
        .csr_der(&name)
        .map_err(|e| CtlError::Credential(e.to_string()))?;
    let issued = c
        .client
        .add_operator(pb::IssueCertificateRequest {
            name: name.clone(),
            certificate_request: request,
        })
        .await?
        .into_inner();
    let credential = Credential {
        facts: vec![
            ("server".into(), c.url.clone()),
            ("operator".into(), name.clone()),
        ],
        cert_der: issued.certificate,
        key_pkcs8_der: key.pkcs8_der,
        ca_der: issued.ca_certificate,
    };
    let text = credential.encode(&format!(
        "monitor operator credential of \"{name}\" for {}.\n\
         Whoever can read this file is this operator: keep it private (mode 0600).",
        c.url
    ));
    files::write_atomic(out, text.as_bytes(), SECRET_MODE).map_err(CtlError::File)?;
    term::write(
        term::Stream::Stdout,
        &format!(
            "operator {name}: credential written to {} (valid until {}); give it to them over a \
         secure channel, they pass it as --credentials or MONITOR_CREDENTIALS\n",
            out.display(),
            Rfc3339(issued.not_after_unix_ms)
        ),
    )?;
    Ok(())
}

/// `monitorctl operator remove NAME`.
pub async fn operator_remove(c: &mut Connection, name: String) -> Result<(), CtlError> {
    let answer = c
        .client
        .remove_operator(pb::RemoveOperatorRequest { name: name.clone() })
        .await?
        .into_inner();
    term::write(
        term::Stream::Stdout,
        &format!(
            "operator {name} removed: {} certificates revoked\n",
            answer.certificates_revoked
        ),
    )?;
    Ok(())
}

/// `monitorctl operator list`.
pub async fn operator_list(c: &mut Connection) -> Result<(), CtlError> {
    let answer = c
        .client
        .list_operators(pb::ListOperatorsRequest {})
        .await?
        .into_inner();
    let mut out = format!(
        "{:<32} {:<24} {:<24} STATE\n",
        "NAME", "ADDED", "VALID UNTIL"
    );
    for o in answer.operators {
        out.push_str(&format!(
            "{:<32} {:<24} {:<24} {}\n",
            Escaped::with_limit(&o.name, 32).to_string(),
            Rfc3339(o.created_unix_ms).to_string(),
            Rfc3339(o.not_after_unix_ms).to_string(),
            if o.removed { "removed" } else { "active" }
        ));
    }
    term::write(term::Stream::Stdout, &out)?;
    Ok(())
}
