//! The key that signs a build's update payload (and its `SHA256SUMS`): named on the command
//! line or in the environment, else a development key made once per checkout; and where the
//! image carries its public half.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The key that signs a build's update payload, and where it came from.
pub struct BuildKey {
    pub key: kiln_updater::keys::SigningKey,
    pub path: PathBuf,
    /// The development key: images signed with it must not ship.
    pub development: bool,
}

/// Where a checkout keeps its development key, under its `build/` (which git ignores).
const DEV_KEY: &str = "build/keys/dev-update-signing-key.pem";

/// The environment variable naming the signing key when `--signing-key` does not.
pub const SIGNING_KEY_ENV: &str = "KILN_SIGNING_KEY";

/// The development key of the checkout at `checkout` (which may not exist yet).
pub fn dev_key_path(checkout: &Path) -> PathBuf {
    checkout.join(DEV_KEY)
}

impl BuildKey {
    /// `--signing-key`, else `KILN_SIGNING_KEY`, else the development key of `checkout`
    /// ([`dev_key_path`]; made on first use, the same key every build after, so builds stay
    /// reproducible).
    pub(super) fn load(signing_key: Option<&Path>, checkout: &Path) -> Result<BuildKey> {
        use kiln_updater::keys::SigningKey;
        let named = signing_key
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(SIGNING_KEY_ENV).map(PathBuf::from));
        if let Some(path) = named {
            let key = SigningKey::load_pem(&path)
                .with_context(|| format!("loading the signing key {}", path.display()))?;
            return Ok(BuildKey {
                key,
                path,
                development: false,
            });
        }
        let path = dev_key_path(checkout);
        if !path.exists() {
            let dir = path.parent().expect("a file under keys/");
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            SigningKey::generate()?.write_pem(&path)?;
        }
        let key = SigningKey::load_pem(&path)
            .with_context(|| format!("loading the development key {}", path.display()))?;
        let b = BuildKey {
            key,
            path,
            development: true,
        };
        b.warn();
        Ok(b)
    }

    pub(super) fn warn(&self) {
        if self.development {
            eprintln!(
                "WARNING: signing updates with the DEVELOPMENT key {}: images built with it trust \
                 it and must NOT ship; make a real key with `cargo xtask keygen` and build with \
                 --signing-key (or KILN_SIGNING_KEY)",
                self.path.display()
            );
        }
    }
}
