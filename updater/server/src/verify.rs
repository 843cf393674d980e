//! The publish-time check of a payload: its manifest's signature against the public key the
//! server was started with. Behind a trait so the server's tests need no signing key.

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
/// (`kiln_updater::payload::read_verified_manifest`).
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
}
