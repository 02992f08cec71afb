//! `fs_used_percent` per real mounted file system and
//! `root_inodes_used_percent`, from the mount table and `statvfs`.
//!
//! The mount table (`PROC_ROOT/self/mounts`, or `PROC_ROOT/1/mounts` when
//! a root prefix is given, as node_exporter does with `--path.rootfs`, and
//! `self/mounts` again where PID 1's cannot be read)
//! stays open and is re-read only when it changes: on procfs the kernel
//! flags a change of the mount namespace with POLLPRI, so a tick pays one
//! zero-timeout `poll` for it; on anything else (test fixtures) the file is
//! re-read and compared. Each tick then pays one `statvfs` per selected
//! file system.
//!
//! Every mount point is looked up under the root prefix (`--rootfs`), never
//! on the agent's own file systems when a prefix is given: a mount point
//! missing under the prefix, or one that resolves outside it through a
//! symbolic link, is skipped. Must never `statvfs` a network or FUSE file
//! system unless the operator named it: on an unreachable server `statvfs`
//! blocks, and the agent has one thread.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::proc::mounts;
use crate::source::{Shape, Source, report_parse_error};

/// File system types never counted unless named in `MONITOR_FILESYSTEMS`:
/// memory-backed and pseudo file systems, read-only images that are always
/// full, and network or FUSE file systems whose `statvfs` can block.
/// (`fuseblk`, the block-device FUSE of ntfs-3g and exfat-fuse, counts.)
pub const EXCLUDED_TYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "ceph",
    "cgroup",
    "cgroup2",
    "cifs",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "erofs",
    "fuse",
    "fusectl",
    "glusterfs",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nfs",
    "nfs4",
    "nfsd",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "smb3",
    "smbfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
    "9p",
];

/// Whether a file system of type `fs_type` is counted by default.
pub fn is_real_type(fs_type: &str) -> bool {
    !fs_type.starts_with("fuse.") && !EXCLUDED_TYPES.contains(&fs_type)
}

/// Which file systems count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsChoice {
    /// Every mounted file system of a real type (see [`is_real_type`]),
    /// one mount per source device.
    Real,
    /// Exactly these mount points, whatever their type, when mounted.
    Named(Vec<String>),
}

/// What `statvfs` says about one file system, in its own block and inode
/// units (only ratios are taken).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsUsage {
    /// `f_blocks`: size in fragments.
    pub blocks: u64,
    /// `f_bfree`: free fragments, reserved ones included.
    pub blocks_free: u64,
    /// `f_bavail`: fragments free for unprivileged users.
    pub blocks_available: u64,
    /// `f_files`: inodes (0 where the file system has no fixed count: vfat, btrfs).
    pub files: u64,
    /// `f_ffree`: free inodes.
    pub files_free: u64,
}

impl FsUsage {
    /// Used share as `df` prints it (Use%): used / (used + available) × 100,
    /// with used = f_blocks − f_bfree, so blocks reserved for root count as
    /// neither. `None` for a file system of size 0.
    pub fn used_percent(&self) -> Option<f64> {
        let used = self.blocks.saturating_sub(self.blocks_free);
        let denominator = used.saturating_add(self.blocks_available);
        (denominator > 0).then(|| (used as f64 * 100.0 / denominator as f64).clamp(0.0, 100.0))
    }

    /// Used inodes as `df -i` prints them (IUse%): (f_files − f_ffree) /
    /// f_files × 100; `None` where the file system has no inode count.
    pub fn inodes_used_percent(&self) -> Option<f64> {
        let used = self.files.saturating_sub(self.files_free);
        (self.files > 0).then(|| (used as f64 * 100.0 / self.files as f64).clamp(0.0, 100.0))
    }
}

/// How the collector asks for a file system's usage: `statvfs(2)`, or a
/// recording fake in tests.
pub type StatFs = fn(&Path) -> io::Result<FsUsage>;

/// `statvfs(2)` on `path`.
// The counts are 32-bit on 32-bit ARM (`fsblkcnt_t` is `unsigned long`
// there): the conversions are needed for the Pi Zero, not on x86_64.
#[allow(clippy::useless_conversion)]
pub fn statvfs(path: &Path) -> io::Result<FsUsage> {
    let s = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok(FsUsage {
        blocks: u64::from(s.blocks()),
        blocks_free: u64::from(s.blocks_free()),
        blocks_available: u64::from(s.blocks_available()),
        files: u64::from(s.files()),
        files_free: u64::from(s.files_free()),
    })
}

/// The mount table to read: `PROC_ROOT/self/mounts` for the agent's own
/// root; under a root prefix, the host's as PID 1 sees it
/// (`PROC_ROOT/1/mounts`, as node_exporter reads it), falling back to
/// `self/mounts` where PID 1's cannot be opened (reading it needs ptrace
/// access to PID 1, which an unprivileged agent lacks).
fn table_path(proc_root: &Path, rootfs: &Path) -> PathBuf {
    let own = proc_root.join("self/mounts");
    if rootfs == Path::new("/") {
        return own;
    }
    let init = proc_root.join("1/mounts");
    match File::open(&init) {
        Ok(_) => init,
        Err(err) => {
            log::info!(
                "cannot open {} ({err}); reading {} instead",
                init.display(),
                own.display()
            );
            own
        }
    }
}

