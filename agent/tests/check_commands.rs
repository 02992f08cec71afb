//! `monitor-agent --check-commands FILE`, end to end through the real
//! binary: the plain-words report and exit 0 for a valid file, every error
//! with its line and column and exit 1 for a broken or unsafe one, exit 2
//! for a usage error, and nothing of the agent started meanwhile.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use monitor_agent::commands::allowfile;
use monitor_agent::testing::scratch::{self, Scratch};

/// Exit code, stdout and stderr of `monitor-agent ARGS`, which must end
/// within a deadline (the check starts no runtime and no connection).
fn agent(args: &[&str]) -> (Option<i32>, String, String) {
    agent_as(args, None)
}

/// The same, run as user and group `uid` when given (the test must be root).
fn agent_as(args: &[&str], uid: Option<u32>) -> (Option<i32>, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_monitor-agent"));
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    let mut child = match command
        .args(args)
        .env_clear()
        // Would make the agent itself fail: the check must not care.
        .env("MONITOR_INTERVAL", "abc")
        .env("MONITOR_SERVER", "https://127.0.0.1:9")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!("starting monitor-agent: {e}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                panic!("monitor-agent {args:?} still running after 30 s");
            }
            Err(e) => panic!("waiting for monitor-agent: {e}"),
        }
    }
    let out = match child.wait_with_output() {
        Ok(out) => out,
        Err(e) => panic!("reading monitor-agent's output: {e}"),
    };
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check(path: &Path) -> (Option<i32>, String, String) {
    agent(&["--check-commands", &path.to_string_lossy()])
}

#[test]
fn a_valid_file_is_described_in_plain_words() {
    let scratch = Scratch::new("valid");
    let path = scratch.file(
        "commands.allow",
        "# A test allowlist.\n\
         uptime  = /usr/bin/uptime\n\
         journal = /bin/journalctl --no-pager -n <int:1-500> -u <word:*.service>  # bounded\n\
         df      = /bin/df -h -- <path>*\n\
         say     = /bin/echo \"two words\" <one-of:-n|x>?\n\
         sleep   = /bin/sleep ...\n",
        0o644,
    );
    let (code, out, err) = check(&path);
    let uid = allowfile::agent_uid();
    let want = format!(
        "{path}: valid, 5 entries (owner and permissions checked for root and uid {uid}, the user \
         running this check)\n\
         \n\
         uptime (line 2): /usr/bin/uptime\n  \
           program /usr/bin/uptime, no fixed arguments\n  \
           takes no operator arguments\n\
         \n\
         journal (line 3): /bin/journalctl --no-pager -n <int:1-500> -u <word:*.service>\n  \
           program /bin/journalctl, fixed arguments: --no-pager -n -u\n  \
           takes exactly 2 operator arguments\n  \
           argument 1: a whole number from 1 to 500\n  \
           argument 2: a word of A-Z a-z 0-9 . _ - + : @ , = matching *.service, not beginning with '-'\n\
         \n\
         df (line 4): /bin/df -h -- <path>*\n  \
           program /bin/df, fixed arguments: -h --\n  \
           takes 0 or more operator arguments (at most 63)\n  \
           arguments 1 and on (each): an absolute path without '.', '..' or empty components\n\
         \n\
         say (line 5): /bin/echo \"two words\" <one-of:-n|x>?\n  \
           program /bin/echo, fixed arguments: \"two words\"\n  \
           takes 0 to 1 operator arguments\n  \
           argument 1 (optional): one of -n x\n\
         \n\
         sleep (line 6): /bin/sleep ...\n  \
           program /bin/sleep, no fixed arguments\n  \
           takes 0 or more operator arguments (at most 63)\n  \
           arguments 1 and on (each): anything, options included (trusted: not checked)\n  \
           warning: '...' passes options too: the operator may change what /bin/sleep reads, \
         writes or runs\n",
        path = path.display()
    );
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (Some(0), want.as_str(), "")
    );
}

#[test]
fn one_entry() {
    let scratch = Scratch::new("one");
    let path = scratch.file("commands.allow", "up = /usr/bin/uptime -p\n", 0o600);
    let (code, out, err) = check(&path);
    let want = format!(
        "{}: valid, 1 entry (owner and permissions checked for root and uid {}, the user \
         running this check)\n\
         \n\
         up (line 1): /usr/bin/uptime -p\n  \
           program /usr/bin/uptime, fixed arguments: -p\n  \
           takes no operator arguments\n",
        path.display(),
        allowfile::agent_uid()
    );
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (Some(0), want.as_str(), "")
    );
}

