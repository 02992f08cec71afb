//! Reading the allowlist file: a missing default file, an explicit one that
//! must exist, files and directories someone else could change, things
//! that are not files (a FIFO must not hang the agent), `/dev/null`, size
//! and encoding limits, and the error chain each failure gives.

use std::error::Error as _;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use super::{
    AllowlistError, MAX_ALLOWLIST_BYTES, PermissionProblem, ProblemKind, check_owner_and_mode,
    directories,
};
use crate::commands::allowfile;
use crate::commands::{Allowlist, IfMissing, Policy};
use crate::testing::scratch::{Scratch, chmod};

fn load(path: &Path) -> Result<Allowlist, AllowlistError> {
    Allowlist::load(path, IfMissing::Error)
}

fn load_error(path: &Path) -> AllowlistError {
    match load(path) {
        Err(e) => e,
        Ok(list) => panic!("{} loaded: {list:?}", path.display()),
    }
}

const GOOD: &[u8] = b"uptime = /usr/bin/uptime\ndf = /bin/df -h -- <path>*\n";

#[test]
fn a_safe_file_loads() {
    let scratch = Scratch::new("safe");
    let path = scratch.file("commands.allow", GOOD, 0o644);
    let list = match load(&path) {
        Ok(list) => list,
        Err(e) => panic!("{e}"),
    };
    assert!(list.exists());
    assert_eq!(list.refusal(), None);
    assert_eq!(list.path(), path);
    let names: Vec<&str> = list.entries().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["df", "uptime"]);
    // Group write is fine for root's group only: chmod 0664 with the
    // file's group made root's when the test runs as root.
    if allowfile::agent_uid() == 0 {
        if let Err(e) = std::os::unix::fs::chown(&path, None, Some(0)) {
            panic!("chown: {e}");
        }
        chmod(&path, 0o664);
        assert!(load(&path).is_ok());
    }
}

