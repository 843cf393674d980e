//! A FAT writer and editor: formats a volume (FAT32, or FAT16 when small) from a [`Tree`] with
//! VFAT long names, and reads, lists and replaces single files of an existing volume in place,
//! without mounting (for the ESP and the OEM partition).
//!
//! Every function takes a `Read + Write + Seek` whose position 0 is the first byte of the
//! volume (a partition inside a disk image is reached through a window at its offset).
//!
//! Choices a reader of the bytes may want to know:
//! - Sizes follow fatgen103's tables (details in `geometry.rs`): FAT32 above 66600 sectors
//!   (about 32.5 MiB) with 512-byte clusters up to 260 MiB and 4 KiB up to 8 GiB; FAT16 from
//!   4.1 MiB to 32.5 MiB; 512-byte sectors, two FATs, media byte 0xF8; the FAT as small as
//!   still covers every cluster. The 64 MiB OEM and 256 MiB ESP are FAT32, 512-byte clusters.
//! - Times: FAT stores local time with 2-second steps from 1980 to 2107; we store UTC, clamp
//!   earlier times to 1980-01-01 00:00:00 and later ones to 2107-12-31 23:59:58, and round odd
//!   seconds down in write times. A file's creation, write and access times all come from its
//!   mtime; directories (their entries, `.` and `..`) and the volume label take
//!   [`FatOptions::timestamp`], as the options promise.
//! - Names: every name that is not exactly an upper-case 8.3 name gets long-name entries; the
//!   short names are fatgen103's basis names with `~N` tails, numbered in name order, so the
//!   same tree gives the same bytes.
//! - [`format`] writes the reserved sectors, both FATs, every directory and every file (each up
//!   to the end of its last cluster), and the volume's last sector, so the device reaches its
//!   full size; free clusters are not written (a fresh image file reads them as zeros).

mod dirent;
mod format;
mod geometry;
mod names;
mod table;
mod volume;

#[cfg(test)]
mod tests;

use std::io::{Read, Seek, Write};

use crate::tree::{Tree, TreeError};

/// The media descriptor of a fixed disk, in the boot sector and FAT entry 0.
const MEDIA: u8 = 0xF8;

/// What to make.
#[derive(Clone, Debug)]
pub struct FatOptions {
    /// The volume's size; whole 512-byte sectors of it are used.
    pub size_bytes: u64,
    /// The serial number tools show (derive it from the build, never from the clock).
    pub volume_id: u32,
    /// Up to 11 characters that can appear in a short name, upper-cased; empty for none.
    pub label: String,
    /// Seconds since 1970 for every directory entry and the volume label (files keep their
    /// own mtime).
    pub timestamp: i64,
}

/// How full a new volume is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FatStats {
    pub clusters_total: u32,
    /// Clusters holding directories (the root included) and file data.
    pub clusters_used: u32,
    pub cluster_bytes: u32,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntryInfo {
    /// The long name, or the short name when the entry has none.
    pub name: String,
    /// The 8.3 name (as `BASE.EXT`).
    pub short_name: String,
    pub is_dir: bool,
    pub size: u32,
    /// The write time, seconds since 1970 (FAT's local time read as UTC).
    pub mtime: i64,
    /// 0 for an empty file.
    pub first_cluster: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error("{op} the FAT volume at byte {offset}: {source}")]
    Io {
        op: &'static str,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("the tree is not valid: {0}")]
    Tree(#[from] TreeError),
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("{path} is a {kind}; FAT holds only regular files and directories (leave it out of the tree)")]
    UnsupportedKind { path: String, kind: &'static str },
    #[error("cannot store the name of {path} on FAT: {reason}; rename it")]
    InvalidName { path: String, reason: String },
    #[error("{path} and {other} differ only in case, which FAT does not tell apart; rename one")]
    NameCollision { path: String, other: String },
    #[error("{path} is {size} bytes; FAT files end at 4 GiB - 1")]
    FileTooBig { path: String, size: u64 },
    #[error("directory {path} would need {entries} entries; FAT allows {max} per directory")]
    DirectoryFull {
        path: String,
        entries: usize,
        max: usize,
    },
    #[error("invalid volume label {label:?}: {reason}")]
    InvalidLabel { label: String, reason: String },
    #[error("cannot make a FAT volume of {size} bytes: {reason}")]
    VolumeSize { size: u64, reason: String },
    #[error(
        "the tree does not fit: it needs {needed} bytes ({clusters} clusters of {cluster_bytes} \
         bytes plus {overhead} bytes of boot sectors and FATs) but the volume is {given} bytes; \
         make the volume larger or the tree smaller"
    )]
    TooLarge {
        needed: u64,
        given: u64,
        clusters: u64,
        cluster_bytes: u32,
        overhead: u64,
    },
    #[error("{path} changed while it was being written: expected {expected} bytes, read {got}")]
    ContentChanged {
        path: String,
        expected: u64,
        got: u64,
    },
    #[error("reading {path} from the host: {source}")]
    Content {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a FAT volume (or an unsupported one): {reason}")]
    NotFat { reason: String },
    #[error("the FAT volume is damaged: {reason}; check it with fsck.fat")]
    Corrupt { reason: String },
    #[error("{path} does not exist on the FAT volume")]
    NotFound { path: String },
    #[error("{path} is not a directory on the FAT volume")]
    NotADirectory { path: String },
    #[error("{path} already exists on the FAT volume: remove it first or choose another name")]
    Exists { path: String },
    #[error("{path} is a directory on the FAT volume, not a file")]
    IsADirectory { path: String },
    #[error("no room for {path}: it needs {needed} clusters and {free} are free")]
    NoSpace {
        path: String,
        needed: u64,
        free: u64,
    },
}

