//! The payload stage: `update.payload`, what the update server hands to machines, signed with
//! the build's key, and that key's public half beside it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use kiln_image::verity;

use super::Build;

impl Build {
    /// `update.payload`: the USR image, kernel and initramfs with a signed manifest; and the
    /// public key beside it as `update-key.pub.pem` (for `publish` and the server; `flash`
    /// trusts it only when named with `--public-key`).
    pub(super) fn payload(
        &mut self,
        usr_image: &Path,
        kernel: &Path,
        initrd: &Path,
        usr: &verity::VerityInfo,
    ) -> Result<PathBuf> {
        use kiln_updater::payload::{write_payload, ManifestInput};
        self.signing.warn();
        let path = self.out_dir.join(crate::release::PAYLOAD_FILE);
        let input = ManifestInput::new(&self.def.image.app_id, &self.version, usr.hash_offset);
        let m = write_payload(&path, input, usr_image, kernel, initrd, &self.signing.key)
            .with_context(|| format!("writing {}", path.display()))?;
        let public = self.out_dir.join(crate::release::KEY_FILE);
        std::fs::write(&public, self.signing.key.verifying_key().to_pem()?)
            .with_context(|| format!("writing {}", public.display()))?;
        eprintln!(
            "    {} MiB ({} MiB USR image compressed to {} MiB), key {}",
            std::fs::metadata(&path)?.len() >> 20,
            m.usr_size >> 20,
            m.parts.usr.length >> 20,
            self.signing.path.display()
        );
        Ok(path)
    }
}
