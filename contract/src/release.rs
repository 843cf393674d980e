//! The files of a build's output directory (`build/<version>/`), by name: `cargo xtask
//! build-image` writes them; `flash`, `serve` and `publish` read them, and so do the VM scenarios.

/// The SHA-256 of each file the build signs, in `sha256sum`'s format.
pub const SUMS_FILE: &str = "SHA256SUMS";
/// The signature of [`SUMS_FILE`] with the build's signing key.
pub const SIG_FILE: &str = "SHA256SUMS.sig";
/// The build's public update key (written by the build when it has a signing key).
pub const KEY_FILE: &str = "update-key.pub.pem";
/// The disk image.
pub const DISK_FILE: &str = "disk.raw";
/// The SHA-256 of each chunk of [`DISK_FILE`].
pub const CHUNKS_FILE: &str = "disk.raw.chunks";
/// [`DISK_FILE`] compressed.
pub const ZST_FILE: &str = "disk.raw.zst";
/// The update payload the build writes beside the disk.
pub const PAYLOAD_FILE: &str = "update.payload";
