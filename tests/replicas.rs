//! End to end, several server replicas on one PostgreSQL database (issue
//! 15): the real binaries on loopback, and a PostgreSQL server of the
//! tests' own (`common/pg.rs`: initdb in a temp dir, 127.0.0.1, stopped at
//! the end; without PostgreSQL installed each test prints one `skipped:`
//! line naming the package and returns).
//!
//! What is proved: replicas started on one database share one certificate
//! authority (kept in the store), so a join token made through one replica
//! enrols through another and an agent's certificate opens every replica;
//! agents given every replica's URL spread across them; and when a replica
//! is killed with SIGKILL, its agents fail over to the others and every
//! batch is stored exactly once, which the test reads from the database
//! itself (not from what a server says).
//!
//! Waits poll with deadlines; nothing sleeps a guessed time.

// Test support code panics on purpose when the harness cannot proceed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::pg::Postgres;
use common::{Proc, Server, TempDir, command_id, wait_for};

/// What the database holds for one host, read with psql.
#[derive(Debug, PartialEq, Eq)]
struct Stored {
    /// Batches the writers counted as new (a batch stored twice would
    /// count twice).
    batches_stored_total: i64,
    /// Distinct sample times: one per batch (one tick per batch).
    times: i64,
    /// Rows of `ticks`: one per (host, time, run).
    rows: i64,
    /// Agent runs (one per agent process).
    runs: i64,
}

/// Every host's counts, from the database.
fn stored(pg: &Postgres, url: &str) -> BTreeMap<String, Stored> {
    let out = pg.psql(
        url,
        "SELECT h.hostname, h.batches_stored_total,
                (SELECT count(DISTINCT time_unix_ms) FROM ticks t WHERE t.host_id = h.host_id),
                (SELECT count(*) FROM ticks t WHERE t.host_id = h.host_id),
                (SELECT count(DISTINCT run_id) FROM ticks t WHERE t.host_id = h.host_id)
         FROM hosts h ORDER BY 1",
    );
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let n = |i: usize| f[i].parse::<i64>().unwrap();
            (
                f[0].to_owned(),
                Stored {
                    batches_stored_total: n(1),
                    times: n(2),
                    rows: n(3),
                    runs: n(4),
                },
            )
        })
        .collect()
}

/// The line a replica logs at start: "replica ID on a shared store:
/// lease N s".
fn replica_line(server: &Server) -> String {
    wait_for("the replica line", Duration::from_secs(10), || {
        server
            .proc
            .stderr
            .lines()
            .into_iter()
            .find(|l| l.contains("on a shared store: lease"))
    })
}

/// The replica id `server` logged at start.
fn replica_id(server: &Server) -> String {
    let line = replica_line(server);
    line.split("replica ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no replica id in {line:?}"))
        .to_owned()
}

