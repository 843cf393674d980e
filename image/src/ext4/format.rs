//! Encoders for ext4's on-disk structures (little-endian, checksummed with CRC32C): inodes,
//! extent tree nodes, directory blocks, extended attributes and the journal superblock.
//! Layout reference: the kernel's Documentation/filesystems/ext4/.

use super::crc::crc32c;
use super::layout::{BLOCK, INODE_SIZE};

pub(crate) fn put16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// `i_extra_isize`: the fixed part of the large inode after the first 128 bytes (up to
/// `i_projid`), as mke2fs sets it.
pub(crate) const EXTRA_ISIZE: u16 = 32;
/// Where in-inode extended attributes start: the magic, then entries.
const INLINE_XATTR_AT: usize = 128 + EXTRA_ISIZE as usize;
/// Bytes for in-inode entries, values and the end marker (after the 4-byte magic).
pub(crate) const INLINE_XATTR_SPACE: usize = INODE_SIZE as usize - INLINE_XATTR_AT - 4;
const XATTR_MAGIC: u32 = 0xEA02_0000;
const XATTR_BLOCK_HEADER: usize = 32;

pub(crate) const EXTENTS_FL: u32 = 0x80000;
pub(crate) const INDEX_FL: u32 = 0x1000;
pub(crate) const EXTENT_MAGIC: u16 = 0xF30A;
/// Extent entries in one tree block: (4096 - 12-byte header - 4-byte tail) / 12.
pub(crate) const EXTENTS_PER_BLOCK: usize = 340;
/// Extent entries in the inode's own i_block (60 bytes).
pub(crate) const EXTENTS_IN_INODE: usize = 4;
/// The longest initialized extent.
pub(crate) const MAX_EXTENT_LEN: u32 = 32768;

/// Directory entry file types.
pub(crate) mod ftype {
    pub const REG: u8 = 1;
    pub const DIR: u8 = 2;
    pub const CHR: u8 = 3;
    pub const BLK: u8 = 4;
    pub const FIFO: u8 = 5;
    pub const SOCK: u8 = 6;
    pub const LNK: u8 = 7;
}

/// Seed of an inode's own checksums: the filesystem seed chained with its number and
/// generation (always 0 here, for reproducible output).
pub(crate) fn inode_seed(fs_seed: u32, ino: u32) -> u32 {
    crc32c(crc32c(fs_seed, &ino.to_le_bytes()), &0u32.to_le_bytes())
}

/// Everything that goes into one inode.
pub(crate) struct InodeFields {
    /// File type and permission bits.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub time: i64,
    pub links: u16,
    /// 512-byte sectors used, data, tree and xattr blocks included.
    pub sectors: u64,
    pub flags: u32,
    pub i_block: [u8; 60],
    pub xattr_block: u64,
    /// In-inode extended attributes, already encoded (see [`encode_inline_xattrs`]).
    pub inline_xattrs: Option<Vec<u8>>,
}

/// Seconds in the 32-bit field, and the epoch bits of the `_extra` field for times outside
/// 1901..2038.
fn split_time(t: i64) -> (u32, u32) {
    let lo = t as i32;
    let epoch = ((t - lo as i64) >> 32) as u32 & 3;
    (lo as u32, epoch)
}

