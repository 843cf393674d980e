//! On a real device: refusing to write a partition that is mounted, backs `/usr` (directly or
//! through device-mapper, as dm-verity does), or is held by another device; and dropping the
//! page cache so a read-back reads the device.

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::InstallError;

/// Where the in-use check reads the kernel's view of mounts and block devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysPaths {
    /// `/proc/self/mountinfo`
    pub mountinfo: PathBuf,
    /// `/sys/dev/block`: one `MAJOR:MINOR` entry per block device.
    pub sys_dev_block: PathBuf,
}

impl Default for SysPaths {
    fn default() -> Self {
        SysPaths {
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            sys_dev_block: PathBuf::from("/sys/dev/block"),
        }
    }
}

/// Refuses partition `number` of `disk` when it is in use. A disk image file (not a block
/// device) is never in use this way, so nothing is checked for it.
pub(super) fn check_not_in_use(
    disk: &File,
    disk_path: &Path,
    number: u32,
    sys: &SysPaths,
) -> Result<(), InstallError> {
    let meta = disk
        .metadata()
        .map_err(super::io_err("reading the metadata of", disk_path))?;
    if !meta.file_type().is_block_device() {
        return Ok(());
    }
    let disk_dev = dev_name(meta.rdev());
    let refuse = |reason: String| InstallError::InUse {
        path: disk_path.to_owned(),
        partition: format!("partition {number}"),
        reason,
    };
    let part_dev = partition_dev(&disk_dev, number, sys).map_err(refuse)?;
    partition_free(&part_dev, sys).map_err(refuse)
}

/// `MAJOR:MINOR` of a `dev_t`, decoded as glibc's `gnu_dev_major`/`gnu_dev_minor` do.
fn dev_name(rdev: u64) -> String {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    format!("{major}:{minor}")
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The `MAJOR:MINOR` of partition `number` of whole disk `disk_dev`, from sysfs.
pub(super) fn partition_dev(disk_dev: &str, number: u32, sys: &SysPaths) -> Result<String, String> {
    let disk_dir = sys.sys_dev_block.join(disk_dev);
    if disk_dir.join("partition").exists() {
        return Err(format!(
            "device {disk_dev} is a partition; name the whole disk"
        ));
    }
    let entries = std::fs::read_dir(&disk_dir).map_err(|e| {
        format!(
            "cannot list {} to find the partition: {e}",
            disk_dir.display()
        )
    })?;
    for entry in entries.flatten() {
        let dir = entry.path();
        if read_trim(&dir.join("partition")).as_deref() == Some(&number.to_string()) {
            return read_trim(&dir.join("dev"))
                .ok_or_else(|| format!("{} has no dev file", dir.display()));
        }
    }
    Err(format!(
        "the kernel knows no partition {number} on device {disk_dev} (run partprobe?); not writing blind"
    ))
}

/// Checks that partition `dev` is not mounted, does not back `/usr` and has no holders.
pub(super) fn partition_free(dev: &str, sys: &SysPaths) -> Result<(), String> {
    let mountinfo = std::fs::read_to_string(&sys.mountinfo)
        .map_err(|e| format!("cannot read {}: {e}", sys.mountinfo.display()))?;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(&source), Some(&point)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        if source == dev {
            return Err(format!("it is mounted at {point}"));
        }
        if point == "/usr" && backing_devices(source, sys).iter().any(|d| d == dev) {
            return Err(format!("/usr is mounted from it (through device {source})"));
        }
    }
    let holders_dir = sys.sys_dev_block.join(dev).join("holders");
    let holders: Vec<String> = std::fs::read_dir(&holders_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if !holders.is_empty() {
        return Err(format!(
            "device {} holds it (a device-mapper or md device over it): remove that first",
            holders.join(", ")
        ));
    }
    Ok(())
}

/// `dev` and every device under it through sysfs `slaves/` links (dm-verity's data and hash
/// devices), depth first.
fn backing_devices(dev: &str, sys: &SysPaths) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dev.to_owned()];
    while let Some(d) = todo.pop() {
        if out.contains(&d) || out.len() > 64 {
            continue;
        }
        if let Ok(rd) = std::fs::read_dir(sys.sys_dev_block.join(&d).join("slaves")) {
            for slave in rd.flatten() {
                if let Some(dev) = read_trim(&slave.path().join("dev")) {
                    todo.push(dev);
                }
            }
        }
        out.push(d);
    }
    out
}