/// Every host online in `server`'s fleet-wide view, with the replica
/// holding it.
fn holders(server: &Server) -> BTreeMap<String, String> {
    let out = server.ctl(&["hosts", "--json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(common::HostJson::parse)
        .filter(|h| h.online && !h.replica.is_empty())
        .map(|h| (h.hostname, h.replica))
        .collect()
}

/// Waits for an agent started with `--count` to deliver everything and
/// exit 0.
fn wait_flushed(agent: &mut Proc, name: &str, timeout: Duration) {
    let status = agent.wait_exit(timeout);
    assert!(
        status.success(),
        "{name}: {status}\n{}",
        agent.stderr.dump()
    );
    assert!(
        !agent.stderr.contains("not acknowledged by the server"),
        "{name} lost batches:\n{}",
        agent.stderr.dump()
    );
}

/// `agent` reporting every 0.1 s until it sent `ticks` batches; then it
/// waits up to 90 s for their acknowledgements and exits.
fn counted(agent: common::AgentCmd, ticks: u64) -> Proc {
    agent
        .env("MONITOR_INTERVAL", "0.1")
        .env("MONITOR_SHUTDOWN_TIMEOUT", "90s")
        .arg("--count")
        .arg(ticks.to_string())
        .spawn()
}

/// Waits until every agent of `names` is online in `server`'s fleet-wide
/// view and checks that they spread over every replica of `ids`; returns
/// where each is.
fn wait_spread(server: &Server, names: &[String], ids: &[&String]) -> BTreeMap<String, String> {
    let held = wait_for("every agent online", Duration::from_secs(120), || {
        let h = holders(server);
        names.iter().all(|n| h.contains_key(n)).then_some(h)
    });
    for id in ids {
        assert!(
            held.values().any(|r| r == *id),
            "the agents did not spread over every replica: {held:?}"
        );
    }
    held
}

/// Waits until every host of `names` has at least `batches` stored.
fn wait_stored(pg: &Postgres, url: &str, names: &[String], batches: u64) {
    wait_for("batches stored", Duration::from_secs(120), || {
        let s = stored(pg, url);
        (s.len() == names.len() && s.values().all(|h| h.batches_stored_total >= batches as i64))
            .then_some(())
    });
}

/// Checks the database holds each of `names`' `ticks` batches exactly
/// once, from one agent run.
fn assert_stored_once(pg: &Postgres, url: &str, names: &[String], ticks: u64) {
    let all = stored(pg, url);
    for n in names {
        let want = Stored {
            batches_stored_total: ticks as i64,
            times: ticks as i64,
            rows: ticks as i64,
            runs: 1,
        };
        assert_eq!(all.get(n.as_str()), Some(&want), "{n}: {all:?}");
    }
}

/// The two tests that kill a replica under a fleet of agents at 0.1 s run
/// one at a time: together, on a loaded 2-core machine, each made the
/// other miss its deadlines (agents that finished their count before the
/// hosts view was checked).
static FLEET_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn agents_fail_over_when_a_replica_is_killed_and_every_batch_is_stored_once() {
    let _one_at_a_time = FLEET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    let test = "agents_fail_over_when_a_replica_is_killed";
    let Some(pg) = Postgres::shared(test) else {
        return;
    };
    let dir = TempDir::new("replicas-failover");
    let url = pg.database("failover");
    let mut servers: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|r| Server::start_replica(&dir.join(r), &url, &[]))
        .collect();
    let ids: Vec<String> = servers.iter().map(replica_id).collect();

    // One certificate authority for all, though each has its own TLS
    // directory: the later ones took the first's from the store.
    let ca = |s: &Server| std::fs::read(s.dir().join("tls").join("ca.pem")).unwrap();
    // The CA's key went through the database, never through a log (the
    // servers log at debug level here).
    let key = std::fs::read_to_string(servers[0].dir().join("tls").join("ca.key")).unwrap();
    let key_line = key.lines().nth(1).unwrap();
    for s in &servers {
        assert!(
            !s.proc.stderr.contains("with parameters") && !s.proc.stderr.contains(key_line),
            "a statement's parameters in the log"
        );
    }
    for s in &servers[1..] {
        assert_eq!(ca(&servers[0]), ca(s), "the replicas have different CAs");
        assert!(
            s.proc
                .stderr
                .contains("took the certificate authority the store shares")
        );
    }

    // Tokens all made through the first replica; each agent enrols with
    // whichever replica it tries first (its name's hash picks).
    // 30 s of ticks each: long enough that every agent is still sending
    // when the replica dies, even when 30 agents took a while to enrol on
    // a loaded machine (the kill waits only for a few batches each).
    let ticks: u64 = 300;
    let names: Vec<String> = (0..30).map(|i| format!("fo-{i}")).collect();
    let urls: Vec<String> = servers.iter().map(Server::url).collect();
    let mut agents: Vec<Proc> = names
        .iter()
        .map(|n| {
            counted(
                servers[0].agent(n).env("MONITOR_SERVER", urls.join(",")),
                ticks,
            )
        })
        .collect();
    // Where each agent is, as the first replica's fleet-wide view says.
    let held = wait_spread(&servers[0], &names, &ids.iter().collect::<Vec<_>>());

    // Kill the last replica once every agent has some batches stored.
    wait_stored(pg, &url, &names, 20);
    let mut killed = servers.pop().unwrap();
    let killed_id = ids.last().unwrap();
    let before = stored(pg, &url);
    killed.proc.signal("KILL");
    killed.proc.wait_exit(Duration::from_secs(10));
    let killed_at = Instant::now();
    // Its agents report through the others: their stored batches grow
    // (the killed replica stores nothing any more).
    // (An agent that had already sent its last batch has nothing left to
    // move with: only the others are waited for, and there must be some.)
    let moved: Vec<&String> = names
        .iter()
        .filter(|n| &held[*n] == killed_id)
        .filter(|n| before[n.as_str()].batches_stored_total < ticks as i64 - 10)
        .collect();
    assert!(
        !moved.is_empty(),
        "every agent of the killed replica was done before it died: {before:?}"
    );
    wait_for(
        "the killed replica's agents to report through the others",
        Duration::from_secs(120),
        || {
            let now = stored(pg, &url);
            moved
                .iter()
                .all(|n| {
                    now[n.as_str()].batches_stored_total
                        > before[n.as_str()].batches_stored_total + 1
                })
                .then_some(())
        },
    );
    // And the fleet-wide view has them at the replica they moved to.
    wait_for("the hosts view to follow", Duration::from_secs(60), || {
        let h = holders(&servers[0]);
        moved
            .iter()
            .all(|n| h.get(*n).is_some_and(|r| r != killed_id))
            .then_some(())
    });
    println!(
        "failover: the {} agents of the killed replica (of 3, 30 agents) report through the \
         others after {:.1} s",
        moved.len(),
        killed_at.elapsed().as_secs_f64()
    );

    for (agent, n) in agents.iter_mut().zip(&names) {
        wait_flushed(agent, n, Duration::from_secs(180));
    }
    assert_stored_once(pg, &url, &names, ticks);
}

/// Commands the agents in `commands_across_replicas` allow.
const ALLOW: &str = "hello = /bin/echo hello from the agent\nsleep = /bin/sleep <int:0-3600>\n";

/// How many results `command_id` has in the database.
fn results_of(pg: &Postgres, url: &str, command_id: &str) -> Vec<String> {
    pg.psql(
        url,
        &format!(
            "SELECT r.hostname || '|' || COALESCE(r.outcome, 'pending') FROM command_results r
             JOIN commands c USING (command_row) WHERE c.command_id = '{command_id}'"
        ),
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// The results of `command_id` once none is pending any more.
fn recorded(pg: &Postgres, url: &str, command_id: &str) -> Vec<String> {
    wait_for("the results recorded", Duration::from_secs(15), || {
        let r = results_of(pg, url, command_id);
        (!r.is_empty() && r.iter().all(|l| !l.ends_with("pending"))).then_some(r)
    })
}

/// `monitorctl exec --host HOST -- sleep SECS` through `server` in the
/// background, once `agent` runs it; and its command id.
fn sleep_through(server: &Server, agent: &Proc, host: &str, secs: u32) -> (Proc, String) {
    let mut cmd = server.ctl_command();
    cmd.args(["exec", "--host", host, "--", "sleep", &secs.to_string()]);
    let exec = Proc::spawn(cmd, "monitorctl exec");
    let id = command_id(&exec);
    wait_for("the sleep to start", Duration::from_secs(15), || {
        agent
            .stderr
            .contains(&format!("command {id}: running"))
            .then_some(())
    });
    (exec, id)
}

#[test]
fn a_command_through_one_replica_reaches_an_agent_held_by_another() {
    let test = "a_command_through_one_replica_reaches_an_agent_held_by_another";
    let Some(pg) = Postgres::shared(test) else {
        return;
    };
    let dir = TempDir::new("replicas-commands");
    let url = pg.database("commands");
    let a = Server::start_replica(&dir.join("a"), &url, &[]);
    let b = Server::start_replica(&dir.join("b"), &url, &[]);
    let allow = common::allowlist(&dir, ALLOW);
    // Enrolled with a token of A (it carries A's operator key), connected
    // to B only.
    let agent = a
        .agent("x-1")
        .env("MONITOR_SERVER", b.url())
        .env("MONITOR_COMMANDS_FILE", &allow)
        .spawn();
    wait_for("x-1 held by B, known to A", Duration::from_secs(30), || {
        let out = a.ctl(&["exec", "--host", "x-1", "--", "ping"]);
        out.status.success().then_some(())
    });

    // Through A: the output streams back, and history has it once.
    let started = Instant::now();
    let out = a.ctl(&["exec", "--host", "x-1", "--", "hello"]);
    let round_trip = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "x-1: hello from the agent\n"
    );
    println!(
        "command through replica A to an agent on replica B: {} ms round trip",
        round_trip.as_millis()
    );
    let id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("command "))
        .expect("the command id")
        .to_owned();
    assert_eq!(recorded(pg, &url, &id), ["x-1|exited"], "history of {id}");

    // The operator's Ctrl-C on A cancels it on the agent B holds.
    let (mut exec, id) = sleep_through(&a, &agent, "x-1", 301);
    exec.signal("INT");
    exec.wait_exit(Duration::from_secs(15));
    assert_eq!(
        recorded(pg, &url, &id),
        ["x-1|cancelled"],
        "history of {id}"
    );

    // B killed while the agent runs a command sent through A: the
    // operator hears "lost connection" within the lease, never a hang.
    let (mut exec, id) = sleep_through(&a, &agent, "x-1", 300);
    b.proc.signal("KILL");
    let killed = Instant::now();
    let status = exec.wait_exit(Duration::from_secs(30));
    let noticed = killed.elapsed();
    assert_eq!(status.code(), Some(1), "{}", exec.stderr.dump());
    assert!(
        exec.stderr.contains("x-1: lost connection"),
        "{}",
        exec.stderr.dump()
    );
    assert!(
        noticed <= lease_of(&a) + Duration::from_secs(5),
        "lost connection after {noticed:?}"
    );
    println!(
        "replica killed mid-command: the operator told after {:.1} s",
        noticed.as_secs_f64()
    );
    assert_eq!(
        recorded(pg, &url, &id),
        ["x-1|lost_connection"],
        "history of {id}"
    );
    agent.signal("KILL");
}

/// The replicas' lease, as `server` logged it at start.
fn lease_of(server: &Server) -> Duration {
    let line = replica_line(server);
    let secs = line
        .rsplit("lease ")
        .next()
        .and_then(|l| l.trim_end_matches(" s").trim().parse().ok())
        .unwrap_or_else(|| panic!("no lease in {line:?}"));
    Duration::from_secs(secs)
}

/// The gRPC health status of `server` (1 SERVING, 2 NOT_SERVING), asked
/// on the agents' listener without a client certificate.
fn health_of(server: &Server) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let ca_pem = std::fs::read_to_string(server.dir().join("tls").join("ca.pem")).unwrap();
    let endpoint = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem)),
        )
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = endpoint.connect().await.unwrap();
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    })
}

