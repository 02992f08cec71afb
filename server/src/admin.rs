//! The operator API (`monitor.v1.Admin`), served on the admin listener.
//! `monitorctl` is its client. Every RPC needs an operator's client
//! certificate (the listener's handshake requires one; each RPC checks the
//! identity again and records who asked); only a server started with
//! `--insecure` serves it to anyone, as the operator "insecure".
//!
//! `ListHosts` joins the two owners of what it shows: the store for a
//! host's facts (agent, first and last seen, counters, latest values), the
//! registry for its liveness (online, since when, peer, clock offset,
//! interval). It must stay fast with 10,000 hosts: both sides come sorted
//! by hostname and are joined in one pass.

use std::cmp::Ordering;
use std::sync::Arc;

use monitor::metric::Metric;
use monitor::pb;
use monitor::pb::admin_server::Admin;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::commands::CommandRouter;
use crate::enrolment::Enrolment;
use crate::listener::PeerInfo;
use crate::registry::{LiveHost, Registry};
use crate::remote_write::AllStats;
use crate::store::{HostRecord, SampleQuery, Store, StoreError};
use crate::telemetry::Telemetry;
use crate::tls::Role;

/// The operator name commands are recorded under with `--insecure`.
pub const INSECURE_OPERATOR: &str = "insecure";

/// Samples per `QueryChunk` message (about 40 bytes each on the wire).
const QUERY_CHUNK: usize = 4096;
/// History rows returned when the operator names no limit.
const DEFAULT_HISTORY: usize = 50;

#[derive(Clone)]
pub struct AdminService {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub router: Arc<CommandRouter>,
    /// Certificates and tokens; `None` with `--insecure`.
    pub enrolment: Option<Arc<Enrolment>>,
    /// The server's own counters (for `Status`).
    pub telemetry: Arc<Telemetry>,
    /// Each remote-write destination's counters (for `Status`).
    pub remote_write: AllStats,
    /// The HTTP listener's address, if on (for `Status`).
    pub http_listen: Option<std::net::SocketAddr>,
}

/// Maps a store error to a status the operator can act on.
pub fn status_of(e: StoreError) -> Status {
    match e {
        StoreError::UnknownHost(h) => Status::not_found(format!("unknown host '{h}'")),
        other => Status::internal(other.to_string()),
    }
}

impl AdminService {
    /// The operator a request comes from (its certificate's name), or
    /// UNAUTHENTICATED.
    fn operator<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let Some(enrolment) = &self.enrolment else {
            return Ok(INSECURE_OPERATOR.to_owned());
        };
        match PeerInfo::of(request).identity {
            Some(id)
                if id.role == Role::Operator && !enrolment.trust.is_revoked(&id.fingerprint) =>
            {
                Ok(id.name)
            }
            _ => Err(Status::unauthenticated(
                "an operator's client certificate is required (see monitorctl --credentials)",
            )),
        }
    }

    /// The trust RPCs' engine, or why there is none.
    fn enrolment(&self) -> Result<&Enrolment, Status> {
        self.enrolment.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "this server runs with --insecure: it has no certificates to make or revoke",
            )
        })
    }

    /// Whether the store or the registry knows `hostname`.
    async fn is_known(&self, hostname: &str) -> Result<bool, Status> {
        if self.registry.has_connected(hostname) {
            return Ok(true);
        }
        let stored = self.store.host(hostname).await.map_err(status_of)?;
        Ok(stored.is_some())
    }

    /// Not-found naming the host and, when few, the hosts that exist.
    async fn unknown_host(&self, hostname: &str) -> Status {
        let mut known = self.registry.connected_hosts();
        // On an error path only: copying every host record is fine here.
        if let Ok(records) = self.store.hosts().await {
            known.extend(records.into_iter().map(|r| r.hostname));
        }
        known.sort();
        known.dedup();
        let list = if known.is_empty() {
            "no host has reported yet".to_owned()
        } else if known.len() <= 20 {
            format!("known: {}", known.join(", "))
        } else {
            format!("{} hosts known; see monitorctl hosts", known.len())
        };
        Status::not_found(format!(
            "unknown host '{}' ({list})",
            monitor::text::Escaped::capped(hostname)
        ))
    }
}

