//! A fake host for tests and benchmarks: a miniature /proc, /sys and root
//! file system in a temporary directory, with counters the test sets and
//! advances: CPU, memory, disks, interfaces, load, uptime, thermal zones,
//! the Raspberry Pi's `rpi_volt` and `get_throttled`, and mounts (whose
//! mount points are directories under `rootfs/`).
//!
//! Used by the collector's tests, by the end-to-end tests that run the real
//! agent binary with `--proc-root`/`--sys-root`, and by the tick benchmark,
//! so it depends on std and this crate only. Every setter rewrites the affected file
//! in place (truncate and write, same inode), which is what a collector
//! holding the file open needs to see the new content.
//!
//! This is test support, not agent code: its methods panic with a message
//! naming the path when the file system fails, because a test harness that
//! cannot build its fixture should stop loudly. It must never be used by the
//! agent at run time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::collector::CollectorConfig;
use crate::filesystems::FsUsage;

pub mod scratch;

/// The captured /proc and /sys of the machine `arch` (`x86_64`, `aarch64`,
/// `armv7`, `pi5`) under agent/tests/fixtures; its README.md says where
/// each capture came from.
pub fn fixture_dir(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(arch)
}

/// The text of the captured `file` (e.g. `proc/stat`) of the machine `arch`.
pub fn fixture(arch: &str, file: &str) -> String {
    let path = fixture_dir(arch).join(file);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// How a fake block device shows up in /sys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskKind {
    /// A whole disk behind a (fake) platform device: counts.
    Physical,
    /// Under `devices/virtual/block` (loop, zram, dm-…): does not count.
    Virtual,
    /// A partition of `parent`: in /proc/diskstats, not in `/sys/block`.
    Partition { parent: String },
}

/// How a fake interface shows up in /sys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterfaceKind {
    /// Behind a (fake) platform device: counts.
    Physical,
    /// Under `devices/virtual/net` (lo, bridges, veths…): does not count.
    Virtual,
}

/// The aggregate `cpu` line of /proc/stat, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FakeCpu {
    pub user_ticks: u64,
    pub nice_ticks: u64,
    pub system_ticks: u64,
    pub idle_ticks: u64,
    pub iowait_ticks: u64,
    pub irq_ticks: u64,
    pub softirq_ticks: u64,
    pub steal_ticks: u64,
    pub guest_ticks: u64,
    pub guest_nice_ticks: u64,
}

/// The /proc/meminfo keys the agent reads, in KiB as the file prints them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FakeMem {
    pub mem_total_kib: u64,
    pub mem_free_kib: u64,
    /// `None` writes no `MemAvailable` line (kernels before 3.14).
    pub mem_available_kib: Option<u64>,
    pub buffers_kib: u64,
    pub cached_kib: u64,
    /// `None` writes no `SReclaimable` line.
    pub s_reclaimable_kib: Option<u64>,
}

impl Default for FakeMem {
    /// 1 GiB of RAM, a quarter of it used.
    fn default() -> FakeMem {
        FakeMem {
            mem_total_kib: 1_048_576,
            mem_free_kib: 524_288,
            mem_available_kib: Some(786_432),
            buffers_kib: 65_536,
            cached_kib: 131_072,
            s_reclaimable_kib: Some(16_384),
        }
    }
}

#[derive(Clone, Debug)]
struct FakeDisk {
    name: String,
    major: u32,
    minor: u32,
    read_sectors: u64,
    written_sectors: u64,
}

#[derive(Clone, Debug)]
struct FakeInterface {
    name: String,
    rx_bytes: u64,
    tx_bytes: u64,
}

/// A line of the fake mount table.
#[derive(Clone, Debug)]
struct FakeMount {
    source: String,
    /// As the kernel prints it (escaped).
    mount_point: String,
    fs_type: String,
}

/// A miniature /proc + /sys tree under a unique temporary directory,
/// removed on drop.
#[derive(Debug)]
pub struct FakeHost {
    root: PathBuf,
    cpu: FakeCpu,
    mem: FakeMem,
    disks: Vec<FakeDisk>,
    interfaces: Vec<FakeInterface>,
    mounts: Vec<FakeMount>,
    thermal_zones: usize,
    hwmons: usize,
}

/// Where fake physical devices live under `sys/devices`.
const PLATFORM: &str = "devices/platform/fake.0";

fn must<T>(result: io::Result<T>, what: &str, path: &Path) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("FakeHost: cannot {what} {}: {err}", path.display()),
    }
}

