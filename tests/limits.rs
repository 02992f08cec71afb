//! No peer can exhaust the server: the floods of the hostile-input review,
//! replayed on loopback against the real binaries, each with the figures
//! that matter while it runs (the server's RSS and CPU, how long
//! `monitorctl hosts` takes) and what the others still get.
//!
//! - idle sockets that never send a hello, more than the listener's
//!   pending cap from two source addresses;
//! - hellos with oversized or forged fields, and a fleet of 10,000 hosts
//!   listed page by page;
//! - one host flooding batches while a real agent reports beside it, and a
//!   real agent catching up that meets the limit;
//! - a forged seq jump meant to poison the de-duplication state, and
//!   metric values beyond any physical bound;
//! - a fake agent answering a command with 10 MiB of output.
//!
//! Figures are printed (run with `--nocapture` to see them; BENCHMARKS.md
//! has them from a release build). Waits poll with deadlines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use monitor::pb;
use monitor::pb::admin_client::AdminClient;
use monitor::pb::collector_client::CollectorClient;
use monitor::pb::command_request::Kind as Req;
use monitor::pb::command_response::Kind as Resp;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The agents' listener's pending connections per source address
/// (`Limits::AGENTS.max_pending_per_ip` in server/src/listener.rs).
const PENDING_PER_IP: usize = 64;
/// Connections one certificate may hold (`Limits::AGENTS.max_per_identity`).
const PER_IDENTITY: usize = 16;
/// Its handshake deadline (`Limits::AGENTS.handshake_timeout`).
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// A host's ingest budget (`registry::INGEST_RATE`).
const INGEST_PER_SECOND: f64 = 50.0;
const INGEST_BURST: f64 = 600.0;
/// What the server forwards of one stream of one host's output
/// (`commands::MAX_OUTPUT_PER_STREAM_BYTES`).
const OUTPUT_CAP_BYTES: usize = 64 * 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Sets `pid`'s descriptor limit (soft and hard) with prlimit(1); false
/// when prlimit is missing or refuses.
fn limit_descriptors(pid: i32, n: u64) -> bool {
    std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={n}:{n}"))
        .status()
        .is_ok_and(|s| s.success())
}

/// How long one `monitorctl hosts` takes; it must succeed.
fn timed_hosts(server: &Server) -> Duration {
    let t = Instant::now();
    let out = server.ctl(&["hosts"]);
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "monitorctl hosts failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn stored_batches(server: &Server, host: &str) -> u64 {
    server.host(host).map_or(0, |h| h.batches_stored_total)
}

/// The raw `hosts --json` line of `host`.
fn host_line(server: &Server, host: &str) -> String {
    let out = server.ctl_ok(&["hosts", "--json"]);
    out.lines()
        .find(|l| l.starts_with(&format!("{{\"hostname\":\"{host}\"")))
        .unwrap_or_else(|| panic!("{host} not in {out}"))
        .to_owned()
}

/// A number field of a `hosts --json` line.
fn json_u64(line: &str, field: &str) -> u64 {
    let key = format!("\"{field}\":");
    let start = line
        .find(&key)
        .unwrap_or_else(|| panic!("{field} in {line}"))
        + key.len();
    line[start..]
        .split([',', '}'])
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in {line}"))
}

/// Samples `pid`'s RSS and `monitorctl hosts`' latency every 200 ms on a
/// thread until dropped; keeps the peaks.
struct Watch {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<(u64, Duration, usize)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(server: Arc<Server>) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new(Mutex::new((0u64, Duration::ZERO, 0usize)));
        let thread = {
            let (stop, peaks) = (Arc::clone(&stop), Arc::clone(&peaks));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let rss = rss_kib(server.proc.pid());
                    let took = timed_hosts(&server);
                    let mut p = peaks.lock().unwrap();
                    p.0 = p.0.max(rss);
                    p.1 = p.1.max(took);
                    p.2 += 1;
                    drop(p);
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        Watch {
            stop,
            peaks,
            thread: Some(thread),
        }
    }

    /// (peak RSS KiB, slowest `hosts`, how many `hosts` ran).
    fn finish(mut self) -> (u64, Duration, usize) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("the watch thread panicked");
        }
        *self.peaks.lock().unwrap()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// `monitor_server_batches_refused_total{reason}` as the server's
/// `/metrics` says it.
fn refused_total(server: &Server, reason: &str) -> u64 {
    let (status, body) = https_get(server, "/metrics", Some(&server.metrics_token()), None);
    assert_eq!(status, 200, "{body}");
    let series = format!("monitor_server_batches_refused_total{{reason=\"{reason}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series}in /metrics:\n{body}"))
}

/// One line of figures for BENCHMARKS.md.
fn figures(flood: &str, idle_kib: u64, peak_kib: u64, slowest: Duration, calls: usize) {
    eprintln!(
        "FIGURES {flood}: server RSS idle with agents {:.1} MiB, peak during the flood {:.1} MiB \
         ({:.2}x); monitorctl hosts slowest {} ms over {calls} calls",
        idle_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        peak_kib as f64 / idle_kib.max(1) as f64,
        slowest.as_millis()
    );
}

