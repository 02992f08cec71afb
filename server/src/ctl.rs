//! monitorctl, the operator's tool: look at hosts and samples, watch a live
//! table, run commands on agents, see what ran.
//!
//! It is a client of the server's operator API (`--server`, or
//! `MONITOR_ADMIN`, default `http://127.0.0.1:50052`). Exit codes: 0 on
//! success, 1 when the operation failed (unknown host or metric, a command
//! that failed on some host), 2 for a usage error, 3 when the server cannot
//! be reached.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use argh::FromArgs;
use monitor::metric::Metric;
use monitor::pb;
use monitor::pb::admin_client::AdminClient;
use monitor::time::{Rfc3339, format_duration_short, now_unix_ms};
use tonic::transport::Channel;

pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:50052";

/// The operator's tool for monitor: hosts, samples, a live table, and
/// commands on agents.
#[derive(FromArgs, Debug)]
pub struct Args {
    /// operator API of the server (MONITOR_ADMIN; default
    /// http://127.0.0.1:50052)
    #[argh(option)]
    pub server: Option<String>,
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Hosts(HostsArgs),
    Query(QueryArgs),
    Top(TopArgs),
    Exec(ExecArgs),
    Cancel(CancelArgs),
    History(HistoryArgs),
}

/// every known host: online or offline, last seen, latest value of each metric
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "hosts")]
pub struct HostsArgs {
    /// one JSON object per host per line
    #[argh(switch)]
    pub json: bool,
}

/// stored samples of one host, oldest first
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "query")]
pub struct QueryArgs {
    /// the host
    #[argh(positional)]
    pub host: String,
    /// only this metric (cpu_percent, mem_percent, disk_read_kbps,
    /// disk_write_kbps, net_in_kbps, net_out_kbps)
    #[argh(option)]
    pub metric: Option<String>,
    /// how far back, e.g. 10m, 2h, 7d (default 1h)
    #[argh(option)]
    pub since: Option<String>,
    /// at most this many samples (the newest are cut)
    #[argh(option)]
    pub limit: Option<u64>,
    /// one JSON object per sample per line: time, hostname, metric, value
    #[argh(switch)]
    pub json: bool,
}

/// a live, refreshing table of every host
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "top")]
pub struct TopArgs {
    /// refresh period (default 2s)
    #[argh(option)]
    pub interval: Option<String>,
    /// print one table and exit
    #[argh(switch)]
    pub once: bool,
}

/// run a command on hosts: monitorctl exec --host H [--host H2] | --all [--timeout S] -- CMD [ARGS...]
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "exec")]
pub struct ExecArgs {
    /// a target host (repeatable)
    #[argh(option)]
    pub host: Vec<String>,
    /// every online host
    #[argh(switch)]
    pub all: bool,
    /// seconds before the agent kills the command (default 30)
    #[argh(option)]
    pub timeout: Option<String>,
    /// the command: a built-in (ping, info, set-interval S, collect-now) or
    /// a name from the agents' allowlist, then its arguments
    #[argh(positional, greedy)]
    pub argv: Vec<String>,
}

/// cancel a running command on every host it runs on
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "cancel")]
pub struct CancelArgs {
    /// the command id that exec printed
    #[argh(positional)]
    pub id: String,
}

/// commands sent, newest first, with each host's outcome
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "history")]
pub struct HistoryArgs {
    /// only this host
    #[argh(option)]
    pub host: Option<String>,
    /// at most this many rows (default 50)
    #[argh(option)]
    pub limit: Option<u64>,
    /// one JSON object per row per line
    #[argh(switch)]
    pub json: bool,
}

