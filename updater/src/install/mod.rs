//! The device-side install path: writes a verified payload to the slot that is not running and
//! makes the boot loader try it; blesses, lists and rolls back boot entries.
//!
//! Works on a whole-disk block device or a disk image file alike: partitions are found by
//! their GPT names, and the ESP is read and written with `kiln_image::fat` at its offset,
//! without mounting anything.
//!
//! The order of [`install`] is what keeps a power cut harmless: the manifest's signature and
//! every part's hash are checked first, and what the manifest says against what the machine
//! accepts ([`Accept`]: its app, newer than what runs, not a version that failed here); then
//! the inactive slot's boot entries are removed, so
//! a half-written slot is never bootable; the USR image, kernel and initramfs are written and
//! read back; and the slot's entry, with tries left, is written last. Until that entry exists,
//! the running slot is the only one systemd-boot can pick. The checks before the first write
//! may also be made ahead of time, on their own ([`verify`]: by an agent before it waits for its
//! turn in a cluster); [`install_with`] then reads only the signed manifest again, as long as the
//! payload file is the one they read.

mod device;
mod esp;
mod pieces;
mod stream;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use kiln_contract::boot::{split_kernel_cmdline, BootEntry, BootError, Counter, Slot};
use kiln_image::fat::FatError;
use kiln_image::gpt::GptError;
use kiln_image::region::Region;
use kiln_image::verity::VerityError;

use crate::keys::VerifyingKey;
use crate::payload::{self, Manifest, PayloadError, BOARD};
use kiln_contract::hex;

pub use device::SysPaths;
use esp::Esp;
use stream::StreamError;

/// Tries a newly installed slot gets before systemd-boot falls back to the other one.
pub const NEW_SLOT_TRIES: u32 = 3;
/// Threads reading back and hashing the written slot, at most (one per CPU up to this).
const READ_BACK_THREADS: usize = 4;

/// The disk to update and the slot running from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// A whole-disk block device (`/dev/vda`) or a disk image file.
    pub disk: PathBuf,
    pub running: Slot,
}

/// The steps of [`install`], in order, as reported to its progress callback with bytes done and
/// total (for [`Phase::Entry`], 0 and 1, then 1 and 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The manifest signature and the parts' hashes.
    Verifying,
    /// The USR image streamed to the inactive partition (ends with an fsync).
    Writing,
    /// The partition read back and compared with what was written, and its verity tree
    /// checked against the manifest.
    ReadingBack,
    /// Kernel and initramfs into the ESP.
    Esp,
    /// The new slot's boot entry.
    Entry,
}

/// What the running system takes from a payload, checked on its signed manifest after the
/// signature and before anything is written: a man-in-the-middle may offer any validly signed
/// payload under any label, so the offer's label decides nothing.
#[derive(Clone, Debug)]
pub struct Accept<'a> {
    /// The running system's app id: a payload of another app is refused.
    pub app_id: &'a str,
    /// The running version: a payload not newer is refused (unless `allow_downgrade`), and so
    /// is one whose `min_from_version` is newer.
    pub running_version: &'a str,
    /// The operator allows this machine to install an older (or the same) version.
    pub allow_downgrade: bool,
    /// Versions that failed to boot here before.
    pub bad_versions: &'a [String],
}

impl Accept<'_> {
    /// Why the signed `manifest` of `path` is refused, if it is.
    pub fn check(&self, manifest: &Manifest, path: &Path) -> Result<(), InstallError> {
        if !crate::omaha::ids_equal(&manifest.app_id, self.app_id) {
            return Err(InstallError::OtherApp {
                path: path.to_owned(),
                app_id: manifest.app_id.clone(),
                running: self.app_id.to_owned(),
            });
        }
        match self.refusal(&manifest.version, manifest.min_from_version.as_deref()) {
            Some(why) => Err(InstallError::Refused {
                path: path.to_owned(),
                version: manifest.version.clone(),
                why,
            }),
            None => Ok(()),
        }
    }

    /// Why a payload of `version` (installing only over `min_from` or newer) is refused, if
    /// it is: the rule [`Accept::check`] applies to a signed manifest, and the agent to an
    /// offer before downloading it.
    pub fn refusal(&self, version: &str, min_from: Option<&str>) -> Option<Refusal> {
        use kiln_contract::version::compare_versions;
        let running = self.running_version.to_owned();
        if self.bad_versions.iter().any(|v| v == version) {
            Some(Refusal::FailedHere)
        } else if !self.allow_downgrade && compare_versions(version, self.running_version).is_le() {
            Some(Refusal::NotNewer { running })
        } else {
            match min_from {
                Some(min) if compare_versions(self.running_version, min).is_lt() => {
                    Some(Refusal::TooOldToUpdate {
                        min: min.to_owned(),
                        running,
                    })
                }
                _ => None,
            }
        }
    }
}

