//! The initramfs stage: the static init, the kernel modules it needs to find and mount the
//! disk, and busybox for the emergency shell, as a zstd-compressed cpio archive (`initrd`).

use std::path::PathBuf;

use anyhow::{Context, Result};

use kiln_image::tree::{Content, Entry, Kind, Meta, Tree, TreePath};
use kiln_image::{cpio, kmod, tree_codec};

use super::cache::KeyBuilder;
use super::Build;

/// The stage cache's kind for initramfs images.
const CACHE_KIND: &str = "initramfs";
/// The emergency shell, taken from the image's tree.
const BUSYBOX: &str = "usr/bin/busybox";

impl Build {
    /// The static init, the module subset, busybox for the emergency shell → `initrd`.
    pub(super) fn initramfs(&mut self, tree: &Tree, kver: &str) -> Result<PathBuf> {
        let t = self.epoch;
        let init = self.static_binaries()?.join("init");
        let path = self.out_dir.join(super::INITRD_FILE);
        // What it reads: the init, the kernel's modules and busybox of the tree, the module list.
        let key = KeyBuilder::new("initramfs")
            .with("code", &self.code_digest()?)
            .with("init", &self.file_digest(&init)?)
            .with(
                "tree",
                &tree_codec::digest_under(tree, &[&kmod::modules_dir(kver), BUSYBOX])?,
            )
            .with(
                "always",
                self.def.kernel.initramfs_modules.join("\n").as_bytes(),
            )
            .with("epoch", &t.to_le_bytes())
            .finish();
        if let Some(bytes) = self.cached(CACHE_KIND, &key) {
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
            return Ok(path);
        }
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
        let busybox = tree.get(BUSYBOX).context(
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
        let mut bytes = Vec::new();
        cpio::write_initramfs(&initrd, &mut bytes, 19)?;
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        self.cache.store(CACHE_KIND, &key, &bytes);
        Ok(path)
    }
}
