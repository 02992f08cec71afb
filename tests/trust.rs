//! End to end, trust: each security property of TLS, enrolment, identity,
//! revocation, renewal and operator credentials, proved with the real
//! binaries on loopback.
//!
//! Every test names the property it proves and fails if that property
//! breaks; where a refusal is checked, a control shows that the same client
//! set up the right way does get through, so a refusal cannot come from a
//! broken test client. Waits poll with deadlines; timings that are the
//! property itself (revocation within a second, renewal before expiry)
//! are measured, not slept.

// Test support code panics on purpose when the harness cannot proceed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use monitor::credential::Credential;
use monitor::csr::PrivateKey;
use monitor::join::JoinToken;
use monitor::pb;
use monitor::pb::admin_client::AdminClient;
use monitor::pb::collector_client::CollectorClient;
use monitor_agent::testing::{FakeHost, FakeMem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

/// The text of `path` (the test fails if it cannot be read).
fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Fails the test unless `path`'s permission bits are `want`.
#[track_caller]
fn assert_mode(path: &Path, want: u32) {
    let got = mode(path);
    assert!(got == want, "{} is {got:o}, not {want:o}", path.display());
}

/// A client certificate and its key, in PEM.
struct ClientCert {
    cert_pem: String,
    key_pem: String,
}

/// The server's CA certificate (PEM), as clients pin it.
fn ca_pem(server: &Server) -> String {
    read(&server.dir().join("tls").join("ca.pem"))
}

/// The local operator's certificate, from the credential the server wrote.
fn operator_cert(server: &Server) -> ClientCert {
    let c = Credential::decode(&read(&server.credentials())).unwrap();
    ClientCert {
        cert_pem: c.cert_pem(),
        key_pem: c.key_pem(),
    }
}

/// An agent certificate for `host`, made by `monitorctl enrol HOST --files`.
fn agent_cert(server: &Server, host: &str) -> ClientCert {
    let files = server.dir().join("files").join(host);
    server.ctl_ok(&["enrol", host, "--files", files.to_str().unwrap()]);
    ClientCert {
        cert_pem: read(&files.join(format!("{host}.pem"))),
        key_pem: read(&files.join(format!("{host}.key"))),
    }
}

/// An endpoint at `url`: TLS checking the server against `ca_pem` when
/// given (presenting `cert` when given), else plain text.
fn endpoint(url: &str, ca_pem: Option<&str>, cert: Option<&ClientCert>) -> Endpoint {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(20));
    let Some(ca) = ca_pem else {
        return endpoint;
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(c) = cert {
        tls = tls.identity(Identity::from_pem(&c.cert_pem, &c.key_pem));
    }
    endpoint.tls_config(tls).unwrap()
}

/// How a call ended.
#[derive(Debug)]
enum Call<T> {
    /// A service answered: with a response or with a status it sent.
    Answered(Result<T, Status>),
    /// No service answered: the connection or its TLS handshake failed
    /// (the error and its causes).
    Cut(String),
}

impl<T: std::fmt::Debug> Call<T> {
    /// From a call's result: a status caused by a transport error (it
    /// carries that error as its source) is a cut, any other an answer.
    fn of(result: Result<T, Status>) -> Call<T> {
        match result {
            Ok(v) => Call::Answered(Ok(v)),
            Err(s) => match std::error::Error::source(&s) {
                Some(cause) => Call::Cut(format!(
                    "{:?}: {}: {}",
                    s.code(),
                    s.message(),
                    monitor::cli::error_chain(cause)
                )),
                None => Call::Answered(Err(s)),
            },
        }
    }

    /// The error text of a call that no service may answer.
    #[track_caller]
    fn cut(self, what: &str) -> String {
        match self {
            Call::Cut(why) => why,
            Call::Answered(a) => panic!(
                "{what}: a service answered ({a:?}); the connection should have been refused"
            ),
        }
    }

    /// The status a service refused the call with.
    #[track_caller]
    fn refused(self, what: &str) -> Status {
        match self {
            Call::Answered(Err(s)) => s,
            other => panic!("{what}: expected the service to refuse, got {other:?}"),
        }
    }

    /// The answer of a call that must succeed.
    #[track_caller]
    fn ok(self, what: &str) -> T {
        match self {
            Call::Answered(Ok(v)) => v,
            other => panic!("{what}: expected an answer, got {other:?}"),
        }
    }
}

/// `Admin.ListHosts` over a new connection from `endpoint`.
async fn list_hosts(endpoint: Endpoint) -> Call<pb::ListHostsResponse> {
    match endpoint.connect().await {
        Err(e) => Call::Cut(monitor::cli::error_chain(&e)),
        Ok(ch) => Call::of(
            AdminClient::new(ch)
                .list_hosts(pb::ListHostsRequest::default())
                .await
                .map(tonic::Response::into_inner),
        ),
    }
}

/// `Collector.Renew` over a new connection from `endpoint`.
async fn renew(endpoint: Endpoint, host: &str) -> Call<pb::IssuedCertificate> {
    let request = pb::RenewRequest {
        certificate_request: PrivateKey::generate().unwrap().csr_der(host).unwrap(),
    };
    match endpoint.connect().await {
        Err(e) => Call::Cut(monitor::cli::error_chain(&e)),
        Ok(ch) => Call::of(
            CollectorClient::new(ch)
                .renew(request)
                .await
                .map(tonic::Response::into_inner),
        ),
    }
}

/// Sends `batches` on a new `Report` stream over `channel`: an ack for
/// each, or how the stream ended.
async fn report_all(
    channel: tonic::transport::Channel,
    batches: Vec<pb::Batch>,
) -> Call<Vec<pb::Ack>> {
    let n = batches.len();
    let (tx, rx) = mpsc::channel(16);
    // Fed from a task: the server reads at most 64 batches ahead of its
    // acks, so a long list must not wait for them here.
    let feeder = tokio::spawn(async move {
        for b in batches {
            if tx.send(b).await.is_err() {
                break;
            }
        }
        // Held open until the acks are read: a closed stream ends the call.
        tx
    });
    let mut acks = match CollectorClient::new(channel)
        .report(ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return Call::of(Err(s)),
    };
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(20), acks.message())
            .await
            .expect("an answer to each batch within 20 s");
        match next {
            Ok(Some(ack)) => got.push(ack),
            Ok(None) => {
                return Call::Answered(Err(Status::unknown(format!(
                    "the stream ended after {} acks of {n}",
                    got.len()
                ))));
            }
            Err(s) => return Call::of(Err(s)),
        }
    }
    drop(feeder);
    Call::Answered(Ok(got))
}

