//! The connection to the server's operator API (`Admin`): which URL, which
//! operator credential, TLS.
//!
//! Every Admin RPC needs an operator's client certificate: monitorctl reads
//! it from a credential file (`--credentials`, `MONITOR_CREDENTIALS`, else
//! `~/.config/monitor/credentials`, else the server's own
//! `/var/lib/monitor-server/tls/admin.cred`), which also holds the server's
//! CA (to check the server) and the admin API's URL. Only a server started
//! with `--insecure` is reached without one (`--insecure` here too).
//!
//! One place decides how long monitorctl waits for the server and how
//! large an answer it accepts; it never retries: an operator at a shell
//! wants a prompt "cannot reach" (exit 3), not a hang.

use std::path::{Path, PathBuf};
use std::time::Duration;

use monitor::credential::Credential;
use monitor::pb::admin_client::AdminClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::args::{DEFAULT_ADMIN, Server};
use crate::error::CtlError;

/// How long to wait for the TCP, TLS and HTTP/2 handshakes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message accepted from the server (a query chunk, a hosts
/// list); larger than tonic's 4 MiB default for big fleets.
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// The credential the server writes for its local operator, under systemd.
pub const SERVER_CREDENTIAL: &str = "/var/lib/monitor-server/tls/admin.cred";

/// The operator API's client.
pub type Client = AdminClient<Channel>;

/// A resolved connection: where, and as whom.
pub struct Connection {
    pub client: Client,
    /// The URL connected to (credentials written by `operator add` name it).
    pub url: String,
    /// The credential used (`None` with `--insecure`).
    pub credential: Option<Credential>,
}

/// The places a credential is looked for, in order.
fn default_places(server: &Server) -> Vec<PathBuf> {
    let mut places = Vec::new();
    let config_home = server
        .xdg_config_home
        .clone()
        .or_else(|| server.home.as_ref().map(|h| h.join(".config")));
    if let Some(dir) = config_home {
        places.push(dir.join("monitor").join("credentials"));
    }
    places.push(PathBuf::from(SERVER_CREDENTIAL));
    places
}

fn read_credential(path: &Path) -> Result<Credential, CtlError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (only its owner, and the group monitor where it is shared, may read it)"
        } else {
            ""
        };
        CtlError::Credential(format!("cannot read {}: {e}{hint}", path.display()))
    })?;
    Credential::decode(&text)
        .map_err(|e| CtlError::Credential(format!("{} is not a credential: {e}", path.display())))
}

/// The credential to use: the one named, else the first default place
/// that exists.
pub fn find_credential(server: &Server) -> Result<Credential, CtlError> {
    if let Some(path) = &server.credentials {
        return read_credential(path);
    }
    let places = default_places(server);
    for place in &places {
        if place.exists() {
            return read_credential(place);
        }
    }
    let looked: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
    Err(CtlError::Credential(format!(
        "no operator credential (looked for {}): pass --credentials FILE or set \
         MONITOR_CREDENTIALS; an operator makes one with 'monitorctl operator add NAME --out FILE'",
        looked.join(", ")
    )))
}

/// Connects to the operator API, or fails with exit code 3.
pub async fn connect(server: Server) -> Result<Connection, CtlError> {
    let (url, credential) = if server.insecure {
        let url = server
            .url
            .clone()
            .unwrap_or_else(|| DEFAULT_ADMIN.replacen("https://", "http://", 1));
        (url, None)
    } else {
        let credential = find_credential(&server)?;
        let url = server
            .url
            .clone()
            .or_else(|| {
                credential
                    .fact("server")
                    .filter(|u| u.starts_with("https://"))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| DEFAULT_ADMIN.to_owned());
        (url, Some(credential))
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|_| CtlError::Credential(format!("the server URL '{url}' is not usable")))?
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(c) = &credential {
        endpoint = endpoint
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(c.ca_pem()))
                    .identity(Identity::from_pem(c.cert_pem(), c.key_pem())),
            )
            .map_err(|source| CtlError::Connect {
                url: url.clone(),
                source,
            })?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| CtlError::Connect {
            url: url.clone(),
            source,
        })?;
    Ok(Connection {
        client: AdminClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
        url,
        credential,
    })
}
