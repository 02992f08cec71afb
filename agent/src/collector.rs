//! The per-tick reader: reads /proc/stat, /proc/meminfo, /proc/diskstats,
//! /proc/net/dev, /proc/loadavg and /proc/uptime under an injectable root,
//! the thermal zones and the Raspberry Pi's throttling state under /sys,
//! and the usage of the mounted file systems; parses them and turns the
//! counters into the metrics of [`crate::metrics`].
//!
//! The tick is cheap by construction: the files stay open and are re-read
//! with `pread` at offset 0 into buffers kept between ticks (one `pread`
//! for files the kernel produces whole), the parsers scan bytes without
//! allocating or checking UTF-8, per-device state is found in file order
//! (no hashing), /sys is consulted
//! once per device name, the first time it appears, and the mount table is
//! re-read only when the kernel says it changed. Nothing here allocates per
//! tick for a device or file system it already knows.
//!
//! Failures never stop a tick: a malformed line is logged, counted and
//! skipped; a file that cannot be read is reported once per change of state
//! (not every tick), its metrics are omitted, and it is reopened on later
//! ticks. Must never panic, never block on anything but these reads and
//! `statvfs` of local file systems, and never read the clock itself: time
//! is passed in.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use monitor::batch::{HealthValue, MetricValues};
use monitor::health::HealthMetric;
use monitor::wire::MAX_HEALTH_SAMPLES_PER_BATCH;

use crate::filesystems::{Filesystems, FsChoice, FsReading, StatFs};
use crate::metrics::{AgentMetric, Wire};
use crate::proc::{self};
use crate::rates::{self, DeviceTracker};
use crate::source::{Shape, Source, report_parse_error};
use crate::sysfs;
use crate::thermal::{Thermal, ZoneChoice};
use crate::throttling::Throttling;

/// The empty device of one-per-host health values, shared so a tick does
/// not allocate one per value.
static NO_DEVICE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));

/// One tick's values; a metric is absent where it could not be computed
/// this tick (first tick for rates, unreadable file, counters reset…) or
/// where the box has no such thing (no thermal zone, no swap, not a Pi).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Readings {
    /// Indexed by [`AgentMetric`]; labelled metrics are never set here.
    values: [Option<f64>; AgentMetric::COUNT],
    /// The per-file-system values (`fs_used_percent`) and the root's inodes.
    filesystems: FsReading,
    /// Malformed lines met in this tick.
    pub parse_errors: u32,
}

impl Readings {
    /// The value of a one-per-host metric.
    pub fn get(&self, metric: AgentMetric) -> Option<f64> {
        self.values[metric as usize]
    }

    /// Sets (or clears) a one-per-host metric.
    pub fn set(&mut self, metric: AgentMetric, value: Option<f64>) {
        self.values[metric as usize] = value;
    }

    /// The one-per-host metrics that have a value, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (AgentMetric, f64)> + '_ {
        AgentMetric::ALL
            .into_iter()
            .filter_map(|m| self.get(m).map(|v| (m, v)))
    }

    /// `(mount point, fs_used_percent)` for each file system measured.
    pub fn filesystems(&self) -> &[(Arc<str>, f64)] {
        &self.filesystems.used_percent
    }

    /// Adds a file system's `fs_used_percent` (the collector's own path goes
    /// through `Filesystems::sample`; this is for tests and tools).
    pub fn add_filesystem(&mut self, mount_point: Arc<str>, used_percent: f64) {
        self.filesystems
            .used_percent
            .push((mount_point, used_percent));
    }

    /// The six, in wire order.
    pub fn wire_values(&self) -> MetricValues {
        self.iter()
            .filter_map(|(m, v)| match m.spec().wire {
                Wire::Six(w) => Some((w, v)),
                Wire::Health(_) => None,
            })
            .collect()
    }

    /// The health values, one-per-host ones in table order, then each file
    /// system's; at most `MAX_HEALTH_SAMPLES_PER_BATCH` (file systems past
    /// that are left out). One allocation per tick; labels are shared.
    pub fn health_values(&self) -> Box<[HealthValue]> {
        let one_per_host = self.iter().filter_map(|(m, value)| match m.spec().wire {
            Wire::Health(metric) => Some(HealthValue {
                metric,
                device: Arc::clone(&NO_DEVICE),
                value,
            }),
            Wire::Six(_) => None,
        });
        let per_fs = self
            .filesystems()
            .iter()
            .map(|(mount_point, value)| HealthValue {
                metric: HealthMetric::FsUsedPercent,
                device: Arc::clone(mount_point),
                value: *value,
            });
        one_per_host
            .chain(per_fs)
            .take(MAX_HEALTH_SAMPLES_PER_BATCH)
            .collect()
    }
}

