//! The agent's side of `CommandStream`: receive commands, decide, run,
//! stream the results back.
//!
//! Every request is checked in this order, and a refusal names the reason:
//! a usable id that was not seen before (a replay is refused), an expiry
//! still in the future by the server's clock (the agent learns the offset
//! from the server's hello, so a Pi whose clock is wrong still judges
//! expiries right; a server whose clock reads before 2000 was never set,
//! and nothing it sends runs until it is), then a built-in (`ping`,
//! `info`, `set-interval`, `collect-now`: no process) or the command
//! policy and a free slot.
//!
//! Processes run in their own `spawn_local` task; their output is forwarded
//! as it comes. If the stream goes away, the tasks' event channels close and
//! the runner kills their process groups: nobody is left to read a result.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monitor::command::{Finished, MAX_ID_BYTES, Outcome as Ending};
use monitor::pb;
use monitor::pb::collector_client::CollectorClient;
use monitor::pb::command_request::Kind as RequestKind;
use monitor::pb::command_response::Kind as ResponseKind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::SessionError;
use crate::commands::{self, Canceller, ExecEvent, Limits, Outcome, Policy, Slots};
use crate::state::Shared;

/// Command ids remembered to refuse replays (each until its expiry).
const MAX_SEEN_IDS: usize = 4096;
/// Responses queued for the server before the senders wait.
const RESPONSE_QUEUE: usize = 64;

/// What the command session needs beyond the shared state.
pub struct CommandContext {
    pub policy: Policy,
    pub limits: Limits,
    pub slots: Slots,
    /// Ids already seen, with their expiry (server clock), to refuse replays.
    seen: RefCell<HashMap<String, i64>>,
    /// Running commands by id.
    running: RefCell<HashMap<String, Canceller>>,
}

impl CommandContext {
    pub fn new(policy: Policy, limits: Limits) -> CommandContext {
        CommandContext {
            policy,
            slots: Slots::new(limits.max_running),
            limits,
            seen: RefCell::new(HashMap::new()),
            running: RefCell::new(HashMap::new()),
        }
    }

    /// Records `id` as seen; false if it was seen before (a replay).
    fn first_sighting(&self, id: &str, expires_unix_ms: i64, server_now_ms: i64) -> bool {
        let mut seen = self.seen.borrow_mut();
        if seen.contains_key(id) {
            return false;
        }
        if seen.len() >= MAX_SEEN_IDS {
            // Expired ids can no longer be replayed (the expiry check refuses
            // them), so they need not be remembered.
            seen.retain(|_, exp| *exp > server_now_ms);
            if seen.len() >= MAX_SEEN_IDS {
                // Still full of live ids: forget the one expiring first.
                if let Some(oldest) = seen
                    .iter()
                    .min_by_key(|(_, exp)| **exp)
                    .map(|(k, _)| k.clone())
                {
                    seen.remove(&oldest);
                }
            }
        }
        seen.insert(id.to_owned(), expires_unix_ms);
        true
    }
}

fn response(id: &str, kind: ResponseKind) -> pb::CommandResponse {
    pb::CommandResponse {
        command_id: id.to_owned(),
        kind: Some(kind),
    }
}

fn rejected(id: &str, reason: String) -> [pb::CommandResponse; 2] {
    [
        response(
            id,
            ResponseKind::Rejected(pb::Rejected {
                reason: reason.clone(),
            }),
        ),
        response(
            id,
            ResponseKind::Finished(Finished::without_process(Ending::Rejected, reason).to_pb()),
        ),
    ]
}

