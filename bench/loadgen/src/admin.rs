//! The few operator-API calls the benchmarks need: who is online, what the
//! server says it stored, and one command's round trip, timed.
//!
//! Talks only to the server's admin listener given by the caller; never
//! changes anything on the server beyond running `ping` and `true`.
//! Commands other than `ping`/`info` go out signed, as monitorctl sends
//! them, with a key made for this process (the command benchmark runs
//! against an `--insecure` server, which checks only the signature; the
//! simulated agents check nothing). Against a TLS server the connection
//! presents the operator credential given.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use monitor::command::GrantTargets;
use monitor::credential::Credential;
use monitor::pb;
use monitor::pb::admin_client::AdminClient;
use monitor::pb::exec_event::Kind as EventKind;
use monitor::signing::SigningKey;
use tonic::transport::{Channel, Endpoint};

/// A page of ListHosts is at most a few MB (and older servers answered
/// 10,000+ hosts in one message); tonic's default limit is 4.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// Hosts asked for per ListHosts page (the server's largest).
const PAGE_SIZE: u32 = 2000;

pub type Admin = AdminClient<Channel>;

/// Connects to the operator API at `url`, presenting `credential` (an
/// `https://` URL) or nothing (`http://`, a server run with `--insecure`).
pub async fn connect(url: &str, credential: Option<&Credential>) -> Result<Admin, String> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("admin URL '{url}': {e}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    if let Some(c) = credential {
        endpoint = endpoint
            .tls_config(crate::tls::operator_tls(c))
            .map_err(|e| format!("TLS settings for {url}: {e}"))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to the operator API at {url}: {e}"))?;
    Ok(AdminClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES))
}

/// Every host the server knows, page after page.
pub async fn all_hosts(admin: &mut Admin) -> Result<Vec<pb::HostInfo>, String> {
    let mut hosts = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_hosts(pb::ListHostsRequest {
                page_size: PAGE_SIZE,
                page_token: token.clone(),
            })
            .await
            .map_err(|s| format!("ListHosts: {}: {}", s.code(), s.message()))?
            .into_inner();
        hosts.extend(page.hosts);
        // Tokens move forward (they are hostnames); one that does not
        // would loop forever.
        if page.next_page_token.is_empty() || page.next_page_token <= token {
            return Ok(hosts);
        }
        token = page.next_page_token;
    }
}

/// Hosts whose name starts with `prefix`: (online, batches stored in total).
pub async fn fleet_view(admin: &mut Admin, prefix: &str) -> Result<(usize, u64), String> {
    let hosts = all_hosts(admin).await?;
    let ours = hosts.iter().filter(|h| h.hostname.starts_with(prefix));
    let (mut online, mut stored) = (0, 0);
    for h in ours {
        online += usize::from(h.online);
        stored += h.batches_stored_total;
    }
    Ok((online, stored))
}

/// Polls until `n` hosts with `prefix` are online or `deadline` passes;
/// returns how many are.
pub async fn wait_online(
    admin: &mut Admin,
    prefix: &str,
    n: usize,
    deadline: Duration,
) -> Result<usize, String> {
    let until = Instant::now() + deadline;
    loop {
        let (online, _) = fleet_view(admin, prefix).await?;
        if online >= n || Instant::now() >= until {
            return Ok(online);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How one `Exec` went.
#[derive(Clone, Debug, Default)]
pub struct ExecTiming {
    /// Request sent → the stream's end (every host's final result back).
    pub total: Duration,
    /// Request sent → the first final result.
    pub first_result: Option<Duration>,
    /// Final results that were "exited 0".
    pub ok: usize,
    /// Final results of any other kind.
    pub failed: usize,
    /// Bytes of stdout received, over all hosts.
    pub stdout_bytes: usize,
    /// The first failure's description.
    pub first_failure: Option<String>,
}

/// This process's signing key.
fn signing_key() -> Result<&'static SigningKey, String> {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    if let Some(k) = KEY.get() {
        return Ok(k);
    }
    let key = SigningKey::generate().map_err(|e| format!("signing key: {e}"))?;
    Ok(KEY.get_or_init(|| key))
}

/// The signature `argv` needs on `hosts`/`all`, if any.
fn signature_for(
    hosts: &[String],
    all: bool,
    argv: &[String],
    timeout_ms: u32,
) -> Result<Option<pb::SignedCommand>, String> {
    if monitor::command::runs_unsigned(argv) {
        return Ok(None);
    }
    let targets = if all {
        GrantTargets::All
    } else {
        GrantTargets::Hosts(hosts.to_vec())
    };
    monitor::command::sign_grant(signing_key()?, "insecure", argv, timeout_ms, &targets)
        .map(Some)
        .map_err(|e| format!("signing {argv:?}: {e}"))
}

/// Runs `argv` on `hosts` (or every online host) and waits for every
/// result.
pub async fn exec(
    admin: &mut Admin,
    hosts: Vec<String>,
    all: bool,
    argv: &[&str],
) -> Result<ExecTiming, String> {
    let argv: Vec<String> = argv.iter().map(|&a| a.to_owned()).collect();
    let timeout_ms = 10_000;
    let signed = signature_for(&hosts, all, &argv, timeout_ms)?;
    let started = Instant::now();
    let mut stream = admin
        .exec(pb::ExecRequest {
            hosts,
            all,
            argv,
            timeout_ms,
            signed,
        })
        .await
        .map_err(|s| format!("Exec: {}: {}", s.code(), s.message()))?
        .into_inner();
    let mut t = ExecTiming::default();
    loop {
        let event = stream
            .message()
            .await
            .map_err(|s| format!("Exec stream: {}: {}", s.code(), s.message()))?;
        let Some(event) = event else { break };
        match event.kind {
            Some(EventKind::Output(o)) => t.stdout_bytes += o.data.len(),
            Some(EventKind::Finished(f)) => {
                t.first_result.get_or_insert_with(|| started.elapsed());
                if f.outcome == pb::Outcome::Exited as i32 && f.exit_code == Some(0) {
                    t.ok += 1;
                } else {
                    t.failed += 1;
                    t.first_failure.get_or_insert_with(|| {
                        format!(
                            "{}: outcome {} exit {:?}: {}",
                            event.hostname, f.outcome, f.exit_code, f.message
                        )
                    });
                }
            }
            Some(EventKind::Started(_) | EventKind::Accepted(_) | EventKind::Rejected(_))
            | None => {}
        }
    }
    t.total = started.elapsed();
    Ok(t)
}
