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
pub fn parse(text: &[u8]) -> Result<CpuTimes, ParseError> {
    for (line_no, line) in Lines::new(text) {
        let Some(rest) = line.strip_prefix(b"cpu") else {
            continue;
        };
        // `cpu0 ...` is a per-CPU line; the aggregate is `cpu` + whitespace.
        if !matches!(rest.first(), Some(b' ' | b'\t')) {
            continue;
        }
        return parse_cpu_line(rest, line_no);
    }
    Err(ParseError::new(FILE, None, "cpu", ParseErrorKind::NotFound))
}

fn parse_cpu_line(rest: &[u8], line: usize) -> Result<CpuTimes, ParseError> {
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
    use crate::proc::stat;
    use crate::testing::fixture;

    #[test]
    fn guest_time_is_not_added_twice() {
        let cpu = parse(b"cpu  100 10 50 800 40 5 5 2 30 3\n").unwrap();
        assert_eq!(cpu.total_ticks(), 100 + 10 + 50 + 800 + 40 + 5 + 5 + 2);
        assert_eq!(cpu.busy_ticks(), 100 + 10 + 50 + 5 + 5 + 2);
    }

    #[test]
    fn per_cpu_lines_are_not_the_aggregate() {
        let cpu = parse(b"cpu0 1 1 1 1\ncpu 2 0 0 8\n").unwrap();
        assert_eq!(cpu.user_ticks, 2);
    }

    // The captures in tests/fixtures (x86_64, aarch64, armv7; its README.md
    // says where each came from) and broken input: every error must name the
    // file, the 1-based line and the field, and nothing may panic.

    fn check_stat(input: impl AsRef<[u8]>, expected: Result<CpuTimes, ParseError>) {
        let input = input.as_ref();
        assert_eq!(
            stat::parse(input),
            expected,
            "input:\n{}",
            String::from_utf8_lossy(input)
        );
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
            fixture("x86_64", "proc/stat"),
            Ok(cpu([48277, 0, 5889, 100400, 886, 0, 205, 213, 0, 0])),
        );
        check_stat(
            fixture("aarch64", "proc/stat"),
            Ok(cpu([
                184391, 2301, 61428, 11890211, 10924, 0, 3851, 0, 0, 0,
            ])),
        );
        check_stat(
            fixture("armv7", "proc/stat"),
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
        check_stat(
            b"cpu  1 2 \xff\xfe 4\n",
            Err(stat_error(
                Some(1),
                "system",
                not_a_number("\u{fffd}\u{fffd}"),
            )),
        );
    }
}
