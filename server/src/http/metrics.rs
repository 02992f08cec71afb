//! `GET /metrics`: the fleet and the server itself, for Prometheus.
//!
//! - Every online host's latest value of each metric, as a gauge with a
//!   `hostname` label, in Prometheus' base units (names and scales in
//!   `exported.rs`), stamped with the sample's own time: Prometheus stores
//!   exactly what the agent measured, when it measured it, whatever the
//!   scrape interval. An offline host's stale values are not exported.
//!   The same for each latest health value (temperature, throttling, file
//!   systems, load...), as `exported::HEALTH_FAMILIES` names and shapes
//!   them.
//! - Per host known to the store or the registry: `monitor_host_up` (1/0),
//!   `monitor_host_last_seen_timestamp_seconds`, and the agent's dropped
//!   batches (`monitor_host_dropped_batches_total`, a counter that restarts
//!   with the agent's run).
//! - The server's own health: agents connected, batches and samples
//!   stored, store commit time and queue, refusals, commands, enrolments,
//!   remote-write destinations, process figures.
//!
//! What it reads is copied first (the store's host table and the registry
//! each under their own lock, for a copy only), then encoded on the
//! blocking pool: no lock is held while encoding, and the store's writer
//! never waits for a scrape.

use std::sync::atomic::Ordering;

use monitor::metric::Metric;

use super::HttpState;
use super::exposition::{Format, Kind, Writer};
use super::process::ProcessStats;
use crate::exported::{self, HOSTNAME_LABEL};
use crate::registry::LiveHost;
use crate::remote_write::Stats;
use crate::store::{HostRecord, StoreError};
use crate::telemetry::Telemetry;

/// Everything a scrape shows, copied.
pub struct Snapshot {
    pub hosts: Vec<HostRecord>,
    pub live: Vec<LiveHost>,
    pub queued: usize,
    pub process: ProcessStats,
    pub now_unix_ms: i64,
}

/// Copies what a scrape shows.
pub async fn snapshot(state: &HttpState) -> Result<Snapshot, StoreError> {
    let hosts = state.store.hosts().await?;
    let live = state.registry.snapshot();
    let proc_root = state.proc_root.clone();
    let process = tokio::task::spawn_blocking(move || super::process::read(&proc_root))
        .await
        .unwrap_or_default();
    Ok(Snapshot {
        hosts,
        live,
        queued: state.store.queued(),
        process,
        now_unix_ms: monitor::time::now_unix_ms(),
    })
}

/// The body of a scrape.
pub fn encode(
    snap: &Snapshot,
    telemetry: &Telemetry,
    remote_write: &[std::sync::Arc<Stats>],
    format: Format,
) -> String {
    let mut w = Writer::new(format, 256 + snap.hosts.len() * 900);
    hosts(&mut w, snap);
    server(&mut w, snap, telemetry);
    forwarding(&mut w, remote_write, snap.now_unix_ms);
    process(&mut w, &snap.process);
    w.finish()
}

/// The per-host families. Both lists are sorted by hostname (as the store
/// and the registry return them): one merge pass.
fn hosts(w: &mut Writer, snap: &Snapshot) {
    let online = |name: &str| {
        snap.live
            .binary_search_by(|l| l.hostname.as_str().cmp(name))
            .is_ok_and(|i| snap.live[i].online)
    };
    for metric in Metric::ALL {
        let e = exported::exported(metric);
        w.family(e.name, Kind::Gauge, e.help);
        for h in snap.hosts.iter().filter(|h| online(&h.hostname)) {
            if let Some(v) = h.latest.iter().find(|v| v.metric == metric) {
                w.sample_at(
                    e.name,
                    &[(HOSTNAME_LABEL, &h.hostname)],
                    exported::value(metric, v.value),
                    v.time_unix_ms,
                );
            }
        }
    }
    // The health metrics, as `exported.rs` shapes them.
    for family in exported::HEALTH_FAMILIES {
        w.family(family.name, Kind::Gauge, family.help);
        for h in snap.hosts.iter().filter(|h| online(&h.hostname)) {
            for v in h.health.iter().filter(|v| v.metric == family.metric) {
                for (label, value) in family.samples(&v.device, v.value) {
                    let host = (HOSTNAME_LABEL, h.hostname.as_str());
                    match label {
                        Some(l) => w.sample_at(family.name, &[host, l], value, v.time_unix_ms),
                        None => w.sample_at(family.name, &[host], value, v.time_unix_ms),
                    }
                }
            }
        }
    }
    // Every known host: stored ones, and connected ones not stored yet.
    let mut names: Vec<&str> = snap.hosts.iter().map(|h| h.hostname.as_str()).collect();
    names.extend(snap.live.iter().map(|l| l.hostname.as_str()));
    names.sort_unstable();
    names.dedup();
    w.family(
        "monitor_host_up",
        Kind::Gauge,
        "1 while the host's agent has a stream open to this server, else 0",
    );
    for &n in &names {
        w.sample(
            "monitor_host_up",
            &[(HOSTNAME_LABEL, n)],
            f64::from(u8::from(online(n))),
        );
    }
    w.family(
        "monitor_host_last_seen_timestamp_seconds",
        Kind::Gauge,
        "Server time the host's latest stored batch arrived, seconds since the Unix epoch",
    );
    for h in &snap.hosts {
        w.sample(
            "monitor_host_last_seen_timestamp_seconds",
            &[(HOSTNAME_LABEL, &h.hostname)],
            h.last_seen_unix_ms as f64 / 1000.0,
        );
    }
    w.family(
        "monitor_host_dropped_batches",
        Kind::Counter,
        "Batches the host's agent dropped from its full buffer (restarts with each agent run)",
    );
    for h in &snap.hosts {
        w.counter(
            "monitor_host_dropped_batches",
            &[(HOSTNAME_LABEL, &h.hostname)],
            h.dropped_batches_total,
        );
    }
}

