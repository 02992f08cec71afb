//! The health metrics of issue 14 — load, uptime, swap, temperature, the
//! Raspberry Pi's under-voltage and throttling flags, file system usage —
//! on the captures in tests/fixtures (x86_64, a Pi 4 on aarch64, a Pi 5, a
//! 32-bit Pi; see its README.md for where each came from), on broken input,
//! and through the collector on fake hosts whose values the tests move.

use std::path::{Path, PathBuf};
use std::time::Instant;

use monitor_agent::collector::{Collector, Readings};
use monitor_agent::filesystems::{Filesystems, FsChoice, FsReading, FsUsage};
use monitor_agent::hw::{thermal, throttled};
use monitor_agent::metrics::AgentMetric;
use monitor_agent::proc::mounts::{self, MountEntry};
use monitor_agent::proc::{ParseError, ParseErrorKind, loadavg, uptime};
use monitor_agent::testing::{self, FakeHost, FakeMem};
use monitor_agent::thermal::{Thermal, ZoneChoice};
use monitor_agent::throttling::Throttling;

fn fixture_dir(machine: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(machine)
}

fn fixture(machine: &str, file: &str) -> String {
    let path = fixture_dir(machine).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Asserts a parse result, and for an error that its message names the
/// file and the field.
fn check<T: PartialEq + std::fmt::Debug>(
    input: &str,
    got: Result<T, ParseError>,
    expected: Result<T, (&str, &str)>,
) {
    match (got, expected) {
        (Ok(g), Ok(e)) => assert_eq!(g, e, "input {input:?}"),
        (Err(err), Err((file, field))) => {
            assert_eq!(
                (err.file, err.field),
                (file, field),
                "input {input:?}: {err}"
            );
            let message = err.to_string();
            assert!(
                message.contains(file) && message.contains(field),
                "{message}"
            );
        }
        (g, e) => panic!("input {input:?}: got {g:?}, expected {e:?}"),
    }
}

// ------------------------------------------------------------ loadavg, uptime

#[test]
fn loadavg_on_captures_and_broken_input() {
    let c = |input: &str, expected| check(input, loadavg::parse(input.as_bytes()), expected);
    let f = "/proc/loadavg";
    c(&fixture("x86_64", "proc/loadavg"), Ok(14.89));
    c(&fixture("aarch64", "proc/loadavg"), Ok(0.41));
    c(&fixture("armv7", "proc/loadavg"), Ok(2.17));
    c(&fixture("pi5", "proc/loadavg"), Ok(1.02));
    c("", Err((f, "load1")));
    c("0.52\n", Err((f, "load5")));
    c("0.52 0.58 0.59\n", Err((f, "running/total")));
    c("0.52 0.58 0.59 467 1\n", Err((f, "running/total")));
    c("-0.52 0.58 0.59 1/467 1\n", Err((f, "load1")));
    c("nan 0.58 0.59 1/467 1\n", Err((f, "load1")));
    c("0.52 x 0.59 1/467 1\n", Err((f, "load5")));
    c("\u{fffd}.52 0.58 0.59 1/467 1\n", Err((f, "load1")));
}

#[test]
fn uptime_on_captures_and_broken_input() {
    let c = |input: &str, expected| check(input, uptime::parse(input.as_bytes()), expected);
    let f = "/proc/uptime";
    c(&fixture("x86_64", "proc/uptime"), Ok(11468.24));
    c(&fixture("aarch64", "proc/uptime"), Ok(864213.57));
    c(&fixture("armv7", "proc/uptime"), Ok(459602.38));
    c("", Err((f, "uptime")));
    c("10365.01\n", Err((f, "idle")));
    c("1e5 2\n", Err((f, "uptime")));
    c("10365.01 x\n", Err((f, "idle")));
}

// ---------------------------------------------------------- sysfs attributes

#[test]
fn thermal_temp_on_captures_and_broken_input() {
    let c = |input: &str, expected| check(input, thermal::parse_celsius(input), expected);
    let zone = "sys/class/thermal/thermal_zone0/temp";
    c(&fixture("aarch64", zone), Ok(62.322));
    c(&fixture("pi5", zone), Ok(46.3));
    c(&fixture("armv7", zone), Ok(29.0));
    c("-1500\n", Ok(-1.5));
    c("0\n", Ok(0.0));
    let f = "/sys/class/thermal/thermal_zone*/temp";
    for broken in [
        "",
        "\n",
        "48.6\n",
        "+48686\n",
        "--1\n",
        "48686 \n",
        "9223372036854775808\n",
    ] {
        c(broken, Err((f, "temp")));
    }
}

#[test]
fn under_voltage_alarm_on_captures_and_broken_input() {
    let c = |input: &str, expected| check(input, throttled::parse_alarm(input), expected);
    c(
        &fixture("aarch64", "sys/class/hwmon/hwmon1/in0_lcrit_alarm"),
        Ok(false),
    );
    c(
        &fixture("pi5", "sys/class/hwmon/hwmon4/in0_lcrit_alarm"),
        Ok(false),
    );
    c("1\n", Ok(true));
    let f = "/sys/class/hwmon/hwmon*/in0_lcrit_alarm";
    for broken in ["", "2\n", "01\n", "true\n", "1\n1\n"] {
        c(broken, Err((f, "in0_lcrit_alarm")));
    }
}

#[test]
fn throttled_word_on_captures_and_broken_input() {
    let c = |input: &str, expected| check(input, throttled::parse_word(input), expected);
    let attr = "sys/devices/platform/soc/soc:firmware/get_throttled";
    c(&fixture("aarch64", attr), Ok(0x50005));
    c(&fixture("armv7", attr), Ok(0x80008));
    c("0\n", Ok(0));
    c("0x50005\n", Ok(0x50005));
    c("ffffffff\n", Ok(u32::MAX));
    let f = "/sys/devices/platform/soc/soc:firmware/get_throttled";
    for broken in [
        "",
        "\n",
        "0x\n",
        "100000000\n",
        "5000g\n",
        "-1\n",
        "50005 \n",
    ] {
        c(broken, Err((f, "get_throttled")));
    }
}

// ------------------------------------------------------------------- mounts

fn entries(text: &str) -> Vec<Result<MountEntry<'_>, ParseError>> {
    mounts::parse(text).collect()
}

