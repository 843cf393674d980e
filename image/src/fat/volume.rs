//! An existing volume (ours, mkfs.fat's, or another tool's; FAT12, FAT16 or FAT32): finding,
//! reading and listing entries, and replacing one file in place.

use std::io::{Read, Seek, Write};

use super::dirent::{
    RawShort, ShortEntry, ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_LFN, ATTR_VOLUME_ID, DELETED,
};
use super::format::MAX_DIR_ENTRIES;
use super::geometry::{fsinfo_sector, is_fsinfo, FatType, Geometry};
use super::names::{check_name, display, lfn_checksum, lfn_entries, lfn_units, upcase, ShortNames};
use super::table::FatTable;
use super::{read_at, write_at, DirEntryInfo, FatError};
use crate::tree::TreePath;

/// An open volume: its layout and its FAT in memory.
struct Volume<'d, D> {
    dev: &'d mut D,
    geo: Geometry,
    fat: FatTable,
}

/// A directory read whole: its slots and where each cluster of them lives.
struct Dir {
    /// Shown in errors, like `/loader/entries`.
    path: String,
    /// The FAT12/16 root directory, which is a fixed region rather than a cluster chain.
    fixed_root: bool,
    is_root: bool,
    clusters: Vec<u32>,
    data: Vec<u8>,
}

impl Dir {
    fn slots(&self) -> usize {
        self.data.len() / 32
    }

    fn slot(&self, i: usize) -> &[u8] {
        &self.data[i * 32..i * 32 + 32]
    }

    /// The directory's first cluster as `..` entries of its children name it.
    fn dotdot_cluster(&self) -> u32 {
        if self.is_root {
            0
        } else {
            self.clusters[0]
        }
    }

    fn child_path(&self, name: &str) -> String {
        if self.is_root {
            format!("/{name}")
        } else {
            format!("{}/{name}", self.path)
        }
    }
}

/// One live entry of a directory.
struct Found {
    info: DirEntryInfo,
    /// The first slot of the entry: its first long-name slot, or the short slot.
    first_slot: usize,
    short_slot: usize,
    short: ShortEntry,
}

impl<'d, D: Read + Seek> Volume<'d, D> {
    fn open(dev: &'d mut D) -> Result<Self, FatError> {
        let mut boot = vec![0u8; 512];
        read_at(dev, 0, &mut boot)?;
        let geo = Geometry::parse(&boot)?;
        let mut bytes = vec![0u8; geo.fat_sectors as usize * geo.sector_size as usize];
        read_at(dev, geo.fat_offset(0), &mut bytes)?;
        let fat = FatTable::from_bytes(&geo, bytes);
        Ok(Volume { dev, geo, fat })
    }

    fn chain(&self, first: u32, what: &str) -> Result<Vec<u32>, FatError> {
        self.fat.chain(first).map_err(|e| FatError::Corrupt {
            reason: format!("{what}: {e}"),
        })
    }

    fn root(&mut self) -> Result<Dir, FatError> {
        if self.geo.fat_type == FatType::Fat32 {
            return self.read_dir(self.geo.root_cluster, "/".to_string(), true);
        }
        let mut data = vec![0u8; self.geo.root_entries as usize * 32];
        read_at(self.dev, self.geo.root_dir_offset(), &mut data)?;
        Ok(Dir {
            path: "/".to_string(),
            fixed_root: true,
            is_root: true,
            clusters: Vec::new(),
            data,
        })
    }

    fn read_dir(&mut self, first: u32, path: String, is_root: bool) -> Result<Dir, FatError> {
        let clusters = self.chain(first, &format!("directory {path}"))?;
        if clusters.len() * self.geo.cluster_bytes() as usize > MAX_DIR_ENTRIES * 32 {
            return Err(FatError::Corrupt {
                reason: format!("directory {path} is larger than 2 MiB"),
            });
        }
        let data = self.read_clusters(&clusters, None)?;
        Ok(Dir {
            path,
            fixed_root: false,
            is_root,
            clusters,
            data,
        })
    }

