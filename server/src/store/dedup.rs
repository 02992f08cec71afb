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
//! per run, forgetting the oldest.
//!
//! Forgetting must not lose data. A real agent leaves a gap per outage in
//! which its buffer overflowed, so it takes 257 of those in one run; but a
//! misbehaving or forging client can make them at will (a seq far ahead,
//! then 256 more jumps), and after that every seq below the forgotten gaps
//! used to read as "stored": the real agent's batches there were
//! acknowledged and dropped, counted nowhere. So the set remembers how far
//! the forgotten gaps reached (`forgotten_through`), and a seq there that
//! is in no remembered gap is [`Seen::Forgotten`]: neither known stored nor
//! known missing. The writer then compares the batch's samples with the
//! stored ones instead (and counts it): known values are a duplicate, new
//! ones are stored.
//!
//! This module is pure data: no I/O, no clock. It must never decide that a
//! seq is stored unless a committed transaction stored it.

/// How many separate gaps are remembered per run.
pub(crate) const MAX_GAPS: usize = 256;

/// What the set knows of one seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A committed transaction stored it.
    Stored,
    /// Not stored.
    Missing,
    /// Either: it lies where forgotten gaps were.
    Forgotten,
}

/// The set of stored sequence numbers of one agent run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SeqSet {
    /// Highest stored seq; 0 when nothing is stored (seqs start at 1).
    high_seq: u64,
    /// Inclusive ranges below `high_seq` that are NOT stored, ascending and
    /// disjoint.
    gaps: Vec<(u64, u64)>,
    /// The end of the highest gap ever forgotten (0: none): a seq up to it
    /// that is in no remembered gap may or may not be stored. Always below
    /// the first remembered gap.
    forgotten_through: u64,
}

impl SeqSet {
    /// What is known of `seq`.
    pub(crate) fn seen(&self, seq: u64) -> Seen {
        if seq > self.high_seq || self.gap_index(seq).is_some() {
            Seen::Missing
        } else if seq <= self.forgotten_through {
            Seen::Forgotten
        } else {
            Seen::Stored
        }
    }