pub(crate) fn encode_inode(f: &InodeFields, ino: u32, fs_seed: u32) -> [u8; INODE_SIZE as usize] {
    let mut b = [0u8; INODE_SIZE as usize];
    let (t, t_extra) = split_time(f.time);
    put16(&mut b, 0x00, f.mode);
    put16(&mut b, 0x02, f.uid as u16);
    put32(&mut b, 0x04, f.size as u32);
    put32(&mut b, 0x08, t); // atime
    put32(&mut b, 0x0C, t); // ctime
    put32(&mut b, 0x10, t); // mtime
    put16(&mut b, 0x18, f.gid as u16);
    put16(&mut b, 0x1A, f.links);
    put32(&mut b, 0x1C, f.sectors as u32);
    put32(&mut b, 0x20, f.flags);
    b[0x28..0x64].copy_from_slice(&f.i_block);
    put32(&mut b, 0x68, f.xattr_block as u32);
    put32(&mut b, 0x6C, (f.size >> 32) as u32);
    put16(&mut b, 0x74, (f.sectors >> 32) as u16);
    put16(&mut b, 0x76, (f.xattr_block >> 32) as u16);
    put16(&mut b, 0x78, (f.uid >> 16) as u16);
    put16(&mut b, 0x7A, (f.gid >> 16) as u16);
    put16(&mut b, 0x80, EXTRA_ISIZE);
    for at in [0x84, 0x88, 0x8C, 0x94] {
        put32(&mut b, at, t_extra); // ctime, mtime, atime, crtime extra
    }
    put32(&mut b, 0x90, t); // crtime
    if let Some(x) = &f.inline_xattrs {
        b[INLINE_XATTR_AT..INLINE_XATTR_AT + x.len()].copy_from_slice(x);
    }
    let crc = crc32c(inode_seed(fs_seed, ino), &b);
    put16(&mut b, 0x7C, crc as u16);
    put16(&mut b, 0x82, (crc >> 16) as u16);
    b
}

/// One extent: `len` blocks from logical block `logical` stored at physical block `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    pub logical: u32,
    pub len: u32,
    pub start: u64,
}

fn extent_header(buf: &mut [u8], entries: usize, max: usize, depth: u16) {
    put16(buf, 0, EXTENT_MAGIC);
    put16(buf, 2, entries as u16);
    put16(buf, 4, max as u16);
    put16(buf, 6, depth);
}

fn leaf_entry(buf: &mut [u8], e: &Extent) {
    put32(buf, 0, e.logical);
    put16(buf, 4, e.len as u16);
    put16(buf, 6, (e.start >> 32) as u16);
    put32(buf, 8, e.start as u32);
}

fn index_entry(buf: &mut [u8], logical: u32, child: u64) {
    put32(buf, 0, logical);
    put32(buf, 4, child as u32);
    put16(buf, 8, (child >> 32) as u16);
}

/// A node of an extent tree: its first logical block and where it lives.
#[derive(Clone, Copy)]
pub(crate) struct TreeRef {
    pub logical: u32,
    pub block: u64,
}

/// The i_block of an inode whose extents all fit in it (at most 4).
pub(crate) fn inline_extents(extents: &[Extent]) -> [u8; 60] {
    let mut b = [0u8; 60];
    extent_header(&mut b, extents.len(), EXTENTS_IN_INODE, 0);
    for (i, e) in extents.iter().enumerate() {
        leaf_entry(&mut b[12 + 12 * i..], e);
    }
    b
}

/// The i_block of an inode whose tree root indexes `children` at `depth`.
pub(crate) fn inline_index(children: &[TreeRef], depth: u16) -> [u8; 60] {
    let mut b = [0u8; 60];
    extent_header(&mut b, children.len(), EXTENTS_IN_INODE, depth);
    for (i, c) in children.iter().enumerate() {
        index_entry(&mut b[12 + 12 * i..], c.logical, c.block);
    }
    b
}

/// A leaf block of an extent tree, with its checksum tail.
pub(crate) fn leaf_block(extents: &[Extent], seed: u32) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    extent_header(&mut b, extents.len(), EXTENTS_PER_BLOCK, 0);
    for (i, e) in extents.iter().enumerate() {
        leaf_entry(&mut b[12 + 12 * i..], e);
    }
    seal_tree_block(&mut b, seed);
    b
}

/// An index block of an extent tree at `depth` (>= 1), with its checksum tail.
pub(crate) fn index_block(children: &[TreeRef], depth: u16, seed: u32) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    extent_header(&mut b, children.len(), EXTENTS_PER_BLOCK, depth);
    for (i, c) in children.iter().enumerate() {
        index_entry(&mut b[12 + 12 * i..], c.logical, c.block);
    }
    seal_tree_block(&mut b, seed);
    b
}