    /// The bytes of `clusters` (up to `len` of them), reading contiguous runs at once.
    fn read_clusters(&mut self, clusters: &[u32], len: Option<usize>) -> Result<Vec<u8>, FatError> {
        let cb = self.geo.cluster_bytes() as usize;
        let total = len.unwrap_or(clusters.len() * cb);
        let mut out = vec![0u8; total];
        for (start, run) in runs(clusters) {
            let from = start * cb;
            if from >= total {
                break;
            }
            let to = ((start + run.len()) * cb).min(total);
            read_at(
                self.dev,
                self.geo.cluster_offset(run[0]),
                &mut out[from..to],
            )?;
        }
        Ok(out)
    }

    /// Follows `path`'s components from the root; `None` when the last one is missing.
    fn lookup(&mut self, path: &TreePath) -> Result<(Dir, Option<Found>), FatError> {
        let comps: Vec<&[u8]> = path.components().collect();
        let mut dir = self.root()?;
        let Some((last, parents)) = comps.split_last() else {
            return Ok((dir, None));
        };
        for comp in parents {
            let name = String::from_utf8_lossy(comp);
            let found = find(&dir, &name).ok_or_else(|| FatError::NotFound {
                path: dir.child_path(&name),
            })?;
            dir = self.enter(&dir, found)?;
        }
        let found = find(&dir, &String::from_utf8_lossy(last));
        Ok((dir, found))
    }

    /// Opens a found entry as a directory.
    fn enter(&mut self, parent: &Dir, found: Found) -> Result<Dir, FatError> {
        let path = parent.child_path(&found.info.name);
        if !found.info.is_dir {
            return Err(FatError::NotADirectory { path });
        }
        if found.short.cluster == 0 {
            return Err(FatError::Corrupt {
                reason: format!("directory {path} has no first cluster"),
            });
        }
        self.read_dir(found.short.cluster, path, false)
    }
}

impl<'d, D: Read + Write + Seek> Volume<'d, D> {
    /// Writes slots `from..to` of `dir` to the device.
    fn write_slots(&mut self, dir: &Dir, from: usize, to: usize) -> Result<(), FatError> {
        let cb = self.geo.cluster_bytes() as usize;
        for i in from..to {
            let at = if dir.fixed_root {
                self.geo.root_dir_offset() + (i * 32) as u64
            } else {
                let (c, within) = (i * 32 / cb, i * 32 % cb);
                self.geo.cluster_offset(dir.clusters[c]) + within as u64
            };
            write_at(self.dev, at, dir.slot(i))?;
        }
        Ok(())
    }

    /// Writes `data` to `clusters`, zero-filling the end of the last one.
    fn write_clusters(&mut self, clusters: &[u32], data: &[u8]) -> Result<(), FatError> {
        let cb = self.geo.cluster_bytes() as usize;
        for (start, run) in runs(clusters) {
            let from = (start * cb).min(data.len());
            let to = ((start + run.len()) * cb).min(data.len());
            let mut buf = data[from..to].to_vec();
            buf.resize(run.len() * cb, 0);
            write_at(self.dev, self.geo.cluster_offset(run[0]), &buf)?;
        }
        Ok(())
    }

    /// Takes `n` free clusters for `path` and links them into a chain.
    fn allocate(&mut self, n: u32, path: &str) -> Result<Vec<u32>, FatError> {
        let clusters = self.fat.find_free(n).ok_or_else(|| FatError::NoSpace {
            path: path.to_string(),
            needed: u64::from(n),
            free: u64::from(self.fat.free_count()),
        })?;
        self.fat.set_chain(&clusters);
        Ok(clusters)
    }

