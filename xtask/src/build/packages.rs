//! The Debian packages: `cargo xtask lock` resolves image.toml's packages against the mirror
//! into `packages.lock`; the build's first two stages fetch exactly those and extract them into
//! the tree.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use kiln_image::debian::{self, Cache, Lock, Mirror, Sources};
use kiln_image::definition::Definition;
use kiln_image::tree::{Meta, Tree};
use kiln_image::tree_codec;

use super::cache::KeyBuilder;

use super::Build;
use crate::host;

#[derive(clap::Args)]
pub struct LockConfig {
    /// The Debian mirror's base URI (default: the host's apt sources).
    #[arg(long)]
    pub mirror: Option<String>,
    /// The image definition.
    #[arg(long, default_value = "image/image.toml")]
    pub definition: PathBuf,
}

/// The lock file sits beside the definition.
pub(super) fn lock_path(definition: &Path) -> PathBuf {
    definition.with_file_name("packages.lock")
}

/// The mirrors of the definition's suites: named by the flag, the definition, or the host.
pub fn mirrors(def: &Definition, flag: Option<&str>) -> Result<Vec<Mirror>> {
    let mut mirrors = match flag.or(def.debian.mirror.as_deref()) {
        Some(uri) => def
            .debian
            .suites
            .iter()
            .map(|s| Mirror::new(uri, s))
            .collect(),
        None => {
            let suites: Vec<&str> = def.debian.suites.iter().map(String::as_str).collect();
            Sources::from_host()?.mirrors(&suites).context(
                "finding the Debian mirror in the host's apt sources (name one with --mirror or debian.mirror in image.toml)",
            )?
        }
    };
    for m in &mut mirrors {
        m.keyring = def.debian.keyring.clone();
        m.components = def.debian.components.clone();
    }
    Ok(mirrors)
}

/// `cargo xtask lock`: resolves the definition's packages against the mirror and writes
/// `packages.lock`.
pub fn lock(cfg: &LockConfig) -> Result<()> {
    let root = host::workspace_root();
    let def_path = root.join(&cfg.definition);
    let def = Definition::load(&def_path)?;
    let mirrors = mirrors(&def, cfg.mirror.as_deref())?;
    let cache = Cache::from_env()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let archive = debian::Archive::open(&mirrors, &cache, now)?;
    for warning in &archive.warnings {
        eprintln!("warning: {warning}");
    }
    let resolution = debian::resolve(&archive, &def.packages.include, &def.packages.exclude)?;
    let lock = Lock::from_resolution(&resolution);
    let path = lock_path(&def_path);
    lock.write(&path)?;
    eprintln!(
        "wrote {} ({} packages)",
        path.display(),
        lock.packages.len()
    );
    Ok(())
}

impl Build {
    /// The extracted packages: from the stage cache when it holds them for this lock file,
    /// else fetched (`~/.cache/kiln/debs/`), extracted and stored there.
    pub(super) fn package_tree(&mut self) -> Result<Tree> {
        let lock_path = lock_path(&self.def_path);
        if !lock_path.exists() {
            bail!(
                "{} is missing: run `cargo xtask lock` to resolve the packages of image.toml",
                lock_path.display()
            );
        }
        let lock_bytes = std::fs::read(&lock_path)
            .with_context(|| format!("reading {}", lock_path.display()))?;
        // Checked whether or not the tree comes from the cache.
        let lock = Lock::read(&lock_path)?;
        let wanted: std::collections::BTreeSet<&str> = self
            .def
            .packages
            .include
            .iter()
            .map(String::as_str)
            .collect();
        let locked: std::collections::BTreeSet<&str> =
            lock.packages.iter().map(|p| p.name.as_str()).collect();
        if let Some(missing) = wanted.iter().find(|p| !locked.contains(**p)) {
            bail!(
                "{missing} is in image.toml but not in {}: run `cargo xtask lock`",
                lock_path.display()
            );
        }
        let key = KeyBuilder::new("packages")
            .with("code", &self.code_digest()?)
            .with("packages.lock", &lock_bytes)
            .with("epoch", &self.epoch.to_le_bytes())
            .finish();
        if let Some(bytes) = self.cached(CACHE_KIND, &key) {
            match tree_codec::decode(&bytes) {
                Ok(tree) => return Ok(tree),
                // Intact bytes that do not decode: written by a build tool with another
                // encoding under the same key, which the key's code digest rules out; say it.
                Err(e) => eprintln!(
                    "warning: stage cache entry {CACHE_KIND}/{}: {e}; extracting afresh",
                    key.hex()
                ),
            }
            self.reused = false;
        }
        let debs = self.fetch_packages(&lock)?;
        let tree = self.extract(&debs)?;
        if self.cache.is_enabled() {
            self.cache
                .store(CACHE_KIND, &key, &tree_codec::encode(&tree)?);
        }
        Ok(tree)
    }

    fn fetch_packages(&mut self, lock: &Lock) -> Result<Vec<PathBuf>> {
        let mirrors = mirrors(&self.def, self.mirror_flag.as_deref())?;
        let fetched = debian::fetch(lock, &Cache::from_env()?, &mirrors, debian::DEFAULT_JOBS)?;
        Ok(fetched.into_iter().map(|f| f.path).collect())
    }

    fn extract(&mut self, debs: &[PathBuf]) -> Result<Tree> {
        let extracted = debian::extract_all(debs, Tree::new(Meta::root(0o755, self.epoch)), 2)?;
        for warning in &extracted.warnings {
            eprintln!("warning: {warning}");
        }
        Ok(extracted.tree)
    }
}

/// The stage cache's kind for extracted package trees.
const CACHE_KIND: &str = "packages";
