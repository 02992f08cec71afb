//! The operator API (`monitor.v1.Admin`), served on the admin listener.
//! `monitorctl` is its client. Every RPC needs an operator's client
//! certificate (the listener's handshake requires one; each RPC checks the
//! identity again and records who asked); only a server started with
//! `--insecure` serves it to anyone, as the operator "insecure".
//!
//! `ListHosts` joins the two owners of what it shows: the store for a
//! host's facts (agent, first and last seen, counters, latest values), the
//! registry for its liveness (online, since when, peer, clock offset,
//! interval). It must stay fast and bounded with 10,000 hosts and more: it
//! answers one page at a time (at most [`MAX_PAGE_SIZE`] hosts, about 2.4
//! MB at worst since every string of a host is capped), taking from each
//! side only the page's hosts, sorted by hostname and joined in one pass.
//! A request without paging fields (an older monitorctl) gets the first
//! page and a `next_page_token`.
//!
//! Every string field of a request is checked before it is used: a
//! hostname against the hostname rules, an id or a metric name against its
//! length, so nothing a buggy client sends grows a log line, a lookup or an
//! answer (the listener's decoding limit, [`MAX_REQUEST_BYTES`], bounds the
//! message as a whole).

use std::cmp::Ordering;
use std::sync::Arc;

use monitor::health::HealthMetric;
use monitor::metric::Metric;
use monitor::pb;
use monitor::pb::admin_server::Admin;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::commands::CommandRouter;
use crate::enrolment::Enrolment;
use crate::http::Sessions;
use crate::listener::PeerInfo;
use crate::registry::{LiveHost, Registry};
use crate::remote_write::AllStats;
use crate::store::{HealthQuery, HostRecord, SampleQuery, SessionRecord, Store, StoreError};
use crate::telemetry::Telemetry;
use crate::tls::Role;

/// The operator name commands are recorded under with `--insecure`.
pub const INSECURE_OPERATOR: &str = "insecure";

/// Samples per `QueryChunk` message (about 40 bytes each on the wire).
const QUERY_CHUNK: usize = 4096;
/// Hosts per `ListHosts` page when the request names no size.
pub const DEFAULT_PAGE_SIZE: usize = 1000;
/// Most hosts per page: a larger `page_size` is taken as this. A host is at
/// most about 1.2 KB on the wire without health values (hostname 253, agent
/// id and version 256 each, six latest values); with up to 64 health values
/// of up to 256-byte mount points it can reach about 20 KB, so a page is
/// also cut at [`MAX_PAGE_BYTES`].
pub const MAX_PAGE_SIZE: usize = 2000;
/// Most bytes of hosts per page: the page ends before the host that would
/// pass this, so it stays under tonic's 4 MiB default decoding limit for
/// any client (at least one host per page: one host is far smaller).
pub const MAX_PAGE_BYTES: usize = 3 << 20;
/// Largest request the operator API decodes (tonic's default, named: an
/// `Exec` with 30,000 hostnames fits).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Longest metric name a query may give (the longest real one is 15).
const MAX_METRIC_NAME_BYTES: usize = 64;
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
    /// Dashboard login tokens, shared with the HTTP listener.
    pub sessions: Arc<Sessions>,
    /// Where a browser finds the dashboard (`http::base_url`); `None` with
    /// the HTTP listener off.
    pub dashboard_url: Option<String>,
}

