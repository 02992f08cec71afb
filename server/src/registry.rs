//! Who is connected to this server right now: each host's open streams,
//! where to push its commands, and what its live connection tells (peer
//! address, clock offset, sampling interval, the agent's parse errors).
//!
//! The registry is the truth for liveness only. A host's facts (its agent
//! id and version, first and last seen, batch counters, latest values) have
//! one owner, the store (`Store::hosts`, `Store::host`); the operator API
//! joins the two (`admin.rs`), and the command router asks the store about
//! hosts that are not connected (`commands.rs`). Nothing here is persisted:
//! after a restart every host is offline until one of its streams opens.
//!
//! A host is online while at least one of its streams (Report or
//! CommandStream) is open. Several connections can claim one hostname (a
//! reconnect racing a half-open old connection, two boxes misconfigured
//! with the same name, and without TLS a stranger): each command stream
//! gets a connection id, commands go to the newest one still open, and a
//! stream that ends removes only itself, so when the newest goes, the one
//! before it (still open) takes the commands again: a host with an open
//! command stream is always reachable. At most
//! [`MAX_COMMAND_STREAMS_PER_HOST`] are kept per host; a newer one pushes
//! the oldest out (it is told so and ends).
//!
//! Each host also has its ingest budget here (a token bucket: batches per
//! second over all its streams together, see [`INGEST_RATE`]), so a host
//! that floods is held to it however many streams it opens, and the others
//! never notice. Budgets live beside the liveness they go with: one per
//! host, so the table is bounded by the number of hosts.
//!
//! Every method takes the one lock for a few map operations and never
//! awaits or does I/O while holding it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use monitor::pb;
use tokio::sync::mpsc;

use crate::throttle::{LogThrottle, Rate, TokenBucket};

/// Where to push a host's commands.
pub type CommandSender = mpsc::Sender<Result<pb::CommandRequest, tonic::Status>>;

/// Command streams kept per host (newest gets the commands).
pub const MAX_COMMAND_STREAMS_PER_HOST: usize = 4;

/// Batches one host may send: 50 a second sustained, bursts of 600. A
/// batch costs one per tick it holds (its distinct sample times: the rows
/// it writes), so a forger packing 64 ticks into a batch is held to the
/// same 50 rows a second as one sending a tick per batch; a real agent's
/// batch is one tick.
///
/// Why these: a real agent produces at most 10 batches a second (its
/// shortest interval is 100 ms; 0.2 a second by default), so 50 leaves it
/// five times its fastest pace to catch up with. After an outage it
/// re-sends its buffer (8,192 batches by default) 64 at a time as fast as
/// the acks come back, thousands a second: the burst of 600 lets a short
/// outage (a minute at 100 ms, 50 minutes at 5 s) through at full speed,
/// and a full buffer drains in about three minutes ((8,192 − 600) / (50 −
/// 10) s at 100 ms; 2.5 minutes at the default interval). A flooding host
/// is held to 1/60 of the 2,945 batches a second one client managed (15 GiB
/// of database an hour), at most 300 samples a second; the fleet's capacity
/// (19,000 agents at one batch a second) is not dented by one such host.
pub const INGEST_RATE: Rate = Rate {
    per_second: 50.0,
    burst: 600.0,
};

/// Health values (issue 14) a batch carries without paying for them: a
/// Pi sends about ten a tick (eight metrics, a few file systems), so a
/// real agent's batch costs one tick, as before they existed, and its
/// catch-up after an outage is as fast.
pub const HEALTH_VALUES_FREE_PER_BATCH: usize = 16;
/// Health values past the free ones that cost one tick of the budget: each
/// is a row of the store's `health` table, smaller than a tick's.
pub const HEALTH_VALUES_PER_TICK: f64 = 8.0;

