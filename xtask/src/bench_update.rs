//! `cargo xtask bench update`: how fast `install` writes a payload's USR image to the inactive
//! partition, against `dd` writing the same (uncompressed) bytes to the same place, in one run.
//!
//! Fairness: both write into USR-B of one sparse copy of the built disk (a file on the same
//! filesystem, at the same offset), and before each run that range is punched back to a hole,
//! so both allocate the same blocks. Both write with `O_DIRECT` in 4 MiB pieces and end with an
//! fsync, as `install` does (`dd bs=4M oflag=direct conv=fsync`), and both read from the page
//! cache (the USR image and the payload are read once beforehand). `install`'s time is its
//! `Writing` phase only: decompressing, writing (with a digest of each 4 MiB written) and the
//! fsync; the signature check before and the read-back after (what is on the partition against
//! those digests, and its verity tree) are not part of what `dd` does. Each side runs three times, alternately, and the fastest run
//! counts. The CPU time each side used is printed too: on a machine shared with other work,
//! wall times swing from run to run, and CPU time says what a side needs of it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kiln_contract::boot::Slot;
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

const ROUNDS: usize = 3;

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
            .arg(build.join(crate::release::DISK_FILE))
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
    let (mut best_dd, mut best_ours) = ((Duration::MAX, 0.0), (Duration::MAX, 0.0));
    for _ in 0..ROUNDS {
        punch(&disk, offset, len)?;
        let cpu = cpu_seconds(libc::RUSAGE_CHILDREN);
        let wall = dd(&usr, &disk, offset)?;
        best_dd = faster(best_dd, (wall, cpu_seconds(libc::RUSAGE_CHILDREN) - cpu));
        punch(&disk, offset, len)?;
        best_ours = faster(best_ours, timed_install(&target, &payload_path, &key)?);
    }
    let ((best_dd, dd_cpu), (best_ours, ours_cpu)) = (best_dd, best_ours);
    let mib = manifest.usr_size as f64 / f64::from(1 << 20);
    let (dd_rate, ours_rate) = (mib / best_dd.as_secs_f64(), mib / best_ours.as_secs_f64());
    println!(
        "update write, {mib:.0} MiB USR image ({} MiB compressed) into USR-B of a disk image file: \
         install {:.2} s ({ours_rate:.0} MiB/s, {ours_cpu:.2} s of CPU), \
         dd bs=4M oflag=direct conv=fsync {:.2} s ({dd_rate:.0} MiB/s, {dd_cpu:.2} s of CPU): \
         throughput ratio {:.2} (target >= 0.8)",
        manifest.parts.usr.length >> 20,
        best_ours.as_secs_f64(),
        best_dd.as_secs_f64(),
        ours_rate / dd_rate
    );
    Ok(())
}

/// The time and the CPU time (of this process, all threads) from `install`'s first `Writing`
/// report to its first `ReadingBack` report.
fn timed_install(target: &Target, payload: &Path, key: &SigningKey) -> Result<(Duration, f64)> {
    let (mut start, mut end) = (None, None);
    // The bench's payload (99.0.0) over whatever the disk copy runs.
    let accept = install::Accept {
        app_id: "bench",
        running_version: "0",
        allow_downgrade: false,
        bad_versions: &[],
    };
    install::install(
        target,
        payload,
        &key.verifying_key(),
        &accept,
        &mut |phase, _, _| match phase {
            Phase::Writing if start.is_none() => {
                start = Some((Instant::now(), cpu_seconds(libc::RUSAGE_SELF)))
            }
            Phase::ReadingBack if end.is_none() => {
                end = Some((Instant::now(), cpu_seconds(libc::RUSAGE_SELF)))
            }
            _ => {}
        },
    )
    .context("installing the payload into the disk copy")?;
    match (start, end) {
        (Some(s), Some(e)) => Ok((e.0 - s.0, e.1 - s.1)),
        _ => anyhow::bail!("install reported no Writing or ReadingBack phase"),
    }
}

/// The run (time, CPU seconds) that took less time.
fn faster(a: (Duration, f64), b: (Duration, f64)) -> (Duration, f64) {
    if b.0 < a.0 {
        b
    } else {
        a
    }
}

/// User and system CPU seconds of this process (`RUSAGE_SELF`) or of its waited-for children.
fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes one rusage through the pointer; zeroes are a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
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
