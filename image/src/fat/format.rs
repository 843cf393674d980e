//! Formatting: plans every directory's entries, gives each directory and file a contiguous run
//! of clusters in tree order, then writes boot sectors, FATs, directories and data.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, Write};

use super::dirent::{RawShort, ShortEntry, ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_VOLUME_ID};
use super::geometry::{fsinfo_sector, FatType, Geometry, BACKUP_BOOT_SECTOR, SECTOR};
use super::names::{check_name, lfn_checksum, lfn_entries, upcase, ShortNames};
use super::table::FatTable;
use super::{write_at, FatError, FatOptions, FatStats};
use crate::tree::{Content, Entry, Kind, Tree, TreePath};

/// The most entries one directory may have (the spec's limit: 2 MiB of entries).
pub(super) const MAX_DIR_ENTRIES: usize = 65_536;

/// One child of a directory as it will be written.
struct Child<'t> {
    path: &'t TreePath,
    entry: &'t Entry,
    name: &'t str,
    short: RawShort,
    needs_lfn: bool,
}

/// A directory's children and how many 32-byte slots they take (with `.`/`..` or the label).
struct DirPlan<'t> {
    children: Vec<Child<'t>>,
    slots: usize,
}

/// Where a directory or file lives: `clusters` clusters from `first` (0 and 0 for an empty
/// file or a FAT16 root directory).
#[derive(Clone, Copy)]
struct Extent {
    first: u32,
    clusters: u32,
}

pub(super) fn format<D: Read + Write + Seek>(
    tree: &Tree,
    opts: &FatOptions,
    dev: &mut D,
) -> Result<FatStats, FatError> {
    tree.validate()?;
    let geo = Geometry::for_size(opts.size_bytes)?;
    let label = label_bytes(&opts.label)?;
    let plans = plan(tree, &geo, label.is_some())?;
    let (extents, used) = allocate(tree, &plans, &geo, opts.size_bytes)?;

    let mut fat = FatTable::new(&geo);
    for ext in extents.values().filter(|e| e.clusters > 0) {
        let chain: Vec<u32> = (ext.first..ext.first + ext.clusters).collect();
        fat.set_chain(&chain);
    }
    write_reserved(dev, &geo, opts, label, used)?;
    for copy in 0..geo.num_fats {
        write_at(dev, geo.fat_offset(copy), fat.bytes())?;
    }
    let mut end = geo.cluster_offset(2);
    for (path, entry) in tree.iter() {
        let ext = extents[path];
        match &entry.kind {
            Kind::Dir => {
                let bytes = encode_dir(path, &plans[path], &extents, &geo, opts, label)?;
                let at = if ext.clusters == 0 {
                    geo.root_dir_offset()
                } else {
                    geo.cluster_offset(ext.first)
                };
                write_at(dev, at, &bytes)?;
            }
            Kind::File(content) if ext.clusters > 0 => {
                write_content(dev, &geo, path, content, ext.first)?;
            }
            _ => {}
        }
        if ext.clusters > 0 {
            end = end.max(geo.cluster_offset(ext.first + ext.clusters));
        }
    }
    let last_sector = u64::from(geo.total_sectors - 1) * u64::from(SECTOR);
    if end <= last_sector {
        write_at(dev, last_sector, &[0; SECTOR as usize])?;
    }
    dev.flush().map_err(|source| FatError::Io {
        op: "flushing",
        offset: 0,
        source,
    })?;
    Ok(FatStats {
        clusters_total: geo.cluster_count,
        clusters_used: used,
        cluster_bytes: geo.cluster_bytes(),
    })
}

