//! How the store's values are represented in a database, whichever the
//! backend: metric ids and the column of each metric, u64s in signed 64-bit
//! integers, argv as one byte string. Both backends' tables build on it.
//!
//! Metric ids, metric columns and outcome names are part of every backend's
//! format: never renumber or rename them; add new ones instead. Nothing here
//! may panic on what it reads back: an unknown id or a bad blob is `None`,
//! which the caller turns into an error naming the table.

use monitor::metric::Metric;

use crate::store::ticks::METRICS;

/// The column of `ticks` holding each metric, indexed by metric id.
pub(crate) const METRIC_COLUMNS: [&str; METRICS] = [
    "cpu_percent",
    "mem_percent",
    "disk_read_kbps",
    "disk_write_kbps",
    "net_in_kbps",
    "net_out_kbps",
];

/// The id of a metric in `the tables`. Part of every backend's format.
pub(crate) const fn metric_id(m: Metric) -> i64 {
    match m {
        Metric::CpuPercent => 0,
        Metric::MemPercent => 1,
        Metric::DiskReadKbps => 2,
        Metric::DiskWriteKbps => 3,
        Metric::NetInKbps => 4,
        Metric::NetOutKbps => 5,
    }
}

/// The metric stored under `id`, if any.
pub(crate) fn metric_from_id(id: i64) -> Option<Metric> {
    Metric::ALL.into_iter().find(|&m| metric_id(m) == id)
}

/// u64 values (boot ids, counters) are stored as the i64 with the same
/// bits: SQLite and PostgreSQL integers are signed 64-bit.
pub(crate) const fn u64_to_sql(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// The inverse of [`u64_to_sql`].
pub(crate) const fn u64_from_sql(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// argv as stored in `commands.argv`: each argument as a little-endian u32
/// byte length followed by its UTF-8 bytes. Exact for any string (an
/// operator's argument may contain anything, even NUL).
pub(crate) fn encode_argv(argv: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(argv.iter().map(|a| a.len() + 4).sum());
    for a in argv {
        // An argument longer than 4 GiB never reaches the store: requests
        // are a few KiB. Saturating keeps this total anyway.
        let len = u32::try_from(a.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&a.as_bytes()[..len as usize]);
    }
    out
}

/// The inverse of [`encode_argv`]; `None` if the blob is not one.
pub(crate) fn decode_argv(mut blob: &[u8]) -> Option<Vec<String>> {
    let mut argv = Vec::new();
    while !blob.is_empty() {
        let (len, rest) = blob.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return None;
        }
        let (arg, rest) = rest.split_at(len);
        argv.push(String::from_utf8(arg.to_vec()).ok()?);
        blob = rest;
    }
    Some(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_ids_are_stable_and_distinct() {
        let ids: Vec<i64> = Metric::ALL.iter().map(|&m| metric_id(m)).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4, 5]);
        for m in Metric::ALL {
            assert_eq!(metric_from_id(metric_id(m)), Some(m));
        }
        assert_eq!(metric_from_id(6), None);
    }

    #[test]
    fn u64_round_trips_through_i64() {
        for v in [0, 1, u64::MAX, 1 << 63, 0xdead_beef_cafe_f00d] {
            assert_eq!(u64_from_sql(u64_to_sql(v)), v);
        }
    }

    fn check_argv(argv: &[&str]) {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        assert_eq!(decode_argv(&encode_argv(&argv)), Some(argv));
    }

    #[test]
    fn argv_round_trips() {
        check_argv(&[]);
        check_argv(&["uptime"]);
        check_argv(&["journal", "-u", "ssh service", "", "a\0b", "é"]);
    }

    #[test]
    fn bad_argv_blobs_are_refused() {
        assert_eq!(decode_argv(&[1, 0, 0]), None);
        assert_eq!(decode_argv(&[5, 0, 0, 0, b'a']), None);
        assert_eq!(decode_argv(&[1, 0, 0, 0, 0xff]), None);
    }
}
