//! `SHA256SUMS.sig`: one line of base64 holding the Ed25519 signature (by the build's update
//! signing key) over the SHA-256 digest of `SHA256SUMS`, the same construction as the payload
//! manifest's, so `openssl pkeyutl -verify -rawin` checks it too.

use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine;
use kiln_updater::keys::{SigningKey, VerifyingKey, SIGNATURE_LEN};
use sha2::{Digest, Sha256};

/// The `SHA256SUMS.sig` text for `sums`.
pub fn sign(sums: &[u8], key: &SigningKey) -> String {
    let digest: [u8; 32] = Sha256::digest(sums).into();
    let sig = key.sign_digest(&digest);
    format!(
        "{}\n",
        base64::engine::general_purpose::STANDARD.encode(sig)
    )
}

/// The signature in the `SHA256SUMS.sig` file at `path`.
pub fn read(path: &Path) -> Result<[u8; SIGNATURE_LEN]> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|b| <[u8; SIGNATURE_LEN]>::try_from(b).ok())
        .with_context(|| {
            format!(
                "{} is not one base64 line of a {SIGNATURE_LEN}-byte signature: rebuild, or fetch it again with the image",
                path.display()
            )
        })
}

/// Whether `sig` (from [`read`]) is `key`'s signature over `sums`.
pub fn verifies(sums: &[u8], sig: &[u8; SIGNATURE_LEN], key: &VerifyingKey) -> bool {
    let digest: [u8; 32] = Sha256::digest(sums).into();
    key.verify_digest(&digest, sig).is_ok()
}