/// Why a [`Collector`] could not be opened.
#[derive(Debug)]
pub enum CollectorError {
    /// `PROC_ROOT/stat` could not be opened: the proc root is unusable.
    OpenProcRoot { path: PathBuf, source: io::Error },
}

impl fmt::Display for CollectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CollectorError::OpenProcRoot { path, .. } => write!(
                f,
                "cannot open {} (is the proc root a mounted procfs?)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for CollectorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CollectorError::OpenProcRoot { source, .. } => Some(source),
        }
    }
}

/// Where the collector reads, and what it counts.
#[derive(Clone, Debug)]
pub struct CollectorConfig {
    /// Where procfs is mounted (`/proc`).
    pub proc_root: PathBuf,
    /// Where sysfs is mounted (`/sys`).
    pub sys_root: PathBuf,
    /// The root prefix mount points are looked up under (`/`, or the
    /// host's root seen from a container).
    pub rootfs: PathBuf,
    /// Interfaces the operator named; `None` means "classify from /sys".
    pub interfaces: Option<Vec<String>>,
    /// Which thermal zones count.
    pub thermal_zone: ZoneChoice,
    /// Which file systems count.
    pub filesystems: FsChoice,
    /// How file systems are measured (`statvfs`, or a test's fake).
    pub statfs: StatFs,
}

impl CollectorConfig {
    /// The defaults for the given roots: the agent's own root prefix `/`,
    /// physical interfaces, the hottest zone, real file systems.
    pub fn new(proc_root: &Path, sys_root: &Path) -> CollectorConfig {
        CollectorConfig {
            proc_root: proc_root.to_path_buf(),
            sys_root: sys_root.to_path_buf(),
            rootfs: PathBuf::from("/"),
            interfaces: None,
            thermal_zone: ZoneChoice::Hottest,
            filesystems: FsChoice::Real,
            statfs: crate::filesystems::statvfs,
        }
    }
}

/// Reads the kernel's counters and turns them into [`Readings`], one tick at
/// a time.
#[derive(Debug)]
pub struct Collector {
    stat: Source,
    meminfo: Source,
    diskstats: Source,
    netdev: Source,
    loadavg: Source,
    uptime: Source,
    thermal: Thermal,
    throttling: Throttling,
    filesystems: Filesystems,
    sys_root: PathBuf,
    /// Interfaces the operator named; `None` means "classify from /sys".
    interfaces: Option<Vec<String>>,
    previous_cpu: Option<proc::stat::CpuTimes>,
    disks: DeviceTracker,
    nets: DeviceTracker,
    parse_errors_total: u64,
    /// This tick's values, kept so its vectors keep their capacity.
    readings: Readings,
}