/// Sends `batch` on a new `Report` stream over `channel`: its ack, or how
/// the stream ended.
async fn report_on(channel: tonic::transport::Channel, batch: pb::Batch) -> Call<pb::Ack> {
    match report_all(channel, vec![batch]).await {
        Call::Answered(Ok(mut acks)) => Call::Answered(Ok(acks.remove(0))),
        Call::Answered(Err(s)) => Call::Answered(Err(s)),
        Call::Cut(why) => Call::Cut(why),
    }
}

/// [`report_on`] over a new connection from `endpoint`.
async fn report(endpoint: Endpoint, batch: pb::Batch) -> Call<pb::Ack> {
    match endpoint.connect().await {
        Err(e) => Call::Cut(monitor::cli::error_chain(&e)),
        Ok(ch) => report_on(ch, batch).await,
    }
}

/// Opens a `CommandStream` as `host` over a new connection from
/// `endpoint`: the server's first message, or how the stream ended.
async fn command_stream(endpoint: Endpoint, host: &str) -> Call<pb::CommandRequest> {
    let ch = match endpoint.connect().await {
        Err(e) => return Call::Cut(monitor::cli::error_chain(&e)),
        Ok(ch) => ch,
    };
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::CommandResponse {
        command_id: String::new(),
        kind: Some(pb::command_response::Kind::Hello(pb::AgentHello {
            agent_id: host.into(),
            hostname: host.into(),
            agent_version: "test".into(),
            boot_id: 1,
            interval_ms: 1000,
        })),
    })
    .await
    .unwrap();
    let mut inbound = match CollectorClient::new(ch)
        .command_stream(ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return Call::of(Err(s)),
    };
    let got = tokio::time::timeout(Duration::from_secs(20), inbound.message())
        .await
        .expect("an answer to the hello within 20 s");
    drop(tx);
    match got {
        Ok(Some(m)) => Call::Answered(Ok(m)),
        Ok(None) => Call::Answered(Err(Status::unknown("the stream ended without a message"))),
        Err(s) => Call::of(Err(s)),
    }
}

/// A batch of one sample taken now.
fn batch(
    (host, agent_id, boot_id, seq): (&str, &str, u64, u64),
    metric: &str,
    value: f64,
) -> pb::Batch {
    let now = monitor::time::now_unix_ms();
    pb::Batch {
        agent_id: agent_id.into(),
        boot_id,
        seq,
        samples: vec![pb::Sample {
            time_unix_ms: now,
            hostname: host.into(),
            metric: metric.into(),
            value,
            ..Default::default()
        }],
        sent_unix_ms: now,
        agent_version: "test".into(),
        hostname: host.into(),
        ..Default::default()
    }
}

/// What a plain-text HTTP/2 client gets back from `addr`: the bytes the
/// server wrote until it closed the connection.
async fn plain_h2_reply(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The client preface and an empty SETTINGS frame: what any HTTP/2
    // client sends first. A plain-text HTTP/2 server answers with its own
    // SETTINGS frame.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let _ = tcp.write_all(&hello).await;
    let mut reply = Vec::new();
    // A reset after some bytes still leaves them in `reply`.
    let _ = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut reply))
        .await
        .expect("the server closes a plain-text connection");
    reply
}

/// Waits until the server logged, at or after `since`, a line containing
/// every one of `needles` (a refused handshake's reason, for instance).
#[track_caller]
fn logged_after(server: &Server, since: Instant, needles: &[&str]) {
    wait_for(
        &format!("a server log line with {needles:?}"),
        Duration::from_secs(10),
        || {
            server
                .proc
                .stderr
                .timed()
                .iter()
                .any(|(t, l)| *t >= since && needles.iter().all(|n| l.contains(n)))
                .then_some(())
        },
    );
}