#[test]
fn postgres_restarted_under_load_loses_nothing_and_stores_nothing_twice() {
    let test = "postgres_restarted_under_load";
    let Some(pg) = Postgres::dedicated(test) else {
        return;
    };
    let dir = TempDir::new("replicas-pg-restart");
    let url = pg.database("restart");
    let server = Server::start_replica(&dir.join("a"), &url, &[]);
    let ticks: u64 = 120;
    let names: Vec<String> = (0..3).map(|i| format!("pr-{i}")).collect();
    let mut agents: Vec<Proc> = names
        .iter()
        .map(|n| {
            server
                .agent(n)
                .env("MONITOR_INTERVAL", "0.1")
                .env("MONITOR_SHUTDOWN_TIMEOUT", "120s")
                .arg("--count")
                .arg(ticks.to_string())
                .spawn()
        })
        .collect();
    wait_stored(&pg, &url, &names, ticks / 5);
    assert_eq!(health_of(&server), 1, "SERVING before");

    // Down: nothing acknowledged, one clear line, health says so.
    let down_at = Instant::now();
    pg.stop("fast");
    wait_for("the server to say so", Duration::from_secs(30), || {
        server
            .proc
            .stderr
            .contains("batches are not acknowledged (agents keep them) until it is back")
            .then_some(())
    });
    wait_for("NOT_SERVING", Duration::from_secs(30), || {
        (health_of(&server) == 2).then_some(())
    });
    // Back: acknowledged again, every batch stored once.
    pg.start();
    wait_for("the server to see it back", Duration::from_secs(60), || {
        server.proc.stderr.contains("is back after").then_some(())
    });
    println!(
        "PostgreSQL down and back: acknowledging again {:.1} s after the stop",
        down_at.elapsed().as_secs_f64()
    );
    wait_for("SERVING again", Duration::from_secs(30), || {
        (health_of(&server) == 1).then_some(())
    });
    for (agent, n) in agents.iter_mut().zip(&names) {
        wait_flushed(agent, n, Duration::from_secs(180));
    }
    assert_stored_once(&pg, &url, &names, ticks);
}

