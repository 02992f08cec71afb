//! The server's HTTP listener (`--http-listen`, default 127.0.0.1:50053):
//! `/metrics` for Prometheus today, the web dashboard's pages and JSON API
//! next. Served from the same process with axum, through the server's own
//! accept loop (`listener.rs`: caps, TLS, the handshake deadline), with its
//! own limits.
//!
//! - [`router`] builds the routes from an [`HttpState`]; tests call it with
//!   `tower::ServiceExt::oneshot`, no socket needed.
//! - [`serve`] runs the router on the accepted connections (HTTP/1.1 and
//!   HTTP/2, told apart by hyper) until the server stops.
//! - `auth.rs`: every route needs a bearer token or an operator's client
//!   certificate (HTTPS with the server's certificate), unless the server
//!   runs with `--insecure` (plain HTTP, no authentication).
//! - `metrics.rs`, `exposition.rs`, `process.rs`: the `/metrics` body.
//!
//! A handler must never hold a lock of the store or the registry while it
//! encodes (it copies, then encodes on the blocking pool), and never make
//! the store's writer wait.

pub mod auth;
pub mod exposition;
pub mod metrics;
pub mod process;

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
    /// `/proc` (a test may point elsewhere).
    pub proc_root: PathBuf,
}

/// The routes, behind authentication.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .with_state(state)
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
