//! Fuzz: everything the agent reads that it did not write itself — the
//! /proc and /sys parsers, the command allowlist parser, the spool file
//! parser — and the collector, which turns whatever /proc and /sys hold,
//! tick after tick, into its metrics.
//!
//! Checks, for every input: no panic; no allocation out of proportion to
//! the input (an allocator that counts bytes wraps the system one); the
//! spool's readable prefix parses to the same batches on its own; and the
//! collector only ever produces values the server accepts (finite,
//! percentages within 0–100, rates and counts ≥ 0; a temperature may be
//! below 0) — one bad value would make the server reject the whole batch.
//!
//! Seeds are the verbatim captures in agent/tests/fixtures (x86_64,
//! aarch64 and armv7 machines), the shipped allowlist and hand-made ones
//! (every placeholder, and broken forms), and a spool written
//! by the real `Spool`. One `#[test]` only: the allocation counter is
//! process-wide.

// Test support code panics on purpose when the harness cannot proceed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::TempDir;
use common::fuzz::Fuzzer;
use monitor::batch::TickBatch;
use monitor::metric::Metric;
use monitor_agent::collector::Collector;
use monitor_agent::commands::policy::{Allowlist, Policy};
use monitor_agent::hw;
use monitor_agent::proc;
use monitor_agent::spool::{self, Spool};
use monitor_agent::testing::{DiskKind, FakeHost, InterfaceKind};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Bytes a parse may allocate per input byte, plus a constant (see
/// tests/fuzz_wire.rs for the reasoning).
const ALLOC_PER_INPUT_BYTE: usize = 128;
const ALLOC_BASE_BYTES: usize = 64 * 1024;
/// Real /proc files of a small box are a few KiB.
const MAX_INPUT_BYTES: usize = 16 * 1024;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("agent/tests/fixtures")
}

fn read_all(relative: &str) -> Vec<Vec<u8>> {
    ["x86_64", "aarch64", "armv7"]
        .iter()
        .map(|m| std::fs::read(fixtures().join(m).join("proc").join(relative)).expect("fixture"))
        .collect()
}

/// The /proc parsers take the bytes as read; the sysfs attributes, the
/// mount table and the allowlist are text.
fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// A spool file written by the real writer: the seed for `spool::parse`.
fn spool_seed(dir: &TempDir) -> Vec<u8> {
    let path = dir.join("seed.spool");
    let (mut s, _) = Spool::open(&path, 1 << 20).unwrap();
    let batches: Vec<TickBatch> = (1..=4)
        .map(|seq| TickBatch {
            boot_id: 0xfeed,
            seq,
            time_unix_ms: 1_795_608_000_000 + seq as i64 * 5000,
            values: Metric::ALL
                .iter()
                .take(seq as usize + 2)
                .map(|m| (*m, seq as f64 * 1.5))
                .collect(),
            // Every other record with a health section, so the fuzzer
            // mutates both shapes.
            health: if seq % 2 == 0 {
                vec![monitor::batch::HealthValue {
                    metric: monitor::health::HealthMetric::FsUsedPercent,
                    device: "/media/pi/USB SSD".into(),
                    value: seq as f64,
                }]
                .into_boxed_slice()
            } else {
                Box::default()
            },
        })
        .collect();
    for (i, b) in batches.iter().enumerate() {
        s.append(b, batches[..=i].iter()).unwrap();
    }
    s.sync().unwrap();
    drop(s);
    std::fs::read(&path).unwrap()
}

/// The readable prefix of a spool is a spool with the same batches.
fn spool_target(bytes: &[u8]) {
    if let Some((batches, good)) = spool::parse(bytes) {
        assert!(
            (8..=bytes.len()).contains(&good),
            "{good} of {}",
            bytes.len()
        );
        let again = spool::parse(&bytes[..good]).expect("the good prefix is a spool");
        assert_eq!(again, (batches, good));
    }
}

fn stat_target(bytes: &[u8]) {
    if let Ok(cpu) = proc::stat::parse(bytes) {
        let _ = (cpu.total_ticks(), cpu.busy_ticks());
    }
}

fn meminfo_target(bytes: &[u8]) {
    if let Ok(m) = proc::meminfo::parse(bytes)
        && let Some(p) = m.used_percent()
    {
        assert!(p.is_finite() && (0.0..=100.0).contains(&p), "{p}");
    }
}

