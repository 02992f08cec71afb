//! The process runner: starts one allowed argv, streams its stdout and
//! stderr as they are produced, enforces the output cap, the timeout and
//! cancellation, and reports exactly how it ended.
//!
//! How a command runs:
//! - argv directly, never through a shell; stdin is /dev/null, stdout and
//!   stderr are separate pipes, the working directory is `/`.
//! - A fixed environment ([`CHILD_ENV`]: PATH and `LANG=C`), not the agent's:
//!   the agent's environment may carry settings or secrets the operator's
//!   command has no business seeing, and `LANG=C` keeps output parseable.
//!   Bare program names are looked up in that PATH.
//! - The agent's own user: nothing here changes uid, gid or capabilities.
//! - Its own process group (`process_group(0)`), so the whole tree can be
//!   signalled. On timeout, cancel or a closed event channel the group gets
//!   SIGTERM, then SIGKILL after [`Limits::kill_grace`].
//! - As soon as the main process exits, whatever is left of its group gets
//!   SIGKILL at once: a command that backgrounds a daemon has that daemon
//!   killed. A process that calls `setsid` (or `setpgid`) leaves the group and
//!   escapes this; if it keeps the output pipes open the runner stops
//!   reading [`Limits::kill_grace`] after the main process exited and flags
//!   the stream truncated instead of waiting for an EOF that never comes.
//! - The group is never signalled after its leader has been reaped, except
//!   the one SIGKILL sent right then, so a recycled pid cannot be hit.
//! - Output goes out in chunks of at most [`Limits::chunk_bytes`] over a
//!   bounded channel. Past [`Limits::output_cap_bytes`] per stream nothing
//!   more is forwarded but the pipe is still drained (counted, discarded), so
//!   the child never blocks on a full pipe.
//! - [`run`] returns at the latest `timeout + 2 × kill_grace` after it was
//!   called: output still undelivered by then (a stalled channel) is dropped
//!   and flagged truncated.
//!
//! This module must never block the runtime thread (no std::process, no
//! blocking reads, no thread sleeps), never spawn through a shell, and never
//! see protobuf types.

use std::fmt;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};

/// The whole environment a command sees.
pub const CHILD_ENV: [(&str, &str); 2] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("LANG", "C"),
];

/// The working directory of every command.
pub const CHILD_WORKING_DIR: &str = "/";

/// The agent's bounds on every command it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Timeout when the request asks for none.
    pub default_timeout: Duration,
    /// Upper bound on any requested timeout.
    pub max_timeout: Duration,
    /// Time between SIGTERM and SIGKILL to the process group; also how long
    /// the pipes are read after the main process exited.
    pub kill_grace: Duration,
    /// Bytes forwarded per stream (each of stdout and stderr); the rest is
    /// counted and discarded.
    pub output_cap_bytes: u64,
    /// Largest payload of one [`ExecEvent`], in bytes.
    pub chunk_bytes: usize,
    /// Commands allowed to run at once (see [`super::Slots`]).
    pub max_running: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            kill_grace: Duration::from_secs(2),
            output_cap_bytes: 64 * 1024,
            chunk_bytes: 16 * 1024,
            max_running: 2,
        }
    }
}

impl Limits {
    /// The timeout a command gets: the requested one (`None` or zero means
    /// the default), never more than `max_timeout`.
    pub fn timeout_for(&self, requested: Option<Duration>) -> Duration {
        requested
            .filter(|t| !t.is_zero())
            .unwrap_or(self.default_timeout)
            .min(self.max_timeout)
    }
}

/// A piece of output, in the order it was read from its pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// How a command ended.
#[derive(Debug)]
pub enum Outcome {
    /// The process exited by itself with this code.
    Exited { code: i32 },
    /// The process was ended by this signal, not sent by the runner.
    Signaled { signal: i32 },
    /// The timeout expired; the process group was terminated.
    TimedOut,
    /// Cancelled through its [`Canceller`]; the process group was terminated.
    Cancelled,
    /// The event channel closed (nobody is left to read the result); the
    /// process group was terminated. Only useful for the agent's own log.
    Abandoned,
    /// The process could not be started.
    FailedToStart(StartError),
    /// The process ran but its exit status could not be collected.
    StatusLost(io::Error),
}

