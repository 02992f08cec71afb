//! Several `monitor-server` replicas on one shared store (PostgreSQL): who
//! holds which agent, and commands between them.
//!
//! Each replica has a random id and a lease in the store, renewed every
//! [`HEARTBEAT_EVERY`] for [`LEASE`]. Every [`SYNC_EVERY`] it records in
//! the store's sessions table which hosts' command streams it holds (a
//! claim per connection, with an epoch), so any replica can find the
//! holder of any host. A command sent through replica A to a host held by
//! B is left in the store for B (the table is the truth, `NOTIFY` the
//! doorbell, and B also looks every [`SYNC_EVERY`] in case a ring was
//! missed); B pushes it to the agent and leaves the agent's answers for A,
//! which streams them to the operator and records the final result, once
//! (see `commands.rs`). A replica that dies stops renewing its lease: its
//! sessions stop counting within [`LEASE`], and a command A relayed to it
//! ends as "lost connection" (never hangs).
//!
//! Nothing here runs on a store of one server (SQLite), and nothing may
//! hold a host's claim after its stream closed for longer than one sync.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::commands::CommandRouter;
use crate::registry::Registry;
use crate::store::{RelayKind, RelayRecord, Store, StoreError};

/// How long a replica's sessions count after its last heartbeat.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often a replica renews its lease.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);
/// How often a replica records its sessions and looks for messages it may
/// have missed the bell of.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// This replica, as the command router sees it: its id and the store the
/// replicas share.
#[derive(Debug)]
pub struct Relay {
    pub id: String,
    store: Store,
}

impl Relay {
    pub fn new(store: Store) -> Relay {
        Relay {
            id: monitor::random::random_id(),
            store,
        }
    }

    /// Hosts whose command stream another live replica holds, and which.
    pub async fn holders(&self) -> Result<HashMap<String, String>, StoreError> {
        Ok(self
            .store
            .sessions()
            .await?
            .into_iter()
            .filter(|s| s.live && s.replica != self.id)
            .map(|s| (s.hostname, s.replica))
            .collect())
    }

    /// Leaves a message for replica `to`.
    pub async fn send(
        &self,
        to: &str,
        kind: RelayKind,
        hostname: &str,
        command_id: &str,
        body: Vec<u8>,
    ) -> Result<(), StoreError> {
        let message = RelayRecord {
            kind,
            from: self.id.clone(),
            hostname: hostname.to_owned(),
            command_id: command_id.to_owned(),
            body,
        };
        self.store.relay(to, &message).await
    }
}

/// Runs this replica's side of the shared store until `stop` turns true:
/// the lease, the sessions, and the messages other replicas leave.
pub async fn run(
    relay: Arc<Relay>,
    router: Arc<CommandRouter>,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
) {
    let store = relay.store.clone();
    let (bell_tx, mut bell) = mpsc::channel(1);
    store.listen_relay(&relay.id, bell_tx);
    log::info!(
        "replica {} on a shared store: lease {} s",
        relay.id,
        LEASE.as_secs()
    );
    // The lease is renewed in a task of its own: delivering a long run of
    // relayed messages must never hold a renewal past the lease, or the
    // other replicas would take this one's agents for offline.
    let lease = tokio::spawn(renew_lease(store.clone(), relay.id.clone(), stop.clone()));
    let mut sync = tokio::time::interval(SYNC_EVERY);
    let mut sessions = Sessions::default();
    loop {
        tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
            }
            _ = sync.tick() => {
                sessions.sync(&store, &relay.id, &registry).await;
                deliver(&relay, &router).await;
            }
            Some(()) = bell.recv() => deliver(&relay, &router).await,
        }
    }
    let _ = lease.await;
    sessions.release_all(&store, &relay.id).await;
}

/// Renews replica `id`'s lease every [`HEARTBEAT_EVERY`] until `stop`
/// turns true; logs once when renewing starts failing and once when it
/// works again.
async fn renew_lease(store: Store, id: String, mut stop: watch::Receiver<bool>) {
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    let mut failing = false;
    loop {
        tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
            }
            _ = heartbeat.tick() => match store.heartbeat(&id, LEASE).await {
                Ok(()) if failing => {
                    failing = false;
                    log::info!("replica {id}: lease renewed again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    log::warn!("replica {id}: cannot renew its lease: {e}");
                }
                Err(_) => {}
            },
        }
    }
}

/// Handles every message left for this replica.
async fn deliver(relay: &Relay, router: &Arc<CommandRouter>) {
    let messages = match relay.store.take_relayed(&relay.id).await {
        Ok(m) => m,
        Err(e) => {
            log::debug!("replica {}: cannot take relayed messages: {e}", relay.id);
            return;
        }
    };
    for m in messages {
        match m.kind {
            RelayKind::Run => {
                router
                    .run_relayed(&m.from, &m.hostname, &m.command_id, &m.body)
                    .await
            }
            RelayKind::Cancel => router.cancel_relayed(&m.hostname, &m.command_id),
            RelayKind::Response => {
                router
                    .on_relayed_response(&m.hostname, &m.command_id, &m.body)
                    .await
            }
        }
    }
}

/// The claims this replica made: host → (its command stream's connection
/// id, the claim's epoch).
#[derive(Default)]
struct Sessions {
    claimed: HashMap<String, (u64, i64)>,
}

impl Sessions {
    /// Claims the hosts whose command stream opened (or reopened) since
    /// the last sync, releases those whose stream closed.
    async fn sync(&mut self, store: &Store, replica: &str, registry: &Registry) {
        let mut held: HashMap<String, u64> = HashMap::new();
        for host in registry.online_hosts() {
            if let Some((conn, _)) = registry.command_sender(&host) {
                held.insert(host, conn);
            }
        }
        let gone: Vec<String> = self
            .claimed
            .keys()
            .filter(|h| !held.contains_key(*h))
            .cloned()
            .collect();
        for host in gone {
            if let Some((_, epoch)) = self.claimed.remove(&host)
                && let Err(e) = store.release_session(&host, replica, epoch).await
            {
                log::debug!("replica {replica}: cannot release {host}: {e}");
            }
        }
        let stale: HashSet<&String> = held
            .iter()
            .filter(|(h, conn)| self.claimed.get(*h).is_none_or(|(c, _)| c != *conn))
            .map(|(h, _)| h)
            .collect();
        for host in stale {
            match store.claim_session(host, replica).await {
                Ok(epoch) => {
                    self.claimed.insert(host.clone(), (held[host], epoch));
                }
                Err(e) => log::debug!("replica {replica}: cannot claim {host}: {e}"),
            }
        }
    }

    /// At shutdown: every claim ends (the agents reconnect elsewhere).
    async fn release_all(&mut self, store: &Store, replica: &str) {
        for (host, (_, epoch)) in self.claimed.drain() {
            let _ = store.release_session(&host, replica, epoch).await;
        }
    }
}
