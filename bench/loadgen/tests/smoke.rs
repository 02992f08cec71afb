//! Smoke test of the load generator against a real server run in-process
//! on 127.0.0.1: a small fleet is held with every batch stored and
//! acknowledged, in plain text and with TLS (a certificate per simulated
//! agent); `ping`/`true` round trips and a fan-out come back "exited 0"
//! from every simulated agent; a fleet comes back after the server
//! restarts. Small and fast, so a plain `cargo test` proves the benchmark
//! tools still work; the real figures come from `bench/run.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use monitor_loadgen::capacity::{self, CapacityConfig};
use monitor_loadgen::cmdlat::{self, CommandsConfig};
use monitor_loadgen::sim::FleetConfig;
use monitor_loadgen::storm::{self, StormConfig};
use monitor_loadgen::tls;
use monitor_server::config::{Config, DEFAULT_AGENT_CERT_LIFETIME, TlsConfig};
use monitor_server::server::{self, Listeners};
use monitor_server::store::{SqliteConfig, Store};
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
    config: Config,
    agents: String,
    admin: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// A server with TLS (its material in `dir/tls`), as by default.
fn tls_config(dir: &Path) -> Config {
    let mut config = Config::for_tests(dir.join("monitor.db"));
    config.tls = Some(TlsConfig {
        dir: dir.join("tls"),
        names: vec!["127.0.0.1".to_owned()],
        public_url: "https://127.0.0.1:1".to_owned(),
        agent_cert_lifetime: DEFAULT_AGENT_CERT_LIFETIME,
    });
    config
}

impl TestServer {
    async fn start(dir: &Path) -> TestServer {
        TestServer::start_with(Config::for_tests(dir.join("monitor.db"))).await
    }

