//! Writing a payload (host side): measure the USR image, compress it, sign the manifest.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use kiln_image::disk::read_full;

use kiln_contract::digest::Hashing;
use kiln_contract::hex;

use super::{
    io_err, Manifest, ManifestInput, Part, Parts, PayloadError, FORMAT_VERSION, HEADER_LEN, MAGIC,
    MAX_MANIFEST_LEN, PARTS_OFFSET,
};
use crate::keys::SigningKey;

/// zstd level for the USR image. Measured on the 570 MiB USR image of 0.1.0 (2 threads, shared
/// 2-core machine): level 3 gives 178 MB in 6 s, level 9 160 MB in 31 s; 10% more to download
/// is cheaper than adding half a minute to every build.
pub const ZSTD_LEVEL: i32 = 3;
/// The USR image is compressed as independent zstd frames of this many bytes each (the last
/// one shorter), each recording its content size and a checksum. The installer then
/// decompresses frames on several threads, where one frame would hold it to one core, the
/// slowest step of writing a slot. Readers that stream (`zstd -d`, older agents) read the
/// concatenated frames as one image. Frames of 4 MiB compress as well as one frame (175 MiB
/// for the 590 MiB image of 0.1.0 either way): level 3's window is 2 MiB.
pub const FRAME_SIZE: usize = 4 << 20;
/// Frames compressed at once, each on its own thread; the output does not depend on it.
const COMPRESS_THREADS: usize = 2;

/// Writes the payload for `m` to `out` (through a temporary file beside it, renamed at the
/// end): checks the USR image's verity tree at `m.usr_hash_offset`, compresses the image,
/// and signs the manifest with `key`. The same inputs and key give the same bytes.
pub fn write_payload(
    out: &Path,
    m: ManifestInput,
    usr: &Path,
    kernel: &Path,
    initrd: &Path,
    key: &SigningKey,
) -> Result<Manifest, PayloadError> {
    let verity = verify_usr(usr, m.usr_hash_offset)?;
    let tmp = temp_path(out);
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err("creating", &tmp))?;
    let result =
        write_into(&mut file, &tmp, m, verity, [usr, kernel, initrd], key).and_then(|manifest| {
            file.sync_all().map_err(io_err("syncing", &tmp))?;
            std::fs::rename(&tmp, out).map_err(io_err("renaming the payload to", out))?;
            sync_parent(out)?;
            Ok(manifest)
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `out` with `.partial` appended.
fn temp_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

fn sync_parent(path: &Path) -> Result<(), PayloadError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing the directory of", path))
}

/// The USR image's size and verity tree, checked before anything is written.
fn verify_usr(
    usr: &Path,
    hash_offset: u64,
) -> Result<(u64, kiln_image::verity::VerityInfo), PayloadError> {
    let mut file = File::open(usr).map_err(io_err("opening", usr))?;
    let size = file
        .metadata()
        .map_err(io_err("reading the size of", usr))?
        .len();
    let info = kiln_image::verity::verify(&mut file, hash_offset).map_err(|source| {
        PayloadError::Verity {
            path: usr.to_owned(),
            offset: hash_offset,
            source,
        }
    })?;
    if info.hash_offset + info.hash_bytes > size {
        return Err(PayloadError::Input {
            path: usr.to_owned(),
            problem: format!(
                "the verity tree ends at byte {} but the image is {size} bytes",
                info.hash_offset + info.hash_bytes
            ),
        });
    }
    Ok((size, info))
}

fn write_into(
    file: &mut File,
    tmp: &Path,
    m: ManifestInput,
    (usr_size, verity): (u64, kiln_image::verity::VerityInfo),
    [usr, kernel, initrd]: [&Path; 3],
    key: &SigningKey,
) -> Result<Manifest, PayloadError> {
    file.seek(SeekFrom::Start(PARTS_OFFSET))
        .map_err(io_err("seeking in", tmp))?;
    let (usr_part, usr_sha) = compress_part(file, tmp, usr, PARTS_OFFSET)?;
    let kernel_part = copy_part(file, tmp, kernel, usr_part.offset + usr_part.length)?;
    let initrd_part = copy_part(file, tmp, initrd, kernel_part.offset + kernel_part.length)?;
    let manifest = Manifest {
        app_id: m.app_id,
        version: m.version,
        board: m.board,
        min_from_version: m.min_from_version,
        usr_size,
        usr_sha256: usr_sha,
        verity_root_hash: verity.root_hash_hex(),
        verity_salt: hex::encode(&verity.salt),
        verity_hash_offset: verity.hash_offset,
        kernel_sha256: kernel_part.sha256.clone(),
        initrd_sha256: initrd_part.sha256.clone(),
        parts: Parts {
            usr: usr_part,
            kernel: kernel_part,
            initrd: initrd_part,
        },
    };
    let json = serde_json::to_vec(&manifest).map_err(|e| PayloadError::Input {
        path: tmp.to_owned(),
        problem: format!("encoding the manifest: {e}"),
    })?;
    if json.len() as u64 > MAX_MANIFEST_LEN {
        return Err(PayloadError::Input {
            path: tmp.to_owned(),
            problem: format!(
                "the manifest is {} bytes, more than the {MAX_MANIFEST_LEN} the format holds: shorten the app id or versions",
                json.len()
            ),
        });
    }
    let signature = key.sign_digest(&Sha256::digest(&json).into());
    let mut head = Vec::with_capacity(PARTS_OFFSET as usize);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    head.extend_from_slice(&(json.len() as u32).to_le_bytes());
    head.extend_from_slice(&signature);
    debug_assert_eq!(head.len() as u64, HEADER_LEN);
    head.extend_from_slice(&json);
    head.resize(PARTS_OFFSET as usize, 0);
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&head))
        .map_err(io_err("writing the header of", tmp))?;
    Ok(manifest)
}

