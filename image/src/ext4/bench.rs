//! Times this writer against `mkfs.ext4 -d` building the same tree into a same-size file
//! (wired to `cargo xtask bench formats`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::hostdir::{add_host_dir, HostDirOptions};
use crate::tree::{Meta, Tree, TreePath};

/// One comparison run.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub size_bytes: u64,
    /// `required_bytes` (reads every file once).
    pub ours_sizing: Duration,
    /// `write` alone.
    pub ours_write: Duration,
    pub mkfs: Duration,
}

impl BenchResult {
    /// Our write time over mkfs's (target: at most 1.0).
    pub fn ratio(&self) -> f64 {
        self.ours_write.as_secs_f64() / self.mkfs.as_secs_f64()
    }
}

/// Loads `tree_dir`, sizes the filesystem with [`super::required_bytes`] (plus half again so
/// mkfs's default inode ratio fits too), then writes it with ours and with
/// `mkfs.ext4 -q -d <dir> -b 4096 -O ^has_journal`, and prints both times and the ratio.
pub fn bench(tree_dir: &Path) -> std::io::Result<BenchResult> {
    let opts = HostDirOptions {
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
    };
    let mut tree = Tree::new(Meta::root(0o755, opts.mtime));
    add_host_dir(&mut tree, tree_dir, &TreePath::root(), &opts)?;
    let t0 = Instant::now();
    let needed = super::required_bytes(&tree, false).map_err(std::io::Error::other)?;
    let ours_sizing = t0.elapsed();
    let size_bytes = (needed * 3 / 2).next_multiple_of(1 << 20);
    let dir = std::env::temp_dir().join(format!("kiln-ext4-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ours_img = dir.join("ours.img");
    let mkfs_img = dir.join("mkfs.img");
    let ext4_opts = super::Ext4Options {
        size_bytes,
        uuid: [7; 16],
        hash_seed: [9; 16],
        label: "bench".into(),
        journal: false,
        timestamp: opts.mtime,
    };
    let t1 = Instant::now();
    let file = std::fs::File::create(&ours_img)?;
    super::write(&tree, &ext4_opts, &file).map_err(std::io::Error::other)?;
    file.sync_all()?;
    let ours_write = t1.elapsed();
    let file = std::fs::File::create(&mkfs_img)?;
    file.set_len(size_bytes)?;
    drop(file);
    let t2 = Instant::now();
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-b", "4096", "-O", "^has_journal", "-d"])
        .arg(tree_dir)
        .arg(&mkfs_img);
    let status = cmd.status()?;
    std::fs::File::open(&mkfs_img)?.sync_all()?;
    let mkfs = t2.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    if !status.success() {
        return Err(std::io::Error::other(format!("{cmd:?} failed: {status}")));
    }
    let r = BenchResult {
        size_bytes,
        ours_sizing,
        ours_write,
        mkfs,
    };
    println!(
        "ext4 of {} ({} entries, {} MiB fs): ours {:.2}s write + {:.2}s sizing, mkfs.ext4 -d {:.2}s, ratio {:.2}x",
        tree_dir.display(),
        tree.len(),
        size_bytes >> 20,
        r.ours_write.as_secs_f64(),
        r.ours_sizing.as_secs_f64(),
        r.mkfs.as_secs_f64(),
        r.ratio()
    );
    Ok(r)
}
