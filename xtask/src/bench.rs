//! `cargo xtask bench …`: our code against the reference tool doing the same work, measured in
//! one run on the same input, printed as ratios (never asserted: the machine is shared).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln_image::debian::{self, Cache, Lock};
use kiln_image::hostdir::{self, HostDirOptions};
use kiln_image::tree::{Meta, Tree, TreePath};
use kiln_image::{ext4, verity};

use crate::host::{self, HostPackage};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// ext4 vs `mkfs.ext4 -d`, dm-verity vs `veritysetup format`, on a ≥ 500 MiB, ≥ 50,000-entry
    /// tree (Debian's kernel package plus generated files).
    Formats(FormatsConfig),
    /// `flash` vs `dd bs=4M oflag=direct` of the same image to a loop device, as root.
    Flash(crate::bench_flash::FlashBenchConfig),
    /// `install`'s write of a payload's USR image to the inactive partition vs `dd` of the same
    /// bytes to the same place.
    Update(crate::bench_update::UpdateConfig),
    /// The update server: checks/s and p50/p99 with 64 clients on loopback, vs a fixed answer.
    Server(crate::bench_server::ServerBenchConfig),
    /// First and later boot to an ssh login under TCG, per phase, vs the same kernel booted
    /// straight into an initramfs that powers off.
    Boot(crate::bench_boot::BootBenchConfig),
    /// The fleet engine against a real etcd with 1,000 simulated machines and 10,000 units: time
    /// to place them all, etcd writes per unit, CPU and memory per pass, a lost machine's units
    /// moved; vs one single-key write per unit.
    Fleet(crate::bench_fleet::FleetBenchConfig),
    /// `build-image` with everything afresh (`--no-cache`), with nothing changed and with one
    /// overlay file changed, vs hashing the inputs and copying a finished disk.raw once.
    Build(crate::bench_build::BuildBenchConfig),
}

#[derive(clap::Args)]
pub struct FormatsConfig {
    /// Where the tree and the images go (kept for the next run).
    #[arg(long, default_value = "build/bench")]
    pub dir: PathBuf,
}

pub fn run(cmd: &BenchCommand) -> Result<()> {
    // Timings of unoptimised code say nothing: a debug xtask hands the benchmark to a release
    // build of itself. Not the build's: it times `cargo xtask build-image` as users run it.
    if cfg!(debug_assertions) && !matches!(cmd, BenchCommand::Build(_)) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        return host::run(
            host::cargo_command()
                .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
                .args(&args)
                .current_dir(host::workspace_root()),
        );
    }
    match cmd {
        BenchCommand::Formats(cfg) => formats(cfg),
        BenchCommand::Flash(cfg) => crate::bench_flash::run(cfg),
        BenchCommand::Update(cfg) => crate::bench_update::update(cfg),
        BenchCommand::Server(cfg) => crate::bench_server::server(cfg),
        BenchCommand::Boot(cfg) => crate::bench_boot::boot(cfg),
        BenchCommand::Fleet(cfg) => crate::bench_fleet::fleet(cfg),
        BenchCommand::Build(cfg) => crate::bench_build::build(cfg),
    }
}

/// Generated files added to the kernel's modules: small, many, deterministic.
const GENERATED_FILES: usize = 50_000;
const GENERATED_BYTES: usize = 2_500;

