//! Writing a checked image to a disk or a file, in the order that never leaves a disk that boots
//! half an image: the first MiB (protective MBR and primary GPT) is zeroed first; the rest of
//! the image is streamed, synced, read back and hashed; the backup GPT is moved to the end of a
//! larger disk and the cloud-config written into OEM; only then is the first MiB written. Any
//! failure after the first write wipes the partition table again.
//!
//! Devices are written with `O_DIRECT` in large aligned chunks, every block including the zero
//! ones (the image's ext4 marks its inode tables as zeroed, so stale data there would be read
//! as inodes): runs of zero blocks go through `BLKZEROOUT`, which the kernel guarantees reads
//! back as zeros, and the read-back hash checks it. Files are truncated first and written
//! sparse.

use std::fs::{File, OpenOptions};
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln_image::disk::read_full;
use kiln_image::gpt::{Gpt, TableSource};
use kiln_image::region::Region;
use sha2::{Digest, Sha256};

use super::image::Image;
use crate::release::blockmap::{self, BlockMap};
use crate::release::chunks::CHUNK;
use kiln_contract::hex;

/// The region written last: protective MBR, primary GPT header and entries, alignment.
pub const HEAD: u64 = 1 << 20;
/// Buffers in flight between the reading and the writing thread (each one block of the
/// image's map: 16 MiB).
const DEPTH: usize = 3;
/// `O_DIRECT` wants the buffer, offset and length aligned to the logical block size; a page
/// covers every sector size.
const ALIGN: usize = 4096;
/// Zero blocks of this size are left as holes when the target is a file.
const SPARSE_BLOCK: usize = 64 << 10;
/// The backup GPT: 32 sectors of entries and the header.
const BACKUP_GPT_BYTES: u64 = 33 * 512;
/// The file on OEM that first boot reads.
pub const OEM_CONFIG: &str = kiln_contract::disk::OEM_CLOUD_CONFIG;

/// `_IO(0x12, 95)`, `_IOR(0x12, 114, u64)` from `linux/fs.h`.
const BLKRRPART: libc::c_ulong = 0x125f;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// Where the image goes, opened for writing.
pub struct Sink {
    pub path: PathBuf,
    /// Devices: `O_DIRECT | O_EXCL` for the image stream and the first MiB.
    bulk: File,
    /// Buffered, for the few small writes (backup GPT, the FAT of OEM) and the wipe.
    small: File,
    pub size: u64,
    pub is_device: bool,
}

