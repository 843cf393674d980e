//! The update signing keys: an Ed25519 key pair whose private half (PKCS#8 v1 PEM, mode 0600)
//! signs payload manifests on the host, and whose public half (SPKI PEM, built into `/usr`)
//! checks them on the device.
//!
//! Signatures are pure Ed25519 over the 32-byte SHA-256 digest of the signed bytes, so that
//! OpenSSL 3 checks them too: `openssl pkeyutl -verify -pubin -inkey key.pub.pem -rawin
//! -in digest.bin -sigfile sig.bin`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::Signer;

/// Length of a signature.
pub const SIGNATURE_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the signing key {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the signing key {path} is accessible by group or others (mode {mode:04o}): \
         run `chmod 600 {path}` (a private key must be readable only by its owner)"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{what} is not an Ed25519 {format} PEM key: {reason}")]
    Parse {
        what: String,
        format: &'static str,
        reason: String,
    },
    #[error("writing the key {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} already exists: keys are never overwritten; move it away or choose another place"
    )]
    Exists { path: PathBuf },
    #[error("encoding the key as PEM: {0}")]
    Encode(String),
    #[error("the operating system gave no random bytes for a new key: {0}")]
    Random(String),
    #[error("the signature does not match the digest and the update public key")]
    BadSignature,
}

/// The private key that signs payload manifests.
pub struct SigningKey(ed25519_dalek::SigningKey);

/// The public key the device checks payload manifests with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyingKey(ed25519_dalek::VerifyingKey);

impl SigningKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<SigningKey, KeyError> {
        let mut secret = [0u8; 32];
        rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut secret)
            .map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&secret)))
    }

    /// Reads a PKCS#8 PEM private key (v1 as OpenSSL writes it, or v2 with the public key),
    /// refusing a file that group or others may access.
    pub fn load_pem(path: &Path) -> Result<SigningKey, KeyError> {
        let read = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::from_pem(&text, &path.display().to_string())
    }

    /// Parses a PKCS#8 PEM private key; `what` names its source in errors.
    pub fn from_pem(text: &str, what: &str) -> Result<SigningKey, KeyError> {
        ed25519_dalek::SigningKey::from_pkcs8_pem(text)
            .map(SigningKey)
            .map_err(|e| KeyError::Parse {
                what: what.to_owned(),
                format: "PKCS#8 private",
                reason: e.to_string(),
            })
    }

    /// The key as PKCS#8 v1 PEM (the private key only, as `openssl genpkey` writes it).
    pub fn to_pem(&self) -> Result<String, KeyError> {
        let v1 = KeypairBytes {
            secret_key: self.0.to_bytes(),
            public_key: None,
        };
        v1.to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|e| KeyError::Encode(e.to_string()))
    }

    /// Writes the key to a new file of mode 0600; an existing file is never replaced.
    pub fn write_pem(&self, path: &Path) -> Result<(), KeyError> {
        write_new(path, self.to_pem()?.as_bytes(), 0o600)
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.0.verifying_key())
    }

    /// Pure Ed25519 over the 32 digest bytes.
    pub fn sign_digest(&self, digest: &[u8; 32]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(digest).to_bytes()
    }
}

impl VerifyingKey {
    /// Parses an SPKI PEM public key (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(text: &str) -> Result<VerifyingKey, KeyError> {
        ed25519_dalek::VerifyingKey::from_public_key_pem(text)
            .map(VerifyingKey)
            .map_err(|e| KeyError::Parse {
                what: "the update public key".to_owned(),
                format: "SPKI public",
                reason: e.to_string(),
            })
    }

    /// Reads an SPKI PEM public key file.
    pub fn load_pem(path: &Path) -> Result<VerifyingKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(&text).map_err(|e| match e {
            KeyError::Parse { format, reason, .. } => KeyError::Parse {
                what: path.display().to_string(),
                format,
                reason,
            },
            other => other,
        })
    }

    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeyError::Encode(e.to_string()))
    }

    /// Writes the public key to a new file of mode 0644; an existing file is never replaced.
    pub fn write_pem(&self, path: &Path) -> Result<(), KeyError> {
        write_new(path, self.to_pem()?.as_bytes(), 0o644)
    }

    /// `SHA256:` and the unpadded base64 of the SHA-256 of the key's 32 raw bytes, the form
    /// `ssh-keygen -l` prints, so two keys can be told apart in a message without their PEM.
    pub fn fingerprint(&self) -> String {
        use base64::Engine;
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.0.as_bytes());
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        )
    }

    /// Checks a pure Ed25519 signature over the 32 digest bytes. Uses the strict check (no
    /// small-order keys, canonical `S`), which OpenSSL's also is.
    pub fn verify_digest(
        &self,
        digest: &[u8; 32],
        signature: &[u8; SIGNATURE_LEN],
    ) -> Result<(), KeyError> {
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        self.0
            .verify_strict(digest, &sig)
            .map_err(|_| KeyError::BadSignature)
    }
}

