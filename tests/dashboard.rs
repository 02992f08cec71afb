//! The web dashboard against the real server and real agents on loopback:
//! - the JSON API over HTTPS (the server's CA): every way in (none: 401;
//!   bearer token; the one-time login URL from `monitorctl dashboard`,
//!   spent once, for a session cookie with its guards), the security
//!   headers, gzip; series whose buckets hold exactly the min, max and
//!   mean of the stored samples in them; an agent's outage as a null row;
//!   unknown hosts 404, bad ranges 400; the command history;
//! - the pages in a real browser (Debian's `chromium`, driven by Playwright
//!   from PyPI: `tests/dashboard/browser.py`): three hosts with values, a
//!   host page's plots drawn from what the store holds, a killed agent
//!   offline on the open page, no console error, no request off
//!   127.0.0.1, phone width, dark mode. Screenshots are kept under
//!   `target/tmp/dashboard/` (the paths are printed). Without chromium or
//!   Playwright it prints one `skipped:` line and passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// monitorctl's samples of `host` in the last 10 minutes, by metric: (ms, value).
fn stored_samples(server: &Server, host: &str) -> BTreeMap<String, Vec<(i64, f64)>> {
    let mut out: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for s in server.samples(host, "10m") {
        out.entry(s.metric.clone())
            .or_default()
            .push((rfc3339_ms(&s.time), s.value));
    }
    out
}

/// Checks a series answer against the store: every bucket that closed at
/// least `settle_ms` before the answer's end holds exactly the min, max
/// and mean (to the answer's 4 significant digits) of the stored samples in it,
/// and every such bucket with samples is in the answer. Returns how many
/// buckets were compared.
fn check_series_against_store(
    answer: &Value,
    stored: &BTreeMap<String, Vec<(i64, f64)>>,
    settle_ms: i64,
) -> usize {
    let step = answer["step_ms"].as_i64().unwrap();
    let since = answer["since_unix_ms"].as_i64().unwrap();
    let until = answer["until_unix_ms"].as_i64().unwrap();
    let times: Vec<i64> = answer["times"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t.as_f64().unwrap() * 1000.0).round() as i64)
        .collect();
    let mut compared = 0;
    for s in answer["series"].as_array().unwrap() {
        let metric = s["metric"].as_str().unwrap();
        let samples = stored.get(metric).cloned().unwrap_or_default();
        let col = |name: &str| -> Vec<Option<f64>> {
            s[name]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64())
                .collect()
        };
        let (min, max, mean) = (col("min"), col("max"), col("mean"));
        assert_eq!(min.len(), times.len());
        // Every stored bucket that had closed.
        let mut buckets: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for &(t, v) in &samples {
            if t >= since && t < until {
                let start = since + (t - since) / step * step;
                buckets.entry(start).or_default().push(v);
            }
        }
        for (start, values) in buckets {
            if start + step > until - settle_ms {
                continue;
            }
            let i = times
                .iter()
                .position(|&t| t == start)
                .unwrap_or_else(|| panic!("{metric}: the bucket at {start} is missing"));
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let avg = values.iter().sum::<f64>() / values.len() as f64;
            let close = |got: Option<f64>, want: f64, what: &str| {
                let got = got.unwrap_or_else(|| panic!("{metric} {what} at {start} is null"));
                // The answer keeps 4 significant digits.
                assert!(
                    (got - want).abs() <= want.abs() * 5e-4 + 1e-9,
                    "{metric} {what} at {start}: answer {got}, store {want} ({values:?})"
                );
            };
            close(min[i], lo, "min");
            close(max[i], hi, "max");
            close(mean[i], avg, "mean");
            compared += 1;
        }
    }
    compared
}

fn json(answer: &HttpAnswer) -> Value {
    serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", answer.text()))
}

