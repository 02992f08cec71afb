//! Gives back, once the agent is in steady state, the resident pages of
//! program code and read-only data that only start-up touched (argument
//! parsing, enrolment, the first TLS handshake with ring's tables), in the
//! agent's own binary and in the shared libraries it was started with.
//!
//! Why: the kernel maps file pages by "fault-around": one touched page of
//! code makes it map every cached page of the 64 KiB window around it, and
//! `MADV_RANDOM` does not turn that off (measured on 6.18: 16 touches of a
//! cached file mapping made 1,024 KiB resident with or without it). So
//! start-up leaves about three times the code the steady-state tick runs
//! mapped for the life of the process. `MADV_DONTNEED` on those mappings
//! drops their page-table entries; the pages the tick runs fault back in at
//! once (with their windows) and the rest stay out. `bench/run.sh`'s
//! footprint and the minor-fault counter show what comes back and that it
//! then stays flat.
//!
//! The invariant that makes this safe: only a private file mapping without
//! write permission whose `Anonymous:` count in `/proc/self/smaps` is 0 is
//! released. Such a mapping holds nothing but clean page-cache pages equal
//! to the file, which the kernel itself may reclaim at any moment under
//! memory pressure; dropping them changes nothing but when they are read
//! back. A mapping with any anonymous page (the relocated RELRO data that
//! the dynamic linker wrote and then made read-only, a debugger's
//! breakpoint) would lose what was written, so it is never touched, and
//! neither is anything writable. Only mappings already there when `main`
//! began (the binary and the libraries loaded before it: never unmapped,
//! since they cannot be `dlclose`d) and unchanged since are released, so a
//! library `dlopen`ed later on another thread (glibc's NSS modules during
//! name resolution) can never be caught half-relocated.
//!
//! Must never release a page the agent keeps using in its steady state
//! (that would only hide it: it would fault back every tick), never run
//! before start-up is over, and never fail the agent: an unreadable smaps
//! or a refused `madvise` only leaves the pages where they are.

use std::fmt;
use std::io::BufRead;
use std::ptr::NonNull;

/// The read buffer for /proc/self/smaps (a few entries at a time).
const SMAPS_BUFFER_BYTES: usize = 4096;

/// One line of `/proc/self/maps` (or the header line of an smaps entry):
/// the fields that identify a mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// `r-xp` and the like.
    pub perms: String,
    pub offset: u64,
    pub inode: u64,
}

impl Mapping {
    /// A private file mapping nobody can write through: the only kind this
    /// module may release (with no anonymous page in it, checked apart).
    fn is_clean_candidate(&self) -> bool {
        self.inode != 0 && self.perms.ends_with('p') && !self.perms.contains('w')
    }

    fn len_bytes(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
}

/// Parses a maps/smaps header line: `start-end perms offset dev inode [path]`.
/// `None` for the smaps field lines (`Rss:  12 kB`) and anything malformed.
fn parse_header(line: &str) -> Option<Mapping> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    if perms.len() != 4 {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms: perms.to_owned(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode: inode.parse().ok()?,
    })
}

/// The mappings of a `/proc/PID/maps` text, in order; malformed lines are
/// skipped (a mapping missed is only a mapping not released).
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_header).collect()
}

/// One smaps entry: the mapping and its resident and anonymous sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resident {
    pub mapping: Mapping,
    pub rss_kib: u64,
    /// `None` when the entry had no `Anonymous:` line: then it is not
    /// known to be clean and is never released.
    pub anonymous_kib: Option<u64>,
}

/// The entries of a `/proc/PID/smaps` text, given line by line (the agent
/// reads the file through a small buffer: taking it whole would grow the
/// heap by the file's 30 KiB for good).
pub fn parse_smaps<L: AsRef<str>>(lines: impl IntoIterator<Item = L>) -> Vec<Resident> {
    let mut out: Vec<Resident> = Vec::new();
    for line in lines {
        let line = line.as_ref();
        if let Some(mapping) = parse_header(line) {
            out.push(Resident {
                mapping,
                rss_kib: 0,
                anonymous_kib: None,
            });
            continue;
        }
        let Some(last) = out.last_mut() else { continue };
        let kib = |rest: &str| rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok();
        if let Some(rest) = line.strip_prefix("Rss:") {
            last.rss_kib = kib(rest).unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Anonymous:") {
            last.anonymous_kib = kib(rest);
        }
    }
    out
}

/// The mappings of `now` (smaps) that may be released: present unchanged
/// in `at_start` (maps read when `main` began), clean candidates, and with
/// no anonymous page.
pub fn releasable<'a>(at_start: &[Mapping], now: &'a [Resident]) -> Vec<&'a Resident> {
    now.iter()
        .filter(|r| {
            r.mapping.is_clean_candidate()
                && r.anonymous_kib == Some(0)
                && at_start.contains(&r.mapping)
        })
        .collect()
}

