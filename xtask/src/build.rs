//! `cargo xtask build-image` and `cargo xtask lock`: the image build as a flat list of named
//! stages over one [`Build`] context. Each stage reads what earlier stages made and writes one
//! artifact under `build/<version>/`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use kiln_image::boot::{self, BootEntry, Counter, Slot};
use kiln_image::debian::{self, Cache, Lock, Mirror, Sources};
use kiln_image::definition::Definition;
use kiln_image::disk::{self, PartitionContent, MIB};
use kiln_image::gpt::Guid;
use kiln_image::hostdir::{self, HostDirOptions};
use kiln_image::rootfs::{self, OsRelease};
use kiln_image::tree::{Content, Entry, Kind, Meta, Tree, TreePath};
use kiln_image::{container, cpio, ext4, fat, kmod, verity};

use crate::host;

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
    /// `KILN_SIGNING_KEY`; else a development key made once under `<out>/keys/`.
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
}

/// `--boot-menu-timeout` when not given: no menu shown.
pub const DEFAULT_BOOT_MENU_TIMEOUT: u32 = 0;

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
fn lock_path(definition: &Path) -> PathBuf {
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
    /// Where [`STATIC_BINARIES`] were built, once per build.
    static_dir: Option<PathBuf>,
    /// `build/<version>/`
    pub out_dir: PathBuf,
    /// Intermediate files: `build/<version>/work/`.
    pub work_dir: PathBuf,
    /// Every time in every artifact (`SOURCE_DATE_EPOCH`).
    pub epoch: i64,
    pub timings: Vec<(&'static str, Duration)>,
    /// Signs the update payload; its public key goes into `/usr` (see [`Build::signing_key`]).
    pub signing: BuildKey,
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
    pub fn new(cfg: &BuildConfig) -> Result<Build> {
        let root = host::workspace_root();
        let def_path = root.join(&cfg.definition);
        let def = Definition::load(&def_path)?;
        let version = cfg
            .version
            .clone()
            .unwrap_or_else(|| def.image.version.clone());
        kiln_image::definition::check_version(&version)
            .map_err(|p| anyhow::anyhow!("--version {version:?} {p}"))?;
        let out_dir = root.join(&cfg.out).join(&version);
        let work_dir = out_dir.join("work");
        std::fs::create_dir_all(&work_dir)
            .with_context(|| format!("creating {}", work_dir.display()))?;
        Ok(Build {
            def,
            def_path,
            version,
            mirror_flag: cfg.mirror.clone(),
            static_dir: None,
            debug_ssh_keys: cfg
                .debug_ssh_key
                .as_ref()
                .map(|p| debug_keys(p))
                .transpose()?,
            usr_overlays: cfg
                .usr_overlays
                .iter()
                .map(|d| {
                    let dir = root.join(d);
                    if dir.is_dir() {
                        Ok(dir)
                    } else {
                        Err(anyhow::anyhow!(
                            "--usr-overlay {}: not a directory; give a directory whose contents go under /usr",
                            d.display()
                        ))
                    }
                })
                .collect::<Result<_>>()?,
            boot_menu_timeout: cfg.boot_menu_timeout,
            release_files: true,
            out_dir,
            work_dir,
            epoch: source_date_epoch(&root)?,
            timings: Vec::new(),
            // The development key lives in the checkout's build/, whatever --out says: every build
            // of one checkout trusts the same key (and gives the same bytes).
            signing: BuildKey::load(cfg, &root.join("build"))?,
        })
    }

    /// The directory of the static device binaries, built on first use.
    fn static_binaries(&mut self) -> Result<PathBuf> {
        if self.static_dir.is_none() {
            self.static_dir = Some(build_static_binaries()?);
        }
        Ok(self.static_dir.clone().expect("set above"))
    }

    /// Runs one named stage, timing it.
    fn stage<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&mut Build) -> Result<T>,
    ) -> Result<T> {
        eprintln!("==> {name}");
        let start = Instant::now();
        let result = f(self).with_context(|| format!("stage `{name}`"));
        self.timings.push((name, start.elapsed()));
        result
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

    /// Every stage, top to bottom.
    pub fn run(&mut self) -> Result<Artifacts> {
        let debs = self.stage("fetch packages", Build::fetch_packages)?;
        let tree = self.stage("extract packages", |b| b.extract(&debs))?;
        let (tree, kver, kernel) = self.stage("rootfs", |b| b.rootfs(tree))?;
        let initrd = self.stage("initramfs", |b| b.initramfs(&tree, &kver))?;
        let (usr_image, usr) = self.stage("usr filesystem + verity", |b| b.usr(&tree))?;
        let kernel_path = self.work_dir.join("vmlinuz");
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
        if self.release_files {
            self.stage("release files", Build::release_files)?;
        }
        self.stage("report", |b| b.report(&artifacts, &tree))?;
        Ok(artifacts)
    }

    fn fetch_packages(&mut self) -> Result<Vec<PathBuf>> {
        let lock_path = lock_path(&self.def_path);
        if !lock_path.exists() {
            bail!(
                "{} is missing: run `cargo xtask lock` to resolve the packages of image.toml",
                lock_path.display()
            );
        }
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
        let mirrors = mirrors(&self.def, self.mirror_flag.as_deref())?;
        let fetched = debian::fetch(&lock, &Cache::from_env()?, &mirrors, debian::DEFAULT_JOBS)?;
        Ok(fetched.into_iter().map(|f| f.path).collect())
    }

    fn extract(&mut self, debs: &[PathBuf]) -> Result<Tree> {
        let extracted = debian::extract_all(debs, Tree::new(Meta::root(0o755, self.epoch)), 2)?;
        for warning in &extracted.warnings {
            eprintln!("warning: {warning}");
        }
        Ok(extracted.tree)
    }

    /// What dpkg would have done, the overlays, the module selection and os-release.
    fn rootfs(&mut self, mut tree: Tree) -> Result<(Tree, String, Content)> {
        let t = self.epoch;
        tree.clamp_mtimes(t);
        let (kver, kernel) = rootfs::take_kernel(&mut tree)?;
        let rules: Vec<&str> = self
            .def
            .kernel
            .keep_modules
            .iter()
            .map(String::as_str)
            .collect();
        kmod::select_in_tree(&mut tree, &kver, &rules)?;
        // Dropped after the selection, and selected again: a kept module that needs a dropped
        // one fails here, naming both.
        let modules = kmod::modules_dir(&kver);
        let dropped: Vec<String> = self
            .def
            .kernel
            .drop_modules
            .iter()
            .map(|m| format!("{modules}/{m}"))
            .collect();
        rootfs::drop_paths(&mut tree, &dropped)?;
        let kept = kmod::select_in_tree(&mut tree, &kver, &rules)
            .context("selecting modules after kernel.drop_modules: remove from drop_modules what a kept module needs")?;
        eprintln!("    kernel {kver}: kept {} modules", kept.modules.len());
        let removed = rootfs::drop_paths(&mut tree, &self.def.rootfs.drop)?;
        eprintln!("    dropped {removed} entries (rootfs.drop)");
        rootfs::merged_usr_links(&mut tree, t)?;
        rootfs::users_and_groups(&mut tree, t)?;
        rootfs::generated_configs(&mut tree, t)?;
        rootfs::pam_auth_update(&mut tree, t)?;
        let dropped = rootfs::move_etc_to_factory(&mut tree, t)?;
        eprintln!("    not in the image (made at boot): {}", dropped.join(" "));
        rootfs::alternatives(&mut tree, t)?;
        let opts = HostDirOptions {
            uid: 0,
            gid: 0,
            mtime: t,
        };
        let overlays = std::iter::once(host::workspace_root().join("overlays/usr"))
            .chain(self.usr_overlays.iter().cloned());
        for dir in overlays {
            hostdir::add_host_dir(&mut tree, &dir, &TreePath::new("usr")?, &opts)
                .with_context(|| format!("applying {}", dir.display()))?;
        }
        self.install_update_key(&mut tree)?;
        let bin_dir = self.static_binaries()?;
        for (_, bin) in STATIC_BINARIES.iter().filter(|(_, b)| *b != "init") {
            // Read now: a later cargo run must not change a file the tree points at.
            let path = bin_dir.join(bin);
            let data =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            tree.insert(
                format!("usr/bin/{bin}"),
                Entry::new(Kind::File(Content::bytes(data)), Meta::root(0o755, t)),
            )?;
        }
        for spec in &self.def.container_images {
            let rootfs = container::container_tree(&tree, spec, t)?;
            let archive = container::docker_archive(&rootfs, spec, t)?;
            eprintln!(
                "    container image {} ({} entries, {} KiB) → /{}/{}.tar",
                spec.tag,
                rootfs.len(),
                archive.len() / 1024,
                container::IMAGES_DIR,
                spec.name
            );
            container::install_archive(&mut tree, spec, archive, t)?;
        }
        rootfs::enable_units(&mut tree, &self.def.systemd.enable, t)?;
        rootfs::set_default_target(&mut tree, &self.def.systemd.default_target, t)?;
        let os = OsRelease {
            name: &self.def.image.name,
            version: &self.version,
            app_id: &self.def.image.app_id,
            channel: &self.def.image.channel,
        };
        rootfs::write_os_release(&mut tree, &os, t)?;
        tree.validate()?;
        Ok((tree, kver, kernel))
    }

    /// The static init, the module subset, busybox for the emergency shell → `initrd`.
    fn initramfs(&mut self, tree: &Tree, kver: &str) -> Result<PathBuf> {
        let t = self.epoch;
        let init = self.static_binaries()?.join("init");
        let always: Vec<&str> = self
            .def
            .kernel
            .initramfs_modules
            .iter()
            .map(String::as_str)
            .collect();
        let spec = kmod::InitramfsModules {
            classes: kmod::INITRAMFS_CLASSES,
            always_load: &always,
        };
        let (modules, set) = kmod::initramfs_modules_with(tree, kver, &spec, t)?;
        let mut initrd = Tree::new(Meta::root(0o755, t));
        let dir = Meta::root(0o755, t);
        initrd.graft(&TreePath::root(), &modules, &dir)?;
        for d in ["dev", "proc", "sys", "run", "sysroot", "bin", "etc/kiln"] {
            initrd.create_dirs(&TreePath::new(d)?, &dir)?;
        }
        initrd.insert(
            "dev/console",
            Entry::new(
                Kind::CharDevice { major: 5, minor: 1 },
                Meta::root(0o600, t),
            ),
        )?;
        initrd.insert(
            "init",
            Entry::new(Kind::File(Content::host(&init)?), Meta::root(0o755, t)),
        )?;
        let busybox = tree.get("usr/bin/busybox").context(
            "busybox is not in the image: add it to packages.include (the emergency shell)",
        )?;
        initrd.insert("bin/busybox", busybox.clone())?;
        initrd.insert(
            "bin/sh",
            Entry::new(Kind::Symlink(b"busybox".to_vec()), Meta::root(0o777, t)),
        )?;
        initrd.validate()?;
        eprintln!(
            "    {} modules, {} entries",
            set.modules.len(),
            initrd.len()
        );
        let path = self.work_dir.join("initrd");
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        cpio::write_initramfs(&initrd, std::io::BufWriter::new(file), 19)?;
        Ok(path)
    }

    /// `/usr` as a read-only ext4 with its dm-verity tree appended.
    fn usr(&mut self, tree: &Tree) -> Result<(PathBuf, verity::VerityInfo)> {
        let usr = tree
            .subtree(&TreePath::new("usr")?)
            .context("the tree has no /usr")?;
        let size = ext4::required_bytes(&usr, false)?.div_ceil(MIB) * MIB;
        let opts = ext4::Ext4Options {
            size_bytes: size,
            uuid: self.uuid("usr-fs"),
            hash_seed: self.uuid("usr-hash-seed"),
            label: "USR".into(),
            journal: false,
            timestamp: self.epoch,
        };
        let path = self.work_dir.join("usr.img");
        let file = create_rw(&path)?;
        let stats = ext4::write(&usr, &opts, &file)?;
        let params = verity::VerityParams {
            salt: self.derived("usr-verity-salt").to_vec(),
            uuid: self.uuid("usr-verity"),
        };
        let info = verity::append(&file, size, &params)?;
        let room = self.def.partitions.usr * MIB;
        let total = info.hash_offset + info.hash_bytes;
        if total > room {
            bail!(
                "/usr needs {} MiB with its verity tree but partitions.usr is {} MiB: drop packages or modules (kernel.keep_modules), or raise partitions.usr for new machines only",
                total.div_ceil(MIB),
                self.def.partitions.usr
            );
        }
        eprintln!(
            "    {} MiB filesystem ({} of {} blocks used), {} KiB verity tree, root hash {}",
            size / MIB,
            stats.blocks_used,
            stats.blocks_total,
            info.hash_bytes / 1024,
            info.root_hash_hex()
        );
        Ok((path, info))
    }

    /// The ESP: systemd-boot as the removable-media loader, loader.conf, slot A's entry,
    /// kernel and initramfs.
    fn esp(
        &mut self,
        tree: &Tree,
        kernel: &Content,
        initrd: &Path,
        entry: &BootEntry,
    ) -> Result<PathBuf> {
        let t = self.epoch;
        let mut esp = Tree::new(Meta::root(0o755, t));
        let dir = Meta::root(0o755, t);
        let file = |c: Content| Entry::new(Kind::File(c), Meta::root(0o644, t));
        let sdboot = tree
            .get("usr/lib/systemd/boot/efi/systemd-bootx64.efi")
            .context(
                "systemd-boot is not in the image: add systemd-boot-efi to packages.include",
            )?;
        esp.insert_with_parents("EFI/BOOT/BOOTX64.EFI", sdboot.clone(), &dir)?;
        esp.insert_with_parents(
            "loader/loader.conf",
            file(Content::bytes(boot::loader_conf(self.boot_menu_timeout))),
            &dir,
        )?;
        esp.insert_with_parents(
            format!("loader/entries/{}", entry.file_name()),
            file(Content::bytes(entry.render())),
            &dir,
        )?;
        let slot_dir = entry.slot.esp_dir();
        esp.insert_with_parents(
            format!("{}/vmlinuz", &slot_dir[1..]),
            file(kernel.clone()),
            &dir,
        )?;
        esp.insert_with_parents(
            format!("{}/initrd", &slot_dir[1..]),
            file(Content::host(initrd)?),
            &dir,
        )?;
        let path = self.work_dir.join("esp.img");
        let mut f = create_rw(&path)?;
        let opts = fat::FatOptions {
            size_bytes: self.def.partitions.esp * MIB,
            volume_id: u32::from_le_bytes(self.uuid("esp")[..4].try_into().expect("4 bytes")),
            label: "EFI-SYSTEM".into(),
            timestamp: t,
        };
        fat::format(&esp, &opts, &mut f)?;
        Ok(path)
    }

    /// ROOT: an empty journaled ext4 the init fills (`/etc` from the factory copy) and grows.
    fn root_fs(&mut self) -> Result<PathBuf> {
        let tree = Tree::new(Meta::root(0o755, self.epoch));
        let opts = ext4::Ext4Options {
            size_bytes: self.def.partitions.root * MIB,
            uuid: self.uuid("root-fs"),
            hash_seed: self.uuid("root-hash-seed"),
            label: "ROOT".into(),
            journal: true,
            timestamp: self.epoch,
        };
        let path = self.work_dir.join("root.img");
        ext4::write(&tree, &opts, &create_rw(&path)?)?;
        Ok(path)
    }

    /// OEM: a FAT volume, empty but for `--debug-ssh-key`'s keys; `flash --config` puts the
    /// cloud-config in.
    fn oem(&mut self) -> Result<PathBuf> {
        let path = self.work_dir.join("oem.img");
        let opts = fat::FatOptions {
            size_bytes: self.def.partitions.oem * MIB,
            volume_id: u32::from_le_bytes(self.uuid("oem")[..4].try_into().expect("4 bytes")),
            label: "OEM".into(),
            timestamp: self.epoch,
        };
        let mut tree = Tree::new(Meta::root(0o755, self.epoch));
        if let Some(keys) = &self.debug_ssh_keys {
            eprintln!("    WARNING: debug ssh keys on OEM: anyone with their private key logs in as core; never ship this image");
            tree.insert(
                "debug-ssh-keys",
                Entry::new(
                    Kind::File(Content::bytes(keys.clone())),
                    Meta::root(0o644, self.epoch),
                ),
            )?;
        }
        fat::format(&tree, &opts, &mut create_rw(&path)?)?;
        Ok(path)
    }

    fn disk(&mut self, esp: &Path, usr: &Path, oem: &Path, root: &Path) -> Result<PathBuf> {
        let p = self.def.partitions;
        let layout = disk::layout(p.esp, p.usr, p.oem, p.root);
        let contents = [
            PartitionContent {
                number: disk::ESP_NUMBER,
                image: Some(esp),
            },
            PartitionContent {
                number: disk::USR_A_NUMBER,
                image: Some(usr),
            },
            PartitionContent {
                number: disk::USR_B_NUMBER,
                image: None,
            },
            PartitionContent {
                number: disk::OEM_NUMBER,
                image: Some(oem),
            },
            PartitionContent {
                number: disk::ROOT_NUMBER,
                image: Some(root),
            },
        ];
        let path = self.out_dir.join("disk.raw");
        disk::assemble(&path, &layout, &contents, |name| {
            Guid::from_hash(&self.derived(&format!("gpt/{name}")))
        })?;
        Ok(path)
    }

    /// `disk.qcow2` when qemu-img is on the host (it is optional: the raw disk is the artifact).
    fn qcow2(&mut self, disk: &Path) -> Result<Option<PathBuf>> {
        if !host::has_tool("qemu-img") {
            eprintln!("    qemu-img not found: no disk.qcow2 (apt-get install qemu-utils)");
            return Ok(None);
        }
        let path = self.out_dir.join("disk.qcow2");
        host::run(
            Command::new("qemu-img")
                .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
                .arg(disk)
                .arg(&path),
        )?;
        Ok(Some(path))
    }

    fn report(&mut self, a: &Artifacts, tree: &Tree) -> Result<()> {
        let mut text = format!("Kiln {} ({})\n", self.version, self.def.image.app_id);
        text += &format!("usr root hash: {}\n", a.usr_hash);
        text += &format!(
            "rootfs: {} entries, {} MiB of file content\n",
            tree.len(),
            tree.content_bytes() / MIB
        );
        let usr_size = std::fs::metadata(&a.usr_image)?.len();
        text += &format!(
            "USR: {} MiB with verity of a {} MiB partition ({}% full)\n",
            usr_size.div_ceil(MIB),
            self.def.partitions.usr,
            usr_size * 100 / (self.def.partitions.usr * MIB)
        );
        text += "artifacts (sha256):\n";
        for path in [
            Some(&a.disk),
            a.qcow2.as_ref(),
            Some(&a.usr_image),
            Some(&a.kernel),
            Some(&a.initrd),
            Some(&a.payload),
        ]
        .into_iter()
        .flatten()
        {
            text += &format!(
                "  {}  {}\n",
                sha256_file(path)?,
                path.strip_prefix(&self.out_dir).unwrap_or(path).display()
            );
        }
        text += "stages (seconds):\n";
        for (name, d) in &self.timings {
            text += &format!("  {:>7.1}  {name}\n", d.as_secs_f64());
        }
        let path = self.out_dir.join("report.txt");
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        eprint!("{text}");
        Ok(())
    }
}

