//! The server among the programs people already run, tested against the
//! real ones (Debian's `prometheus` 2.42 with `promtool`, and
//! `victoria-metrics`), each started here in a temp dir on a loopback
//! port and stopped with the test:
//! - Prometheus scrapes `/metrics` over HTTPS with the server's CA and the
//!   bearer token; the values match `monitorctl query`; `promtool check
//!   metrics` finds nothing to say; every PromQL of the shipped Grafana
//!   dashboard parses and returns series for the test hosts (the health
//!   panels' for a fake Raspberry Pi);
//! - remote-write to Prometheus and VictoriaMetrics: every stored sample
//!   arrives once with its value and time, across a receiver outage and a
//!   `kill -9` of the server;
//! - gRPC health (no client certificate on the agents' listener) and
//!   reflection (authenticated), from Rust, and from Python when its grpc
//!   packages are there.
//!
//! A machine without a program prints `skipped: <test> needs <package>
//! (apt install <package>)` and the test passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The program `name` from Debian package `package`, or the skip line.
fn tool(name: &str, package: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        println!("skipped: {test} needs {package} (apt install {package})");
    }
    found
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.0 GET on loopback (Prometheus' and VictoriaMetrics'
/// APIs): status and body, `None` if nothing answers.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// A Prometheus started here.
struct Prometheus {
    /// Killed when dropped.
    _proc: Proc,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(bin: &Path, dir: &Path, config: &str, receiver: bool) -> Prometheus {
        std::fs::create_dir_all(dir).unwrap();
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        if receiver {
            cmd.arg("--web.enable-remote-write-receiver");
        }
        let proc = Proc::spawn(cmd, "prometheus");
        wait_for("prometheus to be ready", Duration::from_secs(60), || {
            http_get(addr, "/-/ready").filter(|(s, _)| *s == 200)
        });
        Prometheus { _proc: proc, addr }
    }

    /// The `result` of an instant query (panics on an error answer).
    fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, body) = http_get(self.addr, &path).expect("prometheus answers");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status, 200, "query {promql}: {body}");
        assert_eq!(v["status"], "success", "query {promql}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value of an instant query, if it has one.
    fn scalar(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        r.first()?["value"][1].as_str()?.parse().ok()
    }
}

/// Each sample Prometheus holds of the series `promql` selects over the
/// last 10 minutes: (metric name, hostname, time ms) → value.
fn prometheus_samples(p: &Prometheus, selector: &str) -> BTreeMap<(String, String, i64), f64> {
    let mut out = BTreeMap::new();
    for series in p.query(&format!("{selector}[10m]")) {
        let name = series["metric"]["__name__"].as_str().unwrap().to_owned();
        let host = series["metric"]["hostname"].as_str().unwrap().to_owned();
        for pair in series["values"].as_array().unwrap() {
            let t = (pair[0].as_f64().unwrap() * 1000.0).round() as i64;
            let v: f64 = pair[1].as_str().unwrap().parse().unwrap();
            let again = out.insert((name.clone(), host.clone(), t), v);
            assert!(again.is_none(), "{name} {host} {t} twice");
        }
    }
    out
}

/// The exported name and scale of a stored metric: the README's table,
/// written out here again as the test's own oracle.
fn exported(metric: &str) -> (&'static str, f64) {
    match metric {
        "cpu_percent" => ("monitor_host_cpu_ratio", 0.01),
        "mem_percent" => ("monitor_host_memory_used_ratio", 0.01),
        "disk_read_kbps" => ("monitor_host_disk_read_bytes_per_second", 1024.0),
        "disk_write_kbps" => ("monitor_host_disk_write_bytes_per_second", 1024.0),
        "net_in_kbps" => ("monitor_host_network_receive_bytes_per_second", 1024.0),
        "net_out_kbps" => ("monitor_host_network_transmit_bytes_per_second", 1024.0),
        other => panic!("unknown metric {other}"),
    }
}

/// What the store holds of `host` (monitorctl query --json), exported:
/// (name, hostname, time ms) → value.
fn stored(server: &Server, host: &str) -> BTreeMap<(String, String, i64), f64> {
    let mut out = BTreeMap::new();
    for s in server.samples(host, "10m") {
        let (name, scale) = exported(&s.metric);
        let t = rfc3339_ms(&s.time);
        out.insert((name.to_owned(), s.hostname.clone(), t), s.value * scale);
    }
    out
}

