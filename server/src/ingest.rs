//! The agent-facing gRPC service: `Report` (batches in, acknowledgements
//! out) and `CommandStream` (the handout's bidirectional command stream).
//!
//! `Report` validates each batch, queues it to the store in arrival order
//! and acknowledges it only once it is committed (or known to be a
//! duplicate; an agent that announces its window gets one cumulative ack
//! for several stored batches, see [`crate::ack_hold`]), or refuses it
//! (invalid, or conflicting with stored samples: counted per host in the
//! registry). A host that sends faster than its
//! ingest budget (the registry's token bucket, shared by all its streams)
//! gets `ACK_CODE_RATE_LIMITED` for the batch over budget and for the rest
//! of that pass (the batches following it in order), until the agent's
//! re-send starts (a batch that does not follow the previous one): so
//! nothing after a refused batch is stored ahead of it, and the agent,
//! which keeps the batch and re-sends from its oldest, loses nothing.
//! Other hosts never notice. At most [`MAX_PENDING`] batches per
//! stream wait for their commit; beyond that the handler stops reading, so a
//! slow disk becomes HTTP/2 flow control toward the agents rather than
//! memory on the server.
//!
//! Both handlers end their response streams when the server shuts down, so
//! a graceful stop never waits on an agent. A `Report` stream that ends for
//! any reason first waits for the batches it already queued (they commit
//! regardless) and acknowledges them if the agent still listens.
//!
//! What a batch says about its host is the store's to keep (it records it
//! with the batch, in the same transaction); the registry only hears what
//! the live connection tells: streams opening and closing, the clock
//! offset and parse errors of the newest batch.
//!
//! Who an agent is comes from its client certificate, never from a message
//! field: a batch or hello naming another host ends the stream with
//! PERMISSION_DENIED, and the de-duplication key uses the certificate's
//! name as the agent id, so one agent can neither write as another nor
//! poison another's de-duplication. A stream ends at once when its
//! certificate is revoked. Only `Enrol` takes a connection without a
//! certificate. With `--insecure` (no TLS) the message fields are trusted,
//! as the flag's name says.
//!
//! A peer's strings reach the log only escaped and capped, and the lines a
//! peer can cause per batch (a refusal, a corrected clock, a rate limit)
//! at most once a minute per stream or host, so a flooding client cannot
//! fill the disk through the journal.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monitor::pb;
use monitor::pb::collector_server::Collector;
use monitor::wire::{ValidBatch, validate_batch};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::ack_hold::AckHold;
use crate::commands::CommandRouter;
use crate::enrolment::Enrolment;
use crate::listener::PeerInfo;
use crate::registry::{Admission, Registry};
use crate::store::{IncomingBatch, Store, StoreError, StoredHealth, StoredSample, SubmitOutcome};
use crate::telemetry::{Enrolled, Refusal, Telemetry};
use crate::throttle::LogThrottle;
use crate::tls::{Identity, Role, Trust};

/// Batches of one stream queued to the store and not yet acknowledged.
pub const MAX_PENDING: usize = 64;
/// How long an agent has to send its hello on a new command stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

type AckStream = ReceiverStream<Result<pb::Ack, Status>>;
type CommandRequestStream = ReceiverStream<Result<pb::CommandRequest, Status>>;

#[derive(Clone)]
pub struct CollectorService {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub router: Arc<CommandRouter>,
    pub max_clock_skew_ms: i64,
    /// Turns true when the server stops; handlers end their streams.
    pub stopping: watch::Receiver<bool>,
    /// Certificates and tokens; `None` with `--insecure`.
    pub enrolment: Option<Arc<Enrolment>>,
    /// Refusals and enrolments, counted for `/metrics`.
    pub telemetry: Arc<Telemetry>,
}

/// The agent a request comes from, by its certificate.
#[derive(Clone)]
struct Caller {
    peer: String,
    /// `None` with `--insecure`: message fields are trusted.
    identity: Option<(Identity, Arc<Trust>)>,
}

impl Caller {
    /// Refuses a batch or hello that names a host other than the
    /// certificate's.
    fn check_host(&self, named: &str, what: &str) -> Result<(), Status> {
        match &self.identity {
            Some((id, _)) if id.name != named => Err(Status::permission_denied(format!(
                "this agent's certificate is for '{}', the {what} names '{}'",
                id.name,
                monitor::text::Escaped::capped(named)
            ))),
            _ => Ok(()),
        }
    }

