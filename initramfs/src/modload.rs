//! Loading kernel modules without modprobe: the fixed list from `/etc/kiln/modules` and every
//! module whose alias matches a device's `modalias` in sysfs, dependencies first, through
//! `finit_module(2)`.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_image::kmod::{name_from_path, normalize_name, ModIndex, ALWAYS_LOAD_FILE};

use crate::log;
use crate::sys;

/// How deep the sysfs walk goes: device trees are far shallower; this bounds a loop through
/// a strange directory.
const MAX_SYSFS_DEPTH: usize = 24;

/// Loads modules from one modules directory and remembers what it did.
pub struct Loader {
    dir: PathBuf,
    index: ModIndex,
    /// Module names loaded, found built in, or already present.
    done: BTreeSet<String>,
    /// Module names that failed (not retried: a second failure would say nothing new).
    failed: BTreeSet<String>,
    /// `modalias` values already handled.
    seen_aliases: BTreeSet<String>,
}

impl Loader {
    /// Reads the indices of `/lib/modules/<running kernel>/`. A missing directory is not an
    /// error: a kernel with everything built in needs no modules.
    pub fn for_running_kernel(root: &Path) -> Result<Loader> {
        let release = sys::kernel_release().context("reading the kernel release (uname)")?;
        Loader::open(&root.join("lib/modules").join(&release))
    }

    pub fn open(dir: &Path) -> Result<Loader> {
        let read = |name: &str| -> Result<String> {
            match fs::read_to_string(dir.join(name)) {
                Ok(s) => Ok(s),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(e).with_context(|| format!("reading {}", dir.join(name).display())),
            }
        };
        let index = ModIndex::parse(
            &read("modules.dep")?,
            &read("modules.alias")?,
            &read("modules.softdep")?,
        )
        .with_context(|| format!("parsing the module indices in {}", dir.display()))?;
        if index.deps.is_empty() {
            log::say(&format!(
                "no modules.dep in {}: loading no modules",
                dir.display()
            ));
        }
        Ok(Loader {
            dir: dir.to_path_buf(),
            index,
            done: BTreeSet::new(),
            failed: BTreeSet::new(),
            seen_aliases: BTreeSet::new(),
        })
    }

    /// Loads every module named in the fixed list file (one name a line, `#` comments).
    /// Failures are reported and skipped: a missing controller driver is only fatal if the
    /// boot disk then never appears, and that step says so.
    pub fn load_fixed_list(&mut self, root: &Path) {
        let path = root.join(ALWAYS_LOAD_FILE);
        let Ok(text) = fs::read_to_string(&path) else {
            log::debug(&format!("no {}", path.display()));
            return;
        };
        for name in text.lines().map(str::trim) {
            if !name.is_empty() && !name.starts_with('#') {
                self.load_reporting(name);
            }
        }
    }

    /// Walks sysfs for `modalias` files and loads the modules of the new ones. Returns how
    /// many new modalias values were seen (0 means nothing changed since the last call).
    pub fn load_for_devices(&mut self, sys_devices: &Path) -> usize {
        let mut found = BTreeSet::new();
        collect_modaliases(sys_devices, 0, &mut found);
        let new: Vec<String> = found
            .into_iter()
            .filter(|a| !self.seen_aliases.contains(a))
            .collect();
        for alias in &new {
            self.seen_aliases.insert(alias.clone());
            let modules: Vec<String> = self
                .index
                .lookup_alias(alias)
                .into_iter()
                .map(str::to_string)
                .collect();
            if !modules.is_empty() {
                log::debug(&format!("device {alias} wants {}", modules.join(", ")));
            }
            for m in modules {
                self.load_reporting(&m);
            }
        }
        new.len()
    }

    fn load_reporting(&mut self, name: &str) {
        if let Err(e) = self.load(name) {
            log::say(&format!("warning: {e:#}"));
        }
    }

