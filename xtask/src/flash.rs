//! `cargo xtask flash`: puts a built image on a real disk (or into a disk image file) safely,
//! with its cloud-config on the OEM partition. Every check runs before the first write
//! (`prepare`), the user confirms, then `write` does the writing in its safe order.
//!
//! The image check: `SHA256SUMS.sig` must verify with a key the user trusts (see [`trust`]:
//! named with `--public-key`, else the keys this user and checkout build with; never by itself
//! the key that came beside the image), then the image must match its line in `SHA256SUMS`. An
//! image without a signature is refused unless `--allow-unsigned`. A `disk.raw` is checked through its chunk list (`disk.raw.chunks`, itself
//! a line of `SHA256SUMS`): the SHA-256 of every 16 MiB chunk, so holes in the file count as
//! zeros without being read, all-zero chunks are compared with the hash of zeros, and only
//! the chunks with data are hashed, on two threads. That is as strong as one SHA-256 of the
//! whole file (the list is signed and fixes the size and every chunk), and took the checks of
//! the 4.8 GiB image from 5.7 s to well under a second (see [`crate::release::chunks`]). A `disk.raw` without
//! its list (an older build, or the list not copied along) and a `disk.raw.zst` are hashed
//! whole, as before. The chunk hashes (or, without a list, per-chunk hashes taken in the same
//! pass) then check every block again as it is written and as it is read back.

mod image;
mod target;
mod trust;
mod write;

#[cfg(test)]
mod tests;
// The release formats' tests use its scratch directories too.
#[cfg(test)]
pub(crate) mod testutil;

use std::io::{BufRead, IsTerminal};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub use image::Image;
pub use target::{human, Device};
pub use trust::{KeySources, TrustedKeys};
pub use write::{Outcome, OEM_CONFIG};

use crate::host;
use crate::release;
use kiln_contract::hex;
use write::{OemConfig, Sink};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct FlashConfig {
    /// The whole disk to write, e.g. /dev/sdb. Everything on it is lost.
    #[arg(long, required_unless_present = "to_file", conflicts_with = "to_file")]
    pub device: Option<PathBuf>,
    /// Write a disk image file instead of a device (created; an existing larger file keeps
    /// its size, like a larger disk).
    #[arg(long)]
    pub to_file: Option<PathBuf>,
    /// The image: a build's disk.raw or disk.raw.zst, with the build's SHA256SUMS beside it
    /// (default: build/<image.toml's version>/disk.raw).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// A cloud-config to put on the OEM partition as cloud-config.yml, validated first.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A public key you trust to have signed the image (SPKI PEM); repeat for several. Default:
    /// the keys you build with: ~/.config/kiln/update-key.pub.pem (`cargo xtask keygen`), the
    /// public half of $KILN_SIGNING_KEY, this checkout's development key. The update-key.pub.pem
    /// beside the image is trusted only when named here.
    #[arg(long)]
    pub public_key: Vec<PathBuf>,
    /// Flash an image whose SHA256SUMS has no signature (its checksums then catch a corrupted
    /// image, not a substituted one).
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Where the default trusted keys are looked for (none: this user's and this checkout's).
    #[arg(skip)]
    pub key_sources: Option<KeySources>,
    /// Do not ask to type the device name to confirm.
    #[arg(long)]
    pub yes: bool,
}

/// Where the image goes, after its checks.
#[derive(Debug)]
pub enum Target {
    Device(Device),
    File { path: PathBuf, size: u64 },
}

/// Everything checked, nothing written.
pub struct Plan {
    pub image: Image,
    pub target: Target,
    config: Option<OemConfig>,
}

/// A cloud-config larger than this is surely the wrong file (OEM is 64 MiB).
const MAX_CONFIG: u64 = 4 << 20;

