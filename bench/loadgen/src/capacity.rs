//! How many agents at a 1 s interval one server holds, every sample stored
//! and acknowledged.
//!
//! The fleet grows step by step (e.g. 1,000, 2,500, 5,000, 10,000 …). At
//! each step, once every agent is connected and a warm-up has passed, a
//! window of `hold` seconds is measured: batches sent and acknowledged per
//! second, ingest-to-durable latency (batch sent → ack received) p50/p99,
//! the server's CPU and resident memory (per connected agent: growth over
//! the empty server divided by agents), and the load generator's own CPU.
//! A step keeps pace when every agent stayed connected, no tick was
//! skipped, no batch failed, and the acknowledgements kept up: at least
//! 97 % of the expected rate over the window, and less than one interval's
//! worth of batches still in flight at its end. It is held when, on top of
//! that, p99 stayed within `max_p99` (normally the interval: each batch is
//! durable before the next is due). Both are reported, because a server
//! can store everything while its latency tail already says it is near
//! its limit. The search stops at the first step that does not keep pace.
//! At the end the fleet stops sending, waits for the last
//! acknowledgements, and compares what the agents saw acknowledged with
//! what the server says it stored.
//!
//! Against a TLS server (an operator credential given), every simulated
//! agent first gets its own certificate ([`crate::tls`]), before the first
//! step and outside every window; how long that took is reported.
//!
//! Bounded in time: every wait has a deadline. Only the loopback server the
//! caller names is contacted.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use monitor::credential::Credential;

use crate::procinfo::ProcSnapshot;
use crate::sim::{Counts, Fleet, FleetConfig};
use crate::tls::{self, Issuance};
use crate::{Results, admin, ms};

#[derive(Clone, Debug)]
pub struct CapacityConfig {
    pub fleet: FleetConfig,
    /// `http(s)://127.0.0.1:PORT` of the server's operator API.
    pub admin: String,
    /// The operator credential for a TLS server (`https://` URLs); `None`
    /// for a server run with `--insecure`.
    pub credential: Option<Credential>,
    /// The server's process (or the replicas' processes, summed), for its
    /// CPU and memory; empty: not measured.
    pub server_pids: Vec<u32>,
    /// Fleet sizes to try, ascending.
    pub steps: Vec<usize>,
    /// Time after the last agent connected before the window opens.
    pub warmup: Duration,
    /// Length of each measurement window.
    pub hold: Duration,
    /// Longest p99 ingest-to-durable latency a held step may have:
    /// normally the interval (a batch is durable before the next is due).
    pub max_p99: Duration,
}

/// The server's use of the machine over one window (with replicas, the
/// sum over their processes).
#[derive(Clone, Copy, Debug)]
pub struct ServerUse {
    /// Percent of one core.
    pub cpu_percent: f64,
    pub rss_kib: u64,
    /// (RSS now − RSS of the empty server) / agents.
    pub rss_per_agent_kib: f64,
    pub threads: u64,
}

/// One step's window.
#[derive(Clone, Debug)]
pub struct Step {
    pub agents: usize,
    pub connected: i64,
    pub window: Duration,
    pub sent_per_s: f64,
    pub acked_per_s: f64,
    pub samples_stored_per_s: f64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub max: Option<Duration>,
    pub server: Option<ServerUse>,
    /// Percent of one core.
    pub loadgen_cpu_percent: f64,
    pub loadgen_rss_kib: u64,
    /// `Ok` when the server kept pace; otherwise why not.
    pub pace: Result<(), String>,
    /// `Ok` when p99 stayed within the limit; otherwise by how much not.
    pub latency: Result<(), String>,
}

impl Step {
    /// Kept pace with p99 within the limit.
    pub fn held(&self) -> bool {
        self.pace.is_ok() && self.latency.is_ok()
    }
}

/// The whole search.
#[derive(Clone, Debug)]
pub struct Capacity {
    pub steps: Vec<Step>,
    /// Batches the agents saw acknowledged as stored, over the whole run.
    pub acked_total: u64,
    /// Batches the server reports stored for the fleet's hosts.
    pub stored_total: Option<u64>,
    /// Whether every sent batch was acknowledged before the end.
    pub drained: bool,
    pub first_error: Option<String>,
    /// The agents' certificates, with TLS.
    pub issuance: Option<Issuance>,
}

