//! `monitor-loadgen`: flags → validated settings → runtime → one of the
//! library's tools. Exit codes: 0 when the measurement ran (whether or not
//! a target was met: the figures say that), 1 when it could not run, 2 for
//! a usage error.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use monitor::credential::Credential;
use monitor_loadgen::capacity::{self, CapacityConfig};
use monitor_loadgen::cmdlat::{self, CommandsConfig};
use monitor_loadgen::procinfo::ProcSnapshot;
use monitor_loadgen::sim::FleetConfig;
use monitor_loadgen::storm::{self, StormConfig};
use monitor_loadgen::{Results, is_loopback_url, scrape, tls};

/// Benchmark tools for monitor (see BENCHMARKS.md). Loopback only.
#[derive(FromArgs, Debug)]
struct Args {
    #[argh(subcommand)]
    command: Sub,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Sub {
    Capacity(CapacityArgs),
    Reconnect(ReconnectArgs),
    Commands(CommandsArgs),
    Scrape(ScrapeArgs),
    Proc(ProcArgs),
}

/// grow a fleet of simulated agents step by step; find how many the server
/// holds with every sample stored and acknowledged
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "capacity")]
struct CapacityArgs {
    /// the server's agent listener, https://127.0.0.1:PORT (http:// for a
    /// server run with --insecure), or several replicas' separated by
    /// commas (each agent picks one as the agent does)
    #[argh(option)]
    server: String,
    /// the server's operator API, https://127.0.0.1:PORT (or http://)
    #[argh(option)]
    admin: String,
    /// operator credential (the server's tls/admin.cred) for https:// URLs;
    /// every simulated agent gets its own certificate through it
    #[argh(option)]
    credentials: Option<PathBuf>,
    /// the server's pid, to measure its CPU and memory (repeated for
    /// replicas: their sum)
    #[argh(option)]
    server_pid: Vec<u32>,
    /// fleet sizes, ascending (default 1000,2500,5000,7500,10000,12500,15000)
    #[argh(
        option,
        default = "String::from(\"1000,2500,5000,7500,10000,12500,15000\")"
    )]
    steps: String,
    /// seconds between batches per agent (default 1s)
    #[argh(option, default = "String::from(\"1s\")")]
    interval: String,
    /// wait after the step's agents connected (default 5s)
    #[argh(option, default = "String::from(\"5s\")")]
    warmup: String,
    /// measurement window per step (default 20s)
    #[argh(option, default = "String::from(\"20s\")")]
    hold: String,
    /// longest p99 ingest-to-durable latency a held step may have
    /// (default: the interval)
    #[argh(option)]
    max_p99: Option<String>,
    #[argh(option, default = "String::from(\"lg-\")")]
    /// hostname prefix of the simulated agents (default lg-)
    prefix: String,
    /// comma-separated loopback source addresses the agents bind to in
    /// turn (default: the kernel's choice)
    #[argh(option)]
    sources: Option<String>,
    /// connections set up at once (default 256)
    #[argh(option, default = "256")]
    connect_concurrency: usize,
    /// runtime worker threads (default 2)
    #[argh(option, default = "2")]
    threads: usize,
    /// send with every batch the health values of a Raspberry Pi with this
    /// many file systems (7 + MOUNTS values: temperature, throttling, load,
    /// uptime, swap, root inodes, fs_used_percent per mount; default: none)
    #[argh(option)]
    pi_health: Option<usize>,
    /// append key=value results to this file
    #[argh(option)]
    results: Option<PathBuf>,
}

/// connect a fleet that reconnects like the agent, print "ready:", then
/// measure how fast all are back once the caller restarted the server
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "reconnect")]
struct ReconnectArgs {
    /// the server's agent listener, https://127.0.0.1:PORT (or http://),
    /// or several replicas' separated by commas
    #[argh(option)]
    server: String,
    /// the server's operator API, https://127.0.0.1:PORT (or http://)
    #[argh(option)]
    admin: String,
    /// operator credential (the server's tls/admin.cred) for https:// URLs
    #[argh(option)]
    credentials: Option<PathBuf>,
    /// simulated agents (default 10000)
    #[argh(option, default = "10000")]
    agents: usize,
    /// seconds between batches per agent (default 1s)
    #[argh(option, default = "String::from(\"1s\")")]
    interval: String,
    /// how long to wait for the restart once ready (default 120s)
    #[argh(option, default = "String::from(\"120s\")")]
    restart_deadline: String,
    /// how long to wait for every agent to be back (default 300s)
    #[argh(option, default = "String::from(\"300s\")")]
    back_deadline: String,
    #[argh(option, default = "String::from(\"rc-\")")]
    /// hostname prefix of the simulated agents (default rc-)
    prefix: String,
    /// comma-separated loopback source addresses (default: the kernel's)
    #[argh(option)]
    sources: Option<String>,
    /// first connections set up at once (default 256)
    #[argh(option, default = "256")]
    connect_concurrency: usize,
    /// runtime worker threads (default 2)
    #[argh(option, default = "2")]
    threads: usize,
    /// append key=value results to this file
    #[argh(option)]
    results: Option<PathBuf>,
}