/// The label as stored (upper case, space padded), or `None` for no label.
fn label_bytes(label: &str) -> Result<Option<RawShort>, FatError> {
    if label.is_empty() {
        return Ok(None);
    }
    let up = label.to_ascii_uppercase();
    let bad = |reason: &str| FatError::InvalidLabel {
        label: label.to_string(),
        reason: reason.to_string(),
    };
    if up.len() > 11 {
        return Err(bad("longer than 11 characters"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || c == ' ' || "!#$%&'()-@^_`{}~".contains(c);
    if !up.chars().all(ok) || up.starts_with(' ') {
        return Err(bad(
            "use letters, digits, spaces (not first) and !#$%&'()-@^_`{}~ only",
        ));
    }
    let mut raw = [b' '; 11];
    raw[..up.len()].copy_from_slice(up.as_bytes());
    Ok(Some(raw))
}

/// Checks every entry and chooses every short name, directory by directory.
fn plan<'t>(
    tree: &'t Tree,
    geo: &Geometry,
    has_label: bool,
) -> Result<BTreeMap<&'t TreePath, DirPlan<'t>>, FatError> {
    let mut plans = BTreeMap::new();
    for (path, entry) in tree.iter() {
        check_kind(path, entry)?;
        if entry.is_dir() {
            plans.insert(path, plan_dir(tree, path, geo, has_label)?);
        }
    }
    Ok(plans)
}

fn check_kind(path: &TreePath, entry: &Entry) -> Result<(), FatError> {
    let kind = match &entry.kind {
        Kind::Dir => return Ok(()),
        Kind::File(c) if c.len() > u64::from(u32::MAX) => {
            return Err(FatError::FileTooBig {
                path: path.display(),
                size: c.len(),
            })
        }
        Kind::File(_) => return Ok(()),
        Kind::Symlink(_) => "symbolic link",
        Kind::CharDevice { .. } => "character device",
        Kind::BlockDevice { .. } => "block device",
        Kind::Fifo => "FIFO",
        Kind::Socket => "socket",
        Kind::HardLink(_) => "hard link",
    };
    Err(FatError::UnsupportedKind {
        path: path.display(),
        kind,
    })
}

fn plan_dir<'t>(
    tree: &'t Tree,
    dir: &TreePath,
    geo: &Geometry,
    has_label: bool,
) -> Result<DirPlan<'t>, FatError> {
    let mut names = Vec::new();
    let mut seen: HashMap<String, &TreePath> = HashMap::new();
    let kids: Vec<(&TreePath, &Entry)> = tree.children(dir).collect();
    for (path, _) in &kids {
        let name = check_name(path.name(), &|| path.display())?;
        if let Some(other) = seen.insert(upcase(name), path) {
            return Err(FatError::NameCollision {
                path: path.display(),
                other: other.display(),
            });
        }
        names.push(name);
    }
    let shorts =
        ShortNames::default()
            .assign_all(&names)
            .map_err(|reason| FatError::InvalidName {
                path: dir.display(),
                reason,
            })?;
    let mut slots = if dir.is_root() {
        usize::from(has_label)
    } else {
        2
    };
    let mut children = Vec::with_capacity(kids.len());
    for (((path, entry), name), short) in kids.into_iter().zip(names).zip(shorts) {
        if short.needs_lfn {
            slots += name.encode_utf16().count().div_ceil(13);
        }
        slots += 1;
        children.push(Child {
            path,
            entry,
            name,
            short: short.raw,
            needs_lfn: short.needs_lfn,
        });
    }
    let max = if dir.is_root() && geo.fat_type != FatType::Fat32 {
        geo.root_entries as usize
    } else {
        MAX_DIR_ENTRIES
    };
    if slots > max {
        return Err(FatError::DirectoryFull {
            path: dir.display(),
            entries: slots,
            max,
        });
    }
    Ok(DirPlan { children, slots })
}

/// Gives every directory and non-empty file its clusters, in tree order from cluster 2 (so
/// the FAT32 root directory is at cluster 2). Returns the extents and the clusters used.
fn allocate<'t>(
    tree: &'t Tree,
    plans: &BTreeMap<&'t TreePath, DirPlan<'t>>,
    geo: &Geometry,
    size_bytes: u64,
) -> Result<(HashMap<&'t TreePath, Extent>, u32), FatError> {
    let cb = u64::from(geo.cluster_bytes());
    let mut next: u64 = 2;
    let mut extents = HashMap::new();
    for (path, entry) in tree.iter() {
        let clusters = match &entry.kind {
            Kind::Dir if path.is_root() && geo.fat_type != FatType::Fat32 => 0,
            Kind::Dir => (plans[path].slots as u64 * 32).div_ceil(cb).max(1),
            Kind::File(c) => c.len().div_ceil(cb),
            _ => 0,
        };
        // Clamped so that the extents of a tree too large for the volume still fit in u32;
        // the check below reports it.
        let first = next.min(u64::from(u32::MAX));
        extents.insert(
            path,
            Extent {
                first: if clusters == 0 { 0 } else { first as u32 },
                clusters: clusters.min(u64::from(u32::MAX)) as u32,
            },
        );
        next += clusters;
    }
    let used = next - 2;
    if used > u64::from(geo.cluster_count) {
        let overhead = u64::from(geo.first_data_sector()) * u64::from(SECTOR);
        return Err(FatError::TooLarge {
            needed: overhead + used * cb,
            given: size_bytes,
            clusters: used,
            cluster_bytes: geo.cluster_bytes(),
            overhead,
        });
    }
    Ok((extents, used as u32))
}

