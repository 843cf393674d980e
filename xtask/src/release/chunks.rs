//! `disk.raw.chunks`: the SHA-256 of every 16 MiB chunk of `disk.raw`, written by the build and
//! listed in `SHA256SUMS` (which is signed), so that `flash` can check the image before
//! writing without one SHA-256 over all of its 4.8 GiB, most of which are holes.
//!
//! Checking every chunk against a signed list is as strong as one whole-file SHA-256: the
//! list's own hash is signed, and it fixes the image's size and every byte of it (each chunk
//! by its SHA-256). What it saves: chunks that are holes in the file are known to read as
//! zeros without reading them, all-zero chunks are compared with the hash of a zero chunk
//! instead of hashed, and the chunks with data are hashed on two threads.
//!
//! The format is text, one item a line:
//!
//! ```text
//! kiln-chunks 1
//! size 5169479680
//! chunk 16777216
//! <SHA-256 of chunk 0, 64 lower-case hex digits>
//! ...
//! ```
//!
//! The last chunk may be shorter than `chunk` bytes; there are exactly `size / chunk` chunks,
//! rounded up.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::blockmap::{self, BlockMap};
use super::write_atomic;
use kiln_contract::hex;

/// The chunk size the build writes.
pub const CHUNK: usize = 16 << 20;
/// The first line, with the format's version.
const MAGIC_LINE: &str = "kiln-chunks 1";
/// Chunk sizes a list may have: powers of two in this range (the write passes read whole
/// chunks at a time).
const CHUNK_RANGE: std::ops::RangeInclusive<usize> = (1 << 20)..=(64 << 20);
/// Threads hashing chunks with data.
const THREADS: usize = 2;

/// The SHA-256 of each chunk of an image of `size` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkList {
    pub size: u64,
    pub chunk: usize,
    pub hashes: Vec<[u8; 32]>,
}

impl ChunkList {
    /// Hashes the file at `path` in chunks of `chunk` bytes (the build uses [`CHUNK`]).
    pub fn of_file(path: &Path, chunk: usize) -> Result<ChunkList> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let size = file
            .metadata()
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len();
        let hashes = hash_chunks(&file, size, chunk)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(ChunkList {
            size,
            chunk,
            hashes,
        })
    }

    /// Writes the list to `out` atomically; returns the list's SHA-256 (for `SHA256SUMS`).
    pub fn write_to(&self, out: &Path) -> Result<[u8; 32]> {
        let text = self.render();
        write_atomic(out, text.as_bytes())?;
        Ok(Sha256::digest(text.as_bytes()).into())
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut text = format!("{MAGIC_LINE}\nsize {}\nchunk {}\n", self.size, self.chunk);
        for h in &self.hashes {
            text += &hex::encode(h);
            text.push('\n');
        }
        text
    }

    /// Reads the file's text; `origin` names it in messages.
    pub fn parse(text: &str, origin: &Path) -> Result<ChunkList> {
        let bad = |what: String| {
            anyhow::anyhow!(
                "{} is not a chunk list this flash reads: {what}; rebuild the image with `cargo xtask build-image`",
                origin.display()
            )
        };
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC_LINE) {
            return Err(bad(format!("its first line is not {MAGIC_LINE:?}")));
        }
        let mut number = |key: &str| -> Result<u64> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
                .ok_or_else(|| bad(format!("no `{key} <number>` line")))
        };
        let size = number("size")?;
        let chunk = number("chunk")?;
        let chunk = usize::try_from(chunk)
            .ok()
            .filter(|c| c.is_power_of_two() && CHUNK_RANGE.contains(c))
            .ok_or_else(|| bad(format!("a chunk of {chunk} bytes")))?;
        let hashes = lines
            .enumerate()
            .map(|(i, l)| {
                hex::decode_digest(l).ok_or_else(|| bad(format!("line {} is {l:?}", i + 4)))
            })
            .collect::<Result<Vec<_>>>()?;
        if hashes.len() as u64 != size.div_ceil(chunk as u64) {
            return Err(bad(format!(
                "{} hashes for {size} bytes in chunks of {chunk}",
                hashes.len()
            )));
        }
        Ok(ChunkList {
            size,
            chunk,
            hashes,
        })
    }

    /// The list as a map for the write and read-back passes: a chunk whose hash is that of
    /// zeros is a zero block there.
    pub fn to_map(&self) -> BlockMap {
        let zero_full = zero_hash(self.chunk);
        let mut map = BlockMap::new(self.chunk);
        for (i, h) in self.hashes.iter().enumerate() {
            let len = self.chunk_len(i);
            let zero = if len == self.chunk {
                *h == zero_full
            } else {
                *h == zero_hash(len)
            };
            map.push_summary(if zero { None } else { Some(*h) });
        }
        map
    }

    fn chunk_len(&self, i: usize) -> usize {
        let start = i as u64 * self.chunk as u64;
        (self.size - start).min(self.chunk as u64) as usize
    }
}

