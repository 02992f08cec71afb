//! The per-tick reader: reads /proc/stat, /proc/meminfo, /proc/diskstats
//! and /proc/net/dev under an injectable root, parses them and turns the
//! counters into the six metrics.
//!
//! The tick is cheap by construction: the four files stay open and are
//! re-read with `pread` at offset 0 into buffers kept between ticks, the
//! parsers scan bytes without allocating, per-device state is looked up by
//! `&str`, and /sys is consulted once per device name, the first time it
//! appears. Nothing here allocates per tick for a device it already knows.
//!
//! Failures never stop a tick: a malformed line is logged, counted and
//! skipped; a file that cannot be read is reported once per change of state
//! (not every tick), its metrics are omitted, and it is reopened on later
//! ticks. Must never panic, never block on anything but these reads, and
//! never read the clock itself: time is passed in.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use monitor::metric::Metric;

use crate::proc::{self, ParseError};
use crate::rates::{self, DeviceTracker};
use crate::sysfs;

/// Initial size of each read buffer, in bytes; it grows (and stays grown)
/// when a file is larger.
const INITIAL_BUFFER_BYTES: usize = 4096;

/// The six metrics of one tick; `None` where a metric could not be computed
/// this tick (first tick for rates, unreadable file, counters reset…).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Readings {
    /// Busy share of all CPU time since the previous tick, 0 to 100.
    pub cpu_percent: Option<f64>,
    /// Used share of RAM now, 0 to 100.
    pub mem_percent: Option<f64>,
    /// KiB/s read from whole physical disks.
    pub disk_read_kib_per_s: Option<f64>,
    /// KiB/s written to whole physical disks.
    pub disk_write_kib_per_s: Option<f64>,
    /// KiB/s received on counted interfaces.
    pub net_in_kib_per_s: Option<f64>,
    /// KiB/s transmitted on counted interfaces.
    pub net_out_kib_per_s: Option<f64>,
    /// Malformed lines met in this tick.
    pub parse_errors: u32,
}

impl Readings {
    /// The metrics that have a value, in [`Metric::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Metric, f64)> + '_ {
        Metric::ALL.into_iter().filter_map(|metric| {
            let value = match metric {
                Metric::CpuPercent => self.cpu_percent,
                Metric::MemPercent => self.mem_percent,
                Metric::DiskReadKbps => self.disk_read_kib_per_s,
                Metric::DiskWriteKbps => self.disk_write_kib_per_s,
                Metric::NetInKbps => self.net_in_kib_per_s,
                Metric::NetOutKbps => self.net_out_kib_per_s,
            };
            value.map(|v| (metric, v))
        })
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

/// One kept-open /proc file and its reused buffer.
#[derive(Debug)]
struct Source {
    path: PathBuf,
    file: Option<File>,
    /// Zero-filled once and grown when a file outgrows it; reused every tick.
    buf: Vec<u8>,
    /// Whether the last attempt to open or read failed (warn on changes only).
    failing: bool,
    /// Whether the last read had malformed lines (warn on changes only).
    had_parse_errors: bool,
}

impl Source {
    fn new(path: PathBuf, file: Option<File>) -> Source {
        Source {
            path,
            file,
            buf: vec![0; INITIAL_BUFFER_BYTES],
            failing: false,
            had_parse_errors: false,
        }
    }

    /// Opens the file, warning when that newly fails.
    fn open(path: PathBuf) -> Source {
        let mut source = Source::new(path, None);
        source.reopen();
        source
    }

    fn reopen(&mut self) {
        match File::open(&self.path) {
            Ok(file) => {
                if self.failing {
                    log::info!("{} can be opened again", self.path.display());
                }
                self.file = Some(file);
                self.failing = false;
            }
            Err(err) => self.fail("open", &err),
        }
    }

    fn fail(&mut self, what: &str, err: &io::Error) {
        if !self.failing {
            log::warn!(
                "cannot {what} {}: {err}; its metrics are omitted until it can be read again",
                self.path.display()
            );
        }
        self.failing = true;
        self.file = None;
    }

    /// Re-reads the whole file from offset 0 into the buffer. Returns the
    /// text (invalid UTF-8 replaced, which then fails the number parsers on
    /// that line only), or `None` when the file cannot be read this tick.
    fn read(&mut self) -> Option<Cow<'_, str>> {
        if self.file.is_none() {
            self.reopen();
        }
        let file = self.file.as_ref()?;
        let mut filled = 0;
        let result = loop {
            if filled == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            match file.read_at(&mut self.buf[filled..], filled as u64) {
                Ok(0) => break Ok(()),
                Ok(n) => filled += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => break Err(err),
            }
        };
        if let Err(err) = result {
            self.fail("read", &err);
            return None;
        }
        if self.failing {
            log::info!("{} can be read again", self.path.display());
            self.failing = false;
        }
        let bytes = &self.buf[..filled];
        // The kernel prints ASCII: take the fast validation, and pay for the
        // replacing copy only when a file really holds garbage.
        Some(match std::str::from_utf8(bytes) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(bytes),
        })
    }
}

