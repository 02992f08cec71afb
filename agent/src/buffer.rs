//! The bounded buffer of batches the server has not acknowledged yet.
//!
//! Batches enter at the back when the sampler produces them and leave at the
//! front when the server acknowledges them. While disconnected the buffer
//! fills; when full, the oldest batch goes first and the loss is counted
//! (`dropped_total` travels with every batch, so the server learns of it when
//! the agent is back). Nothing here allocates once the queue has grown to its
//! working size, and it never grows past `capacity`.
//!
//! On each new session, and when the server asks it to slow down (a
//! rate-limited acknowledgement), the sender calls [`Buffer::rewind`] and
//! re-sends from the oldest unacknowledged batch, in order: that ordering
//! is what lets the server de-duplicate with a per-run high-water mark.

use std::collections::VecDeque;

use monitor::batch::TickBatch;

#[derive(Debug)]
pub struct Buffer {
    queue: VecDeque<TickBatch>,
    capacity: usize,
    /// How many batches at the front of `queue` were sent on the current
    /// session and await their acknowledgement.
    in_flight: usize,
    dropped_total: u64,
    produced_total: u64,
}

impl Buffer {
    /// A buffer holding at most `capacity` (≥ 1) batches.
    pub fn new(capacity: usize) -> Buffer {
        Buffer {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            in_flight: 0,
            dropped_total: 0,
            produced_total: 0,
        }
    }

    /// Adds a freshly produced batch; returns the batch dropped to make room,
    /// if the buffer was full.
    pub fn push(&mut self, batch: TickBatch) -> Option<TickBatch> {
        self.produced_total += 1;
        let dropped = if self.queue.len() >= self.capacity {
            self.dropped_total += 1;
            self.in_flight = self.in_flight.saturating_sub(1);
            self.queue.pop_front()
        } else {
            None
        };
        self.queue.push_back(batch);
        dropped
    }

    /// Puts back a batch recovered from the spool at start-up (it was
    /// produced by an earlier run, so it does not count as produced now).
    pub fn restore(&mut self, batch: TickBatch) {
        if self.queue.len() >= self.capacity {
            self.queue.pop_front();
            self.dropped_total += 1;
        }
        self.queue.push_back(batch);
    }

    /// The next batch to send on this session, marked as in flight. Lent,
    /// not copied: the sender encodes it in place (`wire::encode_batch`).
    pub fn next_to_send(&mut self) -> Option<&TickBatch> {
        let batch = self.queue.get(self.in_flight)?;
        self.in_flight += 1;
        Some(batch)
    }

    /// Whether a batch waits to be sent on this session.
    pub fn has_unsent(&self) -> bool {
        self.in_flight < self.queue.len()
    }

    /// How many batches wait to be sent on this session.
    pub fn unsent(&self) -> usize {
        self.queue.len().saturating_sub(self.in_flight)
    }

    /// Starts a new pass (a new session, or after a rate-limited refusal):
    /// everything unacknowledged is sent again.
    pub fn rewind(&mut self) {
        self.in_flight = 0;
    }

    /// Frees the acknowledged batch `(boot_id, seq)` and every batch before
    /// it (the server acknowledges in the order batches were sent, so an
    /// acknowledgement covers all earlier ones). Returns how many were freed;
    /// 0 for an acknowledgement of a batch no longer held (dropped, or
    /// already freed).
    pub fn ack(&mut self, boot_id: u64, seq: u64) -> usize {
        let Some(pos) = self
            .queue
            .iter()
            .take(self.in_flight)
            .position(|b| b.boot_id == boot_id && b.seq == seq)
        else {
            return 0;
        };
        self.queue.drain(..=pos);
        self.in_flight = self.in_flight.saturating_sub(pos + 1);
        pos + 1
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Batches dropped because the buffer was full, since start.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Batches produced since start.
    pub fn produced_total(&self) -> u64 {
        self.produced_total
    }

    /// The batch pushed last, if still held.
    pub fn newest(&self) -> Option<&TickBatch> {
        self.queue.back()
    }

    /// Iterates the batches held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &TickBatch> {
        self.queue.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor::batch::MetricValues;

    fn b(seq: u64) -> TickBatch {
        TickBatch {
            boot_id: 1,
            seq,
            time_unix_ms: seq as i64 * 1000,
            values: MetricValues::default(),
            health: Box::default(),
        }
    }

    fn seqs(buf: &Buffer) -> Vec<u64> {
        buf.iter().map(|b| b.seq).collect()
    }

    #[test]
    fn send_ack_rewind() {
        let mut buf = Buffer::new(10);
        for s in 1..=4 {
            buf.push(b(s));
        }
        assert_eq!(buf.next_to_send().map(|b| b.seq), Some(1));
        assert_eq!(buf.next_to_send().map(|b| b.seq), Some(2));
        assert_eq!(buf.in_flight(), 2);
        assert_eq!(buf.ack(1, 1), 1);
        assert_eq!(buf.in_flight(), 1);
        // The connection drops: batch 2 was sent but never acknowledged.
        buf.rewind();
        assert_eq!(buf.next_to_send().map(|b| b.seq), Some(2));
        assert_eq!(buf.next_to_send().map(|b| b.seq), Some(3));
        // An acknowledgement for a batch never sent frees nothing.
        assert_eq!(buf.ack(1, 4), 0);
        assert_eq!(buf.ack(1, 3), 2);
        assert_eq!(seqs(&buf), vec![4]);
        assert_eq!(buf.in_flight(), 0);
        assert_eq!(buf.next_to_send().map(|b| b.seq), Some(4));
        assert!(!buf.has_unsent());
    }

    #[test]
    fn full_buffer_drops_the_oldest_and_counts_it() {
        let mut buf = Buffer::new(3);
        for s in 1..=3 {
            assert_eq!(buf.push(b(s)), None);
        }
        buf.next_to_send();
        assert_eq!(buf.push(b(4)).map(|b| b.seq), Some(1));
        assert_eq!(buf.push(b(5)).map(|b| b.seq), Some(2));
        assert_eq!(seqs(&buf), vec![3, 4, 5]);
        assert_eq!(buf.dropped_total(), 2);
        assert_eq!(buf.produced_total(), 5);
        assert_eq!(buf.in_flight(), 0);
        assert_eq!(buf.next_to_send().map(|b| b.seq), Some(3));
    }

    #[test]
    fn a_late_ack_for_dropped_batches_frees_nothing_else() {
        let mut buf = Buffer::new(2);
        for s in 1..=4 {
            buf.push(b(s));
        }
        assert_eq!(buf.ack(1, 2), 0);
        assert_eq!(seqs(&buf), vec![3, 4]);
    }

    #[test]
    fn batches_of_an_earlier_run_are_sent_first_and_acked_by_their_own_id() {
        let mut buf = Buffer::new(10);
        // Restored from the spool: run 7, seqs 40 and 41.
        for s in [40, 41] {
            buf.restore(TickBatch { boot_id: 7, ..b(s) });
        }
        buf.push(b(1));
        let sent: Vec<(u64, u64)> =
            std::iter::from_fn(|| buf.next_to_send().map(|b| (b.boot_id, b.seq))).collect();
        assert_eq!(sent, vec![(7, 40), (7, 41), (1, 1)]);
        assert_eq!(buf.ack(7, 40), 1);
        // An ack for the current run's batch covers the older ones.
        assert_eq!(buf.ack(1, 1), 2);
        assert!(buf.is_empty());
        assert_eq!(buf.produced_total(), 1);
    }
}
