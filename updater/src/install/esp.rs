//! The ESP as the install path sees it: Kiln's boot entries in `/loader/entries/` and each
//! slot's kernel and initramfs in `/kiln/<slot>/`, edited in place with `kiln_image::fat`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use kiln_contract::boot::{BootEntry, Slot};
use kiln_image::fat::{self, FatError};
use kiln_image::region::Region;
use sha2::{Digest, Sha256};

use super::{io_err, InstallError, Phase};
use crate::payload::{Manifest, Part};
use kiln_contract::hex;

const ENTRIES_DIR: &str = "/loader/entries";

/// One Kiln entry file.
pub(super) struct FoundEntry {
    pub name: String,
    pub entry: BootEntry,
    /// The file's write time: new files on the ESP take it, so that the bytes written depend
    /// only on the disk and the payload, never on the clock.
    pub mtime: i64,
}

pub(super) struct Esp<'d> {
    region: Region<&'d File>,
    disk: &'d Path,
}

impl<'d> Esp<'d> {
    pub fn new(region: Region<&'d File>, disk: &'d Path) -> Self {
        Esp { region, disk }
    }

    fn fat_err(&self, what: String) -> impl FnOnce(FatError) -> InstallError {
        let path = self.disk.to_owned();
        move |source| InstallError::Fat { what, path, source }
    }

    /// Every `kiln-*.conf` in `/loader/entries`, in directory order; other files are left alone.
    pub fn entries(&mut self) -> Result<Vec<FoundEntry>, InstallError> {
        let listing = fat::list_dir(&mut self.region, ENTRIES_DIR)
            .map_err(self.fat_err(format!("listing {ENTRIES_DIR}")))?;
        let mut out = Vec::new();
        for info in listing {
            if info.is_dir || !info.name.starts_with("kiln-") || !info.name.ends_with(".conf") {
                continue;
            }
            let path = format!("{ENTRIES_DIR}/{}", info.name);
            let bytes = fat::read_file(&mut self.region, &path)
                .map_err(self.fat_err(format!("reading {path}")))?;
            let entry = BootEntry::parse(&info.name, &String::from_utf8_lossy(&bytes)).map_err(
                |source| InstallError::Entry {
                    name: info.name.clone(),
                    path: self.disk.to_owned(),
                    source,
                },
            )?;
            out.push(FoundEntry {
                name: info.name,
                entry,
                mtime: info.mtime,
            });
        }
        Ok(out)
    }

    /// The running slot's entry (the first in name order if a power cut left two).
    pub fn running_entry(&mut self, slot: Slot) -> Result<FoundEntry, InstallError> {
        let mut of_slot: Vec<FoundEntry> = self
            .entries()?
            .into_iter()
            .filter(|e| e.entry.slot == slot)
            .collect();
        of_slot.sort_by(|a, b| a.name.cmp(&b.name));
        of_slot
            .into_iter()
            .next()
            .ok_or_else(|| InstallError::NoRunningEntry {
                path: self.disk.to_owned(),
                slot,
            })
    }

    /// The slot's entry, if its kernel and initramfs are on the ESP.
    pub fn complete_entry(&mut self, slot: Slot) -> Result<FoundEntry, InstallError> {
        let no = |reason: String| InstallError::NoRollback {
            path: self.disk.to_owned(),
            slot,
            reason,
        };
        let found = self
            .entries()?
            .into_iter()
            .find(|e| e.entry.slot == slot)
            .ok_or_else(|| no("it has no boot entry (nothing was installed there)".into()))?;
        for file in [&found.entry.linux, &found.entry.initrd] {
            fat::read_file(&mut self.region, file)
                .map_err(|e| no(format!("its entry names {file}, which cannot be read: {e}")))?;
        }
        Ok(found)
    }

    /// Removes every entry of `slot`.
    pub fn remove_entries(&mut self, slot: Slot) -> Result<(), InstallError> {
        for found in self.entries()? {
            if found.entry.slot == slot {
                let path = format!("{ENTRIES_DIR}/{}", found.name);
                fat::remove_file(&mut self.region, &path)
                    .map_err(self.fat_err(format!("removing {path}")))?;
            }
        }
        Ok(())
    }

    pub fn rename_entry(&mut self, from: &str, to: &str) -> Result<(), InstallError> {
        let (from, to) = (
            format!("{ENTRIES_DIR}/{from}"),
            format!("{ENTRIES_DIR}/{to}"),
        );
        fat::rename(&mut self.region, &from, &to)
            .map_err(self.fat_err(format!("renaming {from} to {to}")))
    }

    pub fn write_entry(&mut self, entry: &BootEntry, mtime: i64) -> Result<(), InstallError> {
        let path = format!("{ENTRIES_DIR}/{}", entry.file_name());
        fat::write_file(&mut self.region, &path, entry.render().as_bytes(), mtime)
            .map_err(self.fat_err(format!("writing {path}")))
    }

    /// Copies the kernel and initramfs parts to `/kiln/<slot>/`, checking each against the
    /// manifest before writing and after reading it back.
    pub fn install_boot_files(
        &mut self,
        slot: Slot,
        payload: &Path,
        m: &Manifest,
        mtime: i64,
        progress: &mut dyn FnMut(Phase, u64, u64),
    ) -> Result<(), InstallError> {
        let total = m.parts.kernel.length + m.parts.initrd.length;
        progress(Phase::Esp, 0, total);
        let files = [
            ("vmlinuz", &m.parts.kernel, &m.kernel_sha256),
            ("initrd", &m.parts.initrd, &m.initrd_sha256),
        ];
        let mut done = 0;
        for (name, part, sha) in files {
            let path = format!("{}/{name}", slot.esp_dir());
            let data = read_part(payload, part)?;
            self.check(&path, "its SHA-256 in the payload", &data, sha)?;
            fat::write_file(&mut self.region, &path, &data, mtime)
                .map_err(self.fat_err(format!("writing {path}")))?;
            let back = fat::read_file(&mut self.region, &path)
                .map_err(self.fat_err(format!("reading back {path}")))?;
            self.check(&path, "its SHA-256 read back", &back, sha)?;
            done += part.length;
            progress(Phase::Esp, done, total);
        }
        Ok(())
    }

    fn check(
        &self,
        path: &str,
        when: &'static str,
        data: &[u8],
        sha: &str,
    ) -> Result<(), InstallError> {
        let actual = hex::encode(&Sha256::digest(data));
        if actual == sha {
            return Ok(());
        }
        Err(InstallError::Mismatch {
            disk: self.disk.to_owned(),
            partition: format!("EFI-SYSTEM {path}"),
            what: when,
            expected: sha.to_owned(),
            actual,
        })
    }
}

fn read_part(payload: &Path, part: &Part) -> Result<Vec<u8>, InstallError> {
    let mut f = File::open(payload).map_err(io_err("opening", payload))?;
    f.seek(SeekFrom::Start(part.offset))
        .map_err(io_err("seeking in", payload))?;
    let len = usize::try_from(part.length).map_err(|_| {
        io_err("reading", payload)(std::io::Error::other("a boot file larger than memory"))
    })?;
    let mut data = vec![0u8; len];
    f.read_exact(&mut data)
        .map_err(io_err("reading", payload))?;
    Ok(data)
}
