//! What one collector tick costs, against the cheapest possible tick.
//!
//! The "floor" re-reads exactly the files the collector reads (the /proc
//! files, thermal zones and Pi attributes it found: `Collector::tick_files`),
//! with kept-open descriptors and `pread` at offset 0 into reused buffers
//! (one `pread` for files the kernel produces whole, as the collector does),
//! `statvfs`es the same file systems, and does nothing with the bytes: it is
//! what the kernel charges for producing the text and the counts, which no
//! collector can avoid. `Collector::sample` adds parsing, rates, the mount
//! table's change check and bookkeeping on top; the ratio of the two is the
//! collector's overhead. Both run in the same process, interleaved in rounds so that
//! drift of the machine affects both alike, and each is summarised by the
//! median of its rounds.
//!
//! A hot loop flatters both: the agent ticks once a second, when the
//! caches are cold. The full version therefore also runs both paced, one
//! tick every 0.5 s, interleaved, and reports the thread's CPU time per
//! tick (`CLOCK_THREAD_CPUTIME_ID`): what a tick really costs in
//! service, next to what merely reading the files costs then.
//!
//! Syscalls per tick: when `strace` is installed, the benchmark runs itself
//! twice under `strace -c -f` as a child that takes 100 and 300 ticks; the
//! difference divided by 200 is what a steady tick of the collector costs in
//! system calls (start-up cancels out). The whole agent adds its timer and
//! network calls (about 8 at 0.1 s; see bench/run.sh's syscalls section).
//!
//! `cargo bench -p monitor-agent --bench tick` runs the full version;
//! `--quick` (or `TICK_BENCH_QUICK=1`) runs a short one for CI and exits
//! non-zero if the ratio exceeds 3.0 or the collector makes more than 16
//! system calls a tick (24 for the whole agent, less the runtime's 8).
//! Reads the real /proc and /sys of this machine; sends nothing anywhere.

use std::fs::File;
use std::hint::black_box;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use monitor_agent::collector::{Collector, CollectorConfig};
use monitor_agent::source::Shape;

/// The ratio the collector aims for.
const TARGET_RATIO: f64 = 1.5;
/// The ratio above which quick mode fails.
const QUICK_FAIL_RATIO: f64 = 3.0;
/// The collector's system calls per tick above which quick mode fails: the
/// whole agent's budget of 24 less the 8 its runtime and sending take.
const QUICK_FAIL_SYSCALLS: f64 = 16.0;
/// Set in the child that `strace` counts: how many ticks to take.
const CHILD_TICKS_VAR: &str = "TICK_BENCH_CHILD_TICKS";
/// Set (to 1) to print bench/floor.c's arguments for what the collector
/// reads on this machine, and exit: bench/cpu-per-sample.sh asks this way,
/// so the list has one home (`Collector::tick_files`).
const FLOOR_ARGS_VAR: &str = "TICK_BENCH_FLOOR_ARGS";

/// The floor: kept-open files re-read from offset 0 (once for files
/// produced whole, until EOF for the others), and the same `statvfs`s.
struct Floor {
    files: Vec<(File, Shape, Vec<u8>, usize)>,
    statfs: Vec<PathBuf>,
}

impl Floor {
    fn open(collector: &Collector) -> io::Result<Floor> {
        let mut files = Vec::new();
        for (path, shape) in collector.tick_files() {
            files.push((File::open(path)?, shape, vec![0u8; 4096], 0));
        }
        let statfs = collector
            .statfs_paths()
            .into_iter()
            .map(Path::to_path_buf)
            .collect();
        Ok(Floor { files, statfs })
    }

    fn describe(&self) -> String {
        format!(
            "{} kept-open files + {} statvfs",
            self.files.len(),
            self.statfs.len()
        )
    }

    fn tick(&mut self) -> io::Result<usize> {
        let mut total = 0;
        for (file, shape, buf, len) in &mut self.files {
            let mut filled = 0;
            loop {
                if filled == buf.len() {
                    buf.resize(buf.len() * 2, 0);
                }
                let n = file.read_at(&mut buf[filled..], filled as u64)?;
                filled += n;
                if n == 0 || (*shape == Shape::Whole && filled < buf.len()) {
                    break;
                }
            }
            *len = filled;
            total += filled;
        }
        for path in &self.statfs {
            let s = nix::sys::statvfs::statvfs(path.as_path()).map_err(io::Error::from)?;
            black_box(s.blocks_available());
        }
        Ok(total)
    }

    /// The bytes of file `index` as last read.
    fn text(&self, index: usize) -> &[u8] {
        let (_, _, buf, len) = &self.files[index];
        &buf[..*len]
    }
}