/// Why a validly signed payload is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("it failed to boot on this machine before (`kiln-update status` lists it under bad versions)")]
    FailedHere,
    #[error("it is not newer than the running {running}: a downgrade; to allow one on this machine, set `allow_downgrade = true` in {}", kiln_contract::paths::UPDATE_CONF)]
    NotNewer { running: String },
    #[error("it installs only over {min} or newer, and this machine runs {running}: install {min} first")]
    TooOldToUpdate { min: String, running: String },
}

/// What [`install`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub slot: Slot,
    pub manifest: Manifest,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(
        "{path} is for board {board:?}, this machine is {BOARD:?}: use the payload of this board"
    )]
    WrongBoard { path: PathBuf, board: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the partition table of {path}: {source}")]
    Gpt {
        path: PathBuf,
        #[source]
        source: GptError,
    },
    #[error("{path} has no partition named {name}: is it a Kiln disk?")]
    NoPartition { path: PathBuf, name: &'static str },
    #[error("{what} on the ESP of {path}: {source}")]
    Fat {
        what: String,
        path: PathBuf,
        #[source]
        source: FatError,
    },
    #[error("boot entry {name} on the ESP of {path}: {source}")]
    Entry {
        name: String,
        path: PathBuf,
        #[source]
        source: BootError,
    },
    #[error("the ESP of {path} has no boot entry for the running slot {slot}: its kernel command line cannot be carried over; repair /loader/entries first")]
    NoRunningEntry { path: PathBuf, slot: Slot },
    #[error("refusing to write {partition} of {path}: {reason}")]
    InUse {
        path: PathBuf,
        partition: String,
        reason: String,
    },
    #[error("the USR image is {size} bytes but {partition} of {path} holds {room}: this payload needs a larger partition layout")]
    TooLarge {
        path: PathBuf,
        partition: &'static str,
        size: u64,
        room: u64,
    },
    #[error("decompressing the USR image of {path}: {source}; the payload is damaged: download it again")]
    Decompress {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{partition} of {disk}: {what} is {actual}, the signed manifest says {expected}: the slot was not written correctly (its boot entry stays removed); check the disk and install again")]
    Mismatch {
        disk: PathBuf,
        partition: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{partition} of {disk}: the {len} bytes from byte {offset} read back otherwise than they were written: the disk did not keep them (the slot's boot entry stays removed); check the disk and install again")]
    ReadBack {
        disk: PathBuf,
        partition: &'static str,
        offset: u64,
        len: u64,
    },
    #[error("checking the verity tree written to {partition} of {disk}: {source}")]
    Verity {
        disk: PathBuf,
        partition: &'static str,
        #[source]
        source: VerityError,
    },
    #[error("{path} is signed for app {app_id}, this machine runs app {running}: nothing was written; publish this app's payload")]
    OtherApp {
        path: PathBuf,
        app_id: String,
        running: String,
    },
    #[error("{path} changed while its parts' hashes were checked: nothing was written; download it again")]
    Changed { path: PathBuf },
    #[error("{path} is version {version}, refused: {why}; nothing was written")]
    Refused {
        path: PathBuf,
        version: String,
        why: Refusal,
    },
    #[error("cannot roll back to slot {slot} of {path}: {reason}")]
    NoRollback {
        path: PathBuf,
        slot: Slot,
        reason: String,
    },
}

pub(crate) fn io_err(op: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let (op, path) = (op.into(), path.to_owned());
    move |source| InstallError::Io { op, path, source }
}

/// Installs `payload` into the slot that is not `t.running`, in the order the module
/// documentation gives, if its signed manifest passes `accept`; `progress` hears each phase's
/// bytes done and total.
pub fn install(
    t: &Target,
    payload: &Path,
    key: &VerifyingKey,
    accept: &Accept,
    progress: &mut dyn FnMut(Phase, u64, u64),
) -> Result<Installed, InstallError> {
    install_with(
        t,
        payload,
        key,
        accept,
        None,
        &SysPaths::default(),
        progress,
    )
}

/// A payload [`verify`] checked, tied to the file it read: the file's device, inode, size and
/// change time (a write moves it on, by the kernel's clock of a few milliseconds a tick, and no
/// one can set it back; the check takes seconds after the download's last write).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    path: PathBuf,
    file: FileId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    ctime: (i64, i64),
}

impl FileId {
    fn of(path: &Path) -> Result<FileId, InstallError> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).map_err(io_err("reading the metadata of", path))?;
        Ok(FileId {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

impl Verified {
    /// Whether `payload` is still the very file that was checked.
    pub fn covers(&self, payload: &Path) -> bool {
        self.path == payload && FileId::of(payload).is_ok_and(|id| id == self.file)
    }
}

/// What [`install`] checks before its first write, on its own: the signature, the board, every
/// part's hash and `accept`. An installer that has to wait for its turn (a cluster's reboot lock
/// taken before installing) checks first and hands the result to [`install_with`], which then
/// writes without reading the whole payload again: a SHA-256 pass over it took a TCG guest 7 to
/// 28 s, and every machine waiting for the lock waited that much longer.
pub fn verify(
    payload: &Path,
    key: &VerifyingKey,
    accept: &Accept,
    progress: &mut dyn FnMut(Phase, u64, u64),
) -> Result<Verified, InstallError> {
    let before = FileId::of(payload)?;
    let manifest = verify_payload(payload, key, progress)?;
    accept.check(&manifest, payload)?;
    let file = FileId::of(payload)?;
    if file != before {
        return Err(InstallError::Changed {
            path: payload.to_owned(),
        });
    }
    Ok(Verified {
        path: payload.to_owned(),
        file,
    })
}

/// [`install`], with the `/proc` and `/sys` files the in-use check reads named (for tests), and
/// what [`verify`] found of this payload earlier, if it did: while the file is the one it checked,
/// only the signed manifest is read again (its signature, and `accept`: the bad versions may
/// have changed meanwhile), not every part. Otherwise everything is checked, as [`install`] does.
pub fn install_with(
    t: &Target,
    payload: &Path,
    key: &VerifyingKey,
    accept: &Accept,
    verified: Option<&Verified>,
    sys: &SysPaths,
    progress: &mut dyn FnMut(Phase, u64, u64),
) -> Result<Installed, InstallError> {
    let manifest = match verified {
        Some(v) if v.covers(payload) => signed_manifest(payload, key)?,
        _ => verify_payload(payload, key, progress)?,
    };
    accept.check(&manifest, payload)?;
    let slot = t.running.other();
    let disk = Disk::open(&t.disk, true)?;
    let (number, part) = disk.partition(slot.partition_name())?;
    let (running_number, _) = disk.partition(t.running.partition_name())?;
    if number == running_number {
        return Err(InstallError::InUse {
            path: t.disk.clone(),
            partition: slot.partition_name().to_owned(),
            reason: "it is the running slot's partition".to_owned(),
        });
    }
    device::check_not_in_use(&disk.file, &t.disk, number, sys)?;
    if manifest.usr_size > part.size_bytes() {
        return Err(InstallError::TooLarge {
            path: t.disk.clone(),
            partition: slot.partition_name(),
            size: manifest.usr_size,
            room: part.size_bytes(),
        });
    }
    // Everything the new entry needs is read before the first write.
    let mut esp = disk.esp()?;
    let running = esp.running_entry(t.running)?;
    let extra_cmdline = carried_cmdline(&running.entry.options);

    esp.remove_entries(slot)?;
    let partition = slot.partition_name();
    let window = (part.start_bytes(), part.size_bytes());
    let written = write_usr(&disk, window, payload, &manifest, partition, progress)?;
    read_back(&disk, window, &manifest, &written, partition, progress)?;

    let mut esp = disk.esp()?;
    esp.install_boot_files(slot, payload, &manifest, running.mtime, progress)?;
    progress(Phase::Entry, 0, 1);
    let entry = BootEntry::new(
        slot,
        &manifest.version,
        &manifest.verity_root_hash,
        &extra_cmdline,
        Counter::Counting {
            left: NEW_SLOT_TRIES,
            done: 0,
        },
    );
    esp.write_entry(&entry, running.mtime)?;
    disk.sync()?;
    progress(Phase::Entry, 1, 1);
    Ok(Installed { slot, manifest })
}

/// The signature, the board, and every part's hash: nothing on the disk changes before these
/// pass.
fn verify_payload(
    payload: &Path,
    key: &VerifyingKey,
    progress: &mut dyn FnMut(Phase, u64, u64),
) -> Result<Manifest, InstallError> {
    progress(Phase::Verifying, 0, 1);
    let manifest = signed_manifest(payload, key)?;
    payload::check_parts(payload, &manifest, &mut |done, total| {
        progress(Phase::Verifying, done, total)
    })?;
    Ok(manifest)
}

/// The payload's manifest, its signature checked, for this board.
fn signed_manifest(payload: &Path, key: &VerifyingKey) -> Result<Manifest, InstallError> {
    let manifest = payload::read_verified_manifest(payload, key)?;
    if manifest.board != BOARD {
        return Err(InstallError::WrongBoard {
            path: payload.to_owned(),
            board: manifest.board,
        });
    }
    Ok(manifest)
}

/// The running entry's kernel command line without Kiln's per-slot arguments, which
/// [`BootEntry::new`] puts back for the new slot.
fn carried_cmdline(options: &str) -> String {
    options
        .split_whitespace()
        .filter(|w| !w.starts_with("kiln.slot=") && !w.starts_with("kiln.usrhash="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Streams the USR part into the partition (see [`stream`]: decompressing on two threads and
/// writing overlapped), checks the size of what was written, then syncs. Returns the digests of
/// what was written, a [`pieces::PIECE`] at a time, for [`read_back`].
fn write_usr(
    disk: &Disk,
    (start, len): (u64, u64),
    payload: &Path,
    m: &Manifest,
    partition: &'static str,
    progress: &mut dyn FnMut(Phase, u64, u64),
) -> Result<Vec<u128>, InstallError> {
    let mut src = File::open(payload).map_err(io_err("opening", payload))?;
    src.seek(SeekFrom::Start(m.parts.usr.offset))
        .map_err(io_err("seeking in", payload))?;
    let total = m.usr_size;
    let direct = device::open_direct(&disk.path);
    let sink = stream::Sink {
        direct: direct.as_ref(),
        buffered: &disk.file,
        start,
        len,
    };
    progress(Phase::Writing, 0, total);
    let part = src.take(m.parts.usr.length);
    let written = stream::stream(part, &sink, total, &mut |done| {
        progress(Phase::Writing, done, total)
    })
    .map_err(|e| match e {
        StreamError::Decompress(source) => InstallError::Decompress {
            path: payload.to_owned(),
            source,
        },
        StreamError::Write(e) => io_err(format!("writing {partition} of"), &disk.path)(e),
        StreamError::TooLong(at_least) => mismatch(
            disk,
            partition,
            "the decompressed size",
            total,
            format!("at least {at_least}"),
        ),
    })?;
    if written.len != total {
        return Err(mismatch(
            disk,
            partition,
            "the decompressed size",
            total,
            written.len,
        ));
    }
    disk.sync()?;
    Ok(written.digests)
}

/// Reads the partition back (from the device, not the page cache) and compares it with what
/// was written (`written`, see [`pieces`]), on up to [`READ_BACK_THREADS`] threads, each over
/// its own handle; then checks the verity tree read back as dm-verity will use it: each level
/// the digests of the one below, the root hash and salt those of the signed manifest. Together
/// that covers every byte the machine will read from the slot (the data, the tree, the
/// superblock's salt and sizes): the bytes written are the signed image's, whose tree its maker
/// checked against its data. Recomputing the tree from the data here instead took most of an
/// install under TCG (a SHA-256 of every block, without SHA instructions).
fn read_back(
    disk: &Disk,
    (start, len): (u64, u64),
    m: &Manifest,
    written: &[u128],
    partition: &'static str,
    progress: &mut dyn FnMut(Phase, u64, u64),
) -> Result<(), InstallError> {
    device::drop_cache(&disk.file, start, m.usr_size);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, READ_BACK_THREADS);
    let readers = (0..threads)
        .map(|_| File::open(&disk.path).map_err(io_err("opening", &disk.path)))
        .collect::<Result<Vec<_>, _>>()?;
    progress(Phase::ReadingBack, 0, m.usr_size);
    let differs = pieces::compare(&readers, start, m.usr_size, written, &mut |done| {
        progress(Phase::ReadingBack, done, m.usr_size)
    })
    .map_err(io_err(format!("reading {partition} back from"), &disk.path))?;
    if let Some(d) = differs {
        return Err(InstallError::ReadBack {
            disk: disk.path.clone(),
            partition,
            offset: d.offset,
            len: d.len,
        });
    }
    let mut slot = Region::new(&disk.file, start, len)
        .map_err(io_err("opening the partition window of", &disk.path))?;
    let info =
        kiln_image::verity::check_tree(&mut slot, m.verity_hash_offset).map_err(|source| {
            InstallError::Verity {
                disk: disk.path.clone(),
                partition,
                source,
            }
        })?;
    if info.root_hash_hex() != m.verity_root_hash {
        return Err(mismatch(
            disk,
            partition,
            "the verity root hash",
            &m.verity_root_hash,
            info.root_hash_hex(),
        ));
    }
    if hex::encode(&info.salt) != m.verity_salt {
        return Err(mismatch(
            disk,
            partition,
            "the verity salt",
            &m.verity_salt,
            hex::encode(&info.salt),
        ));
    }
    progress(Phase::ReadingBack, m.usr_size, m.usr_size);
    Ok(())
}

fn mismatch(
    disk: &Disk,
    partition: &str,
    what: &'static str,
    expected: impl ToString,
    actual: impl ToString,
) -> InstallError {
    InstallError::Mismatch {
        disk: disk.path.clone(),
        partition: partition.to_owned(),
        what,
        expected: expected.to_string(),
        actual: actual.to_string(),
    }
}

/// Marks the running slot's entry good by removing its boot counter (`kiln-b+2-1.conf` →
/// `kiln-b.conf`). Returns `false` when it already was.
pub fn bless(t: &Target) -> Result<bool, InstallError> {
    let disk = Disk::open(&t.disk, true)?;
    let mut esp = disk.esp()?;
    let running = esp.running_entry(t.running)?;
    if running.entry.counter == Counter::Blessed {
        return Ok(false);
    }
    let mut blessed = running.entry.clone();
    blessed.counter = Counter::Blessed;
    esp.rename_entry(&running.name, &blessed.file_name())?;
    disk.sync()?;
    Ok(true)
}

/// Every Kiln boot entry on the ESP, A's first; within a slot, in file name order.
pub fn boot_entries(t: &Target) -> Result<Vec<BootEntry>, InstallError> {
    let disk = Disk::open(&t.disk, false)?;
    let mut esp = disk.esp()?;
    let mut entries: Vec<BootEntry> = esp.entries()?.into_iter().map(|e| e.entry).collect();
    entries.sort_by_key(|e| (e.slot, e.file_name()));
    Ok(entries)
}

/// Makes the other slot the next boot, by hand, and returns it.
///
/// systemd-boot puts entries with no tries left after all others, whatever their versions, so
/// the running slot's entry is renamed to "tries used up" (`kiln-a+0-1.conf`; a counted entry
/// keeps its count of tries done, at least 1). The other slot must have a complete entry: its
/// kernel and initramfs on the ESP. If its own tries were used up by an earlier failed boot, it
/// gets [`NEW_SLOT_TRIES`] again, so it is tried and systemd-boot can still fall back to the
/// running slot if it fails. This works on a disk image as on a device and survives any number
/// of reboots, unlike a one-shot EFI variable, and the agent's `bless` on the other slot makes
/// it permanent.
pub fn rollback(t: &Target) -> Result<Slot, InstallError> {
    let other = t.running.other();
    let disk = Disk::open(&t.disk, true)?;
    let mut esp = disk.esp()?;
    let running = esp.running_entry(t.running)?;
    let target = esp.complete_entry(other)?;
    if let Counter::Counting { left: 0, .. } = target.entry.counter {
        let mut fresh = target.entry.clone();
        fresh.counter = Counter::Counting {
            left: NEW_SLOT_TRIES,
            done: 0,
        };
        esp.rename_entry(&target.name, &fresh.file_name())?;
    }
    let done = match running.entry.counter {
        Counter::Blessed => 1,
        Counter::Counting { left, done } => (left + done).max(1),
    };
    let mut spent = running.entry.clone();
    spent.counter = Counter::Counting { left: 0, done };
    if spent.file_name() != running.name {
        esp.rename_entry(&running.name, &spent.file_name())?;
    }
    disk.sync()?;
    Ok(other)
}

/// The most bytes a payload for `t` can hold: its USR image fits the inactive slot's partition,
/// and its kernel and initramfs the ESP. An offer announcing more is refused before it is
/// downloaded.
pub fn payload_room(t: &Target) -> Result<u64, InstallError> {
    let disk = Disk::open(&t.disk, false)?;
    let (_, usr) = disk.partition(t.running.other().partition_name())?;
    let (_, esp) = disk.partition(kiln_contract::disk::ESP)?;
    Ok(crate::payload::PARTS_OFFSET + usr.size_bytes() + esp.size_bytes())
}

/// The slot named by `kiln.slot=` on a kernel command line (the last one, as the kernel's own
/// parameters go).
pub fn running_slot(cmdline: &str) -> Option<Slot> {
    split_kernel_cmdline(cmdline)
        .iter()
        .filter_map(|w| w.strip_prefix("kiln.slot="))
        .next_back()
        .and_then(|s| s.parse().ok())
}

/// An open disk and its partition table.
pub(crate) struct Disk {
    pub path: PathBuf,
    pub file: File,
    gpt: kiln_image::gpt::Gpt,
}

impl Disk {
    fn open(path: &Path, write: bool) -> Result<Disk, InstallError> {
        let mut file = File::options()
            .read(true)
            .write(write)
            .open(path)
            .map_err(io_err("opening", path))?;
        // A block device's metadata says 0 bytes; its end says its size.
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(io_err("finding the size of", path))?;
        let gpt =
            kiln_image::gpt::Gpt::read(&mut file, len).map_err(|source| InstallError::Gpt {
                path: path.to_owned(),
                source,
            })?;
        Ok(Disk {
            path: path.to_owned(),
            file,
            gpt,
        })
    }

    fn partition(
        &self,
        name: &'static str,
    ) -> Result<(u32, kiln_image::gpt::Partition), InstallError> {
        self.gpt
            .find_by_name(name)
            .map(|(n, p)| (n, p.clone()))
            .ok_or_else(|| InstallError::NoPartition {
                path: self.path.clone(),
                name,
            })
    }

    fn esp(&self) -> Result<Esp<'_>, InstallError> {
        let (_, p) = self.partition(kiln_contract::disk::ESP)?;
        let region = Region::new(&self.file, p.start_bytes(), p.size_bytes())
            .map_err(io_err("opening the ESP window of", &self.path))?;
        Ok(Esp::new(region, &self.path))
    }

    fn sync(&self) -> Result<(), InstallError> {
        self.file.sync_all().map_err(io_err("syncing", &self.path))
    }
}