impl Collector {
    /// Opens the files under `config.proc_root`; `config.sys_root` is
    /// used to find thermal zones and the Pi's throttling state (once) and
    /// to classify devices (once per device name, cached — never a /sys
    /// read per tick for a known device). `interfaces`, when given, is
    /// exactly the set of interfaces counted (names that do not exist
    /// contribute nothing).
    ///
    /// Fails only when `proc_root/stat` cannot be opened; any other missing
    /// file is warned about and retried each tick, and a missing thermal
    /// zone, hwmon device or mount table only leaves its metrics absent.
    pub fn open(config: CollectorConfig) -> Result<Collector, CollectorError> {
        let proc_root = &config.proc_root;
        let stat_path = proc_root.join("stat");
        let stat_file = File::open(&stat_path).map_err(|source| CollectorError::OpenProcRoot {
            path: stat_path.clone(),
            source,
        })?;
        Ok(Collector {
            stat: Source::new(stat_path, Some(stat_file), Shape::Whole),
            meminfo: Source::open(proc_root.join("meminfo"), Shape::Whole),
            diskstats: Source::open(proc_root.join("diskstats"), Shape::Records),
            netdev: Source::open(proc_root.join("net/dev"), Shape::Records),
            loadavg: Source::open(proc_root.join("loadavg"), Shape::Whole),
            uptime: Source::open(proc_root.join("uptime"), Shape::Whole),
            thermal: Thermal::open(&config.sys_root, &config.thermal_zone),
            throttling: Throttling::open(&config.sys_root),
            filesystems: Filesystems::open(
                proc_root,
                &config.rootfs,
                config.filesystems,
                config.statfs,
            ),
            sys_root: config.sys_root,
            interfaces: config.interfaces,
            previous_cpu: None,
            disks: DeviceTracker::new(proc::diskstats::SECTOR_BYTES),
            nets: DeviceTracker::new(1),
            parse_errors_total: 0,
            readings: Readings::default(),
        })
    }

    /// One tick at monotonic time `now`. Never panics; never allocates per
    /// tick for known devices and file systems.
    pub fn sample(&mut self, now: Instant) -> &Readings {
        let mut readings = std::mem::take(&mut self.readings);
        readings.values = [None; AgentMetric::COUNT];
        readings.parse_errors = 0;
        self.sample_cpu(&mut readings);
        self.sample_mem(&mut readings);
        self.sample_disks(now, &mut readings);
        self.sample_nets(now, &mut readings);
        self.sample_health(&mut readings);
        self.parse_errors_total = self
            .parse_errors_total
            .saturating_add(u64::from(readings.parse_errors));
        self.readings = readings;
        &self.readings
    }

    /// The files a tick reads and how (for the benchmark's floor, which
    /// reads exactly these).
    pub fn tick_files(&self) -> Vec<(&Path, Shape)> {
        let mut files: Vec<(&Path, Shape)> = [
            &self.stat,
            &self.meminfo,
            &self.diskstats,
            &self.netdev,
            &self.loadavg,
            &self.uptime,
        ]
        .into_iter()
        .map(|s| (s.path(), s.shape()))
        .collect();
        files.extend(self.thermal.paths().map(|p| (p, Shape::Whole)));
        files.extend(self.throttling.paths().map(|p| (p, Shape::Whole)));
        files
    }

    /// The paths a tick measures with `statvfs`.
    pub fn statfs_paths(&self) -> Vec<&Path> {
        self.filesystems.paths()
    }

    /// The mount points measured each tick.
    pub fn mount_points(&self) -> impl Iterator<Item = &str> {
        self.filesystems.mount_points()
    }

    /// Lines that failed to parse since open.
    pub fn parse_errors_total(&self) -> u64 {
        self.parse_errors_total
    }

    fn sample_cpu(&mut self, readings: &mut Readings) {
        let Some(current) = self
            .stat
            .read_parsed(proc::stat::parse, &mut readings.parse_errors)
        else {
            return;
        };
        if let Some(previous) = &self.previous_cpu {
            readings.set(
                AgentMetric::CpuPercent,
                rates::cpu_percent(previous, &current),
            );
        }
        // Kept even when the counters went backwards, so the next tick
        // measures from this reading, not from before a reset.
        self.previous_cpu = Some(current);
    }

