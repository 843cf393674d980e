//! A pure-Rust ext4 writer: turns a [`Tree`] into a filesystem image without root, loop
//! devices or mkfs, for the read-only `/usr` (no journal) and the writable ROOT (journal).
//!
//! The image has 4 KiB blocks, 256-byte inodes, extents, 64bit, flex_bg (16 groups),
//! sparse_super, dir_nlink, extra_isize, huge_file, large_file, ext_attr, dir_index and
//! metadata_csum. Everything after the fixed metadata is allocated sequentially in inode
//! order, so files are contiguous and the output depends only on the tree and the options.
//! All-zero blocks of a file are holes, and so is every block nobody writes (inode tables
//! beyond the last inode, the journal): the output file is sparse. Directories of more than
//! one block are hashed (htree, one index level: up to 507 leaves, about 50,000 entries);
//! bigger ones stay linear, which is valid but slower to search.
//!
//! Inode numbers: root 2, journal 8, lost+found 11 (4 blocks, like mke2fs), then every entry
//! in tree order from 12; hard links share their target's inode.
//!
//! Online growth of ROOT: there is no resize_inode and no reserved GDT blocks. When the Linux
//! 6.1 kernel grows such a filesystem (EXT4_IOC_RESIZE_FS), `ext4_resize_fs` finds neither
//! resize_inode nor meta_bg and converts the filesystem to meta_bg itself
//! (`ext4_convert_meta_bg`), after which new descriptor blocks live in the new groups and growth
//! has no upper bound. Reserved GDT blocks would instead cap growth at 1024x, cost blocks in
//! every backup group, and need the resize inode's indirect-block map kept exactly as e2fsck
//! expects; mke2fs-made filesystems also take the meta_bg path once those run out, so it is the
//! same kernel code either way. resize2fs (offline) handles the layout too; the tests grow an
//! image 8x with it and check the result with e2fsck.

mod crc;
mod format;
mod htree;
mod layout;
mod plan;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io;

use crate::disk::read_full;
use std::os::unix::fs::FileExt;

use crate::tree::{Content, Tree, TreeError};
use crc::crc32c;
use format::{put16, put32, Extent, InodeFields, TreeRef};
use layout::{Allocator, Geometry, BLOCK, BLOCKS_PER_GROUP, DESC_SIZE, INODE_SIZE};
use plan::{Body, Node, Plan, XattrPlace};

/// How to make the filesystem.
#[derive(Clone, Debug)]
pub struct Ext4Options {
    /// Filesystem size, a multiple of 4096.
    pub size_bytes: u64,
    pub uuid: [u8; 16],
    /// `s_hash_seed`, for directories the kernel indexes later.
    pub hash_seed: [u8; 16],
    /// At most 16 bytes.
    pub label: String,
    /// An internal journal (inode 8), for the writable ROOT. A journaled filesystem also gets
    /// one inode per 16 KiB (mke2fs's ratio) for the files the system creates; without a
    /// journal the image is taken as read-only and gets just the inodes the tree needs.
    pub journal: bool,
    /// mkfs, mount, write and check times in the superblock (`SOURCE_DATE_EPOCH`).
    pub timestamp: i64,
}

/// What the written filesystem holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext4Stats {
    pub blocks_total: u64,
    pub blocks_used: u64,
    pub inodes_total: u32,
    pub inodes_used: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("the tree is not valid: {0}")]
    Tree(#[from] TreeError),
    #[error("filesystem size {size} bytes is not a positive multiple of 4096")]
    BadSize { size: u64 },
    #[error("label {label:?} is {len} bytes; an ext4 label holds at most 16")]
    BadLabel { label: String, len: usize },
    #[error("{path}: name is {len} bytes; ext4 names hold at most 255")]
    NameTooLong { path: String, len: usize },
    #[error("the tree does not fit: it needs {needed} bytes, the filesystem is {given} bytes (size it with ext4::required_bytes)")]
    TooSmall { needed: u64, given: u64 },
    #[error("{path}: symlink target of {len} bytes; ext4 holds 1 to 4095")]
    BadSymlink { path: String, len: usize },
    #[error("{path}: extended attribute {name:?} cannot be stored in ext4 (use a user., trusted. or security. name of at most 255 bytes)")]
    XattrName { path: String, name: String },
    #[error("{path}: extended attributes take {size} bytes; one ext4 xattr block holds 4064")]
    XattrTooBig { path: String, size: usize },
    #[error("{path}: {links} hard links; ext4 allows at most 65535")]
    TooManyLinks { path: String, links: u32 },
    #[error("{path}: file of {size} bytes is larger than ext4's 16 TiB limit")]
    FileTooBig { path: String, size: u64 },
    #[error("/lost+found in the tree must be a directory (ext4 keeps it for fsck)")]
    LostFoundNotDir,
    #[error("the tree has more inodes than ext4 can number")]
    TooManyInodes,
    #[error("the tree is too large for any ext4 filesystem this writer makes (4 KiB blocks)")]
    TreeTooLarge,
    #[error("reading {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error(
        "{path}: content changed size during the build: expected {expected} bytes, read {read}"
    )]
    ContentChanged {
        path: String,
        expected: u64,
        read: u64,
    },
    #[error("writing the ext4 image: {0}")]
    Write(#[source] io::Error),
}

