//! The disk to write, and every reason not to write it: not a whole block device, mounted (it
//! or any of its partitions), used as swap, held by device-mapper or md, the disk this machine
//! booted from, read-only, too small. Reads `/sys`, `/proc/self/mountinfo` and `/proc/swaps`;
//! writes nothing.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A device number, as `major:minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    /// glibc's encoding of `dev_t` (`gnu_dev_major`/`gnu_dev_minor`).
    pub fn from_raw(dev: u64) -> DevNum {
        DevNum {
            major: (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32,
            minor: ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32,
        }
    }

    fn parse(text: &str) -> Option<DevNum> {
        let (a, b) = text.trim().split_once(':')?;
        Some(DevNum {
            major: a.parse().ok()?,
            minor: b.parse().ok()?,
        })
    }

    fn sys_dir(self) -> PathBuf {
        PathBuf::from(format!("/sys/dev/block/{}:{}", self.major, self.minor))
    }
}

impl std::fmt::Display for DevNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One partition the kernel knows on the disk.
#[derive(Clone, Debug)]
pub struct PartInfo {
    pub name: String,
    pub dev: DevNum,
    pub size: u64,
}

/// A whole disk that passed every check but the size (see [`Device::check_size`]).
#[derive(Clone, Debug)]
pub struct Device {
    /// As the user named it (maybe a `/dev/disk/by-id/…` link).
    pub path: PathBuf,
    /// The kernel's name (`sdb`, `loop3`).
    pub name: String,
    pub dev: DevNum,
    pub size: u64,
    pub model: String,
    pub partitions: Vec<PartInfo>,
}

/// Finds the disk at `path` and refuses it for every reason it must not be written.
pub fn inspect(path: &Path) -> Result<Device> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "--device {}: no such device (list disks with `lsblk -d`)",
            path.display()
        )
    })?;
    if !meta.file_type().is_block_device() {
        bail!(
            "--device {} is not a block device: to write a disk image file, use --to-file {}",
            path.display(),
            path.display()
        );
    }
    let dev = DevNum::from_raw(meta.rdev());
    let sys = dev
        .sys_dir()
        .canonicalize()
        .with_context(|| format!("finding {} ({dev}) in /sys", path.display()))?;
    let name = file_name(&sys);
    if sys.join("partition").exists() {
        let disk = sys.parent().map(file_name).unwrap_or_default();
        bail!(
            "--device {} is partition {} of /dev/{disk}, not a whole disk: flash writes a whole disk (--device /dev/{disk}), partition table included",
            path.display(),
            read_trim(&sys.join("partition")).unwrap_or_default()
        );
    }
    let device = Device {
        path: path.to_owned(),
        size: read_u64(&sys.join("size"))? * 512,
        model: model(&sys),
        partitions: partitions(&sys)?,
        name,
        dev,
    };
    device.check_media(&sys)?;
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    device.check_not_mounted(&mountinfo)?;
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    device.check_not_swap(&swaps)?;
    device.check_no_holders()?;
    device.check_not_boot_disk(&mountinfo)?;
    Ok(device)
}

impl Device {
    /// The disk and its partitions.
    fn devs(&self) -> Vec<(String, DevNum)> {
        let mut all = vec![(self.name.clone(), self.dev)];
        all.extend(self.partitions.iter().map(|p| (p.name.clone(), p.dev)));
        all
    }

    fn check_media(&self, sys: &Path) -> Result<()> {
        let p = self.path.display();
        if self.size == 0 {
            bail!("--device {p} has no medium (size 0): insert it, or attach the loop device to a file");
        }
        if read_trim(&sys.join("ro")).as_deref() == Some("1") {
            bail!("--device {p} is read-only: unlock it (write-protect switch, `blockdev --setrw {p}`) and run flash again");
        }
        let sector = read_trim(&sys.join("queue/logical_block_size"));
        if let Some(s) = sector.filter(|s| s != "512") {
            bail!("--device {p} has {s}-byte sectors; the image's partition table is for 512-byte sectors and would not boot from it");
        }
        Ok(())
    }

    fn check_not_mounted(&self, mountinfo: &str) -> Result<()> {
        let devs = self.devs();
        for m in parse_mountinfo(mountinfo) {
            let by_num = devs.iter().find(|(_, d)| *d == m.dev);
            let by_source = devs.iter().find(|(n, _)| m.source == format!("/dev/{n}"));
            if let Some((name, _)) = by_num.or(by_source) {
                bail!(
                    "--device {} is in use: /dev/{name} is mounted on {}; unmount it (`umount {}`) and run flash again (nothing was written)",
                    self.path.display(),
                    m.mount_point,
                    m.mount_point
                );
            }
        }
        Ok(())
    }

