//! Parser for /proc/self/mounts (the same format as /proc/PID/mounts and
//! /etc/mtab): one mount per line, `SOURCE MOUNT_POINT FSTYPE OPTIONS 0 0`.
//!
//! The kernel escapes space, tab, newline and backslash in the first two
//! fields as three-digit octal (`\040`, `\011`, `\012`, `\134`), so fields
//! split on white space; [`unescape`] turns them back into the real path.
//!
//! Must never do I/O. Unlike the per-tick parsers it is called only when
//! the mount table changed, so [`unescape`] may allocate (only for a path
//! that holds an escape).

use std::borrow::Cow;

use super::{ParseError, ParseErrorKind};

const FILE: &str = "/proc/self/mounts";

/// One line of the mount table, fields still escaped as the kernel prints
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountEntry<'a> {
    /// What is mounted: a device (`/dev/mmcblk0p2`), a server path, or a
    /// pseudo name (`proc`, `tmpfs`).
    pub source: &'a str,
    /// Where, as an absolute path in the mount namespace of the reader.
    pub mount_point: &'a str,
    /// The file system type (`ext4`, `vfat`, `tmpfs`, `fuse.sshfs`…).
    pub fs_type: &'a str,
}

/// Each line as a [`MountEntry`], or an error naming the line and the
/// field that is missing or not an absolute path. Blank lines are skipped.
pub fn parse(text: &str) -> impl Iterator<Item = Result<MountEntry<'_>, ParseError>> + '_ {
    // Read only when the table changed, so std's splitting (the same
    // fields as the tick's byte loops) is cheap enough here.
    text.split('\n').enumerate().filter_map(|(index, line)| {
        let line_no = index + 1;
        let mut fields = line.split_ascii_whitespace();
        let source = fields.next()?;
        let entry = (|| {
            let missing =
                |field| ParseError::new(FILE, Some(line_no), field, ParseErrorKind::Missing);
            let mount_point = fields.next().ok_or_else(|| missing("mount_point"))?;
            let fs_type = fields.next().ok_or_else(|| missing("fs_type"))?;
            fields.next().ok_or_else(|| missing("options"))?;
            if !mount_point.starts_with('/') {
                return Err(super::malformed(
                    FILE,
                    Some(line_no),
                    "mount_point",
                    "an absolute path",
                    mount_point.as_bytes(),
                ));
            }
            Ok(MountEntry {
                source,
                mount_point,
                fs_type,
            })
        })();
        Some(entry)
    })
}

/// Undoes the kernel's octal escapes (`\040` → space). A backslash not
/// followed by three octal digits that make a byte is kept as it is; bytes
/// that are not UTF-8 are replaced (a mount point the agent reports is text).
pub fn unescape(field: &str) -> Cow<'_, str> {
    if !field.contains('\\') {
        return Cow::Borrowed(field);
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(octal) = bytes.get(i + 1..i + 4)
            && octal.iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = octal
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_is_an_entry_with_its_three_fields() {
        let text = "/dev/mmcblk0p2 / ext4 rw,noatime 0 0\n\nproc /proc proc rw 0 0\n";
        let entries: Vec<_> = parse(text).collect();
        assert_eq!(
            entries,
            [
                Ok(MountEntry {
                    source: "/dev/mmcblk0p2",
                    mount_point: "/",
                    fs_type: "ext4",
                }),
                Ok(MountEntry {
                    source: "proc",
                    mount_point: "/proc",
                    fs_type: "proc",
                }),
            ]
        );
    }

    #[test]
    fn unescape_turns_octal_escapes_back_into_bytes() {
        fn check(input: &str, expected: &str) {
            assert_eq!(unescape(input), expected, "input {input:?}");
        }
        check("/media/pi/My\\040Disk", "/media/pi/My Disk");
        check("/a\\011b\\012c\\134d", "/a\tb\nc\\d");
        check("/plain", "/plain");
        // Not an escape: kept.
        check("/a\\9", "/a\\9");
        check("/a\\04", "/a\\04");
        check("/a\\", "/a\\");
        // 0o777 is not a byte: kept.
        check("/a\\777", "/a\\777");
    }
}