/// What the store holds of a host's series, exported: (name, hostname,
/// time ms) → value.
type Oracle = fn(&Server, &str) -> BTreeMap<(String, String, i64), f64>;

/// What the store holds of `host`'s load1 (a health metric every Linux box
/// has), exported: (name, hostname, time ms) → value.
fn stored_load1(server: &Server, host: &str) -> BTreeMap<(String, String, i64), f64> {
    let out = server.ctl_ok(&[
        "query", host, "--metric", "load1", "--since", "10m", "--json",
    ]);
    out.lines()
        .map(|l| {
            let s = JsonSample::parse(l).unwrap_or_else(|| panic!("bad json line {l:?}"));
            let key = (
                "monitor_host_load1".to_owned(),
                s.hostname,
                rfc3339_ms(&s.time),
            );
            (key, s.value)
        })
        .collect()
}

/// Runs `promtool check metrics` on `body`: its exit code and output.
fn promtool_check(promtool: &Path, body: &str) -> (i32, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

const HOSTS: [&str; 3] = ["prom-a", "prom-b", "prom-c"];

/// A regex of the six metrics' exported names (the agents on this machine
/// send health metrics too, exported under other names).
const SIX: &str = "monitor_host_(cpu_ratio|memory_used_ratio|disk_(read|write)_bytes_per_second\
                   |network_(receive|transmit)_bytes_per_second)";

#[test]
fn prometheus_scrapes_metrics_over_https_and_the_dashboard_queries_return_series() {
    let test = "prometheus_scrapes_metrics_over_https_and_the_dashboard_queries_return_series";
    let (Some(prometheus), Some(promtool)) = (
        tool("prometheus", "prometheus", test),
        tool("promtool", "prometheus", test),
    ) else {
        return;
    };
    let dir = TempDir::new("prom-scrape");
    let mut server = Server::start(&dir.join("monitor.db"));
    let mut agents: Vec<Proc> = HOSTS.iter().map(|h| server.agent(h).spawn()).collect();
    wait_for("three hosts online", Duration::from_secs(30), || {
        HOSTS
            .iter()
            .all(|h| server.host(h).is_some_and(|j| j.online))
            .then_some(())
    });
    let token = server.metrics_token();
    let token_file = dir.join("metrics.token");
    std::fs::write(&token_file, &token).unwrap();

    // Authentication on every request.
    let (status, body) = https_get(&server, "/metrics", None, None);
    assert_eq!(status, 401, "{body}");
    let (status, _) = https_get(&server, "/metrics", Some("not-the-token-at-all"), None);
    assert_eq!(status, 401);
    // The text format passes promtool without a word; OpenMetrics when asked.
    let (status, text) = wait_for(
        "every host's values in /metrics",
        Duration::from_secs(20),
        || {
            let (status, body) = https_get(&server, "/metrics", Some(&token), None);
            HOSTS
                .iter()
                .all(|h| body.contains(&format!("monitor_host_cpu_ratio{{hostname=\"{h}\"}}")))
                .then_some((status, body))
        },
    );
    assert_eq!(status, 200);
    let (code, said) = promtool_check(&promtool, &text);
    assert_eq!((code, said.as_str()), (0, ""), "promtool on:\n{text}");
    assert!(text.contains("# TYPE monitor_server_samples_ingested_total counter"));
    assert!(text.contains("monitor_server_store_commit_seconds_bucket{le=\"+Inf\"}"));
    assert!(text.contains("process_resident_memory_bytes "));
    let (status, om) = https_get(
        &server,
        "/metrics",
        Some(&token),
        Some("application/openmetrics-text;version=1.0.0"),
    );
    assert_eq!(status, 200);
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE monitor_server_samples_ingested counter"));

    // Prometheus scrapes it, with the CA and the token; a job without the
    // token is refused.
    let ca = server.dir().join("tls").join("ca.pem");
    let target = server.http_addr().unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n\
         - job_name: monitor\n  scheme: https\n  tls_config:\n    ca_file: {ca}\n  \
         authorization:\n    credentials_file: {tok}\n  static_configs:\n  - targets: ['{target}']\n\
         - job_name: monitor-no-token\n  scheme: https\n  tls_config:\n    ca_file: {ca}\n  \
         static_configs:\n  - targets: ['{target}']\n",
        ca = ca.display(),
        tok = token_file.display()
    );
    let prom = Prometheus::start(&prometheus, &dir.join("prometheus"), &config, false);
    wait_for(
        "a few scrapes of every host",
        Duration::from_secs(60),
        || {
            let counts = prom.query("count_over_time(monitor_host_cpu_ratio[5m])");
            (counts.len() == 3
                && counts
                    .iter()
                    .all(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap() >= 3.0))
            .then_some(())
        },
    );
    assert_eq!(prom.scalar("up{job=\"monitor\"}"), Some(1.0));
    assert_eq!(prom.scalar("up{job=\"monitor-no-token\"}"), Some(0.0));
    assert_eq!(prom.scalar("sum(monitor_host_up)"), Some(3.0));

    // Every sample Prometheus holds is the one the store holds for that
    // host, metric and time, in exported units, exactly.
    for h in HOSTS {
        let scraped =
            prometheus_samples(&prom, &format!("{{__name__=~\"{SIX}\",hostname=\"{h}\"}}"));
        let names: BTreeSet<&str> = scraped.keys().map(|k| k.0.as_str()).collect();
        assert_eq!(names.len(), 6, "{h}: {names:?}");
        let store = stored(&server, h);
        for (key, v) in &scraped {
            assert_eq!(store.get(key), Some(v), "{key:?}: Prometheus has {v}");
        }
    }

    // An agent that stops: up 0, its values gone from /metrics.
    drop(agents.pop());
    wait_for("prom-c down in Prometheus", Duration::from_secs(60), || {
        (prom.scalar("monitor_host_up{hostname=\"prom-c\"}") == Some(0.0)).then_some(())
    });
    let (_, text) = https_get(&server, "/metrics", Some(&token), None);
    assert!(
        !text.contains("monitor_host_cpu_ratio{hostname=\"prom-c\"}"),
        "{text}"
    );
    assert!(
        text.contains("monitor_host_up{hostname=\"prom-c\"} 0"),
        "{text}"
    );

    // Every query of the shipped dashboard parses and returns series (the
    // health panels' only where the hosts have those values: they are
    // checked against a fake Pi in `prometheus_scrapes_a_pis_health_series`).
    let dashboard = shipped_dashboard();
    let variable = dashboard["templating"]["list"][0]["query"]["query"]
        .as_str()
        .unwrap();
    assert_eq!(variable, "label_values(monitor_host_up, hostname)");
    let (_, body) = http_get(
        prom.addr,
        &format!(
            "/api/v1/label/hostname/values?match[]={}",
            url_encode("monitor_host_up")
        ),
    )
    .unwrap();
    for h in HOSTS {
        assert!(body.contains(&format!("\"{h}\"")), "{body}");
    }
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 23, "{exprs:?}");
    for expr in &exprs {
        if is_health(expr) {
            prom.query(&instantiate(expr, "prom-a"));
        } else {
            check_panel_query(&prom, expr, "prom-a");
        }
    }

    health_and_reflection(&server);

    // Shutting down: NOT_SERVING before the listener goes.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let endpoint = server.endpoint("prom-a");
    let mut watch = rt.block_on(async {
        let channel = endpoint.connect().await.unwrap();
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let mut stream = client
            .watch(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.status, 1, "SERVING");
        stream
    });
    server.proc.signal("TERM");
    let next =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), watch.message()).await });
    match next {
        Ok(Ok(Some(m))) => assert_eq!(m.status, 2, "NOT_SERVING"),
        other => panic!("expected NOT_SERVING before the stream ended, got {other:?}"),
    }
    drop(agents);
    assert!(server.proc.wait_exit(Duration::from_secs(20)).success());
}