#[test]
fn the_api_serves_the_store_downsampled_to_anyone_with_a_way_in_and_nobody_else() {
    let dir = TempDir::new("dash-api");
    let server = Server::start(&dir.join("monitor.db"));
    let hosts = ["dash-a", "dash-b"];
    let mut agents: BTreeMap<&str, Proc> = hosts
        .iter()
        .map(|&h| (h, server.agent(h).spawn()))
        .collect();
    for h in hosts {
        wait_for(&format!("{h} online"), Duration::from_secs(30), || {
            server.host(h).filter(|x| x.online).map(|_| ())
        });
    }
    let token = server.metrics_token();
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];

    // No credentials: 401 and nothing else, on the API and the pages.
    for path in [
        "/api/hosts",
        "/api/metrics",
        "/",
        "/host/dash-a",
        "/commands",
    ] {
        let a = server.https(path, &[]);
        assert_eq!(a.status, 401, "{path}: {}", a.text());
    }
    let a = server.https("/api/hosts", &[("Authorization", "Bearer not-the-token")]);
    assert_eq!(a.status, 401);
    // The static files hold no data and need nothing; every answer has
    // the security headers.
    let a = server.https("/assets/uplot.min.js", &[]);
    assert_eq!(a.status, 200);
    assert!(a.header("etag").is_some());
    let csp = a.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(a.header("referrer-policy"), Some("no-referrer"));
    let etag = a.header("etag").unwrap().to_owned();
    assert_eq!(
        server
            .https("/assets/uplot.min.js", &[("If-None-Match", &etag)])
            .status,
        304
    );

    // The metric set, with units, from the server.
    let metrics = json(&server.https("/api/metrics", &auth));
    let names: Vec<&str> = metrics["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["metric"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 6);
    assert!(names.contains(&"cpu_percent") && names.contains(&"net_out_kbps"));
    assert_eq!(metrics["metrics"][0]["unit"], "percent");

    // Hosts: both online, with their latest values.
    let answer = json(&server.https("/api/hosts", &auth));
    let listed = answer["hosts"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for (h, name) in listed.iter().zip(hosts) {
        assert_eq!(h["hostname"], name);
        assert_eq!(h["online"], true);
        assert!(!h["latest"].as_array().unwrap().is_empty());
    }
    // One answer per period shared by every page (`poll_ms`), with an
    // ETag: sent back, it gets 304 and no body, or (a row changed) a new
    // answer with a new tag, never the same tag again; gzip when asked,
    // the same JSON.
    let first = server.https("/api/hosts", &auth);
    let etag = first
        .header("etag")
        .expect("an ETag on /api/hosts")
        .to_owned();
    assert_eq!(json(&first)["poll_ms"], 3000);
    let again = server.https("/api/hosts", &[auth[0], ("If-None-Match", &etag)]);
    match again.status {
        304 => assert!(again.body.is_empty(), "{}", again.text()),
        200 => assert_ne!(again.header("etag"), Some(etag.as_str())),
        other => panic!("If-None-Match: status {other}: {}", again.text()),
    }
    let gz = server.https("/api/hosts", &[auth[0], ("Accept-Encoding", "gzip")]);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    let mut unzipped = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&gz.body[..]),
        &mut unzipped,
    )
    .unwrap();
    let unzipped: Value = serde_json::from_slice(&unzipped).unwrap();
    assert_eq!(unzipped["hosts"].as_array().unwrap().len(), 2);

    let one = server.https("/api/hosts/dash-a", &auth);
    assert_eq!(json(&one)["hostname"], "dash-a");
    let unknown = server.https("/api/hosts/nobody", &auth);
    assert_eq!(unknown.status, 404);
    assert_eq!(json(&unknown)["error"], "unknown host 'nobody'");
    assert_eq!(
        server
            .https("/api/hosts/nobody/series?range=1h", &auth)
            .status,
        404
    );
    for bad in [
        "range=soon",
        "since=10&until=5",
        "points=0",
        "since=abc",
        "since=-9223372036854775808&until=5",
    ] {
        let a = server.https(&format!("/api/hosts/dash-a/series?{bad}"), &auth);
        assert_eq!(a.status, 400, "{bad}: {}", a.text());
        assert!(json(&a)["error"].as_str().is_some());
    }

    // The one-time login URL: a session cookie with its guards, once.
    let url = server.ctl_ok(&["dashboard"]);
    let url = url.trim();
    let http_addr = server.http_addr().unwrap();
    let prefix = format!("https://{http_addr}/login?token=");
    assert!(url.starts_with(&prefix), "{url}");
    let path = &url[format!("https://{http_addr}").len()..];
    let login = server.https(path, &[]);
    assert_eq!(login.status, 303, "{}", login.text());
    assert_eq!(login.header("location"), Some("/"));
    let cookie = login.header("set-cookie").unwrap().to_owned();
    for guard in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=",
    ] {
        assert!(cookie.contains(guard), "{cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_owned();
    assert_eq!(server.https(path, &[]).status, 401, "the URL works once");
    let with_cookie = [("Cookie", session.as_str())];
    let page = server.https("/", &with_cookie);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/assets/dashboard.js"));
    assert_eq!(server.https("/api/hosts", &with_cookie).status, 200);
    assert_eq!(
        server
            .https("/api/hosts", &[("Cookie", "monitor_session=forged")])
            .status,
        401
    );

    // Series: a minute at 20 points, so each bucket holds several samples
    // (0.2 s ticks), compared bucket by bucket with the store.
    wait_for("20 s of samples", Duration::from_secs(60), || {
        let first = server
            .samples("dash-a", "1m")
            .first()
            .map(|s| rfc3339_ms(&s.time))?;
        (monitor::time::now_unix_ms() - first > 20_000).then_some(())
    });
    let until = monitor::time::now_unix_ms();
    let since = until - 60_000;
    let answer = server.https(
        &format!("/api/hosts/dash-a/series?since={since}&until={until}&points=20"),
        &auth,
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.header("server-timing").is_some());
    let answer = json(&answer);
    assert_eq!(answer["step_ms"], 3000);
    assert!(answer["times"].as_array().unwrap().len() <= 21);
    assert_eq!(answer["series"].as_array().unwrap().len(), 6);
    let compared = check_series_against_store(&answer, &stored_samples(&server, "dash-a"), 2000);
    // At least 20 s of closed 3 s buckets, six metrics each.
    assert!(compared >= 6 * 5, "only {compared} buckets compared");

    // Sparklines: every host, every metric, levels 0..=100 over 15 min.
    let sparks = json(&server.https("/api/sparklines", &auth));
    assert_eq!(sparks["step_ms"], 30_000);
    for h in hosts {
        let per = sparks["hosts"][h].as_object().unwrap();
        assert_eq!(per.len(), 6, "{h}: {per:?}");
        for (metric, levels) in per {
            let levels = levels.as_array().unwrap();
            assert!(
                (30..=32).contains(&levels.len()),
                "{metric}: {}",
                levels.len()
            );
            let known: Vec<u64> = levels.iter().filter_map(Value::as_u64).collect();
            assert!(
                !known.is_empty() && known.iter().all(|&l| l <= 100),
                "{metric}"
            );
        }
    }

    // Gzip when asked: much smaller than the identity answer.
    let path = "/api/hosts/dash-a/series?range=10m";
    let plain = server.https(path, &auth);
    let auth_gzip = [auth[0], ("Accept-Encoding", "gzip")];
    let gz = server.https(path, &auth_gzip);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert!(
        gz.body.len() * 2 < plain.body.len(),
        "{} gzipped vs {}",
        gz.body.len(),
        plain.body.len()
    );

    // An outage is a gap: kill dash-b, wait until it has been silent for
    // many intervals, start it again with its identity, and the answer
    // has a row where every series is null between rows with data.
    let b_dir = server.agent_state_dir("dash-b");
    let mut b = agents.remove("dash-b").unwrap();
    b.signal("KILL");
    b.wait_exit(Duration::from_secs(10));
    wait_for("dash-b offline", Duration::from_secs(30), || {
        server.host("dash-b").filter(|x| !x.online).map(|_| ())
    });
    // The shared /api/hosts answer turns too: no answer served was built
    // more than its period (3 s, plus a second for the build) before it
    // was asked for.
    wait_for(
        "dash-b offline in /api/hosts",
        Duration::from_secs(30),
        || {
            let asked_ms = monitor::time::now_unix_ms();
            let a = json(&server.https("/api/hosts", &auth));
            let built_ms = a["server_unix_ms"].as_i64().unwrap();
            assert!(
                asked_ms - built_ms <= 4000,
                "an answer built {} ms before it was asked for",
                asked_ms - built_ms
            );
            let b = a["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["hostname"] == "dash-b");
            (b.unwrap()["online"] == false).then_some(())
        },
    );
    let silent_since = monitor::time::now_unix_ms();
    wait_for("two seconds of silence", Duration::from_secs(10), || {
        (monitor::time::now_unix_ms() - silent_since > 2000).then_some(())
    });
    let _b = AgentCmd::with_identity(&server.url(), "dash-b", &b_dir).spawn();
    wait_for("dash-b back with samples", Duration::from_secs(30), || {
        let a = json(&server.https("/api/hosts/dash-b/series?range=2m", &auth));
        let times = a["times"].as_array().unwrap().len();
        let cpu = a["series"][0]["mean"].as_array().unwrap().clone();
        let gap = (1..times.saturating_sub(1)).find(|&i| {
            a["series"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["mean"][i].is_null())
                && !cpu[i - 1].is_null()
                && cpu[i + 1..].iter().any(|v| !v.is_null())
        });
        gap.map(|_| ())
    });

    // The command history, newest first.
    server.ctl_ok(&["exec", "--host", "dash-a", "--", "ping"]);
    wait_for(
        "the command in the history",
        Duration::from_secs(20),
        || {
            let a = json(&server.https("/api/commands?host=dash-a&limit=5", &auth));
            let rows = a["commands"].as_array().unwrap().clone();
            rows.first()
                .filter(|r| r["outcome"] == "exited" && r["argv"][0] == "ping")
                .map(|r| {
                    assert_eq!(r["hostname"], "dash-a");
                    assert_eq!(r["operator"], "admin");
                })
        },
    );
    assert_eq!(
        server.https("/api/commands?limit=100000", &auth).status,
        400
    );
}

/// A Python with Playwright (the CI venv, or the one on PATH).
fn playwright_python() -> Option<PathBuf> {
    ["/tmp/monitor-ci-venv/bin/python3", "python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| {
            Command::new(p)
                .args(["-c", "import playwright.sync_api"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

#[test]
fn the_pages_work_in_a_real_browser() {
    let test = "the_pages_work_in_a_real_browser";
    let chromium = PathBuf::from("/usr/bin/chromium");
    let python = playwright_python();
    let (true, Some(python)) = (chromium.is_file(), python) else {
        println!(
            "skipped: {test} needs chromium and playwright (apt install chromium; pip install \
             playwright)"
        );
        return;
    };
    let dir = TempDir::new("dash-browser");
    let server = Server::start(&dir.join("monitor.db"));
    let hosts = ["pi-kitchen", "pi-garage", "pi-attic"];
    let agents: Vec<Proc> = hosts.iter().map(|h| server.agent(h).spawn()).collect();
    for h in hosts {
        wait_for(&format!("{h} online"), Duration::from_secs(30), || {
            server.host(h).filter(|x| x.online).map(|_| ())
        });
    }
    // Enough history that the plots' closed 1 s buckets can be compared
    // with the store (on a busy machine the browser may otherwise fetch
    // the series a few seconds after the first sample).
    wait_for(
        "15 s of pi-kitchen's cpu_percent stored",
        Duration::from_secs(60),
        || {
            let cpu = stored_samples(&server, "pi-kitchen").remove("cpu_percent")?;
            let span_ms = cpu.last()?.0 - cpu.first()?.0;
            (span_ms >= 15_000).then_some(())
        },
    );
    // A command, so the pages have a history to show.
    server.ctl_ok(&["exec", "--host", "pi-kitchen", "--", "ping"]);
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let _ = std::fs::remove_dir_all(&out_dir);
    let login_url = server.ctl_ok(&["dashboard"]).trim().to_owned();
    let args = serde_json::json!({
        "login_url": login_url,
        "hosts": hosts,
        "kill_host": "pi-attic",
        "kill_pid": agents[2].pid(),
        "out_dir": out_dir,
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/browser.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(args.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no report from the browser script: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    for s in report["screenshots"].as_array().into_iter().flatten() {
        println!("screenshot: {}", s.as_str().unwrap_or_default());
    }
    assert_eq!(report["ok"], true, "{report}");
    assert!(out.status.success());
    // The plots the browser drew came from the store.
    let file = report["series_file"].as_str().unwrap();
    let answer: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let compared =
        check_series_against_store(&answer, &stored_samples(&server, "pi-kitchen"), 2000);
    assert!(compared >= 6, "only {compared} buckets compared");
    drop(agents);
}
