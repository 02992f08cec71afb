//! Reading the allowlist file: who may have written it, how big it may be,
//! its encoding, and what a missing file means. The format and the parser
//! are in [`super::policy`].
//!
//! An allowlist says what a remote operator may run on this host, so a file
//! that someone other than root or the agent's own user can change is
//! refused, as sudo refuses such a sudoers file: the file must be a regular
//! file (or `/dev/null`, which reads empty whoever writes to it), owned by
//! root or the agent's user, writable by neither group (unless the group is
//! root's) nor others; the same goes for the directory holding it (and, for
//! a symbolic link, for the directory of its target), where the sticky bit
//! makes group and world write harmless. The file is opened once, without
//! blocking (a FIFO cannot hang the agent), checked on the open descriptor
//! and read from it, so what is checked is what is read.
//!
//! This module reads and stats files and nothing else; it runs at start
//! (and for `--check-commands`), never from a task on the running agent.

use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::policy::{Allowlist, ParseError, ParseErrorKind, ParseErrors};

/// Where the agent looks for its allowlist when no path is given.
pub const DEFAULT_ALLOWLIST_PATH: &str = "/etc/monitor/commands.allow";

/// Largest allowlist read, in bytes: a real one is a few hundred.
pub const MAX_ALLOWLIST_BYTES: u64 = 1 << 20;

/// Linux's null device (major 1, minor 3 in Documentation/admin-guide/
/// devices.txt), as `st_rdev` encodes it.
const NULL_DEVICE_RDEV: u64 = (1 << 8) | 3;

/// Permission bits.
const GROUP_WRITE: u32 = 0o020;
const OTHER_WRITE: u32 = 0o002;
const STICKY: u32 = 0o1000;

/// What [`Allowlist::load`] does when the file does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMissing {
    /// Use an empty allowlist: right for the default path, which a host
    /// that runs no commands simply does not have.
    Empty,
    /// Fail: right for a path the operator gave explicitly.
    Error,
}

/// The allowlist file could not be used.
#[derive(Debug)]
pub enum AllowlistError {
    Read {
        path: PathBuf,
        source: io::Error,
    },
    TooLarge {
        path: PathBuf,
        limit_bytes: u64,
    },
    /// Someone other than root or the agent's user could change it.
    Unsafe {
        path: PathBuf,
        problems: Vec<PermissionProblem>,
    },
    Parse(ParseErrors),
}

/// One reason the file, or its directory, is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionProblem {
    /// The file, or the directory.
    pub path: PathBuf,
    pub directory: bool,
    pub kind: ProblemKind,
}

/// What is wrong with an owner or a mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A directory, device, FIFO or socket where a file should be (never
    /// said of the directory holding the file).
    NotRegular,
    /// Owned by neither root nor the agent's user.
    Owner { uid: u32, agent_uid: u32 },
    /// Writable by a group other than root's.
    GroupWritable { gid: u32 },
    /// Writable by everyone.
    WorldWritable,
}

/// Everything [`inspect`] found: the permission problems (for the user
/// `agent_uid`) and the parse, each complete, so `--check-commands` can list
/// them all.
#[derive(Debug)]
pub struct Inspection {
    pub agent_uid: u32,
    pub problems: Vec<PermissionProblem>,
    pub parsed: Result<Allowlist, ParseErrors>,
}

/// Checks an owner and a mode against the rules in this module's doc;
/// pure, so every combination can be tested without chown.
pub fn check_owner_and_mode(
    uid: u32,
    gid: u32,
    mode: u32,
    directory: bool,
    agent_uid: u32,
) -> Vec<ProblemKind> {
    let mut problems = Vec::new();
    if uid != 0 && uid != agent_uid {
        problems.push(ProblemKind::Owner { uid, agent_uid });
    }
    // In a sticky directory only a file's owner (or the directory's, or
    // root) may rename or delete it.
    let sticky = directory && mode & STICKY != 0;
    if mode & GROUP_WRITE != 0 && gid != 0 && !sticky {
        problems.push(ProblemKind::GroupWritable { gid });
    }
    if mode & OTHER_WRITE != 0 && !sticky {
        problems.push(ProblemKind::WorldWritable);
    }
    problems
}

/// Opens, checks and parses the allowlist at `path` as the agent running
/// as `agent_uid` would. `Err` only when there is nothing to check: the
/// file cannot be opened or read, or is too large.
pub fn inspect(path: &Path, agent_uid: u32) -> Result<Inspection, AllowlistError> {
    let read_error = |source| AllowlistError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    let mut problems = Vec::new();
    for dir in directories(path).map_err(read_error)? {
        let dir_meta = std::fs::metadata(&dir).map_err(read_error)?;
        problems.extend(file_problems(&dir, &dir_meta, true, agent_uid));
    }
    if is_null_device(&meta) {
        let parsed = Allowlist::parse("", path);
        return Ok(Inspection {
            agent_uid,
            problems,
            parsed,
        });
    }
    problems.extend(file_problems(path, &meta, false, agent_uid));
    if !meta.file_type().is_file() {
        // Reading a directory fails and a device may never end: the
        // problem is listed, and nothing is read.
        return Ok(Inspection {
            agent_uid,
            problems,
            parsed: Allowlist::parse("", path),
        });
    }
    let bytes = read_capped(&mut file).map_err(read_error)?;
    if bytes.len() as u64 > MAX_ALLOWLIST_BYTES {
        return Err(AllowlistError::TooLarge {
            path: path.to_path_buf(),
            limit_bytes: MAX_ALLOWLIST_BYTES,
        });
    }
    let parsed = match std::str::from_utf8(&bytes) {
        Ok(text) => Allowlist::parse(text, path),
        Err(e) => Err(invalid_utf8(path, &bytes[..e.valid_up_to()])),
    };
    Ok(Inspection {
        agent_uid,
        problems,
        parsed,
    })
}