/// A fake Raspberry Pi's health (issue 14) through `/metrics`: promtool
/// finds nothing to say, and a real Prometheus scraping it holds the
/// temperature, one 0/1 series per throttling flag, each file system's
/// usage under its `mountpoint` and the load, in exported units.
#[test]
fn prometheus_scrapes_a_pis_health_series() {
    let test = "prometheus_scrapes_a_pis_health_series";
    let (Some(prometheus), Some(promtool)) = (
        tool("prometheus", "prometheus", test),
        tool("promtool", "prometheus", test),
    ) else {
        return;
    };
    let host = fake_pi();
    let dir = TempDir::new("prom-health");
    let server = Server::start(&dir.join("monitor.db"));
    let _agent = fake_pi_agent(&server, &host, "pi-health").spawn();
    let token = server.metrics_token();
    let token_file = dir.join("metrics.token");
    std::fs::write(&token_file, &token).unwrap();
    let text = wait_for(
        "the Pi's health in /metrics",
        Duration::from_secs(30),
        || {
            let (_, body) = https_get(&server, "/metrics", Some(&token), None);
            (body.contains("monitor_host_temperature_celsius{hostname=\"pi-health\"}")
                && body.contains("mountpoint=\"/boot/firmware\""))
            .then_some(body)
        },
    );
    let (code, said) = promtool_check(&promtool, &text);
    assert_eq!((code, said.as_str()), (0, ""), "promtool on:\n{text}");
    for line in [
        "# TYPE monitor_host_temperature_celsius gauge",
        "# HELP monitor_host_throttled ",
        "monitor_host_throttled{hostname=\"pi-health\",flag=\"under_voltage\"} 1 ",
        "monitor_host_throttled{hostname=\"pi-health\",flag=\"arm_frequency_capped\"} 0 ",
        "monitor_host_throttled_since_agent_start{hostname=\"pi-health\",flag=\"throttled\"} 1 ",
        "monitor_host_under_voltage{hostname=\"pi-health\"} 0 ",
        "monitor_host_load1{hostname=\"pi-health\"} 0.42 ",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }

    let ca = server.dir().join("tls").join("ca.pem");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n\
         - job_name: monitor\n  scheme: https\n  tls_config:\n    ca_file: {ca}\n  \
         authorization:\n    credentials_file: {tok}\n  static_configs:\n  - targets: ['{target}']\n",
        ca = ca.display(),
        tok = token_file.display(),
        target = server.http_addr().unwrap()
    );
    let prom = Prometheus::start(&prometheus, &dir.join("prometheus"), &config, false);
    let pi = "hostname=\"pi-health\"";
    wait_for(
        "Prometheus holds the Pi's health",
        Duration::from_secs(60),
        || {
            prom.scalar(&format!("monitor_host_temperature_celsius{{{pi}}}"))
                .is_some()
                .then_some(())
        },
    );
    for (promql, want) in [
        (format!("monitor_host_temperature_celsius{{{pi}}}"), 61.3),
        (
            format!("monitor_host_throttled{{{pi},flag=\"under_voltage\"}}"),
            1.0,
        ),
        (
            format!("monitor_host_throttled{{{pi},flag=\"throttled\"}}"),
            1.0,
        ),
        (
            format!("monitor_host_throttled{{{pi},flag=\"soft_temperature_limit\"}}"),
            0.0,
        ),
        (format!("count(monitor_host_throttled{{{pi}}})"), 4.0),
        (format!("monitor_host_load1{{{pi}}}"), 0.42),
        (
            format!("count(monitor_host_filesystem_used_ratio{{{pi}}})"),
            2.0,
        ),
    ] {
        assert_eq!(prom.scalar(&promql), Some(want), "{promql}");
    }
    // The file systems' ratios, by mount point, between 0 and 1.
    let fs = prom.query(&format!("monitor_host_filesystem_used_ratio{{{pi}}}"));
    let mut mounts: Vec<&str> = fs
        .iter()
        .map(|s| s["metric"]["mountpoint"].as_str().unwrap())
        .collect();
    mounts.sort_unstable();
    assert_eq!(mounts, ["/", "/boot/firmware"]);
    for s in &fs {
        let v: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
        assert!((0.0..=1.0).contains(&v), "{s}");
    }
    // The shipped dashboard's health panels: each query returns the Pi's
    // series (there are panels for temperature, throttling, file systems
    // and load, fleet-wide and per host).
    let health: Vec<String> = dashboard_exprs(&shipped_dashboard())
        .into_iter()
        .filter(|e| is_health(e))
        .collect();
    for family in [
        "monitor_host_temperature_celsius",
        "monitor_host_throttled",
        "monitor_host_filesystem_used_ratio",
        "monitor_host_load1",
    ] {
        let panels = health.iter().filter(|e| e.contains(family)).count();
        assert!(
            panels >= 2,
            "{family}: {panels} panel queries in {health:?}"
        );
    }
    for expr in &health {
        check_panel_query(&prom, expr, "pi-health");
    }
}