/// connect a fleet, then time ping/true round trips and fan-outs through
/// the operator API of a server run with --insecure
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "commands")]
struct CommandsArgs {
    /// the server's agent listener, http://127.0.0.1:PORT (the agents
    /// connect there)
    #[argh(option)]
    server: String,
    /// the server's operator API, http://127.0.0.1:PORT (the replica that
    /// holds the agents: local routing)
    #[argh(option)]
    admin: String,
    /// another replica's operator API, http://127.0.0.1:PORT: every call
    /// is timed through it too, alternating with --admin, so the command
    /// relay across replicas is compared with local routing in one run
    #[argh(option)]
    cross_admin: Option<String>,
    /// simulated agents connected while measuring (default 1000)
    #[argh(option, default = "1000")]
    agents: usize,
    /// round trips timed per command (default 1000)
    #[argh(option, default = "1000")]
    calls: usize,
    /// fan-outs to every agent (default 10)
    #[argh(option, default = "10")]
    fanouts: usize,
    /// seconds between batches per agent (default 1s)
    #[argh(option, default = "String::from(\"1s\")")]
    interval: String,
    #[argh(option, default = "String::from(\"cmd-\")")]
    /// hostname prefix of the simulated agents (default cmd-)
    prefix: String,
    /// comma-separated loopback source addresses (default: the kernel's)
    #[argh(option)]
    sources: Option<String>,
    /// monitorctl binary to time a few calls through
    #[argh(option)]
    monitorctl: Option<PathBuf>,
    /// calls through monitorctl (default 10)
    #[argh(option, default = "10")]
    monitorctl_calls: usize,
    /// runtime worker threads (default 2)
    #[argh(option, default = "2")]
    threads: usize,
    /// append key=value results to this file
    #[argh(option)]
    results: Option<PathBuf>,
}

/// scrape an exporter on loopback at a fixed pace, one line per scrape:
/// UNIX_MS BYTES
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "scrape")]
struct ScrapeArgs {
    /// the exporter, 127.0.0.1:PORT
    #[argh(option)]
    addr: SocketAddr,
    /// path to GET (default /metrics)
    #[argh(option, default = "String::from(\"/metrics\")")]
    path: String,
    /// time between scrapes (default 1s)
    #[argh(option, default = "String::from(\"1s\")")]
    interval: String,
    /// stop after this many scrapes (default: until killed)
    #[argh(option)]
    count: Option<u64>,
}

/// print a process's CPU, memory and threads as key=value, one line per pid
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "proc")]
struct ProcArgs {
    /// process ids
    #[argh(positional)]
    pids: Vec<u32>,
}

fn duration(flag: &str, value: &str) -> Result<Duration, String> {
    match monitor::time::parse_duration(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "--{flag}: expected a duration like 1s or 500ms, got '{value}'"
        )),
    }
}

/// A comma-separated list of [`loopback_url`]s (replicas).
fn loopback_urls(flag: &str, value: &str) -> Result<Vec<String>, String> {
    let urls = value
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| loopback_url(flag, u))
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err(format!(
            "--{flag}: expected at least one URL, got '{value}'"
        ));
    }
    Ok(urls)
}

fn loopback_url(flag: &str, value: &str) -> Result<String, String> {
    if is_loopback_url(value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "--{flag}: expected https://127.0.0.1:PORT or http://127.0.0.1:PORT (loopback only), \
             got '{value}'"
        ))
    }
}

/// The servers' URLs and the admin URL, as [`credential_for`] takes them.
fn urls<'a>(servers: &'a [String], admin: &'a str) -> Vec<&'a str> {
    servers
        .iter()
        .map(String::as_str)
        .chain(std::iter::once(admin))
        .collect()
}