/// Plain text gets no answer on either listener; without a client
/// certificate only `Enrol` is served on the agents' listener and the
/// operator API refuses the handshake; an agent's certificate opens
/// nothing on the operator API, an operator's nothing on the agents'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_and_certificate_less_clients_are_refused_on_both_listeners() {
    let dir = TempDir::new("refused");
    let server = Server::start(&dir.join("m.db"));
    let ca = ca_pem(&server);

    // Plain text: no gRPC answer and no HTTP/2 at all on either listener
    // (nothing, or a TLS alert: its record type is 0x15).
    list_hosts(endpoint(
        &format!("http://{}", server.admin_addr),
        None,
        None,
    ))
    .await
    .cut("plain-text ListHosts");
    renew(
        endpoint(&format!("http://{}", server.agents_addr), None, None),
        "x",
    )
    .await
    .cut("plain-text Renew");
    for (what, addr) in [
        ("agents' listener", server.agents_addr),
        ("operator API", server.admin_addr),
    ] {
        let reply = plain_h2_reply(addr).await;
        assert!(
            reply.is_empty() || reply[0] == 0x15,
            "{what} answered plain-text HTTP/2 with something other than a TLS alert: {reply:02x?}"
        );
    }

    // TLS without a client certificate, on the agents' listener: every
    // RPC but Enrol is refused by the service.
    let anon = endpoint(&server.url(), Some(&ca), None);
    let s = report(
        anon.clone(),
        batch(("anon-1", "anon-1", 1, 1), "cpu_percent", 1.0),
    )
    .await
    .refused("Report without a certificate");
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert!(
        s.message().contains("needs the agent's client certificate"),
        "{s:?}"
    );
    let s = command_stream(anon.clone(), "anon-1")
        .await
        .refused("CommandStream without a certificate");
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    let s = renew(anon.clone(), "anon-1")
        .await
        .refused("Renew without a certificate");
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    // Enrol is answered, and a token buys a certificate that reports.
    let token = JoinToken::decode(&server.token("anon-1")).unwrap();
    let key = PrivateKey::generate().unwrap();
    let issued = CollectorClient::new(anon.connect().await.unwrap())
        .enrol(pb::EnrolRequest {
            token_secret: token.secret.to_vec(),
            hostname: "anon-1".into(),
            certificate_request: key.csr_der("anon-1").unwrap(),
        })
        .await
        .expect("Enrol without a client certificate")
        .into_inner();
    let enrolled = ClientCert {
        cert_pem: monitor::pem::encode("CERTIFICATE", &issued.certificate),
        key_pem: monitor::pem::encode("PRIVATE KEY", &key.pkcs8_der),
    };
    let ack = report(
        endpoint(&server.url(), Some(&ca), Some(&enrolled)),
        batch(("anon-1", "anon-1", 1, 1), "cpu_percent", 1.0),
    )
    .await
    .ok("Report with the enrolled certificate");
    assert_eq!(ack.code, pb::AckCode::Ok as i32, "{ack:?}");

    // The operator API: the local operator's certificate gets in (the
    // control), no certificate and an agent's do not even finish the
    // handshake.
    let admin = operator_cert(&server);
    list_hosts(endpoint(&server.admin_url(), Some(&ca), Some(&admin)))
        .await
        .ok("ListHosts with the operator's certificate");
    let since = Instant::now();
    list_hosts(endpoint(&server.admin_url(), Some(&ca), None))
        .await
        .cut("ListHosts without a client certificate");
    logged_after(
        &server,
        since,
        &["operator API: ", "peer sent no certificates"],
    );
    let agent = agent_cert(&server, "files-1");
    let since = Instant::now();
    list_hosts(endpoint(&server.admin_url(), Some(&ca), Some(&agent)))
        .await
        .cut("ListHosts with an agent's certificate");
    logged_after(
        &server,
        since,
        &["operator API: ", "ApplicationVerificationFailure"],
    );

    // An operator's certificate on the agents' listener: no Report, no
    // CommandStream (the control: the agent's certificate does report).
    let as_operator = endpoint(&server.url(), Some(&ca), Some(&admin));
    let since = Instant::now();
    report(
        as_operator.clone(),
        batch(("admin", "admin", 1, 1), "cpu_percent", 1.0),
    )
    .await
    .cut("Report with an operator's certificate");
    command_stream(as_operator, "admin")
        .await
        .cut("CommandStream with an operator's certificate");
    logged_after(
        &server,
        since,
        &["agents: ", "ApplicationVerificationFailure"],
    );
    let ack = report(
        endpoint(&server.url(), Some(&ca), Some(&agent)),
        batch(("files-1", "files-1", 1, 1), "cpu_percent", 2.0),
    )
    .await
    .ok("Report with the agent's certificate");
    assert_eq!(ack.code, pb::AckCode::Ok as i32, "{ack:?}");
    // Of the three batches sent, the two with an agent's certificate were
    // stored, under that certificate's name.
    assert!(server.host("admin").is_none());
    assert_eq!(server.samples("files-1", "10m").len(), 1);
    assert_eq!(server.samples("anon-1", "10m").len(), 1);
}

/// Waits for an agent that must stop for good: exit code 78 (the units'
/// `RestartPreventExitStatus=`), its last words naming `reason`.
#[track_caller]
fn stops_for_good(agent: &mut Proc, what: &str, reason: &str) {
    let status = agent.wait_exit(Duration::from_secs(30));
    let log = agent.stderr.dump();
    assert_eq!(status.code(), Some(78), "{what}: {status}\n{log}");
    assert!(log.contains(reason), "{what}: no {reason:?} in\n{log}");
}

/// A join token enrols once; a reused, expired, unknown or other host's
/// token stops the agent (exit 78) after one try, naming why; the spent
/// token left in the environment is recognised at the next start.
#[test]
fn a_join_token_enrols_once_and_each_refusal_stops_the_agent_with_its_reason() {
    let dir = TempDir::new("enrol");
    let server = Server::start(&dir.join("m.db"));
    let agent = |host: &str, token: &str, state: &str| {
        AgentCmd::new(&server.url(), host)
            .env("MONITOR_JOIN", token)
            .env("MONITOR_STATE_DIR", dir.join(state))
    };
    let stored = |host: &str| server.host(host).map_or(0, |h| h.batches_stored_total);

    let used = server.token("en-1");
    let mut first = agent("en-1", &used, "first").spawn();
    wait_for("en-1 to report", Duration::from_secs(30), || {
        (stored("en-1") > 0).then_some(())
    });

    // Four tokens the server refuses, each for its own reason: the one
    // just used, one that expired, one it never made, and one for another
    // host (relabelled, so the agent's own check lets it through).
    let expired = server
        .ctl_ok(&["enrol", "en-2", "--ttl", "1s"])
        .trim()
        .to_owned();
    let unknown = {
        let mut t = JoinToken::decode(&server.token("en-3")).unwrap();
        t.secret = [7; monitor::join::SECRET_BYTES];
        t.encode().unwrap()
    };
    let other_host = {
        let mut t = JoinToken::decode(&server.token("en-4")).unwrap();
        t.hostname = "en-5".into();
        t.encode().unwrap()
    };
    let expiry = JoinToken::decode(&expired).unwrap().expires_unix_ms;
    wait_for("the 1 s token to expire", Duration::from_secs(10), || {
        (monitor::time::now_unix_ms() > expiry).then_some(())
    });
    let cases = [
        ("en-1", used.as_str(), "join token already used at"),
        ("en-2", expired.as_str(), "join token expired at"),
        ("en-3", unknown.as_str(), "unknown join token"),
        (
            "en-5",
            other_host.as_str(),
            "join token is for host 'en-4', not this one",
        ),
    ];
    let mut refused: Vec<(&str, &str, Proc)> = cases
        .iter()
        .map(|&(host, token, reason)| (host, reason, agent(host, token, host).spawn()))
        .collect();
    for (host, reason, proc) in &mut refused {
        stops_for_good(proc, host, &format!("the server refused: {reason}"));
        // It asked once, then stopped: no retry loop.
        assert_eq!(
            proc.stderr.count(&format!("enrolling as '{host}'")),
            1,
            "{}",
            proc.stderr.dump()
        );
        let asked = format!("enrolment as '{host}' refused");
        wait_for(
            &format!("the server's {asked:?}"),
            Duration::from_secs(10),
            || server.proc.stderr.contains(&asked).then_some(()),
        );
        assert_eq!(server.proc.stderr.count(&asked), 1);
        assert!(!dir.join(host).join("identity.pem").exists());
    }

    // A token for another host: the agent sees it itself and never asks.
    let mut mismatch = agent("en-7", &server.token("en-6"), "en-7").spawn();
    stops_for_good(
        &mut mismatch,
        "en-7",
        "the join token is for host 'en-6', but this agent reports as 'en-7'",
    );
    assert!(!mismatch.stderr.contains("enrolling as"));
    assert!(!server.proc.stderr.contains("enrolment as 'en-7'"));
    // Neither a token nor an identity.
    let mut bare = AgentCmd::new(&server.url(), "en-8")
        .env("MONITOR_STATE_DIR", dir.join("en-8"))
        .spawn();
    stops_for_good(&mut bare, "en-8", "this agent is not enrolled");

    // The first agent restarts with its spent token still in the
    // environment: recognised as its own, not spent again.
    first.signal("TERM");
    assert!(first.wait_exit(Duration::from_secs(30)).success());
    let before = stored("en-1");
    let again = agent("en-1", &used, "first").spawn();
    wait_for("en-1 to report again", Duration::from_secs(30), || {
        (stored("en-1") >= before + 5).then_some(())
    });
    assert!(
        !again.stderr.contains("enrolling as"),
        "{}",
        again.stderr.dump()
    );
    let enrolments = server
        .proc
        .stderr
        .lines()
        .iter()
        .filter(|l| l.contains("en-1 (") && l.contains(") enrolled:"))
        .count();
    assert_eq!(enrolments, 1);
    assert_eq!(server.proc.stderr.count("enrolment as 'en-1' refused"), 1);
}

