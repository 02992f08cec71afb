//! Routes operator commands to agents and their results back.
//!
//! One operator command (one id) fans out to every target at once: each
//! reachable host gets a `RunCommand` pushed on its command stream with no
//! waiting on the others; unknown and offline hosts get an `Unreachable`
//! result at once (the registry says who has a stream; the store says
//! whether a host without one is known, and when it was last seen). Agents' responses come back through
//! [`CommandRouter::on_agent_response`] and are forwarded to the operator's
//! stream as they arrive; every final result is recorded in the store.
//!
//! With several replicas on a shared store (see `replicas.rs`), a target
//! held by another replica is reached through the store: the request is
//! relayed to that replica, which pushes it to the agent and relays the
//! agent's answers back; this replica (the one the operator called) streams
//! them and records the final result, so history has it once. A relayed
//! target whose replica's lease runs out ends as "lost connection".
//!
//! Nothing here waits forever: a host that never answers gets a
//! `LostConnection` result when the command's timeout plus a grace period
//! has passed, an agent whose stream ends gets one at once, and an operator
//! who goes away (Ctrl-C) has the command cancelled on every host.
//!
//! Nothing an agent sends is forwarded or kept without a bound: output at
//! most [`MAX_OUTPUT_PER_STREAM_BYTES`] per stream per host and
//! [`MAX_OUTPUT_PER_COMMAND_BYTES`] per command (what is dropped beyond is
//! counted, logged once per host, and flagged in the host's Finished
//! event), a rejection reason or result message at most
//! [`MAX_MESSAGE_BYTES`]. An operator's request is checked the same way:
//! every target a hostname, at most [`MAX_TARGETS`] of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use monitor::command::{Finished, Outcome};
use monitor::pb;
use monitor::pb::command_response::Kind as AgentKind;
use monitor::pb::exec_event::Kind as EventKind;
use prost::Message;
use tokio::sync::{Notify, mpsc};
use tonic::Status;

use crate::registry::Registry;
use crate::replicas::Relay;
use crate::store::RelayKind;
use crate::store::{CommandRecord, CommandResultRecord, Store};
use crate::telemetry::Telemetry;

/// Why a command cannot be sent to a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreachable {
    /// Neither connected since the server started nor ever stored.
    Unknown,
    /// Known but no command stream is open; when its latest batch was
    /// stored (0: never).
    Offline { last_seen_unix_ms: i64 },
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreachable::Unknown => f.write_str("unknown host"),
            Unreachable::Offline { last_seen_unix_ms } if *last_seen_unix_ms > 0 => {
                write!(
                    f,
                    "offline (last seen {})",
                    monitor::time::Rfc3339(*last_seen_unix_ms)
                )
            }
            Unreachable::Offline { .. } => f.write_str("offline"),
        }
    }
}

/// The operator's stream of events for one command.
pub type EventSender = mpsc::Sender<Result<pb::ExecEvent, Status>>;

/// How long past its timeout a command may take to report back (SIGTERM
/// grace, output still in flight) before the server gives up on the host.
pub const RESULT_GRACE: Duration = Duration::from_secs(15);
/// How long a request stays valid for the agent to start it.
pub const REQUEST_TTL: Duration = Duration::from_secs(30);
/// Events buffered toward a slow operator before agents' streams wait.
const EVENT_QUEUE: usize = 1024;
/// The connection id of a target another replica holds (no local stream
/// has it: ids count up from 1).
const RELAYED: u64 = u64::MAX;
/// Commands other replicas relayed here that are running at once, at most;
/// more are refused (as unreachable) rather than kept without bound.
const MAX_RELAYED: usize = 4096;
/// How often a command with relayed targets checks their replicas' leases.
const LEASE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Output forwarded per stream (stdout, stderr) per host of one command:
/// the agent's own default cap, so a well-behaved agent never meets it; a
/// modified or buggy one cannot push more through the server.
pub const MAX_OUTPUT_PER_STREAM_BYTES: u64 = 64 * 1024;
/// Output forwarded per command, every host together: a fan-out to 250
/// hosts that each print their 64 KiB. Beyond it every host's output is
/// dropped (and counted), so a fan-out to the whole fleet cannot make the
/// operator's stream, or the server, carry gigabytes.
pub const MAX_OUTPUT_PER_COMMAND_BYTES: u64 = 16 * 1024 * 1024;
/// Longest rejection reason or result message forwarded and recorded.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Most hosts one command may name: more than the agents' listener holds
/// connections (30,000), so a real fleet always fits.
pub const MAX_TARGETS: usize = 30_000;

/// What a request asks, once its signature (if any) is unpacked.
struct Plan {
    id: String,
    argv: Vec<String>,
    /// As asked: 0 is the default timeout (a signed grant's value is
    /// forwarded as signed).
    timeout_ms: u32,
    all: bool,
    hosts: Vec<String>,
    expires_unix_ms: i64,
}