/// The Grafana dashboard shipped in `dashboards/`.
fn shipped_dashboard() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/grafana-monitor.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every panel query of `dashboard`.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    exprs
}

/// The health series (issue 14) a dashboard panel may ask for; only hosts
/// with the sensors have them.
const HEALTH_SERIES: [&str; 5] = [
    "monitor_host_temperature_celsius",
    "monitor_host_throttled",
    "monitor_host_under_voltage",
    "monitor_host_filesystem_used_ratio",
    "monitor_host_load1",
];

fn is_health(expr: &str) -> bool {
    HEALTH_SERIES.iter().any(|s| expr.contains(s))
}

/// A panel query as Grafana sends it with `host` picked.
fn instantiate(expr: &str, host: &str) -> String {
    expr.replace("$hostname", host)
        .replace("$__rate_interval", "1m")
}

/// Waits until the panel query `expr` (for `host`) returns series, and
/// checks that a per-host panel's are all of `host`.
fn check_panel_query(prom: &Prometheus, expr: &str, host: &str) {
    let q = instantiate(expr, host);
    let result = wait_for(&format!("series for {q}"), Duration::from_secs(30), || {
        let r = prom.query(&q);
        (!r.is_empty()).then_some(r)
    });
    if expr.contains("$hostname") {
        assert!(
            result.iter().all(|s| s["metric"]["hostname"] == host),
            "{q}: {result:?}"
        );
    }
}

