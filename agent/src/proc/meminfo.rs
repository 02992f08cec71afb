//! Parser for the few /proc/meminfo keys the agent needs to compute
//! `mem_percent` and `swap_percent`, and those computations.
//!
//! The file prints sizes in "kB", which are KiB (1024 bytes); they are
//! converted to bytes here, once. Lines for keys the agent does not use are
//! never inspected, so a new or odd key in a future kernel cannot fail the
//! parse, and the scan stops as soon as every wanted key has been seen.
//!
//! Must never do I/O and never allocate unless it returns an error.

use super::{Fields, Lines, ParseError, ParseErrorKind, field_u64, find_byte};

const FILE: &str = "/proc/meminfo";

/// The /proc/meminfo values behind `mem_percent`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meminfo {
    /// Usable RAM (`MemTotal`).
    pub mem_total_bytes: u64,
    /// RAM nobody uses at all (`MemFree`).
    pub mem_free_bytes: u64,
    /// The kernel's estimate of memory available to start new programs
    /// without swapping (`MemAvailable`, since Linux 3.14).
    pub mem_available_bytes: Option<u64>,
    /// Block-device buffers (`Buffers`).
    pub buffers_bytes: u64,
    /// Page cache, without swap cache (`Cached`).
    pub cached_bytes: u64,
    /// Reclaimable slab (`SReclaimable`, since Linux 2.6.19).
    pub s_reclaimable_bytes: Option<u64>,
    /// Swap space configured (`SwapTotal`; 0 without swap). `None` only
    /// when the line is missing, which no kernel does.
    pub swap_total_bytes: Option<u64>,
    /// Swap space unused (`SwapFree`).
    pub swap_free_bytes: Option<u64>,
}

impl Meminfo {
    /// Used memory as `free` (procps-ng 4) prints it, as a share of
    /// `MemTotal`, 0 to 100: (MemTotal − MemAvailable) / MemTotal.
    ///
    /// Without `MemAvailable` (kernels before 3.14), used is
    /// MemTotal − MemFree − Buffers − Cached − SReclaimable. When
    /// `MemAvailable` exceeds `MemTotal` (seen in containers whose meminfo is
    /// synthesised), `MemFree` stands in for it. `None` when `MemTotal` is 0.
    pub fn used_percent(&self) -> Option<f64> {
        let total = self.mem_total_bytes;
        if total == 0 {
            return None;
        }
        let used = match self.mem_available_bytes {
            Some(available) if available <= total => total - available,
            Some(_) => total.saturating_sub(self.mem_free_bytes),
            None => total
                .saturating_sub(self.mem_free_bytes)
                .saturating_sub(self.buffers_bytes)
                .saturating_sub(self.cached_bytes)
                .saturating_sub(self.s_reclaimable_bytes.unwrap_or(0)),
        };
        Some((used as f64 * 100.0 / total as f64).clamp(0.0, 100.0))
    }

    /// Used swap as a share of `SwapTotal`, 0 to 100:
    /// (SwapTotal − SwapFree) / SwapTotal. `None` when the box has no swap
    /// (`SwapTotal` 0 or missing): absent, never 0 %.
    pub fn swap_used_percent(&self) -> Option<f64> {
        let total = self.swap_total_bytes.filter(|&t| t > 0)?;
        let free = self.swap_free_bytes?;
        let used = total.saturating_sub(free);
        Some((used as f64 * 100.0 / total as f64).clamp(0.0, 100.0))
    }
}

/// The keys we read (in the slot order of `parse`), and whether a missing
/// key is an error.
const KEYS: [(&str, bool); 8] = [
    ("MemTotal", true),
    ("MemFree", true),
    ("MemAvailable", false),
    ("Buffers", true),
    ("Cached", true),
    ("SReclaimable", false),
    ("SwapTotal", false),
    ("SwapFree", false),
];

