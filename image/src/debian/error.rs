//! The one error type of the Debian module: every variant names the input it is about (file,
//! URL, suite, package) and, where there is one, what to do about it.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },

    #[error("{path}:{line}: {reason}")]
    Sources {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("no apt source carries suite {suite:?} (read {searched}); add it to /etc/apt/sources.list.d/ or pass a mirror explicitly")]
    NoMirror { suite: String, searched: String },

    #[error("downloading {url}: {reason}")]
    Http { url: String, reason: String },

    #[error("{url} is not on the mirror (HTTP 404): {hint}")]
    NotFound { url: String, hint: String },

    #[error("InRelease of suite {suite} from {mirror} is not validly signed by a key in {keyring}: {detail}; check the keyring (apt-get install debian-archive-keyring) or use another mirror")]
    BadSignature {
        suite: String,
        mirror: String,
        keyring: PathBuf,
        detail: String,
    },

    #[error("running gpgv to check signatures: {0} (install it with `apt-get install gpgv`)")]
    Gpgv(String),

    #[error("Release of suite {suite} from {mirror}: {reason}")]
    Release {
        suite: String,
        mirror: String,
        reason: String,
    },

    #[error("{what} from {url} does not match the signed index: expected {expected_size} bytes with SHA-256 {expected_sha256}, got {got_size} bytes with SHA-256 {got_sha256}; the download was deleted (a broken mirror or proxy: retry, or use another mirror)")]
    HashMismatch {
        what: String,
        url: String,
        expected_size: u64,
        expected_sha256: String,
        got_size: u64,
        got_sha256: String,
    },

    #[error("{origin}: {reason}")]
    Parse { origin: String, reason: String },

    #[error("image.toml wants {chain}: {reason}; {hint}")]
    Resolve {
        chain: String,
        reason: String,
        hint: String,
    },

    #[error("{path}:{line}: {reason}; run `cargo xtask lock` to write it anew")]
    Lock {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("{path}: {reason}")]
    Deb { path: PathBuf, reason: String },

    #[error("{path}: adding {entry} to the tree: {source}")]
    Tree {
        path: PathBuf,
        entry: String,
        source: crate::tree::TreeError,
    },
}

/// Wraps an I/O error with what was being done (`reading /etc/apt/sources.list`).
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
