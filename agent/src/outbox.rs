//! The Report stream's sending half: puts the buffered batches that are due
//! on the open stream, encoded (`wire::encode_batch`), in sequence order,
//! within the send window.
//!
//! It is called where a batch becomes due, so no task is woken just to pass
//! a batch along: by the sampler after the tick that completes a write (the
//! tonic request stream's task is the only one woken, and it encodes every
//! ready message into one DATA frame), and by the Report task when an ack
//! frees room in the window, a rate-limited pause ends, or the stream opens
//! with batches buffered. Between ticks that complete no write, and between
//! acks, the Report task sleeps.
//!
//! Must never block or await (the sampler calls it), never send out of
//! order or past the window, and never send during a rate-limited pause.

use monitor::wire::{AgentCounters, AgentIdentity, Envelope, encode_batch};
use prost::bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::buffer::Buffer;

/// Most batches sent and not yet acknowledged on one session: enough to
/// cover the round trip while catching up after an outage, small enough to
/// bound what is re-sent after a drop.
pub const SEND_WINDOW: usize = 64;
// A write of the most ticks fits in the window (`flush.rs`).
const _: () = assert!(crate::flush::MAX_TICKS_PER_WRITE <= SEND_WINDOW / 2);
/// The encoding buffer's size: a whole write's batches must fit, since
/// they are all in the channel at once (ten batches of about 700 bytes at
/// 0.1 s with the default flush interval). Once tonic has copied them out,
/// the space is reused (`BytesMut::reserve` takes back a buffer no `Bytes`
/// shares any more): no allocation per write in the steady state.
const ENCODE_BUFFER_BYTES: usize = 8192;

/// What the stream keeps between sends and acks.
#[derive(Debug, Default)]
pub struct Pacing {
    /// Batches sent on this stream whose answer has not come yet (the
    /// server answers each batch once, in order; one ack may answer
    /// several).
    pub unanswered: usize,
    /// Batches whose answers are still to come for a pass abandoned after
    /// a rate-limited refusal: ignored.
    pub stale: usize,
    /// Nothing is sent before this.
    pub resume_at: Option<Instant>,
    /// Rate-limited refusals on this stream, and when the last warning
    /// about them went out.
    pub limited_total: u64,
    pub last_warned: Option<Instant>,
}

impl Pacing {
    pub fn paused(&self, now: Instant) -> bool {
        self.resume_at.is_some_and(|t| now < t)
    }
}

/// The open Report stream's sending side (one per stream; `Shared::outbox`
/// holds it while the stream is open).
#[derive(Debug)]
pub struct Outbox {
    /// tonic's request stream: each message one encoded batch.
    tx: mpsc::Sender<Bytes>,
    /// Batches are encoded here, each split off as its own `Bytes`: tonic
    /// copies it into the stream's buffer at once, so by the next write
    /// the space is this buffer's alone again and is reused, not
    /// reallocated.
    encoded: BytesMut,
    /// `Batch.ack_window`, announced in every batch.
    ack_window: u32,
    /// A write under way: it began when one was due and goes on until
    /// nothing is left unsent (the window may split it).
    writing: bool,
    /// The first seq of the write under way (for the debug log).
    write_first: Option<u64>,
    pub pacing: Pacing,
}

impl Outbox {
    /// The sending side of a stream whose requests go into `tx`; a write
    /// starts at once if `backlog` (what is buffered when the stream opens
    /// goes out at once, so a host the server sees online has its values
    /// a moment later, not a flush interval later).
    pub fn new(tx: mpsc::Sender<Bytes>, ack_window: u32, backlog: bool) -> Outbox {
        Outbox {
            tx,
            encoded: BytesMut::with_capacity(ENCODE_BUFFER_BYTES),
            ack_window,
            writing: backlog,
            write_first: None,
            pacing: Pacing::default(),
        }
    }

    /// Whether a write is under way.
    pub fn writing(&self) -> bool {
        self.writing
    }

    /// Starts a write (one is due).
    pub fn start_write(&mut self) {
        self.writing = true;
    }

