//! Store throughput and latency: can one server hold 10,000 agents at a 1 s
//! interval (10,000 batches/s, 60,000 samples/s) on a 2-core box?
//!
//! `cargo bench -p monitor-server --bench store` runs three phases against a
//! fresh database in the temp directory:
//! 1. paced: AGENTS simulated agents each submit one 6-sample batch per
//!    second, spread evenly over the second, for SECS seconds: prints the
//!    rate stored, submit→commit latency p50/p99/max, and the CPU the writer
//!    thread and the whole process used (how much room is left);
//! 2. saturation: every agent submits its next batch as soon as the
//!    previous one is acknowledged: the most the store can take;
//! 3. reads on the filled database: one host's metric over the whole run,
//!    every metric with a limit, `hosts()` for all hosts, and what
//!    `ListHosts` does with them (joined with a registry of as many hosts).
//!
//! Knobs (environment): MONITOR_BENCH_AGENTS (10000), MONITOR_BENCH_SECS
//! (15), MONITOR_BENCH_PREFILL_TICKS (300 s of history per agent, written
//! directly before the run), MONITOR_BENCH_FLUSH_MAX_BATCHES,
//! MONITOR_BENCH_FLUSH_DELAY_MS, MONITOR_BENCH_CHECKPOINT_S,
//! MONITOR_BENCH_MERGE_S, MONITOR_BENCH_DIR, MONITOR_BENCH_LOG (a log level
//! for the store's own log), and MONITOR_BENCH_PREFILL_CACHE_DIR
//! (keeps the prefilled file there, named by agents and ticks, and copies it
//! instead of prefilling again: delete it after a schema change, and after
//! a week, when its history falls out of the retention). This program
//! measures; it must never touch anything but its own temporary directory
//! and the prefill cache it is given.

mod common;

use common::env_or;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monitor::metric::Metric;
use monitor_server::admin::host_infos;
use monitor_server::registry::Registry;
use monitor_server::store::{IncomingBatch, SampleQuery, SqliteConfig, Store, SubmitOutcome};

/// Linux reports CPU time in USER_HZ ticks, 100 per second on every
/// architecture the server runs on.
const TICKS_PER_S: f64 = 100.0;

fn batch(agent: usize, boot_id: u64, seq: u64, time_unix_ms: i64) -> IncomingBatch {
    let name = format!("host-{agent:05}");
    IncomingBatch {
        boot_id,
        peer: format!("127.0.0.1:{}", 20_000 + agent % 40_000),
        ..common::six_batch(agent, name, seq, time_unix_ms, |i| {
            ((seq as usize * 7 + agent + i) % 1000) as f64 / 10.0
        })
    }
}

/// CPU ticks (user + system) of the process and of the writer thread.
fn cpu_ticks() -> (u64, u64) {
    fn ticks(stat: &str) -> u64 {
        // Fields after the ")" that ends the command name; utime and stime
        // are fields 14 and 15 of the whole line.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        get(11) + get(12)
    }
    let process = std::fs::read_to_string("/proc/self/stat")
        .map(|s| ticks(&s))
        .unwrap_or(0);
    let mut writer = 0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for task in dir.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == "store-writer" {
                writer = std::fs::read_to_string(task.path().join("stat"))
                    .map(|s| ticks(&s))
                    .unwrap_or(0);
            }
        }
    }
    (process, writer)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Bytes this process has caused to be written to the block device so far
/// (`write_bytes` of /proc/self/io: WAL appends and checkpoints alike).
fn disk_written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

struct Phase {
    stored: u64,
    elapsed: Duration,
    /// (when submitted, submit→commit latency) of every stored batch.
    latencies: Vec<(Instant, Duration)>,
    cpu_process: f64,
    cpu_writer: f64,
    written_bytes: u64,
}

