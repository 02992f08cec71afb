//! The real monitorctl against a fake operator API that sends what a
//! hostile or broken server could: escape sequences in hostnames, ids,
//! messages and output, a line of tens of MiB without a newline, a
//! character split across two chunks. Output must reach the terminal
//! escaped, in bounded pieces, and monitorctl's memory must not grow with
//! the line.

// Test support code panics on purpose when the harness cannot proceed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;
use std::time::Duration;

use monitor::pb;
use monitor::pb::admin_server::{Admin, AdminServer};
use monitor::pb::exec_event::Kind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

const EVIL_HOST: &str = "evil\x1b[2J";
const EVIL_HOST_SHOWN: &str = "evil\\x1b[2J";
const EVIL_ID: &str = "c1\x1b]0;owned\x07";
const CHUNK_BYTES: usize = 256 * 1024;
/// The line without a newline: far more than monitorctl may hold.
const LONG_LINE_BYTES: usize = 48 << 20;
/// What monitorctl may use at its peak (holding the line whole would take
/// more than `LONG_LINE_BYTES`).
const MAX_RSS_BYTES: u64 = 24 << 20;

/// Answers every call with hostile but well-formed messages.
struct Hostile;

fn output(data: Vec<u8>) -> Result<pb::ExecEvent, Status> {
    Ok(pb::ExecEvent {
        hostname: EVIL_HOST.into(),
        command_id: EVIL_ID.into(),
        kind: Some(Kind::Output(pb::Output {
            stream: pb::OutputStream::Stdout as i32,
            data,
        })),
    })
}

#[tonic::async_trait]
impl Admin for Hostile {
    type QueryStream = ReceiverStream<Result<pb::QueryChunk, Status>>;
    type ExecStream = ReceiverStream<Result<pb::ExecEvent, Status>>;

    async fn list_hosts(
        &self,
        _: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        Ok(Response::new(pb::ListHostsResponse {
            hosts: vec![pb::HostInfo {
                hostname: EVIL_HOST.into(),
                peer: "\x07".into(),
                online: true,
                ..Default::default()
            }],
            server_unix_ms: 1000,
            // A token that never moves forward: monitorctl must stop after
            // asking for it once, not page forever.
            next_page_token: EVIL_HOST.into(),
        }))
    }

    async fn query(
        &self,
        _: Request<pb::QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        Err(Status::not_found(format!("unknown host '{EVIL_HOST}'")))
    }

    async fn exec(
        &self,
        _: Request<pb::ExecRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let started = pb::ExecEvent {
                hostname: String::new(),
                command_id: EVIL_ID.into(),
                kind: Some(Kind::Started(pb::Started {
                    targets: vec![EVIL_HOST.into()],
                })),
            };
            tx.send(Ok(started)).await?;
            for _ in 0..LONG_LINE_BYTES / CHUNK_BYTES {
                tx.send(output(vec![b'x'; CHUNK_BYTES])).await?;
            }
            tx.send(output(b"\x1b]0;owned\x07 tail\nprice \xe2".to_vec()))
                .await?;
            tx.send(output(b"\x82\xac\n".to_vec())).await?;
            let finished = pb::ExecEvent {
                hostname: EVIL_HOST.into(),
                command_id: EVIL_ID.into(),
                kind: Some(Kind::Finished(pb::Finished {
                    outcome: pb::Outcome::Exited as i32,
                    exit_code: Some(0),
                    ..Default::default()
                })),
            };
            tx.send(Ok(finished)).await
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel(
        &self,
        _: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        Ok(Response::new(pb::CancelResponse {
            hosts: vec![EVIL_HOST.into()],
        }))
    }

    async fn history(
        &self,
        _: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        Err(Status::unavailable("\x1b[2Jgone"))
    }

    async fn dashboard_login(
        &self,
        _: Request<pb::DashboardLoginRequest>,
    ) -> Result<Response<pb::DashboardLoginResponse>, Status> {
        Ok(Response::new(pb::DashboardLoginResponse {
            url: format!("https://{EVIL_HOST}/login?token=x"),
            expires_unix_ms: 1,
        }))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(pb::StatusResponse {
            version: EVIL_HOST.into(),
            http_listen: EVIL_HOST.into(),
            remote_write: vec![pb::RemoteWriteStatus {
                url: EVIL_HOST.into(),
                ..Default::default()
            }],
            ..Default::default()
        }))
    }

    async fn create_join_token(
        &self,
        _: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token: format!("{EVIL_HOST}\n{}", "y".repeat(100_000)),
            expires_unix_ms: 0,
        }))
    }

    async fn issue_agent_certificate(
        &self,
        _: Request<pb::IssueCertificateRequest>,
    ) -> Result<Response<pb::IssuedCertificate>, Status> {
        Err(Status::permission_denied(EVIL_HOST))
    }

    async fn revoke(
        &self,
        _: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        Err(Status::permission_denied(EVIL_HOST))
    }

    async fn add_operator(
        &self,
        _: Request<pb::IssueCertificateRequest>,
    ) -> Result<Response<pb::IssuedCertificate>, Status> {
        Err(Status::permission_denied(EVIL_HOST))
    }

    async fn remove_operator(
        &self,
        _: Request<pb::RemoveOperatorRequest>,
    ) -> Result<Response<pb::RemoveOperatorResponse>, Status> {
        Err(Status::permission_denied(EVIL_HOST))
    }

    async fn register_signing_key(
        &self,
        _: Request<pb::RegisterSigningKeyRequest>,
    ) -> Result<Response<pb::RegisterSigningKeyResponse>, Status> {
        Err(Status::permission_denied(EVIL_HOST))
    }

    async fn list_operators(
        &self,
        _: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        Ok(Response::new(pb::ListOperatorsResponse {
            operators: vec![pb::OperatorInfo {
                name: EVIL_HOST.into(),
                ..Default::default()
            }],
        }))
    }
}

