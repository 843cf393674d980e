//! dm-verity: the hash tree and superblock appended after a read-only filesystem, in the layout
//! `veritysetup format --hash-offset=<data size>` writes (format 1, SHA-256, 4096-byte data and
//! hash blocks), and the check the update agent runs after writing a slot.
//!
//! Layout from the hash offset on: one hash block holding the 512-byte superblock (the rest
//! zeros), then the tree levels, the top level (the one block the root hash covers) first.
//! Each digest is SHA-256(salt ‖ block); a level's digests are packed 128 to a block and the
//! last block is zero-padded. With a single data block there is no tree: the root hash is that
//! block's digest. Used on the device too, so this module needs nothing beyond std and `sha2`.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// The data and hash block size we write and accept.
pub const BLOCK_SIZE: u64 = 4096;
/// The largest salt the superblock can hold.
pub const MAX_SALT_LEN: usize = 256;
const DIGEST_LEN: usize = 32;
const HASHES_PER_BLOCK: u64 = BLOCK_SIZE / DIGEST_LEN as u64;
const SUPERBLOCK_LEN: usize = 512;
const SIGNATURE: &[u8; 8] = b"verity\0\0";
/// Data is read this much at a time: large reads keep the hashing, not the syscalls, the cost.
const READ_CHUNK: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("data size {data_bytes} is not a positive multiple of {BLOCK_SIZE} bytes: pad the filesystem image to whole blocks")]
    BadDataSize { data_bytes: u64 },
    #[error("salt of {len} bytes is longer than the {MAX_SALT_LEN} bytes the superblock holds")]
    SaltTooLong { len: usize },
    #[error("no verity superblock at byte {offset}: {reason} (is the hash offset right?)")]
    BadSuperblock { offset: u64, reason: String },
    #[error("verity superblock at byte {offset} uses {what}; only format 1, sha256 and 4096-byte blocks are supported")]
    Unsupported { offset: u64, what: String },
    #[error("hash tree level {level} block {block} (byte {offset} of the device) does not match the data: the data or the tree is corrupt")]
    TreeMismatch {
        level: usize,
        block: u64,
        offset: u64,
    },
}

impl VerityError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> VerityError {
        let context = context.into();
        move |source| VerityError::Io { context, source }
    }
}

/// What the caller chooses: the salt (≤ 256 bytes) and the UUID recorded in the superblock.
/// Both are inputs so that the same filesystem gives the same tree and root hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerityParams {
    pub salt: Vec<u8>,
    pub uuid: [u8; 16],
}

/// The result of [`append`] or [`verify`]: what the kernel needs to open the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerityInfo {
    pub root_hash: [u8; 32],
    pub data_blocks: u64,
    /// Byte offset of the superblock (the end of the data).
    pub hash_offset: u64,
    /// Bytes of superblock block plus tree.
    pub hash_bytes: u64,
    pub salt: Vec<u8>,
    pub uuid: [u8; 16],
}

impl VerityInfo {
    pub fn root_hash_hex(&self) -> String {
        kiln_contract::hex::encode(&self.root_hash)
    }

    /// The device-mapper table line for `dmsetup create`, with the hash tree on the same
    /// device after the data (see [`dm_target`]).
    pub fn dm_table(&self, data_dev: &str, hash_dev: &str) -> String {
        let (sectors, params) = dm_target(
            data_dev,
            hash_dev,
            self.data_blocks,
            self.hash_offset,
            &self.root_hash_hex(),
            &self.salt,
        );
        format!("0 {sectors} verity {params}")
    }
}