/// The smallest `size_bytes` (a multiple of 4096) for which [`write`] succeeds with this tree.
/// Reads every file once to find its all-zero blocks.
pub fn required_bytes(tree: &Tree, journal: bool) -> Result<u64, Ext4Error> {
    let plan = plan::plan(tree)?;
    let runs = scan_all(&plan)?;
    // Blocks allocated beyond the fixed metadata, or None when it does not fit.
    let allocated = |blocks: u64| {
        Geometry::new(blocks, plan.inodes_used(), journal)
            .and_then(|geo| simulate(&plan, &geo, journal, &runs).map(|n| (n, geo)))
    };
    // A first size that fits: the content plus room for metadata, doubled until it does.
    let estimate = tree.content_bytes() / BLOCK + 2 * plan.nodes.len() as u64 + 20_000;
    let mut roomy = estimate + estimate / 4;
    let (used, geo) = loop {
        match allocated(roomy) {
            Some(found) => break found,
            None => roomy = roomy.checked_mul(2).ok_or(Ext4Error::TreeTooLarge)?,
        }
    };
    // The answer lies between the allocated blocks alone (no room for metadata) and those
    // plus the metadata of the roomy size (metadata grows with the size). Bisect between.
    // Fitting is monotonic in the size except at the journal-size steps, where this still
    // returns a size that fits.
    let fits = |blocks: u64| allocated(blocks).is_some();
    let metadata = geo.blocks - geo.free.iter().map(|r| r.1).sum::<u64>();
    // A smaller filesystem may get a smaller journal: leave the journal out of the bound.
    let mut lo = if journal {
        used - journal_blocks(geo.blocks)
    } else {
        used
    };
    let mut hi = (used + metadata).min(roomy);
    while !fits(hi) {
        lo = hi;
        hi = (hi + metadata.max(64)).min(roomy);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi * BLOCK)
}

/// Writes the filesystem at offset 0 of `out` and sets its length to `size_bytes`; blocks
/// never written stay holes.
pub fn write(tree: &Tree, opts: &Ext4Options, out: &File) -> Result<Ext4Stats, Ext4Error> {
    if opts.size_bytes == 0 || !opts.size_bytes.is_multiple_of(BLOCK) {
        return Err(Ext4Error::BadSize {
            size: opts.size_bytes,
        });
    }
    if opts.label.len() > 16 {
        return Err(Ext4Error::BadLabel {
            label: opts.label.clone(),
            len: opts.label.len(),
        });
    }
    let plan = plan::plan(tree)?;
    let too_small = || -> Ext4Error {
        match required_bytes(tree, opts.journal) {
            Ok(needed) => Ext4Error::TooSmall {
                needed,
                given: opts.size_bytes,
            },
            Err(e) => e,
        }
    };
    let geo = Geometry::new(opts.size_bytes / BLOCK, plan.inodes_used(), opts.journal)
        .ok_or_else(too_small)?;
    // Truncating first makes every block we do not write read back as zeros.
    out.set_len(0).map_err(Ext4Error::Write)?;
    out.set_len(opts.size_bytes).map_err(Ext4Error::Write)?;
    let fs_seed = crc32c(!0, &opts.uuid);
    let mut b = Builder::new(&geo, &plan, fs_seed, Some(BlockWriter::new(out)));
    b.timestamp = opts.timestamp;
    b.hash_seed = opts.hash_seed;
    match b.build(&plan, opts.journal.then_some(&opts.uuid), None) {
        Ok(()) => {}
        Err(Stop::Full) => return Err(too_small()),
        Err(Stop::Error(e)) => return Err(e),
    }
    b.finish(&plan, opts)
}

/// Outcome of building short of success: out of space (the caller computes how much was
/// needed), or a real error.
enum Stop {
    Full,
    Error(Ext4Error),
}

impl From<Ext4Error> for Stop {
    fn from(e: Ext4Error) -> Self {
        Stop::Error(e)
    }
}