impl Plan {
    /// The grant of a signed request (its signature checked by the caller).
    fn signed(signed: &pb::SignedCommand) -> Result<Plan, Status> {
        use prost::Message;
        let grant = pb::CommandGrant::decode(signed.grant.as_slice()).map_err(|e| {
            Status::invalid_argument(format!("signed.grant: not a CommandGrant: {e}"))
        })?;
        // Printable ASCII only (monitorctl makes 32 hex digits): the id is
        // written into log lines and the operator's terminal as it is.
        if grant.command_id.is_empty()
            || grant.command_id.len() > monitor::command::MAX_ID_BYTES
            || !grant.command_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Status::invalid_argument(
                "signed.grant.command_id: must be 1 to 128 bytes of printable ASCII",
            ));
        }
        if !grant.all_hosts {
            check_targets("signed.grant.hosts", &grant.hosts)?;
        }
        Ok(Plan {
            id: grant.command_id,
            argv: grant.argv,
            timeout_ms: grant.timeout_ms,
            all: grant.all_hosts,
            hosts: grant.hosts,
            expires_unix_ms: grant.expires_unix_ms,
        })
    }

    /// An unsigned request: only a read-only built-in.
    fn unsigned(req: &pb::ExecRequest, now_unix_ms: i64) -> Result<Plan, Status> {
        if !req.all {
            check_targets("hosts", &req.hosts)?;
        }
        if !monitor::command::runs_unsigned(&req.argv) {
            return Err(Status::permission_denied(
                "only ping and info run without an operator's signature: monitorctl signs \
                 commands with the operator's key (see 'monitorctl key')",
            ));
        }
        Ok(Plan {
            id: monitor::random::random_id(),
            argv: req.argv.clone(),
            timeout_ms: req.timeout_ms,
            all: req.all,
            hosts: req.hosts.clone(),
            expires_unix_ms: now_unix_ms + REQUEST_TTL.as_millis() as i64,
        })
    }
}

struct Inflight {
    /// Hosts that have not sent their final result: host → connection id
    /// ([`RELAYED`] for a host another replica holds).
    pending: HashMap<String, u64>,
    /// The replica holding each relayed target.
    remote: HashMap<String, String>,
    /// Output of each host so far (hosts with output only).
    output: HashMap<String, HostOutput>,
    /// Output forwarded so far, every host together.
    forwarded_total: u64,
    events: EventSender,
    done: Arc<Notify>,
}

/// Bytes of one host's output for one command: [stdout, stderr].
#[derive(Clone, Copy, Debug, Default)]
struct HostOutput {
    forwarded: [u64; 2],
    dropped: [u64; 2],
}

/// How much of a `len`-byte output piece may still go to the operator,
/// when `forwarded` of its stream and `total` of the command went already.
fn output_room(len: usize, forwarded: u64, total: u64) -> usize {
    let room = MAX_OUTPUT_PER_STREAM_BYTES
        .saturating_sub(forwarded)
        .min(MAX_OUTPUT_PER_COMMAND_BYTES.saturating_sub(total));
    usize::try_from(room).unwrap_or(usize::MAX).min(len)
}

/// Cuts `text` to at most `max` bytes (at a character boundary), noting
/// what was left out.
fn cap_message(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let left_out = text.len();
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    let _ = std::fmt::Write::write_fmt(text, format_args!("…({} more bytes)", left_out - end));
}

/// Checks an operator's targets: each a hostname, at most [`MAX_TARGETS`].
fn check_targets(field: &str, hosts: &[String]) -> Result<(), Status> {
    if hosts.len() > MAX_TARGETS {
        return Err(crate::admin::invalid(monitor::wire::FieldError::TooMany {
            field: field.to_owned(),
            count: hosts.len(),
            limit: MAX_TARGETS,
        }));
    }
    for (i, h) in hosts.iter().enumerate() {
        monitor::wire::check_hostname(&format!("{field}[{i}]"), h)
            .map_err(crate::admin::invalid)?;
    }
    Ok(())
}

pub struct CommandRouter {
    registry: Arc<Registry>,
    store: Store,
    inflight: Mutex<HashMap<String, Inflight>>,
    /// Final results counted by outcome, if the server keeps counters.
    telemetry: Option<Arc<Telemetry>>,
    /// This replica, when it shares its store with others.
    relay: Option<Arc<Relay>>,
    /// Commands other replicas relayed to agents here: (command id, host)
    /// → (the replica to answer, the agent's connection id).
    relayed: Mutex<HashMap<(String, String), Relayed>>,
}

