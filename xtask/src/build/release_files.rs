//! The release-files stage: what `flash` takes, in the formats of [`crate::release`].

use anyhow::Result;

use super::Build;

impl Build {
    /// What `flash` takes: `disk.raw.zst` (deterministic), `disk.raw.chunks` (the SHA-256 of
    /// each 16 MiB of disk.raw, so flash checks it without hashing its holes), `SHA256SUMS`
    /// over disk.raw, the chunk list, disk.raw.zst and update.payload, and `SHA256SUMS.sig` by
    /// the update signing key (checked with the `update-key.pub.pem` beside it).
    pub(super) fn release_files(&mut self) -> Result<()> {
        use crate::release::{self, chunks::ChunkList, signature};
        let disk = self.out_dir.join(release::DISK_FILE);
        let zst = self.out_dir.join(release::ZST_FILE);
        let (disk_hash, zst_hash) = release::compress(&disk, &zst)?;
        let chunks_hash = ChunkList::write_for(&disk, &self.out_dir.join(release::CHUNKS_FILE))?;
        let known = [
            (release::DISK_FILE, disk_hash),
            (release::CHUNKS_FILE, chunks_hash),
            (release::ZST_FILE, zst_hash),
        ];
        let sums = release::write_sums(&self.out_dir, &known)?;
        let sig = signature::sign(&sums, self.signing_key());
        release::write_atomic(&self.out_dir.join(release::SIG_FILE), sig.as_bytes())?;
        eprintln!(
            "    {} MiB compressed, {}, {}, {}",
            std::fs::metadata(self.out_dir.join(release::ZST_FILE))?.len() >> 20,
            release::CHUNKS_FILE,
            release::SUMS_FILE,
            release::SIG_FILE
        );
        Ok(())
    }
}
