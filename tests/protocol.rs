//! Protocol-level checks at both ends, each against the real binary:
//! - a scripted fake server drives the real agent's CommandStream (expired,
//!   replayed, unsigned, badly signed and retargeted requests, and a server
//!   clock far from the agent's, absurd ones included): the agent obeys
//!   only what a key it trusts signed, for it, once, in time;
//! - a raw gRPC client feeds the real server invalid, duplicate and
//!   conflicting batches.

// Test support code panics on purpose when the harness cannot proceed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use monitor::pb;
use monitor::pb::collector_server::{Collector, CollectorServer};
use monitor::pb::command_request::Kind as Req;
use monitor::pb::command_response::Kind as Resp;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// A fake server: acknowledges every batch; on the command stream it
/// sends a hello with `clock_shift_ms` added to its clock, then whatever
/// the test pushes through `commands`; it records every response.
#[derive(Clone)]
struct FakeServer {
    clock_shift_ms: i64,
    commands: Arc<Mutex<Option<mpsc::Receiver<pb::CommandRequest>>>>,
    responses: Arc<Mutex<Vec<pb::CommandResponse>>>,
}

#[tonic::async_trait]
impl Collector for FakeServer {
    type ReportStream = ReceiverStream<Result<pb::Ack, Status>>;
    type CommandStreamStream = ReceiverStream<Result<pb::CommandRequest, Status>>;

