//! The GUID partition table: build the image's table, read a disk's, grow it at first boot.
//!
//! 512-byte sectors, 128 entries of 128 bytes (LBA 2–33 and the 33 sectors before the last),
//! partitions aligned to 1 MiB. The table is loaded into a [`Gpt`], changed in memory, and put
//! back with one explicit [`Gpt::write`]; nothing else touches the disk. Used on the device
//! (the init grows ROOT, the update agent finds slots), so it needs only std, `crc32fast` and
//! `sha2`. Layout from the UEFI specification, chapter "GUID Partition Table (GPT) Disk Layout".

use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::str::FromStr;

pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries, as every partitioning tool does today.
pub const ALIGN_SECTORS: u64 = (1 << 20) / SECTOR;
pub const ENTRY_COUNT: usize = 128;
const ENTRY_SIZE: usize = 128;
const ENTRIES_BYTES: usize = ENTRY_COUNT * ENTRY_SIZE;
/// Sectors taken by the entry array (32).
const ENTRIES_SECTORS: u64 = ENTRIES_BYTES as u64 / SECTOR;
const HEADER_SIZE: usize = 92;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION: u32 = 0x0001_0000;
/// Partition names hold at most this many UTF-16 code units.
pub const NAME_UNITS: usize = 36;
/// Smallest disk: MBR, both headers, both entry arrays and one aligned MiB for partitions.
const MIN_SECTORS: u64 = 2 * ALIGN_SECTORS + ENTRIES_SECTORS + 2;

/// Attribute bit 0: the platform needs the partition to work.
pub const ATTR_REQUIRED: u64 = 1;
/// Attribute bit 2: legacy BIOS bootable.
pub const ATTR_LEGACY_BOOTABLE: u64 = 1 << 2;

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("disk size {bytes} bytes: {reason}")]
    BadDiskSize { bytes: u64, reason: String },
    #[error("no GPT signature in the {which} header (not a GPT disk, or the {which} header is overwritten)")]
    BadSignature { which: TableCopy },
    #[error("bad CRC in the {which} header: stored {stored:08x}, computed {computed:08x}")]
    BadHeaderCrc {
        which: TableCopy,
        stored: u32,
        computed: u32,
    },
    #[error(
        "bad CRC of the {which} partition entries: stored {stored:08x}, computed {computed:08x}"
    )]
    BadEntriesCrc {
        which: TableCopy,
        stored: u32,
        computed: u32,
    },
    #[error("invalid {which} header: {reason}")]
    BadHeader { which: TableCopy, reason: String },
    #[error("both partition tables are unreadable: primary: {primary}; backup: {backup}")]
    BothCopiesBad {
        primary: Box<GptError>,
        backup: Box<GptError>,
    },
    #[error("partition number {number} is outside 1..=128")]
    BadNumber { number: u32 },
    #[error("partition {number} already exists")]
    NumberInUse { number: u32 },
    #[error("there is no partition {number}")]
    NoSuchPartition { number: u32 },
    #[error("partition name {name:?} is {units} UTF-16 units long; the limit is {NAME_UNITS}")]
    NameTooLong { name: String, units: usize },
    #[error("partition {number}: size {size_bytes} bytes is not a positive multiple of 512")]
    BadSize { number: u32, size_bytes: u64 },
    #[error("partition {number} ({name}) needs sectors {first}..={last} but the last usable sector is {last_usable}: make the disk larger or the partition smaller")]
    DoesNotFit {
        number: u32,
        name: String,
        first: u64,
        last: u64,
        last_usable: u64,
    },
    #[error("partition {number} ({name}) at sectors {first}..={last} is outside the usable sectors {first_usable}..={last_usable}")]
    OutsideUsable {
        number: u32,
        name: String,
        first: u64,
        last: u64,
        first_usable: u64,
        last_usable: u64,
    },
    #[error("partitions {a} and {b} overlap")]
    Overlap { a: u32, b: u32 },
    #[error("partition {number} has type GUID zero, which marks an unused entry")]
    ZeroType { number: u32 },
    #[error(
        "partition {number} cannot grow to the end of the disk: partition {next} comes after it"
    )]
    NotLast { number: u32, next: u32 },
    #[error("invalid GUID {text:?}: expected the form C12A7328-F81F-11D2-BA4B-00A0C93EC93B")]
    BadGuid { text: String },
}

impl GptError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> GptError {
        let context = context.into();
        move |source| GptError::Io { context, source }
    }
}

/// Which of the two copies of the table a message is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableCopy {
    Primary,
    Backup,
}

impl fmt::Display for TableCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TableCopy::Primary => "primary",
            TableCopy::Backup => "backup",
        })
    }
}