/// The agent's kind of answer saying `id` ended as `finished`.
fn finished_response(id: &str, finished: &Finished) -> pb::CommandResponse {
    pb::CommandResponse {
        command_id: id.to_owned(),
        kind: Some(AgentKind::Finished(finished.to_pb())),
    }
}

/// The request that cancels `id` on an agent.
fn cancel_request(id: &str) -> pb::CommandRequest {
    pb::CommandRequest {
        kind: Some(pb::command_request::Kind::Cancel(pb::CancelCommand {
            command_id: id.to_owned(),
        })),
    }
}

/// A command another replica relayed to an agent here.
struct Relayed {
    /// The replica to answer (the one the operator called).
    origin: String,
    /// The agent's command stream it went out on.
    conn: u64,
    /// Output relayed back so far, per stream (stdout, stderr): capped as
    /// the origin caps it, so the relay carries no more than it forwards.
    forwarded: [u64; 2],
    /// Whether output was dropped, per stream.
    dropped: [bool; 2],
}

/// Tells replica `to`, which relayed `id` for `hostname` here, that it
/// ended as `finished` without the agent's word.
async fn answer_relayed(relay: &Relay, to: &str, hostname: &str, id: &str, finished: &Finished) {
    let body = finished_response(id, finished).encode_to_vec();
    if let Err(e) = relay
        .send(to, RelayKind::Response, hostname, id, body)
        .await
    {
        log::warn!("command {id}: cannot tell replica {to} how it ended on {hostname}: {e}");
    }
}

fn finished_event(host: &str, id: &str, finished: &Finished) -> pb::ExecEvent {
    pb::ExecEvent {
        hostname: host.to_owned(),
        command_id: id.to_owned(),
        kind: Some(EventKind::Finished(finished.to_pb())),
    }
}

impl CommandRouter {
    pub fn new(registry: Arc<Registry>, store: Store) -> CommandRouter {
        CommandRouter {
            registry,
            store,
            inflight: Mutex::new(HashMap::new()),
            telemetry: None,
            relay: None,
            relayed: Mutex::new(HashMap::new()),
        }
    }

    /// Reaches hosts held by other replicas through the shared store.
    pub fn with_relay(mut self, relay: Arc<Relay>) -> CommandRouter {
        self.relay = Some(relay);
        self
    }

    /// This replica's id, when it shares its store with others.
    pub fn replica_id(&self) -> Option<&str> {
        self.relay.as_deref().map(|r| r.id.as_str())
    }

