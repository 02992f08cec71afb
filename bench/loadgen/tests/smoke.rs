//! Smoke test of the load generator against a real server run in-process
//! on 127.0.0.1: a small fleet is held with every batch stored and
//! acknowledged, and `ping`/`true` round trips and a fan-out come back
//! "exited 0" from every simulated agent. Small and fast, so a plain
//! `cargo test` proves the benchmark tools still work; the real figures
//! come from `bench/run.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use monitor_loadgen::capacity::{self, CapacityConfig};
use monitor_loadgen::cmdlat::{self, CommandsConfig};
use monitor_loadgen::sim::FleetConfig;
use monitor_server::config::Config;
use monitor_server::server::{self, Listeners};
use tempfile::TempDir;
use tokio::sync::oneshot;

/// A fresh directory for the server's database, removed on drop.
fn temp_dir(tag: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("monitor-loadgen-{tag}-"))
        .tempdir()
        .unwrap()
}

/// A running in-process server on loopback ports chosen by the kernel.
struct TestServer {
    agents: String,
    admin: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    async fn start(dir: &Path) -> TestServer {
        let config = Config::for_tests(dir.join("monitor.db"));
        let listeners = Listeners::bind(&config).await.unwrap();
        let agents = format!("http://{}", listeners.agents_addr().unwrap());
        let admin = format!("http://{}", listeners.admin_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::run(config, listeners, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestServer {
            agents,
            admin,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("server stops within 20 s")
            .unwrap();
    }
}

fn fleet(server: &TestServer, prefix: &str) -> FleetConfig {
    FleetConfig {
        server: server.agents.clone(),
        interval: Duration::from_millis(200),
        hostname_prefix: prefix.to_owned(),
        // Two source addresses, as bench/run.sh uses for large fleets.
        sources: vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()],
        connect_concurrency: 8,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_fleet_is_held_and_every_batch_is_stored() {
    let dir = temp_dir("capacity");
    let server = TestServer::start(dir.path()).await;
    let result = capacity::run(CapacityConfig {
        fleet: fleet(&server, "smoke-"),
        admin: server.admin.clone(),
        server_pid: Some(std::process::id()),
        steps: vec![5, 20],
        warmup: Duration::from_millis(500),
        hold: Duration::from_secs(2),
        // A debug build on a busy 2-core box: the latency target is
        // bench/run.sh's business, not this smoke test's.
        max_p99: Duration::from_secs(30),
    })
    .await
    .unwrap();
    server.stop().await;

    assert_eq!(result.steps.len(), 2, "{result:?}");
    for step in &result.steps {
        assert_eq!(step.pace, Ok(()), "{step:?}");
        assert_eq!(step.latency, Ok(()), "{step:?}");
        assert!(step.held());
        assert_eq!(step.connected, step.agents as i64);
        // 20 agents at 5 batches/s each: about 100 acknowledged per second.
        let expected = step.agents as f64 * 5.0;
        assert!(
            step.acked_per_s > expected * 0.9 && step.acked_per_s < expected * 1.1,
            "{step:?}"
        );
        assert!(step.p99.is_some() && step.server.is_some());
    }
    assert_eq!(result.held().map(|s| s.agents), Some(20));
    assert_eq!(result.kept_pace().map(|s| s.agents), Some(20));
    assert!(result.drained, "every batch acknowledged before the end");
    assert!(result.acked_total > 0);
    assert_eq!(result.stored_total, Some(result.acked_total));
    assert_eq!(result.first_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_come_back_from_every_simulated_agent() {
    let dir = temp_dir("commands");
    let server = TestServer::start(dir.path()).await;
    let result = cmdlat::run(CommandsConfig {
        fleet: fleet(&server, "smokecmd-"),
        admin: server.admin.clone(),
        agents: 10,
        calls: 20,
        fanouts: 2,
        monitorctl: None,
        monitorctl_calls: 0,
    })
    .await
    .unwrap();
    server.stop().await;

    assert_eq!(result.agents_online, 10);
    for rt in [&result.ping, &result.true_] {
        assert_eq!(rt.failed, 0, "{:?}", rt.first_failure);
        assert_eq!(rt.sorted.len(), 20);
        assert!(rt.quantile(0.5) <= rt.quantile(0.99));
    }
    assert_eq!(result.fanouts.len(), 2);
    for f in &result.fanouts {
        assert_eq!((f.ok, f.failed), (10, 0), "{f:?}");
        assert!(f.first.is_some_and(|first| first <= f.last));
    }
}
