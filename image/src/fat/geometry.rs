//! Where things are on a FAT volume: the boot sector's parameters, how we choose them for a new
//! volume (the rules of Microsoft's FAT specification, fatgen103), and how we read them back.

use super::FatError;

/// The sector size of every volume we make (the one UEFI firmware and every tool expects).
pub(super) const SECTOR: u32 = 512;

/// Volumes of at most this many sectors are too small for FAT16 by the spec's table
/// (`DskTableFAT16`): their cluster count would fall into FAT12's range.
const FAT16_MIN_EXCLUSIVE: u64 = 8_400;
/// Volumes of at most this many sectors are too small for FAT32 by the spec's table
/// (`DskTableFAT32`): with 512-byte clusters they would have fewer than 65525 clusters.
const FAT32_MIN_EXCLUSIVE: u64 = 66_600;

/// The three FAT variants, named by the width of a FAT entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl FatType {
    /// The spec's one and only rule for telling the variants apart: the count of data clusters.
    fn from_cluster_count(count: u32) -> Self {
        if count < 4085 {
            FatType::Fat12
        } else if count < 65525 {
            FatType::Fat16
        } else {
            FatType::Fat32
        }
    }
}

/// The layout of one volume, in sectors unless a name says otherwise.
#[derive(Clone, Debug)]
pub(super) struct Geometry {
    pub fat_type: FatType,
    pub sector_size: u32,
    pub sectors_per_cluster: u32,
    pub reserved_sectors: u32,
    pub num_fats: u32,
    pub fat_sectors: u32,
    /// Entries of the fixed root directory (FAT12/16); 0 on FAT32.
    pub root_entries: u32,
    pub total_sectors: u32,
    /// First cluster of the root directory (FAT32); 0 otherwise.
    pub root_cluster: u32,
    /// Sector of the FSInfo structure (FAT32); 0 when there is none.
    pub fsinfo_sector: u32,
    /// Clusters numbered 2 ..= cluster_count + 1 hold data.
    pub cluster_count: u32,
}

impl Geometry {
    /// Chooses the layout of a new volume of `size_bytes` (rounded down to whole sectors).
    ///
    /// The rule, from fatgen103: volumes above 66600 sectors (about 32.5 MiB) are FAT32 with 32
    /// reserved sectors and a cluster size from `DskTableFAT32` (512 B up to 260 MiB, 4 KiB up
    /// to 8 GiB, 8 KiB to 16 GiB, 16 KiB to 32 GiB, 32 KiB above); smaller volumes down to 8401
    /// sectors (about 4.1 MiB) are FAT16 with 1 reserved sector, a 512-entry root directory and
    /// a cluster size from `DskTableFAT16` (1 KiB up to 16 MiB, 2 KiB above). So the 256 MiB ESP
    /// and the 64 MiB OEM partition are both FAT32 with 512-byte clusters. Both tables are made
    /// so that the cluster count lands in the variant's range; we check it anyway.
    pub fn for_size(size_bytes: u64) -> Result<Self, FatError> {
        let sectors = size_bytes / u64::from(SECTOR);
        let too_small = || FatError::VolumeSize {
            size: size_bytes,
            reason: format!(
                "FAT needs more than {} bytes (4.1 MiB)",
                FAT16_MIN_EXCLUSIVE * u64::from(SECTOR)
            ),
        };
        if sectors <= FAT16_MIN_EXCLUSIVE {
            return Err(too_small());
        }
        let total_sectors = u32::try_from(sectors).map_err(|_| FatError::VolumeSize {
            size: size_bytes,
            reason: "FAT32 with 512-byte sectors ends at 2 TiB".into(),
        })?;
        let (fat_type, sectors_per_cluster, reserved_sectors, root_entries) =
            if sectors <= FAT32_MIN_EXCLUSIVE {
                let spc = if sectors <= 32_680 { 2 } else { 4 };
                (FatType::Fat16, spc, 1, 512)
            } else {
                let spc = {
                    // DskTableFAT32: the first row whose size is at least the volume's.
                    let table = [
                        (532_480, 1),
                        (16_777_216, 8),
                        (33_554_432, 16),
                        (67_108_864, 32),
                    ];
                    table
                        .iter()
                        .find(|&&(max, _)| sectors <= max)
                        .map_or(64, |&(_, spc)| spc)
                };
                (FatType::Fat32, spc, 32, 0)
            };
        let mut geo = Geometry {
            fat_type,
            sector_size: SECTOR,
            sectors_per_cluster,
            reserved_sectors,
            num_fats: 2,
            fat_sectors: 0,
            root_entries,
            total_sectors,
            root_cluster: if fat_type == FatType::Fat32 { 2 } else { 0 },
            fsinfo_sector: if fat_type == FatType::Fat32 { 1 } else { 0 },
            cluster_count: 0,
        };
        // The spec's formula errs on the large side (by 32 sectors for 256 MiB); shrink the FAT
        // to the smallest that still has an entry for every cluster it leaves room for.
        geo.fat_sectors = geo.spec_fat_sectors();
        while geo.fat_sectors > 1 && geo.fat_covers_clusters(geo.fat_sectors - 1) {
            geo.fat_sectors -= 1;
        }
        geo.cluster_count = geo.data_sectors() / sectors_per_cluster;
        if FatType::from_cluster_count(geo.cluster_count) != fat_type {
            return Err(FatError::VolumeSize {
                size: size_bytes,
                reason: format!(
                    "{} clusters do not make a {fat_type:?} volume",
                    geo.cluster_count
                ),
            });
        }
        Ok(geo)
    }

