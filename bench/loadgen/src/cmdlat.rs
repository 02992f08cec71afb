//! Command latency with a fleet connected: `ping` and `true` round trips
//! from the operator API to one agent and back, one at a time, and the
//! fan-out of one `ping` to every connected agent (time until the last
//! result is back).
//!
//! The round trip is what an operator waits for: `Exec` sent → the event
//! stream's end, which comes after the agent's final result was routed
//! back. It is timed with the gRPC client directly, so the figure is the
//! server's and the agent's, not a process start; optionally a few calls
//! through the real `monitorctl` binary show what a person at a shell
//! waits. Every call must come back "exited 0": a failure is counted and
//! reported, never timed as a success.
//!
//! With replicas (`cross_admin`): the fleet connects to one replica, and
//! every call and fan-out goes through that replica's operator API (local
//! routing) and through another replica's (relayed across the shared
//! store), alternating call by call, so both see the same load and the
//! ratio of the two is a same-run figure.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::sim::{Fleet, FleetConfig};
use crate::{Results, admin, ms};

#[derive(Clone, Debug)]
pub struct CommandsConfig {
    pub fleet: FleetConfig,
    /// `http://127.0.0.1:PORT` of the server's operator API (the replica
    /// the fleet connects to).
    pub admin: String,
    /// Another replica's operator API, timed too (commands relayed across
    /// replicas); `None`: one server.
    pub cross_admin: Option<String>,
    pub agents: usize,
    /// Round trips timed per command.
    pub calls: usize,
    /// Fan-outs to every agent.
    pub fanouts: usize,
    /// The monitorctl binary to time a few calls through, if any.
    pub monitorctl: Option<PathBuf>,
    pub monitorctl_calls: usize,
}

/// Sorted round trips of one command.
#[derive(Clone, Debug, Default)]
pub struct RoundTrips {
    pub sorted: Vec<Duration>,
    pub failed: usize,
    pub first_failure: Option<String>,
}

impl RoundTrips {
    /// Exact quantile (nearest rank) of the measured calls.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.sorted.is_empty() {
            return None;
        }
        let rank = ((q * self.sorted.len() as f64).ceil() as usize).clamp(1, self.sorted.len());
        Some(self.sorted[rank - 1])
    }

    fn push(&mut self, d: Duration) {
        self.sorted.push(d);
    }

    fn fail(&mut self, why: String) {
        self.failed += 1;
        self.first_failure.get_or_insert(why);
    }

    fn finish(&mut self) {
        self.sorted.sort();
    }
}

/// One fan-out to every agent.
#[derive(Clone, Debug)]
pub struct Fanout {
    /// Exec sent → last result back.
    pub last: Duration,
    pub first: Option<Duration>,
    pub ok: usize,
    pub failed: usize,
}

/// What was measured through one operator API.
#[derive(Clone, Debug, Default)]
pub struct Route {
    pub ping: RoundTrips,
    pub true_: RoundTrips,
    pub fanouts: Vec<Fanout>,
}

#[derive(Clone, Debug)]
pub struct CommandLatency {
    pub agents_online: usize,
    /// Through the replica holding the agents.
    pub local: Route,
    /// Through another replica, when one was given.
    pub cross: Option<Route>,
    pub monitorctl: RoundTrips,
}

/// `calls` round trips of `argv` through each of `admins`, alternating
/// call by call (host `i` through every admin before host `i + 1`); one
/// [`RoundTrips`] per admin.
async fn round_trips(
    admins: &mut [admin::Admin],
    cfg: &CommandsConfig,
    argv: &[&str],
    calls: usize,
) -> Vec<RoundTrips> {
    let mut rts = vec![RoundTrips::default(); admins.len()];
    for i in 0..calls {
        let host = cfg.fleet.hostname(i % cfg.agents.max(1));
        for (admin, rt) in admins.iter_mut().zip(&mut rts) {
            match admin::exec(admin, vec![host.clone()], false, argv).await {
                Ok(t) if t.ok == 1 && t.failed == 0 => rt.push(t.total),
                Ok(t) => rt.fail(
                    t.first_failure
                        .unwrap_or_else(|| format!("{host}: no result")),
                ),
                Err(e) => rt.fail(e),
            }
        }
    }
    for rt in &mut rts {
        rt.finish();
    }
    rts
}