/// The directories whose permissions matter: the one holding `path`, and
/// the one holding the file it resolves to, if another.
fn directories(path: &Path) -> io::Result<Vec<PathBuf>> {
    let parent = |p: &Path| match p.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut dirs = vec![parent(path)];
    let real = parent(&std::fs::canonicalize(path)?);
    if std::fs::canonicalize(&dirs[0])? != real {
        dirs.push(real);
    }
    Ok(dirs)
}

fn is_null_device(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == NULL_DEVICE_RDEV
}

fn file_problems(
    path: &Path,
    meta: &Metadata,
    directory: bool,
    agent_uid: u32,
) -> Vec<PermissionProblem> {
    let problem = |kind| PermissionProblem {
        path: path.to_path_buf(),
        directory,
        kind,
    };
    // A directory holding a file that opened is a directory.
    if !directory && !meta.file_type().is_file() {
        return vec![problem(ProblemKind::NotRegular)];
    }
    check_owner_and_mode(meta.uid(), meta.gid(), meta.mode(), directory, agent_uid)
        .into_iter()
        .map(problem)
        .collect()
}

/// Reads at most one byte more than [`MAX_ALLOWLIST_BYTES`], so a larger
/// file is noticed without reading all of it.
fn read_capped(file: &mut File) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(MAX_ALLOWLIST_BYTES + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The error for a file that stops being UTF-8 after `valid`.
fn invalid_utf8(path: &Path, valid: &[u8]) -> ParseErrors {
    let text = String::from_utf8_lossy(valid);
    let line = 1 + text.matches('\n').count();
    let last_line = text.rsplit('\n').next().unwrap_or_default();
    ParseErrors {
        path: path.to_path_buf(),
        errors: vec![ParseError {
            line,
            column: 1 + last_line.chars().count(),
            kind: ParseErrorKind::InvalidUtf8,
        }],
        truncated: false,
    }
}

/// The effective user id the agent runs as.
pub fn agent_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

impl Allowlist {
    /// Reads, checks and parses the allowlist at `path` (see the module
    /// doc). Blocking file I/O: call it at start, not from a task on the
    /// running agent.
    pub fn load(path: &Path, if_missing: IfMissing) -> Result<Allowlist, AllowlistError> {
        let inspection = match inspect(path, agent_uid()) {
            Err(AllowlistError::Read { source, .. })
                if source.kind() == io::ErrorKind::NotFound && if_missing == IfMissing::Empty =>
            {
                return Ok(Allowlist::missing(path));
            }
            other => other?,
        };
        if !inspection.problems.is_empty() {
            return Err(AllowlistError::Unsafe {
                path: path.to_path_buf(),
                problems: inspection.problems,
            });
        }
        inspection.parsed.map_err(AllowlistError::Parse)
    }

    /// Loads the allowlist the way the agent's flag means it: an explicit
    /// path must exist; without one, [`DEFAULT_ALLOWLIST_PATH`] is read if
    /// present and an empty allowlist is used otherwise.
    pub fn load_configured(explicit: Option<&Path>) -> Result<Allowlist, AllowlistError> {
        match explicit {
            Some(path) => Allowlist::load(path, IfMissing::Error),
            None => Allowlist::load(Path::new(DEFAULT_ALLOWLIST_PATH), IfMissing::Empty),
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::NotRegular => f.write_str("is not a regular file"),
            ProblemKind::Owner { uid, agent_uid } => write!(
                f,
                "is owned by uid {uid}, not by root or the agent's user (uid {agent_uid})"
            ),
            ProblemKind::GroupWritable { gid } => write!(f, "is writable by group {gid}"),
            ProblemKind::WorldWritable => f.write_str("is writable by everyone"),
        }
    }
}

impl fmt::Display for PermissionProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.directory {
            write!(f, "its directory {} {}", self.path.display(), self.kind)
        } else {
            write!(f, "it {}", self.kind)
        }
    }
}

impl fmt::Display for AllowlistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowlistError::Read { path, .. } => {
                write!(f, "cannot read allowlist {}", path.display())
            }
            AllowlistError::TooLarge { path, limit_bytes } => write!(
                f,
                "allowlist {} is larger than {limit_bytes} bytes",
                path.display()
            ),
            AllowlistError::Unsafe { path, problems } => {
                write!(f, "refusing allowlist {}: ", path.display())?;
                for (i, problem) in problems.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", and ")?;
                    }
                    write!(f, "{problem}")?;
                }
                f.write_str("; only root or the agent's user may be able to change it")
            }
            // Transparent: the parse errors already name the file and line.
            AllowlistError::Parse(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AllowlistError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AllowlistError::Read { source, .. } => Some(source),
            AllowlistError::TooLarge { .. }
            | AllowlistError::Unsafe { .. }
            | AllowlistError::Parse(_) => None,
        }
    }
}

#[cfg(test)]
mod tests;