    /// Resolves when this caller's certificate is revoked (never without
    /// TLS).
    async fn revoked(&self) {
        let Some((id, trust)) = &self.identity else {
            return std::future::pending().await;
        };
        let mut changes = trust.revocations();
        loop {
            if trust.is_revoked(&id.fingerprint) {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// Status for a stream whose certificate was revoked while it was open.
fn revoked_status() -> Status {
    Status::unauthenticated("this agent's certificate was revoked")
}

/// Resolves when `stopping` turns true (or its sender is gone).
async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

type Pending = Pin<Box<dyn std::future::Future<Output = pb::Ack> + Send>>;

/// The log lines one Report stream can cause per batch, each at most once
/// a minute.
#[derive(Default)]
struct StreamLogs {
    /// A refused (invalid) batch.
    invalid: LogThrottle,
    /// A clock far off, corrected.
    clock: LogThrottle,
}

impl CollectorService {
    /// Who calls: with TLS, an enrolled, unrevoked agent, or
    /// UNAUTHENTICATED.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let info = PeerInfo::of(request);
        let peer = info.addr.to_string();
        let Some(enrolment) = &self.enrolment else {
            return Ok(Caller {
                peer,
                identity: None,
            });
        };
        match info.identity {
            Some(id) if id.role == Role::Agent && !enrolment.trust.is_revoked(&id.fingerprint) => {
                Ok(Caller {
                    peer,
                    identity: Some((id, Arc::clone(&enrolment.trust))),
                })
            }
            _ => Err(Status::unauthenticated(
                "this RPC needs the agent's client certificate: enrol the agent with a join \
                 token ('monitorctl enrol HOSTNAME' where the server runs)",
            )),
        }
    }

    /// Queues a valid batch to the store (waiting while its queue is full:
    /// that is the backpressure); the returned future resolves to its ack
    /// once the batch is committed (or refused).
    async fn submit(
        &self,
        batch: ValidBatch,
        peer: &str,
        received_unix_ms: i64,
    ) -> Result<Pending, StoreError> {
        let registry = Arc::clone(&self.registry);
        let telemetry = Arc::clone(&self.telemetry);
        let (boot_id, seq) = (batch.boot_id, batch.seq);
        let clock_offset_ms = batch.clock_offset_ms;
        let parse_errors_total = batch.counters.parse_errors_total;
        let hostname = batch.hostname.clone();
        // The dashboard's sparklines re-read a host whose samples come
        // later than their last read (`store/late.rs`).
        let oldest_unix_ms = batch.samples.iter().map(|s| s.0).min();
        let store = self.store.clone();
        if batch.health_skipped > 0 {
            // An agent newer than this server: its other values are stored.
            log::debug!(
                "{}: {} health samples of metrics this server does not know skipped",
                monitor::text::Escaped::capped(&hostname),
                batch.health_skipped
            );
        }
        let incoming = IncomingBatch {
            agent_id: batch.agent_id,
            hostname: batch.hostname,
            agent_version: batch.agent_version,
            boot_id,
            seq,
            received_unix_ms,
            clock_offset_ms,
            dropped_batches_total: batch.counters.dropped_batches_total,
            peer: peer.to_owned(),
            samples: batch
                .samples
                .iter()
                .map(|&(time_unix_ms, metric, value)| StoredSample {
                    time_unix_ms,
                    metric,
                    value,
                })
                .collect(),
            health: batch
                .health
                .into_iter()
                .map(|h| StoredHealth {
                    time_unix_ms: h.time_unix_ms,
                    metric: h.metric,
                    device: h.device,
                    value: h.value,
                })
                .collect(),
        };
        let ticket = self.store.enqueue(incoming).await?;
        Ok(Box::pin(async move {
            let ack = |code: pb::AckCode, message: String| pb::Ack {
                boot_id,
                seq,
                code: code as i32,
                message,
                server_unix_ms: monitor::time::now_unix_ms(),
                batches: 0,
            };
            let outcome = ticket.await;
            if let (Ok(SubmitOutcome::Stored), Some(oldest)) = (&outcome, oldest_unix_ms) {
                store.note_stored(&hostname, oldest);
            }
            match outcome {
                // The batch's facts are the store's now; the registry only
                // keeps what the live connection tells.
                Ok(SubmitOutcome::Stored | SubmitOutcome::Duplicate) => {
                    registry.batch_acked(&hostname, clock_offset_ms, parse_errors_total);
                    ack(pb::AckCode::Ok, String::new())
                }
                // Refused for good: the agent frees it and logs why.
                Ok(SubmitOutcome::Conflict(conflict)) => {
                    telemetry.refused(Refusal::Conflict);
                    let (refused, log) = registry.batch_conflicting(&hostname, Instant::now());
                    if let Some(n) = log {
                        log::warn!(
                            "{hostname}: refused batch {seq} (boot {boot_id:016x}): {conflict}; \
                             {refused} batches of this host refused so far ({n} since the last \
                             such line)"
                        );
                    }
                    ack(pb::AckCode::Conflict, conflict.to_string())
                }
                // Not stored: code UNAVAILABLE ends the stream (below) and
                // the agent re-sends after reconnecting.
                Err(e) => {
                    telemetry.refused(Refusal::Unavailable);
                    ack(pb::AckCode::Unavailable, e.to_string())
                }
            }
        }))
    }
}

/// The oldest pending ack, or never when there is none.
async fn front(pending: &mut VecDeque<Pending>) -> pb::Ack {
    match pending.front_mut() {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

#[tonic::async_trait]
impl Collector for CollectorService {
    type ReportStream = AckStream;
    type CommandStreamStream = CommandRequestStream;

    async fn enrol(
        &self,
        request: Request<pb::EnrolRequest>,
    ) -> Result<Response<pb::IssuedCertificate>, Status> {
        let Some(enrolment) = &self.enrolment else {
            return Err(Status::failed_precondition(
                "this server runs with --insecure: start the agent with --insecure too",
            ));
        };
        let peer = PeerInfo::of(&request).addr.to_string();
        let answer = enrolment.enrol(&peer, request.into_inner()).await;
        self.telemetry.enrolment(match answer {
            Ok(_) => Enrolled::Enrolled,
            Err(_) => Enrolled::Refused,
        });
        Ok(Response::new(answer?))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::IssuedCertificate>, Status> {
        let caller = self.caller(&request)?;
        let (Some(enrolment), Some((id, _))) = (&self.enrolment, &caller.identity) else {
            return Err(Status::failed_precondition(
                "this server runs with --insecure: there is no certificate to renew",
            ));
        };
        let answer = enrolment.renew(id, request.into_inner()).await;
        self.telemetry.enrolment(match answer {
            Ok(_) => Enrolled::Renewed,
            Err(_) => Enrolled::Refused,
        });
        Ok(Response::new(answer?))
    }

    async fn report(
        &self,
        request: Request<Streaming<pb::Batch>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let caller = self
            .caller(&request)
            .inspect_err(|_| self.telemetry.refused(Refusal::Unauthenticated))?;
        let peer = caller.peer.clone();
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(MAX_PENDING);
        let service = self.clone();
        tokio::spawn(async move {
            let mut pending: VecDeque<Pending> = VecDeque::new();
            let mut hostname: Option<String> = None;
            // The previous valid batch's (boot_id, seq), and whether it was
            // refused as over budget.
            let mut previous: Option<(u64, u64)> = None;
            let mut limited = false;
            let mut logs = StreamLogs::default();
            // Stored batches' acks waiting to go out as one (agents that
            // announce a window only).
            let mut hold = AckHold::default();
            let stop = stopped(service.stopping.clone());
            tokio::pin!(stop);
            let revoked = caller.revoked();
            tokio::pin!(revoked);
            let end: Result<(), Status> = loop {
                tokio::select! {
                    biased;
                    () = &mut stop => break Ok(()),
                    () = &mut revoked => break Err(revoked_status()),
                    ack = front(&mut pending), if !pending.is_empty() => {
                        pending.pop_front();
                        let failed = ack.code == pb::AckCode::Unavailable as i32;
                        let msg = ack.message.clone();
                        if failed {
                            log::error!("{peer}: cannot store batch {}: {msg}", ack.seq);
                            // The held ones were stored: say so first.
                            if let Some(held) = hold.take() {
                                let _ = tx.try_send(Ok(held));
                            }
                            break Err(Status::unavailable(format!("cannot store the batch: {msg}")));
                        }
                        let mut gone = false;
                        for ready in hold.push(ack, Instant::now()).into_iter().flatten() {
                            if tx.send(Ok(ready)).await.is_err() {
                                gone = true;
                                break;
                            }
                        }
                        if gone {
                            break Ok(());
                        }
                    }
                    () = tokio::time::sleep_until(hold.deadline().unwrap_or_else(Instant::now).into()),
                        if hold.deadline().is_some() =>
                    {
                        if let Some(held) = hold.take()
                            && tx.send(Ok(held)).await.is_err()
                        {
                            break Ok(());
                        }
                    }
                    msg = inbound.message(), if pending.len() < MAX_PENDING => {
                        let batch = match msg {
                            Ok(Some(b)) => b,
                            Ok(None) => break Ok(()),
                            Err(status) => {
                                log::debug!("{peer}: report stream: {status}");
                                break Ok(());
                            }
                        };
                        let received = monitor::time::now_unix_ms();
                        let (boot_id, seq) = (batch.boot_id, batch.seq);
                        hold.set_window(batch.ack_window);
                        let refuse = |code: pb::AckCode, message: String| -> Pending {
                            Box::pin(std::future::ready(pb::Ack {
                                boot_id,
                                seq,
                                code: code as i32,
                                message,
                                server_unix_ms: received,
                                batches: 0,
                            }))
                        };
                        let mut valid = match validate_batch(batch, received, service.max_clock_skew_ms) {
                            Ok(valid) => valid,
                            Err(invalid) => {
                                service.telemetry.refused(match invalid.ack_code() {
                                    pb::AckCode::SequenceOutOfRange => Refusal::SequenceOutOfRange,
                                    _ => Refusal::Invalid,
                                });
                                if let Some(n) = logs.invalid.hit(Instant::now()) {
                                    log::warn!(
                                        "{peer}: rejected batch {seq}: {} ({n} rejected on this \
                                         stream since the last such line)",
                                        monitor::text::Escaped::capped(&invalid.to_string())
                                    );
                                }
                                pending.push_back(refuse(invalid.ack_code(), invalid.to_string()));
                                continue;
                            }
                        };
                        if let Err(status) = caller.check_host(&valid.hostname, "batch") {
                            service.telemetry.refused(Refusal::WrongHost);
                            log::warn!("{peer}: {}", status.message());
                            break Err(status);
                        }
                        if let Some((id, _)) = &caller.identity {
                            // De-duplication is keyed on who the
                            // certificate says, not on a field.
                            valid.agent_id.clone_from(&id.name);
                        }
                        if hostname.as_deref() != Some(valid.hostname.as_str()) {
                            if let Some(old) = hostname.take() {
                                service.registry.report_closed(&old);
                            }
                            log::info!("{} ({peer}) reporting", valid.hostname);
                            service.registry.report_opened(&valid.hostname, &peer, received);
                            hostname = Some(valid.hostname.clone());
                        }
                        // The rest of a refused pass is refused too; a
                        // batch that does not follow the previous one is
                        // the agent's re-send (or a new run), and asks the
                        // budget again.
                        let follows = previous
                            .is_some_and(|(b, s): (u64, u64)| b == boot_id && s.checked_add(1) == Some(seq));
                        previous = Some((boot_id, seq));
                        let now = Instant::now();
                        let admission = if limited && follows {
                            service.registry.refuse_batch(&valid.hostname, now)
                        } else {
                            service.registry.admit_batch(
                                &valid.hostname,
                                crate::registry::batch_cost(valid.ticks(), valid.health.len()),
                                now,
                            )
                        };
                        limited = false;
                        if let Admission::Refuse { refused_total, log } = admission {
                            limited = true;
                            service.telemetry.refused(Refusal::RateLimited);
                            if let Some(n) = log {
                                log::warn!(
                                    "{} ({peer}): over its ingest budget ({} ticks/s, bursts of \
                                     {}): batches refused with ACK_CODE_RATE_LIMITED, to be sent \
                                     again ({n} since the last such line, {refused_total} since \
                                     the server started)",
                                    valid.hostname,
                                    service.registry.ingest_rate().per_second,
                                    service.registry.ingest_rate().burst,
                                );
                            }
                            pending.push_back(refuse(
                                pb::AckCode::RateLimited,
                                "this host sends more batches than the server takes from one \
                                 host: not stored, send it again later"
                                    .to_owned(),
                            ));
                            continue;
                        }
                        if valid.time_corrected && logs.clock.hit(now).is_some() {
                            log::warn!(
                                "{}: clock off by {:.1}s; sample times corrected onto the server's clock",
                                valid.hostname,
                                valid.clock_offset_ms as f64 / 1000.0
                            );
                        }
                        match service.submit(valid, &peer, received).await {
                            Ok(ack) => pending.push_back(ack),
                            Err(e) => {
                                log::error!("{peer}: cannot queue batch {seq}: {e}");
                                break Err(Status::unavailable(format!("cannot store the batch: {e}")));
                            }
                        }
                    }
                }
            };
            // Batches already queued are committed (or fail) whatever
            // happens to this stream: wait for each and acknowledge it if
            // the agent still listens, so a graceful stop leaves it nothing
            // to re-send. After a failure nothing more is
            // acknowledged: an ack covers every earlier batch. `try_send`:
            // an agent that does not read its acks only gets them again as
            // duplicates, it never holds this task.
            let mut acking = end.is_ok();
            if acking
                && let Some(held) = hold.take()
                && tx.try_send(Ok(held)).is_err()
            {
                acking = false;
            }
            while let Some(ack) = pending.pop_front() {
                let ack = ack.await;
                acking &= ack.code != pb::AckCode::Unavailable as i32;
                if acking && tx.try_send(Ok(ack)).is_err() {
                    acking = false;
                }
            }
            if let Err(status) = end {
                let _ = tx.send(Err(status)).await;
            }
            if let Some(h) = hostname {
                service.registry.report_closed(&h);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn command_stream(
        &self,
        request: Request<Streaming<pb::CommandResponse>>,
    ) -> Result<Response<Self::CommandStreamStream>, Status> {
        let caller = self.caller(&request)?;
        let peer = caller.peer.clone();
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let service = self.clone();
        tokio::spawn(async move {
            let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
                Ok(Ok(Some(pb::CommandResponse {
                    kind: Some(pb::command_response::Kind::Hello(h)),
                    ..
                }))) => h,
                Ok(Ok(Some(_))) => {
                    let _ = tx
                        .send(Err(Status::invalid_argument(
                            "the first message must be a hello",
                        )))
                        .await;
                    return;
                }
                Ok(Ok(None)) => return,
                // Undecodable, or larger than the message limit.
                Ok(Err(status)) => {
                    log::debug!("{peer}: hello refused: {}", status.message());
                    let _ = tx
                        .send(Err(Status::invalid_argument(format!(
                            "hello: {}",
                            status.message()
                        ))))
                        .await;
                    return;
                }
                Err(_) => {
                    let _ = tx
                        .send(Err(Status::deadline_exceeded("no hello within 10s")))
                        .await;
                    return;
                }
            };
            if let Err(e) = monitor::wire::validate_hello(&hello) {
                // Refused before anything of it is kept or logged whole.
                log::debug!("{peer}: hello refused: {e}");
                let _ = tx
                    .send(Err(Status::invalid_argument(format!("hello.{e}"))))
                    .await;
                return;
            }
            if let Err(status) = caller.check_host(&hello.hostname, "hello") {
                log::warn!("{peer}: {}", status.message());
                let _ = tx.send(Err(status)).await;
                return;
            }
            let host = hello.hostname.clone();
            let now = monitor::time::now_unix_ms();
            // Registered before the hello goes out: once the agent has the
            // hello, a command sent to it must find this stream.
            let conn =
                service
                    .registry
                    .commands_opened(&host, &peer, hello.interval_ms, tx.clone(), now);
            let server_hello = pb::CommandRequest {
                kind: Some(pb::command_request::Kind::Hello(pb::ServerHello {
                    server_unix_ms: now,
                })),
            };
            if tx.send(Ok(server_hello)).await.is_err() {
                service.registry.commands_closed(&host, conn);
                return;
            }
            log::info!(
                "{host} ({peer}) command stream open, agent {} {}",
                monitor::text::Escaped::capped(&hello.agent_id),
                monitor::text::Escaped::capped(&hello.agent_version)
            );
            let stop = stopped(service.stopping.clone());
            tokio::pin!(stop);
            let revoked = caller.revoked();
            tokio::pin!(revoked);
            loop {
                tokio::select! {
                    () = &mut stop => break,
                    () = &mut revoked => {
                        log::warn!("{host} ({peer}): certificate revoked; command stream closed");
                        let _ = tx.try_send(Err(revoked_status()));
                        break;
                    }
                    msg = inbound.message() => match msg {
                        Ok(Some(resp)) => {
                            if let Some(pb::command_response::Kind::Finished(f)) = &resp.kind {
                                log::debug!(
                                    "{host}: command {} finished: outcome {}",
                                    monitor::text::Escaped::capped(&resp.command_id),
                                    f.outcome
                                );
                            }
                            service.router.on_agent_response(&host, conn, resp).await;
                        }
                        Ok(None) => break,
                        Err(status) => {
                            log::debug!("{host}: command stream: {status}");
                            break;
                        }
                    }
                }
            }
            service.registry.commands_closed(&host, conn);
            service.router.on_agent_gone(&host, conn);
            log::info!("{host} ({peer}) command stream closed");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
