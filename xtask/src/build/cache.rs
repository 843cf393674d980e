//! The stage cache: what a build stage made, stored under a key that is the SHA-256 of
//! everything that determines it, so that a later build with the same inputs takes it instead
//! of running the stage again.
//!
//! It lives in `~/.cache/kiln/stages/` beside the downloaded packages (`$XDG_CACHE_HOME/kiln`
//! when that is set; `KILN_STAGE_CACHE` names another directory), one file an entry:
//! `<kind>/<key in hex>`. An entry is its bytes followed by a trailer: [`TRAILER_MAGIC`] and the
//! SHA-256 of the bytes. An entry is written to a temporary file and renamed into place, so two
//! builds at once never see half an entry (both may write the same one: the bytes are the same).
//! Reading checks the trailer: an entry that was cut short or changed is said once, removed,
//! and the stage runs again. An entry used is touched; after each build the entries not used
//! for the longest time go until the cache is under [`MAX_BYTES`].

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use kiln_contract::hex;

/// The cache's size after a build's pruning: a few builds' package trees (about 700 MiB each),
/// their initramfs images and the compressed chunks of their disks.
pub const MAX_BYTES: u64 = 4 << 30;
/// After an entry's bytes: this, then their SHA-256.
const TRAILER_MAGIC: &[u8; 12] = b"kiln-stage 1";
const TRAILER_LEN: usize = TRAILER_MAGIC.len() + 32;
/// A temporary file older than this is left from a build that stopped; pruning removes it.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// The key of a cache entry: the SHA-256 of a stage's name and inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key(pub [u8; 32]);

impl Key {
    pub fn hex(&self) -> String {
        hex::encode(&self.0)
    }
}

/// Builds a [`Key`] from labelled inputs; each is length-prefixed, so that no two different
/// lists of inputs give the same key.
pub struct KeyBuilder(Sha256);

impl KeyBuilder {
    pub fn new(stage: &str) -> KeyBuilder {
        KeyBuilder(Sha256::new()).with("stage", stage.as_bytes())
    }

