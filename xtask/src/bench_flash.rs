//! `cargo xtask bench flash`: `flash` against `dd bs=4M oflag=direct` writing the same image to
//! the same kind of target in one run: a loop device with direct I/O (no host page cache in
//! between, like a real disk) over a fresh sparse file each time. Printed, never asserted.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::flash::{self, human, FlashConfig};
use crate::host;

#[derive(clap::Args)]
pub struct FlashBenchConfig {
    /// The image, with its build's SHA256SUMS beside it (default: build/<version>/disk.raw).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Where the target's backing file goes (removed after each run).
    #[arg(long, default_value = "build/bench")]
    pub dir: PathBuf,
}

/// How much larger than the image the target is, so the backup GPT moves as on a real disk.
const EXTRA: u64 = 1 << 30;

pub fn run(cfg: &FlashBenchConfig) -> Result<()> {
    if !host::is_root() {
        bail!("the flash benchmark writes loop devices: run it as root");
    }
    let root = host::workspace_root();
    let image = match &cfg.image {
        Some(p) => p.clone(),
        None => {
            let def = kiln_image::definition::Definition::load(&root.join("image/image.toml"))?;
            root.join("build")
                .join(def.image.version)
                .join(crate::release::DISK_FILE)
        }
    };
    let dir = root.join(&cfg.dir);
    std::fs::create_dir_all(&dir)?;
    let size = std::fs::metadata(&image)
        .with_context(|| format!("{}: build it first", image.display()))?
        .len();
    // Both read the image from the page cache.
    std::io::copy(&mut File::open(&image)?, &mut std::io::sink())?;

    let dd = on_fresh_loop(&dir, size + EXTRA, |dev| {
        let start = Instant::now();
        host::run(
            Command::new("dd")
                .arg(format!("if={}", image.display()))
                .arg(format!("of={}", dev.display()))
                .args(["bs=4M", "oflag=direct", "conv=fsync", "status=none"]),
        )?;
        Ok(start.elapsed())
    })?;
    let mut phases = None;
    let ours = on_fresh_loop(&dir, size + EXTRA, |dev| {
        let start = Instant::now();
        let plan = flash::prepare(&FlashConfig {
            device: Some(dev.to_owned()),
            image: Some(image.clone()),
            yes: true,
            ..FlashConfig::default()
        })?;
        let checks = start.elapsed();
        let outcome = flash::execute(&plan)?;
        phases = Some((checks, outcome.write, outcome.verify));
        Ok(start.elapsed())
    })?;
    let (checks, write, verify) = phases.context("flash did not run")?;
    let mb = |d: Duration| size as f64 / 1e6 / d.as_secs_f64();
    println!(
        "flash, {} image to a {} loop device (direct I/O): dd bs=4M oflag=direct conv=fsync {:.1} s ({:.0} MB/s); \
         flash {:.1} s in all ({:.0} MB/s: checks {:.1} s, write {:.1} s, read-back verify {:.1} s): \
         speed ratio flash/dd {:.2} (target >= 0.9); write alone {:.2}",
        human(size),
        human(size + EXTRA),
        dd.as_secs_f64(),
        mb(dd),
        ours.as_secs_f64(),
        mb(ours),
        checks.as_secs_f64(),
        write.as_secs_f64(),
        verify.as_secs_f64(),
        dd.as_secs_f64() / ours.as_secs_f64(),
        dd.as_secs_f64() / write.as_secs_f64()
    );
    Ok(())
}

/// Runs `f` on a loop device (direct I/O) over a new sparse file of `size`, then detaches it
/// and removes the file.
fn on_fresh_loop(
    dir: &Path,
    size: u64,
    f: impl FnOnce(&Path) -> Result<Duration>,
) -> Result<Duration> {
    let backing = dir.join("flash-target.img");
    let _ = std::fs::remove_file(&backing);
    File::create(&backing)?.set_len(size)?;
    let out = Command::new("losetup")
        .args(["-f", "--show", "--direct-io=on"])
        .arg(&backing)
        .output()
        .context("starting losetup")?;
    if !out.status.success() {
        bail!("losetup failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let result = f(&dev);
    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    let _ = std::fs::remove_file(&backing);
    result
}
