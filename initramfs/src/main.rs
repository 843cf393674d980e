//! The early-boot init of the initramfs (PID 1): mounts the API filesystems, loads the kernel
//! modules the machine needs, finds the Kiln disk, opens the slot's `/usr` through dm-verity
//! with the root hash from the kernel command line, mounts ROOT and `/usr`, prepares ROOT on
//! first boot, and hands over to systemd. Any failure ends in an emergency shell on the
//! console, never in a kernel panic; on a slot's trial boot, in a reboot instead (see `trial`).
//!
//! Built static, so that the initramfs needs no libraries:
//! `RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p kiln-initramfs
//! --target x86_64-unknown-linux-gnu` (binary `init`).

mod cloudconfig;
mod cmdline;
mod disk;
mod dm;
mod ext4;
mod firstboot;
mod kmsg;
mod log;
mod modload;
mod switchroot;
mod sys;
mod trial;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use cmdline::{Cmdline, Slot};
use disk::BootDisk;

/// How long to wait for the boot disk to appear (USB disks and slow controllers take seconds).
const DISK_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);
/// How long a failed trial boot shows its failure before it reboots.
const TRIAL_REBOOT_DELAY: Duration = Duration::from_secs(10);
/// Where ROOT is mounted before switch_root.
const SYSROOT: &str = "/sysroot";
/// The device-mapper name of the verified `/usr`.
const USR_DM_NAME: &str = "usr";

fn main() {
    if std::process::id() != 1 {
        eprintln!("kiln init: this is the initramfs init and runs only as PID 1");
        std::process::exit(2);
    }
    sys::umask(0o022);
    let failure = match std::panic::catch_unwind(boot) {
        Ok(Err(e)) => format!("{e:#}"),
        Err(panic) => format!(
            "the init panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        ),
        Ok(Ok(never)) => match never {},
    };
    emergency(&failure)
}

/// The whole boot; returns only on failure.
fn boot() -> Result<Infallible> {
    mount_api_filesystems()?;
    open_console();
    let text = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let cmdline = Cmdline::parse(&text);
    log::set_debug(cmdline.debug);
    log::debug(&format!("kernel command line: {}", text.trim()));
    if cmdline.emergency {
        bail!("kiln.emergency is on the kernel command line");
    }
    if let Some(problem) = cmdline.problems.first() {
        bail!("bad kernel command line: {problem}");
    }
    let slot = cmdline
        .slot
        .context("no kiln.slot=a|b on the kernel command line: which /usr to boot is unknown")?;
    let usrhash = cmdline
        .usrhash
        .clone()
        .context("no kiln.usrhash= on the kernel command line: /usr cannot be verified")?;

    let mut loader = modload::Loader::for_running_kernel(Path::new("/"))?;
    loader.load_fixed_list(Path::new("/"));
    let disk = wait_for_disk(&mut loader, slot)?;
    log::say(&format!(
        "boot disk {} (slot {slot}: {}, ROOT: {})",
        disk.disk.node.display(),
        disk.usr.node.display(),
        disk.root.node.display()
    ));

    let usr_node = open_verity(&disk, slot, &usrhash)?;
    let sysroot = Path::new(SYSROOT);
    mount_root(&disk, sysroot)?;
    mount_usr(&usr_node, &disk, slot, &usrhash, sysroot)?;
    if firstboot::is_first_boot(sysroot) {
        firstboot::run(sysroot, &disk).context("first boot")?;
    }
    firstboot::ensure_top_dirs(sysroot).context("creating the top-level directories of ROOT")?;
    cloudconfig::install_debug_keys(sysroot, &disk);
    log::say(&format!(
        "switching to ROOT, starting {}",
        cmdline.init_program()
    ));
    switchroot::switch_root(sysroot, cmdline.init_program()).context("switch_root")
}

fn mount_api_filesystems() -> Result<()> {
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    let mounts: [(&str, &str, &str, libc::c_ulong, &str); 4] = [
        ("proc", "/proc", "proc", nosuid_nodev | libc::MS_NOEXEC, ""),
        ("sysfs", "/sys", "sysfs", nosuid_nodev | libc::MS_NOEXEC, ""),
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
        ("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755"),
    ];
    for (source, target, fstype, flags, data) in mounts {
        std::fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
        match sys::mount(source, Path::new(target), fstype, flags, data) {
            Ok(()) => {}
            // Already mounted (by the kernel's devtmpfs automount, say).
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e).with_context(|| format!("mounting {fstype} on {target}")),
        }
    }
    Ok(())
}