fn write_err(e: io::Error) -> Stop {
    Stop::Error(Ext4Error::Write(e))
}

/// How many blocks the tree takes beyond the fixed metadata of `geo`, or `None` when it does
/// not fit; runs the allocator over the known non-zero blocks.
fn simulate(plan: &Plan, geo: &Geometry, journal: bool, runs: &[Vec<(u64, u64)>]) -> Option<u64> {
    let mut b = Builder::new(geo, plan, 0, None);
    let uuid = [0u8; 16];
    b.build(plan, journal.then_some(&uuid), Some(runs)).ok()?;
    Some(b.alloc.allocated)
}

/// Journal size by filesystem size, after mke2fs's table, capped at 64 MiB: ROOT starts small
/// and the journal does not grow with it, so a small ROOT gets the journal a 1-16 GiB one
/// would.
fn journal_blocks(fs_blocks: u64) -> u64 {
    match fs_blocks {
        0..=32767 => 1024,
        32768..=262143 => 4096,
        262144..=524287 => 8192,
        _ => 16384,
    }
}

/// Batches writes of consecutive blocks into one `pwrite`: allocation is sequential, so
/// small files, directories and tree blocks mostly follow each other.
struct BlockWriter<'f> {
    file: &'f File,
    start: u64,
    buf: Vec<u8>,
}

const WRITE_BATCH: usize = 8 << 20;

impl<'f> BlockWriter<'f> {
    fn new(file: &'f File) -> Self {
        BlockWriter {
            file,
            start: 0,
            buf: Vec::with_capacity(WRITE_BATCH),
        }
    }

    /// Queues `data` (at most one block, zero-padded) for block `block`.
    fn put(&mut self, block: u64, data: &[u8]) -> io::Result<()> {
        let next = self.start + (self.buf.len() as u64 / BLOCK);
        if self.buf.is_empty() || block != next || self.buf.len() >= WRITE_BATCH {
            self.flush()?;
            self.start = block;
        }
        self.buf.extend_from_slice(data);
        self.buf
            .resize(self.buf.len().next_multiple_of(BLOCK as usize), 0);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all_at(&self.buf, self.start * BLOCK)?;
            self.buf.clear();
        }
        Ok(())
    }
}

fn is_zero(block: &[u8]) -> bool {
    // Eight bytes at a time: the compiler turns this into vector compares.
    let words = block.chunks_exact(8);
    let tail = words.remainder();
    words.fold(0u64, |acc, w| {
        acc | u64::from_ne_bytes(w.try_into().expect("8 bytes"))
    }) == 0
        && tail.iter().all(|&b| b == 0)
}

const READ_CHUNK: usize = 1 << 20;

/// Calls `each(logical_block, bytes)` for every non-zero block of the content, in order, and
/// checks the content has the length the tree recorded.
fn for_each_data_block(
    node: &Node,
    content: &Content,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), Stop>,
) -> Result<(), Stop> {
    let path = || node.path.display();
    if content.len() > (1u64 << 32) * BLOCK {
        return Err(Ext4Error::FileTooBig {
            path: path(),
            size: content.len(),
        }
        .into());
    }
    let mut visit = |base: u64, data: &[u8]| -> Result<(), Stop> {
        for (i, block) in data.chunks(BLOCK as usize).enumerate() {
            if !is_zero(block) {
                each(base + i as u64, block)?;
            }
        }
        Ok(())
    };
    let read = match content {
        Content::Bytes(bytes) => {
            visit(0, bytes)?;
            bytes.len() as u64
        }
        Content::Host { .. } => {
            let read_err = |source| {
                Stop::Error(Ext4Error::Read {
                    path: path(),
                    source,
                })
            };
            let mut reader = content.open().map_err(read_err)?;
            buf.resize(READ_CHUNK, 0);
            let mut total = 0u64;
            loop {
                let n = read_full(&mut reader, buf).map_err(read_err)?;
                visit(total / BLOCK, &buf[..n])?;
                total += n as u64;
                if n < buf.len() || total > content.len() {
                    break;
                }
            }
            total
        }
    };
    if read != content.len() {
        return Err(Ext4Error::ContentChanged {
            path: path(),
            expected: content.len(),
            read,
        }
        .into());
    }
    Ok(())
}