/// What a batch of `ticks` ticks and `health_values` health values costs
/// against its host's budget: at least one tick, since every stored batch
/// is written (a journal row, its host's counters) whatever it holds, so
/// no batch is free (health-only and empty ones included), plus one per
/// [`HEALTH_VALUES_PER_TICK`] health values past the free ones. A host is
/// so held to 16 health values per tick of its budget (800 a second at
/// [`INGEST_RATE`]), however it packs them.
pub fn batch_cost(ticks: usize, health_values: usize) -> f64 {
    let paid = health_values.saturating_sub(HEALTH_VALUES_FREE_PER_BATCH);
    ticks.max(1) as f64 + paid as f64 / HEALTH_VALUES_PER_TICK
}

/// Test knob: `RATE,BURST` replacing [`INGEST_RATE`] (e.g. `3,5`), so a
/// test can make a real agent hit the limit in seconds.
pub const TEST_INGEST_RATE_ENV: &str = "MONITOR_TEST_INGEST_RATE";

/// What the registry says to a batch that wants to be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Within the host's budget: store it.
    Take,
    /// Over the budget: refuse it (ACK_CODE_RATE_LIMITED). `refused_total`
    /// counts the host's refusals since the server started; `log` is
    /// `Some(n)` when a log line is due (once a minute per host), standing
    /// for `n` refusals.
    Refuse {
        refused_total: u64,
        log: Option<u64>,
    },
}

/// What this server process knows of one host's connections: the truth
/// for liveness. Facts about the host are the store's `HostRecord`.
#[derive(Debug, Default)]
struct Live {
    /// Open Report streams.
    report_streams: u32,
    /// Open command streams, oldest first: (connection id, sender). The
    /// last one gets the commands.
    commands: Vec<(u64, CommandSender)>,
    /// Peer address of the newest stream.
    peer: String,
    /// When the host came online (a stream opened while none was), server
    /// time in ms since the Unix epoch.
    connected_since_unix_ms: i64,
    /// Agent clock minus server clock, from the latest batch acknowledged
    /// on one of its streams, in ms.
    clock_offset_ms: i64,
    /// The sampling interval its agent announced in its hello, in ms.
    interval_ms: u64,
    /// The agent's running count of /proc parse errors, from its latest
    /// batch (an agent counter, not stored).
    parse_errors_total: u64,
    /// Batches refused since this server started because they contradict
    /// stored samples.
    batches_conflicting_total: u64,
    /// Batches its streams may still send (see [`INGEST_RATE`]).
    ingest: TokenBucket,
    /// Batches refused since this server started because the host was over
    /// its ingest budget.
    batches_rate_limited_total: u64,
    /// Paces the "over its budget" log line of this host.
    rate_log: LogThrottle,
    /// Paces the "refused as conflicting" log line of this host.
    conflict_log: LogThrottle,
}

impl Live {
    /// Counts a rate-limited refusal.
    fn refuse(&mut self, now: Instant) -> Admission {
        self.batches_rate_limited_total = self.batches_rate_limited_total.saturating_add(1);
        Admission::Refuse {
            refused_total: self.batches_rate_limited_total,
            log: self.rate_log.hit(now),
        }
    }

    fn online(&self) -> bool {
        self.report_streams > 0 || !self.commands.is_empty()
    }

    fn connect(&mut self, peer: &str, now_ms: i64) {
        if !self.online() {
            self.connected_since_unix_ms = now_ms;
        }
        if self.peer != peer {
            peer.clone_into(&mut self.peer);
        }
    }
}

/// One host's live view, as the operator API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveHost {
    pub hostname: String,
    /// At least one of its streams is open.
    pub online: bool,
    /// Peer address of its newest stream.
    pub peer: String,
    /// When it came online; 0 while offline.
    pub connected_since_unix_ms: i64,
    /// Agent clock minus server clock at the latest acknowledged batch, ms.
    pub clock_offset_ms: i64,
    /// Its announced sampling interval, ms (0: no hello yet).
    pub interval_ms: u64,
    pub parse_errors_total: u64,
    /// Batches refused as conflicting since this server started.
    pub batches_conflicting_total: u64,
    /// Batches refused as over the host's budget since this server started.
    pub batches_rate_limited_total: u64,
}