    /// Loads one module by name (or alias, when no module has that name), its soft
    /// pre-dependencies and its dependencies.
    pub fn load(&mut self, name: &str) -> Result<()> {
        let name = normalize_name(name);
        if self.done.contains(&name) || self.failed.contains(&name) {
            return Ok(());
        }
        if is_present(&name) {
            self.done.insert(name);
            return Ok(());
        }
        let Some(order) = self.index.load_order(&name) else {
            // Not a module file: try it as an alias (softdeps name `crypto-crc32c`).
            let targets: Vec<String> = self
                .index
                .lookup_alias(&name)
                .into_iter()
                .map(str::to_string)
                .collect();
            if targets.is_empty() {
                log::debug(&format!(
                    "no module or alias {name} in the initramfs (built in?)"
                ));
            }
            self.done.insert(name.clone());
            for t in targets {
                self.load(&t)?;
            }
            return Ok(());
        };
        let order: Vec<String> = order.into_iter().map(str::to_string).collect();
        self.load_softdeps(&name);
        for path in order {
            let module = name_from_path(&path);
            if self.done.contains(&module) {
                continue;
            }
            if let Err(e) = self.insert(&path) {
                self.failed.insert(module.clone());
                self.failed.insert(name.clone());
                return Err(e).with_context(|| format!("loading module {name}"));
            }
            self.done.insert(module);
        }
        Ok(())
    }

    fn load_softdeps(&mut self, name: &str) {
        let pre = self
            .index
            .pre_softdeps
            .get(name)
            .cloned()
            .unwrap_or_default();
        for target in pre {
            // Soft dependencies are best effort by definition.
            if let Err(e) = self.load(&target) {
                log::debug(&format!("soft dependency {target} of {name}: {e:#}"));
            }
        }
    }

    fn insert(&self, rel_path: &str) -> Result<()> {
        let path = self.dir.join(rel_path);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        match sys::finit_module(&file) {
            Ok(()) => {
                log::debug(&format!("loaded {rel_path}"));
                Ok(())
            }
            // Loaded meanwhile (by the kernel itself, or a duplicate alias): fine.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("finit_module {}", path.display())),
        }
    }
}

/// Whether the kernel already has the module (built in or loaded): `/sys/module/<name>`.
fn is_present(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
}

/// Every `modalias` file's content below `dir`, not following symlinks (sysfs is full of
/// links back up the tree).
fn collect_modaliases(dir: &Path, depth: usize, out: &mut BTreeSet<String>) {
    if depth > MAX_SYSFS_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            collect_modaliases(&entry.path(), depth + 1, out);
        } else if ft.is_file() && entry.file_name() == "modalias" {
            if let Ok(text) = fs::read_to_string(entry.path()) {
                let text = text.trim();
                if !text.is_empty() {
                    out.insert(text.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modaliases_are_collected_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("pci0000:00/0000:00:04.0");
        fs::create_dir_all(dev.join("virtio1")).unwrap();
        fs::write(
            dev.join("modalias"),
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n",
        )
        .unwrap();
        fs::write(dev.join("virtio1/modalias"), "virtio:d00000002v00001AF4\n").unwrap();
        std::os::unix::fs::symlink(dir.path(), dev.join("virtio1/loop")).unwrap();
        let mut found = BTreeSet::new();
        collect_modaliases(dir.path(), 0, &mut found);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.contains("virtio:d00000002v00001AF4"));
    }

    #[test]
    fn device_aliases_pick_modules_and_unknown_names_fail_softly() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("modules.dep"),
            "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("modules.alias"),
            "alias virtio:d00000002v* virtio_blk\n",
        )
        .unwrap();
        let loader = Loader::open(dir.path()).unwrap();
        assert_eq!(
            loader.index.lookup_alias("virtio:d00000002v00001AF4"),
            ["virtio_blk"]
        );
        assert_eq!(
            loader.index.load_order("virtio_blk").unwrap(),
            [
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/block/virtio_blk.ko"
            ]
        );
        // No modules.softdep file: that is allowed.
        assert!(loader.index.pre_softdeps.is_empty());
    }
}
