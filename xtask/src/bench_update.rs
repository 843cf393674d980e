//! `cargo xtask bench update`: how fast `install` writes a payload's USR image to the inactive
//! partition, against `dd` writing the same (uncompressed) bytes to the same place, in one run.
//!
//! Fairness: both write into USR-B of one sparse copy of the built disk (a file on the same
//! filesystem, at the same offset), and before each run that range is punched back to a hole,
//! so both allocate the same blocks. Both write with `O_DIRECT` in 4 MiB pieces and end with an
//! fsync, as `install` does (`dd bs=4M oflag=direct conv=fsync`), and both read from the page
//! cache (the USR image and the payload are read once beforehand). `install`'s time is its `Writing` phase only: decompressing,
//! hashing, writing and the fsync; the signature check before and the read-back after are not
//! part of what `dd` does. Each side runs twice, alternately, and the faster run counts.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kiln_image::boot::Slot;
use kiln_image::gpt::Gpt;
use kiln_updater::install::{self, Phase, Target};
use kiln_updater::keys::SigningKey;
use kiln_updater::payload::{self, ManifestInput};

use crate::host;

#[derive(clap::Args)]
pub struct UpdateConfig {
    /// The build whose disk and USR image are used: `build/<version>/`.
    #[arg(long, default_value = "build/0.1.0")]
    pub build: PathBuf,
    /// Where the disk copy and the payload go (kept for the next run).
    #[arg(long, default_value = "build/bench/update")]
    pub dir: PathBuf,
}

const ROUNDS: usize = 2;

pub fn update(cfg: &UpdateConfig) -> Result<()> {
    let root = host::workspace_root();
    let build = root.join(&cfg.build);
    let dir = root.join(&cfg.dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let work = build.join("work");
    let usr = work.join("usr.img");
    let disk = dir.join("disk.raw");
    host::run(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(build.join("disk.raw"))
            .arg(&disk),
    )?;
    let payload_path = dir.join("update.payload");
    let key = SigningKey::generate()?;
    let input = ManifestInput::new("bench", "99.0.0", ext4_bytes(&usr)?);
    let manifest = payload::write_payload(
        &payload_path,
        input,
        &usr,
        &work.join("vmlinuz"),
        &work.join("initrd"),
        &key,
    )?;
    let (offset, len) = usr_b(&disk)?;
    // Warm the page cache for both sources.
    for src in [&usr, &payload_path] {
        std::io::copy(&mut File::open(src)?, &mut std::io::sink())?;
    }
    let target = Target {
        disk: disk.clone(),
        running: Slot::A,
    };
    let (mut best_dd, mut best_ours) = (Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        punch(&disk, offset, len)?;
        best_dd = best_dd.min(dd(&usr, &disk, offset)?);
        punch(&disk, offset, len)?;
        let ours = timed_install(&target, &payload_path, &key)?;
        best_ours = best_ours.min(ours);
    }
    let mib = manifest.usr_size as f64 / f64::from(1 << 20);
    let (dd_rate, ours_rate) = (mib / best_dd.as_secs_f64(), mib / best_ours.as_secs_f64());
    println!(
        "update write, {mib:.0} MiB USR image ({} MiB compressed) into USR-B of a disk image file: \
         install {:.2} s ({ours_rate:.0} MiB/s), dd bs=4M oflag=direct conv=fsync {:.2} s ({dd_rate:.0} MiB/s): \
         throughput ratio {:.2} (target >= 0.8)",
        manifest.parts.usr.length >> 20,
        best_ours.as_secs_f64(),
        best_dd.as_secs_f64(),
        ours_rate / dd_rate
    );
    Ok(())
}

/// The time from `install`'s first `Writing` report to its first `ReadingBack` report.
fn timed_install(target: &Target, payload: &Path, key: &SigningKey) -> Result<Duration> {
    let (mut start, mut end) = (None, None);
    install::install(
        target,
        payload,
        &key.verifying_key(),
        &mut |phase, _, _| match phase {
            Phase::Writing if start.is_none() => start = Some(Instant::now()),
            Phase::ReadingBack if end.is_none() => end = Some(Instant::now()),
            _ => {}
        },
    )
    .context("installing the payload into the disk copy")?;
    match (start, end) {
        (Some(s), Some(e)) => Ok(e - s),
        _ => anyhow::bail!("install reported no Writing or ReadingBack phase"),
    }
}

fn dd(src: &Path, disk: &Path, offset: u64) -> Result<Duration> {
    let start = Instant::now();
    host::run(
        Command::new("dd")
            .arg(format!("if={}", src.display()))
            .arg(format!("of={}", disk.display()))
            .args([
                "bs=4M",
                "oflag=direct,seek_bytes",
                "conv=notrunc,fsync",
                "status=none",
            ])
            .arg(format!("seek={offset}")),
    )?;
    Ok(start.elapsed())
}

/// Turns `disk[offset..offset + len]` back into a hole, so each run allocates anew.
fn punch(disk: &Path, offset: u64, len: u64) -> Result<()> {
    host::run(
        Command::new("fallocate")
            .args(["--punch-hole", "--keep-size"])
            .arg(format!("--offset={offset}"))
            .arg(format!("--length={len}"))
            .arg(disk),
    )?;
    File::open(disk)?.sync_all()?;
    Ok(())
}

fn usr_b(disk: &Path) -> Result<(u64, u64)> {
    let mut f = File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
    let len = f.metadata()?.len();
    let gpt = Gpt::read(&mut f, len)?;
    let (_, p) = gpt
        .find_by_name(Slot::B.partition_name())
        .context("the disk has no USR-B")?;
    Ok((p.start_bytes(), p.size_bytes()))
}

/// The filesystem's size from its ext4 superblock: where the verity superblock starts.
fn ext4_bytes(img: &Path) -> Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut sb = [0u8; 1024];
    let mut f = File::open(img).with_context(|| format!("opening {}", img.display()))?;
    f.seek(SeekFrom::Start(1024))?;
    f.read_exact(&mut sb)
        .with_context(|| format!("reading the ext4 superblock of {}", img.display()))?;
    let word = |at: usize| u64::from(u32::from_le_bytes(sb[at..at + 4].try_into().expect("4")));
    Ok(((word(0x150) << 32) | word(4)) << (10 + word(24)))
}