/// Runs the /proc parsers once over the floor's last read (the first six
/// files are stat, meminfo, diskstats, net/dev, loadavg and uptime); returns
/// a value that depends on everything parsed so nothing is optimised away.
fn parse_only(floor: &Floor) -> u64 {
    use monitor_agent::proc::{diskstats, loadavg, meminfo, netdev, stat, uptime};
    let mut sum = 0u64;
    if let Ok(cpu) = stat::parse(floor.text(0)) {
        sum = sum.wrapping_add(cpu.total_ticks());
    }
    if let Ok(mem) = meminfo::parse(floor.text(1)) {
        sum = sum.wrapping_add(mem.mem_total_bytes);
    }
    for disk in diskstats::parse(floor.text(2)).flatten() {
        sum = sum.wrapping_add(disk.read_sectors);
    }
    for net in netdev::parse(floor.text(3)).flatten() {
        sum = sum.wrapping_add(net.rx_bytes);
    }
    if let (Ok(load), Ok(up)) = (loadavg::parse(floor.text(4)), uptime::parse(floor.text(5))) {
        sum = sum.wrapping_add((load + up) as u64);
    }
    sum
}

/// The child `strace` counts: `ticks` collector ticks after a warm-up.
fn child(ticks: u32) -> ExitCode {
    let Ok(mut collector) =
        Collector::open(CollectorConfig::new(Path::new("/proc"), Path::new("/sys")))
    else {
        return ExitCode::from(2);
    };
    for _ in 0..ticks {
        black_box(collector.sample(Instant::now()));
    }
    ExitCode::SUCCESS
}

/// System calls in a run of the child taking `ticks` ticks, from `strace
/// -c`'s total line; `None` when strace is missing or fails.
fn strace_total(ticks: u32) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let out =
        std::env::temp_dir().join(format!("tick-bench-strace-{}-{ticks}", std::process::id()));
    let status = Command::new("strace")
        .arg("-c")
        .arg("-f")
        .arg("-o")
        .arg(&out)
        .arg(&exe)
        .env(CHILD_TICKS_VAR, ticks.to_string())
        .status()
        .ok()?;
    let text = std::fs::read_to_string(&out).ok();
    let _ = std::fs::remove_file(&out);
    if !status.success() {
        return None;
    }
    // "100.00    0.000123           1       500        12 total"
    text?
        .lines()
        .find(|l| l.trim_end().ends_with(" total"))
        .and_then(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.get(3)?.parse().ok()
        })
}

/// Steady-state system calls per collector tick, and the calls of a run of
/// 300 ticks and of 100.
fn syscalls_per_tick() -> Option<(f64, u64, u64)> {
    let a = strace_total(100)?;
    let b = strace_total(300)?;
    Some((b.saturating_sub(a) as f64 / 200.0, a, b))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// CPU time this thread has used, in nanoseconds
/// (`CLOCK_THREAD_CPUTIME_ID`: exact, unlike schedstat, which only moves
/// at scheduler events).
fn thread_cpu_ns() -> Option<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    u64::try_from(t.tv_sec())
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(u64::try_from(t.tv_nsec()).ok()?)
}

/// Median CPU µs per tick of the floor and of the collector when each
/// ticks once per `period` (alternating), over `ticks` ticks each.
fn paced(
    floor: &mut Floor,
    collector: &mut Collector,
    ticks: u32,
    period: Duration,
) -> Option<(f64, f64)> {
    let mut floor_us = Vec::new();
    let mut sample_us = Vec::new();
    for _ in 0..ticks {
        std::thread::sleep(period / 2);
        let a = thread_cpu_ns()?;
        floor.tick().ok()?;
        let b = thread_cpu_ns()?;
        floor_us.push((b - a) as f64 / 1000.0);
        std::thread::sleep(period / 2);
        let a = thread_cpu_ns()?;
        black_box(collector.sample(Instant::now()));
        let b = thread_cpu_ns()?;
        sample_us.push((b - a) as f64 / 1000.0);
    }
    Some((median(&mut floor_us), median(&mut sample_us)))
}

fn micros_per_tick(elapsed: Duration, ticks: u32) -> f64 {
    elapsed.as_secs_f64() * 1e6 / f64::from(ticks)
}