    /// Creates directory `name` in `parent` and returns it.
    fn mkdir(&mut self, parent: &mut Dir, name: &str, mtime: i64) -> Result<Dir, FatError> {
        let path = parent.child_path(name);
        let cluster = self.allocate(1, &path)?[0];
        let mut data = vec![0u8; self.geo.cluster_bytes() as usize];
        let dot = ShortEntry::new(*b".          ", ATTR_DIRECTORY, cluster, 0, mtime);
        let dotdot = ShortEntry::new(
            *b"..         ",
            ATTR_DIRECTORY,
            parent.dotdot_cluster(),
            0,
            mtime,
        );
        data[..32].copy_from_slice(&dot.encode());
        data[32..64].copy_from_slice(&dotdot.encode());
        self.write_clusters(&[cluster], &data)?;
        let entry = ShortEntry::new([b' '; 11], ATTR_DIRECTORY, cluster, 0, mtime);
        self.add_entry(parent, name, entry)?;
        Ok(Dir {
            path,
            fixed_root: false,
            is_root: false,
            clusters: vec![cluster],
            data,
        })
    }

    /// Adds a new entry named `name` (its short name is chosen here) to `dir`, growing the
    /// directory by a cluster when it has no run of free slots long enough.
    fn add_entry(
        &mut self,
        dir: &mut Dir,
        name: &str,
        mut entry: ShortEntry,
    ) -> Result<(), FatError> {
        let mut shorts = ShortNames::default();
        for i in 0..dir.slots() {
            let s = dir.slot(i);
            if s[0] == 0 {
                break;
            }
            if s[0] != DELETED && s[11] != ATTR_LFN {
                let mut raw: RawShort = [0; 11];
                raw.copy_from_slice(&s[..11]);
                shorts.reserve(raw);
            }
        }
        let short = shorts
            .assign(name)
            .map_err(|reason| FatError::InvalidName {
                path: dir.child_path(name),
                reason,
            })?;
        entry.name = short.raw;
        let mut slots: Vec<[u8; 32]> = if short.needs_lfn {
            lfn_entries(name, lfn_checksum(&short.raw))
        } else {
            Vec::new()
        };
        slots.push(entry.encode());
        let at = loop {
            if let Some(at) = free_run(dir, slots.len()) {
                break at;
            }
            self.grow(dir, slots.len())?;
        };
        for (k, s) in slots.iter().enumerate() {
            dir.data[(at + k) * 32..(at + k + 1) * 32].copy_from_slice(s);
        }
        let mut to = at + slots.len();
        // Slots after an end marker may hold stale bytes; keep the directory ending right
        // after our entries by making the next one an end marker.
        if to < dir.slots() && end_marker(dir).is_some_and(|end| end < to) && dir.slot(to)[0] != 0 {
            dir.data[to * 32..(to + 1) * 32].fill(0);
            to += 1;
        }
        self.write_slots(dir, at, to)
    }

    /// Adds one zeroed cluster to a directory.
    fn grow(&mut self, dir: &mut Dir, needed: usize) -> Result<(), FatError> {
        let cb = self.geo.cluster_bytes() as usize;
        if dir.fixed_root || dir.data.len() + cb > MAX_DIR_ENTRIES * 32 {
            let max = if dir.fixed_root {
                dir.slots()
            } else {
                MAX_DIR_ENTRIES
            };
            return Err(FatError::DirectoryFull {
                path: dir.path.clone(),
                entries: dir.slots() + needed,
                max,
            });
        }
        let cluster = self.fat.find_free(1).ok_or_else(|| FatError::NoSpace {
            path: dir.path.clone(),
            needed: 1,
            free: 0,
        })?[0];
        let last = *dir.clusters.last().ok_or_else(|| FatError::Corrupt {
            reason: format!("directory {} has no clusters", dir.path),
        })?;
        self.fat.set(last, cluster);
        self.fat.set_chain(&[cluster]);
        self.write_clusters(&[cluster], &[])?;
        dir.clusters.push(cluster);
        dir.data.resize(dir.data.len() + cb, 0);
        Ok(())
    }

