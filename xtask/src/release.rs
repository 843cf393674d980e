//! The release files of a build that `flash` checks: `disk.raw.zst` (the disk, compressed
//! deterministically), `disk.raw.chunks` (the SHA-256 of each chunk of the disk, see
//! [`chunks`]) and `SHA256SUMS` over them (in `sha256sum`'s format, so `sha256sum -c`
//! reads it), with its signature `SHA256SUMS.sig` when the build has a signing key
//! ([`signature`]).
//!
//! The formats live here, apart from both their writer and their reader: the build writes
//! them (its `release files` stage) and `flash` checks an image against them, and neither side
//! depends on the other. [`blockmap`] is the chunk list in memory, as the passes that check
//! an image block by block use it.

pub mod blockmap;
pub mod chunks;
pub mod signature;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_contract::digest::Hashing;
use kiln_contract::hex;

pub const SUMS_FILE: &str = "SHA256SUMS";
pub const SIG_FILE: &str = "SHA256SUMS.sig";
/// The build's public update key (written by the build when it has a signing key).
pub const KEY_FILE: &str = "update-key.pub.pem";
pub const DISK_FILE: &str = "disk.raw";
/// The SHA-256 of each chunk of `disk.raw` (see [`chunks`]).
pub const CHUNKS_FILE: &str = "disk.raw.chunks";
pub const ZST_FILE: &str = "disk.raw.zst";
/// The files `SHA256SUMS` covers, in its order, when they exist.
pub const SUMMED_FILES: [&str; 4] = [DISK_FILE, CHUNKS_FILE, ZST_FILE, "update.payload"];

/// zstd's default level: the disk is mostly zeros, which every level compresses to nothing;
/// higher levels cost minutes on the filesystems for a few percent.
const ZSTD_LEVEL: i32 = 3;
const IO_BUF: usize = 4 << 20;

/// Compresses `src` into `dst` as one zstd frame that records the content size (so `flash`
/// knows the disk's size before it decompresses) and a checksum. Single-threaded on purpose:
/// zstd's output then depends only on the input, the level and the library version.
/// Written to a temporary file, synced, then renamed. Returns the SHA-256 of `src` and of
/// `dst`, taken on the way (one read of the disk instead of two).
pub fn compress(src: &Path, dst: &Path) -> Result<([u8; 32], [u8; 32])> {
    let input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let len = input.metadata()?.len();
    let tmp = temp_path(dst);
    let out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let out = Hashing::new(BufWriter::with_capacity(IO_BUF, out));
    let mut enc = zstd::stream::Encoder::new(out, ZSTD_LEVEL)?;
    enc.include_contentsize(true)?;
    enc.include_checksum(true)?;
    enc.set_pledged_src_size(Some(len))?;
    let mut input = Hashing::new(BufReader::with_capacity(IO_BUF, input));
    io::copy(&mut input, &mut enc)
        .with_context(|| format!("compressing {} into {}", src.display(), tmp.display()))?;
    let out = enc.finish()?;
    let zst_hash = out.digest();
    let file = out.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    rename_synced(&tmp, dst)?;
    Ok((input.digest(), zst_hash))
}

/// SHA-256 of a whole file, as bytes.
pub fn digest_of(path: &Path) -> Result<[u8; 32]> {
    kiln_contract::digest::sha256_file(path)
        .map(|(digest, _)| digest)
        .with_context(|| format!("reading {}", path.display()))
}

/// `SHA256SUMS` text: `<hex>  <name>` a line, as `sha256sum` prints it, in the given order.
pub fn render_sums(entries: &[(String, [u8; 32])]) -> String {
    entries
        .iter()
        .map(|(name, digest)| format!("{}  {name}\n", hex::encode(digest)))
        .collect()
}

/// Reads `SHA256SUMS` text (text `  ` or binary ` *` form) into name → digest.
pub fn parse_sums(text: &str, origin: &Path) -> Result<BTreeMap<String, [u8; 32]>> {
    let mut sums = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || {
            anyhow::anyhow!(
                "{} line {}: {line:?} is not `<64 hex digits>  <file name>`: rewrite it with `sha256sum`",
                origin.display(),
                i + 1
            )
        };
        let (digest, name) = line.split_once(' ').ok_or_else(bad)?;
        let name = name
            .strip_prefix(' ')
            .or_else(|| name.strip_prefix('*'))
            .ok_or_else(bad)?;
        sums.insert(name.to_owned(), hex::decode_digest(digest).ok_or_else(bad)?);
    }
    Ok(sums)
}

