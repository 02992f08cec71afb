//! Cumulative acknowledgements for one `Report` stream: an agent that
//! announces its in-flight window (`Batch.ack_window`) gets one `Ack` for
//! several stored batches (`Ack.batches`), so it wakes, reads, decrypts and
//! decodes an answer every few seconds instead of at every tick.
//!
//! The acks come in from the store in arrival order; this only decides
//! when the newest stored one goes out. An ack is held at most
//! [`ACK_HOLD`] before the next commit sends it (so at 1 s ticks one ack
//! answers four batches, and the agent's buffer, and spool, empty right
//! after), at most [`ACK_HOLD_MAX`] if no commit comes, and never for more
//! than half the agent's window (it never stalls on a full window).
//!
//! Must never hold a refusal (every code but `ACK_CODE_OK` goes out at once,
//! after the stored ones before it, so the order the agent relies on holds),
//! never coalesce for an agent that did not announce a window (agents before
//! `ack_window` count one answer per ack), and never reorder acks.

use std::time::{Duration, Instant};

use monitor::pb;

use crate::ingest::MAX_PENDING;

/// How long a stored batch's ack may wait for the next commit.
pub const ACK_HOLD: Duration = Duration::from_millis(2500);
/// How long it may wait at all (the agent stopped sending).
pub const ACK_HOLD_MAX: Duration = Duration::from_secs(5);

/// The held ack of one stream.
#[derive(Debug, Default)]
pub struct AckHold {
    /// The newest stored batch's ack, its `batches` counting every stored
    /// batch since the last ack sent.
    held: Option<pb::Ack>,
    /// When the oldest batch the held ack answers was acknowledged by the
    /// store.
    since: Option<Instant>,
    /// Most batches one ack may answer (0 or 1: one ack per batch).
    limit: u32,
}

/// Acks to send now, oldest first (at most two: the held stored ones, then
/// a refusal).
pub type Ready = [Option<pb::Ack>; 2];

impl AckHold {
    /// The agent's announced window (the newest batch's `ack_window`): half
    /// of it (and of what this server queues per stream) may be held.
    pub fn set_window(&mut self, ack_window: u32) {
        let queued = u32::try_from(MAX_PENDING).unwrap_or(u32::MAX);
        self.limit = ack_window.min(queued) / 2;
    }

    /// The store's answer to the next batch, in order: returns what to send
    /// now.
    pub fn push(&mut self, mut ack: pb::Ack, now: Instant) -> Ready {
        if ack.code != pb::AckCode::Ok as i32 || self.limit <= 1 {
            return [self.take(), Some(ack)];
        }
        let batches = self.held.as_ref().map_or(0, |h| h.batches) + 1;
        let since = *self.since.get_or_insert(now);
        ack.batches = batches;
        self.held = Some(ack);
        if batches >= self.limit || now.saturating_duration_since(since) >= ACK_HOLD {
            return [self.take(), None];
        }
        [None, None]
    }

    /// When the held ack must go out even if no batch commits.
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|t| t + ACK_HOLD_MAX)
    }

    /// The held ack, to send now (deadline, stream end, store failure).
    pub fn take(&mut self) -> Option<pb::Ack> {
        self.since = None;
        self.held.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(seq: u64, code: pb::AckCode) -> pb::Ack {
        pb::Ack {
            boot_id: 9,
            seq,
            code: code as i32,
            ..Default::default()
        }
    }

    /// (seq, batches, code) of what `ready` sends.
    fn sent(ready: Ready) -> Vec<(u64, u32, i32)> {
        ready
            .into_iter()
            .flatten()
            .map(|a| (a.seq, a.batches, a.code))
            .collect()
    }

    const OK: i32 = pb::AckCode::Ok as i32;

    #[test]
    fn an_agent_without_a_window_gets_one_ack_per_batch() {
        let mut h = AckHold::default();
        let t = Instant::now();
        for seq in 1..=5 {
            assert_eq!(sent(h.push(ack(seq, pb::AckCode::Ok), t)), [(seq, 0, OK)]);
        }
        assert_eq!(h.deadline(), None);
        // A window of 2 or 3 leaves nothing to hold either.
        h.set_window(3);
        assert_eq!(sent(h.push(ack(6, pb::AckCode::Ok), t)), [(6, 0, OK)]);
    }

    #[test]
    fn stored_batches_share_one_ack_sent_at_the_first_commit_after_the_hold() {
        let mut h = AckHold::default();
        h.set_window(64);
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert!(sent(h.push(ack(1, pb::AckCode::Ok), t0)).is_empty());
        assert_eq!(h.deadline(), Some(t0 + ACK_HOLD_MAX));
        assert!(sent(h.push(ack(2, pb::AckCode::Ok), t0 + s)).is_empty());
        assert!(sent(h.push(ack(3, pb::AckCode::Ok), t0 + 2 * s)).is_empty());
        // 3 s after the first: the ack of batch 4 answers all four.
        assert_eq!(
            sent(h.push(ack(4, pb::AckCode::Ok), t0 + 3 * s)),
            [(4, 4, OK)]
        );
        assert_eq!(h.deadline(), None);
        // The next one starts a new hold.
        assert!(sent(h.push(ack(5, pb::AckCode::Ok), t0 + 4 * s)).is_empty());
        assert_eq!(h.take().map(|a| (a.seq, a.batches)), Some((5, 1)));
        assert!(h.take().is_none());
    }

    #[test]
    fn at_most_half_the_agents_window_waits() {
        let mut h = AckHold::default();
        // Announced 64 (this server's queue, too): 32 per ack.
        h.set_window(1000);
        let t = Instant::now();
        for seq in 1..32 {
            assert!(sent(h.push(ack(seq, pb::AckCode::Ok), t)).is_empty());
        }
        assert_eq!(sent(h.push(ack(32, pb::AckCode::Ok), t)), [(32, 32, OK)]);
        h.set_window(8);
        for seq in 33..36 {
            assert!(sent(h.push(ack(seq, pb::AckCode::Ok), t)).is_empty());
        }
        assert_eq!(sent(h.push(ack(36, pb::AckCode::Ok), t)), [(36, 4, OK)]);
    }

    #[test]
    fn a_refusal_goes_out_at_once_after_the_stored_batches_before_it() {
        let mut h = AckHold::default();
        h.set_window(64);
        let t = Instant::now();
        h.push(ack(1, pb::AckCode::Ok), t);
        h.push(ack(2, pb::AckCode::Ok), t);
        let limited = pb::AckCode::RateLimited as i32;
        assert_eq!(
            sent(h.push(ack(3, pb::AckCode::RateLimited), t)),
            [(2, 2, OK), (3, 0, limited)]
        );
        // Nothing held: a refusal alone goes out alone.
        let conflict = pb::AckCode::Conflict as i32;
        assert_eq!(
            sent(h.push(ack(4, pb::AckCode::Conflict), t)),
            [(4, 0, conflict)]
        );
        assert_eq!(h.deadline(), None);
    }

    #[test]
    fn an_agent_that_withdraws_its_window_gets_the_held_ack_with_the_next() {
        let mut h = AckHold::default();
        h.set_window(64);
        let t = Instant::now();
        h.push(ack(1, pb::AckCode::Ok), t);
        h.set_window(0);
        assert_eq!(
            sent(h.push(ack(2, pb::AckCode::Ok), t)),
            [(1, 1, OK), (2, 0, OK)]
        );
    }
}