/// A TLS server with a real agent ("steady", every 0.2 s) reporting: the
/// baseline every flood is measured against.
struct Rig {
    server: Arc<Server>,
    _steady: Proc,
    /// The server's RSS once the agent reports, KiB.
    idle_kib: u64,
    _dir: TempDir,
}

impl Rig {
    fn start(tag: &str) -> Rig {
        let dir = TempDir::new(tag);
        let server = Arc::new(Server::start(&dir.join("m.db")));
        let steady = server.agent("steady").spawn();
        wait_stored(&server, "steady", 5, Duration::from_secs(30));
        Rig {
            idle_kib: rss_kib(server.proc.pid()),
            server,
            _steady: steady,
            _dir: dir,
        }
    }
}

/// Waits until `host` has stored at least `n` batches.
fn wait_stored(server: &Server, host: &str, n: u64, within: Duration) {
    wait_for(&format!("{host} to store {n} batches"), within, || {
        (stored_batches(server, host) >= n).then_some(())
    });
}

// ---------------------------------------------------------------------------
// Idle sockets
// ---------------------------------------------------------------------------

/// A connection from `source` to `to` that sends nothing.
async fn idle_socket(source: IpAddr, to: SocketAddr) -> std::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let stream = socket.connect(to).await.unwrap();
    let std = stream.into_std().unwrap();
    std.set_nonblocking(true).unwrap();
    std
}

/// Whether the server closed (or reset) `s`.
fn closed(s: &std::net::TcpStream) -> bool {
    let mut reader = s;
    match reader.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

#[test]
fn idle_sockets_cannot_take_the_server_down() {
    // Finding 1 of the hostile-input review: 1,100 sockets that never sent
    // a TLS hello took the server to its 1,024-descriptor limit: hosts
    // hung, agents could not connect, the accept loop spun at 108 % CPU.
    let rig = Rig::start("idle");
    let (server, idle_kib) = (&rig.server, rig.idle_kib);
    let pid = server.proc.pid();
    let limited = limit_descriptors(pid, 1024);
    if !limited {
        eprintln!("prlimit(1) missing: the server keeps its own descriptor limit");
    }
    let watch = Watch::start(Arc::clone(server));

    // 1,100 idle sockets: 550 from each of two loopback source addresses
    // (the agents and monitorctl come from 127.0.0.1).
    let rt = runtime();
    let sources: [IpAddr; 2] = ["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
    let opened = Instant::now();
    let sockets: Vec<std::net::TcpStream> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..1100 {
            v.push(idle_socket(sources[i % 2], server.agents_addr).await);
        }
        v
    });
    // Everything past the per-address cap is closed at once; the rest wait
    // for the handshake deadline.
    let pending = 2 * PENDING_PER_IP;
    wait_for(
        "the sockets past the pending cap to be closed",
        Duration::from_secs(5),
        || {
            let open = sockets.iter().filter(|s| !closed(s)).count();
            (open <= pending).then_some(())
        },
    );
    let open: Vec<std::net::TcpStream> = sockets.into_iter().filter(|s| !closed(s)).collect();
    assert_eq!(
        open.len(),
        pending,
        "exactly the cap waits for its handshake"
    );

    // While they sit there: the operator API answers, a new agent enrols,
    // connects and reports, and the server does not spin.
    let cpu_before = cpu_seconds(pid);
    let cpu_window = Instant::now();
    for _ in 0..3 {
        let took = timed_hosts(server);
        assert!(
            took <= Duration::from_secs(1),
            "monitorctl hosts took {took:?}"
        );
    }
    let _late = server.agent("late").spawn();
    wait_stored(server, "late", 1, Duration::from_secs(8));
    std::thread::sleep(Duration::from_secs(3).saturating_sub(cpu_window.elapsed()));
    let cpu = (cpu_seconds(pid) - cpu_before) / cpu_window.elapsed().as_secs_f64();
    assert!(
        opened.elapsed() < HANDSHAKE_DEADLINE - Duration::from_millis(500),
        "the checks above ran after the deadline: they prove nothing about the flood"
    );
    assert_eq!(
        open.iter().filter(|s| !closed(s)).count(),
        pending,
        "the pending sockets were still open while the agent connected"
    );
    assert!(cpu < 0.3, "the server used {:.0} % of a core", cpu * 100.0);

    // The deadline closes the rest, not earlier.
    let mut first_close = None;
    wait_for(
        "the pending sockets to be closed by the deadline",
        HANDSHAKE_DEADLINE + Duration::from_secs(10),
        || {
            let still = open.iter().filter(|s| !closed(s)).count();
            if still < pending && first_close.is_none() {
                first_close = Some(opened.elapsed());
            }
            (still == 0).then_some(())
        },
    );
    let first_close = first_close.unwrap_or_else(|| opened.elapsed());
    assert!(
        first_close >= HANDSHAKE_DEADLINE - Duration::from_millis(500),
        "pending sockets closed after {first_close:?}, before the deadline"
    );
    let (peak_kib, slowest, calls) = watch.finish();
    figures("idle sockets (1,100)", idle_kib, peak_kib, slowest, calls);
    eprintln!(
        "FIGURES idle sockets: server CPU {:.1} % of a core while they sat",
        cpu * 100.0
    );
    assert!(
        slowest <= Duration::from_secs(1),
        "monitorctl hosts took {slowest:?}"
    );
    // One "limit reached" line for the whole flood, not one per socket.
    let log = server.proc.stderr.dump();
    assert_eq!(server.proc.stderr.count("limit reached"), 1, "{log}");
    assert!(log.contains("handshake limit reached"), "{log}");
    assert!(!log.contains("accept failed"), "{log}");
    if limited {
        assert!(!log.contains("Too many open files"), "{log}");
    }
}