/// One file system read every tick.
#[derive(Debug)]
struct Selected {
    /// The mount point as the mount table names it (the label).
    label: Arc<str>,
    /// The mount point under the root prefix.
    path: PathBuf,
    /// Whether the last `statvfs` failed (warn on changes only).
    failing: bool,
}

/// How a change of the mount table is noticed.
#[derive(Debug)]
enum Watch {
    /// procfs: POLLPRI on the open file.
    Poll(File),
    /// Anything else: re-read and compare the bytes.
    Compare(Vec<u8>),
}

/// The selected file systems and the mount table they come from.
#[derive(Debug)]
pub struct Filesystems {
    rootfs: PathBuf,
    choice: FsChoice,
    table: Source,
    watch: Option<Watch>,
    selected: Vec<Selected>,
    /// Index in `selected` of the mount point `/`, whose `statvfs` also
    /// gives the root's inodes.
    root: Option<usize>,
    root_failing: bool,
    statfs: StatFs,
}

/// What one tick found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FsReading {
    /// `(mount point, used percent)` per selected file system read.
    pub used_percent: Vec<(Arc<str>, f64)>,
    /// The root file system's inodes used percent.
    pub root_inodes_used_percent: Option<f64>,
}

impl Filesystems {
    /// Opens the mount table under `proc_root` and selects the file systems
    /// to read. `rootfs` is the root prefix (`/` for the agent's own).
    pub fn open(proc_root: &Path, rootfs: &Path, choice: FsChoice, statfs: StatFs) -> Filesystems {
        let table_path = table_path(proc_root, rootfs);
        let mut fs = Filesystems {
            rootfs: rootfs.to_path_buf(),
            choice,
            table: Source::open(table_path, Shape::Records),
            watch: None,
            selected: Vec::new(),
            root: None,
            root_failing: false,
            statfs,
        };
        let mut errors = 0;
        fs.reload(&mut errors);
        fs
    }

    /// The paths measured each tick (the root prefix too when `/` is not
    /// among the selected).
    pub fn paths(&self) -> Vec<&Path> {
        let mut paths: Vec<&Path> = self.selected.iter().map(|s| s.path.as_path()).collect();
        if self.root.is_none() {
            paths.push(&self.rootfs);
        }
        paths
    }

    /// The mount points read each tick, as labelled.
    pub fn mount_points(&self) -> impl Iterator<Item = &str> {
        self.selected.iter().map(|s| &*s.label)
    }

    /// Re-reads the mount table if it changed, then reads every selected
    /// file system's usage into `out` (cleared first; its vector keeps its
    /// capacity, so a steady tick does not allocate).
    pub fn sample(&mut self, out: &mut FsReading, parse_errors: &mut u32) {
        if self.changed() {
            self.reload(parse_errors);
        }
        out.used_percent.clear();
        out.root_inodes_used_percent = None;
        let statfs = self.statfs;
        for (i, fs) in self.selected.iter_mut().enumerate() {
            match statfs(&fs.path) {
                Ok(usage) => {
                    if fs.failing {
                        log::info!("{} can be measured again", fs.path.display());
                        fs.failing = false;
                    }
                    if let Some(p) = usage.used_percent() {
                        out.used_percent.push((Arc::clone(&fs.label), p));
                    }
                    if self.root == Some(i) {
                        out.root_inodes_used_percent = usage.inodes_used_percent();
                    }
                }
                Err(err) => {
                    if !fs.failing {
                        log::warn!(
                            "cannot statvfs {}: {err}; its usage is omitted",
                            fs.path.display()
                        );
                    }
                    fs.failing = true;
                }
            }
        }
        if self.root.is_none() {
            // "/" is not among the selected (named away, or of an excluded
            // type such as a container's overlay): its inodes still count.
            match statfs(&self.rootfs) {
                Ok(usage) => {
                    self.root_failing = false;
                    out.root_inodes_used_percent = usage.inodes_used_percent();
                }
                Err(err) => {
                    if !self.root_failing {
                        log::warn!("cannot statvfs {}: {err}", self.rootfs.display());
                    }
                    self.root_failing = true;
                }
            }
        }
    }

