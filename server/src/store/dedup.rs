//! Which sequence numbers of one agent run are already stored: the state
//! that turns the agents' at-least-once delivery into exactly-once storage.
//!
//! A batch is identified by (agent_id, boot_id, seq). Per run the store
//! keeps the highest committed seq *and the gaps below it* ([`SeqSet`]).
//!
//! Why not the high-water mark alone: it is only correct if batches of a run
//! are committed in seq order with no failure in between. That breaks in one
//! ordinary case: the transaction holding seq 6 fails (disk full), the agent
//! is not acknowledged, but seq 7 from the same stream (already queued, or
//! sent before the agent saw the error) lands in the next, successful
//! transaction. The high-water mark is now 7, so the agent's re-send of 6
//! would be taken for a duplicate, acknowledged, and lost. Keeping the gaps
//! makes the answer exact whatever the order: 6 is a gap, so it is stored.
//! Gaps the agent itself made (it dropped batches while its buffer was full)
//! are never filled and cost 16 bytes each; at most [`MAX_GAPS`] are kept
//! per run, forgetting the oldest, which only an agent that has dropped
//! batches that many separate times and still holds the oldest could notice.
//!
//! This module is pure data: no I/O, no clock. It must never decide that a
//! seq is stored unless a committed transaction stored it.

/// How many separate gaps are remembered per run.
pub(crate) const MAX_GAPS: usize = 256;

/// The set of stored sequence numbers of one agent run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SeqSet {
    /// Highest stored seq; 0 when nothing is stored (seqs start at 1).
    high_seq: u64,
    /// Inclusive ranges below `high_seq` that are NOT stored, ascending and
    /// disjoint.
    gaps: Vec<(u64, u64)>,
}

impl SeqSet {
    /// Whether `seq` is stored.
    pub(crate) fn contains(&self, seq: u64) -> bool {
        seq <= self.high_seq && self.gap_index(seq).is_none()
    }

    /// Marks `seq` stored; false when it already was (a duplicate).
    pub(crate) fn insert(&mut self, seq: u64) -> bool {
        if seq > self.high_seq {
            if seq > self.high_seq + 1 {
                self.gaps.push((self.high_seq + 1, seq - 1));
                self.trim();
            }
            self.high_seq = seq;
            return true;
        }
        let Some(i) = self.gap_index(seq) else {
            return false;
        };
        let (lo, hi) = self.gaps[i];
        match (seq == lo, seq == hi) {
            (true, true) => {
                self.gaps.remove(i);
            }
            (true, false) => self.gaps[i].0 = seq + 1,
            (false, true) => self.gaps[i].1 = seq - 1,
            (false, false) => {
                self.gaps[i] = (lo, seq - 1);
                self.gaps.insert(i + 1, (seq + 1, hi));
                self.trim();
            }
        }
        true
    }

    pub(crate) fn high_seq(&self) -> u64 {
        self.high_seq
    }

    fn gap_index(&self, seq: u64) -> Option<usize> {
        // The first gap whose end is >= seq is the only one that can hold it.
        let i = self.gaps.partition_point(|&(_, hi)| hi < seq);
        match self.gaps.get(i) {
            Some(&(lo, _)) if lo <= seq => Some(i),
            _ => None,
        }
    }

    fn trim(&mut self) {
        if self.gaps.len() > MAX_GAPS {
            let excess = self.gaps.len() - MAX_GAPS;
            self.gaps.drain(..excess);
        }
    }

