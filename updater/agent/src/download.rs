//! The payload download: resumable with HTTP `Range` into the download directory, and checked
//! against the size and SHA-256 of the Omaha response before anything else may read it.
//!
//! The partial file is named after the expected SHA-256, so a restart (or a new check offering the
//! same payload) continues where the last attempt stopped, and a different payload never appends to it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use kiln_contract::digest::Hashing;

use crate::http::HttpError;
use crate::state::Offer;

/// The SHA-256 of the payload file's bytes so far, fed as they are read back or written.
type FileDigest = Hashing<io::Sink>;

/// Bytes between two progress calls.
const PROGRESS_STEP: u64 = 4 << 20;
/// Free space a download leaves on the filesystem of the download directory.
pub const RESERVE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("writing the payload to {path}: {source}; check the free space on /var")]
    Local {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("payload {url} needs {need} more bytes in {dir}, which has {free} free (and keeps {RESERVE} for the system); the partial payload was deleted: free space on /var")]
    NoRoom {
        url: String,
        dir: PathBuf,
        need: u64,
        free: u64,
    },
    #[error(
        "payload {url} is larger than the {expected} bytes the Omaha response announced; refused"
    )]
    TooLarge { url: String, expected: u64 },
    #[error("payload {url} has SHA-256 {actual}, the Omaha response says {expected}; refused and deleted")]
    HashMismatch {
        url: String,
        expected: String,
        actual: String,
    },
}

impl DownloadError {
    /// Whether resuming later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, DownloadError::Http(e) if e.is_transient())
    }
}

/// The partial / complete payload file for an offer.
pub fn payload_path(dir: &Path, offer: &Offer) -> PathBuf {
    dir.join(format!("{}.payload", offer.sha256))
}

