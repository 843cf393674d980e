//! Reading a payload: the header checks, the signature, then the manifest and its parts.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use kiln_contract::digest::Hashing;
use kiln_contract::hex;

use super::{
    io_err, Manifest, PayloadError, FORMAT_VERSION, HEADER_LEN, MAGIC, MAX_MANIFEST_LEN,
    PARTS_OFFSET,
};
use crate::keys::{VerifyingKey, SIGNATURE_LEN};

/// Reads the manifest of the payload at `path` and returns it only once the signature over it
/// checks against `key`. The magic and the format version are checked before anything else is
/// read; the manifest is parsed only after its signature checks. Also checks that the padding
/// is zero and that the parts fill the rest of the file exactly (their hashes are
/// [`check_parts`]'s job, which reads the whole file).
pub fn read_verified_manifest(path: &Path, key: &VerifyingKey) -> Result<Manifest, PayloadError> {
    let mut file = File::open(path).map_err(io_err("opening", path))?;
    let malformed = |problem: String| PayloadError::Malformed {
        path: path.to_owned(),
        problem,
    };
    // Field by field, so that a file of another kind or format is named as such even when it
    // is shorter than our header.
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => PayloadError::BadMagic {
            path: path.to_owned(),
        },
        _ => io_err("reading", path)(e),
    })?;
    if &magic != MAGIC {
        return Err(PayloadError::BadMagic {
            path: path.to_owned(),
        });
    }
    let mut word = [0u8; 4];
    read_exact_or(&mut file, &mut word, path, "format version")?;
    let version = u32::from_le_bytes(word);
    if version != FORMAT_VERSION {
        return Err(PayloadError::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
        });
    }
    read_exact_or(&mut file, &mut word, path, "header")?;
    let len = u64::from(u32::from_le_bytes(word));
    if len == 0 || len > MAX_MANIFEST_LEN {
        return Err(malformed(format!(
            "the manifest length {len} is not between 1 and {MAX_MANIFEST_LEN}"
        )));
    }
    let mut signature = [0u8; SIGNATURE_LEN];
    read_exact_or(&mut file, &mut signature, path, "signature")?;
    let mut area = vec![0u8; (PARTS_OFFSET - HEADER_LEN) as usize];
    read_exact_or(&mut file, &mut area, path, "manifest area")?;
    let (manifest, padding) = area.split_at(len as usize);
    let digest: [u8; 32] = Sha256::digest(manifest).into();
    key.verify_digest(&digest, &signature)
        .map_err(|_| PayloadError::BadSignature {
            path: path.to_owned(),
        })?;
    if let Some(i) = padding.iter().position(|&b| b != 0) {
        return Err(malformed(format!(
            "byte {} of the manifest area's padding is not zero",
            HEADER_LEN + len + i as u64
        )));
    }
    let manifest: Manifest = serde_json::from_slice(manifest)
        .map_err(|e| malformed(format!("the signed manifest is not valid: {e}")))?;
    let file_len = file
        .metadata()
        .map_err(io_err("reading the size of", path))?
        .len();
    check_manifest(&manifest, file_len).map_err(malformed)?;
    Ok(manifest)
}

/// Reads every part of the payload and checks its SHA-256 against the manifest (which must
/// come from [`read_verified_manifest`]), reporting bytes done and total to `progress`.
pub fn check_parts(
    path: &Path,
    manifest: &Manifest,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), PayloadError> {
    let mut file = File::open(path).map_err(io_err("opening", path))?;
    let total: u64 = manifest.parts().iter().map(|(_, p)| p.length).sum();
    let mut done = 0;
    let mut buf = vec![0u8; 1 << 20];
    for (name, part) in manifest.parts() {
        file.seek(SeekFrom::Start(part.offset))
            .map_err(io_err("seeking in", path))?;
        let mut reader = Hashing::new((&mut file).take(part.length));
        loop {
            let n = reader.read(&mut buf).map_err(io_err("reading", path))?;
            if n == 0 {
                break;
            }
            done += n as u64;
            progress(done, total);
        }
        if reader.count() != part.length {
            return Err(PayloadError::Malformed {
                path: path.to_owned(),
                problem: format!("part `{name}` is cut short"),
            });
        }
        let actual = hex::encode(&reader.digest());
        if actual != part.sha256 {
            return Err(PayloadError::PartMismatch {
                path: path.to_owned(),
                part: name,
                expected: part.sha256.clone(),
                actual,
            });
        }
    }
    Ok(())
}

fn read_exact_or(
    file: &mut File,
    buf: &mut [u8],
    path: &Path,
    what: &str,
) -> Result<(), PayloadError> {
    file.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => PayloadError::Malformed {
            path: path.to_owned(),
            problem: format!("the file ends inside the {what}"),
        },
        _ => PayloadError::Io {
            op: "reading",
            path: path.to_owned(),
            source: e,
        },
    })
}

/// The signed manifest's own consistency: hex fields, the verity offset inside the image, and
/// parts back to back from [`PARTS_OFFSET`] to the end of the file.
fn check_manifest(m: &Manifest, file_len: u64) -> Result<(), String> {
    let sha = |name: &str, value: &str| match hex::decode(value) {
        Some(b) if b.len() == 32 => Ok(()),
        _ => Err(format!("{name} {value:?} is not a hex SHA-256")),
    };
    sha("usr_sha256", &m.usr_sha256)?;
    sha("verity_root_hash", &m.verity_root_hash)?;
    sha("kernel_sha256", &m.kernel_sha256)?;
    sha("initrd_sha256", &m.initrd_sha256)?;
    if hex::decode(&m.verity_salt).is_none_or(|s| s.len() > kiln_image::verity::MAX_SALT_LEN) {
        return Err(format!(
            "verity_salt {:?} is not hex of at most 256 bytes",
            m.verity_salt
        ));
    }
    if m.verity_hash_offset == 0 || m.verity_hash_offset >= m.usr_size {
        return Err(format!(
            "verity_hash_offset {} is not inside the {}-byte USR image",
            m.verity_hash_offset, m.usr_size
        ));
    }
    // The kernel and initramfs are stored as they are, so their part hashes are theirs.
    if m.parts.kernel.sha256 != m.kernel_sha256 || m.parts.initrd.sha256 != m.initrd_sha256 {
        return Err("the kernel or initrd part's sha256 differs from the file's".to_owned());
    }
    let mut at = PARTS_OFFSET;
    for (name, part) in m.parts() {
        sha(&format!("part {name}'s sha256"), &part.sha256)?;
        if part.offset != at {
            return Err(format!(
                "part `{name}` starts at {} instead of {at}",
                part.offset
            ));
        }
        at = at
            .checked_add(part.length)
            .ok_or_else(|| format!("part `{name}` ends past 2^64"))?;
    }
    if at != file_len {
        return Err(format!(
            "the parts end at byte {at} but the file is {file_len} bytes (truncated or with extra bytes)"
        ));
    }
    Ok(())
}