/// The boot id and highest stored seq of `agent_id`'s latest run, read
/// from the server's database (on SQLite as of its host's latest merge).
fn latest_run(db: &Path, agent_id: &str) -> Option<(u64, u64)> {
    if let Some(url) = postgres_for(db) {
        let pg = pg::Postgres::shared("latest_run")?;
        let line = pg.psql(
            &url,
            &format!(
                "SELECT boot_id, high_seq FROM agent_runs WHERE agent_id = '{agent_id}'
                 ORDER BY run_id DESC LIMIT 1"
            ),
        );
        let (boot, seq) = line.trim().split_once('|')?;
        // The store keeps the u64 bit patterns in i64s.
        return Some((
            boot.parse::<i64>().ok()? as u64,
            seq.parse::<i64>().ok()? as u64,
        ));
    }
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .ok()?;
    c.query_row(
        "SELECT boot_id, high_seq FROM agent_runs WHERE agent_id = ?1 \
         ORDER BY run_id DESC LIMIT 1",
        [agent_id],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
    )
    .ok()
    // The store keeps the u64 bit patterns in i64s.
    .map(|(boot, seq)| (boot as u64, seq as u64))
}

/// An agent command over the fake /proc and /sys of `host`.
fn over(cmd: AgentCmd, host: &FakeHost) -> AgentCmd {
    cmd.arg("--proc-root")
        .arg(host.proc_root())
        .arg("--sys-root")
        .arg(host.sys_root())
}

/// Identity comes from the certificate: an agent enrolled as pi-a cannot
/// report as pi-b nor take pi-b's command stream while pi-b runs, and a
/// raw client with pi-a's certificate can neither name pi-b in a batch nor
/// claim pi-b's sequence numbers.
#[test]
fn an_agent_cannot_write_as_another_host_nor_take_its_commands() {
    let dir = TempDir::new("identity");
    // Merged often (on SQLite), so the test can read pi-b's run from the
    // database.
    let server = Server::start_opts(
        &dir.join("m.db"),
        "127.0.0.1:0",
        &[],
        &[("MONITOR_TEST_MERGE_INTERVAL_MS", "200")],
        None,
    );
    // Every mem_percent stored says whose batch it was: pi-b's memory is
    // 25 % used (FakeMem's default), the impostor's 87.5 %.
    let pi_b_host = FakeHost::new();
    let mut impostor_host = FakeHost::new();
    impostor_host.set_mem(FakeMem {
        mem_available_kib: Some(131_072),
        ..FakeMem::default()
    });
    let mem_of = |host: &str| -> Vec<f64> {
        server
            .samples(host, "10m")
            .into_iter()
            .filter(|s| s.metric == "mem_percent")
            .map(|s| s.value)
            .collect()
    };
    let stored = |host: &str| server.host(host).map_or(0, |h| h.batches_stored_total);
    // Its agent id is its hostname (the default); the impostor's says
    // "impostor", so `info` tells them apart.
    let mut pi_b = over(server.agent("pi-b"), &pi_b_host).spawn();
    wait_for("pi-b to report", Duration::from_secs(30), || {
        (!mem_of("pi-b").is_empty()).then_some(())
    });

    // pi-a's agent (enrolled as pi-a) started as pi-b, while pi-b runs:
    // pi-b's commands keep being answered by pi-b while it is refused
    // again and again.
    let pi_a_state = server.enrol_ahead("pi-a");
    let mut impostor = over(
        AgentCmd::with_identity(&server.url(), "pi-b", &pi_a_state)
            .env("MONITOR_AGENT_ID", "impostor"),
        &impostor_host,
    )
    .spawn();
    let mut answered = 0;
    wait_for(
        "the impostor refused three times while pi-b answers five commands",
        Duration::from_secs(60),
        || {
            let out = server.ctl(&["exec", "--host", "pi-b", "--", "info"]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("agent_id: pi-b\n"),
                "pi-b's info: {}\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            answered += 1;
            // One line per refused session, from whichever stream the
            // server refused first.
            let refusals = impostor.stderr.count("names 'pi-b'");
            (answered >= 5 && refusals >= 3).then_some(())
        },
    );
    assert!(
        impostor
            .stderr
            .contains("this agent's certificate is for 'pi-a' but it reports as 'pi-b'"),
        "{}",
        impostor.stderr.dump()
    );
    assert!(impostor.is_running(), "a refused session is retried");
    let mem = mem_of("pi-b");
    assert!(!mem.is_empty());
    assert!(
        mem.iter().all(|v| (v - 25.0).abs() < 1e-9),
        "a sample of the impostor's was stored under pi-b: {mem:?}"
    );
    assert!(server.host("pi-a").is_none(), "nothing stored as pi-a");
    assert!(server.host("pi-b").unwrap().online);

    // A raw client with pi-a's certificate: a batch naming pi-b ends its
    // stream.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let channel = server.channel("pi-a").await;
        report_on(channel, batch(("pi-b", "pi-b", 1, 1), "mem_percent", 87.5))
            .await
            .refused("a batch naming pi-b on pi-a's certificate")
    });
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.message(),
        "this agent's certificate is for 'pi-a', the batch names 'pi-b'"
    );

    // Batches of pi-a's carrying pi-b's agent id and run: one with a
    // sequence number far ahead (the furthest the wire contract takes),
    // then the next 300 of pi-b's (a minute of its batches). Stored as
    // pi-a's own; pi-b's next batches are still stored, not taken for
    // re-sends of these.
    let (boot_id, high_seq) = wait_for("pi-b's run in the file", Duration::from_secs(20), || {
        latest_run(&server.db, "pi-b")
    });
    let now = monitor::time::now_unix_ms();
    let claims: Vec<pb::Batch> = std::iter::once(monitor::wire::MAX_SEQ)
        .chain(high_seq + 1..=high_seq + 300)
        .enumerate()
        .map(|(i, seq)| {
            let mut b = batch(("pi-a", "pi-b", boot_id, seq), "mem_percent", 87.5);
            // One tick each, a millisecond apart.
            b.samples[0].time_unix_ms = now - i as i64;
            b.sent_unix_ms = now;
            b
        })
        .collect();
    let acks = rt.block_on(async {
        let channel = server.channel("pi-a").await;
        report_all(channel, claims)
            .await
            .ok("pi-a's batches with pi-b's run")
    });
    assert!(
        acks.iter().all(|a| a.code == pb::AckCode::Ok as i32),
        "{acks:?}"
    );
    let after = stored("pi-b");
    wait_for(
        "pi-b's next batches to be stored",
        Duration::from_secs(30),
        || (stored("pi-b") >= after + 10).then_some(()),
    );
    assert_eq!(stored("pi-a"), 301);
    assert_eq!(latest_run(&server.db, "pi-b").unwrap().0, boot_id);

    // Every batch counted for pi-b is one of pi-b's ticks.
    drop(impostor);
    pi_b.signal("TERM");
    assert!(pi_b.wait_exit(Duration::from_secs(30)).success());
    let times: BTreeSet<String> = server
        .samples("pi-b", "10m")
        .into_iter()
        .map(|s| s.time)
        .collect();
    assert_eq!(
        server.host("pi-b").unwrap().batches_stored_total,
        times.len() as u64
    );
    assert!(mem_of("pi-b").iter().all(|v| (v - 25.0).abs() < 1e-9));
}