impl Sink {
    /// Opens a whole disk exclusively: the kernel refuses while anything has it mounted or
    /// claimed, which closes the window between the checks and the first write.
    pub fn open_device(path: &Path, expected_size: u64) -> Result<Sink> {
        let bulk = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_EXCL)
            .open(path)
            .with_context(|| {
                format!(
                    "opening {} exclusively (busy means mounted, or used by another program; nothing was written)",
                    path.display()
                )
            })?;
        let small = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let size = device_size(&bulk)
            .with_context(|| format!("asking {} for its size", path.display()))?;
        if size != expected_size {
            bail!(
                "{} changed size since it was checked ({expected_size} → {size} bytes): check the device and run flash again",
                path.display()
            );
        }
        Ok(Sink {
            path: path.to_owned(),
            bulk,
            small,
            size,
            is_device: true,
        })
    }

    /// Creates or truncates the file and sizes it to `size` (all holes).
    pub fn open_file(path: &Path, size: u64) -> Result<Sink> {
        let bulk = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        bulk.set_len(size)
            .with_context(|| format!("sizing {} to {size} bytes", path.display()))?;
        let small = bulk.try_clone()?;
        Ok(Sink {
            path: path.to_owned(),
            bulk,
            small,
            size,
            is_device: false,
        })
    }

    fn sync(&self) -> Result<()> {
        self.bulk
            .sync_all()
            .and_then(|_| self.small.sync_all())
            .with_context(|| format!("syncing {}", self.path.display()))
    }

    /// Drops the cached pages so that reads come from the medium, not from what we wrote.
    fn drop_cache(&self) {
        // SAFETY: a valid open descriptor; the call only drops clean cached pages.
        unsafe {
            libc::posix_fadvise(self.small.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
}

fn device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// What the cloud-config file to put on OEM holds.
pub struct OemConfig {
    pub bytes: Vec<u8>,
    /// Its time on OEM: the file's own mtime, so the same inputs give the same bytes.
    pub mtime: i64,
}

/// Times and sizes, for the summary and the benchmark.
#[derive(Debug, Default)]
pub struct Outcome {
    pub image_bytes: u64,
    pub write: Duration,
    pub verify: Duration,
    pub total: Duration,
    pub backup_moved: bool,
}

/// Writes `image` to `sink` (see the module comment for the order). On failure after the
/// first write, the partition table is wiped and the error says so.
pub fn flash(sink: &Sink, image: &Image, config: Option<&OemConfig>) -> Result<Outcome> {
    let start = Instant::now();
    match write_all(sink, image, config) {
        Ok(mut outcome) => {
            outcome.total = start.elapsed();
            Ok(outcome)
        }
        Err(err) => {
            let wiped = match wipe(sink) {
                Ok(()) => "its partition table was wiped (first and last MiB zeroed), so it does not boot a partial image; fix the cause and run flash again".to_string(),
                Err(e) => format!("wiping its partition table failed too ({e:#}): do not boot it; wipe it with `wipefs -a {}`", sink.path.display()),
            };
            Err(err.context(format!("flashing {} failed: {wiped}", sink.path.display())))
        }
    }
}

fn write_all(sink: &Sink, image: &Image, config: Option<&OemConfig>) -> Result<Outcome> {
    let mut outcome = Outcome {
        image_bytes: image.size,
        ..Outcome::default()
    };
    zero_head(sink)?;
    let t = Instant::now();
    let (head, map) = stream_image(sink, image)?;
    sink.sync()?;
    outcome.write = t.elapsed();
    let t = Instant::now();
    verify_written(sink, image, &map, &head)?;
    outcome.verify = t.elapsed();
    let mut head = head;
    let (gpt, small_writes) = move_backup_gpt(sink, image, &mut head)?;
    outcome.backup_moved = !small_writes.is_empty();
    if let Some(config) = config {
        write_oem_config(sink, &gpt, config)?;
    }
    sink.sync()?;
    verify_small_writes(sink, &small_writes, &gpt, config)?;
    write_head(sink, &head)?;
    Ok(outcome)
}

/// A buffer whose slice starts on an [`ALIGN`] boundary, as `O_DIRECT` needs.
struct AlignedBuf {
    raw: Vec<u8>,
    offset: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + ALIGN];
        let offset = raw.as_ptr().align_offset(ALIGN);
        AlignedBuf { raw, offset, len }
    }

    fn get(&self) -> &[u8] {
        &self.raw[self.offset..self.offset + self.len]
    }

    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.offset..self.offset + self.len]
    }
}

fn zero_head(sink: &Sink) -> Result<()> {
    let zeros = AlignedBuf::new(HEAD as usize);
    sink.bulk
        .write_all_at(zeros.get(), 0)
        .and_then(|_| sink.bulk.sync_data())
        .with_context(|| format!("zeroing the first MiB of {}", sink.path.display()))
}

