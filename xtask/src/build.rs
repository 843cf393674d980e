//! `cargo xtask build-image` and `cargo xtask lock`: the image build as a flat list of named
//! stages over one [`Build`] context. Each stage reads what earlier stages made and writes one
//! artifact under `build/<version>/`.
//!
//! This file is the context and the list of stages ([`Build::run`]); each stage is a file of
//! its own, in the order they run: `packages.rs` (fetch and extract; also `cargo xtask lock`),
//! `rootfs.rs`, `initramfs.rs`, `usr.rs` (the `/usr` filesystem and its verity tree),
//! `partitions.rs` (the ESP, ROOT and OEM filesystems), `disk.rs` (`disk.raw`, `disk.qcow2`),
//! `payload.rs`, `release_files.rs` and `report.rs`. `context.rs` makes the context from the
//! command line, `key.rs` is the update signing key, and `binaries.rs` builds the static
//! device binaries the rootfs and the initramfs take.
//!
//! Work is skipped when its inputs did not change: `stamp.rs` reuses the outputs already in
//! `build/<version>/` when the whole build's key is theirs, and `cache.rs` is the stage cache
//! that keeps the package tree, the initramfs and the compressed chunks of the disk between
//! builds. `--no-cache` does without both.

mod binaries;
pub mod cache;
mod context;
mod disk;
mod initramfs;
mod key;
pub mod packages;
mod partitions;
mod payload;
pub mod rebuild;
mod release_files;
mod report;
mod rootfs;
mod stamp;
mod usr;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use kiln_contract::boot::{BootEntry, Counter, Slot};
use kiln_image::definition::Definition;
use kiln_image::gpt::Guid;

use key::BuildKey;
pub use key::{dev_key_path, SIGNING_KEY_ENV};

#[derive(clap::Args, Clone)]
pub struct BuildConfig {
    /// The version to build (default: image.toml's `image.version`).
    #[arg(long)]
    pub version: Option<String>,
    /// The Debian mirror's base URI (default: the host's apt sources).
    #[arg(long)]
    pub mirror: Option<String>,
    /// The image definition.
    #[arg(long, default_value = "image/image.toml")]
    pub definition: PathBuf,
    /// Where builds go: `<out>/<version>/disk.raw`, ...
    #[arg(long, default_value = "build")]
    pub out: PathBuf,
    /// The update signing key (PKCS#8 PEM, mode 0600, from `cargo xtask keygen`); else env
    /// `KILN_SIGNING_KEY`; else a development key made once under the checkout's `build/keys/`.
    #[arg(long)]
    pub signing_key: Option<PathBuf>,
    /// A public key file (`ssh-ed25519 AAAA…` lines) that may log in as `core` whatever the
    /// cloud-config says: written to the OEM partition as `debug-ssh-keys`. For development
    /// images only.
    #[arg(long)]
    pub debug_ssh_key: Option<PathBuf>,
    /// A directory laid over `/usr` after the repository's `overlays/usr` (repeatable, in order):
    /// site files, or a deliberately different image for tests. Its files are owned by root and
    /// keep their modes; its symlinks stay symlinks.
    #[arg(long = "usr-overlay", value_name = "DIR")]
    pub usr_overlays: Vec<PathBuf>,
    /// How long systemd-boot shows its menu (seconds) before it boots the newest slot with tries
    /// left. 0 (the default): no menu and no wait; an operator at the console holds a key (space)
    /// while the machine starts to get it, and pick the other slot by hand.
    #[arg(long, default_value_t = DEFAULT_BOOT_MENU_TIMEOUT)]
    pub boot_menu_timeout: u32,
    /// Run every stage afresh: neither reuse the outputs already in `<out>/<version>/` nor read
    /// or write the stage cache (`~/.cache/kiln/stages/`).
    #[arg(long)]
    pub no_cache: bool,
}

impl BuildConfig {
    /// What `cargo xtask build-image` builds with no flags.
    pub fn image_defaults() -> BuildConfig {
        BuildConfig {
            version: None,
            mirror: None,
            definition: "image/image.toml".into(),
            out: "build".into(),
            debug_ssh_key: None,
            signing_key: None,
            usr_overlays: Vec::new(),
            boot_menu_timeout: DEFAULT_BOOT_MENU_TIMEOUT,
            no_cache: false,
        }
    }
}

