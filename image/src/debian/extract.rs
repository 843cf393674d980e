//! Unpacks .deb files into a [`Tree`] without dpkg: the `ar` container, the control archive
//! (for the control fields, conffiles and maintainer scripts, which are reported, never run)
//! and the data archive, whose entries keep the archive's numeric owners, modes, times, links
//! and device nodes.
//!
//! Paths are merged into `/usr` as Debian 12's usrmerge does: `/bin`, `/sbin`, `/lib`,
//! `/lib64`, `/lib32` and `/libx32` go under `/usr`; the top-level links are the caller's job.
//! When a package ships both `/bin/x` and `/usr/bin/x` (or two packages do), the `/usr` one
//! wins, and a real difference is reported as a warning.
//!
//! File contents are kept in memory as [`Content::Bytes`]: the whole image is under 1 GB
//! extracted and every writer then reads from memory. Reading a .deb (decompression is nearly
//! all the cost) is independent of the tree, so [`extract_all`] reads several at once and adds
//! them to the tree in the given order, which keeps the result deterministic.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::error::{Error, Result};
use crate::tree::{Content, Entry, Kind, Meta, Tree, TreePath};

/// Top-level directories that Debian 12 merges into `/usr`.
pub const MERGED_DIRS: &[&str] = &["bin", "sbin", "lib", "lib64", "lib32", "libx32"];

/// What a package's control archive says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DebInfo {
    pub package: String,
    pub version: String,
    /// The whole `control` file.
    pub control: String,
    /// Absolute paths from `conffiles`.
    pub conffiles: Vec<String>,
    /// Maintainer scripts and triggers by name (`postinst`, `preinst`, `triggers`, ...): what dpkg
    /// would have run, for the caller to see which of their effects the build must provide.
    pub scripts: BTreeMap<String, String>,
}

/// A .deb read into memory: its control information and its data entries, not yet in a tree.
#[derive(Debug)]
pub struct DebContents {
    pub path: PathBuf,
    pub info: DebInfo,
    entries: Vec<DataEntry>,
}

#[derive(Debug)]
struct DataEntry {
    path: TreePath,
    /// True when the archive had it under a merged directory (`/bin/...`).
    moved: bool,
    entry: Entry,
}

impl DebContents {
    /// The number of data entries (directories included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Reads a .deb: finds its members, decompresses the control and data archives.
pub fn read_deb(path: &Path) -> Result<DebContents> {
    let bad = |reason: String| Error::Deb {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let members = ar_members(&bytes).map_err(&bad)?;
    let member = |prefix: &str| {
        members
            .iter()
            .find(|(name, _)| name.starts_with(prefix))
            .ok_or_else(|| {
                bad(format!(
                    "it has no {prefix}* member: not a Debian binary package"
                ))
            })
    };
    let (_, version) = member("debian-binary")?;
    if !version.starts_with(b"2.") {
        return Err(bad(
            "unsupported format (debian-binary is not 2.x)".to_string()
        ));
    }
    let (control_name, control_data) = member("control.tar")?;
    let info = read_control(decompress(control_name, control_data).map_err(&bad)?)
        .map_err(|e| bad(format!("reading {control_name}: {e}")))?;
    let (data_name, data) = member("data.tar")?;
    let entries = read_data(decompress(data_name, data).map_err(&bad)?)
        .map_err(|e| bad(format!("reading {data_name}: {e}")))?;
    Ok(DebContents {
        path: path.to_path_buf(),
        info,
        entries,
    })
}

/// The members of an `ar` archive as (name, data), in order.
fn ar_members(bytes: &[u8]) -> Result<Vec<(String, &[u8])>, String> {
    let mut rest = bytes
        .strip_prefix(b"!<arch>\n")
        .ok_or("it is not an ar archive (no !<arch> magic)")?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 60 || &rest[58..60] != b"`\n" {
            return Err("truncated or corrupt ar member header".to_string());
        }
        let field =
            |r: std::ops::Range<usize>| String::from_utf8_lossy(&rest[r]).trim().to_string();
        let name = field(0..16).trim_end_matches('/').to_string();
        let size: usize = field(48..58)
            .parse()
            .map_err(|_| format!("ar member {name:?} has a bad size"))?;
        let data = rest
            .get(60..60 + size)
            .ok_or_else(|| format!("ar member {name:?} is truncated"))?;
        out.push((name, data));
        // Members are padded to an even length.
        rest = rest.get(60 + size + size % 2..).unwrap_or(&[]);
    }
    Ok(out)
}

/// A reader that decompresses a member according to its name.
fn decompress<'a>(name: &str, data: &'a [u8]) -> Result<Box<dyn Read + 'a>, String> {
    Ok(match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("xz") => Box::new(xz2::read::XzDecoder::new_multi_decoder(data)),
        Some("gz") => Box::new(flate2::read::GzDecoder::new(data)),
        Some("zst") => Box::new(
            zstd::stream::read::Decoder::new(data)
                .map_err(|e| format!("{name}: bad zstd stream: {e}"))?,
        ),
        Some("tar") => Box::new(data),
        _ => return Err(format!("member {name} has an unsupported compression")),
    })
}

