//! The initramfs stage: the static init, the kernel modules it needs to find and mount the
//! disk, and busybox for the emergency shell, as a zstd-compressed cpio archive (`initrd`).

use std::fs::File;
use std::path::PathBuf;

use anyhow::{Context, Result};

use kiln_image::tree::{Content, Entry, Kind, Meta, Tree, TreePath};
use kiln_image::{cpio, kmod};

use super::Build;

impl Build {
    /// The static init, the module subset, busybox for the emergency shell → `initrd`.
    pub(super) fn initramfs(&mut self, tree: &Tree, kver: &str) -> Result<PathBuf> {
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
}
