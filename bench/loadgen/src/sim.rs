//! Simulated agents. Each one does on the wire what a real monitor-agent
//! does, so the server cannot tell them apart: its own HTTP/2 connection
//! (same keepalive settings as the agent), a `CommandStream` opened first
//! with an `AgentHello`, then a `Report` stream carrying one 6-sample batch
//! per interval built by the agent's own `batch_to_pb`, under its own
//! hostname and boot id. It answers `ping` like the agent's built-in
//! (Accepted, Output "pong\n", Finished exit 0) and `true` like an
//! allowlisted `/bin/true` (Accepted, Finished exit 0), without a process.
//!
//! With TLS each agent presents its own client certificate (issued by
//! [`crate::tls`]) and checks the server against the server's CA, as the
//! agent does; with an `http://` URL it speaks plain text, as the agent
//! does with `--insecure`.
//!
//! What it does not do: read /proc (values are made up), buffer across
//! reconnects (batches in flight when a stream fails are lost), or wait
//! when the server stops reading: a tick whose batch cannot be queued is
//! counted as skipped, so a server that falls behind shows up in the
//! numbers rather than as a slower load generator. A failed stream is
//! counted; then the agent stays down, or, when the fleet is set to
//! reconnect, tries again after the real agent's backoff (1 s, ×1.6,
//! ±20 %), without waiting for the other agents.
//!
//! Ticks are spread over the interval by a golden-ratio sequence, so the
//! load stays even while a fleet grows. Loopback only: the server URLs are
//! the caller's, and the tools that use this module refuse anything else.
//!
//! Given several servers (replicas on one shared store), each agent picks
//! its first as the real agent does (`first_server`, a hash of its name)
//! and, when it reconnects, moves on to the next.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use monitor::batch::{HealthValue, MetricValues, TickBatch};
use monitor::health::HealthMetric;
use monitor::metric::Metric;
use monitor::pb;
use monitor::pb::collector_client::CollectorClient;
use monitor::pb::command_request::Kind as RequestKind;
use monitor::pb::command_response::Kind as ResponseKind;
use monitor::wire::{AgentCounters, AgentIdentity};
use monitor_agent::backoff::{Backoff, unit_random};
use monitor_agent::session::first_server;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::histogram::Histogram;
use crate::tls::AgentCerts;

/// Batches sent and not yet acknowledged, per agent, before ticks are
/// skipped: the real agent's send window.
pub const SEND_WINDOW: usize = 64;
/// Responses queued toward the server per agent (the real agent's queue).
const RESPONSE_QUEUE: usize = 64;
/// Batches queued toward the transport per agent (the real agent's).
const BATCH_QUEUE: usize = 8;
/// The real agent's connection settings (agent/src/session.rs).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection may wait for the server's hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Version the simulated agents claim.
pub const AGENT_VERSION: &str = "0.1.0-loadgen";
/// Connection times kept for [`Stats::connects_since`]: enough for every
/// agent of the largest fleet to connect a few times.
const CONNECT_LOG_CAPACITY: usize = 1 << 20;

/// What the fleet connects to and how it behaves.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// `http://127.0.0.1:PORT` of the server's agent listener, or of
    /// several replicas' (at least one).
    pub servers: Vec<String>,
    pub interval: Duration,
    /// Agent `i` is named `{hostname_prefix}{i:05}`.
    pub hostname_prefix: String,
    /// Local addresses the agents' sockets bind to, in turn; empty: the
    /// kernel chooses. More addresses mean more ephemeral ports.
    pub sources: Vec<IpAddr>,
    /// Connections being set up at once, for the agents' first
    /// connection (reconnections do not wait for each other).
    pub connect_concurrency: usize,
    /// Client certificates, agent `i` presenting the `i`-th, for an
    /// `https://` server; `None`: plain text.
    pub tls: Option<Arc<AgentCerts>>,
    /// Whether an agent whose connection failed or ended tries again (after
    /// the agent's backoff) instead of staying down.
    pub reconnect: bool,
    /// Health values each batch carries besides the six: `Some(m)` sends
    /// what a Raspberry Pi's agent sends with `m` file systems (see
    /// [`pi_health`]); `None` sends none.
    pub pi_health_mounts: Option<usize>,
}

