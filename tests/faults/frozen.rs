//! Section 4: half-open connections. A frozen server (SIGSTOP) is noticed
//! by the agent's keepalive and everything is re-sent after SIGCONT; a
//! frozen agent is marked offline by the server's keepalive and comes back.
//!
//! Every process stopped here is continued or killed before the test ends
//! (the harness kills its children on drop).

use std::time::{Duration, Instant};

use crate::common::*;
use crate::db::{assert_exactly_once, stored};
use crate::support::{agent, fake_host, wait_flushed};

#[test]
fn frozen_server_is_noticed_by_keepalive_and_the_agent_resends_after_resume() {
    let ticks = 150u64;
    let dir = TempDir::new("sigstop-server");
    let db = dir.join("m.db");
    let host = fake_host();
    let keepalive = [("MONITOR_KEEPALIVE", "1s")];
    let server = Server::start_opts(&db, "127.0.0.1:0", &[], &keepalive, None);
    let mut a = agent(&server, "fz-1", &host)
        .arg("--count")
        .arg(ticks.to_string())
        .env("MONITOR_SHUTDOWN_TIMEOUT", "120s")
        .env("MONITOR_KEEPALIVE", "1s")
        .spawn();
    wait_for("10 batches stored", Duration::from_secs(30), || {
        server.host("fz-1").filter(|h| h.batches_stored_total >= 10)
    });
    let frozen = Instant::now();
    server.proc.signal("STOP");
    let noticed = wait_for("keepalive to notice", Duration::from_secs(30), || {
        a.stderr.first_after("retrying in", frozen)
    });
    let detect = noticed - frozen;
    // Keepalive interval + timeout (1 s + 1 s) plus slack; the defaults
    // (30 s + 10 s) would be far above this bound.
    assert!(detect <= Duration::from_secs(8), "noticed after {detect:?}");
    // Stay frozen a little longer: the agent keeps trying against a server
    // whose kernel still accepts connections.
    wait_for("two failed attempts", Duration::from_secs(30), || {
        (a.stderr.count_after("; retry", frozen) >= 1).then_some(())
    });
    let resumed = Instant::now();
    server.proc.signal("CONT");
    let back = wait_for("the agent to reconnect", Duration::from_secs(60), || {
        a.stderr.first_after("connected to the server", resumed)
    });
    wait_flushed(&mut a, "fz-1", Duration::from_secs(ticks / 10 + 120));
    // The live view must agree with the file. Regression: batches the
    // frozen server read from the dead connection after SIGCONT were
    // committed but never counted in `monitorctl hosts` (130 of 150), because
    // the stream's handler dropped their pending acks when it ended.
    let h = server.host("fz-1").expect("known");
    drop(server);
    assert_exactly_once(&stored(&db), "fz-1", ticks);
    assert_eq!(h.batches_stored_total, ticks, "{h:?}");
    println!(
        "frozen server: noticed after {:.2}s, frozen {:.1}s, reconnected {:.2}s after SIGCONT; \
         {ticks} produced, {ticks} stored once",
        detect.as_secs_f64(),
        (resumed - frozen).as_secs_f64(),
        (back - resumed).as_secs_f64()
    );
}

#[test]
fn frozen_agent_is_marked_offline_by_server_keepalive_and_comes_back() {
    let dir = TempDir::new("sigstop-agent");
    let host = fake_host();
    let keepalive = [("MONITOR_KEEPALIVE", "1s")];
    let server = Server::start_opts(&dir.join("m.db"), "127.0.0.1:0", &[], &keepalive, None);
    let a = agent(&server, "fa-1", &host).spawn();
    wait_for("fa-1 online", Duration::from_secs(30), || {
        server
            .host("fa-1")
            .filter(|h| h.online && h.batches_stored_total > 0)
    });
    let frozen = Instant::now();
    a.signal("STOP");
    wait_for("fa-1 offline", Duration::from_secs(30), || {
        server.host("fa-1").filter(|h| !h.online)
    });
    let offline_after = frozen.elapsed();
    assert!(
        offline_after <= Duration::from_secs(10),
        "offline after {offline_after:?}"
    );
    let table = server.ctl_ok(&["hosts"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("fa-1") && l.contains("offline")),
        "{table}"
    );
    let before = server.host("fa-1").expect("known").batches_stored_total;
    let resumed = Instant::now();
    a.signal("CONT");
    wait_for("fa-1 online again", Duration::from_secs(30), || {
        server
            .host("fa-1")
            .filter(|h| h.online && h.batches_stored_total > before)
    });
    println!(
        "frozen agent: offline after {:.2}s, online again {:.2}s after SIGCONT",
        offline_after.as_secs_f64(),
        resumed.elapsed().as_secs_f64()
    );
}
