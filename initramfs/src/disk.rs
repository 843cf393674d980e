//! Finding the boot disk without udev or blkid: every whole disk in `/sys/class/block` whose
//! GPT has partitions named `USR-A`, `USR-B` and `ROOT` is a Kiln disk; the first one found is
//! the boot disk. Device nodes are made with mknod when devtmpfs has not made them.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_image::gpt::Gpt;
use kiln_image::region::Region;

use crate::log;
use crate::sys;

/// Partition names that mark a Kiln disk.
pub const ROOT_NAME: &str = kiln_contract::disk::ROOT;
pub const USR_NAMES: [&str; 2] = [kiln_contract::disk::USR_A, kiln_contract::disk::USR_B];

/// Whole-disk names that never hold the boot disk: RAM disks, loop devices, device-mapper
/// devices (our own `usr` among them), zram swap.
const SKIP_PREFIXES: &[&str] = &["ram", "loop", "dm-", "zram", "md", "nbd"];

/// A block device as sysfs describes it, with a node under /dev.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDev {
    /// Kernel name, e.g. `vda` or `vda2`.
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub node: PathBuf,
}

impl BlockDev {
    /// `major:minor`, as device-mapper tables name devices.
    pub fn numbers(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }
}

/// The disk Kiln boots from and the partitions the init uses.
#[derive(Debug)]
pub struct BootDisk {
    pub disk: BlockDev,
    pub disk_bytes: u64,
    pub usr: BlockDev,
    pub root: BlockDev,
    /// GPT number of ROOT (the partition grown at first boot).
    pub root_number: u32,
}

impl BootDisk {
    /// The partition named `name` as a window on the disk, for our own FAT reader (no vfat
    /// module, no mount); `None` when the GPT has no such partition.
    pub fn partition(&self, name: &str) -> Result<Option<Region<File>>> {
        let node = &self.disk.node;
        let mut dev = File::open(node).with_context(|| format!("opening {}", node.display()))?;
        let gpt = Gpt::read(&mut dev, self.disk_bytes)
            .with_context(|| format!("reading the GPT of {}", node.display()))?;
        let Some((_, part)) = gpt.find_by_name(name) else {
            return Ok(None);
        };
        let (start, len) = (part.start_bytes(), part.size_bytes());
        let region = Region::new(dev, start, len)
            .with_context(|| format!("the {name} partition of {}", node.display()))?;
        Ok(Some(region))
    }
}

/// Parses a sysfs `dev` file (`254:0`).
pub fn parse_dev_numbers(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Reads `/sys/class/block/<name>` into a [`BlockDev`], making `/dev/<name>` if missing.
fn block_dev(sys_block: &Path, name: &str) -> Result<BlockDev> {
    let dev_file = sys_block.join(name).join("dev");
    let text =
        fs::read_to_string(&dev_file).with_context(|| format!("reading {}", dev_file.display()))?;
    let (major, minor) = parse_dev_numbers(&text)
        .with_context(|| format!("{}: unexpected content {text:?}", dev_file.display()))?;
    let node = Path::new("/dev").join(name);
    ensure_node(&node, major, minor)?;
    Ok(BlockDev {
        name: name.to_string(),
        major,
        minor,
        node,
    })
}

/// Makes a block device node unless something is already there.
pub fn ensure_node(node: &Path, major: u32, minor: u32) -> Result<()> {
    if node.symlink_metadata().is_ok() {
        return Ok(());
    }
    if let Some(parent) = node.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match sys::mknod(node, true, major, minor, 0o600) {
        Ok(()) => Ok(()),
        // devtmpfs made it in the meantime.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("mknod {} b {major} {minor}", node.display())),
    }
}

/// Whole disks (no `partition` file) in sysfs, by name, skipping virtual devices.
fn whole_disks(sys_block: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(sys_block)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.retain(|n| {
        !SKIP_PREFIXES.iter().any(|p| n.starts_with(p))
            && !sys_block.join(n).join("partition").exists()
    });
    names.sort();
    names
}

/// The disk's partitions in sysfs: GPT number → kernel name.
fn partitions_of(sys_block: &Path, disk: &str) -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir(sys_block.join(disk)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let number = fs::read_to_string(e.path().join("partition")).ok()?;
            Some((
                number.trim().parse().ok()?,
                e.file_name().to_string_lossy().into_owned(),
            ))
        })
        .collect()
}

