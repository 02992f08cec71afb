//! Section 1: the server is killed with `kill -9` again and again, at
//! random instants, under several agents; every batch each agent produced
//! must be stored exactly once, and the file must pass `integrity_check`.
//!
//! The kill schedule is random but replayable (`MONITOR_FAULT_SEED`); it
//! must never kill anything but the server this test started.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::db::{assert_exactly_once, postgres_url, stored};
use crate::support::{agent, fake_host, slow, wait_flushed};

/// A small deterministic generator for kill schedules (xorshift64*).
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("MONITOR_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(monitor::random::random_u64)
            | 1;
        println!("kill schedule seed: MONITOR_FAULT_SEED={seed}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// Reconnect delays (restart → first "connected" line of an agent), for the
/// report.
fn summarize(what: &str, mut d: Vec<Duration>) {
    if d.is_empty() {
        println!("{what}: none measured");
        return;
    }
    d.sort();
    println!(
        "{what}: n={} min={:.2}s median={:.2}s max={:.2}s",
        d.len(),
        d[0].as_secs_f64(),
        d[d.len() / 2].as_secs_f64(),
        d[d.len() - 1].as_secs_f64()
    );
}

#[test]
fn kill_9_server_repeatedly_every_batch_stored_exactly_once() {
    let (agents_n, ticks, chaos) = if slow() {
        (5, 600u64, Duration::from_secs(55))
    } else {
        (4, 200u64, Duration::from_secs(18))
    };
    let dir = TempDir::new("kill9");
    let db = dir.join("m.db");
    let host = fake_host();
    // Hosts merged from the store's journal every 1.5 s (not 30 s), so the
    // kills land with batches both merged and still in the journal.
    let merge = [("MONITOR_TEST_MERGE_INTERVAL_MS", "1500")];
    let mut server = Server::start_opts(&db, "127.0.0.1:0", &[], &merge, None);
    let listen = server.agents_addr.to_string();
    let names: Vec<String> = (0..agents_n).map(|i| format!("k9-{i}")).collect();
    let mut agents: Vec<Proc> = names
        .iter()
        .map(|n| {
            agent(&server, n, &host)
                .arg("--count")
                .arg(ticks.to_string())
                .env("MONITOR_SHUTDOWN_TIMEOUT", "120s")
                .spawn()
        })
        .collect();

    let mut rng = Rng::from_env();
    let started = Instant::now();
    let mut restarts: Vec<Instant> = Vec::new();
    while started.elapsed() < chaos {
        // The chaos schedule itself: kill every 2–5 s at a random instant.
        std::thread::sleep(rng.millis(2000, 5000));
        server.proc.signal("KILL");
        server.proc.wait_exit(Duration::from_secs(10));
        drop(server);
        server = Server::start_opts(&db, &listen, &[], &merge, None);
        restarts.push(Instant::now());
    }
    let kills = restarts.len();
    assert!(kills >= 3, "only {kills} kills");

    for (a, n) in agents.iter_mut().zip(&names) {
        wait_flushed(a, n, Duration::from_secs(ticks / 10 + 150));
    }
    // Reconnect time after each restart, per agent: restart → the agent's
    // next "connected" line (only restarts the agent lived through that
    // were followed by a connection before the next kill).
    let mut reconnects = Vec::new();
    for a in &agents {
        for (i, &r) in restarts.iter().enumerate() {
            let next = restarts.get(i + 1).copied();
            if let Some(t) = a.stderr.first_after("connected to the server", r)
                && next.is_none_or(|n| t < n)
            {
                reconnects.push(t - r);
            }
        }
    }
    for n in &names {
        let h = server.host(n).expect("host known");
        assert_eq!(h.batches_stored_total, ticks, "{n}: {h:?}");
        assert_eq!(h.dropped_batches_total, 0, "{n}: {h:?}");
    }
    // A last kill -9 at an arbitrary instant, then read the file cold.
    server.proc.signal("KILL");
    server.proc.wait_exit(Duration::from_secs(10));
    drop(server);
    let all = stored(&db);
    for n in &names {
        assert_exactly_once(&all, n, ticks);
    }
    // On SQLite, both halves of the file took part: merged ticks and
    // journal rows (PostgreSQL writes its tables directly).
    let file = match postgres_url(&db) {
        Some(_) => "PostgreSQL".to_owned(),
        None => {
            let c = rusqlite::Connection::open(&db).unwrap();
            let count = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
            let merged = count("SELECT COUNT(*) FROM ticks");
            let journal = count("SELECT COUNT(*) FROM journal");
            assert!(merged > 0, "no host was ever merged");
            format!("file: {merged} merged ticks, {journal} journal rows")
        }
    };
    println!(
        "kill -9: {kills} kills in {:.0}s; {agents_n} agents × {ticks} batches produced, \
         {} stored, {} rows, 0 duplicates, 0 dropped; integrity_check ok; {file}",
        started.elapsed().as_secs_f64(),
        all.values().map(|h| h.batches_stored_total).sum::<u64>(),
        all.values().map(|h| h.rows).sum::<u64>(),
    );
    summarize("reconnect after restart", reconnects);
}
