//! TLS for the benchmark tools, as the real programs use it: the operator
//! credential (`admin.cred`, what monitorctl presents) opens the operator
//! API, and every simulated agent presents its own client certificate.
//!
//! One certificate per simulated host, because the server takes an agent's
//! identity from its certificate and refuses a hello or batch naming
//! another host. They are issued through `Admin.IssueAgentCertificate`
//! (what `monitorctl enrol HOST --files DIR` calls), the key and request
//! made here, many requests in flight on one connection: thousands in
//! seconds, where one monitorctl process per host would take minutes.
//!
//! Keys stay in memory, never on disk and never in a log; only the loopback
//! server the caller named is contacted.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use monitor::credential::Credential;
use monitor::csr::PrivateKey;
use monitor::pb;
use tokio::task::JoinSet;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::Results;
use crate::admin::Admin;

/// Certificate requests in flight at once while issuing.
pub const ISSUE_CONCURRENCY: usize = 32;

/// Reads an operator credential file (`admin.cred`).
pub fn read_credential(path: &Path) -> Result<Credential, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the credential {}: {e}", path.display()))?;
    Credential::decode(&text)
        .map_err(|e| format!("{} is not an operator credential: {e}", path.display()))
}

/// TLS settings that check the server against `ca_der` and present the
/// certificate `cert_der` with its key.
pub fn client_tls(ca_der: &[u8], cert_der: &[u8], key_pkcs8_der: &[u8]) -> ClientTlsConfig {
    let pem = monitor::pem::encode;
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem("CERTIFICATE", ca_der)))
        .identity(Identity::from_pem(
            pem("CERTIFICATE", cert_der),
            pem("PRIVATE KEY", key_pkcs8_der),
        ))
}

/// The operator's TLS settings.
pub fn operator_tls(credential: &Credential) -> ClientTlsConfig {
    client_tls(
        &credential.ca_der,
        &credential.cert_der,
        &credential.key_pkcs8_der,
    )
}

/// One simulated agent's certificate and key (DER).
#[derive(Clone, PartialEq, Eq)]
pub struct AgentCert {
    pub cert_der: Vec<u8>,
    pub key_pkcs8_der: Vec<u8>,
}

/// Client certificates for a fleet: agent `i` presents `certs[i]`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AgentCerts {
    /// The server's CA, which the agents check the server against.
    pub ca_der: Vec<u8>,
    pub certs: Vec<AgentCert>,
}

impl fmt::Debug for AgentCerts {
    // Key material never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentCerts({} certificates)", self.certs.len())
    }
}

impl AgentCerts {
    /// Agent `index`'s TLS settings, if it has a certificate.
    pub fn client_tls(&self, index: usize) -> Option<ClientTlsConfig> {
        let c = self.certs.get(index)?;
        Some(client_tls(&self.ca_der, &c.cert_der, &c.key_pkcs8_der))
    }
}

/// A key and a certificate for `hostname`, issued by the server.
async fn issue_one(mut admin: Admin, hostname: String) -> Result<(AgentCert, Vec<u8>), String> {
    let key = PrivateKey::generate().map_err(|e| format!("{hostname}: {e}"))?;
    let request = key
        .csr_der(&hostname)
        .map_err(|e| format!("{hostname}: {e}"))?;
    let issued = admin
        .issue_agent_certificate(pb::IssueCertificateRequest {
            name: hostname.clone(),
            certificate_request: request,
        })
        .await
        .map_err(|s| {
            format!(
                "IssueAgentCertificate for {hostname}: {}: {}",
                s.code(),
                monitor::text::Escaped::capped(s.message())
            )
        })?
        .into_inner();
    Ok((
        AgentCert {
            cert_der: issued.certificate,
            key_pkcs8_der: key.pkcs8_der,
        },
        issued.ca_certificate,
    ))
}

/// Issues one certificate per hostname, [`ISSUE_CONCURRENCY`] requests in
/// flight; returns them in the hostnames' order and how long it took.
pub async fn issue(admin: &Admin, hostnames: &[String]) -> Result<(AgentCerts, Duration), String> {
    let started = Instant::now();
    let mut slots: Vec<Option<AgentCert>> = vec![None; hostnames.len()];
    let mut ca_der = Vec::new();
    let mut tasks = JoinSet::new();
    let mut next = 0;
    loop {
        while next < hostnames.len() && tasks.len() < ISSUE_CONCURRENCY {
            let (admin, host) = (admin.clone(), hostnames[next].clone());
            let index = next;
            tasks.spawn(async move { (index, issue_one(admin, host).await) });
            next += 1;
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (index, result) = joined.map_err(|e| format!("issuing task: {e}"))?;
        let (cert, ca) = result?;
        if ca_der.is_empty() {
            ca_der = ca;
        } else if ca_der != ca {
            return Err("the server answered with two different CA certificates".to_owned());
        }
        slots[index] = Some(cert);
    }
    let certs = slots
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| "a certificate was not issued".to_owned())?;
    Ok((AgentCerts { ca_der, certs }, started.elapsed()))
}

/// How issuing a fleet's certificates went.
#[derive(Clone, Copy, Debug)]
pub struct Issuance {
    pub certificates: usize,
    pub elapsed: Duration,
}

impl Issuance {
    /// The `tls.*` result lines.
    pub fn results(&self, r: &mut Results) {
        let secs = self.elapsed.as_secs_f64();
        r.put("tls.certificates_issued", self.certificates);
        r.put("tls.issue_s", format!("{secs:.2}"));
        r.put(
            "tls.issue_per_s",
            format!("{:.0}", self.certificates as f64 / secs.max(1e-9)),
        );
    }
}

/// With an operator credential, issues certificates for the first `agents`
/// of the fleet (`hostname(0..agents)`) and sets them in `fleet`; without,
/// leaves `fleet` in plain text.
pub async fn prepare_fleet(
    admin: &Admin,
    credential: Option<&Credential>,
    fleet: &mut crate::sim::FleetConfig,
    agents: usize,
) -> Result<Option<Issuance>, String> {
    if credential.is_none() {
        return Ok(None);
    }
    let hostnames: Vec<String> = (0..agents).map(|i| fleet.hostname(i)).collect();
    let (certs, elapsed) = issue(admin, &hostnames).await?;
    fleet.tls = Some(std::sync::Arc::new(certs));
    Ok(Some(Issuance {
        certificates: agents,
        elapsed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_credential_is_named() {
        let e = read_credential(Path::new("/nonexistent/admin.cred")).unwrap_err();
        assert!(e.contains("/nonexistent/admin.cred"), "{e}");
    }

    #[test]
    fn only_agents_with_a_certificate_get_tls_settings() {
        let certs = AgentCerts {
            ca_der: vec![1, 2, 3],
            certs: vec![AgentCert {
                cert_der: vec![4],
                key_pkcs8_der: vec![5],
            }],
        };
        assert!(certs.client_tls(0).is_some());
        assert!(certs.client_tls(1).is_none());
        assert_eq!(format!("{certs:?}"), "AgentCerts(1 certificates)");
    }
}