/// How monitorctl ends.
#[derive(Debug)]
pub enum CtlError {
    /// Bad arguments: exit 2.
    Usage(String),
    /// The server cannot be reached: exit 3.
    Connect(String),
    /// The operation failed: exit 1.
    Failed(String),
    /// Already reported (e.g. per-host failures printed): exit 1.
    Reported,
    /// Stdout was closed by the reader (`monitorctl ... | head`): exit 0.
    StdoutClosed,
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => 2,
            CtlError::Connect(_) => 3,
            CtlError::Failed(_) | CtlError::Reported => 1,
            CtlError::StdoutClosed => 0,
        }
    }
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtlError::Usage(m) | CtlError::Connect(m) | CtlError::Failed(m) => f.write_str(m),
            CtlError::Reported => f.write_str("failed"),
            CtlError::StdoutClosed => f.write_str("stdout closed"),
        }
    }
}

fn from_status(s: tonic::Status) -> CtlError {
    match s.code() {
        tonic::Code::Unavailable => {
            CtlError::Connect(format!("server unavailable: {}", s.message()))
        }
        tonic::Code::InvalidArgument => CtlError::Usage(s.message().to_owned()),
        _ => CtlError::Failed(s.message().to_owned()),
    }
}

async fn connect(url: &str) -> Result<AdminClient<Channel>, CtlError> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|_| {
            CtlError::Usage(format!(
                "--server: expected a URL like {DEFAULT_ADMIN}, got '{url}'"
            ))
        })?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        let mut msg = format!("cannot reach the server at {url}: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let _ = write!(msg, ": {s}");
            source = s.source();
        }
        CtlError::Connect(msg)
    })?;
    Ok(AdminClient::new(channel).max_decoding_message_size(64 << 20))
}

/// Runs one monitorctl invocation.
pub async fn run(args: Args, env: &dyn Fn(&str) -> Option<String>) -> Result<(), CtlError> {
    let url = args
        .server
        .or_else(|| env("MONITOR_ADMIN").filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_ADMIN.to_owned());
    let url = if url.contains("://") {
        url
    } else {
        format!("http://{url}")
    };
    // Check what can be checked before touching the network.
    match &args.command {
        Command::Exec(e) => {
            if e.argv.is_empty() {
                return Err(CtlError::Usage(
                    "exec: name a command after --, e.g. monitorctl exec --all -- ping".into(),
                ));
            }
            if e.all != e.host.is_empty() {
                return Err(CtlError::Usage(
                    "exec: name hosts with --host, or use --all (not both)".into(),
                ));
            }
            exec_timeout_ms(e)?;
        }
        Command::Query(q) => {
            if let Some(m) = &q.metric {
                m.parse::<Metric>()
                    .map_err(|e| CtlError::Usage(format!("--metric: {e}")))?;
            }
        }
        _ => {}
    }
    let mut client = connect(&url).await?;
    match args.command {
        Command::Hosts(a) => hosts(&mut client, a.json).await,
        Command::Query(a) => query(&mut client, a).await,
        Command::Top(a) => top(&mut client, a).await,
        Command::Exec(a) => exec(&mut client, a).await,
        Command::Cancel(a) => cancel(&mut client, a).await,
        Command::History(a) => history(&mut client, a).await,
    }
}

/// Writes a JSON string literal.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_num(out: &mut String, v: f64) {
    if v.is_finite() {
        let _ = write!(out, "{v}");
    } else {
        out.push_str("null");
    }
}

fn print_out(text: &str) -> Result<(), CtlError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        // A closed pipe (monitorctl ... | head) ends the output quietly.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CtlError::StdoutClosed),
        Err(e) => Err(CtlError::Failed(format!("stdout: {e}"))),
    }
}

fn ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".into();
    }
    let d = Duration::from_millis(now_ms.saturating_sub(then_ms).max(0) as u64);
    format!("{} ago", format_duration_short(d))
}

fn latest_of(h: &pb::HostInfo, m: Metric) -> Option<f64> {
    h.latest
        .iter()
        .find(|v| v.metric == m.name())
        .map(|v| v.value)
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into())
}

