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
use tonic::transport::Server;

use crate::admin::AdminService;
use crate::commands::CommandRouter;
use crate::config::Config;
use crate::ingest::CollectorService;
use crate::listener::{self, Limits};
use crate::registry::Registry;
use crate::store::{Store, StoreConfig, StoreError};
use crate::tls::setup::{self, SetupError};

/// On a store several servers share, how often each reloads the
/// certificates and signing keys the others recorded (an agent enrolled
/// through one replica is accepted by the others this long after).
pub const TRUST_RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// Longest a graceful stop waits for connections to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message an agent may send (a batch is well under 2 KiB; a
/// command's output chunk at most 16 KiB).
pub const MAX_AGENT_MESSAGE_BYTES: usize = 256 * 1024;
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
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ServerError::Store(e) => write!(f, "{e}"),
            ServerError::Tls(e) => write!(f, "{e}"),
            ServerError::Serve(e) => write!(f, "serving: {e}"),
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
        }
    }
}

/// The two bound sockets.
pub struct Listeners {
    pub agents: TcpListener,
    pub admin: TcpListener,
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
        })
    }

    pub fn agents_addr(&self) -> std::io::Result<SocketAddr> {
        self.agents.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
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
    let registry = Arc::new(Registry::default());
    let router = Arc::new(CommandRouter::new(Arc::clone(&registry), store.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
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
                "--insecure: both listeners speak plain text with no authentication; anyone \
                 who reaches them is an agent or an operator"
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
    };
    let admin = AdminService {
        store: store.clone(),
        registry: Arc::clone(&registry),
        router: Arc::clone(&router),
        enrolment: enrolment.clone(),
    };
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let agents_incoming = listener::incoming(
        listeners.agents,
        "agents",
        secured.as_ref().map(|s| s.agents.clone()),
        Limits::AGENTS,
        stop_rx.clone(),
    );
    let admin_incoming = listener::incoming(
        listeners.admin,
        "operator API",
        secured.as_ref().map(|s| s.admin.clone()),
        Limits::OPERATORS,
        stop_rx.clone(),
    );
    let (keepalive_interval, keepalive_timeout) = monitor::keepalive::from_env();
    let agents = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(keepalive_interval))
        .http2_keepalive_timeout(Some(keepalive_timeout))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_AGENT))
        .initial_stream_window_size(Some(AGENT_STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(AGENT_CONNECTION_WINDOW_BYTES))
        .add_service(
            CollectorServer::new(collector).max_decoding_message_size(MAX_AGENT_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(agents_incoming, stopped(stop_rx.clone()));
    let admin = Server::builder()
        .tcp_nodelay(true)
        .add_service(AdminServer::new(admin))
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
    store.close().await.map_err(ServerError::Store)?;
    log::info!("store closed");
    match serve_error {
        Some(Ok(Err(e))) => Err(ServerError::Serve(e)),
        _ => Ok(()),
    }
}