fn report(name: &str, p: &mut Phase) {
    // The worst latency of the batches submitted in each second of the
    // phase: shows whether a spike is steady or one stall (a fold, a
    // checkpoint, another process taking the CPU).
    let first = p.latencies.iter().map(|&(at, _)| at).min();
    let mut worst_ms = Vec::new();
    for &(at, l) in &p.latencies {
        let second = first.map_or(0, |f| at.duration_since(f).as_secs() as usize);
        if worst_ms.len() <= second {
            worst_ms.resize(second + 1, 0.0);
        }
        worst_ms[second] = f64::max(worst_ms[second], ms(l));
    }
    let mut latencies: Vec<Duration> = p.latencies.iter().map(|&(_, l)| l).collect();
    latencies.sort();
    let secs = p.elapsed.as_secs_f64();
    println!(
        "{name}: {} batches in {secs:.1} s = {:.0} batches/s, {:.0} samples/s; \
         submit→commit p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         CPU: writer thread {:.0}%, whole process {:.0}% (of 200% on 2 cores); \
         disk writes {:.1} MiB/s ({:.1} KiB per batch)",
        p.stored,
        p.stored as f64 / secs,
        p.stored as f64 * 6.0 / secs,
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0)),
        p.cpu_writer,
        p.cpu_process,
        p.written_bytes as f64 / secs / (1024.0 * 1024.0),
        p.written_bytes as f64 / 1024.0 / p.stored.max(1) as f64,
    );
    let worst: Vec<String> = worst_ms.iter().map(|w| format!("{w:.0}")).collect();
    println!("  worst latency per second, ms: {}", worst.join(" "));
}

async fn measure<F, Fut>(agents: usize, run: F) -> Phase
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = (u64, Vec<(Instant, Duration)>)> + Send + 'static,
{
    let (p0, w0) = cpu_ticks();
    let b0 = disk_written_bytes();
    let started = Instant::now();
    let tasks: Vec<_> = (0..agents).map(|a| tokio::spawn(run(a))).collect();
    let mut stored = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        match t.await {
            Ok((n, mut l)) => {
                stored += n;
                latencies.append(&mut l);
            }
            Err(e) => eprintln!("bench: an agent task failed: {e}"),
        }
    }
    let elapsed = started.elapsed();
    let (p1, w1) = cpu_ticks();
    let written_bytes = disk_written_bytes().saturating_sub(b0);
    let pct = |t: u64| t as f64 / TICKS_PER_S / elapsed.as_secs_f64() * 100.0;
    Phase {
        stored,
        elapsed,
        latencies,
        cpu_process: pct(p1 - p0),
        cpu_writer: pct(w1 - w0),
        written_bytes,
    }
}

async fn submit_timed(store: &Store, b: IncomingBatch, lat: &mut Vec<(Instant, Duration)>) -> u64 {
    let t = Instant::now();
    match store.submit(b).await {
        Ok(SubmitOutcome::Stored) => {
            lat.push((t, t.elapsed()));
            1
        }
        Ok(other) => {
            eprintln!("bench: unexpected outcome {other:?}");
            0
        }
        Err(e) => {
            eprintln!("bench: submit failed: {e}");
            0
        }
    }
}

fn file_size_mib(path: &Path) -> f64 {
    let size = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    (size(path.to_owned()) + size(PathBuf::from(wal))) as f64 / (1024.0 * 1024.0)
}

/// Fills the database with `ticks` seconds of history per agent (before
/// `base_ms`), so the bench runs against ranges that span many pages, as
/// after days of operation, not against a nearly empty file.
fn prefill_history(
    path: &Path,
    agents: usize,
    ticks: i64,
    base_ms: i64,
) -> Result<u64, rusqlite::Error> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.execute_batch("PRAGMA synchronous = OFF; PRAGMA cache_size = -262144;")?;
    let tx = conn.transaction()?;
    let mut rows = 0;
    {
        let mut host = tx.prepare(
            "INSERT INTO hosts (host_id, hostname, agent_id, agent_version, peer,
                 first_seen_unix_ms, last_seen_unix_ms, clock_offset_ms, dropped_batches_total,
                 batches_stored_total)
             VALUES (?1, ?2, ?3, '0.1.0', '127.0.0.1:1', ?4, ?4, 0, 0, ?5)",
        )?;
        let mut run = tx.prepare(
            "INSERT INTO agent_runs (run_id, agent_id, boot_id, high_seq, gaps,
                 first_seen_unix_ms, last_seen_unix_ms)
             VALUES (?1, ?2, 0, ?3, x'', ?4, ?4)",
        )?;
        let mut tick = tx.prepare(
            "INSERT INTO ticks (host_id, time_unix_ms, run_id, receive_lag_ms, cpu_percent,
                 mem_percent, disk_read_kbps, disk_write_kbps, net_in_kbps, net_out_kbps)
             VALUES (?1, ?2, ?1, 3, ?3, ?3, ?3, ?3, ?3, ?3)",
        )?;
        for a in 0..agents {
            let id = a as i64 + 1;
            let first = base_ms - ticks * 1000;
            host.execute(rusqlite::params![
                id,
                format!("host-{a:05}"),
                format!("agent-{a:05}"),
                first,
                ticks
            ])?;
            run.execute(rusqlite::params![id, format!("agent-{a:05}"), ticks, first])?;
            // In the order of the key (host, time, run).
            for t in 0..ticks {
                tick.execute(rusqlite::params![
                    id,
                    first + t * 1000,
                    (t % 1000) as f64 / 10.0
                ])?;
                rows += 6;
            }
        }
    }
    tx.commit()?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(rows)
}