    /// Marks `seq` stored; false when it already was (a duplicate) or when
    /// it lies where gaps were forgotten (nothing to mark: it reads as
    /// [`Seen::Forgotten`] before and after).
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
            if let Some(&(_, hi)) = self.gaps.get(excess - 1) {
                self.forgotten_through = self.forgotten_through.max(hi);
            }
            self.gaps.drain(..excess);
        }
    }

    /// The gaps as stored in `agent_runs.gaps`: 16 bytes per gap, two
    /// little-endian u64 (first, last), then, once gaps were forgotten,
    /// `forgotten_through` as 8 more bytes (so a blob of 16·n bytes, as
    /// every server wrote before, reads as "nothing forgotten").
    pub(crate) fn encode_gaps(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.gaps.len() * 16 + 8);
        for &(lo, hi) in &self.gaps {
            out.extend_from_slice(&lo.to_le_bytes());
            out.extend_from_slice(&hi.to_le_bytes());
        }
        if self.forgotten_through > 0 {
            out.extend_from_slice(&self.forgotten_through.to_le_bytes());
        }
        out
    }

    /// Rebuilds a set from its stored form; `None` when the blob is not a
    /// valid encoding (wrong length, unordered or overlapping gaps, a gap
    /// not below `high_seq`, forgotten gaps not below the remembered ones).
    pub(crate) fn decode(high_seq: u64, blob: &[u8]) -> Option<SeqSet> {
        let (gaps, forgotten) = match blob.len() % 16 {
            0 => (blob, None),
            8 => {
                let (gaps, tail) = blob.split_at(blob.len() - 8);
                (gaps, Some(u64::from_le_bytes(tail.try_into().ok()?)))
            }
            _ => return None,
        };
        let forgotten_through = match forgotten {
            // Written only when non-zero, and always below the top.
            Some(f) if f == 0 || f >= high_seq => return None,
            Some(f) => f,
            None => 0,
        };
        let mut set = SeqSet {
            high_seq,
            gaps: Vec::with_capacity(gaps.len() / 16),
            forgotten_through,
        };
        // Remembered gaps start above the forgotten ones (and at 1 at
        // least: seq 0 does not exist).
        let mut floor = forgotten_through.checked_add(1)?;
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
        let got_stored: Vec<u64> = (1..=upto).filter(|&q| s.seen(q) == Seen::Stored).collect();
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
    fn oldest_gaps_are_forgotten_beyond_the_cap_but_never_taken_for_stored() {
        let mut s = SeqSet::default();
        // Gaps at 1, 3, 5, ...: every odd seq below the top is missing.
        let top = 2 * (MAX_GAPS as u64 + 10);
        for q in (2..=top).step_by(2) {
            assert!(s.insert(q));
        }
        assert_eq!(s.gaps.len(), MAX_GAPS);
        // The ten oldest gaps (1, 3, ..., 19) are forgotten: those seqs,
        // and the stored ones between them, are neither stored nor missing
        // as far as the set knows.
        assert_eq!(s.forgotten_through, 19);
        for q in 1..=19 {
            assert_eq!(s.seen(q), Seen::Forgotten, "seq {q}");
        }
        assert_eq!(s.seen(20), Seen::Stored);
        assert_eq!(s.seen(21), Seen::Missing);
        assert_eq!(s.seen(top - 1), Seen::Missing);
        assert_eq!(s.seen(top), Seen::Stored);
        // Storing a forgotten seq changes nothing and says so.
        let before = s.clone();
        assert!(!s.insert(7));
        assert_eq!(s, before);
        let back = SeqSet::decode(s.high_seq(), &s.encode_gaps());
        assert_eq!(back.as_ref(), Some(&s), "encoding round trip");
    }

    #[test]
    fn a_forged_jump_then_257_more_cannot_make_real_seqs_read_as_stored() {
        // Finding 4 of the hostile-input review: seq 10^12 opened a gap,
        // 257 more jumps pushed it out of memory, and from then on the
        // real agent's next batches (seq 101, 102, ...) read as stored and
        // were dropped.
        let mut s = SeqSet::default();
        for q in 1..=100 {
            s.insert(q);
        }
        let mut q = 1_000_000_000_000u64;
        for _ in 0..=MAX_GAPS {
            s.insert(q);
            q += 2;
        }
        for real in 101..=110 {
            assert_eq!(s.seen(real), Seen::Forgotten, "seq {real}");
        }
        assert_eq!(s.seen(100), Seen::Forgotten, "stored, but in the span");
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
        // The forgotten mark: 8 trailing bytes, non-zero, below the top
        // and below every remembered gap.
        let mark = |f: u64| f.to_le_bytes().to_vec();
        let s = SeqSet::decode(9, &[gap(4, 5), mark(2)].concat()).unwrap();
        assert_eq!(s.seen(1), Seen::Forgotten);
        assert_eq!(s.seen(3), Seen::Stored);
        assert_eq!(s.seen(4), Seen::Missing);
        assert_eq!(SeqSet::decode(9, &mark(0)), None, "zero is never written");
        assert_eq!(SeqSet::decode(9, &mark(9)), None, "not below the top");
        assert_eq!(
            SeqSet::decode(9, &[gap(4, 5), mark(4)].concat()),
            None,
            "a remembered gap inside the forgotten span"
        );
        assert_eq!(SeqSet::decode(9, &[0; 20]), None);
    }

    #[test]
    fn a_set_decoded_with_more_gaps_than_the_cap_keeps_the_newest_after_one_insert() {
        // A blob written under a larger cap (or by hand) holds 512 gaps;
        // the next insert trims it to the newest MAX_GAPS, forgetting the
        // oldest 257 (the 256 extra and the one the insert adds).
        let blob: Vec<u8> = (0..2 * MAX_GAPS as u64)
            .flat_map(|k| [(2 * k + 1).to_le_bytes(), (2 * k + 1).to_le_bytes()].concat())
            .collect();
        let mut s = SeqSet::decode(1024, &blob).unwrap();
        assert_eq!(s.gaps.len(), 2 * MAX_GAPS);
        assert!(s.insert(1026));
        assert_eq!(s.gaps.len(), MAX_GAPS);
        assert_eq!(s.forgotten_through, 513);
        assert_eq!(s.seen(513), Seen::Forgotten);
        assert_eq!(s.seen(515), Seen::Missing);
        assert_eq!(s.seen(1025), Seen::Missing);
        assert_eq!(s.seen(1026), Seen::Stored);
    }
}