/// Formats a FAT volume at position 0 of `dev` holding `tree` (files and directories only).
pub fn format(
    tree: &Tree,
    opts: &FatOptions,
    dev: &mut (impl Read + Write + Seek),
) -> Result<FatStats, FatError> {
    format::format(tree, opts, dev)
}

/// Creates or replaces the file at `path` (missing parent directories are created, with
/// `mtime` as their time) in the volume at position 0 of `dev`. The new data goes to free
/// clusters before the old ones are freed, unless only the old ones make room. A replaced file
/// keeps its name and creation time. Every FAT copy and the FSInfo free count and next-free
/// hint are updated; the backup FSInfo (sector 7) is left alone, as Linux and Windows do.
pub fn write_file(
    dev: &mut (impl Read + Write + Seek),
    path: &str,
    data: &[u8],
    mtime: i64,
) -> Result<(), FatError> {
    volume::write_file(dev, path, data, mtime)
}

/// The content of the file at `path`; names match case-insensitively, long or short.
pub fn read_file(dev: &mut (impl Read + Seek), path: &str) -> Result<Vec<u8>, FatError> {
    volume::read_file(dev, path)
}

/// The entries of the directory at `path` (`/` or `""` for the root), without `.`, `..` and
/// the volume label, in on-disk order.
pub fn list_dir(dev: &mut (impl Read + Seek), path: &str) -> Result<Vec<DirEntryInfo>, FatError> {
    volume::list_dir(dev, path)
}

/// Removes the file at `path` (not a directory) and frees its clusters. Its directory entry is
/// marked deleted before the FAT frees the clusters.
pub fn remove_file(dev: &mut (impl Read + Write + Seek), path: &str) -> Result<(), FatError> {
    volume::remove_file(dev, path)
}

/// Renames the file or directory at `from` to `to`, which must be in the same directory and
/// must not name another entry (a change of case only is allowed). The entry keeps its
/// clusters, size and times; the new name is written before the old one is deleted.
pub fn rename(dev: &mut (impl Read + Write + Seek), from: &str, to: &str) -> Result<(), FatError> {
    volume::rename(dev, from, to)
}

/// Writes `buf` at byte `offset` of the volume.
fn write_at<D: Write + Seek>(dev: &mut D, offset: u64, buf: &[u8]) -> Result<(), FatError> {
    let io = |source| FatError::Io {
        op: "writing",
        offset,
        source,
    };
    dev.seek(std::io::SeekFrom::Start(offset)).map_err(io)?;
    dev.write_all(buf).map_err(io)
}

/// Fills `buf` from byte `offset` of the volume.
fn read_at<D: Read + Seek>(dev: &mut D, offset: u64, buf: &mut [u8]) -> Result<(), FatError> {
    let io = |source| FatError::Io {
        op: "reading",
        offset,
        source,
    };
    dev.seek(std::io::SeekFrom::Start(offset)).map_err(io)?;
    dev.read_exact(buf).map_err(io)
}