    /// Writes the changed FAT sectors to every copy, then the FSInfo counts (FAT32).
    fn commit(&mut self) -> Result<(), FatError> {
        let offsets: Vec<u64> = (0..self.geo.num_fats)
            .map(|c| self.geo.fat_offset(c))
            .collect();
        let free = self.fat.free_count();
        let next_free = self.fat.first_free().unwrap_or(u32::MAX);
        for (at, bytes) in self.fat.take_dirty() {
            for &base in &offsets {
                write_at(self.dev, base + at, bytes)?;
            }
        }
        if self.geo.fat_type == FatType::Fat32 && self.geo.fsinfo_sector != 0 {
            let at = u64::from(self.geo.fsinfo_sector) * u64::from(self.geo.sector_size);
            let mut sector = vec![0u8; 512];
            read_at(self.dev, at, &mut sector)?;
            if is_fsinfo(&sector) {
                let mut updated = fsinfo_sector(free, next_free);
                // Keep whatever else the formatter put there.
                updated[4..484].copy_from_slice(&sector[4..484]);
                updated[496..508].copy_from_slice(&sector[496..508]);
                write_at(self.dev, at, &updated)?;
            }
        }
        self.dev.flush().map_err(|source| FatError::Io {
            op: "flushing",
            offset: 0,
            source,
        })
    }
}

/// Contiguous runs of a cluster list: (index of the run's first cluster, the run).
fn runs(clusters: &[u32]) -> Vec<(usize, &[u32])> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=clusters.len() {
        if i == clusters.len() || clusters[i] != clusters[i - 1] + 1 {
            out.push((start, &clusters[start..i]));
            start = i;
        }
    }
    out
}

/// The slot holding the end-of-directory marker, if any.
fn end_marker(dir: &Dir) -> Option<usize> {
    (0..dir.slots()).find(|&i| dir.slot(i)[0] == 0)
}

/// The first run of `n` free slots (deleted, or at or after the end marker).
fn free_run(dir: &Dir, n: usize) -> Option<usize> {
    let end = end_marker(dir).unwrap_or(dir.slots());
    let mut run = 0;
    for i in 0..dir.slots() {
        if i >= end || dir.slot(i)[0] == DELETED {
            run += 1;
            if run == n {
                return Some(i + 1 - n);
            }
        } else {
            run = 0;
        }
    }
    None
}

/// The live entries of a directory, with long names where their checksums match.
fn entries(dir: &Dir) -> Vec<Found> {
    let mut out = Vec::new();
    // The long name being collected: its units, its checksum, the order expected next and
    // its first slot.
    let mut lfn: Option<(Vec<u16>, u8, u8, usize)> = None;
    for i in 0..dir.slots() {
        let s = dir.slot(i);
        if s[0] == 0 {
            break;
        }
        if s[0] == DELETED {
            lfn = None;
            continue;
        }
        if s[11] & 0x3F == ATTR_LFN {
            let order = s[0] & 0x1F;
            lfn = if s[0] & 0x40 != 0 && order > 0 {
                let mut units = vec![0u16; usize::from(order) * 13];
                units[usize::from(order - 1) * 13..][..13].copy_from_slice(&lfn_units(s));
                Some((units, s[13], order - 1, i))
            } else {
                match lfn.take() {
                    Some((mut units, sum, expect, start))
                        if expect == order && order > 0 && sum == s[13] =>
                    {
                        units[usize::from(order - 1) * 13..][..13].copy_from_slice(&lfn_units(s));
                        Some((units, sum, order - 1, start))
                    }
                    _ => None,
                }
            };
            continue;
        }
        let long = lfn.take();
        if s[11] & ATTR_VOLUME_ID != 0 || s[0] == b'.' {
            continue;
        }
        let short = ShortEntry::decode(s);
        let short_name = display(&short.name, short.ntres);
        let (name, first_slot) = match long {
            Some((units, sum, 0, start)) if sum == lfn_checksum(&short.name) => {
                let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
                (String::from_utf16_lossy(&units[..end]), start)
            }
            _ => (short_name.clone(), i),
        };
        out.push(Found {
            info: DirEntryInfo {
                name,
                short_name,
                is_dir: short.attr & ATTR_DIRECTORY != 0,
                size: short.size,
                mtime: short.mtime(),
                first_cluster: short.cluster,
            },
            first_slot,
            short_slot: i,
            short,
        });
    }
    out
}