/// Streams the image into the sink from byte [`HEAD`] on; returns the first MiB and the
/// image's block map. What is read is checked on the reading thread: against the map a raw
/// image got when its hash was checked (so a file changed since fails here), or hashed whole
/// and mapped when compressed (its hash is compared at the end).
fn stream_image(sink: &Sink, image: &Image) -> Result<(Vec<u8>, BlockMap)> {
    let mut reader = image.reader()?.take(image.size);
    let mut head = Vec::with_capacity(HEAD as usize);
    let mut progress = Progress::new("writing", image.size);
    let mut hasher = Sha256::new();
    let block = image.map.as_ref().map_or(CHUNK, BlockMap::block);
    let mut built = BlockMap::new(block);
    let mut pos = 0u64;
    let produce = |buf: &mut [u8]| -> io::Result<usize> {
        let n = read_full(&mut reader, buf)?;
        match &image.map {
            Some(map) => map.check(pos, &buf[..n]).map_err(|at| {
                io::Error::other(format!(
                    "{} changed in the {} MiB at byte {at} since its checksum was checked: rebuild it or copy it again",
                    image.path.display(),
                    map.block() >> 20
                ))
            })?,
            None => {
                hasher.update(&buf[..n]);
                built.push(&buf[..n]);
            }
        }
        pos += n as u64;
        Ok(n)
    };
    let consume = |offset: u64, data: &[u8]| -> Result<()> {
        let in_head = (HEAD.saturating_sub(offset) as usize).min(data.len());
        head.extend_from_slice(&data[..in_head]);
        let at = offset + in_head as u64;
        write_body(sink, &data[in_head..], at)
            .with_context(|| format!("writing {} at byte {at}", sink.path.display()))?;
        progress.show(offset + data.len() as u64);
        Ok(())
    };
    let total = pipeline(block, produce, consume)?;
    progress.done();
    if total != image.size {
        bail!(
            "{} ended after {total} bytes of a {}-byte disk: it is truncated",
            image.path.display(),
            image.size
        );
    }
    let map = match &image.map {
        Some(map) => map.clone(),
        None => {
            let hash: [u8; 32] = hasher.finalize().into();
            if hash != image.disk_sha256 {
                bail!(
                    "{} decompresses to a disk with SHA-256 {}, not the {} its checksums give for disk.raw",
                    image.path.display(),
                    hex::encode(&hash),
                    hex::encode(&image.disk_sha256)
                );
            }
            built
        }
    };
    Ok((head, map))
}

/// Files get the blocks that are not all zero (they were truncated, the rest reads as zero).
/// Devices get every block: data written, runs of zero blocks zeroed with `BLKZEROOUT`, which
/// guarantees zeros (the kernel writes them itself when the device cannot), unlike a discard.
fn write_body(sink: &Sink, data: &[u8], at: u64) -> io::Result<()> {
    for (zero, start, end) in zero_runs(data) {
        let pos = at + start as u64;
        match (zero, sink.is_device) {
            (false, _) => sink.bulk.write_all_at(&data[start..end], pos)?,
            (true, true) => zero_out(&sink.bulk, pos, (end - start) as u64)?,
            (true, false) => {}
        }
    }
    Ok(())
}

/// `data` cut into maximal runs of all-zero and not-all-zero [`SPARSE_BLOCK`]s:
/// (zero, start, end).
fn zero_runs(data: &[u8]) -> Vec<(bool, usize, usize)> {
    let mut runs: Vec<(bool, usize, usize)> = Vec::new();
    for (i, block) in data.chunks(SPARSE_BLOCK).enumerate() {
        let zero = blockmap::is_zero(block);
        let (start, end) = (i * SPARSE_BLOCK, i * SPARSE_BLOCK + block.len());
        match runs.last_mut() {
            Some(last) if last.0 == zero => last.2 = end,
            _ => runs.push((zero, start, end)),
        }
    }
    runs
}

/// `_IO(0x12, 127)`: zero a byte range of a block device, `[start, len]`.
const BLKZEROOUT: libc::c_ulong = 0x127f;