    /// The FAT size from the spec's formula, which rounds up (a few spare sectors at most) so
    /// that the FAT always covers every cluster without solving for it exactly.
    fn spec_fat_sectors(&self) -> u32 {
        let tmp1 = self.total_sectors - (self.reserved_sectors + self.root_dir_sectors());
        let mut tmp2 = 256 * self.sectors_per_cluster + self.num_fats;
        if self.fat_type == FatType::Fat32 {
            tmp2 /= 2;
        }
        tmp1.div_ceil(tmp2)
    }

    /// Whether a FAT of `fat_sectors` has an entry for every cluster the volume would have.
    fn fat_covers_clusters(&self, fat_sectors: u32) -> bool {
        let used = self.reserved_sectors + self.root_dir_sectors() + self.num_fats * fat_sectors;
        let clusters =
            u64::from(self.total_sectors.saturating_sub(used) / self.sectors_per_cluster);
        let bits = if self.fat_type == FatType::Fat32 {
            32
        } else {
            16
        };
        let entries = u64::from(fat_sectors) * u64::from(self.sector_size) * 8 / bits;
        entries >= clusters + 2
    }

    pub fn root_dir_sectors(&self) -> u32 {
        (self.root_entries * 32).div_ceil(self.sector_size)
    }

    pub fn first_data_sector(&self) -> u32 {
        self.reserved_sectors + self.num_fats * self.fat_sectors + self.root_dir_sectors()
    }

    fn data_sectors(&self) -> u32 {
        self.total_sectors.saturating_sub(self.first_data_sector())
    }

    pub fn cluster_bytes(&self) -> u32 {
        self.sectors_per_cluster * self.sector_size
    }

    /// Byte offset of FAT copy `copy`.
    pub fn fat_offset(&self, copy: u32) -> u64 {
        u64::from(self.reserved_sectors + copy * self.fat_sectors) * u64::from(self.sector_size)
    }

    /// Byte offset of the fixed root directory (FAT12/16).
    pub fn root_dir_offset(&self) -> u64 {
        u64::from(self.reserved_sectors + self.num_fats * self.fat_sectors)
            * u64::from(self.sector_size)
    }

    /// Byte offset of data cluster `cluster` (2 or more).
    pub fn cluster_offset(&self, cluster: u32) -> u64 {
        (u64::from(self.first_data_sector())
            + u64::from(cluster - 2) * u64::from(self.sectors_per_cluster))
            * u64::from(self.sector_size)
    }