impl FleetConfig {
    pub fn hostname(&self, index: usize) -> String {
        format!("{}{index:05}", self.hostname_prefix)
    }
}

/// Counters shared by every simulated agent. Totals since the fleet
/// started; measurement windows take differences.
#[derive(Debug, Default)]
pub struct Stats {
    /// Agents whose two streams are up now.
    pub connected: AtomicI64,
    pub connect_failures: AtomicU64,
    /// Streams that failed or were closed by the server after connecting.
    pub stream_failures: AtomicU64,
    pub batches_sent: AtomicU64,
    /// Batches acknowledged with code 0 (stored).
    pub acks_ok: AtomicU64,
    /// Batches acknowledged with another code (rejected or not stored).
    pub acks_failed: AtomicU64,
    /// Ticks whose batch was not sent: the send window or the transport
    /// queue was full, i.e. the server was not keeping up.
    pub ticks_skipped: AtomicU64,
    /// Batches sent and not yet acknowledged, over all agents.
    pub in_flight: AtomicI64,
    pub commands_answered: AtomicU64,
    /// Command responses that did not fit the response queue.
    pub responses_dropped: AtomicU64,
    /// Batch sent → its acknowledgement received.
    pub ack_latency: Histogram,
    /// The first error met, for the report.
    pub first_error: Mutex<Option<String>>,
    /// When each connection came up (UNIX ms), up to
    /// [`CONNECT_LOG_CAPACITY`] of them.
    connect_log: Mutex<Vec<i64>>,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub connected: i64,
    pub connect_failures: u64,
    pub stream_failures: u64,
    pub batches_sent: u64,
    pub acks_ok: u64,
    pub acks_failed: u64,
    pub ticks_skipped: u64,
    pub in_flight: i64,
    pub commands_answered: u64,
    pub responses_dropped: u64,
}

impl Stats {
    pub fn counts(&self) -> Counts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            connected: self.connected.load(Ordering::Relaxed),
            connect_failures: get(&self.connect_failures),
            stream_failures: get(&self.stream_failures),
            batches_sent: get(&self.batches_sent),
            acks_ok: get(&self.acks_ok),
            acks_failed: get(&self.acks_failed),
            ticks_skipped: get(&self.ticks_skipped),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            commands_answered: get(&self.commands_answered),
            responses_dropped: get(&self.responses_dropped),
        }
    }

    fn note_error(&self, error: String) {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(error);
        }
    }

    fn note_connected(&self) {
        self.connected.fetch_add(1, Ordering::Relaxed);
        let mut log = self.connect_log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() < CONNECT_LOG_CAPACITY {
            log.push(monitor::time::now_unix_ms());
        }
    }

    /// When the connections that came up at or after `since_unix_ms` did
    /// (UNIX ms, ascending).
    pub fn connects_since(&self, since_unix_ms: i64) -> Vec<i64> {
        let mut times: Vec<i64> = self
            .connect_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .filter(|&t| t >= since_unix_ms)
            .collect();
        times.sort_unstable();
        times
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What every agent task shares.
struct Shared {
    config: FleetConfig,
    /// One per server, in the order of `config.servers`.
    endpoints: Vec<Endpoint>,
    stats: Arc<Stats>,
    permits: Semaphore,
    /// Ticks are planned from here.
    epoch: Instant,
    /// While true, ticks send nothing (to let in-flight batches drain).
    paused: AtomicBool,
    stop: watch::Receiver<bool>,
    /// The labels of the health values, when the fleet sends them.
    pi_labels: Option<PiLabels>,
}

/// A growing set of simulated agents on the current tokio runtime.
pub struct Fleet {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    agents: Vec<JoinHandle<()>>,
}

/// Why a fleet could not be set up.
#[derive(Debug)]
pub struct BadServerUrl {
    /// Empty when no URL was given at all.
    pub url: String,
    pub source: Option<tonic::transport::Error>,
}

impl std::fmt::Display for BadServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.url.is_empty() {
            f.write_str("no server URL given")
        } else {
            write!(f, "server URL '{}' is not usable", self.url)
        }
    }
}