/// Health without a client certificate on the agents' listener; reflection
/// only with one; both from Rust, and from Python when it can.
fn health_and_reflection(server: &Server) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let ca_pem = std::fs::read_to_string(server.dir().join("tls").join("ca.pem")).unwrap();
    let no_cert = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem)),
        )
        .unwrap();
    let with_cert = server.endpoint("prom-a");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = no_cert.connect().await.unwrap();
        let mut health = HealthClient::new(channel.clone());
        for service in ["", "monitor.v1.Collector"] {
            let r = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.status, 1, "'{service}' SERVING");
        }
        let unknown = health
            .check(HealthCheckRequest {
                service: "nope".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);

        let list = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let refused = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter([list.clone()]))
            .await;
        let refused = match refused {
            Err(status) => status,
            Ok(r) => r.into_inner().message().await.unwrap_err(),
        };
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

        let channel = with_cert.connect().await.unwrap();
        let mut stream = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter([list]))
            .await
            .unwrap()
            .into_inner();
        let answer = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(services)) = answer.message_response else {
            panic!("not a list: {answer:?}");
        };
        let names: BTreeSet<String> = services.service.into_iter().map(|s| s.name).collect();
        for want in ["monitor.v1.Collector", "grpc.health.v1.Health"] {
            assert!(names.contains(want), "{names:?}");
        }
    });
    python_health(server, &ca_pem);
}

/// The same health check from Python's grpcio, when installed.
fn python_health(server: &Server, ca_pem: &str) {
    let test = "prometheus_scrapes_metrics_over_https_and_the_dashboard_queries_return_series (Python health)";
    let have = Command::new("python3")
        .args(["-c", "import grpc_health, grpc_reflection"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        println!(
            "skipped: {test} needs grpcio-health-checking and grpcio-reflection \
             (pip install grpcio-health-checking grpcio-reflection)"
        );
        return;
    }
    let script = format!(
        "import grpc, sys\n\
         from grpc_health.v1 import health_pb2, health_pb2_grpc\n\
         creds = grpc.ssl_channel_credentials(root_certificates={ca:?}.encode())\n\
         ch = grpc.secure_channel('{addr}', creds)\n\
         r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service='monitor.v1.Collector'), timeout=10)\n\
         sys.exit(0 if r.status == health_pb2.HealthCheckResponse.SERVING else 1)\n",
        ca = ca_pem,
        addr = server.agents_addr
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python health check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A VictoriaMetrics started here (its data dir kept across restarts).
struct Victoria {
    /// Killed when dropped.
    _proc: Proc,
    addr: SocketAddr,
}

impl Victoria {
    fn start(bin: &Path, data: &Path, addr: SocketAddr) -> Victoria {
        let mut cmd = Command::new(bin);
        cmd.arg(format!("-httpListenAddr={addr}"))
            .arg(format!("-storageDataPath={}", data.display()))
            .arg("-retentionPeriod=1d")
            .arg("-search.latencyOffset=0s")
            .arg("-loggerLevel=ERROR");
        let proc = Proc::spawn(cmd, "victoria-metrics");
        wait_for(
            "victoria-metrics to answer",
            Duration::from_secs(60),
            || http_get(addr, "/health").filter(|(s, _)| *s == 200),
        );
        Victoria { _proc: proc, addr }
    }

    /// Stops it as an operator would (SIGTERM: it flushes what it
    /// acknowledged; SIGKILL would lose its last second, by its design).
    fn stop(mut self) {
        self._proc.signal("TERM");
        assert!(self._proc.wait_exit(Duration::from_secs(30)).success());
    }

    /// Every raw sample of `host` among the series `names` (a regex)
    /// selects, repeats kept: (name, host, time) → values.
    fn samples(&self, host: &str, names: &str) -> BTreeMap<(String, String, i64), Vec<f64>> {
        let m = url_encode(&format!("{{__name__=~\"{names}\",hostname=\"{host}\"}}"));
        let (status, body) = http_get(self.addr, &format!("/api/v1/export?match[]={m}")).unwrap();
        assert_eq!(status, 200, "{body}");
        let mut out: BTreeMap<_, Vec<f64>> = BTreeMap::new();
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let name = v["metric"]["__name__"].as_str().unwrap().to_owned();
            let values = v["values"].as_array().unwrap();
            let times = v["timestamps"].as_array().unwrap();
            for (val, t) in values.iter().zip(times) {
                out.entry((name.clone(), host.to_owned(), t.as_i64().unwrap()))
                    .or_default()
                    .push(val.as_f64().unwrap());
            }
        }
        out
    }
}

/// [`wait_for`], saying `why()` when it times out.
fn wait_for_or<T>(
    what: &str,
    timeout: Duration,
    f: impl FnMut() -> Option<T>,
    why: impl FnOnce() -> String,
) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_for(what, timeout, f))) {
        Ok(v) => v,
        Err(_) => panic!("timed out after {timeout:?} waiting for {what}: {}", why()),
    }
}

