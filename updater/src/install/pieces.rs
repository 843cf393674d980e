//! What the install wrote, for its read-back to compare: an xxh3-128 digest of each [`PIECE`]
//! bytes of the USR image, taken by the writer in the image's order, and the same read back
//! from the partition on several threads.
//!
//! The read-back has to prove that the disk gives back what was written; that the bytes written
//! are the signed image is proved before and while writing (the compressed part's SHA-256
//! against the signed manifest before the first write, each zstd frame's own checksum, and the
//! payload's maker checked the image's verity tree against its data before signing). Then the
//! tree read back is checked against the manifest's root hash (`verity::check_tree`), which
//! needs only the tree. Recomputing the tree over all the data instead (a SHA-256 of every
//! block) was most of an install under TCG: the guests' emulated CPU has no SHA instructions
//! and hashed 26 to 46 MiB/s, where it reads the slot at 80 to 108 MiB/s and xxh3 over those
//! reads kept 73 to 91 MiB/s (a probe in a guest, December 2026).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use xxhash_rust::xxh3::{xxh3_128, Xxh3};

/// Bytes per digest: the stream's frames are this long, so a piece is usually one write.
pub(super) const PIECE: u64 = 4 << 20;

/// The digests of the bytes added so far, a piece at a time, whatever the lengths added.
pub(super) struct Pieces {
    hasher: Xxh3,
    filled: u64,
    digests: Vec<u128>,
}

impl Pieces {
    pub(super) fn new() -> Self {
        Pieces {
            hasher: Xxh3::new(),
            filled: 0,
            digests: Vec::new(),
        }
    }

    pub(super) fn add(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = data.len().min((PIECE - self.filled) as usize);
            self.hasher.update(&data[..n]);
            self.filled += n as u64;
            data = &data[n..];
            if self.filled == PIECE {
                self.digests.push(self.hasher.digest128());
                self.hasher.reset();
                self.filled = 0;
            }
        }
    }

    /// Each piece's digest, the last one shorter if the bytes end inside it.
    pub(super) fn finish(mut self) -> Vec<u128> {
        if self.filled > 0 {
            self.digests.push(self.hasher.digest128());
        }
        self.digests
    }
}

/// A piece that read back otherwise than written: where it starts in the image, and its length.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Differs {
    pub offset: u64,
    pub len: u64,
}

/// Reads the first `len` bytes of the window from `start` back, one contiguous share of the
/// pieces per handle in `files` (one thread each), and compares each piece's digest with
/// `written`'s. Returns the first piece that differs. `progress` hears the bytes compared so
/// far, from the calling thread.
pub(super) fn compare(
    files: &[File],
    start: u64,
    len: u64,
    written: &[u128],
    progress: &mut dyn FnMut(u64),
) -> io::Result<Option<Differs>> {
    let count = len.div_ceil(PIECE);
    assert_eq!(
        written.len() as u64,
        count,
        "digests of {len} bytes (the caller checks the length written)"
    );
    // No handle would read nothing and find no difference.
    assert!(!files.is_empty(), "compare needs a handle to read with");
    let share = count.div_ceil(files.len() as u64);
    let done = AtomicU64::new(0);
    let results = std::thread::scope(|s| {
        let workers: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(i, file)| {
                let first = (i as u64 * share).min(count);
                let pieces = first..(first + share).min(count);
                let done = &done;
                s.spawn(move || -> io::Result<Option<Differs>> {
                    let mut buf = vec![0u8; PIECE as usize];
                    for k in pieces {
                        let offset = k * PIECE;
                        let n = PIECE.min(len - offset);
                        let piece = &mut buf[..n as usize];
                        file.read_exact_at(piece, start + offset)?;
                        if xxh3_128(piece) != written[k as usize] {
                            return Ok(Some(Differs { offset, len: n }));
                        }
                        done.fetch_add(n, Ordering::Relaxed);
                    }
                    Ok(None)
                })
            })
            .collect();
        while !workers.iter().all(|w| w.is_finished()) {
            progress(done.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(250));
        }
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Vec<_>>()
    });
    // The shares are in order: the first difference is in the first share that has one.
    for result in results {
        if let Some(d) = result? {
            return Ok(Some(d));
        }
    }
    progress(len);
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::testutil::pattern;

    #[test]
    fn the_digests_do_not_depend_on_how_the_bytes_were_cut() {
        let data = pattern(2 * PIECE as usize + 12_345, 1);
        let whole: Vec<u128> = data.chunks(PIECE as usize).map(xxh3_128).collect();
        assert_eq!(whole.len(), 3);
        for cut in [3, 4095, 4096, PIECE as usize - 1, PIECE as usize, 5 << 20] {
            let mut pieces = Pieces::new();
            for part in data.chunks(cut) {
                pieces.add(part);
            }
            assert_eq!(pieces.finish(), whole, "cut every {cut} bytes");
        }
        assert!(Pieces::new().finish().is_empty());
    }

    #[test]
    fn a_changed_byte_is_found_in_its_piece_by_any_number_of_readers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let start = 8192u64;
        let len = 3 * PIECE + 100;
        let data = pattern(len as usize, 2);
        let mut on_disk = vec![0xeeu8; start as usize];
        on_disk.extend_from_slice(&data);
        on_disk.extend_from_slice(&[0xee; 4096]);
        std::fs::write(&path, &on_disk).unwrap();
        let mut pieces = Pieces::new();
        pieces.add(&data);
        let written = pieces.finish();
        let files =
            |n: usize| -> Vec<File> { (0..n).map(|_| File::open(&path).unwrap()).collect() };
        for readers in 1..=3 {
            let mut last = 0;
            let got = compare(&files(readers), start, len, &written, &mut |d| last = d).unwrap();
            assert_eq!(got, None, "{readers} readers");
            assert_eq!(last, len, "{readers} readers");
        }
        // A byte of the third piece, then of the short last one.
        for (at, piece) in [(2 * PIECE + 7, 2), (3 * PIECE + 99, 3)] {
            let mut changed = on_disk.clone();
            changed[(start + at) as usize] ^= 0x10;
            std::fs::write(&path, &changed).unwrap();
            for readers in 1..=3 {
                let got = compare(&files(readers), start, len, &written, &mut |_| {}).unwrap();
                assert_eq!(
                    got,
                    Some(Differs {
                        offset: piece * PIECE,
                        len: PIECE.min(len - piece * PIECE)
                    }),
                    "{readers} readers, byte {at}"
                );
            }
        }
        // A partition shorter than the image: the read fails, it does not pass.
        std::fs::write(&path, &on_disk[..(start + len - 1) as usize]).unwrap();
        assert!(compare(&files(2), start, len, &written, &mut |_| {}).is_err());
    }
}