    pub fn is_valid_cluster(&self, cluster: u32) -> bool {
        cluster >= 2 && cluster - 2 < self.cluster_count
    }

    /// The boot sector of a new volume. The same bytes go to the backup at sector 6 (FAT32).
    pub fn boot_sector(&self, volume_id: u32, label: &[u8; 11]) -> Vec<u8> {
        let mut b = vec![0u8; SECTOR as usize];
        let fat32 = self.fat_type == FatType::Fat32;
        // A short jump over the BPB to a stub that halts: this volume is not meant to be booted
        // by a BIOS, and halting beats running zeros as code.
        let stub = if fat32 { 0x5A } else { 0x3E };
        b[0..3].copy_from_slice(&[0xEB, stub as u8 - 2, 0x90]);
        b[3..11].copy_from_slice(b"MSWIN4.1");
        put16(&mut b, 11, self.sector_size as u16);
        b[13] = self.sectors_per_cluster as u8;
        put16(&mut b, 14, self.reserved_sectors as u16);
        b[16] = self.num_fats as u8;
        put16(&mut b, 17, self.root_entries as u16);
        if !fat32 && self.total_sectors < 0x10000 {
            put16(&mut b, 19, self.total_sectors as u16);
        } else {
            put32(&mut b, 32, self.total_sectors);
        }
        b[21] = super::MEDIA;
        // Nominal CHS geometry; nothing reads it for a disk this size, but zeros upset some tools.
        put16(&mut b, 24, 32);
        put16(&mut b, 26, 64);
        let ext = if fat32 {
            put32(&mut b, 36, self.fat_sectors);
            put32(&mut b, 44, self.root_cluster);
            put16(&mut b, 48, self.fsinfo_sector as u16);
            put16(&mut b, 50, BACKUP_BOOT_SECTOR as u16);
            64
        } else {
            put16(&mut b, 22, self.fat_sectors as u16);
            36
        };
        b[ext] = 0x80;
        b[ext + 2] = 0x29;
        put32(&mut b, ext + 3, volume_id);
        b[ext + 7..ext + 18].copy_from_slice(label);
        let fs_type: &[u8; 8] = if fat32 { b"FAT32   " } else { b"FAT16   " };
        b[ext + 18..ext + 26].copy_from_slice(fs_type);
        // cli; hlt; jmp back to hlt.
        b[stub..stub + 4].copy_from_slice(&[0xFA, 0xF4, 0xEB, 0xFD]);
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    /// Reads the layout of an existing volume from its boot sector.
    pub fn parse(b: &[u8]) -> Result<Self, FatError> {
        let bad = |reason: &str| FatError::NotFat {
            reason: reason.to_string(),
        };
        if b.len() < 512 || b[510] != 0x55 || b[511] != 0xAA {
            return Err(bad("no 55 AA boot signature in the first sector"));
        }
        let sector_size = u32::from(get16(b, 11));
        if !matches!(sector_size, 512 | 1024 | 2048 | 4096) {
            return Err(bad("bytes per sector is not 512, 1024, 2048 or 4096"));
        }
        let sectors_per_cluster = u32::from(b[13]);
        if !sectors_per_cluster.is_power_of_two() {
            return Err(bad("sectors per cluster is not a power of two"));
        }
        let reserved_sectors = u32::from(get16(b, 14));
        let num_fats = u32::from(b[16]);
        let root_entries = u32::from(get16(b, 17));
        let total_sectors = match get16(b, 19) {
            0 => get32(b, 32),
            n => u32::from(n),
        };
        let fat_sectors = match get16(b, 22) {
            0 => get32(b, 36),
            n => u32::from(n),
        };
        if reserved_sectors == 0 || num_fats == 0 || fat_sectors == 0 || total_sectors == 0 {
            return Err(bad(
                "reserved sectors, FAT count, FAT size or volume size is zero",
            ));
        }
        let mut geo = Geometry {
            fat_type: FatType::Fat32,
            sector_size,
            sectors_per_cluster,
            reserved_sectors,
            num_fats,
            fat_sectors,
            root_entries,
            total_sectors,
            root_cluster: 0,
            fsinfo_sector: 0,
            cluster_count: 0,
        };
        if geo.first_data_sector() >= total_sectors {
            return Err(bad(
                "the FATs and root directory are larger than the volume",
            ));
        }
        geo.cluster_count = geo.data_sectors() / sectors_per_cluster;
        geo.fat_type = FatType::from_cluster_count(geo.cluster_count);
        if geo.fat_type == FatType::Fat32 {
            geo.root_cluster = get32(b, 44);
            geo.fsinfo_sector = u32::from(get16(b, 48));
            if !geo.is_valid_cluster(geo.root_cluster) {
                return Err(bad("the FAT32 root cluster is outside the volume"));
            }
        } else if root_entries == 0 {
            return Err(bad("a FAT12/16 volume without root directory entries"));
        }
        let bits = match geo.fat_type {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        };
        let fat_entries = u64::from(fat_sectors) * u64::from(sector_size) * 8 / bits;
        if fat_entries < u64::from(geo.cluster_count) + 2 {
            return Err(bad("the FAT is too small for the volume's clusters"));
        }
        Ok(geo)
    }
}

/// Where mkfs.fat and Windows put the backup boot sector; the backup FSInfo follows it.
pub(super) const BACKUP_BOOT_SECTOR: u32 = 6;

/// The FSInfo sector (FAT32): a cached free-cluster count and a hint where free clusters start.
pub(super) fn fsinfo_sector(free: u32, next_free: u32) -> Vec<u8> {
    let mut b = vec![0u8; SECTOR as usize];
    put32(&mut b, 0, FSINFO_LEAD);
    put32(&mut b, 484, FSINFO_STRUCT);
    put32(&mut b, 488, free);
    put32(&mut b, 492, next_free);
    put32(&mut b, 508, FSINFO_TRAIL);
    b
}

/// Whether a sector holds an FSInfo structure (all three signatures).
pub(super) fn is_fsinfo(b: &[u8]) -> bool {
    b.len() >= 512
        && get32(b, 0) == FSINFO_LEAD
        && get32(b, 484) == FSINFO_STRUCT
        && get32(b, 508) == FSINFO_TRAIL
}

const FSINFO_LEAD: u32 = 0x4161_5252;
const FSINFO_STRUCT: u32 = 0x6141_7272;
const FSINFO_TRAIL: u32 = 0xAA55_0000;

pub(super) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(super) fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kiln_partitions_get_fat32_with_512_byte_clusters() {
        for mib in [64u64, 256] {
            let g = Geometry::for_size(mib << 20).unwrap();
            assert_eq!(g.fat_type, FatType::Fat32);
            assert_eq!(g.cluster_bytes(), 512);
            // The FAT covers every cluster, and one sector less would not.
            assert!(g.fat_sectors * 128 >= g.cluster_count + 2);
            assert!(!g.fat_covers_clusters(g.fat_sectors - 1), "{g:?}");
        }
        let g = Geometry::for_size(1 << 30).unwrap();
        assert_eq!((g.fat_type, g.cluster_bytes()), (FatType::Fat32, 4096));
    }

    #[test]
    fn small_volumes_are_fat16_and_tiny_ones_are_refused() {
        let g = Geometry::for_size(16 << 20).unwrap();
        assert_eq!((g.fat_type, g.cluster_bytes()), (FatType::Fat16, 2048));
        let g = Geometry::for_size(5 << 20).unwrap();
        assert_eq!((g.fat_type, g.cluster_bytes()), (FatType::Fat16, 1024));
        assert!(matches!(
            Geometry::for_size(4 << 20),
            Err(FatError::VolumeSize { .. })
        ));
    }

    #[test]
    fn boot_sector_round_trips() {
        for size in [16u64 << 20, 64 << 20] {
            let g = Geometry::for_size(size).unwrap();
            let parsed = Geometry::parse(&g.boot_sector(7, b"NO NAME    ")).unwrap();
            assert_eq!(format!("{g:?}"), format!("{parsed:?}"));
        }
    }
}
