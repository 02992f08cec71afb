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
    /// Kernel name, e.g. `mmcblk0`, `mmcblk0p2`, `sda`, `loop0`.
    pub name: &'a str,
    /// Sectors read since boot, in 512-byte units (wraps at 2^32 on 32-bit
    /// kernels).
    pub read_sectors: u64,
    /// Sectors written since boot, in 512-byte units (wraps at 2^32 on
    /// 32-bit kernels).
    pub written_sectors: u64,
}

/// Parses every non-blank line of /proc/diskstats; line numbers in errors
/// are 1-based and count blank lines too.
pub fn parse(text: &str) -> impl Iterator<Item = Result<DiskStat<'_>, ParseError>> + '_ {
    Lines::new(text)
        .filter(|(_, line)| !line.trim_ascii().is_empty())
        .map(|(line_no, line)| parse_line(line, line_no))
}

/// Parses one line (`line_no` is 1-based, for errors).
pub fn parse_line(line: &str, line_no: usize) -> Result<DiskStat<'_>, ParseError> {
    // Fields past the fourteenth are never scanned: only their presence
    // or absence matters, and 14 already says "modern line".
    let mut tokens = Fields::new(line);
    let mut fields = [""; 14];
    let mut count = 0;
    for (slot, token) in fields.iter_mut().zip(tokens.by_ref()) {
        *slot = token;
        count += 1;
    }
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

    #[test]
    fn old_partition_lines_map_their_sectors() {
        let d = parse_line("   3    1 hda1 35486 38030 38030 38030", 1).unwrap();
        assert_eq!(
            (d.name, d.read_sectors, d.written_sectors),
            ("hda1", 38030, 38030)
        );
        let d = parse_line("   3    1 hda1 1 2 3 4", 1).unwrap();
        assert_eq!((d.read_sectors, d.written_sectors), (2, 4));
    }

    #[test]
    fn a_short_line_names_the_first_missing_field() {
        let err = parse_line(" 8 0 sda 1 2 3 4 5 6", 4).unwrap_err();
        assert_eq!(err.line, Some(4));
        assert_eq!(err.field, "sectors_written");
        assert_eq!(err.kind, ParseErrorKind::Missing);
    }
}
