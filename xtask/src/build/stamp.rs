//! The build's own key and its stamp: when every input of a build is what it was for the
//! outputs already in `build/<version>/`, and those outputs are intact, the build reuses them
//! whole instead of running any stage.
//!
//! The key ([`Build::input_key`]) is the SHA-256 of everything the outputs depend on: the build
//! tool itself (the running `xtask` binary, which holds every stage's code and the libraries
//! it writes formats with), the static device binaries, `image.toml`, `packages.lock`, the
//! overlays (content, mode and owner, not times), the version, `SOURCE_DATE_EPOCH`, the flags
//! that change bytes, the signing key's public half, and `qemu-img`'s version (it writes
//! `disk.qcow2`). The stamp, `build/<version>/build.stamp`, records the key and the SHA-256 of
//! every output (`disk.raw` by its chunk list, which checks it without hashing its holes). It is
//! removed when a build starts and written when one ends, so a build that stopped half-way
//! never leaves a stamp beside outputs it did not finish.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use kiln_contract::hex;
use kiln_image::hostdir::{self, HostDirOptions};
use kiln_image::tree::{Meta, Tree, TreePath};
use kiln_image::tree_codec;

use super::binaries::STATIC_BINARIES;
use super::cache::{Key, KeyBuilder};
use super::{Artifacts, Build};
use crate::host;
use crate::release::chunks::{self, ChunkList};

pub const STAMP_FILE: &str = "build.stamp";
const MAGIC_LINE: &str = "kiln-build-stamp 1";
/// The chunk list of `disk.raw` when the build writes no release files (which hold one).
pub const WORK_CHUNKS: &str = "work/disk.raw.chunks";

/// What a stamp says.
struct Stamp {
    key: String,
    usr_hash: String,
    /// (SHA-256 hex, path relative to the output directory).
    files: Vec<(String, String)>,
    /// The chunk list `disk.raw` is checked against (one of `files`).
    disk_chunks: String,
    /// The report's lines above its stage table.
    report: String,
}

impl Build {
    /// The SHA-256 of the running build tool, once per build. Through /proc: the file at the
    /// binary's path may have been replaced since it started (the test command's crate tests
    /// build xtask again), while this is what runs.
    pub(super) fn code_digest(&mut self) -> Result<[u8; 32]> {
        self.file_digest(Path::new("/proc/self/exe"))
            .context("reading the running xtask binary")
    }

    /// The key of the whole build.
    pub(super) fn input_key(&mut self) -> Result<Key> {
        let root = host::workspace_root();
        let mut k = KeyBuilder::new("build").with("code", &self.code_digest()?);
        let bins = self.static_binaries()?;
        for (_, bin) in STATIC_BINARIES {
            k = k.with(bin, &self.file_digest(&bins.join(bin))?);
        }
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        k = k.with("image.toml", &read(&self.def_path)?).with(
            "packages.lock",
            &read(&super::packages::lock_path(&self.def_path))?,
        );
        for dir in std::iter::once(root.join("overlays/usr")).chain(self.usr_overlays.clone()) {
            k = k.with("overlay", &self.overlay_digest(&dir)?);
        }
        k = k
            .with("version", self.version.as_bytes())
            .with("epoch", &self.epoch.to_le_bytes())
            .with(
                "debug keys",
                self.debug_ssh_keys.as_deref().unwrap_or_default(),
            )
            .with("boot menu", &self.boot_menu_timeout.to_le_bytes())
            .with("release files", &[self.release_files as u8])
            .with(
                "update key",
                self.signing.key.verifying_key().to_pem()?.as_bytes(),
            );
        if self.release_files {
            let qemu_img = Command::new("qemu-img").arg("--version").output();
            let version = qemu_img.map(|o| o.stdout).unwrap_or_default();
            k = k.with("qemu-img", &version);
        }
        Ok(k.finish())
    }

    /// An overlay directory as the rootfs stage reads it (content, mode, root-owned, the
    /// build's time), hashed.
    fn overlay_digest(&self, dir: &Path) -> Result<[u8; 32]> {
        let mut tree = Tree::new(Meta::root(0o755, self.epoch));
        let usr = TreePath::new("usr")?;
        tree.create_dirs(&usr, &Meta::root(0o755, self.epoch))?;
        let opts = HostDirOptions {
            uid: 0,
            gid: 0,
            mtime: self.epoch,
        };
        hostdir::add_host_dir(&mut tree, dir, &usr, &opts)
            .with_context(|| format!("reading {}", dir.display()))?;
        Ok(tree_codec::digest_under(&tree, &["usr"])?)
    }

