//! The update payload: one file per version holding a signed manifest and the parts it names
//! (the USR image with its dm-verity tree, zstd-compressed; the kernel; the initramfs).
//!
//! Layout (all integers little-endian):
//!
//! | bytes | what |
//! |---|---|
//! | 0..8 | magic `KILNPAYL` |
//! | 8..12 | format version, 1 |
//! | 12..16 | manifest length `n` (at most [`MAX_MANIFEST_LEN`]) |
//! | 16..80 | Ed25519 signature over SHA-256(manifest) (see [`crate::keys`]) |
//! | 80..80+n | the manifest, JSON |
//! | ..65536 | zeros |
//! | 65536.. | the parts, back to back, at the offsets the manifest gives |
//!
//! The manifest has a fixed area so that the part offsets in it are absolute and known before
//! the manifest is written. A reader checks the magic, then the version, before it reads
//! anything else, and the signature before it parses the manifest. Every byte of the file is
//! covered: the header by those checks, the padding by being zero, the parts by their signed
//! SHA-256, and the length by the manifest's last part ending where the file ends.

mod read;
mod write;

#[cfg(test)]
pub(crate) mod tests;
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use read::{check_parts, read_verified_manifest};
#[cfg(test)]
pub(crate) use write::frame_compressor;
pub use write::write_payload;

use crate::keys::KeyError;

/// The first bytes of every payload.
pub const MAGIC: &[u8; 8] = b"KILNPAYL";
/// The one format version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Magic, version, manifest length, signature.
pub const HEADER_LEN: u64 = 80;
/// Where the parts begin: the header and manifest area is this long.
pub const PARTS_OFFSET: u64 = 64 * 1024;
/// The longest manifest the area holds.
pub const MAX_MANIFEST_LEN: u64 = PARTS_OFFSET - HEADER_LEN;
/// The board every Kiln image is built for.
pub const BOARD: &str = "amd64-usr";

/// What the caller of [`write_payload`] says about the version; the rest of the manifest is
/// measured from the files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestInput {
    pub app_id: String,
    pub version: String,
    pub board: String,
    /// The oldest version this payload may update from (`None`: any).
    pub min_from_version: Option<String>,
    /// Where the verity superblock starts in the USR image (the filesystem's size).
    pub usr_hash_offset: u64,
}

impl ManifestInput {
    /// An input for [`BOARD`] that may update from any version.
    pub fn new(app_id: &str, version: &str, usr_hash_offset: u64) -> ManifestInput {
        ManifestInput {
            app_id: app_id.to_owned(),
            version: version.to_owned(),
            board: BOARD.to_owned(),
            min_from_version: None,
            usr_hash_offset,
        }
    }
}

/// Where one part sits in the payload file, and the SHA-256 of its bytes there (compressed,
/// for the USR image).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub offset: u64,
    pub length: u64,
    pub sha256: String,
}

/// The parts, in file order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parts {
    /// The USR image, as independent zstd frames of at most 4 MiB each that record their
    /// content size (older payloads hold one frame without it; the installer reads both).
    pub usr: Part,
    pub kernel: Part,
    pub initrd: Part,
}

/// The signed description of a payload. Hashes, the root hash and the salt are lower-case hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub app_id: String,
    pub version: String,
    pub board: String,
    pub min_from_version: Option<String>,
    /// The USR image as written to the partition: filesystem, verity superblock and tree.
    pub usr_size: u64,
    pub usr_sha256: String,
    pub verity_root_hash: String,
    pub verity_salt: String,
    /// Byte offset of the verity superblock in the USR image.
    pub verity_hash_offset: u64,
    pub kernel_sha256: String,
    pub initrd_sha256: String,
    pub parts: Parts,
}

impl Manifest {
    /// The parts with their names, in file order.
    pub fn parts(&self) -> [(&'static str, &Part); 3] {
        [
            ("usr", &self.parts.usr),
            ("kernel", &self.parts.kernel),
            ("initrd", &self.parts.initrd),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a Kiln update payload (its first bytes are not {MAGIC:?}): download it again or check the URL")]
    BadMagic { path: PathBuf },
    #[error("{path} is payload format {found}; this updater reads format {FORMAT_VERSION}: update in steps through a version that knows both")]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("{path}: {problem}; the payload is damaged: download it again")]
    Malformed { path: PathBuf, problem: String },
    #[error("the manifest signature of {path} does not match the update public key: the payload was not made with this machine's signing key, or it is damaged")]
    BadSignature { path: PathBuf },
    #[error("{path}: part `{part}` has SHA-256 {actual}, the signed manifest says {expected}: the payload is damaged: download it again")]
    PartMismatch {
        path: PathBuf,
        part: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{path}: {problem}")]
    Input { path: PathBuf, problem: String },
    #[error("the USR image {path} does not verify at hash offset {offset}: {source}")]
    Verity {
        path: PathBuf,
        offset: u64,
        #[source]
        source: kiln_image::verity::VerityError,
    },
    #[error("signing the manifest: {0}")]
    Key(#[from] KeyError),
}

pub(crate) fn io_err(
    op: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(io::Error) -> PayloadError {
    let path = path.to_owned();
    move |source| PayloadError::Io { op, path, source }
}
