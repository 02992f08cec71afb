//! Which agents the server knows, which are online, and how to reach their
//! command streams.
//!
//! The store is the memory across restarts ([`Registry::load`] seeds the
//! registry from it, every host offline); the registry is the live view:
//! open streams, latest values, clock offsets. A host is online while at
//! least one of its streams (Report or CommandStream) is open.
//!
//! Several connections can claim one hostname (a reconnect racing a
//! half-open old connection, or two boxes misconfigured with the same name):
//! each stream gets a connection id, the newest command stream wins, and a
//! stream that ends only clears what it itself set.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use monitor::batch::MetricValues;
use monitor::metric::Metric;
use monitor::pb;
use tokio::sync::mpsc;

use crate::store::HostRecord;

/// Where to push a host's commands.
pub type CommandSender = mpsc::Sender<Result<pb::CommandRequest, tonic::Status>>;

#[derive(Clone, Debug, Default)]
struct Latest {
    values: MetricValues,
    /// Sample time of each value, [`Metric::ALL`] order.
    times_unix_ms: [i64; 6],
}

#[derive(Debug, Default)]
struct HostEntry {
    agent_id: String,
    agent_version: String,
    peer: String,
    /// Open Report streams.
    report_streams: u32,
    /// The current command stream: (connection id, sender).
    commands: Option<(u64, CommandSender)>,
    /// Open command streams (the newest is in `commands`).
    command_streams: u32,
    connected_since_unix_ms: i64,
    last_seen_unix_ms: i64,
    latest: Latest,
    clock_offset_ms: i64,
    dropped_batches_total: u64,
    batches_stored_total: u64,
    parse_errors_total: u64,
    interval_ms: u64,
}

impl HostEntry {
    fn online(&self) -> bool {
        self.report_streams > 0 || self.command_streams > 0
    }

    fn connect(&mut self, now_ms: i64) {
        if !self.online() {
            self.connected_since_unix_ms = now_ms;
        }
    }
}

/// Why a command cannot be sent to a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreachable {
    Unknown,
    /// Known but no command stream is open; when it was last seen.
    Offline {
        last_seen_unix_ms: i64,
    },
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreachable::Unknown => f.write_str("unknown host"),
            Unreachable::Offline { last_seen_unix_ms } if *last_seen_unix_ms > 0 => {
                write!(
                    f,
                    "offline (last seen {})",
                    monitor::time::Rfc3339(*last_seen_unix_ms)
                )
            }
            Unreachable::Offline { .. } => f.write_str("offline"),
        }
    }
}

/// What a committed batch tells about its host.
#[derive(Clone, Debug)]
pub struct BatchSeen<'a> {
    pub hostname: &'a str,
    pub agent_id: &'a str,
    pub agent_version: &'a str,
    pub peer: &'a str,
    pub now_unix_ms: i64,
    pub clock_offset_ms: i64,
    pub dropped_batches_total: u64,
    pub parse_errors_total: u64,
    pub samples: &'a [(i64, Metric, f64)],
    /// False for a duplicate (nothing new stored).
    pub stored: bool,
}

#[derive(Debug, Default)]
pub struct Registry {
    hosts: Mutex<HashMap<String, HostEntry>>,
    next_conn: AtomicU64,
}