/// The non-zero blocks of every file, as (first logical block, count) runs per node.
fn scan_all(plan: &Plan) -> Result<Vec<Vec<(u64, u64)>>, Ext4Error> {
    let mut buf = Vec::new();
    let mut all = Vec::with_capacity(plan.nodes.len());
    for node in &plan.nodes {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        if let Body::File(content) = &node.body {
            let r = for_each_data_block(node, content, &mut buf, |l, _| {
                match runs.last_mut() {
                    Some((s, n)) if *s + *n == l => *n += 1,
                    _ => runs.push((l, 1)),
                }
                Ok(())
            });
            match r {
                Ok(()) => {}
                Err(Stop::Error(e)) => return Err(e),
                Err(Stop::Full) => unreachable!("scanning allocates nothing"),
            }
        }
        all.push(runs);
    }
    Ok(all)
}

/// Collects extents from (logical, physical) pairs given in logical order.
#[derive(Default)]
struct Extents(Vec<Extent>);

impl Extents {
    fn push(&mut self, logical: u64, physical: u64) {
        if let Some(last) = self.0.last_mut() {
            if last.logical as u64 + last.len as u64 == logical
                && last.start + last.len as u64 == physical
                && last.len < format::MAX_EXTENT_LEN
            {
                last.len += 1;
                return;
            }
        }
        self.0.push(Extent {
            logical: logical as u32,
            len: 1,
            start: physical,
        });
    }
}

/// Allocates and writes everything but the fixed metadata, and keeps the inode table.
struct Builder<'g> {
    geo: &'g Geometry,
    alloc: Allocator<'g>,
    fs_seed: u32,
    /// Inodes 1..=used, 256 bytes each.
    inodes: Vec<u8>,
    out: Option<BlockWriter<'g>>,
    read_buf: Vec<u8>,
    dirs: Vec<u32>,
    journal_iblock: Option<[u8; 60]>,
    journal_size: u64,
    /// Times of the journal inode.
    timestamp: i64,
    /// `s_hash_seed`, for htree directories.
    hash_seed: [u8; 16],
}

impl<'g> Builder<'g> {
    fn new(geo: &'g Geometry, plan: &Plan, fs_seed: u32, out: Option<BlockWriter<'g>>) -> Self {
        let inodes = if out.is_some() {
            vec![0u8; plan.inodes_used() as usize * INODE_SIZE as usize]
        } else {
            Vec::new()
        };
        Builder {
            geo,
            alloc: Allocator::new(geo),
            fs_seed,
            inodes,
            out,
            read_buf: Vec::new(),
            dirs: Vec::new(),
            journal_iblock: None,
            journal_size: 0,
            timestamp: 0,
            hash_seed: [0; 16],
        }
    }

    fn block(&mut self) -> Result<u64, Stop> {
        self.alloc.next().ok_or(Stop::Full)
    }

    fn put(&mut self, block: u64, data: &[u8]) -> Result<(), Stop> {
        match &mut self.out {
            Some(w) => w.put(block, data).map_err(write_err),
            None => Ok(()),
        }
    }

    /// Allocates everything in a fixed order: root, journal, then inodes 11, 12, ...
    /// `runs` replaces reading the files when only checking whether the tree fits.
    fn build(
        &mut self,
        plan: &Plan,
        journal: Option<&[u8; 16]>,
        runs: Option<&[Vec<(u64, u64)>]>,
    ) -> Result<(), Stop> {
        self.node(&plan.root, None)?;
        if let Some(uuid) = journal {
            self.journal(uuid)?;
        }
        for (i, node) in plan.nodes.iter().enumerate() {
            self.node(node, runs.map(|r| r[i].as_slice()))?;
        }
        if let Some(w) = &mut self.out {
            w.flush().map_err(write_err)?;
        }
        Ok(())
    }

    fn journal(&mut self, uuid: &[u8; 16]) -> Result<(), Stop> {
        let blocks = journal_blocks(self.geo.blocks);
        let mut ext = Extents::default();
        for l in 0..blocks {
            let b = self.block()?;
            ext.push(l, b);
            if l == 0 {
                self.put(b, &format::journal_superblock(blocks as u32, uuid))?;
            }
        }
        let (i_block, tree) = self.extent_tree(plan::JOURNAL_INO, &ext.0)?;
        let fields = InodeFields {
            mode: 0o100600,
            uid: 0,
            gid: 0,
            size: blocks * BLOCK,
            time: self.timestamp,
            links: 1,
            sectors: (blocks + tree) * (BLOCK / 512),
            flags: format::EXTENTS_FL,
            i_block,
            xattr_block: 0,
            inline_xattrs: None,
        };
        self.journal_iblock = Some(i_block);
        self.journal_size = blocks * BLOCK;
        self.store_inode(plan::JOURNAL_INO, &fields);
        Ok(())
    }