/// `monitorctl status --json`'s remote-write entries by URL.
fn remote_write_status(server: &Server) -> BTreeMap<String, serde_json::Value> {
    let line = server.ctl_ok(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    v["remote_write"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["url"].as_str().unwrap().to_owned(), d.clone()))
        .collect()
}

/// Waits until VictoriaMetrics holds every sample of `store` (host `h`)
/// and asserts it holds nothing else, each with the store's value, at
/// most twice; returns how many it holds twice.
fn assert_victoria_holds(
    vm: &Victoria,
    h: &str,
    names: &str,
    store: &BTreeMap<(String, String, i64), f64>,
) -> usize {
    let at_vm = wait_for_or(
        &format!("{h} complete in VictoriaMetrics"),
        Duration::from_secs(30),
        || {
            let got = vm.samples(h, names);
            (got.len() >= store.len()).then_some(got)
        },
        || {
            let got = vm.samples(h, names);
            let missing: Vec<_> = store
                .keys()
                .filter(|k| !got.contains_key(*k))
                .take(20)
                .collect();
            format!(
                "{} of {} there; missing e.g. {missing:?}",
                got.len(),
                store.len()
            )
        },
    );
    let keys: BTreeSet<_> = at_vm.keys().collect();
    assert_eq!(
        keys,
        store.keys().collect(),
        "{h}: VictoriaMetrics' samples"
    );
    for (key, values) in &at_vm {
        let want = store[key];
        // VictoriaMetrics keeps 12 significant decimal digits (its
        // documented precision), Prometheus the f64 exactly.
        assert!(
            values
                .iter()
                .all(|v| (v - want).abs() <= want.abs() * 1e-11),
            "{key:?}: VictoriaMetrics has {values:?}, the store {want}"
        );
        assert!(values.len() <= 2, "{key:?}: {values:?}");
    }
    at_vm.values().filter(|v| v.len() > 1).count()
}