/// Serves [`Hostile`] on a loopback port; returns its URL.
async fn serve() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AdminServer::new(Hostile))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    format!("http://{addr}")
}

/// Runs monitorctl against `url`, killed if it takes longer than 120 s.
async fn ctl(url: &str, args: &[&str]) -> Output {
    // The fake API speaks plain text.
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_monitorctl"))
        .arg("--insecure")
        .arg("--server")
        .arg(url)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start monitorctl");
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("monitorctl finished in time")
        .expect("monitorctl output")
}

/// Peak resident memory of the largest child this process waited for.
fn children_max_rss_bytes() -> u64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    // Linux reports ru_maxrss in KiB.
    u64::try_from(usage.max_rss()).unwrap_or(0) * 1024
}

#[tokio::test]
async fn exec_output_is_escaped_bounded_and_whole() {
    let url = serve().await;
    let out = ctl(&url, &["exec", "--all", "--", "x"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!out.stdout.contains(&0x1b) && !out.stdout.contains(&0x07));
    assert!(!out.stderr.contains(&0x1b) && !out.stderr.contains(&0x07));
    assert!(
        stderr.contains("command c1\\x1b]0;owned\\x07\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{EVIL_HOST_SHOWN}: exit 0 in")),
        "{stderr}"
    );

    let stdout = String::from_utf8(out.stdout).expect("escaped output is UTF-8");
    let prefix = format!("{EVIL_HOST_SHOWN}: ");
    let lines: Vec<&str> = stdout
        .lines()
        .map(|l| l.strip_prefix(&prefix).expect("every line has its host"))
        .collect();
    let (last, rest) = lines.split_last().expect("lines");
    assert_eq!(*last, "price €", "a character split across chunks");
    let (escape, pieces) = rest.split_last().expect("lines");
    assert_eq!(*escape, "\\x1b]0;owned\\x07 tail");
    assert!(
        pieces
            .iter()
            .all(|p| p.len() <= 64 * 1024 && p.bytes().all(|b| b == b'x'))
    );
    assert_eq!(
        pieces.iter().map(|p| p.len()).sum::<usize>(),
        LONG_LINE_BYTES
    );

    let rss = children_max_rss_bytes();
    assert!(
        rss < MAX_RSS_BYTES,
        "monitorctl peaked at {} MiB for a {} MiB line",
        rss >> 20,
        LONG_LINE_BYTES >> 20
    );
}

#[tokio::test]
async fn tables_and_errors_show_server_strings_escaped() {
    let url = serve().await;
    let out = ctl(&url, &["hosts"]).await;
    assert_eq!(out.status.code(), Some(0));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains(&format!("\n{EVIL_HOST_SHOWN} ")), "{table}");
    assert!(!table.contains('\x1b'), "{table}");

    let out = ctl(&url, &["dashboard"]).await;
    assert_eq!(out.status.code(), Some(0));
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(line, format!("https://{EVIL_HOST_SHOWN}/login?token=x\n"));

    let out = ctl(&url, &["hosts", "--json"]).await;
    assert_eq!(out.status.code(), Some(0));
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        line.starts_with("{\"hostname\":\"evil\\u001b[2J\",\"online\":true,"),
        "{line}"
    );
    assert!(line.contains("\"peer\":\"\\u0007\""), "{line}");
    assert_eq!(
        line.lines().count(),
        2,
        "the first page and one more: {line}"
    );

    let out = ctl(&url, &["query", "pi"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr,
        format!("monitorctl: unknown host '{EVIL_HOST_SHOWN}'\n")
    );

    let out = ctl(&url, &["history"]).await;
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr, "monitorctl: server unavailable: \\x1b[2Jgone\n");

    let out = ctl(&url, &["status"]).await;
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("version           {EVIL_HOST_SHOWN}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("remote-write      {EVIL_HOST_SHOWN}: ")),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "{text}");
    let out = ctl(&url, &["status", "--json"]).await;
    assert_eq!(out.status.code(), Some(0));
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        line.starts_with("{\"version\":\"evil\\u001b[2J\","),
        "{line}"
    );
    assert!(!line.contains('\x1b'), "{line}");

    let out = ctl(&url, &["cancel", "c1"]).await;
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout,
        format!("cancel of c1 sent to 1 hosts: {EVIL_HOST_SHOWN}\n")
    );
}

#[tokio::test]
async fn trust_answers_are_escaped_and_capped() {
    let url = serve().await;
    let out = ctl(&url, &["enrol", "pi"]).await;
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    // One line: the newline the server slipped in is shown, not obeyed,
    // and the text stops at a token's largest size.
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with(&format!("{EVIL_HOST_SHOWN}\\nyyy")));
    assert!(stdout.len() < monitor::join::MAX_TOKEN_CHARS + 64);
    let out = ctl(&url, &["revoke", "pi"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stderr.contains(&0x1b));
    let out = ctl(&url, &["operator", "list"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(!out.stdout.contains(&0x1b));
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains(EVIL_HOST_SHOWN)
    );
}