async fn bench(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let agents: usize = env_or("MONITOR_BENCH_AGENTS", 10_000);
    let secs: u64 = env_or("MONITOR_BENCH_SECS", 15);
    let path = dir.join("bench.db");
    let mut config = SqliteConfig::new(&path);
    config.flush_max_batches = env_or("MONITOR_BENCH_FLUSH_MAX_BATCHES", config.flush_max_batches);
    config.flush_max_delay = Duration::from_millis(env_or(
        "MONITOR_BENCH_FLUSH_DELAY_MS",
        config.flush_max_delay.as_millis() as u64,
    ));
    config.checkpoint_interval = Duration::from_secs(env_or(
        "MONITOR_BENCH_CHECKPOINT_S",
        config.checkpoint_interval.as_secs(),
    ));
    config.merge_interval = Duration::from_secs(env_or(
        "MONITOR_BENCH_MERGE_S",
        config.merge_interval.as_secs(),
    ));
    println!(
        "store bench: {agents} agents, {secs} s per phase, flush_max_batches {}, \
         flush_max_delay {:?}, checkpoint_interval {:?}, merge_interval {:?}, \
         queue_capacity {}, db {}",
        config.flush_max_batches,
        config.flush_max_delay,
        config.checkpoint_interval,
        config.merge_interval,
        config.queue_capacity,
        path.display()
    );
    let base_ms = monitor::time::now_unix_ms() - (secs as i64 + 5) * 2 * 1000;
    let prefill: i64 = env_or("MONITOR_BENCH_PREFILL_TICKS", 300);
    let cached = std::env::var_os("MONITOR_BENCH_PREFILL_CACHE_DIR")
        .map(|d| PathBuf::from(d).join(format!("prefill-{agents}-{prefill}.db")));
    if let Some(c) = cached.as_ref().filter(|c| prefill > 0 && c.exists()) {
        let t = Instant::now();
        std::fs::copy(c, &path)?;
        println!(
            "prefill copied from {} in {:.1} s, {:.0} MiB",
            c.display(),
            t.elapsed().as_secs_f64(),
            file_size_mib(&path)
        );
    } else if prefill > 0 {
        // Creates the tables, then fills them directly.
        Store::open(config.clone()).await?.close().await?;
        let t = Instant::now();
        let rows = prefill_history(&path, agents, prefill, base_ms)?;
        println!(
            "prefilled {rows} samples ({prefill} s of history per agent) in {:.1} s, {:.0} MiB",
            t.elapsed().as_secs_f64(),
            file_size_mib(&path)
        );
        if let Some(c) = &cached {
            std::fs::copy(&path, c)?;
        }
    }
    // Written without fsync: the kernel would flush it during the run, and
    // the store's first checkpoint would wait for all of it. A server
    // starting on its file finds nothing of the kind.
    std::fs::File::open(&path)?.sync_all()?;
    let t = Instant::now();
    let store = Store::open(config).await?;
    println!("open (quick_check, load hosts): {:.0} ms", ms(t.elapsed()));

    // Phase 1: paced like real agents, 1 batch per agent per second.
    let interval = Duration::from_secs(1);
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let s = store.clone();
    let mut paced = measure(agents, move |a| {
        let store = s.clone();
        async move {
            let offset = interval.mul_f64(a as f64 / agents as f64);
            let mut lat = Vec::with_capacity(secs as usize);
            let mut stored = 0;
            for tick in 0..secs {
                tokio::time::sleep_until(start + offset + interval * tick as u32).await;
                let t = base_ms + tick as i64 * 1000 + offset.as_millis() as i64;
                stored += submit_timed(&store, batch(a, 1, tick + 1, t), &mut lat).await;
            }
            (stored, lat)
        }
    })
    .await;
    report("paced (1 batch/agent/s)", &mut paced);

    // Phase 2: saturation, each agent back to back.
    let deadline = Instant::now() + Duration::from_secs(secs);
    let s = store.clone();
    let mut saturated = measure(agents, move |a| {
        let store = s.clone();
        async move {
            let mut lat = Vec::new();
            let mut stored = 0;
            let mut seq = secs;
            while Instant::now() < deadline {
                seq += 1;
                let t = base_ms + seq as i64 * 1000;
                stored += submit_timed(&store, batch(a, 1, seq, t), &mut lat).await;
            }
            (stored, lat)
        }
    })
    .await;
    report("saturation (back to back)", &mut saturated);
    println!("database + WAL: {:.0} MiB", file_size_mib(&path));

    // Phase 3: reads.
    let t = Instant::now();
    let rows = store
        .query(SampleQuery {
            hostname: "host-00042".into(),
            metric: Some(Metric::CpuPercent),
            since_unix_ms: 0,
            until_unix_ms: None,
            limit: None,
        })
        .await?;
    println!(
        "query one host, one metric, whole run: {} rows in {:.2} ms",
        rows.len(),
        ms(t.elapsed())
    );
    let t = Instant::now();
    let rows = store
        .query(SampleQuery {
            hostname: "host-00042".into(),
            metric: None,
            since_unix_ms: base_ms + 5_000,
            until_unix_ms: None,
            limit: Some(1000),
        })
        .await?;
    println!(
        "query one host, every metric, limit 1000: {} rows in {:.2} ms",
        rows.len(),
        ms(t.elapsed())
    );
    let t = Instant::now();
    let hosts = store.hosts().await?;
    println!(
        "hosts() with latest values: {} hosts in {:.0} ms",
        hosts.len(),
        ms(t.elapsed())
    );
    // ListHosts: the store's hosts joined with the registry's, every host
    // online (the join's worst case: both sides full).
    let registry = Registry::default();
    for h in &hosts {
        registry.report_opened(&h.hostname, &h.peer, base_ms);
    }
    let t = Instant::now();
    let stored = store.hosts().await?;
    let copied = t.elapsed();
    let live = registry.snapshot();
    let snapshot = t.elapsed() - copied;
    let infos = host_infos(stored, live, usize::MAX);
    println!(
        "every host joined (store hosts with the registry): {} hosts in {:.0} ms \
         (store copy {:.0} ms, registry copy {:.0} ms, join into messages {:.0} ms)",
        infos.len(),
        ms(t.elapsed()),
        ms(copied),
        ms(snapshot),
        ms(t.elapsed() - copied - snapshot)
    );
    // What one ListHosts page costs: the first 1,000 hosts after a name in
    // the middle, from both sides.
    let after = hosts.get(hosts.len() / 2).map(|h| h.hostname.clone());
    let t = Instant::now();
    let stored = store.hosts_page(after.clone(), 1001).await?;
    let live = registry.page(after.as_deref(), 1001);
    let page = host_infos(stored, live, 1001);
    println!(
        "ListHosts page (1,000 hosts after the middle one): {} hosts in {:.1} ms",
        page.len().min(1000),
        ms(t.elapsed())
    );
    let t = Instant::now();
    store.close().await?;
    println!("close (drain + checkpoint): {:.0} ms", ms(t.elapsed()));
    Ok(())
}

fn main() {
    // MONITOR_BENCH_LOG=debug shows the store's own log (merges, checkpoints).
    if let Some(level) = std::env::var("MONITOR_BENCH_LOG")
        .ok()
        .and_then(|l| l.parse::<log::LevelFilter>().ok())
    {
        monitor::cli::init_logging("store bench", level);
    }
    let dir = match std::env::var_os("MONITOR_BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("monitor-store-bench-{}", std::process::id())),
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("bench: cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    let dir = Arc::new(dir);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start tokio: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(bench(&dir));
    let _ = std::fs::remove_dir_all(&*dir);
    if let Err(e) = result {
        let mut msg = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        eprintln!("bench: {msg}");
        std::process::exit(1);
    }
}
