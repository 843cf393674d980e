//! The `/usr` stage: the tree's `/usr` as a read-only ext4 exactly as large as its content,
//! with its dm-verity hash tree appended (the root hash goes into the boot entry).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use kiln_contract::disk::MIB;
use kiln_image::tree::{Tree, TreePath};
use kiln_image::{ext4, verity};

use super::{create_rw, Build};

impl Build {
    /// `/usr` as a read-only ext4 with its dm-verity tree appended.
    pub(super) fn usr(&mut self, tree: &Tree) -> Result<(PathBuf, verity::VerityInfo)> {
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
        let path = self.out_dir.join(super::USR_IMAGE_FILE);
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
}