#[test]
fn mounts_on_captures() {
    let text = fixture("x86_64", "proc/self/mounts");
    let parsed = entries(&text);
    assert_eq!(parsed.len(), 20);
    assert!(parsed.iter().all(Result::is_ok));
    assert_eq!(
        parsed[5],
        Ok(MountEntry {
            source: "/dev/vda",
            mount_point: "/",
            fs_type: "ext4"
        })
    );
    let text = fixture("aarch64", "proc/self/mounts");
    let usb = entries(&text)
        .into_iter()
        .flatten()
        .find(|e| e.source == "/dev/sda1")
        .expect("the USB SSD line");
    assert_eq!(mounts::unescape(usb.mount_point), "/media/pi/USB SSD");
}

#[test]
fn broken_mount_lines_name_line_and_field_and_the_rest_still_parses() {
    let text = "/dev/sda1 /ok ext4 rw 0 0\n\
                /dev/sdb1\n\
                /dev/sdc1 /x\n\
                /dev/sdd1 /y ext4\n\
                /dev/sde1 relative ext4 rw 0 0\n\
                \n\
                /dev/sdf1 /fine vfat rw 0 0\n";
    let parsed = entries(text);
    let f = "/proc/self/mounts";
    let errors: Vec<_> = parsed
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| (e.file, e.line, e.field))
        .collect();
    assert_eq!(
        errors,
        [
            (f, Some(2), "mount_point"),
            (f, Some(3), "fs_type"),
            (f, Some(4), "options"),
            (f, Some(5), "mount_point"),
        ]
    );
    let good: Vec<_> = parsed
        .into_iter()
        .flatten()
        .map(|e| e.mount_point)
        .collect();
    assert_eq!(good, ["/ok", "/fine"]);
    let relative = mounts::parse("a relative ext4 rw 0 0\n").next();
    let Some(Err(err)) = relative else {
        panic!("expected an error")
    };
    assert!(
        matches!(err.kind, ParseErrorKind::Malformed { .. }),
        "{err}"
    );
}