/// The stages whose outputs the stage cache keeps, and the one that reuses an earlier build's
/// outputs whole (named in the stage table; tests look for them).
pub const PACKAGES_STAGE: &str = "packages (fetch + extract)";
pub const INITRAMFS_STAGE: &str = "initramfs";
pub const EARLIER_OUTPUTS_STAGE: &str = "earlier outputs";

/// The build's outputs besides the release files, under `build/<version>/`: the stages write
/// them there, and a later build finds them again through the stamp.
pub const QCOW2_FILE: &str = "disk.qcow2";
pub const USR_IMAGE_FILE: &str = "work/usr.img";
pub const KERNEL_FILE: &str = "work/vmlinuz";
pub const INITRD_FILE: &str = "work/initrd";

/// `--boot-menu-timeout` when not given: no menu shown.
pub const DEFAULT_BOOT_MENU_TIMEOUT: u32 = 0;

/// One build: its inputs, where it writes, and how long each stage took.
pub struct Build {
    pub def: Definition,
    pub def_path: PathBuf,
    pub version: String,
    pub mirror_flag: Option<String>,
    /// The keys of `--debug-ssh-key`, put on OEM.
    pub debug_ssh_keys: Option<Vec<u8>>,
    /// `--usr-overlay` directories, after `overlays/usr`.
    pub usr_overlays: Vec<PathBuf>,
    /// `--boot-menu-timeout`, into loader.conf.
    pub boot_menu_timeout: u32,
    /// Whether to write `disk.qcow2` and the release files (`disk.raw.zst`, `SHA256SUMS`, ...):
    /// what a user flashes or boots. The test command's update versions need only their
    /// payload and skip them.
    pub release_files: bool,
    /// Where the static device binaries (`binaries.rs`) were built, once per build.
    static_dir: Option<PathBuf>,
    /// `build/<version>/`
    pub out_dir: PathBuf,
    /// Intermediate files: `build/<version>/work/`.
    pub work_dir: PathBuf,
    /// Every time in every artifact (`SOURCE_DATE_EPOCH`).
    pub epoch: i64,
    pub timings: Vec<StageTime>,
    /// Set by a stage that took its output from the cache (or an earlier build).
    reused: bool,
    /// The stage cache (disabled by `--no-cache`).
    pub cache: cache::StageCache,
    /// The SHA-256 of files hashed once in this build (inputs, and outputs a stage already
    /// hashed on the way): [`Build::file_digest`].
    digests: BTreeMap<PathBuf, [u8; 32]>,
    /// The SHA-256 of `disk.raw`, taken on a thread of its own while the stages after the
    /// disk run ([`Build::disk_digest`]).
    disk_hashing: Option<std::thread::JoinHandle<Result<[u8; 32]>>>,
    /// The report's lines above the stage table, when the outputs were reused.
    report_header: Option<String>,
    /// Signs the update payload; its public key goes into `/usr` (see [`Build::signing_key`]).
    pub signing: BuildKey,
}

/// One row of the stage table: how long the stage took and whether its output was reused.
pub struct StageTime {
    pub name: &'static str,
    pub took: Duration,
    pub reused: bool,
}

/// What the build made, for the report and for callers (tests, `qemu`).
pub struct Artifacts {
    pub disk: PathBuf,
    pub qcow2: Option<PathBuf>,
    pub usr_image: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub usr_hash: String,
    /// `update.payload`, signed with the build's key.
    pub payload: PathBuf,
}

