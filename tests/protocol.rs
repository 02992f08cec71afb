//! Protocol-level checks at both ends, each against the real binary:
//! - a scripted fake server drives the real agent's CommandStream (expired,
//!   replayed and expiry-less requests, and a server clock far from the
//!   agent's);
//! - a raw gRPC client feeds the real server invalid, duplicate and
//!   conflicting batches.

// Test support code panics on purpose when the harness cannot proceed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use monitor::pb;
use monitor::pb::collector_client::CollectorClient;
use monitor::pb::collector_server::{Collector, CollectorServer};
use monitor::pb::command_request::Kind as Req;
use monitor::pb::command_response::Kind as Resp;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// What the fake server's hello says its clock reads.
#[derive(Clone, Copy, Debug)]
enum HelloClock {
    /// Its real clock shifted by this many milliseconds.
    Shifted(i64),
    /// This value, whatever the time.
    Fixed(i64),
}

/// A fake server: acknowledges every batch; on the command stream it
/// sends a hello with the clock `clock` says, then whatever the test
/// pushes through `commands`; it records every response.
#[derive(Clone)]
struct FakeServer {
    clock: HelloClock,
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
                server_unix_ms: match self.clock {
                    HelloClock::Shifted(ms) => monitor::time::now_unix_ms() + ms,
                    HelloClock::Fixed(ms) => ms,
                },
            })),
        };
        tx.send(Ok(hello)).await.ok();
        let mut commands = self
            .commands
            .lock()
            .unwrap()
            .take()
            .expect("one command stream");
        tokio::spawn(async move {
            while let Some(c) = commands.recv().await {
                if tx.send(Ok(c)).await.is_err() {
                    break;
                }
            }
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
        })),
    }
}

