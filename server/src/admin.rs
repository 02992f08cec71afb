//! The operator API (`monitor.v1.Admin`), served on the admin listener
//! (loopback by default: until authentication exists, only someone on the
//! server box may use it). `monitorctl` is its client.

use std::sync::Arc;

use monitor::metric::Metric;
use monitor::pb;
use monitor::pb::admin_server::Admin;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::commands::CommandRouter;
use crate::registry::Registry;
use crate::store::{SampleQuery, Store, StoreError};

/// Samples per `QueryChunk` message (about 40 bytes each on the wire).
const QUERY_CHUNK: usize = 4096;
/// History rows returned when the operator names no limit.
const DEFAULT_HISTORY: usize = 50;

#[derive(Clone)]
pub struct AdminService {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub router: Arc<CommandRouter>,
}

/// Maps a store error to a status the operator can act on.
pub fn status_of(e: StoreError) -> Status {
    match e {
        StoreError::UnknownHost(h) => Status::not_found(format!("unknown host '{h}'")),
        other => Status::internal(other.to_string()),
    }
}

impl AdminService {
    fn unknown_host(&self, hostname: &str) -> Status {
        let known = self.registry.known_hosts();
        let list = if known.is_empty() {
            "no host has reported yet".to_owned()
        } else if known.len() <= 20 {
            format!("known: {}", known.join(", "))
        } else {
            format!("{} hosts known; see monitorctl hosts", known.len())
        };
        Status::not_found(format!("unknown host '{hostname}' ({list})"))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_hosts(
        &self,
        _request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        Ok(Response::new(pb::ListHostsResponse {
            hosts: self.registry.snapshot(),
            server_unix_ms: monitor::time::now_unix_ms(),
        }))
    }

    type QueryStream = ReceiverStream<Result<pb::QueryChunk, Status>>;

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let q = request.into_inner();
        if !self.registry.is_known(&q.hostname) {
            return Err(self.unknown_host(&q.hostname));
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
        let rows = self
            .store
            .query(SampleQuery {
                hostname: q.hostname.clone(),
                metric,
                since_unix_ms: q.since_unix_ms,
                until_unix_ms: (q.until_unix_ms != 0).then_some(q.until_unix_ms),
                limit: (q.limit != 0).then(|| usize::try_from(q.limit).unwrap_or(usize::MAX)),
            })
            .await
            .map_err(|e| match e {
                StoreError::UnknownHost(h) => self.unknown_host(&h),
                other => status_of(other),
            })?;
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
        let req = request.into_inner();
        let (id, rx) = self.router.exec(req).await?;
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
        let id = request.into_inner().command_id;
        if !self.router.is_running(&id) {
            return Err(Status::not_found(format!(
                "no running command with id '{id}'"
            )));
        }
        let hosts = self.router.cancel(&id);
        Ok(Response::new(pb::CancelResponse { hosts }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let req = request.into_inner();
        let host = (!req.hostname.is_empty()).then_some(req.hostname);
        if let Some(h) = &host
            && !self.registry.is_known(h)
        {
            return Err(self.unknown_host(h));
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
                })
                .collect(),
        }))
    }
}