fn zero_out(dev: &File, start: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [start, len];
    // SAFETY: BLKZEROOUT reads two u64 through the pointer.
    if unsafe { libc::ioctl(dev.as_raw_fd(), BLKZEROOUT, range.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads back what was written (devices with `O_DIRECT`, files after dropping the cache) and
/// checks every block against the image's map (which the image's signed checksums vouch
/// for). The first MiB, still zeros on the medium (it is written last), is checked from
/// memory.
fn verify_written(sink: &Sink, image: &Image, map: &BlockMap, head: &[u8]) -> Result<()> {
    sink.drop_cache();
    let differs = |at: u64| {
        anyhow::anyhow!(
            "{} reads back differently from the image in the {} MiB at byte {at}: the medium does not keep what is written (a failing or fake-capacity disk?)",
            sink.path.display(),
            map.block() >> 20
        )
    };
    let mut pos = 0;
    let mut progress = Progress::new("verifying", image.size);
    let produce = |buf: &mut [u8]| -> io::Result<usize> {
        let n = (image.size - pos).min(buf.len() as u64) as usize;
        sink.bulk.read_exact_at(&mut buf[..n], pos)?;
        if pos == 0 {
            // A block is at least the head's MiB, and the image at least 2 MiB.
            buf[..head.len()].copy_from_slice(head);
        }
        pos += n as u64;
        Ok(n)
    };
    let consume = |offset: u64, data: &[u8]| -> Result<()> {
        map.check(offset, data).map_err(differs)?;
        progress.show(offset + data.len() as u64);
        Ok(())
    };
    pipeline(map.block(), produce, consume)
        .with_context(|| format!("reading {} back", sink.path.display()))?;
    progress.done();
    Ok(())
}

/// One write of the partition table outside the first MiB: (offset, bytes).
type SmallWrite = (u64, Vec<u8>);

/// On a larger target, moves the backup GPT to the end (changing the primary header in
/// `head`) and clears the image's old backup, which lies inside the usable space now. Returns
/// the table and the writes made outside the first MiB.
fn move_backup_gpt(sink: &Sink, image: &Image, head: &mut [u8]) -> Result<(Gpt, Vec<SmallWrite>)> {
    let mut gpt = Gpt::read(&mut Cursor::new(&*head), image.size)
        .context("reading the image's partition table")?;
    if gpt.source != TableSource::Primary {
        bail!("the image's primary partition table is damaged: rebuild the image");
    }
    if sink.size == image.size {
        return Ok((gpt, Vec::new()));
    }
    gpt.resize_disk(sink.size).with_context(|| {
        format!(
            "moving the backup partition table to the end of {}",
            sink.path.display()
        )
    })?;
    let mut recorder = Recorder::default();
    gpt.write(&mut recorder)?;
    let mut small = vec![(
        image.size - BACKUP_GPT_BYTES,
        vec![0u8; BACKUP_GPT_BYTES as usize],
    )];
    for (offset, bytes) in recorder.writes {
        let end = offset + bytes.len() as u64;
        if end <= HEAD {
            head[offset as usize..end as usize].copy_from_slice(&bytes);
        } else {
            small.push((offset, bytes));
        }
    }
    for (offset, bytes) in &small {
        sink.small
            .write_all_at(bytes, *offset)
            .with_context(|| format!("writing {} at byte {offset}", sink.path.display()))?;
    }
    Ok((gpt, small))
}

/// Collects what [`Gpt::write`] writes, to place it ourselves.
#[derive(Default)]
struct Recorder {
    pos: u64,
    writes: Vec<SmallWrite>,
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writes.push((self.pos, buf.to_vec()));
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Recorder {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        match to {
            SeekFrom::Start(p) => self.pos = p,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the recorder seeks only from the start",
                ))
            }
        }
        Ok(self.pos)
    }
}

fn oem_region<'a>(sink: &'a Sink, gpt: &Gpt) -> Result<Region<&'a File>> {
    let (_, oem) = gpt
        .find_by_name(kiln_contract::disk::OEM)
        .context("the image has no OEM partition to hold the cloud-config")?;
    Ok(Region::new(
        &sink.small,
        oem.start_bytes(),
        oem.size_bytes(),
    )?)
}

/// Puts the cloud-config on OEM's FAT in place (no mount).
fn write_oem_config(sink: &Sink, gpt: &Gpt, config: &OemConfig) -> Result<()> {
    let mut oem = oem_region(sink, gpt)?;
    kiln_image::fat::write_file(&mut oem, OEM_CONFIG, &config.bytes, config.mtime)
        .with_context(|| format!("writing {OEM_CONFIG} on the OEM partition"))
}

/// Reads the small writes and the cloud-config back from the medium.
fn verify_small_writes(
    sink: &Sink,
    small: &[SmallWrite],
    gpt: &Gpt,
    config: Option<&OemConfig>,
) -> Result<()> {
    sink.drop_cache();
    for (offset, bytes) in small {
        let mut read = vec![0u8; bytes.len()];
        sink.small.read_exact_at(&mut read, *offset)?;
        if &read != bytes {
            bail!(
                "{} reads back differently at byte {offset} (the backup partition table)",
                sink.path.display()
            );
        }
    }
    if let Some(config) = config {
        let read = kiln_image::fat::read_file(&mut oem_region(sink, gpt)?, OEM_CONFIG)
            .with_context(|| format!("reading {OEM_CONFIG} back from OEM"))?;
        if read != config.bytes {
            bail!("{OEM_CONFIG} on OEM reads back differently from the file given");
        }
    }
    Ok(())
}

