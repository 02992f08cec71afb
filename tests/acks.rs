//! Cumulative acknowledgements on the real server: a client that announces
//! its window (`Batch.ack_window`, as this agent does) gets fewer acks than
//! batches, each saying how many it answers (`Ack.batches`), with refusals
//! still answered at once and in order; a client that does not (every agent
//! before the field) gets exactly one ack per batch. And the real agent,
//! which now announces it, stops at once after `--count` (it ends its
//! request stream, so the server sends what it holds) with every batch
//! stored once.

// Test support code panics on purpose when the harness cannot proceed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use monitor::pb;

/// How long a test waits for all the answers it expects: well past the
/// server's longest hold (5 s).
const ANSWERS_WITHIN: Duration = Duration::from_secs(30);

fn batch(host: &str, seq: u64, value: f64, ack_window: u32) -> pb::Batch {
    let now = monitor::time::now_unix_ms();
    pb::Batch {
        ack_window,
        ..one_sample(
            (host, 11, seq),
            now - 60_000 + seq as i64,
            "cpu_percent",
            value,
        )
    }
}

/// Sends `batches` on one Report stream and reads acks until they answer
/// all of them (each answers `max(batches, 1)`): the acks as (seq,
/// batches, code), in order.
async fn answers(server: &Server, batches: Vec<pb::Batch>) -> Vec<(u64, u32, i32)> {
    let n = batches.len();
    let channel = server.channel(&batches[0].hostname).await;
    let mut client = pb::collector_client::CollectorClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    for b in batches {
        tx.send(b).await.unwrap();
    }
    let mut acks = client
        .report(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let deadline = tokio::time::Instant::now() + ANSWERS_WITHIN;
    let mut got = Vec::new();
    let mut answered = 0;
    while answered < n {
        let ack = tokio::time::timeout_at(deadline, acks.message())
            .await
            .unwrap_or_else(|_| panic!("answers to {n} batches in time; got {got:?}"))
            .expect("stream ok")
            .expect("an ack");
        answered += ack.batches.max(1) as usize;
        got.push((ack.seq, ack.batches, ack.code));
    }
    assert_eq!(answered, n, "no ack answers more than was sent: {got:?}");
    drop(tx);
    got
}

const OK: i32 = pb::AckCode::Ok as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_announces_a_window_gets_cumulative_acks_and_an_old_one_one_per_batch() {
    let dir = TempDir::new("acks");
    let server = Server::start(&dir.join("m.db"));

    // An agent before Batch.ack_window: one ack per batch, in order.
    let old: Vec<_> = (1..=10).map(|s| batch("old-1", s, 1.0, 0)).collect();
    let got = answers(&server, old).await;
    assert_eq!(
        got,
        (1..=10).map(|s| (s, 0, OK)).collect::<Vec<_>>(),
        "one plain ack per batch"
    );

    // This agent's window: all ten are answered by fewer acks, the last
    // naming the last batch, every one "stored".
    let new: Vec<_> = (1..=10).map(|s| batch("new-1", s, 1.0, 64)).collect();
    let got = answers(&server, new).await;
    assert!(got.len() < 10, "fewer acks than batches: {got:?}");
    assert!(
        got.iter().all(|&(_, b, code)| b >= 1 && code == OK),
        "{got:?}"
    );
    assert_eq!(got.last().map(|a| a.0), Some(10), "{got:?}");

    // A window of 8: at most 4 batches per ack.
    let small: Vec<_> = (1..=10).map(|s| batch("new-2", s, 1.0, 8)).collect();
    let got = answers(&server, small).await;
    assert!(got.iter().all(|&(_, b, _)| (1..=4).contains(&b)), "{got:?}");
    assert!(got.len() >= 3, "{got:?}");

    // Everything of the three streams stored, once.
    let server = tokio::task::spawn_blocking(move || {
        for host in ["old-1", "new-1", "new-2"] {
            assert_eq!(server.samples(host, "10m").len(), 10, "{host}");
        }
        server
    })
    .await
    .unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_answered_at_once_after_the_stored_batches_before_it() {
    let dir = TempDir::new("acks-refusal");
    let server = Server::start(&dir.join("m.db"));
    let mut sends: Vec<_> = (1..=6).map(|s| batch("pi-r", s, 1.0, 64)).collect();
    // Batch 4 is invalid.
    sends[3] = batch("pi-r", 4, f64::NAN, 64);
    let started = Instant::now();
    let got = answers(&server, sends).await;
    let invalid = pb::AckCode::Invalid as i32;
    let at = got
        .iter()
        .position(|&(seq, _, code)| seq == 4 && code == invalid)
        .unwrap_or_else(|| panic!("batch 4 refused: {got:?}"));
    // Everything before it answered before it, as stored, and the refusal
    // answers batch 4 alone.
    let before: u32 = got[..at].iter().map(|a| a.1.max(1)).sum();
    assert_eq!(before, 3, "{got:?}");
    assert!(got[..at].iter().all(|a| a.2 == OK), "{got:?}");
    assert_eq!(got[at].1, 0, "{got:?}");
    assert_eq!(got.last().map(|a| (a.0, a.2)), Some((6, OK)), "{got:?}");
    // The last two waited for the hold (a refusal does not flush what
    // comes after it).
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn the_agent_stops_without_waiting_for_a_held_ack_and_loses_nothing() {
    let dir = TempDir::new("acks-agent");
    let server = Server::start(&dir.join("m.db"));
    // Six ticks at 0.2 s, then --count waits for the acknowledgements, at
    // most 1.5 s: were the server still holding the ack (up to 5 s after
    // the first stored batch), the agent would give up and say the
    // batches are lost.
    let mut agent = server
        .agent("pi-count")
        .arg("--interval")
        .arg("0.2")
        .arg("--count")
        .arg("6")
        .arg("--shutdown-timeout")
        .arg("1.5s")
        .spawn();
    let status = agent.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    let log = agent.stderr.dump();
    assert!(!log.contains("lost"), "{log}");
    assert!(!log.contains("retrying"), "{log}");
    // Six distinct ticks stored, each once.
    let samples = server.samples("pi-count", "10m");
    let mut times: Vec<&str> = samples
        .iter()
        .filter(|s| s.metric == "mem_percent")
        .map(|s| s.time.as_str())
        .collect();
    times.dedup();
    assert_eq!(times.len(), 6, "{samples:?}");
}