#[test]
fn the_user_running_the_agent_may_own_the_file() {
    // The file belongs to the user the check runs as, who is not root: as
    // root (CI), the file is given to `nobody` and the check runs as
    // nobody; otherwise the test's own user does both.
    const NOBODY: u32 = 65534;
    let me = nix::unistd::geteuid().as_raw();
    let user = if me == 0 { NOBODY } else { me };
    let scratch = Scratch::new("owner");
    // The user must be able to reach the file; the directory stays root's.
    scratch::chmod(&scratch.0, 0o755);
    let path = scratch.file("commands.allow", "up = /usr/bin/uptime\n", 0o644);
    if me == 0
        && let Err(e) = std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY))
    {
        panic!("chown {}: {e}", path.display());
    }
    let (code, out, err) = agent_as(
        &["--check-commands", &path.to_string_lossy()],
        (me == 0).then_some(NOBODY),
    );
    let want = format!(
        "{}: valid, 1 entry (owner and permissions checked for root and uid {user}, the user \
         running this check)\n",
        path.display()
    );
    assert_eq!((code, err.as_str()), (Some(0), ""), "{out}");
    assert!(out.starts_with(&want), "{out}");
}

#[test]
fn every_error_is_listed_with_line_and_column() {
    let scratch = Scratch::new("broken");
    let path = scratch.file(
        "commands.allow",
        "ok = /bin/true\n\
         os = /bin/cat /etc/os-release # see also ...\n\
         bad name = /bin/x\n\
         j = /bin/journalctl -n <int:1-all>\n\
         ok = /bin/false\n\
         cr = /bin/a\rdf = /bin/df ...\n",
        0o644,
    );
    let (code, out, err) = check(&path);
    let p = path.display();
    let want = format!(
        "{p}:3:5: expected '=' after the name 'bad'\n\
         {p}:4:29: expected MIN-MAX in plain decimal (no sign, no leading zero), e.g. <int:1-500>\n\
         {p}:5:1: 'ok' is already defined on line 1\n\
         {p}:6:12: carriage return not followed by a line feed (lines end with LF or CRLF)\n\
         {p}: invalid (4 errors): the agent would not start with it\n"
    );
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (Some(1), "", want.as_str())
    );
}

#[test]
fn an_unsafe_file_is_invalid() {
    let scratch = Scratch::new("unsafe");
    let path = scratch.file("commands.allow", "uptime = /usr/bin/uptime\n", 0o646);
    let (code, out, err) = check(&path);
    let p = path.display();
    let want = format!(
        "refusing allowlist {p}: it is writable by everyone; only root or the agent's user may \
         be able to change it\n\
         {p}: invalid (1 error): the agent would start but run no processes\n"
    );
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (Some(1), "", want.as_str())
    );

    // Unsafe and broken: both listed, and the agent would not start.
    let path = scratch.file("both.allow", "x\n", 0o646);
    let (code, _, err) = check(&path);
    let p = path.display();
    let want = format!(
        "{p}:1:2: expected '=' after the name 'x'\n\
         refusing allowlist {p}: it is writable by everyone; only root or the agent's user may \
         be able to change it\n\
         {p}: invalid (2 errors): the agent would not start with it\n"
    );
    assert_eq!((code, err.as_str()), (Some(1), want.as_str()));
}

#[test]
fn a_missing_file_is_invalid() {
    let scratch = Scratch::new("missing");
    let path = scratch.0.join("nothing.allow");
    let (code, out, err) = check(&path);
    let want = format!(
        "cannot read allowlist {}: No such file or directory (os error 2)\n",
        path.display()
    );
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (Some(1), "", want.as_str())
    );
}

#[test]
fn the_shipped_allowlist_is_valid() {
    // Copied, so the checkout's own permissions do not matter.
    let scratch = Scratch::new("shipped");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/commands.allow");
    let text = match std::fs::read_to_string(&shipped) {
        Ok(text) => text,
        Err(e) => panic!("{}: {e}", shipped.display()),
    };
    let path = scratch.file("commands.allow", &text, 0o644);
    let (code, out, err) = check(&path);
    assert_eq!((code, err.as_str()), (Some(0), ""), "{out}");
    assert!(out.contains(": valid, 6 entries"), "{out}");
    assert!(!out.contains("warning"), "{out}");
}

#[test]
fn usage_errors_exit_2() {
    let (code, out, err) = agent(&["--check-commands"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("No value provided for option '--check-commands'"),
        "{err}"
    );
    let (code, _, err) = agent(&["--check-commands", ""]);
    assert_eq!(
        (code, err.as_str()),
        (
            Some(2),
            "monitor-agent: --check-commands: expected the path of an allowlist file, got ''\n"
        )
    );
}
