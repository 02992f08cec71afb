//! Section 6: corrupt and truncated files. A spool that is not one is moved
//! aside, a torn one gives up only its torn tail; a database that is
//! garbage, cut in half or has a torn WAL is a clear error or is recovered
//! intact.
//!
//! Neither program may panic on any of these files.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use crate::db::{assert_exactly_once, stored};
use crate::support::{agent, fake_host, free_url, lone_agent, wait_flushed};

#[test]
fn corrupt_or_truncated_spool_is_recovered_or_moved_aside() {
    let dir = TempDir::new("bad-spool");
    let host = fake_host();
    let server = Server::start(&dir.join("m.db"));

    // Not a spool at all: moved aside (kept), the agent starts empty.
    let foreign = dir.join("foreign.spool");
    std::fs::write(&foreign, b"definitely not a spool\n").unwrap();
    let mut a = agent(&server, "bs-1", &host)
        .arg("--spool")
        .arg(&foreign)
        .arg("--count")
        .arg("5")
        .spawn();
    wait_flushed(&mut a, "bs-1", Duration::from_secs(30));
    assert!(a.stderr.contains("was not a spool file: moved to"));
    assert_eq!(
        std::fs::read(dir.join("foreign.corrupt")).unwrap(),
        b"definitely not a spool\n"
    );

    // A valid spool with a torn last record: the good prefix is delivered.
    let torn = dir.join("torn.spool");
    let mut b = lone_agent(&free_url(), "bs-2", &host)
        .arg("--spool")
        .arg(&torn)
        .arg("--count")
        .arg("12")
        .env("MONITOR_SHUTDOWN_TIMEOUT", "200ms")
        .spawn();
    let status = b.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{}", b.stderr.dump());
    let data = std::fs::read(&torn).unwrap();
    let (held, good) = monitor_agent::spool::parse(&data).unwrap();
    assert_eq!(held.len(), 12);
    assert_eq!(good, data.len());
    std::fs::write(&torn, &data[..data.len() - 7]).unwrap();
    let mut c = agent(&server, "bs-2", &host)
        .arg("--spool")
        .arg(&torn)
        .arg("--count")
        .arg("3")
        .env("MONITOR_SHUTDOWN_TIMEOUT", "30s")
        .spawn();
    wait_flushed(&mut c, "bs-2", Duration::from_secs(30));
    assert!(
        c.stderr.contains("unreadable bytes at its end"),
        "{}",
        c.stderr.dump()
    );
    assert!(
        c.stderr
            .contains("11 batches from an earlier run recovered")
    );
    let h = server.host("bs-2").expect("known");
    assert_eq!(h.batches_stored_total, 11 + 3, "{h:?}");

    // A spool path that cannot be a file: a clear error and exit 1.
    let out = agent(&server, "bs-3", &host)
        .arg("--spool")
        .arg(dir.path())
        .arg("--count")
        .arg("1")
        .spawn();
    let mut out = out;
    let status = out.wait_exit(Duration::from_secs(20));
    let err = out.stderr.dump();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("spool") && err.contains(&dir.path().display().to_string()),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn corrupt_or_truncated_database_is_a_clear_error_never_a_panic() {
    let dir = TempDir::new("bad-db");
    let start = |db: &Path| -> (Option<i32>, String) {
        let mut cmd = Command::new(bin("monitor-server"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--db",
        ])
        .arg(db)
        .env("MONITOR_LOG", "info");
        let mut p = Proc::spawn(cmd, "server");
        // Either it fails at once, or it serves: then stop it cleanly.
        let serving = wait_for("exit or listen", Duration::from_secs(20), || {
            if p.stderr.contains("listening for agents on") {
                return Some(true);
            }
            (!p.is_running()).then_some(false)
        });
        if serving {
            p.signal("TERM");
        }
        let status = p.wait_exit(Duration::from_secs(15));
        (status.code(), p.stderr.dump())
    };

    // Garbage: a clear error naming the file, exit 1.
    let garbage = dir.join("garbage.db");
    std::fs::write(&garbage, vec![0x5Au8; 8192]).unwrap();
    let (code, err) = start(&garbage);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("garbage.db"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // A real database, filled by an agent, then cut in half. SQLite only
    // on any MONITOR_TEST_DB: this test is about SQLite's own file.
    let db = dir.join("real.db");
    let server = Server::start(sqlite_only(&db));
    let host = fake_host();
    let mut a = agent(&server, "bd-1", &host)
        .arg("--count")
        .arg("40")
        .spawn();
    wait_flushed(&mut a, "bd-1", Duration::from_secs(30));
    let mut server = server;
    server.proc.signal("TERM");
    assert!(server.proc.wait_exit(Duration::from_secs(15)).success());
    drop(server);
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(len > 4096, "database of {len} bytes");
    let cut = dir.join("cut.db");
    std::fs::copy(&db, &cut).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (cut_code, err) = start(&cut);
    assert!(!err.contains("panicked"), "{err}");
    assert!(matches!(cut_code, Some(0) | Some(1)), "{cut_code:?}: {err}");
    let cut_message = err
        .lines()
        .find(|l| l.contains("ERROR"))
        .unwrap_or_default()
        .to_owned();
    if cut_code == Some(1) {
        assert!(err.contains("cut.db"), "{err}");
    } else {
        // It opened: then nothing may be missing.
        assert_exactly_once(&stored(&cut), "bd-1", 40);
    }

    // A WAL whose tail is garbage (a torn write): SQLite ignores the frames
    // that do not check out; the server starts and the data committed
    // before is there.
    let wal_db = dir.join("wal.db");
    std::fs::copy(&db, &wal_db).unwrap();
    std::fs::write(dir.join("wal.db-wal"), vec![0xA5u8; 5000]).unwrap();
    let (code, err) = start(&wal_db);
    assert_eq!(code, Some(0), "{err}");
    let all = stored(&wal_db);
    assert_exactly_once(&all, "bd-1", 40);
    println!(
        "bad database: garbage → exit 1 naming the file; cut in half → exit {cut_code:?} \
         ({cut_message}); torn WAL → recovered, 40 batches intact"
    );
}