    async fn report(
        &self,
        request: Request<Streaming<pb::Batch>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok(Some(b)) = inbound.message().await {
                let ack = pb::Ack {
                    boot_id: b.boot_id,
                    seq: b.seq,
                    ..Default::default()
                };
                if tx.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn enrol(
        &self,
        _: Request<pb::EnrolRequest>,
    ) -> Result<Response<pb::IssuedCertificate>, Status> {
        Err(Status::unimplemented("the fake server speaks plain text"))
    }

    async fn renew(
        &self,
        _: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::IssuedCertificate>, Status> {
        Err(Status::unimplemented("the fake server speaks plain text"))
    }

    async fn command_stream(
        &self,
        request: Request<Streaming<pb::CommandResponse>>,
    ) -> Result<Response<Self::CommandStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let hello = pb::CommandRequest {
            kind: Some(Req::Hello(pb::ServerHello {
                server_unix_ms: monitor::time::now_unix_ms().saturating_add(self.clock_shift_ms),
            })),
        };
        tx.send(Ok(hello)).await.ok();
        // One stream at a time holds the test's command channel; a stream
        // that ends (the agent restarted) hands it back for the next.
        let Some(mut commands) = self.commands.lock().unwrap().take() else {
            return Err(Status::unavailable("another command stream is open"));
        };
        let slot = Arc::clone(&self.commands);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    c = commands.recv() => match c {
                        Some(c) => {
                            if tx.send(Ok(c)).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    () = tx.closed() => break,
                }
            }
            *slot.lock().unwrap() = Some(commands);
        });
        let responses = Arc::clone(&self.responses);
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                responses.lock().unwrap().push(r);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn run(id: &str, argv: &[&str], expires_unix_ms: i64) -> pb::CommandRequest {
    pb::CommandRequest {
        kind: Some(Req::Run(pb::RunCommand {
            command_id: id.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout_ms: 5000,
            expires_unix_ms,
            signed: None,
        })),
    }
}

/// A real agent `proto-1` in front of a fake server, trusting one
/// operator key; its state directory outlives it (for restarts).
struct Rig {
    fake: FakeServer,
    commands: mpsc::Sender<pb::CommandRequest>,
    agent: Proc,
    key: monitor::signing::SigningKey,
    dir: TempDir,
    url: String,
}

/// The agent of a rig, started (again) on the rig's state directory.
fn start_agent(dir: &TempDir, url: &str) -> Proc {
    AgentCmd::insecure(url, "proto-1")
        .env("MONITOR_OPERATOR_KEYS", dir.join("operators"))
        .env("MONITOR_STATE_DIR", dir.join("state"))
        .spawn()
}

/// A request for `argv` signed by `key`, for `hosts`, valid from now for
/// `ttl_ms`.
fn signed_run(
    key: &monitor::signing::SigningKey,
    id: &str,
    argv: &[&str],
    hosts: &[&str],
) -> pb::RunCommand {
    use prost::Message;
    let now = monitor::time::now_unix_ms();
    let grant = pb::CommandGrant {
        command_id: id.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        timeout_ms: 5000,
        issued_unix_ms: now,
        expires_unix_ms: now + 60_000,
        hosts: hosts.iter().map(|s| s.to_string()).collect(),
        all_hosts: false,
        operator: "tester".into(),
    }
    .encode_to_vec();
    let signature = key.sign(&grant).unwrap().to_vec();
    pb::RunCommand {
        command_id: id.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        timeout_ms: 5000,
        expires_unix_ms: now + 60_000,
        signed: Some(pb::SignedCommand {
            grant,
            signature,
            public_key: key.public_key().to_vec(),
        }),
    }
}

fn req(run: pb::RunCommand) -> pb::CommandRequest {
    pb::CommandRequest {
        kind: Some(Req::Run(run)),
    }
}

/// Starts the fake server and a real agent against it.
async fn fake_and_agent(clock_shift_ms: i64) -> Rig {
    let (tx, rx) = mpsc::channel(16);
    let fake = FakeServer {
        clock_shift_ms,
        commands: Arc::new(Mutex::new(Some(rx))),
        responses: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = CollectorServer::new(fake.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    // The fake server speaks plain text. The agent trusts one operator.
    let dir = TempDir::new("proto-agent");
    let key = monitor::signing::SigningKey::generate().unwrap();
    let line = monitor::signing::OperatorKey {
        name: "tester".into(),
        key: key.public_key(),
    }
    .line();
    std::fs::write(dir.join("operators"), format!("{line}\n")).unwrap();
    let url = format!("http://{addr}");
    let agent = start_agent(&dir, &url);
    Rig {
        fake,
        commands: tx,
        agent,
        key,
        dir,
        url,
    }
}

/// Waits (without blocking the runtime) for the final response of `id`.
async fn finished(fake: &FakeServer, id: &str) -> (Vec<pb::CommandResponse>, pb::Finished) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got: Vec<pb::CommandResponse> = fake
            .responses
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.command_id == id)
            .cloned()
            .collect();
        if let Some(f) = got.iter().find_map(|r| match &r.kind {
            Some(Resp::Finished(f)) => Some(f.clone()),
            _ => None,
        }) {
            return (got, f);
        }
        assert!(tokio::time::Instant::now() < deadline, "no result for {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rejection(responses: &[pb::CommandResponse]) -> Option<String> {
    responses.iter().find_map(|r| match &r.kind {
        Some(Resp::Rejected(x)) => Some(x.reason.clone()),
        _ => None,
    })
}

/// Sends `run` and waits for its final result.
async fn outcome_of(rig: &Rig, run: pb::RunCommand) -> (Vec<pb::CommandResponse>, pb::Finished) {
    let id = run.command_id.clone();
    rig.commands.send(req(run)).await.unwrap();
    finished(&rig.fake, &id).await
}

/// The refusal reason of `run` (which must be refused).
async fn refusal_of(rig: &Rig, run: pb::RunCommand) -> String {
    let (r, f) = outcome_of(rig, run).await;
    assert_eq!(f.outcome, pb::Outcome::Rejected as i32, "{r:?}");
    rejection(&r).expect("a rejection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_expired_replayed_and_expiryless_requests() {
    let rig = fake_and_agent(0).await;
    let now = monitor::time::now_unix_ms();
    let unsigned = |id: &str, expires| match run(id, &["ping"], expires).kind {
        Some(Req::Run(r)) => r,
        _ => unreachable!(),
    };
    let reason = refusal_of(&rig, unsigned("c-expired", now - 5_000)).await;
    assert!(reason.starts_with("request expired"), "{reason}");
    let reason = refusal_of(&rig, unsigned("c-noexp", 0)).await;
    assert!(reason.starts_with("request expired"), "{reason}");

    let (r, f) = outcome_of(&rig, unsigned("c-ok", now + 30_000)).await;
    assert_eq!(f.outcome, pb::Outcome::Exited as i32);
    assert_eq!(f.exit_code, Some(0));
    let out: Vec<u8> = r
        .iter()
        .filter_map(|x| match &x.kind {
            Some(Resp::Output(o)) => Some(o.data.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(out, b"pong\n");

    // The same id again (a replay): refused, not run twice.
    let before = rig.fake.responses.lock().unwrap().len();
    rig.commands
        .send(req(unsigned("c-ok", now + 30_000)))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all = rig.fake.responses.lock().unwrap().clone();
        if let Some(reason) = rejection(&all[before..]) {
            assert_eq!(reason, "this command id was seen before (a replay?)");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer to the replay"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Signed, but not on the (empty) allowlist.
    let reason = refusal_of(&rig, signed_run(&rig.key, "c-ls", &["ls"], &["proto-1"])).await;
    assert!(reason.contains("'ls' is not on the allowlist"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_what_a_trusted_operator_signed_for_this_host_runs_once() {
    let mut rig = fake_and_agent(0).await;
    // Signed by the trusted key: runs.
    let (_, f) = outcome_of(
        &rig,
        signed_run(&rig.key, "s-1", &["collect-now"], &["proto-1"]),
    )
    .await;
    assert_eq!(
        (f.outcome, f.exit_code),
        (pb::Outcome::Exited as i32, Some(0))
    );
    // Unsigned: only ping and info run so.
    let unsigned = pb::RunCommand {
        signed: None,
        ..signed_run(&rig.key, "s-2", &["collect-now"], &["proto-1"])
    };
    let reason = refusal_of(&rig, unsigned).await;
    assert!(reason.starts_with("not signed by an operator"), "{reason}");
    // A key the agent does not trust (a compromised server's own).
    let stranger = monitor::signing::SigningKey::generate().unwrap();
    let reason = refusal_of(
        &rig,
        signed_run(&stranger, "s-3", &["collect-now"], &["proto-1"]),
    )
    .await;
    assert!(
        reason.starts_with("signed by a key this host does not trust"),
        "{reason}"
    );
    // One byte of the signed grant altered: refused.
    let mut altered = signed_run(&rig.key, "s-4", &["collect-now"], &["proto-1"]);
    if let Some(s) = altered.signed.as_mut() {
        let last = s.grant.len() - 1;
        s.grant[last] ^= 1;
    }
    let reason = refusal_of(&rig, altered).await;
    assert_eq!(reason, "the signature does not match the command");
    // Retargeted: signed for another host.
    let reason = refusal_of(
        &rig,
        signed_run(&rig.key, "s-5", &["collect-now"], &["pi-9"]),
    )
    .await;
    assert_eq!(reason, "the operator's grant is not for this host");
    // The request's argv altered around an intact signature.
    let mut swapped = signed_run(&rig.key, "s-6", &["collect-now"], &["proto-1"]);
    swapped.argv = vec!["set-interval".into(), "0.1".into()];
    let reason = refusal_of(&rig, swapped).await;
    assert_eq!(
        reason,
        "the request's argv differs from what the operator signed"
    );
    // Replayed after the agent restarted: refused (the ids are kept on
    // disk until their grant expires).
    let replay = signed_run(&rig.key, "s-7", &["collect-now"], &["proto-1"]);
    let (_, f) = outcome_of(&rig, replay.clone()).await;
    assert_eq!(f.outcome, pb::Outcome::Exited as i32);
    rig.agent.signal("TERM");
    rig.agent.wait_exit(Duration::from_secs(15));
    let before = rig.fake.responses.lock().unwrap().len();
    rig.agent = start_agent(&rig.dir, &rig.url);
    // The restarted agent opens a new command stream on the fake; commands
    // pushed before it connects wait in the channel.
    rig.commands.send(req(replay)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let all = rig.fake.responses.lock().unwrap().clone();
        if let Some(reason) = rejection(&all[before..]) {
            assert_eq!(reason, "this command id was seen before (a replay?)");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer to the replay: {}",
            rig.agent.stderr.dump()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_judged_on_the_agents_own_clock_whatever_the_server_says() {
    // The server's hello says its clock is an hour ahead: a request valid
    // for 30 s on the agent's own clock runs; one that expired on the
    // agent's clock but would be valid on the server's is refused (the
    // server is not trusted with the time).
    for shift in [3_600_000, i64::MIN, i64::MAX] {
        let rig = fake_and_agent(shift).await;
        let now = monitor::time::now_unix_ms();
        let unsigned = |id: &str, expires| match run(id, &["ping"], expires).kind {
            Some(Req::Run(r)) => r,
            _ => unreachable!(),
        };
        let (_, f) = outcome_of(&rig, unsigned("t-ok", now + 30_000)).await;
        assert_eq!(f.outcome, pb::Outcome::Exited as i32, "shift {shift}");
        let reason = refusal_of(&rig, unsigned("t-late", now - 60_000)).await;
        assert!(
            reason.starts_with("request expired"),
            "shift {shift}: {reason}"
        );
        // The agent lives on: no overflow, no panic.
        let mut agent = rig.agent;
        assert!(agent.is_running(), "{}", agent.stderr.dump());
    }
}

fn batch(seq: u64, metric: &str, value: f64) -> pb::Batch {
    let now = monitor::time::now_unix_ms();
    one_sample(("raw-1", 42, seq), now, metric, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_rejects_invalid_batches_and_stores_duplicates_once() {
    let dir = TempDir::new("raw");
    let server = Server::start(&dir.join("m.db"));
    let sends = [
        batch(1, "cpu_percent", 10.0),
        batch(2, "cpu_percent", f64::NAN),
        batch(3, "bogus_metric", 1.0),
        batch(4, "mem_percent", 250.0),
        // Batch 1 again (a re-send after a lost ack): acknowledged, not
        // stored twice.
        batch(1, "cpu_percent", 10.0),
        batch(5, "net_in_kbps", 3.5),
    ];
    let (tx, got) = report(&server, sends.to_vec()).await;
    assert_eq!(got[0], (1, 0, String::new()));
    let invalid = pb::AckCode::Invalid as i32;
    assert_eq!(
        got[1],
        (
            2,
            invalid,
            "samples[0].value: cpu_percent must be a finite number".to_owned()
        )
    );
    assert_eq!((got[2].0, got[2].1), (3, invalid));
    assert!(
        got[2]
            .2
            .starts_with("samples[0].metric: unknown metric 'bogus_metric' (known: "),
        "{got:?}"
    );
    assert_eq!(
        got[3],
        (
            4,
            invalid,
            "samples[0].value: mem_percent = 250 is out of range (must be from 0 to 100)"
                .to_owned()
        )
    );
    assert_eq!((got[4].0, got[4].1), (1, 0));
    assert_eq!((got[5].0, got[5].1), (5, 0));
    drop(tx);

    let samples = tokio::task::spawn_blocking(move || {
        let s = server.samples("raw-1", "10m");
        let log = server.proc.stderr.dump();
        (s, log)
    })
    .await
    .unwrap();
    let (samples, log) = samples;
    let metrics: Vec<(&str, f64)> = samples
        .iter()
        .map(|s| (s.metric.as_str(), s.value))
        .collect();
    assert_eq!(metrics, vec![("cpu_percent", 10.0), ("net_in_kbps", 3.5)]);
    assert!(log.contains("rejected batch 2"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refuses_a_batch_that_contradicts_a_stored_sample() {
    let dir = TempDir::new("conflict");
    let server = Server::start(&dir.join("m.db"));
    // Three batches of one run with the same (time, metric): 10, then 20
    // (a contradiction), then 10 again (the same measurement).
    let t = monitor::time::now_unix_ms();
    let cpu = |seq, value| one_sample(("raw-c", 7, seq), t, "cpu_percent", value);
    let (tx, got) = report(&server, vec![cpu(1, 10.0), cpu(2, 20.0), cpu(3, 10.0)]).await;
    let ok = pb::AckCode::Ok as i32;
    assert_eq!(got[0], (1, ok, String::new()));
    assert_eq!(
        got[1],
        (
            2,
            pb::AckCode::Conflict as i32,
            format!(
                "sample cpu_percent at {}: stored value 10, sent value 20",
                monitor::time::Rfc3339(t)
            )
        )
    );
    assert_eq!(got[2], (3, ok, String::new()));
    drop(tx);

    let (samples, log) = tokio::task::spawn_blocking(move || {
        let s = server.samples("raw-c", "10m");
        let log = server.proc.stderr.dump();
        (s, log)
    })
    .await
    .unwrap();
    let values: Vec<(&str, &str, f64)> = samples
        .iter()
        .map(|s| (s.time.as_str(), s.metric.as_str(), s.value))
        .collect();
    let time = monitor::time::Rfc3339(t).to_string();
    assert_eq!(values, vec![(time.as_str(), "cpu_percent", 10.0)]);
    assert!(log.contains("raw-c: refused batch 2"), "{log}");
}

/// The rogue-server findings of the hostile-input review, replayed against
/// the real agent: a server that floods it with `collect-now` (which it
/// cannot sign: only what an operator signed runs, at a bounded rate) and
/// with large refused requests gets a bounded amount of work and of log
/// out of it. Prints the agent's CPU and log growth for BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_server_flooding_commands_gets_bounded_work_and_log() {
    use monitor_agent::session::gate::{BURST, REFILL};
    const SIGNED: usize = 3_000;
    const UNSIGNED: usize = 3_000;
    const LARGE: usize = 300;
    let rig = fake_and_agent(0).await;
    // The agent is up and answering before the flood starts.
    let (_, f) = outcome_of(&rig, signed_run(&rig.key, "warm", &["ping"], &["proto-1"])).await;
    assert_eq!(f.outcome, pb::Outcome::Exited as i32);
    let lines_before = rig.agent.stderr.lines().len();
    let cpu_before = cpu_seconds(rig.agent.pid());
    let started = std::time::Instant::now();

    // Signed collect-now (a replayed capture of one operator's session,
    // each id fresh): the gate's rate decides how many run. Unsigned ones
    // with long ids, and ~56 KiB requests (just under the agent's 64 KiB
    // message limit), are refused outright.
    let mut ids = Vec::with_capacity(SIGNED + UNSIGNED + LARGE);
    let big_arg = "x".repeat(1000);
    for i in 0..SIGNED.max(UNSIGNED) {
        if i < SIGNED {
            let id = format!("flood-signed-{i}");
            rig.commands
                .send(req(signed_run(
                    &rig.key,
                    &id,
                    &["collect-now"],
                    &["proto-1"],
                )))
                .await
                .unwrap();
            ids.push(id);
        }
        if i < UNSIGNED {
            let id = format!("flood-unsigned-{i}-{}", "\u{1b}]0;owned\u{7}".repeat(8));
            rig.commands
                .send(run(
                    &id,
                    &["collect-now"],
                    monitor::time::now_unix_ms() + 60_000,
                ))
                .await
                .unwrap();
            ids.push(id);
        }
        if i < LARGE {
            let id = format!("flood-large-{i}");
            let argv: Vec<&str> = std::iter::once("cat")
                .chain(std::iter::repeat_n(big_arg.as_str(), 56))
                .collect();
            rig.commands
                .send(run(&id, &argv, monitor::time::now_unix_ms() + 60_000))
                .await
                .unwrap();
            ids.push(id);
        }
    }

    // Every request gets its final answer: refused or run, none left
    // hanging.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let finals = loop {
        let finals: std::collections::HashMap<String, pb::Finished> = rig
            .fake
            .responses
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| match &r.kind {
                Some(Resp::Finished(f)) if r.command_id.starts_with("flood-") => {
                    Some((r.command_id.clone(), f.clone()))
                }
                _ => None,
            })
            .collect();
        if finals.len() == ids.len() {
            break finals;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} requests answered: {}",
            finals.len(),
            ids.len(),
            rig.agent.stderr.dump()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elapsed = started.elapsed();
    let cpu = cpu_seconds(rig.agent.pid()) - cpu_before;
    let ran = finals
        .iter()
        .filter(|(_, f)| f.outcome == pb::Outcome::Exited as i32)
        .count();
    let ran_unsigned = finals
        .iter()
        .filter(|(id, f)| {
            !id.starts_with("flood-signed-") && f.outcome != pb::Outcome::Rejected as i32
        })
        .count();
    assert_eq!(
        ran_unsigned, 0,
        "an unsigned or oversized request was not refused"
    );
    // The burst, then one per REFILL for as long as the flood lasted.
    let allowed =
        BURST as usize + (elapsed.as_secs_f64() / REFILL.as_secs_f64()).ceil() as usize + 1;
    assert!(
        (BURST as usize..=allowed).contains(&ran),
        "{ran} collect-now ran in {elapsed:?}: the rate allows {BURST} at once and one per {REFILL:?}"
    );
    let refused_rate = finals
        .values()
        .filter(|f| f.message.starts_with("too many collect-now"))
        .count();
    assert!(
        refused_rate >= SIGNED - allowed,
        "{refused_rate} refused for the rate"
    );

    // The log: the first refusal of the minute in full, escaped; the rest
    // counted. Nothing of the 56 KiB requests reaches it.
    // The harness runs agents at debug level; what the default level (info)
    // would write is what fills an SD card.
    let new_lines: Vec<String> = rig.agent.stderr.lines()[lines_before..]
        .iter()
        .filter(|l| !l.starts_with("DEBUG") && !l.starts_with("TRACE"))
        .cloned()
        .collect();
    let grown: usize = new_lines.iter().map(|l| l.len() + 1).sum();
    assert!(
        new_lines.len() <= 4 && grown <= 4096,
        "{} log lines ({grown} bytes) for {} hostile requests:\n{}",
        new_lines.len(),
        ids.len(),
        new_lines.join("\n")
    );
    assert!(
        new_lines
            .iter()
            .all(|l| !l.contains('\u{1b}') && !l.contains(&big_arg)),
        "raw escape or a whole argument in the log: {new_lines:?}"
    );
    println!(
        "hostile server: {} requests in {:.1} s; {ran} collect-now ran (rate {BURST} then 1/s), \
         the rest refused; agent CPU {:.2} s ({:.0} us per request); log +{grown} bytes in {} lines at info level",
        ids.len(),
        elapsed.as_secs_f64(),
        cpu,
        cpu * 1e6 / ids.len() as f64,
        new_lines.len()
    );
}
