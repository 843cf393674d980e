//! The image to flash: `disk.raw` or `disk.raw.zst` from a build directory, checked against the
//! build's `SHA256SUMS` (and its signature) before anything is written, and read as a stream.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::release::blockmap::{self, BlockMap};
use crate::release::chunks::{self, ChunkList};
use crate::release::signature;
use crate::release::{self, CHUNKS_FILE, DISK_FILE, KEY_FILE, SIG_FILE, SUMS_FILE};
use kiln_contract::hex;
use kiln_updater::keys::{VerifyingKey, SIGNATURE_LEN};

use super::trust::{TrustedKey, TrustedKeys};

/// How the image file is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Raw,
    /// zstd frames that record the disk's size (the build's size frame and a frame per
    /// chunk, or one frame).
    Zstd,
}

/// Whether `SHA256SUMS` was signed, for the summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// `SHA256SUMS.sig` verified with this trusted key (boxed: an Ed25519 key in memory is about
    /// 200 bytes).
    Signed(Box<TrustedKey>),
    /// No signature, flashed as `--allow-unsigned` says: the sums guard against corruption,
    /// not substitution.
    Unsigned,
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::Signed(key) => write!(f, "signature verified with {key}"),
            Trust::Unsigned => f.write_str("UNSIGNED, flashed as --allow-unsigned says"),
        }
    }
}

/// A checked image: its file, and what the disk it holds must hash to.
#[derive(Clone, Debug)]
pub struct Image {
    pub path: PathBuf,
    pub format: Format,
    /// The size of the disk (decompressed).
    pub size: u64,
    /// The disk's SHA-256 from `SHA256SUMS` (the `disk.raw` entry).
    pub disk_sha256: [u8; 32],
    pub trust: Trust,
    /// A raw image's map, from its chunk list or made while checking its hash; a compressed
    /// image's is made while it is written.
    pub map: Option<BlockMap>,
}

impl Image {
    /// Checks `path` against the `SHA256SUMS` beside it, `SHA256SUMS.sig` against the
    /// `trusted` keys (an image without one only if `allow_unsigned`), and reads the disk's
    /// size. A `disk.raw` with its chunk list is checked chunk by chunk (reading only what is
    /// not a hole); any other image is hashed whole. Writes nothing.
    pub fn open_verified(
        path: &Path,
        trusted: &TrustedKeys,
        allow_unsigned: bool,
    ) -> Result<Image> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = file_name(path)?;
        let format = if name.ends_with(".zst") {
            Format::Zstd
        } else {
            Format::Raw
        };
        let sums_path = dir.join(SUMS_FILE);
        let sums_text = std::fs::read(&sums_path).with_context(|| {
            format!(
                "reading {} (the image's checksums): flash only images from a build directory, which `cargo xtask build-image` fills",
                sums_path.display()
            )
        })?;
        let trust = check_signature(dir, &sums_text, trusted, allow_unsigned)?;
        let sums = release::parse_sums(&String::from_utf8_lossy(&sums_text), &sums_path)?;
        let listed = |n: &str| {
            sums.get(n).copied().with_context(|| {
                format!(
                    "{} has no line for {n}: it is not this image's checksum list (rebuild with `cargo xtask build-image`)",
                    sums_path.display()
                )
            })
        };
        let expected = listed(&name)?;
        let disk_sha256 = listed(DISK_FILE)?;
        let list = match (format, name.as_str()) {
            (Format::Raw, DISK_FILE) => chunk_list(dir, &sums, &sums_path)?,
            _ => None,
        };
        let map = match list {
            Some((list, list_path)) => Some(chunks::check_image(path, &list, &list_path)?),
            None => check_hash(path, format, &expected, &sums_path)?,
        };
        let size = disk_size(path, format)?;
        Ok(Image {
            path: path.to_owned(),
            format,
            size,
            disk_sha256,
            trust,
            map,
        })
    }

    /// The disk's bytes from the start, decompressed when needed.
    pub fn reader(&self) -> Result<Box<dyn Read + Send>> {
        let file =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        Ok(match self.format {
            Format::Raw => Box::new(file),
            Format::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(1 << 20, file))
                    .with_context(|| format!("starting to decompress {}", self.path.display()))?,
            ),
        })
    }
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| format!("--image {} names no file", path.display()))
}

/// The signature policy: `SHA256SUMS.sig` must verify with one of the `trusted` keys (never by
/// itself the key beside the image, which came with it); an image without a signature is
/// refused unless `allow_unsigned`.
fn check_signature(
    dir: &Path,
    sums: &[u8],
    trusted: &TrustedKeys,
    allow_unsigned: bool,
) -> Result<Trust> {
    let sig_path = dir.join(SIG_FILE);
    if !sig_path.exists() {
        return unsigned(&sig_path, allow_unsigned);
    }
    if trusted.keys.is_empty() {
        return Err(no_trusted_key(dir, sums, trusted));
    }
    let sig = signature::read(&sig_path)?;
    match trusted.signer(sums, &sig) {
        Some(key) => Ok(Trust::Signed(Box::new(key.clone()))),
        None => Err(not_trusted(dir, sums, &sig, trusted)),
    }
}

/// A signed image and no trusted key at all: where they were looked for, and what to do.
fn no_trusted_key(dir: &Path, sums: &[u8], trusted: &TrustedKeys) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is signed, but no key you trust exists to check it: looked for {}. Make your key with `cargo xtask keygen` (and build with it), or name the key you trust with --public-key PATH (under sudo, $HOME and $KILN_SIGNING_KEY may be root's); {} (nothing was written)",
        dir.join(SUMS_FILE).display(),
        list_paths(&trusted.looked_at),
        beside_key(dir, trusted, sums, None)
            .unwrap_or_else(|| format!("the {KEY_FILE} beside an image is never trusted by itself"))
    )
}

