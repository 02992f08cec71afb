//! The Report stream: batches up in sequence order within the send window,
//! acknowledgements down; an acknowledged batch is freed from the buffer
//! (and the spool).
//!
//! A batch the server did not take because this host sent too much
//! (`ACK_CODE_RATE_LIMITED`) is never freed: the stream pauses for
//! [`RATE_LIMITED_PAUSE`], then re-sends everything unacknowledged from the
//! oldest, as after a reconnect. The acks of the batches already sent after
//! it are ignored (they answer a pass that was abandoned, and the server's
//! de-duplication makes the re-send safe whatever they said), so a late
//! "stored" for a later batch can never free the refused one.
//!
//! Batches go out when a write is due (`flush.rs`): at a short interval
//! the ticks of one flush interval are handed over together, and tonic
//! encodes them into one DATA frame; the stream then sends until nothing
//! is left unsent (within the window). What is buffered when the stream
//! opens (the first tick, or a backlog after a reconnect) goes out at once.
//! The sending itself is the stream's [`Outbox`], done by whoever makes a
//! write due: the sampler, or this task when an ack makes room, so at 1 s
//! this task sleeps from one ack to the next instead of waking every tick.
//!
//! Every batch announces the window (`Batch.ack_window`: the send window, or
//! the buffer when that is smaller), so a server
//! that knows cumulative acks answers several stored batches with one ack
//! (`Ack.batches`): at 1 s ticks the agent then wakes for an answer every
//! few seconds instead of at every tick. An older server answers each
//! batch, which reads the same way. Once the sampler has stopped and
//! everything is sent, the stream ends its half, so the server sends what
//! it holds at once and a shutdown waits for no hold.

use std::cell::Cell;
use std::time::Duration;

use monitor::codec::PreEncodedCodec;
use monitor::pb;
use prost::bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use super::{MAX_SERVER_MESSAGE_BYTES, SessionError};
use crate::outbox::{Outbox, Pacing, SEND_WINDOW};
use crate::state::Shared;

/// The Report call's path (`/package.Service/Method`, as the generated
/// client spells it; a test checks it against the generated service name).
const REPORT_PATH: &str = "/monitor.v1.Collector/Report";
/// The service `REPORT_PATH` calls.
const SERVICE: &str = monitor::pb::collector_server::SERVICE_NAME;

/// How long the stream waits after a rate-limited refusal before it sends
/// again: the server refills a host's budget at 50 batches a second, so a
/// second buys a window's worth.
pub const RATE_LIMITED_PAUSE: Duration = Duration::from_secs(1);
/// The window every batch announces (`Batch.ack_window`): the server holds
/// the acks of at most half of it. It is the send window, or the buffer if
/// that is smaller: a server holding the acks of more batches than the
/// buffer keeps would make the buffer drop batches that were stored but
/// not yet acknowledged (with `--buffer-batches 20` at 0.1 s, a 2.5 s hold
/// is 25 batches).
fn ack_window(buffer_capacity: usize) -> u32 {
    u32::try_from(SEND_WINDOW.min(buffer_capacity)).unwrap_or(u32::MAX)
}
/// At most one warning a minute about being rate limited (the rest at
/// debug level).
const RATE_LIMITED_LOG_EVERY: Duration = Duration::from_secs(60);

/// Holds the stream's [`Outbox`] in `Shared::outbox` while this stream is
/// open, and takes it out however the stream ends (an error, or the
/// session dropping it), so nothing is sent into a closed stream and the
/// next stream starts afresh.
struct Installed<'a>(&'a Shared);

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        self.0.outbox.borrow_mut().take();
    }
}