/// Writes `dir/SHA256SUMS` over those of [`SUMMED_FILES`] that exist in `dir`, hashing those
/// not in `known`; returns its bytes (what a signature covers).
pub fn write_sums(dir: &Path, known: &[(&str, [u8; 32])]) -> Result<Vec<u8>> {
    let mut entries = Vec::new();
    for name in SUMMED_FILES {
        let path = dir.join(name);
        if let Some((_, digest)) = known.iter().find(|(n, _)| *n == name) {
            entries.push((name.to_owned(), *digest));
        } else if path.exists() {
            entries.push((name.to_owned(), digest_of(&path)?));
        }
    }
    if entries.is_empty() {
        bail!(
            "{} holds none of {}: nothing to sum",
            dir.display(),
            SUMMED_FILES.join(", ")
        );
    }
    let text = render_sums(&entries);
    write_atomic(&dir.join(SUMS_FILE), text.as_bytes())?;
    Ok(text.into_bytes())
}

/// Writes a small file atomically: temporary file, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    rename_synced(&tmp, path)
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn rename_synced(tmp: &Path, dst: &Path) -> Result<()> {
    std::fs::rename(tmp, dst)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))?;
    if let Some(dir) = dst.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::testutil::Scratch;
    use std::process::Command;

    /// A sparse 40 MiB file with data scattered through it, like a disk image.
    fn sample_disk(path: &Path) {
        let f = File::create(path).unwrap();
        f.set_len(40 << 20).unwrap();
        for (i, at) in [0u64, 5 << 20, 39 << 20].into_iter().enumerate() {
            let data: Vec<u8> = (0..300_000u32).map(|x| (x * 7 + i as u32) as u8).collect();
            std::os::unix::fs::FileExt::write_all_at(&f, &data, at).unwrap();
        }
    }

    #[test]
    fn compression_is_deterministic_and_zstd_decompresses_it_to_the_input() {
        let dir = Scratch::new("release-zst");
        let disk = dir.path().join(DISK_FILE);
        sample_disk(&disk);
        let (a, b) = (dir.path().join("a.zst"), dir.path().join("b.zst"));
        let (disk_hash, zst_hash) = compress(&disk, &a).unwrap();
        assert_eq!(disk_hash, digest_of(&disk).unwrap());
        assert_eq!(zst_hash, digest_of(&a).unwrap());
        compress(&disk, &b).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(bytes, std::fs::read(&b).unwrap(), "two compressions differ");
        assert!(bytes.len() < 2 << 20, "{} bytes", bytes.len());
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&bytes).unwrap(),
            Some(40 << 20)
        );
        let zstd = kiln_image::testutil::require_tool("zstd", "zstd");
        let out = dir.path().join("out.raw");
        let st = Command::new(zstd)
            .args(["-q", "-d", "-f"])
            .arg(&a)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(digest_of(&out).unwrap(), digest_of(&disk).unwrap());
    }

    #[test]
    fn sums_are_in_sha256sum_format_and_sha256sum_checks_them() {
        let dir = Scratch::new("release-sums");
        let disk = dir.path().join(DISK_FILE);
        sample_disk(&disk);
        let (d, z) = compress(&disk, &dir.path().join(ZST_FILE)).unwrap();
        let text =
            String::from_utf8(write_sums(dir.path(), &[(DISK_FILE, d), (ZST_FILE, z)]).unwrap())
                .unwrap();
        let names: Vec<&str> = text.lines().map(|l| &l[66..]).collect();
        assert_eq!(names, [DISK_FILE, ZST_FILE]);
        let out = Command::new("sha256sum")
            .args(["-c", "--strict", SUMS_FILE])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let parsed = parse_sums(&text, Path::new(SUMS_FILE)).unwrap();
        assert_eq!(parsed[DISK_FILE], digest_of(&disk).unwrap());
        // And what sha256sum writes, we read (binary mode too).
        let theirs = Command::new("sha256sum")
            .args(["-b", DISK_FILE])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let theirs =
            parse_sums(&String::from_utf8(theirs.stdout).unwrap(), Path::new("x")).unwrap();
        assert_eq!(theirs[DISK_FILE], parsed[DISK_FILE]);
        let err = parse_sums("abc  disk.raw\n", Path::new("S")).unwrap_err();
        assert!(err.to_string().contains("S line 1"), "{err}");
    }
}