/// A network namespace of the test's own, its loopback up, in which the
/// name `replicas.test` has two addresses, 127.0.0.1 and ::1, for the real
/// resolver: `ip netns exec` mounts `/etc/netns/NAME/hosts` over
/// /etc/hosts for the processes it starts there, and nowhere else (the
/// machine's /etc/hosts is not touched, and this box's `localhost` has only
/// 127.0.0.1). Deleted, with that file, on drop.
struct TwoAddressName {
    ns: String,
    etc: std::path::PathBuf,
}

impl TwoAddressName {
    const NAME: &'static str = "replicas.test";

    /// Root only (`ip netns add`); the error names what failed.
    fn create() -> Result<TwoAddressName, String> {
        let ip = common::ip_bin().ok_or("ip(8) not found")?;
        let run = |args: &[&str]| -> Result<(), String> {
            let out = std::process::Command::new(&ip)
                .args(args)
                .output()
                .map_err(|e| e.to_string())?;
            out.status.success().then_some(()).ok_or_else(|| {
                format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            })
        };
        let ns = format!("mon-dns-{}", std::process::id() % 100_000);
        let etc = std::path::Path::new("/etc/netns").join(&ns);
        run(&["netns", "add", &ns])?;
        let made = TwoAddressName { ns, etc };
        run(&["-n", &made.ns, "link", "set", "lo", "up"])?;
        std::fs::create_dir_all(&made.etc).map_err(|e| format!("{}: {e}", made.etc.display()))?;
        let hosts = format!(
            "127.0.0.1 localhost\n::1 localhost\n127.0.0.1 {n}\n::1 {n}\n",
            n = Self::NAME
        );
        std::fs::write(made.etc.join("hosts"), hosts)
            .map_err(|e| format!("{}: {e}", made.etc.display()))?;
        Ok(made)
    }
}