/// Where a [`Gpt`] came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableSource {
    /// Built in memory with [`Gpt::new`].
    New,
    Primary,
    /// The primary copy was unreadable (the message says why); the table came from the backup.
    /// Writing the table back repairs the primary.
    Backup {
        primary_error: String,
    },
}

/// A GUID, held in its text order ("C12A7328-..." is `[0xC1, 0x2A, ...]`). On disk the first
/// three groups are little-endian; [`Guid::to_disk`] and [`Guid::from_disk`] convert.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub const ZERO: Guid = Guid([0; 16]);
    pub const ESP: Guid = guid(0xC12A7328, 0xF81F, 0x11D2, 0xBA4B_00A0C93EC93B);
    /// `/usr` for x86-64 (Discoverable Partitions Specification).
    pub const USR_X86_64: Guid = guid(0x8484680C, 0x9521, 0x48C6, 0x9C11_B0720656F69E);
    pub const LINUX_DATA: Guid = guid(0x0FC63DAF, 0x8483, 0x4772, 0x8E79_3D69D8477DE4);
    /// The root filesystem for x86-64 (Discoverable Partitions Specification).
    pub const ROOT_X86_64: Guid = guid(0x4F68BCE3, 0xE8CD, 0x4DB1, 0x96E7_FBCAF984B709);

    /// A version-4-shaped GUID made from SHA-256 of `input`: reproducible builds derive their
    /// disk and partition GUIDs from the version and the partition's role instead of a random
    /// source.
    pub fn from_hash(input: &[u8]) -> Guid {
        let digest = Sha256::digest(input);
        let mut b = [0u8; 16];
        b.copy_from_slice(&digest[..16]);
        b[6] = (b[6] & 0x0F) | 0x40; // version 4
        b[8] = (b[8] & 0x3F) | 0x80; // RFC 4122 variant
        Guid(b)
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// The mixed-endian on-disk form.
    pub fn to_disk(&self) -> [u8; 16] {
        let mut d = self.0;
        d[0..4].reverse();
        d[4..6].reverse();
        d[6..8].reverse();
        d
    }

    pub fn from_disk(d: &[u8; 16]) -> Guid {
        // The swap is its own inverse.
        Guid(Guid(*d).to_disk())
    }
}