/// Why a command could not be started.
#[derive(Debug)]
pub struct StartError {
    /// argv[0] as given.
    pub program: String,
    pub source: io::Error,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot start '{}'", self.program.escape_debug())
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The result of [`run`].
#[derive(Debug)]
pub struct Finished {
    pub outcome: Outcome,
    /// Bytes read from stdout, forwarded or not.
    pub stdout_bytes: u64,
    /// Bytes read from stderr, forwarded or not.
    pub stderr_bytes: u64,
    /// Not all of stdout reached the event channel (cap, undeliverable, or
    /// reading stopped before EOF).
    pub stdout_truncated: bool,
    /// Same as `stdout_truncated`, for stderr.
    pub stderr_truncated: bool,
    /// From the call to [`run`] until it returned.
    pub duration: Duration,
}

/// Cancels one running command; see [`cancel_pair`].
#[derive(Debug)]
pub struct Canceller(oneshot::Sender<()>);

/// The runner's end of a [`Canceller`].
#[derive(Debug)]
pub struct CancelSignal(Option<oneshot::Receiver<()>>);

/// A canceller and the signal to hand to [`run`]. Dropping the canceller
/// without calling [`Canceller::cancel`] does not cancel.
pub fn cancel_pair() -> (Canceller, CancelSignal) {
    let (tx, rx) = oneshot::channel();
    (Canceller(tx), CancelSignal(Some(rx)))
}

impl Canceller {
    /// Asks the runner to terminate the command (SIGTERM, then SIGKILL).
    /// Does nothing if the command already finished.
    pub fn cancel(self) {
        // An error only means the run is over: nothing left to cancel.
        let _ = self.0.send(());
    }
}

impl CancelSignal {
    /// A signal that never fires, for commands nobody can cancel.
    pub fn never() -> CancelSignal {
        CancelSignal(None)
    }

    /// Completes when cancelled; pends forever if the canceller is dropped.
    async fn cancelled(&mut self) {
        if let Some(rx) = self.0.as_mut() {
            let result = rx.await;
            self.0 = None;
            if result.is_ok() {
                return;
            }
        }
        std::future::pending().await
    }
}

/// Why the runner is ending a command early.
#[derive(Debug, Clone, Copy)]
enum Stop {
    TimedOut,
    Cancelled,
    Abandoned,
}

/// One output pipe and its accounting.
struct Pipe<R> {
    reader: Option<R>,
    buf: Vec<u8>,
    produced_bytes: u64,
    forwarded_bytes: u64,
    truncated: bool,
}

impl<R: AsyncRead + Unpin> Pipe<R> {
    fn new(reader: Option<R>, chunk_bytes: usize) -> Pipe<R> {
        Pipe {
            reader,
            // A zero-sized buffer would read 0 bytes, which looks like EOF.
            buf: vec![0; chunk_bytes.max(1)],
            produced_bytes: 0,
            forwarded_bytes: 0,
            truncated: false,
        }
    }

    fn is_closed(&self) -> bool {
        self.reader.is_none()
    }

    /// Reads once; pends forever once the pipe is closed. Cancel safe.
    async fn read(&mut self) -> io::Result<usize> {
        match self.reader.as_mut() {
            Some(reader) => reader.read(&mut self.buf).await,
            None => std::future::pending().await,
        }
    }

    /// Accounts for one read and returns the part to forward, if any.
    fn accept(
        &mut self,
        read: io::Result<usize>,
        cap_bytes: u64,
        forward: bool,
    ) -> Option<Vec<u8>> {
        let n = match read {
            Ok(0) => {
                self.reader = None;
                return None;
            }
            Ok(n) => n,
            Err(e) => {
                log::warn!("reading command output failed, giving up on the pipe: {e}");
                self.stop_reading();
                return None;
            }
        };
        self.produced_bytes += n as u64;
        let room = cap_bytes.saturating_sub(self.forwarded_bytes);
        let take = usize::try_from(room).map_or(n, |room| room.min(n));
        if take < n || !forward {
            self.truncated = true;
        }
        if take == 0 || !forward {
            return None;
        }
        self.forwarded_bytes += take as u64;
        Some(self.buf[..take].to_vec())
    }

    /// Stops reading before EOF: whatever was still to come is lost.
    fn stop_reading(&mut self) {
        if self.reader.take().is_some() {
            self.truncated = true;
        }
    }
}

/// Runs `argv` (already resolved by the policy) to the end and reports how
/// it ended. `timeout` is the requested one; [`Limits::timeout_for`] bounds
/// it. Output goes to `events` as it is read; dropping the receiver kills
/// the command. Never blocks the thread; meant to be awaited in its own
/// (local) task.
pub async fn run(
    argv: Vec<String>,
    timeout: Option<Duration>,
    limits: &Limits,
    mut cancel: CancelSignal,
    events: mpsc::Sender<ExecEvent>,
) -> Finished {
    let started = Instant::now();
    let failed = |program: &str, source: io::Error| Finished {
        outcome: Outcome::FailedToStart(StartError {
            program: program.to_owned(),
            source,
        }),
        stdout_bytes: 0,
        stderr_bytes: 0,
        stdout_truncated: false,
        stderr_truncated: false,
        duration: started.elapsed(),
    };
    let Some((program, args)) = argv.split_first() else {
        return failed(
            "",
            io::Error::new(io::ErrorKind::InvalidInput, "empty argv"),
        );
    };
    let mut child = match Command::new(program)
        .args(args)
        .env_clear()
        .envs(CHILD_ENV)
        .current_dir(CHILD_WORKING_DIR)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(source) => return failed(program, source),
    };
    // The child leads its own group, so the group id is its pid.
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(Pid::from_raw);
    log::debug!("started {argv:?} as process group {group:?}");