    fn node(&mut self, node: &Node, runs: Option<&[(u64, u64)]>) -> Result<(), Stop> {
        let mut fields = InodeFields {
            mode: node.meta.mode & 0o7777,
            uid: node.meta.uid,
            gid: node.meta.gid,
            size: 0,
            time: node.meta.mtime,
            links: node.links as u16,
            sectors: 0,
            flags: 0,
            i_block: [0; 60],
            xattr_block: 0,
            inline_xattrs: None,
        };
        let mut blocks = 0u64;
        match &node.xattrs {
            XattrPlace::None => {}
            XattrPlace::Inline(xs) => fields.inline_xattrs = Some(format::encode_inline_xattrs(xs)),
            XattrPlace::Block(xs) => {
                let b = self.block()?;
                self.put(b, &format::xattr_block(xs, b, self.fs_seed))?;
                fields.xattr_block = b;
                blocks += 1;
            }
        }
        let seed = format::inode_seed(self.fs_seed, node.ino);
        match &node.body {
            Body::File(content) => {
                fields.mode |= 0o100000;
                fields.size = content.len();
                let ext = self.file_data(node, content, runs)?;
                blocks += self.with_extents(node.ino, &ext.0, &mut fields)?;
            }
            Body::Dir {
                entries,
                extra_blocks,
            } => {
                fields.mode |= 0o040000;
                let ext = self.dir_blocks(entries, *extra_blocks, seed, &mut fields)?;
                blocks += self.with_extents(node.ino, &ext.0, &mut fields)?;
                self.dirs.push(node.ino);
            }
            Body::Symlink(target) => {
                fields.mode |= 0o120000;
                fields.size = target.len() as u64;
                if target.len() <= plan::FAST_SYMLINK_MAX {
                    fields.i_block[..target.len()].copy_from_slice(target);
                } else {
                    let b = self.block()?;
                    self.put(b, target)?;
                    let ext = [Extent {
                        logical: 0,
                        len: 1,
                        start: b,
                    }];
                    blocks += self.with_extents(node.ino, &ext, &mut fields)?;
                }
            }
            Body::Device {
                block,
                major,
                minor,
            } => {
                fields.mode |= if *block { 0o060000 } else { 0o020000 };
                encode_device(&mut fields.i_block, *major, *minor);
            }
            Body::Fifo => fields.mode |= 0o010000,
            Body::Socket => fields.mode |= 0o140000,
        }
        fields.sectors = blocks * (BLOCK / 512);
        self.store_inode(node.ino, &fields);
        Ok(())
    }

    /// Allocates and writes a directory's blocks: one linear block, or an htree root and its
    /// leaves when it needs more (lost+found stays linear, with its spare blocks).
    fn dir_blocks(
        &mut self,
        entries: &[format::DirEnt],
        extra_blocks: u64,
        seed: u32,
        fields: &mut InodeFields,
    ) -> Result<Extents, Stop> {
        let leaves = if extra_blocks == 0 {
            htree::leaf_count(entries)
        } else {
            None
        };
        let starts = format::pack_dir(entries);
        let n = match leaves {
            Some(l) => 1 + l as u64,
            None => starts.len() as u64 + extra_blocks,
        };
        let contents: Vec<Vec<u8>> = match (&self.out, leaves) {
            (None, _) => Vec::new(),
            (Some(_), Some(l)) => htree::blocks(entries, l, &self.hash_seed, seed),
            (Some(_), None) => (0..n as usize)
                .map(|i| {
                    let slice = match (starts.get(i), starts.get(i + 1)) {
                        (Some(&s), Some(&e)) => &entries[s..e],
                        (Some(&s), None) => &entries[s..],
                        _ => &[],
                    };
                    format::dir_block(slice, seed)
                })
                .collect(),
        };
        let mut ext = Extents::default();
        for l in 0..n {
            let b = self.block()?;
            ext.push(l, b);
            if let Some(data) = contents.get(l as usize) {
                self.put(b, data)?;
            }
        }
        if leaves.is_some() {
            fields.flags |= format::INDEX_FL;
        }
        fields.size = n * BLOCK;
        Ok(ext)
    }

    /// Allocates and writes a file's non-zero blocks (or, when only checking the fit, just
    /// allocates the blocks in `runs`).
    fn file_data(
        &mut self,
        node: &Node,
        content: &Content,
        runs: Option<&[(u64, u64)]>,
    ) -> Result<Extents, Stop> {
        let mut ext = Extents::default();
        if let Some(runs) = runs {
            for &(start, len) in runs {
                for l in start..start + len {
                    let b = self.block()?;
                    ext.push(l, b);
                }
            }
            return Ok(ext);
        }
        let mut buf = std::mem::take(&mut self.read_buf);
        let r = for_each_data_block(node, content, &mut buf, |l, data| {
            let b = self.block()?;
            ext.push(l, b);
            self.put(b, data)
        });
        self.read_buf = buf;
        r.map(|()| ext)
    }