/// Creates `path` with `mode` (never replacing a file), writes `bytes` and syncs them.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists {
                path: path.to_owned(),
            },
            _ => KeyError::Write {
                path: path.to_owned(),
                source,
            },
        })?;
    let write = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    // The process umask may have narrowed the mode; a public key should stay readable, and a
    // private key is 0600 either way.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(write)?;
    file.write_all(bytes).map_err(write)?;
    file.sync_all().map_err(write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_image::testutil::require_tool;
    use sha2::{Digest, Sha256};
    use std::process::Command;

    fn openssl(args: &[&str], dir: &Path) -> std::process::Output {
        let bin = require_tool("openssl", "openssl");
        Command::new(bin)
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running openssl")
    }

    fn openssl_ok(args: &[&str], dir: &Path) -> String {
        let out = openssl(args, dir);
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn digest(text: &str) -> [u8; 32] {
        Sha256::digest(text.as_bytes()).into()
    }

    #[test]
    fn openssl_reads_our_keys_and_verifies_our_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        key.write_pem(&dir.path().join("key.pem")).unwrap();
        key.verifying_key()
            .write_pem(&dir.path().join("pub.pem"))
            .unwrap();
        let mode = std::fs::metadata(dir.path().join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // PKCS#8 v1: the version INTEGER is 0 and there is no public key field.
        let asn1 = openssl_ok(&["asn1parse", "-in", "key.pem"], dir.path());
        assert!(asn1.contains("INTEGER           :00"), "{asn1}");
        assert_eq!(asn1.matches("cont [ 1 ]").count(), 0, "{asn1}");
        let public = openssl_ok(&["pkey", "-in", "key.pem", "-pubout"], dir.path());
        assert_eq!(public, key.verifying_key().to_pem().unwrap());

        let d = digest("a manifest");
        std::fs::write(dir.path().join("digest.bin"), d).unwrap();
        std::fs::write(dir.path().join("sig.bin"), key.sign_digest(&d)).unwrap();
        let verify = [
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            "pub.pem",
            "-rawin",
            "-in",
            "digest.bin",
            "-sigfile",
            "sig.bin",
        ];
        let out = openssl_ok(&verify, dir.path());
        assert!(out.contains("Signature Verified Successfully"), "{out}");
        // The same signature over another digest must fail in OpenSSL too.
        std::fs::write(dir.path().join("digest.bin"), digest("another")).unwrap();
        assert!(!openssl(&verify, dir.path()).status.success());
    }

    #[test]
    fn keys_and_signatures_from_openssl_work_here() {
        let dir = tempfile::tempdir().unwrap();
        openssl_ok(
            &["genpkey", "-algorithm", "ed25519", "-out", "key.pem"],
            dir.path(),
        );
        let path = dir.path().join("key.pem");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = SigningKey::load_pem(&path).unwrap();
        let public = openssl_ok(&["pkey", "-in", "key.pem", "-pubout"], dir.path());
        let vk = VerifyingKey::from_pem(&public).unwrap();
        assert_eq!(vk, key.verifying_key());
        // Our PEM of the key is byte for byte what OpenSSL wrote (both PKCS#8 v1).
        assert_eq!(
            key.to_pem().unwrap(),
            std::fs::read_to_string(&path).unwrap()
        );

        let d = digest("kiln 2.0.0");
        std::fs::write(dir.path().join("digest.bin"), d).unwrap();
        openssl_ok(
            &[
                "pkeyutl",
                "-sign",
                "-inkey",
                "key.pem",
                "-rawin",
                "-in",
                "digest.bin",
                "-out",
                "sig.bin",
            ],
            dir.path(),
        );
        let sig: [u8; 64] = std::fs::read(dir.path().join("sig.bin"))
            .unwrap()
            .try_into()
            .unwrap();
        vk.verify_digest(&d, &sig).unwrap();
        // Ed25519 is deterministic: our signature is OpenSSL's.
        assert_eq!(key.sign_digest(&d), sig);
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(matches!(
            vk.verify_digest(&d, &bad),
            Err(KeyError::BadSignature)
        ));
        assert!(vk.verify_digest(&digest("other"), &sig).is_err());
    }

    #[test]
    fn fingerprint_is_sha256_of_the_raw_key_in_unpadded_base64() {
        // RFC 8410's example public key. The expected value is what
        // `openssl pkey -pubin -outform DER | tail -c 32 | openssl dgst -sha256 -binary | base64`
        // prints, without the `=` padding.
        let rfc = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let key = VerifyingKey::from_pem(rfc).unwrap();
        assert_eq!(
            key.fingerprint(),
            "SHA256:50TAeRMgwyhUYO3bUj8UyI2FetpGuXpWkNiM+Xi5GR8"
        );
        let other = SigningKey::generate().unwrap().verifying_key();
        assert_ne!(other.fingerprint(), key.fingerprint());
        let again = VerifyingKey::from_pem(&other.to_pem().unwrap()).unwrap();
        assert_eq!(again.fingerprint(), other.fingerprint());
    }

    #[test]
    fn open_key_files_and_overwrites_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let key = SigningKey::generate().unwrap();
        key.write_pem(&path).unwrap();
        let before = std::fs::read(&path).unwrap();
        let err = SigningKey::generate()
            .unwrap()
            .write_pem(&path)
            .unwrap_err();
        assert!(matches!(err, KeyError::Exists { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = SigningKey::load_pem(&path).err().unwrap().to_string();
        assert!(err.contains("chmod 600") && err.contains("0640"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(
            SigningKey::load_pem(&path).unwrap().verifying_key(),
            key.verifying_key()
        );
        let err =
            VerifyingKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("SPKI"), "{err}");
    }
}