/// The Report stream: sends buffered batches in order within the window,
/// frees them as acknowledgements arrive. The sampler sends the writes it
/// makes due itself (`Shared::send_due`); this task wakes for acks, the
/// end of a pause, and the sampler's stop.
pub(super) async fn run(
    channel: Channel,
    shared: &Shared,
    healthy: &Cell<bool>,
) -> Result<(), SessionError> {
    // Room for a whole window: the batches of one write must all be in the
    // channel before tonic's encoder runs, which takes every ready message
    // into one buffer (one DATA frame, one write).
    let (tx, rx) = mpsc::channel::<Bytes>(SEND_WINDOW);
    shared.buffer.borrow_mut().rewind();
    let mut acks = open(channel, rx).await?;
    if !shared.connected.replace(true) {
        log::info!(
            "connected to the server ({} batches to send)",
            shared.buffer.borrow().len()
        );
    }
    let window = ack_window(shared.buffer.borrow().capacity());
    // What is buffered when the stream opens (the first tick, or a backlog
    // after a reconnect) goes out at once.
    let backlog = shared.buffer.borrow().has_unsent();
    *shared.outbox.borrow_mut() = Some(Outbox::new(tx, window, backlog));
    let installed = Installed(shared);
    shared.send_due();
    loop {
        if shared.sampling_done.get() && !shared.buffer.borrow().has_unsent() {
            // Nothing more will be sent: end the request stream (dropping
            // its sender), then read the answers to what is in flight
            // until the server ends too.
            let outbox = shared.outbox.borrow_mut().take();
            drop(installed);
            let mut pacing = outbox.map(Outbox::close).unwrap_or_default();
            while !shared.buffer.borrow().is_empty() {
                let Some(ack) = acks.message().await? else {
                    return Err(SessionError::Closed("report"));
                };
                healthy.set(true);
                on_ack(shared, &mut pacing, &ack, Instant::now());
            }
            // All acknowledged: the agent is stopping and ends this task.
            return std::future::pending().await;
        }
        let resume_at = shared
            .outbox
            .borrow()
            .as_ref()
            .and_then(|o| o.pacing.resume_at);
        tokio::select! {
            biased;
            msg = acks.message() => {
                let Some(ack) = msg? else {
                    return Err(SessionError::Closed("report"));
                };
                healthy.set(true);
                if let Some(outbox) = shared.outbox.borrow_mut().as_mut() {
                    on_ack(shared, &mut outbox.pacing, &ack, Instant::now());
                }
                // An ack may have made room in the window.
                shared.send_due();
            }
            () = sleep_until_some(resume_at) => {
                if let Some(outbox) = shared.outbox.borrow_mut().as_mut() {
                    outbox.pacing.resume_at = None;
                }
                shared.send_due();
            }
            () = shared.sampler_stopped.notified() => shared.send_due(),
        }
    }
}

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Opens the Report stream: requests are the batches `rx` carries, already
/// encoded (`wire::encode_batch`), answers the server's acks.
async fn open(
    channel: Channel,
    rx: mpsc::Receiver<Bytes>,
) -> Result<Streaming<pb::Ack>, SessionError> {
    let mut grpc =
        tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_SERVER_MESSAGE_BYTES);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new(SERVICE, "Report"));
    let response = grpc
        .streaming(
            request,
            PathAndQuery::from_static(REPORT_PATH),
            PreEncodedCodec::<pb::Ack>::default(),
        )
        .await?;
    Ok(response.into_inner())
}

/// How many sent batches `ack` answers: several for a cumulative ack,
/// else one (`batches` is 0 from servers before cumulative acks).
fn answered(ack: &pb::Ack) -> usize {
    usize::try_from(ack.batches).unwrap_or(usize::MAX).max(1)
}

fn on_ack(shared: &Shared, pacing: &mut Pacing, ack: &pb::Ack, now: Instant) {
    let answered = answered(ack);
    pacing.unanswered = pacing.unanswered.saturating_sub(answered);
    if pacing.stale > 0 {
        // An answer to the abandoned pass: whatever it says, the batch is
        // sent again (and a stored one is then acknowledged as such). The
        // server never lets one ack span the end of a pass (a refusal
        // goes out alone); if one did, freeing nothing is still safe: a
        // later ack frees every batch before its own.
        pacing.stale = pacing.stale.saturating_sub(answered);
        return;
    }
    match pb::AckCode::try_from(ack.code) {
        Ok(pb::AckCode::Ok) => {}
        Ok(pb::AckCode::Invalid) => log::error!(
            "the server refused batch {} as invalid: {}",
            ack.seq,
            monitor::text::Escaped::capped(&ack.message)
        ),
        Ok(pb::AckCode::SequenceOutOfRange) => log::error!(
            "the server refused batch {}: its seq is out of range: {}",
            ack.seq,
            monitor::text::Escaped::capped(&ack.message)
        ),
        Ok(pb::AckCode::Conflict) => log::error!(
            "the server refused batch {}: it contradicts stored samples: {}",
            ack.seq,
            monitor::text::Escaped::capped(&ack.message)
        ),
        // Not stored: keep it; the server ends the stream and the batch is
        // sent again after the reconnect.
        Ok(pb::AckCode::Unavailable) => {
            log::warn!(
                "the server could not store batch {}: {}",
                ack.seq,
                monitor::text::Escaped::capped(&ack.message)
            );
            return;
        }
        // Not stored: keep it, pause, and re-send from the oldest.
        Ok(pb::AckCode::RateLimited) => {
            rate_limited(shared, pacing, ack, now);
            return;
        }
        Err(_) => log::error!(
            "the server refused batch {} with code {}: {}",
            ack.seq,
            ack.code,
            monitor::text::Escaped::capped(&ack.message)
        ),
    }
    let freed = shared.buffer.borrow_mut().ack(ack.boot_id, ack.seq);
    if freed > 0 {
        if shared.buffer.borrow().is_empty() {
            shared.with_spool(|spool, _| spool.clear());
        }
        shared.buffer_drained.notify_waiters();
    } else {
        log::debug!(
            "acknowledgement for batch {:016x}/{} not held",
            ack.boot_id,
            ack.seq
        );
    }
}

