//! The reconnection storm: a fleet of simulated agents connected to one
//! server, the server restarted, every agent reconnecting at once. How fast
//! does the server take them back (with TLS: handshakes per second), and
//! how long until all are back?
//!
//! The fleet connects (with TLS, each agent with its own certificate),
//! then this prints a line starting with `ready:` on stdout and waits for
//! the caller (bench/run.sh) to restart the server. Each agent whose
//! streams fail retries on its own with the real agent's backoff (1 s,
//! ×1.6, ±20 %): the jitter is all that spreads them. Measured: when the
//! first agent lost its streams, when each came back (from the
//! connections' times), failed attempts in between, the reconnections per
//! second (mean over first → last, and the busiest second), and whether
//! batches are acknowledged again once all are back.
//!
//! Restarting the server is the caller's: this tool never starts or stops
//! a process. Every wait has a deadline; only the loopback server the
//! caller names is contacted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use monitor::credential::Credential;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::sim::{Fleet, FleetConfig};
use crate::tls::{self, Issuance};
use crate::{Results, admin};

/// What [`run`] needs.
#[derive(Clone, Debug)]
pub struct StormConfig {
    /// Its `reconnect` is set by [`run`].
    pub fleet: FleetConfig,
    /// `http(s)://127.0.0.1:PORT` of the server's operator API (for the
    /// certificates only).
    pub admin: String,
    /// The operator credential for a TLS server; `None` with `--insecure`.
    pub credential: Option<Credential>,
    pub agents: usize,
    /// How long to wait for the restart once ready.
    pub restart_deadline: Duration,
    /// How long to wait, after the first agent lost its streams, for all
    /// to be back.
    pub back_deadline: Duration,
    /// Notified when the fleet is ready, besides the `ready:` line (for a
    /// caller in the same process).
    pub ready: Option<Arc<Notify>>,
}

/// What the storm showed.
#[derive(Clone, Debug)]
pub struct Storm {
    pub agents: usize,
    pub issuance: Option<Issuance>,
    /// UNIX ms when the first agent lost its streams.
    pub dropped_unix_ms: i64,
    /// UNIX ms of each reconnection, ascending.
    pub back_unix_ms: Vec<i64>,
    /// Agents connected at the end (all of them, unless the deadline
    /// passed).
    pub connected_at_end: i64,
    /// Connection attempts that failed between the drop and the end.
    pub failed_attempts: u64,
    /// Batches acknowledged as stored in the interval after all were back.
    pub acked_after: u64,
    /// Batches refused or not stored between the drop and the end.
    pub acks_failed: u64,
    pub first_error: Option<String>,
}

impl Storm {
    pub fn all_back(&self) -> bool {
        self.connected_at_end >= self.agents as i64
    }

    /// Reconnections per whole second after the first one.
    pub fn per_second(&self) -> Vec<usize> {
        let Some(&first) = self.back_unix_ms.first() else {
            return Vec::new();
        };
        let mut buckets: Vec<usize> = Vec::new();
        for &t in &self.back_unix_ms {
            let i = usize::try_from((t - first) / 1000).unwrap_or(0);
            if buckets.len() <= i {
                buckets.resize(i + 1, 0);
            }
            buckets[i] += 1;
        }
        buckets
    }

