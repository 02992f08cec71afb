//! The optional on-disk spool: keeps unacknowledged batches across an agent
//! restart (`--spool PATH`).
//!
//! SD-card friendly by construction: the file is append-only while batches
//! wait, emptied with one `ftruncate` when the server has acknowledged
//! everything, and rewritten (to a temporary file, then renamed) only when
//! it outgrows its cap. It is fsynced at most once a minute and at
//! shutdown, never per batch: an agent restart or crash loses nothing, a
//! power cut may lose the last minute.
//!
//! Records are `[len u32][crc32 u32][payload]`, little-endian, after an
//! 8-byte magic. A record that does not check out ends the readable part:
//! the file is cut there (a torn last write after a crash) and the agent
//! goes on. A file that is not a spool at all is renamed aside, never
//! deleted, never a panic. Batches already acknowledged may come back after
//! a crash; the server's de-duplication makes that harmless.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;

use monitor::batch::{HealthValue, MetricValues, TickBatch};
use monitor::health::HealthMetric;
use monitor::metric::Metric;
use monitor::wire::{MAX_DEVICE_BYTES, MAX_HEALTH_SAMPLES_PER_BATCH};

const MAGIC: &[u8; 8] = b"MONSPL1\n";
/// Largest payload a record may claim: the six and the ids take at most 73
/// bytes, the health section at most 1 + 64 × (1 + 2 + 256 + 8).
const MAX_PAYLOAD: usize = 32 * 1024;
/// How often appended data is forced to the device.
pub const SYNC_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct SpoolError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spool {}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for SpoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// What opening the spool found.
#[derive(Debug, Default)]
pub struct Recovered {
    pub batches: Vec<TickBatch>,
    /// Bytes cut off a torn or corrupt tail.
    pub truncated_bytes: u64,
    /// Where an unreadable file was moved, if it was.
    pub moved_aside: Option<PathBuf>,
}

pub struct Spool {
    path: PathBuf,
    file: File,
    /// Current length of the file.
    len: u64,
    max_bytes: u64,
    last_sync: Instant,
    /// Appended since the last fsync.
    dirty: bool,
    /// Encoding buffer, reused.
    scratch: Vec<u8>,
}

/// CRC-32 (IEEE), bitwise: a spool record is under 100 bytes and written
/// once per tick, so a table would buy nothing.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Makes `out` the record of `batch` (its former content is dropped).
fn encode(batch: &TickBatch, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&batch.boot_id.to_le_bytes());
    out.extend_from_slice(&batch.seq.to_le_bytes());
    out.extend_from_slice(&batch.time_unix_ms.to_le_bytes());
    let mut present = 0u8;
    for (i, m) in Metric::ALL.iter().enumerate() {
        if batch.values.get(*m).is_some() {
            present |= 1 << i;
        }
    }
    out.push(present);
    for (_, v) in batch.values.iter() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    // The health section (issue 14), only when there is one, so a record
    // without health values reads the same as before it existed: a count,
    // then per value the metric's index, the device's length (u16) and
    // bytes, and the value. Agents before it cannot read a record that has
    // one (they stop reading the spool there).
    let health = &batch.health[..batch.health.len().min(MAX_HEALTH_SAMPLES_PER_BATCH)];
    if !health.is_empty() {
        out.push(health.len() as u8);
        for h in health {
            let device = &h.device.as_bytes()[..h.device.len().min(MAX_DEVICE_BYTES)];
            out.push(h.metric as u8);
            out.extend_from_slice(&(device.len() as u16).to_le_bytes());
            out.extend_from_slice(device);
            out.extend_from_slice(&h.value.to_le_bytes());
        }
    }
    let payload_len = (out.len() - 8) as u32;
    let crc = crc32(&out[8..]);
    out[..4].copy_from_slice(&payload_len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn le_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

fn decode(payload: &[u8]) -> Option<TickBatch> {
    let boot_id = le_u64(payload)?;
    let seq = le_u64(payload.get(8..)?)?;
    let time_unix_ms = le_u64(payload.get(16..)?)? as i64;
    let present = *payload.get(24)?;
    let mut values = MetricValues::default();
    let mut rest = payload.get(25..)?;
    for (i, m) in Metric::ALL.iter().enumerate() {
        if present & (1 << i) != 0 {
            let v = f64::from_bits(le_u64(rest)?);
            values.set(*m, v);
            rest = &rest[8..];
        }
    }
    if present >> Metric::ALL.len() != 0 {
        return None;
    }
    Some(TickBatch {
        boot_id,
        seq,
        time_unix_ms,
        values,
        health: decode_health(rest)?,
    })
}

/// The health section: absent (nothing left) or exactly one well-formed
/// section.
fn decode_health(mut rest: &[u8]) -> Option<Box<[HealthValue]>> {
    let Some((&count, tail)) = rest.split_first() else {
        return Some(Box::default());
    };
    rest = tail;
    if count == 0 || usize::from(count) > MAX_HEALTH_SAMPLES_PER_BATCH {
        return None;
    }
    let mut health = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let metric = *HealthMetric::ALL.get(usize::from(*rest.first()?))?;
        let len = usize::from(u16::from_le_bytes(rest.get(1..3)?.try_into().ok()?));
        if len > MAX_DEVICE_BYTES {
            return None;
        }
        let device = std::str::from_utf8(rest.get(3..3 + len)?).ok()?;
        let value = f64::from_bits(le_u64(rest.get(3 + len..)?)?);
        health.push(HealthValue {
            metric,
            device: Arc::from(device),
            value,
        });
        rest = &rest[3 + len + 8..];
    }
    rest.is_empty().then(|| health.into_boxed_slice())
}

