//! What a process costs, read from /proc: CPU time (clock ticks for the
//! whole process and its reaped children, nanoseconds per live thread from
//! schedstat), resident memory and thread count.
//!
//! Parsing is split from reading: each file has a pure function over
//! `&str`, and [`ProcSnapshot::read`] adds the path to any error. Only
//! reads /proc; never writes anything, never signals a process.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Linux reports CPU time in USER_HZ ticks: 100 per second on every
/// architecture monitor runs on.
pub const TICKS_PER_S: u64 = 100;

/// A /proc file that could not be read or understood.
#[derive(Debug)]
pub enum ProcError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Parse {
        path: PathBuf,
        what: &'static str,
    },
}

impl fmt::Display for ProcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcError::Read { path, .. } => write!(f, "cannot read {}", path.display()),
            ProcError::Parse { path, what } => {
                write!(f, "{}: cannot find {what}", path.display())
            }
        }
    }
}

impl std::error::Error for ProcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProcError::Read { source, .. } => Some(source),
            ProcError::Parse { .. } => None,
        }
    }
}

/// CPU times from /proc/PID/stat, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatTimes {
    /// utime + stime of the process (every thread, living or gone).
    pub cpu_ticks: u64,
    /// cutime + cstime: children the process has waited for.
    pub children_cpu_ticks: u64,
}

/// Parses /proc/PID/stat. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last ')'.
pub fn parse_stat(text: &str) -> Option<StatTimes> {
    let (_, rest) = text.rsplit_once(')')?;
    // After ')': field 3 (state) is index 0, utime (14) is index 11.
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let mut next = || fields.next().and_then(|f| f.parse::<u64>().ok());
    let (utime, stime, cutime, cstime) = (next()?, next()?, next()?, next()?);
    Some(StatTimes {
        cpu_ticks: utime + stime,
        children_cpu_ticks: cutime + cstime,
    })
}

/// Memory and threads from /proc/PID/status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub threads: u64,
    /// Resident set now, KiB.
    pub rss_kib: u64,
    /// Highest resident set so far, KiB.
    pub hwm_kib: u64,
}

/// Parses /proc/PID/status (values in kB, which the kernel means as KiB).
pub fn parse_status(text: &str) -> Option<Status> {
    let mut threads = None;
    let mut rss_kib = None;
    let mut hwm_kib = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let number = || {
            value
                .split_ascii_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        };
        match key {
            "Threads" => threads = number(),
            "VmRSS" => rss_kib = number(),
            "VmHWM" => hwm_kib = number(),
            _ => {}
        }
    }
    Some(Status {
        threads: threads?,
        rss_kib: rss_kib?,
        hwm_kib: hwm_kib?,
    })
}

/// Memory split by sharing, from /proc/PID/smaps_rollup, KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rollup {
    /// Proportional set: shared pages divided among the processes mapping them.
    pub pss_kib: u64,
    /// Resident pages no other process maps (Private_Clean + Private_Dirty).
    pub private_kib: u64,
    /// Anonymous memory: heap, stacks; what the process itself allocated.
    pub anon_kib: u64,
}

/// Parses /proc/PID/smaps_rollup.
pub fn parse_smaps_rollup(text: &str) -> Option<Rollup> {
    let (mut pss, mut clean, mut dirty, mut anon) = (None, None, None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let kib = || {
            value
                .split_ascii_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        };
        match key {
            "Pss" => pss = kib(),
            "Private_Clean" => clean = kib(),
            "Private_Dirty" => dirty = kib(),
            "Anonymous" => anon = kib(),
            _ => {}
        }
    }
    Some(Rollup {
        pss_kib: pss?,
        private_kib: clean? + dirty?,
        anon_kib: anon?,
    })
}

/// Time on CPU from /proc/PID/task/TID/schedstat, nanoseconds (the first
/// of its three numbers).
pub fn parse_schedstat_ns(text: &str) -> Option<u64> {
    text.split_ascii_whitespace().next()?.parse().ok()
}

/// One reading of a process.
#[derive(Clone, Debug)]
pub struct ProcSnapshot {
    pub pid: u32,
    pub at: Instant,
    pub times: StatTimes,
    pub status: Status,
    /// `None` where smaps_rollup is missing (kernels before 4.14).
    pub rollup: Option<Rollup>,
    /// Sum over the threads alive now of their time on CPU, ns. Threads
    /// that ended are missing: compare `threads` across readings.
    pub live_threads_cpu_ns: u64,
}

fn read(path: &Path) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.to_owned(),
        source,
    })
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