/// The control fields, conffiles and scripts of a control archive.
fn read_control(reader: Box<dyn Read + '_>) -> io::Result<DebInfo> {
    let mut info = DebInfo::default();
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes())
            .trim_start_matches("./")
            .to_string();
        let mut text = String::new();
        entry.read_to_string(&mut text)?;
        match name.as_str() {
            "control" => info.control = text,
            "conffiles" => {
                info.conffiles = text
                    .lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect()
            }
            "md5sums" | "shlibs" | "symbols" | "templates" => {}
            _ => {
                info.scripts.insert(name, text);
            }
        }
    }
    let field = |k: &str| {
        info.control
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    info.package = field("Package");
    info.version = field("Version");
    if info.package.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "control has no Package field",
        ));
    }
    Ok(info)
}

/// Maps an archive path (`./bin/sh`) to its tree path (`usr/bin/sh`) and whether it moved.
/// `None` for the archive's root entry (`./`).
pub fn merged_usr_path(raw: &[u8]) -> Result<Option<(TreePath, bool)>, String> {
    let mut p = raw;
    while let Some(rest) = p.strip_prefix(b"./").or_else(|| p.strip_prefix(b"/")) {
        p = rest;
    }
    let p = p.strip_suffix(b"/").unwrap_or(p);
    if p.is_empty() || p == b"." {
        return Ok(None);
    }
    let first = p.split(|&b| b == b'/').next().unwrap_or_default();
    let moved = MERGED_DIRS.iter().any(|d| d.as_bytes() == first);
    let full = if moved {
        [b"usr/", p].concat()
    } else {
        p.to_vec()
    };
    let path = TreePath::new(&full).map_err(|e| e.to_string())?;
    Ok(Some((path, moved)))
}

/// The entries of a data archive, in archive order.
fn read_data(reader: Box<dyn Read + '_>) -> io::Result<Vec<DataEntry>> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw_path = entry.path_bytes().into_owned();
        let Some((path, moved)) = merged_usr_path(&raw_path).map_err(invalid)? else {
            continue;
        };
        let h = entry.header();
        let meta = Meta {
            mode: (h.mode()? & 0o7777) as u16,
            uid: h.uid()? as u32,
            gid: h.gid()? as u32,
            mtime: h.mtime()? as i64,
            xattrs: BTreeMap::new(),
        };
        let device = |h: &tar::Header| -> io::Result<(u32, u32)> {
            Ok((
                h.device_major()?.unwrap_or(0),
                h.device_minor()?.unwrap_or(0),
            ))
        };
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let kind = match h.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                // The header's size is only a hint: a corrupt one must not reserve gigabytes.
                let mut data = Vec::with_capacity(entry.size().min(1 << 26) as usize);
                entry.read_to_end(&mut data)?;
                Kind::File(Content::Bytes(Arc::from(data)))
            }
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => {
                Kind::Symlink(link.ok_or_else(|| invalid(format!("symlink {path} has no target")))?)
            }
            tar::EntryType::Link => {
                let target =
                    link.ok_or_else(|| invalid(format!("hard link {path} has no target")))?;
                match merged_usr_path(&target).map_err(invalid)? {
                    Some((t, _)) => Kind::HardLink(t),
                    None => return Err(invalid(format!("hard link {path} points at the root"))),
                }
            }
            tar::EntryType::Char => {
                let (major, minor) = device(h)?;
                Kind::CharDevice { major, minor }
            }
            tar::EntryType::Block => {
                let (major, minor) = device(h)?;
                Kind::BlockDevice { major, minor }
            }
            tar::EntryType::Fifo => Kind::Fifo,
            other => {
                return Err(invalid(format!(
                    "{path}: unsupported tar entry type {other:?}"
                )))
            }
        };
        out.push(DataEntry {
            path,
            moved,
            entry: Entry::new(kind, meta),
        });
    }
    Ok(out)
}