    /// The `storm.*` result lines.
    pub fn results(&self, r: &mut Results) {
        if let Some(i) = &self.issuance {
            i.results(r);
        }
        r.put("storm.agents", self.agents);
        r.put("storm.reconnected", self.back_unix_ms.len());
        r.put("storm.all_back", if self.all_back() { "yes" } else { "no" });
        r.put("storm.dropped_unix_ms", self.dropped_unix_ms);
        if let (Some(&first), Some(&last)) = (self.back_unix_ms.first(), self.back_unix_ms.last()) {
            r.put("storm.first_back_unix_ms", first);
            r.put("storm.last_back_unix_ms", last);
            r.put("storm.last_back_after_drop_ms", last - self.dropped_unix_ms);
            let spread_ms = last - first;
            r.put("storm.spread_ms", spread_ms);
            r.put(
                "storm.per_s_mean",
                format!(
                    "{:.0}",
                    self.back_unix_ms.len() as f64 / (spread_ms.max(1) as f64 / 1000.0)
                ),
            );
            let per_second = self.per_second();
            r.put(
                "storm.per_s_peak",
                per_second.iter().copied().max().unwrap_or(0),
            );
            r.put(
                "storm.per_second",
                per_second
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        r.put("storm.failed_attempts", self.failed_attempts);
        r.put("storm.acked_after", self.acked_after);
        r.put("storm.acks_failed", self.acks_failed);
        if let Some(e) = &self.first_error {
            r.put("storm.first_error", e);
        }
    }
}

/// Polls every 10 ms until `done` or `deadline`; returns whether done.
async fn poll(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + deadline;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Connects the fleet, says `ready:`, waits for the restart and the
/// reconnections; see the module's doc.
pub async fn run(config: StormConfig) -> Result<Storm, String> {
    let admin = admin::connect(&config.admin, config.credential.as_ref()).await?;
    let mut fleet_config = config.fleet.clone();
    fleet_config.reconnect = true;
    let issuance = tls::prepare_fleet(
        &admin,
        config.credential.as_ref(),
        &mut fleet_config,
        config.agents,
    )
    .await?;
    drop(admin);
    let mut fleet = Fleet::new(fleet_config).map_err(|e| e.to_string())?;
    let agents = config.agents as i64;
    let connect_deadline = Duration::from_secs(60) + Duration::from_millis(5 * agents as u64);
    let connected = fleet.grow_to(config.agents, connect_deadline).await;
    let stats = Arc::clone(fleet.stats());
    if connected < agents
        && !poll(connect_deadline, || {
            stats.connected.load(Ordering::Relaxed) >= agents
        })
        .await
    {
        let first = stats.first_error().unwrap_or_default();
        fleet.stop(Duration::from_secs(30)).await;
        return Err(format!(
            "only {connected} of {agents} agents connected before the restart: {first}"
        ));
    }
    let before = stats.counts();
    println!("ready: {agents} agents connected; restart the server now");
    if let Some(ready) = &config.ready {
        ready.notify_one();
    }

    let connected_now = || stats.connected.load(Ordering::Relaxed);
    if !poll(config.restart_deadline, || connected_now() < agents).await {
        fleet.stop(Duration::from_secs(30)).await;
        return Err(format!(
            "no agent lost its connection within {:?}: was the server restarted?",
            config.restart_deadline
        ));
    }
    let dropped_unix_ms = monitor::time::now_unix_ms();
    // Until every agent is down and back up: the first connections after
    // the drop may be ones that have not yet noticed it.
    let back = poll(config.back_deadline, || {
        let c = stats.counts();
        c.connected >= agents && c.stream_failures - before.stream_failures >= agents as u64
    })
    .await;
    let at_end = stats.counts();
    // Batches flow again: what one interval after the last is back brings.
    let acked_before = stats.counts().acks_ok;
    if back {
        tokio::time::sleep(config.fleet.interval * 2).await;
    }
    let acked_after = stats.counts().acks_ok - acked_before;
    let back_unix_ms = stats.connects_since(dropped_unix_ms);
    let first_error = stats.first_error();
    fleet.stop(Duration::from_secs(30)).await;
    Ok(Storm {
        agents: config.agents,
        issuance,
        dropped_unix_ms,
        back_unix_ms,
        connected_at_end: at_end.connected,
        failed_attempts: at_end.connect_failures - before.connect_failures,
        acked_after,
        acks_failed: at_end.acks_failed - before.acks_failed,
        first_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storm(back: Vec<i64>) -> Storm {
        Storm {
            agents: back.len(),
            issuance: None,
            dropped_unix_ms: 1_000,
            back_unix_ms: back,
            connected_at_end: 4,
            failed_attempts: 0,
            acked_after: 0,
            acks_failed: 0,
            first_error: None,
        }
    }

    #[test]
    fn reconnections_are_counted_per_second() {
        let s = storm(vec![2_000, 2_500, 2_999, 4_100]);
        assert_eq!(s.per_second(), vec![3, 0, 1]);
        assert!(s.all_back());
        let mut r = Results::default();
        s.results(&mut r);
        let lines = r.lines();
        assert!(lines.contains(&"storm.last_back_after_drop_ms=3100".to_owned()));
        assert!(lines.contains(&"storm.spread_ms=2100".to_owned()));
        assert!(lines.contains(&"storm.per_s_peak=3".to_owned()));
        assert!(lines.contains(&"storm.per_s_mean=2".to_owned()));
    }

    #[test]
    fn no_reconnection_no_rate() {
        let s = storm(Vec::new());
        assert!(s.per_second().is_empty());
        let mut r = Results::default();
        s.results(&mut r);
        assert!(!r.lines().iter().any(|l| l.starts_with("storm.per_s")));
    }
}