/// `-w FILE` (read whole), `-r FILE` (records) and `-s PATH` (statvfs)
/// for each thing a tick reads, on one line.
fn print_floor_args(collector: &Collector) -> ExitCode {
    let mut args = Vec::new();
    for (path, shape) in collector.tick_files() {
        let flag = if shape == Shape::Whole { "-w" } else { "-r" };
        args.push(format!("{flag} {}", path.display()));
    }
    for path in collector.statfs_paths() {
        args.push(format!("-s {}", path.display()));
    }
    if args.iter().any(|a| a.split_whitespace().count() != 2) {
        eprintln!("tick bench: a path with white space cannot be passed on one line");
        return ExitCode::from(2);
    }
    println!("{}", args.join(" "));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    if let Some(ticks) = std::env::var(CHILD_TICKS_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return child(ticks);
    }
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var("TICK_BENCH_QUICK").is_ok_and(|v| v == "1");
    let (rounds, ticks_per_round) = if quick { (5u32, 400u32) } else { (15, 2000) };
    let proc_root = Path::new("/proc");
    let sys_root = Path::new("/sys");

    let mut collector = match Collector::open(CollectorConfig::new(proc_root, sys_root)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tick bench: cannot open the collector: {e}");
            return ExitCode::from(2);
        }
    };
    let mut floor = match Floor::open(&collector) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tick bench: cannot open the floor's files: {e}");
            return ExitCode::from(2);
        }
    };
    let floor_name = format!("floor ({})", floor.describe());
    if std::env::var(FLOOR_ARGS_VAR).is_ok_and(|v| v == "1") {
        return print_floor_args(&collector);
    }

    // Warm up: buffers grown, devices classified, caches hot.
    for _ in 0..200 {
        if let Err(e) = floor.tick() {
            eprintln!("tick bench: floor read failed: {e}");
            return ExitCode::from(2);
        }
        black_box(collector.sample(Instant::now()));
    }

    // The parsers alone, over the floor's last read (UTF-8 check included).
    let parse_ticks = ticks_per_round * rounds;
    let start = Instant::now();
    for _ in 0..parse_ticks {
        black_box(parse_only(black_box(&floor)));
    }
    let parse_us = micros_per_tick(start.elapsed(), parse_ticks);

    let mut floor_us = Vec::new();
    let mut sample_us = Vec::new();
    let mut bytes = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..ticks_per_round {
            match floor.tick() {
                Ok(n) => bytes = black_box(n),
                Err(e) => {
                    eprintln!("tick bench: floor read failed: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        floor_us.push(micros_per_tick(start.elapsed(), ticks_per_round));

        let start = Instant::now();
        for _ in 0..ticks_per_round {
            black_box(collector.sample(Instant::now()));
        }
        sample_us.push(micros_per_tick(start.elapsed(), ticks_per_round));
    }

    let floor_min = floor_us.iter().copied().fold(f64::INFINITY, f64::min);
    let sample_min = sample_us.iter().copied().fold(f64::INFINITY, f64::min);
    let floor_median = median(&mut floor_us);
    let sample_median = median(&mut sample_us);
    let ratio = sample_median / floor_median;
    let last = collector.sample(Instant::now());

    println!(
        "tick benchmark on /proc ({} mode: {rounds} rounds x {ticks_per_round} ticks, {bytes} bytes read per tick)",
        if quick { "quick" } else { "full" }
    );
    println!("{:<40} {:>14} {:>12}", "", "median us/tick", "min us/tick");
    println!(
        "{:<40} {:>14.2} {:>12.2}",
        floor_name, floor_median, floor_min
    );
    println!(
        "{:<40} {:>14.2} {:>12.2}",
        "Collector::sample (read+parse+rates)", sample_median, sample_min
    );
    println!(
        "{:<40} {:>14.2} {:>12}",
        "parsers alone (no read, no rates)", parse_us, ""
    );
    println!(
        "{:<40} {:>14.2} {:>12.2}",
        "ratio (sample / floor)",
        ratio,
        sample_min / floor_min
    );
    println!(
        "target <= {TARGET_RATIO}: {}; last tick: {} metrics, {} parse errors since open",
        if ratio <= TARGET_RATIO {
            "met"
        } else {
            "NOT met"
        },
        last.iter().count(),
        collector.parse_errors_total()
    );

    if !quick {
        let ticks = std::env::var("TICK_BENCH_PACED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20u32);
        if ticks > 0 {
            match paced(
                &mut floor,
                &mut collector,
                ticks,
                Duration::from_millis(500),
            ) {
                Some((f, s)) => {
                    println!(
                        "paced, one tick per 0.5 s (cold caches), thread CPU per tick over {ticks} ticks each:"
                    );
                    println!("{:<40} {:>14.2}", floor_name, f);
                    println!("{:<40} {:>14.2}", "Collector::sample", s);
                    println!("{:<40} {:>14.2}", "ratio (sample / floor)", s / f);
                }
                None => println!("paced run skipped: no thread CPU clock"),
            }
        }
    }

    let syscalls = syscalls_per_tick();
    match syscalls {
        Some((per_tick, a, b)) => println!(
            "syscalls per collector tick (strace -c, 300 ticks {b} - 100 ticks {a}, / 200): {per_tick:.2} (whole agent target <= 24)"
        ),
        None => println!("syscalls per collector tick: skipped (strace not installed or failed)"),
    }

    if quick && ratio > QUICK_FAIL_RATIO {
        eprintln!("tick bench: ratio {ratio:.2} exceeds {QUICK_FAIL_RATIO} in quick mode");
        return ExitCode::FAILURE;
    }
    if quick
        && let Some((per_tick, _, _)) = syscalls
        && per_tick > QUICK_FAIL_SYSCALLS
    {
        eprintln!(
            "tick bench: {per_tick:.2} syscalls per collector tick exceed {QUICK_FAIL_SYSCALLS}"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