    /// Sets the extent flag and tree; returns the tree blocks plus the data blocks.
    fn with_extents(&mut self, ino: u32, ext: &[Extent], f: &mut InodeFields) -> Result<u64, Stop> {
        let (i_block, tree) = self.extent_tree(ino, ext)?;
        f.flags |= format::EXTENTS_FL;
        f.i_block = i_block;
        Ok(tree + ext.iter().map(|e| e.len as u64).sum::<u64>())
    }

    /// The i_block for these extents, writing tree blocks when more than 4; returns how many
    /// tree blocks it used.
    fn extent_tree(&mut self, ino: u32, ext: &[Extent]) -> Result<([u8; 60], u64), Stop> {
        if ext.len() <= format::EXTENTS_IN_INODE {
            return Ok((format::inline_extents(ext), 0));
        }
        let seed = format::inode_seed(self.fs_seed, ino);
        let mut used = 0;
        let mut level = Vec::with_capacity(ext.len().div_ceil(format::EXTENTS_PER_BLOCK));
        for chunk in ext.chunks(format::EXTENTS_PER_BLOCK) {
            let b = self.block()?;
            self.put(b, &format::leaf_block(chunk, seed))?;
            level.push(TreeRef {
                logical: chunk[0].logical,
                block: b,
            });
            used += 1;
        }
        let mut depth = 1u16;
        while level.len() > format::EXTENTS_IN_INODE {
            let mut upper = Vec::with_capacity(level.len().div_ceil(format::EXTENTS_PER_BLOCK));
            for chunk in level.chunks(format::EXTENTS_PER_BLOCK) {
                let b = self.block()?;
                self.put(b, &format::index_block(chunk, depth, seed))?;
                upper.push(TreeRef {
                    logical: chunk[0].logical,
                    block: b,
                });
                used += 1;
            }
            level = upper;
            depth += 1;
        }
        Ok((format::inline_index(&level, depth), used))
    }

    fn store_inode(&mut self, ino: u32, f: &InodeFields) {
        if self.out.is_none() {
            return;
        }
        let at = (ino as usize - 1) * INODE_SIZE as usize;
        let bytes = format::encode_inode(f, ino, self.fs_seed);
        self.inodes[at..at + INODE_SIZE as usize].copy_from_slice(&bytes);
    }

    /// Writes the fixed metadata: inode tables, bitmaps, descriptors, superblocks.
    fn finish(mut self, plan: &Plan, opts: &Ext4Options) -> Result<Ext4Stats, Ext4Error> {
        let geo = self.geo;
        let out = self
            .out
            .take()
            .expect("finish runs after a writing build")
            .file;
        let used_inodes = plan.inodes_used();
        let ipg = geo.inodes_per_group as u64;
        let mut block_used = vec![0u64; geo.groups as usize];
        let bitmaps = block_bitmaps(geo, &self.alloc.allocated_runs(), &mut block_used);
        let mut descs = vec![0u8; (geo.desc_blocks * BLOCK) as usize];
        let mut dirs_per_group = vec![0u32; geo.groups as usize];
        for &d in &self.dirs {
            dirs_per_group[((d as u64 - 1) / ipg) as usize] += 1;
        }
        let mut free_blocks_total = 0;
        for g in 0..geo.groups {
            let m = geo.meta[g as usize];
            let first_ino = g as u64 * ipg;
            let in_use = used_inodes.saturating_sub(first_ino).min(ipg);
            // Inode table: only the blocks holding inodes in use; the rest stays a hole.
            if in_use > 0 {
                let range =
                    (first_ino * INODE_SIZE) as usize..((first_ino + in_use) * INODE_SIZE) as usize;
                out.write_all_at(&self.inodes[range], m.inode_table * BLOCK)
                    .map_err(Ext4Error::Write)?;
            }
            let ibitmap = inode_bitmap(in_use, ipg);
            out.write_all_at(&ibitmap, m.inode_bitmap * BLOCK)
                .map_err(Ext4Error::Write)?;
            let bb = &bitmaps[g as usize];
            out.write_all_at(bb, m.block_bitmap * BLOCK)
                .map_err(Ext4Error::Write)?;
            let free_blocks = geo.group_len(g) - block_used[g as usize];
            free_blocks_total += free_blocks;
            let d = Desc {
                meta: m,
                free_blocks: free_blocks as u32,
                free_inodes: (ipg - in_use) as u32,
                dirs: dirs_per_group[g as usize],
                itable_unused: (ipg - in_use) as u32,
                block_csum: crc32c(self.fs_seed, bb),
                inode_csum: crc32c(self.fs_seed, &ibitmap[..(ipg / 8) as usize]),
            };
            let at = (g as u64 * DESC_SIZE) as usize;
            d.encode(&mut descs[at..at + DESC_SIZE as usize], g, self.fs_seed);
        }
        let counts = Counts {
            free_blocks: free_blocks_total,
            free_inodes: geo.inodes_total() - used_inodes,
        };
        for g in (0..geo.groups).filter(|&g| layout::has_super(g)) {
            let sb = self.superblock(opts, &counts, g);
            let start = geo.group_start(g) * BLOCK;
            let sb_at = if g == 0 { 1024 } else { 0 };
            out.write_all_at(&sb, start + sb_at)
                .map_err(Ext4Error::Write)?;
            out.write_all_at(&descs, start + BLOCK)
                .map_err(Ext4Error::Write)?;
        }
        Ok(Ext4Stats {
            blocks_total: geo.blocks,
            blocks_used: geo.blocks - free_blocks_total,
            inodes_total: geo.inodes_total() as u32,
            inodes_used: used_inodes as u32,
        })
    }