// ------------------------------------------- the collectors on the captures

/// Thermal, throttling and file systems opened on a fixture directory,
/// with `fake_statfs` (every mount point measures as an empty file system).
fn health_of(machine: &str) -> (Option<f64>, Option<f64>, Option<f64>, Vec<String>, u32) {
    let dir = fixture_dir(machine);
    let mut errors = 0;
    let temp = Thermal::open(&dir.join("sys"), &ZoneChoice::Hottest).sample(&mut errors);
    let throttling = Throttling::open(&dir.join("sys")).sample(&mut errors);
    let mut fs = Filesystems::open(
        &dir.join("proc"),
        &dir.join("rootfs"),
        FsChoice::Real,
        testing::fake_statfs,
    );
    let mut reading = FsReading::default();
    fs.sample(&mut reading, &mut errors);
    let points = reading
        .used_percent
        .iter()
        .map(|(p, _)| p.to_string())
        .collect();
    (
        temp,
        throttling.under_voltage,
        throttling.throttled_flags,
        points,
        errors,
    )
}

#[test]
fn this_box_has_no_temperature_no_pi_flags_and_one_real_file_system() {
    // /dev/vda is mounted on / and again on /run/netns: counted once.
    assert_eq!(health_of("x86_64"), (None, None, None, vec!["/".into()], 0));
}

#[test]
fn pi4_capture() {
    assert_eq!(
        health_of("aarch64"),
        (
            Some(62.322),
            Some(0.0),
            Some(f64::from(0x50005u32)),
            vec!["/".into(), "/boot".into(), "/media/pi/USB SSD".into()],
            0
        )
    );
}

#[test]
fn pi5_capture() {
    assert_eq!(
        health_of("pi5"),
        (
            Some(46.3),
            Some(0.0),
            Some(0.0),
            vec!["/".into(), "/boot/firmware".into()],
            0
        )
    );
}

#[test]
fn pi_zero_capture_leaves_the_nfs_mount_alone() {
    assert_eq!(
        health_of("armv7"),
        (
            Some(29.0),
            Some(0.0),
            Some(f64::from(0x80008u32)),
            vec!["/".into(), "/boot".into(), "/mnt/usb".into()],
            0
        )
    );
}

// ------------------------------------------------- the collector, fake hosts

fn open(host: &FakeHost) -> Collector {
    match Collector::open(host.collector_config()) {
        Ok(c) => c,
        Err(e) => panic!("open: {e}"),
    }
}

fn value(r: &Readings, metric: AgentMetric) -> Option<f64> {
    r.get(metric)
}

#[test]
fn load_uptime_and_swap_come_from_proc() {
    let mut host = FakeHost::new();
    let mut c = open(&host);
    let r = c.sample(Instant::now());
    assert_eq!(value(r, AgentMetric::Load1), Some(0.52));
    assert_eq!(value(r, AgentMetric::UptimeSeconds), Some(10365.01));
    // FakeMem has SwapTotal 0: no swap, so no value (never 0 %).
    assert_eq!(value(r, AgentMetric::SwapPercent), None);
    host.write_raw(
        "proc/meminfo",
        "MemTotal: 1000 kB\nMemFree: 500 kB\nMemAvailable: 750 kB\nBuffers: 1 kB\n\
         Cached: 1 kB\nSwapTotal: 400 kB\nSwapFree: 100 kB\n",
    );
    host.set_loadavg("3.10 2.00 1.00 4/100 99")
        .set_uptime("12.50 3.00");
    let r = c.sample(Instant::now());
    assert_eq!(value(r, AgentMetric::SwapPercent), Some(75.0));
    assert_eq!(value(r, AgentMetric::MemPercent), Some(25.0));
    assert_eq!(value(r, AgentMetric::Load1), Some(3.1));
    assert_eq!(value(r, AgentMetric::UptimeSeconds), Some(12.5));
    // A broken loadavg: counted, only load1 missing.
    host.set_loadavg("garbage").set_mem(FakeMem::default());
    let r = c.sample(Instant::now());
    assert_eq!(value(r, AgentMetric::Load1), None);
    assert_eq!(value(r, AgentMetric::UptimeSeconds), Some(12.5));
    assert_eq!(r.parse_errors, 1);
}

