//! Builds of this checkout into a directory of their own, with one overlay file that changes
//! between them: how the test command proves that the stage cache gives the same bytes as a
//! build without it, and how `cargo xtask bench build` times rebuilds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::{Build, BuildConfig};
use crate::release;

/// One output directory and one overlay file, under `dir`.
pub struct Rebuilds {
    cfg: BuildConfig,
    file: PathBuf,
}

/// What one build gave.
pub struct Rebuilt {
    /// `SHA256SUMS`: the SHA-256 of disk.raw, its chunk list, disk.raw.zst and update.payload.
    pub sums: String,
    pub took: Duration,
    /// The stages that reused their output.
    pub reused: Vec<&'static str>,
}

impl Rebuilds {
    pub fn new(base: &BuildConfig, dir: &Path) -> Result<Rebuilds> {
        let overlay = dir.join("overlay");
        let file = overlay.join("share/kiln-rebuild/file");
        std::fs::create_dir_all(file.parent().expect("has a parent"))
            .with_context(|| format!("creating {}", overlay.display()))?;
        let mut usr_overlays = base.usr_overlays.clone();
        usr_overlays.push(overlay);
        Ok(Rebuilds {
            cfg: BuildConfig {
                out: dir.join("out"),
                usr_overlays,
                ..base.clone()
            },
            file,
        })
    }

    /// Writes the overlay file (`/usr/share/kiln-rebuild/file` in the image).
    pub fn set_file(&self, content: &str) -> Result<()> {
        std::fs::write(&self.file, content)
            .with_context(|| format!("writing {}", self.file.display()))
    }

    /// One build, with the stage cache or without it.
    pub fn build(&self, no_cache: bool) -> Result<Rebuilt> {
        let start = Instant::now();
        let mut build = Build::new(&BuildConfig {
            no_cache,
            ..self.cfg.clone()
        })?;
        build.run()?;
        let took = start.elapsed();
        let sums_path = build.out_dir.join(release::SUMS_FILE);
        let sums = std::fs::read_to_string(&sums_path)
            .with_context(|| format!("reading {}", sums_path.display()))?;
        let reused = build
            .timings
            .iter()
            .filter(|s| s.reused)
            .map(|s| s.name)
            .collect();
        Ok(Rebuilt { sums, took, reused })
    }
}

impl Rebuilds {
    /// What no rebuild can beat: hashing the build's inputs (its key) and copying the finished
    /// `disk.raw` once (`cp --sparse=always`, holes kept). Needs a build done before.
    pub fn floor(&self) -> Result<Duration> {
        let start = Instant::now();
        let mut build = Build::new(&self.cfg)?;
        build.input_key()?;
        let disk = build.out_dir.join(release::DISK_FILE);
        let copy = build.out_dir.join("floor-copy.raw");
        crate::host::run(
            std::process::Command::new("cp")
                .arg("--sparse=always")
                .arg(&disk)
                .arg(&copy),
        )?;
        let took = start.elapsed();
        std::fs::remove_file(&copy).with_context(|| format!("removing {}", copy.display()))?;
        Ok(took)
    }
}

/// Cold build (no cache) → one overlay file changed → built → changed back → built → nothing
/// changed → built: the third and fourth give the first's bytes (disk.raw, its chunk list,
/// disk.raw.zst, update.payload), the second other bytes; the third took the package tree and
/// the initramfs from the cache, and the last reused the outputs whole. Returns a line
/// with the times.
pub fn check_same_bytes(base: &BuildConfig, dir: &Path) -> Result<String> {
    let _ = std::fs::remove_dir_all(dir);
    let r = Rebuilds::new(base, dir)?;
    r.set_file("one\n")?;
    let cold = r.build(true)?;
    ensure!(
        cold.reused.is_empty(),
        "--no-cache reused {:?}",
        cold.reused
    );
    r.set_file("two\n")?;
    let changed = r.build(false)?;
    ensure!(
        changed.sums != cold.sums,
        "an overlay file changed and the outputs did not:\n{}",
        changed.sums
    );
    r.set_file("one\n")?;
    let back = r.build(false)?;
    ensure!(
        back.sums == cold.sums,
        "the file changed back, built from the cache, gave other bytes than a build without it:\n{}\nvs\n{}",
        back.sums,
        cold.sums
    );
    // The build before stored them, if the cache did not hold them already.
    for stage in [super::PACKAGES_STAGE, super::INITRAMFS_STAGE] {
        ensure!(
            back.reused.contains(&stage),
            "`{stage}` was not taken from the stage cache (reused: {:?})",
            back.reused
        );
    }
    let again = r.build(false)?;
    ensure!(
        again.reused.contains(&super::EARLIER_OUTPUTS_STAGE) && again.sums == cold.sums,
        "nothing changed and the outputs were not reused as they were (reused: {:?})",
        again.reused
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(format!(
        "same bytes: without cache {:.1} s, one overlay file changed {:.1} s, changed back {:.1} s (= the first), nothing changed {:.1} s",
        cold.took.as_secs_f64(),
        changed.took.as_secs_f64(),
        back.took.as_secs_f64(),
        again.took.as_secs_f64()
    ))
}