/// Compresses `src` into `file` at its position `offset`, as frames of [`FRAME_SIZE`];
/// returns the part and the SHA-256 of the uncompressed bytes.
fn compress_part(
    file: &mut File,
    tmp: &Path,
    src: &Path,
    offset: u64,
) -> Result<(Part, String), PayloadError> {
    let mut input = File::open(src).map_err(io_err("opening", src))?;
    let mut out = Hashing::new(BufWriter::with_capacity(1 << 20, &mut *file));
    let mut usr_hash = Sha256::new();
    let mut compressors = (0..COMPRESS_THREADS)
        .map(|_| frame_compressor())
        .collect::<io::Result<Vec<_>>>()
        .map_err(io_err("starting zstd for", src))?;
    let mut inputs = vec![vec![0u8; FRAME_SIZE]; COMPRESS_THREADS];
    loop {
        let mut lens = Vec::with_capacity(COMPRESS_THREADS);
        for buf in inputs.iter_mut() {
            let n = read_full(&mut input, buf).map_err(io_err("reading", src))?;
            if n == 0 {
                break;
            }
            usr_hash.update(&buf[..n]);
            lens.push(n);
        }
        if lens.is_empty() {
            break;
        }
        let frames = compress_frames(&mut compressors, &inputs, &lens)
            .map_err(io_err("compressing", src))?;
        for frame in frames {
            out.write_all(&frame).map_err(io_err("writing", tmp))?;
        }
    }
    out.flush().map_err(io_err("writing", tmp))?;
    let (digest, length) = out.finish();
    let part = Part {
        offset,
        length,
        sha256: hex::encode(&digest),
    };
    Ok((part, hex::encode(&usr_hash.finalize())))
}

/// Compresses `inputs[i][..lens[i]]` each on its own thread; returns the frames in order.
fn compress_frames(
    compressors: &mut [zstd::bulk::Compressor<'static>],
    inputs: &[Vec<u8>],
    lens: &[usize],
) -> io::Result<Vec<Vec<u8>>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = compressors
            .iter_mut()
            .zip(inputs.iter().zip(lens))
            .map(|(c, (buf, &n))| s.spawn(move || c.compress(&buf[..n])))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// A compressor of one frame with the payload's settings: [`ZSTD_LEVEL`], the content size in
/// the header (the installer sizes its buffers by it) and a checksum, so a damaged frame fails
/// in the decoder as well. Single-threaded, so the bytes depend only on the input.
pub(crate) fn frame_compressor() -> io::Result<zstd::bulk::Compressor<'static>> {
    let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
    c.include_checksum(true)?;
    c.include_contentsize(true)?;
    Ok(c)
}

/// Copies `src` into `file` at its position `offset`.
fn copy_part(file: &mut File, tmp: &Path, src: &Path, offset: u64) -> Result<Part, PayloadError> {
    let input = File::open(src).map_err(io_err("opening", src))?;
    let mut reader = Hashing::new(input);
    let mut out = BufWriter::with_capacity(1 << 20, &mut *file);
    io::copy(&mut reader, &mut out).map_err(io_err("copying into the payload", src))?;
    out.flush().map_err(io_err("writing", tmp))?;
    Ok(Part {
        offset,
        length: reader.count(),
        sha256: hex::encode(&reader.digest()),
    })
}
