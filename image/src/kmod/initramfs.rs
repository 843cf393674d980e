//! The modules of the initramfs: the classes it needs to find and mount the boot disk, the
//! modules its init loads on every boot, and the module part of its tree with its own indices.

use std::collections::BTreeSet;

use super::error::KmodError;
use super::module::normalize_name;
use super::set::{file_content, modules_dir, ModuleSet};
use crate::tree::{Content, Entry, Kind, Meta, Tree, TreePath};

/// Path classes (under `/usr/lib/modules/<kver>/`) that the initramfs needs to find and mount
/// the boot disk: storage controllers of VMs and of real machines, dm-verity, ext4, FAT, the
/// virtio bus and console. Dependencies and soft dependencies are added by [`ModuleSet::select`].
pub const INITRAMFS_CLASSES: &[&str] = &[
    "kernel/drivers/ata",
    "kernel/drivers/nvme/host",
    "kernel/drivers/scsi/sd_mod.ko",
    "kernel/drivers/scsi/virtio_scsi.ko",
    "kernel/drivers/usb/storage",
    "kernel/drivers/usb/host",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/drivers/virtio",
    "kernel/drivers/char/virtio_console.ko",
    "kernel/drivers/md/dm-verity.ko",
    "kernel/fs/ext4",
    "kernel/fs/fat",
    "kernel/fs/nls/nls_cp437.ko",
    "kernel/fs/nls/nls_utf8.ko",
    "kernel/fs/nls/nls_iso8859-1.ko",
    // The cloud-config source of QEMU VMs (fw_cfg), read at first boot.
    "kernel/drivers/firmware/qemu_fw_cfg.ko",
    "kernel/crypto/crc32c_generic.ko",
    "kernel/arch/x86/crypto/crc32c-intel.ko",
];

/// Modules the init loads on every boot whatever devices are present (by module name): the
/// ones no device alias asks for. Controllers (virtio_pci, ahci, nvme, xhci_pci, usb-storage,
/// sd_mod, ...) are not listed: the init loads them when a device's `modalias` matches.
/// `crc32c_intel` is not listed either: the CPU's modalias loads it where the CPU has SSE4.2.
/// Written to `etc/kiln/modules` in the initramfs.
pub const INITRAMFS_ALWAYS_LOAD: &[&str] = &[
    "crc32c_generic",
    "dm_verity",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_utf8",
];

/// Where the fixed module list sits in the initramfs (one module name a line).
pub const ALWAYS_LOAD_FILE: &str = "etc/kiln/modules";

/// What goes into the initramfs: module classes (path rules as for [`ModuleSet::select`]) and
/// the modules the init loads on every boot (by name; kept even when no class matches them).
#[derive(Clone, Copy, Debug)]
pub struct InitramfsModules<'a> {
    pub classes: &'a [&'a str],
    pub always_load: &'a [&'a str],
}

/// [`INITRAMFS_CLASSES`] and [`INITRAMFS_ALWAYS_LOAD`].
pub const DEFAULT_INITRAMFS_MODULES: InitramfsModules<'static> = InitramfsModules {
    classes: INITRAMFS_CLASSES,
    always_load: INITRAMFS_ALWAYS_LOAD,
};

/// Builds the module part of the initramfs with [`DEFAULT_INITRAMFS_MODULES`]; see
/// [`initramfs_modules_with`].
pub fn initramfs_modules(
    root: &Tree,
    kver: &str,
    mtime: i64,
) -> Result<(Tree, ModuleSet), KmodError> {
    initramfs_modules_with(root, kver, &DEFAULT_INITRAMFS_MODULES, mtime)
}

/// Builds the module part of the initramfs: a tree holding `lib/modules/<kver>/` with the
/// selected subset of the root tree's modules (plus dependencies and soft dependencies), its
/// own indices, a copy of `modules.builtin` (and `modules.builtin.modinfo`) when present, and
/// the [`ALWAYS_LOAD_FILE`] list of modules to load on every boot (those in the subset).
pub fn initramfs_modules_with(
    root: &Tree,
    kver: &str,
    spec: &InitramfsModules<'_>,
    mtime: i64,
) -> Result<(Tree, ModuleSet), KmodError> {
    let all = ModuleSet::from_tree(root, kver)?;
    let subset = all.select_with_names(spec.classes, spec.always_load)?;
    let mut out = Tree::new(Meta::root(0o755, mtime));
    let dir_meta = Meta::root(0o755, mtime);
    let src_dir = modules_dir(kver);
    let dst_dir = format!("lib/modules/{kver}");
    out.create_dirs(&TreePath::new(&dst_dir)?, &dir_meta)?;
    for m in &subset.modules {
        let src = format!("{src_dir}/{}", m.path);
        let content = root
            .get(&src)
            .and_then(|e| file_content(root, e))
            .cloned()
            .ok_or_else(|| KmodError::MissingFile { path: src.clone() })?;
        out.insert_with_parents(
            format!("{dst_dir}/{}", m.path),
            Entry::new(Kind::File(content), Meta::root(0o644, mtime)),
            &dir_meta,
        )?;
    }
    for name in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        if let Some(content) = root
            .get(format!("{src_dir}/{name}"))
            .and_then(|e| file_content(root, e))
        {
            out.insert(
                format!("{dst_dir}/{name}"),
                Entry::new(Kind::File(content.clone()), Meta::root(0o644, mtime)),
            )?;
        }
    }
    let indices = ModuleSet {
        kver: kver.to_string(),
        modules: subset.modules.clone(),
    };
    // write_indices puts them under usr/lib/modules; write them where the initramfs has them.
    for (name, text) in [
        ("modules.dep", indices.modules_dep()?),
        ("modules.alias", indices.modules_alias()),
        ("modules.softdep", indices.modules_softdep()),
    ] {
        out.insert(
            format!("{dst_dir}/{name}"),
            Entry::new(
                Kind::File(Content::bytes(text.into_bytes())),
                Meta::root(0o644, mtime),
            ),
        )?;
    }
    let present: BTreeSet<&str> = subset.modules.iter().map(|m| m.name.as_str()).collect();
    let mut list = String::new();
    for name in spec
        .always_load
        .iter()
        .map(|n| normalize_name(n))
        .filter(|n| present.contains(n.as_str()))
    {
        list.push_str(&name);
        list.push('\n');
    }
    out.insert_with_parents(
        ALWAYS_LOAD_FILE,
        Entry::new(
            Kind::File(Content::bytes(list.into_bytes())),
            Meta::root(0o644, mtime),
        ),
        &dir_meta,
    )?;
    Ok((out, subset))
}