/// Runs the command stream until the server closes it or it fails.
pub async fn run(
    mut client: CollectorClient<Channel>,
    shared: &Shared,
    ctx: &Rc<CommandContext>,
    healthy: &std::cell::Cell<bool>,
) -> Result<(), SessionError> {
    let (tx, rx) = mpsc::channel::<pb::CommandResponse>(RESPONSE_QUEUE);
    let hello = pb::AgentHello {
        agent_id: shared.identity.agent_id.clone(),
        hostname: shared.identity.hostname.clone(),
        agent_version: shared.identity.agent_version.clone(),
        boot_id: shared.identity.boot_id,
        interval_ms: shared.interval.borrow().as_millis() as u64,
    };
    // Queued before the call so it is the first message on the stream.
    let _ = tx.try_send(response("", ResponseKind::Hello(hello)));
    let mut inbound = client
        .command_stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    // Server clock minus ours, from the server's hello.
    let mut offset_ms: i64 = 0;
    // What the hello said when it was no usable clock (before 2000): no
    // expiry can be judged by it.
    let mut unset_clock_ms: Option<i64> = None;
    loop {
        let Some(request) = inbound.message().await? else {
            return Err(SessionError::Closed("command"));
        };
        match request.kind {
            Some(RequestKind::Hello(h)) => {
                offset_ms = h
                    .server_unix_ms
                    .saturating_sub(monitor::time::now_unix_ms());
                healthy.set(true);
                unset_clock_ms = (h.server_unix_ms < monitor::wire::MIN_SAMPLE_UNIX_MS)
                    .then_some(h.server_unix_ms);
                if let Some(ms) = unset_clock_ms {
                    log::warn!(
                        "the server's clock reads {} (before 2000: never set); its commands are \
                         refused until it is set",
                        monitor::time::Rfc3339(ms)
                    );
                    continue;
                }
                if offset_ms.saturating_abs() > 30_000 {
                    log::warn!(
                        "this host's clock is {:.1}s {} the server's",
                        offset_ms.saturating_abs() as f64 / 1000.0,
                        if offset_ms > 0 { "behind" } else { "ahead of" }
                    );
                }
            }
            Some(RequestKind::Run(run)) => {
                let server_now = match unset_clock_ms {
                    None => Ok(monitor::time::now_unix_ms().saturating_add(offset_ms)),
                    Some(ms) => Err(ms),
                };
                on_run(run, server_now, shared, ctx, &tx).await;
            }
            Some(RequestKind::Cancel(c)) => {
                let handle = ctx.running.borrow_mut().remove(&c.command_id);
                match handle {
                    Some(h) => {
                        log::info!("command {}: cancel requested", c.command_id);
                        h.cancel();
                    }
                    None => log::debug!("cancel for unknown command {}", c.command_id),
                }
            }
            None => log::debug!("empty command request ignored"),
        }
    }
}

async fn send_all(
    tx: &mpsc::Sender<pb::CommandResponse>,
    msgs: impl IntoIterator<Item = pb::CommandResponse>,
) {
    for m in msgs {
        // A failed send means the stream is gone; the session is ending.
        if tx.send(m).await.is_err() {
            return;
        }
    }
}