#[test]
fn no_zone_no_temperature_hottest_zone_or_the_named_one() {
    let mut host = FakeHost::new();
    assert_eq!(
        open(&host)
            .sample(Instant::now())
            .get(AgentMetric::TempCelsius),
        None
    );
    let cpu = host.add_thermal_zone("cpu-thermal", 48_686);
    let wifi = host.add_thermal_zone("iwlwifi_1", 51_000);
    let mut c = open(&host);
    assert_eq!(
        c.sample(Instant::now()).get(AgentMetric::TempCelsius),
        Some(51.0)
    );
    // A zone that cannot be read this tick is left out of the maximum.
    host.write_raw(&format!("sys/class/thermal/thermal_zone{wifi}/temp"), "x\n");
    let r = c.sample(Instant::now());
    assert_eq!(
        (r.get(AgentMetric::TempCelsius), r.parse_errors),
        (Some(48.686), 1)
    );
    host.set_thermal_temp(cpu, -3_500)
        .set_thermal_temp(wifi, -4_000);
    assert_eq!(
        c.sample(Instant::now()).get(AgentMetric::TempCelsius),
        Some(-3.5)
    );

    for name in ["cpu-thermal", "thermal_zone0"] {
        let mut config = host.collector_config();
        config.thermal_zone = ZoneChoice::Named(name.into());
        let mut c = Collector::open(config).expect("open");
        host.set_thermal_temp(cpu, 40_000)
            .set_thermal_temp(wifi, 90_000);
        assert_eq!(
            c.sample(Instant::now()).get(AgentMetric::TempCelsius),
            Some(40.0),
            "{name}"
        );
    }
    let mut config = host.collector_config();
    config.thermal_zone = ZoneChoice::Named("gpu-thermal".into());
    let mut c = Collector::open(config).expect("open");
    assert_eq!(c.sample(Instant::now()).get(AgentMetric::TempCelsius), None);
}

#[test]
fn pi_flags_now_and_since_the_agent_started() {
    let mut host = FakeHost::new();
    let r = open(&host).sample(Instant::now()).clone();
    assert_eq!(
        (
            r.get(AgentMetric::UnderVoltage),
            r.get(AgentMetric::ThrottledFlags)
        ),
        (None, None),
        "not a Pi"
    );
    host.add_hwmon("cpu_thermal", false);
    let volt = host.add_hwmon("rpi_volt", false);
    host.add_firmware(0);
    let mut c = open(&host);
    let flags = |c: &mut Collector| {
        let r = c.sample(Instant::now());
        (
            r.get(AgentMetric::UnderVoltage),
            r.get(AgentMetric::ThrottledFlags),
        )
    };
    assert_eq!(flags(&mut c), (Some(0.0), Some(0.0)));
    // Under-voltage and throttled now.
    host.set_hwmon_alarm(volt, true).set_throttled(0x5);
    assert_eq!(flags(&mut c), (Some(1.0), Some(f64::from(0x50005u32))));
    // Gone, and rpi_volt cleared the firmware's sticky bits: the agent
    // still says it occurred.
    host.set_hwmon_alarm(volt, false).set_throttled(0);
    assert_eq!(flags(&mut c), (Some(0.0), Some(f64::from(0x50000u32))));
    // A soft temperature limit seen by the firmware between two ticks.
    host.set_throttled(0x80000);
    assert_eq!(flags(&mut c), (Some(0.0), Some(f64::from(0xd0000u32))));
}