/// The hosts table that `hosts` and `top` print.
pub fn hosts_table(resp: &pb::ListHostsResponse) -> String {
    let now = resp.server_unix_ms;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<7} {:>10} {:>6} {:>6} {:>17} {:>17} {:>8} {:>8}",
        "HOST",
        "STATE",
        "LAST SEEN",
        "CPU%",
        "MEM%",
        "DISK R/W KiB/s",
        "NET IN/OUT KiB/s",
        "CLOCK",
        "DROPPED"
    );
    for h in &resp.hosts {
        let disk = format!(
            "{}/{}",
            fmt_opt(latest_of(h, Metric::DiskReadKbps)),
            fmt_opt(latest_of(h, Metric::DiskWriteKbps))
        );
        let net = format!(
            "{}/{}",
            fmt_opt(latest_of(h, Metric::NetInKbps)),
            fmt_opt(latest_of(h, Metric::NetOutKbps))
        );
        let clock = format!("{:+.1}s", h.clock_offset_ms as f64 / 1000.0);
        let _ = writeln!(
            out,
            "{:<20} {:<7} {:>10} {:>6} {:>6} {:>17} {:>17} {:>8} {:>8}",
            h.hostname,
            if h.online { "online" } else { "offline" },
            ago(now, h.last_seen_unix_ms),
            fmt_opt(latest_of(h, Metric::CpuPercent)),
            fmt_opt(latest_of(h, Metric::MemPercent)),
            disk,
            net,
            clock,
            h.dropped_batches_total
        );
    }
    out
}

async fn hosts(client: &mut AdminClient<Channel>, json: bool) -> Result<(), CtlError> {
    let resp = client
        .list_hosts(pb::ListHostsRequest {})
        .await
        .map_err(from_status)?
        .into_inner();
    if !json {
        if resp.hosts.is_empty() {
            eprintln!("no host has reported yet");
            return Ok(());
        }
        return print_out(&hosts_table(&resp));
    }
    let mut out = String::new();
    for h in &resp.hosts {
        out.push_str("{\"hostname\":");
        json_str(&mut out, &h.hostname);
        let _ = write!(out, ",\"online\":{}", h.online);
        out.push_str(",\"agent_id\":");
        json_str(&mut out, &h.agent_id);
        out.push_str(",\"agent_version\":");
        json_str(&mut out, &h.agent_version);
        out.push_str(",\"peer\":");
        json_str(&mut out, &h.peer);
        out.push_str(",\"last_seen\":");
        if h.last_seen_unix_ms > 0 {
            json_str(&mut out, &Rfc3339(h.last_seen_unix_ms).to_string());
        } else {
            out.push_str("null");
        }
        let _ = write!(
            out,
            ",\"clock_offset_ms\":{},\"dropped_batches_total\":{},\"batches_stored_total\":{},\"parse_errors_total\":{},\"interval_ms\":{}",
            h.clock_offset_ms,
            h.dropped_batches_total,
            h.batches_stored_total,
            h.parse_errors_total,
            h.interval_ms
        );
        out.push_str(",\"latest\":{");
        for (i, v) in h.latest.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_str(&mut out, &v.metric);
            out.push(':');
            json_num(&mut out, v.value);
        }
        out.push_str("}}\n");
    }
    print_out(&out)
}