impl Capacity {
    /// The largest step held (kept pace, p99 within the limit).
    pub fn held(&self) -> Option<&Step> {
        self.steps.iter().rev().find(|s| s.held())
    }

    /// The largest step that kept pace, whatever its latency.
    pub fn kept_pace(&self) -> Option<&Step> {
        self.steps.iter().rev().find(|s| s.pace.is_ok())
    }
}

fn proc_snapshot(pid: u32) -> Option<ProcSnapshot> {
    ProcSnapshot::read(Path::new("/proc"), pid).ok()
}

/// Every server process's snapshot, or `None` if any cannot be read (or
/// there are none).
fn server_snapshots(pids: &[u32]) -> Option<Vec<ProcSnapshot>> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| proc_snapshot(p)).collect()
}

/// The servers' use over a window from `s0` to `s1` (same processes, same
/// order), memory per agent counted from `base`, the empty servers.
fn server_use(
    base: &[ProcSnapshot],
    s0: &[ProcSnapshot],
    s1: &[ProcSnapshot],
    agents: usize,
) -> ServerUse {
    let rss_kib: u64 = s1.iter().map(|s| s.status.rss_kib).sum();
    let base_kib: u64 = base.iter().map(|s| s.status.rss_kib).sum();
    ServerUse {
        cpu_percent: s1.iter().zip(s0).map(|(b, a)| b.cpu_percent_since(a)).sum(),
        rss_kib,
        rss_per_agent_kib: rss_kib.saturating_sub(base_kib) as f64 / agents.max(1) as f64,
        threads: s1.iter().map(|s| s.status.threads).sum(),
    }
}

/// Time allowed for a step's new agents to connect.
fn connect_deadline(new_agents: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(new_agents as u64 * 5)
}

fn judge_pace(
    agents: usize,
    interval: Duration,
    c: &Counts,
    d: &Counts,
    step: &Step,
) -> Result<(), String> {
    if step.connected < agents as i64 {
        return Err(format!("{} of {agents} connected", step.connected));
    }
    if d.connect_failures + d.stream_failures > 0 {
        return Err(format!(
            "{} connections failed, {} streams failed",
            d.connect_failures, d.stream_failures
        ));
    }
    if d.acks_failed > 0 {
        return Err(format!("{} batches not stored", d.acks_failed));
    }
    if d.ticks_skipped > 0 {
        return Err(format!(
            "{} ticks skipped: the server was not keeping up",
            d.ticks_skipped
        ));
    }
    // Acknowledgements come in commit-sized bursts, so a window's edges cut
    // a few hundred either way: judge the rate loosely and the backlog
    // strictly. A server that keeps up has less than one interval's worth
    // of batches in flight; one that does not piles up thousands a second.
    let expected = agents as f64 / interval.as_secs_f64();
    if step.acked_per_s < 0.97 * expected {
        return Err(format!(
            "{:.0} batches/s acknowledged of {expected:.0} expected ({} in flight)",
            step.acked_per_s, c.in_flight
        ));
    }
    if c.in_flight > agents as i64 {
        return Err(format!(
            "{} batches in flight at the end of the window: more than one interval behind",
            c.in_flight
        ));
    }
    Ok(())
}

fn judge_latency(max_p99: Duration, step: &Step) -> Result<(), String> {
    match step.p99 {
        Some(p99) if p99 <= max_p99 => Ok(()),
        Some(p99) => Err(format!(
            "p99 {} ms is longer than {} ms",
            ms(p99),
            ms(max_p99)
        )),
        None => Err("no acknowledgement in the window".to_owned()),
    }
}

/// Header of the table [`row`] prints.
pub fn header() -> String {
    format!(
        "{:>7} {:>7} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8}  verdict",
        "agents",
        "conn",
        "sent/s",
        "acked/s",
        "samples/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "srv cpu%",
        "srv MiB",
        "KiB/agent",
        "lg cpu%",
        "lg MiB"
    )
}

