//! The device-side install path: writes a verified payload to the slot that is not running and
//! makes the boot loader try it; blesses, lists and rolls back boot entries.
//!
//! Works on a whole-disk block device or a disk image file alike: partitions are found by
//! their GPT names, and the ESP is read and written with `kiln_image::fat` at its offset,
//! without mounting anything.
//!
//! The order of [`install`] is what keeps a power cut harmless: the manifest's signature and
//! every part's hash are checked first; then the inactive slot's boot entries are removed, so
//! a half-written slot is never bootable; the USR image, kernel and initramfs are written and
//! read back; and the slot's entry, with tries left, is written last. Until that entry exists,
//! the running slot is the only one systemd-boot can pick.

mod device;
mod esp;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;

use kiln_image::boot::{split_kernel_cmdline, BootEntry, BootError, Counter, Slot};
use kiln_image::fat::FatError;
use kiln_image::gpt::GptError;
use kiln_image::region::Region;
use kiln_image::verity::VerityError;
use sha2::{Digest, Sha256};

use crate::keys::VerifyingKey;
use crate::payload::{self, HashingReader, Manifest, PayloadError, BOARD};

pub use device::SysPaths;
use esp::Esp;

/// Tries a newly installed slot gets before systemd-boot falls back to the other one.
pub const NEW_SLOT_TRIES: u32 = 3;
/// Bytes moved per read and write while streaming the USR image.
const CHUNK: usize = 4 << 20;
/// `O_DIRECT` wants memory, offsets and lengths aligned to the logical block size; a page
/// covers every device's.
const DIRECT_ALIGN: usize = 4096;
/// Chunks that may wait between the decompressor and each of its consumers.
const PIPELINE_DEPTH: usize = 4;

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
    /// The partition read back: SHA-256, then the verity tree.
    ReadingBack,
    /// Kernel and initramfs into the ESP.
    Esp,
    /// The new slot's boot entry.
    Entry,
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
    #[error("checking the verity tree written to {partition} of {disk}: {source}")]
    Verity {
        disk: PathBuf,
        partition: &'static str,
        #[source]
        source: VerityError,
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
/// documentation gives; `progress` hears each phase's bytes done and total.
pub fn install(
    t: &Target,
    payload: &Path,
    key: &VerifyingKey,
    progress: &mut dyn FnMut(Phase, u64, u64),
) -> Result<Installed, InstallError> {
    install_with(t, payload, key, &SysPaths::default(), progress)
}

/// [`install`] with the `/proc` and `/sys` files the in-use check reads named (for tests).
pub fn install_with(
    t: &Target,
    payload: &Path,
    key: &VerifyingKey,
    sys: &SysPaths,
    progress: &mut dyn FnMut(Phase, u64, u64),
) -> Result<Installed, InstallError> {
    let manifest = verify_payload(payload, key, progress)?;
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
    write_usr(&disk, window, payload, &manifest, partition, progress)?;
    let region = Region::new(&disk.file, part.start_bytes(), part.size_bytes())
        .map_err(io_err("opening the partition window of", &t.disk))?;
    read_back(&disk, region, &manifest, partition, progress)?;

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
    let manifest = payload::read_verified_manifest(payload, key)?;
    if manifest.board != BOARD {
        return Err(InstallError::WrongBoard {
            path: payload.to_owned(),
            board: manifest.board,
        });
    }
    payload::check_parts(payload, &manifest, &mut |done, total| {
        progress(Phase::Verifying, done, total)
    })?;
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

/// Streams the USR part through zstd into the partition, hashing what is written, then syncs.
///
/// Three threads, so that decompressing, hashing and writing overlap (one after the other they
/// ran at half of `dd`'s speed): a decompressor hands each chunk to a hasher and to this
/// thread, which writes it. Bounded channels keep at most a few chunks in memory. Writes use
/// `O_DIRECT` where the disk allows it: 600 MB of image would otherwise push the running
/// system's files out of the page cache, and the read-back would read the cache.
fn write_usr(
    disk: &Disk,
    (start, len): (u64, u64),
    payload: &Path,
    m: &Manifest,
    partition: &'static str,
    progress: &mut dyn FnMut(Phase, u64, u64),
) -> Result<(), InstallError> {
    let mut src = File::open(payload).map_err(io_err("opening", payload))?;
    src.seek(SeekFrom::Start(m.parts.usr.offset))
        .map_err(io_err("seeking in", payload))?;
    let decoder = zstd::stream::read::Decoder::new(src.take(m.parts.usr.length))
        .map_err(io_err("starting zstd for", payload))?;
    let total = m.usr_size;
    let direct = device::open_direct(&disk.path);
    let window = |f| {
        Region::new(f, start, len).map_err(io_err("opening the partition window of", &disk.path))
    };
    let mut region = window(direct.as_ref().unwrap_or(&disk.file))?;
    let mut buffered = window(&disk.file)?;
    progress(Phase::Writing, 0, total);
    let (digest, written) = std::thread::scope(|s| {
        let (chunk_tx, chunk_rx) = mpsc::sync_channel::<Arc<Chunk>>(PIPELINE_DEPTH);
        let (hash_tx, hash_rx) = mpsc::sync_channel::<Arc<Chunk>>(PIPELINE_DEPTH);
        let producer = s.spawn(move || decompress_chunks(decoder, &[chunk_tx, hash_tx]));
        let hasher = s.spawn(move || {
            let mut h = Sha256::new();
            for chunk in hash_rx {
                h.update(chunk.data());
            }
            payload::hex(&h.finalize())
        });
        let mut written = 0u64;
        let mut result = Ok(());
        // Leaving the loop drops the receiver, which stops the decompressor.
        for chunk in chunk_rx {
            written += chunk.len as u64;
            if written > total {
                result = Err(mismatch(
                    disk,
                    partition,
                    "the decompressed size",
                    total,
                    written,
                ));
                break;
            }
            // Whole aligned chunks go straight to the device; a short last one (an image size
            // that is not a multiple of the alignment) through the page cache.
            let target = if chunk.len % DIRECT_ALIGN == 0 {
                &mut region
            } else {
                &mut buffered
            };
            if let Err(e) = target.write_all(chunk.data()) {
                result = Err(io_err(format!("writing {partition} of"), &disk.path)(e));
                break;
            }
            progress(Phase::Writing, written, total);
        }
        let produced = producer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let digest = hasher
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        result?;
        produced.map_err(|source| InstallError::Decompress {
            path: payload.to_owned(),
            source,
        })?;
        Ok::<_, InstallError>((digest, written))
    })?;
    if written != total {
        return Err(mismatch(
            disk,
            partition,
            "the decompressed size",
            total,
            written,
        ));
    }
    if digest != m.usr_sha256 {
        return Err(mismatch(
            disk,
            partition,
            "the SHA-256 of the decompressed image",
            &m.usr_sha256,
            digest,
        ));
    }
    disk.sync()
}

/// One piece of the decompressed image, in memory aligned for `O_DIRECT`.
struct Chunk {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Chunk {
    fn new() -> Chunk {
        let buf = vec![0u8; CHUNK + DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        Chunk { buf, start, len: 0 }
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

/// Decompresses `reader` in [`CHUNK`]-sized pieces and sends each to every consumer. Stops
/// quietly when a consumer has gone: its own error is the one to report.
fn decompress_chunks(mut reader: impl Read, to: &[SyncSender<Arc<Chunk>>]) -> io::Result<()> {
    loop {
        let mut chunk = Chunk::new();
        let start = chunk.start;
        let n = fill(&mut reader, &mut chunk.buf[start..start + CHUNK])?;
        if n == 0 {
            return Ok(());
        }
        chunk.len = n;
        let chunk = Arc::new(chunk);
        for tx in to {
            if tx.send(Arc::clone(&chunk)).is_err() {
                return Ok(());
            }
        }
    }
}

/// Reads the partition back (from the device, not the page cache), checking the SHA-256 and
/// then the verity tree and root hash.
fn read_back(
    disk: &Disk,
    region: Region<&File>,
    m: &Manifest,
    partition: &'static str,
    progress: &mut dyn FnMut(Phase, u64, u64),
) -> Result<(), InstallError> {
    device::drop_cache(&disk.file, region.start(), m.usr_size);
    let total = m.usr_size;
    let mut reader = HashingReader::new(region.take(total));
    let mut buf = vec![0u8; CHUNK];
    progress(Phase::ReadingBack, 0, total);
    loop {
        let n = fill(&mut reader, &mut buf)
            .map_err(io_err(format!("reading back {partition} of"), &disk.path))?;
        if n == 0 {
            break;
        }
        progress(Phase::ReadingBack, reader.count, total);
    }
    let actual = reader.hex_digest();
    if reader.count != total || actual != m.usr_sha256 {
        return Err(mismatch(
            disk,
            partition,
            "the SHA-256 read back",
            &m.usr_sha256,
            actual,
        ));
    }
    let mut region = reader.inner.into_inner();
    let info = kiln_image::verity::verify(&mut region, m.verity_hash_offset).map_err(|source| {
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
    if payload::hex(&info.salt) != m.verity_salt {
        return Err(mismatch(
            disk,
            partition,
            "the verity salt",
            &m.verity_salt,
            payload::hex(&info.salt),
        ));
    }
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

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
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
        let (_, p) = self.partition("EFI-SYSTEM")?;
        let region = Region::new(&self.file, p.start_bytes(), p.size_bytes())
            .map_err(io_err("opening the ESP window of", &self.path))?;
        Ok(Esp::new(region, &self.path))
    }

    fn sync(&self) -> Result<(), InstallError> {
        self.file.sync_all().map_err(io_err("syncing", &self.path))
    }
}
