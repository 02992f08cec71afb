//! The Report stream: batches up in sequence order within the send window,
//! acknowledgements down; an acknowledged batch is freed from the buffer
//! (and the spool).

use std::cell::Cell;

use monitor::pb;
use monitor::pb::collector_client::CollectorClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{SEND_WINDOW, SessionError};
use crate::state::Shared;

/// The Report stream: sends buffered batches in order within the window,
/// frees them as acknowledgements arrive.
pub(super) async fn run(
    mut client: CollectorClient<Channel>,
    shared: &Shared,
    healthy: &Cell<bool>,
) -> Result<(), SessionError> {
    let (tx, rx) = mpsc::channel::<pb::Batch>(8);
    shared.buffer.borrow_mut().rewind();
    let mut acks = client.report(ReceiverStream::new(rx)).await?.into_inner();
    if !shared.connected.replace(true) {
        log::info!(
            "connected to the server ({} batches to send)",
            shared.buffer.borrow().len()
        );
    }
    loop {
        let can_send = {
            let buffer = shared.buffer.borrow();
            buffer.has_unsent() && buffer.in_flight() < SEND_WINDOW
        };
        tokio::select! {
            biased;
            msg = acks.message() => {
                let Some(ack) = msg? else {
                    return Err(SessionError::Closed("report"));
                };
                healthy.set(true);
                on_ack(shared, &ack);
            }
            permit = tx.reserve(), if can_send => {
                let Ok(permit) = permit else {
                    return Err(SessionError::Closed("report"));
                };
                let next = shared.buffer.borrow_mut().next_to_send();
                if let Some(batch) = next {
                    let pb = monitor::wire::batch_to_pb(
                        &shared.identity,
                        &batch,
                        monitor::time::now_unix_ms(),
                        shared.counters(),
                    );
                    permit.send(pb);
                }
            }
            () = shared.batch_ready.notified(), if !can_send => {}
        }
    }
}

fn on_ack(shared: &Shared, ack: &pb::Ack) {
    match pb::AckCode::try_from(ack.code) {
        Ok(pb::AckCode::Ok) => {}
        Ok(pb::AckCode::Invalid) => log::error!(
            "the server refused batch {} as invalid: {}",
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
