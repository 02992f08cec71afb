//! What one collector tick costs, against the cheapest possible tick.
//!
//! The "floor" re-reads the same four /proc files the collector reads, with
//! kept-open descriptors and `pread` at offset 0 into reused buffers, and
//! does nothing with the bytes: it is what the kernel charges for producing
//! the text, which no collector can avoid. `Collector::sample` adds parsing,
//! rates and bookkeeping on top; the ratio of the two is the collector's
//! overhead. Both run in the same process, interleaved in rounds so that
//! drift of the machine affects both alike, and each is summarised by the
//! median of its rounds.
//!
//! A hot loop flatters both: the agent ticks once a second, when the
//! caches are cold. The full version therefore also runs both paced, one
//! tick every 0.5 s, interleaved, and reports the thread's CPU time per
//! tick (`CLOCK_THREAD_CPUTIME_ID`): what a tick really costs in
//! service, next to what merely reading the files costs then.
//!
//! `cargo bench -p monitor-agent --bench tick` runs the full version;
//! `--quick` (or `TICK_BENCH_QUICK=1`) runs a short one for CI and exits
//! non-zero if the ratio exceeds 3.0. Reads the real /proc and /sys of this
//! machine; sends nothing anywhere.

use std::fs::File;
use std::hint::black_box;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use monitor_agent::collector::{Collector, CollectorConfig};

/// The ratio the collector aims for.
const TARGET_RATIO: f64 = 1.5;
/// The ratio above which quick mode fails.
const QUICK_FAIL_RATIO: f64 = 3.0;

const FILES: [&str; 4] = ["stat", "meminfo", "diskstats", "net/dev"];

/// The floor: kept-open files re-read from offset 0 until EOF.
struct Floor {
    files: Vec<(File, Vec<u8>, usize)>,
}

impl Floor {
    fn open(proc_root: &Path) -> io::Result<Floor> {
        let mut files = Vec::new();
        for name in FILES {
            files.push((File::open(proc_root.join(name))?, vec![0u8; 4096], 0));
        }
        Ok(Floor { files })
    }

    fn tick(&mut self) -> io::Result<usize> {
        let mut total = 0;
        for (file, buf, len) in &mut self.files {
            let mut filled = 0;
            loop {
                if filled == buf.len() {
                    buf.resize(buf.len() * 2, 0);
                }
                let n = file.read_at(&mut buf[filled..], filled as u64)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            *len = filled;
            total += filled;
        }
        Ok(total)
    }

    /// The text of file `index` as last read.
    fn text(&self, index: usize) -> &str {
        let (_, buf, len) = &self.files[index];
        std::str::from_utf8(&buf[..*len]).unwrap_or("")
    }
}

/// Runs the four parsers once over the floor's last read; returns a value
/// that depends on everything parsed so nothing is optimised away.
fn parse_only(floor: &Floor) -> u64 {
    use monitor_agent::proc::{diskstats, meminfo, netdev, stat};
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
    sum
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

fn main() -> ExitCode {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var("TICK_BENCH_QUICK").is_ok_and(|v| v == "1");
    let (rounds, ticks_per_round) = if quick { (5u32, 400u32) } else { (15, 2000) };
    let proc_root = Path::new("/proc");
    let sys_root = Path::new("/sys");

    let mut floor = match Floor::open(proc_root) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tick bench: cannot open the floor's files under /proc: {e}");
            return ExitCode::from(2);
        }
    };
    let mut collector = match Collector::open(CollectorConfig::new(proc_root, sys_root)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tick bench: cannot open the collector: {e}");
            return ExitCode::from(2);
        }
    };

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
    println!("{:<34} {:>14} {:>12}", "", "median us/tick", "min us/tick");
    println!(
        "{:<34} {:>14.2} {:>12.2}",
        "floor (4 kept-open preads)", floor_median, floor_min
    );
    println!(
        "{:<34} {:>14.2} {:>12.2}",
        "Collector::sample (read+parse+rates)", sample_median, sample_min
    );
    println!(
        "{:<34} {:>14.2} {:>12}",
        "parsers alone (no read, no rates)", parse_us, ""
    );
    println!(
        "{:<34} {:>14.2} {:>12.2}",
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
                    println!("{:<34} {:>14.2}", "floor (4 kept-open preads)", f);
                    println!("{:<34} {:>14.2}", "Collector::sample", s);
                    println!("{:<34} {:>14.2}", "ratio (sample / floor)", s / f);
                }
                None => println!("paced run skipped: no thread CPU clock"),
            }
        }
    }

    if quick && ratio > QUICK_FAIL_RATIO {
        eprintln!("tick bench: ratio {ratio:.2} exceeds {QUICK_FAIL_RATIO} in quick mode");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
