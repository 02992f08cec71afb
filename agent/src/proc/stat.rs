//! Parser for the aggregate `cpu` line of /proc/stat.
//!
//! Only the first line that starts with `cpu` followed by whitespace is read:
//! the per-CPU lines, `intr`, `ctxt` and the rest are never looked at, so a
//! kernel that adds lines (or a huge `intr` line) costs nothing. Values stay
//! in the kernel's clock ticks (USER_HZ): the agent only ever divides ticks
//! by ticks, so the tick length cancels and no host constant is needed.
//!
//! Must never do I/O and never allocate unless it returns an error.

use super::{Fields, Lines, ParseError, ParseErrorKind, field_u64};

const FILE: &str = "/proc/stat";

/// Field names of the `cpu` line, in the order the kernel prints them
/// (Documentation/filesystems/proc.rst, "1.7 Miscellaneous kernel statistics").
const FIELDS: [&str; 10] = [
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "irq",
    "softirq",
    "steal",
    "guest",
    "guest_nice",
];

/// The aggregate CPU time counters since boot, over all CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Time in user mode, including `guest_ticks`.
    pub user_ticks: u64,
    /// Time in user mode at low priority, including `guest_nice_ticks`.
    pub nice_ticks: u64,
    /// Time in kernel mode.
    pub system_ticks: u64,
    /// Time idle.
    pub idle_ticks: u64,
    /// Time idle while I/O was outstanding (since Linux 2.5.41).
    pub iowait_ticks: Option<u64>,
    /// Time servicing hardware interrupts (since Linux 2.6.0).
    pub irq_ticks: Option<u64>,
    /// Time servicing softirqs (since Linux 2.6.0).
    pub softirq_ticks: Option<u64>,
    /// Time stolen by the hypervisor (since Linux 2.6.11).
    pub steal_ticks: Option<u64>,
    /// Time running a guest; already counted in `user_ticks` (since Linux 2.6.24).
    pub guest_ticks: Option<u64>,
    /// Time running a niced guest; already counted in `nice_ticks` (since Linux 2.6.33).
    pub guest_nice_ticks: Option<u64>,
}

impl CpuTimes {
    /// All CPU time: user + nice + system + idle + iowait + irq + softirq +
    /// steal. Guest time is already inside user and nice, so it is never
    /// added again. Wrapping addition: the counters are far from 2^64, and
    /// a corrupt value must not panic (the rate logic rejects what follows).
    pub fn total_ticks(&self) -> u64 {
        self.user_ticks
            .wrapping_add(self.nice_ticks)
            .wrapping_add(self.system_ticks)
            .wrapping_add(self.idle_ticks)
            .wrapping_add(self.iowait_ticks.unwrap_or(0))
            .wrapping_add(self.irq_ticks.unwrap_or(0))
            .wrapping_add(self.softirq_ticks.unwrap_or(0))
            .wrapping_add(self.steal_ticks.unwrap_or(0))
    }

    /// Time doing work: the total minus idle and iowait.
    pub fn busy_ticks(&self) -> u64 {
        self.total_ticks()
            .wrapping_sub(self.idle_ticks)
            .wrapping_sub(self.iowait_ticks.unwrap_or(0))
    }
}

/// Reads the aggregate `cpu` line of /proc/stat. Fields after `guest_nice`
/// are ignored; fields absent on old kernels are `None`; `user`, `nice`,
/// `system` and `idle` are required.
pub fn parse(text: &str) -> Result<CpuTimes, ParseError> {
    for (line_no, line) in Lines::new(text) {
        let Some(rest) = line.strip_prefix("cpu") else {
            continue;
        };
        // `cpu0 ...` is a per-CPU line; the aggregate is `cpu` + whitespace.
        if !rest.starts_with([' ', '\t']) {
            continue;
        }
        return parse_cpu_line(rest, line_no);
    }
    Err(ParseError::new(FILE, None, "cpu", ParseErrorKind::NotFound))
}

fn parse_cpu_line(rest: &str, line: usize) -> Result<CpuTimes, ParseError> {
    let mut values = [None::<u64>; 10];
    for (slot, (name, token)) in values.iter_mut().zip(FIELDS.iter().zip(Fields::new(rest))) {
        *slot = Some(field_u64(FILE, line, name, token)?);
    }
    let required = |i: usize| {
        values[i]
            .ok_or_else(|| ParseError::new(FILE, Some(line), FIELDS[i], ParseErrorKind::Missing))
    };
    Ok(CpuTimes {
        user_ticks: required(0)?,
        nice_ticks: required(1)?,
        system_ticks: required(2)?,
        idle_ticks: required(3)?,
        iowait_ticks: values[4],
        irq_ticks: values[5],
        softirq_ticks: values[6],
        steal_ticks: values[7],
        guest_ticks: values[8],
        guest_nice_ticks: values[9],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_time_is_not_added_twice() {
        let cpu = parse("cpu  100 10 50 800 40 5 5 2 30 3\n").unwrap();
        assert_eq!(cpu.total_ticks(), 100 + 10 + 50 + 800 + 40 + 5 + 5 + 2);
        assert_eq!(cpu.busy_ticks(), 100 + 10 + 50 + 5 + 5 + 2);
    }

    #[test]
    fn per_cpu_lines_are_not_the_aggregate() {
        let cpu = parse("cpu0 1 1 1 1\ncpu 2 0 0 8\n").unwrap();
        assert_eq!(cpu.user_ticks, 2);
    }
}