impl ProcSnapshot {
    /// Reads process `pid` under `proc_root` (normally /proc).
    pub fn read(proc_root: &Path, pid: u32) -> Result<ProcSnapshot, ProcError> {
        let dir = proc_root.join(pid.to_string());
        let at = Instant::now();
        let stat_path = dir.join("stat");
        let times = parse_stat(&read(&stat_path)?).ok_or(ProcError::Parse {
            path: stat_path,
            what: "utime, stime, cutime and cstime",
        })?;
        let status_path = dir.join("status");
        let status = parse_status(&read(&status_path)?).ok_or(ProcError::Parse {
            path: status_path,
            what: "Threads, VmRSS and VmHWM",
        })?;
        let rollup = read(&dir.join("smaps_rollup"))
            .ok()
            .and_then(|t| parse_smaps_rollup(&t));
        let mut live_threads_cpu_ns = 0;
        let task_dir = dir.join("task");
        let tasks = std::fs::read_dir(&task_dir).map_err(|source| ProcError::Read {
            path: task_dir,
            source,
        })?;
        for task in tasks.flatten() {
            // A thread may end between the listing and the read: skip it.
            if let Some(ns) = std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|t| parse_schedstat_ns(&t))
            {
                live_threads_cpu_ns += ns;
            }
        }
        Ok(ProcSnapshot {
            pid,
            at,
            times,
            status,
            rollup,
            live_threads_cpu_ns,
        })
    }

    /// Process CPU (all threads, living or gone) between `earlier` and
    /// this reading, as a percentage of one core.
    pub fn cpu_percent_since(&self, earlier: &ProcSnapshot) -> f64 {
        let secs = self.at.duration_since(earlier.at).as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        let ticks = self.times.cpu_ticks.saturating_sub(earlier.times.cpu_ticks);
        ticks as f64 / TICKS_PER_S as f64 / secs * 100.0
    }

    /// `key=value` pairs, one line, for scripts.
    pub fn to_kv(&self) -> String {
        format!(
            "pid={} threads={} cpu_ticks={} children_cpu_ticks={} cpu_ns={} rss_kib={} hwm_kib={} pss_kib={} private_kib={} anon_kib={}",
            self.pid,
            self.status.threads,
            self.times.cpu_ticks,
            self.times.children_cpu_ticks,
            self.live_threads_cpu_ns,
            self.status.rss_kib,
            self.status.hwm_kib,
            opt(self.rollup.map(|r| r.pss_kib)),
            opt(self.rollup.map(|r| r.private_kib)),
            opt(self.rollup.map(|r| r.anon_kib)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured on this x86_64 box from a monitor-agent (pid 7888), fields
    // after the times shortened.
    const STAT: &str = "7888 (monitor-agent) S 6765 7888 6765 0 -1 4194560 503 0 0 0 12 7 3 1 20 0 1 0 1234 9670656 1825 18446744073709551615";
    // A command name with spaces and parentheses, made by hand.
    const STAT_ODD_NAME: &str = "42 (a) b (c)) R 1 42 42 0 -1 0 0 0 0 0 100 50 0 0 20 0 4 0 1 1 1";

    fn check<T: PartialEq + std::fmt::Debug>(got: Option<T>, expected: Option<T>) {
        assert_eq!(got, expected);
    }

    #[test]
    fn stat_times() {
        check(
            parse_stat(STAT),
            Some(StatTimes {
                cpu_ticks: 19,
                children_cpu_ticks: 4,
            }),
        );
        check(
            parse_stat(STAT_ODD_NAME),
            Some(StatTimes {
                cpu_ticks: 150,
                children_cpu_ticks: 0,
            }),
        );
        check(parse_stat("42 (cut) S 1 2"), None);
        check(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn status_fields() {
        let text = "Name:\tmonitor-agent\nVmHWM:\t    2940 kB\nVmRSS:\t    2712 kB\nThreads:\t1\n";
        check(
            parse_status(text),
            Some(Status {
                threads: 1,
                rss_kib: 2712,
                hwm_kib: 2940,
            }),
        );
        // A kernel thread has no VmRSS.
        check(parse_status("Name:\tkthreadd\nThreads:\t1\n"), None);
    }

    #[test]
    fn smaps_rollup_and_schedstat() {
        // This box's monitor-agent at 1 s, lines not parsed left out.
        let rollup = "5648a8658000-7ffd4cf2f000 ---p 00000000 00:00 0                          [rollup]\nRss:                3260 kB\nPss:                1585 kB\nPss_Dirty:           344 kB\nShared_Clean:       1860 kB\nPrivate_Clean:      1056 kB\nPrivate_Dirty:       344 kB\nAnonymous:           344 kB\n";
        check(
            parse_smaps_rollup(rollup),
            Some(Rollup {
                pss_kib: 1585,
                private_kib: 1400,
                anon_kib: 344,
            }),
        );
        check(parse_smaps_rollup("Rss: 1 kB\n"), None);
        check(parse_schedstat_ns("123456789 2000 15\n"), Some(123_456_789));
        check(parse_schedstat_ns(""), None);
    }

    #[test]
    fn reads_this_process() {
        let me = ProcSnapshot::read(Path::new("/proc"), std::process::id()).unwrap();
        assert!(me.status.threads >= 1);
        assert!(me.status.rss_kib > 0 && me.status.hwm_kib >= me.status.rss_kib);
        assert!(me.live_threads_cpu_ns > 0);
        let kv = me.to_kv();
        assert!(kv.starts_with(&format!("pid={} threads=", std::process::id())));
    }
}
