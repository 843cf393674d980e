//! The release-files stage: what `flash` takes, in the formats of [`crate::release`].

use anyhow::Result;

use super::cache::{Key, KeyBuilder, StageCache};
use super::Build;
use crate::release::{self, chunks::ChunkList, FrameCache};

impl Build {
    /// What `flash` takes: `disk.raw.zst` (deterministic), `disk.raw.chunks` (the SHA-256 of
    /// each 16 MiB of disk.raw, so flash checks it without hashing its holes), `SHA256SUMS`
    /// over disk.raw, the chunk list, disk.raw.zst and update.payload, and `SHA256SUMS.sig` by
    /// the update signing key (which flash checks with the keys the user trusts, see
    /// `flash/trust.rs`, not with the `update-key.pub.pem` beside it). The chunks whose
    /// compressed frame is in the stage cache are not compressed again. Returns the chunk list's
    /// path under the output directory.
    pub(super) fn release_files(&mut self) -> Result<String> {
        use crate::release::signature;
        let disk = self.out_dir.join(release::DISK_FILE);
        let zst = self.out_dir.join(release::ZST_FILE);
        let list = ChunkList::of_file(&disk, release::chunks::CHUNK)?;
        let chunks_hash = list.write_to(&self.out_dir.join(release::CHUNKS_FILE))?;
        let frames = Frames::new(&self.cache);
        let zst_hash = release::compress(&disk, &zst, &list, &frames)?;
        let made = frames.made.load(std::sync::atomic::Ordering::Relaxed);
        self.reused = made == 0 && self.cache.is_enabled();
        let disk_hash = self.disk_digest(&disk)?;
        let known = [
            (release::DISK_FILE, disk_hash),
            (release::CHUNKS_FILE, chunks_hash),
            (release::ZST_FILE, zst_hash),
        ];
        let sums = release::write_sums(&self.out_dir, &known)?;
        let sig = signature::sign(&sums, self.signing_key());
        release::write_atomic(&self.out_dir.join(release::SIG_FILE), sig.as_bytes())?;
        eprintln!(
            "    {} MiB compressed ({} of {} chunks compressed, the others the same as another or in the stage cache), {}, {}, {}",
            std::fs::metadata(&zst)?.len() >> 20,
            made,
            list.hashes.len(),
            release::CHUNKS_FILE,
            release::SUMS_FILE,
            release::SIG_FILE
        );
        Ok(release::CHUNKS_FILE.to_owned())
    }

    /// The chunk list of `disk.raw` under `work/` (a build without release files), which the
    /// next build checks the disk against.
    pub(super) fn work_chunks(&mut self) -> Result<String> {
        let disk = self.out_dir.join(release::DISK_FILE);
        let list = ChunkList::of_file(&disk, release::chunks::CHUNK)?;
        let rel = super::stamp::WORK_CHUNKS;
        list.write_to(&self.out_dir.join(rel))?;
        Ok(rel.to_owned())
    }
}

/// The stage cache as the store of compressed chunks, counting the chunks compressed.
struct Frames<'a> {
    cache: &'a StageCache,
    made: std::sync::atomic::AtomicUsize,
}

impl<'a> Frames<'a> {
    fn new(cache: &'a StageCache) -> Self {
        Frames {
            cache,
            made: Default::default(),
        }
    }

    fn key(chunk: &[u8; 32]) -> Key {
        KeyBuilder::new(FRAME_KIND)
            .with("chunk", chunk)
            .with("recipe", release::frame_recipe().as_bytes())
            .finish()
    }
}

/// The stage cache's kind for compressed chunks.
const FRAME_KIND: &str = "zst-chunk";

impl FrameCache for Frames<'_> {
    fn get(&self, chunk: &[u8; 32]) -> Option<Vec<u8>> {
        self.cache.load(FRAME_KIND, &Frames::key(chunk))
    }

    fn put(&self, chunk: &[u8; 32], frame: &[u8]) {
        self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.cache.store(FRAME_KIND, &Frames::key(chunk), frame);
    }
}