/// The last write: the first MiB, then read back.
fn write_head(sink: &Sink, head: &[u8]) -> Result<()> {
    let mut buf = AlignedBuf::new(HEAD as usize);
    buf.get_mut().copy_from_slice(head);
    sink.bulk
        .write_all_at(buf.get(), 0)
        .and_then(|_| sink.bulk.sync_all())
        .with_context(|| format!("writing the first MiB of {}", sink.path.display()))?;
    sink.drop_cache();
    let mut read = AlignedBuf::new(HEAD as usize);
    sink.bulk.read_exact_at(read.get_mut(), 0)?;
    if read.get() != head {
        bail!(
            "the first MiB of {} reads back differently",
            sink.path.display()
        );
    }
    Ok(())
}

/// Zeroes the first and the last MiB (both partition tables), through the buffered handle.
pub fn wipe(sink: &Sink) -> Result<()> {
    let zeros = vec![0u8; HEAD as usize];
    let tail = sink.size.saturating_sub(HEAD);
    sink.small.write_all_at(&zeros, 0)?;
    sink.small
        .write_all_at(&zeros[..(sink.size - tail) as usize], tail)?;
    sink.small.sync_all()?;
    Ok(())
}

/// Asks the kernel to read the new partition table (best effort: a loop device without
/// partition scanning, or a kernel without GPT support, says no).
pub fn reread_partitions(path: &Path) -> std::result::Result<(), io::Error> {
    let f = File::open(path)?;
    // SAFETY: BLKRRPART takes no argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKRRPART, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `produce` on its own thread, filling buffers of `buf_len` bytes, and `consume` on this
/// one, in order, so that reading (and hashing, decompressing) overlaps writing. Returns the
/// bytes passed.
fn pipeline(
    buf_len: usize,
    mut produce: impl FnMut(&mut [u8]) -> io::Result<usize> + Send,
    mut consume: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<u64> {
    std::thread::scope(|s| {
        let (full_tx, full_rx) = mpsc::sync_channel::<(AlignedBuf, usize)>(DEPTH);
        let (free_tx, free_rx) = mpsc::channel::<AlignedBuf>();
        for _ in 0..DEPTH + 2 {
            let _ = free_tx.send(AlignedBuf::new(buf_len));
        }
        let producer = s.spawn(move || -> io::Result<()> {
            while let Ok(mut buf) = free_rx.recv() {
                let n = produce(buf.get_mut())?;
                // A send fails only when the consumer stopped, which reports its own error.
                if n == 0 || full_tx.send((buf, n)).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let mut offset = 0u64;
        let mut result = Ok(());
        for (buf, n) in full_rx.iter() {
            if let Err(e) = consume(offset, &buf.get()[..n]) {
                result = Err(e);
                break;
            }
            offset += n as u64;
            let _ = free_tx.send(buf);
        }
        drop(full_rx);
        drop(free_tx);
        let produced = producer
            .join()
            .map_err(|_| anyhow::anyhow!("the reading thread panicked"))?;
        result?;
        produced?;
        Ok(offset)
    })
}

/// A progress line on stderr, redrawn at most once a second: bytes done and MB/s.
struct Progress {
    what: &'static str,
    total: u64,
    start: Instant,
    shown: Instant,
}

impl Progress {
    fn new(what: &'static str, total: u64) -> Progress {
        let now = Instant::now();
        Progress {
            what,
            total,
            start: now,
            shown: now,
        }
    }

    fn show(&mut self, done: u64) {
        if self.shown.elapsed() < Duration::from_secs(1) && done < self.total {
            return;
        }
        self.shown = Instant::now();
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        eprint!(
            "\r  {}: {} / {} MB ({}%), {:.0} MB/s   ",
            self.what,
            done / 1_000_000,
            self.total / 1_000_000,
            done * 100 / self.total.max(1),
            done as f64 / 1e6 / secs
        );
    }

    fn done(&self) {
        eprintln!();
    }
}