/// Checks the image at `path` against `list` (every chunk, see the module comment) and
/// returns its map. Reads only what is not a hole; writes nothing.
pub fn check_image(path: &Path, list: &ChunkList, list_path: &Path) -> Result<BlockMap> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len();
    if size != list.size {
        bail!(
            "{} is {size} bytes but {} says {}: the image is corrupt or from another build; rebuild it or copy it again (nothing was written)",
            path.display(),
            list_path.display(),
            list.size
        );
    }
    let actual = hash_chunks(&file, size, list.chunk)
        .with_context(|| format!("reading {}", path.display()))?;
    if let Some(i) = actual.iter().zip(&list.hashes).position(|(a, e)| a != e) {
        bail!(
            "{} has SHA-256 {} in its chunk {i} (bytes {} to {}) but {} says {}: the image is corrupt or from another build; rebuild it or copy it again (nothing was written)",
            path.display(),
            hex::encode(&actual[i]),
            i as u64 * list.chunk as u64,
            i as u64 * list.chunk as u64 + list.chunk_len(i) as u64,
            list_path.display(),
            hex::encode(&list.hashes[i])
        );
    }
    Ok(list.to_map())
}

/// The SHA-256 of each `chunk`-sized piece of the first `size` bytes of `file`: holes by the
/// hash of zeros, without reading them; the rest read and hashed on [`THREADS`] threads.
fn hash_chunks(file: &File, size: u64, chunk: usize) -> io::Result<Vec<[u8; 32]>> {
    let count = size.div_ceil(chunk as u64) as usize;
    let len_of = |i: usize| (size - i as u64 * chunk as u64).min(chunk as u64) as usize;
    let zero_full = zero_hash(chunk);
    let zero_of = |i: usize| {
        let len = len_of(i);
        if len == chunk {
            zero_full
        } else {
            zero_hash(len)
        }
    };
    let mut hashes: Vec<[u8; 32]> = (0..count).map(zero_of).collect();
    let todo = chunks_with_data(&data_ranges(file, size)?, chunk as u64);
    let found = crate::parallel::map(
        &todo,
        THREADS,
        || Ok(vec![0u8; chunk]),
        |buf, &i| -> io::Result<[u8; 32]> {
            let piece = &mut buf[..len_of(i)];
            file.read_exact_at(piece, i as u64 * chunk as u64)?;
            Ok(if blockmap::is_zero(piece) {
                zero_of(i)
            } else {
                Sha256::digest(&*piece).into()
            })
        },
    )?;
    for (i, hash) in todo.into_iter().zip(found) {
        hashes[i] = hash;
    }
    Ok(hashes)
}

/// The SHA-256 of `len` zero bytes.
fn zero_hash(len: usize) -> [u8; 32] {
    let mut h = Sha256::new();
    hash_zeros(&mut h, len as u64);
    h.finalize().into()
}

/// Feeds `len` zero bytes to `hasher`.
fn hash_zeros(hasher: &mut Sha256, len: u64) {
    let zeros = [0u8; 64 << 10];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        hasher.update(&zeros[..n]);
        left -= n as u64;
    }
}

/// The indexes of the chunks that `ranges` touch, in order.
fn chunks_with_data(ranges: &[(u64, u64)], chunk: u64) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for &(start, end) in ranges {
        let first = (start / chunk) as usize;
        let last = ((end - 1) / chunk) as usize;
        for i in first..=last {
            if out.last() != Some(&i) {
                out.push(i);
            }
        }
    }
    out
}

/// The SHA-256 of a whole file whose holes are hashed as the zeros they read as, without
/// reading them: a just-written 4.8 GiB disk image of which 4.2 GiB are holes hashes in a third
/// of the time (the kernel need not fill page after page with zeros first).
pub fn sha256_sparse(path: &Path) -> Result<[u8; 32]> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    let ranges = data_ranges(&file, size).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    for (start, end) in ranges.into_iter().chain([(size, size)]) {
        hash_zeros(&mut hasher, start - pos);
        let mut at = start;
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], at)
                .with_context(|| format!("reading {}", path.display()))?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        pos = end;
    }
    Ok(hasher.finalize().into())
}