/// `monitorctl --server ADMIN exec --host H -- ping`, timed as a process.
fn monitorctl_calls(cfg: &CommandsConfig, binary: &PathBuf) -> RoundTrips {
    let mut rt = RoundTrips::default();
    for i in 0..cfg.monitorctl_calls {
        let host = cfg.fleet.hostname(i % cfg.agents.max(1));
        let started = Instant::now();
        let out = Command::new(binary)
            .args([
                "--server", &cfg.admin, "exec", "--host", &host, "--", "ping",
            ])
            .stdin(Stdio::null())
            .output();
        let elapsed = started.elapsed();
        match out {
            // monitorctl prefixes each output line with its host.
            Ok(o) if o.status.success() && o.stdout == format!("{host}: pong\n").as_bytes() => {
                rt.push(elapsed)
            }
            Ok(o) => rt.fail(format!(
                "monitorctl exit {:?}: {}",
                o.status.code(),
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => rt.fail(format!("cannot run {}: {e}", binary.display())),
        }
    }
    rt.finish();
    rt
}

/// Connects the fleet, measures, stops the fleet.
pub async fn run(cfg: CommandsConfig) -> Result<CommandLatency, String> {
    let mut admins = vec![admin::connect(&cfg.admin, None).await?];
    if let Some(url) = &cfg.cross_admin {
        admins.push(admin::connect(url, None).await?);
    }
    let mut fleet = Fleet::new(cfg.fleet.clone()).map_err(|e| e.to_string())?;
    let connected = fleet
        .grow_to(
            cfg.agents,
            Duration::from_secs(60) + Duration::from_millis(cfg.agents as u64 * 5),
        )
        .await;
    // Every operator API must see the whole fleet online (another
    // replica through the shared store's sessions).
    let mut online = cfg.agents;
    for admin in &mut admins {
        let seen = admin::wait_online(
            admin,
            &cfg.fleet.hostname_prefix,
            cfg.agents,
            Duration::from_secs(60),
        )
        .await?;
        online = online.min(seen);
    }
    if online < cfg.agents {
        let why = fleet.stats().first_error().unwrap_or_default();
        fleet.stop(Duration::from_secs(10)).await;
        return Err(format!(
            "only {online} of {} agents online ({connected} connected): {why}",
            cfg.agents
        ));
    }
    // Warm up: connections, the router's maps, the store's command tables.
    let _ = round_trips(&mut admins, &cfg, &["ping"], 50.min(cfg.calls)).await;
    let mut routes = vec![Route::default(); admins.len()];
    for (route, rt) in routes
        .iter_mut()
        .zip(round_trips(&mut admins, &cfg, &["ping"], cfg.calls).await)
    {
        route.ping = rt;
    }
    for (route, rt) in routes
        .iter_mut()
        .zip(round_trips(&mut admins, &cfg, &["true"], cfg.calls).await)
    {
        route.true_ = rt;
    }
    for _ in 0..cfg.fanouts {
        for (admin, route) in admins.iter_mut().zip(&mut routes) {
            let t = admin::exec(admin, Vec::new(), true, &["ping"]).await?;
            route.fanouts.push(Fanout {
                last: t.total,
                first: t.first_result,
                ok: t.ok,
                failed: t.failed,
            });
        }
    }
    let monitorctl = match &cfg.monitorctl {
        Some(binary) => {
            let c = cfg.clone();
            let b = binary.clone();
            tokio::task::spawn_blocking(move || monitorctl_calls(&c, &b))
                .await
                .map_err(|e| format!("monitorctl timing task: {e}"))?
        }
        None => RoundTrips::default(),
    };
    fleet.stop(Duration::from_secs(30)).await;
    let mut routes = routes.into_iter();
    Ok(CommandLatency {
        agents_online: online,
        local: routes.next().unwrap_or_default(),
        cross: routes.next(),
        monitorctl,
    })
}

impl CommandLatency {
    /// Prints the human summary.
    pub fn print(&self) {
        println!(
            "command round trips with {} agents online",
            self.agents_online
        );
        let line = |name: &str, rt: &RoundTrips| {
            let q = |x| rt.quantile(x).map_or_else(|| "-".to_owned(), ms);
            println!(
                "  {name:<22} n={:<5} p50 {:>8} ms  p99 {:>8} ms  max {:>8} ms  failed {}",
                rt.sorted.len(),
                q(0.5),
                q(0.99),
                q(1.0),
                rt.failed
            );
            if let Some(f) = &rt.first_failure {
                println!("    first failure: {f}");
            }
        };
        let route = |via: &str, r: &Route| {
            line(&format!("ping (gRPC{via})"), &r.ping);
            line(&format!("true (gRPC{via})"), &r.true_);
            for (i, f) in r.fanouts.iter().enumerate() {
                println!(
                    "  fan-out {}{via} to all: last result {} ms, first {} ms, {} ok, {} failed",
                    i + 1,
                    ms(f.last),
                    f.first.map_or_else(|| "-".to_owned(), ms),
                    f.ok,
                    f.failed
                );
            }
        };
        route("", &self.local);
        if let Some(cross) = &self.cross {
            route(", other replica", cross);
        }
        if !self.monitorctl.sorted.is_empty() || self.monitorctl.failed > 0 {
            line("ping (monitorctl proc)", &self.monitorctl);
        }
    }

    /// The summary lines for bench/run.sh: `commands.*` through the
    /// replica holding the agents, `commands.cross.*` through the other.
    pub fn results(&self, r: &mut Results) {
        r.put("commands.agents", self.agents_online);
        self.local.results("commands", r);
        if let Some(cross) = &self.cross {
            cross.results("commands.cross", r);
        }
        round_trip_results(r, "commands.monitorctl_ping", &self.monitorctl);
    }
}

fn round_trip_results(r: &mut Results, prefix: &str, rt: &RoundTrips) {
    r.put(&format!("{prefix}.calls"), rt.sorted.len());
    r.put(&format!("{prefix}.failed"), rt.failed);
    for (label, q) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
        if let Some(d) = rt.quantile(q) {
            r.put(&format!("{prefix}.{label}_ms"), ms(d));
        }
    }
}

impl Route {
    /// `PREFIX.ping.*`, `PREFIX.true.*`, `PREFIX.fanout.*`.
    fn results(&self, prefix: &str, r: &mut Results) {
        round_trip_results(r, &format!("{prefix}.ping"), &self.ping);
        round_trip_results(r, &format!("{prefix}.true"), &self.true_);
        if !self.fanouts.is_empty() {
            let mut last: Vec<Duration> = self.fanouts.iter().map(|f| f.last).collect();
            last.sort();
            r.put(&format!("{prefix}.fanout.runs"), last.len());
            r.put(
                &format!("{prefix}.fanout.median_ms"),
                ms(last[last.len() / 2]),
            );
            r.put(&format!("{prefix}.fanout.max_ms"), ms(last[last.len() - 1]));
            r.put(
                &format!("{prefix}.fanout.ok_min"),
                self.fanouts.iter().map(|f| f.ok).min().unwrap_or(0),
            );
            r.put(
                &format!("{prefix}.fanout.failed_total"),
                self.fanouts.iter().map(|f| f.failed).sum::<usize>(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ms_values: &[u64], q: f64, expected_ms: Option<u64>) {
        let mut rt = RoundTrips::default();
        for &v in ms_values {
            rt.push(Duration::from_millis(v));
        }
        rt.finish();
        assert_eq!(rt.quantile(q), expected_ms.map(Duration::from_millis));
    }

    #[test]
    fn nearest_rank_quantiles() {
        let hundred: Vec<u64> = (1..=100).rev().collect();
        check(&hundred, 0.5, Some(50));
        check(&hundred, 0.99, Some(99));
        check(&hundred, 1.0, Some(100));
        check(&[5, 1], 0.5, Some(1));
        check(&[3], 0.99, Some(3));
        check(&[], 0.5, None);
    }
}