/// Logs a malformed line: a warning the first time a file goes bad, debug
/// while it stays bad (a broken line would otherwise warn every tick).
fn report_parse_error(already_bad: bool, err: &ParseError) {
    if already_bad {
        log::debug!("{err}");
    } else {
        log::warn!(
            "{err}; skipping that line (further errors in this file are logged at debug level until it parses cleanly)"
        );
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
    sys_root: PathBuf,
    /// Interfaces the operator named; `None` means "classify from /sys".
    interfaces: Option<Vec<String>>,
    previous_cpu: Option<proc::stat::CpuTimes>,
    disks: DeviceTracker,
    nets: DeviceTracker,
    parse_errors_total: u64,
}

impl Collector {
    /// Opens the four files under `proc_root`; `sys_root` is used to
    /// classify devices (once per device name, cached — never a /sys read
    /// per tick for a known device). `interfaces`, when given, is exactly
    /// the set of interfaces counted (names that do not exist contribute
    /// nothing).
    ///
    /// Fails only when `proc_root/stat` cannot be opened; a missing
    /// meminfo, diskstats or net/dev is warned about and retried each tick.
    pub fn open(
        proc_root: &Path,
        sys_root: &Path,
        interfaces: Option<Vec<String>>,
    ) -> Result<Collector, CollectorError> {
        let stat_path = proc_root.join("stat");
        let stat_file = File::open(&stat_path).map_err(|source| CollectorError::OpenProcRoot {
            path: stat_path.clone(),
            source,
        })?;
        Ok(Collector {
            stat: Source::new(stat_path, Some(stat_file)),
            meminfo: Source::open(proc_root.join("meminfo")),
            diskstats: Source::open(proc_root.join("diskstats")),
            netdev: Source::open(proc_root.join("net/dev")),
            sys_root: sys_root.to_path_buf(),
            interfaces,
            previous_cpu: None,
            disks: DeviceTracker::new(proc::diskstats::SECTOR_BYTES),
            nets: DeviceTracker::new(1),
            parse_errors_total: 0,
        })
    }

    /// One tick at monotonic time `now`. Never panics; never allocates per
    /// tick for known devices.
    pub fn sample(&mut self, now: Instant) -> Readings {
        let mut readings = Readings::default();
        self.sample_cpu(&mut readings);
        self.sample_mem(&mut readings);
        self.sample_disks(now, &mut readings);
        self.sample_nets(now, &mut readings);
        self.parse_errors_total = self
            .parse_errors_total
            .saturating_add(u64::from(readings.parse_errors));
        readings
    }

    /// Lines that failed to parse since open.
    pub fn parse_errors_total(&self) -> u64 {
        self.parse_errors_total
    }

    fn sample_cpu(&mut self, readings: &mut Readings) {
        let source = &mut self.stat;
        let Some(text) = source.read() else { return };
        let parsed = proc::stat::parse(&text);
        drop(text);
        match parsed {
            Ok(current) => {
                source.had_parse_errors = false;
                if let Some(previous) = &self.previous_cpu {
                    readings.cpu_percent = rates::cpu_percent(previous, &current);
                }
                // Kept even when the counters went backwards, so the next
                // tick measures from this reading, not from before a reset.
                self.previous_cpu = Some(current);
            }
            Err(err) => {
                report_parse_error(source.had_parse_errors, &err);
                source.had_parse_errors = true;
                readings.parse_errors += 1;
            }
        }
    }

    fn sample_mem(&mut self, readings: &mut Readings) {
        let source = &mut self.meminfo;
        let Some(text) = source.read() else { return };
        let parsed = proc::meminfo::parse(&text);
        drop(text);
        match parsed {
            Ok(mem) => {
                source.had_parse_errors = false;
                readings.mem_percent = mem.used_percent();
            }
            Err(err) => {
                report_parse_error(source.had_parse_errors, &err);
                source.had_parse_errors = true;
                readings.parse_errors += 1;
            }
        }
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
        for line in proc::diskstats::parse(&text) {
            match line {
                Ok(disk) => tracker.observe(
                    disk.name,
                    [disk.read_sectors, disk.written_sectors],
                    now,
                    |name| sysfs::is_physical_disk(sys_root, name),
                ),
                Err(err) => {
                    report_parse_error(was_bad || errors > 0, &err);
                    errors = errors.saturating_add(1);
                }
            }
        }
        drop(text);
        [readings.disk_read_kib_per_s, readings.disk_write_kib_per_s] = tracker.end_tick();
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
        for line in proc::netdev::parse(&text) {
            match line {
                Ok(net) => tracker.observe(net.name, [net.rx_bytes, net.tx_bytes], now, |name| {
                    match interfaces {
                        Some(named) => named.iter().any(|n| n == name),
                        None => sysfs::is_physical_interface(sys_root, name),
                    }
                }),
                Err(err) => {
                    report_parse_error(was_bad || errors > 0, &err);
                    errors = errors.saturating_add(1);
                }
            }
        }
        drop(text);
        [readings.net_in_kib_per_s, readings.net_out_kib_per_s] = tracker.end_tick();
        source.had_parse_errors = errors > 0;
        readings.parse_errors = readings.parse_errors.saturating_add(errors);
    }
}
