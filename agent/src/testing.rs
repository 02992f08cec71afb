//! A fake host for tests and benchmarks: a miniature /proc and /sys in a
//! temporary directory, with counters the test sets and advances.
//!
//! Used by the collector's tests, by the end-to-end tests that run the real
//! agent binary with `--proc-root`/`--sys-root`, and by the tick benchmark,
//! so it depends on std only. Every setter rewrites the affected /proc file
//! in place (truncate and write, same inode), which is what a collector
//! holding the file open needs to see the new content.
//!
//! This is test support, not agent code: its methods panic with a message
//! naming the path when the file system fails, because a test harness that
//! cannot build its fixture should stop loudly. It must never be used by the
//! agent at run time.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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

/// A miniature /proc + /sys tree under a unique temporary directory,
/// removed on drop.
#[derive(Debug)]
pub struct FakeHost {
    root: PathBuf,
    cpu: FakeCpu,
    mem: FakeMem,
    disks: Vec<FakeDisk>,
    interfaces: Vec<FakeInterface>,
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
        let host = FakeHost {
            root,
            cpu: FakeCpu::default(),
            mem: FakeMem::default(),
            disks: Vec::new(),
            interfaces: Vec::new(),
        };
        for dir in [
            "proc/net",
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