async fn query(client: &mut AdminClient<Channel>, a: QueryArgs) -> Result<(), CtlError> {
    let since = match &a.since {
        Some(s) => monitor::time::parse_duration(s)
            .map_err(|e| CtlError::Usage(format!("--since: {e}")))?,
        None => Duration::from_secs(3600),
    };
    let since_unix_ms = now_unix_ms().saturating_sub(since.as_millis() as i64);
    let mut stream = client
        .query(pb::QueryRequest {
            hostname: a.host.clone(),
            metric: a.metric.clone().unwrap_or_default(),
            since_unix_ms,
            until_unix_ms: 0,
            limit: a.limit.unwrap_or(0),
        })
        .await
        .map_err(from_status)?
        .into_inner();
    let mut out = String::with_capacity(64 * 1024);
    if !a.json {
        let _ = writeln!(
            out,
            "{:<24} {:<20} {:<16} {:>12}",
            "TIME", "HOST", "METRIC", "VALUE"
        );
    }
    let mut count = 0usize;
    while let Some(chunk) = stream.message().await.map_err(from_status)? {
        for s in &chunk.samples {
            count += 1;
            if a.json {
                let _ = write!(
                    out,
                    "{{\"time\":\"{}\",\"hostname\":",
                    Rfc3339(s.time_unix_ms)
                );
                json_str(&mut out, &s.hostname);
                out.push_str(",\"metric\":");
                json_str(&mut out, &s.metric);
                out.push_str(",\"value\":");
                json_num(&mut out, s.value);
                out.push_str("}\n");
            } else {
                let _ = writeln!(
                    out,
                    "{:<24} {:<20} {:<16} {:>12.3}",
                    Rfc3339(s.time_unix_ms).to_string(),
                    s.hostname,
                    s.metric,
                    s.value
                );
            }
        }
        print_out(&out)?;
        out.clear();
    }
    if count == 0 && !a.json {
        eprintln!(
            "no samples for {} in the last {}",
            a.host,
            format_duration_short(since)
        );
    }
    Ok(())
}