/// Starts the fake server and a real agent against it.
async fn fake_and_agent(clock: HelloClock) -> (FakeServer, mpsc::Sender<pb::CommandRequest>, Proc) {
    let (tx, rx) = mpsc::channel(16);
    let fake = FakeServer {
        clock,
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
    // The fake server speaks plain text.
    let agent = AgentCmd::insecure(&format!("http://{addr}"), "proto-1").spawn();
    (fake, tx, agent)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_expired_replayed_and_expiryless_requests() {
    let (fake, commands, _agent) = fake_and_agent(HelloClock::Shifted(0)).await;
    let now = monitor::time::now_unix_ms();

    commands
        .send(run("c-expired", &["ping"], now - 5_000))
        .await
        .unwrap();
    let (r, f) = finished(&fake, "c-expired").await;
    assert_eq!(f.outcome, pb::Outcome::Rejected as i32);
    assert!(
        rejection(&r).is_some_and(|m| m.starts_with("request expired")),
        "{r:?}"
    );

    commands.send(run("c-noexp", &["ping"], 0)).await.unwrap();
    let (r, _) = finished(&fake, "c-noexp").await;
    assert_eq!(rejection(&r).as_deref(), Some("the request has no expiry"));

    commands
        .send(run("c-ok", &["ping"], now + 30_000))
        .await
        .unwrap();
    let (r, f) = finished(&fake, "c-ok").await;
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
    let before = fake.responses.lock().unwrap().len();
    commands
        .send(run("c-ok", &["ping"], now + 30_000))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all = fake.responses.lock().unwrap().clone();
        if let Some(reason) = rejection(&all[before..]) {
            assert_eq!(reason, "duplicate command id");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer to the replay"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Not on the (empty) allowlist.
    commands
        .send(run("c-ls", &["ls"], now + 30_000))
        .await
        .unwrap();
    let (r, _) = finished(&fake, "c-ls").await;
    assert!(
        rejection(&r).is_some_and(|m| m.contains("'ls' is not on the allowlist")),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_judged_on_the_servers_clock_not_the_agents() {
    // The server's clock is an hour ahead of the agent's (a Pi that booted
    // without a real-time clock): a request valid for 30 s on the server's
    // clock must run, one that expired on it must not.
    let shift = 3_600_000;
    let (fake, commands, _agent) = fake_and_agent(HelloClock::Shifted(shift)).await;
    let server_now = monitor::time::now_unix_ms() + shift;
    commands
        .send(run("s-ok", &["ping"], server_now + 30_000))
        .await
        .unwrap();
    let (_, f) = finished(&fake, "s-ok").await;
    assert_eq!(f.outcome, pb::Outcome::Exited as i32);
    // Valid by the agent's own clock, expired by the server's.
    commands
        .send(run("s-late", &["ping"], server_now - 60_000))
        .await
        .unwrap();
    let (_, f) = finished(&fake, "s-late").await;
    assert_eq!(f.outcome, pb::Outcome::Rejected as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_server_clocks_neither_crash_the_agent_nor_revive_expired_commands() {
    // A server whose hello says its clock is at either end of i64: the
    // agent must not overflow (a debug build panics on it), and a command
    // that expired by the real clock must still be refused.
    for claimed in [i64::MIN, i64::MAX] {
        let (fake, commands, mut agent) = fake_and_agent(HelloClock::Fixed(claimed)).await;
        let now = monitor::time::now_unix_ms();
        commands
            .send(run("past", &["ping"], now - 5_000))
            .await
            .unwrap();
        let (r, f) = finished(&fake, "past").await;
        assert_eq!(
            f.outcome,
            pb::Outcome::Rejected as i32,
            "server clock {claimed}: a command expired 5 s ago ran: {r:?}"
        );
        // Before 2000 the clock was never set: nothing is judged by it.
        // Far ahead, everything has expired by it.
        let reason = rejection(&r).unwrap_or_default();
        let expected = if claimed < 0 {
            "the server's clock is not set (it reads "
        } else {
            "request expired "
        };
        assert!(reason.starts_with(expected), "{claimed}: {reason}");
        // The far ends of the expiry field: one final result each.
        for (id, expires) in [("first-ms", 1), ("last-ms", i64::MAX)] {
            commands.send(run(id, &["ping"], expires)).await.unwrap();
            finished(&fake, id).await;
        }
        assert!(
            agent.is_running(),
            "server clock {claimed}: the agent stopped:\n{}",
            agent.stderr.dump()
        );
        assert!(
            !agent.stderr.contains("panicked"),
            "{}",
            agent.stderr.dump()
        );
    }
}

/// A batch of one sample, of host `host` in run `boot_id`, sent at the
/// sample's time.
fn one_sample(
    (host, boot_id, seq): (&str, u64, u64),
    time_unix_ms: i64,
    metric: &str,
    value: f64,
) -> pb::Batch {
    pb::Batch {
        agent_id: host.into(),
        boot_id,
        seq,
        samples: vec![pb::Sample {
            time_unix_ms,
            hostname: host.into(),
            metric: metric.into(),
            value,
        }],
        sent_unix_ms: time_unix_ms,
        agent_version: "test".into(),
        hostname: host.into(),
        ..Default::default()
    }
}

fn batch(seq: u64, metric: &str, value: f64) -> pb::Batch {
    let now = monitor::time::now_unix_ms();
    one_sample(("raw-1", 42, seq), now, metric, value)
}

/// Sends `batches` on one Report stream to `server` and returns the
/// stream's sender (the stream stays open while it lives) and the first
/// `batches.len()` acks as (seq, code, message).
async fn report(
    server: &Server,
    batches: Vec<pb::Batch>,
) -> (mpsc::Sender<pb::Batch>, Vec<(u64, i32, String)>) {
    // A certificate for the host the batches name: the server takes the
    // agent's identity from it.
    let channel = server.channel(&batches[0].hostname).await;
    let mut client = CollectorClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let mut acks = client
        .report(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let n = batches.len();
    for b in batches {
        tx.send(b).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..n {
        let ack = tokio::time::timeout(Duration::from_secs(10), acks.message())
            .await
            .expect("ack in time")
            .expect("stream ok")
            .expect("an ack");
        got.push((ack.seq, ack.code, ack.message));
    }
    (tx, got)
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