    /// Sends the unsent batches of `buffer`, in order, while a write is
    /// under way, no pause holds, and the window has room; returns how many
    /// went out. A closed stream takes nothing (the Report task sees it end).
    pub fn send(
        &mut self,
        buffer: &mut Buffer,
        id: &AgentIdentity,
        counters: AgentCounters,
        now: Instant,
    ) -> usize {
        if !self.writing || self.pacing.paused(now) {
            return 0;
        }
        let envelope = Envelope {
            id,
            sent_unix_ms: monitor::time::now_unix_ms(),
            counters,
            ack_window: self.ack_window,
        };
        let mut sent = 0;
        while buffer.in_flight() < SEND_WINDOW
            && self.pacing.unanswered < SEND_WINDOW
            && self.tx.capacity() > 0
            && !self.tx.is_closed()
        {
            let Some(batch) = buffer.next_to_send() else {
                break;
            };
            let seq = batch.seq;
            encode_batch(&envelope, batch, &mut self.encoded);
            if self.tx.try_send(self.encoded.split().freeze()).is_err() {
                // Closed: the session is ending; the next one re-sends
                // from the oldest unacknowledged batch (`Buffer::rewind`).
                break;
            }
            sent += 1;
            self.pacing.unanswered += 1;
            self.write_first.get_or_insert(seq);
            if !buffer.has_unsent() {
                self.writing = false;
                if let Some(first) = self.write_first.take() {
                    log::debug!("batches {first} to {seq} handed to the connection together");
                }
            }
        }
        sent
    }

    /// Ends the request stream (the sampler has stopped and everything is
    /// sent): the server then answers what it holds at once. The pacing
    /// goes on reading the last answers.
    pub fn close(self) -> Pacing {
        self.pacing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor::batch::{MetricValues, TickBatch};
    use std::time::Duration;

    fn buffer(batches: u64) -> Buffer {
        let mut buffer = Buffer::new(1000);
        for seq in 1..=batches {
            buffer.push(TickBatch {
                boot_id: 1,
                seq,
                time_unix_ms: seq as i64,
                values: MetricValues::default(),
                health: Box::default(),
            });
        }
        buffer
    }

    fn id() -> AgentIdentity {
        AgentIdentity {
            agent_id: "pi".into(),
            hostname: "pi".into(),
            agent_version: "0".into(),
            boot_id: 1,
        }
    }

    /// The seqs of the batches waiting in the request stream, in order.
    fn received(rx: &mut mpsc::Receiver<Bytes>) -> Vec<u64> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|bytes| {
                let batch = <monitor::pb::Batch as prost::Message>::decode(bytes).unwrap();
                assert_eq!(batch.ack_window, 8, "every batch announces the window");
                batch.seq
            })
            .collect()
    }

    #[test]
    fn a_write_sends_every_unsent_batch_in_order_then_ends() {
        let (tx, mut rx) = mpsc::channel(SEND_WINDOW);
        let mut outbox = Outbox::new(tx, 8, false);
        let mut buf = buffer(3);
        let now = Instant::now();
        // No write under way: nothing goes.
        assert_eq!(
            outbox.send(&mut buf, &id(), AgentCounters::default(), now),
            0
        );
        outbox.start_write();
        assert_eq!(
            outbox.send(&mut buf, &id(), AgentCounters::default(), now),
            3
        );
        assert_eq!(received(&mut rx), [1, 2, 3]);
        assert!(!outbox.writing(), "the write ends when nothing is unsent");
        assert_eq!(outbox.pacing.unanswered, 3);
        assert_eq!(buf.in_flight(), 3);
    }

    #[test]
    fn nothing_goes_past_the_window_or_during_a_pause() {
        let (tx, mut rx) = mpsc::channel(SEND_WINDOW);
        let mut outbox = Outbox::new(tx, 8, true);
        let mut buf = buffer(SEND_WINDOW as u64 + 5);
        let now = Instant::now();
        let counters = AgentCounters::default();
        assert_eq!(outbox.send(&mut buf, &id(), counters, now), SEND_WINDOW);
        assert_eq!(received(&mut rx).len(), SEND_WINDOW);
        assert!(
            outbox.writing(),
            "the write goes on once the window has room"
        );
        // Room again, but paused.
        assert_eq!(buf.ack(1, 2), 2);
        outbox.pacing.unanswered -= 2;
        outbox.pacing.resume_at = Some(now + Duration::from_secs(1));
        assert_eq!(outbox.send(&mut buf, &id(), counters, now), 0);
        let later = now + Duration::from_secs(1);
        assert_eq!(outbox.send(&mut buf, &id(), counters, later), 2);
        assert_eq!(
            received(&mut rx),
            [SEND_WINDOW as u64 + 1, SEND_WINDOW as u64 + 2]
        );
    }

    #[test]
    fn a_closed_stream_takes_nothing() {
        let (tx, rx) = mpsc::channel(SEND_WINDOW);
        drop(rx);
        let mut outbox = Outbox::new(tx, 8, true);
        let mut buf = buffer(2);
        let sent = outbox.send(&mut buf, &id(), AgentCounters::default(), Instant::now());
        assert_eq!(sent, 0);
        assert_eq!(outbox.pacing.unanswered, 0);
    }
}
