//! The connection to the server's operator API (`Admin`).
//!
//! One place decides how long monitorctl waits for the server and how
//! large an answer it accepts; it never retries: an operator at a shell
//! wants a prompt "cannot reach" (exit 3), not a hang.

use std::time::Duration;

use monitor::pb::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::args::Server;
use crate::error::CtlError;

/// How long to wait for the TCP and HTTP/2 handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message accepted from the server (a query chunk, a hosts
/// list); larger than tonic's 4 MiB default for big fleets.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The operator API's client.
pub type Client = AdminClient<Channel>;

/// Connects to `server`, or fails with [`CtlError::Connect`].
pub async fn connect(server: Server) -> Result<Client, CtlError> {
    let Server { url, endpoint } = server;
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|source| CtlError::Connect { url, source })?;
    Ok(AdminClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
}