/// The entry whose long or short name equals `name`, ignoring case.
fn find(dir: &Dir, name: &str) -> Option<Found> {
    let want = upcase(name);
    entries(dir)
        .into_iter()
        .find(|f| upcase(&f.info.name) == want || f.info.short_name.to_ascii_uppercase() == want)
}

fn parse_path(path: &str) -> Result<TreePath, FatError> {
    TreePath::new(path).map_err(|e| FatError::InvalidPath {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

pub(super) fn read_file<D: Read + Seek>(dev: &mut D, path: &str) -> Result<Vec<u8>, FatError> {
    let tp = parse_path(path)?;
    let mut vol = Volume::open(dev)?;
    let (_, found) = vol.lookup(&tp)?;
    let found = found.ok_or_else(|| FatError::NotFound { path: tp.display() })?;
    if found.info.is_dir || tp.is_root() {
        return Err(FatError::IsADirectory { path: tp.display() });
    }
    if found.info.size == 0 {
        return Ok(Vec::new());
    }
    let clusters = vol.chain(found.short.cluster, &format!("file {}", tp.display()))?;
    let size = found.info.size as usize;
    if clusters.len() < size.div_ceil(vol.geo.cluster_bytes() as usize) {
        return Err(FatError::Corrupt {
            reason: format!(
                "file {} has fewer clusters than its size needs",
                tp.display()
            ),
        });
    }
    vol.read_clusters(&clusters, Some(size))
}

pub(super) fn list_dir<D: Read + Seek>(
    dev: &mut D,
    path: &str,
) -> Result<Vec<DirEntryInfo>, FatError> {
    let tp = parse_path(path)?;
    let mut vol = Volume::open(dev)?;
    let dir = if tp.is_root() {
        vol.root()?
    } else {
        let (parent, found) = vol.lookup(&tp)?;
        let found = found.ok_or_else(|| FatError::NotFound { path: tp.display() })?;
        vol.enter(&parent, found)?
    };
    Ok(entries(&dir).into_iter().map(|f| f.info).collect())
}

pub(super) fn write_file<D: Read + Write + Seek>(
    dev: &mut D,
    path: &str,
    data: &[u8],
    mtime: i64,
) -> Result<(), FatError> {
    let tp = parse_path(path)?;
    let size = u32::try_from(data.len()).map_err(|_| FatError::FileTooBig {
        path: tp.display(),
        size: data.len() as u64,
    })?;
    let comps: Vec<&[u8]> = tp.components().collect();
    let Some((last, parents)) = comps.split_last() else {
        return Err(FatError::IsADirectory { path: tp.display() });
    };
    let mut vol = Volume::open(dev)?;
    let mut dir = vol.root()?;
    for comp in parents {
        let name = check_name(comp, &|| dir.child_path(&String::from_utf8_lossy(comp)))?;
        dir = match find(&dir, name) {
            Some(found) => vol.enter(&dir, found)?,
            None => vol.mkdir(&mut dir, name, mtime)?,
        };
    }
    let name = check_name(last, &|| tp.display())?;
    let existing = find(&dir, name);
    if existing.as_ref().is_some_and(|f| f.info.is_dir) {
        return Err(FatError::IsADirectory { path: tp.display() });
    }
    let old = match &existing {
        Some(f) if f.short.cluster != 0 => {
            vol.chain(f.short.cluster, &format!("file {}", tp.display()))?
        }
        _ => Vec::new(),
    };
    let needed = u64::from(size).div_ceil(u64::from(vol.geo.cluster_bytes())) as u32;
    // New clusters first so the old content survives until the entry points elsewhere; when
    // only the old clusters make room, free them first.
    let mut old_freed = false;
    if vol.fat.find_free(needed).is_none() && !old.is_empty() {
        vol.fat.free(&old);
        old_freed = true;
    }
    let clusters = vol.allocate(needed, &tp.display())?;
    vol.write_clusters(&clusters, data)?;
    let first = clusters.first().copied().unwrap_or(0);
    match existing {
        Some(found) => {
            let mut entry = found.short.clone();
            entry.cluster = first;
            entry.size = size;
            entry.attr |= ATTR_ARCHIVE;
            entry.touch(mtime);
            dir.data[found.short_slot * 32..][..32].copy_from_slice(&entry.encode());
            vol.write_slots(&dir, found.short_slot, found.short_slot + 1)?;
        }
        None => {
            let entry = ShortEntry::new([b' '; 11], ATTR_ARCHIVE, first, size, mtime);
            vol.add_entry(&mut dir, name, entry)?;
        }
    }
    if !old_freed {
        vol.fat.free(&old);
    }
    vol.commit()
}

/// Marks slots `first..=last` of `dir` deleted, in memory.
fn mark_deleted(dir: &mut Dir, first: usize, last: usize) {
    for i in first..=last {
        dir.data[i * 32] = DELETED;
    }
}

pub(super) fn remove_file<D: Read + Write + Seek>(dev: &mut D, path: &str) -> Result<(), FatError> {
    let tp = parse_path(path)?;
    if tp.is_root() {
        return Err(FatError::IsADirectory { path: tp.display() });
    }
    let mut vol = Volume::open(dev)?;
    let (mut dir, found) = vol.lookup(&tp)?;
    let found = found.ok_or_else(|| FatError::NotFound { path: tp.display() })?;
    if found.info.is_dir {
        return Err(FatError::IsADirectory { path: tp.display() });
    }
    let clusters = match found.short.cluster {
        0 => Vec::new(),
        first => vol.chain(first, &format!("file {}", tp.display()))?,
    };
    // The entry goes first, then its clusters: a cut in between leaves lost clusters, which
    // fsck reclaims, never an entry pointing at free ones.
    mark_deleted(&mut dir, found.first_slot, found.short_slot);
    vol.write_slots(&dir, found.first_slot, found.short_slot + 1)?;
    vol.fat.free(&clusters);
    vol.commit()
}

pub(super) fn rename<D: Read + Write + Seek>(
    dev: &mut D,
    from: &str,
    to: &str,
) -> Result<(), FatError> {
    let (from_tp, to_tp) = (parse_path(from)?, parse_path(to)?);
    let from_comps: Vec<&[u8]> = from_tp.components().collect();
    let to_comps: Vec<&[u8]> = to_tp.components().collect();
    let (Some((_, from_parent)), Some((new_last, to_parent))) =
        (from_comps.split_last(), to_comps.split_last())
    else {
        return Err(FatError::InvalidPath {
            path: if from_tp.is_root() { from } else { to }.to_string(),
            reason: "the root directory cannot be renamed or replaced".to_string(),
        });
    };
    if from_parent != to_parent {
        return Err(FatError::InvalidPath {
            path: to.to_string(),
            reason: format!(
                "rename moves entries within one directory only, and {from} is in another"
            ),
        });
    }
    let new_name = check_name(new_last, &|| to_tp.display())?;
    let mut vol = Volume::open(dev)?;
    let (mut dir, found) = vol.lookup(&from_tp)?;
    let found = found.ok_or_else(|| FatError::NotFound {
        path: from_tp.display(),
    })?;
    if found.info.name == new_name {
        return Ok(());
    }
    // A name that differs only in case finds the entry itself, which is renamed in place.
    if let Some(other) = find(&dir, new_name) {
        if other.short_slot != found.short_slot {
            return Err(FatError::Exists {
                path: to_tp.display(),
            });
        }
    }
    let mut entry = found.short.clone();
    // The case flags belong to the old short name; a new short name is upper-case 8.3 or
    // carries a long name.
    entry.ntres = 0;
    // The new entry is written before the old one is deleted, as Linux's vfat does: a cut in
    // between leaves both names for the same clusters, never neither.
    vol.add_entry(&mut dir, new_name, entry)?;
    mark_deleted(&mut dir, found.first_slot, found.short_slot);
    vol.write_slots(&dir, found.first_slot, found.short_slot + 1)?;
    vol.commit()
}