/// The number of batches the agent's latest connection-failure line says
/// it holds.
fn buffered(agent: &Proc) -> Option<u64> {
    let lines = agent.stderr.lines();
    let line = lines
        .iter()
        .rev()
        .find(|l| l.contains(" batches buffered"))?;
    let before = &line[..line.find(" batches buffered")?];
    before.rsplit('(').next()?.parse().ok()
}

/// A server with another CA where the agent connects (a man in the
/// middle) gets no batch and cannot command it; the agent says why and
/// keeps its batches, which reach the real server once it is back.
#[test]
fn a_server_with_another_ca_gets_nothing_and_the_real_one_gets_every_batch_once() {
    let dir_a = TempDir::new("mitm-a");
    let dir_b = TempDir::new("mitm-b");
    let db_a = dir_a.join("m.db");
    let mut a = Server::start(&db_a);
    let addr = a.agents_addr.to_string();
    let mut agent = a.agent("mitm-1").spawn();
    wait_for("mitm-1 to report", Duration::from_secs(30), || {
        a.host("mitm-1")
            .filter(|h| h.batches_stored_total >= 3)
            .map(|_| ())
    });
    let ca_a = ca_pem(&a);

    // A stops; B, a server with a CA of its own, takes its address.
    a.proc.signal("TERM");
    assert!(a.proc.wait_exit(Duration::from_secs(30)).success());
    let outage_from_ms = monitor::time::now_unix_ms();
    let mut b = Server::start_with(&dir_b.join("m.db"), &addr, &[]);
    let b_up = Instant::now();
    assert_ne!(ca_pem(&b), ca_a);
    wait_for(
        "the agent to refuse B's certificate twice",
        Duration::from_secs(30),
        || {
            (agent
                .stderr
                .count_after("invalid peer certificate: UnknownIssuer", b_up)
                >= 2)
                .then_some(())
        },
    );

    // B learnt nothing: not even the host's name reached it (no report
    // stream, no hello), nothing is stored, and it cannot command it.
    assert!(
        !b.proc.stderr.contains("mitm-1"),
        "{}",
        b.proc.stderr.dump()
    );
    assert!(
        b.proc.stderr.contains("received fatal alert: UnknownCA"),
        "B's log does not show the agent refusing its certificate:\n{}",
        b.proc.stderr.dump()
    );
    assert!(b.host("mitm-1").is_none());
    assert!(b.samples("mitm-1", "1h").is_empty());
    let out = b.ctl(&["exec", "--host", "mitm-1", "--", "info"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mitm-1: unreachable: unknown host"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The agent kept its batches.
    let held = buffered(&agent).unwrap_or(0);
    assert!(held > 0, "{}", agent.stderr.dump());

    // A comes back on its address: the batches held arrive, once each.
    b.proc.signal("TERM");
    assert!(b.proc.wait_exit(Duration::from_secs(30)).success());
    let a = Server::start_with(&db_a, &addr, &[]);
    let outage_to_ms = monitor::time::now_unix_ms();
    let after_outage = monitor::time::Rfc3339(outage_to_ms).to_string();
    wait_for(
        "the held batches to reach A",
        Duration::from_secs(60),
        || {
            a.samples("mitm-1", "1h")
                .iter()
                .any(|s| s.time > after_outage)
                .then_some(())
        },
    );
    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(30)).success());
    let samples = a.samples("mitm-1", "1h");
    let keys: BTreeSet<(String, String)> = samples
        .iter()
        .map(|s| (s.time.clone(), s.metric.clone()))
        .collect();
    assert_eq!(keys.len(), samples.len(), "a sample stored twice");
    let times: BTreeSet<&str> = samples.iter().map(|s| s.time.as_str()).collect();
    let from = monitor::time::Rfc3339(outage_from_ms).to_string();
    let during = times
        .iter()
        .filter(|t| **t > from.as_str() && **t < after_outage.as_str())
        .count();
    // The agent ticks every 200 ms: at least half of the outage's ticks
    // (the rest is slack for a busy machine).
    let expected = ((outage_to_ms - outage_from_ms) / 200 / 2) as usize;
    assert!(
        during >= expected.max(1),
        "{during} ticks stored from the outage, expected at least {expected}"
    );
    let h = a.host("mitm-1").unwrap();
    assert_eq!(h.batches_stored_total, times.len() as u64);
    assert_eq!(h.dropped_batches_total, 0);
}

