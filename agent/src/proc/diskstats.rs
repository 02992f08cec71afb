//! Parser for /proc/diskstats, one result per line so that one bad line
//! never hides the others.
//!
//! Line shapes accepted (Documentation/admin-guide/iostats.rst), counting
//! major, minor and name as fields:
//! - 14 fields: kernels 2.6.25 to 4.17 (11 statistics);
//! - 18 fields: 4.18+ add four discard statistics;
//! - 20 fields: 5.5+ add two flush statistics;
//! - any other count of 14 or more: fields beyond the ones we use are
//!   ignored, so a future kernel's additions do not break the agent;
//! - 7 fields: kernels before 2.6.25 printed partitions with only reads,
//!   sectors read, writes and sectors written. We accept that shape and map
//!   its sectors, because rejecting it would count one error per partition
//!   per tick on such a box; it never matters for the metrics, which only
//!   count whole disks (printed with 14 fields even then).
//!
//! Only major, minor, name and the two sector counters are validated: the
//! other statistics are never read, so checking them would only cost time.
//! Sector counts are in 512-byte units whatever the device's sector size.
//!
//! Must never do I/O and never allocate unless it returns an error.

use super::{Fields, Lines, ParseError, ParseErrorKind, field_u64};

const FILE: &str = "/proc/diskstats";

/// Field names of a modern line, for errors (iostats.rst numbering).
const FIELDS: [&str; 14] = [
    "major",
    "minor",
    "name",
    "reads_completed",
    "reads_merged",
    "sectors_read",
    "time_reading_ms",
    "writes_completed",
    "writes_merged",
    "sectors_written",
    "time_writing_ms",
    "ios_in_progress",
    "time_io_ms",
    "weighted_time_io_ms",
];

/// Size of the unit /proc/diskstats counts sectors in, in bytes: always 512,
/// whatever the device's logical sector size.
pub const SECTOR_BYTES: u64 = 512;

/// The counters of one block device (whole disk or partition) the agent uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskStat<'a> {
    pub major: u32,
    pub minor: u32,
    /// Kernel name, e.g. `mmcblk0`, `mmcblk0p2`, `sda`, `loop0`, as the
    /// kernel's bytes (never checked for UTF-8 on the tick: the name is
    /// only compared, and looked up in /sys once).
    pub name: &'a [u8],
    /// Sectors read since boot, in 512-byte units (wraps at 2^32 on 32-bit
    /// kernels).
    pub read_sectors: u64,
    /// Sectors written since boot, in 512-byte units (wraps at 2^32 on
    /// 32-bit kernels).
    pub written_sectors: u64,
}

/// Parses every non-blank line of /proc/diskstats; line numbers in errors
/// are 1-based and count blank lines too.
pub fn parse(text: &[u8]) -> impl Iterator<Item = Result<DiskStat<'_>, ParseError>> + '_ {
    // A blank line is one whose first field is missing: found by the one
    // scan that splits the line, not by a trim before it.
    Lines::new(text).filter_map(|(line_no, line)| parse_fields(line, line_no))
}

/// Parses one line (`line_no` is 1-based, for errors).
pub fn parse_line(line: &[u8], line_no: usize) -> Result<DiskStat<'_>, ParseError> {
    parse_fields(line, line_no).unwrap_or_else(|| {
        Err(ParseError::new(
            FILE,
            Some(line_no),
            FIELDS[0],
            ParseErrorKind::Missing,
        ))
    })
}

/// One line's fields, or `None` when it is blank.
fn parse_fields(line: &[u8], line_no: usize) -> Option<Result<DiskStat<'_>, ParseError>> {
    // Fields past the fourteenth are never scanned: only their presence
    // or absence matters, and 14 already says "modern line".
    let mut tokens = Fields::new(line);
    let mut fields: [&[u8]; 14] = [b""; 14];
    let mut count = 0;
    for (slot, token) in fields.iter_mut().zip(tokens.by_ref()) {
        *slot = token;
        count += 1;
    }
    if count == 0 {
        return None;
    }
    Some(parse_counted(&fields, count, line_no))
}

/// The values of a line split into its first `count` (1 to 14) fields.
fn parse_counted<'a>(
    fields: &[&'a [u8]; 14],
    count: usize,
    line_no: usize,
) -> Result<DiskStat<'a>, ParseError> {
    let (read_index, written_index) = match count {
        7 => (4, 6),
        n if n >= 14 => (5, 9),
        n => {
            return Err(ParseError::new(
                FILE,
                Some(line_no),
                FIELDS[n],
                ParseErrorKind::Missing,
            ));
        }
    };
    let number = |i: usize, name: &'static str| field_u64(FILE, line_no, name, fields[i]);
    let small = |i: usize| -> Result<u32, ParseError> {
        let v = number(i, FIELDS[i])?;
        u32::try_from(v)
            .map_err(|_| ParseError::new(FILE, Some(line_no), FIELDS[i], ParseErrorKind::Overflow))
    };
    Ok(DiskStat {
        major: small(0)?,
        minor: small(1)?,
        name: fields[2],
        read_sectors: number(read_index, "sectors_read")?,
        written_sectors: number(written_index, "sectors_written")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::check_named_counters;
    use crate::proc::diskstats;
    use crate::testing::fixture;

    #[test]
    fn old_partition_lines_map_their_sectors() {
        let d = parse_line(b"   3    1 hda1 35486 38030 38030 38030", 1).unwrap();
        assert_eq!(
            (d.name, d.read_sectors, d.written_sectors),
            (&b"hda1"[..], 38030, 38030)
        );
        let d = parse_line(b"   3    1 hda1 1 2 3 4", 1).unwrap();
        assert_eq!((d.read_sectors, d.written_sectors), (2, 4));
    }

    #[test]
    fn a_short_line_names_the_first_missing_field() {
        let err = parse_line(b" 8 0 sda 1 2 3 4 5 6", 4).unwrap_err();
        assert_eq!(err.line, Some(4));
        assert_eq!(err.field, "sectors_written");
        assert_eq!(err.kind, ParseErrorKind::Missing);
    }

    // The captures in tests/fixtures (x86_64, aarch64, armv7; its README.md
    // says where each came from) and broken input: every error must name the
    // file, the 1-based line and the field, and nothing may panic.

    fn check_disks(input: impl AsRef<[u8]>, expected: &[Result<(&str, u64, u64), ParseError>]) {
        let input = input.as_ref();
        check_named_counters(
            input,
            diskstats::parse(input).map(|r| r.map(|d| (d.name, d.read_sectors, d.written_sectors))),
            expected,
        );
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
        check_disks(fixture("x86_64", "proc/diskstats"), &x86);

        check_disks(
            fixture("aarch64", "proc/diskstats"),
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
        check_disks(fixture("armv7", "proc/diskstats"), &armv7);
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
        // Two fields, so the first one missing is the name.
        check_disks(
            b"\x00\xff\xfe garbage\n 8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n",
            &[
                Err(disk_error(1, "name", ParseErrorKind::Missing)),
                Ok(("sda", 3, 7)),
            ],
        );
    }

    #[test]
    fn diskstats_error_message_is_the_documented_one() {
        let err = diskstats::parse(b" 8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n 8 0 sdb 1 2 3 4 5 6 7 8 9 10 11\n 8 0 sdc 1 2 x1 4 5 6 7 8 9 10 11\n")
            .nth(2)
            .unwrap()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/proc/diskstats line 3: field sectors_read: expected an unsigned integer, got 'x1'"
        );
    }
}