#[test]
fn remote_write_delivers_every_stored_sample_once_across_an_outage_and_a_crash() {
    let test = "remote_write_delivers_every_stored_sample_once_across_an_outage_and_a_crash";
    let (Some(prometheus), Some(victoria)) = (
        tool("prometheus", "prometheus", test),
        tool("victoria-metrics", "victoria-metrics", test),
    ) else {
        return;
    };
    let dir = TempDir::new("prom-rw");
    let prom = Prometheus::start(
        &prometheus,
        &dir.join("prometheus"),
        "global:\n  scrape_interval: 1m\n",
        true,
    );
    let vm_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let vm_data = dir.join("victoria");
    let mut vm = Victoria::start(&victoria, &vm_data, vm_addr);
    let prom_url = format!("http://{}/api/v1/write", prom.addr);
    let vm_url = format!("http://{vm_addr}/api/v1/write");
    let flags = ["--remote-write", &prom_url, "--remote-write", &vm_url];
    let db = dir.join("monitor.db");
    let mut server = Server::start_with(&db, "127.0.0.1:0", &flags);
    let agents: Vec<Proc> = HOSTS.iter().map(|h| server.agent(h).spawn()).collect();
    let sent = |s: &Server, url: &str| {
        remote_write_status(s)
            .get(url)
            .map_or(0, |d| d["sent_samples"].as_u64().unwrap())
    };
    wait_for("samples at both receivers", Duration::from_secs(30), || {
        (sent(&server, &prom_url) > 100 && sent(&server, &vm_url) > 100).then_some(())
    });

    // VictoriaMetrics goes away: its cursor falls behind, requests fail and
    // are retried; Prometheus goes on.
    vm.stop();
    let failed = |s: &Server| {
        remote_write_status(s)[&vm_url]["failed_samples"]
            .as_u64()
            .unwrap()
    };
    wait_for(
        "failed requests to VictoriaMetrics",
        Duration::from_secs(30),
        || (failed(&server) > 0).then_some(()),
    );
    let prom_before = sent(&server, &prom_url);
    wait_for(
        "lag behind the stopped receiver",
        Duration::from_secs(30),
        || {
            let s = remote_write_status(&server);
            (s[&vm_url]["lag_seconds"].as_f64().unwrap() >= 3.0
                && s[&prom_url]["sent_samples"].as_u64().unwrap() > prom_before)
                .then_some(())
        },
    );

    // The server dies mid-stream and comes back on the same port; agents
    // reconnect and re-send what was not acknowledged.
    server.proc.signal("KILL");
    server.proc.wait_exit(Duration::from_secs(10));
    let listen = server.agents_addr.to_string();
    server = Server::start_with(&db, &listen, &flags);
    wait_for(
        "agents back after the restart",
        Duration::from_secs(30),
        || {
            HOSTS
                .iter()
                .all(|h| server.host(h).is_some_and(|j| j.online))
                .then_some(())
        },
    );
    wait_for(
        "Prometheus fed again after the restart",
        Duration::from_secs(30),
        || (sent(&server, &prom_url) > 0).then_some(()),
    );

    // VictoriaMetrics comes back with its data; the backlog drains.
    vm = Victoria::start(&victoria, &vm_data, vm_addr);
    wait_for("VictoriaMetrics fed again", Duration::from_secs(60), || {
        (sent(&server, &vm_url) > 0).then_some(())
    });
    drop(agents);
    wait_for(
        "both destinations caught up",
        Duration::from_secs(60),
        || {
            let s = remote_write_status(&server);
            s.values()
                .all(|d| d["cursor"] == d["newest"] && d["lag_seconds"].as_f64() == Some(0.0))
                .then_some(())
        },
    );
    let status = remote_write_status(&server);
    assert_eq!(status[&vm_url]["too_old_samples"], 0);

    // Every stored sample, once, with its value and time: the six, and a
    // health metric (through the same journal).
    let oracles: [(&str, Oracle); 2] = [(SIX, stored), ("monitor_host_load1", stored_load1)];
    for (h, (names, oracle)) in HOSTS.iter().flat_map(|h| oracles.map(|o| (h, o))) {
        let store = oracle(&server, h);
        // Ten seconds or more of samples (load1 is one a tick, the six six).
        let least = if names == SIX { 100 } else { 15 };
        assert!(store.len() > least, "{h} {names}: {} stored", store.len());
        let at_prom = wait_for(
            &format!("{h} complete in Prometheus"),
            Duration::from_secs(30),
            || {
                let got = prometheus_samples(
                    &prom,
                    &format!("{{__name__=~\"{names}\",hostname=\"{h}\"}}"),
                );
                (got.len() >= store.len()).then_some(got)
            },
        );
        assert_eq!(at_prom, store, "{h}: Prometheus differs from the store");
        let repeats = assert_victoria_holds(&vm, h, names, &store);
        println!(
            "{h} {names}: {} samples; VictoriaMetrics holds {repeats} twice (the request in flight at the crash)",
            store.len()
        );
    }
    drop(vm);
}