/// `monitorctl revoke` closes the agent's streams within a second; it
/// cannot reconnect, not even restarted with its old token; a new token
/// lets it back.
#[test]
fn a_revoked_agent_is_cut_off_within_a_second_and_only_a_new_token_lets_it_back() {
    let dir = TempDir::new("revoke");
    let server = Server::start(&dir.join("m.db"));
    let host = "rv-1";
    let state = server.agent_state_dir(host);
    let start = |token: &str| {
        AgentCmd::new(&server.url(), host)
            .env("MONITOR_JOIN", token)
            .env("MONITOR_STATE_DIR", &state)
            .spawn()
    };
    let stored = || server.host(host).map_or(0, |h| h.batches_stored_total);
    let first_token = server.token(host);
    let agent = start(&first_token);
    wait_for("rv-1 online and reporting", Duration::from_secs(30), || {
        server
            .host(host)
            .filter(|h| h.online && h.batches_stored_total > 0)
            .map(|_| ())
    });

    let revoked_at = Instant::now();
    let out = server.ctl_ok(&["revoke", host]);
    assert!(
        out.contains("revoked 1 certificates of rv-1; its streams were closed"),
        "{out}"
    );
    let offline_after = wait_for("rv-1 offline", Duration::from_secs(10), || {
        server
            .host(host)
            .filter(|h| !h.online)
            .map(|_| revoked_at.elapsed())
    });
    let closed = wait_for("the server's offline line", Duration::from_secs(10), || {
        server
            .proc
            .stderr
            .first_after("rv-1 is offline", revoked_at)
    }) - revoked_at;
    // Measured here at about 50 ms (streams closed) and 70 ms (offline in
    // `hosts`, two monitorctl runs included).
    assert!(
        closed <= Duration::from_secs(1),
        "rv-1's streams closed {closed:?} after the revoke command"
    );
    assert!(
        offline_after <= Duration::from_secs(1),
        "rv-1 still online {offline_after:?} after the revoke command"
    );
    wait_for("the agent to log why", Duration::from_secs(10), || {
        agent
            .stderr
            .contains("this agent's certificate was revoked")
            .then_some(())
    });

    // It cannot come back: the server refuses its handshakes, nothing more
    // is stored.
    let after_revocation = stored();
    let refused = |since: Instant| {
        server
            .proc
            .stderr
            .count_after("invalid peer certificate: Revoked", since)
    };
    wait_for("two refused reconnections", Duration::from_secs(30), || {
        (refused(revoked_at) >= 2).then_some(())
    });
    assert_eq!(stored(), after_revocation);
    assert!(!server.host(host).unwrap().online);

    // Restarted with its spent token: still out, and the token is not
    // tried again.
    drop(agent);
    let since = Instant::now();
    let agent = start(&first_token);
    wait_for("two refused connections", Duration::from_secs(30), || {
        (refused(since) >= 2).then_some(())
    });
    assert!(
        !agent.stderr.contains("enrolling as"),
        "{}",
        agent.stderr.dump()
    );
    assert_eq!(stored(), after_revocation);

    // A new token enrols it again.
    drop(agent);
    let agent = start(&server.token(host));
    wait_for("rv-1 back", Duration::from_secs(30), || {
        server
            .host(host)
            .filter(|h| h.online && h.batches_stored_total > after_revocation)
            .map(|_| ())
    });
    assert!(agent.stderr.contains("enrolling as 'rv-1'"));
}

/// How long `host` stayed offline each time the server's log says it went
/// offline: until the server logged a new stream of it (`None`: not back).
fn offline_spells(log: &Log, host: &str) -> Vec<Option<Duration>> {
    let lines = log.timed();
    let offline = format!("{host} is offline");
    let stream = format!("{host} (");
    lines
        .iter()
        .enumerate()
        .filter(|(_, (_, l))| l.contains(&offline))
        .map(|(i, (went, _))| {
            lines[i + 1..]
                .iter()
                .find(|(_, l)| {
                    l.contains(&stream)
                        && (l.contains(") reporting") || l.contains(") command stream open"))
                })
                .map(|(back, _)| *back - *went)
        })
        .collect()
}

