//! Section 7: clocks, clean stops, overload. A far-off agent clock is
//! corrected and a near one kept; SIGTERM and SIGINT stop both programs
//! cleanly and flush; a client that floods batches without reading its
//! acknowledgements is held back by HTTP/2 flow control, not buffered.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::db::{newest_sample_times, stored};
use crate::support::{agent, fake_host, free_url, lone_agent, wait_flushed};

#[test]
fn a_far_off_agent_clock_is_corrected_and_a_near_one_kept() {
    let dir = TempDir::new("clock");
    let db = dir.join("m.db");
    let host = fake_host();
    let server = Server::start(&db);
    // One agent an hour behind (beyond the 30 s threshold), one 10 s ahead.
    let _behind = agent(&server, "clk-behind", &host)
        .env("MONITOR_TEST_CLOCK_OFFSET_MS", "-3600000")
        .spawn();
    let _ahead = agent(&server, "clk-ahead", &host)
        .env("MONITOR_TEST_CLOCK_OFFSET_MS", "10000")
        .spawn();
    for h in ["clk-behind", "clk-ahead"] {
        wait_for(&format!("{h} stored"), Duration::from_secs(30), || {
            server.host(h).filter(|x| x.batches_stored_total >= 5)
        });
    }
    let behind = server.host("clk-behind").unwrap();
    let ahead = server.host("clk-ahead").unwrap();
    assert!(
        (behind.clock_offset_ms + 3_600_000).abs() < 5_000,
        "{behind:?}"
    );
    assert!((ahead.clock_offset_ms - 10_000).abs() < 5_000, "{ahead:?}");
    let table = server.ctl_ok(&["hosts"]);
    assert!(table.contains("-3600."), "{table}");
    assert!(table.contains("+10.") || table.contains("+9."), "{table}");
    // Newest stored sample time of each, against this process's clock.
    let newest_times = newest_sample_times(&db);
    let newest = |h: &str| -> i64 { *newest_times.get(h).expect("a stored tick") };
    let now = monitor::time::now_unix_ms();
    let behind_lag = now - newest("clk-behind");
    let ahead_lag = now - newest("clk-ahead");
    // Corrected onto the server's clock: recent, not an hour old.
    assert!((-2_000..10_000).contains(&behind_lag), "{behind_lag}");
    // Kept as the agent said: about 10 s in the future.
    assert!((-12_000..-5_000).contains(&ahead_lag), "{ahead_lag}");
    println!(
        "clocks: agent 1 h behind → offset {} ms, samples corrected (newest {behind_lag} ms \
         old); agent 10 s ahead → offset {} ms, kept (newest {} ms ahead)",
        behind.clock_offset_ms, ahead.clock_offset_ms, -ahead_lag
    );
}

#[test]
fn sigterm_and_sigint_stop_cleanly_and_flush() {
    let dir = TempDir::new("stops");
    let db = dir.join("m.db");
    let host = fake_host();
    let server = Server::start(&db);
    // Connected agents: everything they hold is delivered, exit 0.
    for (name, sig) in [("st-term", "TERM"), ("st-int", "INT")] {
        let mut a = agent(&server, name, &host).spawn();
        wait_for("some batches stored", Duration::from_secs(30), || {
            server.host(name).filter(|h| h.batches_stored_total >= 5)
        });
        let t = Instant::now();
        a.signal(sig);
        wait_flushed(&mut a, name, Duration::from_secs(10));
        assert!(a.stderr.contains("stopping"));
        println!(
            "SIG{sig} with a server: agent exited 0 in {:.2}s, nothing unacknowledged",
            t.elapsed().as_secs_f64()
        );
    }
    // No server: the wait is bounded by --shutdown-timeout, then exit 0.
    let mut a = lone_agent(&free_url(), "st-alone", &host)
        .env("MONITOR_SHUTDOWN_TIMEOUT", "1s")
        .spawn();
    wait_for("a failed connection", Duration::from_secs(20), || {
        a.stderr.contains("retrying in").then_some(())
    });
    let t = Instant::now();
    a.signal("TERM");
    let status = a.wait_exit(Duration::from_secs(10));
    let took = t.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(
        a.stderr
            .contains("not acknowledged by the server at shutdown are lost")
    );
    println!(
        "SIGTERM without a server: exit 0 after {:.2}s (shutdown timeout 1 s)",
        took.as_secs_f64()
    );

    // The server under load: SIGTERM → exit 0, store closed, file sound,
    // and every stored batch counted once.
    let agents: Vec<Proc> = (0..3)
        .map(|i| agent(&server, &format!("st-load-{i}"), &host).spawn())
        .collect();
    for i in 0..3 {
        wait_for("load", Duration::from_secs(30), || {
            server
                .host(&format!("st-load-{i}"))
                .filter(|h| h.batches_stored_total >= 5)
        });
    }
    let mut server = server;
    let t = Instant::now();
    server.proc.signal("TERM");
    let status = server.proc.wait_exit(Duration::from_secs(15));
    let took = t.elapsed();
    assert!(status.success(), "{status}: {}", server.proc.stderr.dump());
    assert!(server.proc.stderr.contains("store closed"));
    drop(agents);
    drop(server);
    let all = stored(&db);
    for (name, h) in &all {
        assert_eq!(h.batches_stored_total, h.batch_times, "{name}: {h:?}");
        assert_eq!(h.duplicate_keys, 0, "{name}");
    }
    println!(
        "SIGTERM to a loaded server: exit 0 in {:.2}s, integrity_check ok",
        took.as_secs_f64()
    );
}