/// The `verity` target of a device-mapper table over devices that hold the data, then the
/// superblock at `hash_offset`, then the tree: its length in 512-byte sectors and its parameter
/// string. The parameters name the tree's first block, the block after the superblock (the
/// kernel never reads the superblock). Used by the image build and by the init's DM ioctl.
pub fn dm_target(
    data_dev: &str,
    hash_dev: &str,
    data_blocks: u64,
    hash_offset: u64,
    root_hash_hex: &str,
    salt: &[u8],
) -> (u64, String) {
    let salt = if salt.is_empty() {
        "-".to_string()
    } else {
        kiln_contract::hex::encode(salt)
    };
    let params = format!(
        "1 {data_dev} {hash_dev} {BLOCK_SIZE} {BLOCK_SIZE} {data_blocks} {start} sha256 {root_hash_hex} {salt}",
        start = hash_offset / BLOCK_SIZE + 1,
    );
    (data_blocks * (BLOCK_SIZE / 512), params)
}

/// The on-disk superblock (cryptsetup's `struct verity_sb`, little-endian, 512 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// 1 for the normal format (salt before the data), 0 for Chrome OS's.
    pub hash_type: u32,
    pub uuid: [u8; 16],
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

impl Superblock {
    fn new(data_blocks: u64, params: &VerityParams) -> Self {
        Superblock {
            hash_type: 1,
            uuid: params.uuid,
            algorithm: "sha256".into(),
            data_block_size: BLOCK_SIZE as u32,
            hash_block_size: BLOCK_SIZE as u32,
            data_blocks,
            salt: params.salt.clone(),
        }
    }