async fn top(client: &mut AdminClient<Channel>, a: TopArgs) -> Result<(), CtlError> {
    let every = match &a.interval {
        Some(s) => match monitor::time::parse_duration(s) {
            Ok(d) if d >= Duration::from_millis(200) => d,
            _ => {
                return Err(CtlError::Usage(format!(
                    "--interval: expected a duration of at least 200ms, got '{s}'"
                )));
            }
        },
        None => Duration::from_secs(2),
    };
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let resp = client
            .list_hosts(pb::ListHostsRequest {})
            .await
            .map_err(from_status)?
            .into_inner();
        let online = resp.hosts.iter().filter(|h| h.online).count();
        let mut frame = String::new();
        if !a.once {
            // Home the cursor and clear the screen.
            frame.push_str("\x1b[H\x1b[2J");
        }
        let _ = writeln!(
            frame,
            "monitor — {} — {} hosts, {} online (refresh {}, Ctrl-C to quit)\n",
            Rfc3339(resp.server_unix_ms),
            resp.hosts.len(),
            online,
            format_duration_short(every)
        );
        frame.push_str(&hosts_table(&resp));
        print_out(&frame)?;
        if a.once {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

fn outcome_text(f: &pb::Finished) -> (bool, String) {
    let outcome = pb::Outcome::try_from(f.outcome).unwrap_or(pb::Outcome::Unspecified);
    let took = format_duration_short(Duration::from_millis(f.duration_ms));
    let mut extra = String::new();
    if f.stdout_truncated || f.stderr_truncated {
        let _ = write!(
            extra,
            " (output truncated: {} bytes stdout, {} bytes stderr)",
            f.stdout_bytes, f.stderr_bytes
        );
    }
    match outcome {
        pb::Outcome::Exited => match (f.exit_code, f.signal) {
            (Some(0), _) => (true, format!("exit 0 in {took}{extra}")),
            (Some(code), _) => (false, format!("exit {code} in {took}{extra}")),
            (None, Some(sig)) => (false, format!("killed by signal {sig} after {took}{extra}")),
            (None, None) => (false, format!("ended in {took}{extra}")),
        },
        pb::Outcome::TimedOut => (false, format!("timed out after {took}, killed{extra}")),
        pb::Outcome::Cancelled => (false, format!("cancelled after {took}{extra}")),
        pb::Outcome::FailedToStart => (false, format!("failed to start: {}", f.message)),
        pb::Outcome::Rejected => (false, format!("rejected: {}", f.message)),
        pb::Outcome::LostConnection => (false, format!("lost connection: {}", f.message)),
        pb::Outcome::Unreachable => (false, format!("unreachable: {}", f.message)),
        pb::Outcome::Unspecified => (false, format!("unknown outcome: {}", f.message)),
    }
}

/// Splits output into lines prefixed with the host; keeps a partial last
/// line until more comes or the command ends.
#[derive(Default)]
struct LineBuffers {
    partial: HashMap<(String, i32), Vec<u8>>,
}

impl LineBuffers {
    fn push(&mut self, host: &str, stream: i32, data: &[u8]) -> String {
        let buf = self.partial.entry((host.to_owned(), stream)).or_default();
        buf.extend_from_slice(data);
        let mut out = String::new();
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let _ = write!(out, "{host}: {}", String::from_utf8_lossy(&line));
        }
        out
    }

    fn flush(&mut self, host: &str) -> (String, String) {
        let mut outs = (String::new(), String::new());
        for (stream, out) in [(1, &mut outs.0), (2, &mut outs.1)] {
            if let Some(buf) = self.partial.remove(&(host.to_owned(), stream))
                && !buf.is_empty()
            {
                let _ = writeln!(out, "{host}: {}", String::from_utf8_lossy(&buf));
            }
        }
        outs
    }
}

/// The `--timeout` of exec in milliseconds (0: the server's default).
fn exec_timeout_ms(a: &ExecArgs) -> Result<u32, CtlError> {
    match &a.timeout {
        Some(s) => match monitor::time::parse_duration(s) {
            Ok(d) if d >= Duration::from_millis(1) && d <= monitor::command::MAX_TIMEOUT => {
                Ok(d.as_millis() as u32)
            }
            _ => Err(CtlError::Usage(format!(
                "--timeout: expected seconds from 0.001 to 86400, got '{s}'"
            ))),
        },
        None => Ok(0),
    }
}

async fn exec(client: &mut AdminClient<Channel>, a: ExecArgs) -> Result<(), CtlError> {
    let timeout_ms = exec_timeout_ms(&a)?;
    let response = client
        .exec(pb::ExecRequest {
            hosts: a.host.clone(),
            all: a.all,
            argv: a.argv.clone(),
            timeout_ms,
        })
        .await
        .map_err(from_status)?;
    let mut id = String::new();
    let mut stream = response.into_inner();
    let mut lines = LineBuffers::default();
    let mut results: Vec<(String, bool, String)> = Vec::new();
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut cancelled = false;
    loop {
        let event = tokio::select! {
            ev = stream.message() => ev.map_err(from_status)?,
            _ = &mut ctrl_c => {
                if cancelled {
                    return Err(CtlError::Failed("interrupted".into()));
                }
                cancelled = true;
                eprintln!("cancelling {id} (Ctrl-C again to quit at once)");
                let _ = client.cancel(pb::CancelRequest { command_id: id.clone() }).await;
                ctrl_c.set(tokio::signal::ctrl_c());
                continue;
            }
        };
        let Some(ev) = event else { break };
        match ev.kind {
            Some(pb::exec_event::Kind::Started(_)) => {
                id = ev.command_id;
                eprintln!("command {id}");
            }
            Some(pb::exec_event::Kind::Output(o)) => {
                let text = lines.push(&ev.hostname, o.stream, &o.data);
                if o.stream == pb::OutputStream::Stderr as i32 {
                    eprint!("{text}");
                } else {
                    print_out(&text)?;
                }
            }
            Some(pb::exec_event::Kind::Finished(f)) => {
                let (out, err) = lines.flush(&ev.hostname);
                print_out(&out)?;
                eprint!("{err}");
                let (ok, text) = outcome_text(&f);
                eprintln!("{}: {}", ev.hostname, text);
                results.push((ev.hostname, ok, text));
            }
            Some(pb::exec_event::Kind::Rejected(_) | pb::exec_event::Kind::Accepted(_)) | None => {}
        }
    }
    let failed = results.iter().filter(|(_, ok, _)| !ok).count();
    if results.len() > 1 {
        eprintln!(
            "{} hosts: {} ok, {} failed",
            results.len(),
            results.len() - failed,
            failed
        );
    }
    if failed > 0 || results.is_empty() {
        Err(CtlError::Reported)
    } else {
        Ok(())
    }
}

async fn cancel(client: &mut AdminClient<Channel>, a: CancelArgs) -> Result<(), CtlError> {
    let resp = client
        .cancel(pb::CancelRequest {
            command_id: a.id.clone(),
        })
        .await
        .map_err(from_status)?
        .into_inner();
    println!(
        "cancel of {} sent to {} hosts: {}",
        a.id,
        resp.hosts.len(),
        resp.hosts.join(", ")
    );
    Ok(())
}

async fn history(client: &mut AdminClient<Channel>, a: HistoryArgs) -> Result<(), CtlError> {
    let resp = client
        .history(pb::HistoryRequest {
            hostname: a.host.clone().unwrap_or_default(),
            limit: a.limit.unwrap_or(0),
        })
        .await
        .map_err(from_status)?
        .into_inner();
    let mut out = String::new();
    if a.json {
        for e in &resp.entries {
            out.push_str("{\"id\":");
            json_str(&mut out, &e.command_id);
            let _ = write!(
                out,
                ",\"time\":\"{}\",\"hostname\":",
                Rfc3339(e.time_unix_ms)
            );
            json_str(&mut out, &e.hostname);
            out.push_str(",\"argv\":[");
            for (i, arg) in e.argv.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_str(&mut out, arg);
            }
            out.push_str("],\"outcome\":");
            json_str(&mut out, outcome_name(e.outcome));
            out.push_str(",\"exit_code\":");
            match e.exit_code {
                Some(c) => {
                    let _ = write!(out, "{c}");
                }
                None => out.push_str("null"),
            }
            out.push_str(",\"signal\":");
            match e.signal {
                Some(c) => {
                    let _ = write!(out, "{c}");
                }
                None => out.push_str("null"),
            }
            let _ = write!(
                out,
                ",\"duration_ms\":{},\"stdout_bytes\":{},\"stderr_bytes\":{},\"message\":",
                e.duration_ms, e.stdout_bytes, e.stderr_bytes
            );
            json_str(&mut out, &e.message);
            out.push_str("}\n");
        }
        return print_out(&out);
    }
    let _ = writeln!(
        out,
        "{:<24} {:<32} {:<20} {:<16} {:>5} {:>8} {:>9}  COMMAND",
        "TIME", "ID", "HOST", "OUTCOME", "EXIT", "TOOK", "OUT BYTES"
    );
    for e in &resp.entries {
        let exit = match (e.exit_code, e.signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("sig{s}"),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<24} {:<32} {:<20} {:<16} {:>5} {:>8} {:>9}  {}",
            Rfc3339(e.time_unix_ms).to_string(),
            e.command_id,
            e.hostname,
            outcome_name(e.outcome),
            exit,
            format_duration_short(Duration::from_millis(e.duration_ms)),
            e.stdout_bytes + e.stderr_bytes,
            e.argv.join(" ")
        );
    }
    print_out(&out)
}

/// The outcome's name, "pending" while the host has not answered.
fn outcome_name(code: i32) -> &'static str {
    monitor::command::Outcome::from_pb(code).map_or("pending", |o| o.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_buffers_prefix_and_keep_partial_lines() {
        let mut b = LineBuffers::default();
        assert_eq!(b.push("h", 1, b"one\ntw"), "h: one\n");
        assert_eq!(b.push("h", 1, b"o\n"), "h: two\n");
        assert_eq!(b.push("h", 2, b"err"), "");
        assert_eq!(b.flush("h"), (String::new(), "h: err\n".to_owned()));
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\n\u{1}");
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn outcomes_read_well() {
        let f = pb::Finished {
            outcome: pb::Outcome::Exited as i32,
            exit_code: Some(3),
            duration_ms: 1500,
            ..Default::default()
        };
        assert_eq!(outcome_text(&f), (false, "exit 3 in 1s".to_owned()));
        let f = pb::Finished {
            outcome: pb::Outcome::Rejected as i32,
            message: "'rm' is not on the allowlist".into(),
            ..Default::default()
        };
        assert_eq!(
            outcome_text(&f),
            (false, "rejected: 'rm' is not on the allowlist".to_owned())
        );
    }
}
