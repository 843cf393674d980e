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
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_contract::digest::Hashing;
use kiln_contract::hex;
use sha2::Digest;

// The directory's file names (`chunks` makes the chunk list).
pub use kiln_contract::release::{
    CHUNKS_FILE, DISK_FILE, KEY_FILE, PAYLOAD_FILE, SIG_FILE, SUMS_FILE, ZST_FILE,
};
/// The files `SHA256SUMS` covers, in its order, when they exist.
pub const SUMMED_FILES: [&str; 4] = [DISK_FILE, CHUNKS_FILE, ZST_FILE, PAYLOAD_FILE];

/// zstd's default level: the disk is mostly zeros, which every level compresses to nothing;
/// higher levels cost minutes on the filesystems for a few percent.
const ZSTD_LEVEL: i32 = 3;
const IO_BUF: usize = 4 << 20;
/// Threads compressing chunks.
const COMPRESS_THREADS: usize = 2;
/// The first frame of `disk.raw.zst`: a skippable frame (every zstd decoder passes over it)
/// holding [`SIZE_TAG`] and the disk's size (u64 little-endian), so that `flash` knows the
/// size before it decompresses.
const SIZE_FRAME_MAGIC: u32 = 0x184D_2A5E;
const SIZE_TAG: &[u8; 8] = b"kilndisk";
/// The size frame's length: magic, frame size, tag, disk size.
const SIZE_FRAME_LEN: usize = 4 + 4 + 8 + 8;

/// Where compressed chunks are kept between builds (the build's stage cache), by the SHA-256
/// of the chunk they hold.
pub trait FrameCache: Sync {
    fn get(&self, chunk_sha256: &[u8; 32]) -> Option<Vec<u8>>;
    fn put(&self, chunk_sha256: &[u8; 32], frame: &[u8]);
}

/// No cache: every chunk is compressed.
#[cfg(test)]
pub struct NoFrameCache;

#[cfg(test)]
impl FrameCache for NoFrameCache {
    fn get(&self, _: &[u8; 32]) -> Option<Vec<u8>> {
        None
    }
    fn put(&self, _: &[u8; 32], _: &[u8]) {}
}