/// `server_now` is the server's clock now, or `Err` with what its hello
/// said when that was no usable clock.
async fn on_run(
    run: pb::RunCommand,
    server_now: Result<i64, i64>,
    shared: &Shared,
    ctx: &Rc<CommandContext>,
    tx: &mpsc::Sender<pb::CommandResponse>,
) {
    let id = run.command_id;
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        log::warn!("refused a command with an unusable id");
        send_all(tx, rejected(&id, "unusable command id".into())).await;
        return;
    }
    if run.expires_unix_ms <= 0 {
        send_all(tx, rejected(&id, "the request has no expiry".into())).await;
        return;
    }
    let server_now_ms = match server_now {
        Ok(ms) => ms,
        Err(unset) => {
            log::warn!("command {id}: refused, the server's clock is not set");
            let reason = format!(
                "the server's clock is not set (it reads {}): the request's expiry cannot be judged",
                monitor::time::Rfc3339(unset)
            );
            send_all(tx, rejected(&id, reason)).await;
            return;
        }
    };
    if run.expires_unix_ms <= server_now_ms {
        let late = Duration::from_millis(
            server_now_ms
                .saturating_sub(run.expires_unix_ms)
                .unsigned_abs(),
        );
        log::warn!("command {id}: refused, expired {}ms ago", late.as_millis());
        send_all(
            tx,
            rejected(
                &id,
                format!(
                    "request expired {} ago",
                    monitor::time::format_duration_short(late)
                ),
            ),
        )
        .await;
        return;
    }
    if !ctx.first_sighting(&id, run.expires_unix_ms, server_now_ms) {
        log::warn!("command {id}: refused, id seen before (replay?)");
        send_all(tx, rejected(&id, "duplicate command id".into())).await;
        return;
    }
    let Some(name) = run.argv.first() else {
        send_all(tx, rejected(&id, "empty command".into())).await;
        return;
    };
    if let Some(result) = builtin(name, &run.argv[1..], shared) {
        log::info!("command {id}: built-in {:?}", run.argv);
        let started = Instant::now();
        let mut msgs = vec![response(&id, ResponseKind::Accepted(pb::Accepted {}))];
        let (code, out, message) = match result {
            Ok(out) => (0, out, String::new()),
            Err(msg) => (2, String::new(), msg),
        };
        let stderr = if message.is_empty() {
            String::new()
        } else {
            format!("{message}\n")
        };
        for (stream, text) in [
            (pb::OutputStream::Stdout, &out),
            (pb::OutputStream::Stderr, &stderr),
        ] {
            if !text.is_empty() {
                msgs.push(response(
                    &id,
                    ResponseKind::Output(pb::Output {
                        stream: stream as i32,
                        data: text.clone().into_bytes(),
                    }),
                ));
            }
        }
        let finished = Finished {
            exit_code: Some(code),
            duration_ms: started.elapsed().as_millis() as u64,
            stdout_bytes: out.len() as u64,
            stderr_bytes: stderr.len() as u64,
            ..Finished::without_process(Ending::Exited, message)
        };
        msgs.push(response(&id, ResponseKind::Finished(finished.to_pb())));
        send_all(tx, msgs).await;
        return;
    }
    let argv = match ctx.policy.resolve(&run.argv) {
        Ok(argv) => argv,
        Err(refusal) => {
            log::warn!("command {id}: refused {:?}: {refusal}", run.argv);
            send_all(tx, rejected(&id, refusal.to_string())).await;
            return;
        }
    };
    let slot = match ctx.slots.try_acquire() {
        Ok(slot) => slot,
        Err(refusal) => {
            log::warn!("command {id}: refused {:?}: {refusal}", run.argv);
            send_all(tx, rejected(&id, refusal.to_string())).await;
            return;
        }
    };
    let timeout = ctx
        .limits
        .timeout_for(Some(Duration::from_millis(u64::from(run.timeout_ms))));
    let (cancel_handle, cancel) = commands::cancel_pair();
    ctx.running.borrow_mut().insert(id.clone(), cancel_handle);
    log::info!(
        "command {id}: running {argv:?} (timeout {}s)",
        timeout.as_secs_f64()
    );
    send_all(tx, [response(&id, ResponseKind::Accepted(pb::Accepted {}))]).await;
    tokio::task::spawn_local(forward(
        Rc::clone(ctx),
        id,
        argv,
        timeout,
        cancel,
        tx.clone(),
        slot,
    ));
}

/// Runs one process and forwards its events as responses.
async fn forward(
    ctx: Rc<CommandContext>,
    id: String,
    argv: Vec<String>,
    timeout: Duration,
    cancel: commands::CancelSignal,
    tx: mpsc::Sender<pb::CommandResponse>,
    slot: commands::Slot,
) {
    let (events_tx, mut events_rx) = mpsc::channel::<ExecEvent>(16);
    let run = commands::run(argv, Some(timeout), &ctx.limits, cancel, events_tx);
    tokio::pin!(run);
    let finished = loop {
        tokio::select! {
            finished = &mut run => break finished,
            Some(ev) = events_rx.recv() => {
                if tx.send(output_response(&id, ev)).await.is_err() {
                    // Stream gone: dropping events_rx makes the runner kill the group.
                    events_rx.close();
                }
            }
        }
    };
    // Output still queued after the process ended.
    while let Ok(ev) = events_rx.try_recv() {
        let _ = tx.send(output_response(&id, ev)).await;
    }
    drop(slot);
    ctx.running.borrow_mut().remove(&id);
    let (outcome, exit_code, signal, message) = match &finished.outcome {
        Outcome::Exited { code } => (Ending::Exited, Some(*code), None, String::new()),
        Outcome::Signaled { signal } => (Ending::Exited, None, Some(*signal), String::new()),
        Outcome::TimedOut => (
            Ending::TimedOut,
            None,
            None,
            format!(
                "timed out after {}",
                monitor::time::format_duration_short(timeout)
            ),
        ),
        Outcome::Cancelled => (Ending::Cancelled, None, None, "cancelled".to_owned()),
        // Only reached when the stream is gone: this result goes nowhere.
        Outcome::Abandoned => (
            Ending::LostConnection,
            None,
            None,
            "the server went away".to_owned(),
        ),
        Outcome::FailedToStart(e) => (
            Ending::FailedToStart,
            None,
            None,
            format!("{e}: {}", e.source),
        ),
        Outcome::StatusLost(e) => (Ending::Exited, None, None, format!("exit status lost: {e}")),
    };
    log::info!("command {id}: {outcome} exit {exit_code:?} signal {signal:?}");
    let finished = Finished {
        outcome,
        exit_code,
        signal,
        stdout_truncated: finished.stdout_truncated,
        stderr_truncated: finished.stderr_truncated,
        duration_ms: finished.duration.as_millis() as u64,
        stdout_bytes: finished.stdout_bytes,
        stderr_bytes: finished.stderr_bytes,
        message,
    };
    let _ = tx
        .send(response(&id, ResponseKind::Finished(finished.to_pb())))
        .await;
}