impl Build {
    /// What `flash` takes: `disk.raw.zst` (deterministic), `disk.raw.chunks` (the SHA-256 of
    /// each 16 MiB of disk.raw, so flash checks it without hashing its holes), `SHA256SUMS`
    /// over disk.raw, the chunk list, disk.raw.zst and update.payload, and `SHA256SUMS.sig` by
    /// the update signing key (checked with the `update-key.pub.pem` beside it).
    fn release_files(&mut self) -> Result<()> {
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

/// `cargo xtask build-image`.
pub fn build_image(cfg: &BuildConfig) -> Result<Artifacts> {
    let mut build = Build::new(cfg)?;
    let artifacts = build.run()?;
    eprintln!("built {}", artifacts.disk.display());
    Ok(artifacts)
}

/// `SOURCE_DATE_EPOCH` from the environment, else the time of the checkout's last commit, so
/// that two builds of one commit agree.
fn source_date_epoch(root: &Path) -> Result<i64> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"));
    }
    let out = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(root)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let s = String::from_utf8_lossy(&o.stdout);
            s.trim()
                .parse()
                .with_context(|| format!("git gave a commit time of {s:?}"))
        }
        _ => {
            bail!("no SOURCE_DATE_EPOCH and no git history to take it from: set SOURCE_DATE_EPOCH")
        }
    }
}