impl std::error::Error for BadServerUrl {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl Fleet {
    pub fn new(config: FleetConfig) -> Result<Fleet, BadServerUrl> {
        let endpoints = config
            .servers
            .iter()
            .map(|url| {
                Endpoint::from_shared(url.clone())
                    .map_err(|source| BadServerUrl {
                        url: url.clone(),
                        source: Some(source),
                    })
                    .map(|e| {
                        e.connect_timeout(CONNECT_TIMEOUT)
                            .tcp_nodelay(true)
                            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                            .keep_alive_while_idle(true)
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(BadServerUrl {
                url: String::new(),
                source: None,
            });
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            permits: Semaphore::new(config.connect_concurrency.max(1)),
            pi_labels: config.pi_health_mounts.map(PiLabels::new),
            config,
            endpoints,
            stats: Arc::new(Stats::default()),
            epoch: Instant::now(),
            paused: AtomicBool::new(false),
            stop: stop_rx,
        });
        Ok(Fleet {
            shared,
            stop: stop_tx,
            agents: Vec::new(),
        })
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.shared.stats
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Starts agents until there are `n`, then waits until every agent
    /// started so far is connected or has failed, or `deadline` passes.
    /// Returns the number connected.
    pub async fn grow_to(&mut self, n: usize, deadline: Duration) -> i64 {
        for index in self.agents.len()..n {
            let shared = Arc::clone(&self.shared);
            self.agents.push(tokio::spawn(agent(index, shared)));
        }
        let until = Instant::now() + deadline;
        let stats = &self.shared.stats;
        loop {
            let c = stats.counts();
            let settled = c.connected as u64 + c.connect_failures + c.stream_failures;
            if settled >= self.agents.len() as u64 || Instant::now() >= until {
                return c.connected;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops sending new batches and waits (up to `deadline`) until every
    /// batch sent was acknowledged. Returns whether nothing is left.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.shared.paused.store(true, Ordering::Relaxed);
        let until = Instant::now() + deadline;
        loop {
            if self.shared.stats.in_flight.load(Ordering::Relaxed) <= 0 {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resumes sending after [`Fleet::drain`].
    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::Relaxed);
    }

    /// Closes every connection; waits at most `deadline` for the tasks.
    pub async fn stop(self, deadline: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(deadline, async {
            for a in self.agents {
                let _ = a.await;
            }
        })
        .await;
    }
}

/// Position of agent `index`'s ticks within the interval, 0 to 1.
fn phase_of(index: usize) -> f64 {
    const GOLDEN: f64 = 0.618_033_988_749_894_9;
    (index as f64 * GOLDEN).fract()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// One agent's two open streams.
struct Session {
    responses: mpsc::Sender<pb::CommandResponse>,
    commands: tonic::Streaming<pb::CommandRequest>,
    batches: mpsc::Sender<pb::Batch>,
    acks: tonic::Streaming<pb::Ack>,
}

/// Agent `index`'s endpoint for its `attempt`-th connection: the server
/// the real agent would pick (its name's hash first, then the next one
/// after each failure), its source address and, with TLS, its certificate.
fn endpoint_of(index: usize, attempt: usize, shared: &Shared) -> Result<Endpoint, String> {
    let n = shared.endpoints.len();
    let first = first_server(&shared.config.hostname(index), n);
    let mut endpoint = shared.endpoints[(first + attempt) % n.max(1)].clone();
    let sources = &shared.config.sources;
    if !sources.is_empty() {
        endpoint = endpoint.local_address(Some(sources[index % sources.len()]));
    }
    match &shared.config.tls {
        None => Ok(endpoint),
        Some(certs) => {
            let tls = certs
                .client_tls(index)
                .ok_or_else(|| format!("no client certificate for agent {index}"))?;
            endpoint
                .tls_config(tls)
                .map_err(|e| format!("TLS settings: {}", error_chain(&e)))
        }
    }
}

async fn connect(
    endpoint: &Endpoint,
    shared: &Shared,
    identity: &AgentIdentity,
) -> Result<Session, String> {
    let channel: Channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {}", error_chain(&e)))?;
    let mut client = CollectorClient::new(channel);

    let (responses, rx) = mpsc::channel(RESPONSE_QUEUE);
    let hello = pb::AgentHello {
        agent_id: identity.agent_id.clone(),
        hostname: identity.hostname.clone(),
        agent_version: identity.agent_version.clone(),
        boot_id: identity.boot_id,
        interval_ms: shared.config.interval.as_millis() as u64,
    };
    let _ = responses.try_send(pb::CommandResponse {
        command_id: String::new(),
        kind: Some(ResponseKind::Hello(hello)),
    });
    let mut commands = client
        .command_stream(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("command stream: {}: {}", s.code(), s.message()))?
        .into_inner();
    match tokio::time::timeout(HELLO_TIMEOUT, commands.message()).await {
        Ok(Ok(Some(pb::CommandRequest {
            kind: Some(RequestKind::Hello(_)),
        }))) => {}
        Ok(Ok(other)) => return Err(format!("expected the server's hello, got {other:?}")),
        Ok(Err(s)) => return Err(format!("command stream: {}: {}", s.code(), s.message())),
        Err(_) => return Err(format!("no server hello within {HELLO_TIMEOUT:?}")),
    }

    let (batches, rx) = mpsc::channel(BATCH_QUEUE);
    let acks = client
        .report(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("report stream: {}: {}", s.code(), s.message()))?
        .into_inner();
    Ok(Session {
        responses,
        commands,
        batches,
        acks,
    })
}

/// Made-up but valid values that change from tick to tick.
fn values(index: usize, seq: u64) -> MetricValues {
    let mut v = MetricValues::default();
    let wobble = ((seq as usize * 7 + index) % 1000) as f64 / 10.0;
    v.set(Metric::CpuPercent, wobble);
    v.set(Metric::MemPercent, 100.0 - wobble);
    v.set(Metric::DiskReadKbps, wobble * 3.0);
    v.set(Metric::DiskWriteKbps, wobble * 5.0);
    v.set(Metric::NetInKbps, wobble * 11.0);
    v.set(Metric::NetOutKbps, wobble * 13.0);
    v
}

/// The labels of a simulated Pi's health values, made once per fleet and
/// shared by every batch, as the agent shares its own.
#[derive(Debug)]
pub struct PiLabels {
    /// The empty label of one-per-host values.
    none: Arc<str>,
    /// `/`, `/boot/firmware`, then `/mnt/data1`, `/mnt/data2`…
    mounts: Vec<Arc<str>>,
}

impl PiLabels {
    /// The labels of a Pi with `mounts` file systems.
    pub fn new(mounts: usize) -> PiLabels {
        PiLabels {
            none: Arc::from(""),
            mounts: (0..mounts)
                .map(|i| match i {
                    0 => Arc::from("/"),
                    1 => Arc::from("/boot/firmware"),
                    _ => Arc::from(format!("/mnt/data{}", i - 1)),
                })
                .collect(),
        }
    }
}

/// The health values a Raspberry Pi's agent sends per tick: temperature,
/// under-voltage, the throttling word, load, uptime, swap, the root's
/// inodes, and one `fs_used_percent` per mount point (7 + mounts values);
/// made-up but valid values that change from tick to tick.
fn pi_health(index: usize, seq: u64, labels: &PiLabels) -> Box<[HealthValue]> {
    let wobble = ((seq as usize * 7 + index) % 1000) as f64 / 10.0;
    let one = |metric, value| HealthValue {
        metric,
        device: Arc::clone(&labels.none),
        value,
    };
    // The firmware's "throttled now and since boot" bits, now and then.
    let throttled = if wobble > 90.0 { 0x4_0004 } else { 0 };
    let mut health = vec![
        one(HealthMetric::TempCelsius, 40.0 + wobble / 5.0),
        one(HealthMetric::UnderVoltage, 0.0),
        one(HealthMetric::ThrottledFlags, f64::from(throttled)),
        one(HealthMetric::Load1, wobble / 25.0),
        one(HealthMetric::UptimeSeconds, 1_000.0 + seq as f64),
        one(HealthMetric::SwapPercent, wobble / 10.0),
        one(HealthMetric::RootInodesUsedPercent, 12.5),
    ];
    health.extend(
        labels
            .mounts
            .iter()
            .zip(0u32..)
            .map(|(mount, i)| HealthValue {
                metric: HealthMetric::FsUsedPercent,
                device: Arc::clone(mount),
                value: (wobble + f64::from(i) * 10.0).min(100.0),
            }),
    );
    health.into_boxed_slice()
}

/// The answer a real agent gives to `argv`, without running anything.
fn answer(id: &str, argv: &[String]) -> Vec<pb::CommandResponse> {
    let msg = |kind| pb::CommandResponse {
        command_id: id.to_owned(),
        kind: Some(kind),
    };
    let exited = |stdout_bytes| {
        msg(ResponseKind::Finished(pb::Finished {
            outcome: pb::Outcome::Exited as i32,
            exit_code: Some(0),
            stdout_bytes,
            ..Default::default()
        }))
    };
    match argv.first().map(String::as_str) {
        Some("ping") => vec![
            msg(ResponseKind::Accepted(pb::Accepted {})),
            msg(ResponseKind::Output(pb::Output {
                stream: pb::OutputStream::Stdout as i32,
                data: b"pong\n".to_vec(),
            })),
            exited(5),
        ],
        Some("true") => vec![msg(ResponseKind::Accepted(pb::Accepted {})), exited(0)],
        _ => {
            let reason = "the load generator answers only ping and true".to_owned();
            vec![
                msg(ResponseKind::Rejected(pb::Rejected {
                    reason: reason.clone(),
                })),
                msg(ResponseKind::Finished(pb::Finished {
                    outcome: pb::Outcome::Rejected as i32,
                    message: reason,
                    ..Default::default()
                })),
            ]
        }
    }
}

/// One simulated agent, until the fleet stops, or until its connection
/// fails when the fleet does not reconnect.
async fn agent(index: usize, shared: Arc<Shared>) {
    let stats = &shared.stats;
    let hostname = shared.config.hostname(index);
    let identity = AgentIdentity {
        agent_id: hostname.clone(),
        hostname,
        agent_version: AGENT_VERSION.to_owned(),
        boot_id: monitor::random::random_u64(),
    };
    let mut stop = shared.stop.clone();
    let mut backoff = Backoff::default();
    let mut seq = 0u64;
    let mut first = true;
    for attempt in 0.. {
        let endpoint = match endpoint_of(index, attempt, &shared) {
            Ok(e) => e,
            Err(e) => {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                stats.note_error(format!("{}: {e}", identity.hostname));
                return;
            }
        };
        let session = {
            // Only the first connections queue for a permit: agents that
            // reconnect do not know about each other.
            let _permit = if first {
                match shared.permits.acquire().await {
                    Ok(p) => Some(p),
                    Err(_) => return,
                }
            } else {
                None
            };
            tokio::select! {
                s = connect(&endpoint, &shared, &identity) => s,
                _ = stop.wait_for(|s| *s) => return,
            }
        };
        first = false;
        match session {
            Ok(session) => {
                stats.note_connected();
                let ended = run_session(index, &shared, &identity, session, &mut seq).await;
                stats.connected.fetch_sub(1, Ordering::Relaxed);
                let Some(e) = ended else {
                    return;
                };
                stats.stream_failures.fetch_add(1, Ordering::Relaxed);
                stats.note_error(format!("{}: {e}", identity.hostname));
                // The session was up: the next failure waits 1 s again.
                backoff.reset();
            }
            Err(e) => {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                stats.note_error(format!("{}: {e}", identity.hostname));
            }
        }
        if !shared.config.reconnect {
            return;
        }
        let delay = backoff.next_delay(unit_random());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One session on connected streams, until the fleet stops (`None`) or a
/// stream fails (why). `seq` goes on across sessions, as the agent's does.
async fn run_session(
    index: usize,
    shared: &Shared,
    identity: &AgentIdentity,
    session: Session,
    seq: &mut u64,
) -> Option<String> {
    let stats = &shared.stats;
    let mut stop = shared.stop.clone();
    let Session {
        responses,
        mut commands,
        batches,
        mut acks,
    } = session;
    let interval = shared.config.interval;
    let first = shared.epoch + interval.mul_f64(phase_of(index));
    let mut now = Instant::now();
    let mut start = first;
    while start < now {
        start += interval;
    }
    let mut ticks = tokio::time::interval_at(start, interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(4);
    let ended: Option<String> = loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break None,
            ack = acks.message() => match ack {
                Ok(Some(ack)) => {
                    now = Instant::now();
                    while let Some(&(sent_seq, sent_at)) = in_flight.front() {
                        if sent_seq > ack.seq {
                            break;
                        }
                        in_flight.pop_front();
                        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                        if sent_seq == ack.seq {
                            stats.ack_latency.record(now - sent_at);
                        }
                    }
                    if ack.code == 0 {
                        stats.acks_ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stats.acks_failed.fetch_add(1, Ordering::Relaxed);
                        stats.note_error(format!(
                            "{}: batch {} not stored (code {}): {}",
                            identity.hostname, ack.seq, ack.code, ack.message
                        ));
                    }
                }
                Ok(None) => break Some("the server closed the report stream".to_owned()),
                Err(s) => break Some(format!("report stream: {}: {}", s.code(), s.message())),
            },
            request = commands.message() => match request {
                Ok(Some(pb::CommandRequest { kind: Some(RequestKind::Run(run)) })) => {
                    for response in answer(&run.command_id, &run.argv) {
                        if responses.try_send(response).is_err() {
                            stats.responses_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    stats.commands_answered.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(_)) => {}
                Ok(None) => break Some("the server closed the command stream".to_owned()),
                Err(s) => break Some(format!("command stream: {}: {}", s.code(), s.message())),
            },
            _ = ticks.tick() => {
                if shared.paused.load(Ordering::Relaxed) {
                    continue;
                }
                if in_flight.len() >= SEND_WINDOW {
                    stats.ticks_skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let time_unix_ms = monitor::time::now_unix_ms();
                let batch = TickBatch {
                    boot_id: identity.boot_id,
                    seq: *seq + 1,
                    time_unix_ms,
                    values: values(index, *seq + 1),
                    health: match &shared.pi_labels {
                        Some(labels) => pi_health(index, *seq + 1, labels),
                        None => Box::default(),
                    },
                };
                let counters = AgentCounters {
                    produced_batches_total: *seq + 1,
                    dropped_batches_total: 0,
                    parse_errors_total: 0,
                };
                let pb = monitor::wire::batch_to_pb(identity, &batch, time_unix_ms, counters);
                match batches.try_send(pb) {
                    Ok(()) => {
                        *seq += 1;
                        in_flight.push_back((*seq, Instant::now()));
                        stats.in_flight.fetch_add(1, Ordering::Relaxed);
                        stats.batches_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        stats.ticks_skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        break Some("the report stream's queue closed".to_owned());
                    }
                }
            }
        }
    };
    stats
        .in_flight
        .fetch_sub(in_flight.len() as i64, Ordering::Relaxed);
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_spread_evenly() {
        // Any 100 consecutive agents leave no gap wider than 3 % of the
        // interval, so a growing fleet never bunches its ticks.
        let mut phases: Vec<f64> = (1000..1100).map(phase_of).collect();
        phases.sort_by(f64::total_cmp);
        let widest = phases
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(phases[0] + 1.0 - phases[99], f64::max);
        assert!(widest < 0.03, "widest gap {widest}");
    }

    #[test]
    fn answers_like_the_agent() {
        let ping = answer("c1", &["ping".to_owned()]);
        let kinds: Vec<_> = ping.iter().map(|r| r.kind.clone()).collect();
        assert!(matches!(kinds[0], Some(ResponseKind::Accepted(_))));
        assert!(
            matches!(&kinds[1], Some(ResponseKind::Output(o)) if o.data == b"pong\n" && o.stream == pb::OutputStream::Stdout as i32)
        );
        assert!(
            matches!(&kinds[2], Some(ResponseKind::Finished(f)) if f.exit_code == Some(0) && f.outcome == pb::Outcome::Exited as i32)
        );
        assert!(ping.iter().all(|r| r.command_id == "c1"));
        let t = answer("c2", &["true".to_owned()]);
        assert_eq!(t.len(), 2);
        let other = answer("c3", &["rm".to_owned()]);
        assert!(
            matches!(&other[1].kind, Some(ResponseKind::Finished(f)) if f.outcome == pb::Outcome::Rejected as i32)
        );
    }

    /// Agent `index`'s batch `seq`, as the fleet makes it (with a Pi's
    /// health values when `labels` is given), through `batch_to_pb` and
    /// the server's validation.
    fn sent_and_validated(
        index: usize,
        seq: u64,
        labels: Option<&PiLabels>,
    ) -> (pb::Batch, monitor::wire::ValidBatch) {
        let name = format!("lg-{index:05}");
        let identity = AgentIdentity {
            agent_id: name.clone(),
            hostname: name,
            agent_version: AGENT_VERSION.into(),
            boot_id: 7,
        };
        let now = monitor::time::now_unix_ms();
        let batch = TickBatch {
            boot_id: 7,
            seq,
            time_unix_ms: now,
            values: values(index, seq),
            health: labels.map_or_else(Box::default, |l| pi_health(index, seq, l)),
        };
        let pb = monitor::wire::batch_to_pb(&identity, &batch, now, AgentCounters::default());
        let valid = monitor::wire::validate_batch(pb.clone(), now, 30_000).unwrap();
        (pb, valid)
    }

    #[test]
    fn pi_health_values_are_valid_for_the_server() {
        let labels = PiLabels::new(3);
        for seq in [1u64, 2, 13, 500] {
            let (pb, valid) = sent_and_validated(2, seq, Some(&labels));
            assert_eq!(pb.health_samples.len(), 10);
            let devices: Vec<&str> = pb.health_samples[7..]
                .iter()
                .map(|s| s.device.as_str())
                .collect();
            assert_eq!(devices, ["/", "/boot/firmware", "/mnt/data1"]);
            assert_eq!(valid.health.len(), 10, "seq {seq}");
        }
    }

    #[test]
    fn batches_are_valid_for_the_server() {
        for seq in [1u64, 2, 500, 9_999] {
            let (pb, valid) = sent_and_validated(1, seq, None);
            assert_eq!(pb.samples.len(), 6);
            assert!(pb.health_samples.is_empty());
            assert_eq!(valid.samples.len(), 6);
        }
    }
}