impl FakeHost {
    /// An empty host: all CPU counters at 0, [`FakeMem::default`], no disk
    /// and no interface (not even `lo`).
    ///
    /// # Panics
    /// When the temporary directory cannot be created or written.
    pub fn new() -> FakeHost {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let root = std::env::temp_dir().join(format!(
            "monitor-fakehost-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut host = FakeHost {
            root,
            cpu: FakeCpu::default(),
            mem: FakeMem::default(),
            disks: Vec::new(),
            interfaces: Vec::new(),
            mounts: Vec::new(),
            thermal_zones: 0,
            hwmons: 0,
        };
        for dir in [
            "proc/net",
            "proc/self",
            "proc/1",
            "rootfs",
            "sys/block",
            "sys/class/net",
            "sys/class/block",
            "sys/devices/virtual/block",
            "sys/devices/virtual/net",
        ] {
            let path = host.root.join(dir);
            must(fs::create_dir_all(&path), "create", &path);
        }
        host.write_stat();
        host.write_meminfo();
        host.write_diskstats();
        host.write_netdev();
        host.set_loadavg("0.52 0.58 0.59 1/467 12345");
        host.set_uptime("10365.01 5974.08");
        host.write_mounts();
        host
    }

    /// The temporary directory holding `proc/` and `sys/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory to pass as the proc root.
    pub fn proc_root(&self) -> PathBuf {
        self.root.join("proc")
    }

    /// The directory to pass as the sys root.
    pub fn sys_root(&self) -> PathBuf {
        self.root.join("sys")
    }

    /// The directory to pass as the root prefix (`--rootfs`): mount points
    /// added with [`FakeHost::add_mount`] are directories under it.
    pub fn rootfs(&self) -> PathBuf {
        self.root.join("rootfs")
    }

    /// A collector configuration reading only this fake host: its proc, sys
    /// and root prefix, and [`fake_statfs`] for file system usage.
    pub fn collector_config(&self) -> CollectorConfig {
        let mut config = CollectorConfig::new(&self.proc_root(), &self.sys_root());
        config.rootfs = self.rootfs();
        config.statfs = fake_statfs;
        config
    }

    /// Writes /proc/loadavg's line (e.g. `"0.52 0.58 0.59 1/467 12345"`).
    pub fn set_loadavg(&mut self, line: &str) -> &mut FakeHost {
        self.write_raw("proc/loadavg", format!("{line}\n"));
        self
    }

    /// Writes /proc/uptime's line (e.g. `"10365.01 5974.08"`).
    pub fn set_uptime(&mut self, line: &str) -> &mut FakeHost {
        self.write_raw("proc/uptime", format!("{line}\n"));
        self
    }

    /// Adds a thermal zone of type `zone_type` at `millidegrees`; returns
    /// its index (`thermal_zoneN`).
    pub fn add_thermal_zone(&mut self, zone_type: &str, millidegrees: i64) -> usize {
        let index = self.thermal_zones;
        self.thermal_zones += 1;
        self.write_raw(
            &format!("sys/class/thermal/thermal_zone{index}/type"),
            format!("{zone_type}\n"),
        );
        self.set_thermal_temp(index, millidegrees);
        index
    }

    /// Sets zone `index`'s temperature in millidegrees Celsius.
    pub fn set_thermal_temp(&mut self, index: usize, millidegrees: i64) -> &mut FakeHost {
        self.write_raw(
            &format!("sys/class/thermal/thermal_zone{index}/temp"),
            format!("{millidegrees}\n"),
        );
        self
    }

    /// Adds an hwmon device named `name` (`rpi_volt` is the Pi's
    /// under-voltage sensor) with `in0_lcrit_alarm` = `alarm`; returns its
    /// index (`hwmonN`).
    pub fn add_hwmon(&mut self, name: &str, alarm: bool) -> usize {
        let index = self.hwmons;
        self.hwmons += 1;
        self.write_raw(
            &format!("sys/class/hwmon/hwmon{index}/name"),
            format!("{name}\n"),
        );
        self.set_hwmon_alarm(index, alarm);
        index
    }

    /// Sets hwmon `index`'s `in0_lcrit_alarm`.
    pub fn set_hwmon_alarm(&mut self, index: usize, alarm: bool) -> &mut FakeHost {
        self.write_raw(
            &format!("sys/class/hwmon/hwmon{index}/in0_lcrit_alarm"),
            if alarm { "1\n" } else { "0\n" },
        );
        self
    }

    /// Adds the Pi's firmware device with `get_throttled` = `word` (bare
    /// hex, as the kernel prints it), bound to the `raspberrypi-firmware`
    /// driver as on a Pi 4.
    pub fn add_firmware(&mut self, word: u32) -> &mut FakeHost {
        self.set_throttled(word);
        let link = self
            .sys_root()
            .join("bus/platform/drivers/raspberrypi-firmware/soc:firmware");
        self.link("../../../../devices/platform/soc/soc:firmware", &link);
        self
    }

    /// Sets the firmware's `get_throttled` word.
    pub fn set_throttled(&mut self, word: u32) -> &mut FakeHost {
        self.write_raw(
            "sys/devices/platform/soc/soc:firmware/get_throttled",
            format!("{word:x}\n"),
        );
        self
    }

    /// Mounts (in the fake table) `source` of type `fs_type` on
    /// `mount_point` (absolute, unescaped) and makes that directory under
    /// [`FakeHost::rootfs`].
    pub fn add_mount(&mut self, source: &str, mount_point: &str, fs_type: &str) -> &mut FakeHost {
        let dir = self.rootfs().join(mount_point.trim_start_matches('/'));
        must(fs::create_dir_all(&dir), "create", &dir);
        self.add_mount_entry(source, mount_point, fs_type)
    }

    /// Adds a line to the fake mount table only: no directory under the
    /// root prefix (a mount point that exists on the real host, say).
    pub fn add_mount_entry(
        &mut self,
        source: &str,
        mount_point: &str,
        fs_type: &str,
    ) -> &mut FakeHost {
        let escaped = mount_point
            .replace('\\', "\\134")
            .replace(' ', "\\040")
            .replace('\t', "\\011")
            .replace('\n', "\\012");
        self.mounts.push(FakeMount {
            source: source.to_owned(),
            mount_point: escaped,
            fs_type: fs_type.to_owned(),
        });
        self.write_mounts();
        self
    }

    /// Removes every mount on `mount_point` from the table.
    pub fn remove_mount(&mut self, mount_point: &str) -> &mut FakeHost {
        self.mounts
            .retain(|m| crate::proc::mounts::unescape(&m.mount_point) != mount_point);
        self.write_mounts();
        self
    }

    /// Sets the aggregate CPU counters and rewrites /proc/stat.
    pub fn set_cpu(&mut self, cpu: FakeCpu) -> &mut FakeHost {
        self.cpu = cpu;
        self.write_stat();
        self
    }

    /// The current aggregate CPU counters.
    pub fn cpu(&self) -> FakeCpu {
        self.cpu
    }

    /// Adds busy (user) and idle ticks to the CPU counters.
    pub fn advance_cpu(&mut self, busy_ticks: u64, idle_ticks: u64) -> &mut FakeHost {
        self.cpu.user_ticks += busy_ticks;
        self.cpu.idle_ticks += idle_ticks;
        self.write_stat();
        self
    }

    /// Sets the memory counters and rewrites /proc/meminfo.
    pub fn set_mem(&mut self, mem: FakeMem) -> &mut FakeHost {
        self.mem = mem;
        self.write_meminfo();
        self
    }

    /// Adds block device `name` (counters at 0) to /proc/diskstats and /sys.
    pub fn add_disk(&mut self, name: &str, kind: DiskKind) -> &mut FakeHost {
        let sys = self.sys_root();
        match &kind {
            DiskKind::Physical => {
                let dir = sys.join(PLATFORM).join("block").join(name);
                must(fs::create_dir_all(&dir), "create", &dir);
                self.link(
                    &format!("../{PLATFORM}/block/{name}"),
                    &sys.join("block").join(name),
                );
                self.link(
                    &format!("../../{PLATFORM}/block/{name}"),
                    &sys.join("class/block").join(name),
                );
            }
            DiskKind::Virtual => {
                let dir = sys.join("devices/virtual/block").join(name);
                must(fs::create_dir_all(&dir), "create", &dir);
                self.link(
                    &format!("../devices/virtual/block/{name}"),
                    &sys.join("block").join(name),
                );
                self.link(
                    &format!("../../devices/virtual/block/{name}"),
                    &sys.join("class/block").join(name),
                );
            }
            DiskKind::Partition { parent } => {
                let dir = sys.join(PLATFORM).join("block").join(parent).join(name);
                must(fs::create_dir_all(&dir), "create", &dir);
                let partition = dir.join("partition");
                must(fs::write(&partition, "1\n"), "write", &partition);
                self.link(
                    &format!("../../{PLATFORM}/block/{parent}/{name}"),
                    &sys.join("class/block").join(name),
                );
            }
        }
        let minor = u32::try_from(self.disks.len()).unwrap_or(u32::MAX);
        self.disks.push(FakeDisk {
            name: name.to_owned(),
            major: if kind == DiskKind::Virtual { 7 } else { 8 },
            minor,
            read_sectors: 0,
            written_sectors: 0,
        });
        self.write_diskstats();
        self
    }

    /// Removes block device `name` from /proc/diskstats and /sys.
    pub fn remove_disk(&mut self, name: &str) -> &mut FakeHost {
        self.disks.retain(|d| d.name != name);
        let sys = self.sys_root();
        for link in [
            sys.join("block").join(name),
            sys.join("class/block").join(name),
        ] {
            let _ = fs::remove_file(link);
        }
        self.write_diskstats();
        self
    }

    /// Sets the sector counters (512-byte units) of disk `name`.
    ///
    /// # Panics
    /// When no such disk was added.
    pub fn set_disk_sectors(
        &mut self,
        name: &str,
        read_sectors: u64,
        written_sectors: u64,
    ) -> &mut FakeHost {
        let Some(disk) = self.disks.iter_mut().find(|d| d.name == name) else {
            panic!("FakeHost: no disk named {name}");
        };
        disk.read_sectors = read_sectors;
        disk.written_sectors = written_sectors;
        self.write_diskstats();
        self
    }

    /// Adds interface `name` (counters at 0) to /proc/net/dev and /sys.
    pub fn add_interface(&mut self, name: &str, kind: InterfaceKind) -> &mut FakeHost {
        let sys = self.sys_root();
        let target = match kind {
            InterfaceKind::Physical => format!("{PLATFORM}/net/{name}"),
            InterfaceKind::Virtual => format!("devices/virtual/net/{name}"),
        };
        let dir = sys.join(&target);
        must(fs::create_dir_all(&dir), "create", &dir);
        self.link(
            &format!("../../{target}"),
            &sys.join("class/net").join(name),
        );
        self.interfaces.push(FakeInterface {
            name: name.to_owned(),
            rx_bytes: 0,
            tx_bytes: 0,
        });
        self.write_netdev();
        self
    }

    /// Removes interface `name` from /proc/net/dev and /sys.
    pub fn remove_interface(&mut self, name: &str) -> &mut FakeHost {
        self.interfaces.retain(|i| i.name != name);
        let sys = self.sys_root();
        let _ = fs::remove_file(sys.join("class/net").join(name));
        let _ = fs::remove_dir_all(sys.join("devices/virtual/net").join(name));
        self.write_netdev();
        self
    }

    /// Sets the byte counters of interface `name`.
    ///
    /// # Panics
    /// When no such interface was added.
    pub fn set_net_bytes(&mut self, name: &str, rx_bytes: u64, tx_bytes: u64) -> &mut FakeHost {
        let Some(interface) = self.interfaces.iter_mut().find(|i| i.name == name) else {
            panic!("FakeHost: no interface named {name}");
        };
        interface.rx_bytes = rx_bytes;
        interface.tx_bytes = tx_bytes;
        self.write_netdev();
        self
    }

    /// Writes `contents` verbatim to `relative` under the root (e.g.
    /// `proc/diskstats`), in place. A later setter that rewrites the same
    /// file replaces it.
    pub fn write_raw(&self, relative: &str, contents: impl AsRef<[u8]>) {
        let path = self.root.join(relative);
        if let Some(parent) = path.parent() {
            must(fs::create_dir_all(parent), "create", parent);
        }
        must(fs::write(&path, contents), "write", &path);
    }

    /// Removes the file `relative` under the root (e.g. `proc/net/dev`).
    pub fn remove_raw(&self, relative: &str) {
        let path = self.root.join(relative);
        must(fs::remove_file(&path), "remove", &path);
    }

    fn link(&self, target: &str, link: &Path) {
        if let Some(parent) = link.parent() {
            must(fs::create_dir_all(parent), "create", parent);
        }
        let _ = fs::remove_file(link);
        must(symlink(target, link), "symlink", link);
    }

    fn write_mounts(&self) {
        let mut text = String::new();
        for m in &self.mounts {
            let _ = writeln!(
                text,
                "{} {} {} rw,relatime 0 0",
                m.source, m.mount_point, m.fs_type
            );
        }
        self.write_raw("proc/self/mounts", &text);
        self.write_raw("proc/1/mounts", &text);
    }

    fn write_stat(&self) {
        let c = &self.cpu;
        let mut text = format!(
            "cpu  {} {} {} {} {} {} {} {} {} {}\n",
            c.user_ticks,
            c.nice_ticks,
            c.system_ticks,
            c.idle_ticks,
            c.iowait_ticks,
            c.irq_ticks,
            c.softirq_ticks,
            c.steal_ticks,
            c.guest_ticks,
            c.guest_nice_ticks
        );
        text.push_str("intr 0\nctxt 0\nbtime 0\nprocesses 1\nprocs_running 1\nprocs_blocked 0\n");
        self.write_raw("proc/stat", text);
    }

    fn write_meminfo(&self) {
        let m = &self.mem;
        let mut text = String::new();
        let mut line = |key: &str, kib: u64| {
            let _ = writeln!(text, "{:<16}{kib:>8} kB", format!("{key}:"));
        };
        line("MemTotal", m.mem_total_kib);
        line("MemFree", m.mem_free_kib);
        if let Some(available) = m.mem_available_kib {
            line("MemAvailable", available);
        }
        line("Buffers", m.buffers_kib);
        line("Cached", m.cached_kib);
        line("SwapCached", 0);
        if let Some(reclaimable) = m.s_reclaimable_kib {
            line("SReclaimable", reclaimable);
        }
        line("SwapTotal", 0);
        text.push_str("HugePages_Total:       0\n");
        self.write_raw("proc/meminfo", text);
    }

    fn write_diskstats(&self) {
        let mut text = String::new();
        for d in &self.disks {
            // The 20-field shape of Linux 5.5+.
            let _ = writeln!(
                text,
                "{:4} {:7} {} 1 0 {} 0 1 0 {} 0 0 0 0 0 0 0 0 0 0",
                d.major, d.minor, d.name, d.read_sectors, d.written_sectors
            );
        }
        self.write_raw("proc/diskstats", text);
    }

    fn write_netdev(&self) {
        let mut text = String::from(
            "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n",
        );
        for i in &self.interfaces {
            let _ = writeln!(
                text,
                "{:>6}: {} 0 0 0 0 0 0 0 {} 0 0 0 0 0 0 0",
                i.name, i.rx_bytes, i.tx_bytes
            );
        }
        self.write_raw("proc/net/dev", text);
    }
}

thread_local! {
    /// Usage [`fake_statfs`] answers with, by full path.
    static FS_USAGE: RefCell<HashMap<PathBuf, FsUsage>> = RefCell::new(HashMap::new());
    /// Every path [`fake_statfs`] and [`recording_statvfs`] were asked about.
    static STATFS_CALLS: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
}

/// Sets what [`fake_statfs`] answers for `path` (on this thread: each test
/// runs on its own).
pub fn set_fs_usage(path: &Path, usage: FsUsage) {
    FS_USAGE.with(|m| m.borrow_mut().insert(path.to_path_buf(), usage));
}

/// A stand-in for `statvfs`: records the path, fails with ENOENT where
/// nothing exists, answers what [`set_fs_usage`] set (a 1000-block, 100-inode
/// empty file system otherwise).
pub fn fake_statfs(path: &Path) -> io::Result<FsUsage> {
    STATFS_CALLS.with(|c| c.borrow_mut().push(path.to_path_buf()));
    path.symlink_metadata()?;
    Ok(FS_USAGE
        .with(|m| m.borrow().get(path).copied())
        .unwrap_or(FsUsage {
            blocks: 1000,
            blocks_free: 1000,
            blocks_available: 1000,
            files: 100,
            files_free: 100,
        }))
}

/// The real `statvfs`, recording the path first.
pub fn recording_statvfs(path: &Path) -> io::Result<FsUsage> {
    STATFS_CALLS.with(|c| c.borrow_mut().push(path.to_path_buf()));
    crate::filesystems::statvfs(path)
}

/// The paths [`fake_statfs`] and [`recording_statvfs`] were asked about on
/// this thread, oldest first (and forgets them).
pub fn take_statfs_calls() -> Vec<PathBuf> {
    STATFS_CALLS.with(|c| std::mem::take(&mut *c.borrow_mut()))
}

impl Default for FakeHost {
    fn default() -> FakeHost {
        FakeHost::new()
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}
