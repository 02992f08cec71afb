//! The HTTP client of one remote-write destination: hyper's HTTP/1.1
//! client over TCP, or over rustls (ring) for https; one kept-alive
//! connection, made again after any failure. No OpenSSL, no aws-lc.
//!
//! [`Client::post`] sends one body and says what became of it
//! ([`Sent`]): the forwarder decides from that whether to retry, drop or
//! go on. Nothing here retries or sleeps, and every wait is bounded
//! (connect, TLS handshake, the whole exchange).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::destination::{Credentials, Destination};

/// Longest wait for the TCP connection and the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a response, body included.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most of a response body kept (the receiver's error message).
const MAX_RESPONSE_BYTES: usize = 4096;

/// What a POST came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// 2xx.
    Accepted,
    /// 5xx or 429: the receiver may take it later.
    Retry { status: u16, message: String },
    /// Any other status: the receiver will never take it (bad data, too
    /// old, out of order, unauthorised).
    Refused { status: u16, message: String },
    /// No answer: connection refused or reset, timeout, TLS failure.
    Unreachable(String),
}

/// One destination's connection.
pub struct Client {
    destination: Destination,
    tls: Option<TlsConnector>,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(destination: Destination) -> Result<Client, String> {
        let tls = if destination.uri.scheme_str() == Some("https") {
            let mut roots = rustls::RootCertStore::empty();
            for der in &destination.roots_der {
                // A bundle may hold a certificate rustls cannot use; the
                // others still count.
                let _ = roots.add(CertificateDer::from(der.clone()));
            }
            if roots.is_empty() {
                return Err(format!("{}: no usable CA certificate", destination.url));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Client {
            destination,
            tls,
            conn: None,
        })
    }

    /// POSTs a remote-write body (snappy-compressed protobuf).
    pub async fn post(&mut self, body: Vec<u8>) -> Sent {
        match tokio::time::timeout(EXCHANGE_TIMEOUT, self.exchange(body)).await {
            Ok(Ok(sent)) => sent,
            Ok(Err(e)) => {
                self.conn = None;
                Sent::Unreachable(e)
            }
            Err(_) => {
                self.conn = None;
                Sent::Unreachable(format!("no answer within {EXCHANGE_TIMEOUT:?}"))
            }
        }
    }

    async fn exchange(&mut self, body: Vec<u8>) -> Result<Sent, String> {
        let uri = &self.destination.uri;
        let host = uri.host().unwrap_or_default();
        let mut builder = hyper::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                hyper::header::HOST,
                uri.authority().map_or(host, |a| a.as_str()),
            )
            .header(hyper::header::CONTENT_ENCODING, "snappy")
            .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
            .header(
                hyper::header::USER_AGENT,
                concat!("monitor-server/", env!("CARGO_PKG_VERSION")),
            )
            .header("X-Prometheus-Remote-Write-Version", "0.1.0");
        if let Credentials::Header(h) = &self.destination.credentials {
            builder = builder.header(hyper::header::AUTHORIZATION, h);
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let sender = match &mut self.conn {
            Some(s) if !s.is_closed() => s,
            _ => self.conn.insert(self.connect().await?),
        };
        sender.ready().await.map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = String::from_utf8_lossy(&body).trim().to_owned();
        Ok(match status {
            200..=299 => Sent::Accepted,
            429 | 500..=599 => Sent::Retry { status, message },
            _ => Sent::Refused { status, message },
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let uri = &self.destination.uri;
        let host = uri.host().unwrap_or_default();
        let https = self.tls.is_some();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        // An IPv6 literal comes bracketed.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let connect = async {
            let tcp = TcpStream::connect((bare, port))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => handshake(TokioIo::new(tcp)).await,
                Some(tls) => {
                    let name = ServerName::try_from(bare.to_owned())
                        .map_err(|e| format!("'{bare}': {e}"))?;
                    let stream = tls
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS: {e}"))?;
                    handshake(TokioIo::new(stream)).await
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
    }
}

/// The HTTP/1.1 handshake on an open stream; the connection is driven by a
/// task of its own, which ends when the connection does.
async fn handshake<T>(io: TokioIo<T>) -> Result<SendRequest<Full<Bytes>>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            log::debug!("remote-write connection ended: {e}");
        }
    });
    Ok(sender)
}
