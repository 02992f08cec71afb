//! Section 2: the server is away for longer than the agent's buffer holds.
//! Every sequence number must be accounted for: stored, or dropped and
//! counted, and the newest batches are the ones kept.
//!
//! These tests must never count a batch as both lost and stored beyond
//! what a crash between commit and acknowledgement can explain.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::*;
use crate::db::{stored, stored_seqs};
use crate::support::{agent, fake_host, free_addr, lone_agent, wait_flushed};

/// An agent over `host` that makes `ticks` batches, buffers at most
/// `capacity` of them, and may take a minute to deliver them when it ends.
fn small_buffer_agent(cmd: AgentCmd, ticks: u64, capacity: u64) -> Proc {
    cmd.arg("--count")
        .arg(ticks.to_string())
        .arg("--buffer-batches")
        .arg(capacity.to_string())
        .env("MONITOR_SHUTDOWN_TIMEOUT", "60s")
        .spawn()
}

/// The agent fills its 20-batch buffer before any server exists: it must
/// deliver exactly the newest 20 and report the other N − 20 as dropped.
#[test]
fn buffer_overflow_while_server_away_drops_exactly_produced_minus_stored() {
    let ticks = 70u64;
    let capacity = 20u64;
    let dir = TempDir::new("overflow");
    let addr = free_addr();
    let host = fake_host();
    // Plain text on both sides: what is tested is the agent's buffer, and
    // a TLS agent could not enrol before its server exists.
    let mut a = small_buffer_agent(
        lone_agent(&format!("http://{addr}"), "of-1", &host),
        ticks,
        capacity,
    );
    wait_for("all ticks taken", Duration::from_secs(30), || {
        a.stderr.contains("--count ticks taken").then_some(())
    });
    let dropped_logged = a.stderr.count("buffer full: dropped batch");
    let server = Server::start_with(&dir.join("m.db"), &addr, &["--insecure"]);
    wait_flushed(&mut a, "of-1", Duration::from_secs(60));
    let h = server.host("of-1").expect("of-1 known");
    assert_eq!(h.batches_stored_total, capacity, "{h:?}");
    assert_eq!(h.dropped_batches_total, ticks - capacity, "{h:?}");
    assert_eq!(dropped_logged as u64, ticks - capacity);
    drop(server);
    let all = stored(&dir.join("m.db"));
    let got = &all["of-1"];
    assert_eq!(got.batch_times, capacity);
    assert_eq!(got.dropped_batches_total, ticks - capacity);
    // The newest batches were kept: seqs 51..=70.
    let seqs = stored_seqs(&dir.join("m.db"), "of-1");
    assert_eq!(seqs.len(), 1);
    assert_eq!(
        seqs[0],
        (ticks - capacity + 1..=ticks).collect::<BTreeSet<_>>()
    );
    println!(
        "overflow (server never up): produced {ticks}, stored {}, dropped {} (reported {})",
        got.batch_times, dropped_logged, h.dropped_batches_total
    );
}

/// The server dies (kill -9) mid-run and stays away for longer than the
/// 20-batch buffer holds. Every seq is accounted for: stored, or dropped
/// and counted. A batch the server committed in the instant before it died
/// and could not acknowledge is unknown to the agent, so if the buffer
/// later drops it, it is both stored and counted as dropped: the reported
/// count can exceed produced − stored by such batches (at most the send
/// window), never fall short of it.
#[test]
fn buffer_overflow_across_a_kill_9_accounts_for_every_seq() {
    let ticks = 150u64;
    let capacity = 20u64;
    let dir = TempDir::new("overflow-kill");
    let db = dir.join("m.db");
    let host = fake_host();
    let mut server = Server::start(&db);
    let listen = server.agents_addr.to_string();
    let mut a = small_buffer_agent(agent(&server, "ofk-1", &host), ticks, capacity);
    wait_for("10 batches stored", Duration::from_secs(30), || {
        server
            .host("ofk-1")
            .filter(|h| h.batches_stored_total >= 10)
    });
    server.proc.signal("KILL");
    server.proc.wait_exit(Duration::from_secs(10));
    drop(server);
    // Away until the buffer has overflowed by 30 batches (3 s at 0.1 s).
    wait_for("30 dropped batches", Duration::from_secs(30), || {
        (a.stderr.count("buffer full: dropped batch") >= 30).then_some(())
    });
    let server = Server::start_with(&db, &listen, &[]);
    wait_flushed(&mut a, "ofk-1", Duration::from_secs(60));
    let h = server.host("ofk-1").expect("known");
    let dropped_seqs: BTreeSet<u64> = a
        .stderr
        .lines()
        .iter()
        .filter_map(|l| l.split("buffer full: dropped batch ").nth(1))
        .map(|s| s.trim().parse().expect("seq"))
        .collect();
    drop(server);
    let all = stored(&db);
    let seqs = stored_seqs(&db, "ofk-1");
    assert_eq!(seqs.len(), 1);
    let stored_set = &seqs[0];
    let stored_n = stored_set.len() as u64;
    assert_eq!(all["ofk-1"].batches_stored_total, stored_n);
    assert_eq!(all["ofk-1"].batch_times, stored_n);
    // Every seq is stored or dropped; none is lost silently.
    let union: BTreeSet<u64> = stored_set.union(&dropped_seqs).copied().collect();
    assert_eq!(union, (1..=ticks).collect::<BTreeSet<_>>());
    // The reported count is what the agent dropped.
    assert_eq!(h.dropped_batches_total, dropped_seqs.len() as u64, "{h:?}");
    let both = stored_set.intersection(&dropped_seqs).count() as u64;
    assert!(
        both <= monitor_agent::outbox::SEND_WINDOW as u64,
        "{both} batches both stored and dropped"
    );
    assert_eq!(h.dropped_batches_total, ticks - stored_n + both);
    println!(
        "overflow across kill -9: produced {ticks}, stored {stored_n}, dropped {} \
         (produced − stored = {}; stored before the crash but unacknowledged, then dropped: {both})",
        h.dropped_batches_total,
        ticks - stored_n
    );
}
