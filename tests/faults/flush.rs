//! Section 8: ticks sent together (`--flush-interval`): at 0.1 s with a 1 s
//! flush interval the agent hands ten ticks' batches to the connection at
//! once, and still every batch arrives once and in order, and a `kill -9`
//! of the agent loses none that were acknowledged (those still waiting for
//! their write are in the spool and go out after the restart).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::*;
use crate::db::{stored, stored_seqs};
use crate::support::{fake_host, over, rows_for, wait_flushed};

/// The sizes of the writes the agent logged (at debug level): "batches A
/// to B handed to the connection together".
fn write_sizes(agent: &Proc) -> Vec<u64> {
    agent
        .stderr
        .lines()
        .iter()
        .filter_map(|l| {
            let rest = l.split("batches ").nth(1)?;
            let (range, _) = rest.split_once(" handed to the connection together")?;
            let (a, b) = range.split_once(" to ")?;
            Some(b.parse::<u64>().ok()? + 1 - a.parse::<u64>().ok()?)
        })
        .collect()
}

#[test]
fn ticks_sent_together_arrive_once_in_order_and_survive_a_kill_9_of_the_agent() {
    let dir = TempDir::new("flush");
    let db = dir.join("m.db");
    let spool = dir.join("agent.spool");
    let host = fake_host();
    let server = Server::start(&db);
    let state = server.enrol_ahead("fl-1");
    let url = server.url();
    let agent = || {
        over(AgentCmd::with_identity(&url, "fl-1", &state), &host)
            .arg("--flush-interval")
            .arg("1s")
            .arg("--spool")
            .arg(&spool)
            .arg("--log")
            .arg("debug")
    };
    // Run 1: ticks every 0.1 s, written ten at a time, until the server
    // has stored at least 40; then kill -9 at an arbitrary instant.
    let mut first = agent().spawn();
    wait_for("40 batches stored", Duration::from_secs(60), || {
        server.host("fl-1").filter(|h| h.batches_stored_total >= 40)
    });
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));
    let stored_before_kill = server.host("fl-1").expect("known").batches_stored_total;
    let sizes = write_sizes(&first);
    // Writes of several ticks: the flush interval holds ten at 0.1 s (a
    // write after a late tick or a slow turn may carry fewer or more).
    assert!(
        sizes.iter().filter(|&&n| n >= 5).count() >= 3,
        "writes of {sizes:?} batches:\n{}",
        first.stderr.dump()
    );
    // Run 2: a new process on the same spool sends what run 1 left, then
    // its own 15 ticks, and flushes.
    let ticks2 = 15u64;
    let mut second = agent()
        .arg("--count")
        .arg(ticks2.to_string())
        .env("MONITOR_SHUTDOWN_TIMEOUT", "60s")
        .spawn();
    wait_flushed(&mut second, "fl-1 (second run)", Duration::from_secs(90));
    drop(server);
    // Run 1's batches are 1 to n1 with no gap (every one stored once, in
    // order: the server's de-duplication keeps a high-water mark and the
    // gaps below it), n1 at least what was stored before the kill; run 2's
    // are 1 to 15.
    let runs = stored_seqs(&db, "fl-1");
    assert_eq!(runs.len(), 2, "two agent runs: {runs:?}");
    let second_run: BTreeSet<u64> = (1..=ticks2).collect();
    let first_run = runs
        .iter()
        .find(|r| **r != second_run)
        .unwrap_or_else(|| panic!("run 1 missing: {runs:?}"));
    let n1 = first_run.len() as u64;
    assert_eq!(*first_run, (1..=n1).collect::<BTreeSet<u64>>(), "run 1");
    assert!(
        n1 >= stored_before_kill,
        "{n1} stored of run 1, {stored_before_kill} before the kill"
    );
    let all = stored(&db);
    let got = &all["fl-1"];
    assert_eq!(got.batches_stored_total, n1 + ticks2, "{got:?}");
    assert_eq!(got.batch_times, n1 + ticks2, "{got:?}");
    assert_eq!(got.rows, rows_for(n1) + rows_for(ticks2), "{got:?}");
    assert_eq!(got.duplicate_keys, 0, "{got:?}");
    println!(
        "flush: run 1 wrote {} times ({:?} batches per write), {stored_before_kill} stored \
         when killed, {n1} in all after the restart; run 2 {ticks2}; 0 lost, 0 duplicates",
        sizes.len(),
        sizes
    );
}