/// Two replicas on one PostgreSQL database, both configured with one
/// `--remote-write` to VictoriaMetrics: exactly one forwards (a session
/// lock in the database); `kill -9` of that one hands the destination to
/// the other, which resumes at the stored cursor, sending again first the
/// request that was in flight. The receiver ends with every sample the
/// store holds, with its value and time; a sample it holds twice can only
/// be of that one request (VictoriaMetrics keeps identical samples twice
/// unless `-dedup.minScrapeInterval` is set, and its `/api/v1/export`
/// shows the raw samples, repeats included, which is what is counted).
#[test]
fn remote_write_from_replicas_moves_to_the_survivor_when_the_forwarding_one_is_killed() {
    let test = "remote_write_from_replicas_moves_to_the_survivor";
    let Some(victoria) = tool("victoria-metrics", "victoria-metrics", test) else {
        return;
    };
    let Some(pg) = common::pg::Postgres::shared(test) else {
        return;
    };
    let dir = TempDir::new("rw-replicas");
    let url = pg.database("rw_replicas");
    let vm_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let vm = Victoria::start(&victoria, &dir.join("victoria"), vm_addr);
    let vm_url = format!("http://{vm_addr}/api/v1/write");
    let flags = ["--remote-write", vm_url.as_str()];
    let mut servers: Vec<Server> = ["a", "b"]
        .iter()
        .map(|r| Server::start_replica(&dir.join(r), &url, &flags))
        .collect();
    let forwarding = |s: &Server| {
        s.proc
            .stderr
            .contains(&format!("remote-write to {vm_url} from"))
    };
    let holder = wait_for("one replica forwarding", Duration::from_secs(30), || {
        servers.iter().position(forwarding)
    });
    let other = 1 - holder;
    let waiting = format!("remote-write {vm_url}: another replica forwards to it");
    wait_for("the other replica waiting", Duration::from_secs(30), || {
        servers[other].proc.stderr.contains(&waiting).then_some(())
    });
    assert!(!forwarding(&servers[other]), "both replicas forward");

    let hosts = ["rw-1", "rw-2", "rw-3"];
    let urls = format!("{},{}", servers[0].url(), servers[1].url());
    let mut agents: Vec<Proc> = hosts
        .iter()
        .map(|h| {
            servers[holder]
                .agent(h)
                .env("MONITOR_SERVER", &urls)
                .env("MONITOR_INTERVAL", "0.2")
                .env("MONITOR_SHUTDOWN_TIMEOUT", "90s")
                .arg("--count")
                .arg("150")
                .spawn()
        })
        .collect();
    let sent = |s: &Server| {
        remote_write_status(s)
            .get(&vm_url)
            .map_or(0, |d| d["sent_samples"].as_u64().unwrap())
    };
    wait_for("samples forwarded", Duration::from_secs(60), || {
        (sent(&servers[holder]) > 100).then_some(())
    });
    assert_eq!(sent(&servers[other]), 0, "only the holder sends");

    // The forwarding replica dies; the other takes the destination over.
    servers[holder].proc.signal("KILL");
    servers[holder].proc.wait_exit(Duration::from_secs(10));
    let survivor = servers.remove(other);
    wait_for("the survivor forwarding", Duration::from_secs(30), || {
        (forwarding(&survivor) && sent(&survivor) > 0).then_some(())
    });
    for (agent, h) in agents.iter_mut().zip(hosts) {
        let status = agent.wait_exit(Duration::from_secs(120));
        assert!(status.success(), "{h}: {status}\n{}", agent.stderr.dump());
        assert!(
            !agent.stderr.contains("not acknowledged by the server"),
            "{h} lost batches:\n{}",
            agent.stderr.dump()
        );
    }
    wait_for("the survivor caught up", Duration::from_secs(60), || {
        let s = remote_write_status(&survivor);
        let d = &s[&vm_url];
        (d["cursor"] == d["newest"] && d["lag_seconds"].as_f64() == Some(0.0)).then_some(())
    });
    let status = remote_write_status(&survivor);
    assert_eq!(status[&vm_url]["too_old_samples"], 0);
    assert_eq!(status[&vm_url]["refused_samples"], 0);

    let mut repeats_total = 0;
    for h in hosts {
        let store = stored(&survivor, h);
        assert!(store.len() > 500, "{h}: {} samples stored", store.len());
        repeats_total += assert_victoria_holds(&vm, h, SIX, &store);
    }
    // At most one request (MAX_SAMPLES_PER_REQUEST samples) was in flight.
    assert!(repeats_total <= 10_000, "{repeats_total} samples twice");
    println!(
        "VictoriaMetrics holds {repeats_total} samples twice (the request in flight at the kill)"
    );
    drop(vm);
}