fn small_files_target(bytes: &[u8]) {
    let t = text(bytes);
    let finite_non_negative = |v: f64| assert!(v.is_finite() && v >= 0.0, "{v}");
    if let Ok(v) = proc::loadavg::parse(bytes) {
        finite_non_negative(v);
    }
    if let Ok(v) = proc::uptime::parse(bytes) {
        finite_non_negative(v);
    }
    if let Ok(v) = hw::thermal::parse_celsius(&t) {
        assert!(v.is_finite(), "{v}");
    }
    let _ = hw::throttled::parse_alarm(&t);
    let _ = hw::throttled::parse_word(&t);
}

fn mounts_target(bytes: &[u8]) {
    let t = text(bytes);
    for entry in proc::mounts::parse(&t).flatten() {
        let unescaped = proc::mounts::unescape(entry.mount_point);
        assert!(unescaped.len() <= entry.mount_point.len());
    }
}

fn diskstats_target(bytes: &[u8]) {
    for line in proc::diskstats::parse(bytes) {
        let _ = line;
    }
}

fn netdev_target(bytes: &[u8]) {
    for line in proc::netdev::parse(bytes) {
        let _ = line;
    }
}

/// Hand-made allowlists beside the shipped one: every placeholder type and
/// count, comments, quotes, CRLF, and the broken forms (lone CR, control
/// and non-ASCII characters, bad placeholders, misplaced ones).
const ALLOWLIST_SEEDS: &[&str] = &[
    "journal = /bin/journalctl --no-pager -n <int:1-500> -u <word:*.service> # see also ...\r\n\
     logs = /usr/bin/find <path:/var/log/*> -maxdepth 1 -name <word:*.log>\n\
     uname = /bin/uname <one-of:-a|-m|-r>*\n\
     echo = /bin/echo \"a \\\"q\\\" #b\" a#b <any> <any>? ...\n",
    "# comment\n\tdf=/bin/df -h -- <path>? <path:/>*\nx = /bin/x <word:-?>\n",
    "uname = /bin/uname\rdf = /bin/df -h ...\r",
    "a = /bin/a <int:6-5> <word>? b <one-of:a||b> <path:/x/../y>\n\
     b = /bin/b \"unterminated\nc = /bin/c caf\u{e9} \u{1b} <x\n",
];

/// Parses, and when the text is an allowlist, resolves a few operator
/// argvs made from the input's own words (short, so the work stays in
/// proportion to the input) against its first entries.
fn allowlist_target(bytes: &[u8]) {
    let Ok(list) = Allowlist::parse(&text(bytes), Path::new("/etc/monitor/commands.allow")) else {
        return;
    };
    let words: Vec<String> = text(bytes)
        .split([' ', '\n'])
        .take(8)
        .map(|w| w.chars().take(32).collect())
        .collect();
    let policy = Policy::new(list, false);
    for entry in policy.allowlist().entries().take(16) {
        let _ = entry.describe();
        for n in 0..=words.len().min(4) {
            let mut argv = vec![entry.name.clone()];
            argv.extend_from_slice(&words[..n]);
            if let Ok(out) = policy.resolve(&argv) {
                assert_eq!(out[0], entry.program);
            }
        }
    }
}

/// The collector over a fake host whose files the fuzzer rewrites one per
/// tick (the first byte picks which), with a second passing between ticks.
struct CollectorRig {
    host: FakeHost,
    collector: Collector,
    now: Instant,
    values: usize,
}

const FILES: [&str; 10] = [
    "proc/stat",
    "proc/meminfo",
    "proc/diskstats",
    "proc/net/dev",
    "proc/loadavg",
    "proc/uptime",
    "proc/self/mounts",
    "sys/class/thermal/thermal_zone0/temp",
    "sys/class/hwmon/hwmon0/in0_lcrit_alarm",
    "sys/devices/platform/soc/soc:firmware/get_throttled",
];

/// The first FILES have captures from every fixture machine.
const FILES_WITH_FIXTURES: usize = 4;

impl CollectorRig {
    fn new() -> CollectorRig {
        let mut host = FakeHost::new();
        host.add_disk("sda", DiskKind::Physical)
            .add_disk("mmcblk0", DiskKind::Physical)
            .add_interface("eth0", InterfaceKind::Physical)
            .add_interface("wlan0", InterfaceKind::Physical);
        host.add_thermal_zone("cpu-thermal", 48686);
        host.add_hwmon("rpi_volt", false);
        host.add_firmware(0x50005);
        host.add_mount("/dev/mmcblk0p2", "/", "ext4").add_mount(
            "/dev/mmcblk0p1",
            "/boot/firmware",
            "vfat",
        );
        let collector = Collector::open(host.collector_config()).unwrap();
        CollectorRig {
            host,
            collector,
            now: Instant::now(),
            values: 0,
        }
    }