/// The reserved sectors: boot sector, FSInfo and (FAT32) their backups at sectors 6 and 7.
fn write_reserved<D: Write + Seek>(
    dev: &mut D,
    geo: &Geometry,
    opts: &FatOptions,
    label: Option<RawShort>,
    used: u32,
) -> Result<(), FatError> {
    let sector = SECTOR as usize;
    let mut reserved = vec![0u8; geo.reserved_sectors as usize * sector];
    let boot = geo.boot_sector(opts.volume_id, &label.unwrap_or(*b"NO NAME    "));
    reserved[..sector].copy_from_slice(&boot);
    if geo.fat_type == FatType::Fat32 {
        let free = geo.cluster_count - used;
        let next_free = if free == 0 { u32::MAX } else { 2 + used };
        let info = fsinfo_sector(free, next_free);
        let fsinfo = geo.fsinfo_sector as usize * sector;
        reserved[fsinfo..fsinfo + sector].copy_from_slice(&info);
        let backup = BACKUP_BOOT_SECTOR as usize * sector;
        reserved[backup..backup + sector].copy_from_slice(&boot);
        reserved[backup + sector..backup + 2 * sector].copy_from_slice(&info);
    }
    write_at(dev, 0, &reserved)
}

/// A directory's bytes: its entries, then zeros to the end of its clusters (or of the fixed
/// root directory).
fn encode_dir(
    dir: &TreePath,
    plan: &DirPlan,
    extents: &HashMap<&TreePath, Extent>,
    geo: &Geometry,
    opts: &FatOptions,
    label: Option<RawShort>,
) -> Result<Vec<u8>, FatError> {
    let ext = extents[dir];
    let len = if ext.clusters == 0 {
        geo.root_dir_sectors() as usize * SECTOR as usize
    } else {
        ext.clusters as usize * geo.cluster_bytes() as usize
    };
    let mut out = Vec::with_capacity(len);
    if let Some(parent) = dir.parent() {
        let dot = ShortEntry::new(
            *b".          ",
            ATTR_DIRECTORY,
            ext.first,
            0,
            opts.timestamp,
        );
        out.extend_from_slice(&dot.encode());
        // ".." of a directory in the root points at cluster 0, even on FAT32.
        let up = if parent.is_root() {
            0
        } else {
            extents[&parent].first
        };
        let dotdot = ShortEntry::new(*b"..         ", ATTR_DIRECTORY, up, 0, opts.timestamp);
        out.extend_from_slice(&dotdot.encode());
    } else if let Some(raw) = label {
        let e = ShortEntry::new(raw, ATTR_VOLUME_ID, 0, 0, opts.timestamp);
        out.extend_from_slice(&e.encode());
    }
    for child in &plan.children {
        let ext = extents[child.path];
        // Files keep their own time; directories take the volume's (see the module doc).
        let (attr, size, time) = match &child.entry.kind {
            Kind::Dir => (ATTR_DIRECTORY, 0, opts.timestamp),
            // Sizes were checked against u32 in `check_kind`.
            Kind::File(c) => (ATTR_ARCHIVE, c.len() as u32, child.entry.meta.mtime),
            _ => unreachable!("kinds were checked in plan"),
        };
        if child.needs_lfn {
            for e in lfn_entries(child.name, lfn_checksum(&child.short)) {
                out.extend_from_slice(&e);
            }
        }
        let e = ShortEntry::new(child.short, attr, ext.first, size, time);
        out.extend_from_slice(&e.encode());
    }
    out.resize(len, 0);
    Ok(out)
}

/// Streams a file's content to its clusters and zero-fills the rest of the last one.
fn write_content<D: Write + Seek>(
    dev: &mut D,
    geo: &Geometry,
    path: &TreePath,
    content: &Content,
    first: u32,
) -> Result<(), FatError> {
    let host_err = |source| FatError::Content {
        path: path.display(),
        source,
    };
    let mut reader = content.open().map_err(host_err)?;
    let start = geo.cluster_offset(first);
    let expected = content.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut done: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(host_err(e)),
        };
        if done + n as u64 > expected {
            return Err(FatError::ContentChanged {
                path: path.display(),
                expected,
                got: done + n as u64,
            });
        }
        write_at(dev, start + done, &buf[..n])?;
        done += n as u64;
    }
    if done != expected {
        return Err(FatError::ContentChanged {
            path: path.display(),
            expected,
            got: done,
        });
    }
    let pad = (expected.div_ceil(u64::from(geo.cluster_bytes())) * u64::from(geo.cluster_bytes())
        - expected) as usize;
    write_at(dev, start + done, &vec![0; pad])
}