    fn check_not_swap(&self, swaps: &str) -> Result<()> {
        let devs = self.devs();
        for file in parse_swaps(swaps) {
            let Ok(meta) = std::fs::metadata(&file) else {
                continue;
            };
            let num = DevNum::from_raw(meta.rdev());
            if meta.file_type().is_block_device() {
                if let Some((name, _)) = devs.iter().find(|(_, d)| *d == num) {
                    bail!(
                        "--device {} is in use: /dev/{name} is swap; turn it off (`swapoff {file}`) and run flash again",
                        self.path.display()
                    );
                }
            }
        }
        Ok(())
    }

    fn check_no_holders(&self) -> Result<()> {
        for (name, _) in self.devs() {
            let dir = PathBuf::from(format!("/sys/class/block/{name}/holders"));
            let holders: Vec<String> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| describe_holder(&e.file_name().to_string_lossy()))
                        .collect()
                })
                .unwrap_or_default();
            if !holders.is_empty() {
                bail!(
                    "--device {} is in use: /dev/{name} is held by {}; stop that first (`dmsetup remove …`, `mdadm --stop …`, `vgchange -an …`) and run flash again",
                    self.path.display(),
                    holders.join(", ")
                );
            }
        }
        Ok(())
    }

    fn check_not_boot_disk(&self, mountinfo: &str) -> Result<()> {
        for (mount_point, disks) in boot_disks(mountinfo) {
            if disks.contains(&self.name) {
                bail!(
                    "--device {} is the disk this machine runs from (it holds {mount_point}): refusing to overwrite it",
                    self.path.display()
                );
            }
        }
        Ok(())
    }

    /// Refuses a disk smaller than the image.
    pub fn check_size(&self, image_size: u64) -> Result<()> {
        if self.size < image_size {
            bail!(
                "--device {} holds {} but the image is {}: use a disk of at least {} (nothing was written)",
                self.path.display(),
                human(self.size),
                human(image_size),
                human(image_size)
            );
        }
        Ok(())
    }

    /// What the user confirms: name, size, model and partitions.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} (/dev/{}): {}, {}\n",
            self.path.display(),
            self.name,
            human(self.size),
            self.model
        );
        if self.partitions.is_empty() {
            s += "  no partitions\n";
        }
        for p in &self.partitions {
            s += &format!("  partition /dev/{}: {}\n", p.name, human(p.size));
        }
        s
    }
}

/// `1.5 GiB`, `512 MiB`, with the exact byte count.
pub fn human(bytes: u64) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.1} GiB ({bytes} bytes)")
    } else {
        format!("{} MiB ({bytes} bytes)", bytes >> 20)
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

fn read_u64(p: &Path) -> Result<u64> {
    let text = read_trim(p).with_context(|| format!("reading {}", p.display()))?;
    text.parse()
        .with_context(|| format!("{} holds {text:?}, not a number", p.display()))
}

/// The model (or, for a loop device, its backing file).
fn model(sys: &Path) -> String {
    if let Some(file) = read_trim(&sys.join("loop/backing_file")) {
        return format!("loop device over {file}");
    }
    let vendor = read_trim(&sys.join("device/vendor")).unwrap_or_default();
    let model = read_trim(&sys.join("device/model")).unwrap_or_default();
    match format!("{vendor} {model}").trim() {
        "" => "unknown model".to_owned(),
        both => both.to_owned(),
    }
}

/// The partitions the kernel shows under the disk's sysfs directory.
fn partitions(sys: &Path) -> Result<Vec<PartInfo>> {
    let mut parts = Vec::new();
    let entries = std::fs::read_dir(sys).with_context(|| format!("listing {}", sys.display()))?;
    for entry in entries.filter_map(|e| e.ok()) {
        let dir = entry.path();
        if !dir.join("partition").exists() {
            continue;
        }
        let dev = read_trim(&dir.join("dev"))
            .and_then(|d| DevNum::parse(&d))
            .with_context(|| format!("reading {}/dev", dir.display()))?;
        parts.push(PartInfo {
            name: file_name(&dir),
            dev,
            size: read_u64(&dir.join("size"))? * 512,
        });
    }
    parts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(parts)
}

/// `dm-0 (device-mapper vg-root)`, `md0 (md array)`, or the bare name.
fn describe_holder(name: &str) -> String {
    let sys = PathBuf::from(format!("/sys/class/block/{name}"));
    if let Some(dm) = read_trim(&sys.join("dm/name")) {
        format!("{name} (device-mapper {dm})")
    } else if sys.join("md").exists() {
        format!("{name} (md array)")
    } else {
        name.to_owned()
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
pub struct Mount {
    pub dev: DevNum,
    pub mount_point: String,
    pub source: String,
}

/// The mounts, in order (a later mount on the same point hides an earlier one).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(Mount {
                dev: DevNum::parse(fields.get(2)?)?,
                mount_point: unescape(fields.get(4)?),
                source: unescape(fields.get(sep + 2)?),
            })
        })
        .collect()
}

