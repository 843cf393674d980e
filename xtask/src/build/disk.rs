//! The disk stage: `disk.raw`, the partitions' images laid into the GPT layout (slot B left
//! empty), and `disk.qcow2` from it when qemu-img is there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use kiln_contract::disk;
use kiln_image::disk::{assemble, PartitionContent};
use kiln_image::gpt::Guid;

use super::Build;
use crate::host;

impl Build {
    pub(super) fn disk(
        &mut self,
        esp: &Path,
        usr: &Path,
        oem: &Path,
        root: &Path,
    ) -> Result<PathBuf> {
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
        let path = self.out_dir.join(crate::release::DISK_FILE);
        assemble(&path, &layout, &contents, |name| {
            Guid::from_hash(&self.derived(&format!("gpt/{name}")))
        })?;
        Ok(path)
    }

    /// `disk.qcow2` when qemu-img is on the host (it is optional: the raw disk is the artifact).
    pub(super) fn qcow2(&mut self, disk: &Path) -> Result<Option<PathBuf>> {
        if !host::has_tool("qemu-img") {
            eprintln!("    qemu-img not found: no disk.qcow2 (apt-get install qemu-utils)");
            return Ok(None);
        }
        let path = self.out_dir.join(super::QCOW2_FILE);
        host::run(
            Command::new("qemu-img")
                .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
                .arg(disk)
                .arg(&path),
        )?;
        Ok(Some(path))
    }
}