/// Points stdin, stdout and stderr at /dev/console. Without a console the init still boots.
fn open_console() {
    use std::os::fd::IntoRawFd;
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        Ok(f) => {
            let fd = f.into_raw_fd();
            let _ = sys::dup_to_stdio(fd);
            if fd > 2 {
                // SAFETY: closing our own duplicate descriptor.
                unsafe { libc::close(fd) };
            }
        }
        Err(e) => log::say(&format!("warning: opening /dev/console: {e}")),
    }
}

/// Loads device drivers until the Kiln disk appears, or gives up after [`DISK_TIMEOUT`].
fn wait_for_disk(loader: &mut modload::Loader, slot: Slot) -> Result<BootDisk> {
    let start = Instant::now();
    let sys_block = Path::new("/sys/class/block");
    loop {
        // New devices (a controller's disks, a USB hub's storage) appear while we wait.
        loader.load_for_devices(Path::new("/sys/devices"));
        if let Some(disk) = disk::find_boot_disk(sys_block, slot.partition_name())? {
            return Ok(disk);
        }
        if start.elapsed() > DISK_TIMEOUT {
            let seen: Vec<String> = std::fs::read_dir(sys_block)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            bail!(
                "no disk with a GPT holding {}, {} and {} after {} s (block devices: {}); \
                 is the disk's controller driver in the initramfs?",
                disk::USR_NAMES[0],
                disk::USR_NAMES[1],
                disk::ROOT_NAME,
                DISK_TIMEOUT.as_secs(),
                if seen.is_empty() {
                    "none".to_string()
                } else {
                    seen.join(" ")
                }
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Sets up `/dev/mapper/usr` over the slot's partition and returns its node.
fn open_verity(disk: &BootDisk, slot: Slot, usrhash: &str) -> Result<PathBuf> {
    let part = &disk.usr;
    let what = part.node.display().to_string();
    let mut dev = std::fs::File::open(&part.node).with_context(|| format!("opening {what}"))?;
    let fs = ext4::Superblock::read(&mut dev, &what)
        .with_context(|| format!("slot {slot} ({what}) holds no /usr filesystem"))?;
    let hash_offset = fs.fs_bytes();
    if hash_offset % 4096 != 0 {
        bail!("{what}: the filesystem ends at byte {hash_offset}, not on a 4096-byte boundary where the verity area must start");
    }
    let sb = kiln_image::verity::read_superblock(&mut dev, hash_offset).with_context(|| {
        format!("{what}: reading the dm-verity superblock after the filesystem")
    })?;
    if sb.data_blocks * 4096 > hash_offset {
        bail!("{what}: the verity superblock covers {} blocks, more than the filesystem's {hash_offset} bytes", sb.data_blocks);
    }
    let (sectors, params) = kiln_image::verity::dm_target(
        &part.numbers(),
        &part.numbers(),
        sb.data_blocks,
        hash_offset,
        usrhash,
        &sb.salt,
    );
    let target = dm::VerityTarget { sectors, params };
    log::debug(&format!("verity table: {}", target.params));
    let (major, minor) = dm::create_verity(USR_DM_NAME, &target)
        .with_context(|| format!("setting up dm-verity on {what}"))?;
    let node = Path::new("/dev/mapper").join(USR_DM_NAME);
    disk::ensure_node(&node, major, minor)?;
    Ok(node)
}

fn mount_root(disk: &BootDisk, sysroot: &Path) -> Result<()> {
    std::fs::create_dir_all(sysroot).with_context(|| format!("creating {}", sysroot.display()))?;
    let node = disk.root.node.to_string_lossy();
    sys::mount(&node, sysroot, "ext4", 0, "")
        .with_context(|| format!("mounting ROOT ({node}) on {} as ext4", sysroot.display()))
}

fn mount_usr(
    node: &Path,
    disk: &BootDisk,
    slot: Slot,
    usrhash: &str,
    sysroot: &Path,
) -> Result<()> {
    let target = sysroot.join("usr");
    if target.symlink_metadata().is_err() {
        std::fs::create_dir(&target).with_context(|| format!("creating {}", target.display()))?;
    }
    let source = node.to_string_lossy();
    let flags = libc::MS_RDONLY | libc::MS_NODEV;
    match sys::mount(&source, &target, "ext4", flags, "") {
        Ok(()) => Ok(()),
        Err(e) => {
            // The kernel logs "device-mapper: verity: 253:2: data block 0 is corrupted".
            let verity: Vec<String> = kmsg::lines_containing("verity", 50)
                .into_iter()
                .filter(|l| l.contains("corrupt"))
                .collect();
            let verity = verity[verity.len().saturating_sub(5)..].to_vec();
            if verity.is_empty() {
                return Err(e).with_context(|| {
                    format!("mounting {source} on {} read-only", target.display())
                });
            }
            Err(anyhow!(
                "dm-verity: /usr data does not match kiln.usrhash={usrhash}: slot {slot} ({}) is corrupt \
                 or was written for another root hash; mounting it failed with: {e}; the kernel said:\n  {}",
                disk.usr.node.display(),
                verity.join("\n  ")
            ))
        }
    }
}

/// Reports the failure; reboots when the slot is on trial, else runs the emergency shell for
/// ever (PID 1 must not exit).
fn emergency(failure: &str) -> ! {
    log::say("EMERGENCY: the boot stopped.");
    for line in failure.lines() {
        log::say(&format!("  {line}"));
    }
    reboot_if_on_trial();
    let shell = Path::new("/bin/sh");
    loop {
        if shell.exists() {
            log::say(
                "starting the emergency shell /bin/sh on the console (exit it to get another)",
            );
            run_shell(shell);
        } else {
            log::say("no /bin/sh in the initramfs: nothing more to do; power off the machine");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Reboots when the failed slot's boot entry still counts tries, so that the boot loader counts
/// this failure and, after the last try, starts the other slot. Returns, saying why, otherwise.
fn reboot_if_on_trial() {
    let Ok(text) = std::fs::read_to_string("/proc/cmdline") else {
        return;
    };
    let cmdline = Cmdline::parse(&text);
    if cmdline.emergency {
        return;
    }
    let Some(slot) = cmdline.slot else {
        return;
    };
    match trial::slot_entry(slot) {
        Ok(trial::Entry::OnTrial(entry)) => {
            log::say(&format!(
                "slot {slot} is on trial (boot entry {entry}): rebooting in {} s, so that the boot \
                 loader counts this failed try and, after the last, starts the other slot",
                TRIAL_REBOOT_DELAY.as_secs()
            ));
            std::thread::sleep(TRIAL_REBOOT_DELAY);
            sys::sync();
            let e = sys::reboot();
            log::say(&format!("rebooting failed: {e}"));
        }
        Ok(trial::Entry::Settled(why)) => log::say(&format!("not rebooting: {why}")),
        Err(e) => log::say(&format!(
            "not rebooting: whether slot {slot} is on trial cannot be told: {e:#}"
        )),
    }
}

fn run_shell(shell: &Path) {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(shell);
    cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("PS1", "kiln-emergency# ");
    // SAFETY: setsid and ioctl are async-signal-safe; the console becoming the controlling
    // terminal gives the shell job control (failure is harmless).
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 1);
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(mut child) => {
            let _ = child.wait();
        }
        Err(e) => log::say(&format!("starting {}: {e}", shell.display())),
    }
    // Reap whatever the shell left behind: PID 1 inherits orphans.
    // SAFETY: waitpid with WNOHANG on any child.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}