    /// Field offsets: signature 0, version 8, hash_type 12, uuid 16, algorithm 32 (32 bytes),
    /// data_block_size 64, hash_block_size 68, data_blocks 72, salt_size 80, salt 88 (256 bytes).
    pub fn encode(&self) -> [u8; SUPERBLOCK_LEN] {
        let mut b = [0u8; SUPERBLOCK_LEN];
        b[0..8].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[12..16].copy_from_slice(&self.hash_type.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        let alg = self.algorithm.as_bytes();
        let alg_len = alg.len().min(31);
        b[32..32 + alg_len].copy_from_slice(&alg[..alg_len]);
        b[64..68].copy_from_slice(&self.data_block_size.to_le_bytes());
        b[68..72].copy_from_slice(&self.hash_block_size.to_le_bytes());
        b[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        let salt_len = self.salt.len().min(MAX_SALT_LEN);
        b[80..82].copy_from_slice(&(salt_len as u16).to_le_bytes());
        b[88..88 + salt_len].copy_from_slice(&self.salt[..salt_len]);
        b
    }

    /// Parses a superblock; `offset` is only for messages.
    pub fn decode(b: &[u8; SUPERBLOCK_LEN], offset: u64) -> Result<Self, VerityError> {
        let bad = |reason: String| VerityError::BadSuperblock { offset, reason };
        if &b[0..8] != SIGNATURE {
            return Err(bad(format!(
                "signature is {:?}",
                String::from_utf8_lossy(&b[0..8])
            )));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let version = u32_at(8);
        if version != 1 {
            return Err(bad(format!("superblock version {version}, expected 1")));
        }
        let salt_len = u16::from_le_bytes([b[80], b[81]]) as usize;
        if salt_len > MAX_SALT_LEN {
            return Err(bad(format!("salt size {salt_len} > {MAX_SALT_LEN}")));
        }
        let alg_end = b[32..64].iter().position(|&c| c == 0).unwrap_or(32);
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let mut data_blocks = [0u8; 8];
        data_blocks.copy_from_slice(&b[72..80]);
        Ok(Superblock {
            hash_type: u32_at(12),
            uuid,
            algorithm: String::from_utf8_lossy(&b[32..32 + alg_end]).into_owned(),
            data_block_size: u32_at(64),
            hash_block_size: u32_at(68),
            data_blocks: u64::from_le_bytes(data_blocks),
            salt: b[88..88 + salt_len].to_vec(),
        })
    }

    /// Refuses what we cannot compute (other formats, algorithms or block sizes).
    fn check_supported(&self, offset: u64) -> Result<(), VerityError> {
        let unsupported = |what: String| Err(VerityError::Unsupported { offset, what });
        if self.hash_type != 1 {
            return unsupported(format!("hash type {}", self.hash_type));
        }
        if self.algorithm != "sha256" {
            return unsupported(format!("algorithm {:?}", self.algorithm));
        }
        if u64::from(self.data_block_size) != BLOCK_SIZE
            || u64::from(self.hash_block_size) != BLOCK_SIZE
        {
            return unsupported(format!(
                "{}-byte data and {}-byte hash blocks",
                self.data_block_size, self.hash_block_size
            ));
        }
        if self.data_blocks == 0 {
            return Err(VerityError::BadSuperblock {
                offset,
                reason: "it covers 0 data blocks".into(),
            });
        }
        Ok(())
    }
}

/// Reads and checks the superblock at `hash_offset` of `dev`.
pub fn read_superblock(
    dev: &mut (impl Read + Seek),
    hash_offset: u64,
) -> Result<Superblock, VerityError> {
    let mut b = [0u8; SUPERBLOCK_LEN];
    dev.seek(SeekFrom::Start(hash_offset))
        .and_then(|_| dev.read_exact(&mut b))
        .map_err(VerityError::io(format!(
            "reading the verity superblock at byte {hash_offset}"
        )))?;
    let sb = Superblock::decode(&b, hash_offset)?;
    sb.check_supported(hash_offset)?;
    Ok(sb)
}

/// Hashes `file[0..data_bytes]` (`data_bytes` a multiple of 4096) and writes the superblock
/// and tree at `data_bytes`. A regular file shorter than `data_bytes` is extended with a hole:
/// holes read as zeros, as they would on the device.
pub fn append(
    file: &File,
    data_bytes: u64,
    params: &VerityParams,
) -> Result<VerityInfo, VerityError> {
    let data_blocks = data_blocks_of(data_bytes)?;
    if params.salt.len() > MAX_SALT_LEN {
        return Err(VerityError::SaltTooLong {
            len: params.salt.len(),
        });
    }
    let meta = file
        .metadata()
        .map_err(VerityError::io("reading the image's size"))?;
    if meta.is_file() && meta.len() < data_bytes {
        file.set_len(data_bytes).map_err(VerityError::io(format!(
            "extending the image to {data_bytes} bytes"
        )))?;
    }
    let mut reader = file;
    let tree = Tree::compute(&mut reader, data_blocks, &params.salt)?;
    let sb = Superblock::new(data_blocks, params);
    let mut writer = file;
    tree.write(&mut writer, data_bytes, &sb)?;
    Ok(tree.info(data_bytes, &sb))
}

/// Reads the superblock at `hash_offset` of `dev`, recomputes the tree from the data and checks
/// it against the stored tree. The caller compares the returned root hash with the one it
/// trusts (the kernel command line, the signed manifest): the superblock does not hold it.
pub fn verify(dev: &mut (impl Read + Seek), hash_offset: u64) -> Result<VerityInfo, VerityError> {
    let sb = data_superblock(dev, hash_offset)?;
    let tree = Tree::compute(dev, sb.data_blocks, &sb.salt)?;
    tree.check_stored(dev, hash_offset)?;
    Ok(tree.info(hash_offset, &sb))
}

/// Checks the tree stored at `hash_offset` of `dev` without reading the data: each level above
/// the lowest must be the digests of the level below, and the root hash returned is the stored
/// top level's (with a single data block, which has no tree, that block's digest). For a caller
/// that knows the data and the lowest level are the bytes the tree was made from (the update
/// agent, which compares what it reads back with what it wrote); [`verify`] reads the data too.
pub fn check_tree(
    dev: &mut (impl Read + Seek),
    hash_offset: u64,
) -> Result<VerityInfo, VerityError> {
    let sb = data_superblock(dev, hash_offset)?;
    let hasher = BlockHasher::new(&sb.salt);
    let sizes = level_sizes(sb.data_blocks);
    let lowest = match sizes.first() {
        None => hasher.hash_data(dev, sb.data_blocks)?,
        Some(&blocks) => {
            // On disk the top level comes first, the lowest last.
            let above: u64 = sizes[1..].iter().sum();
            let at = hash_offset + BLOCK_SIZE + above * BLOCK_SIZE;
            let mut level = vec![0u8; (blocks * BLOCK_SIZE) as usize];
            dev.seek(SeekFrom::Start(at))
                .and_then(|_| dev.read_exact(&mut level))
                .map_err(VerityError::io(format!(
                    "reading the hash tree's lowest level at byte {at}"
                )))?;
            level
        }
    };
    let tree = Tree::from_digests(&hasher, lowest, sb.data_blocks);
    tree.check_stored(dev, hash_offset)?;
    Ok(tree.info(hash_offset, &sb))
}

/// The superblock at `hash_offset`, if its data ends before it.
fn data_superblock(
    dev: &mut (impl Read + Seek),
    hash_offset: u64,
) -> Result<Superblock, VerityError> {
    let sb = read_superblock(dev, hash_offset)?;
    let data_end = sb.data_blocks.checked_mul(BLOCK_SIZE);
    if data_end.is_none_or(|end| end > hash_offset) {
        return Err(VerityError::BadSuperblock {
            offset: hash_offset,
            reason: format!("its {} data blocks overlap the hash area", sb.data_blocks),
        });
    }
    Ok(sb)
}

fn data_blocks_of(data_bytes: u64) -> Result<u64, VerityError> {
    if data_bytes == 0 || !data_bytes.is_multiple_of(BLOCK_SIZE) {
        return Err(VerityError::BadDataSize { data_bytes });
    }
    Ok(data_bytes / BLOCK_SIZE)
}

/// Number of hash blocks in each level, level 0 (hashing the data) first — cryptsetup's and
/// the kernel's rule: as many levels as needed for the top one to fit one block, and none at
/// all for a single data block.
fn level_sizes(data_blocks: u64) -> Vec<u64> {
    let bits = HASHES_PER_BLOCK.trailing_zeros();
    let mut levels = 0;
    while bits * levels < 64 && (data_blocks - 1) >> (bits * levels) != 0 {
        levels += 1;
    }
    (0..levels)
        .map(|i| {
            let shift = bits * (i + 1);
            if shift >= 64 {
                1
            } else {
                data_blocks.div_ceil(1u64 << shift)
            }
        })
        .collect()
}

/// A computed hash tree: each level's bytes (zero-padded to whole blocks), level 0 first.
struct Tree {
    levels: Vec<Vec<u8>>,
    root: [u8; 32],
    data_blocks: u64,
}

impl Tree {
    fn compute(
        dev: &mut (impl Read + Seek),
        data_blocks: u64,
        salt: &[u8],
    ) -> Result<Tree, VerityError> {
        let hasher = BlockHasher::new(salt);
        let digests = hasher.hash_data(dev, data_blocks)?;
        Ok(Tree::from_digests(&hasher, digests, data_blocks))
    }

    /// The tree above `digests`, the data blocks' own (level 0's content).
    fn from_digests(hasher: &BlockHasher, mut digests: Vec<u8>, data_blocks: u64) -> Tree {
        let mut levels = Vec::new();
        for blocks in level_sizes(data_blocks) {
            digests.resize((blocks * BLOCK_SIZE) as usize, 0);
            let next = hasher.hash_blocks(&digests);
            levels.push(std::mem::replace(&mut digests, next));
        }
        // What is left is one digest: of the top block, or of the only data block.
        let mut root = [0u8; 32];
        root.copy_from_slice(&digests[..DIGEST_LEN]);
        Tree {
            levels,
            root,
            data_blocks,
        }
    }

    fn tree_bytes(&self) -> u64 {
        self.levels.iter().map(|l| l.len() as u64).sum()
    }

    fn info(&self, hash_offset: u64, sb: &Superblock) -> VerityInfo {
        VerityInfo {
            root_hash: self.root,
            data_blocks: self.data_blocks,
            hash_offset,
            hash_bytes: BLOCK_SIZE + self.tree_bytes(),
            salt: sb.salt.clone(),
            uuid: sb.uuid,
        }
    }

    /// Superblock block, then the levels top first.
    fn write(
        &self,
        out: &mut (impl Write + Seek),
        at: u64,
        sb: &Superblock,
    ) -> Result<(), VerityError> {
        let mut first = vec![0u8; BLOCK_SIZE as usize];
        first[..SUPERBLOCK_LEN].copy_from_slice(&sb.encode());
        let context = || format!("writing the verity hash area at byte {at}");
        out.seek(SeekFrom::Start(at))
            .and_then(|_| out.write_all(&first))
            .map_err(VerityError::io(context()))?;
        for level in self.levels.iter().rev() {
            out.write_all(level).map_err(VerityError::io(context()))?;
        }
        out.flush().map_err(VerityError::io(context()))
    }

    /// Compares the stored tree with ours, level 0 first so that a mismatch names the lowest
    /// level that differs (the one that locates the corrupt data).
    fn check_stored(
        &self,
        dev: &mut (impl Read + Seek),
        hash_offset: u64,
    ) -> Result<(), VerityError> {
        let tree_start = hash_offset + BLOCK_SIZE;
        let mut stored = vec![0u8; self.tree_bytes() as usize];
        dev.seek(SeekFrom::Start(tree_start))
            .and_then(|_| dev.read_exact(&mut stored))
            .map_err(VerityError::io(format!(
                "reading the {}-byte hash tree at byte {tree_start}",
                stored.len()
            )))?;
        // On disk the top level comes first: level i starts after all the levels above it.
        let mut level_end = stored.len();
        for (level, ours) in self.levels.iter().enumerate() {
            let level_start = level_end - ours.len();
            if let Some(block) = first_differing_block(ours, &stored[level_start..level_end]) {
                return Err(VerityError::TreeMismatch {
                    level,
                    block,
                    offset: tree_start + level_start as u64 + block * BLOCK_SIZE,
                });
            }
            level_end = level_start;
        }
        Ok(())
    }
}

fn first_differing_block(a: &[u8], b: &[u8]) -> Option<u64> {
    a.chunks(BLOCK_SIZE as usize)
        .zip(b.chunks(BLOCK_SIZE as usize))
        .position(|(x, y)| x != y)
        .map(|i| i as u64)
}

/// SHA-256(salt ‖ block) for many blocks. `sha2` picks SHA-NI or AVX2 at run time, which is
/// what keeps this at the speed of veritysetup's OpenSSL.
struct BlockHasher {
    salted: Sha256,
    zero_digest: [u8; 32],
}

impl BlockHasher {
    fn new(salt: &[u8]) -> Self {
        let salted = Sha256::new_with_prefix(salt);
        let zero_digest = salted
            .clone()
            .chain_update([0u8; BLOCK_SIZE as usize])
            .finalize()
            .into();
        BlockHasher {
            salted,
            zero_digest,
        }
    }

    /// Unused filesystem space is zeros; recognising it costs far less than hashing it.
    fn digest(&self, block: &[u8]) -> [u8; 32] {
        if is_zero(block) {
            return self.zero_digest;
        }
        self.salted.clone().chain_update(block).finalize().into()
    }

    fn hash_blocks(&self, blocks: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(blocks.len() / HASHES_PER_BLOCK as usize);
        for block in blocks.chunks_exact(BLOCK_SIZE as usize) {
            out.extend_from_slice(&self.digest(block));
        }
        out
    }

    /// Digests of the first `data_blocks` blocks of `dev`, read in large chunks.
    fn hash_data(
        &self,
        dev: &mut (impl Read + Seek),
        data_blocks: u64,
    ) -> Result<Vec<u8>, VerityError> {
        let end = data_blocks * BLOCK_SIZE;
        let mut out = Vec::with_capacity((data_blocks as usize).saturating_mul(DIGEST_LEN));
        let mut buf = vec![0u8; READ_CHUNK.min(end as usize)];
        dev.seek(SeekFrom::Start(0))
            .map_err(VerityError::io("seeking to the data's first byte"))?;
        let mut at = 0;
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            dev.read_exact(&mut buf[..n])
                .map_err(VerityError::io(format!(
                    "reading data at byte {at} (the device is shorter than the superblock says?)"
                )))?;
            out.extend_from_slice(&self.hash_blocks(&buf[..n]));
            at += n as u64;
        }
        Ok(out)
    }
}

/// Whether every byte is zero; OR-ing 64-byte chunks lets the compiler vectorise it.
fn is_zero(block: &[u8]) -> bool {
    block
        .chunks(64)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::require_tool;
    use std::path::Path;
    use std::process::Command;

    const UUID: [u8; 16] = [
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef, 0x80, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
        0x07,
    ];
    const UUID_TEXT: &str = "12345678-9abc-4def-8001-020304050607";

    fn params() -> VerityParams {
        VerityParams {
            salt: (0..32u8).map(|i| i.wrapping_mul(37)).collect(),
            uuid: UUID,
        }
    }

    /// Data with some all-zero blocks (the shortcut) and some that are not.
    fn write_data(path: &Path, blocks: u64) {
        let mut data = vec![0u8; (blocks * BLOCK_SIZE) as usize];
        for (i, b) in data.iter_mut().enumerate() {
            let block = i / BLOCK_SIZE as usize;
            if block % 5 != 3 {
                *b = (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8;
            }
        }
        std::fs::write(path, data).unwrap();
    }

    fn veritysetup(args: &[&str]) -> std::process::Output {
        let tool = require_tool("veritysetup", "cryptsetup-bin");
        let out = Command::new(&tool).args(args).output().unwrap();
        out
    }

    fn root_of(stdout: &[u8]) -> String {
        let text = String::from_utf8_lossy(stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|| panic!("no root hash in {text}"))
    }

    fn append_path(path: &Path, data_bytes: u64) -> VerityInfo {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        append(&f, data_bytes, &params()).unwrap()
    }

    /// Ours and veritysetup's on copies of the same data: same bytes after the data, same root.
    fn compare_with_veritysetup(blocks: u64) {
        let dir = tempfile::tempdir().unwrap();
        let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
        write_data(&ours, blocks);
        std::fs::copy(&ours, &theirs).unwrap();
        let data_bytes = blocks * BLOCK_SIZE;
        let info = append_path(&ours, data_bytes);
        let t = theirs.to_str().unwrap();
        let out = veritysetup(&[
            "format",
            t,
            t,
            &format!("--hash-offset={data_bytes}"),
            &format!("--salt={}", kiln_contract::hex::encode(&params().salt)),
            &format!("--uuid={UUID_TEXT}"),
            "--data-block-size=4096",
            "--hash-block-size=4096",
        ]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            info.root_hash_hex(),
            root_of(&out.stdout),
            "{blocks} blocks"
        );
        let (a, b) = (
            std::fs::read(&ours).unwrap(),
            std::fs::read(&theirs).unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{blocks} blocks: file sizes");
        assert!(a == b, "{blocks} blocks: hash areas differ");
        assert_eq!(info.hash_bytes, a.len() as u64 - data_bytes);

        // veritysetup accepts ours, and ours re-reads it.
        let o = ours.to_str().unwrap();
        let root = info.root_hash_hex();
        let offset = format!("--hash-offset={data_bytes}");
        let ok = veritysetup(&["verify", o, o, &root, &offset]);
        assert!(ok.status.success(), "{ok:?}");
        let mut f = File::open(&ours).unwrap();
        assert_eq!(verify(&mut f, data_bytes).unwrap(), info);
        assert_eq!(check_tree(&mut f, data_bytes).unwrap(), info);

        // One flipped data byte in the last block: both refuse.
        let mut bytes = a;
        bytes[(data_bytes - 100) as usize] ^= 1;
        std::fs::write(&ours, &bytes).unwrap();
        let bad = veritysetup(&["verify", o, o, &root, &offset]);
        assert!(!bad.status.success(), "veritysetup accepted corrupt data");
        let err = verify(&mut File::open(&ours).unwrap(), data_bytes);
        let unread = check_tree(&mut File::open(&ours).unwrap(), data_bytes);
        if blocks == 1 {
            // No tree to compare with: the corruption shows as a different root hash, and
            // the tree check reads the one block too.
            assert_ne!(err.unwrap().root_hash, info.root_hash);
            assert_ne!(unread.unwrap().root_hash, info.root_hash);
        } else {
            assert!(
                matches!(err, Err(VerityError::TreeMismatch { level: 0, .. })),
                "{err:?}"
            );
            // The tree check does not read the data: the stored tree is still whole.
            assert_eq!(unread.unwrap(), info);
            bytes[(data_bytes - 100) as usize] ^= 1;
            // A byte of the lowest level changed: the level above no longer covers it, or,
            // with one level, the root hash differs.
            let lowest = bytes.len() - 1;
            bytes[lowest - 4000] ^= 1;
            std::fs::write(&ours, &bytes).unwrap();
            let got = check_tree(&mut File::open(&ours).unwrap(), data_bytes);
            if blocks <= HASHES_PER_BLOCK {
                assert_ne!(got.unwrap().root_hash, info.root_hash);
            } else {
                assert!(
                    matches!(got, Err(VerityError::TreeMismatch { level: 1, .. })),
                    "{got:?}"
                );
            }
        }
    }

    #[test]
    fn one_block_has_no_tree() {
        assert!(level_sizes(1).is_empty());
        compare_with_veritysetup(1);
    }

    #[test]
    fn level_boundaries_match_veritysetup() {
        assert_eq!(level_sizes(128), [1]);
        assert_eq!(level_sizes(129), [2, 1]);
        assert_eq!(level_sizes(128 * 128 + 1), [129, 2, 1]);
        for blocks in [2, 127, 128, 129] {
            compare_with_veritysetup(blocks);
        }
    }

    #[test]
    fn a_few_mib_match_veritysetup() {
        // 5 MiB + 3 blocks: three levels' worth of partial blocks.
        compare_with_veritysetup(5 * 256 + 3);
    }

    #[test]
    fn short_file_reads_as_zeros_and_output_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, b"only a little").unwrap();
        let a = append_path(&p, 16 * BLOCK_SIZE);
        let first = std::fs::read(&p).unwrap();
        let b = append_path(&p, 16 * BLOCK_SIZE);
        assert_eq!(a, b);
        assert_eq!(first, std::fs::read(&p).unwrap());
        assert_eq!(a.hash_offset, 16 * BLOCK_SIZE);
        assert_eq!(a.hash_bytes, 2 * BLOCK_SIZE);
    }

    #[test]
    fn bad_inputs_are_refused() {
        let f = tempfile::tempfile().unwrap();
        assert!(matches!(
            append(&f, 4095, &params()),
            Err(VerityError::BadDataSize { .. })
        ));
        let long = VerityParams {
            salt: vec![0; 257],
            uuid: UUID,
        };
        assert!(matches!(
            append(&f, 4096, &long),
            Err(VerityError::SaltTooLong { len: 257 })
        ));
        let mut zeros = io::Cursor::new(vec![0u8; 8192]);
        let err = verify(&mut zeros, 4096).unwrap_err();
        assert!(
            err.to_string()
                .contains("no verity superblock at byte 4096"),
            "{err}"
        );
    }

    #[test]
    fn dm_table_names_the_tree_after_the_superblock() {
        let info = VerityInfo {
            root_hash: [0xab; 32],
            data_blocks: 256,
            hash_offset: 256 * BLOCK_SIZE,
            hash_bytes: 3 * BLOCK_SIZE,
            salt: vec![1, 2],
            uuid: UUID,
        };
        let table = info.dm_table("/dev/vda3", "/dev/vda3");
        assert_eq!(
            table,
            format!(
                "0 2048 verity 1 /dev/vda3 /dev/vda3 4096 4096 256 257 sha256 {} 0102",
                "ab".repeat(32)
            )
        );
    }
}
