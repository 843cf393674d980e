//! The filesystems of the partitions besides USR: the ESP (systemd-boot, loader.conf, slot A's
//! entry, kernel and initramfs), an empty ROOT the init fills and grows, and OEM.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use kiln_contract::boot::{self, BootEntry};
use kiln_contract::disk;
use kiln_contract::disk::MIB;
use kiln_image::tree::{Content, Entry, Kind, Meta, Tree};
use kiln_image::{ext4, fat};

use super::{create_rw, Build};

impl Build {
    /// The ESP: systemd-boot as the removable-media loader, loader.conf, slot A's entry,
    /// kernel and initramfs.
    pub(super) fn esp(
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
            label: disk::ESP.into(),
            timestamp: t,
        };
        fat::format(&esp, &opts, &mut f)?;
        Ok(path)
    }

    /// ROOT: an empty journaled ext4 the init fills (`/etc` from the factory copy) and grows.
    pub(super) fn root_fs(&mut self) -> Result<PathBuf> {
        let tree = Tree::new(Meta::root(0o755, self.epoch));
        let opts = ext4::Ext4Options {
            size_bytes: self.def.partitions.root * MIB,
            uuid: self.uuid("root-fs"),
            hash_seed: self.uuid("root-hash-seed"),
            label: disk::ROOT.into(),
            journal: true,
            timestamp: self.epoch,
        };
        let path = self.work_dir.join("root.img");
        ext4::write(&tree, &opts, &create_rw(&path)?)?;
        Ok(path)
    }

    /// OEM: a FAT volume, empty but for `--debug-ssh-key`'s keys; `flash --config` puts the
    /// cloud-config in.
    pub(super) fn oem(&mut self) -> Result<PathBuf> {
        let path = self.work_dir.join("oem.img");
        let opts = fat::FatOptions {
            size_bytes: self.def.partitions.oem * MIB,
            volume_id: u32::from_le_bytes(self.uuid("oem")[..4].try_into().expect("4 bytes")),
            label: disk::OEM.into(),
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
}