fn formats(cfg: &FormatsConfig) -> Result<()> {
    host::ensure_packages(
        &[
            HostPackage {
                package: "e2fsprogs",
                provides: "mkfs.ext4",
            },
            HostPackage {
                package: "cryptsetup-bin",
                provides: "veritysetup",
            },
        ],
        "the formats benchmark",
    )?;
    let dir = host::workspace_root().join(&cfg.dir);
    let tree_dir = prepare_tree(&dir)?;

    // ext4: from the directory on disk to a finished image, both ways.
    let start = Instant::now();
    let mut tree = Tree::new(Meta::root(0o755, 0));
    hostdir::add_host_dir(
        &mut tree,
        &tree_dir,
        &TreePath::root(),
        &HostDirOptions {
            uid: 0,
            gid: 0,
            mtime: 0,
        },
    )?;
    let loaded = start.elapsed();
    let needed = ext4::required_bytes(&tree, false)?;
    // Room for mkfs's default inode ratio too, so both write the same size.
    let size = (needed * 3 / 2).next_multiple_of(1 << 20);
    let ours_img = dir.join("ours.ext4");
    let opts = ext4::Ext4Options {
        size_bytes: size,
        uuid: [7; 16],
        hash_seed: [9; 16],
        label: "bench".into(),
        journal: false,
        timestamp: 0,
    };
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&ours_img)?;
    ext4::write(&tree, &opts, &file)?;
    file.sync_all()?;
    let ours = start.elapsed();
    drop(file);

    let mkfs_img = dir.join("mkfs.ext4");
    File::create(&mkfs_img)?.set_len(size)?;
    let start = Instant::now();
    host::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-O", "^has_journal", "-d"])
            .arg(&tree_dir)
            .arg(&mkfs_img),
    )?;
    File::open(&mkfs_img)?.sync_all()?;
    let mkfs = start.elapsed();
    println!(
        "ext4, {} entries, {} MiB of files, {} MiB filesystem: ours {:.2} s (of which reading the tree {:.2} s), mkfs.ext4 -d {:.2} s: ratio {:.2} (target <= 1.0)",
        tree.len(),
        tree.content_bytes() >> 20,
        size >> 20,
        ours.as_secs_f64(),
        loaded.as_secs_f64(),
        mkfs.as_secs_f64(),
        ratio(ours, mkfs)
    );

    // verity: over our ext4 image, each on its own copy.
    let data_bytes = size;
    let (a, b) = (dir.join("verity-ours.img"), dir.join("verity-theirs.img"));
    for copy in [&a, &b] {
        host::run(
            Command::new("cp")
                .arg("--sparse=never")
                .arg(&ours_img)
                .arg(copy),
        )?;
        // Read once so neither side pays for the first read from disk.
        std::io::copy(&mut File::open(copy)?, &mut std::io::sink())?;
    }
    let params = verity::VerityParams {
        salt: vec![0x5a; 32],
        uuid: [3; 16],
    };
    let start = Instant::now();
    let info = verity::append(
        &File::options().read(true).write(true).open(&a)?,
        data_bytes,
        &params,
    )?;
    let ours = start.elapsed();
    let start = Instant::now();
    let out = Command::new("veritysetup")
        .arg("format")
        .arg(&b)
        .arg(&b)
        .arg(format!("--hash-offset={data_bytes}"))
        .arg(format!("--salt={}", "5a".repeat(32)))
        .arg("--uuid=03030303-0303-0303-0303-030303030303")
        .args(["--data-block-size=4096", "--hash-block-size=4096"])
        .output()
        .context("running veritysetup format")?;
    let theirs = start.elapsed();
    if !out.status.success() {
        bail!(
            "veritysetup format failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let agree = String::from_utf8_lossy(&out.stdout).contains(&info.root_hash_hex());
    println!(
        "verity, {} MiB: ours {:.2} s, veritysetup format {:.2} s: ratio {:.2} (target <= 1.2); root hashes {}",
        data_bytes >> 20,
        ours.as_secs_f64(),
        theirs.as_secs_f64(),
        ratio(ours, theirs),
        if agree { "agree" } else { "DIFFER" }
    );
    if !agree {
        bail!("our verity root hash differs from veritysetup's");
    }
    Ok(())
}

fn ratio(ours: Duration, theirs: Duration) -> f64 {
    ours.as_secs_f64() / theirs.as_secs_f64()
}

/// The kernel package of `packages.lock` extracted as root (owners from the archive), plus
/// generated files; made once and kept.
fn prepare_tree(dir: &Path) -> Result<PathBuf> {
    let tree_dir = dir.join("tree");
    let done = dir.join("tree.done");
    if done.exists() {
        return Ok(tree_dir);
    }
    let _ = std::fs::remove_dir_all(&tree_dir);
    std::fs::create_dir_all(&tree_dir)?;
    let root = host::workspace_root();
    let lock = Lock::read(&root.join("image/packages.lock"))?;
    let kernel = lock
        .packages
        .iter()
        .find(|p| p.name.starts_with("linux-image-") && p.name != "linux-image-amd64")
        .context("packages.lock has no linux-image package")?;
    let def = kiln_image::definition::Definition::load(&root.join("image/image.toml"))?;
    let mirrors = crate::build::packages::mirrors(&def, None)?;
    let one = Lock {
        suites: lock.suites.clone(),
        packages: vec![kernel.clone()],
    };
    let fetched = debian::fetch(&one, &Cache::from_env()?, &mirrors, 1)?;
    host::run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&fetched[0].path)
            .arg(&tree_dir),
    )?;
    for i in 0..GENERATED_FILES {
        let sub = tree_dir.join(format!("generated/{:02}", i / 1000));
        std::fs::create_dir_all(&sub)?;
        let mut f = File::create(sub.join(format!("file-{i:05}.txt")))?;
        let line = format!("generated file {i} for the formats benchmark\n");
        f.write_all(line.repeat(GENERATED_BYTES / line.len() + 1).as_bytes())?;
    }
    File::create(&done)?;
    Ok(tree_dir)
}