    fn relayed(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Relayed>> {
        self.relayed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts every final result by outcome in `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> CommandRouter {
        self.telemetry = Some(telemetry);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Inflight>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a command on its targets; events arrive on the returned
    /// receiver, which closes after the last host's final result.
    ///
    /// A signed request runs exactly what its grant says (id, argv,
    /// timeout, hosts, expiry), with the signature forwarded untouched for
    /// the agents to check; the caller ([`crate::admin`]) checked that the
    /// signature holds and whose key it is. An unsigned one may only be a
    /// read-only built-in.
    pub async fn exec(
        self: &Arc<Self>,
        req: pb::ExecRequest,
        operator: &str,
    ) -> Result<(String, mpsc::Receiver<Result<pb::ExecEvent, Status>>), Status> {
        let now = monitor::time::now_unix_ms();
        let plan = match &req.signed {
            Some(signed) => Plan::signed(signed)?,
            None => Plan::unsigned(&req, now)?,
        };
        let Plan {
            id,
            argv,
            timeout_ms,
            all,
            hosts,
            expires_unix_ms,
        } = plan;
        monitor::command::check_argv(&argv).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let timeout = monitor::command::timeout_from_ms(timeout_ms)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if self.lock().contains_key(&id) {
            return Err(Status::already_exists(format!(
                "command {id} is running already"
            )));
        }
        let targets: Vec<String> = if all {
            let mut online = self.registry.online_hosts();
            // Fleet-wide: the hosts other replicas hold too.
            if let Some(relay) = &self.relay {
                // Without the sessions table nobody can tell which hosts
                // the other replicas hold: refuse rather than silently
                // run on this replica's part of the fleet only.
                let mut elsewhere: Vec<String> = match relay.holders().await {
                    Ok(h) => h.into_keys().collect(),
                    Err(e) => {
                        return Err(Status::unavailable(format!(
                            "cannot tell which hosts the other replicas hold: {e}"
                        )));
                    }
                };
                elsewhere.retain(|h| !online.contains(h));
                online.extend(elsewhere);
                online.sort();
            }
            if online.is_empty() {
                return Err(Status::failed_precondition("no host is online"));
            }
            online
        } else {
            let mut seen = std::collections::HashSet::new();
            hosts
                .into_iter()
                .filter(|h| seen.insert(h.clone()))
                .collect()
        };
        if targets.is_empty() {
            return Err(Status::invalid_argument("name at least one host, or all"));
        }
        let (events, rx) = mpsc::channel(EVENT_QUEUE.max(targets.len() + 16));
        // The id comes first, so the operator can cancel before any host
        // answers. The channel is new and has room.
        let _ = events.try_send(Ok(pb::ExecEvent {
            hostname: String::new(),
            command_id: id.clone(),
            kind: Some(EventKind::Started(pb::Started {
                targets: targets.clone(),
            })),
        }));
        let done = Arc::new(Notify::new());
        // Queued before any command goes out, so every result is handled
        // after it by the store's single writer; committed in the
        // background so dispatch is not delayed by a flush.
        let recorded = self
            .store
            .enqueue_command(CommandRecord {
                command_id: id.clone(),
                time_unix_ms: now,
                targets: targets.clone(),
                argv: argv.clone(),
                operator: operator.to_owned(),
            })
            .await
            .map_err(|e| Status::unavailable(format!("cannot record the command: {e}")))?;
        let record_id = id.clone();
        tokio::spawn(async move {
            if let Err(e) = recorded.await {
                log::error!("command {record_id}: cannot record it: {e}");
            }
        });
        let run = pb::CommandRequest {
            kind: Some(pb::command_request::Kind::Run(pb::RunCommand {
                command_id: id.clone(),
                argv: argv.clone(),
                timeout_ms,
                expires_unix_ms,
                signed: req.signed.clone(),
            })),
        };
        let mut unreachable = Vec::new();
        let mut no_stream = Vec::new();
        // Which replica holds each target this one has no stream for, read
        // before anything goes out: every target is pending before the
        // first can answer. (Marking relayed targets pending one by one as
        // their requests went out let the first answers empty the pending
        // set and end an `--all` before the rest were sent: fan-outs
        // reached 47 or 268 of 1,000 agents, with no error.)
        let holders = self.holders_of(&id, &targets).await;
        let mut to_relay = Vec::new();
        {
            let mut inflight = self.lock();
            let entry = inflight.entry(id.clone()).or_insert(Inflight {
                pending: HashMap::new(),
                remote: HashMap::new(),
                output: HashMap::new(),
                forwarded_total: 0,
                events: events.clone(),
                done: Arc::clone(&done),
            });
            for host in &targets {
                match self.registry.command_sender(host) {
                    Some((conn, sender)) => match sender.try_send(Ok(run.clone())) {
                        Ok(()) => {
                            entry.pending.insert(host.clone(), conn);
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => unreachable.push((
                            host.clone(),
                            Finished::without_process(
                                Outcome::Unreachable,
                                "the agent's command queue is full",
                            ),
                        )),
                        Err(mpsc::error::TrySendError::Closed(_)) => unreachable.push((
                            host.clone(),
                            Finished::without_process(Outcome::LostConnection, "lost connection"),
                        )),
                    },
                    None => match holders.get(host) {
                        Some(replica) => {
                            entry.pending.insert(host.clone(), RELAYED);
                            entry.remote.insert(host.clone(), replica.clone());
                            to_relay.push((host.clone(), replica.clone()));
                        }
                        None => no_stream.push(host.clone()),
                    },
                }
            }
        }
        no_stream.extend(self.relay_run(&id, &run, to_relay).await);
        {
            let mut inflight = self.lock();
            if inflight.get(&id).is_some_and(|e| e.pending.is_empty()) {
                inflight.remove(&id);
            }
        }
        for host in no_stream {
            let why = self.unreachable(&host).await;
            unreachable.push((
                host,
                Finished::without_process(Outcome::Unreachable, why.to_string()),
            ));
        }
        log::info!(
            "command {id} from operator {operator}: {:?} on {} hosts ({} unreachable)",
            argv,
            targets.len(),
            unreachable.len()
        );
        for (host, finished) in unreachable {
            // The channel has room for every target's first event.
            let _ = events.try_send(Ok(finished_event(&host, &id, &finished)));
            self.record_result(&id, &host, finished);
        }
        let router = Arc::clone(self);
        let watch_id = id.clone();
        tokio::spawn(async move {
            router
                .watch(watch_id, events, done, timeout + RESULT_GRACE)
                .await;
        });
        Ok((id, rx))
    }

    /// Why `hostname`, which has no command stream, cannot be reached.
    async fn unreachable(&self, hostname: &str) -> Unreachable {
        let stored = match self.store.host(hostname).await {
            Ok(record) => record,
            Err(e) => {
                log::warn!(
                    "cannot look host '{}' up in the store: {e}",
                    monitor::text::Escaped::capped(hostname)
                );
                None
            }
        };
        match stored {
            Some(record) => Unreachable::Offline {
                last_seen_unix_ms: record.last_seen_unix_ms,
            },
            None if self.registry.has_connected(hostname) => Unreachable::Offline {
                last_seen_unix_ms: 0,
            },
            None => Unreachable::Unknown,
        }
    }

    /// Ends a command: when every host answered, when the operator left
    /// (cancel everywhere), or when hosts failed to answer in time.
    async fn watch(&self, id: String, events: EventSender, done: Arc<Notify>, limit: Duration) {
        if !self.lock().contains_key(&id) {
            return;
        }
        tokio::select! {
            () = self.finished(&id, &done) => {}
            () = events.closed() => {
                let hosts = self.cancel(&id);
                if !hosts.is_empty() {
                    log::info!("command {id}: the operator left; cancelled on {} hosts", hosts.len());
                }
                // Results still come back and are recorded; give them the
                // same time limit.
                tokio::select! {
                    () = self.finished(&id, &done) => {}
                    () = tokio::time::sleep(limit) => self.give_up(&id, limit),
                }
            }
            () = tokio::time::sleep(limit) => {
                self.cancel(&id);
                self.give_up(&id, limit);
            }
        }
    }

    /// Resolves once every target answered; meanwhile a relayed target
    /// whose replica stopped holding its agent (died: its lease ran out;
    /// or the agent left it) ends as lost.
    async fn finished(&self, id: &str, done: &Notify) {
        let leases = async {
            let mut tick = tokio::time::interval(LEASE_CHECK_EVERY);
            loop {
                tick.tick().await;
                self.check_leases(id).await;
            }
        };
        tokio::select! {
            () = done.notified() => {}
            () = leases => {}
        }
    }

    /// Ends the relayed targets of `id` whose replica no longer holds
    /// their agent.
    async fn check_leases(&self, id: &str) {
        let Some(relay) = &self.relay else {
            return;
        };
        let remote: Vec<(String, String)> = match self.lock().get(id) {
            Some(e) => e
                .remote
                .iter()
                .filter(|(h, _)| e.pending.get(*h) == Some(&RELAYED))
                .map(|(h, r)| (h.clone(), r.clone()))
                .collect(),
            None => return,
        };
        if remote.is_empty() {
            return;
        }
        let holders = match relay.holders().await {
            Ok(h) => h,
            // The store is away: nobody can tell; the time limit still holds.
            Err(_) => return,
        };
        for (host, replica) in remote {
            if holders.get(&host) != Some(&replica) {
                let finished = Finished::without_process(
                    Outcome::LostConnection,
                    format!("lost connection: replica {replica} no longer holds the agent"),
                );
                self.on_agent_response(&host, RELAYED, finished_response(id, &finished))
                    .await;
            }
        }
    }

    /// Which live replica holds each of `targets` that this replica has
    /// no command stream for: empty without replicas, when every target is
    /// here, or when the store cannot tell (those targets are then
    /// unreachable, and the log says why).
    async fn holders_of(&self, id: &str, targets: &[String]) -> HashMap<String, String> {
        let Some(relay) = &self.relay else {
            return HashMap::new();
        };
        if targets
            .iter()
            .all(|h| self.registry.command_sender(h).is_some())
        {
            return HashMap::new();
        }
        match relay.holders().await {
            Ok(h) => h,
            Err(e) => {
                log::warn!("command {id}: cannot look up which replica holds its targets: {e}");
                HashMap::new()
            }
        }
    }

    /// Sends `run` to the replica holding each of `targets` (host,
    /// replica), every one already pending; returns the hosts it could not
    /// be sent for, no longer pending.
    async fn relay_run(
        &self,
        id: &str,
        run: &pb::CommandRequest,
        targets: Vec<(String, String)>,
    ) -> Vec<String> {
        let Some(relay) = &self.relay else {
            return targets.into_iter().map(|(host, _)| host).collect();
        };
        let body = run.encode_to_vec();
        let mut left = Vec::new();
        for (host, replica) in targets {
            if let Err(e) = relay
                .send(&replica, RelayKind::Run, &host, id, body.clone())
                .await
            {
                log::warn!("command {id}: cannot relay to replica {replica} for {host}: {e}");
                if let Some(e) = self.lock().get_mut(id) {
                    e.pending.remove(&host);
                    e.remote.remove(&host);
                }
                left.push(host);
            }
        }
        left
    }

    /// Another replica (`from`) relayed a command for `hostname`, whose
    /// agent is connected here: pushes it to the agent, whose answers go
    /// back to `from`.
    pub async fn run_relayed(&self, from: &str, hostname: &str, id: &str, body: &[u8]) {
        let Some(relay) = &self.relay else {
            return;
        };
        let request = match pb::CommandRequest::decode(body) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("command {id}: replica {from} relayed an unreadable request: {e}");
                return;
            }
        };
        let key = (id.to_owned(), hostname.to_owned());
        let refused = match self.registry.command_sender(hostname) {
            _ if self.relayed().len() >= MAX_RELAYED => Some(Finished::without_process(
                Outcome::Unreachable,
                "too many commands relayed to this replica at once",
            )),
            Some((conn, sender)) => {
                self.relayed().insert(
                    key.clone(),
                    Relayed {
                        origin: from.to_owned(),
                        conn,
                        forwarded: [0, 0],
                        dropped: [false, false],
                    },
                );
                match sender.try_send(Ok(request)) {
                    Ok(()) => None,
                    Err(_) => {
                        self.relayed().remove(&key);
                        Some(Finished::without_process(
                            Outcome::Unreachable,
                            "the agent's command queue is full or closed",
                        ))
                    }
                }
            }
            None => Some(Finished::without_process(
                Outcome::LostConnection,
                "lost connection: the agent left the replica that held it",
            )),
        };
        if let Some(finished) = refused {
            answer_relayed(relay, from, hostname, id, &finished).await;
        }
    }

    /// Another replica cancels a command it relayed here.
    pub fn cancel_relayed(&self, hostname: &str, id: &str) {
        let key = (id.to_owned(), hostname.to_owned());
        if !self.relayed().contains_key(&key) {
            return;
        }
        if let Some((_, sender)) = self.registry.command_sender(hostname) {
            let _ = sender.try_send(Ok(cancel_request(id)));
        }
    }

    /// An agent's answer to a command this replica relayed, from the
    /// replica that holds the agent.
    pub async fn on_relayed_response(&self, hostname: &str, id: &str, body: &[u8]) {
        match pb::CommandResponse::decode(body) {
            Ok(mut resp) => {
                resp.command_id = id.to_owned();
                self.on_agent_response(hostname, RELAYED, resp).await;
            }
            Err(e) => log::warn!("command {id}: an unreadable relayed answer for {hostname}: {e}"),
        }
    }

    /// Sends an agent's answer to a command another replica relayed here
    /// back to it; false when the command was not relayed.
    async fn forward_relayed(&self, hostname: &str, conn: u64, resp: &pb::CommandResponse) -> bool {
        let (Some(relay), false) = (&self.relay, self.relayed().is_empty()) else {
            return false;
        };
        let key = (resp.command_id.clone(), hostname.to_owned());
        let mut resp = resp.clone();
        let origin = {
            let mut relayed = self.relayed();
            let Some(r) = relayed.get_mut(&key).filter(|r| r.conn == conn) else {
                return false;
            };
            let origin = r.origin.clone();
            match &mut resp.kind {
                Some(AgentKind::Output(o)) => {
                    let stream = usize::from(o.stream == pb::OutputStream::Stderr as i32);
                    let room = MAX_OUTPUT_PER_STREAM_BYTES.saturating_sub(r.forwarded[stream]);
                    let room = usize::try_from(room)
                        .unwrap_or(usize::MAX)
                        .min(o.data.len());
                    if room < o.data.len() {
                        r.dropped[stream] = true;
                        o.data.truncate(room);
                    }
                    r.forwarded[stream] += room as u64;
                    if room == 0 {
                        return true;
                    }
                }
                Some(AgentKind::Finished(f)) => {
                    f.stdout_truncated |= r.dropped[0];
                    f.stderr_truncated |= r.dropped[1];
                    relayed.remove(&key);
                }
                _ => {}
            }
            origin
        };
        if let Err(e) = relay
            .send(
                &origin,
                RelayKind::Response,
                hostname,
                &key.0,
                resp.encode_to_vec(),
            )
            .await
        {
            log::warn!(
                "command {}: cannot relay {hostname}'s answer to replica {origin}: {e}",
                key.0
            );
        }
        true
    }

    fn give_up(&self, id: &str, limit: Duration) {
        let Some(entry) = self.lock().remove(id) else {
            return;
        };
        for host in entry.pending.keys() {
            let finished = Finished::without_process(
                Outcome::LostConnection,
                format!(
                    "no result from the agent within {}",
                    monitor::time::format_duration_short(limit)
                ),
            );
            let _ = entry
                .events
                .try_send(Ok(finished_event(host, id, &finished)));
            self.record_result(id, host, finished);
        }
    }

    /// Sends a cancel to every host still running `id` (through their
    /// replica for relayed ones); returns them.
    pub fn cancel(&self, id: &str) -> Vec<String> {
        let (hosts, remote): (Vec<String>, Vec<(String, String)>) = match self.lock().get(id) {
            Some(entry) => (
                entry
                    .pending
                    .iter()
                    .filter(|(_, c)| **c != RELAYED)
                    .map(|(h, _)| h.clone())
                    .collect(),
                entry
                    .pending
                    .iter()
                    .filter(|(_, c)| **c == RELAYED)
                    .filter_map(|(h, _)| Some((h.clone(), entry.remote.get(h)?.clone())))
                    .collect(),
            ),
            None => return Vec::new(),
        };
        let cancel = cancel_request(id);
        let mut sent = Vec::new();
        for host in hosts {
            if let Some((_, sender)) = self.registry.command_sender(&host)
                && sender.try_send(Ok(cancel.clone())).is_ok()
            {
                sent.push(host);
            }
        }
        if let Some(relay) = &self.relay
            && !remote.is_empty()
        {
            sent.extend(remote.iter().map(|(h, _)| h.clone()));
            let relay = Arc::clone(relay);
            let id = id.to_owned();
            tokio::spawn(async move {
                for (host, replica) in remote {
                    if let Err(e) = relay
                        .send(&replica, RelayKind::Cancel, &host, &id, Vec::new())
                        .await
                    {
                        log::warn!(
                            "command {id}: cannot relay the cancel to replica {replica}: {e}"
                        );
                    }
                }
            });
        }
        sent.sort();
        sent
    }

    /// Whether `id` is a command still running somewhere.
    pub fn is_running(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// A response from `hostname`'s agent on connection `conn`: forwarded
    /// to the operator within the output caps, its strings capped.
    pub async fn on_agent_response(&self, hostname: &str, conn: u64, resp: pb::CommandResponse) {
        if self.forward_relayed(hostname, conn, &resp).await {
            return;
        }
        let id = resp.command_id;
        let Some(mut kind) = resp.kind else {
            return;
        };
        match &mut kind {
            AgentKind::Rejected(r) => cap_message(&mut r.reason, MAX_MESSAGE_BYTES),
            AgentKind::Finished(f) => cap_message(&mut f.message, MAX_MESSAGE_BYTES),
            _ => {}
        }
        let (events, finished_all) = {
            let mut inflight = self.lock();
            let Some(entry) = inflight.get_mut(&id) else {
                log::debug!(
                    "{hostname}: response for unknown command {}",
                    monitor::text::Escaped::with_limit(&id, monitor::command::MAX_ID_BYTES)
                );
                return;
            };
            if entry.pending.get(hostname) != Some(&conn) {
                log::debug!(
                    "{hostname}: response for command {} from a stale connection",
                    monitor::text::Escaped::capped(&id)
                );
                return;
            }
            match &mut kind {
                AgentKind::Output(o) => {
                    let stream = usize::from(o.stream == pb::OutputStream::Stderr as i32);
                    let out = entry.output.entry(hostname.to_owned()).or_default();
                    let room =
                        output_room(o.data.len(), out.forwarded[stream], entry.forwarded_total);
                    let dropped = o.data.len() - room;
                    if dropped > 0 {
                        if out.dropped == [0, 0] {
                            log::info!(
                                "command {id}: {hostname} sent more output than the server \
                                 forwards ({} KiB per stream per host, {} MiB per command); \
                                 the rest is dropped and counted",
                                MAX_OUTPUT_PER_STREAM_BYTES / 1024,
                                MAX_OUTPUT_PER_COMMAND_BYTES >> 20
                            );
                        }
                        out.dropped[stream] += dropped as u64;
                        o.data.truncate(room);
                    }
                    out.forwarded[stream] += room as u64;
                    entry.forwarded_total += room as u64;
                    if room == 0 {
                        return;
                    }
                }
                AgentKind::Finished(f) => {
                    if let Some(out) = entry.output.remove(hostname)
                        && out.dropped != [0, 0]
                    {
                        f.stdout_truncated |= out.dropped[0] > 0;
                        f.stderr_truncated |= out.dropped[1] > 0;
                        log::info!(
                            "command {id}: {hostname}: {} bytes of stdout and {} of stderr not \
                             forwarded",
                            out.dropped[0],
                            out.dropped[1]
                        );
                    }
                }
                _ => {}
            }
            let events = entry.events.clone();
            let mut finished_all = None;
            if let AgentKind::Finished(f) = &kind {
                entry.pending.remove(hostname);
                self.record_result(&id, hostname, Finished::from_pb(f.clone()));
                if entry.pending.is_empty() {
                    finished_all = inflight.remove(&id).map(|e| e.done);
                }
            }
            (events, finished_all)
        };
        let event_kind = match kind {
            AgentKind::Accepted(a) => Some(EventKind::Accepted(a)),
            AgentKind::Rejected(r) => Some(EventKind::Rejected(r)),
            AgentKind::Output(o) => Some(EventKind::Output(o)),
            AgentKind::Finished(f) => Some(EventKind::Finished(f)),
            // A hello in the middle of a stream means nothing.
            AgentKind::Hello(_) => None,
        };
        if let Some(k) = event_kind {
            // The operator may be gone; the result is recorded regardless.
            let _ = events
                .send(Ok(pb::ExecEvent {
                    hostname: hostname.to_owned(),
                    command_id: id,
                    kind: Some(k),
                }))
                .await;
        }
        if let Some(done) = finished_all {
            done.notify_one();
        }
    }

    /// `hostname`'s command stream `conn` ended: its pending commands are lost.
    pub fn on_agent_gone(&self, hostname: &str, conn: u64) {
        let mut lost = Vec::new();
        {
            let mut inflight = self.lock();
            let mut finished = Vec::new();
            for (id, entry) in inflight.iter_mut() {
                if entry.pending.get(hostname) == Some(&conn) {
                    entry.pending.remove(hostname);
                    entry.output.remove(hostname);
                    lost.push((id.clone(), entry.events.clone()));
                    if entry.pending.is_empty() {
                        finished.push(id.clone());
                    }
                }
            }
            for id in finished {
                if let Some(e) = inflight.remove(&id) {
                    e.done.notify_one();
                }
            }
        }
        for (id, events) in lost {
            let finished =
                Finished::without_process(Outcome::LostConnection, "lost connection to the agent");
            let _ = events.try_send(Ok(finished_event(hostname, &id, &finished)));
            self.record_result(&id, hostname, finished);
        }
        // Commands other replicas relayed to this stream: they are told.
        let Some(relay) = &self.relay else {
            return;
        };
        let mut told = Vec::new();
        self.relayed().retain(|(id, host), r| {
            let gone = host == hostname && r.conn == conn;
            if gone {
                told.push((id.clone(), r.origin.clone()));
            }
            !gone
        });
        if told.is_empty() {
            return;
        }
        let relay = Arc::clone(relay);
        let hostname = hostname.to_owned();
        tokio::spawn(async move {
            let finished =
                Finished::without_process(Outcome::LostConnection, "lost connection to the agent");
            for (id, origin) in told {
                answer_relayed(&relay, &origin, &hostname, &id, &finished).await;
            }
        });
    }

    /// Records a final result in the background (it never delays a stream).
    fn record_result(&self, id: &str, hostname: &str, finished: Finished) {
        if let Some(t) = &self.telemetry {
            t.command_finished(finished.outcome);
        }
        let record = CommandResultRecord {
            command_id: id.to_owned(),
            hostname: hostname.to_owned(),
            finished,
            finished_unix_ms: monitor::time::now_unix_ms(),
        };
        let store = self.store.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            if let Err(e) = store.record_command_result(record).await {
                log::error!("command {id}: cannot record a result: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_goes_through_up_to_the_stream_cap_then_the_command_cap() {
        let cap = MAX_OUTPUT_PER_STREAM_BYTES;
        // Room for all of it, for part of it, for none.
        assert_eq!(output_room(100, 0, 0), 100);
        assert_eq!(output_room(100, cap - 10, 0), 10);
        assert_eq!(output_room(100, cap, 0), 0);
        assert_eq!(output_room(100, cap + 5, 0), 0);
        // The command's total binds before the host's own cap.
        let total = MAX_OUTPUT_PER_COMMAND_BYTES;
        assert_eq!(output_room(100, 0, total - 30), 30);
        assert_eq!(output_room(100, 0, total), 0);
        assert_eq!(output_room(0, 0, 0), 0);
    }

    #[test]
    fn messages_are_cut_at_a_character_and_say_how_much_went() {
        let check = |input: &str, max: usize, expected: &str| {
            let mut s = input.to_owned();
            cap_message(&mut s, max);
            assert_eq!(s, expected);
        };
        check("short", 10, "short");
        check("exactly10!", 10, "exactly10!");
        check("0123456789abc", 10, "0123456789…(3 more bytes)");
        check("ééé", 5, "éé…(2 more bytes)");
        let mut huge = "x".repeat(10 << 20);
        cap_message(&mut huge, MAX_MESSAGE_BYTES);
        assert!(huge.len() < MAX_MESSAGE_BYTES + 32);
    }

    #[test]
    fn targets_are_hostnames_and_bounded() {
        let ok = vec!["pi-1".to_owned(), "pi.lan".to_owned()];
        assert!(check_targets("hosts", &ok).is_ok());
        let bad = vec!["pi-1".to_owned(), "pi\n2".to_owned()];
        let e = check_targets("hosts", &bad).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "hosts[1]: 'pi\\n2' has characters other than ASCII letters, digits, '.', '-' and '_'"
        );
        let many = vec!["h".to_owned(); MAX_TARGETS + 1];
        let e = check_targets("signed.grant.hosts", &many).unwrap_err();
        assert_eq!(
            e.message(),
            "signed.grant.hosts: 30001 entries, at most 30000"
        );
    }
}