    /// The outputs of an earlier build with this `key`, checked, when the stamp says so.
    pub(super) fn reuse_outputs(&mut self, key: &Key) -> Result<Option<Artifacts>> {
        let path = self.out_dir.join(STAMP_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let stamp = match Stamp::parse(&text) {
            Some(s) if s.key == key.hex() => s,
            _ => return Ok(None),
        };
        if let Err(e) = self.check_outputs(&stamp) {
            eprintln!(
                "    the outputs in {} changed since they were built ({e:#}): building again",
                self.out_dir.display()
            );
            return Ok(None);
        }
        self.report_header = Some(stamp.report.clone());
        self.reused = true;
        let at = |rel: &str| self.out_dir.join(rel);
        let has = |rel: &str| stamp.files.iter().any(|(_, f)| f == rel);
        Ok(Some(Artifacts {
            disk: at(crate::release::DISK_FILE),
            qcow2: has(super::QCOW2_FILE).then(|| at(super::QCOW2_FILE)),
            usr_image: at(super::USR_IMAGE_FILE),
            kernel: at(super::KERNEL_FILE),
            initrd: at(super::INITRD_FILE),
            usr_hash: stamp.usr_hash,
            payload: at(crate::release::PAYLOAD_FILE),
        }))
    }

    /// Every file the stamp names has its SHA-256, and `disk.raw` matches its chunk list.
    fn check_outputs(&self, stamp: &Stamp) -> Result<()> {
        let dir = &self.out_dir;
        let paths: Vec<PathBuf> = stamp.files.iter().map(|(_, rel)| dir.join(rel)).collect();
        let got = crate::release::digests_of(&paths)?;
        for ((want, rel), got) in stamp.files.iter().zip(got) {
            if &hex::encode(&got) != want {
                bail!("{rel} has another SHA-256");
            }
        }
        let list_path = dir.join(&stamp.disk_chunks);
        let text = std::fs::read_to_string(&list_path)
            .with_context(|| format!("reading {}", list_path.display()))?;
        let list = ChunkList::parse(&text, &list_path)?;
        chunks::check_image(&dir.join(crate::release::DISK_FILE), &list, &list_path)?;
        Ok(())
    }

    /// Writes the stamp of this build's outputs (`files`: paths relative to the output
    /// directory with their SHA-256, `disk.raw` not among them).
    pub(super) fn write_stamp(
        &self,
        key: &Key,
        a: &Artifacts,
        files: &super::report::Digests,
        disk_chunks: &str,
        report: &str,
    ) -> Result<()> {
        let mut text = format!(
            "{MAGIC_LINE}\nkey {}\nusr-hash {}\ndisk {disk_chunks}\n",
            key.hex(),
            a.usr_hash
        );
        for (path, digest) in files {
            let rel = path.strip_prefix(&self.out_dir).unwrap_or(path);
            text += &format!("file {} {}\n", hex::encode(digest), rel.display());
        }
        text += "report\n";
        text += report;
        crate::release::write_atomic(&self.out_dir.join(STAMP_FILE), text.as_bytes())
    }

    /// Removes the stamp: the outputs are about to change.
    pub(super) fn clear_stamp(&self) -> Result<()> {
        let path = self.out_dir.join(STAMP_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
}

impl Stamp {
    fn parse(text: &str) -> Option<Stamp> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC_LINE {
            return None;
        }
        let key = lines.next()?.strip_prefix("key ")?.to_owned();
        let usr_hash = lines.next()?.strip_prefix("usr-hash ")?.to_owned();
        let disk_chunks = lines.next()?.strip_prefix("disk ")?.to_owned();
        let mut files = Vec::new();
        for line in lines.by_ref() {
            if line == "report" {
                break;
            }
            let (digest, rel) = line.strip_prefix("file ")?.split_once(' ')?;
            files.push((digest.to_owned(), rel.to_owned()));
        }
        let report: String = lines.map(|l| format!("{l}\n")).collect();
        Some(Stamp {
            key,
            usr_hash,
            files,
            disk_chunks,
            report,
        })
    }
}