const fn guid(a: u32, b: u16, c: u16, d: u64) -> Guid {
    let (a, b, c, d) = (
        a.to_be_bytes(),
        b.to_be_bytes(),
        c.to_be_bytes(),
        d.to_be_bytes(),
    );
    Guid([
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ])
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl FromStr for Guid {
    type Err = GptError;

    fn from_str(s: &str) -> Result<Guid, GptError> {
        let bad = || GptError::BadGuid { text: s.into() };
        let groups: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lens != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let bytes = kiln_contract::hex::decode(&groups.concat()).ok_or_else(bad)?;
        Ok(Guid(bytes.try_into().map_err(|_| bad())?))
    }
}

/// One used entry of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

impl Partition {
    pub fn size_bytes(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }

    pub fn start_bytes(&self) -> u64 {
        self.first_lba * SECTOR
    }

    fn encode(&self, out: &mut [u8]) {
        out[0..16].copy_from_slice(&self.type_guid.to_disk());
        out[16..32].copy_from_slice(&self.unique_guid.to_disk());
        out[32..40].copy_from_slice(&self.first_lba.to_le_bytes());
        out[40..48].copy_from_slice(&self.last_lba.to_le_bytes());
        out[48..56].copy_from_slice(&self.attributes.to_le_bytes());
        for (i, unit) in self.name.encode_utf16().take(NAME_UNITS).enumerate() {
            out[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
    }

    /// `None` for an unused entry (type GUID zero).
    fn decode(e: &[u8]) -> Option<Partition> {
        let type_guid = Guid::from_disk(e[0..16].try_into().ok()?);
        if type_guid.is_zero() {
            return None;
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        Some(Partition {
            type_guid,
            unique_guid: Guid::from_disk(e[16..32].try_into().ok()?),
            first_lba: le64(&e[32..40]),
            last_lba: le64(&e[40..48]),
            attributes: le64(&e[48..56]),
            name: String::from_utf16_lossy(&units),
        })
    }
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The fields of a header that differ between tables; the rest is fixed by this module.
#[derive(Clone, Debug)]
struct Header {
    my_lba: u64,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: Guid,
    entries_lba: u64,
    entries_crc: u32,
}

impl Header {
    fn encode(&self) -> [u8; SECTOR as usize] {
        let mut b = [0u8; SECTOR as usize];
        b[0..8].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&REVISION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        b[24..32].copy_from_slice(&self.my_lba.to_le_bytes());
        b[32..40].copy_from_slice(&self.alternate_lba.to_le_bytes());
        b[40..48].copy_from_slice(&self.first_usable.to_le_bytes());
        b[48..56].copy_from_slice(&self.last_usable.to_le_bytes());
        b[56..72].copy_from_slice(&self.disk_guid.to_disk());
        b[72..80].copy_from_slice(&self.entries_lba.to_le_bytes());
        b[80..84].copy_from_slice(&(ENTRY_COUNT as u32).to_le_bytes());
        b[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        b[88..92].copy_from_slice(&self.entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..HEADER_SIZE]);
        b[16..20].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Checks everything that can be checked without the entries.
    fn decode(b: &[u8], which: TableCopy, lba: u64, disk_sectors: u64) -> Result<Header, GptError> {
        if &b[0..8] != SIGNATURE {
            return Err(GptError::BadSignature { which });
        }
        let bad = |reason: String| GptError::BadHeader { which, reason };
        let size = le32(&b[12..16]) as usize;
        if !(HEADER_SIZE..=SECTOR as usize).contains(&size) {
            return Err(bad(format!("header size {size}")));
        }
        let stored = le32(&b[16..20]);
        let mut copy = b[..size].to_vec();
        copy[16..20].fill(0);
        let computed = crc32fast::hash(&copy);
        if stored != computed {
            return Err(GptError::BadHeaderCrc {
                which,
                stored,
                computed,
            });
        }
        let (count, entry_size) = (le32(&b[80..84]) as usize, le32(&b[84..88]) as usize);
        if count != ENTRY_COUNT || entry_size != ENTRY_SIZE {
            return Err(bad(format!(
                "{count} entries of {entry_size} bytes; only {ENTRY_COUNT} of {ENTRY_SIZE} are supported"
            )));
        }
        let h = Header {
            my_lba: le64(&b[24..32]),
            alternate_lba: le64(&b[32..40]),
            first_usable: le64(&b[40..48]),
            last_usable: le64(&b[48..56]),
            disk_guid: Guid::from_disk(b[56..72].try_into().map_err(|_| bad("short".into()))?),
            entries_lba: le64(&b[72..80]),
            entries_crc: le32(&b[88..92]),
        };
        h.check_lbas(lba, disk_sectors).map_err(bad)?;
        Ok(h)
    }

    /// The header must be where it says, and its areas must lie inside the disk without
    /// overlapping each other.
    fn check_lbas(&self, lba: u64, disk_sectors: u64) -> Result<(), String> {
        if self.my_lba != lba {
            return Err(format!(
                "it says it is at sector {}, found at {lba}",
                self.my_lba
            ));
        }
        let table_end = self.my_lba.max(self.alternate_lba);
        if table_end >= disk_sectors {
            return Err(format!(
                "the table reaches sector {table_end} but the disk has {disk_sectors} sectors"
            ));
        }
        let entries_end = self.entries_lba + ENTRIES_SECTORS - 1;
        let usable_ok = self.first_usable <= self.last_usable
            && (entries_end < self.first_usable || self.entries_lba > self.last_usable)
            && self.last_usable < table_end
            && self.first_usable > self.my_lba.min(self.alternate_lba);
        if !usable_ok || self.entries_lba == 0 || entries_end >= disk_sectors {
            return Err(format!(
                "inconsistent areas: entries at {}, usable {}..={}",
                self.entries_lba, self.first_usable, self.last_usable
            ));
        }
        Ok(())
    }
}

/// A partition table in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpt {
    pub disk_guid: Guid,
    /// The size of the disk the table describes (its backup header is in the last sector).
    /// After [`Gpt::read`] of a disk that has grown, this is still the old size until
    /// [`Gpt::resize_disk`].
    pub disk_sectors: u64,
    /// Index = partition number - 1; always 128 slots.
    pub partitions: Vec<Option<Partition>>,
    first_usable: u64,
    last_usable: u64,
    pub source: TableSource,
}

impl Gpt {
    /// An empty table for a disk of `disk_bytes`.
    pub fn new(disk_bytes: u64, disk_guid: Guid) -> Result<Gpt, GptError> {
        let disk_sectors = sectors_of(disk_bytes)?;
        Ok(Gpt {
            disk_guid,
            disk_sectors,
            partitions: vec![None; ENTRY_COUNT],
            first_usable: 2 + ENTRIES_SECTORS,
            last_usable: disk_sectors - 2 - ENTRIES_SECTORS,
            source: TableSource::New,
        })
    }

    pub fn first_usable_lba(&self) -> u64 {
        self.first_usable
    }

    pub fn last_usable_lba(&self) -> u64 {
        self.last_usable
    }

    /// The used entries with their numbers.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Partition)> {
        self.partitions
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i as u32 + 1, p.as_ref()?)))
    }

    pub fn get(&self, number: u32) -> Option<&Partition> {
        self.partitions.get(slot(number).ok()?)?.as_ref()
    }

    pub fn find_by_name(&self, name: &str) -> Option<(u32, &Partition)> {
        self.iter().find(|(_, p)| p.name == name)
    }

    /// Adds partition `number` of `size_bytes`, starting at the first 1 MiB boundary after the
    /// partition that ends last.
    pub fn add(
        &mut self,
        number: u32,
        type_guid: Guid,
        unique_guid: Guid,
        name: &str,
        size_bytes: u64,
        attributes: u64,
    ) -> Result<&Partition, GptError> {
        let index = slot(number)?;
        if self.partitions[index].is_some() {
            return Err(GptError::NumberInUse { number });
        }
        check_name(name)?;
        if type_guid.is_zero() {
            return Err(GptError::ZeroType { number });
        }
        if size_bytes == 0 || !size_bytes.is_multiple_of(SECTOR) {
            return Err(GptError::BadSize { number, size_bytes });
        }
        let after = self.iter().map(|(_, p)| p.last_lba + 1).max();
        let first = align_up(after.unwrap_or(0).max(self.first_usable));
        let last = first + size_bytes / SECTOR - 1;
        if last > self.last_usable {
            return Err(GptError::DoesNotFit {
                number,
                name: name.into(),
                first,
                last,
                last_usable: self.last_usable,
            });
        }
        Ok(self.partitions[index].insert(Partition {
            type_guid,
            unique_guid,
            first_lba: first,
            last_lba: last,
            attributes,
            name: name.into(),
        }))
    }

    /// Reads the table of a disk of `disk_bytes`: the primary copy, or the backup in the last
    /// sector when the primary is damaged ([`Gpt::source`] says which and why).
    pub fn read(dev: &mut (impl Read + Seek), disk_bytes: u64) -> Result<Gpt, GptError> {
        let disk_sectors = sectors_of(disk_bytes)?;
        let primary = match read_copy(dev, TableCopy::Primary, 1, disk_sectors) {
            Ok(gpt) => return Ok(gpt),
            Err(e) => e,
        };
        match read_copy(dev, TableCopy::Backup, disk_sectors - 1, disk_sectors) {
            Ok(mut gpt) => {
                gpt.source = TableSource::Backup {
                    primary_error: primary.to_string(),
                };
                Ok(gpt)
            }
            Err(backup) => Err(GptError::BothCopiesBad {
                primary: Box::new(primary),
                backup: Box::new(backup),
            }),
        }
    }

    /// Writes the protective MBR, the primary header and entries, and the backup entries and
    /// header, after checking that the partitions fit and do not overlap.
    pub fn write(&self, dev: &mut (impl Write + Seek)) -> Result<(), GptError> {
        self.validate()?;
        let mut entries = vec![0u8; ENTRIES_BYTES];
        for (i, p) in self.partitions.iter().enumerate().take(ENTRY_COUNT) {
            if let Some(p) = p {
                p.encode(&mut entries[i * ENTRY_SIZE..(i + 1) * ENTRY_SIZE]);
            }
        }
        let last = self.disk_sectors - 1;
        let primary = Header {
            my_lba: 1,
            alternate_lba: last,
            first_usable: self.first_usable,
            last_usable: self.last_usable,
            disk_guid: self.disk_guid,
            entries_lba: 2,
            entries_crc: crc32fast::hash(&entries),
        };
        let backup = Header {
            my_lba: last,
            alternate_lba: 1,
            entries_lba: last - ENTRIES_SECTORS,
            ..primary.clone()
        };
        write_at(dev, 0, &protective_mbr(self.disk_sectors))?;
        write_at(dev, 1, &primary.encode())?;
        write_at(dev, 2, &entries)?;
        write_at(dev, backup.entries_lba, &entries)?;
        write_at(dev, last, &backup.encode())?;
        dev.flush()
            .map_err(GptError::io("flushing the partition table"))
    }

    /// Moves the end of the disk (where the backup goes) to `new_disk_bytes`, for a disk image
    /// copied onto a larger (or smaller) disk. Partitions are unchanged and must still fit.
    pub fn resize_disk(&mut self, new_disk_bytes: u64) -> Result<(), GptError> {
        let sectors = sectors_of(new_disk_bytes)?;
        let last_usable = sectors - 2 - ENTRIES_SECTORS;
        if let Some((number, p)) = self.iter().find(|(_, p)| p.last_lba > last_usable) {
            return Err(GptError::DoesNotFit {
                number,
                name: p.name.clone(),
                first: p.first_lba,
                last: p.last_lba,
                last_usable,
            });
        }
        self.disk_sectors = sectors;
        self.last_usable = last_usable;
        Ok(())
    }

    /// Extends partition `number`, which must be the last on the disk, to the last 1 MiB
    /// boundary before the end of the usable space (so that its end is aligned too, which
    /// `sgdisk -v` asks for). Never shrinks it. Returns the new size in bytes.
    pub fn grow_partition_to_end(&mut self, number: u32) -> Result<u64, GptError> {
        let index = slot(number)?;
        let first = match &self.partitions[index] {
            Some(p) => p.first_lba,
            None => return Err(GptError::NoSuchPartition { number }),
        };
        if let Some((next, _)) = self.iter().find(|(_, p)| p.first_lba > first) {
            return Err(GptError::NotLast { number, next });
        }
        let aligned_end = (self.last_usable + 1) / ALIGN_SECTORS * ALIGN_SECTORS - 1;
        let p = self.partitions[index]
            .as_mut()
            .ok_or(GptError::NoSuchPartition { number })?;
        p.last_lba = p.last_lba.max(aligned_end);
        Ok(p.size_bytes())
    }

    /// Every partition inside the usable area, with a valid name and type, none overlapping.
    pub fn validate(&self) -> Result<(), GptError> {
        if self.partitions.len() != ENTRY_COUNT {
            return Err(GptError::BadNumber {
                number: self.partitions.len() as u32,
            });
        }
        let mut used: Vec<(u32, &Partition)> = self.iter().collect();
        for &(number, p) in &used {
            check_name(&p.name)?;
            if p.type_guid.is_zero() {
                return Err(GptError::ZeroType { number });
            }
            if p.first_lba < self.first_usable
                || p.last_lba > self.last_usable
                || p.first_lba > p.last_lba
            {
                return Err(GptError::OutsideUsable {
                    number,
                    name: p.name.clone(),
                    first: p.first_lba,
                    last: p.last_lba,
                    first_usable: self.first_usable,
                    last_usable: self.last_usable,
                });
            }
        }
        used.sort_by_key(|(_, p)| p.first_lba);
        for pair in used.windows(2) {
            if pair[1].1.first_lba <= pair[0].1.last_lba {
                return Err(GptError::Overlap {
                    a: pair[0].0,
                    b: pair[1].0,
                });
            }
        }
        Ok(())
    }
}

fn slot(number: u32) -> Result<usize, GptError> {
    if (1..=ENTRY_COUNT as u32).contains(&number) {
        Ok(number as usize - 1)
    } else {
        Err(GptError::BadNumber { number })
    }
}

fn check_name(name: &str) -> Result<(), GptError> {
    let units = name.encode_utf16().count();
    if units > NAME_UNITS {
        return Err(GptError::NameTooLong {
            name: name.into(),
            units,
        });
    }
    Ok(())
}

fn align_up(lba: u64) -> u64 {
    lba.div_ceil(ALIGN_SECTORS) * ALIGN_SECTORS
}

fn sectors_of(bytes: u64) -> Result<u64, GptError> {
    let bad = |reason: &str| GptError::BadDiskSize {
        bytes,
        reason: reason.into(),
    };
    if !bytes.is_multiple_of(SECTOR) {
        return Err(bad("not a multiple of 512"));
    }
    if bytes / SECTOR < MIN_SECTORS {
        return Err(bad(
            "too small for a GPT with 1 MiB-aligned partitions (need 2 MiB and 34 sectors)",
        ));
    }
    Ok(bytes / SECTOR)
}

/// Reads one copy: the header at `lba`, then its entries, checking both CRCs.
fn read_copy(
    dev: &mut (impl Read + Seek),
    which: TableCopy,
    lba: u64,
    disk_sectors: u64,
) -> Result<Gpt, GptError> {
    let mut sector = [0u8; SECTOR as usize];
    read_at(dev, lba, &mut sector, which)?;
    let h = Header::decode(&sector, which, lba, disk_sectors)?;
    let mut entries = vec![0u8; ENTRIES_BYTES];
    read_at(dev, h.entries_lba, &mut entries, which)?;
    let computed = crc32fast::hash(&entries);
    if computed != h.entries_crc {
        return Err(GptError::BadEntriesCrc {
            which,
            stored: h.entries_crc,
            computed,
        });
    }
    let partitions = entries
        .chunks_exact(ENTRY_SIZE)
        .map(Partition::decode)
        .collect();
    Ok(Gpt {
        disk_guid: h.disk_guid,
        disk_sectors: h.my_lba.max(h.alternate_lba) + 1,
        partitions,
        first_usable: h.first_usable,
        last_usable: h.last_usable,
        source: TableSource::Primary,
    })
}

fn read_at(
    dev: &mut (impl Read + Seek),
    lba: u64,
    buf: &mut [u8],
    which: TableCopy,
) -> Result<(), GptError> {
    dev.seek(SeekFrom::Start(lba * SECTOR))
        .and_then(|_| dev.read_exact(buf))
        .map_err(GptError::io(format!(
            "reading the {which} partition table at sector {lba}"
        )))
}

fn write_at(dev: &mut (impl Write + Seek), lba: u64, buf: &[u8]) -> Result<(), GptError> {
    dev.seek(SeekFrom::Start(lba * SECTOR))
        .and_then(|_| dev.write_all(buf))
        .map_err(GptError::io(format!(
            "writing the partition table at sector {lba}"
        )))
}

/// One MBR partition of type 0xEE covering the disk, so that MBR-only tools see it as in use.
fn protective_mbr(disk_sectors: u64) -> [u8; SECTOR as usize] {
    let mut m = [0u8; SECTOR as usize];
    let e = &mut m[446..462];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&chs(disk_sectors - 1));
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = (disk_sectors - 1).min(u64::from(u32::MAX)) as u32;
    e[12..16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

/// The MBR's cylinder-head-sector form of `lba` with the usual 255 heads and 63 sectors per
/// track, or 0xFFFFFF when it is past what CHS can say (as the UEFI specification asks).
fn chs(lba: u64) -> [u8; 3] {
    let cylinder = lba / (255 * 63);
    if cylinder > 1023 {
        return [0xFF; 3];
    }
    let head = (lba / 63) % 255;
    let sector = lba % 63 + 1;
    [
        head as u8,
        (sector as u8) | (((cylinder >> 2) & 0xC0) as u8),
        cylinder as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::require_tool;
    use std::fs::{File, OpenOptions};
    use std::path::Path;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    /// The Kiln layout with small sizes, GUIDs derived from names.
    fn design_table(disk_bytes: u64) -> Gpt {
        let mut g = Gpt::new(disk_bytes, Guid::from_hash(b"kiln test disk")).unwrap();
        let parts: [(&str, Guid, u64, u64); 5] = [
            ("EFI-SYSTEM", Guid::ESP, 4 * MIB, ATTR_REQUIRED),
            ("USR-A", Guid::USR_X86_64, 8 * MIB, 0x0101_0000_0000_0000),
            ("USR-B", Guid::USR_X86_64, 8 * MIB, 0),
            ("OEM", Guid::LINUX_DATA, 2 * MIB, 0),
            ("ROOT", Guid::ROOT_X86_64, 3 * MIB, 1 << 59),
        ];
        for (i, (name, ty, size, attrs)) in parts.into_iter().enumerate() {
            let unique = Guid::from_hash(format!("kiln test {name}").as_bytes());
            g.add(i as u32 + 1, ty, unique, name, size, attrs).unwrap();
        }
        g
    }

    fn write_file(g: &Gpt, path: &Path, disk_bytes: u64) {
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        f.set_len(disk_bytes).unwrap();
        g.write(&mut &f).unwrap();
    }

    fn sgdisk(args: &[&str]) -> String {
        let tool = require_tool("sgdisk", "gdisk");
        let out = Command::new(&tool).args(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "sgdisk {args:?}: {text}");
        text
    }

    /// `sgdisk -v` must find no problem and print no caution or warning.
    fn assert_sgdisk_clean(path: &Path) {
        let v = sgdisk(&["-v", path.to_str().unwrap()]);
        assert!(v.contains("No problems found"), "{v}");
        assert!(!v.contains("Caution") && !v.contains("Warning"), "{v}");
    }

    fn read_file(path: &Path) -> Gpt {
        let mut f = File::open(path).unwrap();
        let len = f.metadata().unwrap().len();
        Gpt::read(&mut f, len).unwrap()
    }

    #[test]
    fn guid_text_and_disk_forms() {
        let g: Guid = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".parse().unwrap();
        assert_eq!(g, Guid::ESP);
        assert_eq!(g.to_string(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
                .parse::<Guid>()
                .unwrap(),
            g
        );
        assert_eq!(
            g.to_disk(),
            [
                0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
                0xC9, 0x3B
            ]
        );
        assert_eq!(Guid::from_disk(&g.to_disk()), g);
        for bad in [
            "",
            "C12A7328F81F11D2BA4B00A0C93EC93B",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93G",
            "é2A7328-F81F-11D2-BA4B-00A0C93EC93",
        ] {
            assert!(bad.parse::<Guid>().is_err(), "{bad}");
        }
        let h = Guid::from_hash(b"x");
        assert_eq!(h, Guid::from_hash(b"x"));
        assert_ne!(h, Guid::from_hash(b"y"));
        assert_eq!(h.0[6] >> 4, 4);
        assert_eq!(h.0[8] >> 6, 2);
    }

    #[test]
    fn design_layout_passes_sgdisk_and_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let disk = 32 * MIB;
        let g = design_table(disk);
        write_file(&g, &path, disk);
        assert_sgdisk_clean(&path);
        let p = path.to_str().unwrap();
        let listing = sgdisk(&["-p", p]);
        assert!(
            listing.contains(&format!("Disk identifier (GUID): {}", g.disk_guid)),
            "{listing}"
        );
        for (number, part) in g.iter() {
            assert!(listing.contains(&part.name), "{listing}");
            let info = sgdisk(&["-i", &number.to_string(), p]);
            for expected in [
                format!("Partition GUID code: {}", part.type_guid),
                format!("Partition unique GUID: {}", part.unique_guid),
                format!("First sector: {} ", part.first_lba),
                format!("Last sector: {} ", part.last_lba),
                format!("Attribute flags: {:016X}", part.attributes),
                format!("Partition name: '{}'", part.name),
            ] {
                assert!(
                    info.contains(&expected),
                    "partition {number}: no {expected:?} in\n{info}"
                );
            }
        }
        assert_eq!(g.get(1).unwrap().first_lba, 2048);
        assert_eq!(g.get(2).unwrap().first_lba, 2048 + 4 * 2048);
        assert_eq!(g.find_by_name("OEM").unwrap().0, 4);
        assert!(g.find_by_name("nope").is_none());

        let again = dir.path().join("again");
        write_file(&design_table(disk), &again, disk);
        assert!(std::fs::read(&path).unwrap() == std::fs::read(&again).unwrap());
        let back = read_file(&path);
        assert_eq!(back.source, TableSource::Primary);
        assert_eq!(
            back,
            Gpt {
                source: TableSource::Primary,
                ..g
            }
        );
    }

    #[test]
    fn reads_a_table_sgdisk_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        File::create(&path).unwrap().set_len(20 * MIB).unwrap();
        let p = path.to_str().unwrap();
        sgdisk(&[
            "-U",
            "11111111-2222-4333-8444-555555555555",
            "-n",
            "1:0:+2M",
            "-t",
            "1:C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "-c",
            "1:EFI-SYSTEM",
            "-u",
            "1:AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE",
            "-A",
            "1:set:0",
            "-n",
            "3:0:+5M",
            "-t",
            "3:4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
            "-c",
            "3:RÖÖT",
            "-A",
            "3:set:2",
            "-A",
            "3:set:63",
            p,
        ]);
        let g = read_file(&path);
        assert_eq!(
            g.disk_guid.to_string(),
            "11111111-2222-4333-8444-555555555555"
        );
        assert_eq!(g.disk_sectors, 20 * MIB / SECTOR);
        assert_eq!(g.last_usable_lba(), 20 * MIB / SECTOR - 34);
        let esp = g.get(1).unwrap();
        assert_eq!(esp.type_guid, Guid::ESP);
        assert_eq!(
            esp.unique_guid.to_string(),
            "AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE"
        );
        assert_eq!(
            (esp.first_lba, esp.last_lba, esp.attributes),
            (2048, 6143, 1)
        );
        assert_eq!(esp.name, "EFI-SYSTEM");
        assert!(g.get(2).is_none());
        let root = g.get(3).unwrap();
        assert_eq!(
            (root.name.as_str(), root.type_guid),
            ("RÖÖT", Guid::ROOT_X86_64)
        );
        assert_eq!(root.attributes, (1 << 63) | ATTR_LEGACY_BOOTABLE);
        assert_eq!((root.first_lba, root.size_bytes()), (6144, 5 * MIB));
    }

    #[test]
    fn damaged_primary_falls_back_to_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let disk = 32 * MIB;
        let g = design_table(disk);
        write_file(&g, &path, disk);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[512 + 60] ^= 0xFF; // inside the disk GUID of the primary header
        std::fs::write(&path, &bytes).unwrap();
        let back = read_file(&path);
        match &back.source {
            TableSource::Backup { primary_error } => {
                assert!(
                    primary_error.contains("bad CRC in the primary header"),
                    "{primary_error}"
                )
            }
            other => panic!("read from {other:?}"),
        }
        assert_eq!(back.partitions, g.partitions);
        // Writing it back repairs the primary.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        back.write(&mut &f).unwrap();
        assert_eq!(read_file(&path).source, TableSource::Primary);
        assert_sgdisk_clean(&path);

        // A damaged entry array is noticed too, and with both copies gone reading fails.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[1024 + 200] ^= 1;
        let backup_header = (disk - SECTOR) as usize;
        bytes[backup_header] = b'X';
        std::fs::write(&path, &bytes).unwrap();
        let mut f = File::open(&path).unwrap();
        let err = Gpt::read(&mut f, disk).unwrap_err().to_string();
        assert!(
            err.contains("bad CRC of the primary partition entries"),
            "{err}"
        );
        assert!(
            err.contains("no GPT signature in the backup header"),
            "{err}"
        );
    }

    #[test]
    fn grown_disk_gets_backup_moved_and_root_grown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let disk = 32 * MIB;
        write_file(&design_table(disk), &path, disk);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.set_len(2 * disk).unwrap();
        let mut g = Gpt::read(&mut &f, 2 * disk).unwrap();
        assert_eq!(
            g.disk_sectors,
            disk / SECTOR,
            "still the old table until resized"
        );
        g.resize_disk(2 * disk).unwrap();
        g.write(&mut &f).unwrap();
        assert_sgdisk_clean(&path);

        let before = g.get(5).unwrap().clone();
        let size = g.grow_partition_to_end(5).unwrap();
        g.write(&mut &f).unwrap();
        assert_sgdisk_clean(&path);
        let root = read_file(&path).get(5).unwrap().clone();
        assert_eq!(root.first_lba, before.first_lba);
        assert_eq!(root.size_bytes(), size);
        // The last whole MiB before the backup entries: 64 MiB disk, so it ends at 63 MiB.
        assert_eq!(root.last_lba, 63 * MIB / SECTOR - 1);
        assert!(root.last_lba <= g.last_usable_lba());
        let info = sgdisk(&["-i", "5", path.to_str().unwrap()]);
        assert!(
            info.contains(&format!("Last sector: {} ", root.last_lba)),
            "{info}"
        );
        assert!(matches!(
            g.grow_partition_to_end(3),
            Err(GptError::NotLast { number: 3, next: 4 })
        ));
        // Shrinking below the partitions is refused.
        assert!(matches!(
            g.resize_disk(32 * MIB),
            Err(GptError::DoesNotFit { number: 5, .. })
        ));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let mut g = Gpt::new(16 * MIB, Guid::from_hash(b"d")).unwrap();
        let u = Guid::from_hash(b"u");
        let long = "x".repeat(37);
        let err = g.add(1, Guid::ESP, u, &long, MIB, 0).unwrap_err();
        assert!(
            matches!(err, GptError::NameTooLong { units: 37, .. }),
            "{err}"
        );
        assert!(g.add(1, Guid::ESP, u, &"y".repeat(36), MIB, 0).is_ok());
        assert!(matches!(
            g.add(1, Guid::ESP, u, "a", MIB, 0),
            Err(GptError::NumberInUse { number: 1 })
        ));
        assert!(matches!(
            g.add(0, Guid::ESP, u, "a", MIB, 0),
            Err(GptError::BadNumber { number: 0 })
        ));
        assert!(matches!(
            g.add(129, Guid::ESP, u, "a", MIB, 0),
            Err(GptError::BadNumber { .. })
        ));
        assert!(matches!(
            g.add(2, Guid::ESP, u, "a", 1000, 0),
            Err(GptError::BadSize { .. })
        ));
        assert!(matches!(
            g.add(2, Guid::ZERO, u, "a", MIB, 0),
            Err(GptError::ZeroType { .. })
        ));
        let err = g.add(2, Guid::ESP, u, "big", 15 * MIB, 0).unwrap_err();
        assert!(
            err.to_string()
                .contains("partition 2 (big) needs sectors 4096..="),
            "{err}"
        );
        g.add(2, Guid::ESP, u, "b", MIB, 0).unwrap();
        g.partitions[2] = Some(Partition {
            first_lba: g.get(2).unwrap().last_lba,
            ..g.get(2).unwrap().clone()
        });
        assert!(matches!(
            g.write(&mut io::Cursor::new(Vec::new())),
            Err(GptError::Overlap { a: 2, b: 3 })
        ));
        assert!(matches!(
            Gpt::new(1000, Guid::ZERO),
            Err(GptError::BadDiskSize { .. })
        ));
        assert!(matches!(
            Gpt::new(MIB, Guid::ZERO),
            Err(GptError::BadDiskSize { .. })
        ));
        let mut zeros = io::Cursor::new(vec![0u8; 4 * MIB as usize]);
        let err = Gpt::read(&mut zeros, 4 * MIB).unwrap_err().to_string();
        assert!(
            err.contains("both partition tables are unreadable"),
            "{err}"
        );
    }
}
