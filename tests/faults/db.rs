//! The database checker: reads what the server stored itself (no code of
//! the store's), from whichever backend the test's server ran on, so
//! "stored exactly once" is judged from the database, not from what the
//! server says:
//! - SQLite: opens the file, runs `PRAGMA integrity_check`, and counts per
//!   host in the merged tables and in the journal alike;
//! - PostgreSQL (`MONITOR_TEST_DB=postgres`): the same counts from
//!   `hosts`, `ticks` and `agent_runs` with psql (PostgreSQL checks its
//!   own pages).
//!
//! It must never write to the database beyond what opening a SQLite file
//! does (SQLite replaying a WAL left by kill -9, as the server would).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::common::pg::Postgres;
use crate::support::rows_for;

/// The PostgreSQL database the test's server ran on instead of the SQLite
/// file `db`, if it did (the URL `postgres_for` kept beside `db`).
pub fn postgres_url(db: &Path) -> Option<String> {
    std::fs::read_to_string(db.with_extension("pg-url")).ok()
}

fn psql(url: &str, sql: &str) -> String {
    Postgres::shared("the fault tests' database checker")
        .expect("the PostgreSQL the servers ran on")
        .psql(url, sql)
}

/// [`stored`] on PostgreSQL: the counters from `hosts`, and per sample
/// time how many `ticks` rows (one per run) and values it has.
fn stored_postgres(url: &str) -> BTreeMap<String, StoredHost> {
    let mut out: BTreeMap<String, StoredHost> = BTreeMap::new();
    for line in psql(
        url,
        "SELECT hostname, batches_stored_total, dropped_batches_total FROM hosts",
    )
    .lines()
    {
        let f: Vec<&str> = line.split('|').collect();
        out.insert(
            f[0].to_owned(),
            StoredHost {
                batches_stored_total: f[1].parse::<i64>().unwrap() as u64,
                dropped_batches_total: f[2].parse::<i64>().unwrap() as u64,
                ..StoredHost::default()
            },
        );
    }
    let per_time = psql(
        url,
        "SELECT h.hostname, count(*),
                sum((cpu_percent IS NOT NULL)::int + (mem_percent IS NOT NULL)::int
                    + (disk_read_kbps IS NOT NULL)::int + (disk_write_kbps IS NOT NULL)::int
                    + (net_in_kbps IS NOT NULL)::int + (net_out_kbps IS NOT NULL)::int)
         FROM ticks t JOIN hosts h USING (host_id) GROUP BY h.hostname, t.time_unix_ms",
    );
    for line in per_time.lines() {
        let f: Vec<&str> = line.split('|').collect();
        let h = out.get_mut(f[0]).expect("a tick of a known host");
        let (rows_at_time, values): (u64, u64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        h.batch_times += 1;
        h.rows += values;
        if rows_at_time > 1 {
            h.duplicate_keys += 1;
        }
    }
    out
}

/// The newest stored sample time of each host.
pub fn newest_sample_times(db: &Path) -> BTreeMap<String, i64> {
    if let Some(url) = postgres_url(db) {
        return psql(
            &url,
            "SELECT h.hostname, max(t.time_unix_ms) FROM ticks t JOIN hosts h USING (host_id)
             GROUP BY h.hostname",
        )
        .lines()
        .map(|l| {
            let (name, t) = l.split_once('|').unwrap();
            (name.to_owned(), t.parse().unwrap())
        })
        .collect();
    }
    let c = rusqlite::Connection::open(db).unwrap();
    read_hosts(&c)
        .into_values()
        .filter_map(|h| Some((h.name, *h.times.keys().next_back()?)))
        .collect()
}

/// What the database holds for one host, read by the test itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredHost {
    pub batches_stored_total: u64,
    pub dropped_batches_total: u64,
    /// Distinct sample times: one per stored batch.
    pub batch_times: u64,
    pub rows: u64,
    /// Times (or (time, metric) keys) stored more than once, across runs.
    pub duplicate_keys: u64,
}