#[test]
fn missing_file_is_empty_only_when_not_explicit() {
    let scratch = Scratch::new("missing");
    let missing = scratch.0.join("missing.allow");
    let list = match Allowlist::load(&missing, IfMissing::Empty) {
        Ok(list) => list,
        Err(e) => panic!("{e}"),
    };
    assert!(!list.exists());
    assert_eq!(list.entries().count(), 0);
    let refusal = Policy::new(list, false).resolve(&["uptime".to_owned()]);
    assert_eq!(
        refusal.map_err(|r| r.to_string()),
        Err(format!(
            "'uptime' is not on the allowlist {} (the file does not exist, so nothing is allowed)",
            missing.display()
        ))
    );

    let e = load_error(&missing);
    match &e {
        AllowlistError::Read { path, source } => {
            assert_eq!(path, &missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a read error, got {other:?}"),
    }
    assert_eq!(
        e.to_string(),
        format!("cannot read allowlist {}", missing.display())
    );
    // The cause is kept, and the agent's log line shows it.
    assert_eq!(
        e.source().map(|s| s.to_string()),
        Some("No such file or directory (os error 2)".to_owned())
    );
    assert_eq!(
        monitor::cli::error_chain(&e),
        format!(
            "cannot read allowlist {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
    match Allowlist::load_configured(Some(&missing)) {
        Err(AllowlistError::Read { .. }) => {}
        other => panic!("explicit missing file: {other:?}"),
    }
    // Without a path, the default one, missing on a test machine.
    let default = Path::new(allowfile::DEFAULT_ALLOWLIST_PATH);
    if !default.exists() {
        match Allowlist::load_configured(None) {
            Ok(list) => {
                assert_eq!(list.path(), default);
                assert!(!list.exists());
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_file_others_can_write_is_refused() {
    let scratch = Scratch::new("world");
    let path = scratch.file("commands.allow", GOOD, 0o644);
    chmod(&path, 0o646);
    let e = load_error(&path);
    assert_eq!(
        e.to_string(),
        format!(
            "refusing allowlist {}: it is writable by everyone; \
             only root or the agent's user may be able to change it",
            path.display()
        )
    );
    assert!(e.source().is_none());
    // Read-only for everyone again: accepted.
    chmod(&path, 0o444);
    assert!(load(&path).is_ok());
}

#[test]
fn a_file_its_group_can_write_is_refused() {
    let scratch = Scratch::new("group");
    let path = scratch.file("commands.allow", GOOD, 0o644);
    if allowfile::agent_uid() == 0
        && let Err(e) = std::os::unix::fs::chown(&path, None, Some(4242))
    {
        panic!("chown: {e}");
    }
    let gid = match std::fs::metadata(&path) {
        Ok(meta) => std::os::unix::fs::MetadataExt::gid(&meta),
        Err(e) => panic!("{e}"),
    };
    if gid == 0 {
        // Not root, yet in root's group: nothing to test here.
        return;
    }
    chmod(&path, 0o664);
    match load_error(&path) {
        AllowlistError::Unsafe { problems, .. } => assert_eq!(
            problems,
            [PermissionProblem {
                path: path.clone(),
                directory: false,
                kind: ProblemKind::GroupWritable { gid },
            }]
        ),
        other => panic!("expected unsafe permissions, got {other:?}"),
    }
}

#[test]
fn a_file_owned_by_someone_else_is_refused() {
    let me = allowfile::agent_uid();
    if me != 0 {
        // Only root can give a file away; check_owner_and_mode's unit
        // tests cover the rule itself.
        return;
    }
    let scratch = Scratch::new("owner");
    let path = scratch.file("commands.allow", GOOD, 0o644);
    if let Err(e) = std::os::unix::fs::chown(&path, Some(4242), None) {
        panic!("chown: {e}");
    }
    assert_eq!(
        load_error(&path).to_string(),
        format!(
            "refusing allowlist {}: it is owned by uid 4242, not by root or the agent's user \
             (uid 0); only root or the agent's user may be able to change it",
            path.display()
        )
    );
    // The same file judged for the user that owns it is fine.
    match allowfile::inspect(&path, 4242) {
        Ok(inspection) => assert_eq!(inspection.problems, []),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_directory_others_can_write_is_refused_unless_sticky() {
    let scratch = Scratch::new("dir");
    let dir = scratch.dir("etc");
    let path = dir.join("commands.allow");
    if let Err(e) = std::fs::write(&path, GOOD) {
        panic!("{e}");
    }
    chmod(&path, 0o644);
    chmod(&dir, 0o757);
    assert_eq!(
        load_error(&path).to_string(),
        format!(
            "refusing allowlist {}: its directory {} is writable by everyone; only root or the \
             agent's user may be able to change it",
            path.display(),
            dir.display()
        )
    );
    // Sticky (like /tmp): nobody else may rename or delete the file.
    chmod(&dir, 0o1757);
    assert!(load(&path).is_ok());
    // Both the file and its directory: both listed.
    chmod(&dir, 0o757);
    chmod(&path, 0o646);
    assert_eq!(
        load_error(&path).to_string(),
        format!(
            "refusing allowlist {}: its directory {} is writable by everyone, and it is \
             writable by everyone; only root or the agent's user may be able to change it",
            path.display(),
            dir.display()
        )
    );
    chmod(&dir, 0o755);
}

#[test]
fn a_symlink_is_judged_by_its_target_and_both_directories() {
    let scratch = Scratch::new("link");
    let open_dir = scratch.dir("open");
    let target = open_dir.join("real.allow");
    if let Err(e) = std::fs::write(&target, GOOD) {
        panic!("{e}");
    }
    chmod(&target, 0o644);
    let link = scratch.0.join("commands.allow");
    if let Err(e) = symlink(&target, &link) {
        panic!("{e}");
    }
    assert!(load(&link).is_ok());
    chmod(&open_dir, 0o777);
    match load_error(&link) {
        AllowlistError::Unsafe { path, problems } => {
            assert_eq!(path, link);
            assert_eq!(
                problems,
                [PermissionProblem {
                    path: open_dir.clone(),
                    directory: true,
                    kind: ProblemKind::WorldWritable,
                }]
            );
        }
        other => panic!("expected unsafe permissions, got {other:?}"),
    }
    chmod(&open_dir, 0o755);
}

#[test]
fn things_that_are_not_files() {
    let scratch = Scratch::new("special");
    // A directory.
    let dir = scratch.dir("a-dir");
    assert_eq!(
        load_error(&dir).to_string(),
        format!(
            "refusing allowlist {}: it is not a regular file; only root or the agent's user may \
             be able to change it",
            dir.display()
        )
    );
    // A FIFO nobody writes to: refused at once, not waited on.
    let fifo = scratch.0.join("fifo.allow");
    if let Err(e) = nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        panic!("mkfifo: {e}");
    }
    match load_error(&fifo) {
        AllowlistError::Unsafe { problems, .. } => {
            assert_eq!(problems.len(), 1);
            assert_eq!(problems[0].kind, ProblemKind::NotRegular);
        }
        other => panic!("expected unsafe, got {other:?}"),
    }
    // /dev/null reads empty whoever writes to it: an empty allowlist.
    match load(Path::new("/dev/null")) {
        Ok(list) => {
            assert!(list.exists());
            assert_eq!(list.entries().count(), 0);
            assert_eq!(list.refusal(), None);
        }
        Err(e) => panic!("/dev/null: {e}"),
    }
    // Another character device is not.
    match load_error(Path::new("/dev/zero")) {
        AllowlistError::Unsafe { problems, .. } => {
            assert!(problems.iter().any(|p| p.kind == ProblemKind::NotRegular));
        }
        other => panic!("expected unsafe, got {other:?}"),
    }
}

#[test]
fn size_limit_at_its_edge() {
    let scratch = Scratch::new("size");
    let limit = MAX_ALLOWLIST_BYTES as usize;
    // One comment line of exactly the limit.
    let mut text = vec![b'#'; limit];
    let path = scratch.file("big.allow", &text, 0o644);
    assert!(load(&path).is_ok());
    text.push(b'#');
    let path = scratch.file("bigger.allow", &text, 0o644);
    assert_eq!(
        load_error(&path).to_string(),
        format!("allowlist {} is larger than 1048576 bytes", path.display())
    );
}

#[test]
fn encoding_and_parse_errors_name_the_file_line_and_column() {
    let scratch = Scratch::new("parse");
    let path = scratch.file(
        "latin1.allow",
        b"ok = /bin/ok\nx = /bin/echo \"caf\xe9\"\n",
        0o644,
    );
    assert_eq!(
        load_error(&path).to_string(),
        format!("{}:2:19: not valid UTF-8", path.display())
    );
    let path = scratch.file(
        "broken.allow",
        b"ok = /bin/true\nbroken\nx = y # ...\n",
        0o644,
    );
    let e = load_error(&path);
    assert_eq!(
        e.to_string(),
        format!(
            "{0}:2:7: expected '=' after the name 'broken'; {0}:3:5: program 'y' is not an \
             absolute path",
            path.display()
        )
    );
    assert!(e.source().is_none());
}

#[test]
fn inspection_lists_permissions_and_parse_errors_together() {
    let scratch = Scratch::new("inspect");
    let path = scratch.file("commands.allow", b"broken\n", 0o644);
    chmod(&path, 0o646);
    let inspection = match allowfile::inspect(&path, allowfile::agent_uid()) {
        Ok(inspection) => inspection,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(inspection.agent_uid, allowfile::agent_uid());
    assert_eq!(
        inspection.problems,
        [PermissionProblem {
            path: path.clone(),
            directory: false,
            kind: ProblemKind::WorldWritable,
        }]
    );
    match inspection.parsed {
        Err(e) => assert_eq!(
            e.to_string(),
            format!(
                "{}:1:7: expected '=' after the name 'broken'",
                path.display()
            )
        ),
        Ok(list) => panic!("parsed: {list:?}"),
    }
    // load refuses on permissions before looking at the text.
    assert!(matches!(load_error(&path), AllowlistError::Unsafe { .. }));
}

// The owner and mode rules alone, and the directories a path depends on.

const AGENT: u32 = 990;

fn check(uid: u32, gid: u32, mode: u32, directory: bool, want: &[ProblemKind]) {
    assert_eq!(
        check_owner_and_mode(uid, gid, mode, directory, AGENT),
        want,
        "uid {uid} gid {gid} mode {mode:o} directory {directory}"
    );
}

#[test]
fn the_directory_of_a_bare_file_name_is_the_current_one() {
    // Tests run in the package's directory, which holds Cargo.toml.
    fn check(path: &str, expected: &[&str]) {
        let got = directories(Path::new(path)).unwrap();
        assert_eq!(got, expected.iter().map(PathBuf::from).collect::<Vec<_>>());
    }
    check("Cargo.toml", &["."]);
    check("./Cargo.toml", &["."]);
    check("src/lib.rs", &["src"]);
}

#[test]
fn owners_and_modes() {
    let other = ProblemKind::Owner {
        uid: 1000,
        agent_uid: AGENT,
    };
    for directory in [false, true] {
        check(0, 0, 0o644, directory, &[]);
        check(AGENT, AGENT, 0o600, directory, &[]);
        check(0, 0, 0o664, directory, &[]);
        check(1000, 0, 0o644, directory, &[other]);
        check(
            0,
            7,
            0o664,
            directory,
            &[ProblemKind::GroupWritable { gid: 7 }],
        );
        check(0, 0, 0o646, directory, &[ProblemKind::WorldWritable]);
        check(
            1000,
            7,
            0o666,
            directory,
            &[
                other,
                ProblemKind::GroupWritable { gid: 7 },
                ProblemKind::WorldWritable,
            ],
        );
    }
    // The sticky bit protects a directory's entries, not a file.
    check(0, 0, 0o1777, true, &[]);
    check(0, 7, 0o1777, true, &[]);
    check(1000, 7, 0o1777, true, &[other]);
    check(
        0,
        7,
        0o1666,
        false,
        &[
            ProblemKind::GroupWritable { gid: 7 },
            ProblemKind::WorldWritable,
        ],
    );
}

/// Set in the child copy of this test binary that
/// `agent_uid_is_the_effective_user` starts as another user: the uid its
/// `agent_uid()` must return.
const EXPECTED_UID_ENV: &str = "MONITOR_TEST_EXPECTED_AGENT_UID";

#[test]
fn agent_uid_is_the_effective_user() {
    if let Ok(expected) = std::env::var(EXPECTED_UID_ENV) {
        // The child: it runs as the user the parent chose.
        assert_eq!(allowfile::agent_uid().to_string(), expected);
        return;
    }
    let me = nix::unistd::geteuid().as_raw();
    assert_eq!(allowfile::agent_uid(), me);
    if me != 0 {
        return; // Only root can start the child as another user.
    }
    // As root, uid 0 is also what a function that ignores the user would
    // say: run this test again as `nobody`, in a child process.
    const NOBODY: u32 = 65534;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => panic!("current_exe: {e}"),
    };
    let name = "commands::allowfile::tests::agent_uid_is_the_effective_user";
    let out = match std::process::Command::new(&exe)
        .args(["--exact", name, "--test-threads", "1"])
        .env(EXPECTED_UID_ENV, NOBODY.to_string())
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!("{} as nobody: {e}", exe.display()),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
