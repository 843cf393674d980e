//! Where published payloads live on the server's disk. An upload is streamed into `incoming/`,
//! checked, then renamed to a path named by its SHA-256
//! (`payloads/<app>/<version>/<sha256>.payload`), and only then registered in the database.
//! So the file a package row names always holds the bytes its hash says: a crash between the
//! rename and the commit leaves the old row with its old file, and an orphan file that the next
//! start sweeps away, with the uploads a crash left in `incoming/`. The data directory is
//! private to the server's user (0700).

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kiln_contract::hex;

/// Where uploads are received, under the data directory.
pub const INCOMING_DIR: &str = "incoming";

/// Where payloads are kept, under the data directory.
pub const PAYLOADS_DIR: &str = "payloads";

/// Files younger than this are never swept: another server sharing the directory may be in the
/// middle of receiving or registering them.
pub const SWEEP_MIN_AGE: Duration = Duration::from_secs(3600);

/// The path of a payload with these bytes.
pub fn content_path(data_dir: &Path, app_id: &str, version: &str, sha256: &[u8; 32]) -> PathBuf {
    data_dir
        .join(PAYLOADS_DIR)
        .join(app_id)
        .join(version)
        .join(format!("{}.payload", hex::encode(sha256)))
}

/// Moves a received upload to `target` (its content path), durably. A file already there holds
/// the same bytes (its name is their hash), so the upload is dropped instead.
pub fn place(received: &Path, target: &Path) -> io::Result<()> {
    if target.exists() {
        return std::fs::remove_file(received);
    }
    let dir = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    std::fs::rename(received, target)?;
    // The rename is durable once the directory is.
    std::fs::File::open(dir)?.sync_all()
}

/// Creates the data directory if needed and makes it private to this user.
pub fn private_data_dir(data_dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
}

/// Removes the uploads left in `incoming/` and the payload files no package refers to
/// (`referenced`), both when older than `min_age`; returns how many files went.
pub fn sweep(
    data_dir: &Path,
    referenced: &HashSet<PathBuf>,
    min_age: Duration,
) -> io::Result<usize> {
    let now = SystemTime::now();
    let old = |path: &Path| -> bool {
        std::fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age >= min_age))
    };
    let mut removed = 0;
    for path in files_under(&data_dir.join(INCOMING_DIR))? {
        if old(&path) {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    for path in files_under(&data_dir.join(PAYLOADS_DIR))? {
        let payload = path.extension().is_some_and(|e| e == "payload");
        if payload && !referenced.contains(&path) && old(&path) {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Every regular file under `dir` (none when it does not exist).
fn files_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path, secs: u64) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn old_uploads_and_unreferenced_payloads_are_swept_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let kept = content_path(data, "app", "1.0.0", &[1; 32]);
        let orphan = content_path(data, "app", "1.0.0", &[2; 32]);
        let fresh_orphan = content_path(data, "app", "1.1.0", &[3; 32]);
        let old_upload = data.join(INCOMING_DIR).join("upload-1-0");
        let fresh_upload = data.join(INCOMING_DIR).join("upload-1-1");
        for path in [&kept, &orphan, &fresh_orphan, &old_upload, &fresh_upload] {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"bytes").unwrap();
        }
        for path in [&kept, &orphan, &old_upload] {
            age(path, 7200);
        }
        let referenced = HashSet::from([kept.clone()]);
        assert_eq!(sweep(data, &referenced, SWEEP_MIN_AGE).unwrap(), 2);
        assert!(kept.exists() && fresh_orphan.exists() && fresh_upload.exists());
        assert!(!orphan.exists() && !old_upload.exists());
    }

    #[test]
    fn an_upload_of_bytes_already_there_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let target = content_path(dir.path(), "app", "1.0.0", &[1; 32]);
        let upload = dir.path().join("upload");
        for _ in 0..2 {
            std::fs::write(&upload, b"bytes").unwrap();
            place(&upload, &target).unwrap();
            assert!(!upload.exists());
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"bytes");
    }
}