#[test]
fn one_certificate_cannot_hold_every_connection() {
    // An enrolled agent gone bad could otherwise open connections up to
    // the listener's total (30,000) and lock every other agent out.
    let dir = TempDir::new("greedy");
    let server = Server::start(&dir.join("m.db"));
    let rt = runtime();
    let endpoint = server.endpoint("greedy");
    let (worked, channels) = rt.block_on(async {
        let mut channels = Vec::new();
        let mut worked = 0;
        for _ in 0..PER_IDENTITY + 4 {
            // A refused connection is closed after its preface; the client
            // may not notice before its first call, which then fails or
            // hangs: either is a refusal.
            let open = tokio::time::timeout(Duration::from_secs(3), async {
                let channel = endpoint.connect().await.ok()?;
                let mut client = CollectorClient::new(channel.clone());
                let (tx, rx) = mpsc::channel::<pb::Batch>(1);
                client.report(ReceiverStream::new(rx)).await.ok()?;
                Some((channel, tx))
            })
            .await;
            if let Ok(Some(held)) = open {
                worked += 1;
                channels.push(held);
            }
        }
        (worked, channels)
    });
    assert_eq!(worked, PER_IDENTITY, "connections of one certificate");
    // Everyone else still connects.
    let _steady = server.agent("steady").spawn();
    wait_stored(&server, "steady", 1, Duration::from_secs(20));
    assert_eq!(
        server
            .proc
            .stderr
            .count("per-peer connection limit reached"),
        1
    );
    drop(channels);
}

// ---------------------------------------------------------------------------
// Hellos and listing hosts
// ---------------------------------------------------------------------------

/// Opens a command stream, sends `hello` and returns the first answer: a
/// ServerHello, or the status that refused it.
async fn hello_once(
    client: &mut CollectorClient<tonic::transport::Channel>,
    hello: pb::AgentHello,
) -> Result<pb::CommandRequest, tonic::Status> {
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::CommandResponse {
        command_id: String::new(),
        kind: Some(Resp::Hello(hello)),
    })
    .await
    .unwrap();
    let mut inbound = client
        .command_stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = inbound.message().await?;
    drop(tx);
    first.ok_or_else(|| tonic::Status::unknown("the stream ended without an answer"))
}

fn hello(host: &str) -> pb::AgentHello {
    pb::AgentHello {
        agent_id: host.into(),
        hostname: host.into(),
        agent_version: "test".into(),
        boot_id: 1,
        interval_ms: 1000,
    }
}

