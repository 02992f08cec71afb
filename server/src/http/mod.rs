//! The server's HTTP listener (`--http-listen`, default 127.0.0.1:50053):
//! `/metrics` for Prometheus, the web dashboard's pages and its JSON API
//! under `/api/`. Served from the same process with axum, through the
//! server's own accept loop (`listener.rs`: caps, TLS, the handshake
//! deadline), with its own limits; answers are gzipped when the client
//! accepts it.
//!
//! - [`router`] builds the routes from an [`HttpState`]; tests call it with
//!   `tower::ServiceExt::oneshot`, no socket needed.
//! - [`serve`] runs the router on the accepted connections (HTTP/1.1 and
//!   HTTP/2, told apart by hyper) until the server stops.
//! - `auth.rs`: every route but `/login` and `/assets/` needs a bearer
//!   token, an operator's client certificate (HTTPS with the server's
//!   certificate) or a dashboard session (`session.rs`), unless the server
//!   runs with `--insecure` (plain HTTP, no authentication).
//! - `metrics.rs`, `exposition.rs`, `process.rs`: the `/metrics` body.
//! - `pages.rs` (pages, files, `/login`, security headers), `api.rs` (the
//!   JSON API), `plot.rs` (series laid out for a plot), `shared.rs`
//!   (answers every open page shares: one build per period, gzipped once,
//!   ETag and 304): the dashboard.
//!
//! A handler must never hold a lock of the store or the registry while it
//! encodes (it copies, then encodes on the blocking pool), and never make
//! the store's writer wait.

pub mod api;
pub mod auth;
pub mod exposition;
pub mod metrics;
pub mod pages;
pub mod plot;
pub mod process;
pub mod session;
pub mod shared;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::listener::{Conn, PeerInfo};
use crate::registry::Registry;
use crate::remote_write::AllStats;
use crate::store::Store;
use crate::telemetry::Telemetry;
pub use auth::{Auth, Principal};
use exposition::Format;
pub use session::Sessions;

/// How long a client has to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub telemetry: Arc<Telemetry>,
    pub remote_write: AllStats,
    pub auth: Arc<Auth>,
    /// Dashboard login tokens and sessions (shared with the admin API,
    /// which issues the tokens).
    pub sessions: Arc<Sessions>,
    /// The fleet page's answers (hosts, sparklines), shared by every page
    /// for a while.
    pub answers: Arc<api::SharedAnswers>,
    /// `/proc` (a test may point elsewhere).
    pub proc_root: PathBuf,
}

/// The routes: everything behind authentication but the login and the
/// static files; security headers and gzip on every answer.
pub fn router(state: HttpState) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/", get(pages::page))
        .route("/host/{name}", get(pages::page))
        .route("/commands", get(pages::page))
        .route("/api/metrics", get(api::metrics))
        .route("/api/hosts", get(api::hosts))
        .route("/api/hosts/{name}", get(api::host))
        .route("/api/hosts/{name}/series", get(api::series))
        .route("/api/hosts/{name}/health", get(api::health))
        .route("/api/sparklines", get(api::sparklines))
        .route("/api/commands", get(api::commands))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ));
    Router::new()
        .route("/login", get(pages::login))
        .route("/assets/{name}", get(pages::asset))
        .merge(protected)
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(axum::middleware::from_fn(pages::security_headers))
        .with_state(state)
}

/// The dashboard's address for a browser: `https://NAME:PORT/` where NAME
/// is the listener's own IP when the certificate names it (the default
/// names include 127.0.0.1 and ::1), else the certificate's first name;
/// `http://IP:PORT/` with `--insecure` (`tls_names` `None`).
pub fn base_url(listen: std::net::SocketAddr, tls_names: Option<&[String]>) -> String {
    let ip = listen.ip();
    let host = match tls_names {
        None => ip.to_string(),
        Some(names) => {
            let own = ip.to_string();
            if !ip.is_unspecified() && names.contains(&own) {
                own
            } else {
                names.first().cloned().unwrap_or(own)
            }
        }
    };
    let host = if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host
    };
    let scheme = if tls_names.is_some() { "https" } else { "http" };
    format!("{scheme}://{host}:{}/", listen.port())
}

/// Refuses a request that proves no identity (see `auth.rs`); the
/// principal goes into the request's extensions for the handlers.
async fn authenticate(State(state): State<HttpState>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<PeerInfo>();
    match state.auth.check(req.headers(), peer) {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(refused) => {
            let mut r = (StatusCode::UNAUTHORIZED, refused.message()).into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"monitor\""),
            );
            r
        }
    }
}

async fn metrics_handler(State(state): State<HttpState>, req: Request) -> Response {
    let format = Format::from_accept(
        req.headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let snap = match metrics::snapshot(&state).await {
        Ok(s) => s,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the store is unavailable: {e}\n"),
            )
                .into_response();
        }
    };
    let telemetry = Arc::clone(&state.telemetry);
    let forwarding = Arc::clone(&state.remote_write);
    let body = tokio::task::spawn_blocking(move || {
        metrics::encode(&snap, &telemetry, &forwarding, format)
    })
    .await;
    match body {
        Ok(body) => (
            [(header::CONTENT_TYPE, format.content_type())],
            Body::from(body),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// Serves `router` on every connection `incoming` hands over until `stop`
/// turns true; then closes the open ones (a scrape is short: nothing is
/// lost that the scraper will not ask again).
pub async fn serve(
    mut incoming: ReceiverStream<Result<Conn, std::io::Error>>,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let conn = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            c = incoming.next() => match c {
                Some(Ok(c)) => c,
                Some(Err(_)) => continue,
                None => break,
            },
        };
        let peer = conn.peer().clone();
        let router = router.clone();
        // Each request carries who the connection is (its certificate).
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(peer.clone());
                let router = router.clone();
                async move {
                    let response = tower::ServiceExt::oneshot(router, req.map(Body::new)).await;
                    Ok::<_, Infallible>(response.unwrap_or_else(|e| match e {}))
                }
            });
        connections.spawn(async move {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            if let Err(e) = builder.serve_connection(TokioIo::new(conn), service).await {
                log::debug!("HTTP connection: {e}");
            }
        });
    }
    connections.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_url_uses_a_name_the_certificate_holds() {
        let names: Vec<String> = ["pi-server", "localhost", "127.0.0.1", "::1"]
            .map(String::from)
            .to_vec();
        let at = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert_eq!(
            base_url(at("127.0.0.1:50053"), Some(&names)),
            "https://127.0.0.1:50053/"
        );
        assert_eq!(base_url(at("[::1]:7"), Some(&names)), "https://[::1]:7/");
        assert_eq!(
            base_url(at("0.0.0.0:50053"), Some(&names)),
            "https://pi-server:50053/"
        );
        assert_eq!(
            base_url(at("192.0.2.9:50053"), Some(&names)),
            "https://pi-server:50053/"
        );
        assert_eq!(
            base_url(at("127.0.0.1:8080"), None),
            "http://127.0.0.1:8080/"
        );
    }
}