    fn superblock(&self, opts: &Ext4Options, counts: &Counts, group: u32) -> Vec<u8> {
        let geo = self.geo;
        let mut s = vec![0u8; 1024];
        let put64 = |s: &mut [u8], lo: usize, hi: usize, v: u64| {
            put32(s, lo, v as u32);
            put32(s, hi, (v >> 32) as u32);
        };
        put32(&mut s, 0x00, geo.inodes_total() as u32);
        put64(&mut s, 0x04, 0x150, geo.blocks);
        put64(&mut s, 0x0C, 0x158, counts.free_blocks);
        put32(&mut s, 0x10, counts.free_inodes as u32);
        put32(&mut s, 0x14, 0); // first data block
        put32(&mut s, 0x18, 2); // log2(block size) - 10
        put32(&mut s, 0x1C, 2); // log2(cluster size) - 10
        put32(&mut s, 0x20, BLOCKS_PER_GROUP as u32);
        put32(&mut s, 0x24, BLOCKS_PER_GROUP as u32);
        put32(&mut s, 0x28, geo.inodes_per_group);
        let (t, t_hi) = (opts.timestamp as u32, (opts.timestamp >> 32) as u8);
        for (at, hi_at) in [(0x2C, 0x275), (0x30, 0x274), (0x40, 0x277), (0x108, 0x276)] {
            put32(&mut s, at, t); // mount, write, last check, mkfs
            s[hi_at] = t_hi;
        }
        put16(&mut s, 0x36, 0xFFFF); // no mount-count checks
        put16(&mut s, 0x38, 0xEF53);
        put16(&mut s, 0x3A, 1); // clean
        put16(&mut s, 0x3C, 1); // errors: continue
        put32(&mut s, 0x4C, 1); // dynamic revision
        put32(&mut s, 0x54, plan::FIRST_INO);
        put16(&mut s, 0x58, INODE_SIZE as u16);
        put16(&mut s, 0x5A, group as u16);
        let journal = self.journal_iblock.is_some();
        // compat: ext_attr, dir_index (+ has_journal)
        put32(
            &mut s,
            0x5C,
            0x0008 | 0x0020 | if journal { 0x0004 } else { 0 },
        );
        // incompat: filetype, extents, 64bit, flex_bg
        put32(&mut s, 0x60, 0x0002 | 0x0040 | 0x0080 | 0x0200);
        // ro_compat: sparse_super, large_file, huge_file, dir_nlink, extra_isize, metadata_csum
        put32(
            &mut s,
            0x64,
            0x0001 | 0x0002 | 0x0008 | 0x0020 | 0x0040 | 0x0400,
        );
        s[0x68..0x78].copy_from_slice(&opts.uuid);
        s[0x78..0x78 + opts.label.len()].copy_from_slice(opts.label.as_bytes());
        if let Some(ib) = &self.journal_iblock {
            put32(&mut s, 0xE0, plan::JOURNAL_INO);
            s[0xFD] = 1; // s_jnl_blocks holds a copy of the journal inode's blocks
            s[0x10C..0x10C + 60].copy_from_slice(ib);
            put32(&mut s, 0x10C + 60, (self.journal_size >> 32) as u32);
            put32(&mut s, 0x10C + 64, self.journal_size as u32);
        }
        s[0xEC..0xFC].copy_from_slice(&opts.hash_seed);
        s[0xFC] = 1; // default hash: half_md4
        put16(&mut s, 0xFE, DESC_SIZE as u16);
        put32(&mut s, 0x100, 0x000C); // default mount options: user_xattr, acl
        put16(&mut s, 0x15C, format::EXTRA_ISIZE);
        put16(&mut s, 0x15E, format::EXTRA_ISIZE);
        put32(&mut s, 0x160, 0x0002); // directory hashes use unsigned chars
        s[0x174] = layout::LOG_GROUPS_PER_FLEX as u8;
        s[0x175] = 1; // checksum type: crc32c
        let crc = crc32c(!0, &s[..0x3FC]);
        put32(&mut s, 0x3FC, crc);
        s
    }
}