/// The size of a block device from sysfs (`size` counts 512-byte sectors whatever the
/// device's logical block size).
fn size_bytes(sys_block: &Path, name: &str) -> Option<u64> {
    let text = fs::read_to_string(sys_block.join(name).join("size")).ok()?;
    text.trim().parse::<u64>().ok()?.checked_mul(512)
}

/// Looks once for the boot disk with the `usr_name` slot. `Ok(None)` means not (yet) found.
pub fn find_boot_disk(sys_block: &Path, usr_name: &str) -> Result<Option<BootDisk>> {
    for name in whole_disks(sys_block) {
        let Some(disk_bytes) = size_bytes(sys_block, &name).filter(|&b| b > 0) else {
            continue;
        };
        let disk = block_dev(sys_block, &name)?;
        let gpt = match File::open(&disk.node)
            .map_err(anyhow::Error::from)
            .and_then(|mut f| Ok(Gpt::read(&mut f, disk_bytes)?))
        {
            Ok(gpt) => gpt,
            Err(e) => {
                log::debug(&format!("{}: no usable GPT: {e:#}", disk.node.display()));
                continue;
            }
        };
        if !is_kiln_disk(&gpt) {
            log::debug(&format!(
                "{}: GPT without USR-A, USR-B and ROOT",
                disk.node.display()
            ));
            continue;
        }
        let (Some((usr_number, _)), Some((root_number, _))) =
            (gpt.find_by_name(usr_name), gpt.find_by_name(ROOT_NAME))
        else {
            continue;
        };
        let parts = partitions_of(sys_block, &name);
        let part_name = |n: u32| {
            parts
                .iter()
                .find(|(num, _)| *num == n)
                .map(|(_, s)| s.clone())
        };
        let (Some(usr_part), Some(root_part)) = (part_name(usr_number), part_name(root_number))
        else {
            log::debug(&format!(
                "{}: partitions not in sysfs yet",
                disk.node.display()
            ));
            continue;
        };
        let usr = block_dev(sys_block, &usr_part)?;
        let root = block_dev(sys_block, &root_part)?;
        return Ok(Some(BootDisk {
            disk,
            disk_bytes,
            usr,
            root,
            root_number,
        }));
    }
    Ok(None)
}

fn is_kiln_disk(gpt: &Gpt) -> bool {
    gpt.find_by_name(ROOT_NAME).is_some() && USR_NAMES.iter().all(|n| gpt.find_by_name(n).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers_parse() {
        assert_eq!(parse_dev_numbers("254:2\n"), Some((254, 2)));
        assert_eq!(parse_dev_numbers("8"), None);
        assert_eq!(parse_dev_numbers("a:b"), None);
    }

    #[test]
    fn sysfs_disks_and_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let sb = dir.path();
        for (name, part) in [
            ("vda", None),
            ("vda1", Some("1")),
            ("vda5", Some("5")),
            ("loop0", None),
            ("dm-0", None),
            ("nvme0n1", None),
        ] {
            let d = sb.join(name);
            fs::create_dir_all(&d).unwrap();
            if let Some(n) = part {
                fs::write(d.join("partition"), format!("{n}\n")).unwrap();
                // In sysfs the partitions also appear below their disk.
                fs::create_dir_all(sb.join("vda").join(name)).unwrap();
                fs::write(
                    sb.join("vda").join(name).join("partition"),
                    format!("{n}\n"),
                )
                .unwrap();
            }
        }
        fs::write(sb.join("vda/size"), "2097152\n").unwrap();
        assert_eq!(whole_disks(sb), ["nvme0n1", "vda"]);
        let mut parts = partitions_of(sb, "vda");
        parts.sort();
        assert_eq!(parts, [(1, "vda1".to_string()), (5, "vda5".to_string())]);
        assert_eq!(size_bytes(sb, "vda"), Some(1 << 30));
    }
}