fn seal_tree_block(b: &mut [u8], seed: u32) {
    let tail = 12 + 12 * EXTENTS_PER_BLOCK;
    let crc = crc32c(seed, &b[..tail]);
    put32(b, tail, crc);
}

/// One directory entry.
#[derive(Clone, Debug)]
pub(crate) struct DirEnt {
    pub name: Vec<u8>,
    pub ino: u32,
    pub ftype: u8,
}

/// Room for entries in a directory block: all but the 12-byte checksum tail.
const DIR_SPACE: usize = BLOCK as usize - 12;

pub(crate) fn rec_len(name_len: usize) -> usize {
    (8 + name_len).next_multiple_of(4)
}

/// Splits entries into directory blocks: returns the index of the first entry of each block.
pub(crate) fn pack_dir(entries: &[DirEnt]) -> Vec<usize> {
    let mut starts = vec![0];
    let mut used = 0;
    for (i, e) in entries.iter().enumerate() {
        let len = rec_len(e.name.len());
        if used + len > DIR_SPACE {
            starts.push(i);
            used = 0;
        }
        used += len;
    }
    starts
}

/// One directory block holding `entries` (possibly none), with its checksum tail.
pub(crate) fn dir_block(entries: &[DirEnt], seed: u32) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    let mut at = 0;
    for (i, e) in entries.iter().enumerate() {
        let len = if i + 1 == entries.len() {
            DIR_SPACE - at
        } else {
            rec_len(e.name.len())
        };
        put32(&mut b, at, e.ino);
        put16(&mut b, at + 4, len as u16);
        b[at + 6] = e.name.len() as u8;
        b[at + 7] = e.ftype;
        b[at + 8..at + 8 + e.name.len()].copy_from_slice(&e.name);
        at += len;
    }
    if entries.is_empty() {
        put16(&mut b, 4, DIR_SPACE as u16);
    }
    // The tail: a fake entry of inode 0, length 12, type 0xDE, then the checksum.
    put16(&mut b, DIR_SPACE + 4, 12);
    b[DIR_SPACE + 7] = 0xDE;
    let crc = crc32c(seed, &b[..DIR_SPACE]);
    put32(&mut b, DIR_SPACE + 8, crc);
    b
}

/// One extended attribute, split into ext4's name index and the rest of the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Xattr {
    pub index: u8,
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Splits a full attribute name into ext4's prefix index and suffix; `None` for prefixes ext4
/// stores differently (POSIX ACLs have their own binary format) or not at all.
pub(crate) fn xattr_index(full: &str) -> Option<(u8, &str)> {
    for (prefix, index) in [("user.", 1), ("trusted.", 4), ("security.", 6)] {
        if let Some(rest) = full.strip_prefix(prefix) {
            return (!rest.is_empty()).then_some((index, rest));
        }
    }
    None
}

fn entry_len(x: &Xattr) -> usize {
    (16 + x.name.len()).next_multiple_of(4)
}

fn value_len(x: &Xattr) -> usize {
    x.value.len().next_multiple_of(4)
}

/// Bytes the attributes take in entries, values and the 4-byte end marker.
pub(crate) fn xattrs_size(xs: &[Xattr]) -> usize {
    xs.iter()
        .map(|x| entry_len(x) + value_len(x))
        .sum::<usize>()
        + 4
}

/// The largest attribute set one xattr block holds.
pub(crate) const XATTR_BLOCK_SPACE: usize = BLOCK as usize - XATTR_BLOCK_HEADER;

/// The kernel's `ext4_xattr_hash_entry`: names hash bytewise (as signed chars, like x86
/// kernels before 6.2 did), values by little-endian 32-bit words.
fn entry_hash(x: &Xattr) -> u32 {
    let mut h: u32 = 0;
    for &c in &x.name {
        h = (h << 5) ^ (h >> 27) ^ (c as i8 as i32 as u32);
    }
    let mut padded = x.value.clone();
    padded.resize(value_len(x), 0);
    for w in padded.chunks_exact(4) {
        h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    }
    h
}