/// With 6 s certificates the agent renews before each expires and keeps
/// reporting past twice the lifetime; its new certificate opens a fresh
/// connection after the first one expired.
#[test]
fn an_agent_renews_its_certificate_before_it_expires_and_keeps_reporting() {
    const LIFETIME: Duration = Duration::from_secs(6);
    let dir = TempDir::new("renew");
    let db = dir.join("m.db");
    let extra = ["--agent-cert-lifetime", "6s"];
    let mut server = Server::start_with(&db, "127.0.0.1:0", &extra);
    let agent = server.agent("rn-1").spawn();
    let identity = server.agent_state_dir("rn-1").join("identity.pem");
    let first = wait_for("the agent's identity", Duration::from_secs(30), || {
        std::fs::read_to_string(&identity).ok()
    });
    let enrolled = Instant::now();
    let first = Credential::decode(&first).unwrap();
    let not_after = |c: &Credential| -> i64 {
        c.fact("not_after_unix_ms")
            .and_then(|v| v.parse().ok())
            .unwrap()
    };

    // Past twice the lifetime, with at least two renewals.
    wait_for("twice the lifetime and two renewals", LIFETIME * 4, || {
        (enrolled.elapsed() > LIFETIME * 2 + Duration::from_secs(1)
            && server.proc.stderr.count("rn-1: certificate renewed") >= 2)
            .then_some(())
    });
    // Without interruption: each renewal ends a session (the next one
    // presents the new certificate), and each time the host was back
    // within 3 s.
    let spells = offline_spells(&server.proc.stderr, "rn-1");
    assert!(spells.len() >= 2, "{spells:?}");
    assert!(
        spells
            .iter()
            .all(|s| s.is_some_and(|d| d < Duration::from_secs(3))),
        "offline spells of rn-1: {spells:?}\n{}",
        agent.stderr.dump()
    );
    // And batches keep arriving.
    let stored = server.host("rn-1").unwrap().batches_stored_total;
    wait_for("more batches of rn-1", Duration::from_secs(10), || {
        (server.host("rn-1")?.batches_stored_total >= stored + 5).then_some(())
    });
    let now = monitor::time::now_unix_ms();
    assert!(not_after(&first) < now, "the first certificate has expired");
    let current = Credential::decode(&read(&identity)).unwrap();
    assert!(
        current.cert_der != first.cert_der,
        "identity.pem still holds the first certificate"
    );
    assert!(
        current.key_pkcs8_der != first.key_pkcs8_der,
        "a renewal makes a new key"
    );
    assert!(not_after(&current) > now);
    assert_mode(&identity, 0o600);
    assert!(server.proc.stderr.count("rn-1: certificate renewed") >= 2);
    assert!(agent.stderr.count("certificate renewed") >= 2);

    // A fresh handshake with what the agent holds now: the server restarts
    // in place and the agent gets back in.
    let addr = server.agents_addr.to_string();
    let before = server.host("rn-1").unwrap().batches_stored_total;
    server.proc.signal("TERM");
    assert!(server.proc.wait_exit(Duration::from_secs(30)).success());
    let server = Server::start_with(&db, &addr, &extra);
    wait_for(
        "rn-1 back after the restart",
        Duration::from_secs(30),
        || {
            server
                .host("rn-1")
                .filter(|h| h.online && h.batches_stored_total > before)
                .map(|_| ())
        },
    );
}

/// `program` run as the user nobody (through setpriv or runuser), when
/// this test runs as root and either tool exists.
fn as_nobody(program: &Path) -> Option<Command> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").ok()?.uid() != 0 {
        return None;
    }
    fn found(names: &[&'static str]) -> Option<&'static Path> {
        names.iter().map(|n| Path::new(*n)).find(|p| p.exists())
    }
    if let Some(setpriv) = found(&["/usr/bin/setpriv", "/bin/setpriv"]) {
        let mut cmd = Command::new(setpriv);
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(program);
        return Some(cmd);
    }
    let runuser = found(&["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"])?;
    let mut cmd = Command::new(runuser);
    cmd.args(["-u", "nobody", "--"]).arg(program);
    Some(cmd)
}

/// Runs `cmd` with only HOME (set to `home`) in its environment: no
/// MONITOR_* variable of the test's reaches it.
fn run_bare(mut cmd: Command, home: &Path) -> std::process::Output {
    cmd.env_clear()
        .env("HOME", home)
        .stdin(Stdio::null())
        .output()
        .expect("run monitorctl")
}

/// The stderr of a finished monitorctl (or python) run, after checking its
/// exit code.
#[track_caller]
fn stderr_of(out: &std::process::Output, code: i32, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: {}\n{err}",
        out.status
    );
    err
}

/// monitorctl needs a credential it can read: none (exit 3, naming where
/// it looked) or another user's (permission) gets nothing; `operator add`
/// writes a working 0600 credential, history names who ran each command,
/// `operator remove` shuts the credential out at once.
#[test]
fn operators_need_a_credential_of_their_own_and_history_names_them() {
    let dir = TempDir::new("operators");
    let server = Server::start(&dir.join("m.db"));
    let _agent = server.agent("op-1").spawn();
    wait_for("op-1 online", Duration::from_secs(30), || {
        server.host("op-1").filter(|h| h.online).map(|_| ())
    });
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let ctl = bin("monitorctl");

    // No credential anywhere: exit 3, naming every place it looked.
    let system_credential = Path::new("/var/lib/monitor-server/tls/admin.cred");
    let looked = format!(
        "no operator credential (looked for {}, {})",
        home.join(".config/monitor/credentials").display(),
        system_credential.display()
    );
    if system_credential.exists() {
        println!(
            "skipped: the no-credential check ({} exists on this machine)",
            system_credential.display()
        );
    } else {
        let mut cmd = Command::new(&ctl);
        cmd.arg("hosts");
        let err = stderr_of(&run_bare(cmd, &home), 3, "monitorctl without a credential");
        assert!(err.contains(&looked), "{err}");
    }

    // Another local user, with every directory on the way open to it: the
    // credential's own mode (0600, root's) keeps it out.
    let credential = server.credentials();
    assert_mode(&credential, 0o600);
    match as_nobody(&ctl) {
        None => println!(
            "skipped: running monitorctl as another user needs root and setpriv or runuser"
        ),
        Some(mut cmd) => {
            let tls = server.dir().join("tls");
            for d in [dir.path(), &tls] {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).unwrap();
            }
            cmd.arg("--credentials").arg(&credential).arg("hosts");
            let err = stderr_of(&run_bare(cmd, &home), 3, "nobody with admin.cred");
            assert!(
                err.contains(&format!(
                    "cannot read {}: Permission denied",
                    credential.display()
                )) && err.contains("only its owner"),
                "{err}"
            );
            let mut cmd = as_nobody(&ctl).unwrap();
            cmd.arg("hosts");
            if !system_credential.exists() {
                let err = stderr_of(&run_bare(cmd, &home), 3, "nobody without a credential");
                assert!(err.contains(&looked), "{err}");
            }
            for d in [dir.path(), &tls] {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
            }
        }
    }

    // An operator of her own: a 0600 credential that also names the
    // server, so she needs nothing else.
    let alice = dir.join("alice.cred");
    let out = server.ctl_ok(&["operator", "add", "alice", "--out", alice.to_str().unwrap()]);
    assert!(
        out.contains("operator alice: credential written to"),
        "{out}"
    );
    assert_mode(&alice, 0o600);
    let as_alice = |args: &[&str]| {
        let mut cmd = Command::new(&ctl);
        cmd.arg("--credentials").arg(&alice).args(args);
        run_bare(cmd, &home)
    };
    let out = as_alice(&["hosts"]);
    stderr_of(&out, 0, "alice: hosts");
    assert!(String::from_utf8_lossy(&out.stdout).contains("op-1"));

    // Commands are recorded under whoever ran them.
    let out = as_alice(&["exec", "--host", "op-1", "--", "ping"]);
    stderr_of(&out, 0, "alice: exec ping");
    assert!(String::from_utf8_lossy(&out.stdout).contains("pong"));
    server.ctl_ok(&["exec", "--host", "op-1", "--", "info"]);
    let history = wait_for(
        "both commands in the history",
        Duration::from_secs(10),
        || {
            let h = server.ctl_ok(&["history", "--json"]);
            let ran = |argv: &str| h.lines().find(|l| l.contains(argv)).map(str::to_owned);
            Some((ran("\"argv\":[\"ping\"]")?, ran("\"argv\":[\"info\"]")?))
        },
    );
    assert!(history.0.contains("\"operator\":\"alice\""), "{history:?}");
    assert!(history.1.contains("\"operator\":\"admin\""), "{history:?}");
    let list = server.ctl_ok(&["operator", "list"]);
    let line = |list: &str| {
        list.lines()
            .find(|l| l.starts_with("alice "))
            .map(str::to_owned)
    };
    assert!(line(&list).is_some_and(|l| l.ends_with("active")), "{list}");

    // Removed: her credential stops working at once; the local operator's
    // still works.
    let out = server.ctl_ok(&["operator", "remove", "alice"]);
    assert!(
        out.contains("operator alice removed: 1 certificates revoked"),
        "{out}"
    );
    let err = stderr_of(&as_alice(&["hosts"]), 3, "alice after her removal");
    assert!(!err.is_empty());
    let list = server.ctl_ok(&["operator", "list"]);
    assert!(
        line(&list).is_some_and(|l| l.ends_with("removed")),
        "{list}"
    );
    server.ctl_ok(&["hosts"]);
}