#[test]
fn hellos_with_oversized_or_forged_fields_are_refused_and_never_logged_whole() {
    // Finding 2: 4,000 hellos with 256 KiB agent_id/agent_version took the
    // server to 996 MiB, wrote 244 MiB of log per 1,000 and forged a log
    // line through a newline.
    let rig = Rig::start("hellos");
    let (server, idle_kib) = (&rig.server, rig.idle_kib);
    let log_before: usize = server.proc.stderr.lines().iter().map(|l| l.len() + 1).sum();
    let watch = Watch::start(Arc::clone(server));

    let rt = runtime();
    let host = "floody";
    let channel = rt.block_on(server.channel(host));
    let hellos = 4000;
    let answers = rt.block_on(async {
        let (done_tx, mut done_rx) = mpsc::channel(64);
        // Eight at a time on one connection.
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..8 {
            let mut client = CollectorClient::new(channel.clone());
            let next = Arc::clone(&next);
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= hellos {
                        return;
                    }
                    let mut h = hello(host);
                    match i % 4 {
                        0 => h.agent_id = "a".repeat(256 * 1024),
                        1 => h.agent_version = "v".repeat(300),
                        2 => h.hostname = format!("{host}\nINFO forged line"),
                        _ => h.agent_version = "v".repeat(256),
                    }
                    let answer = hello_once(&mut client, h).await;
                    let _ = done_tx.send((i % 4, answer)).await;
                }
            });
        }
        drop(done_tx);
        let mut answers = Vec::new();
        while let Some(a) = done_rx.recv().await {
            answers.push(a);
        }
        answers
    });
    let (peak_kib, slowest, calls) = watch.finish();
    assert_eq!(answers.len(), hellos);
    for (kind, answer) in &answers {
        match (kind, answer) {
            (0, Err(s)) => {
                assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
                assert!(s.message().contains("too large"), "{s:?}");
            }
            (1, Err(s)) => {
                assert_eq!(s.code(), tonic::Code::InvalidArgument);
                assert_eq!(
                    s.message(),
                    "hello.agent_version: 300 bytes long, at most 256"
                );
            }
            (2, Err(s)) => {
                assert_eq!(s.code(), tonic::Code::InvalidArgument);
                assert_eq!(
                    s.message(),
                    "hello.hostname: 'floody\\nINFO forged line' has characters other than \
                     ASCII letters, digits, '.', '-' and '_'"
                );
            }
            (
                3,
                Ok(pb::CommandRequest {
                    kind: Some(Req::Hello(_)),
                }),
            ) => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let lines = server.proc.stderr.lines();
    let log_bytes: usize = lines.iter().map(|l| l.len() + 1).sum::<usize>() - log_before;
    assert!(
        !lines.iter().any(|l| l.starts_with("INFO forged")),
        "a forged log line"
    );
    assert!(
        lines.iter().all(|l| l.len() < 2048),
        "a log line of {} bytes",
        lines.iter().map(String::len).max().unwrap_or(0)
    );
    let per_hello = log_bytes / hellos;
    figures("hello flood (4,000)", idle_kib, peak_kib, slowest, calls);
    eprintln!("FIGURES hello flood: {per_hello} bytes of log per hello");
    assert!(per_hello < 1024, "{per_hello} bytes of log per hello");
    assert!(
        slowest <= Duration::from_secs(1),
        "monitorctl hosts took {slowest:?}"
    );
    assert!(
        peak_kib < idle_kib + 100 * 1024,
        "RSS went from {idle_kib} KiB to {peak_kib} KiB"
    );
    // The operator API still lists every host.
    assert!(server.ctl_ok(&["hosts"]).contains("steady"));
}

#[test]
fn ten_thousand_hosts_are_listed_page_by_page() {
    // Finding 2, second half: with many hosts ListHosts answered one
    // message too large for monitorctl ("decoded message length too
    // large"). Plain text: the server trusts the batches' hostnames.
    let dir = TempDir::new("pages");
    let server = Server::start_with(&dir.join("m.db"), "127.0.0.1:0", &["--insecure"]);
    let hosts = 10_050usize;
    let name = |i: usize| format!("h-{i:05}");
    let rt = runtime();
    let base = monitor::time::now_unix_ms() - 60_000;
    // Four streams at once, one batch per host.
    let batches_of = |stream: usize| -> Vec<pb::Batch> {
        (stream..hosts)
            .step_by(4)
            .map(|i| one_sample((&name(i), 1, 1), base, "mem_percent", 1.0))
            .collect()
    };
    let streams = rt.block_on(async {
        tokio::join!(
            report(&server, batches_of(0)),
            report(&server, batches_of(1)),
            report(&server, batches_of(2)),
            report(&server, batches_of(3)),
        )
    });
    for (_, acks) in [streams.0, streams.1, streams.2, streams.3] {
        assert!(acks.iter().all(|a| a.1 == 0), "every batch stored");
    }

    // monitorctl pages through all of them.
    let t = Instant::now();
    let out = server.ctl_ok(&["hosts", "--json"]);
    let took = t.elapsed();
    let listed: Vec<HostJson> = out.lines().filter_map(HostJson::parse).collect();
    assert_eq!(listed.len(), hosts);
    assert!(
        listed
            .iter()
            .enumerate()
            .all(|(i, h)| h.hostname == name(i))
    );
    eprintln!(
        "FIGURES listing: monitorctl hosts --json of {hosts} hosts in {} ms",
        took.as_millis()
    );
    assert!(server.ctl_ok(&["hosts"]).lines().count() > hosts);

    // An older monitorctl sends an empty request: it gets the first page
    // and a token, never the whole fleet in one message.
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(server.admin_url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut admin = AdminClient::new(channel);
        let first = admin
            .list_hosts(pb::ListHostsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.hosts.len(), 1000);
        assert_eq!(first.next_page_token, name(999));
        let big = admin
            .list_hosts(pb::ListHostsRequest {
                page_size: 1_000_000,
                page_token: first.next_page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(big.hosts.len(), 2000, "a page is at most 2,000 hosts");
        assert_eq!(big.hosts[0].hostname, name(1000));
        let last = admin
            .list_hosts(pb::ListHostsRequest {
                page_size: 100,
                page_token: name(hosts - 51),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(last.hosts.len(), 50);
        assert_eq!(last.next_page_token, "", "the last page has no token");
        let bad = admin
            .list_hosts(pb::ListHostsRequest {
                page_size: 10,
                page_token: "a\nb".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(
            bad.message()
                .starts_with("page_token: 'a\\nb' has characters"),
            "{bad:?}"
        );
    });
}

// ---------------------------------------------------------------------------
// Batches
// ---------------------------------------------------------------------------

/// What one flooding Report stream got back.
#[derive(Default)]
struct Flooded {
    sent: usize,
    /// Sample times of the batches acknowledged as stored.
    stored_times: Vec<i64>,
    rate_limited: usize,
}

/// Sends batches of `host` on one Report stream as fast as the server
/// reads them for `for_how_long`, one sample each at a time unique to
/// (stream, seq), and never re-sends a refused one; then collects every
/// ack.
/// How fast each flood stream sends: 10 batches every 20 ms, 500 a second,
/// so the six streams send 3,000 a second, the rate of finding 3 (2,945) and
/// 60 times the host's budget. Unpaced, the test's own client took the
/// cores (19,000 a second here) and starved the server and PostgreSQL's
/// writer alike: what it then measured was the scheduler, and a remote
/// attacker's CPU is not the server's.
const FLOOD_PACE: Duration = Duration::from_millis(20);
const FLOOD_BATCHES_PER_PACE: u64 = 10;

async fn flood_stream(
    mut client: CollectorClient<tonic::transport::Channel>,
    host: String,
    stream: u64,
    base_unix_ms: i64,
    for_how_long: Duration,
) -> Flooded {
    let (tx, rx) = mpsc::channel(64);
    let mut acks = client
        .report(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let sender = tokio::spawn(async move {
        let until = Instant::now() + for_how_long;
        let mut seq = 0u64;
        let mut pace = tokio::time::interval(FLOOD_PACE);
        while Instant::now() < until {
            pace.tick().await;
            for _ in 0..FLOOD_BATCHES_PER_PACE {
                seq += 1;
                let time = base_unix_ms + stream as i64 * 1_000_000 + seq as i64;
                let b = one_sample((&host, stream, seq), time, "cpu_percent", 1.0);
                if tx.send(b).await.is_err() {
                    return seq as usize;
                }
            }
        }
        seq as usize
    });
    let mut out = Flooded::default();
    while let Ok(Some(ack)) = acks.message().await {
        match pb::AckCode::try_from(ack.code) {
            Ok(pb::AckCode::Ok) => out
                .stored_times
                .push(base_unix_ms + stream as i64 * 1_000_000 + ack.seq as i64),
            Ok(pb::AckCode::RateLimited) => out.rate_limited += 1,
            other => panic!("unexpected ack {other:?}: {ack:?}"),
        }
    }
    out.sent = sender.await.unwrap();
    out
}

#[test]
fn a_host_flooding_batches_is_held_to_its_budget_and_others_keep_reporting() {
    // Finding 3: one client sent 2,945 batches a second and grew the
    // database 15 GiB an hour.
    let rig = Rig::start("ingest");
    let (server, idle_kib) = (&rig.server, rig.idle_kib);
    let flood_for = Duration::from_secs(6);
    let base = monitor::time::now_unix_ms() - 24 * 3_600_000;

    let rt = runtime();
    let channel = rt.block_on(server.channel("flood"));
    let watch = Watch::start(Arc::clone(server));
    // The real agent's progress, once a second, while the flood runs.
    let progress = {
        let server = Arc::clone(server);
        std::thread::spawn(move || {
            let mut counts = Vec::new();
            let until = Instant::now() + Duration::from_secs(6);
            while Instant::now() < until {
                std::thread::sleep(Duration::from_secs(1));
                counts.push(stored_batches(&server, "steady"));
            }
            counts
        })
    };
    let started = Instant::now();
    // Four streams on one connection and two on another: the budget is
    // the host's, not the stream's or the connection's.
    let flooded: Vec<Flooded> = rt.block_on(async {
        let other = server.channel("flood").await;
        let tasks: Vec<_> = (1..=6u64)
            .map(|stream| {
                let c = if stream <= 4 {
                    channel.clone()
                } else {
                    other.clone()
                };
                tokio::spawn(flood_stream(
                    CollectorClient::new(c),
                    "flood".into(),
                    stream,
                    base,
                    flood_for,
                ))
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let elapsed = started.elapsed().as_secs_f64();
    let counts = progress.join().unwrap();
    let (peak_kib, slowest, calls) = watch.finish();

    let sent: usize = flooded.iter().map(|f| f.sent).sum();
    let limited: usize = flooded.iter().map(|f| f.rate_limited).sum();
    let mut stored: Vec<i64> = flooded
        .iter()
        .flat_map(|f| f.stored_times.clone())
        .collect();
    stored.sort_unstable();
    figures("ingest flood", idle_kib, peak_kib, slowest, calls);
    eprintln!(
        "FIGURES ingest flood: {sent} batches sent in {elapsed:.1} s ({:.0}/s), {} stored \
         ({:.0}/s), {limited} refused as rate limited",
        sent as f64 / elapsed,
        stored.len(),
        stored.len() as f64 / elapsed
    );
    assert!(limited > 0, "the flood was never limited ({sent} sent)");
    let budget = INGEST_BURST + INGEST_PER_SECOND * (elapsed + 1.0);
    assert!(
        (stored.len() as f64) <= budget,
        "{} stored in {elapsed:.1} s, budget {budget:.0}",
        stored.len()
    );
    // The real agent went on storing every second.
    assert!(
        counts.windows(2).all(|w| w[1] > w[0]),
        "steady's stored batches stalled during the flood: {counts:?}"
    );
    assert!(
        slowest <= Duration::from_secs(1),
        "monitorctl hosts took {slowest:?}"
    );
    // Every batch acknowledged as stored is there.
    let samples = server.samples("flood", "25h");
    let mut times: Vec<i64> = samples.iter().map(|s| rfc3339_ms(&s.time)).collect();
    times.sort_unstable();
    assert_eq!(
        times, stored,
        "stored samples differ from the batches acknowledged"
    );
    let line = host_line(server, "flood");
    assert_eq!(
        json_u64(&line, "batches_rate_limited_total"),
        limited as u64
    );
    assert_eq!(
        json_u64(&host_line(server, "steady"), "batches_rate_limited_total"),
        0
    ); // Counted among the server's refusals too.
    assert_eq!(refused_total(server, "rate_limited"), limited as u64);
}

/// Reports `batches` on one stream: (stored, rate limited, seconds taken,
/// every ack); every ack is one of the two.
fn report_counted(
    server: &Server,
    batches: Vec<pb::Batch>,
) -> (usize, usize, f64, Vec<(u64, i32, String)>) {
    let rt = runtime();
    let started = Instant::now();
    let (_open, got) = rt.block_on(report(server, batches));
    let elapsed = started.elapsed().as_secs_f64();
    let stored = got.iter().filter(|a| a.1 == pb::AckCode::Ok as i32).count();
    let limited = got
        .iter()
        .filter(|a| a.1 == pb::AckCode::RateLimited as i32)
        .count();
    assert_eq!(stored + limited, got.len(), "{got:?}");
    (stored, limited, elapsed, got)
}

#[test]
fn a_host_packing_ticks_into_its_batches_is_charged_per_tick() {
    // Finding 3's row budget: 64 ticks in one batch write 64 rows, so they
    // cost 64 of the host's budget, not one.
    let dir = TempDir::new("packed");
    let server = Server::start(&dir.join("m.db"));
    let host = "packer";
    let ticks = monitor::wire::MAX_SAMPLES_PER_BATCH;
    let base = monitor::time::now_unix_ms() - 3_600_000;
    let batches: Vec<pb::Batch> = (1..=30u64)
        .map(|seq| {
            let first = base + seq as i64 * 1000;
            let mut b = one_sample((host, 3, seq), first, "cpu_percent", 1.0);
            let sample = b.samples[0].clone();
            b.samples = (0..ticks as i64)
                .map(|i| pb::Sample {
                    time_unix_ms: first + i,
                    ..sample.clone()
                })
                .collect();
            b
        })
        .collect();
    let (stored, limited, elapsed, got) = report_counted(&server, batches);
    // The burst holds nine such batches; a tick per batch it would be all.
    let budget = INGEST_BURST + INGEST_PER_SECOND * (elapsed + 1.0);
    assert!(stored >= 9, "{got:?}");
    assert!(
        (stored * ticks) as f64 <= budget,
        "{stored} batches of {ticks} ticks stored in {elapsed:.1} s, budget {budget:.0} ticks"
    );
    assert!(limited > 0, "{got:?}");
    assert_eq!(server.samples(host, "2h").len(), stored * ticks);
}

#[test]
fn a_host_sending_only_health_values_is_charged_for_them() {
    // Issue 14: health values are rows too. A batch of 64 of them and no
    // sample costs 1 + (64 - 16) / 8 = 7 ticks of the budget
    // (registry::batch_cost), so sending them alone cannot get around the
    // limit.
    let dir = TempDir::new("health-flood");
    let server = Server::start(&dir.join("m.db"));
    let host = "health-flooder";
    let per_batch = monitor::wire::MAX_HEALTH_SAMPLES_PER_BATCH;
    let base = monitor::time::now_unix_ms() - 3_600_000;
    let batches: Vec<pb::Batch> = (1..=400u64)
        .map(|seq| {
            let time = base + seq as i64 * 1000;
            let mut b = one_sample((host, 3, seq), time, "cpu_percent", 1.0);
            b.samples.clear();
            b.health_samples = (0..per_batch)
                .map(|i| pb::Sample {
                    time_unix_ms: time,
                    hostname: host.into(),
                    metric: "fs_used_percent".into(),
                    value: 50.0,
                    device: format!("/mnt/{i}"),
                })
                .collect();
            b
        })
        .collect();
    let (stored, limited, elapsed, got) = report_counted(&server, batches);
    // The burst holds 85 such batches; free, it would be all 400.
    let budget = INGEST_BURST + INGEST_PER_SECOND * (elapsed + 1.0);
    assert!(stored >= 85, "{stored} stored: {got:?}");
    assert!(
        (stored * 7) as f64 <= budget,
        "{stored} batches of {per_batch} health values stored in {elapsed:.1} s, \
         budget {budget:.0} ticks"
    );
    assert!(limited > 0, "{got:?}");
    let rows = server.ctl_ok(&[
        "query",
        host,
        "--metric",
        "fs_used_percent",
        "--since",
        "2h",
        "--json",
    ]);
    assert_eq!(rows.lines().count(), stored * per_batch);
}

#[test]
fn a_real_agent_catching_up_meets_the_limit_and_loses_nothing() {
    // The agent's side of finding 3: a batch refused as rate limited is
    // kept and sent again, never freed. A small budget (3 a second, bursts
    // of 4) and a server frozen for a while give the agent (2 batches a
    // second) a backlog it must deliver through the limit.
    let dir = TempDir::new("catchup");
    let server = Server::start_opts(
        &dir.join("m.db"),
        "127.0.0.1:0",
        &[],
        &[("MONITOR_TEST_INGEST_RATE", "3,4")],
        None,
    );
    let agent = server
        .agent("catchup")
        .env("MONITOR_INTERVAL", "0.5")
        .spawn();
    wait_stored(&server, "catchup", 3, Duration::from_secs(30));
    // Frozen 6 s: 12 batches pile up.
    server.proc.signal("STOP");
    std::thread::sleep(Duration::from_secs(6));
    server.proc.signal("CONT");
    // The backlog meets the limit...
    wait_for("a rate-limited batch", Duration::from_secs(20), || {
        let line = host_line(&server, "catchup");
        (json_u64(&line, "batches_rate_limited_total") > 0).then_some(())
    });
    // ...and then drains: every tick since the start is stored, with no
    // hole (a freed batch would leave one).
    let samples = wait_for("the backlog to drain", Duration::from_secs(40), || {
        let s = server.samples("catchup", "10m");
        let mut times: Vec<i64> = s
            .iter()
            .filter(|s| s.metric == "mem_percent")
            .map(|s| rfc3339_ms(&s.time))
            .collect();
        times.sort_unstable();
        let newest = *times.last()?;
        // Caught up: the newest stored tick is recent.
        (monitor::time::now_unix_ms() - newest < 1500).then_some(times)
    });
    let gaps: Vec<i64> = samples.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|&g| g < 750),
        "holes in the stored ticks (ms between them): {gaps:?}"
    );
    let line = host_line(&server, "catchup");
    assert_eq!(json_u64(&line, "dropped_batches_total"), 0, "{line}");
    assert!(
        agent.stderr.contains("rate limiting this host"),
        "{}",
        agent.stderr.dump()
    );
}

#[test]
fn a_forged_seq_jump_is_refused_and_cannot_poison_de_duplication() {
    // Finding 4: a batch with seq 10^12 opened a gap, 257 more pushed it
    // out of the gap memory, and from then on every real batch was
    // acknowledged and discarded.
    let dir = TempDir::new("seqjump");
    let server = Server::start(&dir.join("m.db"));
    let host = "jumpy";
    let base = monitor::time::now_unix_ms() - 3_600_000;
    let b = |seq: u64, at: i64| one_sample((host, 9, seq), base + at, "mem_percent", 12.0);
    let rt = runtime();
    // Beyond what any agent produces: refused with its own code.
    let (_open, got) = rt.block_on(report(&server, vec![b(1, 1), b(1_000_000_000_000, 2)]));
    assert_eq!(got[0].1, pb::AckCode::Ok as i32);
    assert_eq!(got[1].1, pb::AckCode::SequenceOutOfRange as i32, "{got:?}");
    assert!(
        got[1].2.starts_with("seq: 1000000000000 is more than"),
        "{got:?}"
    );
    assert_eq!(refused_total(&server, "sequence_out_of_range"), 1);
    // Within the bound, the same attack: a jump, then 256 more gaps, then
    // the real agent's next batches.
    let mut batches: Vec<pb::Batch> = (2..=5).map(|s| b(s, s as i64 * 1000)).collect();
    for k in 0..=256u64 {
        batches.push(b(1_000_000_000 + 2 * k, -1_000_000 + k as i64));
    }
    batches.extend((6..=10).map(|s| b(s, s as i64 * 1000)));
    let (_open, got) = rt.block_on(report(&server, batches));
    assert!(got.iter().all(|a| a.1 == 0), "{got:?}");
    let samples = server.samples(host, "2h");
    assert_eq!(
        samples.len(),
        10 + 257,
        "every acknowledged batch is stored"
    );
    let line = host_line(&server, host);
    assert_eq!(
        json_u64(&line, "batches_checked_by_value_total"),
        5,
        "{line}"
    );
    assert!(
        server
            .proc
            .stderr
            .contains("no longer knows whether this seq is stored"),
        "{}",
        server.proc.stderr.dump()
    );
}

#[test]
fn absurd_metric_values_are_refused_with_the_bound_they_break() {
    // Finding 7: rates up to 1e308 were stored, and broke the table that
    // printed them.
    let dir = TempDir::new("bounds");
    let server = Server::start(&dir.join("m.db"));
    let host = "forger";
    let base = monitor::time::now_unix_ms() - 600_000;
    let rt = runtime();
    let max_rate = monitor::wire::MAX_RATE_KIB_PER_S;
    let cases: [(&str, f64, bool); 7] = [
        ("net_in_kbps", 1e308, false),
        ("disk_read_kbps", max_rate * 2.0, false),
        ("net_out_kbps", -1.0, false),
        ("mem_percent", 100.5, false),
        ("cpu_percent", -0.1, false),
        ("net_in_kbps", max_rate, true),
        ("mem_percent", 100.0, true),
    ];
    let batches = cases
        .iter()
        .enumerate()
        .map(|(i, &(metric, value, _))| {
            one_sample((host, 5, i as u64 + 1), base + i as i64, metric, value)
        })
        .collect();
    let (_open, got) = rt.block_on(report(&server, batches));
    for (&(metric, value, ok), (_, code, message)) in cases.iter().zip(&got) {
        if ok {
            assert_eq!(
                *code,
                pb::AckCode::Ok as i32,
                "{metric} = {value}: {message}"
            );
            continue;
        }
        assert_eq!(*code, pb::AckCode::Invalid as i32, "{metric} = {value}");
        let bound = if metric.ends_with("_percent") {
            "(must be from 0 to 100)".to_owned()
        } else {
            format!("(must be from 0 to {max_rate} KiB/s)")
        };
        assert!(
            message.starts_with(&format!("samples[0].value: {metric} = "))
                && message.ends_with(&format!("is out of range {bound}")),
            "{metric} = {value}: {message}"
        );
    }
    // Only the two values within their bounds were stored, and the table
    // that prints them still works.
    let mut stored: Vec<(String, f64)> = server
        .samples(host, "1h")
        .into_iter()
        .map(|s| (s.metric, s.value))
        .collect();
    stored.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        stored,
        vec![
            ("mem_percent".to_owned(), 100.0),
            ("net_in_kbps".to_owned(), max_rate)
        ]
    );
    assert_eq!(refused_total(&server, "invalid"), 5);
    let table = server.ctl(&["hosts"]);
    assert!(table.status.success(), "{table:?}");
    assert!(
        String::from_utf8_lossy(&table.stdout).contains(host),
        "{table:?}"
    );
}

// ---------------------------------------------------------------------------
// Command output
// ---------------------------------------------------------------------------

#[test]
fn a_fake_agent_answering_with_ten_mib_of_output_gets_the_cap_through() {
    // Finding 6: the server forwarded whatever an agent sent.
    let dir = TempDir::new("output");
    let server = Arc::new(Server::start(&dir.join("m.db")));
    let pid = server.proc.pid();
    let host = "chatty";
    let rt = runtime();
    let channel = rt.block_on(server.channel(host));
    let total_bytes = 10 << 20;
    // The fake agent: hello, then for each command 10 MiB of "x" lines
    // in 60 KiB pieces (under the server's 64 KiB message limit).
    let (out_tx, out_rx) = mpsc::channel::<pb::CommandResponse>(4);
    let mut client = CollectorClient::new(channel);
    let mut inbound = rt.block_on(async {
        out_tx
            .send(pb::CommandResponse {
                command_id: String::new(),
                kind: Some(Resp::Hello(hello(host))),
            })
            .await
            .unwrap();
        let mut inbound = client
            .command_stream(ReceiverStream::new(out_rx))
            .await
            .unwrap()
            .into_inner();
        let first = inbound.message().await.unwrap().unwrap();
        assert!(matches!(first.kind, Some(Req::Hello(_))));
        inbound
    });
    let agent = rt.spawn(async move {
        while let Ok(Some(req)) = inbound.message().await {
            let Some(Req::Run(run)) = req.kind else {
                continue;
            };
            let id = run.command_id;
            let say = |kind| pb::CommandResponse {
                command_id: id.clone(),
                kind: Some(kind),
            };
            out_tx
                .send(say(Resp::Accepted(pb::Accepted {})))
                .await
                .unwrap();
            let line = format!("{}\n", "x".repeat(999));
            let piece = line.repeat(60);
            let mut sent = 0;
            while sent < total_bytes {
                out_tx
                    .send(say(Resp::Output(pb::Output {
                        stream: pb::OutputStream::Stdout as i32,
                        data: piece.clone().into_bytes(),
                    })))
                    .await
                    .unwrap();
                sent += piece.len();
            }
            out_tx
                .send(say(Resp::Finished(pb::Finished {
                    outcome: pb::Outcome::Exited as i32,
                    exit_code: Some(0),
                    stdout_bytes: sent as u64,
                    // Under the server's message limit, over its cap.
                    message: "m".repeat(50_000),
                    ..Default::default()
                })))
                .await
                .unwrap();
        }
        out_tx
    });
    let before_kib = rss_kib(pid);
    let watch = Watch::start(Arc::clone(&server));
    let out = server.ctl(&["exec", "--host", host, "--", "ping"]);
    let (peak_kib, slowest, calls) = watch.finish();
    figures(
        "output flood (10 MiB)",
        before_kib,
        peak_kib,
        slowest,
        calls,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let xs = stdout.bytes().filter(|&b| b == b'x').count();
    eprintln!(
        "FIGURES output flood: 10 MiB sent, {xs} bytes of output reached monitorctl; server RSS \
         {:.1} MiB before, {:.1} MiB peak",
        before_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0
    );
    assert!(out.status.success(), "{stderr}");
    assert!(xs <= OUTPUT_CAP_BYTES, "{xs} bytes of output forwarded");
    assert!(
        xs >= OUTPUT_CAP_BYTES - 1000,
        "only {xs} bytes of output forwarded"
    );
    assert!(stderr.contains("output truncated"), "{stderr}");
    // The 50,000-byte result message is kept at its cap.
    // (Results are recorded in the background: wait for it.)
    let history = wait_for("the result in the history", Duration::from_secs(10), || {
        let h = server.ctl_ok(&["history", "--json"]);
        h.contains("\"outcome\":\"exited\"").then_some(h)
    });
    assert!(history.contains("more bytes)"), "{history}");
    assert!(
        history.len() < 8 * 1024,
        "{} bytes of history",
        history.len()
    );
    assert!(
        peak_kib < before_kib + 32 * 1024,
        "RSS went from {before_kib} KiB to {peak_kib} KiB"
    );
    assert!(
        slowest <= Duration::from_secs(1),
        "monitorctl hosts took {slowest:?}"
    );
    assert!(
        server
            .proc
            .stderr
            .contains("sent more output than the server forwards"),
        "{}",
        server.proc.stderr.dump()
    );
    drop(agent);
}