/// Reads `MemTotal`, `MemFree`, `MemAvailable`, `Buffers`, `Cached`,
/// `SReclaimable`, `SwapTotal` and `SwapFree` from /proc/meminfo.
/// `MemAvailable`, `SReclaimable` and the swap keys may be absent; the
/// others are required.
pub fn parse(text: &[u8]) -> Result<Meminfo, ParseError> {
    let mut values = [None::<u64>; KEYS.len()];
    let mut found = 0;
    for (line_no, line) in Lines::new(text) {
        // Every key we read starts with one of these: the other lines
        // (most of the file) are passed over without looking for a colon.
        if !matches!(line.first(), Some(b'M' | b'B' | b'C' | b'S')) {
            continue;
        }
        let Some(colon) = find_byte(b':', line) else {
            continue;
        };
        let slot = match &line[..colon] {
            b"MemTotal" => 0,
            b"MemFree" => 1,
            b"MemAvailable" => 2,
            b"Buffers" => 3,
            b"Cached" => 4,
            b"SReclaimable" => 5,
            b"SwapTotal" => 6,
            b"SwapFree" => 7,
            _ => continue,
        };
        if values[slot].is_none() {
            found += 1;
        }
        values[slot] = Some(parse_kib(&line[colon + 1..], line_no, KEYS[slot].0)?);
        if found == KEYS.len() {
            break;
        }
    }
    let mut out = [0u64; KEYS.len()];
    for (i, ((name, required), value)) in KEYS.iter().zip(values).enumerate() {
        match value {
            Some(v) => out[i] = v,
            None if *required => {
                return Err(ParseError::new(FILE, None, name, ParseErrorKind::NotFound));
            }
            None => {}
        }
    }
    Ok(Meminfo {
        mem_total_bytes: out[0],
        mem_free_bytes: out[1],
        mem_available_bytes: values[2],
        buffers_bytes: out[3],
        cached_bytes: out[4],
        s_reclaimable_bytes: values[5],
        swap_total_bytes: values[6],
        swap_free_bytes: values[7],
    })
}