/// Parses a whole spool file: the batches, and the length of the good
/// prefix. `None` if it does not start with the magic.
pub fn parse(data: &[u8]) -> Option<(Vec<TickBatch>, usize)> {
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        return None;
    }
    let mut pos = MAGIC.len();
    let mut batches = Vec::new();
    while let Some(header) = data.get(pos..pos + 8) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_PAYLOAD {
            break;
        }
        let Some(payload) = data.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if crc32(payload) != crc {
            break;
        }
        let Some(batch) = decode(payload) else {
            break;
        };
        batches.push(batch);
        pos += 8 + len;
    }
    Some((batches, pos))
}

impl Spool {
    /// Opens (or creates) the spool and returns what it held.
    pub fn open(path: &Path, max_bytes: u64) -> Result<(Spool, Recovered), SpoolError> {
        let err = |source| SpoolError {
            path: path.to_path_buf(),
            source,
        };
        let mut recovered = Recovered::default();
        let mut data = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut data).map_err(err)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let mut keep = 0u64;
        if !data.is_empty() {
            match parse(&data) {
                Some((batches, good)) => {
                    recovered.batches = batches;
                    recovered.truncated_bytes = (data.len() - good) as u64;
                    keep = good as u64;
                }
                None => {
                    let aside = path.with_extension("corrupt");
                    std::fs::rename(path, &aside).map_err(err)?;
                    recovered.moved_aside = Some(aside);
                }
            }
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(err)?;
        if keep == 0 {
            file.set_len(0).map_err(err)?;
            file.write_all(MAGIC).map_err(err)?;
            keep = MAGIC.len() as u64;
        } else {
            file.set_len(keep).map_err(err)?;
        }
        file.seek(SeekFrom::Start(keep)).map_err(err)?;
        Ok((
            Spool {
                path: path.to_path_buf(),
                file,
                len: keep,
                max_bytes: max_bytes.max(4096),
                last_sync: Instant::now(),
                dirty: false,
                scratch: Vec::with_capacity(128),
            },
            recovered,
        ))
    }

    fn err(&self, source: io::Error) -> SpoolError {
        SpoolError {
            path: self.path.clone(),
            source,
        }
    }

    pub fn len_bytes(&self) -> u64 {
        self.len
    }