/// Joins the store's hosts and the registry's (both sorted by hostname,
/// as `Store::hosts` and `Registry::snapshot` return them) into what
/// `ListHosts` shows, in one pass. A host's facts come from the store; its
/// liveness from the registry. The peer and clock offset are the live
/// connection's while the host is online, else those of its latest stored
/// batch.
pub fn host_infos(stored: Vec<HostRecord>, live: Vec<LiveHost>) -> Vec<pb::HostInfo> {
    let mut out = Vec::with_capacity(stored.len().max(live.len()));
    let mut stored = stored.into_iter().peekable();
    let mut live = live.into_iter().peekable();
    loop {
        let order = match (stored.peek(), live.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(s), Some(l)) => s.hostname.cmp(&l.hostname),
        };
        let (s, l) = match order {
            Ordering::Less => (stored.next(), None),
            Ordering::Greater => (None, live.next()),
            Ordering::Equal => (stored.next(), live.next()),
        };
        out.push(host_info(s, l));
    }
    out
}

fn host_info(stored: Option<HostRecord>, live: Option<LiveHost>) -> pb::HostInfo {
    let online = live.as_ref().is_some_and(|l| l.online);
    let mut info = pb::HostInfo {
        online,
        ..pb::HostInfo::default()
    };
    if let Some(l) = live {
        info.hostname = l.hostname;
        info.connected_since_unix_ms = l.connected_since_unix_ms;
        info.interval_ms = l.interval_ms;
        info.parse_errors_total = l.parse_errors_total;
        info.batches_conflicting_total = l.batches_conflicting_total;
        info.peer = l.peer;
        info.clock_offset_ms = l.clock_offset_ms;
    }
    if let Some(s) = stored {
        info.hostname = s.hostname;
        info.agent_id = s.agent_id;
        info.agent_version = s.agent_version;
        info.last_seen_unix_ms = s.last_seen_unix_ms;
        info.dropped_batches_total = s.dropped_batches_total;
        info.batches_stored_total = s.batches_stored_total;
        info.latest = s
            .latest
            .iter()
            .map(|v| pb::MetricValue {
                metric: v.metric.name().to_owned(),
                value: v.value,
                time_unix_ms: v.time_unix_ms,
            })
            .collect();
        if !online {
            info.peer = s.peer;
            info.clock_offset_ms = s.clock_offset_ms;
        }
    }
    info
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let operator = self.operator(&request)?;
        let answer = self
            .enrolment()?
            .create_join_token(&operator, request.into_inner())
            .await?;
        Ok(Response::new(answer))
    }

    async fn issue_agent_certificate(
        &self,
        request: Request<pb::IssueCertificateRequest>,
    ) -> Result<Response<pb::IssuedCertificate>, Status> {
        let operator = self.operator(&request)?;
        let answer = self
            .enrolment()?
            .issue(&operator, Role::Agent, request.into_inner())
            .await?;
        Ok(Response::new(answer))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let operator = self.operator(&request)?;
        let hostname = request.into_inner().hostname;
        let (certificates_revoked, was_connected) = self
            .enrolment()?
            .revoke(&operator, Role::Agent, &hostname)
            .await?;
        Ok(Response::new(pb::RevokeResponse {
            certificates_revoked,
            was_connected,
        }))
    }

    async fn add_operator(
        &self,
        request: Request<pb::IssueCertificateRequest>,
    ) -> Result<Response<pb::IssuedCertificate>, Status> {
        let operator = self.operator(&request)?;
        let answer = self
            .enrolment()?
            .issue(&operator, Role::Operator, request.into_inner())
            .await?;
        Ok(Response::new(answer))
    }

    async fn remove_operator(
        &self,
        request: Request<pb::RemoveOperatorRequest>,
    ) -> Result<Response<pb::RemoveOperatorResponse>, Status> {
        let operator = self.operator(&request)?;
        let name = request.into_inner().name;
        let (certificates_revoked, _) = self
            .enrolment()?
            .revoke(&operator, Role::Operator, &name)
            .await?;
        Ok(Response::new(pb::RemoveOperatorResponse {
            certificates_revoked,
        }))
    }

    async fn register_signing_key(
        &self,
        request: Request<pb::RegisterSigningKeyRequest>,
    ) -> Result<Response<pb::RegisterSigningKeyResponse>, Status> {
        let operator = self.operator(&request)?;
        self.enrolment()?
            .register_signing_key(&operator, &request.into_inner().public_key)
            .await?;
        Ok(Response::new(pb::RegisterSigningKeyResponse {}))
    }

    async fn list_operators(
        &self,
        request: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        self.operator(&request)?;
        Ok(Response::new(self.enrolment()?.operators().await?))
    }

    async fn list_hosts(
        &self,
        request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        self.operator(&request)?;
        let stored = self.store.hosts().await.map_err(status_of)?;
        Ok(Response::new(pb::ListHostsResponse {
            hosts: host_infos(stored, self.registry.snapshot()),
            server_unix_ms: monitor::time::now_unix_ms(),
        }))
    }

    type QueryStream = ReceiverStream<Result<pb::QueryChunk, Status>>;

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        self.operator(&request)?;
        let q = request.into_inner();
        if !self.is_known(&q.hostname).await? {
            return Err(self.unknown_host(&q.hostname).await);
        }
        let metric = if q.metric.is_empty() {
            None
        } else {
            Some(
                q.metric
                    .parse::<Metric>()
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            )
        };
        let rows = match self
            .store
            .query(SampleQuery {
                hostname: q.hostname.clone(),
                metric,
                since_unix_ms: q.since_unix_ms,
                until_unix_ms: (q.until_unix_ms != 0).then_some(q.until_unix_ms),
                limit: (q.limit != 0).then(|| usize::try_from(q.limit).unwrap_or(usize::MAX)),
            })
            .await
        {
            Ok(rows) => rows,
            Err(StoreError::UnknownHost(h)) => return Err(self.unknown_host(&h).await),
            Err(other) => return Err(status_of(other)),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for chunk in rows.chunks(QUERY_CHUNK) {
                let msg = pb::QueryChunk {
                    samples: chunk
                        .iter()
                        .map(|r| pb::Sample {
                            time_unix_ms: r.time_unix_ms,
                            hostname: r.hostname.clone(),
                            metric: r.metric.name().to_owned(),
                            value: r.value,
                        })
                        .collect(),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ExecStream = ReceiverStream<Result<pb::ExecEvent, Status>>;

    async fn exec(
        &self,
        request: Request<pb::ExecRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let operator = self.operator(&request)?;
        let req = request.into_inner();
        if let Some(signed) = &req.signed {
            match &self.enrolment {
                Some(e) => e.check_signed(&operator, signed)?,
                // Without TLS there are no registered keys: only the
                // agents judge the key (and the signature).
                None => {
                    if !monitor::signing::verify(
                        &signed.public_key,
                        &signed.grant,
                        &signed.signature,
                    ) {
                        return Err(Status::invalid_argument(
                            "signed: the signature does not match the grant",
                        ));
                    }
                }
            }
        }
        let (id, rx) = self.router.exec(req, &operator).await?;
        let mut response = Response::new(ReceiverStream::new(rx));
        if let Ok(v) = id.parse() {
            response.metadata_mut().insert("monitor-command-id", v);
        }
        Ok(response)
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let operator = self.operator(&request)?;
        let id = request.into_inner().command_id;
        if !self.router.is_running(&id) {
            return Err(Status::not_found(format!(
                "no running command with id '{}'",
                monitor::text::Escaped::capped(&id)
            )));
        }
        let hosts = self.router.cancel(&id);
        log::info!("operator {operator} cancelled command {id}");
        Ok(Response::new(pb::CancelResponse { hosts }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        use std::sync::atomic::Ordering::Relaxed;
        self.operator(&request)?;
        let hosts_known = self.store.hosts().await.map_err(status_of)?.len();
        let agents_connected = self.registry.snapshot().iter().filter(|l| l.online).count();
        let now = monitor::time::now_unix_ms();
        let t = &self.telemetry;
        Ok(Response::new(pb::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_unix_ms: t.started_unix_ms,
            server_unix_ms: now,
            agents_connected: u32::try_from(agents_connected).unwrap_or(u32::MAX),
            hosts_known: u32::try_from(hosts_known).unwrap_or(u32::MAX),
            store_queued: self.store.queued() as u64,
            batches_ingested: t.batches_stored.load(Relaxed),
            samples_ingested: t.samples_stored.load(Relaxed),
            remote_write: self
                .remote_write
                .iter()
                .map(|s| pb::RemoteWriteStatus {
                    url: s.url.clone(),
                    lag_seconds: s.lag_seconds(now),
                    sent_samples: s.sent_samples.load(Relaxed),
                    failed_samples: s.failed_samples.load(Relaxed),
                    dropped_samples: s.dropped_samples(),
                    refused_samples: s.refused_samples.load(Relaxed),
                    too_old_samples: s.too_old_samples.load(Relaxed),
                    cursor: s.cursor.load(Relaxed),
                    newest: s.newest.load(Relaxed),
                })
                .collect(),
            http_listen: self.http_listen.map(|a| a.to_string()).unwrap_or_default(),
        }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        self.operator(&request)?;
        let req = request.into_inner();
        let host = (!req.hostname.is_empty()).then_some(req.hostname);
        if let Some(h) = &host
            && !self.is_known(h).await?
        {
            return Err(self.unknown_host(h).await);
        }
        let limit = match req.limit {
            0 => DEFAULT_HISTORY,
            n => usize::try_from(n).unwrap_or(usize::MAX).min(100_000),
        };
        let rows = self.store.history(host, limit).await.map_err(status_of)?;
        Ok(Response::new(pb::HistoryResponse {
            entries: rows
                .into_iter()
                .map(|r| pb::HistoryEntry {
                    command_id: r.command_id,
                    time_unix_ms: r.time_unix_ms,
                    hostname: r.hostname,
                    argv: r.argv,
                    outcome: r.outcome.map_or(pb::Outcome::Unspecified, |o| o.to_pb()) as i32,
                    exit_code: r.exit_code,
                    signal: r.signal,
                    duration_ms: r.duration_ms,
                    stdout_bytes: r.stdout_bytes,
                    stderr_bytes: r.stderr_bytes,
                    message: r.message,
                    targets: r.targets,
                    operator: r.operator,
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LatestValue;

    fn stored(hostname: &str, peer: &str) -> HostRecord {
        HostRecord {
            hostname: hostname.into(),
            agent_id: format!("{hostname}-agent"),
            agent_version: "1.0".into(),
            peer: peer.into(),
            first_seen_unix_ms: 10,
            last_seen_unix_ms: 20,
            clock_offset_ms: -5,
            dropped_batches_total: 2,
            batches_stored_total: 7,
            latest: vec![LatestValue {
                metric: Metric::CpuPercent,
                time_unix_ms: 19,
                value: 12.5,
            }],
        }
    }

    fn live(hostname: &str, online: bool) -> LiveHost {
        LiveHost {
            hostname: hostname.into(),
            online,
            peer: "live-peer".into(),
            connected_since_unix_ms: if online { 15 } else { 0 },
            clock_offset_ms: 40,
            interval_ms: 1000,
            parse_errors_total: 3,
            batches_conflicting_total: 1,
        }
    }

    #[test]
    fn list_hosts_joins_store_facts_and_live_state() {
        let infos = host_infos(
            vec![
                stored("a", "old-a"),
                stored("b", "old-b"),
                stored("c", "old-c"),
            ],
            vec![live("b", true), live("c", false), live("d", true)],
        );
        let names: Vec<&str> = infos.iter().map(|h| h.hostname.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        let [a, b, c, d] = [&infos[0], &infos[1], &infos[2], &infos[3]];
        // Only stored: offline, the latest batch's peer and offset.
        assert!(!a.online);
        assert_eq!((a.peer.as_str(), a.clock_offset_ms), ("old-a", -5));
        assert_eq!((a.batches_stored_total, a.last_seen_unix_ms), (7, 20));
        assert_eq!(a.latest.len(), 1);
        assert_eq!(a.latest[0].metric, "cpu_percent");
        // Stored and online: facts from the store, the rest live.
        assert!(b.online);
        assert_eq!(b.agent_id, "b-agent");
        assert_eq!((b.peer.as_str(), b.clock_offset_ms), ("live-peer", 40));
        assert_eq!((b.connected_since_unix_ms, b.interval_ms), (15, 1000));
        assert_eq!(b.parse_errors_total, 3);
        // Stored, connected earlier, offline now: the stored peer.
        assert!(!c.online);
        assert_eq!(c.peer, "old-c");
        assert_eq!(c.interval_ms, 1000);
        // Connected, nothing stored yet: no facts.
        assert!(d.online);
        assert_eq!((d.agent_id.as_str(), d.batches_stored_total), ("", 0));
        assert!(d.latest.is_empty());
    }
}