/// The live view of every host that connected since this server started.
#[derive(Debug)]
pub struct Registry {
    hosts: Mutex<HashMap<String, Live>>,
    next_conn: AtomicU64,
    /// Every host's ingest budget.
    ingest_rate: Rate,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::with_ingest_rate(INGEST_RATE)
    }
}

impl Registry {
    /// A registry whose hosts may each send batches at `rate`.
    pub fn with_ingest_rate(rate: Rate) -> Registry {
        Registry {
            hosts: Mutex::default(),
            next_conn: AtomicU64::new(0),
            ingest_rate: rate,
        }
    }

    /// Every host's ingest budget.
    pub fn ingest_rate(&self) -> Rate {
        self.ingest_rate
    }

    /// Takes a batch of `hostname` costing `cost` ticks (the rows it
    /// would write, see [`batch_cost`] and [`INGEST_RATE`]) against its
    /// budget at `now`: all its streams draw on the one bucket.
    pub fn admit_batch(&self, hostname: &str, cost: f64, now: Instant) -> Admission {
        let rate = self.ingest_rate;
        let mut hosts = self.lock();
        let e = hosts.entry(hostname.to_owned()).or_default();
        if e.ingest.take_n(rate, cost, now) {
            return Admission::Take;
        }
        Live::refuse(e, now)
    }

