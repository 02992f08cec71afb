//! The change feed as a forwarder (remote-write) reads it: one stored
//! batch's journal record, the blob both backends' journals hold (written
//! by `journal_record::encode` in the flush that stored the batch: its
//! ticks and its health values), turned
//! into a [`ForwardRow`]. One home for both backends (SQLite's
//! `sqlite/forward.rs`, PostgreSQL's `postgres/journal.rs`), so the same
//! batch forwards the same samples whichever backend stored it.
//!
//! Pure: no I/O. It must never drop a sample a record holds.

use crate::store::encoding::metric_from_id;
use crate::store::records::{ForwardBatch, ForwardRow, StoredSample};
use crate::store::ticks::METRICS;

/// The row of journal record `record` (`None`: the blob is not a journal
/// record this server can read).
pub(crate) fn forward_row(
    journal_id: i64,
    hostname: String,
    received_unix_ms: i64,
    record: &[u8],
) -> Option<ForwardRow> {
    let record = crate::store::journal_record::decode(record)?;
    let mut row = ForwardRow {
        journal_id,
        hostname,
        received_unix_ms,
        samples: Vec::with_capacity(record.ticks.len() * METRICS),
        health: record.health,
    };
    for t in &record.ticks {
        for (id, v) in t.values.iter().enumerate() {
            let (Some(value), Some(metric)) = (*v, metric_from_id(id as i64)) else {
                continue;
            };
            row.samples.push(StoredSample {
                time_unix_ms: t.time_unix_ms,
                metric,
                value,
            });
        }
    }
    Some(row)
}

/// A [`ForwardBatch`] read in journal id order: whole rows, as many as fit
/// in `max_samples` samples (at least one row).
pub(crate) struct Gather {
    out: ForwardBatch,
    samples: usize,
    max_samples: usize,
}

impl Gather {
    /// Reading after cursor `after`; `newest` is the newest journal id
    /// stored (for the lag).
    pub(crate) fn new(after: i64, newest: i64, max_samples: usize) -> Gather {
        Gather {
            out: ForwardBatch {
                rows: Vec::new(),
                through: after,
                newest,
            },
            samples: 0,
            max_samples,
        }
    }

    /// How many journal rows to read: a batch holds one tick of at most six
    /// samples, so this many cover `max_samples` (one more tells whether
    /// the next would overflow).
    pub(crate) fn row_limit(&self) -> i64 {
        i64::try_from(self.max_samples / METRICS + 1).unwrap_or(i64::MAX)
    }

    /// A journal row with nothing to forward: the cursor passes it.
    pub(crate) fn pass_over(&mut self, journal_id: i64) {
        self.out.through = journal_id;
    }

    /// Adds `row` if it fits; `false` (nothing added): stop reading.
    pub(crate) fn push(&mut self, row: ForwardRow) -> bool {
        let n = row.samples.len() + row.health.len();
        if !self.out.rows.is_empty() && self.samples + n > self.max_samples {
            return false;
        }
        self.samples += n;
        self.out.through = row.journal_id;
        self.out.rows.push(row);
        true
    }

    pub(crate) fn finish(self) -> ForwardBatch {
        self.out
    }
}