    pub fn with(mut self, label: &str, value: &[u8]) -> KeyBuilder {
        for part in [label.as_bytes(), value] {
            self.0.update((part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
        self
    }

    pub fn finish(self) -> Key {
        Key(self.0.finalize().into())
    }
}

/// The stage cache of a build, or none (`--no-cache`).
pub struct StageCache {
    dir: Option<PathBuf>,
    /// Entries touched at or after this were used by this build and are kept by pruning.
    started: SystemTime,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl StageCache {
    /// The cache where the environment puts it, or none when `no_cache`.
    pub fn open(no_cache: bool) -> Result<StageCache> {
        let dir = if no_cache { None } else { Some(default_dir()?) };
        Ok(StageCache::at(dir))
    }

    /// A cache in `dir` (none: nothing is read or written).
    pub fn at(dir: Option<PathBuf>) -> StageCache {
        StageCache {
            dir,
            // A second back: file times may be coarser than the clock.
            started: SystemTime::now() - Duration::from_secs(1),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.dir.is_some()
    }

    fn path(&self, kind: &str, key: &Key) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(kind).join(key.hex()))
    }

    /// The bytes stored under `kind`/`key`, checked; `None` when there are none or they were
    /// damaged (said, and the entry removed).
    pub fn load(&self, kind: &str, key: &Key) -> Option<Vec<u8>> {
        let path = self.path(kind, key)?;
        let mut bytes = fs::read(&path).ok()?;
        if !intact(&bytes) {
            eprintln!(
                "warning: stage cache entry {} is damaged (cut short or changed since it was written): removed; the stage runs again",
                path.display()
            );
            let _ = fs::remove_file(&path);
            return None;
        }
        bytes.truncate(bytes.len() - TRAILER_LEN);
        // Touched: pruning keeps what was used last.
        if let Ok(f) = File::options().write(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(bytes)
    }

    /// Stores `bytes` under `kind`/`key`. A cache that cannot be written (disk full, read-only)
    /// is said and otherwise ignored: the build does not need it.
    pub fn store(&self, kind: &str, key: &Key, bytes: &[u8]) {
        let Some(path) = self.path(kind, key) else {
            return;
        };
        if let Err(e) = write_entry(&path, bytes) {
            eprintln!(
                "warning: could not store stage cache entry {}: {e:#} (the build goes on without it)",
                path.display()
            );
        }
    }

    /// Removes temporary files left by stopped builds, then the entries used longest ago until
    /// the cache holds at most `max_bytes`; what this build used stays. Returns the bytes freed.
    pub fn prune(&self, max_bytes: u64) -> Result<u64> {
        let Some(dir) = &self.dir else {
            return Ok(0);
        };
        let now = SystemTime::now();
        let mut entries = Vec::new();
        let mut freed = 0;
        for kind in read_dir_or_empty(dir)? {
            for path in read_dir_or_empty(&kind)? {
                let Ok(meta) = fs::metadata(&path) else {
                    continue;
                };
                let modified = meta.modified().unwrap_or(now);
                let temp = path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(".tmp"));
                if temp {
                    if now.duration_since(modified).unwrap_or_default() > STALE_TEMP
                        && fs::remove_file(&path).is_ok()
                    {
                        freed += meta.len();
                    }
                    continue;
                }
                entries.push((modified, meta.len(), path));
            }
        }
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        for (modified, len, path) in entries {
            if total <= max_bytes || modified >= self.started {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total -= len;
                freed += len;
            }
        }
        Ok(freed)
    }
}

/// `$KILN_STAGE_CACHE`, else `stages/` in Kiln's cache directory (beside the packages).
pub fn default_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KILN_STAGE_CACHE").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    Ok(kiln_image::debian::Cache::from_env()?.root().join("stages"))
}

fn intact(bytes: &[u8]) -> bool {
    let Some(split) = bytes.len().checked_sub(TRAILER_LEN) else {
        return false;
    };
    let (body, trailer) = bytes.split_at(split);
    let digest: [u8; 32] = Sha256::digest(body).into();
    trailer[..TRAILER_MAGIC.len()] == TRAILER_MAGIC[..] && trailer[TRAILER_MAGIC.len()..] == digest
}

fn write_entry(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("an entry has a kind directory");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> Result<()> {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.write_all(TRAILER_MAGIC)?;
        f.write_all(&Sha256::digest(bytes))?;
        fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn read_dir_or_empty(dir: &Path) -> Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries.filter_map(|e| e.ok().map(|e| e.path())).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// `cargo xtask clean`: empties the stage cache (the downloaded packages stay unless
/// `packages`).
pub fn clean(packages: bool) -> Result<()> {
    let mut dirs = vec![default_dir()?];
    if packages {
        dirs.push(kiln_image::debian::Cache::from_env()?.root().to_owned());
    }
    for dir in dirs {
        match fs::remove_dir_all(&dir) {
            Ok(()) => eprintln!("removed {}", dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("{} was already empty", dir.display())
            }
            Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::flash::testutil::Scratch;

    fn cache(name: &str) -> (Scratch, StageCache) {
        let dir = Scratch::new(&format!("stage-cache-{name}"));
        let cache = StageCache::at(Some(dir.path().join("stages")));
        (dir, cache)
    }

    #[test]
    fn keys_follow_every_input_and_its_boundaries() {
        let k = |parts: &[(&str, &[u8])]| {
            parts
                .iter()
                .fold(KeyBuilder::new("s"), |b, (l, v)| b.with(l, v))
                .finish()
        };
        let base = k(&[("a", b"xy"), ("b", b"z")]);
        assert_eq!(base, k(&[("a", b"xy"), ("b", b"z")]));
        assert_ne!(base, k(&[("a", b"x"), ("b", b"yz")]));
        assert_ne!(base, k(&[("a", b"xy"), ("b", b"Z")]));
        assert_ne!(
            base,
            KeyBuilder::new("t")
                .with("a", b"xy")
                .with("b", b"z")
                .finish()
        );
    }

    #[test]
    fn an_entry_comes_back_and_a_disabled_cache_holds_nothing() {
        let (_d, cache) = cache("entry");
        let key = KeyBuilder::new("s").finish();
        assert_eq!(cache.load("k", &key), None);
        cache.store("k", &key, b"output");
        assert_eq!(cache.load("k", &key).as_deref(), Some(&b"output"[..]));
        let off = StageCache::at(None);
        off.store("k", &key, b"output");
        assert_eq!(off.load("k", &key), None);
    }

    #[test]
    fn a_cut_or_changed_entry_is_refused_and_removed() {
        let (_d, cache) = cache("damage");
        let key = KeyBuilder::new("s").finish();
        let path = cache.path("k", &key).unwrap();
        for damage in [
            |b: &mut Vec<u8>| b.truncate(b.len() - 1),
            |b: &mut Vec<u8>| b[3] ^= 1,
            |b: &mut Vec<u8>| b.truncate(10),
            |b: &mut Vec<u8>| b.clear(),
        ] {
            cache.store("k", &key, b"some stage output");
            let mut bytes = fs::read(&path).unwrap();
            damage(&mut bytes);
            fs::write(&path, &bytes).unwrap();
            assert_eq!(cache.load("k", &key), None);
            assert!(!path.exists(), "a damaged entry stayed");
        }
    }

    #[test]
    fn builds_writing_and_reading_at_once_never_see_half_an_entry() {
        let (_d, cache) = cache("race");
        let key = KeyBuilder::new("s").finish();
        let big: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..20 {
                        cache.store("k", &key, &big);
                    }
                });
            }
            s.spawn(|| {
                for _ in 0..200 {
                    if let Some(got) = cache.load("k", &key) {
                        assert!(got == big, "a reader saw other bytes");
                    }
                }
            });
        });
        assert_eq!(cache.load("k", &key).unwrap(), big);
        let leftovers: Vec<_> = read_dir_or_empty(&cache.dir.as_ref().unwrap().join("k"))
            .unwrap()
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn pruning_drops_the_least_recently_used_and_keeps_this_builds() {
        let (_d, old_build) = cache("prune");
        let keys: Vec<Key> = (0..4u8)
            .map(|i| KeyBuilder::new("s").with("i", &[i]).finish())
            .collect();
        for (i, key) in keys.iter().enumerate() {
            old_build.store("k", key, &[0u8; 1000]);
            let when = SystemTime::now() - Duration::from_secs(1000 - i as u64 * 100);
            File::options()
                .write(true)
                .open(old_build.path("k", key).unwrap())
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        let this_build = StageCache::at(old_build.dir.clone());
        // This build uses the oldest entry: it stays.
        assert!(this_build.load("k", &keys[0]).is_some());
        let freed = this_build.prune(2 * (1000 + TRAILER_LEN as u64)).unwrap();
        assert_eq!(freed, 2 * (1000 + TRAILER_LEN as u64));
        let kept: Vec<bool> = keys
            .iter()
            .map(|k| this_build.path("k", k).unwrap().exists())
            .collect();
        assert_eq!(kept, [true, false, false, true]);
    }
}