/// A signature no trusted key made: the keys tried, the key beside the image, what to do.
fn not_trusted(
    dir: &Path,
    sums: &[u8],
    sig: &[u8; SIGNATURE_LEN],
    trusted: &TrustedKeys,
) -> anyhow::Error {
    let tried: Vec<String> = trusted.keys.iter().map(ToString::to_string).collect();
    anyhow::anyhow!(
        "{} does not verify with any key you trust, so the image may not be one you built: tried {}; {}If you trust the image, name the key that signed it with --public-key PATH (nothing was written)",
        dir.join(SIG_FILE).display(),
        tried.join(", "),
        beside_key(dir, trusted, sums, Some(sig))
            .map(|b| format!("{b}. "))
            .unwrap_or_default()
    )
}

/// No `SHA256SUMS.sig`: refused, or a warning with `--allow-unsigned`.
fn unsigned(sig_path: &Path, allow_unsigned: bool) -> Result<Trust> {
    if !allow_unsigned {
        bail!(
            "{} is missing: the image's checksums are unsigned, so nothing shows the image is one you built (they catch a corrupted image, not a substituted one). Flash a build of `cargo xtask build-image`, which signs them, or pass --allow-unsigned if you trust this image by other means (nothing was written)",
            sig_path.display()
        );
    }
    eprintln!(
        "warning: {} is missing: flashing an unsigned image as --allow-unsigned says; its checksums catch a corrupted image, not a substituted one",
        sig_path.display()
    );
    Ok(Trust::Unsigned)
}

/// What to say of the key beside the image when it is not one of the `trusted`: that it is not
/// trusted by itself, its fingerprint, and whether `sig` verifies with it.
fn beside_key(
    dir: &Path,
    trusted: &TrustedKeys,
    sums: &[u8],
    sig: Option<&[u8; SIGNATURE_LEN]>,
) -> Option<String> {
    let path = dir.join(KEY_FILE);
    if !path.exists() {
        return None;
    }
    let key = match VerifyingKey::load_pem(&path) {
        Ok(key) => key,
        Err(e) => return Some(format!("the key beside the image is not one ({e})")),
    };
    if trusted.contains(&key) {
        return None;
    }
    let verdict = match sig {
        Some(sig) if signature::verifies(sums, sig, &key) => {
            "; the signature is by that key, so the directory brought its own key pair"
        }
        Some(_) => "; the signature does not verify with it either",
        None => "",
    };
    Some(format!(
        "the key beside the image, {} ({}), is not trusted by itself, since whoever made the directory could have made that key too{verdict}",
        path.display(),
        key.fingerprint()
    ))
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The signed chunk list beside a raw image, when the build made one (see [`chunks`]): read,
/// checked against its line in `SHA256SUMS`, and parsed. `None` sends the caller to the
/// whole-file hash: a build from before the lists, or a list not copied with the image.
fn chunk_list(
    dir: &Path,
    sums: &BTreeMap<String, [u8; 32]>,
    sums_path: &Path,
) -> Result<Option<(ChunkList, PathBuf)>> {
    let Some(expected) = sums.get(CHUNKS_FILE) else {
        return Ok(None);
    };
    let path = dir.join(CHUNKS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "note: {} is missing: checking the SHA-256 of the whole image instead, which takes longer",
                path.display()
            );
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let actual: [u8; 32] = Sha256::digest(&bytes).into();
    if actual != *expected {
        bail!(
            "{} has SHA-256 {} but {} says {}: the chunk list is corrupt or from another build; rebuild, or copy it again with the image (nothing was written)",
            path.display(),
            hex::encode(&actual),
            sums_path.display(),
            hex::encode(expected)
        );
    }
    let text = String::from_utf8_lossy(&bytes);
    Ok(Some((ChunkList::parse(&text, &path)?, path)))
}

/// Hashes the file (mapping it when raw) and compares with its line in `SHA256SUMS`.
fn check_hash(
    path: &Path,
    format: Format,
    expected: &[u8; 32],
    sums_path: &Path,
) -> Result<Option<BlockMap>> {
    let (actual, map) = match format {
        Format::Raw => {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let (hash, map, _) = blockmap::scan(file, chunks::CHUNK)
                .with_context(|| format!("reading {}", path.display()))?;
            (hash, Some(map))
        }
        Format::Zstd => (release::digest_of(path)?, None),
    };
    if &actual != expected {
        bail!(
            "{} has SHA-256 {} but {} says {}: the image is corrupt or from another build; rebuild it or copy it again (nothing was written)",
            path.display(),
            hex::encode(&actual),
            sums_path.display(),
            hex::encode(expected)
        );
    }
    Ok(map)
}

/// The disk's size: the file's, or the one `disk.raw.zst` records ([`release::zst_disk_size`]).
fn disk_size(path: &Path, format: Format) -> Result<u64> {
    let size = match format {
        Format::Raw => std::fs::metadata(path)?.len(),
        Format::Zstd => {
            let mut head = [0u8; release::ZST_HEAD_LEN];
            let n = File::open(path)?.read(&mut head)?;
            release::zst_disk_size(&head[..n]).with_context(|| {
                format!(
                    "{} records no disk size (no size frame, no content size in its zstd frame): compress it as `cargo xtask build-image` does (or with `zstd` from a file)",
                    path.display()
                )
            })?
        }
    };
    if size < 2 << 20 || size % 512 != 0 {
        bail!(
            "{} holds a disk of {size} bytes, which is not a whole number of 512-byte sectors of at least 2 MiB: not a Kiln disk image",
            path.display()
        );
    }
    Ok(size)
}
