//! A map of a disk image by block: which blocks are all zero, and the SHA-256 of each other
//! one. It comes from the image's signed chunk list (`disk.raw.chunks`), or is built in the
//! pass that hashes the whole image against `SHA256SUMS`; it lets the later passes (the
//! write, the read-back) check every block without hashing the gigabytes of zeros again: zero
//! blocks by comparison, data blocks by the hash of that block alone.

use std::io::{self, Read};

use kiln_image::disk::read_full;
use sha2::{Digest, Sha256};

/// `None` for an all-zero block, else the block's SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMap {
    block: usize,
    blocks: Vec<Option<[u8; 32]>>,
}

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Whether every byte is zero (as memcmp against zeros: fast at any opt-level).
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

fn summary(block: &[u8]) -> Option<[u8; 32]> {
    if is_zero(block) {
        None
    } else {
        Some(Sha256::digest(block).into())
    }
}

impl BlockMap {
    /// An empty map of blocks of `block` bytes.
    pub fn new(block: usize) -> BlockMap {
        BlockMap {
            block,
            blocks: Vec::new(),
        }
    }

    /// The block size: the passes read whole blocks from block-aligned offsets.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Appends the blocks of `data`, which continues the image where the map ends.
    pub fn push(&mut self, data: &[u8]) {
        self.blocks.extend(data.chunks(self.block).map(summary));
    }

    /// Appends one block known by its summary (`None`: all zero).
    pub fn push_summary(&mut self, summary: Option<[u8; 32]>) {
        self.blocks.push(summary);
    }

    /// Checks `data`, which starts at the block-aligned byte `offset` of the image; returns the
    /// offset of the first block that differs.
    pub fn check(&self, offset: u64, data: &[u8]) -> Result<(), u64> {
        let first = (offset / self.block as u64) as usize;
        for (i, block) in data.chunks(self.block).enumerate() {
            let at = offset + (i * self.block) as u64;
            match self.blocks.get(first + i) {
                Some(expected) if *expected == summary(block) => {}
                _ => return Err(at),
            }
        }
        Ok(())
    }
}

/// Reads `reader` to its end: the SHA-256 of everything, the map by `block`, and the length.
pub fn scan(mut reader: impl Read, block: usize) -> io::Result<([u8; 32], BlockMap, u64)> {
    let mut hasher = Sha256::new();
    let mut map = BlockMap::new(block);
    let mut buf = vec![0u8; block];
    let mut len = 0u64;
    loop {
        let n = read_full(&mut reader, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        map.push(&buf[..n]);
        len += n as u64;
    }
    Ok((hasher.finalize().into(), map, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: usize = 1 << 20;

    #[test]
    fn a_changed_byte_in_a_zero_or_a_data_block_is_found_and_its_block_named() {
        let mut image = vec![0u8; 3 * BLOCK + 512];
        image[BLOCK + 7] = 1;
        image[3 * BLOCK + 100] = 2;
        let (hash, map, len) = scan(&image[..], BLOCK).unwrap();
        assert_eq!(len, image.len() as u64);
        assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(&image)));
        assert_eq!(map.check(0, &image), Ok(()));
        assert_eq!(map.check(BLOCK as u64, &image[BLOCK..]), Ok(()));
        let mut bad = image.clone();
        bad[2 * BLOCK + 9] = 3;
        assert_eq!(map.check(0, &bad), Err(2 * BLOCK as u64));
        bad[2 * BLOCK + 9] = 0;
        bad[BLOCK + 7] = 0;
        assert_eq!(map.check(BLOCK as u64, &bad[BLOCK..]), Err(BLOCK as u64));
        // Past the end of the map is a difference too.
        assert_eq!(
            map.check(4 * BLOCK as u64, &[0u8; 512]),
            Err(4 * BLOCK as u64)
        );
    }
}