/// `"   12345 kB"` → 12345 × 1024 bytes.
fn parse_kib(rest: &[u8], line: usize, field: &'static str) -> Result<u64, ParseError> {
    let mut tokens = Fields::new(rest);
    let Some(number) = tokens.next() else {
        return Err(ParseError::new(
            FILE,
            Some(line),
            field,
            ParseErrorKind::Missing,
        ));
    };
    let kib = field_u64(FILE, line, field, number)?;
    match tokens.next() {
        Some(b"kB") => {}
        Some(other) => {
            return Err(ParseError::new(
                FILE,
                Some(line),
                field,
                ParseErrorKind::UnexpectedUnit {
                    got: String::from_utf8_lossy(other).chars().take(16).collect(),
                },
            ));
        }
        None => {
            return Err(ParseError::new(
                FILE,
                Some(line),
                field,
                ParseErrorKind::UnexpectedUnit { got: String::new() },
            ));
        }
    }
    kib.checked_mul(1024)
        .ok_or_else(|| ParseError::new(FILE, Some(line), field, ParseErrorKind::Overflow))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::meminfo;
    use crate::testing::fixture;

    fn mem(total: u64, free: u64, available: Option<u64>) -> Meminfo {
        Meminfo {
            mem_total_bytes: total,
            mem_free_bytes: free,
            mem_available_bytes: available,
            buffers_bytes: 10,
            cached_bytes: 20,
            s_reclaimable_bytes: Some(5),
            swap_total_bytes: Some(0),
            swap_free_bytes: Some(0),
        }
    }

    #[test]
    fn used_percent_follows_the_three_rules() {
        fn check(m: Meminfo, expected: Option<f64>) {
            assert_eq!(m.used_percent(), expected, "{m:?}");
        }
        check(mem(200, 50, Some(150)), Some(25.0));
        // MemAvailable above MemTotal: MemFree stands in.
        check(mem(200, 50, Some(300)), Some(75.0));
        // MemAvailable equal to MemTotal is still trusted: nothing used.
        check(mem(200, 50, Some(200)), Some(0.0));
        check(mem(200, 50, Some(201)), Some(75.0));
        // No MemAvailable: 200 − 50 − 10 − 20 − 5 = 115.
        check(mem(200, 50, None), Some(57.5));
        check(mem(0, 0, Some(0)), None);
    }

    #[test]
    fn swap_is_absent_without_swap_and_a_share_with_it() {
        fn check(total: Option<u64>, free: Option<u64>, expected: Option<f64>) {
            let m = Meminfo {
                swap_total_bytes: total,
                swap_free_bytes: free,
                ..mem(200, 50, Some(150))
            };
            assert_eq!(m.swap_used_percent(), expected, "{m:?}");
        }
        check(Some(0), Some(0), None);
        check(None, None, None);
        check(Some(400), None, None);
        check(Some(400), Some(300), Some(25.0));
        check(Some(400), Some(400), Some(0.0));
        // Free above total (never printed, but never a negative share).
        check(Some(400), Some(500), Some(0.0));
    }

    // The captures in tests/fixtures (x86_64, aarch64, armv7; its README.md
    // says where each came from) and broken input: every error must name the
    // file, the 1-based line and the field, and nothing may panic.

    fn kib(n: u64) -> u64 {
        n * 1024
    }

    fn check_mem(input: &str, expected: Result<Meminfo, ParseError>) {
        assert_eq!(
            meminfo::parse(input.as_bytes()),
            expected,
            "input:\n{input}"
        );
    }

    #[test]
    fn meminfo_fixtures() {
        check_mem(
            &fixture("x86_64", "proc/meminfo"),
            Ok(Meminfo {
                mem_total_bytes: kib(24683656),
                mem_free_bytes: kib(21855224),
                mem_available_bytes: Some(kib(24172528)),
                buffers_bytes: kib(16916),
                cached_bytes: kib(2462788),
                s_reclaimable_bytes: Some(kib(125008)),
                swap_total_bytes: Some(0),
                swap_free_bytes: Some(0),
            }),
        );
        check_mem(
            &fixture("aarch64", "proc/meminfo"),
            Ok(Meminfo {
                mem_total_bytes: kib(3885396),
                mem_free_bytes: kib(2612408),
                mem_available_bytes: Some(kib(3338132)),
                buffers_bytes: kib(61920),
                cached_bytes: kib(739096),
                s_reclaimable_bytes: Some(kib(53116)),
                swap_total_bytes: Some(kib(204796)),
                swap_free_bytes: Some(kib(204796)),
            }),
        );
        check_mem(
            &fixture("armv7", "proc/meminfo"),
            Ok(Meminfo {
                mem_total_bytes: kib(245724),
                mem_free_bytes: kib(146968),
                mem_available_bytes: Some(kib(160988)),
                buffers_bytes: kib(20764),
                cached_bytes: kib(38232),
                s_reclaimable_bytes: Some(kib(9084)),
                swap_total_bytes: Some(kib(102396)),
                swap_free_bytes: Some(kib(61948)),
            }),
        );
    }

    #[test]
    fn mem_percent_on_fixtures() {
        fn check(arch: &str, expected: f64) {
            let m = meminfo::parse(fixture(arch, "proc/meminfo").as_bytes()).unwrap();
            let got = m.used_percent().unwrap();
            assert!((got - expected).abs() < 1e-9, "{arch}: {got} != {expected}");
        }
        check("x86_64", (24683656.0 - 24172528.0) / 24683656.0 * 100.0);
        check("aarch64", (3885396.0 - 3338132.0) / 3885396.0 * 100.0);
        // The Pi Zero: 245724 − 160988 = 84736 KiB used, 34.48 %.
        check("armv7", (245724.0 - 160988.0) / 245724.0 * 100.0);
    }

    #[test]
    fn meminfo_old_kernel_without_memavailable() {
        // Linux 3.2-style: no MemAvailable; SReclaimable present.
        let text = "MemTotal:        1000 kB\nMemFree:          100 kB\nBuffers:          50 kB\nCached:          300 kB\nSwapCached:        0 kB\nSReclaimable:     50 kB\n";
        let m = meminfo::parse(text.as_bytes()).unwrap();
        assert_eq!(m.mem_available_bytes, None);
        assert_eq!(m.used_percent(), Some(50.0));
    }

    #[test]
    fn meminfo_unused_keys_are_never_inspected() {
        let text = "MemTotal: 100 kB\nGarbage line\nHugePages_Total: x\nMemFree: 10 kB\nMemAvailable: 60 kB\nBuffers: 0 kB\nCached: 0 kB\n";
        assert_eq!(
            meminfo::parse(text.as_bytes()).unwrap().used_percent(),
            Some(40.0)
        );
    }

    #[test]
    fn meminfo_scan_stops_once_every_key_is_seen() {
        let all = "MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable: 60 kB\nBuffers: 1 kB\nCached: 2 kB\nSReclaimable: 3 kB\nSwapTotal: 50 kB\nSwapFree: 40 kB\n";
        let expected = Meminfo {
            mem_total_bytes: kib(100),
            mem_free_bytes: kib(10),
            mem_available_bytes: Some(kib(60)),
            buffers_bytes: kib(1),
            cached_bytes: kib(2),
            s_reclaimable_bytes: Some(kib(3)),
            swap_total_bytes: Some(kib(50)),
            swap_free_bytes: Some(kib(40)),
        };
        check_mem(all, Ok(expected));
        // Once all eight are seen, later lines are never read: a repeated key
        // does not win and a broken one does not fail the parse.
        check_mem(&format!("{all}MemTotal: 5 kB\n"), Ok(expected));
        check_mem(&format!("{all}MemAvailable: x kB\n"), Ok(expected));
        // Before that, a repeated key is read again and the later line wins
        // (the kernel prints each key once; this pins what the scan does).
        check_mem(
            "MemTotal: 100 kB\nMemTotal: 200 kB\nMemFree: 10 kB\nMemAvailable: 60 kB\nBuffers: 1 kB\nCached: 2 kB\nSReclaimable: 3 kB\nSwapTotal: 50 kB\nSwapFree: 40 kB\nMemFree: 7 kB\n",
            Ok(Meminfo {
                mem_total_bytes: kib(200),
                ..expected
            }),
        );
    }

    fn mem_error(line: Option<usize>, field: &'static str, kind: ParseErrorKind) -> ParseError {
        ParseError {
            file: "/proc/meminfo",
            line,
            field,
            kind,
        }
    }

    #[test]
    fn meminfo_broken_inputs() {
        check_mem(
            "",
            Err(mem_error(None, "MemTotal", ParseErrorKind::NotFound)),
        );
        check_mem(
            "MemTotal: 100 kB\nMemFree: 5 kB\nCached: 1 kB\n",
            Err(mem_error(None, "Buffers", ParseErrorKind::NotFound)),
        );
        check_mem(
            "MemTotal: 1O0 kB\n",
            Err(mem_error(
                Some(1),
                "MemTotal",
                ParseErrorKind::NotAnUnsignedInteger { got: "1O0".into() },
            )),
        );
        check_mem(
            "MemTotal: 100 kB\nMemFree:\n",
            Err(mem_error(Some(2), "MemFree", ParseErrorKind::Missing)),
        );
        check_mem(
            "MemTotal: 100 MB\n",
            Err(mem_error(
                Some(1),
                "MemTotal",
                ParseErrorKind::UnexpectedUnit { got: "MB".into() },
            )),
        );
        check_mem(
            "MemTotal: 18446744073709551615 kB\n",
            Err(mem_error(Some(1), "MemTotal", ParseErrorKind::Overflow)),
        );
        let lossy =
            String::from_utf8_lossy(b"MemTotal: 100 kB\n\xc3\x28\x00\x01\nMemFree: \xff kB\n");
        check_mem(
            &lossy,
            Err(mem_error(
                Some(3),
                "MemFree",
                ParseErrorKind::NotAnUnsignedInteger {
                    got: "\u{fffd}".into(),
                },
            )),
        );
    }
}