/// What one release gave back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub mappings: usize,
    /// Resident before the release (some of it faults straight back).
    pub resident_kib: u64,
    /// `madvise` calls the kernel refused (those pages stay).
    pub refused: usize,
}

impl fmt::Display for Released {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "released {} KiB of start-up code and read-only data pages in {} mappings",
            self.resident_kib, self.mappings
        )?;
        if self.refused > 0 {
            write!(f, " ({} refused)", self.refused)?;
        }
        Ok(())
    }
}

/// The process's mappings as `main` begins: taken before any other thread
/// exists, so every library in it is fully loaded and relocated.
#[derive(Debug, Default, Clone)]
pub struct StartupMappings(Vec<Mapping>);

impl StartupMappings {
    /// Reads `/proc/self/maps`; empty (nothing will be released) when it
    /// cannot be read.
    pub fn snapshot() -> StartupMappings {
        match std::fs::read_to_string("/proc/self/maps") {
            Ok(text) => StartupMappings(parse_maps(&text)),
            Err(e) => {
                log::debug!("/proc/self/maps: {e}: start-up pages stay resident");
                StartupMappings::default()
            }
        }
    }

    /// Releases the clean start-up mappings (see the module doc). Call it
    /// once start-up is over; it never fails, a mapping it cannot check or
    /// release is left alone.
    pub fn release(&self) -> Released {
        let file = match std::fs::File::open("/proc/self/smaps") {
            Ok(f) => f,
            Err(e) => {
                log::debug!("/proc/self/smaps: {e}: start-up pages stay resident");
                return Released::default();
            }
        };
        // A line that cannot be read ends the list: its mapping (and those
        // after it) are only not released.
        let lines = std::io::BufReader::with_capacity(SMAPS_BUFFER_BYTES, file)
            .lines()
            .map_while(Result::ok);
        let now = parse_smaps(lines);
        let mut released = Released::default();
        for r in releasable(&self.0, &now) {
            if dont_need(&r.mapping) {
                released.mappings += 1;
                released.resident_kib += r.rss_kib;
            } else {
                released.refused += 1;
            }
        }
        released
    }
}