/// Compresses `src` into `dst`: a size frame ([`SIZE_FRAME_MAGIC`]), then one zstd frame per
/// chunk of `list` (the chunk list of `src`), each recording its content size and a checksum;
/// `zstd -d` gives back `src`. Frames are independent, so equal chunks compress once, chunks
/// compress on [`COMPRESS_THREADS`] threads, and a chunk whose frame is in `cache` is not
/// compressed again. Each frame depends only on its chunk, the level and the zstd library, so
/// the output does not depend on threads or cache. Written to a temporary file, synced, then
/// renamed. Returns the SHA-256 of `dst`.
pub fn compress(
    src: &Path,
    dst: &Path,
    list: &chunks::ChunkList,
    cache: &dyn FrameCache,
) -> Result<[u8; 32]> {
    let input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    if input.metadata()?.len() != list.size {
        bail!(
            "{} changed size since its chunks were hashed",
            src.display()
        );
    }
    // The first chunk of each content: the ones to compress or take from the cache.
    let mut firsts: BTreeMap<[u8; 32], usize> = BTreeMap::new();
    for (i, hash) in list.hashes.iter().enumerate() {
        firsts.entry(*hash).or_insert(i);
    }
    let mut frames: BTreeMap<[u8; 32], Vec<u8>> = BTreeMap::new();
    let mut todo = Vec::new();
    for (hash, i) in &firsts {
        match cache.get(hash) {
            Some(frame) => {
                frames.insert(*hash, frame);
            }
            None => todo.push((*hash, *i)),
        }
    }
    let compressed = crate::parallel::map(
        &todo,
        COMPRESS_THREADS,
        || -> Result<_> {
            let mut zstd = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
            zstd.include_checksum(true)?;
            zstd.include_contentsize(true)?;
            Ok((zstd, vec![0u8; list.chunk]))
        },
        |(zstd, buf), &(hash, i)| -> Result<([u8; 32], Vec<u8>)> {
            let offset = i as u64 * list.chunk as u64;
            let len = (list.size - offset).min(list.chunk as u64) as usize;
            let piece = &mut buf[..len];
            std::os::unix::fs::FileExt::read_exact_at(&input, piece, offset)?;
            if <[u8; 32]>::from(sha2::Sha256::digest(&*piece)) != hash {
                bail!(
                    "{} changed while it was compressed (chunk {i}): build it again",
                    src.display()
                );
            }
            let frame = zstd.compress(piece)?;
            cache.put(&hash, &frame);
            Ok((hash, frame))
        },
    )?;
    frames.extend(compressed);
    let tmp = temp_path(dst);
    let out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = Hashing::new(BufWriter::with_capacity(IO_BUF, out));
    out.write_all(&size_frame(list.size))?;
    for hash in &list.hashes {
        out.write_all(&frames[hash])
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    out.flush()?;
    let zst_hash = out.digest();
    let file = out.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    rename_synced(&tmp, dst)?;
    Ok(zst_hash)
}

/// What a chunk's frame depends on besides the chunk: the library, its level and the frame's
/// flags (the stage cache keys frames by it).
pub fn frame_recipe() -> String {
    format!(
        "zstd {} level {ZSTD_LEVEL} checksum contentsize",
        zstd::zstd_safe::version_string()
    )
}

fn size_frame(size: u64) -> [u8; SIZE_FRAME_LEN] {
    let mut f = [0u8; SIZE_FRAME_LEN];
    f[..4].copy_from_slice(&SIZE_FRAME_MAGIC.to_le_bytes());
    f[4..8].copy_from_slice(&16u32.to_le_bytes());
    f[8..16].copy_from_slice(SIZE_TAG);
    f[16..].copy_from_slice(&size.to_le_bytes());
    f
}

/// The disk size a `disk.raw.zst` records in its first bytes: the size frame the build writes,
/// or (a build before it, or `zstd` run by hand on a file) the content size of its only frame.
pub fn zst_disk_size(head: &[u8]) -> Option<u64> {
    if head.len() >= SIZE_FRAME_LEN
        && head[..4] == SIZE_FRAME_MAGIC.to_le_bytes()
        && head[4..8] == 16u32.to_le_bytes()
        && head[8..16] == SIZE_TAG[..]
    {
        return Some(u64::from_le_bytes(
            head[16..24].try_into().expect("8 bytes"),
        ));
    }
    zstd::zstd_safe::get_frame_content_size(head).ok().flatten()
}

/// [`compress`] without a cache, the chunk list made on the way (tests and their fixtures).
#[cfg(test)]
pub fn compress_plain(src: &Path, dst: &Path) -> Result<([u8; 32], [u8; 32])> {
    let list = chunks::ChunkList::of_file(src, chunks::CHUNK)?;
    let zst = compress(src, dst, &list, &NoFrameCache)?;
    Ok((digest_of(src)?, zst))
}

/// How many bytes [`zst_disk_size`] needs at most.
pub const ZST_HEAD_LEN: usize = SIZE_FRAME_LEN;

/// SHA-256 of a whole file, as bytes (its holes not read: [`chunks::sha256_sparse`]).
pub fn digest_of(path: &Path) -> Result<[u8; 32]> {
    chunks::sha256_sparse(path)
}

/// [`digest_of`] each of `paths`, a thread each, in their order.
pub fn digests_of(paths: &[PathBuf]) -> Result<Vec<[u8; 32]>> {
    crate::parallel::map(paths, paths.len(), || Ok(()), |_, p| digest_of(p))
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

    /// Remembers the frames it was given and counts the chunks it was asked for.
    #[derive(Default)]
    struct Recording {
        frames: std::sync::Mutex<BTreeMap<[u8; 32], Vec<u8>>>,
        asked: std::sync::atomic::AtomicUsize,
    }

    impl FrameCache for Recording {
        fn get(&self, chunk: &[u8; 32]) -> Option<Vec<u8>> {
            self.asked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.frames.lock().unwrap().get(chunk).cloned()
        }
        fn put(&self, chunk: &[u8; 32], frame: &[u8]) {
            self.frames.lock().unwrap().insert(*chunk, frame.to_vec());
        }
    }

    #[test]
    fn compression_is_deterministic_with_or_without_its_cache_and_zstd_decompresses_it() {
        let dir = Scratch::new("release-zst");
        let disk = dir.path().join(DISK_FILE);
        sample_disk(&disk);
        let list = chunks::ChunkList::of_file(&disk, 4 << 20).unwrap();
        let (a, b, c) = (
            dir.path().join("a.zst"),
            dir.path().join("b.zst"),
            dir.path().join("c.zst"),
        );
        let zst_hash = compress(&disk, &a, &list, &NoFrameCache).unwrap();
        assert_eq!(zst_hash, digest_of(&a).unwrap());
        let cache = Recording::default();
        compress(&disk, &b, &list, &cache).unwrap();
        // 10 chunks of 4 MiB, of which 3 hold data and 7 are zeros: 4 frames made.
        assert_eq!(cache.frames.lock().unwrap().len(), 4);
        compress(&disk, &c, &list, &cache).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(bytes, std::fs::read(&b).unwrap(), "two compressions differ");
        assert_eq!(
            bytes,
            std::fs::read(&c).unwrap(),
            "the cached frames differ"
        );
        assert!(bytes.len() < 2 << 20, "{} bytes", bytes.len());
        assert_eq!(zst_disk_size(&bytes[..ZST_HEAD_LEN]), Some(40 << 20));
        let zstd = kiln_image::testutil::require_tool("zstd", "zstd");
        for file in [&a, &c] {
            let out = dir.path().join("out.raw");
            let st = Command::new(&zstd)
                .args(["-q", "-d", "-f"])
                .arg(file)
                .arg("-o")
                .arg(&out)
                .status()
                .unwrap();
            assert!(st.success());
            assert_eq!(digest_of(&out).unwrap(), digest_of(&disk).unwrap());
        }
        // A file zstd made from the disk (one frame) tells its size too.
        let single = dir.path().join("single.zst");
        let st = Command::new(&zstd)
            .args(["-q", "-f"])
            .arg(&disk)
            .arg("-o")
            .arg(&single)
            .status()
            .unwrap();
        assert!(st.success());
        let head = std::fs::read(&single).unwrap();
        assert_eq!(zst_disk_size(&head[..ZST_HEAD_LEN]), Some(40 << 20));
    }

    #[test]
    fn sums_are_in_sha256sum_format_and_sha256sum_checks_them() {
        let dir = Scratch::new("release-sums");
        let disk = dir.path().join(DISK_FILE);
        sample_disk(&disk);
        let (d, z) = compress_plain(&disk, &dir.path().join(ZST_FILE)).unwrap();
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