/// `cargo xtask flash`.
pub fn run(cfg: &FlashConfig) -> Result<()> {
    let started = std::time::Instant::now();
    let plan = prepare(cfg)?;
    eprintln!("checked in {:.1} s", started.elapsed().as_secs_f64());
    confirm(&plan, cfg.yes)?;
    let outcome = execute(&plan)?;
    eprintln!(
        "flashed {} ({} MB) to {}: written in {:.1} s ({:.0} MB/s), verified in {:.1} s; {}{}",
        plan.image.path.display(),
        outcome.image_bytes / 1_000_000,
        target_path(&plan.target).display(),
        outcome.write.as_secs_f64(),
        outcome.image_bytes as f64 / 1e6 / outcome.write.as_secs_f64().max(1e-3),
        outcome.verify.as_secs_f64(),
        if outcome.backup_moved {
            "backup partition table moved to the end"
        } else {
            "same size as the image"
        },
        if plan.config.is_some() {
            format!("; {OEM_CONFIG} on OEM")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Every check, cheapest first: the cloud-config, the target, then the image's checksums and
/// size. Writes nothing.
pub fn prepare(cfg: &FlashConfig) -> Result<Plan> {
    let config = cfg.config.as_deref().map(read_config).transpose()?;
    let target = match (&cfg.device, &cfg.to_file) {
        (Some(dev), None) => Target::Device(target::inspect(dev)?),
        (None, Some(file)) => Target::File {
            path: file.clone(),
            size: existing_file_size(file)?,
        },
        _ => bail!("name exactly one of --device and --to-file"),
    };
    let image_path = match &cfg.image {
        Some(p) => p.clone(),
        None => default_image()?,
    };
    let sources = cfg
        .key_sources
        .clone()
        .unwrap_or_else(KeySources::of_this_user);
    let trusted = TrustedKeys::for_flash(&cfg.public_key, &sources)?;
    let image = Image::open_verified(&image_path, &trusted, cfg.allow_unsigned)?;
    let target = match target {
        Target::Device(d) => {
            d.check_size(image.size)?;
            Target::Device(d)
        }
        Target::File { path, size } => {
            check_not_the_image(&path, &image.path)?;
            Target::File {
                path,
                size: size.max(image.size),
            }
        }
    };
    Ok(Plan {
        image,
        target,
        config,
    })
}

/// Writes the plan's image; on a device, asks the kernel to read the new partitions.
pub fn execute(plan: &Plan) -> Result<Outcome> {
    let sink = match &plan.target {
        Target::Device(d) => Sink::open_device(&d.path, d.size)?,
        Target::File { path, size } => Sink::open_file(path, *size)?,
    };
    let outcome = write::flash(&sink, &plan.image, plan.config.as_ref())?;
    drop(sink);
    if let Target::Device(d) = &plan.target {
        if let Err(e) = write::reread_partitions(&d.path) {
            eprintln!(
                "note: the kernel did not re-read the partition table of {} ({e}); it is on the disk, `partprobe` or a replug shows it",
                d.path.display()
            );
        }
    }
    Ok(outcome)
}

fn target_path(t: &Target) -> &Path {
    match t {
        Target::Device(d) => &d.path,
        Target::File { path, .. } => path,
    }
}

/// Reads and validates the cloud-config with the parser first boot uses.
fn read_config(path: &Path) -> Result<OemConfig> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("--config {}: cannot read it", path.display()))?;
    if !meta.is_file() || meta.len() > MAX_CONFIG {
        bail!(
            "--config {} is not a regular file of at most {} MiB: name the cloud-config YAML file",
            path.display(),
            MAX_CONFIG >> 20
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let parsed = kiln_config::parse_bytes(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "--config {}: {e}; fix the document and run flash again (nothing was written)",
            path.display()
        )
    })?;
    for w in &parsed.warnings {
        eprintln!("warning: {}: {w}", path.display());
    }
    Ok(OemConfig {
        bytes,
        mtime: meta.mtime(),
    })
}

/// The size an existing target file keeps (0 when it does not exist); refuses what is not a
/// regular file.
fn existing_file_size(path: &Path) -> Result<u64> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("--to-file {}", path.display())),
    };
    if meta.file_type().is_block_device() {
        bail!(
            "--to-file {} is a block device: write devices with --device {}, which checks them first",
            path.display(),
            path.display()
        );
    }
    if !meta.is_file() {
        bail!(
            "--to-file {} exists and is not a regular file: name a new file or a disk image file",
            path.display()
        );
    }
    // A size that is not whole sectors cannot hold the backup GPT at its end.
    Ok(meta.len() / 512 * 512)
}

fn check_not_the_image(target: &Path, image: &Path) -> Result<()> {
    let (Ok(t), Ok(i)) = (std::fs::metadata(target), std::fs::metadata(image)) else {
        return Ok(());
    };
    if (t.dev(), t.ino()) == (i.dev(), i.ino()) {
        bail!(
            "--to-file {} is the image itself: name another file",
            target.display()
        );
    }
    Ok(())
}

/// `build/<image.toml's version>/disk.raw`.
fn default_image() -> Result<PathBuf> {
    let root = host::workspace_root();
    let def = kiln_image::definition::Definition::load(&root.join("image/image.toml"))?;
    let path = root
        .join("build")
        .join(&def.image.version)
        .join(release::DISK_FILE);
    if !path.exists() {
        bail!(
            "{} does not exist: build it with `cargo xtask build-image`, or name an image with --image",
            path.display()
        );
    }
    Ok(path)
}

/// Shows the target and the image and, unless `--yes`, has the user type the device name.
fn confirm(plan: &Plan, yes: bool) -> Result<()> {
    let image = &plan.image;
    eprintln!(
        "image: {}, {}, SHA-256 {} ({})",
        image.path.display(),
        human(image.size),
        hex::encode(&image.disk_sha256),
        image.trust
    );
    let Target::Device(dev) = &plan.target else {
        return Ok(());
    };
    eprint!("target: {}", dev.describe());
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "stdin is not a terminal, so nobody can confirm: pass --yes to write {} without asking (nothing was written)",
            dev.path.display()
        );
    }
    eprint!(
        "Everything on {} will be lost. Type its name ({}) to go on: ",
        dev.path.display(),
        dev.name
    );
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let typed = line.trim();
    if typed != dev.name && Path::new(typed) != dev.path {
        bail!(
            "you typed {typed:?}, not {} or {}: nothing was written",
            dev.name,
            dev.path.display()
        );
    }
    Ok(())
}