/// Opens the database read-write (so SQLite replays a WAL left by kill -9,
/// as the server would), checks `PRAGMA integrity_check`, and reads every
/// host's counts. Call it while no server runs on the file.
///
/// The file's state is the merged tables plus the journal rows above each
/// host's `merged_journal_id` (see server/src/store/journal.rs): a stored
/// batch is one journal row until its host is merged, then a `ticks` row
/// (the journal row lingers until every host merged past it). This reads
/// both, decoding the journal's `ticks` blob itself (per tick: time i64
/// LE, a presence byte, the present values f64 LE), so it checks the file
/// without the store's code.
pub fn stored(db: &Path) -> BTreeMap<String, StoredHost> {
    if let Some(url) = postgres_url(db) {
        return stored_postgres(&url);
    }
    let c = rusqlite::Connection::open(db).expect("open the database");
    let check: Vec<String> = c
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(check, vec!["ok".to_string()], "integrity_check of {db:?}");
    read_hosts(&c)
        .into_values()
        .map(|h| {
            let mut counts = h.counts;
            counts.batch_times = h.times.len() as u64;
            counts.rows = h.times.values().map(|&(_, v)| v).sum();
            counts.duplicate_keys = h.times.values().filter(|&&(n, _)| n > 1).count() as u64;
            (h.name, counts)
        })
        .collect()
}

/// A host as the file holds it (see `stored`).
pub struct FileHost {
    pub name: String,
    pub merged_journal_id: i64,
    /// The counters; the per-tick fields are left zero.
    pub counts: StoredHost,
    /// Sample time → (times stored, values stored).
    pub times: BTreeMap<i64, (u64, u64)>,
}

/// Every host of the file by host id, merged tables and unmerged journal
/// rows together (see `stored`). Works while a server writes the file: WAL
/// gives this connection one consistent snapshot.
pub fn read_hosts(c: &rusqlite::Connection) -> BTreeMap<i64, FileHost> {
    let tx = c.unchecked_transaction().expect("a read transaction");
    let c = &tx;
    type Host = FileHost;
    let mut hosts: BTreeMap<i64, Host> = c
        .prepare(
            "SELECT host_id, hostname, batches_stored_total, dropped_batches_total,
                    merged_journal_id FROM hosts",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                Host {
                    name: r.get(1)?,
                    counts: StoredHost {
                        batches_stored_total: r.get::<_, i64>(2)? as u64,
                        dropped_batches_total: r.get::<_, i64>(3)? as u64,
                        ..StoredHost::default()
                    },
                    merged_journal_id: r.get(4)?,
                    times: BTreeMap::new(),
                },
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let add = |hosts: &mut BTreeMap<i64, Host>, host_id: i64, time: i64, values: u64| {
        let h = hosts.get_mut(&host_id).expect("a tick of a known host");
        let e = h.times.entry(time).or_default();
        e.0 += 1;
        e.1 += values;
    };
    let mut stmt = c
        .prepare(
            "SELECT host_id, time_unix_ms,
                    (cpu_percent IS NOT NULL) + (mem_percent IS NOT NULL)
                    + (disk_read_kbps IS NOT NULL) + (disk_write_kbps IS NOT NULL)
                    + (net_in_kbps IS NOT NULL) + (net_out_kbps IS NOT NULL)
             FROM ticks",
        )
        .unwrap();
    let ticks = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .unwrap();
    for t in ticks {
        let (host_id, time, values) = t.unwrap();
        add(&mut hosts, host_id, time, values as u64);
    }
    let mut stmt = c
        .prepare(
            "SELECT host_id, journal_id, dropped_batches_total, ticks FROM journal
             ORDER BY journal_id",
        )
        .unwrap();
    let journal = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, Option<Vec<u8>>>(3)?,
            ))
        })
        .unwrap();
    for row in journal {
        let (host_id, journal_id, dropped, blob) = row.unwrap();
        let merged = hosts
            .get(&host_id)
            .expect("journal row of a known host")
            .merged_journal_id;
        if journal_id <= merged {
            continue; // already in `ticks` and `hosts`
        }
        let h = hosts.get_mut(&host_id).unwrap();
        h.counts.batches_stored_total += 1;
        h.counts.dropped_batches_total = dropped;
        let mut blob = &blob.expect("an unmerged journal row holds its ticks")[..];
        while !blob.is_empty() {
            assert!(blob.len() >= 9, "journal row {journal_id}: torn ticks blob");
            let time = i64::from_le_bytes(blob[..8].try_into().unwrap());
            let present = blob[8];
            // 0x80 opens the batch's health values (server/src/store/
            // journal_record.rs), which are not among the six counted here.
            if present == 0x80 {
                break;
            }
            let values = u64::from(present.count_ones());
            assert!(
                blob.len() >= 9 + 8 * values as usize,
                "journal row {journal_id}"
            );
            blob = &blob[9 + 8 * values as usize..];
            add(&mut hosts, host_id, time, values);
        }
    }
    hosts
}

