//! A scratch directory for the allowlist tests (the unit tests of
//! `commands::allowfile` and the binary's `--check-commands` tests), with
//! the permissions the agent's checks look at set explicitly (never left to
//! the umask). Test support only, like the rest of `testing`: it panics
//! naming the path when the file system fails.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A directory (mode 0700) under the system's temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// `name` tells the tests apart; the process id, the runs.
    pub fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("monitor-allowlist-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir(&dir) {
            panic!("{}: {e}", dir.display());
        }
        chmod(&dir, 0o700);
        Scratch(dir)
    }

    /// Writes `bytes` at `name` with `mode` and returns its path.
    pub fn file(&self, name: &str, bytes: impl AsRef<[u8]>, mode: u32) -> PathBuf {
        let path = self.0.join(name);
        if let Err(e) = std::fs::write(&path, bytes) {
            panic!("{}: {e}", path.display());
        }
        chmod(&path, mode);
        path
    }

    /// Makes the directory `name` (mode 0755) and returns its path.
    pub fn dir(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Err(e) = std::fs::create_dir(&path) {
            panic!("{}: {e}", path.display());
        }
        chmod(&path, 0o755);
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sets `path`'s permission bits to `mode`.
pub fn chmod(path: &Path, mode: u32) {
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        panic!("chmod {}: {e}", path.display());
    }
}