    let deadline = later(started, limits.timeout_for(timeout));
    let give_up_at = later(deadline, limits.kill_grace.saturating_mul(2));
    let mut out = Pipe::new(child.stdout.take(), limits.chunk_bytes);
    let mut err = Pipe::new(child.stderr.take(), limits.chunk_bytes);
    let mut exit: Option<io::Result<ExitStatus>> = None;
    let mut stop: Option<Stop> = None;
    let mut kill_at: Option<Instant> = None;
    let mut drain_until: Option<Instant> = None;
    let mut pending: Option<ExecEvent> = None;
    let mut abandoned = false;

    while exit.is_none() || !out.is_closed() || !err.is_closed() || pending.is_some() {
        let running = exit.is_none();
        tokio::select! {
            status = child.wait(), if running => {
                // Reaped: kill what is left of the group now, and only now,
                // before its number can be reused.
                signal_group(group, Signal::SIGKILL);
                exit = Some(status);
                drain_until = Some(later(Instant::now(), limits.kill_grace));
            }
            () = cancel.cancelled(), if running && stop.is_none() => {
                stop = Some(Stop::Cancelled);
                signal_group(group, Signal::SIGTERM);
                kill_at = Some(later(Instant::now(), limits.kill_grace));
            }
            () = sleep_until(deadline), if running && stop.is_none() => {
                stop = Some(Stop::TimedOut);
                signal_group(group, Signal::SIGTERM);
                kill_at = Some(later(Instant::now(), limits.kill_grace));
            }
            () = sleep_until_some(kill_at), if running => {
                signal_group(group, Signal::SIGKILL);
                kill_at = None;
            }
            () = events.closed(), if !abandoned => {
                abandoned = true;
                drop_pending(&mut pending, &mut out, &mut err);
                if running && stop.is_none() {
                    stop = Some(Stop::Abandoned);
                    signal_group(group, Signal::SIGTERM);
                    kill_at = Some(later(Instant::now(), limits.kill_grace));
                }
            }
            permit = events.reserve(), if pending.is_some() => {
                // An error means the receiver is gone: the `closed` branch
                // handles that on the next turn.
                if let (Ok(permit), Some(event)) = (permit, pending.take()) {
                    permit.send(event);
                }
            }
            () = sleep_until_some(drain_until), if pending.is_none() => {
                out.stop_reading();
                err.stop_reading();
                drain_until = None;
            }
            () = sleep_until(give_up_at) => {
                drop_pending(&mut pending, &mut out, &mut err);
                out.stop_reading();
                err.stop_reading();
                if running {
                    log::warn!("process group {group:?} not reaped after SIGKILL; leaving it to the runtime's reaper");
                }
                break;
            }
            read = out.read(), if pending.is_none() => {
                let cap = limits.output_cap_bytes;
                pending = out.accept(read, cap, !abandoned).map(ExecEvent::Stdout);
            }
            read = err.read(), if pending.is_none() => {
                let cap = limits.output_cap_bytes;
                pending = err.accept(read, cap, !abandoned).map(ExecEvent::Stderr);
            }
        }
    }

    let outcome = match (stop, exit) {
        (Some(Stop::TimedOut), _) | (None, None) => Outcome::TimedOut,
        (Some(Stop::Cancelled), _) => Outcome::Cancelled,
        (Some(Stop::Abandoned), _) => Outcome::Abandoned,
        (None, Some(Ok(status))) => outcome_of(status),
        (None, Some(Err(e))) => Outcome::StatusLost(e),
    };
    Finished {
        outcome,
        stdout_bytes: out.produced_bytes,
        stderr_bytes: err.produced_bytes,
        stdout_truncated: out.truncated,
        stderr_truncated: err.truncated,
        duration: started.elapsed(),
    }
}

fn outcome_of(status: ExitStatus) -> Outcome {
    match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exited { code },
        (None, Some(signal)) => Outcome::Signaled { signal },
        (None, None) => Outcome::StatusLost(io::Error::other(format!(
            "unrecognised wait status {status:?}"
        ))),
    }
}

/// Drops an event that can no longer be delivered and flags its stream.
fn drop_pending<O, E>(pending: &mut Option<ExecEvent>, out: &mut Pipe<O>, err: &mut Pipe<E>) {
    match pending.take() {
        Some(ExecEvent::Stdout(_)) => out.truncated = true,
        Some(ExecEvent::Stderr(_)) => err.truncated = true,
        None => {}
    }
}

fn signal_group(group: Option<Pid>, signal: Signal) {
    let Some(group) = group else {
        log::error!("no process group to send {signal} to");
        return;
    };
    match killpg(group, signal) {
        Ok(()) => log::debug!("sent {signal} to process group {group}"),
        // Nothing left in the group: the usual case after a clean exit.
        Err(Errno::ESRCH) => {}
        Err(e) => log::warn!("sending {signal} to process group {group} failed: {e}"),
    }
}

/// `base + by`, saturating far in the future instead of panicking.
fn later(base: Instant, by: Duration) -> Instant {
    base.checked_add(by)
        .unwrap_or_else(|| base + Duration::from_secs(100 * 365 * 24 * 3600))
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}
