//! `SHA256SUMS.sig`: one line of base64 holding the Ed25519 signature (by the build's update
//! signing key) over the SHA-256 digest of `SHA256SUMS`, the same construction as the payload
//! manifest's, so `openssl pkeyutl -verify -rawin` checks it too.

use std::path::Path;

use anyhow::{bail, Context, Result};
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

/// Checks the signature file `sig_path` over `sums` with the public key at `key_path`.
pub fn verify(sums: &[u8], sig_path: &Path, key_path: &Path) -> Result<()> {
    let key = VerifyingKey::load_pem(key_path)
        .with_context(|| format!("loading the public key {}", key_path.display()))?;
    let text = std::fs::read_to_string(sig_path)
        .with_context(|| format!("reading {}", sig_path.display()))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|b| <[u8; SIGNATURE_LEN]>::try_from(b).ok())
        .with_context(|| {
            format!(
                "{} is not one base64 line of a {SIGNATURE_LEN}-byte signature: rebuild, or fetch it again with the image",
                sig_path.display()
            )
        })?;
    let digest: [u8; 32] = Sha256::digest(sums).into();
    if key.verify_digest(&digest, &raw).is_err() {
        bail!(
            "{} does not verify the checksums with the key {}: the image or its checksums were changed, or the key is another build's (nothing was written)",
            sig_path.display(),
            key_path.display()
        );
    }
    Ok(())
}