/// The files and devices of `/proc/swaps`.
pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(unescape)
        .collect()
}

/// The kernel writes space, tab, newline and backslash in paths as `\ooo` octal escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points the running system needs, and the whole disks under each (through
/// partitions, device-mapper and md).
fn boot_disks(mountinfo: &str) -> Vec<(String, BTreeSet<String>)> {
    let mounts = parse_mountinfo(mountinfo);
    ["/", "/boot", "/boot/efi", "/efi", "/usr"]
        .iter()
        .filter_map(|point| {
            let m = mounts.iter().rev().find(|m| m.mount_point == *point)?;
            let mut disks = whole_disks(m.dev, 0);
            // btrfs and others show an anonymous device number; the source names the device.
            if let Ok(meta) = std::fs::metadata(&m.source) {
                if meta.file_type().is_block_device() {
                    disks.extend(whole_disks(DevNum::from_raw(meta.rdev()), 0));
                }
            }
            Some((point.to_string(), disks))
        })
        .collect()
}

/// The whole disks a block device lives on.
fn whole_disks(dev: DevNum, depth: u32) -> BTreeSet<String> {
    let mut disks = BTreeSet::new();
    let Ok(sys) = dev.sys_dir().canonicalize() else {
        return disks;
    };
    let slaves: Vec<String> = std::fs::read_dir(sys.join("slaves"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if !slaves.is_empty() && depth < 8 {
        for s in slaves {
            let num = read_trim(Path::new(&format!("/sys/class/block/{s}/dev")))
                .and_then(|d| DevNum::parse(&d));
            if let Some(num) = num {
                disks.extend(whole_disks(num, depth + 1));
            }
        }
    } else if sys.join("partition").exists() {
        disks.extend(sys.parent().map(file_name));
    } else {
        disks.insert(file_name(&sys));
    }
    disks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_device_point_and_source_with_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - ext3 /dev/root rw\n\
                    40 1 7:3 / /srv rw shared:2 - xfs /dev/loop3 rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[0].dev,
            DevNum {
                major: 98,
                minor: 0
            }
        );
        assert_eq!(m[0].mount_point, "/mnt two");
        assert_eq!(m[0].source, "/dev/root");
        assert_eq!(m[1].source, "/dev/loop3");
    }

    #[test]
    fn swaps_list_files_after_the_header() {
        let text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                    /dev/sdb2                               partition\t8388604\t\t0\t\t-2\n\
                    /swap\\040file                          file\t\t1048572\t\t0\t\t-3\n";
        assert_eq!(parse_swaps(text), ["/dev/sdb2", "/swap file"]);
    }

    #[test]
    fn dev_t_decodes_like_glibc() {
        // makedev(259, 65537) in glibc's encoding.
        let (major, minor) = (259u64, 65537u64);
        let raw = ((major & 0xfff) << 8)
            | ((major & !0xfff) << 32)
            | (minor & 0xff)
            | ((minor & !0xff) << 12);
        assert_eq!(
            DevNum::from_raw(raw),
            DevNum {
                major: 259,
                minor: 65537
            }
        );
    }

    #[test]
    fn the_disk_holding_root_is_found() {
        // Whatever this machine boots from, `/` is on some disk or on none (a container's
        // overlay); when it is a block device, that disk must be among the boot disks.
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = parse_mountinfo(&mountinfo)
            .into_iter()
            .rev()
            .find(|m| m.mount_point == "/")
            .unwrap();
        let disks = boot_disks(&mountinfo);
        if root.dev.sys_dir().exists() {
            let expected = whole_disks(root.dev, 0);
            assert!(!expected.is_empty());
            assert!(disks
                .iter()
                .any(|(p, d)| p == "/" && d.is_superset(&expected)));
        }
    }
}
