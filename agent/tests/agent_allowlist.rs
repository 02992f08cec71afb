//! The real agent binary and its allowlist at start: a file someone else
//! could write is refused with a logged reason while the agent keeps
//! running (samples and built-ins go on, no process runs); a file it cannot
//! parse stops it with every error's line and column. No server is needed:
//! the agent talks plain text to a port nothing listens on.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use monitor_agent::testing::scratch::Scratch;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const DEADLINE: Duration = Duration::from_secs(30);

/// The agent with `allowlist`, its stderr lines arriving on the receiver.
fn start(allowlist: &std::path::Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = match Command::new(env!("CARGO_BIN_EXE_monitor-agent"))
        .env_clear()
        .env("MONITOR_INSECURE", "1")
        .env("MONITOR_SERVER", "http://127.0.0.1:9")
        .env("MONITOR_HOSTNAME", "allowlist-test")
        .env("MONITOR_COMMANDS_FILE", allowlist)
        .env("MONITOR_LOG", "info")
        .env("MONITOR_SHUTDOWN_TIMEOUT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!("starting monitor-agent: {e}"),
    };
    let (tx, rx) = mpsc::channel();
    let Some(stderr) = child.stderr.take() else {
        panic!("no stderr pipe");
    };
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// The first line containing `needle`, waiting at most [`DEADLINE`].
fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no line with {needle:?} within {DEADLINE:?}; saw {seen:#?}");
}

/// Waits for the child to exit, at most [`DEADLINE`].
fn wait_exit(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                panic!("the agent did not exit within {DEADLINE:?}");
            }
            Err(e) => panic!("waiting for the agent: {e}"),
        }
    }
}

#[test]
fn an_unsafe_allowlist_means_no_processes_but_the_agent_runs() {
    let scratch = Scratch::new("agent-unsafe");
    let path = scratch.file("commands.allow", "uptime = /usr/bin/uptime\n", 0o646);
    let (mut child, rx) = start(&path);
    let line = wait_for_line(&rx, "refusing allowlist");
    assert!(
        line.ends_with(&format!(
            "refusing allowlist {}: it is writable by everyone; only root or the agent's user \
             may be able to change it: no process will run until it is fixed and the agent \
             restarted",
            path.display()
        )),
        "{line}"
    );
    // Still running: it goes on to connect (and retry).
    wait_for_line(&rx, "127.0.0.1:9");
    assert!(matches!(child.try_wait(), Ok(None)), "the agent exited");
    if let Err(e) = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM) {
        panic!("SIGTERM: {e}");
    }
    assert_eq!(wait_exit(&mut child), Some(0));
}

#[test]
fn an_allowlist_that_does_not_parse_stops_the_agent() {
    let scratch = Scratch::new("agent-broken");
    let path = scratch.file(
        "commands.allow",
        "uptime = /usr/bin/uptime\nos = /bin/cat /etc/os-release # ok\nbad\n",
        0o644,
    );
    let (mut child, rx) = start(&path);
    let line = wait_for_line(&rx, "commands.allow:");
    assert!(
        line.ends_with(&format!(
            "{}:3:4: expected '=' after the name 'bad'",
            path.display()
        )),
        "{line}"
    );
    assert_eq!(wait_exit(&mut child), Some(1));
}
