//! Wires the store, the registry, the command router and the two gRPC
//! listeners together, and stops them in order. It opens the store through
//! its face only (`store::Store`, with the backend's config).
//!
//! [`run`] takes already-bound listeners and a shutdown future, so tests
//! drive a real server in-process on `127.0.0.1:0`. Shutdown: notice (the
//! future resolves), tell (`stopping` flips: every agent stream ends, the
//! listeners stop accepting), wait (the servers finish, bounded by
//! [`DRAIN_TIMEOUT`]; the store commits what it has and closes).
//!
//! HTTP/2 keepalive pings (see [`monitor::keepalive`]) notice an agent that
//! froze or vanished without closing its connection (a half-open TCP
//! connection), so it is marked offline within a minute.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use monitor::pb::admin_server::AdminServer;
use monitor::pb::collector_server::CollectorServer;
use monitor::sd_notify::Notifier;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::Server;

use crate::admin::AdminService;
use crate::commands::CommandRouter;
use crate::config::Config;
use crate::health::{self, ReflectionGate};
use crate::http;
use crate::ingest::CollectorService;
use crate::listener::{self, Limits, Preface};
use crate::registry::{INGEST_RATE, Registry, TEST_INGEST_RATE_ENV};
use crate::remote_write;
use crate::replicas;
use crate::store::{Store, StoreConfig, StoreError};
use crate::telemetry::Telemetry;
use crate::throttle::Rate;
use crate::tls::setup::{self, SetupError};

/// On a store several servers share, how often each reloads the
/// certificates and signing keys the others recorded (an agent enrolled
/// through one replica is accepted by the others this long after).
pub const TRUST_RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// Longest a graceful stop waits for connections to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message an agent may send (a batch is well under 2 KiB, a hello
/// or a certificate request under 2 KiB, a command's output chunk at most
/// 16 KiB). What a stream holds while decoding one message, so kept small:
/// a hello flood of 256 KiB messages once took the server to 996 MiB.
pub const MAX_AGENT_MESSAGE_BYTES: usize = 64 * 1024;
/// Streams one agent connection may open (an agent uses two).
pub const MAX_STREAMS_PER_AGENT: u32 = 16;
/// HTTP/2 receive window of one agent stream: what an agent may have sent
/// that the server has not read yet. An agent keeps at most 64 batches of
/// a few hundred bytes in flight, so 64 KiB never slows it; and a peer
/// that floods without reading its acks is held back after this much.
pub const AGENT_STREAM_WINDOW_BYTES: u32 = 64 * 1024;
/// HTTP/2 receive window of one agent connection (all its streams).
pub const AGENT_CONNECTION_WINDOW_BYTES: u32 = 256 * 1024;

#[derive(Debug)]
pub enum ServerError {
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    Store(StoreError),
    Tls(SetupError),
    Serve(tonic::transport::Error),
    /// The HTTP listener's or remote-write's set-up.
    Setup(String),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ServerError::Store(e) => write!(f, "{e}"),
            ServerError::Tls(e) => write!(f, "{e}"),
            ServerError::Serve(e) => write!(f, "serving: {e}"),
            ServerError::Setup(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Bind { source, .. } => Some(source),
            ServerError::Store(e) => Some(e),
            ServerError::Tls(e) => Some(e),
            ServerError::Serve(e) => Some(e),
            ServerError::Setup(_) => None,
        }
    }
}