    /// Refuses a batch of `hostname` without asking its budget (the rest
    /// of a pass whose earlier batch was refused), counted like any
    /// refusal.
    pub fn refuse_batch(&self, hostname: &str, now: Instant) -> Admission {
        let mut hosts = self.lock();
        Live::refuse(hosts.entry(hostname.to_owned()).or_default(), now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        // A panic while holding the lock cannot leave an entry half-written
        // in a way that matters more than losing the whole registry would.
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_connection_id(&self) -> u64 {
        // Starts at 1: 0 is never a connection.
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn report_opened(&self, hostname: &str, peer: &str, now_ms: i64) {
        let mut hosts = self.lock();
        let e = hosts.entry(hostname.to_owned()).or_default();
        e.connect(peer, now_ms);
        e.report_streams += 1;
    }

    pub fn report_closed(&self, hostname: &str) {
        let mut hosts = self.lock();
        if let Some(e) = hosts.get_mut(hostname) {
            e.report_streams = e.report_streams.saturating_sub(1);
            if !e.online() {
                log::info!("{hostname} is offline");
            }
        }
    }

    /// Registers a command stream of `hostname`, whose agent samples every
    /// `interval_ms`; returns its connection id.
    pub fn commands_opened(
        &self,
        hostname: &str,
        peer: &str,
        interval_ms: u64,
        sender: CommandSender,
        now_ms: i64,
    ) -> u64 {
        let conn = self.next_connection_id();
        let mut hosts = self.lock();
        let e = hosts.entry(hostname.to_owned()).or_default();
        e.connect(peer, now_ms);
        if e.commands.len() >= MAX_COMMAND_STREAMS_PER_HOST {
            let (_, oldest) = e.commands.remove(0);
            let _ = oldest.try_send(Err(tonic::Status::aborted(
                "replaced by newer command streams of this host",
            )));
        }
        e.commands.push((conn, sender));
        e.interval_ms = interval_ms;
        conn
    }

    /// Command stream `conn` of `hostname` ended: it removes only itself;
    /// the newest stream still open gets the commands.
    pub fn commands_closed(&self, hostname: &str, conn: u64) {
        let mut hosts = self.lock();
        if let Some(e) = hosts.get_mut(hostname) {
            e.commands.retain(|(c, _)| *c != conn);
            if !e.online() {
                log::info!("{hostname} is offline");
            }
        }
    }

    /// The command stream of `hostname` that gets its commands, if one is
    /// open.
    pub fn command_sender(&self, hostname: &str) -> Option<(u64, CommandSender)> {
        self.lock()
            .get(hostname)
            .and_then(|e| e.commands.last().cloned())
    }

    /// Whether `hostname` has a stream open.
    pub fn is_online(&self, hostname: &str) -> bool {
        self.lock().get(hostname).is_some_and(Live::online)
    }

    /// Hosts with an open command stream, sorted.
    pub fn online_hosts(&self) -> Vec<String> {
        let hosts = self.lock();
        let mut v: Vec<String> = hosts
            .iter()
            .filter(|(_, e)| !e.commands.is_empty())
            .map(|(h, _)| h.clone())
            .collect();
        v.sort();
        v
    }

    /// Every host that connected since this server started, sorted.
    pub fn connected_hosts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// Whether `hostname` connected since this server started.
    pub fn has_connected(&self, hostname: &str) -> bool {
        self.lock().contains_key(hostname)
    }

    /// Notes what an acknowledged batch (stored or a duplicate) tells about
    /// the agent's live state.
    pub fn batch_acked(&self, hostname: &str, clock_offset_ms: i64, parse_errors_total: u64) {
        let mut hosts = self.lock();
        let e = hosts.entry(hostname.to_owned()).or_default();
        e.clock_offset_ms = clock_offset_ms;
        e.parse_errors_total = parse_errors_total;
    }

    /// Counts a batch refused as conflicting at `now`; returns the host's
    /// count, and `Some(n)` when a log line is due (once a minute per host)
    /// standing for `n` refusals.
    pub fn batch_conflicting(&self, hostname: &str, now: Instant) -> (u64, Option<u64>) {
        let mut hosts = self.lock();
        let e = hosts.entry(hostname.to_owned()).or_default();
        e.batches_conflicting_total = e.batches_conflicting_total.saturating_add(1);
        (e.batches_conflicting_total, e.conflict_log.hit(now))
    }

    /// Every host that connected since this server started, sorted by name.
    pub fn snapshot(&self) -> Vec<LiveHost> {
        self.page(None, usize::MAX)
    }

    /// The first `limit` hosts (sorted by name) whose name sorts after
    /// `after`, or from the first when `after` is `None`. Copies only
    /// those: a page of 1,000 out of 30,000 hosts costs a scan, not a copy
    /// of all.
    pub fn page(&self, after: Option<&str>, limit: usize) -> Vec<LiveHost> {
        let hosts = self.lock();
        crate::pages::first_after(
            hosts.iter().map(|(name, e)| (name.as_str(), (name, e))),
            after,
            limit,
        )
        .into_iter()
        .map(|(name, e)| LiveHost {
            hostname: name.clone(),
            online: e.online(),
            peer: e.peer.clone(),
            connected_since_unix_ms: if e.online() {
                e.connected_since_unix_ms
            } else {
                0
            },
            clock_offset_ms: e.clock_offset_ms,
            interval_ms: e.interval_ms,
            parse_errors_total: e.parse_errors_total,
            batches_conflicting_total: e.batches_conflicting_total,
            batches_rate_limited_total: e.batches_rate_limited_total,
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_while_a_stream_is_open_and_newest_command_stream_wins() {
        let r = Registry::default();
        let (tx1, _rx1) = mpsc::channel(1);
        let (tx2, _rx2) = mpsc::channel(1);
        let c1 = r.commands_opened("a", "p1", 5000, tx1, 10);
        let c2 = r.commands_opened("a", "p2", 5000, tx2, 20);
        assert_eq!(r.online_hosts(), vec!["a".to_string()]);
        assert_eq!(r.command_sender("a").map(|(c, _)| c), Some(c2));
        // The old connection ends late: the new one must stay.
        r.commands_closed("a", c1);
        assert_eq!(r.command_sender("a").map(|(c, _)| c), Some(c2));
        r.commands_closed("a", c2);
        assert_eq!(r.command_sender("a").map(|(c, _)| c), None);
        assert_eq!(r.command_sender("zz").map(|(c, _)| c), None);
        assert!(r.has_connected("a"));
        assert!(!r.has_connected("zz"));
        let snap = r.snapshot();
        assert!(!snap[0].online);
        assert_eq!(snap[0].connected_since_unix_ms, 0);
        assert_eq!(snap[0].peer, "p2");
    }

    #[test]
    fn when_the_newest_command_stream_ends_the_one_still_open_gets_the_commands() {
        // Finding 1 of the security review: a second stream for the host
        // (a stranger, or an agent restarted twice quickly) ended and the
        // host's real, still open stream no longer got any command.
        let r = Registry::default();
        let (real, _rx1) = mpsc::channel(1);
        let (other, _rx2) = mpsc::channel(1);
        let c_real = r.commands_opened("pi", "p1", 5000, real, 10);
        let c_other = r.commands_opened("pi", "p2", 5000, other, 20);
        assert_eq!(r.command_sender("pi").map(|(c, _)| c), Some(c_other));
        r.commands_closed("pi", c_other);
        assert_eq!(r.command_sender("pi").map(|(c, _)| c), Some(c_real));
        assert_eq!(r.online_hosts(), ["pi"]);
        assert!(r.is_online("pi"));
    }

    #[test]
    fn a_host_keeps_a_bounded_number_of_command_streams() {
        let r = Registry::default();
        let mut receivers = Vec::new();
        let mut conns = Vec::new();
        for i in 0..MAX_COMMAND_STREAMS_PER_HOST + 1 {
            let (tx, rx) = mpsc::channel(1);
            receivers.push(rx);
            conns.push(r.commands_opened("pi", "p", 1000, tx, i as i64));
        }
        // The oldest was pushed out and told so.
        let told = receivers[0].try_recv().expect("the oldest was told");
        assert_eq!(told.unwrap_err().code(), tonic::Code::Aborted);
        assert!(receivers[1].try_recv().is_err());
        // Closing the pushed-out one changes nothing for the others.
        r.commands_closed("pi", conns[0]);
        assert_eq!(
            r.command_sender("pi").map(|(c, _)| c),
            conns.last().copied()
        );
    }

    #[test]
    fn a_host_stays_online_until_its_last_stream_ends() {
        let r = Registry::default();
        let (tx, _rx) = mpsc::channel(1);
        r.report_opened("h", "p1", 100);
        let c = r.commands_opened("h", "p1", 1000, tx, 200);
        r.report_closed("h");
        let live = &r.snapshot()[0];
        assert!(live.online, "the command stream is still open");
        assert_eq!(live.connected_since_unix_ms, 100, "online since the first");
        assert_eq!(live.interval_ms, 1000);
        r.commands_closed("h", c);
        assert!(!r.snapshot()[0].online);
        // Back online: connected since the new stream.
        r.report_opened("h", "p2", 300);
        let live = &r.snapshot()[0];
        assert_eq!((live.online, live.connected_since_unix_ms), (true, 300));
        assert_eq!(live.peer, "p2");
    }

    #[test]
    fn live_counters_come_from_the_newest_batch() {
        let r = Registry::default();
        r.report_opened("h", "p", 10);
        r.batch_acked("h", -40, 1);
        r.batch_acked("h", 25, 3);
        let now = Instant::now();
        assert_eq!(r.batch_conflicting("h", now), (1, Some(1)));
        assert_eq!(r.batch_conflicting("h", now), (2, None));
        let live = &r.snapshot()[0];
        assert_eq!((live.clock_offset_ms, live.parse_errors_total), (25, 3));
        assert_eq!(live.batches_conflicting_total, 2);
    }

    #[test]
    fn health_values_cost_budget_and_no_batch_is_free() {
        assert_eq!(batch_cost(1, 0), 1.0);
        assert_eq!(batch_cost(0, 0), 1.0, "an empty batch is written too");
        assert_eq!(batch_cost(0, 1), 1.0, "a health-only batch is not free");
        assert_eq!(batch_cost(1, 10), 1.0, "a Pi's batch costs what it did");
        assert_eq!(batch_cost(3, 16), 3.0);
        assert_eq!(batch_cost(0, 24), 2.0);
        assert_eq!(batch_cost(0, 64), 7.0);
        // At most 16 health values per tick of budget, however packed.
        for h in 0..=64 {
            assert!(h as f64 / batch_cost(0, h) <= 16.0, "{h}");
        }
        // A host sending only health values, as many as a batch holds, is
        // held to the budget's worth of them.
        let r = Registry::with_ingest_rate(Rate {
            per_second: 50.0,
            burst: 600.0,
        });
        let t0 = Instant::now();
        let full = batch_cost(0, 64);
        let taken = (0..1000)
            .filter(|_| r.admit_batch("hostile", full, t0) == Admission::Take)
            .count();
        assert_eq!(taken, 85, "600 / 7");
        let later = t0 + std::time::Duration::from_secs(1);
        let taken = (0..1000)
            .filter(|_| r.admit_batch("hostile", full, later) == Admission::Take)
            .count();
        assert_eq!(taken, 7, "(5 left + 50) / 7");
    }

    #[test]
    fn every_stream_of_a_host_draws_on_one_budget_and_others_keep_theirs() {
        // Finding 3 of the hostile-input review: one client sent 2,945
        // batches a second. The budget is the host's, not the stream's:
        // opening more streams does not multiply it, and another host is
        // not touched.
        let r = Registry::with_ingest_rate(Rate {
            per_second: 10.0,
            burst: 20.0,
        });
        let t0 = Instant::now();
        let taken = (0..100)
            .filter(|_| r.admit_batch("flood", 1.0, t0) == Admission::Take)
            .count();
        assert_eq!(taken, 20);
        assert_eq!(r.admit_batch("quiet", 1.0, t0), Admission::Take);
        // The first refusal logs; the rest of the minute is counted only.
        let refused = r.admit_batch("flood", 1.0, t0);
        assert_eq!(
            refused,
            Admission::Refuse {
                refused_total: 81,
                log: None
            }
        );
        let later = t0 + std::time::Duration::from_millis(500);
        let taken = (0..100)
            .filter(|_| r.admit_batch("flood", 1.0, later) == Admission::Take)
            .count();
        assert_eq!(taken, 5);
        // Refusing without the budget counts too, and takes nothing.
        assert!(matches!(
            r.refuse_batch("quiet", later),
            Admission::Refuse {
                refused_total: 1,
                log: Some(1)
            }
        ));
        assert_eq!(r.admit_batch("quiet", 1.0, later), Admission::Take);
        let flood = r.page(Some("a"), 1);
        assert_eq!(flood[0].hostname, "flood");
        assert_eq!(flood[0].batches_rate_limited_total, 81 + 95);
    }

    #[test]
    fn a_batch_costs_one_per_tick() {
        let r = Registry::with_ingest_rate(Rate {
            per_second: 10.0,
            burst: 20.0,
        });
        let t0 = Instant::now();
        assert_eq!(r.admit_batch("packed", 16.0, t0), Admission::Take);
        assert!(matches!(
            r.admit_batch("packed", 16.0, t0),
            Admission::Refuse { .. }
        ));
        // What the refusal left: four single ticks.
        let taken = (0..10)
            .filter(|_| r.admit_batch("packed", 1.0, t0) == Admission::Take)
            .count();
        assert_eq!(taken, 4);
    }

    #[test]
    fn the_first_refusal_of_a_host_is_logged() {
        let r = Registry::with_ingest_rate(Rate {
            per_second: 1.0,
            burst: 1.0,
        });
        let t0 = Instant::now();
        assert_eq!(r.admit_batch("h", 1.0, t0), Admission::Take);
        assert_eq!(
            r.admit_batch("h", 1.0, t0),
            Admission::Refuse {
                refused_total: 1,
                log: Some(1)
            }
        );
    }
}
