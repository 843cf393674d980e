//! `cargo xtask keygen`: makes the update signing key pair, the private key (PKCS#8 v1 PEM,
//! mode 0600) for `build-image --signing-key` and the public key (SPKI PEM) the image carries.
//! Never overwrites a key, and keeps private keys out of the repository.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_updater::keys::SigningKey;

use crate::host;

pub const PRIVATE_FILE: &str = "update-signing-key.pem";
/// The public key's file name: the one a build puts beside its image.
pub const PUBLIC_FILE: &str = crate::release::KEY_FILE;

#[derive(clap::Args)]
pub struct KeygenConfig {
    /// Where the keys go (default: ~/.config/kiln/).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(cfg: &KeygenConfig) -> Result<()> {
    let dir = match &cfg.out {
        Some(d) => d.clone(),
        None => default_dir()?,
    };
    let (private, public) = keygen(&dir)?;
    eprintln!(
        "wrote {} (private, mode 0600: keep it secret and backed up) and {} (public)",
        private.display(),
        public.display()
    );
    eprintln!(
        "build with it: cargo xtask build-image --signing-key {}",
        private.display()
    );
    Ok(())
}

/// `~/.config/kiln`.
fn default_dir() -> Result<PathBuf> {
    let home =
        std::env::var_os("HOME").context("HOME is not set: name the directory with --out")?;
    Ok(dir_in_home(Path::new(&home)))
}

/// Where keygen puts the keys by default, under the home directory `home`.
pub fn dir_in_home(home: &Path) -> PathBuf {
    home.join(".config/kiln")
}

/// Writes a new key pair into `dir` (created with mode 0700 if missing); refuses if either file
/// exists or `dir` is inside the repository (outside `build/`, which git ignores).
pub fn keygen(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    refuse_inside_repository(dir)?;
    let private = dir.join(PRIVATE_FILE);
    let public = dir.join(PUBLIC_FILE);
    for path in [&private, &public] {
        if path.symlink_metadata().is_ok() {
            bail!(
                "{} already exists: keygen never replaces a key (images signed with it would no longer update); move it away first",
                path.display()
            );
        }
    }
    let key = SigningKey::generate()?;
    key.write_pem(&private)?;
    key.verifying_key().write_pem(&public)?;
    Ok((private, public))
}

fn refuse_inside_repository(dir: &Path) -> Result<()> {
    let root = host::workspace_root();
    let (Ok(dir), Ok(root)) = (dir.canonicalize(), root.canonicalize()) else {
        return Ok(());
    };
    if dir.starts_with(&root) && !dir.starts_with(root.join("build")) {
        bail!(
            "{} is inside the repository: a private key must never be committed; use a directory outside it (the default is ~/.config/kiln/)",
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_updater::keys::VerifyingKey;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_are_private_and_never_overwritten() {
        // Under build/ (git ignores it), fresh for each run.
        let out = host::workspace_root().join("build/test-keygen/kiln");
        let _ = std::fs::remove_dir_all(&out);
        let (private, public) = keygen(&out).unwrap();
        assert_eq!(mode(&out), 0o700);
        assert_eq!(mode(&private), 0o600);
        assert_eq!(mode(&public), 0o644);
        let key = SigningKey::load_pem(&private).unwrap();
        let pub_text = std::fs::read_to_string(&public).unwrap();
        assert_eq!(
            VerifyingKey::from_pem(&pub_text).unwrap(),
            key.verifying_key()
        );

        let before = std::fs::read(&private).unwrap();
        let err = keygen(&out).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(std::fs::read(&private).unwrap(), before);
        // Only the public key left: still refused, so the pair never mismatches.
        std::fs::remove_file(&private).unwrap();
        assert!(keygen(&out).is_err());
        assert!(!private.exists());
    }

    #[test]
    fn keys_stay_out_of_the_repository() {
        let inside = host::workspace_root().join("xtask");
        let err = refuse_inside_repository(&inside).unwrap_err().to_string();
        assert!(err.contains("inside the repository"), "{err}");
        refuse_inside_repository(&host::workspace_root().join("build")).unwrap();
    }
}
