//! Which block devices and network interfaces count towards the disk and
//! network metrics, decided from /sys under an injectable root.
//!
//! A block device counts when it is a whole physical disk:
//! `SYS/block/NAME` exists (partitions never appear there), it has no
//! `partition` attribute, it does not live under `devices/virtual/block`
//! (loop, ram, zram, dm-*, md*: their I/O is already counted on the disks
//! beneath them, or never reaches one), and it is not an eMMC hardware
//! partition (`mmcblk*boot*`, `*rpmb`), whose I/O is a firmware matter.
//!
//! An interface counts when it is not `lo` and not virtual
//! (`SYS/devices/virtual/net/NAME` exists, or `SYS/class/net/NAME` resolves
//! under `devices/virtual`): bridges, veths, tunnels and bonds would count
//! the same bytes twice. An interface /sys does not know about counts (a
//! container may see a /sys of another namespace); the operator can always
//! name interfaces instead.
//!
//! These functions read the file system, so they must never be called per
//! tick: the collector asks once per device name and caches the answer.

use std::path::Path;

/// Whether block device `name` is a whole physical disk (see module docs).
pub fn is_physical_disk(sys_root: &Path, name: &str) -> bool {
    if !is_plain_name(name) || is_emmc_hardware_partition(name) {
        return false;
    }
    let link = sys_root.join("block").join(name);
    if link.symlink_metadata().is_err() || link.join("partition").exists() {
        return false;
    }
    if sys_root.join("devices/virtual/block").join(name).exists() {
        return false;
    }
    !resolves_under_virtual(&link)
}

/// Whether interface `name` is physical (see module docs).
pub fn is_physical_interface(sys_root: &Path, name: &str) -> bool {
    if name == "lo" || !is_plain_name(name) {
        return false;
    }
    if sys_root.join("devices/virtual/net").join(name).exists() {
        return false;
    }
    !resolves_under_virtual(&sys_root.join("class/net").join(name))
}

/// eMMC boot areas (`mmcblk0boot0`, `mmcblk0boot1`) and the replay-protected
/// memory block (`mmcblk0rpmb`): separate block devices of the same chip.
fn is_emmc_hardware_partition(name: &str) -> bool {
    (name.starts_with("mmcblk") && name.contains("boot")) || name.ends_with("rpmb")
}

/// A name from a /proc file must not be able to walk the /sys tree.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

/// Whether the symlink at `link` points into `devices/virtual/`. Read as
/// text rather than canonicalised so that a miniature /sys (fixtures, fake
/// hosts) needs no full target tree, and so that an old kernel's directory
/// (CONFIG_SYSFS_DEPRECATED: not a symlink) reads as "not virtual".
fn resolves_under_virtual(link: &Path) -> bool {
    match std::fs::read_link(link) {
        Ok(target) => {
            let target = target.to_string_lossy();
            target.contains("/devices/virtual/") || target.starts_with("devices/virtual/")
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs;
    use crate::testing::fixture_dir;

    #[test]
    fn emmc_hardware_partitions_are_recognised_by_name() {
        fn check(name: &str, expected: bool) {
            assert_eq!(is_emmc_hardware_partition(name), expected, "{name}");
        }
        check("mmcblk0boot0", true);
        check("mmcblk1boot1", true);
        check("mmcblk0rpmb", true);
        check("mmcblk0", false);
        check("mmcblk0p1", false);
        check("sda", false);
    }

    #[test]
    fn names_cannot_escape_the_sys_root() {
        let root = Path::new("/nonexistent-sys-root");
        assert!(!is_physical_disk(root, "../../etc"));
        assert!(!is_physical_interface(root, ".."));
        assert!(!is_physical_interface(root, ""));
    }

    // The captures in tests/fixtures (x86_64, aarch64, armv7; its README.md
    // says where each came from) and broken input: every error must name the
    // file, the 1-based line and the field, and nothing may panic.

    fn check_disk_class(arch: &str, name: &str, expected: bool) {
        assert_eq!(
            sysfs::is_physical_disk(&fixture_dir(arch).join("sys"), name),
            expected,
            "{arch}: disk {name}"
        );
    }

    fn check_net_class(arch: &str, name: &str, expected: bool) {
        assert_eq!(
            sysfs::is_physical_interface(&fixture_dir(arch).join("sys"), name),
            expected,
            "{arch}: interface {name}"
        );
    }

    #[test]
    fn sysfs_classification_on_fixtures() {
        check_disk_class("x86_64", "vda", true);
        check_disk_class("x86_64", "loop0", false);
        check_disk_class("x86_64", "zram0", false);
        check_disk_class("x86_64", "vda1", false);
        check_net_class("x86_64", "eth0", true);
        check_net_class("x86_64", "lo", false);
        check_net_class("x86_64", "ifb0", false);

        check_disk_class("aarch64", "mmcblk0", true);
        check_disk_class("aarch64", "mmcblk0p1", false);
        check_disk_class("aarch64", "mmcblk0p2", false);
        check_disk_class("aarch64", "mmcblk0boot0", false);
        check_disk_class("aarch64", "mmcblk0boot1", false);
        check_disk_class("aarch64", "zram0", false);
        check_disk_class("aarch64", "ram0", false);
        check_disk_class("aarch64", "loop1", false);
        check_disk_class("aarch64", "sda", true);
        check_disk_class("aarch64", "sda1", false);
        check_net_class("aarch64", "eth0", true);
        check_net_class("aarch64", "wlan0", true);
        check_net_class("aarch64", "docker0", false);
        check_net_class("aarch64", "veth1a2b3c4", false);
        check_net_class("aarch64", "lo", false);

        check_disk_class("armv7", "mmcblk0", true);
        check_disk_class("armv7", "mmcblk0p2", false);
        check_disk_class("armv7", "sdb", true);
        check_disk_class("armv7", "sdb1", false);
        check_disk_class("armv7", "loop7", false);
        check_net_class("armv7", "eth0", true);
        check_net_class("armv7", "wlan0", true);
        check_net_class("armv7", "lo", false);
    }
}
