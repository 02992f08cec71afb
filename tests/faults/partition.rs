//! Section 3: a network partition between a server and an agent in two
//! network namespaces (see `netns`): nothing is lost, and the agent
//! reconnects within the backoff it announced once the link is back.
//!
//! Without network namespaces (not root, no `ip`) the test says loudly that
//! it was skipped; it must never fall back to the machine's interfaces.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::db::{assert_exactly_once, stored};
use crate::netns::{NetnsPair, SERVER_IP};
use crate::support::{agent_in, fake_host, slow, wait_flushed};

#[test]
fn network_partition_loses_nothing_and_reconnects_within_the_backoff() {
    let pair = match NetnsPair::create() {
        Ok(p) => p,
        Err(e) => {
            // Not a silent pass: say loudly why this test did not run.
            eprintln!("SKIPPED network_partition test: network namespaces unavailable: {e}");
            println!("SKIPPED network_partition test: {e}");
            return;
        }
    };
    let ticks = if slow() { 400u64 } else { 180u64 };
    let partition = Duration::from_secs(if slow() { 20 } else { 8 });
    let dir = TempDir::new("netns");
    let db = dir.join("m.db");
    let host = fake_host();
    let keepalive = [("MONITOR_KEEPALIVE", "1s")];
    // SQLite only on any MONITOR_TEST_DB: the server runs in its own network
    // namespace, whose loopback does not reach the tests' PostgreSQL.
    let server = Server::start_opts(
        sqlite_only(&db),
        &format!("{SERVER_IP}:50051"),
        // Agents reach it at SERVER_IP, monitorctl (in its namespace) at
        // loopback: its certificate names both.
        &["--tls-name", SERVER_IP, "--tls-name", "127.0.0.1"],
        &keepalive,
        Some(&pair.server_ns),
    );
    let mut a = agent_in(Some(&pair.agent_ns), &server, &server.url(), "np-1", &host)
        .arg("--count")
        .arg(ticks.to_string())
        .env("MONITOR_SHUTDOWN_TIMEOUT", "120s")
        .env("MONITOR_KEEPALIVE", "1s")
        .spawn();
    wait_for("20 batches stored", Duration::from_secs(30), || {
        server.host("np-1").filter(|h| h.batches_stored_total >= 20)
    });
    let cut = Instant::now();
    pair.set_agent_link(false);
    let noticed = wait_for("the agent to notice", Duration::from_secs(20), || {
        a.stderr.first_after("retrying in", cut)
    });
    // The partition lasts; measured from the cut.
    std::thread::sleep(partition.saturating_sub(cut.elapsed()));
    let stored_during = server.host("np-1").map(|h| h.batches_stored_total);
    // The longest delay the agent may be sleeping through when the link
    // comes back: the last one it announced.
    let last_delay = a
        .stderr
        .lines()
        .iter()
        .rev()
        .find_map(|l| {
            l.split(" in ")
                .nth(1)
                .and_then(|r| r.split('s').next())
                .and_then(|n| n.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let healed = Instant::now();
    pair.set_agent_link(true);
    let reconnected = wait_for("the agent to reconnect", Duration::from_secs(60), || {
        a.stderr.first_after("connected to the server", healed)
    });
    let reconnect = reconnected - healed;
    // Bound: the announced delay plus the jitter already in it, a connect
    // attempt (up to its timeout) and scheduling slack.
    let bound = Duration::from_secs_f64(last_delay) + Duration::from_secs(6);
    assert!(
        reconnect <= bound,
        "reconnected {reconnect:?} after the heal, bound {bound:?}"
    );
    wait_flushed(&mut a, "np-1", Duration::from_secs(ticks / 10 + 120));
    let h = server.host("np-1").expect("known");
    assert_eq!(h.batches_stored_total, ticks, "{h:?}");
    assert_eq!(h.dropped_batches_total, 0);
    drop(server);
    assert_exactly_once(&stored(&db), "np-1", ticks);
    println!(
        "partition {:.1}s: noticed after {:.1}s, stored during the cut {:?}, last backoff \
         announced {last_delay:.1}s, reconnected {:.2}s after the heal; {ticks} produced, \
         {ticks} stored, 0 lost",
        (healed - cut).as_secs_f64(),
        (noticed - cut).as_secs_f64(),
        stored_during,
        reconnect.as_secs_f64()
    );
}