    /// The fake host's own files, tagged with their index, plus the
    /// fixtures of the real machines.
    fn seeds(&self) -> Vec<Vec<u8>> {
        let mut seeds = Vec::new();
        for (i, f) in FILES.iter().enumerate() {
            let mut s = vec![i as u8];
            s.extend(std::fs::read(self.host.root().join(f)).unwrap());
            seeds.push(s);
            if i >= FILES_WITH_FIXTURES {
                continue;
            }
            for fixture in read_all(f.trim_start_matches("proc/")) {
                let mut s = vec![i as u8];
                s.extend(fixture);
                seeds.push(s);
            }
        }
        seeds
    }

    fn tick(&mut self, input: &[u8]) {
        let Some((&which, contents)) = input.split_first() else {
            return;
        };
        self.host
            .write_raw(FILES[usize::from(which) % FILES.len()], contents);
        self.now += Duration::from_secs(1);
        let readings = self.collector.sample(self.now);
        let filesystems = readings
            .filesystems()
            .iter()
            .map(|(_, v)| (monitor_agent::metrics::AgentMetric::FsUsedPercent, *v));
        for (metric, value) in readings.iter().chain(filesystems) {
            let name = metric.name();
            assert!(value.is_finite(), "{name} = {value}");
            match metric.spec().unit {
                "%" => assert!((0.0..=100.0).contains(&value), "{name} = {value}"),
                "°C" => {}
                _ => assert!(value >= 0.0, "{name} = {value}"),
            }
            self.values += 1;
        }
    }
}

#[test]
fn fuzz_agent_parsers_spool_allowlist_and_collector() {
    let dir = TempDir::new("fuzz-agent");
    let mut fuzzer = Fuzzer::from_env(30_000);
    let mut allowlist_seeds = vec![
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/commands.allow"))
            .unwrap(),
    ];
    allowlist_seeds.extend(ALLOWLIST_SEEDS.iter().map(|s| s.as_bytes().to_vec()));
    type Target = (&'static str, Vec<Vec<u8>>, fn(&[u8]));
    let small_seeds: Vec<Vec<u8>> = [
        "0.52 0.58 0.59 1/467 12345\n",
        "10365.01 5974.08\n",
        "48686\n",
        "-1500\n",
        "1\n",
        "50005\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let mounts_seeds = vec![
        b"/dev/mmcblk0p2 / ext4 rw,noatime 0 0\n/dev/mmcblk0p1 /boot/firmware vfat rw 0 2\n\
          tmpfs /run tmpfs rw,nosuid 0 0\n/dev/sda1 /media/pi/My\\040Disk exfat rw 0 0\n"
            .to_vec(),
    ];
    let targets: [Target; 8] = [
        ("small_files", small_seeds, small_files_target),
        ("proc_mounts", mounts_seeds, mounts_target),
        ("proc_stat", read_all("stat"), stat_target),
        ("proc_meminfo", read_all("meminfo"), meminfo_target),
        ("proc_diskstats", read_all("diskstats"), diskstats_target),
        ("proc_net_dev", read_all("net/dev"), netdev_target),
        ("allowlist", allowlist_seeds, allowlist_target),
        ("spool", vec![spool_seed(&dir)], spool_target),
    ];
    let mut worst_ratio = 0f64;
    for (name, seeds, target) in &targets {
        fuzzer.run(name, seeds, MAX_INPUT_BYTES, |input| {
            let region = Region::new(GLOBAL);
            target(input);
            let allocated = region.change().bytes_allocated;
            let bound = ALLOC_PER_INPUT_BYTE * input.len() + ALLOC_BASE_BYTES;
            assert!(
                allocated <= bound,
                "{name}: {allocated} bytes allocated for a {}-byte input",
                input.len()
            );
            if input.len() >= 256 {
                worst_ratio = worst_ratio.max(allocated as f64 / input.len() as f64);
            }
        });
    }

    // The collector does file I/O per tick: fewer inputs.
    let mut rig = CollectorRig::new();
    let seeds = rig.seeds();
    fuzzer.iterations = (fuzzer.iterations / 10).max(100);
    let ran = fuzzer.run("collector", &seeds, MAX_INPUT_BYTES, |input| {
        rig.tick(input)
    });
    // Values came out: the rig really ran the collector's arithmetic.
    assert!(rig.values > ran, "{} values from {ran} ticks", rig.values);
    println!(
        "fuzz agent inputs: worst allocation {worst_ratio:.1} bytes per input byte for inputs \
         of 256 bytes or more; collector produced {} values in {ran} ticks, all in range",
        rig.values
    );
}