/// Under umask 000 every secret file is still 0600 and every secret
/// directory 0700: the database and its WAL, the CA and server keys, the
/// operator credentials, the agent's identity and monitorctl's key files.
#[test]
fn secret_files_are_private_whatever_the_umask() {
    let dir = TempDir::new("umask");
    let db = dir.join("m.db");
    // SQLite only on any MONITOR_TEST_DB: the database file and its WAL
    // are among the files whose modes are checked.
    let server = Server::start_wrapped(
        common::sqlite_only(&db),
        "127.0.0.1:0",
        &[],
        &[],
        None,
        |cmd| under_umask(&cmd, "000"),
    );
    let _agent = server.agent("um-1").umask("000").spawn();
    wait_for("um-1 to report", Duration::from_secs(30), || {
        (!server.samples("um-1", "10m").is_empty()).then_some(())
    });
    // monitorctl's secrets too, under the same umask.
    let files = dir.join("files");
    let bob = dir.join("bob.cred");
    for args in [
        vec!["enrol", "um-2", "--files", files.to_str().unwrap()],
        vec!["operator", "add", "bob", "--out", bob.to_str().unwrap()],
    ] {
        let out = under_umask(&server.ctl_command(), "000")
            .args(&args)
            .output()
            .unwrap();
        stderr_of(&out, 0, &format!("monitorctl {args:?}"));
    }

    let tls = server.dir().join("tls");
    let state = server.agent_state_dir("um-1");
    let wal = dir.join("m.db-wal");
    assert!(wal.exists(), "the database runs in WAL mode");
    let mut expected = vec![
        (db.clone(), 0o600),
        (wal, 0o600),
        (tls.clone(), 0o700),
        (tls.join("ca.key"), 0o600),
        (tls.join("server.key"), 0o600),
        (tls.join("admin.cred"), 0o600),
        (state.clone(), 0o700),
        (state.join("identity.pem"), 0o600),
        (files.clone(), 0o700),
        (files.join("um-2.key"), 0o600),
        (bob, 0o600),
    ];
    let shm = dir.join("m.db-shm");
    if shm.exists() {
        expected.push((shm, 0o600));
    }
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(path, want)| mode(path) != *want)
        .map(|(path, want)| format!("{} is {:o}, not {want:o}", path.display(), mode(path)))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// docs/examples/python_client.py (grpcio) reports with the files of
/// `monitorctl enrol HOST --files DIR`, and only as HOST.
#[test]
fn the_python_example_client_reports_with_the_files_of_enrol() {
    let has_grpc = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_grpc {
        println!(
            "skipped: python client test needs python3 grpcio grpcio-tools (pip install grpcio grpcio-tools)"
        );
        return;
    }
    let dir = TempDir::new("python");
    let server = Server::start(&dir.join("m.db"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/python_client.py");
    let address = format!("127.0.0.1:{}", server.agents_addr.port());
    let client = |host: &str, files: &Path| {
        Command::new("python3")
            .arg(&script)
            .args(["--server", &address, "--hostname", host, "--files"])
            .arg(files)
            .args(["--metric", "mem_percent", "--value", "42.5"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let files = dir.join("py-1");
    server.ctl_ok(&["enrol", "py-1", "--files", files.to_str().unwrap()]);
    let out = client("py-1", &files);
    stderr_of(&out, 0, "python_client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("ack: seq=1 code=ACK_CODE_OK"),
        "{stdout}"
    );
    let samples = server.samples("py-1", "10m");
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert_eq!(
        (samples[0].metric.as_str(), samples[0].value),
        ("mem_percent", 42.5)
    );

    // The same key and certificate under another host's name: refused.
    let renamed = dir.join("py-2");
    std::fs::create_dir_all(&renamed).unwrap();
    for (from, to) in [
        ("py-1.key", "py-2.key"),
        ("py-1.pem", "py-2.pem"),
        ("ca.pem", "ca.pem"),
    ] {
        std::fs::copy(files.join(from), renamed.join(to)).unwrap();
    }
    let err = stderr_of(&client("py-2", &renamed), 1, "python_client.py as py-2");
    assert!(
        err.contains(
            "PERMISSION_DENIED: this agent's certificate is for 'py-1', the batch names 'py-2'"
        ),
        "{err}"
    );
    assert!(server.host("py-2").is_none());
}