/// A request field that breaks its rule, as INVALID_ARGUMENT.
pub fn invalid(e: monitor::wire::FieldError) -> Status {
    Status::invalid_argument(e.to_string())
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

    /// A certificate for an agent or an operator, made for the calling
    /// operator.
    async fn issue(
        &self,
        request: Request<pb::IssueCertificateRequest>,
        role: Role,
    ) -> Result<Response<pb::IssuedCertificate>, Status> {
        let operator = self.operator(&request)?;
        let answer = self
            .enrolment()?
            .issue(&operator, role, request.into_inner())
            .await?;
        Ok(Response::new(answer))
    }

    /// Revokes `name`'s certificates of `role` for the calling operator:
    /// how many, and whether it was connected.
    async fn revoke_as<T>(
        &self,
        request: &Request<T>,
        role: Role,
        name: &str,
    ) -> Result<(u32, bool), Status> {
        let operator = self.operator(request)?;
        self.enrolment()?.revoke(&operator, role, name).await
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
/// as `Store::hosts_page` and `Registry::page` return them) into what
/// `ListHosts` shows, in one pass, at most `limit` of them. A host's facts
/// come from the store; its liveness from the registry. The peer and clock
/// offset are the live connection's while the host is online, else those
/// of its latest stored batch.
///
/// When both sides are the first `limit` hosts after the same name, the
/// first `limit` of their union are exactly the first `limit` hosts after
/// that name: a host among them has fewer than `limit` hosts before it on
/// either side, so it is in that side's page.
pub fn host_infos(stored: Vec<HostRecord>, live: Vec<LiveHost>, limit: usize) -> Vec<pb::HostInfo> {
    let mut out = Vec::with_capacity(stored.len().max(live.len()).min(limit));
    let mut stored = stored.into_iter().peekable();
    let mut live = live.into_iter().peekable();
    while out.len() < limit {
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

/// How many of `hosts`, from the first, fit in `max_bytes` on the wire (at
/// least one).
fn fitting(hosts: &[pb::HostInfo], max_bytes: usize) -> usize {
    let mut bytes = 0usize;
    hosts
        .iter()
        .take_while(|h| {
            bytes = bytes.saturating_add(prost::Message::encoded_len(*h) + 4);
            bytes <= max_bytes
        })
        .count()
        .max(1)
}

/// Fleet-wide liveness on a store several replicas share: a host another
/// live replica holds is online there; a host this one (`me`) holds names
/// it.
pub fn with_replicas(hosts: &mut [pb::HostInfo], me: &str, sessions: Vec<SessionRecord>) {
    let mut held: std::collections::HashMap<String, String> = sessions
        .into_iter()
        .filter(|s| s.live)
        .map(|s| (s.hostname, s.replica))
        .collect();
    for h in hosts.iter_mut() {
        let elsewhere = held.remove(&h.hostname);
        if h.online {
            h.replica = me.to_owned();
        } else if let Some(replica) = elsewhere {
            h.online = true;
            h.replica = replica;
        }
    }
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
        info.batches_rate_limited_total = l.batches_rate_limited_total;
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
        info.batches_checked_by_value_total = s.batches_checked_by_value_total;
        let value = |metric: &str, device: &str, time_unix_ms, value| pb::MetricValue {
            metric: metric.to_owned(),
            value,
            time_unix_ms,
            device: device.to_owned(),
        };
        info.latest = s
            .latest
            .iter()
            .map(|v| value(v.metric.name(), "", v.time_unix_ms, v.value))
            .collect();
        info.health = s
            .health
            .iter()
            .map(|v| value(v.metric.name(), &v.device, v.time_unix_ms, v.value))
            .collect();
        info.health_series_over_cap_total = s.health_series_over_cap_total;
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
        self.issue(request, Role::Agent).await
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let (certificates_revoked, was_connected) = self
            .revoke_as(&request, Role::Agent, &request.get_ref().hostname)
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
        self.issue(request, Role::Operator).await
    }

    async fn remove_operator(
        &self,
        request: Request<pb::RemoveOperatorRequest>,
    ) -> Result<Response<pb::RemoveOperatorResponse>, Status> {
        let (certificates_revoked, _) = self
            .revoke_as(&request, Role::Operator, &request.get_ref().name)
            .await?;
        // Their dashboard sessions end with their certificates.
        self.sessions.end_all_of(&request.get_ref().name);
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
        let req = request.into_inner();
        let size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => usize::try_from(n)
                .unwrap_or(MAX_PAGE_SIZE)
                .min(MAX_PAGE_SIZE),
        };
        let after = if req.page_token.is_empty() {
            None
        } else {
            monitor::wire::check_hostname("page_token", &req.page_token).map_err(invalid)?;
            Some(req.page_token)
        };
        // One more than the page from each side tells whether a next page
        // exists without asking for it.
        let stored = self
            .store
            .hosts_page(after.clone(), size + 1)
            .await
            .map_err(status_of)?;
        let live = self.registry.page(after.as_deref(), size + 1);
        let mut hosts = host_infos(stored, live, size + 1);
        let fit = fitting(&hosts, MAX_PAGE_BYTES);
        let next_page_token = if hosts.len() > size || fit < hosts.len() {
            hosts.truncate(size.min(fit));
            hosts.last().map(|h| h.hostname.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        if let Some(me) = self.router.replica_id() {
            let sessions = self.store.sessions().await.map_err(status_of)?;
            with_replicas(&mut hosts, me, sessions);
        }
        Ok(Response::new(pb::ListHostsResponse {
            hosts,
            server_unix_ms: monitor::time::now_unix_ms(),
            next_page_token,
        }))
    }

    type QueryStream = ReceiverStream<Result<pb::QueryChunk, Status>>;

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        self.operator(&request)?;
        let q = request.into_inner();
        monitor::wire::check_hostname("hostname", &q.hostname).map_err(invalid)?;
        monitor::wire::check_len("metric", &q.metric, MAX_METRIC_NAME_BYTES).map_err(invalid)?;
        if !self.is_known(&q.hostname).await? {
            return Err(self.unknown_host(&q.hostname).await);
        }
        let until_unix_ms = (q.until_unix_ms != 0).then_some(q.until_unix_ms);
        let limit = (q.limit != 0).then(|| usize::try_from(q.limit).unwrap_or(usize::MAX));
        // A health metric's values (issue 14) come from their own table,
        // with their device; the six as before.
        let samples = if let Ok(metric) = q.metric.parse::<HealthMetric>() {
            let query = HealthQuery {
                hostname: q.hostname.clone(),
                metric,
                since_unix_ms: q.since_unix_ms,
                until_unix_ms,
                limit,
            };
            self.store.query_health(query).await.map(|rows| {
                rows.into_iter()
                    .map(|r| {
                        sample_pb(
                            r.time_unix_ms,
                            r.hostname,
                            r.metric.name(),
                            r.value,
                            r.device,
                        )
                    })
                    .collect::<Vec<_>>()
            })
        } else {
            let metric = if q.metric.is_empty() {
                None
            } else {
                Some(
                    q.metric
                        .parse::<Metric>()
                        .map_err(|e| Status::invalid_argument(e.to_string()))?,
                )
            };
            let query = SampleQuery {
                hostname: q.hostname.clone(),
                metric,
                since_unix_ms: q.since_unix_ms,
                until_unix_ms,
                limit,
            };
            self.store.query(query).await.map(|rows| {
                rows.into_iter()
                    .map(|r| {
                        sample_pb(
                            r.time_unix_ms,
                            r.hostname,
                            r.metric.name(),
                            r.value,
                            String::new(),
                        )
                    })
                    .collect()
            })
        };
        let samples = match samples {
            Ok(samples) => samples,
            Err(StoreError::UnknownHost(h)) => return Err(self.unknown_host(&h).await),
            Err(other) => return Err(status_of(other)),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for chunk in samples.chunks(QUERY_CHUNK) {
                let msg = pb::QueryChunk {
                    samples: chunk.to_vec(),
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
        monitor::wire::check_len("command_id", &id, monitor::command::MAX_ID_BYTES)
            .map_err(invalid)?;
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

    async fn dashboard_login(
        &self,
        request: Request<pb::DashboardLoginRequest>,
    ) -> Result<Response<pb::DashboardLoginResponse>, Status> {
        let operator = self.operator(&request)?;
        let Some(base) = &self.dashboard_url else {
            return Err(Status::failed_precondition(
                "the HTTP listener is off (--http-listen off): there is no dashboard",
            ));
        };
        if self.enrolment.is_none() {
            // --insecure: the dashboard is open, no token needed.
            return Ok(Response::new(pb::DashboardLoginResponse {
                url: base.clone(),
                expires_unix_ms: 0,
            }));
        }
        let (token, expires_unix_ms) = self
            .sessions
            .issue_login(&operator, monitor::time::now_unix_ms());
        log::info!(
            "dashboard login URL issued to operator {}",
            monitor::text::Escaped::capped(&operator)
        );
        Ok(Response::new(pb::DashboardLoginResponse {
            url: format!("{base}login?token={token}"),
            expires_unix_ms,
        }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        self.operator(&request)?;
        let req = request.into_inner();
        let host = (!req.hostname.is_empty()).then_some(req.hostname);
        if let Some(h) = &host {
            monitor::wire::check_hostname("hostname", h).map_err(invalid)?;
            if !self.is_known(h).await? {
                return Err(self.unknown_host(h).await);
            }
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

/// A stored sample (one of the six, or a health value with its device) as
/// the Query stream carries it.
fn sample_pb(
    time_unix_ms: i64,
    hostname: String,
    metric: &str,
    value: f64,
    device: String,
) -> pb::Sample {
    pb::Sample {
        time_unix_ms,
        hostname,
        metric: metric.to_owned(),
        value,
        device,
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
            batches_checked_by_value_total: 0,
            latest: vec![LatestValue {
                metric: Metric::CpuPercent,
                time_unix_ms: 19,
                value: 12.5,
            }],
            health: Vec::new(),
            health_series_over_cap_total: 0,
        }
    }

    #[test]
    fn a_page_is_cut_before_the_host_that_would_pass_its_bytes() {
        let heavy = |name: &str| pb::HostInfo {
            hostname: name.into(),
            health: (0..64)
                .map(|i| pb::MetricValue {
                    metric: "fs_used_percent".into(),
                    device: format!("/{i}/{}", "x".repeat(250)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let hosts: Vec<pb::HostInfo> = (0..300).map(|i| heavy(&format!("h{i:03}"))).collect();
        let one = prost::Message::encoded_len(&hosts[0]) + 4;
        assert!(one > 16_000, "{one}");
        let n = fitting(&hosts, MAX_PAGE_BYTES);
        assert_eq!(n, MAX_PAGE_BYTES / one);
        assert!(n < hosts.len());
        assert_eq!(fitting(&hosts[..3], MAX_PAGE_BYTES), 3);
        assert_eq!(fitting(&hosts, 10), 1, "at least one host");
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
            batches_rate_limited_total: 4,
        }
    }

    #[test]
    fn with_several_replicas_a_host_is_online_where_a_live_replica_holds_it() {
        let info = |h: &str, online: bool| pb::HostInfo {
            hostname: h.into(),
            online,
            ..pb::HostInfo::default()
        };
        let session = |h: &str, r: &str, live: bool| SessionRecord {
            hostname: h.into(),
            replica: r.into(),
            live,
        };
        let mut hosts = vec![
            info("a", true),
            info("b", false),
            info("c", false),
            info("d", false),
        ];
        with_replicas(
            &mut hosts,
            "me",
            vec![
                session("a", "me", true),
                session("b", "r2", true),
                session("c", "dead", false),
            ],
        );
        let seen: Vec<(&str, bool, &str)> = hosts
            .iter()
            .map(|h| (h.hostname.as_str(), h.online, h.replica.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("a", true, "me"),
                ("b", true, "r2"),
                ("c", false, ""),
                ("d", false, "")
            ]
        );
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
            10,
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
        assert_eq!(d.batches_rate_limited_total, 4);
    }

    #[test]
    fn a_page_joins_the_first_hosts_of_both_sides() {
        // Each side gives its first three after the token; the union's
        // first three are the page.
        let infos = host_infos(
            vec![stored("a", "p"), stored("c", "p"), stored("e", "p")],
            vec![live("b", true), live("c", true), live("d", true)],
            3,
        );
        let names: Vec<&str> = infos.iter().map(|h| h.hostname.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(infos[2].online);
        assert_eq!(infos[2].agent_id, "c-agent");
        assert!(host_infos(vec![stored("a", "p")], vec![], 0).is_empty());
    }
}