#[test]
fn file_systems_real_ones_measured_like_df_and_changes_picked_up() {
    let mut host = FakeHost::new();
    host.add_mount("/dev/mmcblk0p2", "/", "ext4")
        .add_mount("/dev/mmcblk0p1", "/boot/firmware", "vfat")
        .add_mount("tmpfs", "/run", "tmpfs")
        .add_mount("overlay", "/var/lib/docker/overlay2/x/merged", "overlay")
        .add_mount("nas:/srv", "/mnt/nas", "nfs4")
        .add_mount("sshfs#me@h:", "/mnt/ssh", "fuse.sshfs")
        .add_mount("/dev/mmcblk0p2", "/srv/bind", "ext4");
    let root = host.rootfs();
    testing::set_fs_usage(
        &root,
        FsUsage {
            blocks: 1000,
            blocks_free: 400,
            blocks_available: 350,
            files: 200,
            files_free: 150,
        },
    );
    testing::set_fs_usage(
        &root.join("boot/firmware"),
        FsUsage {
            blocks: 100,
            blocks_free: 75,
            blocks_available: 75,
            files: 0,
            files_free: 0,
        },
    );
    let mut c = open(&host);
    let r = c.sample(Instant::now());
    let fs: Vec<_> = r
        .filesystems()
        .iter()
        .map(|(p, v)| (p.to_string(), *v))
        .collect();
    assert_eq!(
        fs,
        [
            ("/".to_owned(), 600.0 * 100.0 / 950.0),
            ("/boot/firmware".to_owned(), 25.0)
        ]
    );
    assert_eq!(r.get(AgentMetric::RootInodesUsedPercent), Some(25.0));
    let mut calls = testing::take_statfs_calls();
    calls.sort();
    assert_eq!(calls, [root.join(""), root.join("boot/firmware")]);

    // A USB stick arrives, the boot partition goes: the next tick knows.
    host.add_mount("/dev/sda1", "/media/pi/My Stick", "exfat")
        .remove_mount("/boot/firmware");
    let r = c.sample(Instant::now());
    let points: Vec<_> = r.filesystems().iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(points, ["/", "/media/pi/My Stick"]);

    // Named: exactly those, whatever their type; the root's inodes still
    // come from the root prefix.
    let mut config = host.collector_config();
    config.filesystems = FsChoice::Named(vec!["/run".into(), "/nowhere".into()]);
    let mut c = Collector::open(config).expect("open");
    let r = c.sample(Instant::now());
    let points: Vec<_> = r.filesystems().iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(points, ["/run"]);
    assert_eq!(r.get(AgentMetric::RootInodesUsedPercent), Some(25.0));
}

/// Issue 14: under a fake root the agent never statvfs()es the real file
/// systems. The real `statvfs` runs here, recording every path it is asked
/// about.
#[test]
fn under_a_fake_root_only_paths_under_it_are_ever_measured() {
    let mut host = FakeHost::new();
    host.add_mount("/dev/fake1", "/", "ext4")
        .add_mount("/dev/fake2", "/only-under-the-fake-root", "ext4")
        // Exist on the real host, not under the fake root: skipped.
        .add_mount_entry("/dev/vda", "/usr", "ext4")
        .add_mount_entry("/dev/vda", "/etc", "ext4")
        .add_mount_entry("/dev/vdb", "/../../etc", "ext4");
    // A mount point under the fake root that leads out of it: skipped too.
    std::os::unix::fs::symlink("/usr", host.rootfs().join("escape")).expect("symlink");
    host.add_mount_entry("/dev/vdc", "/escape", "ext4");
    assert!(
        Path::new("/usr").is_dir(),
        "the real /usr is what must not be measured"
    );

    let mut config = host.collector_config();
    config.statfs = testing::recording_statvfs;
    let mut c = Collector::open(config).expect("open");
    testing::take_statfs_calls();
    let r = c.sample(Instant::now());
    let points: Vec<_> = r.filesystems().iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(points, ["/", "/only-under-the-fake-root"]);
    assert!(r.get(AgentMetric::RootInodesUsedPercent).is_some());
    let calls = testing::take_statfs_calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    for path in &calls {
        assert!(
            path.starts_with(host.rootfs()),
            "statvfs on {}",
            path.display()
        );
    }
}