/// The operator credential, which `https://` URLs need and `http://` ones
/// must not have (plain text is a server run with `--insecure`).
fn credential_for(urls: &[&str], path: Option<&Path>) -> Result<Option<Credential>, Failure> {
    let tls = urls.iter().filter(|u| u.starts_with("https://")).count();
    match (tls, path) {
        (0, None) => Ok(None),
        (0, Some(_)) => Err(Failure::Usage(
            "--credentials is for https:// URLs; these are http:// (a server run with --insecure)"
                .to_owned(),
        )),
        (n, Some(p)) if n == urls.len() => tls::read_credential(p).map(Some).map_err(Failure::Run),
        (n, None) if n == urls.len() => Err(Failure::Usage(
            "https:// URLs need --credentials FILE (the server's tls/admin.cred)".to_owned(),
        )),
        _ => Err(Failure::Usage(
            "--server and --admin must all be https:// or all http://".to_owned(),
        )),
    }
}

/// `--pi-health MOUNTS`: the 7 one-per-host health values and one per
/// mount must fit a batch's health samples.
fn pi_health(mounts: Option<usize>) -> Result<Option<usize>, String> {
    let most = monitor::wire::MAX_HEALTH_SAMPLES_PER_BATCH - 7;
    match mounts {
        Some(m) if m > most => Err(format!(
            "--pi-health: at most {most} file systems fit a batch, got {m}"
        )),
        other => Ok(other),
    }
}

fn sources(value: Option<&str>) -> Result<Vec<IpAddr>, String> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) if ip.is_loopback() => Ok(ip),
            _ => Err(format!(
                "--sources: expected loopback addresses like 127.0.0.2, got '{s}'"
            )),
        })
        .collect()
}

