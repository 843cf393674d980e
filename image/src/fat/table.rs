//! The file allocation table in memory: one copy's bytes, read and changed entry by entry, with
//! the sectors that changed remembered so an update writes only those (to every copy).

use std::collections::BTreeSet;

use super::geometry::{FatType, Geometry};

pub(super) struct FatTable {
    fat_type: FatType,
    bytes: Vec<u8>,
    sector_size: usize,
    /// Highest cluster number + 1.
    entries: u32,
    dirty: BTreeSet<usize>,
}

impl FatTable {
    /// A fresh FAT: entry 0 holds the media byte, entry 1 an end-of-chain mark with the
    /// "clean unmount" and "no I/O error" bits set, every cluster free.
    pub fn new(geo: &Geometry) -> Self {
        let len = geo.fat_sectors as usize * geo.sector_size as usize;
        let mut fat = Self::from_bytes(geo, vec![0; len]);
        let high = fat.eoc() & !0xFF;
        fat.set(0, high | u32::from(super::MEDIA));
        let eoc = fat.eoc();
        fat.set(1, eoc);
        fat
    }

    /// One FAT copy's bytes as read from an existing volume.
    pub fn from_bytes(geo: &Geometry, bytes: Vec<u8>) -> Self {
        FatTable {
            fat_type: geo.fat_type,
            bytes,
            sector_size: geo.sector_size as usize,
            entries: geo.cluster_count + 2,
            dirty: BTreeSet::new(),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The end-of-chain value this variant writes.
    pub fn eoc(&self) -> u32 {
        match self.fat_type {
            FatType::Fat12 => 0xFFF,
            FatType::Fat16 => 0xFFFF,
            FatType::Fat32 => 0x0FFF_FFFF,
        }
    }

    /// Whether `value` ends a chain (the spec's range, not only the value we write).
    pub fn is_eoc(&self, value: u32) -> bool {
        value >= self.eoc() - 7
    }

    pub fn get(&self, cluster: u32) -> u32 {
        let c = cluster as usize;
        match self.fat_type {
            FatType::Fat12 => {
                let at = c + c / 2;
                let pair = u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]]);
                u32::from(if c.is_multiple_of(2) {
                    pair & 0xFFF
                } else {
                    pair >> 4
                })
            }
            FatType::Fat16 => u32::from(u16::from_le_bytes([
                self.bytes[2 * c],
                self.bytes[2 * c + 1],
            ])),
            FatType::Fat32 => {
                let at = 4 * c;
                let raw = u32::from_le_bytes([
                    self.bytes[at],
                    self.bytes[at + 1],
                    self.bytes[at + 2],
                    self.bytes[at + 3],
                ]);
                raw & 0x0FFF_FFFF
            }
        }
    }

    pub fn set(&mut self, cluster: u32, value: u32) {
        let c = cluster as usize;
        let (at, len) = match self.fat_type {
            FatType::Fat12 => {
                let at = c + c / 2;
                let old = u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]]);
                let v = (value & 0xFFF) as u16;
                let new = if c.is_multiple_of(2) {
                    (old & 0xF000) | v
                } else {
                    (old & 0x000F) | (v << 4)
                };
                self.bytes[at..at + 2].copy_from_slice(&new.to_le_bytes());
                (at, 2)
            }
            FatType::Fat16 => {
                self.bytes[2 * c..2 * c + 2].copy_from_slice(&(value as u16).to_le_bytes());
                (2 * c, 2)
            }
            FatType::Fat32 => {
                // The top four bits are reserved: the spec says to keep whatever is there.
                let at = 4 * c;
                let old = u32::from_le_bytes([
                    self.bytes[at],
                    self.bytes[at + 1],
                    self.bytes[at + 2],
                    self.bytes[at + 3],
                ]);
                let new = (old & 0xF000_0000) | (value & 0x0FFF_FFFF);
                self.bytes[at..at + 4].copy_from_slice(&new.to_le_bytes());
                (at, 4)
            }
        };
        self.dirty.insert(at / self.sector_size);
        self.dirty.insert((at + len - 1) / self.sector_size);
    }

    /// Links `clusters` into one chain ending in an end-of-chain mark.
    pub fn set_chain(&mut self, clusters: &[u32]) {
        for pair in clusters.windows(2) {
            self.set(pair[0], pair[1]);
        }
        if let Some(&last) = clusters.last() {
            let eoc = self.eoc();
            self.set(last, eoc);
        }
    }

    /// The clusters of the chain starting at `first`, checked: every link inside the volume,
    /// no free or bad cluster, no loop.
    pub fn chain(&self, first: u32) -> Result<Vec<u32>, String> {
        let mut out = Vec::new();
        let mut c = first;
        loop {
            if c < 2 || c >= self.entries {
                return Err(format!("cluster {c} is outside the volume"));
            }
            if out.len() >= self.entries as usize {
                return Err(format!("the chain from cluster {first} loops"));
            }
            out.push(c);
            let next = self.get(c);
            if self.is_eoc(next) {
                return Ok(out);
            }
            if next == 0 || next == self.eoc() - 8 {
                return Err(format!(
                    "cluster {c} in the chain from {first} links to a free or bad cluster"
                ));
            }
            c = next;
        }
    }

    /// Marks every cluster of a chain free.
    pub fn free(&mut self, clusters: &[u32]) {
        for &c in clusters {
            self.set(c, 0);
        }
    }

    pub fn free_count(&self) -> u32 {
        (2..self.entries).filter(|&c| self.get(c) == 0).count() as u32
    }

    pub fn first_free(&self) -> Option<u32> {
        (2..self.entries).find(|&c| self.get(c) == 0)
    }

    /// Picks `n` free clusters without marking them: the first run of `n` contiguous free
    /// clusters if there is one (a file in one piece reads faster), else the first `n` free
    /// ones. `None` when fewer than `n` are free.
    pub fn find_free(&self, n: u32) -> Option<Vec<u32>> {
        if n == 0 {
            return Some(Vec::new());
        }
        let mut run_start = 0;
        let mut run_len = 0;
        for c in 2..self.entries {
            if self.get(c) != 0 {
                run_len = 0;
                continue;
            }
            if run_len == 0 {
                run_start = c;
            }
            run_len += 1;
            if run_len == n {
                return Some((run_start..run_start + n).collect());
            }
        }
        let scattered: Vec<u32> = (2..self.entries)
            .filter(|&c| self.get(c) == 0)
            .take(n as usize)
            .collect();
        (scattered.len() == n as usize).then_some(scattered)
    }

    /// The changed sectors as (byte offset inside one FAT copy, bytes), then forgets them.
    pub fn take_dirty(&mut self) -> Vec<(u64, &[u8])> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|s| {
                let at = s * self.sector_size;
                (at as u64, &self.bytes[at..at + self.sector_size])
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(size: u64) -> Geometry {
        Geometry::for_size(size).unwrap()
    }

    #[test]
    fn fat12_entries_share_bytes_without_clobbering_neighbours() {
        let mut g = geo(16 << 20);
        g.fat_type = FatType::Fat12;
        g.cluster_count = 100;
        let mut fat = FatTable::from_bytes(&g, vec![0; 512]);
        for c in 2..50 {
            fat.set(c, 0xA00 + c);
        }
        fat.set(7, 0x123);
        for c in 2..50 {
            assert_eq!(fat.get(c), if c == 7 { 0x123 } else { 0xA00 + c });
        }
    }

    #[test]
    fn fat32_keeps_the_reserved_high_bits_and_chains_are_checked() {
        let g = geo(64 << 20);
        let mut fat = FatTable::new(&g);
        fat.bytes[4 * 5 + 3] = 0xF0;
        fat.set(5, 6);
        assert_eq!(fat.bytes[4 * 5 + 3], 0xF0);
        assert_eq!(fat.get(5), 6);
        fat.set_chain(&[3, 4, 5, 6]);
        assert_eq!(fat.chain(3).unwrap(), [3, 4, 5, 6]);
        fat.set(6, 3);
        assert!(fat.chain(3).unwrap_err().contains("loops"));
        fat.set(6, 0);
        assert!(fat.chain(3).unwrap_err().contains("free"));
    }

    #[test]
    fn find_free_prefers_a_contiguous_run() {
        let g = geo(64 << 20);
        let mut fat = FatTable::new(&g);
        fat.set_chain(&[2, 4, 7]);
        assert_eq!(fat.find_free(3).unwrap(), [8, 9, 10]);
        assert_eq!(fat.find_free(1).unwrap(), [3]);
        assert!(fat.find_free(g.cluster_count).is_none());
        assert_eq!(fat.free_count(), g.cluster_count - 3);
    }
}