/// Downloads the offer's payload into `dir`, resuming a partial file, and returns the path of the
/// complete file once its size and SHA-256 match. `progress(done, total)` is called as bytes arrive.
pub fn download(
    http: &ureq::Agent,
    offer: &Offer,
    dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PathBuf, DownloadError> {
    let path = payload_path(dir, offer);
    let local = |source| DownloadError::Local {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(local)?;
    remove_other_payloads(dir, &path);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(local)?;
    let mut have = file.metadata().map_err(local)?.len();
    if have > offer.size {
        // Not this offer's bytes: start over.
        file.set_len(0).map_err(local)?;
        have = 0;
    }
    if let Some(free) = free_bytes(dir) {
        let need = offer.size - have;
        if free < need.saturating_add(RESERVE) {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(DownloadError::NoRoom {
                url: offer.url.clone(),
                dir: dir.to_owned(),
                need,
                free,
            });
        }
    }
    // The SHA-256 is taken as the bytes arrive (and of the kept part from the file): one pass
    // over the payload instead of a second one after it, which cost a guest under TCG (no SHA
    // instructions) about 11 s of its CPU for each 200 MiB. What is on the disk is checked again
    // against the signed manifest before anything is installed from it.
    let digest = if have < offer.size {
        fetch(http, offer, &mut file, have, &path, progress)?
    } else {
        hash_prefix(&mut file, offer.size, &path)?
    };
    file.sync_all().map_err(local)?;
    check_hash(offer, digest, &path)?;
    Ok(path)
}

/// Gets bytes `from..` and appends them, or starts over if the server ignores the range; returns
/// the digest of the whole file (the kept bytes read back, the new ones as they were written).
fn fetch(
    http: &ureq::Agent,
    offer: &Offer,
    file: &mut File,
    from: u64,
    path: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<FileDigest, DownloadError> {
    let local = |source| DownloadError::Local {
        path: path.to_path_buf(),
        source,
    };
    let mut request = http.get(&offer.url);
    if from > 0 {
        request = request.set("Range", &format!("bytes={from}-"));
    }
    let answer = request
        .call()
        .map_err(|e| HttpError::from_ureq("GET", &offer.url, e))?;
    // 206 continues at `from`; a 200 is the whole file, so the partial bytes are dropped.
    let start = if answer.status() == 206 && range_start(&answer) == Some(from) {
        from
    } else {
        0
    };
    file.set_len(start).map_err(local)?;
    let mut digest = hash_prefix(file, start, path)?;
    file.seek(SeekFrom::Start(start)).map_err(local)?;
    copy_body(
        answer.into_reader(),
        file,
        &mut digest,
        offer,
        start,
        path,
        progress,
    )?;
    Ok(digest)
}

/// The digest of the first `len` bytes of `file`, read from it.
fn hash_prefix(file: &mut File, len: u64, path: &Path) -> Result<FileDigest, DownloadError> {
    let local = |source| DownloadError::Local {
        path: path.to_path_buf(),
        source,
    };
    file.seek(SeekFrom::Start(0)).map_err(local)?;
    let mut digest = Hashing::new(io::sink());
    io::copy(&mut Read::by_ref(file).take(len), &mut digest).map_err(local)?;
    if digest.count() < len {
        return Err(local(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the file ended after {} of {len} bytes", digest.count()),
        )));
    }
    Ok(digest)
}

/// Appends the body to `file` and feeds it to `digest`.
fn copy_body(
    mut body: impl Read,
    file: &mut File,
    digest: &mut FileDigest,
    offer: &Offer,
    mut done: u64,
    path: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), DownloadError> {
    let mut buf = vec![0u8; 256 << 10];
    let mut reported = done;
    progress(done, offer.size);
    loop {
        let n = match body.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                // The bytes so far are kept for the resume; say how far it got.
                progress(done, offer.size);
                return Err(HttpError::from_io("GET", &offer.url, &e).into());
            }
        };
        if n == 0 {
            break;
        }
        let n64 = n as u64;
        if done + n64 > offer.size {
            return Err(DownloadError::TooLarge {
                url: offer.url.clone(),
                expected: offer.size,
            });
        }
        file.write_all(&buf[..n])
            .map_err(|source| DownloadError::Local {
                path: path.to_path_buf(),
                source,
            })?;
        digest
            .write_all(&buf[..n])
            .expect("a sink takes every byte");
        done += n64;
        if done - reported >= PROGRESS_STEP {
            progress(done, offer.size);
            reported = done;
        }
    }
    progress(done, offer.size);
    if done < offer.size {
        return Err(DownloadError::Http(HttpError::Transport {
            method: "GET",
            url: offer.url.clone(),
            reason: format!("the body ended after {done} of {} bytes", offer.size),
            unreachable: false,
        }));
    }
    Ok(())
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` header.
fn range_start(answer: &ureq::Response) -> Option<u64> {
    let value = answer.header("Content-Range")?;
    let range = value.trim().strip_prefix("bytes")?.trim();
    range.split('-').next()?.trim().parse().ok()
}

/// Compares the complete file's SHA-256 with the offer's; a mismatch deletes the file so the
/// next attempt starts clean.
fn check_hash(offer: &Offer, digest: FileDigest, path: &Path) -> Result<(), DownloadError> {
    let actual = kiln_contract::hex::encode(&digest.finish().0);
    if actual == offer.sha256 {
        return Ok(());
    }
    // Best effort: if the delete fails the next attempt re-hashes and deletes again.
    let _ = std::fs::remove_file(path);
    Err(DownloadError::HashMismatch {
        url: offer.url.clone(),
        expected: offer.sha256.clone(),
        actual,
    })
}

/// The bytes an unprivileged writer may still use on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: statvfs fills the struct it is given for a NUL-terminated path.
    if unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so the struct is filled.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Payloads of other offers are dead weight on /var once a new one is being fetched.
fn remove_other_payloads(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != keep && path.extension().is_some_and(|e| e == "payload") {
            let _ = std::fs::remove_file(&path);
        }
    }
}