fn steps(value: &str) -> Result<Vec<usize>, String> {
    let steps: Vec<usize> = value
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("--steps: expected numbers like 1000,5000, got '{value}'"))?;
    if steps.is_empty() || steps.contains(&0) || !steps.is_sorted() {
        return Err(format!(
            "--steps: expected ascending numbers above 0, got '{value}'"
        ));
    }
    Ok(steps)
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn save(results: &Results, path: Option<&Path>) -> Result<(), String> {
    if let Some(p) = path {
        results
            .append_to(p)
            .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    Ok(())
}

/// Why `main` exits non-zero.
enum Failure {
    Usage(String),
    Run(String),
}

fn capacity_cmd(a: CapacityArgs) -> Result<(), Failure> {
    let interval = duration("interval", &a.interval).map_err(Failure::Usage)?;
    let max_p99 = match &a.max_p99 {
        Some(v) => duration("max-p99", v).map_err(Failure::Usage)?,
        None => interval,
    };
    let servers = loopback_urls("server", &a.server).map_err(Failure::Usage)?;
    let admin = loopback_url("admin", &a.admin).map_err(Failure::Usage)?;
    let credential = credential_for(&urls(&servers, &admin), a.credentials.as_deref())?;
    let config = CapacityConfig {
        fleet: FleetConfig {
            servers,
            interval,
            hostname_prefix: a.prefix,
            sources: sources(a.sources.as_deref()).map_err(Failure::Usage)?,
            connect_concurrency: a.connect_concurrency,
            tls: None,
            reconnect: false,
            pi_health_mounts: pi_health(a.pi_health).map_err(Failure::Usage)?,
        },
        admin,
        credential,
        server_pids: a.server_pid,
        steps: steps(&a.steps).map_err(Failure::Usage)?,
        warmup: duration("warmup", &a.warmup).map_err(Failure::Usage)?,
        hold: duration("hold", &a.hold).map_err(Failure::Usage)?,
        max_p99,
    };
    let rt = runtime(a.threads).map_err(Failure::Run)?;
    let result = rt.block_on(capacity::run(config)).map_err(Failure::Run)?;
    let mut r = Results::default();
    result.results(&mut r);
    println!(
        "held: {} agents (p99 within the limit); kept pace: {} agents; acknowledged {} batches, server stored {}; drained: {}",
        result.held().map_or(0, |s| s.agents),
        result.kept_pace().map_or(0, |s| s.agents),
        result.acked_total,
        result
            .stored_total
            .map_or_else(|| "?".to_owned(), |s| s.to_string()),
        result.drained
    );
    if let Some(e) = &result.first_error {
        println!("first error: {e}");
    }
    save(&r, a.results.as_deref()).map_err(Failure::Run)
}

fn reconnect_cmd(a: ReconnectArgs) -> Result<(), Failure> {
    let servers = loopback_urls("server", &a.server).map_err(Failure::Usage)?;
    let admin = loopback_url("admin", &a.admin).map_err(Failure::Usage)?;
    let credential = credential_for(&urls(&servers, &admin), a.credentials.as_deref())?;
    let config = StormConfig {
        fleet: FleetConfig {
            servers,
            interval: duration("interval", &a.interval).map_err(Failure::Usage)?,
            hostname_prefix: a.prefix,
            sources: sources(a.sources.as_deref()).map_err(Failure::Usage)?,
            connect_concurrency: a.connect_concurrency,
            tls: None,
            reconnect: true,
            pi_health_mounts: None,
        },
        admin,
        credential,
        agents: a.agents.max(1),
        restart_deadline: duration("restart-deadline", &a.restart_deadline)
            .map_err(Failure::Usage)?,
        back_deadline: duration("back-deadline", &a.back_deadline).map_err(Failure::Usage)?,
        ready: None,
    };
    let rt = runtime(a.threads).map_err(Failure::Run)?;
    let result = rt.block_on(storm::run(config)).map_err(Failure::Run)?;
    let mut r = Results::default();
    result.results(&mut r);
    for line in r.lines() {
        println!("{line}");
    }
    save(&r, a.results.as_deref()).map_err(Failure::Run)
}

fn commands_cmd(a: CommandsArgs) -> Result<(), Failure> {
    let server = loopback_url("server", &a.server).map_err(Failure::Usage)?;
    let admin = loopback_url("admin", &a.admin).map_err(Failure::Usage)?;
    let cross_admin = a
        .cross_admin
        .as_deref()
        .map(|u| loopback_url("cross-admin", u))
        .transpose()
        .map_err(Failure::Usage)?;
    if [Some(&server), Some(&admin), cross_admin.as_ref()]
        .into_iter()
        .flatten()
        .any(|u| u.starts_with("https://"))
    {
        return Err(Failure::Usage(
            "commands measures a server run with --insecure (http:// URLs): its signed commands \
             need no registered operator key there"
                .to_owned(),
        ));
    }
    let config = CommandsConfig {
        fleet: FleetConfig {
            servers: vec![server],
            interval: duration("interval", &a.interval).map_err(Failure::Usage)?,
            hostname_prefix: a.prefix,
            sources: sources(a.sources.as_deref()).map_err(Failure::Usage)?,
            connect_concurrency: 256,
            tls: None,
            reconnect: false,
            pi_health_mounts: None,
        },
        admin,
        cross_admin,
        agents: a.agents.max(1),
        calls: a.calls.max(1),
        fanouts: a.fanouts,
        monitorctl: a.monitorctl,
        monitorctl_calls: a.monitorctl_calls,
    };
    let rt = runtime(a.threads).map_err(Failure::Run)?;
    let result = rt.block_on(cmdlat::run(config)).map_err(Failure::Run)?;
    result.print();
    let mut r = Results::default();
    result.results(&mut r);
    save(&r, a.results.as_deref()).map_err(Failure::Run)
}

fn scrape_cmd(a: ScrapeArgs) -> Result<(), Failure> {
    if !a.addr.ip().is_loopback() {
        return Err(Failure::Usage(format!(
            "--addr: expected a loopback address, got '{}'",
            a.addr
        )));
    }
    let interval = duration("interval", &a.interval).map_err(Failure::Usage)?;
    let mut out = std::io::stdout().lock();
    let failed = scrape::run(a.addr, &a.path, interval, a.count, &mut out)
        .map_err(|e| Failure::Run(format!("stdout: {e}")))?;
    if failed > 0 {
        eprintln!("{failed} scrapes failed");
    }
    Ok(())
}

fn proc_cmd(a: ProcArgs) -> Result<(), Failure> {
    if a.pids.is_empty() {
        return Err(Failure::Usage("name at least one pid".to_owned()));
    }
    for pid in a.pids {
        let snap = ProcSnapshot::read(Path::new("/proc"), pid).map_err(|e| {
            let cause =
                std::error::Error::source(&e).map_or_else(String::new, |c| format!(": {c}"));
            Failure::Run(format!("{e}{cause}"))
        })?;
        println!("{}", snap.to_kv());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    let result = match args.command {
        Sub::Capacity(a) => capacity_cmd(a),
        Sub::Reconnect(a) => reconnect_cmd(a),
        Sub::Commands(a) => commands_cmd(a),
        Sub::Scrape(a) => scrape_cmd(a),
        Sub::Proc(a) => proc_cmd(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("monitor-loadgen: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Run(e)) => {
            eprintln!("monitor-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