/// The server did not take batch `ack.seq` because this host sent too
/// much: keep it, ignore the answers to what was sent after it, and send
/// everything unacknowledged again from the oldest after a pause.
fn rate_limited(shared: &Shared, pacing: &mut Pacing, ack: &pb::Ack, now: Instant) {
    pacing.stale = pacing.unanswered;
    pacing.resume_at = Some(now + RATE_LIMITED_PAUSE);
    pacing.limited_total += 1;
    shared.buffer.borrow_mut().rewind();
    let due = pacing
        .last_warned
        .is_none_or(|t| now.saturating_duration_since(t) >= RATE_LIMITED_LOG_EVERY);
    let line = format!(
        "the server is rate limiting this host: batch {} not stored yet; sending again from \
         the oldest unacknowledged batch in {:.1}s ({} times on this connection)",
        ack.seq,
        RATE_LIMITED_PAUSE.as_secs_f64(),
        pacing.limited_total
    );
    if due {
        pacing.last_warned = Some(now);
        log::warn!("{line}");
    } else {
        log::debug!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor::batch::{MetricValues, TickBatch};
    use monitor::wire::AgentIdentity;

    fn shared(batches: u64) -> Shared {
        let identity = AgentIdentity {
            agent_id: "pi".into(),
            hostname: "pi".into(),
            agent_version: "0".into(),
            boot_id: 1,
        };
        let shared = Shared::new(identity, 100, Duration::from_secs(1));
        for seq in 1..=batches {
            shared.buffer.borrow_mut().push(TickBatch {
                boot_id: 1,
                seq,
                time_unix_ms: seq as i64,
                values: MetricValues::default(),
                health: Box::default(),
            });
        }
        shared
    }

    fn ack(seq: u64, code: pb::AckCode) -> pb::Ack {
        pb::Ack {
            boot_id: 1,
            seq,
            code: code as i32,
            message: String::new(),
            server_unix_ms: 0,
            batches: 0,
        }
    }

    /// Sends `n` batches (as `run` does) and returns their seqs.
    fn send(shared: &Shared, pacing: &mut Pacing, n: usize) -> Vec<u64> {
        (0..n)
            .filter_map(|_| {
                let seq = shared.buffer.borrow_mut().next_to_send()?.seq;
                pacing.unanswered += 1;
                Some(seq)
            })
            .collect()
    }

    fn held(shared: &Shared) -> Vec<u64> {
        shared.buffer.borrow().iter().map(|b| b.seq).collect()
    }

    #[test]
    fn a_rate_limited_batch_is_kept_and_sent_again_after_a_pause() {
        let s = shared(6);
        let mut p = Pacing::default();
        let now = Instant::now();
        assert_eq!(send(&s, &mut p, 6), [1, 2, 3, 4, 5, 6]);
        on_ack(&s, &mut p, &ack(1, pb::AckCode::Ok), now);
        on_ack(&s, &mut p, &ack(2, pb::AckCode::RateLimited), now);
        // Kept, and everything after it too; nothing goes out for a second.
        assert_eq!(held(&s), [2, 3, 4, 5, 6]);
        assert!(p.paused(now));
        assert!(p.paused(now + Duration::from_millis(999)));
        assert!(!p.paused(now + RATE_LIMITED_PAUSE));
        // The answers to the abandoned pass (3 to 6) free nothing, even a
        // late "stored" for 5 that arrives after the re-send began.
        assert_eq!(send(&s, &mut p, 2), [2, 3]);
        for (seq, code) in [
            (3, pb::AckCode::RateLimited),
            (4, pb::AckCode::Ok),
            (5, pb::AckCode::Ok),
            (6, pb::AckCode::Invalid),
        ] {
            on_ack(&s, &mut p, &ack(seq, code), now);
        }
        assert_eq!(held(&s), [2, 3, 4, 5, 6]);
        assert_eq!(p.limited_total, 1, "stale refusals do not pause again");
        // The re-send's own answers count again.
        on_ack(&s, &mut p, &ack(2, pb::AckCode::Ok), now);
        assert_eq!(held(&s), [3, 4, 5, 6]);
        assert_eq!(p.unanswered, 1);
    }

    #[test]
    fn a_refusal_of_the_re_send_pauses_again() {
        let s = shared(3);
        let mut p = Pacing::default();
        let t0 = Instant::now();
        send(&s, &mut p, 3);
        on_ack(&s, &mut p, &ack(1, pb::AckCode::RateLimited), t0);
        on_ack(&s, &mut p, &ack(2, pb::AckCode::RateLimited), t0);
        on_ack(&s, &mut p, &ack(3, pb::AckCode::RateLimited), t0);
        let t1 = t0 + RATE_LIMITED_PAUSE;
        assert!(!p.paused(t1));
        assert_eq!(send(&s, &mut p, 3), [1, 2, 3]);
        on_ack(&s, &mut p, &ack(1, pb::AckCode::RateLimited), t1);
        assert!(p.paused(t1));
        assert_eq!(held(&s), [1, 2, 3]);
        assert_eq!(p.limited_total, 2);
    }

    fn cumulative(seq: u64, batches: u32) -> pb::Ack {
        pb::Ack {
            batches,
            ..ack(seq, pb::AckCode::Ok)
        }
    }

    #[test]
    fn a_cumulative_ack_answers_and_frees_every_batch_it_covers() {
        let s = shared(6);
        let mut p = Pacing::default();
        let now = Instant::now();
        assert_eq!(send(&s, &mut p, 6), [1, 2, 3, 4, 5, 6]);
        on_ack(&s, &mut p, &cumulative(4, 4), now);
        assert_eq!(held(&s), [5, 6]);
        assert_eq!(p.unanswered, 2, "four answered by one ack");
        assert_eq!(s.buffer.borrow().in_flight(), 2);
        // An older server's ack (batches 0) answers its batch alone.
        on_ack(&s, &mut p, &ack(5, pb::AckCode::Ok), now);
        assert_eq!(held(&s), [6]);
        assert_eq!(p.unanswered, 1);
        // A server cannot make the count go below zero.
        on_ack(&s, &mut p, &cumulative(6, 1000), now);
        assert!(held(&s).is_empty());
        assert_eq!(p.unanswered, 0);
    }

    #[test]
    fn cumulative_acks_of_an_abandoned_pass_free_nothing() {
        let s = shared(6);
        let mut p = Pacing::default();
        let now = Instant::now();
        send(&s, &mut p, 6);
        on_ack(&s, &mut p, &cumulative(1, 1), now);
        on_ack(&s, &mut p, &ack(2, pb::AckCode::RateLimited), now);
        assert_eq!(p.stale, 4);
        // One ack for the four of the abandoned pass: ignored whole.
        on_ack(&s, &mut p, &cumulative(6, 4), now);
        assert_eq!(held(&s), [2, 3, 4, 5, 6]);
        assert_eq!((p.stale, p.unanswered), (0, 0));
        // The re-send's cumulative ack counts again.
        assert_eq!(send(&s, &mut p, 5), [2, 3, 4, 5, 6]);
        on_ack(&s, &mut p, &cumulative(6, 5), now);
        assert!(held(&s).is_empty());
    }

    #[test]
    fn the_report_path_is_the_generated_service_s() {
        assert_eq!(REPORT_PATH, format!("/{SERVICE}/Report"));
    }

    #[test]
    fn the_window_announced_is_never_more_than_the_buffer_holds() {
        assert_eq!(ack_window(8192), SEND_WINDOW as u32);
        assert_eq!(ack_window(SEND_WINDOW), SEND_WINDOW as u32);
        assert_eq!(ack_window(20), 20);
        assert_eq!(ack_window(1), 1);
    }

    #[test]
    fn a_seq_out_of_range_is_freed_like_an_invalid_batch() {
        let s = shared(2);
        let mut p = Pacing::default();
        send(&s, &mut p, 2);
        on_ack(
            &s,
            &mut p,
            &ack(1, pb::AckCode::SequenceOutOfRange),
            Instant::now(),
        );
        assert_eq!(held(&s), [2]);
        assert!(!p.paused(Instant::now()));
    }
}
