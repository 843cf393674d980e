//! Downloads from a mirror (`http://`, `https://` with the `https` feature, or `file://` for
//! local mirrors and tests), and the verified download that every index and package goes
//! through: temp file, size + SHA-256 check, rename.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::error::{io_err, Error, Result};

/// The size and SHA-256 a file must have, from a signed index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// Opens a reader over `url`. `not_found_hint` says what to do when the file is not there.
pub(crate) fn open(url: &str, not_found_hint: &str) -> Result<Box<dyn Read + Send>> {
    if let Some(path) = url.strip_prefix("file://") {
        return match File::open(path) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NotFound {
                url: url.to_string(),
                hint: not_found_hint.to_string(),
            }),
            Err(e) => Err(Error::Http {
                url: url.to_string(),
                reason: e.to_string(),
            }),
        };
    }
    if url.starts_with("https://") && !cfg!(feature = "https") {
        return Err(Error::Http {
            url: url.to_string(),
            reason: "https mirrors need kiln-image's `https` feature; or use the mirror's http:// \
                     URL (integrity comes from the signed Release, not the transport)"
                .to_string(),
        });
    }
    // One agent for the process, so downloads reuse connections to the mirror.
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    let agent = AGENT.get_or_init(|| {
        ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(30))
            // A read that stalls this long means a dead connection, not a slow one.
            .timeout_read(Duration::from_secs(60))
            .build()
    });
    match agent.get(url).call() {
        Ok(resp) => Ok(Box::new(resp.into_reader())),
        Err(ureq::Error::Status(404 | 410, _)) => Err(Error::NotFound {
            url: url.to_string(),
            hint: not_found_hint.to_string(),
        }),
        Err(ureq::Error::Status(code, resp)) => Err(Error::Http {
            url: url.to_string(),
            reason: format!("HTTP {code} {}", resp.status_text()),
        }),
        Err(e) => Err(Error::Http {
            url: url.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// The whole body of `url` in memory (for small files such as InRelease).
pub(crate) fn get_bytes(url: &str, not_found_hint: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    open(url, not_found_hint)?
        .read_to_end(&mut out)
        .map_err(|e| Error::Http {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    Ok(out)
}

/// Lower-case hex of bytes.
/// Downloads `url` to `dest` unless `dest` is already there, checking size and SHA-256 before
/// the file takes its name: a half-written or corrupt download never sits in the cache. The
/// running byte count goes to `progress`. `what` names the file in errors (`package foo`).
pub(crate) fn download_verified(
    url: &str,
    dest: &Path,
    expected: &Expected,
    what: &str,
    not_found_hint: &str,
    progress: &AtomicU64,
) -> Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let tmp = temp_name(dest);
    let result = copy_hashing(url, &tmp, expected, not_found_hint, progress);
    let (got_size, got_sha256) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if got_size != expected.size || got_sha256 != expected.sha256 {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::HashMismatch {
            what: what.to_string(),
            url: url.to_string(),
            expected_size: expected.size,
            expected_sha256: expected.sha256.clone(),
            got_size,
            got_sha256,
        });
    }
    std::fs::rename(&tmp, dest).map_err(io_err(format!(
        "renaming {} to {}",
        tmp.display(),
        dest.display()
    )))
}

/// A temp name beside `dest`, unique per process and call, so concurrent builds sharing a
/// cache never write the same file.
fn temp_name(dest: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".part-{}-{n}", std::process::id()));
    dest.with_file_name(name)
}

/// Copies `url` into a new file at `tmp`, returning its size and SHA-256. Reads at most one
/// byte more than expected, so a mirror sending an endless body cannot fill the disk.
fn copy_hashing(
    url: &str,
    tmp: &Path,
    expected: &Expected,
    not_found_hint: &str,
    progress: &AtomicU64,
) -> Result<(u64, String)> {
    let reader = open(url, not_found_hint)?;
    let mut reader = reader.take(expected.size + 1);
    let mut file = File::create(tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Http {
                    url: url.to_string(),
                    reason: e.to_string(),
                })
            }
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(io_err(format!("writing {}", tmp.display())))?;
        total += n as u64;
        progress.fetch_add(n as u64, Ordering::Relaxed);
    }
    file.sync_all()
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    Ok((total, kiln_contract::hex::encode(&hasher.finalize())))
}

/// The size and SHA-256 of a file already on disk.
pub(crate) fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut file = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut hasher = Sha256::new();
    let n =
        io::copy(&mut file, &mut hasher).map_err(io_err(format!("reading {}", path.display())))?;
    Ok((n, kiln_contract::hex::encode(&hasher.finalize())))
}