fn output_response(id: &str, ev: ExecEvent) -> pb::CommandResponse {
    let (stream, data) = match ev {
        ExecEvent::Stdout(d) => (pb::OutputStream::Stdout, d),
        ExecEvent::Stderr(d) => (pb::OutputStream::Stderr, d),
    };
    response(
        id,
        ResponseKind::Output(pb::Output {
            stream: stream as i32,
            data,
        }),
    )
}

/// Built-in commands: `Some(Ok(stdout))`, `Some(Err(message))` for a bad
/// argument, `None` when `name` is not a built-in.
fn builtin(name: &str, args: &[String], shared: &Shared) -> Option<Result<String, String>> {
    let no_args = |out: String| {
        if args.is_empty() {
            Ok(out)
        } else {
            Err(format!("{name} takes no arguments"))
        }
    };
    Some(match name {
        "ping" => no_args("pong\n".to_owned()),
        "info" => no_args(info(shared)),
        "collect-now" => {
            if args.is_empty() {
                shared.collect_now.notify_one();
                Ok("collecting now\n".to_owned())
            } else {
                Err("collect-now takes no arguments".to_owned())
            }
        }
        "set-interval" => set_interval(args, shared),
        _ => return None,
    })
}

fn set_interval(args: &[String], shared: &Shared) -> Result<String, String> {
    let [arg] = args else {
        return Err("usage: set-interval SECONDS".to_owned());
    };
    match monitor::time::parse_duration(arg) {
        Ok(d) if d >= crate::config::MIN_INTERVAL && d <= crate::config::MAX_INTERVAL => {
            let old = shared.interval.send_replace(d);
            Ok(format!(
                "interval {}s -> {}s (from the next tick)\n",
                old.as_secs_f64(),
                d.as_secs_f64()
            ))
        }
        _ => Err(format!(
            "set-interval: expected seconds from 0.1 to 86400, got '{arg}'"
        )),
    }
}

fn info(shared: &Shared) -> String {
    let uname = nix::sys::utsname::uname().ok();
    let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
        uname
            .as_ref()
            .map(|u| f(u).to_string_lossy().into_owned())
            .unwrap_or_else(|| "unknown".to_owned())
    };
    let buffer = shared.buffer.borrow();
    format!(
        "agent_version: {}\nhostname: {}\nagent_id: {}\nkernel: {} {}\narch: {}\nagent_uptime_s: {}\ninterval_s: {}\nbuffered_batches: {}\ndropped_batches_total: {}\nparse_errors_total: {}\n",
        shared.identity.agent_version,
        shared.identity.hostname,
        shared.identity.agent_id,
        field(|u| u.sysname()),
        field(|u| u.release()),
        field(|u| u.machine()),
        shared.started.elapsed().as_secs(),
        shared.interval.borrow().as_secs_f64(),
        buffer.len(),
        buffer.dropped_total(),
        shared.parse_errors_total.get(),
    )
}