    /// Whether the mount table changed since it was last read.
    fn changed(&mut self) -> bool {
        match &mut self.watch {
            None => true,
            Some(Watch::Poll(file)) => {
                use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
                let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLPRI)];
                match poll(&mut fds, PollTimeout::ZERO) {
                    Ok(_) => fds[0]
                        .revents()
                        .is_some_and(|r| r.intersects(PollFlags::POLLPRI | PollFlags::POLLERR)),
                    Err(_) => true,
                }
            }
            Some(Watch::Compare(last)) => {
                let Some(bytes) = self.table.read() else {
                    return true;
                };
                *last != *bytes
            }
        }
    }

    /// Reads the mount table and selects the file systems to read.
    fn reload(&mut self, parse_errors: &mut u32) {
        if self.watch.is_none() {
            self.watch = self.start_watch();
        }
        let Some(text) = self.table.read() else {
            self.selected.clear();
            self.root = None;
            return;
        };
        let raw = text.to_vec();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let was_bad = self.table.had_parse_errors;
        let mut errors = 0u32;
        let mut selected = Vec::new();
        let mut sources = HashSet::new();
        let mut labels = HashSet::new();
        for entry in mounts::parse(&text) {
            let entry = match entry {
                Ok(e) => e,
                Err(err) => {
                    report_parse_error(was_bad || errors > 0, &err);
                    errors = errors.saturating_add(1);
                    continue;
                }
            };
            let mount_point = mounts::unescape(entry.mount_point);
            let wanted = match &self.choice {
                FsChoice::Real => {
                    is_real_type(entry.fs_type) && sources.insert(entry.source.to_owned())
                }
                FsChoice::Named(names) => names.iter().any(|n| *n == *mount_point),
            };
            // A mount point mounted over twice counts once (the later
            // mount hides the earlier; the label is the same).
            if !wanted || labels.contains(&*mount_point) {
                continue;
            }
            let Some(path) = self.under_root(&mount_point) else {
                continue;
            };
            labels.insert(mount_point.clone().into_owned());
            selected.push(Selected {
                label: Arc::from(&*mount_point),
                path,
                failing: false,
            });
        }
        self.table.had_parse_errors = errors > 0;
        *parse_errors = parse_errors.saturating_add(errors);
        if let Some(Watch::Compare(last)) = &mut self.watch {
            *last = raw;
        }
        self.root = selected.iter().position(|s| &*s.label == "/");
        let names: Vec<&str> = selected.iter().map(|s| &*s.label).collect();
        log::info!(
            "file systems measured: {}",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
        self.selected = selected;
    }

    /// How the mount table's changes are noticed: POLLPRI on procfs.
    fn start_watch(&self) -> Option<Watch> {
        let file = File::open(self.table.path()).ok()?;
        let on_procfs = nix::sys::statfs::fstatfs(&file)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC);
        Some(if on_procfs {
            // The first poll reports nothing; every later change of the
            // namespace's mounts sets POLLPRI once.
            let _ = nix::poll::poll(
                &mut [nix::poll::PollFd::new(
                    file.as_fd(),
                    nix::poll::PollFlags::POLLPRI,
                )],
                nix::poll::PollTimeout::ZERO,
            );
            Watch::Poll(file)
        } else {
            Watch::Compare(Vec::new())
        })
    }

    /// `mount_point` under the root prefix, or `None` (logged) when it is
    /// not a plain absolute path, does not exist there, or resolves outside
    /// the prefix.
    fn under_root(&self, mount_point: &str) -> Option<PathBuf> {
        let relative = Path::new(mount_point).strip_prefix("/").ok()?;
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            log::debug!("mount point {mount_point:?} is not a plain path: skipped");
            return None;
        }
        let path = self.rootfs.join(relative);
        if self.rootfs == Path::new("/") {
            return Some(path);
        }
        let (Ok(real), Ok(root)) = (path.canonicalize(), self.rootfs.canonicalize()) else {
            log::debug!(
                "{} does not exist: mount point {mount_point:?} skipped",
                path.display()
            );
            return None;
        };
        if !real.starts_with(&root) {
            log::warn!(
                "{} resolves to {}, outside the root prefix {}: skipped",
                path.display(),
                real.display(),
                self.rootfs.display()
            );
            return None;
        }
        Some(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_percentages_follow_df() {
        // df: 1000 blocks, 400 free of which 350 available to users:
        // used 600, Use% = 600 / (600 + 350).
        let usage = FsUsage {
            blocks: 1000,
            blocks_free: 400,
            blocks_available: 350,
            files: 200,
            files_free: 150,
        };
        assert_eq!(usage.used_percent(), Some(600.0 * 100.0 / 950.0));
        assert_eq!(usage.inodes_used_percent(), Some(25.0));
        assert_eq!(FsUsage::default().used_percent(), None);
        assert_eq!(FsUsage::default().inodes_used_percent(), None);
    }

    #[test]
    fn pseudo_network_and_fuse_types_are_not_real() {
        for t in [
            "tmpfs",
            "overlay",
            "squashfs",
            "proc",
            "cgroup2",
            "nfs4",
            "fuse.sshfs",
            "fuse",
        ] {
            assert!(!is_real_type(t), "{t}");
        }
        for t in ["ext4", "vfat", "btrfs", "xfs", "f2fs", "fuseblk", "exfat"] {
            assert!(is_real_type(t), "{t}");
        }
    }
}