impl Build {
    /// Every stage, top to bottom; or none, when the outputs of a build with the same inputs
    /// are in place and intact.
    pub fn run(&mut self) -> Result<Artifacts> {
        let key = self.stage("inputs", Build::input_key)?;
        if self.cache.is_enabled() {
            if let Some(artifacts) = self.stage(EARLIER_OUTPUTS_STAGE, |b| b.reuse_outputs(&key))? {
                self.reused_report()?;
                return Ok(artifacts);
            }
        }
        self.clear_stamp()?;
        let tree = self.stage(PACKAGES_STAGE, Build::package_tree)?;
        let (tree, kver, kernel) = self.stage("rootfs", |b| b.rootfs(tree))?;
        let initrd = self.stage(INITRAMFS_STAGE, |b| b.initramfs(&tree, &kver))?;
        let (usr_image, usr) = self.stage("usr filesystem + verity", |b| b.usr(&tree))?;
        let kernel_path = self.out_dir.join(KERNEL_FILE);
        std::fs::write(&kernel_path, kernel.read_all()?).context("writing the kernel")?;
        let entry = BootEntry::new(
            Slot::A,
            &self.version,
            &usr.root_hash_hex(),
            &self.def.kernel.cmdline,
            Counter::Blessed,
        );
        let esp = self.stage("esp", |b| b.esp(&tree, &kernel, &initrd, &entry))?;
        let root = self.stage("root filesystem", Build::root_fs)?;
        let oem = self.stage("oem", Build::oem)?;
        let disk = self.stage("disk", |b| b.disk(&esp, &usr_image, &oem, &root))?;
        let whole = disk.clone();
        self.disk_hashing = Some(std::thread::spawn(move || {
            crate::release::digest_of(&whole)
        }));
        let payload = self.stage("payload", |b| {
            b.payload(&usr_image, &kernel_path, &initrd, &usr)
        })?;
        let qcow2 = if self.release_files {
            self.stage("qcow2", |b| b.qcow2(&disk))?
        } else {
            None
        };
        let artifacts = Artifacts {
            disk,
            qcow2,
            usr_image,
            kernel: kernel_path,
            initrd,
            usr_hash: usr.root_hash_hex(),
            payload,
        };
        let chunks = if self.release_files {
            self.stage("release files", Build::release_files)?
        } else {
            self.stage("disk chunks", Build::work_chunks)?
        };
        let (header, files) = self.stage("report", |b| b.report(&artifacts, &tree))?;
        self.write_stamp(&key, &artifacts, &files, &chunks, &header)?;
        let freed = self.cache.prune(cache::MAX_BYTES)?;
        if freed > 0 {
            eprintln!(
                "    stage cache: {} MiB of entries used longest ago removed",
                freed >> 20
            );
        }
        Ok(artifacts)
    }

    /// Runs one named stage, timing it and noting whether it reused its output.
    fn stage<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&mut Build) -> Result<T>,
    ) -> Result<T> {
        eprintln!("==> {name}");
        let start = Instant::now();
        self.reused = false;
        let result = f(self).with_context(|| format!("stage `{name}`"));
        if self.reused {
            eprintln!("    reused");
        }
        self.timings.push(StageTime {
            name,
            took: start.elapsed(),
            reused: self.reused,
        });
        result
    }

    /// The SHA-256 of the file at `path`, hashed once per build.
    fn file_digest(&mut self, path: &Path) -> Result<[u8; 32]> {
        if let Some(d) = self.digests.get(path) {
            return Ok(*d);
        }
        let d = crate::release::digest_of(path)?;
        self.digests.insert(path.to_owned(), d);
        Ok(d)
    }

    /// The SHA-256 of `disk` (`disk.raw`): from the thread hashing it since the disk stage, or
    /// hashed now; kept for the report.
    fn disk_digest(&mut self, disk: &Path) -> Result<[u8; 32]> {
        if let Some(d) = self.digests.get(disk) {
            return Ok(*d);
        }
        let d = match self.disk_hashing.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))?,
            None => crate::release::digest_of(disk)?,
        };
        self.digests.insert(disk.to_owned(), d);
        Ok(d)
    }

    /// The stage cache's entry `kind`/`key`, when it holds one; marks the stage reused.
    fn cached(&mut self, kind: &str, key: &cache::Key) -> Option<Vec<u8>> {
        let bytes = self.cache.load(kind, key)?;
        self.reused = true;
        Some(bytes)
    }

    /// A GUID, UUID or salt derived from the build's inputs, never from randomness.
    fn derived(&self, what: &str) -> [u8; 32] {
        Sha256::digest(format!(
            "kiln/{}/{}/{what}",
            self.def.image.app_id, self.version
        ))
        .into()
    }

    fn uuid(&self, what: &str) -> [u8; 16] {
        Guid::from_hash(&self.derived(what)).0
    }

    /// The key that signs this build's update payload.
    pub fn signing_key(&self) -> &kiln_updater::keys::SigningKey {
        &self.signing.key
    }
}

/// `cargo xtask build-image`.
pub fn build_image(cfg: &BuildConfig) -> Result<Artifacts> {
    let mut build = Build::new(cfg)?;
    let artifacts = build.run()?;
    eprintln!("built {}", artifacts.disk.display());
    Ok(artifacts)
}

fn create_rw(path: &Path) -> Result<File> {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}