    /// The gaps as stored in `agent_runs.gaps`: 16 bytes per gap, two
    /// little-endian u64 (first, last).
    pub(crate) fn encode_gaps(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.gaps.len() * 16);
        for &(lo, hi) in &self.gaps {
            out.extend_from_slice(&lo.to_le_bytes());
            out.extend_from_slice(&hi.to_le_bytes());
        }
        out
    }

    /// Rebuilds a set from its stored form; `None` when the blob is not a
    /// valid encoding (wrong length, unordered or overlapping gaps, a gap
    /// not below `high_seq`).
    pub(crate) fn decode(high_seq: u64, gaps: &[u8]) -> Option<SeqSet> {
        if !gaps.len().is_multiple_of(16) {
            return None;
        }
        let mut set = SeqSet {
            high_seq,
            gaps: Vec::with_capacity(gaps.len() / 16),
        };
        let mut floor = 1u64;
        for chunk in gaps.chunks_exact(16) {
            let (lo, hi) = chunk.split_at(8);
            let lo = u64::from_le_bytes(lo.try_into().ok()?);
            let hi = u64::from_le_bytes(hi.try_into().ok()?);
            if lo < floor || hi < lo || hi >= high_seq {
                return None;
            }
            set.gaps.push((lo, hi));
            floor = hi.checked_add(2)?;
        }
        Some(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inserts `seqs` in order into an empty set and checks what each insert
    /// returned and which seqs up to `upto` end up stored.
    fn check(seqs: &[u64], new: &[bool], stored: &[u64], upto: u64) {
        let mut s = SeqSet::default();
        let got: Vec<bool> = seqs.iter().map(|&q| s.insert(q)).collect();
        assert_eq!(got, new, "insert results for {seqs:?}");
        let got_stored: Vec<u64> = (1..=upto).filter(|&q| s.contains(q)).collect();
        assert_eq!(got_stored, stored, "stored after {seqs:?}");
        let back = SeqSet::decode(s.high_seq(), &s.encode_gaps());
        assert_eq!(back.as_ref(), Some(&s), "encoding round trip");
    }

    #[test]
    fn in_order_and_resends() {
        check(&[1, 2, 3], &[true, true, true], &[1, 2, 3], 5);
        check(
            &[1, 2, 1, 2, 3],
            &[true, true, false, false, true],
            &[1, 2, 3],
            5,
        );
        check(&[], &[], &[], 3);
    }

    #[test]
    fn a_failed_batch_re_sent_after_a_later_one_is_stored() {
        // 6 failed to commit, 7 committed, then the agent re-sends 6, 7, 8.
        check(
            &[1, 2, 3, 4, 5, 7, 6, 7, 8],
            &[true, true, true, true, true, true, true, false, true],
            &[1, 2, 3, 4, 5, 6, 7, 8],
            9,
        );
    }

    #[test]
    fn gaps_split_and_fill() {
        check(&[10], &[true], &[10], 11);
        check(&[10, 5], &[true, true], &[5, 10], 11);
        check(
            &[10, 1, 9, 5, 5],
            &[true, true, true, true, false],
            &[1, 5, 9, 10],
            11,
        );
        check(&[4, 1, 2, 3], &[true, true, true, true], &[1, 2, 3, 4], 5);
    }

    #[test]
    fn oldest_gaps_are_forgotten_beyond_the_cap() {
        let mut s = SeqSet::default();
        // Gaps at 1, 3, 5, ...: every odd seq below the top is missing.
        for q in (2..=2 * (MAX_GAPS as u64 + 10)).step_by(2) {
            assert!(s.insert(q));
        }
        assert_eq!(s.gaps.len(), MAX_GAPS);
        assert!(s.contains(1), "the oldest gaps are forgotten");
        assert!(!s.contains(2 * (MAX_GAPS as u64 + 10) - 1));
    }

    #[test]
    fn bad_encodings_are_refused() {
        assert_eq!(SeqSet::decode(5, &[0; 15]), None);
        let gap = |lo: u64, hi: u64| [lo.to_le_bytes(), hi.to_le_bytes()].concat();
        assert_eq!(SeqSet::decode(5, &gap(2, 5)), None, "gap not below high");
        assert_eq!(SeqSet::decode(9, &gap(3, 2)), None, "reversed");
        assert_eq!(
            SeqSet::decode(9, &[gap(4, 5), gap(5, 6)].concat()),
            None,
            "overlapping"
        );
        assert_eq!(SeqSet::decode(9, &gap(0, 2)), None, "seq 0 does not exist");
        assert!(SeqSet::decode(9, &[gap(1, 2), gap(4, 5)].concat()).is_some());
    }
}
