//! The server process's own resource use, from `/proc/self` (Linux only):
//! resident memory, CPU seconds, open descriptors and their limit, start
//! time. Parsers are pure functions over the files' text; [`read`] does the
//! I/O and returns what it could read (a missing file leaves its field
//! `None`, never an error on the scrape).
//!
//! Clock ticks: the kernel reports CPU and start times in USER_HZ ticks,
//! which Linux fixes at 100 for every architecture's user ABI (reading
//! `sysconf(_SC_CLK_TCK)` would need `unsafe` or another crate for a
//! constant).

use std::path::Path;

/// USER_HZ: ticks per second in /proc's times (see the module doc).
const TICKS_PER_SECOND: f64 = 100.0;

/// What `/metrics` reports about the process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub resident_memory_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

/// Reads the process's figures under `proc_root` (`/proc` outside tests).
pub fn read(proc_root: &Path) -> ProcessStats {
    let me = proc_root.join("self");
    let stat = std::fs::read_to_string(me.join("stat")).ok();
    let stat = stat.as_deref().and_then(parse_stat);
    let boot = std::fs::read_to_string(proc_root.join("stat"))
        .ok()
        .and_then(|s| parse_boot_time(&s));
    ProcessStats {
        resident_memory_bytes: std::fs::read_to_string(me.join("status"))
            .ok()
            .and_then(|s| parse_rss_bytes(&s)),
        cpu_seconds: stat.map(|s| (s.utime + s.stime) as f64 / TICKS_PER_SECOND),
        open_fds: std::fs::read_dir(me.join("fd"))
            .ok()
            .map(|d| d.count() as u64),
        max_fds: std::fs::read_to_string(me.join("limits"))
            .ok()
            .and_then(|s| parse_max_fds(&s)),
        start_time_seconds: match (stat, boot) {
            (Some(s), Some(b)) => Some(b as f64 + s.starttime as f64 / TICKS_PER_SECOND),
            _ => None,
        },
    }
}

/// The fields of `/proc/self/stat` used here, in ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
}

/// `/proc/PID/stat`: fields after the command name (which may hold spaces
/// and parentheses, so the split is at the last `)`); utime and stime are
/// fields 14 and 15, starttime 22 (1-based, see proc(5)).
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
    })
}

/// `VmRSS:   12345 kB` of `/proc/PID/status`, in bytes.
fn parse_rss_bytes(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `btime SECONDS` of `/proc/stat`: boot time, seconds since the epoch.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The soft limit of `Max open files` in `/proc/PID/limits`.
fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured on this x86_64 build box from a running monitor-server
    // (the command name altered to show the last-')' rule).
    const STAT: &str = "4242 (monitor (x) srv) S 1 4242 4242 0 -1 4194560 1912 0 0 0 \
                        37 12 0 0 20 0 5 0 812345 1234567168 3311 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 17922 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields() {
        assert_eq!(
            parse_stat(STAT),
            Some(Stat {
                utime: 37,
                stime: 12,
                starttime: 812345
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn status_limits_and_boot_time() {
        let status = "Name:\tmonitor-server\nVmPeak:\t  20000 kB\nVmRSS:\t    9876 kB\n";
        assert_eq!(parse_rss_bytes(status), Some(9876 * 1024));
        assert_eq!(parse_rss_bytes("Name: x\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            65536                524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(65536));
        assert_eq!(
            parse_boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn reads_this_process() {
        let s = read(Path::new("/proc"));
        assert!(s.resident_memory_bytes.is_some_and(|b| b > 0));
        assert!(s.open_fds.is_some_and(|n| n >= 3));
        assert!(s.start_time_seconds.is_some_and(|t| t > 1e9));
        assert!(s.cpu_seconds.is_some());
    }
}