fn server(w: &mut Writer, snap: &Snapshot, t: &Telemetry) {
    w.family(
        "monitor_server_agents_connected",
        Kind::Gauge,
        "Hosts with at least one stream open to this server",
    );
    let connected = snap.live.iter().filter(|l| l.online).count();
    w.sample("monitor_server_agents_connected", &[], connected as f64);
    w.family(
        "monitor_server_hosts_known",
        Kind::Gauge,
        "Hosts the store holds samples of",
    );
    w.sample("monitor_server_hosts_known", &[], snap.hosts.len() as f64);
    w.family(
        "monitor_server_batches_ingested",
        Kind::Counter,
        "Batches durably stored since the server started (duplicates not counted)",
    );
    w.counter(
        "monitor_server_batches_ingested",
        &[],
        t.batches_stored.load(Ordering::Relaxed),
    );
    w.family(
        "monitor_server_samples_ingested",
        Kind::Counter,
        "Samples durably stored since the server started",
    );
    w.counter(
        "monitor_server_samples_ingested",
        &[],
        t.samples_stored.load(Ordering::Relaxed),
    );
    w.family(
        "monitor_server_batches_refused",
        Kind::Counter,
        "Batches and streams refused since the server started, by reason",
    );
    for (r, n) in t.refusals() {
        w.counter("monitor_server_batches_refused", &[("reason", r.name())], n);
    }
    w.family(
        "monitor_server_store_commit_seconds",
        Kind::Histogram,
        "Time the store's writer takes to commit one flush (the fsyncs)",
    );
    let h = t.commit.snapshot();
    w.histogram(
        "monitor_server_store_commit_seconds",
        &[],
        &h.buckets,
        (h.sum_seconds, h.count),
    );
    w.family(
        "monitor_server_store_queue_requests",
        Kind::Gauge,
        "Requests waiting for the store's writer",
    );
    w.sample(
        "monitor_server_store_queue_requests",
        &[],
        snap.queued as f64,
    );
    w.family(
        "monitor_server_commands",
        Kind::Counter,
        "Command results on hosts since the server started, by outcome",
    );
    for (o, n) in t.commands() {
        w.counter("monitor_server_commands", &[("outcome", o.name())], n);
    }
    w.family(
        "monitor_server_enrolments",
        Kind::Counter,
        "Agent enrolments and certificate renewals since the server started, by result",
    );
    for (e, n) in t.enrolments() {
        w.counter("monitor_server_enrolments", &[("result", e.name())], n);
    }
}

fn forwarding(w: &mut Writer, all: &[std::sync::Arc<Stats>], now_unix_ms: i64) {
    if all.is_empty() {
        return;
    }
    fn label(s: &Stats) -> [(&'static str, &str); 1] {
        [("destination", s.url.as_str())]
    }
    w.family(
        "monitor_remote_write_lag_seconds",
        Kind::Gauge,
        "Age of the oldest stored batch not yet sent to the destination (0: caught up)",
    );
    for s in all {
        w.sample(
            "monitor_remote_write_lag_seconds",
            &label(s),
            s.lag_seconds(now_unix_ms),
        );
    }
    /// A counter family: name, help, how to read it.
    type CounterOf = (&'static str, &'static str, fn(&Stats) -> u64);
    let counters: [CounterOf; 4] = [
        (
            "monitor_remote_write_sent_samples",
            "Samples the destination accepted",
            |s| s.sent_samples.load(Ordering::Relaxed),
        ),
        (
            "monitor_remote_write_failed_samples",
            "Samples of requests that failed and were retried (once per attempt)",
            |s| s.failed_samples.load(Ordering::Relaxed),
        ),
        (
            "monitor_remote_write_refused_samples",
            "Samples dropped because the destination refused them (4xx other than 429)",
            |s| s.refused_samples.load(Ordering::Relaxed),
        ),
        (
            "monitor_remote_write_too_old_samples",
            "Samples dropped unsent because they were older than --remote-write-max-lag",
            |s| s.too_old_samples.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in counters {
        w.family(name, Kind::Counter, help);
        for s in all {
            w.counter(name, &label(s), get(s));
        }
    }
}

fn process(w: &mut Writer, p: &ProcessStats) {
    let gauges = [
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            p.resident_memory_bytes.map(|b| b as f64),
        ),
        (
            "process_open_fds",
            "Number of open file descriptors",
            p.open_fds.map(|n| n as f64),
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors",
            p.max_fds.map(|n| n as f64),
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            p.start_time_seconds,
        ),
    ];
    for (name, help, value) in gauges {
        if let Some(v) = value {
            w.family(name, Kind::Gauge, help);
            w.sample(name, &[], v);
        }
    }
    if let Some(cpu) = p.cpu_seconds {
        // A counter of seconds (fractional): written as a float sample.
        w.family(
            "process_cpu_seconds",
            Kind::Counter,
            "Total user and system CPU time spent in seconds",
        );
        w.sample("process_cpu_seconds_total", &[], cpu);
    }
}