/// A client that sends batches as fast as it can and never reads its
/// acknowledgements: the server must stop reading (HTTP/2 flow control),
/// not buffer without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_without_reading_acks_is_held_back_not_buffered() {
    use monitor::pb;
    use monitor::pb::collector_client::CollectorClient;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    let dir = TempDir::new("flood");
    let server = Server::start(&dir.join("m.db"));
    let rss_kib = |pid: i32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    };
    let pid = server.proc.pid();
    let rss_before = rss_kib(pid);
    let streams = 16usize;
    let attempts = 20_000u64;
    let now = monitor::time::now_unix_ms();
    let mut tasks = Vec::new();
    let mut keep = Vec::new();
    for s in 0..streams {
        let name = format!("flood-{s}");
        // A certificate per stream (each floods as its own host), and a
        // small, known receive window for the acks, so what this client
        // can absorb without reading is bounded by the settings, not by
        // the machine's speed.
        let channel = server
            .endpoint(&name)
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .unwrap();
        let mut client = CollectorClient::new(channel);
        let (tx, rx) = mpsc::channel::<pb::Batch>(1);
        let acks = client.report(ReceiverStream::new(rx)).await.unwrap();
        // Held, never read.
        keep.push(acks);
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
            for seq in 1..=attempts {
                let b = pb::Batch {
                    agent_id: name.clone(),
                    boot_id: 7,
                    seq,
                    samples: vec![pb::Sample {
                        time_unix_ms: now + seq as i64,
                        hostname: name.clone(),
                        metric: "cpu_percent".into(),
                        value: 1.0,
                        ..Default::default()
                    }],
                    sent_unix_ms: now,
                    agent_version: "flood".into(),
                    hostname: name.clone(),
                    ..Default::default()
                };
                match tokio::time::timeout_at(deadline, tx.send(b)).await {
                    Ok(Ok(())) => sent += 1,
                    _ => break,
                }
            }
            sent
        }));
    }
    let mut sent = Vec::new();
    for t in tasks {
        sent.push(t.await.unwrap());
    }
    let rss_during = rss_kib(pid);
    let max_sent = *sent.iter().max().unwrap();
    // Each stream gets stuck after what fits in byte-bounded buffers: the
    // server's pending commits (64) and ack queue (64); the acks tonic has
    // encoded (up to 32 KiB) and this client's 64 KiB receive window
    // (~35 bytes an ack); the server's 64 KiB receive window and what this
    // client's encoder and HTTP/2 send buffer hold (~75 bytes a batch).
    // With both windows fixed (above, and the server's
    // AGENT_STREAM_WINDOW_BYTES) that is about 6,300 batches whatever the
    // machine's speed, far from the 20,000 it tries.
    assert!(
        max_sent < attempts / 2,
        "a stream pushed {max_sent} of {attempts} batches without reading an ack"
    );
    let growth_mib = rss_during.saturating_sub(rss_before) / 1024;
    assert!(growth_mib < 200, "server RSS grew by {growth_mib} MiB");
    drop(keep);
    println!(
        "flood: {streams} streams × up to {attempts} batches, acks never read: each pushed at \
         most {max_sent} before being held back; server RSS {} → {} MiB",
        rss_before / 1024,
        rss_during / 1024
    );
}