impl Drop for TwoAddressName {
    fn drop(&mut self) {
        if let Some(ip) = common::ip_bin() {
            let _ = std::process::Command::new(ip)
                .args(["netns", "del", &self.ns])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.etc);
        // Only if nothing else is there (another test's namespace).
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// `url` (a database of `pg`) over PostgreSQL's Unix socket, which a
/// server in another network namespace reaches through the file system.
fn over_socket(pg: &Postgres, url: &str) -> String {
    let db = url.rsplit('/').next().unwrap();
    let dir = pg.dir().display().to_string().replace('/', "%2F");
    format!("postgres://postgres@{dir}:{}/{db}", pg.port)
}

#[test]
fn agents_given_a_name_with_two_addresses_spread_over_both_and_fail_over() {
    let _one_at_a_time = FLEET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    let test = "agents_given_a_name_with_two_addresses";
    let Some(pg) = Postgres::shared(test) else {
        return;
    };
    let name = match TwoAddressName::create() {
        Ok(n) => n,
        Err(e) => {
            // Not a silent pass: say loudly why this test did not run.
            eprintln!("SKIPPED {test}: network namespaces unavailable: {e}");
            println!("SKIPPED {test}: {e}");
            return;
        }
    };
    let dir = TempDir::new("replicas-dns");
    let url = pg.database("dns");
    // One replica on each address of the name, the same port (a new
    // namespace has every port free). Their certificates carry the name
    // and 127.0.0.1 (monitorctl's way in), not ::1: an agent that checked
    // the certificate against the address it connected to could not
    // talk to the replica on ::1.
    let extra = [
        "--tls-name",
        TwoAddressName::NAME,
        "--tls-name",
        "127.0.0.1",
    ];
    let start = |sub: &str, listen: &str| {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).unwrap();
        let db = d.join("monitor.db");
        std::fs::write(db.with_extension("pg-url"), over_socket(pg, &url)).unwrap();
        Server::start_opts(&db, listen, &extra, &[], Some(&name.ns))
    };
    let v4 = start("v4", "127.0.0.1:50051");
    let mut v6 = start("v6", "[::1]:50051");
    let (v4_id, v6_id) = (replica_id(&v4), replica_id(&v6));

    // 30 s of ticks: still running when the hosts view is checked after
    // the kill, however slow the steps before it were on a loaded machine.
    let ticks: u64 = 300;
    let names: Vec<String> = (0..8).map(|i| format!("dns-{i}")).collect();
    let server_url = format!("https://{}:50051", TwoAddressName::NAME);
    let mut agents: Vec<Proc> = names
        .iter()
        .map(|n| counted(v4.agent_at(Some(&name.ns), &server_url, n), ticks))
        .collect();
    let held = wait_spread(&v4, &names, &[&v4_id, &v6_id]);

    // The replica on ::1 killed: its agents move to the name's other
    // address, and every batch is stored exactly once.
    wait_stored(pg, &url, &names, 20);
    v6.proc.signal("KILL");
    v6.proc.wait_exit(Duration::from_secs(10));
    let moved: Vec<&String> = names.iter().filter(|n| held[*n] == v6_id).collect();
    wait_for("the hosts view to follow", Duration::from_secs(60), || {
        let h = holders(&v4);
        moved
            .iter()
            .all(|n| h.get(*n) == Some(&v4_id))
            .then_some(())
    });
    for (agent, n) in agents.iter_mut().zip(&names) {
        wait_flushed(agent, n, Duration::from_secs(180));
        // The log says where it went: the URL and the address.
        if moved.contains(&n) {
            assert!(
                agent.stderr.contains(&format!(
                    "https://{}:50051/ ([::1]:50051)",
                    TwoAddressName::NAME
                )),
                "{n}:\n{}",
                agent.stderr.dump()
            );
        }
    }
    assert_stored_once(pg, &url, &names, ticks);
}