#[test]
fn the_real_mount_table_is_not_reread_while_it_does_not_change() {
    // On procfs the collector waits for POLLPRI: two ticks with no mount
    // change keep the same selection and read no table (the recording
    // shows one statvfs per file system per tick, nothing else).
    let mut fs = Filesystems::open(
        Path::new("/proc"),
        Path::new("/"),
        FsChoice::Real,
        testing::recording_statvfs,
    );
    let mut reading = FsReading::default();
    let mut errors = 0;
    fs.sample(&mut reading, &mut errors);
    let first: Vec<String> = fs.mount_points().map(str::to_owned).collect();
    testing::take_statfs_calls();
    fs.sample(&mut reading, &mut errors);
    let second: Vec<String> = fs.mount_points().map(str::to_owned).collect();
    assert_eq!(first, second);
    assert!(!first.is_empty(), "this box has a real root file system");
    assert_eq!(
        testing::take_statfs_calls().len(),
        first.len() + usize::from(!first.iter().any(|p| p == "/"))
    );
    assert_eq!(errors, 0);
}

// ------------------------------------------------------------- to the wire

#[test]
fn a_pi4_tick_goes_on_the_wire_with_its_mount_points_and_comes_back_valid() {
    use monitor::batch::TickBatch;
    use monitor::health::HealthMetric as H;
    use monitor::wire::{AgentCounters, AgentIdentity, batch_to_pb, validate_batch};

    let dir = fixture_dir("aarch64");
    let mut config =
        monitor_agent::collector::CollectorConfig::new(&dir.join("proc"), &dir.join("sys"));
    config.rootfs = dir.join("rootfs");
    config.statfs = testing::fake_statfs;
    let mut collector = Collector::open(config).expect("open");
    let readings = collector.sample(Instant::now());
    let now = 1_795_608_000_000;
    let batch = TickBatch {
        boot_id: 1,
        seq: 1,
        time_unix_ms: now,
        values: readings.wire_values(),
        health: readings.health_values(),
    };
    let id = AgentIdentity {
        agent_id: "pi4".into(),
        hostname: "pi4".into(),
        agent_version: "test".into(),
        boot_id: 1,
    };
    let pb = batch_to_pb(&id, &batch, now, AgentCounters::default());
    // The six travel as before; nothing of the health metrics among them.
    assert!(pb.samples.iter().all(|s| s.device.is_empty()));
    let valid = validate_batch(pb, now, 30_000).expect("valid");
    let got: Vec<(H, String, f64)> = valid
        .health
        .iter()
        .map(|h| (h.metric, h.device.clone(), h.value))
        .collect();
    // The fixture's values: 62.322 °C, no under-voltage, the firmware's
    // 0x50005, and its three real file systems (empty under fake_statfs);
    // load, uptime, swap and the root's inodes from its /proc and statvfs.
    let find = |m: H, device: &str| {
        got.iter()
            .find(|(gm, gd, _)| *gm == m && gd == device)
            .map(|(_, _, v)| *v)
    };
    assert_eq!(find(H::TempCelsius, ""), Some(62.322));
    assert_eq!(find(H::UnderVoltage, ""), Some(0.0));
    assert_eq!(find(H::ThrottledFlags, ""), Some(f64::from(0x50005u32)));
    assert!(find(H::Load1, "").is_some());
    assert!(find(H::UptimeSeconds, "").is_some());
    assert_eq!(find(H::RootInodesUsedPercent, ""), Some(0.0));
    for mount_point in ["/", "/boot", "/media/pi/USB SSD"] {
        assert_eq!(
            find(H::FsUsedPercent, mount_point),
            Some(0.0),
            "{mount_point}"
        );
    }
    assert_eq!(valid.health_skipped, 0);
    assert!(valid.health.iter().all(|h| h.time_unix_ms == now));
}
