//! The publish-time check of a payload: its manifest's signature against the public key the
//! server was started with, then every part's SHA-256 against the manifest (a damaged upload
//! is refused here, not by every machine that downloads it). Behind a trait so the server's
//! tests need no signing key.

use std::path::Path;

/// What the server learns from a payload whose signature checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPayload {
    pub app_id: String,
    pub version: String,
    pub min_from_version: Option<String>,
    /// The manifest as JSON, stored for the operator.
    pub manifest_json: String,
}

/// Checks a payload file and reads its manifest.
pub trait PayloadVerifier: Send + Sync {
    /// The payload's manifest, or a message saying why it is refused.
    fn verify(&self, path: &Path) -> Result<VerifiedPayload, String>;
}

/// The real check: the payload's manifest signature against the server's public key
/// (`kiln_updater::payload::read_verified_manifest`), then its parts (`check_parts`).
pub struct KeyVerifier {
    key: kiln_updater::keys::VerifyingKey,
}

impl KeyVerifier {
    /// Reads an SPKI PEM public key (the `update-key.pub.pem` a build writes).
    pub fn load(path: &Path) -> Result<Self, String> {
        kiln_updater::keys::VerifyingKey::load_pem(path)
            .map(|key| Self { key })
            .map_err(|e| e.to_string())
    }

    pub fn new(key: kiln_updater::keys::VerifyingKey) -> Self {
        Self { key }
    }
}

impl PayloadVerifier for KeyVerifier {
    fn verify(&self, path: &Path) -> Result<VerifiedPayload, String> {
        let manifest = kiln_updater::payload::read_verified_manifest(path, &self.key)
            .map_err(|e| e.to_string())?;
        kiln_updater::payload::check_parts(path, &manifest, &mut |_, _| {})
            .map_err(|e| e.to_string())?;
        let manifest_json = serde_json::to_string(&manifest).map_err(|e| e.to_string())?;
        Ok(VerifiedPayload {
            app_id: manifest.app_id,
            version: manifest.version,
            min_from_version: manifest.min_from_version,
            manifest_json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_file_that_is_not_a_signed_payload() {
        let key = kiln_updater::keys::SigningKey::generate()
            .unwrap()
            .verifying_key();
        let verifier = KeyVerifier::new(key);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("update.payload");
        std::fs::write(&path, b"not a payload at all, just some bytes").unwrap();
        let err = verifier.verify(&path).unwrap_err();
        assert!(
            err.contains("update.payload"),
            "the error names the file: {err}"
        );
    }

    #[test]
    fn a_signed_payload_with_a_damaged_part_is_refused() {
        use std::io::{Seek, SeekFrom, Write};
        let key = kiln_updater::keys::SigningKey::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (path, _) =
            kiln_updater::payload::testutil::make(dir.path(), "update.payload", "2.0.0", &key);
        let verifier = KeyVerifier::new(key.verifying_key());
        assert_eq!(verifier.verify(&path).unwrap().version, "2.0.0");
        // The last byte of the file is the initramfs part's: the signature still checks.
        let len = std::fs::metadata(&path).unwrap().len();
        let mut file = std::fs::File::options().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(len - 1)).unwrap();
        file.write_all(&[0x5a]).unwrap();
        drop(file);
        let err = verifier.verify(&path).unwrap_err();
        assert!(err.contains("initrd"), "the error names the part: {err}");
    }
}
