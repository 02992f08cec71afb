//! One stored batch's values as one blob: its ticks (the six, see
//! `ticks.rs`) and its health values. SQLite's journal keeps it in
//! `journal.ticks`, and a change feed that replays batches in commit order
//! (remote-write reads them back) decodes it with [`decode`]: the one
//! encoding of a batch's values, so every reader gets the health values
//! too.
//!
//! Layout: the tick rows of [`crate::store::ticks::encode_rows`], then, only
//! when the batch has health values, a health section: 8 zero bytes and
//! the byte [`HEALTH_MARK`] (a presence byte no tick row can have: it has
//! bits only for the six metrics), a u16 LE count, then per value its
//! time (i64 LE), its metric's wire name (u8 length, bytes), its device
//! (u16 length, bytes) and its value (f64 LE). A blob written before the
//! health metrics is tick rows only and decodes as it always did, with no
//! health values. A metric name this build does not know is skipped when
//! decoding (a newer server's metric), never an error.
//!
//! Pure: no I/O.

use monitor::health::HealthMetric;

use crate::store::records::StoredHealth;
use crate::store::ticks::{self, METRICS, TickRow};

/// The presence byte that opens the health section.
pub(crate) const HEALTH_MARK: u8 = 0x80;

// The mark must be a presence byte no tick row has.
const _: () = assert!(HEALTH_MARK >> METRICS != 0);

/// A decoded blob.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct JournalRecord {
    pub(crate) ticks: Vec<TickRow>,
    pub(crate) health: Vec<StoredHealth>,
}

/// Encodes a stored batch's ticks and health values.
pub(crate) fn encode(rows: &[TickRow], health: &[StoredHealth]) -> Vec<u8> {
    let mut out = ticks::encode_rows(rows);
    if health.is_empty() {
        return out;
    }
    out.extend_from_slice(&[0; 8]);
    out.push(HEALTH_MARK);
    // The wire caps a batch at 64 health values; the count is a u16 so a
    // larger one cannot wrap silently.
    let n = u16::try_from(health.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_le_bytes());
    for h in health.iter().take(usize::from(n)) {
        out.extend_from_slice(&h.time_unix_ms.to_le_bytes());
        let name = h.metric.name().as_bytes();
        out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&name[..name.len().min(255)]);
        // The wire caps a device at 256 bytes.
        let device = &h.device.as_bytes()[..h.device.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(device.len() as u16).to_le_bytes());
        out.extend_from_slice(device);
        out.extend_from_slice(&h.value.to_le_bytes());
    }
    out
}

/// The inverse of [`encode`] (and of `ticks::encode_rows` alone, for rows
/// written before the health metrics); `None` if the blob is not one.
pub(crate) fn decode(blob: &[u8]) -> Option<JournalRecord> {
    let split = health_start(blob)?;
    let (tick_bytes, health_bytes) = blob.split_at(split);
    Some(JournalRecord {
        ticks: ticks::decode_rows(tick_bytes)?,
        health: match health_bytes {
            [] => Vec::new(),
            _ => decode_health(health_bytes)?,
        },
    })
}

/// Where the health section starts (the blob's length if it has none),
/// walking the tick rows; `None` if they are truncated.
fn health_start(blob: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at < blob.len() {
        let present = *blob.get(at + 8)?;
        if present == HEALTH_MARK {
            return Some(at);
        }
        at += 9 + 8 * present.count_ones() as usize;
    }
    Some(blob.len())
}

/// The health section, from its 8 zero bytes on.
fn decode_health(section: &[u8]) -> Option<Vec<StoredHealth>> {
    let (_, rest) = section.split_first_chunk::<8>()?;
    let (&HEALTH_MARK, rest) = rest.split_first()? else {
        return None;
    };
    let (n, mut rest) = rest.split_first_chunk::<2>()?;
    let n = u16::from_le_bytes(*n);
    let mut out = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let (time, r) = rest.split_first_chunk::<8>()?;
        let (&name_len, r) = r.split_first()?;
        let (name, r) = r.split_at_checked(usize::from(name_len))?;
        let (device_len, r) = r.split_first_chunk::<2>()?;
        let (device, r) = r.split_at_checked(usize::from(u16::from_le_bytes(*device_len)))?;
        let (value, r) = r.split_first_chunk::<8>()?;
        rest = r;
        let metric = std::str::from_utf8(name).ok()?.parse::<HealthMetric>();
        let Ok(metric) = metric else { continue };
        out.push(StoredHealth {
            time_unix_ms: i64::from_le_bytes(*time),
            metric,
            device: String::from_utf8(device.to_vec()).ok()?,
            value: f64::from_le_bytes(*value),
        });
    }
    rest.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(time_unix_ms: i64, values: &[(usize, f64)]) -> TickRow {
        let mut r = TickRow {
            time_unix_ms,
            values: [None; METRICS],
        };
        for &(i, v) in values {
            r.values[i] = Some(v);
        }
        r
    }

    fn health(metric: HealthMetric, device: &str, value: f64) -> StoredHealth {
        StoredHealth {
            time_unix_ms: 1_700_000_000_000,
            metric,
            device: device.into(),
            value,
        }
    }

    /// Encodes and decodes (ticks, health) and compares.
    fn check(ticks: &[TickRow], health: &[StoredHealth]) {
        let blob = encode(ticks, health);
        let want = JournalRecord {
            ticks: ticks.to_vec(),
            health: health.to_vec(),
        };
        assert_eq!(decode(&blob), Some(want));
    }

    #[test]
    fn ticks_and_health_round_trip() {
        let t = [tick(1000, &[(0, 1.5), (5, 2.0)]), tick(2000, &[])];
        check(&t, &[]);
        check(&[], &[health(HealthMetric::Load1, "", 0.42)]);
        check(
            &t,
            &[
                health(HealthMetric::TempCelsius, "", 61.3),
                health(HealthMetric::FsUsedPercent, "/media/pi/USB SSD", 90.0),
                health(HealthMetric::FsUsedPercent, "/ü", 1.0),
            ],
        );
    }

    #[test]
    fn a_blob_of_ticks_only_written_before_health_decodes_as_before() {
        let t = [tick(1000, &[(0, 1.5), (1, 3.0)])];
        let old = ticks::encode_rows(&t);
        assert_eq!(encode(&t, &[]), old);
        assert_eq!(
            decode(&old),
            Some(JournalRecord {
                ticks: t.to_vec(),
                health: Vec::new(),
            })
        );
    }

    #[test]
    fn broken_blobs_are_refused_and_unknown_metrics_skipped() {
        let t = [tick(1000, &[(0, 1.5)])];
        let good = encode(&t, &[health(HealthMetric::Load1, "", 0.5)]);
        for cut in [1, 8, 12] {
            assert_eq!(decode(&good[..good.len() - cut]), None, "cut {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing), None);
        // "load1" renamed to a name this build does not know: skipped.
        let mut renamed = good.clone();
        let at = renamed
            .windows(5)
            .position(|w| w == b"load1")
            .expect("the name is in the blob");
        renamed[at..at + 5].copy_from_slice(b"load9");
        let decoded = decode(&renamed).expect("still a blob");
        assert_eq!(decoded.ticks, t.to_vec());
        assert!(decoded.health.is_empty());
    }
}