/// The sequence numbers the store holds for each run of `agent_id`, from
/// its de-duplication state (`agent_runs`: the high-water mark and the gaps
/// below it, two little-endian u64 per gap).
pub fn stored_seqs(db: &Path, agent_id: &str) -> Vec<BTreeSet<u64>> {
    if let Some(url) = postgres_url(db) {
        assert!(
            agent_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        );
        let runs = psql(
            &url,
            &format!(
                "SELECT high_seq, encode(gaps, 'hex') FROM agent_runs
                 WHERE agent_id = '{agent_id}' ORDER BY run_id"
            ),
        );
        return runs
            .lines()
            .map(|l| {
                let (high, hex) = l.split_once('|').unwrap();
                let gaps: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                seqs_of(high.parse::<i64>().unwrap() as u64, &gaps)
            })
            .collect();
    }
    let c = rusqlite::Connection::open(db).expect("open the database");
    let mut stmt = c
        .prepare("SELECT high_seq, gaps FROM agent_runs WHERE agent_id = ?1 ORDER BY run_id")
        .unwrap();
    let mut runs = stmt
        .query_map([agent_id], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
        })
        .unwrap()
        .map(|row| {
            let (high, gaps) = row.unwrap();
            seqs_of(high, &gaps)
        })
        .collect::<Vec<_>>();
    {
        // Batches stored since their host's last merge (see `stored`);
        // merged rows that linger are already in the run's state, and a
        // union takes them once.
        let mut stmt = c
            .prepare(
                "SELECT (SELECT COUNT(*) FROM agent_runs r2 WHERE r2.agent_id = r.agent_id
                             AND r2.run_id < r.run_id), j.seq
                 FROM journal j JOIN agent_runs r USING (run_id) WHERE r.agent_id = ?1",
            )
            .unwrap();
        let rows = stmt
            .query_map([agent_id], |r| {
                Ok((r.get::<_, i64>(0)? as usize, r.get::<_, i64>(1)? as u64))
            })
            .unwrap();
        for row in rows {
            let (run, seq) = row.unwrap();
            runs[run].insert(seq);
        }
    }
    runs
}

/// The seqs of a run: 1 to `high` but those in `gaps` (two little-endian
/// u64 per gap, both ends in it), as both backends keep them.
fn seqs_of(high: u64, gaps: &[u8]) -> BTreeSet<u64> {
    let mut seqs: BTreeSet<u64> = (1..=high).collect();
    for g in gaps.chunks_exact(16) {
        let lo = u64::from_le_bytes(g[..8].try_into().unwrap());
        let hi = u64::from_le_bytes(g[8..].try_into().unwrap());
        for s in lo..=hi {
            seqs.remove(&s);
        }
    }
    seqs
}

/// Asserts the store holds exactly `ticks` batches of `host`, each once.
pub fn assert_exactly_once(all: &BTreeMap<String, StoredHost>, host: &str, ticks: u64) {
    let got = all
        .get(host)
        .unwrap_or_else(|| panic!("{host} missing: {all:?}"));
    let want = StoredHost {
        batches_stored_total: ticks,
        dropped_batches_total: 0,
        batch_times: ticks,
        rows: rows_for(ticks),
        duplicate_keys: 0,
    };
    assert_eq!(*got, want, "{host}");
}