/// The byte ranges of the first `size` bytes of `file` that are not holes (`SEEK_DATA` and
/// `SEEK_HOLE`); all of it where the filesystem cannot tell.
fn data_ranges(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let seek = |pos: u64, whence| -> io::Result<Option<u64>> {
        // SAFETY: lseek on an open descriptor; it only moves the file position.
        let r = unsafe { libc::lseek(fd, pos as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = io::Error::last_os_error();
        // ENXIO: no data after `pos`.
        match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        }
    };
    let mut ranges = Vec::new();
    let mut pos = 0;
    while pos < size {
        let start = match seek(pos, libc::SEEK_DATA) {
            Ok(Some(start)) if start < size => start,
            Ok(_) => break,
            // A filesystem without the two whences: everything is data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(vec![(0, size)]),
            Err(e) => return Err(e),
        };
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        ranges.push((start, end));
        pos = end;
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::testutil::Scratch;

    /// A sparse file: data at the start, in the middle of chunk 2, written zeros in chunk 3,
    /// and a short last chunk with data at its end.
    fn sample(path: &Path) -> Vec<u8> {
        let size = 4 * CHUNK + 123 * 512;
        let f = File::create(path).unwrap();
        f.set_len(size as u64).unwrap();
        let mut image = vec![0u8; size];
        let data: Vec<u8> = (0..300_000u32).map(|x| (x * 13 + 1) as u8).collect();
        for (at, len) in [
            (0, data.len()),
            (2 * CHUNK + 5000, data.len()),
            (size - 9000, 9000),
        ] {
            f.write_all_at(&data[..len], at as u64).unwrap();
            image[at..at + len].copy_from_slice(&data[..len]);
        }
        f.write_all_at(&vec![0u8; 1 << 20], 3 * CHUNK as u64)
            .unwrap();
        image
    }

    #[test]
    fn the_sparse_sha256_is_the_files_sha256() {
        let dir = Scratch::new("sparse-sha");
        let path = dir.path().join("disk");
        sample(&path);
        let want = kiln_contract::digest::sha256_file(&path).unwrap().0;
        assert_eq!(sha256_sparse(&path).unwrap(), want);
        std::fs::write(&path, b"").unwrap();
        assert_eq!(
            sha256_sparse(&path).unwrap(),
            <[u8; 32]>::from(Sha256::digest(b""))
        );
    }

    #[test]
    fn the_list_holds_each_chunks_sha256_whatever_is_a_hole() {
        let dir = Scratch::new("chunks-list");
        let path = dir.path().join("disk.raw");
        let image = sample(&path);
        let list = ChunkList::of_file(&path, CHUNK).unwrap();
        let expected: Vec<[u8; 32]> = image
            .chunks(CHUNK)
            .map(|c| Sha256::digest(c).into())
            .collect();
        assert_eq!(list.hashes, expected);
        assert_eq!(list.size, image.len() as u64);
        let text = list.render();
        assert_eq!(ChunkList::parse(&text, Path::new("x")).unwrap(), list);
        // The same text `sha256sum` gives for each chunk cut out with `split`.
        let out =
            crate::flash::testutil::sh(std::process::Command::new("sh").arg("-c").arg(format!(
                "cd {} && split -b {CHUNK} -d -a 3 disk.raw part. && sha256sum part.* | cut -c1-64",
                dir.path().display()
            )));
        let theirs: Vec<&str> = out.lines().collect();
        let ours: Vec<&str> = text.lines().skip(3).collect();
        assert_eq!(ours, theirs);
        // The map: chunks 1 and 3 are zero, 0, 2 and 4 are not.
        let map = list.to_map();
        assert_eq!(map.check(0, &image), Ok(()));
        let mut changed = image.clone();
        changed[3 * CHUNK + 17] = 1;
        assert_eq!(map.check(0, &changed), Err(3 * CHUNK as u64));
    }

    #[test]
    fn a_changed_byte_in_a_data_a_zero_or_a_hole_chunk_or_another_size_is_refused() {
        let dir = Scratch::new("chunks-check");
        let path = dir.path().join("disk.raw");
        let image = sample(&path);
        let list = ChunkList::of_file(&path, CHUNK).unwrap();
        let list_path = Path::new("disk.raw.chunks");
        check_image(&path, &list, list_path).unwrap();
        let f = File::options().write(true).open(&path).unwrap();
        // Chunk 2 holds data, chunk 3 written zeros, chunk 1 a hole.
        for (chunk, at) in [(2, 2 * CHUNK + 7000), (3, 3 * CHUNK + 9), (1, CHUNK + 4096)] {
            f.write_all_at(&[image[at] ^ 0x10], at as u64).unwrap();
            let err = format!("{:#}", check_image(&path, &list, list_path).unwrap_err());
            assert!(
                err.contains(&format!("in its chunk {chunk} "))
                    && err.contains("nothing was written"),
                "{err}"
            );
            f.write_all_at(&[image[at]], at as u64).unwrap();
        }
        check_image(&path, &list, list_path).unwrap();
        f.set_len(image.len() as u64 + 512).unwrap();
        let err = format!("{:#}", check_image(&path, &list, list_path).unwrap_err());
        assert!(err.contains("bytes but disk.raw.chunks says"), "{err}");
    }

    #[test]
    fn malformed_lists_are_refused() {
        let list = ChunkList {
            size: 3 * CHUNK as u64 - 512,
            chunk: CHUNK,
            hashes: vec![[7; 32]; 3],
        };
        let text = list.render();
        let origin = Path::new("disk.raw.chunks");
        let refused = |t: &str| {
            let err = ChunkList::parse(t, origin).unwrap_err().to_string();
            assert!(err.contains("disk.raw.chunks is not a chunk list"), "{err}");
        };
        refused(&text.replace("kiln-chunks 1", "kiln-chunks 2"));
        refused(&text.replace(&format!("chunk {CHUNK}"), "chunk 1000"));
        refused(&text[..text.len() - 65]);
        refused(&format!("{text}{}\n", "0".repeat(64)));
        refused(&text.replacen("0707", "0x07", 1));
        refused(&text.replace("size ", "size  "));
    }
}