/// The bound sockets.
pub struct Listeners {
    pub agents: TcpListener,
    pub admin: TcpListener,
    /// `None` with `--http-listen off`.
    pub http: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Listeners, ServerError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })
        };
        Ok(Listeners {
            agents: bind(config.listen).await?,
            admin: bind(config.admin_listen).await?,
            http: match config.http_listen {
                Some(a) => Some(bind(a).await?),
                None => None,
            },
        })
    }

    pub fn agents_addr(&self) -> std::io::Result<SocketAddr> {
        self.agents.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Test knob: the store's merge interval in milliseconds (see `run`).
pub const TEST_MERGE_INTERVAL_ENV: &str = "MONITOR_TEST_MERGE_INTERVAL_MS";

/// Runs the server until `shutdown` resolves.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let mut store_config = config.db.store_config(config.retention);
    // For tests only: how long batches wait in the store's journal before
    // their host is merged (milliseconds), so fault tests can crash the
    // server with both merged and unmerged batches in the file.
    if let (StoreConfig::Sqlite(c), Some(ms)) = (
        &mut store_config,
        std::env::var(TEST_MERGE_INTERVAL_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok()),
    ) {
        c.merge_interval = Duration::from_millis(ms);
    }
    let telemetry = Arc::new(Telemetry::new(monitor::time::now_unix_ms()));
    let (stored_tx, stored_rx) = watch::channel(0u64);
    store_config.set_observer(telemetry.flush_observer(stored_tx));
    let store = Store::open(store_config)
        .await
        .map_err(ServerError::Store)?;
    let hosts = store.hosts().await.map_err(ServerError::Store)?;
    log::info!(
        "store {} ({}) open: {} known hosts",
        config.db,
        store.backend_name(),
        hosts.len()
    );
    // Every host starts offline: the registry only knows who connects
    // from now on; what the store knows of each host stays in the store.
    // For tests only: a smaller ingest budget per host (`RATE,BURST`), so
    // a real agent meets it within seconds.
    let ingest_rate = std::env::var(TEST_INGEST_RATE_ENV)
        .ok()
        .and_then(|v| Rate::parse(&v))
        .unwrap_or(INGEST_RATE);
    let registry = Arc::new(Registry::with_ingest_rate(ingest_rate));
    // Replicas on a shared store reach each other's agents through it.
    let relay = store
        .is_shared()
        .then(|| Arc::new(replicas::Relay::new(store.clone())));
    let mut router = CommandRouter::new(Arc::clone(&registry), store.clone())
        .with_telemetry(Arc::clone(&telemetry));
    if let Some(r) = &relay {
        router = router.with_relay(Arc::clone(r));
    }
    let router = Arc::new(router);
    let (stop_tx, stop_rx) = watch::channel(false);
    let forwarding = remote_write::start(
        &store,
        &config.remote_write,
        config.remote_write_max_lag,
        stored_rx,
        stop_rx.clone(),
    )
    .await
    .map_err(ServerError::Setup)?;
    let agents_addr = listeners.agents_addr().ok();
    let admin_addr = listeners.admin_addr().ok();
    let secured = match &config.tls {
        Some(tls) => {
            let admin_at = admin_addr.unwrap_or(config.admin_listen);
            Some(
                setup::start(tls, &store, &registry, admin_at)
                    .await
                    .map_err(ServerError::Tls)?,
            )
        }
        None => {
            log::warn!(
                "--insecure: every listener speaks plain text with no authentication; anyone \
                 who reaches them is an agent or an operator, and /metrics is open"
            );
            None
        }
    };
    let enrolment = secured.as_ref().map(|s| Arc::clone(&s.enrolment));
    let collector = CollectorService {
        store: store.clone(),
        registry: Arc::clone(&registry),
        router: Arc::clone(&router),
        max_clock_skew_ms: config.max_clock_skew.as_millis() as i64,
        stopping: stop_rx.clone(),
        enrolment: enrolment.clone(),
        telemetry: Arc::clone(&telemetry),
    };
    let sessions = Arc::new(http::Sessions::default());
    let tls_names = config.tls.as_ref().map(|t| t.names.as_slice());
    let admin = AdminService {
        store: store.clone(),
        registry: Arc::clone(&registry),
        router: Arc::clone(&router),
        enrolment: enrolment.clone(),
        telemetry: Arc::clone(&telemetry),
        remote_write: Arc::clone(&forwarding.stats),
        http_listen: listeners.http_addr(),
        sessions: Arc::clone(&sessions),
        dashboard_url: listeners.http_addr().map(|a| http::base_url(a, tls_names)),
    };
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let agents_incoming = listener::incoming(
        listeners.agents,
        "agents",
        secured.as_ref().map(|s| s.agents.clone()),
        (Limits::AGENTS, Preface::Http2),
        stop_rx.clone(),
    );
    let admin_incoming = listener::incoming(
        listeners.admin,
        "operator API",
        secured.as_ref().map(|s| s.admin.clone()),
        (Limits::OPERATORS, Preface::Http2),
        stop_rx.clone(),
    );
    // Health (no certificate needed) and reflection (the listener's own
    // authentication) beside each listener's service: see health.rs.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let gate = |t: Option<&listener::TlsSetup>| ReflectionGate {
        trust: t.map(|t| Arc::clone(&t.trust)),
    };
    let reflection_error =
        |e: tonic_reflection::server::Error| ServerError::Setup(format!("gRPC reflection: {e}"));
    let agent_routes = health::add_reflection(
        Routes::new(
            CollectorServer::new(collector).max_decoding_message_size(MAX_AGENT_MESSAGE_BYTES),
        )
        .add_service(health_service.clone()),
        gate(secured.as_ref().map(|s| &s.agents)),
    )
    .map_err(reflection_error)?;
    let admin_routes = health::add_reflection(
        Routes::new(
            AdminServer::new(admin).max_decoding_message_size(crate::admin::MAX_REQUEST_BYTES),
        )
        .add_service(health_service),
        gate(secured.as_ref().map(|s| &s.admin)),
    )
    .map_err(reflection_error)?;
    let health_watch = tokio::spawn(health::watch(
        health_reporter,
        Arc::clone(&telemetry),
        stop_rx.clone(),
    ));
    let http = match listeners.http {
        Some(l) => {
            let addr = l.local_addr().ok();
            let auth = match &secured {
                Some(s) => {
                    let dir = config.tls.as_ref().map(|t| t.dir.as_path());
                    http::Auth::required(
                        dir.unwrap_or(std::path::Path::new("tls")),
                        config.metrics_token_file.as_deref(),
                        Arc::clone(&s.http.trust),
                        Arc::clone(&sessions),
                    )
                    .map_err(|e| ServerError::Setup(e.to_string()))?
                }
                None => http::Auth::open(),
            };
            let state = http::HttpState {
                store: store.clone(),
                registry: Arc::clone(&registry),
                telemetry: Arc::clone(&telemetry),
                remote_write: Arc::clone(&forwarding.stats),
                auth: Arc::new(auth),
                sessions: Arc::clone(&sessions),
                answers: Default::default(),
                proc_root: "/proc".into(),
            };
            let incoming = listener::incoming(
                l,
                "HTTP",
                secured.as_ref().map(|s| s.http.clone()),
                (Limits::HTTP, Preface::AnyHttp),
                stop_rx.clone(),
            );
            if let Some(a) = addr {
                let how = if secured.is_some() {
                    "https, bearer token, operator certificate or dashboard session"
                } else {
                    "plain http, no authentication"
                };
                log::info!(
                    "HTTP listener on {a} ({how}): /metrics, the dashboard at {} \
                     (monitorctl dashboard prints a login URL)",
                    http::base_url(a, tls_names)
                );
            }
            Some(tokio::spawn(http::serve(
                incoming,
                http::router(state),
                stop_rx.clone(),
            )))
        }
        None => None,
    };
    let (keepalive_interval, keepalive_timeout) = monitor::keepalive::from_env();
    let agents = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(keepalive_interval))
        .http2_keepalive_timeout(Some(keepalive_timeout))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_AGENT))
        .initial_stream_window_size(Some(AGENT_STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(AGENT_CONNECTION_WINDOW_BYTES))
        .add_routes(agent_routes)
        .serve_with_incoming_shutdown(agents_incoming, stopped(stop_rx.clone()));
    let admin = Server::builder()
        .tcp_nodelay(true)
        .add_routes(admin_routes)
        .serve_with_incoming_shutdown(admin_incoming, stopped(stop_rx.clone()));
    let mut agents = tokio::spawn(agents);
    let mut admin = tokio::spawn(admin);
    if let (Some(a), Some(b)) = (agents_addr, admin_addr) {
        let how = if secured.is_some() {
            "TLS"
        } else {
            "plain text"
        };
        log::info!("listening for agents on {a}, operator API on {b} ({how})");
    }
    if let Some(s) = &secured {
        log::info!(
            "operator credential for this box: {}",
            s.admin_credential.display()
        );
    }
    // Expired certificates leave the trust table (their handshakes fail
    // on the date anyway), so it holds only what can still be used.
    let pruner = enrolment.clone().map(|e| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                e.trust.prune(monitor::time::now_unix_ms());
            }
        })
    });
    // On a store several servers share, what the others enrolled, revoked
    // or registered reaches this one within TRUST_RELOAD_INTERVAL.
    let replica = relay.map(|r| {
        tokio::spawn(replicas::run(
            r,
            Arc::clone(&router),
            Arc::clone(&registry),
            stop_rx.clone(),
        ))
    });
    let trust_reloader = enrolment.filter(|_| store.is_shared()).map(|e| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TRUST_RELOAD_INTERVAL);
            loop {
                tick.tick().await;
                if let Err(err) = setup::reload_trust(&e).await {
                    log::debug!("trust: cannot reload from the store: {err}");
                }
            }
        })
    });
    let notifier = Arc::new(Notifier::from_env());
    notifier.ready();
    let watchdog = notifier.watchdog_interval().map(|every| {
        let store = store.clone();
        let notifier = Arc::clone(&notifier);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                // Only a server whose store still answers is alive.
                if store.hosts().await.is_ok() {
                    notifier.watchdog();
                }
            }
        })
    });

    let mut serve_error = None;
    tokio::select! {
        () = shutdown => log::info!("stopping"),
        r = &mut agents => serve_error = Some(r),
        r = &mut admin => serve_error = Some(r),
    }
    notifier.stopping();
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let _ = (&mut agents).await;
        let _ = (&mut admin).await;
    })
    .await;
    if drained.is_err() {
        log::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
        agents.abort();
        admin.abort();
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    if let Some(p) = pruner {
        p.abort();
    }
    if let Some(r) = trust_reloader {
        r.abort();
    }
    // Its sessions released, so other replicas stop routing here at once.
    if let Some(r) = replica
        && tokio::time::timeout(DRAIN_TIMEOUT, r).await.is_err()
    {
        log::warn!("the replica's sessions not released after {DRAIN_TIMEOUT:?}");
    }
    // The forwarders stop at their next wait; one in the middle of a
    // request is cut off (its batches are sent again after a restart).
    let forwarders = futures_join(forwarding.tasks);
    if tokio::time::timeout(DRAIN_TIMEOUT, forwarders)
        .await
        .is_err()
    {
        log::warn!("remote-write still sending after {DRAIN_TIMEOUT:?}; stopped");
    }
    if let Some(h) = http {
        let _ = h.await;
    }
    let _ = health_watch.await;
    store.close().await.map_err(ServerError::Store)?;
    log::info!("store closed");
    match serve_error {
        Some(Ok(Err(e))) => Err(ServerError::Serve(e)),
        _ => Ok(()),
    }
}

/// Waits for every task of `tasks`, aborting those still running when the
/// returned future is dropped.
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    struct AbortOnDrop(Vec<tokio::task::AbortHandle>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            for t in &self.0 {
                t.abort();
            }
        }
    }
    let _guard = AbortOnDrop(tasks.iter().map(|t| t.abort_handle()).collect());
    for t in tasks {
        let _ = t.await;
    }
}
