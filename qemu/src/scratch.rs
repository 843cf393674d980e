//! A work directory for VM scenarios that cleans up after success and stays for inspection after
//! a failure, saying where it is.

use std::path::{Path, PathBuf};

use crate::QemuError;

/// A fresh directory under the system's temporary directory. Dropping it removes it, unless the
/// thread is panicking (a failed test) or [`ScratchDir::keep`] was called: then it stays and its
/// path is printed on stderr.
#[derive(Debug)]
pub struct ScratchDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `kiln-<label>-XXXXXX` in the temporary directory. The path is short on purpose: the
    /// monitor's Unix socket lives inside, and socket paths are limited to 107 bytes.
    pub fn new(label: &str) -> Result<ScratchDir, QemuError> {
        let base = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix(&format!("kiln-{label}-"))
            .tempdir_in(&base)
            .map_err(|e| QemuError::io("creating a work directory in", &base, e))?;
        let path = dir.path().to_path_buf();
        Ok(ScratchDir {
            dir: Some(dir),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory after drop (e.g. when a scenario failed without panicking).
    pub fn keep(&mut self) {
        if let Some(dir) = self.dir.take() {
            // Leaking the handle is what keeps it: TempDir only deletes in its destructor.
            std::mem::forget(dir);
        }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep();
        }
        match self.dir.take() {
            Some(dir) => {
                // A leftover directory in /tmp is harmless; failing the caller over it is not.
                let _ = dir.close();
            }
            None => eprintln!("kiln-qemu: keeping {} for inspection", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_after_success_kept_after_keep() {
        let plain = ScratchDir::new("t").expect("scratch");
        let plain_path = plain.path().to_path_buf();
        drop(plain);
        assert!(!plain_path.exists());
        let mut kept = ScratchDir::new("t").expect("scratch");
        kept.keep();
        let kept_path = kept.path().to_path_buf();
        drop(kept);
        assert!(kept_path.is_dir());
        std::fs::remove_dir(&kept_path).expect("cleanup");
    }
}