pub fn row(s: &Step) -> String {
    let opt_ms = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), ms);
    let mut line = format!(
        "{:>7} {:>7} {:>9.0} {:>9.0} {:>9.0} {:>8} {:>8} {:>8}",
        s.agents,
        s.connected,
        s.sent_per_s,
        s.acked_per_s,
        s.samples_stored_per_s,
        opt_ms(s.p50),
        opt_ms(s.p99),
        opt_ms(s.max)
    );
    match s.server {
        Some(u) => {
            let _ = write!(
                line,
                " {:>8.1} {:>8.1} {:>9.1}",
                u.cpu_percent,
                u.rss_kib as f64 / 1024.0,
                u.rss_per_agent_kib
            );
        }
        None => {
            let _ = write!(line, " {:>8} {:>8} {:>9}", "-", "-", "-");
        }
    }
    let _ = write!(
        line,
        " {:>8.1} {:>8.1}  {}",
        s.loadgen_cpu_percent,
        s.loadgen_rss_kib as f64 / 1024.0,
        match (&s.pace, &s.latency) {
            (Ok(()), Ok(())) => "held".to_owned(),
            (Ok(()), Err(why)) => format!("keeps pace, but {why}"),
            (Err(why), _) => format!("NOT keeping pace: {why}"),
        }
    );
    line
}