/// `madvise(MADV_DONTNEED)` over one mapping; false if the kernel refused.
#[allow(unsafe_code)]
fn dont_need(m: &Mapping) -> bool {
    let (Ok(start), Ok(len)) = (usize::try_from(m.start), usize::try_from(m.len_bytes())) else {
        return false;
    };
    let Some(addr) = NonNull::new(start as *mut std::ffi::c_void) else {
        return false;
    };
    // SAFETY: `m` is a private, non-writable file mapping of this process
    // with no anonymous page (checked in smaps just now), present unchanged
    // since `main` began, when it was fully loaded; nothing unmaps the
    // binary or its start-up libraries. Its pages are therefore clean
    // copies of the file: MADV_DONTNEED drops their page-table entries and
    // the next access reads the same bytes back from the page cache, as
    // after the kernel's own reclaim. No Rust reference is invalidated.
    let done =
        unsafe { nix::sys::mman::madvise(addr, len, nix::sys::mman::MmapAdvise::MADV_DONTNEED) };
    done.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verbatim extract of the release agent's /proc/PID/smaps on this
    /// x86_64 box (Debian 12, Linux 6.18, 2026-11-30), plain-text agent
    /// after 30 s at 1 s: the binary's read-only data, text and RELRO
    /// (read-only but relocated: anonymous), its data, the heap, libc's
    /// text, and the vDSO. Fields the parser ignores are cut.
    const SMAPS: &str = "\
5613f1a00000-5613f1a5f000 r--p 00000000 fe:00 1183512                    /tmp/rss-exp/bin/agent-base
Size:                380 kB
Rss:                 320 kB
Pss:                  51 kB
Anonymous:             0 kB
5613f1a5f000-5613f1c0f000 r-xp 0005f000 fe:00 1183512                    /tmp/rss-exp/bin/agent-base
Size:               1728 kB
Rss:                1600 kB
Anonymous:             0 kB
5613f1c0f000-5613f1c21000 r--p 0020f000 fe:00 1183512                    /tmp/rss-exp/bin/agent-base
Size:                 72 kB
Rss:                  72 kB
Anonymous:            72 kB
5613f1c21000-5613f1c23000 rw-p 00221000 fe:00 1183512                    /tmp/rss-exp/bin/agent-base
Size:                  8 kB
Rss:                   8 kB
Anonymous:             8 kB
5613f2a1e000-5613f2a5e000 rw-p 00000000 00:00 0                          [heap]
Size:                256 kB
Rss:                 116 kB
Anonymous:           116 kB
7f0c2b628000-7f0c2b77d000 r-xp 00028000 fe:00 1053826                    /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1364 kB
Rss:                 976 kB
Anonymous:             0 kB
7ffd6a7f2000-7ffd6a7f4000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
Rss:                   4 kB
Anonymous:             0 kB
";

    fn mapping(start: u64, end: u64, perms: &str, offset: u64, inode: u64) -> Mapping {
        Mapping {
            start,
            end,
            perms: perms.to_owned(),
            offset,
            inode,
        }
    }

    fn check(at_start: &[Mapping], smaps: &str, expected_starts: &[u64]) {
        let now = parse_smaps(smaps.lines());
        let got: Vec<u64> = releasable(at_start, &now)
            .iter()
            .map(|r| r.mapping.start)
            .collect();
        assert_eq!(got, expected_starts);
    }

    #[test]
    fn smaps_entries_carry_their_rss_and_anonymous_sizes() {
        let now = parse_smaps(SMAPS.lines());
        assert_eq!(now.len(), 7);
        assert_eq!(
            now[1],
            Resident {
                mapping: mapping(0x5613f1a5f000, 0x5613f1c0f000, "r-xp", 0x5f000, 1183512),
                rss_kib: 1600,
                anonymous_kib: Some(0),
            }
        );
        assert_eq!(now[2].anonymous_kib, Some(72));
        assert_eq!(now[4].mapping.inode, 0);
    }

    #[test]
    fn only_clean_read_only_file_mappings_from_start_up_are_released() {
        let at_start: Vec<Mapping> = parse_smaps(SMAPS.lines())
            .into_iter()
            .map(|r| r.mapping)
            .collect();
        // The binary's read-only data and text, libc's text: not the RELRO
        // (anonymous), the data and heap (writable), nor the vDSO (no file).
        check(
            &at_start,
            SMAPS,
            &[0x5613f1a00000, 0x5613f1a5f000, 0x7f0c2b628000],
        );
    }

    #[test]
    fn a_mapping_not_there_at_start_or_changed_since_is_left_alone() {
        let mut at_start: Vec<Mapping> = parse_smaps(SMAPS.lines())
            .into_iter()
            .map(|r| r.mapping)
            .collect();
        // libc's text was not mapped yet when main began (a library
        // dlopened later), and the binary's text has another extent.
        at_start.retain(|m| m.inode != 1053826);
        at_start[1].end += 0x1000;
        check(&at_start, SMAPS, &[0x5613f1a00000]);
    }

    #[test]
    fn an_entry_without_an_anonymous_count_is_not_known_clean() {
        let smaps = "\
5613f1a00000-5613f1a5f000 r--p 00000000 fe:00 1183512   /x
Rss:                 320 kB
";
        let at_start = parse_maps(smaps);
        check(&at_start, smaps, &[]);
    }

    #[test]
    fn maps_lines_parse_and_malformed_ones_are_skipped() {
        let maps = "\
5613f1a00000-5613f1a5f000 r--p 00000000 fe:00 1183512                    /tmp/a b/agent
garbage
7ffd6a7f2000-7ffd6a7f4000 r-xp 00000000 00:00 0                          [vdso]
zz-10 r--p 0 fe:00 1
";
        assert_eq!(
            parse_maps(maps),
            vec![
                mapping(0x5613f1a00000, 0x5613f1a5f000, "r--p", 0, 1183512),
                mapping(0x7ffd6a7f2000, 0x7ffd6a7f4000, "r-xp", 0, 0),
            ]
        );
    }

    /// The real thing on this test process: its own binary's text is
    /// released and the code goes on running from pages read back.
    #[test]
    fn releasing_this_process_start_up_pages_keeps_it_running() {
        let at_start = StartupMappings::snapshot();
        assert!(!at_start.0.is_empty(), "/proc/self/maps read nothing");
        let released = at_start.release();
        assert!(released.mappings >= 1, "{released}");
        assert_eq!(released.refused, 0, "{released}");
        // Code and read-only data come back from the file as they run
        // (reading and parsing smaps again, formatting, allocating), but
        // far from all of what was resident before.
        let again = parse_smaps(std::fs::read_to_string("/proc/self/smaps").unwrap().lines());
        let back_kib: u64 = releasable(&at_start.0, &again)
            .iter()
            .map(|r| r.rss_kib)
            .sum();
        assert!(
            back_kib < released.resident_kib,
            "{back_kib} KiB resident again after {released}"
        );
    }
}