/// `O_DIRECT` of the architectures Kiln builds for (the value differs between them).
#[cfg(target_arch = "x86_64")]
const O_DIRECT: i32 = 0o40000;
#[cfg(target_arch = "aarch64")]
const O_DIRECT: i32 = 0o200000;

/// The disk opened for writing with `O_DIRECT`, or `None` where that is not possible (tmpfs,
/// another architecture): the caller then writes through the page cache.
pub(super) fn open_direct(path: &Path) -> Option<File> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        use std::os::unix::fs::OpenOptionsExt;
        File::options()
            .write(true)
            .custom_flags(O_DIRECT)
            .open(path)
            .ok()
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = path;
        None
    }
}

extern "C" {
    fn posix_fadvise(fd: i32, offset: i64, len: i64, advice: i32) -> i32;
}
const POSIX_FADV_DONTNEED: i32 = 4;

/// Asks the kernel to drop cached pages of `file[offset..offset + len]` (after an fsync they
/// are clean), so that reading them back reads the device. Advisory: failure changes nothing
/// but what the read-back proves.
pub(super) fn drop_cache(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for the call's duration; the call only gives advice.
    unsafe {
        posix_fadvise(file.as_raw_fd(), offset, len, POSIX_FADV_DONTNEED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake `/sys/dev/block` with disk 254:0 (partitions 254:1..254:3), dm-0 (253:0) over
    /// 254:2, and a mountinfo with `/usr` from dm-0.
    fn fake_sys(dir: &Path) -> SysPaths {
        let block = dir.join("block");
        for n in 1..=3 {
            let p = block.join("254:0").join(format!("vda{n}"));
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("partition"), format!("{n}\n")).unwrap();
            std::fs::write(p.join("dev"), format!("254:{n}\n")).unwrap();
            std::fs::create_dir_all(block.join(format!("254:{n}/holders"))).unwrap();
        }
        std::fs::create_dir_all(block.join("254:2/holders/dm-0")).unwrap();
        let slave = block.join("253:0/slaves/vda2");
        std::fs::create_dir_all(&slave).unwrap();
        std::fs::write(slave.join("dev"), "254:2\n").unwrap();
        let mountinfo = dir.join("mountinfo");
        std::fs::write(
            &mountinfo,
            "22 1 254:5 / / rw,relatime - ext4 /dev/vda5 rw\n\
             23 22 253:0 / /usr ro,relatime - ext4 /dev/mapper/usr ro\n\
             24 22 254:1 / /boot rw - vfat /dev/vda1 rw\n",
        )
        .unwrap();
        SysPaths {
            mountinfo,
            sys_dev_block: block,
        }
    }

    #[test]
    fn partitions_backing_usr_mounted_or_held_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sys = fake_sys(dir.path());
        assert_eq!(partition_dev("254:0", 3, &sys).unwrap(), "254:3");
        assert_eq!(partition_dev("254:0", 2, &sys).unwrap(), "254:2");
        assert!(partition_dev("254:0", 9, &sys).is_err());
        assert!(partition_dev("254:0/vda1", 1, &sys)
            .unwrap_err()
            .contains("whole disk"));
        partition_free("254:3", &sys).unwrap();
        assert!(partition_free("254:1", &sys).unwrap_err().contains("/boot"));
        // USR-A under dm-verity: refused for backing /usr, even without its holders entry.
        std::fs::remove_dir(sys.sys_dev_block.join("254:2/holders/dm-0")).unwrap();
        let err = partition_free("254:2", &sys).unwrap_err();
        assert!(err.contains("/usr is mounted from it"), "{err}");
        std::fs::create_dir_all(sys.sys_dev_block.join("254:3/holders/dm-1")).unwrap();
        assert!(partition_free("254:3", &sys).unwrap_err().contains("dm-1"));
    }

    #[test]
    fn device_numbers_decode_like_glibc() {
        assert_eq!(dev_name(0xfe03), "254:3");
        // makedev(259, 70000): minor bits above 8 live at bit 20.
        let dev = (259u64 << 8) | (70000 & 0xff) | ((70000u64 & !0xff) << 12);
        assert_eq!(dev_name(dev), "259:70000");
    }
}
