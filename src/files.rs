//! Files that hold secrets or state, written so that a crash or a umask
//! cannot leave them half-written or readable by others.
//!
//! Every write goes to a temporary file in the same directory, created with
//! its final mode (never wider, whatever the umask), synced, then renamed
//! over the target, and the directory is synced: a reader sees the old file
//! or the new one, never a mix. Directories for secrets are created 0700.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Private key, credential, database: owner only.
pub const SECRET_MODE: u32 = 0o600;
/// Owner and the operators' group (a credential meant for the group).
pub const GROUP_SECRET_MODE: u32 = 0o640;
/// Certificates: anyone may read.
pub const PUBLIC_MODE: u32 = 0o644;

/// An I/O error with the path it happened on.
#[derive(Debug)]
pub struct FileError {
    pub path: PathBuf,
    pub what: &'static str,
    pub source: io::Error,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot {} {}: {}",
            self.what,
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError {
        path: path.to_owned(),
        what,
        source,
    }
}

/// Creates `dir` (and its parents) if missing; a directory this creates is
/// 0700. An existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err(dir, "create directory"))
}

/// Replaces `path` with `bytes`, mode `mode` (e.g. [`SECRET_MODE`]).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err(&tmp, "create"))?;
        // The mode given at creation is masked by the umask: set it again
        // so a group-readable file really is.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(err(&tmp, "set the mode of"))?;
        f.write_all(bytes).map_err(err(&tmp, "write"))?;
        f.sync_all().map_err(err(&tmp, "sync"))?;
        fs::rename(&tmp, path).map_err(err(path, "replace"))?;
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates an empty file with `mode` if `path` does not exist yet (for a
/// database, before the library that opens it creates it with the umask's
/// mode); an existing file keeps its mode.
pub fn create_if_missing(path: &Path, mode: u32) -> Result<(), FileError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(f) => f
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(err(path, "set the mode of")),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(path, "create")(e)),
    }
}

/// Reads `path` as text, naming the path on failure.
pub fn read_text(path: &Path) -> Result<String, FileError> {
    fs::read_to_string(path).map_err(err(path, "read"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_get_their_mode_and_replace_atomically() {
        let dir = std::env::temp_dir().join(format!("monitor-files-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let private = dir.join("a/b");
        create_private_dir(&private).unwrap();
        assert_eq!(mode(&private), 0o700);
        let key = private.join("key");
        write_atomic(&key, b"one", SECRET_MODE).unwrap();
        assert_eq!(mode(&key), 0o600);
        write_atomic(&key, b"two", GROUP_SECRET_MODE).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"two");
        assert_eq!(mode(&key), 0o640);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&private).unwrap().count(), 1);
        let db = private.join("db");
        create_if_missing(&db, SECRET_MODE).unwrap();
        assert_eq!(mode(&db), 0o600);
        fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
        create_if_missing(&db, SECRET_MODE).unwrap();
        assert_eq!(mode(&db), 0o644, "an existing file keeps its mode");
        let missing = dir.join("nope/x");
        let e = write_atomic(&missing, b"", SECRET_MODE).unwrap_err();
        assert!(e.to_string().starts_with("cannot create "), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