/// Writes entries from the start of `area` and values from its end; value offsets are
/// relative to `base` (the first entry in an inode, the block start in a block). Returns the
/// entry hashes.
fn lay_out_xattrs(area: &mut [u8], entries_at: usize, base: usize, xs: &[Xattr]) -> Vec<u32> {
    let mut at = entries_at;
    let mut value_end = area.len();
    let mut hashes = Vec::with_capacity(xs.len());
    for x in xs {
        value_end -= value_len(x);
        area[value_end..value_end + x.value.len()].copy_from_slice(&x.value);
        let hash = entry_hash(x);
        hashes.push(hash);
        area[at] = x.name.len() as u8;
        area[at + 1] = x.index;
        put16(area, at + 2, (value_end - base) as u16);
        put32(area, at + 8, x.value.len() as u32);
        put32(area, at + 12, hash);
        area[at + 16..at + 16 + x.name.len()].copy_from_slice(&x.name);
        at += entry_len(x);
    }
    hashes
}

/// The in-inode attribute area (magic included), for [`InodeFields::inline_xattrs`].
pub(crate) fn encode_inline_xattrs(xs: &[Xattr]) -> Vec<u8> {
    let mut area = vec![0u8; 4 + INLINE_XATTR_SPACE];
    put32(&mut area, 0, XATTR_MAGIC);
    lay_out_xattrs(&mut area, 4, 4, xs);
    area
}

/// An xattr block at physical block `block`, with its hash and checksum.
pub(crate) fn xattr_block(xs: &[Xattr], block: u64, fs_seed: u32) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    put32(&mut b, 0, XATTR_MAGIC);
    put32(&mut b, 4, 1); // refcount
    put32(&mut b, 8, 1); // blocks
    let hashes = lay_out_xattrs(&mut b, XATTR_BLOCK_HEADER, 0, xs);
    let mut h: u32 = 0;
    for e in hashes {
        h = (h << 16) ^ (h >> 16) ^ e;
    }
    put32(&mut b, 0x0C, h);
    let crc = crc32c(crc32c(fs_seed, &block.to_le_bytes()), &b);
    put32(&mut b, 0x10, crc);
    b
}

/// The superblock of an empty internal journal (jbd2 v2, big-endian).
pub(crate) fn journal_superblock(blocks: u32, uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    let mut be = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    be(0x00, 0xC03B_3998); // magic
    be(0x04, 4); // superblock v2
    be(0x0C, BLOCK as u32);
    be(0x10, blocks);
    be(0x14, 1); // first log block
    be(0x18, 1); // first expected sequence
    be(0x40, 1); // users
    b[0x30..0x40].copy_from_slice(uuid);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_blocks_fill_exactly_and_keep_the_tail() {
        let entries: Vec<DirEnt> = (0..500)
            .map(|i| DirEnt {
                name: format!("entry-{i:04}").into_bytes(),
                ino: 12 + i,
                ftype: ftype::REG,
            })
            .collect();
        let starts = pack_dir(&entries);
        assert!(starts.len() > 1);
        let b = dir_block(&entries[starts[0]..starts[1]], 0);
        // Walk the rec_lens: they must end exactly at the tail.
        let mut at = 0;
        while at < DIR_SPACE {
            at += u16::from_le_bytes([b[at + 4], b[at + 5]]) as usize;
        }
        assert_eq!(at, DIR_SPACE);
        assert_eq!(b[DIR_SPACE + 7], 0xDE);
    }

    #[test]
    fn times_after_2038_use_the_epoch_bits() {
        assert_eq!(split_time(1_700_000_000), (1_700_000_000, 0));
        let (lo, extra) = split_time(1 << 31);
        assert_eq!((lo, extra), (0x8000_0000, 1));
        assert_eq!(split_time(-1), (u32::MAX, 0));
    }
}