    fn sample_mem(&mut self, readings: &mut Readings) {
        let errors = &mut readings.parse_errors;
        if let Some(mem) = self.meminfo.read_parsed(proc::meminfo::parse, errors) {
            readings.set(AgentMetric::MemPercent, mem.used_percent());
            readings.set(AgentMetric::SwapPercent, mem.swap_used_percent());
        }
    }

    /// Load, uptime, temperature, throttling and file systems.
    fn sample_health(&mut self, readings: &mut Readings) {
        let errors = &mut readings.parse_errors;
        let load1 = self.loadavg.read_parsed(proc::loadavg::parse, errors);
        let uptime = self.uptime.read_parsed(proc::uptime::parse, errors);
        let temp = self.thermal.sample(errors);
        let throttling = self.throttling.sample(errors);
        self.filesystems.sample(&mut readings.filesystems, errors);
        readings.set(AgentMetric::Load1, load1);
        readings.set(AgentMetric::UptimeSeconds, uptime);
        readings.set(AgentMetric::TempCelsius, temp);
        readings.set(AgentMetric::UnderVoltage, throttling.under_voltage);
        readings.set(AgentMetric::ThrottledFlags, throttling.throttled_flags);
        readings.set(
            AgentMetric::RootInodesUsedPercent,
            readings.filesystems.root_inodes_used_percent,
        );
    }

    fn sample_disks(&mut self, now: Instant, readings: &mut Readings) {
        let Collector {
            diskstats: source,
            disks: tracker,
            sys_root,
            ..
        } = self;
        let was_bad = source.had_parse_errors;
        let Some(text) = source.read() else { return };
        let mut errors = 0u32;
        tracker.begin_tick();
        for line in proc::diskstats::parse(text) {
            match line {
                Ok(disk) => tracker.observe(
                    disk.name,
                    [disk.read_sectors, disk.written_sectors],
                    now,
                    // A name that is not UTF-8 names no disk of ours.
                    |name| {
                        std::str::from_utf8(name)
                            .is_ok_and(|n| sysfs::is_physical_disk(sys_root, n))
                    },
                ),
                Err(err) => {
                    report_parse_error(was_bad || errors > 0, &err);
                    errors = errors.saturating_add(1);
                }
            }
        }
        let [read, write] = tracker.end_tick();
        readings.set(AgentMetric::DiskReadKbps, read);
        readings.set(AgentMetric::DiskWriteKbps, write);
        source.had_parse_errors = errors > 0;
        readings.parse_errors = readings.parse_errors.saturating_add(errors);
    }

    fn sample_nets(&mut self, now: Instant, readings: &mut Readings) {
        let Collector {
            netdev: source,
            nets: tracker,
            sys_root,
            interfaces,
            ..
        } = self;
        let was_bad = source.had_parse_errors;
        let Some(text) = source.read() else { return };
        let mut errors = 0u32;
        tracker.begin_tick();
        for line in proc::netdev::parse(text) {
            match line {
                Ok(net) => tracker.observe(net.name, [net.rx_bytes, net.tx_bytes], now, |name| {
                    match interfaces {
                        Some(named) => named.iter().any(|n| n.as_bytes() == name),
                        // A name that is not UTF-8 is no interface /sys
                        // could tell us about under a path we can build.
                        None => std::str::from_utf8(name)
                            .is_ok_and(|n| sysfs::is_physical_interface(sys_root, n)),
                    }
                }),
                Err(err) => {
                    report_parse_error(was_bad || errors > 0, &err);
                    errors = errors.saturating_add(1);
                }
            }
        }
        let [rx, tx] = tracker.end_tick();
        readings.set(AgentMetric::NetInKbps, rx);
        readings.set(AgentMetric::NetOutKbps, tx);
        source.had_parse_errors = errors > 0;
        readings.parse_errors = readings.parse_errors.saturating_add(errors);
    }
}

#[cfg(test)]
mod tests;
