//! The process runner against real processes: output and exit status,
//! stream separation, the output cap, timeout, cancel, a closed channel and
//! process-group cleanup (no pid of the command survives), start failures,
//! the fixed environment and the concurrency limit.
//!
//! Every wait is bounded: pids are polled until gone or a deadline passes.

use std::time::{Duration, Instant};

use monitor_agent::commands::{
    CHILD_ENV, CancelSignal, ExecEvent, Finished, Limits, Outcome, Slots, cancel_pair, run,
};
use tokio::sync::mpsc;

/// Limits that keep the tests fast: a short grace, a generous timeout.
fn limits() -> Limits {
    Limits {
        default_timeout: Duration::from_secs(20),
        kill_grace: Duration::from_millis(200),
        ..Limits::default()
    }
}

fn argv(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn sh(script: &str) -> Vec<String> {
    argv(&["/bin/sh", "-c", script])
}

struct Ran {
    finished: Finished,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    events: Vec<ExecEvent>,
}

/// Runs `argv` to the end while collecting every event.
async fn run_collect(argv: Vec<String>, timeout: Option<Duration>, limits: &Limits) -> Ran {
    let (tx, mut rx) = mpsc::channel(4);
    let collect = async {
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        events
    };
    let (finished, events) = tokio::join!(
        run(argv, timeout, limits, CancelSignal::never(), tx),
        collect
    );
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for event in &events {
        match event {
            ExecEvent::Stdout(data) => stdout.extend_from_slice(data),
            ExecEvent::Stderr(data) => stderr.extend_from_slice(data),
        }
    }
    Ran {
        finished,
        stdout,
        stderr,
        events,
    }
}

/// True while `pid` is a live (non-zombie) process.
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state is the first field after the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

/// Polls until none of `pids` is alive; fails after a deadline.
async fn assert_all_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still running: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pids a script printed on its first line ("$$ $!").
fn pids_in(output: &[u8]) -> Vec<i32> {
    let text = String::from_utf8_lossy(output);
    let pids: Vec<i32> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(!pids.is_empty(), "no pids in {text:?}");
    pids
}

#[tokio::test]
async fn runs_program_and_forwards_its_output() {
    let ran = run_collect(argv(&["/bin/echo", "hello", "world"]), None, &limits()).await;
    assert!(
        matches!(ran.finished.outcome, Outcome::Exited { code: 0 }),
        "{:?}",
        ran.finished
    );
    assert_eq!(ran.stdout, b"hello world\n");
    assert_eq!(ran.stderr, b"");
    assert_eq!(ran.finished.stdout_bytes, 12);
    assert_eq!(ran.finished.stderr_bytes, 0);
    assert!(!ran.finished.stdout_truncated && !ran.finished.stderr_truncated);
}

#[tokio::test]
async fn reports_exit_codes() {
    for code in [0, 1, 3, 255] {
        let ran = run_collect(sh(&format!("exit {code}")), None, &limits()).await;
        match ran.finished.outcome {
            Outcome::Exited { code: got } => assert_eq!(got, code),
            other => panic!("exit {code}: got {other:?}"),
        }
    }
}

#[tokio::test]
async fn reports_the_signal_that_ended_the_process() {
    for (name, number) in [("KILL", 9), ("TERM", 15), ("SEGV", 11)] {
        let ran = run_collect(sh(&format!("kill -{name} $$")), None, &limits()).await;
        match ran.finished.outcome {
            Outcome::Signaled { signal } => assert_eq!(signal, number, "SIG{name}"),
            other => panic!("SIG{name}: got {other:?}"),
        }
    }
}

#[tokio::test]
async fn keeps_stdout_and_stderr_apart() {
    let ran = run_collect(
        sh("printf out1; printf err1 >&2; printf out2"),
        None,
        &limits(),
    )
    .await;
    assert!(matches!(ran.finished.outcome, Outcome::Exited { code: 0 }));
    assert_eq!(ran.stdout, b"out1out2");
    assert_eq!(ran.stderr, b"err1");
    assert_eq!(
        (ran.finished.stdout_bytes, ran.finished.stderr_bytes),
        (8, 4)
    );
}

#[tokio::test]
async fn output_cap_forwards_exactly_the_cap_and_counts_the_rest() {
    /// `produced_bytes` of zeros on `stream` (1 stdout, 2 stderr) under a
    /// 1000-byte cap and 300-byte chunks.
    async fn check(stream: u8, produced_bytes: u64) {
        let limits = Limits {
            output_cap_bytes: 1000,
            chunk_bytes: 300,
            ..limits()
        };
        let script = format!("head -c {produced_bytes} /dev/zero >&{stream}");
        let ran = run_collect(sh(&script), None, &limits).await;
        let f = &ran.finished;
        assert!(
            matches!(f.outcome, Outcome::Exited { code: 0 }),
            "{script}: {f:?}"
        );
        let (forwarded, produced, truncated, other) = match stream {
            1 => (&ran.stdout, f.stdout_bytes, f.stdout_truncated, &ran.stderr),
            _ => (&ran.stderr, f.stderr_bytes, f.stderr_truncated, &ran.stdout),
        };
        assert_eq!(forwarded.len() as u64, produced_bytes.min(1000), "{script}");
        assert_eq!(produced, produced_bytes, "{script}");
        assert_eq!(truncated, produced_bytes > 1000, "{script}");
        assert!(other.is_empty(), "{script}");
        for event in &ran.events {
            let (ExecEvent::Stdout(data) | ExecEvent::Stderr(data)) = event;
            assert!(
                !data.is_empty() && data.len() <= 300,
                "{script}: chunk of {}",
                data.len()
            );
        }
    }
    for stream in [1, 2] {
        check(stream, 0).await;
        check(stream, 999).await;
        check(stream, 1000).await;
        check(stream, 1001).await;
        check(stream, 5000).await;
        // Far beyond a pipe buffer: finishes only if the pipe is drained.
        check(stream, 4 * 1024 * 1024).await;
    }
}

#[tokio::test]
async fn timeout_kills_the_command_and_its_grandchild() {
    let script = "sleep 300 & echo $$ $!; sleep 300";
    let ran = run_collect(sh(script), Some(Duration::from_millis(300)), &limits()).await;
    assert!(
        matches!(ran.finished.outcome, Outcome::TimedOut),
        "{:?}",
        ran.finished
    );
    assert!(ran.finished.duration >= Duration::from_millis(300));
    assert!(
        ran.finished.duration < Duration::from_secs(5),
        "{:?}",
        ran.finished.duration
    );
    let pids = pids_in(&ran.stdout);
    assert_eq!(pids.len(), 2);
    assert_all_gone(&pids).await;
}

#[tokio::test]
async fn timeout_escalates_to_sigkill_when_sigterm_is_ignored() {
    // An ignored signal stays ignored across exec, so both sleeps ignore it too.
    let script = "trap '' TERM; sleep 300 & echo $$ $!; sleep 300";
    let limits = limits();
    let timeout = Duration::from_millis(300);
    let ran = run_collect(sh(script), Some(timeout), &limits).await;
    assert!(
        matches!(ran.finished.outcome, Outcome::TimedOut),
        "{:?}",
        ran.finished
    );
    assert!(
        ran.finished.duration >= timeout + limits.kill_grace,
        "{:?}",
        ran.finished.duration
    );
    assert_all_gone(&pids_in(&ran.stdout)).await;
}

#[tokio::test]
async fn timeout_is_capped_by_the_agent_maximum() {
    let limits = Limits {
        max_timeout: Duration::from_millis(200),
        ..limits()
    };
    let ran = run_collect(
        argv(&["/bin/sleep", "300"]),
        Some(Duration::from_secs(3600)),
        &limits,
    )
    .await;
    assert!(
        matches!(ran.finished.outcome, Outcome::TimedOut),
        "{:?}",
        ran.finished
    );
    assert!(ran.finished.duration < Duration::from_secs(5));
}

#[test]
fn timeout_for_defaults_and_caps() {
    let limits = Limits::default();
    let check = |requested: Option<Duration>, expected: Duration| {
        assert_eq!(
            limits.timeout_for(requested),
            expected,
            "requested {requested:?}"
        );
    };
    check(None, Duration::from_secs(30));
    check(Some(Duration::ZERO), Duration::from_secs(30));
    check(
        Some(Duration::from_millis(1500)),
        Duration::from_millis(1500),
    );
    check(Some(Duration::from_secs(3600)), Duration::from_secs(300));
}

#[tokio::test]
async fn cancel_terminates_the_whole_group() {
    let (tx, mut rx) = mpsc::channel(4);
    let (canceller, signal) = cancel_pair();
    let limits = limits();
    let command = run(
        sh("sleep 300 & echo $$ $!; sleep 300"),
        None,
        &limits,
        signal,
        tx,
    );
    let operator = async {
        // Cancel once the command is demonstrably running.
        let first = rx.recv().await;
        canceller.cancel();
        while rx.recv().await.is_some() {}
        first
    };
    let (finished, first) = tokio::join!(command, operator);
    assert!(
        matches!(finished.outcome, Outcome::Cancelled),
        "{finished:?}"
    );
    assert!(finished.duration < Duration::from_secs(5));
    let Some(ExecEvent::Stdout(line)) = first else {
        panic!("expected the pids on stdout, got {first:?}");
    };
    assert_all_gone(&pids_in(&line)).await;
}

#[tokio::test]
async fn dropping_the_canceller_does_not_cancel() {
    let (tx, mut rx) = mpsc::channel(4);
    let (canceller, signal) = cancel_pair();
    drop(canceller);
    let limits = limits();
    let command = run(sh("sleep 0.2; echo done"), None, &limits, signal, tx);
    let (finished, first) = tokio::join!(command, rx.recv());
    assert!(
        matches!(finished.outcome, Outcome::Exited { code: 0 }),
        "{finished:?}"
    );
    assert_eq!(first, Some(ExecEvent::Stdout(b"done\n".to_vec())));
}

#[tokio::test]
async fn background_child_is_killed_when_the_command_exits() {
    // Case 1: the background child lets go of the pipes.
    let ran = run_collect(sh("sleep 300 >/dev/null 2>&1 & echo $!"), None, &limits()).await;
    assert!(
        matches!(ran.finished.outcome, Outcome::Exited { code: 0 }),
        "{:?}",
        ran.finished
    );
    assert_all_gone(&pids_in(&ran.stdout)).await;

    // Case 2: it holds stdout open; without the group kill the runner would
    // wait for EOF until the 20 s timeout.
    let ran = run_collect(sh("sleep 300 & echo $!"), None, &limits()).await;
    assert!(
        matches!(ran.finished.outcome, Outcome::Exited { code: 0 }),
        "{:?}",
        ran.finished
    );
    assert!(
        ran.finished.duration < Duration::from_secs(5),
        "{:?}",
        ran.finished.duration
    );
    assert!(!ran.finished.stdout_truncated);
    assert_all_gone(&pids_in(&ran.stdout)).await;
}

#[tokio::test]
async fn closed_event_channel_kills_the_command() {
    let (tx, mut rx) = mpsc::channel(4);
    let limits = limits();
    let command = run(
        sh("sleep 300 & echo $$ $!; sleep 300"),
        None,
        &limits,
        CancelSignal::never(),
        tx,
    );
    let server = async move {
        // The server stream goes away after the first chunk.
        rx.recv().await
    };
    let (finished, first) = tokio::join!(command, server);
    assert!(
        matches!(finished.outcome, Outcome::Abandoned),
        "{finished:?}"
    );
    assert!(finished.duration < Duration::from_secs(5));
    let Some(ExecEvent::Stdout(line)) = first else {
        panic!("expected the pids on stdout, got {first:?}");
    };
    assert_all_gone(&pids_in(&line)).await;
}

#[tokio::test]
async fn stalled_channel_cannot_hold_the_runner_past_its_bound() {
    let limits = Limits {
        chunk_bytes: 1000,
        ..limits()
    };
    let timeout = Duration::from_millis(300);
    // One slot, never read, receiver alive: the second chunk can never go.
    let (tx, _rx) = mpsc::channel(1);
    let finished = run(
        sh("head -c 100000 /dev/zero; sleep 300"),
        Some(timeout),
        &limits,
        CancelSignal::never(),
        tx,
    )
    .await;
    assert!(
        matches!(finished.outcome, Outcome::TimedOut),
        "{finished:?}"
    );
    assert!(finished.stdout_truncated);
    let bound = timeout + limits.kill_grace * 2;
    assert!(finished.duration >= bound, "{:?}", finished.duration);
    assert!(
        finished.duration < bound + Duration::from_secs(3),
        "{:?}",
        finished.duration
    );
}

#[tokio::test]
async fn failures_to_start_say_which_program() {
    let check = |argv: Vec<String>, kind: std::io::ErrorKind| async move {
        let program = argv.first().cloned().unwrap_or_default();
        let ran = run_collect(argv, None, &limits()).await;
        match ran.finished.outcome {
            Outcome::FailedToStart(e) => {
                assert_eq!(e.source.kind(), kind, "{program}");
                assert_eq!(e.to_string(), format!("cannot start '{program}'"));
            }
            other => panic!("{program}: got {other:?}"),
        }
        assert!(ran.events.is_empty());
    };
    check(
        argv(&["/nonexistent/program"]),
        std::io::ErrorKind::NotFound,
    )
    .await;
    check(
        argv(&["no-such-program-on-path"]),
        std::io::ErrorKind::NotFound,
    )
    .await;
    // Exists but cannot be executed, even by root: not a regular file.
    check(argv(&["/dev/null"]), std::io::ErrorKind::PermissionDenied).await;
    check(Vec::new(), std::io::ErrorKind::InvalidInput).await;
}

#[tokio::test]
async fn commands_see_a_fixed_environment_root_cwd_and_empty_stdin() {
    let ran = run_collect(argv(&["/usr/bin/env"]), None, &limits()).await;
    let mut got: Vec<String> = String::from_utf8_lossy(&ran.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    got.sort();
    let mut want: Vec<String> = CHILD_ENV.iter().map(|(k, v)| format!("{k}={v}")).collect();
    want.sort();
    assert_eq!(got, want);

    let ran = run_collect(argv(&["/bin/pwd"]), None, &limits()).await;
    assert_eq!(ran.stdout, b"/\n");

    // cat would wait forever on an inherited terminal or pipe.
    let ran = run_collect(argv(&["/bin/cat"]), None, &limits()).await;
    assert!(matches!(ran.finished.outcome, Outcome::Exited { code: 0 }));
    assert_eq!(ran.finished.stdout_bytes, 0);

    // Bare names are looked up in the fixed PATH.
    let ran = run_collect(argv(&["echo", "found"]), None, &limits()).await;
    assert_eq!(ran.stdout, b"found\n");
}

#[test]
fn concurrency_limit_refuses_without_queueing() {
    let slots = Slots::new(2);
    let first = slots.try_acquire();
    let second = slots.try_acquire();
    assert!(first.is_ok() && second.is_ok());
    assert_eq!(slots.running(), 2);
    match slots.try_acquire() {
        Err(refusal) => assert_eq!(refusal.to_string(), "2 commands already running (limit 2)"),
        Ok(slot) => panic!("third slot granted: {slot:?}"),
    }
    drop(first);
    assert_eq!(slots.running(), 1);
    assert!(slots.try_acquire().is_ok());

    let single = Slots::new(1);
    let _held = single.try_acquire();
    assert_eq!(
        single.try_acquire().map(|_| ()).map_err(|r| r.to_string()),
        Err("1 command already running (limit 1)".to_owned())
    );
}