/// Runs the search; prints the table on stdout as it goes.
pub async fn run(config: CapacityConfig) -> Result<Capacity, String> {
    let mut admin = admin::connect(&config.admin, config.credential.as_ref()).await?;
    let mut fleet_config = config.fleet.clone();
    let most = config.steps.iter().copied().max().unwrap_or(0);
    let issuance =
        tls::prepare_fleet(&admin, config.credential.as_ref(), &mut fleet_config, most).await?;
    let mut fleet = Fleet::new(fleet_config).map_err(|e| e.to_string())?;
    let me = std::process::id();
    let server_base = server_snapshots(&config.server_pids);
    if !config.server_pids.is_empty() && server_base.is_none() {
        return Err(format!(
            "cannot read /proc of the server pids {:?}: is every server running?",
            config.server_pids
        ));
    }
    let interval = config.fleet.interval;
    println!("{}", header());
    let mut steps = Vec::new();
    for &agents in &config.steps {
        let new_agents = agents.saturating_sub(fleet.len());
        let connected = fleet.grow_to(agents, connect_deadline(new_agents)).await;
        tokio::time::sleep(config.warmup).await;
        let stats = fleet.stats();
        let c0 = stats.counts();
        let server0 = server_snapshots(&config.server_pids);
        let me0 = proc_snapshot(me);
        let _ = stats.ack_latency.take();
        tokio::time::sleep(config.hold).await;
        let c1 = stats.counts();
        let latency = stats.ack_latency.take();
        let server1 = server_snapshots(&config.server_pids);
        let me1 = proc_snapshot(me);
        let window = match (&me0, &me1) {
            (Some(a), Some(b)) => b.at.duration_since(a.at),
            _ => config.hold,
        };
        let secs = window.as_secs_f64();
        let d = Counts {
            connect_failures: c1.connect_failures - c0.connect_failures,
            stream_failures: c1.stream_failures - c0.stream_failures,
            batches_sent: c1.batches_sent - c0.batches_sent,
            acks_ok: c1.acks_ok - c0.acks_ok,
            acks_failed: c1.acks_failed - c0.acks_failed,
            ticks_skipped: c1.ticks_skipped - c0.ticks_skipped,
            ..Counts::default()
        };
        let server = match (&server_base, &server0, &server1) {
            (Some(base), Some(s0), Some(s1)) => Some(server_use(base, s0, s1, agents)),
            _ => None,
        };
        let mut step = Step {
            agents,
            connected: connected.min(c1.connected),
            window,
            sent_per_s: d.batches_sent as f64 / secs,
            acked_per_s: d.acks_ok as f64 / secs,
            samples_stored_per_s: d.acks_ok as f64 * 6.0 / secs,
            p50: latency.quantile(0.50),
            p99: latency.quantile(0.99),
            max: latency.max(),
            server,
            loadgen_cpu_percent: match (&me0, &me1) {
                (Some(a), Some(b)) => b.cpu_percent_since(a),
                _ => 0.0,
            },
            loadgen_rss_kib: me1.map_or(0, |m| m.status.rss_kib),
            pace: Ok(()),
            latency: Ok(()),
        };
        step.pace = judge_pace(agents, interval, &c1, &d, &step);
        step.latency = judge_latency(config.max_p99, &step);
        println!("{}", row(&step));
        let kept_pace = step.pace.is_ok();
        steps.push(step);
        if !kept_pace {
            break;
        }
    }
    let drained = fleet.drain(Duration::from_secs(60)).await;
    let acked_total = fleet.stats().counts().acks_ok;
    let first_error = fleet.stats().first_error();
    // The registry counts a batch once its commit is acknowledged; give the
    // last acknowledgements' bookkeeping a moment by polling until equal.
    let mut stored_total = None;
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok((_, stored)) = admin::fleet_view(&mut admin, &config.fleet.hostname_prefix).await {
        stored_total = Some(stored);
        if stored >= acked_total || tokio::time::Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fleet.stop(Duration::from_secs(30)).await;
    Ok(Capacity {
        steps,
        acked_total,
        stored_total,
        drained,
        first_error,
        issuance,
    })
}

impl Capacity {
    /// The summary lines (`capacity.*`) for bench/run.sh.
    pub fn results(&self, r: &mut Results) {
        for s in &self.steps {
            let k = format!("capacity.step.{}", s.agents);
            r.put(&format!("{k}.acked_per_s"), format!("{:.0}", s.acked_per_s));
            let yes_no = |b: bool| if b { "yes" } else { "no" };
            r.put(&format!("{k}.held"), yes_no(s.held()));
            r.put(&format!("{k}.kept_pace"), yes_no(s.pace.is_ok()));
            if let Some(p99) = s.p99 {
                r.put(&format!("{k}.p99_ms"), ms(p99));
            }
        }
        r.put(
            "capacity.steps_tried",
            self.steps
                .iter()
                .map(|s| s.agents.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        if let Some(s) = self.steps.iter().find(|s| !s.held()) {
            let why = match (&s.pace, &s.latency) {
                (Err(why), _) | (Ok(()), Err(why)) => why.clone(),
                (Ok(()), Ok(())) => String::new(),
            };
            r.put("capacity.first_not_held", s.agents);
            r.put("capacity.first_not_held_why", why);
        }
        if let Some(last) = self.steps.last()
            && let Err(why) = &last.pace
        {
            r.put("capacity.first_not_kept_pace", last.agents);
            r.put("capacity.first_not_kept_pace_why", why);
        }
        r.put("capacity.agents_held", self.held().map_or(0, |s| s.agents));
        if let Some(s) = self.held()
            && let Some(p99) = s.p99
        {
            r.put("capacity.held_p99_ms", ms(p99));
        }
        r.put(
            "capacity.agents_kept_pace",
            self.kept_pace().map_or(0, |s| s.agents),
        );
        // The figures below are those of the largest step that kept pace:
        // the most agents measured with everything stored.
        if let Some(s) = self.kept_pace() {
            r.put("capacity.batches_per_s", format!("{:.0}", s.acked_per_s));
            r.put(
                "capacity.samples_per_s",
                format!("{:.0}", s.samples_stored_per_s),
            );
            if let (Some(p50), Some(p99)) = (s.p50, s.p99) {
                r.put("capacity.p50_ms", ms(p50));
                r.put("capacity.p99_ms", ms(p99));
            }
            if let Some(u) = s.server {
                r.put(
                    "capacity.server_cpu_percent",
                    format!("{:.1}", u.cpu_percent),
                );
                r.put("capacity.server_rss_kib", u.rss_kib);
                r.put(
                    "capacity.server_kib_per_agent",
                    format!("{:.1}", u.rss_per_agent_kib),
                );
                r.put("capacity.server_threads", u.threads);
            }
            r.put(
                "capacity.loadgen_cpu_percent",
                format!("{:.1}", s.loadgen_cpu_percent),
            );
            r.put("capacity.loadgen_rss_kib", s.loadgen_rss_kib);
        }
        r.put("capacity.acked_total", self.acked_total);
        r.put(
            "capacity.stored_total",
            self.stored_total
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
        );
        r.put(
            "capacity.stored_matches_acked",
            if self.stored_total == Some(self.acked_total) {
                "yes"
            } else {
                "no"
            },
        );
        r.put("capacity.drained", if self.drained { "yes" } else { "no" });
        if let Some(e) = &self.first_error {
            r.put("capacity.first_error", e);
        }
        if let Some(i) = &self.issuance {
            i.results(r);
        }
    }
}