    /// Appends one batch. When the file would outgrow its cap, it is
    /// rewritten from `held` (the batches still unacknowledged, oldest
    /// first, including this one), keeping the newest that fit.
    pub fn append<'a>(
        &mut self,
        batch: &TickBatch,
        held: impl Iterator<Item = &'a TickBatch>,
    ) -> Result<(), SpoolError> {
        encode(batch, &mut self.scratch);
        if self.len + self.scratch.len() as u64 > self.max_bytes {
            return self.rewrite(held);
        }
        self.file
            .write_all(&self.scratch)
            .map_err(|e| self.err(e))?;
        self.len += self.scratch.len() as u64;
        self.dirty = true;
        self.maybe_sync()
    }

    /// Everything was acknowledged: empty the file.
    pub fn clear(&mut self) -> Result<(), SpoolError> {
        if self.len == MAGIC.len() as u64 {
            return Ok(());
        }
        self.file
            .set_len(MAGIC.len() as u64)
            .map_err(|e| self.err(e))?;
        self.file
            .seek(SeekFrom::Start(MAGIC.len() as u64))
            .map_err(|e| self.err(e))?;
        self.len = MAGIC.len() as u64;
        Ok(())
    }

    /// Replaces the file with `held` (newest that fit the cap).
    pub fn rewrite<'a>(
        &mut self,
        held: impl Iterator<Item = &'a TickBatch>,
    ) -> Result<(), SpoolError> {
        let mut records: Vec<Vec<u8>> = Vec::new();
        for b in held {
            let mut r = Vec::with_capacity(80);
            encode(b, &mut r);
            records.push(r);
        }
        // Keep the newest records that fit in half the cap, so the next
        // rewrite is many ticks away.
        let budget = (self.max_bytes / 2).saturating_sub(MAGIC.len() as u64);
        let mut total = 0u64;
        let mut first = records.len();
        while first > 0 && total + records[first - 1].len() as u64 <= budget {
            total += records[first - 1].len() as u64;
            first -= 1;
        }
        let tmp = self.path.with_extension("tmp");
        let write = || -> io::Result<File> {
            let mut f = File::create(&tmp)?;
            f.write_all(MAGIC)?;
            for r in &records[first..] {
                f.write_all(r)?;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            Ok(f)
        };
        let f = write().map_err(|e| self.err(e))?;
        self.file = f;
        self.len = MAGIC.len() as u64 + total;
        self.file
            .seek(SeekFrom::Start(self.len))
            .map_err(|e| self.err(e))?;
        self.dirty = false;
        self.last_sync = Instant::now();
        if first > 0 {
            log::warn!(
                "spool {} full: kept the newest {} batches on disk",
                self.path.display(),
                records.len() - first
            );
        }
        Ok(())
    }

    fn maybe_sync(&mut self) -> Result<(), SpoolError> {
        if self.dirty && self.last_sync.elapsed() >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    /// Forces appended data to the device (at shutdown, and once a minute).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.dirty {
            self.file.sync_data().map_err(|e| self.err(e))?;
            self.dirty = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(boot_id: u64, seq: u64, n: usize) -> TickBatch {
        TickBatch {
            boot_id,
            seq,
            time_unix_ms: 1_795_608_000_000 + seq as i64,
            values: Metric::ALL
                .iter()
                .take(n)
                .enumerate()
                .map(|(i, m)| (*m, i as f64 + 0.5))
                .collect(),
            health: Box::default(),
        }
    }

    fn tmp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "monitor-spool-{tag}-{}-{}",
            std::process::id(),
            monitor::random::random_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("spool")
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn batches_survive_a_reopen() {
        let path = tmp("reopen");
        let batches = [b(7, 1, 6), b(7, 2, 1), b(7, 3, 0)];
        {
            let (mut s, rec) = Spool::open(&path, 1 << 20).unwrap();
            assert!(rec.batches.is_empty());
            for (i, x) in batches.iter().enumerate() {
                s.append(x, batches[..=i].iter()).unwrap();
            }
        }
        let (_, rec) = Spool::open(&path, 1 << 20).unwrap();
        assert_eq!(rec.batches, batches);
        assert_eq!(rec.truncated_bytes, 0);
    }

    fn health(values: &[(HealthMetric, &str, f64)]) -> Box<[HealthValue]> {
        values
            .iter()
            .map(|&(metric, device, value)| HealthValue {
                metric,
                device: Arc::from(device),
                value,
            })
            .collect()
    }

    /// Appends `batches` to a new spool, one by one, and checks that a
    /// reopen gives them all back.
    fn survive_a_reopen(tag: &str, batches: &[TickBatch]) {
        let path = tmp(tag);
        {
            let (mut s, _) = Spool::open(&path, 1 << 20).unwrap();
            for (i, x) in batches.iter().enumerate() {
                s.append(x, batches[..=i].iter()).unwrap();
            }
        }
        let (_, rec) = Spool::open(&path, 1 << 20).unwrap();
        assert_eq!(rec.batches, batches);
        assert_eq!(rec.truncated_bytes, 0);
    }

    #[test]
    fn health_values_survive_a_reopen_beside_records_without_them() {
        let mut with_health = b(7, 2, 6);
        with_health.health = health(&[
            (HealthMetric::TempCelsius, "", 61.3),
            (HealthMetric::FsUsedPercent, "/media/pi/USB SSD", 97.5),
        ]);
        survive_a_reopen("health", &[b(7, 1, 6), with_health, b(7, 3, 2)]);
    }

    #[test]
    fn the_largest_record_encode_can_write_survives_a_reopen() {
        // Every health value a batch may carry, each with the longest
        // device name: a record of about 17 KiB, which MAX_PAYLOAD admits.
        let device = "d".repeat(MAX_DEVICE_BYTES);
        let mut big = b(7, 1, 6);
        big.health = health(
            &[(HealthMetric::FsUsedPercent, device.as_str(), 99.5); MAX_HEALTH_SAMPLES_PER_BATCH],
        );
        assert!(record_len(&big) > 16 * 1024, "{} bytes", record_len(&big));
        survive_a_reopen("largest", &[big, b(7, 2, 6)]);
    }

    #[test]
    fn an_error_names_the_spool_and_keeps_its_cause() {
        use std::error::Error;
        let e = SpoolError {
            path: PathBuf::from("/var/lib/monitor/spool"),
            source: io::Error::new(io::ErrorKind::PermissionDenied, "denied"),
        };
        assert_eq!(e.to_string(), "spool /var/lib/monitor/spool: denied");
        assert_eq!(e.source().map(|s| s.to_string()).as_deref(), Some("denied"));
    }

    #[test]
    fn a_health_section_that_does_not_check_out_is_not_a_batch() {
        let mut record = Vec::new();
        let mut x = b(1, 1, 1);
        x.health = health(&[(HealthMetric::Load1, "d", 1.0)]);
        encode(&x, &mut record);
        let payload = &record[8..];
        assert_eq!(decode(payload), Some(x));
        // Cut anywhere inside the section, a metric index past the table, a
        // count of 0 or a trailing byte: refused, never misread.
        let section = 8 + 8 + 8 + 1 + 8;
        for cut in section + 1..payload.len() {
            assert_eq!(decode(&payload[..cut]), None, "cut at {cut}");
        }
        let mut bad = payload.to_vec();
        bad[section + 1] = HealthMetric::ALL.len() as u8;
        assert_eq!(decode(&bad), None);
        let mut bad = payload.to_vec();
        bad[section] = 0;
        assert_eq!(decode(&bad), None);
        let mut bad = payload.to_vec();
        bad.push(0);
        assert_eq!(decode(&bad), None);
    }

    #[test]
    fn clear_empties_and_appends_continue() {
        let path = tmp("clear");
        let (mut s, _) = Spool::open(&path, 1 << 20).unwrap();
        s.append(&b(1, 1, 6), [b(1, 1, 6)].iter()).unwrap();
        s.clear().unwrap();
        s.append(&b(1, 2, 6), [b(1, 2, 6)].iter()).unwrap();
        drop(s);
        let (_, rec) = Spool::open(&path, 1 << 20).unwrap();
        assert_eq!(rec.batches, vec![b(1, 2, 6)]);
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_rest_kept() {
        let path = tmp("torn");
        let (mut s, _) = Spool::open(&path, 1 << 20).unwrap();
        let all = [b(1, 1, 6), b(1, 2, 6)];
        s.append(&all[0], all[..1].iter()).unwrap();
        s.append(&all[1], all.iter()).unwrap();
        drop(s);
        let len = std::fs::metadata(&path).unwrap().len();
        // A crash in the middle of the second record.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap();
        drop(f);
        let (mut s, rec) = Spool::open(&path, 1 << 20).unwrap();
        assert_eq!(rec.batches, vec![all[0].clone()]);
        assert!(rec.truncated_bytes > 0);
        // Appending after the cut yields a clean file.
        s.append(&b(1, 3, 2), [all[0].clone(), b(1, 3, 2)].iter())
            .unwrap();
        drop(s);
        let (_, rec) = Spool::open(&path, 1 << 20).unwrap();
        assert_eq!(rec.batches, vec![all[0].clone(), b(1, 3, 2)]);
    }

    #[test]
    fn a_flipped_bit_ends_the_readable_part() {
        let path = tmp("bitflip");
        let (mut s, _) = Spool::open(&path, 1 << 20).unwrap();
        let all = [b(1, 1, 6), b(1, 2, 6), b(1, 3, 6)];
        for (i, x) in all.iter().enumerate() {
            s.append(x, all[..=i].iter()).unwrap();
        }
        drop(s);
        let mut data = std::fs::read(&path).unwrap();
        let second = MAGIC.len() + (data.len() - MAGIC.len()) / 3 + 12;
        data[second] ^= 0x40;
        std::fs::write(&path, &data).unwrap();
        let (_, rec) = Spool::open(&path, 1 << 20).unwrap();
        assert_eq!(rec.batches, vec![all[0].clone()]);
    }

    #[test]
    fn a_foreign_file_is_moved_aside_not_deleted() {
        let path = tmp("foreign");
        std::fs::write(&path, b"this is not a spool").unwrap();
        let (_, rec) = Spool::open(&path, 1 << 20).unwrap();
        let aside = rec.moved_aside.expect("moved aside");
        assert_eq!(std::fs::read(aside).unwrap(), b"this is not a spool");
        assert!(rec.batches.is_empty());
    }

    #[test]
    fn the_cap_keeps_the_newest_batches() {
        let path = tmp("cap");
        let (mut s, _) = Spool::open(&path, 4096).unwrap();
        let all: Vec<TickBatch> = (1..=200).map(|i| b(1, i, 6)).collect();
        for i in 0..all.len() {
            s.append(&all[i], all[..=i].iter()).unwrap();
            assert!(s.len_bytes() <= 4096);
        }
        drop(s);
        let (_, rec) = Spool::open(&path, 4096).unwrap();
        assert!(!rec.batches.is_empty());
        assert_eq!(rec.batches.last(), all.last());
        let first = rec.batches[0].seq;
        let expect: Vec<u64> = (first..=200).collect();
        assert_eq!(
            rec.batches.iter().map(|b| b.seq).collect::<Vec<_>>(),
            expect
        );
    }

    fn record_len(batch: &TickBatch) -> u64 {
        let mut record = Vec::new();
        encode(batch, &mut record);
        record.len() as u64
    }

    /// A batch whose record is exactly `want` bytes long (padded with
    /// health values of chosen device lengths).
    fn batch_of_record_len(seq: u64, want: u64) -> TickBatch {
        let mut batch = b(1, seq, 6);
        let per_value = 1 + 2 + 8;
        let rest = (want - record_len(&batch) - 1) as usize;
        let k = rest.div_ceil(per_value + MAX_DEVICE_BYTES);
        let devices = rest - k * per_value;
        let lens: Vec<usize> = (0..k)
            .map(|i| devices / k + usize::from(i < devices % k))
            .collect();
        let names: Vec<String> = lens.iter().map(|&n| "d".repeat(n)).collect();
        let values: Vec<(HealthMetric, &str, f64)> = names
            .iter()
            .map(|n| (HealthMetric::FsUsedPercent, n.as_str(), 50.0))
            .collect();
        batch.health = health(&values);
        assert_eq!(record_len(&batch), want);
        batch
    }

    #[test]
    fn a_batch_that_fills_the_cap_exactly_is_appended_and_one_more_rewrites_to_half() {
        let path = tmp("exact");
        let cap = 4096;
        let (mut s, _) = Spool::open(&path, cap).unwrap();
        assert_eq!(s.len_bytes(), MAGIC.len() as u64);
        let first = b(1, 1, 6);
        s.append(&first, [&first].into_iter()).unwrap();
        assert_eq!(s.len_bytes(), MAGIC.len() as u64 + record_len(&first));
        let filler = batch_of_record_len(2, cap - s.len_bytes());
        let all = [first, filler, b(1, 3, 6)];
        s.append(&all[1], all[..2].iter()).unwrap();
        assert_eq!(s.len_bytes(), cap, "appended, not rewritten");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), cap);
        drop(s);
        let (mut s, rec) = Spool::open(&path, cap).unwrap();
        assert_eq!(rec.batches, all[..2]);
        // Over the cap: rewritten with the newest records that fit in half
        // of it (the filler does not), and said so.
        crate::test_log::take_lines();
        s.append(&all[2], all.iter()).unwrap();
        assert_eq!(s.len_bytes(), MAGIC.len() as u64 + record_len(&all[2]));
        let lines = crate::test_log::take_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].ends_with("full: kept the newest 1 batches on disk"),
            "{lines:?}"
        );
        drop(s);
        let (_, rec) = Spool::open(&path, cap).unwrap();
        assert_eq!(rec.batches, all[2..]);
    }

    #[test]
    fn a_rewrite_keeps_every_held_batch_that_fits_in_half_the_cap() {
        // Everything held fits: all of it is kept, and no warning.
        let path = tmp("acked");
        let cap = 4096;
        let (mut s, _) = Spool::open(&path, cap).unwrap();
        let filler = batch_of_record_len(1, cap - MAGIC.len() as u64);
        s.append(&filler, [&filler].into_iter()).unwrap();
        assert_eq!(s.len_bytes(), cap);
        // The filler was acknowledged meanwhile: only these are held.
        let held = [b(1, 2, 6), b(1, 3, 6)];
        crate::test_log::take_lines();
        s.append(&held[1], held.iter()).unwrap();
        let r = record_len(&held[0]);
        assert_eq!(record_len(&held[1]), r);
        assert_eq!(s.len_bytes(), MAGIC.len() as u64 + 2 * r);
        assert!(crate::test_log::take_lines().is_empty());
        drop(s);
        let (_, rec) = Spool::open(&path, cap).unwrap();
        assert_eq!(rec.batches, held);

        // More held than fits: as many of the newest as fit in half.
        let path = tmp("half");
        let (mut s, _) = Spool::open(&path, cap).unwrap();
        let all: Vec<TickBatch> = (1..=200).map(|i| b(1, i, 6)).collect();
        let mut i = 0;
        while s.len_bytes() + r <= cap {
            s.append(&all[i], all[..=i].iter()).unwrap();
            i += 1;
        }
        s.append(&all[i], all[..=i].iter()).unwrap();
        let fit = (cap / 2 - MAGIC.len() as u64) / r;
        assert!(fit > 2 && fit < i as u64, "{fit} of {i}");
        assert_eq!(s.len_bytes(), MAGIC.len() as u64 + fit * r);
        drop(s);
        let (_, rec) = Spool::open(&path, cap).unwrap();
        assert_eq!(rec.batches, all[i + 1 - fit as usize..=i]);
    }

    #[test]
    fn appends_are_synced_once_a_minute_not_each() {
        let path = tmp("sync");
        let (mut s, _) = Spool::open(&path, 1 << 20).unwrap();
        s.append(&b(1, 1, 6), [b(1, 1, 6)].iter()).unwrap();
        assert!(s.dirty, "a fresh append waits for the minute");
        s.sync().unwrap();
        assert!(!s.dirty);
        // A minute after the last sync, the next append syncs.
        let Some(a_minute_ago) = Instant::now().checked_sub(SYNC_EVERY) else {
            return; // a machine up for less than a minute
        };
        s.last_sync = a_minute_ago;
        s.append(&b(1, 2, 6), [b(1, 2, 6)].iter()).unwrap();
        assert!(!s.dirty);
        assert!(s.last_sync > a_minute_ago);
    }

    #[test]
    fn a_payload_is_one_batch_exactly() {
        let mut record = Vec::new();
        encode(&b(1, 2, 3), &mut record);
        let payload = &record[8..];
        assert_eq!(record[..4], (payload.len() as u32).to_le_bytes());
        assert_eq!(decode(payload), Some(b(1, 2, 3)));
        // A byte more than the values it announces.
        let longer = [payload, &[0]].concat();
        assert_eq!(decode(&longer), None);
        // A value announced for a metric that does not exist.
        let mut unknown = payload.to_vec();
        unknown[24] |= 1 << Metric::ALL.len();
        assert_eq!(decode(&unknown), None);
    }

    #[test]
    fn a_file_of_the_magic_alone_is_an_empty_spool() {
        assert_eq!(parse(MAGIC), Some((Vec::new(), MAGIC.len())));
        assert_eq!(parse(&MAGIC[..7]), None);
    }

    #[test]
    fn parse_never_panics_on_garbage() {
        let mut data = MAGIC.to_vec();
        for i in 0..2000u32 {
            data.push((i.wrapping_mul(2_654_435_761) >> 13) as u8);
            let _ = parse(&data);
        }
        assert!(parse(b"MON").is_none());
    }
}
