//! Helpers for the flash scenario: the image with its checksums, a loop device that detaches
//! itself, running `cargo xtask flash`, and checking a flashed disk's partition table.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};
use kiln_contract::release::{DISK_FILE, KEY_FILE, SUMS_FILE};
use kiln_image::gpt::{Gpt, TableSource};

use crate::{check, run};

/// The image for `cargo xtask flash --image`, and the arguments that tell flash to trust it.
pub struct FlashImage {
    pub path: PathBuf,
    trust: Vec<OsString>,
}

impl FlashImage {
    /// `--image PATH` and the trust arguments.
    pub fn args(&self) -> Vec<&OsStr> {
        let mut args = vec![OsStr::new("--image"), self.path.as_os_str()];
        args.extend(self.trust.iter().map(OsString::as_os_str));
        args
    }
}

/// The image as `disk.raw` with a `SHA256SUMS` flash accepts: the build's own directory when it
/// has one, with `--public-key` naming the build's key (this run built the image, so it trusts
/// that key, as a user names the key they build with); otherwise `work/image/` with a link to
/// the disk and sums made by `sha256sum` (the reference tool), unsigned, so `--allow-unsigned`.
pub fn image_with_sums(disk: &Path, work: &Path) -> Result<FlashImage> {
    if disk.with_file_name(SUMS_FILE).exists() {
        let key = disk.with_file_name(KEY_FILE);
        let trust = if key.exists() {
            vec!["--public-key".into(), key.into_os_string()]
        } else {
            vec!["--allow-unsigned".into()]
        };
        return Ok(FlashImage {
            path: disk.to_owned(),
            trust,
        });
    }
    let dir = work.join("image");
    std::fs::create_dir_all(&dir)?;
    let link = dir.join(DISK_FILE);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(disk, &link)?;
    let sums = check(Command::new("sha256sum").arg(DISK_FILE).current_dir(&dir))?;
    std::fs::write(dir.join(SUMS_FILE), sums)?;
    Ok(FlashImage {
        path: link,
        trust: vec!["--allow-unsigned".into()],
    })
}

/// A loop device over a file, detached on drop.
pub struct LoopDevice {
    pub path: PathBuf,
}

impl LoopDevice {
    pub fn attach(file: &Path) -> Result<LoopDevice> {
        let out = check(Command::new("losetup").args(["-f", "--show"]).arg(file))?;
        Ok(LoopDevice {
            path: PathBuf::from(out.trim()),
        })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// Runs `cargo xtask flash <args>` from the workspace (the same cargo and target dir as the
/// test), returning its output whatever the exit status.
pub fn xtask_flash(args: &[&std::ffi::OsStr]) -> Result<Output> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace")?;
    run(kiln_qemu::cargo_command()
        .args(["run", "--quiet", "--package", "xtask", "--", "flash"])
        .args(args)
        .current_dir(root))
}

/// Checks a flashed disk image file: `sgdisk -v` finds no problem, the primary table is read,
/// and the backup header sits in the file's last sector. Returns the table.
pub fn check_flashed_table(file: &Path) -> Result<Gpt> {
    let out = check(Command::new("sgdisk").arg("-v").arg(file))?;
    if !out.contains("No problems found") {
        bail!("sgdisk -v {}: {out}", file.display());
    }
    let mut f = File::open(file)?;
    let len = f.metadata()?.len();
    let gpt = Gpt::read(&mut f, len)?;
    if gpt.source != TableSource::Primary || gpt.disk_sectors != len / 512 {
        bail!(
            "{}: table from {:?} for {} sectors, the file has {}",
            file.display(),
            gpt.source,
            gpt.disk_sectors,
            len / 512
        );
    }
    let mut last = [0u8; 8];
    f.read_exact_at(&mut last, len - 512)?;
    if &last != b"EFI PART" {
        bail!(
            "{}: no backup GPT header in the last sector",
            file.display()
        );
    }
    Ok(gpt)
}
