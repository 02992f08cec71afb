//! The collector on fake hosts (`crate::testing`) and on the captured
//! fixtures: counters advance by known amounts between ticks at injected
//! instants, and each test asserts the exact six rate and memory values
//! (the health metrics have their own tests in tests/health.rs).

use std::time::{Duration, Instant};

use super::{Collector, CollectorConfig, Readings};
use crate::metrics::AgentMetric;
use crate::testing::{DiskKind, FakeCpu, FakeHost, FakeMem, InterfaceKind, fixture_dir};

fn open(host: &FakeHost) -> Collector {
    open_with(host, None)
}

fn open_with(host: &FakeHost, interfaces: Option<Vec<String>>) -> Collector {
    let mut config = host.collector_config();
    config.interfaces = interfaces;
    match Collector::open(config) {
        Ok(c) => c,
        Err(e) => panic!("open: {e}"),
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The six metrics these tests check, in the order `readings` takes them.
const SIX: [AgentMetric; 6] = [
    AgentMetric::CpuPercent,
    AgentMetric::MemPercent,
    AgentMetric::DiskReadKbps,
    AgentMetric::DiskWriteKbps,
    AgentMetric::NetInKbps,
    AgentMetric::NetOutKbps,
];

/// Asserts the six metrics and the parse error count; floats must match to
/// 1e-9.
fn check(got: &Readings, expected: Readings) {
    for metric in SIX {
        match (got.get(metric), expected.get(metric)) {
            (Some(g), Some(e)) => assert!(
                (g - e).abs() < 1e-9,
                "{}: got {g}, expected {e}\n{got:?}",
                metric.name()
            ),
            (g, e) => assert_eq!(g, e, "{}\n{got:?}", metric.name()),
        }
    }
    assert_eq!(
        got.parse_errors, expected.parse_errors,
        "parse_errors\n{got:?}"
    );
}

fn readings(values: [Option<f64>; 6], parse_errors: u32) -> Readings {
    let mut r = Readings::default();
    for (metric, value) in SIX.into_iter().zip(values) {
        r.set(metric, value);
    }
    r.parse_errors = parse_errors;
    r
}

/// A Pi-like host: an SD card with two partitions, a USB disk, a loop and a
/// zram device, eth0 and wlan0, plus lo and docker0.
fn pi_like() -> FakeHost {
    let mut host = FakeHost::new();
    host.set_cpu(FakeCpu {
        user_ticks: 1000,
        system_ticks: 500,
        idle_ticks: 8000,
        iowait_ticks: 100,
        ..FakeCpu::default()
    });
    host.add_disk("mmcblk0", DiskKind::Physical)
        .add_disk(
            "mmcblk0p1",
            DiskKind::Partition {
                parent: "mmcblk0".into(),
            },
        )
        .add_disk(
            "mmcblk0p2",
            DiskKind::Partition {
                parent: "mmcblk0".into(),
            },
        )
        .add_disk("sda", DiskKind::Physical)
        .add_disk("loop0", DiskKind::Virtual)
        .add_disk("zram0", DiskKind::Virtual)
        .add_disk("mmcblk0boot0", DiskKind::Physical)
        .add_interface("lo", InterfaceKind::Virtual)
        .add_interface("eth0", InterfaceKind::Physical)
        .add_interface("wlan0", InterfaceKind::Physical)
        .add_interface("docker0", InterfaceKind::Virtual);
    host
}

/// Default FakeMem: 1 GiB, 786432 KiB available → 25 % used.
const MEM: Option<f64> = Some(25.0);

#[test]
fn first_tick_has_memory_but_no_rates() {
    let host = pi_like();
    let mut c = open(&host);
    check(
        c.sample(Instant::now()),
        readings([None, MEM, None, None, None, None], 0),
    );
}

#[test]
fn exact_values_after_known_advances_over_the_real_elapsed_time() {
    let mut host = pi_like();
    let mut c = open(&host);
    let t0 = Instant::now();
    c.sample(t0);

    // 1.6 s later (whatever the configured interval was):
    host.advance_cpu(30, 70); // 30 % busy
    host.set_disk_sectors("mmcblk0", 2048, 4096) // 1 MiB read, 2 MiB written
        .set_disk_sectors("mmcblk0p2", 2048, 4096) // inside mmcblk0: not again
        .set_disk_sectors("sda", 1024, 0) // 512 KiB read
        .set_disk_sectors("loop0", 999_999, 999_999)
        .set_disk_sectors("zram0", 999_999, 999_999)
        .set_disk_sectors("mmcblk0boot0", 999_999, 999_999)
        .set_net_bytes("eth0", 16_384, 8_192)
        .set_net_bytes("wlan0", 16_384, 0)
        .set_net_bytes("lo", 999_999, 999_999)
        .set_net_bytes("docker0", 999_999, 999_999);
    check(
        c.sample(t0 + secs(1.6)),
        readings(
            [
                Some(30.0),
                MEM,
                Some((1024.0 + 512.0) / 1.6),
                Some(2048.0 / 1.6),
                Some(32.0 / 1.6),
                Some(8.0 / 1.6),
            ],
            0,
        ),
    );

    // Nothing moves for 2 s: zeros, and cpu is omitted (Δtotal = 0).
    check(
        c.sample(t0 + secs(3.6)),
        readings([None, MEM, Some(0.0), Some(0.0), Some(0.0), Some(0.0)], 0),
    );
    assert_eq!(c.parse_errors_total(), 0);
}

#[test]
fn thirty_two_bit_wraps_count_and_resets_are_dropped() {
    let mut host = pi_like();
    let near = (1u64 << 32) - 1024;
    host.set_disk_sectors("mmcblk0", near, 0)
        .set_disk_sectors("sda", 5_000_000, 0)
        .set_net_bytes("eth0", near, 10_000)
        .set_net_bytes("wlan0", 50_000, 50_000);
    let mut c = open(&host);
    let t0 = Instant::now();
    c.sample(t0);

    // mmcblk0 wraps (1024 + 1024 sectors = 1 MiB); sda is reset (its reads
    // are dropped; its writes, a separate counter, still count).
    // eth0 rx wraps (1024 + 1024 bytes), tx +1024; wlan0 was re-created.
    // Both disks also write 100 sectors (50 KiB each).
    host.set_disk_sectors("mmcblk0", 1024, 100)
        .set_disk_sectors("sda", 10, 100)
        .set_net_bytes("eth0", 1024, 11_024)
        .set_net_bytes("wlan0", 100, 100);
    check(
        c.sample(t0 + secs(1.0)),
        readings(
            [None, MEM, Some(1024.0), Some(100.0), Some(2.0), Some(1.0)],
            0,
        ),
    );

    // Every device reset at once: the rates are omitted, not 0, not a spike.
    host.set_disk_sectors("mmcblk0", 0, 0)
        .set_disk_sectors("sda", 0, 0)
        .set_net_bytes("eth0", 0, 0)
        .set_net_bytes("wlan0", 0, 0);
    check(
        c.sample(t0 + secs(2.0)),
        readings([None, MEM, None, None, None, None], 0),
    );

    // And the tick after counts from the reset values.
    host.set_disk_sectors("mmcblk0", 2, 4)
        .set_net_bytes("eth0", 1024, 2048);
    check(
        c.sample(t0 + secs(3.0)),
        readings([None, MEM, Some(1.0), Some(2.0), Some(1.0), Some(2.0)], 0),
    );
}

#[test]
fn new_devices_wait_a_tick_and_vanished_ones_are_forgotten() {
    let mut host = FakeHost::new();
    host.add_disk("sda", DiskKind::Physical);
    let mut c = open(&host);
    let t0 = Instant::now();
    c.sample(t0);

    // A USB disk appears and already has counters: no contribution yet.
    host.add_disk("sdb", DiskKind::Physical)
        .set_disk_sectors("sdb", 1_000_000, 1_000_000)
        .set_disk_sectors("sda", 2, 0);
    check(
        c.sample(t0 + secs(1.0)),
        readings([None, MEM, Some(1.0), Some(0.0), Some(0.0), Some(0.0)], 0),
    );
    host.set_disk_sectors("sdb", 1_000_004, 1_000_000);
    check(
        c.sample(t0 + secs(2.0)),
        readings([None, MEM, Some(2.0), Some(0.0), Some(0.0), Some(0.0)], 0),
    );

    // sda is unplugged, then a new disk takes its name with small counters:
    // it is a new device (no rate), not a reset of the old one.
    host.remove_disk("sda");
    c.sample(t0 + secs(3.0));
    host.add_disk("sda", DiskKind::Physical)
        .set_disk_sectors("sda", 10, 10);
    check(
        c.sample(t0 + secs(4.0)),
        readings([None, MEM, Some(0.0), Some(0.0), Some(0.0), Some(0.0)], 0),
    );
    // (Had sda's old state been kept, 2 -> 10 sectors would show as 4 KiB/s.)
    host.remove_disk("sdb");
    check(
        c.sample(t0 + secs(5.0)),
        readings([None, MEM, Some(0.0), Some(0.0), Some(0.0), Some(0.0)], 0),
    );
}

#[test]
fn no_qualifying_device_means_zero_not_missing() {
    let mut host = FakeHost::new();
    host.add_disk("loop0", DiskKind::Virtual)
        .add_interface("lo", InterfaceKind::Virtual);
    let mut c = open(&host);
    let t0 = Instant::now();
    check(
        c.sample(t0),
        readings([None, MEM, Some(0.0), Some(0.0), Some(0.0), Some(0.0)], 0),
    );
    host.set_disk_sectors("loop0", 100, 100)
        .set_net_bytes("lo", 100, 100);
    check(
        c.sample(t0 + secs(1.0)),
        readings([None, MEM, Some(0.0), Some(0.0), Some(0.0), Some(0.0)], 0),
    );
}

#[test]
fn named_interfaces_are_exactly_the_ones_counted() {
    let mut host = pi_like();
    let names = vec!["docker0".to_owned(), "wlan9".to_owned()];
    let mut c = open_with(&host, Some(names));
    let t0 = Instant::now();
    c.sample(t0);
    host.set_net_bytes("eth0", 1 << 20, 1 << 20)
        .set_net_bytes("docker0", 2048, 4096);
    let r = c.sample(t0 + secs(2.0));
    assert_eq!(
        (
            r.get(AgentMetric::NetInKbps),
            r.get(AgentMetric::NetOutKbps)
        ),
        (Some(1.0), Some(2.0))
    );

    // Only names that do not exist: nothing qualifies, so 0.
    let mut c = open_with(&host, Some(vec!["wlan9".to_owned()]));
    let r = c.sample(t0);
    assert_eq!(
        (
            r.get(AgentMetric::NetInKbps),
            r.get(AgentMetric::NetOutKbps)
        ),
        (Some(0.0), Some(0.0))
    );
}

#[test]
fn a_malformed_line_is_counted_and_everything_else_still_comes_out() {
    let mut host = pi_like();
    let mut c = open(&host);
    let t0 = Instant::now();
    c.sample(t0);

    host.advance_cpu(50, 50).set_net_bytes("eth0", 4096, 0);
    host.write_raw(
        "proc/diskstats",
        " 179 0 mmcblk0 1 0 2048 0 1 0 0 0 0 0 0 0 0 0 0 0 0\n\
         8 0 sda 1 0 x1 0 1 0 0 0 0 0 0 0 0 0 0 0 0\n",
    );
    check(
        c.sample(t0 + secs(1.0)),
        readings(
            [
                Some(50.0),
                MEM,
                Some(1024.0),
                Some(0.0),
                Some(4.0),
                Some(0.0),
            ],
            1,
        ),
    );
    assert_eq!(c.parse_errors_total(), 1);

    // The broken line stays broken: counted again each tick.
    c.sample(t0 + secs(2.0));
    assert_eq!(c.parse_errors_total(), 2);
}

#[test]
fn broken_and_missing_files_omit_only_their_metrics() {
    let host = pi_like();
    host.remove_raw("proc/net/dev");
    host.write_raw("proc/meminfo", b"\xff\xfe\x00garbage\n");
    let mut c = open(&host);
    let t0 = Instant::now();
    // meminfo has no MemTotal (one error); net/dev is missing (no error).
    check(
        c.sample(t0),
        readings([None, None, None, None, None, None], 1),
    );

    // Empty stat and diskstats: the cpu line is missing (one error), and no
    // disk at all means 0.
    host.write_raw("proc/stat", "");
    host.write_raw("proc/diskstats", "");
    check(
        c.sample(t0 + secs(1.0)),
        readings([None, None, Some(0.0), Some(0.0), None, None], 2),
    );
    assert_eq!(c.parse_errors_total(), 3);

    // net/dev comes back: it is reopened, and its devices start afresh.
    let mut host = host;
    host.set_net_bytes("eth0", 0, 0).set_mem(FakeMem::default());
    let r = c.sample(t0 + secs(2.0));
    assert_eq!(
        (
            r.get(AgentMetric::NetInKbps),
            r.get(AgentMetric::MemPercent)
        ),
        (None, MEM)
    );
    host.set_net_bytes("eth0", 1024, 1024);
    let r = c.sample(t0 + secs(3.0));
    assert_eq!(
        (
            r.get(AgentMetric::NetInKbps),
            r.get(AgentMetric::NetOutKbps)
        ),
        (Some(1.0), Some(1.0))
    );
}

#[test]
fn cpu_counters_going_backwards_omit_one_tick() {
    let mut host = FakeHost::new();
    host.set_cpu(FakeCpu {
        user_ticks: 500,
        idle_ticks: 500,
        ..FakeCpu::default()
    });
    let mut c = open(&host);
    let t0 = Instant::now();
    c.sample(t0);
    host.set_cpu(FakeCpu {
        user_ticks: 10,
        idle_ticks: 10,
        ..FakeCpu::default()
    });
    assert_eq!(c.sample(t0 + secs(1.0)).get(AgentMetric::CpuPercent), None);
    host.advance_cpu(1, 3);
    assert_eq!(
        c.sample(t0 + secs(2.0)).get(AgentMetric::CpuPercent),
        Some(25.0)
    );
}

#[test]
fn open_fails_only_without_proc_stat_and_names_the_path() {
    let host = FakeHost::new();
    host.remove_raw("proc/stat");
    let err = match Collector::open(host.collector_config()) {
        Ok(_) => panic!("open succeeded without stat"),
        Err(e) => e,
    };
    let message = err.to_string();
    assert!(
        message.contains(&format!("{}", host.proc_root().join("stat").display())),
        "{message}"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn readings_iterate_in_metric_order_skipping_missing_values() {
    let r = readings([Some(1.0), None, Some(3.0), None, None, Some(6.0)], 0);
    let got: Vec<_> = r.iter().collect();
    assert_eq!(
        got,
        [
            (AgentMetric::CpuPercent, 1.0),
            (AgentMetric::DiskReadKbps, 3.0),
            (AgentMetric::NetOutKbps, 6.0)
        ]
    );
}

#[test]
fn real_x86_64_capture_through_the_collector() {
    let dir = fixture_dir("x86_64");
    let mut config = CollectorConfig::new(&dir.join("proc"), &dir.join("sys"));
    // Nothing under the fixture is a file system to measure.
    config.rootfs = dir.join("no-rootfs");
    config.statfs = crate::testing::fake_statfs;
    let mut c = match Collector::open(config) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let t0 = Instant::now();
    let mem = Some((24683656.0 - 24172528.0) / 24683656.0 * 100.0);
    check(
        c.sample(t0),
        readings([None, mem, None, None, None, None], 0),
    );
    // The same capture again: nothing moved.
    check(
        c.sample(t0 + secs(1.0)),
        readings([None, mem, Some(0.0), Some(0.0), Some(0.0), Some(0.0)], 0),
    );
}

#[test]
fn armv7_wrapped_capture_through_the_collector() {
    let dir = fixture_dir("armv7");
    let read = |name: &str| match std::fs::read(dir.join("wrap").join(name)) {
        Ok(bytes) => bytes,
        Err(e) => panic!("{name}: {e}"),
    };
    let mut host = FakeHost::new();
    host.add_disk("mmcblk0", DiskKind::Physical)
        .add_disk(
            "mmcblk0p2",
            DiskKind::Partition {
                parent: "mmcblk0".into(),
            },
        )
        .add_disk("sda", DiskKind::Physical)
        .add_interface("lo", InterfaceKind::Virtual)
        .add_interface("eth0", InterfaceKind::Physical);
    host.write_raw("proc/diskstats", read("diskstats.before"));
    host.write_raw("proc/net/dev", read("net_dev.before"));
    let mut c = open(&host);
    let t0 = Instant::now();
    c.sample(t0);
    host.write_raw("proc/diskstats", read("diskstats.after"));
    host.write_raw("proc/net/dev", read("net_dev.after"));
    // mmcblk0: 2048 sectors read = 1024 KiB; sda: 2096 sectors written =
    // 1048 KiB; eth0: 102400 bytes in = 100 KiB, 21480 bytes out.
    check(
        c.sample(t0 + secs(1.0)),
        readings(
            [
                None,
                MEM,
                Some(1024.0),
                Some(1048.0),
                Some(100.0),
                Some(21480.0 / 1024.0),
            ],
            0,
        ),
    );
}
