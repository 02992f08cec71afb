//! The web dashboard against the real server and real agents on loopback:
//! - the JSON API over HTTPS (the server's CA): every way in (none: 401;
//!   bearer token; the one-time login URL from `monitorctl dashboard`,
//!   spent once, for a session cookie with its guards), the security
//!   headers, gzip; series whose buckets hold exactly the min, max and
//!   mean of the stored samples in them; an agent's outage as a null row;
//!   unknown hosts 404, bad ranges 400; the command history;
//! - the health series (`/api/hosts/NAME/health`) of a fake Raspberry Pi
//!   whose temperature and throttling change: a series per metric, mount
//!   point and throttling condition, compared bucket by bucket with the
//!   store, an outage as a gap, none of what a fake VM lacks, bad input
//!   named;
//! - the pages in a real browser (Debian's `chromium`, driven by Playwright
//!   from PyPI: `tests/dashboard/browser.py`): three hosts with values, a
//!   host page's plots drawn from what the store holds, a fake Pi's
//!   temperature plot from its health series and none on a fake VM's page,
//!   a killed agent offline on the open page, no console error, no request
//!   off 127.0.0.1, phone width, dark mode. Screenshots are kept under
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
        let metric = &series_key(s);
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

/// A series' name in an answer: its metric, with its labels if it has
/// any (`fs_used_percent{mountpoint=/boot}`).
fn series_key(s: &Value) -> String {
    let metric = s["metric"].as_str().unwrap();
    let labels: Vec<String> = s["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .collect();
    if labels.is_empty() {
        metric.to_owned()
    } else {
        format!("{metric}{{{}}}", labels.join(","))
    }
}

/// The throttling conditions and their bits (the firmware's word, as
/// README's metrics table documents it).
const FLAGS: [(&str, u32); 4] = [
    ("under_voltage", 0),
    ("arm_frequency_capped", 1),
    ("throttled", 2),
    ("soft_temperature_limit", 3),
];

/// monitorctl's values of health metric `metric` of `host` in the last 10
/// minutes, keyed as [`series_key`] names the API's series (the
/// throttling word as its four conditions, 0 or 1): (ms, value).
fn stored_health(server: &Server, host: &str, metric: &str) -> BTreeMap<String, Vec<(i64, f64)>> {
    let out = server.ctl(&[
        "query", host, "--metric", metric, "--since", "10m", "--json",
    ]);
    let mut by: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let t = rfc3339_ms(v["time"].as_str().unwrap());
        let value = v["value"].as_f64().unwrap();
        if metric == "throttled_flags" {
            for (flag, bit) in FLAGS {
                let set = f64::from((value as u32 >> bit) & 1);
                by.entry(format!("{metric}{{flag={flag}}}"))
                    .or_default()
                    .push((t, set));
            }
        } else {
            let key = match v["mountpoint"].as_str() {
                Some(m) => format!("{metric}{{mountpoint={m}}}"),
                None => metric.to_owned(),
            };
            by.entry(key).or_default().push((t, value));
        }
    }
    by
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

    // The fleet page's compact form: the same hosts, one array each, the
    // latest values rounded to a tenth in the order `latest` names; its
    // own tag; an unknown form named.
    let full = json(&server.https("/api/hosts", &auth));
    let rows = server.https("/api/hosts?form=rows", &auth);
    assert!(rows.header("etag").unwrap().starts_with("\"rows-"));
    let rows = json(&rows);
    assert_eq!(rows["form"], "rows");
    assert_eq!(rows["poll_ms"], 3000);
    let names: Vec<&str> = rows["latest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 6);
    let listed = rows["hosts"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for (row, name) in listed.iter().zip(hosts) {
        assert_eq!(row[0], name);
        assert_eq!(row[1], true);
        assert!(row[2].is_null(), "last seen while online: {row}");
        let host = full["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["hostname"] == name)
            .unwrap();
        // Both answers may be a few seconds apart: the values present
        // are the same metrics, each a tenth at most.
        for (i, metric) in names.iter().enumerate() {
            let had = host["latest"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["metric"] == *metric);
            assert_eq!(!row[5][i].is_null(), had, "{name} {metric}: {row}");
            if let Some(v) = row[5][i].as_f64() {
                assert!(((v * 10.0).round() - v * 10.0).abs() < 1e-6, "{v}");
            }
        }
    }
    let bad = server.https("/api/hosts?form=xml", &auth);
    assert_eq!(bad.status, 400);
    assert_eq!(
        json(&bad)["error"],
        "form: expected 'full' or 'rows', got 'xml'"
    );

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

/// The health series API (issue 14) against a fake Raspberry Pi whose
/// temperature and throttling change while it reports, and a fake VM with
/// neither: one series per metric, per mount point and per throttling
/// condition, each bucket the min, max and mean of what the store holds;
/// an outage as a null row; only what the host has; bad input named.
#[test]
fn the_health_api_serves_a_pis_labelled_series_downsampled() {
    let dir = TempDir::new("dash-health");
    let server = Server::start(&dir.join("monitor.db"));
    let mut pi = fake_pi();
    let mut pi_agent = fake_pi_agent(&server, &pi, "api-pi").spawn();
    let vm = monitor_agent::testing::FakeHost::new();
    let _vm_agent = fake_pi_agent(&server, &vm, "api-vm").spawn();
    let token = server.metrics_token();
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];
    let get = |path: &str| server.https(path, &auth);

    // The temperature swings and the throttling changes every few ticks
    // (0.5 s) until the store holds 15 s of them, so buckets hold
    // different values.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    for n in 0u32.. {
        pi.set_thermal_temp(0, 40_000 + i64::from(n % 7) * 5_000);
        pi.set_throttled(if n % 5 < 2 { 0x50005 } else { 0x50000 });
        if n % 10 == 9 {
            let temp = stored_health(&server, "api-pi", "temp_celsius")
                .remove("temp_celsius")
                .unwrap_or_default();
            let span_ms = temp.last().map_or(0, |l| l.0) - temp.first().map_or(0, |f| f.0);
            if span_ms >= 15_000 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no 15 s of api-pi's temperature stored in 90 s"
        );
        // Pacing the fake sensor's changes, not waiting for an outcome.
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_for("api-vm online", Duration::from_secs(30), || {
        server.host("api-vm").filter(|x| x.online).map(|_| ())
    });

    // Bad input first: each refusal names what was wrong.
    assert_eq!(server.https("/api/hosts/api-pi/health", &[]).status, 401);
    let unknown = get("/api/hosts/nobody/health?range=1h");
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert_eq!(json(&unknown)["error"], "unknown host 'nobody'");
    for (bad, says) in [
        ("metric=fan_rpm", "unknown health metric 'fan_rpm'"),
        ("metric=cpu_percent", "one of the six"),
        ("range=soon", "range"),
        ("since=10&until=5", "non-empty"),
        ("points=2001", "points"),
    ] {
        let a = get(&format!("/api/hosts/api-pi/health?{bad}"));
        assert_eq!(a.status, 400, "{bad}: {}", a.text());
        let error = json(&a)["error"].as_str().unwrap().to_owned();
        assert!(error.contains(says), "{bad}: {error}");
    }

    // Everything of the last minute in 3 s buckets, compared with the store.
    let until = monitor::time::now_unix_ms();
    let since = until - 60_000;
    let a = get(&format!(
        "/api/hosts/api-pi/health?since={since}&until={until}&points=20"
    ));
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.header("server-timing").is_some());
    let answer = json(&a);
    assert_eq!(answer["step_ms"], 3000);
    assert_eq!(answer["devices_left_out"], 0);
    let keys: Vec<String> = answer["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(series_key)
        .collect();
    for want in [
        "temp_celsius",
        "under_voltage",
        "throttled_flags{flag=under_voltage}",
        "throttled_flags{flag=arm_frequency_capped}",
        "throttled_flags{flag=throttled}",
        "throttled_flags{flag=soft_temperature_limit}",
        "load1",
        "fs_used_percent{mountpoint=/}",
        "fs_used_percent{mountpoint=/boot/firmware}",
    ] {
        assert!(keys.iter().any(|k| k == want), "{want} not in {keys:?}");
    }
    assert_eq!(answer["series"][0]["unit"], "°C");
    let mut stored = BTreeMap::new();
    for metric in [
        "temp_celsius",
        "throttled_flags",
        "fs_used_percent",
        "load1",
    ] {
        stored.extend(stored_health(&server, "api-pi", metric));
    }
    let only_stored = serde_json::json!({
        "step_ms": answer["step_ms"],
        "since_unix_ms": answer["since_unix_ms"],
        "until_unix_ms": answer["until_unix_ms"],
        "times": answer["times"],
        "series": answer["series"].as_array().unwrap().iter()
            .filter(|s| stored.contains_key(&series_key(s)))
            .collect::<Vec<_>>(),
    });
    let compared = check_series_against_store(&only_stored, &stored, 2000);
    // 12 s of closed 3 s buckets at least, for 8 series.
    assert!(compared >= 8 * 3, "only {compared} buckets compared");
    // Downsampling kept the swings: some temperature bucket spans
    // several degrees, and the under-voltage lane both held and cleared.
    let temp = &answer["series"][0];
    let spread = temp["min"]
        .as_array()
        .unwrap()
        .iter()
        .zip(temp["max"].as_array().unwrap())
        .filter_map(|(lo, hi)| Some(hi.as_f64()? - lo.as_f64()?))
        .fold(0.0, f64::max);
    assert!(spread >= 5.0, "{temp}");
    let uv = answer["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| series_key(s) == "throttled_flags{flag=under_voltage}")
        .unwrap();
    let maxes: Vec<f64> = uv["max"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert!(maxes.contains(&1.0), "{uv}");
    assert!(
        uv["min"].as_array().unwrap().contains(&Value::from(0)),
        "{uv}"
    );

    // One metric asked for: the two mount points only.
    let fs = json(&get(
        "/api/hosts/api-pi/health?metric=fs_used_percent&range=5m",
    ));
    let keys: Vec<String> = fs["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(series_key)
        .collect();
    assert_eq!(
        keys,
        [
            "fs_used_percent{mountpoint=/}",
            "fs_used_percent{mountpoint=/boot/firmware}"
        ]
    );
    // A VM without a thermal zone or firmware: no such series at all.
    let vm_answer = json(&get("/api/hosts/api-vm/health?range=5m"));
    let vm_keys: Vec<String> = vm_answer["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(series_key)
        .collect();
    assert!(vm_keys.iter().any(|k| k == "load1"), "{vm_keys:?}");
    assert!(
        !vm_keys
            .iter()
            .any(|k| k.starts_with("temp_celsius") || k.starts_with("throttled_flags")),
        "{vm_keys:?}"
    );

    // An outage is a gap: the Pi's agent killed, silent for a few
    // seconds, started again with its identity.
    let state_dir = server.agent_state_dir("api-pi");
    pi_agent.signal("KILL");
    pi_agent.wait_exit(Duration::from_secs(10));
    let silent_since = monitor::time::now_unix_ms();
    wait_for("three seconds of silence", Duration::from_secs(10), || {
        (monitor::time::now_unix_ms() - silent_since > 3000).then_some(())
    });
    let _back = reading(
        AgentCmd::with_identity(&server.url(), "api-pi", &state_dir),
        &pi,
    )
    .spawn();
    wait_for("api-pi back with a gap", Duration::from_secs(30), || {
        let a = json(&get(
            "/api/hosts/api-pi/health?metric=temp_celsius&range=2m",
        ));
        let temp = a["series"][0]["mean"].as_array()?.clone();
        (1..temp.len().saturating_sub(1))
            .find(|&i| temp[i].is_null() && !temp[i - 1].is_null() && !temp[i + 1].is_null())
            .map(|_| ())
    });
}

/// The sparklines read each stretch of the fleet's samples once, then only
/// what came since; a sample older than that (an agent's buffer after an
/// outage) must still show, by the next computation, not after the next
/// whole read 15 minutes later.
#[test]
fn a_late_sample_shows_in_the_sparklines() {
    let dir = TempDir::new("dash-late");
    let server = Server::start(&dir.join("monitor.db"));
    let bearer = format!("Bearer {}", server.metrics_token());
    let auth = [("Authorization", bearer.as_str())];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let now = monitor::time::now_unix_ms();
    // A host with a sample a minute ago, in a range the first read covers.
    let (stream, acks) = rt.block_on(report(
        &server,
        vec![one_sample(
            ("late-1", 5, 1),
            now - 60_000,
            "cpu_percent",
            10.0,
        )],
    ));
    assert_eq!(acks[0].1, monitor::pb::AckCode::Ok as i32, "{acks:?}");
    drop(stream);
    let level_at = |sparks: &Value, t: i64| {
        let k =
            (t - sparks["since_unix_ms"].as_i64().unwrap()) / sparks["step_ms"].as_i64().unwrap();
        sparks["hosts"]["late-1"]["cpu_percent"][k as usize].as_u64()
    };
    wait_for("the first sparklines", Duration::from_secs(60), || {
        let sparks = json(&server.https("/api/sparklines", &auth));
        level_at(&sparks, now - 60_000).map(|_| ())
    });
    // Now a sample five minutes old: before every edge a read has passed.
    let late_unix_ms = now - 300_000;
    let (stream, acks) = rt.block_on(report(
        &server,
        vec![one_sample(
            ("late-1", 6, 1),
            late_unix_ms,
            "cpu_percent",
            90.0,
        )],
    ));
    assert_eq!(acks[0].1, monitor::pb::AckCode::Ok as i32, "{acks:?}");
    drop(stream);
    // Shared answers are made at most every 15 s (in the background after
    // the first): a minute is several computations.
    let sparks = wait_for("the late sample's bucket", Duration::from_secs(60), || {
        let sparks = json(&server.https("/api/sparklines", &auth));
        level_at(&sparks, late_unix_ms).map(|_| sparks)
    });
    // Its mean is the host's highest, the other its lowest.
    assert_eq!(level_at(&sparks, late_unix_ms), Some(100));
    assert_eq!(level_at(&sparks, now - 60_000), Some(0));
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
    // A fake Raspberry Pi (thermal zone, firmware, two file systems) and a
    // fake VM with none of them, for the host page's health section.
    let (pi_host, plain_host) = ("pi-health", "vm-plain");
    let pi = fake_pi();
    let vm = monitor_agent::testing::FakeHost::new();
    let _pi_agent = fake_pi_agent(&server, &pi, pi_host).spawn();
    let _vm_agent = fake_pi_agent(&server, &vm, plain_host).spawn();
    for h in hosts.iter().chain([&pi_host, &plain_host]) {
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
    wait_for(
        "12 s of pi-health's temperature stored",
        Duration::from_secs(60),
        || {
            let temp = stored_health(&server, pi_host, "temp_celsius").remove("temp_celsius")?;
            (temp.last()?.0 - temp.first()?.0 >= 12_000).then_some(())
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
        "pi_host": pi_host,
        "plain_host": plain_host,
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
    // And the Pi's temperature plot came from the store too.
    let file = report["health_file"].as_str().unwrap();
    let health: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let mut temp = health.clone();
    temp["series"] = Value::from(
        health["series"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["metric"] == "temp_celsius")
            .cloned()
            .collect::<Vec<_>>(),
    );
    let compared = check_series_against_store(
        &temp,
        &stored_health(&server, pi_host, "temp_celsius"),
        2000,
    );
    assert!(
        compared >= 2,
        "only {compared} temperature buckets compared"
    );
    drop(agents);
}
