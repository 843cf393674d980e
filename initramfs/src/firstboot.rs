//! First boot on a fresh disk: grow ROOT to the end of the disk (partition table, then the
//! kernel's view, then the mounted filesystem), lay down `/etc` from the defaults shipped in
//! `/usr`, create the top-level directories, and leave a marker so that this runs once.
//! Every step can run again safely, so a first boot cut short is finished by the next boot.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use kiln_image::gpt::Gpt;

use kiln_contract::paths::under;

use crate::disk::BootDisk;
use crate::ext4;
use crate::log;
use crate::sys;

/// Written last on first boot.
pub const MARKER: &str = kiln_contract::paths::FIRST_BOOT_DONE;
/// The default `/etc` inside `/usr`.
pub const DEFAULT_ETC: &str = kiln_contract::paths::FACTORY_ETC;

/// Top-level directories of ROOT and their modes, made on every boot when missing (the mount
/// points among them are needed before switch_root).
pub const TOP_DIRS: &[(&str, u32)] = &[
    ("etc", 0o755),
    ("var", 0o755),
    ("var/lib", 0o755),
    (under(kiln_contract::paths::STATE_DIR), 0o755),
    ("home", 0o755),
    ("root", 0o700),
    ("tmp", 0o1777),
    ("usr", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("run", 0o755),
];

/// Merged `/usr`: ROOT's top-level links into `/usr` (the ELF interpreter is found through
/// `/lib64`), made on every boot when missing.
pub const TOP_LINKS: &[(&str, &str)] = &[
    ("bin", "usr/bin"),
    ("sbin", "usr/sbin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
];

pub fn is_first_boot(sysroot: &Path) -> bool {
    sysroot.join(under(MARKER)).symlink_metadata().is_err()
}

/// Creates the [`TOP_DIRS`] that are missing, with their modes (existing ones are left alone:
/// the administrator may have changed them).
pub fn ensure_top_dirs(sysroot: &Path) -> Result<()> {
    for (dir, mode) in TOP_DIRS {
        let path = sysroot.join(dir);
        if path.symlink_metadata().is_ok() {
            continue;
        }
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    for (link, target) in TOP_LINKS {
        let path = sysroot.join(link);
        if path.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(target, &path)
                .with_context(|| format!("linking {} to {target}", path.display()))?;
        }
    }
    Ok(())
}

/// The first-boot steps, ROOT mounted at `sysroot` and `/usr` at `sysroot/usr`.
pub fn run(sysroot: &Path, disk: &BootDisk) -> Result<()> {
    log::say("first boot: preparing ROOT");
    // A disk that cannot grow still boots: say so loudly and go on.
    if let Err(e) = grow_root(sysroot, disk) {
        log::say(&format!(
            "warning: growing ROOT failed, it keeps its size: {e:#}"
        ));
    }
    ensure_top_dirs(sysroot)?;
    let copied = copy_defaults(&sysroot.join(under(DEFAULT_ETC)), &sysroot.join("etc"))
        .context("laying down /etc from /usr/share/kiln/etc")?;
    log::say(&format!("first boot: {copied} entries of /etc laid down"));
    write_if_missing(&sysroot.join("etc/machine-id"), b"", 0o444)?;
    crate::cloudconfig::apply_first_boot(sysroot, disk);
    let marker = sysroot.join(under(MARKER));
    write_if_missing(&marker, b"", 0o644)?;
    sys::sync();
    Ok(())
}

/// Grows ROOT's partition to the end of the disk and the mounted filesystem to fill it.
fn grow_root(sysroot: &Path, disk: &BootDisk) -> Result<()> {
    let node = &disk.disk.node;
    let mut dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(node)
        .with_context(|| format!("opening {} for writing", node.display()))?;
    let mut gpt = Gpt::read(&mut dev, disk.disk_bytes)
        .with_context(|| format!("reading the GPT of {}", node.display()))?;
    let number = disk.root_number;
    let old = gpt.get(number).map(|p| p.size_bytes()).unwrap_or(0);
    gpt.resize_disk(disk.disk_bytes)
        .with_context(|| format!("moving the backup GPT to the end of {}", node.display()))?;
    let new = gpt
        .grow_partition_to_end(number)
        .with_context(|| format!("growing partition {number} of {}", node.display()))?;
    let start = gpt.get(number).map(|p| p.start_bytes()).unwrap_or(0);
    if new > old {
        gpt.write(&mut dev)
            .with_context(|| format!("writing the GPT of {}", node.display()))?;
        dev.sync_all()
            .with_context(|| format!("flushing {}", node.display()))?;
        resize_kernel_partition(&dev, number, start, new).with_context(|| {
            format!(
                "telling the kernel partition {number} of {} grew",
                node.display()
            )
        })?;
        log::say(&format!(
            "first boot: ROOT partition grown from {old} to {new} bytes"
        ));
    }
    resize_filesystem(sysroot, disk, new)
}

/// `struct blkpg_partition` from `include/uapi/linux/blkpg.h`.
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: libc::c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg`.
#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// `_IO(0x12, 105)`.
const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;

/// BLKPG_RESIZE_PARTITION: unlike BLKRRPART it works while the partition is mounted.
fn resize_kernel_partition(disk: &File, number: u32, start: u64, length: u64) -> io::Result<()> {
    let mut part = BlkpgPartition {
        start: start as i64,
        length: length as i64,
        pno: number as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: &mut part as *mut BlkpgPartition as *mut libc::c_void,
    };
    // SAFETY: arg points to a blkpg_ioctl_arg whose data points to a live blkpg_partition.
    unsafe { sys::ioctl_ptr(disk.as_raw_fd(), BLKPG, &mut arg) }
}

/// `_IOW('f', 16, __u64)`.
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

/// Grows the mounted ext4 at `sysroot` to `partition_bytes` (online resize in the kernel).
fn resize_filesystem(sysroot: &Path, disk: &BootDisk, partition_bytes: u64) -> Result<()> {
    let mut dev = File::open(&disk.root.node)
        .with_context(|| format!("opening {}", disk.root.node.display()))?;
    let sb = ext4::Superblock::read(&mut dev, &disk.root.node.display().to_string())?;
    let mut blocks = partition_bytes / sb.block_size;
    if blocks <= sb.blocks_count {
        return Ok(());
    }
    let dir = File::open(sysroot).with_context(|| format!("opening {}", sysroot.display()))?;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 (the new block count).
    unsafe { sys::ioctl_ptr(dir.as_raw_fd(), EXT4_IOC_RESIZE_FS, &mut blocks) }.with_context(
        || {
            format!(
                "EXT4_IOC_RESIZE_FS on {} from {} to {blocks} blocks",
                disk.root.node.display(),
                sb.blocks_count
            )
        },
    )?;
    log::say(&format!(
        "first boot: ROOT filesystem grown from {} to {blocks} blocks of {}",
        sb.blocks_count, sb.block_size
    ));
    Ok(())
}

fn write_if_missing(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    if path.symlink_metadata().is_ok() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Copies the tree `src` into `dst`, keeping modes, owners and symlinks, never replacing what
/// exists in `dst` (an administrator's change wins over a default). Returns how many entries
/// were created. A missing `src` copies nothing.
pub fn copy_defaults(src: &Path, dst: &Path) -> Result<usize> {
    let Ok(meta) = src.symlink_metadata() else {
        log::say(&format!(
            "warning: {} is missing: /etc gets no defaults",
            src.display()
        ));
        return Ok(0);
    };
    copy_entry(src, dst, &meta)
}

fn copy_entry(src: &Path, dst: &Path, meta: &fs::Metadata) -> Result<usize> {
    let ft = meta.file_type();
    let exists = dst.symlink_metadata().ok();
    let mut created = 0;
    if ft.is_dir() {
        match &exists {
            Some(m) if !m.is_dir() => return Ok(0),
            Some(_) => {}
            None => {
                fs::create_dir(dst).with_context(|| format!("creating {}", dst.display()))?;
                set_owner_and_mode(dst, meta)?;
                created += 1;
            }
        }
        let mut entries: Vec<_> = fs::read_dir(src)
            .with_context(|| format!("reading {}", src.display()))?
            .collect::<io::Result<_>>()
            .with_context(|| format!("reading {}", src.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let m = e
                .path()
                .symlink_metadata()
                .with_context(|| format!("stat {}", e.path().display()))?;
            created += copy_entry(&e.path(), &dst.join(e.file_name()), &m)?;
        }
        return Ok(created);
    }
    if exists.is_some() {
        return Ok(0);
    }
    if ft.is_symlink() {
        let target =
            fs::read_link(src).with_context(|| format!("reading link {}", src.display()))?;
        std::os::unix::fs::symlink(&target, dst)
            .with_context(|| format!("creating link {}", dst.display()))?;
        sys::lchown(dst, meta.uid(), meta.gid())
            .with_context(|| format!("chown {}", dst.display()))?;
    } else if ft.is_file() {
        fs::copy(src, dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        set_owner_and_mode(dst, meta)?;
    } else {
        log::debug(&format!(
            "{}: not a file, directory or link; skipped",
            src.display()
        ));
        return Ok(0);
    }
    Ok(1)
}

/// Owner first: chown clears the setuid and setgid bits, so the mode must come after.
fn set_owner_and_mode(path: &Path, meta: &fs::Metadata) -> Result<()> {
    sys::lchown(path, meta.uid(), meta.gid())
        .with_context(|| format!("chown {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_struct_layouts_match_the_kernel() {
        // sizeof(struct blkpg_partition) = 152, sizeof(struct blkpg_ioctl_arg) = 24 on x86-64.
        assert_eq!(std::mem::size_of::<BlkpgPartition>(), 152);
        assert_eq!(std::mem::size_of::<BlkpgIoctlArg>(), 24);
    }

    #[test]
    fn defaults_are_copied_without_overwriting() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("usr/share/kiln/etc");
        let dst = dir.path().join("etc");
        fs::create_dir_all(src.join("ssh")).unwrap();
        fs::write(src.join("hostname"), "default\n").unwrap();
        fs::write(src.join("shadow"), "root:*:1::::::\n").unwrap();
        fs::set_permissions(src.join("shadow"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(src.join("ssh/sshd_config"), "PermitRootLogin no\n").unwrap();
        std::os::unix::fs::symlink("../proc/self/mounts", src.join("mtab")).unwrap();
        fs::create_dir_all(&dst).unwrap();
        fs::write(dst.join("hostname"), "mine\n").unwrap();

        let created = copy_defaults(&src, &dst).unwrap();
        assert_eq!(created, 4, "shadow, ssh, ssh/sshd_config, mtab");
        assert_eq!(fs::read_to_string(dst.join("hostname")).unwrap(), "mine\n");
        assert_eq!(
            fs::metadata(dst.join("shadow")).unwrap().mode() & 0o7777,
            0o640
        );
        assert_eq!(
            fs::read_link(dst.join("mtab")).unwrap(),
            Path::new("../proc/self/mounts")
        );
        assert_eq!(
            fs::read_to_string(dst.join("ssh/sshd_config")).unwrap(),
            "PermitRootLogin no\n"
        );
        // Running again changes nothing.
        assert_eq!(copy_defaults(&src, &dst).unwrap(), 0);
        assert_eq!(copy_defaults(&dir.path().join("nope"), &dst).unwrap(), 0);
    }

    #[test]
    fn top_dirs_get_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        sys::umask(0o022);
        ensure_top_dirs(dir.path()).unwrap();
        let mode = |d: &str| fs::metadata(dir.path().join(d)).unwrap().mode() & 0o7777;
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("root"), 0o700);
        assert_eq!(mode("var/lib/kiln"), 0o755);
        assert_eq!(
            fs::read_link(dir.path().join("lib64")).unwrap(),
            Path::new("usr/lib64")
        );
        // Every boot: present links and dirs are left as they are.
        ensure_top_dirs(dir.path()).unwrap();
        assert!(is_first_boot(dir.path()));
        write_if_missing(&dir.path().join(under(MARKER)), b"", 0o644).unwrap();
        assert!(!is_first_boot(dir.path()));
    }
}