/// Adds packages to a tree one after the other, remembering which package put each file
/// where, to apply the `/usr`-wins rule and to report real conflicts.
pub struct Extractor {
    tree: Tree,
    /// For every non-directory: the package that put it there and whether it came from a
    /// merged directory.
    owners: HashMap<TreePath, (Arc<str>, bool)>,
    warnings: Vec<String>,
}

impl Extractor {
    pub fn new(tree: Tree) -> Extractor {
        Extractor {
            tree,
            owners: HashMap::new(),
            warnings: Vec::new(),
        }
    }

    /// Reads a .deb and adds it.
    pub fn add_deb(&mut self, path: &Path) -> Result<DebInfo> {
        let contents = read_deb(path)?;
        self.add(contents)
    }

    /// Adds a package read by [`read_deb`].
    pub fn add(&mut self, deb: DebContents) -> Result<DebInfo> {
        let package: Arc<str> = Arc::from(deb.info.package.as_str());
        for data in deb.entries {
            self.add_entry(&deb.path, &package, data)?;
        }
        Ok(deb.info)
    }

    fn add_entry(&mut self, deb: &Path, package: &Arc<str>, data: DataEntry) -> Result<()> {
        let tree_err = |source| Error::Tree {
            path: deb.to_path_buf(),
            entry: data.path.display(),
            source,
        };
        let parent_meta = Meta::root(0o755, data.entry.meta.mtime);
        if let Some(parent) = data.path.parent() {
            self.tree
                .create_dirs(&parent, &parent_meta)
                .map_err(tree_err)?;
        }
        let existing = self.tree.get_at(&data.path);
        match (existing, data.entry.is_dir()) {
            // A directory another package already made keeps its first metadata, as with dpkg.
            (Some(e), true) if e.is_dir() => return Ok(()),
            (Some(_), true) => {
                self.warnings.push(format!(
                    "{package}: directory {} replaces a non-directory of the same name",
                    data.path
                ));
            }
            (Some(e), false) if e.is_dir() => {
                self.warnings.push(format!(
                    "{package}: {} is a directory in the tree already; the package's non-directory is skipped",
                    data.path
                ));
                return Ok(());
            }
            (Some(e), false) => {
                let (owner, owner_moved) = self
                    .owners
                    .get(&data.path)
                    .cloned()
                    .unwrap_or_else(|| (Arc::from("the tree"), false));
                let same = e.kind == data.entry.kind;
                if data.moved && !owner_moved {
                    // The /usr file wins over one from a merged directory.
                    if !same {
                        self.warnings.push(format!(
                            "{package}: /{} differs from {} shipped by {owner}; keeping the /usr one",
                            String::from_utf8_lossy(&data.path.as_bytes()[4..]),
                            data.path
                        ));
                    }
                    return Ok(());
                }
                if !same {
                    self.warnings.push(format!(
                        "{package}: {} replaces the different file shipped by {owner}",
                        data.path
                    ));
                }
            }
            (None, _) => {}
        }
        if !data.entry.is_dir() {
            self.owners
                .insert(data.path.clone(), (package.clone(), data.moved));
        }
        self.tree
            .insert_at(data.path.clone(), data.entry)
            .map_err(tree_err)
    }

    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Conflicts and replacements seen so far.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The tree and the warnings.
    pub fn finish(self) -> (Tree, Vec<String>) {
        (self.tree, self.warnings)
    }
}

/// The result of [`extract_all`].
#[derive(Debug)]
pub struct Extracted {
    pub tree: Tree,
    /// In the order of the input paths.
    pub infos: Vec<DebInfo>,
    pub warnings: Vec<String>,
}

/// Reads `debs` with `jobs` threads and adds them to `tree` in the order given.
pub fn extract_all(debs: &[PathBuf], tree: Tree, jobs: usize) -> Result<Extracted> {
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<Result<DebContents>>>> =
        Mutex::new(debs.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(path) = debs.get(i) else { break };
                let r = read_deb(path);
                slots.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    let mut extractor = Extractor::new(tree);
    let mut infos = Vec::with_capacity(debs.len());
    for slot in slots
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
    {
        infos.push(extractor.add(slot?)?);
    }
    let (tree, warnings) = extractor.finish();
    Ok(Extracted {
        tree,
        infos,
        warnings,
    })
}

#[cfg(test)]
mod tests;
