//! Parser tests on the captures in tests/fixtures (x86_64, aarch64, armv7;
//! see its README.md for where each came from) and on broken input: every
//! error must name the file, the 1-based line and the field, and nothing
//! may panic.

use std::path::{Path, PathBuf};

use monitor_agent::proc::diskstats::{self, DiskStat};
use monitor_agent::proc::meminfo::{self, Meminfo};
use monitor_agent::proc::netdev::{self, NetDevStat};
use monitor_agent::proc::stat::{self, CpuTimes};
use monitor_agent::proc::{ParseError, ParseErrorKind};
use monitor_agent::sysfs;

fn fixture_dir(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(arch)
}

fn fixture(arch: &str, file: &str) -> String {
    let path = fixture_dir(arch).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn kib(n: u64) -> u64 {
    n * 1024
}

// ---------------------------------------------------------------- /proc/stat

fn check_stat(input: &str, expected: Result<CpuTimes, ParseError>) {
    assert_eq!(stat::parse(input), expected, "input:\n{input}");
}

fn cpu(fields: [u64; 10]) -> CpuTimes {
    CpuTimes {
        user_ticks: fields[0],
        nice_ticks: fields[1],
        system_ticks: fields[2],
        idle_ticks: fields[3],
        iowait_ticks: Some(fields[4]),
        irq_ticks: Some(fields[5]),
        softirq_ticks: Some(fields[6]),
        steal_ticks: Some(fields[7]),
        guest_ticks: Some(fields[8]),
        guest_nice_ticks: Some(fields[9]),
    }
}

#[test]
fn stat_fixtures() {
    check_stat(
        &fixture("x86_64", "proc/stat"),
        Ok(cpu([48277, 0, 5889, 100400, 886, 0, 205, 213, 0, 0])),
    );
    check_stat(
        &fixture("aarch64", "proc/stat"),
        Ok(cpu([
            184391, 2301, 61428, 11890211, 10924, 0, 3851, 0, 0, 0,
        ])),
    );
    check_stat(
        &fixture("armv7", "proc/stat"),
        Ok(cpu([
            2254371, 1320, 611544, 90355876, 41287, 0, 12603, 0, 0, 0,
        ])),
    );
}

#[test]
fn stat_old_kernels_and_extra_fields() {
    // Linux 2.4: four fields; later fields are None.
    check_stat(
        "cpu  10 20 30 40\ncpu0 10 20 30 40\n",
        Ok(CpuTimes {
            user_ticks: 10,
            nice_ticks: 20,
            system_ticks: 30,
            idle_ticks: 40,
            ..CpuTimes::default()
        }),
    );
    // The aggregate line is `cpu` and any whitespace, a tab too.
    check_stat(
        "cpu0 9 9 9 9\ncpu\t1 2 3 4\n",
        Ok(CpuTimes {
            user_ticks: 1,
            nice_ticks: 2,
            system_ticks: 3,
            idle_ticks: 4,
            ..CpuTimes::default()
        }),
    );
    // A future eleventh field is ignored.
    check_stat(
        "cpu 1 2 3 4 5 6 7 8 9 10 11\n",
        Ok(cpu([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])),
    );
}

fn stat_error(line: Option<usize>, field: &'static str, kind: ParseErrorKind) -> ParseError {
    ParseError {
        file: "/proc/stat",
        line,
        field,
        kind,
    }
}

#[test]
fn stat_broken_inputs() {
    let not_a_number = |got: &str| ParseErrorKind::NotAnUnsignedInteger { got: got.into() };
    check_stat("", Err(stat_error(None, "cpu", ParseErrorKind::NotFound)));
    check_stat(
        "cpu0 1 2 3 4\nintr 5\n",
        Err(stat_error(None, "cpu", ParseErrorKind::NotFound)),
    );
    check_stat(
        "cpu  1 2 3\n",
        Err(stat_error(Some(1), "idle", ParseErrorKind::Missing)),
    );
    check_stat(
        "\ncpu  1 2 x3 4\n",
        Err(stat_error(Some(2), "system", not_a_number("x3"))),
    );
    check_stat(
        "cpu  1 2 3 4 -5\n",
        Err(stat_error(Some(1), "iowait", not_a_number("-5"))),
    );
    check_stat(
        "cpu  1 2 3 99999999999999999999\n",
        Err(stat_error(
            Some(1),
            "idle",
            not_a_number("99999999999999999999"),
        )),
    );
    let lossy = String::from_utf8_lossy(b"cpu  1 2 \xff\xfe 4\n");
    check_stat(
        &lossy,
        Err(stat_error(
            Some(1),
            "system",
            not_a_number("\u{fffd}\u{fffd}"),
        )),
    );
}

// ------------------------------------------------------------- /proc/meminfo

fn check_mem(input: &str, expected: Result<Meminfo, ParseError>) {
    assert_eq!(meminfo::parse(input), expected, "input:\n{input}");
}

#[test]
fn meminfo_fixtures() {
    check_mem(
        &fixture("x86_64", "proc/meminfo"),
        Ok(Meminfo {
            mem_total_bytes: kib(24683656),
            mem_free_bytes: kib(21855224),
            mem_available_bytes: Some(kib(24172528)),
            buffers_bytes: kib(16916),
            cached_bytes: kib(2462788),
            s_reclaimable_bytes: Some(kib(125008)),
            swap_total_bytes: Some(0),
            swap_free_bytes: Some(0),
        }),
    );
    check_mem(
        &fixture("aarch64", "proc/meminfo"),
        Ok(Meminfo {
            mem_total_bytes: kib(3885396),
            mem_free_bytes: kib(2612408),
            mem_available_bytes: Some(kib(3338132)),
            buffers_bytes: kib(61920),
            cached_bytes: kib(739096),
            s_reclaimable_bytes: Some(kib(53116)),
            swap_total_bytes: Some(kib(204796)),
            swap_free_bytes: Some(kib(204796)),
        }),
    );
    check_mem(
        &fixture("armv7", "proc/meminfo"),
        Ok(Meminfo {
            mem_total_bytes: kib(245724),
            mem_free_bytes: kib(146968),
            mem_available_bytes: Some(kib(160988)),
            buffers_bytes: kib(20764),
            cached_bytes: kib(38232),
            s_reclaimable_bytes: Some(kib(9084)),
            swap_total_bytes: Some(kib(102396)),
            swap_free_bytes: Some(kib(61948)),
        }),
    );
}

#[test]
fn mem_percent_on_fixtures() {
    fn check(arch: &str, expected: f64) {
        let m = meminfo::parse(&fixture(arch, "proc/meminfo")).unwrap();
        let got = m.used_percent().unwrap();
        assert!((got - expected).abs() < 1e-9, "{arch}: {got} != {expected}");
    }
    check("x86_64", (24683656.0 - 24172528.0) / 24683656.0 * 100.0);
    check("aarch64", (3885396.0 - 3338132.0) / 3885396.0 * 100.0);
    // The Pi Zero: 245724 − 160988 = 84736 KiB used, 34.48 %.
    check("armv7", (245724.0 - 160988.0) / 245724.0 * 100.0);
}

#[test]
fn meminfo_old_kernel_without_memavailable() {
    // Linux 3.2-style: no MemAvailable; SReclaimable present.
    let text = "MemTotal:        1000 kB\nMemFree:          100 kB\nBuffers:          50 kB\nCached:          300 kB\nSwapCached:        0 kB\nSReclaimable:     50 kB\n";
    let m = meminfo::parse(text).unwrap();
    assert_eq!(m.mem_available_bytes, None);
    assert_eq!(m.used_percent(), Some(50.0));
}

#[test]
fn meminfo_unused_keys_are_never_inspected() {
    let text = "MemTotal: 100 kB\nGarbage line\nHugePages_Total: x\nMemFree: 10 kB\nMemAvailable: 60 kB\nBuffers: 0 kB\nCached: 0 kB\n";
    assert_eq!(meminfo::parse(text).unwrap().used_percent(), Some(40.0));
}

#[test]
fn meminfo_scan_stops_once_every_key_is_seen() {
    let all = "MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable: 60 kB\nBuffers: 1 kB\nCached: 2 kB\nSReclaimable: 3 kB\nSwapTotal: 50 kB\nSwapFree: 40 kB\n";
    let expected = Meminfo {
        mem_total_bytes: kib(100),
        mem_free_bytes: kib(10),
        mem_available_bytes: Some(kib(60)),
        buffers_bytes: kib(1),
        cached_bytes: kib(2),
        s_reclaimable_bytes: Some(kib(3)),
        swap_total_bytes: Some(kib(50)),
        swap_free_bytes: Some(kib(40)),
    };
    check_mem(all, Ok(expected));
    // Once all eight are seen, later lines are never read: a repeated key
    // does not win and a broken one does not fail the parse.
    check_mem(&format!("{all}MemTotal: 5 kB\n"), Ok(expected));
    check_mem(&format!("{all}MemAvailable: x kB\n"), Ok(expected));
    // Before that, a repeated key is read again and the later line wins
    // (the kernel prints each key once; this pins what the scan does).
    check_mem(
        "MemTotal: 100 kB\nMemTotal: 200 kB\nMemFree: 10 kB\nMemAvailable: 60 kB\nBuffers: 1 kB\nCached: 2 kB\nSReclaimable: 3 kB\nSwapTotal: 50 kB\nSwapFree: 40 kB\nMemFree: 7 kB\n",
        Ok(Meminfo {
            mem_total_bytes: kib(200),
            ..expected
        }),
    );
}

fn mem_error(line: Option<usize>, field: &'static str, kind: ParseErrorKind) -> ParseError {
    ParseError {
        file: "/proc/meminfo",
        line,
        field,
        kind,
    }
}

#[test]
fn meminfo_broken_inputs() {
    check_mem(
        "",
        Err(mem_error(None, "MemTotal", ParseErrorKind::NotFound)),
    );
    check_mem(
        "MemTotal: 100 kB\nMemFree: 5 kB\nCached: 1 kB\n",
        Err(mem_error(None, "Buffers", ParseErrorKind::NotFound)),
    );
    check_mem(
        "MemTotal: 1O0 kB\n",
        Err(mem_error(
            Some(1),
            "MemTotal",
            ParseErrorKind::NotAnUnsignedInteger { got: "1O0".into() },
        )),
    );
    check_mem(
        "MemTotal: 100 kB\nMemFree:\n",
        Err(mem_error(Some(2), "MemFree", ParseErrorKind::Missing)),
    );
    check_mem(
        "MemTotal: 100 MB\n",
        Err(mem_error(
            Some(1),
            "MemTotal",
            ParseErrorKind::UnexpectedUnit { got: "MB".into() },
        )),
    );
    check_mem(
        "MemTotal: 18446744073709551615 kB\n",
        Err(mem_error(Some(1), "MemTotal", ParseErrorKind::Overflow)),
    );
    let lossy = String::from_utf8_lossy(b"MemTotal: 100 kB\n\xc3\x28\x00\x01\nMemFree: \xff kB\n");
    check_mem(
        &lossy,
        Err(mem_error(
            Some(3),
            "MemFree",
            ParseErrorKind::NotAnUnsignedInteger {
                got: "\u{fffd}".into(),
            },
        )),
    );
}

// ----------------------------------------------------------- /proc/diskstats

fn check_disks(input: &str, expected: &[Result<(&str, u64, u64), ParseError>]) {
    let got: Vec<_> = diskstats::parse(input)
        .map(|r| r.map(|d: DiskStat<'_>| (d.name, d.read_sectors, d.written_sectors)))
        .collect();
    assert_eq!(got, expected, "input:\n{input}");
}

#[test]
fn diskstats_fixtures() {
    let loops: Vec<Result<(&str, u64, u64), ParseError>> = (0..8)
        .map(|i| {
            Ok((
                [
                    "loop0", "loop1", "loop2", "loop3", "loop4", "loop5", "loop6", "loop7",
                ][i],
                0,
                0,
            ))
        })
        .collect();

    let mut x86 = loops.clone();
    x86.push(Ok(("vda", 5598642, 7145256)));
    x86.push(Ok(("zram0", 0, 0)));
    check_disks(&fixture("x86_64", "proc/diskstats"), &x86);

    check_disks(
        &fixture("aarch64", "proc/diskstats"),
        &[
            Ok(("ram0", 0, 0)),
            Ok(("ram1", 0, 0)),
            Ok(("loop0", 0, 0)),
            Ok(("loop1", 0, 0)),
            Ok(("mmcblk0", 2985206, 3260176)),
            Ok(("mmcblk0p1", 35128, 2)),
            Ok(("mmcblk0p2", 2946606, 3260174)),
            Ok(("mmcblk0boot0", 352, 0)),
            Ok(("mmcblk0boot1", 352, 0)),
            Ok(("zram0", 2496, 1440)),
            Ok(("sda", 88112, 20640)),
            Ok(("sda1", 80344, 20640)),
        ],
    );

    let mut armv7 = loops;
    armv7.extend([
        Ok(("mmcblk0", 6878634, 48441345)),
        Ok(("mmcblk0p1", 1760, 1)),
        Ok(("mmcblk0p2", 6874482, 48441344)),
        Ok(("sda", 37537568, 10439592)),
        Ok(("sda1", 37536344, 10439592)),
        Ok(("sdc", 6494584, 6370936)),
        Ok(("sdc1", 6493672, 6370936)),
        Ok(("sdb", 727476416, 404215912)),
        Ok(("sdb1", 727475192, 404215912)),
    ]);
    check_disks(&fixture("armv7", "proc/diskstats"), &armv7);
}

#[test]
fn diskstats_field_counts_of_every_kernel_generation() {
    check_disks(
        "   8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n\
            8 0 sdb 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15\n\
            8 0 sdc 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n\
            8 0 sdd 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21\n\
            3 1 hda1 10 20 30 40\n",
        &[
            Ok(("sda", 3, 7)),
            Ok(("sdb", 3, 7)),
            Ok(("sdc", 3, 7)),
            Ok(("sdd", 3, 7)),
            Ok(("hda1", 20, 40)),
        ],
    );
}

fn disk_error(line: usize, field: &'static str, kind: ParseErrorKind) -> ParseError {
    ParseError {
        file: "/proc/diskstats",
        line: Some(line),
        field,
        kind,
    }
}

#[test]
fn diskstats_broken_lines_do_not_hide_the_others() {
    let nan = |got: &str| ParseErrorKind::NotAnUnsignedInteger { got: got.into() };
    check_disks("", &[]);
    check_disks(
        " 8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n\
         \n\
         8 16 sdb 1 2 x1 4 5 6 7 8 9 10 11\n\
         8 32 sdc 1 2 3 4 5\n\
         8 48 sdd 1 2 3 4 5 6 -7 8 9 10 11\n\
         not a line of numbers\n\
         x 64 sde 1 2 3 4 5 6 7 8 9 10 11\n\
         8 80 sdf 1 2 3 4 5 6 7 8 9 10 11\n",
        &[
            Ok(("sda", 3, 7)),
            Err(disk_error(3, "sectors_read", nan("x1"))),
            Err(disk_error(4, "writes_merged", ParseErrorKind::Missing)),
            Err(disk_error(5, "sectors_written", nan("-7"))),
            Err(disk_error(6, "sectors_read", ParseErrorKind::Missing)),
            Err(disk_error(7, "major", nan("x"))),
            Ok(("sdf", 3, 7)),
        ],
    );
    // Truncated in the middle of the last line, as a short read would leave it.
    check_disks(
        " 8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n 8 16 sdb 1 2 3 4 5 6",
        &[
            Ok(("sda", 3, 7)),
            Err(disk_error(2, "sectors_written", ParseErrorKind::Missing)),
        ],
    );
    let lossy =
        String::from_utf8_lossy(b"\x00\xff\xfe garbage\n 8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n");
    // Two fields, so the first one missing is the name.
    check_disks(
        &lossy,
        &[
            Err(disk_error(1, "name", ParseErrorKind::Missing)),
            Ok(("sda", 3, 7)),
        ],
    );
}

#[test]
fn diskstats_error_message_is_the_documented_one() {
    let err = diskstats::parse(" 8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n 8 0 sdb 1 2 3 4 5 6 7 8 9 10 11\n 8 0 sdc 1 2 x1 4 5 6 7 8 9 10 11\n")
        .nth(2)
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "/proc/diskstats line 3: field sectors_read: expected an unsigned integer, got 'x1'"
    );
}

// ------------------------------------------------------------- /proc/net/dev

fn check_net(input: &str, expected: &[Result<(&str, u64, u64), ParseError>]) {
    let got: Vec<_> = netdev::parse(input)
        .map(|r| r.map(|n: NetDevStat<'_>| (n.name, n.rx_bytes, n.tx_bytes)))
        .collect();
    assert_eq!(got, expected, "input:\n{input}");
}

#[test]
fn netdev_fixtures() {
    check_net(
        &fixture("x86_64", "proc/net/dev"),
        &[
            Ok(("lo", 3193, 3193)),
            Ok(("ifb0", 0, 0)),
            Ok(("ifb1", 0, 0)),
            Ok(("eth0", 433239882, 555656)),
        ],
    );
    check_net(
        &fixture("aarch64", "proc/net/dev"),
        &[
            Ok(("lo", 98712, 98712)),
            Ok(("eth0", 812736211, 41293015)),
            Ok(("wlan0", 3312092, 712944)),
            Ok(("docker0", 0, 0)),
            Ok(("veth1a2b3c4", 18212, 40119)),
        ],
    );
    check_net(
        &fixture("armv7", "proc/net/dev"),
        &[
            Ok(("lo", 391828, 391828)),
            Ok(("eth0", 4294966784, 1863412264)),
            Ok(("wlan0", 0, 0)),
        ],
    );
}

const NET_HEADER: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

fn net_error(line: usize, field: &'static str, kind: ParseErrorKind) -> ParseError {
    ParseError {
        file: "/proc/net/dev",
        line: Some(line),
        field,
        kind,
    }
}

#[test]
fn netdev_old_kernel_without_space_after_the_colon() {
    check_net(
        &format!(
            "{NET_HEADER}  eth0:1234567890 1 0 0 0 0 0 0 42 1 0 0 0 0 0 0\n    lo:0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 17\n"
        ),
        &[Ok(("eth0", 1234567890, 42)), Ok(("lo", 0, 0))],
    );
}

#[test]
fn netdev_broken_lines_do_not_hide_the_others() {
    let nan = |got: &str| ParseErrorKind::NotAnUnsignedInteger { got: got.into() };
    check_net("", &[]);
    check_net(NET_HEADER, &[]);
    check_net(
        &format!(
            "{NET_HEADER}  eth0: 1 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0\n\
             wlan0 1 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0\n\
             usb0: 1 0 0\n\
             eth1: ten 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0\n\
             eth2: 1 0 0 0 0 0 0 0 2e3 0 0 0 0 0 0 0\n\
             \n\
             eth3: 5 0 0 0 0 0 0 0 6 0 0 0 0 0 0 0\n"
        ),
        &[
            Ok(("eth0", 1, 2)),
            Err(net_error(4, "interface", ParseErrorKind::Missing)),
            Err(net_error(5, "rx_drop", ParseErrorKind::Missing)),
            Err(net_error(6, "rx_bytes", nan("ten"))),
            Err(net_error(7, "tx_bytes", nan("2e3"))),
            Ok(("eth3", 5, 6)),
        ],
    );
    let lossy = String::from_utf8_lossy(b"h1\nh2\n\xff\xff: 1 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0\neth0: \xff 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0\n");
    check_net(
        &lossy,
        &[
            Ok(("\u{fffd}\u{fffd}", 1, 2)),
            Err(net_error(4, "rx_bytes", nan("\u{fffd}"))),
        ],
    );
}

// --------------------------------------------------------------------- /sys

fn check_disk_class(arch: &str, name: &str, expected: bool) {
    assert_eq!(
        sysfs::is_physical_disk(&fixture_dir(arch).join("sys"), name),
        expected,
        "{arch}: disk {name}"
    );
}

fn check_net_class(arch: &str, name: &str, expected: bool) {
    assert_eq!(
        sysfs::is_physical_interface(&fixture_dir(arch).join("sys"), name),
        expected,
        "{arch}: interface {name}"
    );
}

#[test]
fn sysfs_classification_on_fixtures() {
    check_disk_class("x86_64", "vda", true);
    check_disk_class("x86_64", "loop0", false);
    check_disk_class("x86_64", "zram0", false);
    check_disk_class("x86_64", "vda1", false);
    check_net_class("x86_64", "eth0", true);
    check_net_class("x86_64", "lo", false);
    check_net_class("x86_64", "ifb0", false);

    check_disk_class("aarch64", "mmcblk0", true);
    check_disk_class("aarch64", "mmcblk0p1", false);
    check_disk_class("aarch64", "mmcblk0p2", false);
    check_disk_class("aarch64", "mmcblk0boot0", false);
    check_disk_class("aarch64", "mmcblk0boot1", false);
    check_disk_class("aarch64", "zram0", false);
    check_disk_class("aarch64", "ram0", false);
    check_disk_class("aarch64", "loop1", false);
    check_disk_class("aarch64", "sda", true);
    check_disk_class("aarch64", "sda1", false);
    check_net_class("aarch64", "eth0", true);
    check_net_class("aarch64", "wlan0", true);
    check_net_class("aarch64", "docker0", false);
    check_net_class("aarch64", "veth1a2b3c4", false);
    check_net_class("aarch64", "lo", false);

    check_disk_class("armv7", "mmcblk0", true);
    check_disk_class("armv7", "mmcblk0p2", false);
    check_disk_class("armv7", "sdb", true);
    check_disk_class("armv7", "sdb1", false);
    check_disk_class("armv7", "loop7", false);
    check_net_class("armv7", "eth0", true);
    check_net_class("armv7", "wlan0", true);
    check_net_class("armv7", "lo", false);
}
