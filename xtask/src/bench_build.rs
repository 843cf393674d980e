//! `cargo xtask bench build`: how long `build-image` takes, as a user rebuilding runs it, with
//! everything afresh (`--no-cache`), with nothing changed, and with one overlay file changed;
//! beside the floor no rebuild can beat, measured in the same run: hashing the build's inputs
//! and copying a finished `disk.raw` once. Medians of `--runs` builds each, and each one's
//! ratio to the floor. The packages must be downloaded already (one `build-image` before).
//!
//! Not measured: one package's version changed in `packages.lock`. It needs a second version
//! of a package in `~/.cache/kiln/debs/`, which a mirror pinned to one release does not give;
//! such a change rebuilds like `--no-cache` less the compressed chunks of the disk that did not
//! change.

use std::path::PathBuf;

use anyhow::Result;

use crate::build::rebuild::Rebuilds;
use crate::build::BuildConfig;
use crate::host;
use crate::measure::{load_line, median};

#[derive(clap::Args)]
pub struct BuildBenchConfig {
    /// Builds of each case.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where its builds go (removed at the end).
    #[arg(long, default_value = "build/bench/build")]
    pub dir: PathBuf,
}

pub fn build(cfg: &BuildBenchConfig) -> Result<()> {
    let dir = host::workspace_root().join(&cfg.dir);
    let _ = std::fs::remove_dir_all(&dir);
    let base = BuildConfig::image_defaults();
    let r = Rebuilds::new(&base, &dir)?;
    // The stage cache holds this build tool's package tree and initramfs (not timed).
    r.set_file("warm-up\n")?;
    r.build(false)?;
    eprintln!("{} (at the start)", load_line());
    let (mut afresh, mut unchanged, mut changed, mut floors) = (vec![], vec![], vec![], vec![]);
    for i in 0..cfg.runs {
        r.set_file("0\n")?;
        afresh.push(r.build(true)?.took.as_secs_f64());
        unchanged.push(r.build(false)?.took.as_secs_f64());
        floors.push(r.floor()?.as_secs_f64());
        r.set_file(&format!("{}\n", i + 1))?;
        changed.push(r.build(false)?.took.as_secs_f64());
    }
    let _ = std::fs::remove_dir_all(&dir);
    let floor = median(floors.iter().copied());
    println!(
        "build-image (this xtask's profile), median of {} runs each; floor = hash the inputs + copy a finished disk.raw once",
        cfg.runs
    );
    println!("{:<34} {:>9} {:>9}", "case", "seconds", "× floor");
    for (name, v) in [
        ("everything afresh (--no-cache)", &afresh),
        ("nothing changed", &unchanged),
        ("one overlay file changed", &changed),
        ("floor", &floors),
    ] {
        let m = median(v.iter().copied());
        println!("{name:<34} {m:>9.1} {:>9.1}", m / floor);
    }
    println!("one package's version changed: not measured (needs a second version of a package in the cache)");
    println!("{} (at the end)", load_line());
    Ok(())
}
