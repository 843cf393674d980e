//! Debian packages without dpkg: find the mirror in the host's apt sources, verify the signed
//! indices, resolve the image's package list to exact versions, lock them, download the .debs
//! into a cache by SHA-256, and unpack them into a [`Tree`](crate::tree::Tree) with merged `/usr`.
//!
//! ```text
//! Sources::from_host()?.mirrors(&suites)?      where the packages are
//! Archive::open(&mirrors, &cache, now)?        signed Release → Packages (cached by hash)
//! resolve(&archive, &wanted, &exclude)?        dependency closure, deterministic
//! Lock::from_resolution(&r).write(path)?       packages.lock
//! fetch(&Lock::read(path)?, &cache, &mirrors, DEFAULT_JOBS)?  .debs, verified
//! extract_all(&paths, tree, jobs)?             the rootfs tree, plus control info
//! ```
//!
//! Host-only (feature `build`): nothing here runs on the device.

mod error;
pub mod extract;
pub mod fetch;
mod http;
pub mod index;
pub mod lock;
pub mod relation;
pub mod release;
pub mod resolve;
pub mod sources;
pub mod version;

#[cfg(test)]
mod network_test;
#[cfg(test)]
mod pipeline_test;
#[cfg(test)]
mod testrepo;

use std::path::{Path, PathBuf};

pub use error::{Error, Result};
pub use extract::{extract_all, read_deb, DebContents, DebInfo, Extracted, Extractor};
pub use fetch::{fetch, FetchedDeb, DEFAULT_JOBS};
pub use http::Expected;
pub use index::{Archive, Package};
pub use lock::{Lock, LockedPackage};
pub use resolve::{resolve, Resolution, Resolved};
pub use sources::{Mirror, Sources, DEFAULT_KEYRING};
pub use version::Version;

/// The suites an image is built from, lowest priority first.
pub const BOOKWORM_SUITES: &[&str] = &["bookworm", "bookworm-updates", "bookworm-security"];

/// Kiln's download cache: `indices/<sha256>.<ext>` and `debs/<sha256>.deb`. Every file is
/// named by the verified SHA-256 of its content, so entries never go stale and builds sharing
/// the cache never disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// `$XDG_CACHE_HOME/kiln`, else `$HOME/.cache/kiln`.
    pub fn from_env() -> Result<Cache> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .ok_or_else(|| Error::Io {
                what: "finding the cache directory".to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "neither XDG_CACHE_HOME nor HOME is set",
                ),
            })?;
        Ok(Cache::at(base.join("kiln")))
    }

    /// A cache rooted at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn indices_dir(&self) -> PathBuf {
        self.root.join("indices")
    }

    /// Where the .deb with this SHA-256 is kept.
    pub fn deb_path(&self, sha256: &str) -> PathBuf {
        self.root.join("debs").join(format!("{sha256}.deb"))
    }
}