/// The device-side programs, built static (they run before `/usr` is there, or must not
/// depend on the image's C library version): (package, binary).
const STATIC_BINARIES: &[(&str, &str)] = &[
    ("kiln-initramfs", "init"),
    ("kiln-config", "kiln-config"),
    ("kiln-agent", "kiln-update-agent"),
    ("kiln-agent", "kiln-update"),
];

/// Builds [`STATIC_BINARIES`] (their own target dir: other RUSTFLAGS would rebuild the
/// workspace's) and returns the directory holding them.
fn build_static_binaries() -> Result<PathBuf> {
    let root = host::workspace_root();
    let target_dir = root.join("target/static");
    let mut cmd = Command::new("cargo");
    cmd.args([
        "build",
        "--quiet",
        "--release",
        "--target",
        "x86_64-unknown-linux-gnu",
    ]);
    for (package, bin) in STATIC_BINARIES {
        cmd.args(["-p", package, "--bin", bin]);
    }
    host::run(
        cmd.env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("CARGO_TARGET_DIR", &target_dir)
            .current_dir(&root),
    )?;
    Ok(target_dir.join("x86_64-unknown-linux-gnu/release"))
}

/// The public keys of `--debug-ssh-key`, checked to look like an `authorized_keys` file (a
/// private key given by mistake must not land on a disk).
fn debug_keys(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --debug-ssh-key {}", path.display()))?;
    let keys: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if keys.is_empty()
        || keys
            .iter()
            .any(|k| !(k.starts_with("ssh-") || k.starts_with("ecdsa-") || k.starts_with("sk-")))
    {
        bail!(
            "--debug-ssh-key {}: expected public keys (lines like `ssh-ed25519 AAAA… comment`); give the .pub file",
            path.display()
        );
    }
    Ok(keys
        .iter()
        .map(|k| format!("{k}\n"))
        .collect::<String>()
        .into_bytes())
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

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The key that signs a build's update payload, and where it came from.
pub struct BuildKey {
    pub key: kiln_updater::keys::SigningKey,
    pub path: PathBuf,
    /// The development key: images signed with it must not ship.
    pub development: bool,
}

/// Where a build keeps its development key, under the output directory (which git ignores).
const DEV_KEY: &str = "keys/dev-update-signing-key.pem";
/// Where the image carries the public key (the update agent's default).
pub const UPDATE_KEY_IN_IMAGE: &str = "usr/share/kiln/update-key.pem";

impl BuildKey {
    /// `--signing-key`, else `KILN_SIGNING_KEY`, else the development key under `build_root`
    /// (the checkout's `build/`; made on first use, the same key every build after, so builds
    /// stay reproducible).
    fn load(cfg: &BuildConfig, build_root: &Path) -> Result<BuildKey> {
        use kiln_updater::keys::SigningKey;
        let named = cfg
            .signing_key
            .clone()
            .or_else(|| std::env::var_os("KILN_SIGNING_KEY").map(PathBuf::from));
        if let Some(path) = named {
            let key = SigningKey::load_pem(&path)
                .with_context(|| format!("loading the signing key {}", path.display()))?;
            return Ok(BuildKey {
                key,
                path,
                development: false,
            });
        }
        let path = build_root.join(DEV_KEY);
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

    fn warn(&self) {
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

impl Build {
    /// The key that signs this build's update payload.
    pub fn signing_key(&self) -> &kiln_updater::keys::SigningKey {
        &self.signing.key
    }

    /// The public update key at [`UPDATE_KEY_IN_IMAGE`], where the update agent looks.
    fn install_update_key(&self, tree: &mut Tree) -> Result<()> {
        let t = self.epoch;
        let pem = self.signing.key.verifying_key().to_pem()?;
        tree.insert_with_parents(
            UPDATE_KEY_IN_IMAGE,
            Entry::new(
                Kind::File(Content::bytes(pem.into_bytes())),
                Meta::root(0o644, t),
            ),
            &Meta::root(0o755, t),
        )?;
        Ok(())
    }

    /// `update.payload`: the USR image, kernel and initramfs with a signed manifest; and the
    /// public key beside it as `update-key.pub.pem` (for `publish`, `flash` and the server).
    fn payload(
        &mut self,
        usr_image: &Path,
        kernel: &Path,
        initrd: &Path,
        usr: &verity::VerityInfo,
    ) -> Result<PathBuf> {
        use kiln_updater::payload::{write_payload, ManifestInput};
        self.signing.warn();
        let path = self.out_dir.join("update.payload");
        let input = ManifestInput::new(&self.def.image.app_id, &self.version, usr.hash_offset);
        let m = write_payload(&path, input, usr_image, kernel, initrd, &self.signing.key)
            .with_context(|| format!("writing {}", path.display()))?;
        let public = self.out_dir.join("update-key.pub.pem");
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