struct Counts {
    free_blocks: u64,
    free_inodes: u64,
}

/// One group descriptor's contents.
struct Desc {
    meta: layout::GroupMeta,
    free_blocks: u32,
    free_inodes: u32,
    dirs: u32,
    itable_unused: u32,
    block_csum: u32,
    inode_csum: u32,
}

impl Desc {
    fn encode(&self, d: &mut [u8], group: u32, fs_seed: u32) {
        let m = &self.meta;
        let split = |d: &mut [u8], lo: usize, hi: usize, v: u64| {
            put32(d, lo, v as u32);
            put32(d, hi, (v >> 32) as u32);
        };
        split(d, 0x00, 0x20, m.block_bitmap);
        split(d, 0x04, 0x24, m.inode_bitmap);
        split(d, 0x08, 0x28, m.inode_table);
        let split16 = |d: &mut [u8], lo: usize, hi: usize, v: u32| {
            put16(d, lo, v as u16);
            put16(d, hi, (v >> 16) as u16);
        };
        split16(d, 0x0C, 0x2C, self.free_blocks);
        split16(d, 0x0E, 0x2E, self.free_inodes);
        split16(d, 0x10, 0x30, self.dirs);
        put16(d, 0x12, 0x0004); // inode table zeroed: it is, or a hole
        split16(d, 0x18, 0x38, self.block_csum);
        split16(d, 0x1A, 0x3A, self.inode_csum);
        split16(d, 0x1C, 0x32, self.itable_unused);
        let crc = crc32c(crc32c(fs_seed, &group.to_le_bytes()), d);
        put16(d, 0x1E, crc as u16);
    }
}

/// Block bitmaps of all groups from the fixed metadata and the allocated runs; counts the
/// used blocks of each group. Bits past the end of a short last group are set, as ext4 wants.
fn block_bitmaps(geo: &Geometry, allocated: &[(u64, u64)], used: &mut [u64]) -> Vec<Vec<u8>> {
    let mut maps = vec![vec![0u8; BLOCK as usize]; geo.groups as usize];
    let mut mark = |start: u64, len: u64| {
        for b in start..start + len {
            let g = (b / BLOCKS_PER_GROUP) as usize;
            let i = (b % BLOCKS_PER_GROUP) as usize;
            maps[g][i / 8] |= 1 << (i % 8);
            used[g] += 1;
        }
    };
    for g in 0..geo.groups {
        if let Some((s, l)) = geo.super_region(g) {
            mark(s, l);
        }
    }
    for m in &geo.meta {
        mark(m.block_bitmap, 1);
        mark(m.inode_bitmap, 1);
        mark(m.inode_table, geo.inode_table_blocks());
    }
    for &(s, l) in allocated {
        mark(s, l);
    }
    let last = geo.groups - 1;
    for i in geo.group_len(last) as usize..BLOCKS_PER_GROUP as usize {
        maps[last as usize][i / 8] |= 1 << (i % 8);
    }
    maps
}

/// An inode bitmap with the first `in_use` inodes set and the padding past the group's inodes
/// set too.
fn inode_bitmap(in_use: u64, ipg: u64) -> Vec<u8> {
    let mut map = vec![0u8; BLOCK as usize];
    for i in (0..in_use).chain(ipg..BLOCK * 8) {
        map[(i / 8) as usize] |= 1 << (i % 8);
    }
    map
}

/// Device numbers as the kernel stores them: the old 8:8 form when both fit, else the new
/// 12:20 form in the second word.
fn encode_device(i_block: &mut [u8; 60], major: u32, minor: u32) {
    if major < 256 && minor < 256 {
        put32(i_block, 0, (major << 8) | minor);
    } else {
        put32(
            i_block,
            4,
            (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12),
        );
    }
}
