//! Section 5: an agent restarted with its on-disk spool delivers what the
//! first run could not, exactly once, and empties the spool.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::*;
use crate::db::{stored, stored_seqs};
use crate::support::{fake_host, free_addr, over, rows_for, wait_flushed};

#[test]
fn spool_keeps_batches_across_an_agent_restart() {
    let dir = TempDir::new("spool");
    let spool = dir.join("agent.spool");
    let addr = free_addr();
    let host = fake_host();
    // The agent's certificate first (the server that signs it keeps its CA
    // beside the database, so the server started later trusts it); then
    // no server while run 1 spools.
    let server = Server::start_with(&dir.join("m.db"), &addr, &[]);
    let state = server.enrol_ahead("sp-1");
    let url = server.url();
    drop(server);
    let identity = || AgentCmd::with_identity(&url, "sp-1", &state);
    // Run 1: no server; SIGTERM after a while. Short shutdown wait.
    let mut first = over(identity(), &host)
        .arg("--spool")
        .arg(&spool)
        .env("MONITOR_SHUTDOWN_TIMEOUT", "500ms")
        .spawn();
    wait_for("a failed connection", Duration::from_secs(20), || {
        first.stderr.contains("retrying in").then_some(())
    });
    wait_for("25 batches spooled", Duration::from_secs(20), || {
        let data = std::fs::read(&spool).ok()?;
        let (batches, _) = monitor_agent::spool::parse(&data)?;
        (batches.len() >= 25).then_some(())
    });
    first.signal("TERM");
    let status = first.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}: {}", first.stderr.dump());
    let (held, _) = monitor_agent::spool::parse(&std::fs::read(&spool).unwrap()).unwrap();
    let n1 = held.len() as u64;
    assert!(
        first
            .stderr
            .contains(&format!("{n1} unacknowledged batches kept in the spool")),
        "{}",
        first.stderr.dump()
    );
    // Run 2: a new process (new boot id) on the same spool, then a server.
    let ticks2 = 30u64;
    let mut second = over(identity(), &host)
        .arg("--spool")
        .arg(&spool)
        .arg("--count")
        .arg(ticks2.to_string())
        .env("MONITOR_SHUTDOWN_TIMEOUT", "60s")
        .spawn();
    wait_for("the recovery line", Duration::from_secs(20), || {
        second
            .stderr
            .contains(&format!("{n1} batches from an earlier run recovered"))
            .then_some(())
    });
    let server = Server::start_with(&dir.join("m.db"), &addr, &[]);
    wait_flushed(&mut second, "sp-1 (second run)", Duration::from_secs(60));
    let h = server.host("sp-1").expect("known");
    assert_eq!(h.batches_stored_total, n1 + ticks2, "{h:?}");
    drop(server);
    let all = stored(&dir.join("m.db"));
    let got = &all["sp-1"];
    assert_eq!(got.batches_stored_total, n1 + ticks2);
    assert_eq!(got.batch_times, n1 + ticks2);
    // Run 1's first tick has one sample, so does run 2's.
    assert_eq!(got.rows, rows_for(n1) + rows_for(ticks2));
    assert_eq!(got.duplicate_keys, 0);
    let runs = stored_seqs(&dir.join("m.db"), "sp-1");
    assert_eq!(runs.len(), 2, "two agent runs");
    // In either order: PostgreSQL numbers the runs a flush meets in key
    // order, SQLite in the order it met them.
    let first: BTreeSet<u64> = (1..=n1).collect();
    let second_run: BTreeSet<u64> = (1..=ticks2).collect();
    assert!(
        runs == [first.clone(), second_run.clone()] || runs == [second_run, first],
        "{runs:?}"
    );
    // Everything acknowledged: the spool is back to its 8-byte header.
    assert_eq!(std::fs::metadata(&spool).unwrap().len(), 8);
    println!(
        "spool: run 1 spooled {n1} batches and stopped; run 2 recovered them and made \
         {ticks2}; {} stored, 0 lost, spool emptied",
        got.batches_stored_total
    );
}