impl Registry {
    /// A registry that knows the hosts the store remembers, all offline.
    pub fn load(records: Vec<HostRecord>) -> Registry {
        let mut hosts = HashMap::with_capacity(records.len());
        for r in records {
            let mut latest = Latest::default();
            for v in &r.latest {
                latest.values.set(v.metric, v.value);
                latest.times_unix_ms[v.metric as usize] = v.time_unix_ms;
            }
            hosts.insert(
                r.hostname.clone(),
                HostEntry {
                    agent_id: r.agent_id,
                    agent_version: r.agent_version,
                    peer: r.peer,
                    last_seen_unix_ms: r.last_seen_unix_ms,
                    latest,
                    clock_offset_ms: r.clock_offset_ms,
                    dropped_batches_total: r.dropped_batches_total,
                    batches_stored_total: r.batches_stored_total,
                    ..HostEntry::default()
                },
            );
        }
        Registry {
            hosts: Mutex::new(hosts),
            next_conn: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostEntry>> {
        // A panic while holding the lock cannot leave an entry half-written
        // in a way that matters more than losing the whole registry would.
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn report_opened(&self, hostname: &str, peer: &str, now_ms: i64) {
        let mut hosts = self.lock();
        let e = hosts.entry(hostname.to_owned()).or_default();
        e.connect(now_ms);
        e.report_streams += 1;
        e.peer = peer.to_owned();
        e.last_seen_unix_ms = now_ms;
    }

    pub fn report_closed(&self, hostname: &str, now_ms: i64) {
        let mut hosts = self.lock();
        if let Some(e) = hosts.get_mut(hostname) {
            e.report_streams = e.report_streams.saturating_sub(1);
            if !e.online() {
                log::info!("{hostname} is offline");
                e.last_seen_unix_ms = e.last_seen_unix_ms.max(now_ms);
            }
        }
    }

    /// Registers a command stream; returns its connection id.
    pub fn commands_opened(
        &self,
        hello: &pb::AgentHello,
        peer: &str,
        sender: CommandSender,
        now_ms: i64,
    ) -> u64 {
        let conn = self.next_connection_id();
        let mut hosts = self.lock();
        let e = hosts.entry(hello.hostname.clone()).or_default();
        e.connect(now_ms);
        e.command_streams += 1;
        e.commands = Some((conn, sender));
        e.agent_id.clone_from(&hello.agent_id);
        e.agent_version.clone_from(&hello.agent_version);
        e.interval_ms = hello.interval_ms;
        e.peer = peer.to_owned();
        e.last_seen_unix_ms = now_ms;
        conn
    }

    pub fn commands_closed(&self, hostname: &str, conn: u64, now_ms: i64) {
        let mut hosts = self.lock();
        if let Some(e) = hosts.get_mut(hostname) {
            e.command_streams = e.command_streams.saturating_sub(1);
            if e.commands.as_ref().is_some_and(|(c, _)| *c == conn) {
                e.commands = None;
            }
            if !e.online() {
                log::info!("{hostname} is offline");
                e.last_seen_unix_ms = e.last_seen_unix_ms.max(now_ms);
            }
        }
    }

    /// The command stream of `hostname`.
    pub fn command_sender(&self, hostname: &str) -> Result<(u64, CommandSender), Unreachable> {
        let hosts = self.lock();
        match hosts.get(hostname) {
            None => Err(Unreachable::Unknown),
            Some(e) => e.commands.clone().ok_or(Unreachable::Offline {
                last_seen_unix_ms: e.last_seen_unix_ms,
            }),
        }
    }

    /// Hosts with an open command stream, sorted.
    pub fn online_hosts(&self) -> Vec<String> {
        let hosts = self.lock();
        let mut v: Vec<String> = hosts
            .iter()
            .filter(|(_, e)| e.commands.is_some())
            .map(|(h, _)| h.clone())
            .collect();
        v.sort();
        v
    }

    /// Every known hostname, sorted.
    pub fn known_hosts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    pub fn is_known(&self, hostname: &str) -> bool {
        self.lock().contains_key(hostname)
    }

    pub fn set_interval_ms(&self, hostname: &str, interval_ms: u64) {
        if let Some(e) = self.lock().get_mut(hostname) {
            e.interval_ms = interval_ms;
        }
    }

    /// Records what a committed (or duplicate) batch says about its host.
    pub fn batch_seen(&self, b: &BatchSeen<'_>) {
        let mut hosts = self.lock();
        let e = hosts.entry(b.hostname.to_owned()).or_default();
        e.last_seen_unix_ms = b.now_unix_ms;
        e.clock_offset_ms = b.clock_offset_ms;
        e.dropped_batches_total = b.dropped_batches_total;
        e.parse_errors_total = b.parse_errors_total;
        if e.agent_id != b.agent_id {
            e.agent_id = b.agent_id.to_owned();
        }
        if e.agent_version != b.agent_version {
            e.agent_version = b.agent_version.to_owned();
        }
        if e.peer != b.peer {
            e.peer = b.peer.to_owned();
        }
        if b.stored {
            e.batches_stored_total += 1;
            for &(time, metric, value) in b.samples {
                let i = metric as usize;
                if time >= e.latest.times_unix_ms[i] {
                    e.latest.values.set(metric, value);
                    e.latest.times_unix_ms[i] = time;
                }
            }
        }
    }

    /// Every host, sorted by name, as the operator API shows it.
    pub fn snapshot(&self) -> Vec<pb::HostInfo> {
        let hosts = self.lock();
        let mut v: Vec<pb::HostInfo> = hosts
            .iter()
            .map(|(name, e)| pb::HostInfo {
                hostname: name.clone(),
                agent_id: e.agent_id.clone(),
                online: e.online(),
                peer: e.peer.clone(),
                agent_version: e.agent_version.clone(),
                connected_since_unix_ms: if e.online() {
                    e.connected_since_unix_ms
                } else {
                    0
                },
                last_seen_unix_ms: e.last_seen_unix_ms,
                latest: e
                    .latest
                    .values
                    .iter()
                    .map(|(m, value)| pb::MetricValue {
                        metric: m.name().to_owned(),
                        value,
                        time_unix_ms: e.latest.times_unix_ms[m as usize],
                    })
                    .collect(),
                clock_offset_ms: e.clock_offset_ms,
                dropped_batches_total: e.dropped_batches_total,
                interval_ms: e.interval_ms,
                batches_stored_total: e.batches_stored_total,
                parse_errors_total: e.parse_errors_total,
            })
            .collect();
        v.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(host: &str) -> pb::AgentHello {
        pb::AgentHello {
            agent_id: host.into(),
            hostname: host.into(),
            agent_version: "0.1.0".into(),
            boot_id: 1,
            interval_ms: 5000,
        }
    }

    #[test]
    fn online_while_a_stream_is_open_and_newest_command_stream_wins() {
        let r = Registry::default();
        let (tx1, _rx1) = mpsc::channel(1);
        let (tx2, _rx2) = mpsc::channel(1);
        let c1 = r.commands_opened(&hello("a"), "p1", tx1, 10);
        let c2 = r.commands_opened(&hello("a"), "p2", tx2, 20);
        assert_eq!(r.online_hosts(), vec!["a".to_string()]);
        // The old connection ends late: the new one must stay.
        r.commands_closed("a", c1, 30);
        assert_eq!(r.command_sender("a").map(|(c, _)| c), Ok(c2));
        r.commands_closed("a", c2, 40);
        assert_eq!(
            r.command_sender("a").map(|(c, _)| c),
            Err(Unreachable::Offline {
                last_seen_unix_ms: 40
            })
        );
        assert_eq!(
            r.command_sender("zz").map(|(c, _)| c),
            Err(Unreachable::Unknown)
        );
        let snap = r.snapshot();
        assert!(!snap[0].online);
    }

    #[test]
    fn latest_values_keep_the_newest_sample() {
        let r = Registry::default();
        let seen = |t: i64| BatchSeen {
            hostname: "h",
            agent_id: "h",
            agent_version: "1",
            peer: "p",
            now_unix_ms: t,
            clock_offset_ms: 0,
            dropped_batches_total: 0,
            parse_errors_total: 0,
            samples: &[],
            stored: true,
        };
        let samples_new = [(2000, Metric::CpuPercent, 20.0)];
        let samples_old = [(1000, Metric::CpuPercent, 10.0)];
        r.batch_seen(&BatchSeen {
            samples: &samples_new,
            ..seen(2000)
        });
        // A re-sent older batch does not overwrite the latest value.
        r.batch_seen(&BatchSeen {
            samples: &samples_old,
            ..seen(3000)
        });
        let snap = r.snapshot();
        assert_eq!(snap[0].latest[0].value, 20.0);
        assert_eq!(snap[0].batches_stored_total, 2);
        assert_eq!(snap[0].last_seen_unix_ms, 3000);
    }
}