    /// Starts with `config` (its listen addresses as given: the ports of a
    /// server stopped before, for a restart).
    async fn start_with(mut config: Config) -> TestServer {
        let listeners = Listeners::bind(&config).await.unwrap();
        config.listen = listeners.agents_addr().unwrap();
        config.admin_listen = listeners.admin_addr().unwrap();
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let agents = format!("{scheme}://{}", config.listen);
        let admin = format!("{scheme}://{}", config.admin_listen);
        let for_run = config.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::run(for_run, listeners, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        // With TLS the server makes its material as it starts: wait for
        // the operator credential, written last (atomically).
        if let Some(tls) = &config.tls {
            let cred = tls.dir.join("admin.cred");
            let until = std::time::Instant::now() + Duration::from_secs(30);
            while !cred.exists() {
                assert!(
                    std::time::Instant::now() < until,
                    "no {} after 30 s",
                    cred.display()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        TestServer {
            config,
            agents,
            admin,
            stop,
            task,
        }
    }

    /// The local operator credential a TLS server wrote on its first start.
    fn credential(&self) -> monitor::credential::Credential {
        let dir = &self.config.tls.as_ref().unwrap().dir;
        tls::read_credential(&dir.join("admin.cred")).unwrap()
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
        servers: vec![server.agents.clone()],
        interval: Duration::from_millis(200),
        hostname_prefix: prefix.to_owned(),
        // Two source addresses, as bench/run.sh uses for large fleets.
        sources: vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()],
        connect_concurrency: 8,
        tls: None,
        reconnect: false,
        pi_health_mounts: None,
    }
}

/// A short capacity search on `server` (with its operator credential when
/// it runs TLS).
fn small_capacity(server: &TestServer, prefix: &str, steps: Vec<usize>) -> CapacityConfig {
    CapacityConfig {
        fleet: fleet(server, prefix),
        admin: server.admin.clone(),
        credential: server.config.tls.as_ref().map(|_| server.credential()),
        // The test process is the server's.
        server_pids: vec![std::process::id()],
        steps,
        warmup: Duration::from_millis(500),
        hold: Duration::from_secs(2),
        // A debug build on a busy 2-core box: the latency target is
        // bench/run.sh's business, not this smoke test's.
        max_p99: Duration::from_secs(30),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_fleet_is_held_and_every_batch_is_stored() {
    let dir = temp_dir("capacity");
    let server = TestServer::start(dir.path()).await;
    let result = capacity::run(small_capacity(&server, "smoke-", vec![5, 20]))
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
async fn a_fleet_of_pis_gets_its_health_values_stored() {
    let dir = temp_dir("pihealth");
    let server = TestServer::start(dir.path()).await;
    let mut config = small_capacity(&server, "smokepi-", vec![4]);
    config.fleet.pi_health_mounts = Some(3);
    let result = capacity::run(config).await.unwrap();
    let db = server.config.db.clone();
    server.stop().await;

    assert_eq!(result.held().map(|s| s.agents), Some(4), "{result:?}");
    assert_eq!(result.stored_total, Some(result.acked_total));
    let monitor_server::config::Database::Sqlite(path) = db else {
        panic!("the smoke server runs on SQLite");
    };
    let store = Store::open(SqliteConfig::new(path)).await.unwrap();
    let hosts = store.hosts().await.unwrap();
    assert_eq!(hosts.len(), 4, "{hosts:?}");
    for host in &hosts {
        let mut health: Vec<(&str, &str)> = host
            .health
            .iter()
            .map(|h| (h.metric.name(), h.device.as_str()))
            .collect();
        health.sort_unstable();
        assert_eq!(
            health,
            [
                ("fs_used_percent", "/"),
                ("fs_used_percent", "/boot/firmware"),
                ("fs_used_percent", "/mnt/data1"),
                ("load1", ""),
                ("root_inodes_used_percent", ""),
                ("swap_percent", ""),
                ("temp_celsius", ""),
                ("throttled_flags", ""),
                ("under_voltage", ""),
                ("uptime_seconds", ""),
            ],
            "{}",
            host.hostname
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_come_back_from_every_simulated_agent() {
    let dir = temp_dir("commands");
    let server = TestServer::start(dir.path()).await;
    let result = cmdlat::run(CommandsConfig {
        fleet: fleet(&server, "smokecmd-"),
        admin: server.admin.clone(),
        cross_admin: None,
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
    assert!(result.cross.is_none());
    for rt in [&result.local.ping, &result.local.true_] {
        assert_eq!(rt.failed, 0, "{:?}", rt.first_failure);
        assert_eq!(rt.sorted.len(), 20);
        assert!(rt.quantile(0.5) <= rt.quantile(0.99));
    }
    assert_eq!(result.local.fanouts.len(), 2);
    for f in &result.local.fanouts {
        assert_eq!((f.ok, f.failed), (10, 0), "{f:?}");
        assert!(f.first.is_some_and(|first| first <= f.last));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_fleet_is_held_with_a_certificate_per_agent() {
    let dir = temp_dir("tls");
    let server = TestServer::start_with(tls_config(dir.path())).await;
    let result = capacity::run(small_capacity(&server, "smoketls-", vec![5, 10]))
        .await
        .unwrap();
    server.stop().await;

    let issued = result.issuance.expect("certificates were issued");
    assert_eq!(issued.certificates, 10);
    assert_eq!(result.first_error, None);
    assert_eq!(result.held().map(|s| s.agents), Some(10), "{result:?}");
    assert!(result.drained);
    assert!(result.acked_total > 0);
    assert_eq!(result.stored_total, Some(result.acked_total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_fleet_comes_back_after_the_server_restarts() {
    let dir = temp_dir("storm");
    let server = TestServer::start_with(tls_config(dir.path())).await;
    let ready = std::sync::Arc::new(tokio::sync::Notify::new());
    let storm = tokio::spawn(storm::run(StormConfig {
        fleet: fleet(&server, "smokestorm-"),
        admin: server.admin.clone(),
        credential: Some(server.credential()),
        agents: 6,
        restart_deadline: Duration::from_secs(60),
        back_deadline: Duration::from_secs(60),
        ready: Some(std::sync::Arc::clone(&ready)),
    }));
    tokio::time::timeout(Duration::from_secs(60), ready.notified())
        .await
        .expect("the fleet is connected within 60 s");
    let config = server.config.clone();
    server.stop().await;
    let server = TestServer::start_with(config).await;
    let result = tokio::time::timeout(Duration::from_secs(120), storm)
        .await
        .expect("the storm ends within its deadlines")
        .unwrap()
        .unwrap();
    server.stop().await;

    assert!(result.all_back(), "{result:?}");
    assert_eq!(result.back_unix_ms.len(), 6, "{result:?}");
    assert!(result.back_unix_ms[0] >= result.dropped_unix_ms);
    assert!(result.acked_after > 0, "batches flow again: {result:?}");
    assert_eq!(result.acks_failed, 0, "{result:?}");
    assert_eq!(result.issuance.map(|i| i.certificates), Some(6));
}
