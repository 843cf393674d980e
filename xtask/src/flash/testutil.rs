//! Test fixtures for flash: scratch directories, loop devices that detach themselves, and a
//! small Kiln-shaped disk image (real GPT layout, FAT OEM) with its release files.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_contract::disk::{self, MIB};
use kiln_image::disk::{assemble, PartitionContent};
use kiln_image::gpt::Guid;
use kiln_image::tree::{Meta, Tree};
use sha2::{Digest, Sha256};

use crate::release::{self, chunks::ChunkList};

/// A directory under the system's temp dir, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("kiln-flash-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device over a file, with partitions added by hand (this machine's kernel may not
/// parse GPT, so `losetup -P` alone shows none); detached on drop.
pub struct Loop {
    pub dev: PathBuf,
    parts: Vec<u32>,
}

impl Loop {
    pub fn attach(file: &Path) -> Loop {
        assert!(
            crate::host::is_root(),
            "the flash tests need root (loop devices)"
        );
        let dev = sh(Command::new("losetup").args(["-f", "--show"]).arg(file));
        Loop {
            dev: PathBuf::from(dev.trim()),
            parts: Vec::new(),
        }
    }

    /// Adds partition `n` (BLKPG, via `addpart`) and returns its device node.
    pub fn add_partition(&mut self, n: u32, start_sector: u64, sectors: u64) -> PathBuf {
        sh(Command::new("addpart").arg(&self.dev).args([
            n.to_string(),
            start_sector.to_string(),
            sectors.to_string(),
        ]));
        self.parts.push(n);
        let node = PathBuf::from(format!("{}p{n}", self.dev.display()));
        // devtmpfs creates the node asynchronously.
        for _ in 0..50 {
            if node.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(node.exists(), "{} did not appear", node.display());
        node
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        for n in &self.parts {
            let _ = Command::new("delpart")
                .arg(&self.dev)
                .arg(n.to_string())
                .status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// SHA-256 of a file or device, read whole.
pub fn sha256(path: &Path) -> [u8; 32] {
    let mut f = File::open(path).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    h.finalize().into()
}

/// A sparse file of `bytes` filled with a marker at both ends (so "unchanged" means something).
pub fn target_file(path: &Path, bytes: u64) {
    let f = File::create(path).unwrap();
    f.set_len(bytes).unwrap();
    f.write_all_at(&[0xA5; 4096], 0).unwrap();
    f.write_all_at(&[0x5A; 4096], bytes - 4096).unwrap();
}

/// Partition sizes of the small image in MiB: ESP, USR (each slot), OEM, ROOT. OEM is large
/// enough for FAT16.
pub const SMALL_LAYOUT: (u64, u64, u64, u64) = (1, 3, 8, 2);

/// `dir/disk.raw` (19 MiB: USR-A full of patterned bytes, an empty FAT OEM), `disk.raw.zst`,
/// `disk.raw.chunks` and `SHA256SUMS`, as a build makes them.
pub fn small_image(dir: &Path) -> PathBuf {
    let (esp, usr, oem, root) = SMALL_LAYOUT;
    let layout = disk::layout(esp, usr, oem, root);
    let usr_img = dir.join("usr.img");
    let data: Vec<u8> = (0..usr * MIB)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    std::fs::write(&usr_img, data).unwrap();
    let oem_img = dir.join("oem.img");
    let opts = kiln_image::fat::FatOptions {
        size_bytes: oem * MIB,
        volume_id: 0x1234_5678,
        label: disk::OEM.into(),
        timestamp: 0,
    };
    let mut f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&oem_img)
        .unwrap();
    kiln_image::fat::format(&Tree::new(Meta::root(0o755, 0)), &opts, &mut f).unwrap();
    let disk_path = dir.join(release::DISK_FILE);
    let contents = [
        PartitionContent {
            number: disk::USR_A_NUMBER,
            image: Some(&usr_img),
        },
        PartitionContent {
            number: disk::OEM_NUMBER,
            image: Some(&oem_img),
        },
    ];
    assemble(&disk_path, &layout, &contents, |n| {
        Guid::from_hash(format!("flash-test/{n}").as_bytes())
    })
    .unwrap();
    std::fs::remove_file(&usr_img).unwrap();
    std::fs::remove_file(&oem_img).unwrap();
    release::compress_plain(&disk_path, &dir.join(release::ZST_FILE)).unwrap();
    ChunkList::of_file(&disk_path, release::chunks::CHUNK)
        .unwrap()
        .write_to(&dir.join(release::CHUNKS_FILE))
        .unwrap();
    // Hashed again here rather than taken from compress: the sums are what is under test.
    release::write_sums(dir, &[]).unwrap();
    disk_path
}
