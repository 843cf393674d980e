//! The file tree that every format writer takes: an in-memory description of a filesystem's
//! contents, independent of who owns what on the host.
//!
//! Entries are kept in a flat map from path to entry. Paths are byte strings without a leading
//! slash ("" is the root); ordering them as bytes puts every parent before its children (though
//! not depth-first: `a-b` sorts before `a/x`), so [`Tree::iter`] is a valid creation order for
//! every writer, and [`Tree::children`] lists one directory's entries sorted by name.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

/// The longest name of one path component that ext4, cpio and our FAT writer accept.
pub const MAX_NAME_LEN: usize = 255;

/// An error in building or checking a tree. Every variant names the path it is about.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("cannot add {path:?}: its parent is missing (add the parent directory first)")]
    MissingParent { path: String },
    #[error("cannot add {path:?}: its parent is not a directory")]
    ParentNotDirectory { path: String },
    #[error("hard link {path:?} points to {target:?}, which is not in the tree")]
    MissingLinkTarget { path: String, target: String },
    #[error("hard link {path:?} points to {target:?}, which is a directory or another hard link")]
    BadLinkTarget { path: String, target: String },
}

/// A validated path inside a tree: components joined by `/`, no leading or trailing slash,
/// no empty, `.` or `..` component, no NUL byte, no component longer than [`MAX_NAME_LEN`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TreePath(Vec<u8>);

impl TreePath {
    /// The root directory.
    pub fn root() -> Self {
        TreePath(Vec::new())
    }

    /// Parses a path; a leading `/` is accepted and dropped, anything else invalid is an error.
    pub fn new(path: impl AsRef<[u8]>) -> Result<Self, TreeError> {
        let raw = path.as_ref();
        let trimmed = raw.strip_prefix(b"/").unwrap_or(raw);
        let invalid = |reason| TreeError::InvalidPath {
            path: String::from_utf8_lossy(raw).into_owned(),
            reason,
        };
        if trimmed.is_empty() {
            return Ok(Self::root());
        }
        if trimmed.contains(&0) {
            return Err(invalid("contains a NUL byte"));
        }
        for component in trimmed.split(|&b| b == b'/') {
            match component {
                b"" => return Err(invalid("has an empty component (double or trailing slash)")),
                b"." | b".." => return Err(invalid("has a '.' or '..' component")),
                c if c.len() > MAX_NAME_LEN => {
                    return Err(invalid("has a component longer than 255 bytes"))
                }
                _ => {}
            }
        }
        Ok(TreePath(trimmed.to_vec()))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as text for messages (lossy for names that are not UTF-8).
    pub fn display(&self) -> String {
        format!("/{}", String::from_utf8_lossy(&self.0))
    }

    /// The parent directory; `None` for the root.
    pub fn parent(&self) -> Option<TreePath> {
        if self.is_root() {
            return None;
        }
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => Some(TreePath(self.0[..i].to_vec())),
            None => Some(Self::root()),
        }
    }

    /// The last component; empty for the root.
    pub fn name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// This path with one more component, which must be a valid single name.
    pub fn join(&self, name: impl AsRef<[u8]>) -> Result<TreePath, TreeError> {
        let name = name.as_ref();
        if name.contains(&b'/') {
            return Err(TreeError::InvalidPath {
                path: String::from_utf8_lossy(name).into_owned(),
                reason: "a single name cannot contain '/'",
            });
        }
        let mut joined = self.0.clone();
        if !joined.is_empty() {
            joined.push(b'/');
        }
        joined.extend_from_slice(name);
        TreePath::new(joined)
    }

    /// The components, from the top down.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/').filter(|c| !c.is_empty())
    }
}

impl fmt::Debug for TreePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.display())
    }
}

impl fmt::Display for TreePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

/// Where a regular file's bytes come from.
#[derive(Clone, PartialEq, Eq)]
pub enum Content {
    /// Bytes held in memory (shared, so cloning a tree is cheap).
    Bytes(Arc<[u8]>),
    /// A file on the host, read when a writer needs it. `len` is recorded when the entry is added
    /// so that sizes are known without touching the file; writers fail if it changed.
    Host { path: PathBuf, len: u64 },
}

impl Content {
    pub fn bytes(data: impl Into<Vec<u8>>) -> Self {
        Content::Bytes(Arc::from(data.into()))
    }

    /// Refers to a host file, recording its current length.
    pub fn host(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        let len = std::fs::metadata(&path)?.len();
        Ok(Content::Host { path, len })
    }

    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Host { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader over the content. For host files, reading more or fewer bytes than `len` is an
    /// error the writer reports (the file changed under the build).
    pub fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        match self {
            Content::Bytes(b) => Ok(Box::new(&b[..])),
            Content::Host { path, .. } => {
                let file = File::open(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("opening {}: {e}", path.display()))
                })?;
                Ok(Box::new(file))
            }
        }
    }

    /// The whole content in memory, checked against the recorded length.
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len() as usize);
        self.open()?.read_to_end(&mut out)?;
        if out.len() as u64 != self.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "content changed size: expected {} bytes, read {}",
                    self.len(),
                    out.len()
                ),
            ));
        }
        Ok(out)
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Content::Host { path, len } => write!(f, "Host({}, {len} bytes)", path.display()),
        }
    }
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File(Content),
    Dir,
    /// The target, as raw bytes (may be relative, absolute, or dangling).
    Symlink(Vec<u8>),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    Socket,
    /// Another name for the entry at this path, which must be a non-directory, non-link entry.
    /// Writers that have inodes share the inode; FAT refuses it.
    HardLink(TreePath),
}

/// Ownership, permissions, time and extended attributes of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (`0o7777`); the file type comes from
    /// [`Kind`].
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch; the build clamps it to `SOURCE_DATE_EPOCH`.
    pub mtime: i64,
    /// Extended attributes by full name (`security.capability`, `user.foo`, ...).
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Meta {
    /// Root-owned with the given mode and time, no xattrs.
    pub fn root(mode: u16, mtime: i64) -> Self {
        Meta {
            mode: mode & 0o7777,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub meta: Meta,
}

impl Entry {
    pub fn new(kind: Kind, meta: Meta) -> Self {
        Entry { kind, meta }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir)
    }
}

/// A file tree. The root directory always exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    entries: BTreeMap<TreePath, Entry>,
}

impl Tree {
    /// An empty tree whose root directory has the given metadata.
    pub fn new(root: Meta) -> Self {
        let mut entries = BTreeMap::new();
        entries.insert(TreePath::root(), Entry::new(Kind::Dir, root));
        Tree { entries }
    }

    /// Adds or replaces an entry. The parent must exist and be a directory. Replacing a
    /// directory with a non-directory removes everything below it; replacing a directory with a
    /// directory keeps its children and takes the new metadata.
    pub fn insert(&mut self, path: impl AsRef<[u8]>, entry: Entry) -> Result<(), TreeError> {
        let path = TreePath::new(path)?;
        self.insert_at(path, entry)
    }

    /// [`Tree::insert`] with a parsed path.
    pub fn insert_at(&mut self, path: TreePath, entry: Entry) -> Result<(), TreeError> {
        if let Some(parent) = path.parent() {
            match self.entries.get(&parent) {
                None => {
                    return Err(TreeError::MissingParent {
                        path: path.display(),
                    })
                }
                Some(p) if !p.is_dir() => {
                    return Err(TreeError::ParentNotDirectory {
                        path: path.display(),
                    })
                }
                Some(_) => {}
            }
        }
        let was_dir = self.entries.get(&path).is_some_and(Entry::is_dir);
        if was_dir && !entry.is_dir() {
            self.remove_at(&path);
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    /// Adds an entry, creating missing parent directories with `dir_meta`.
    pub fn insert_with_parents(
        &mut self,
        path: impl AsRef<[u8]>,
        entry: Entry,
        dir_meta: &Meta,
    ) -> Result<(), TreeError> {
        let path = TreePath::new(path)?;
        self.create_dirs(
            path.parent().as_ref().unwrap_or(&TreePath::root()),
            dir_meta,
        )?;
        self.insert_at(path, entry)
    }

    /// `mkdir -p`: creates every missing directory on the way to `path` with `meta`.
    pub fn create_dirs(&mut self, path: &TreePath, meta: &Meta) -> Result<(), TreeError> {
        let mut current = TreePath::root();
        for component in path.components() {
            current = current.join(component)?;
            if !self.entries.contains_key(&current) {
                self.insert_at(current.clone(), Entry::new(Kind::Dir, meta.clone()))?;
            }
        }
        Ok(())
    }

    pub fn get(&self, path: impl AsRef<[u8]>) -> Option<&Entry> {
        self.entries.get(&TreePath::new(path).ok()?)
    }

    pub fn get_mut(&mut self, path: impl AsRef<[u8]>) -> Option<&mut Entry> {
        self.entries.get_mut(&TreePath::new(path).ok()?)
    }

    pub fn get_at(&self, path: &TreePath) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// Removes an entry and everything below it; returns whether anything was there.
    /// The root cannot be removed.
    pub fn remove(&mut self, path: impl AsRef<[u8]>) -> bool {
        match TreePath::new(path) {
            Ok(p) if !p.is_root() => self.remove_at(&p),
            _ => false,
        }
    }

    fn remove_at(&mut self, path: &TreePath) -> bool {
        let below: Vec<TreePath> = self.descendants(path).map(|(p, _)| p.clone()).collect();
        for p in below {
            self.entries.remove(&p);
        }
        self.entries.remove(path).is_some()
    }

    /// Every entry, the root first, each parent before its children.
    pub fn iter(&self) -> impl Iterator<Item = (&TreePath, &Entry)> {
        self.entries.iter()
    }

    /// Mutable access to every entry (for clamping times, changing owners, ...).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&TreePath, &mut Entry)> {
        self.entries.iter_mut()
    }

    /// Every entry strictly below `dir`, parents before children.
    pub fn descendants<'a>(
        &'a self,
        dir: &TreePath,
    ) -> impl Iterator<Item = (&'a TreePath, &'a Entry)> + 'a {
        let mut prefix = dir.0.clone();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        let start = TreePath(prefix.clone());
        self.entries
            .range(start..)
            .skip_while(move |(p, _)| p.is_root())
            .take_while(move |(p, _)| p.0.starts_with(&prefix))
    }

    /// The direct children of `dir`, sorted by name bytes.
    pub fn children<'a>(
        &'a self,
        dir: &TreePath,
    ) -> impl Iterator<Item = (&'a TreePath, &'a Entry)> + 'a {
        let depth = dir.0.len() + usize::from(!dir.is_root());
        self.descendants(dir)
            .filter(move |(p, _)| !p.0[depth..].contains(&b'/'))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() <= 1
    }

    /// The sum of all regular files' sizes (hard links counted once).
    pub fn content_bytes(&self) -> u64 {
        self.entries
            .values()
            .map(|e| match &e.kind {
                Kind::File(c) => c.len(),
                _ => 0,
            })
            .sum()
    }

    /// Checks what [`Tree::insert`] cannot: every hard link points to an entry that exists and
    /// is neither a directory nor another hard link. Writers call this first.
    pub fn validate(&self) -> Result<(), TreeError> {
        for (path, entry) in &self.entries {
            if let Kind::HardLink(target) = &entry.kind {
                match self.entries.get(target) {
                    None => {
                        return Err(TreeError::MissingLinkTarget {
                            path: path.display(),
                            target: target.display(),
                        })
                    }
                    Some(t) if matches!(t.kind, Kind::Dir | Kind::HardLink(_)) => {
                        return Err(TreeError::BadLinkTarget {
                            path: path.display(),
                            target: target.display(),
                        })
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// A new tree whose root is `dir` of this one (its metadata becomes the root's). Hard links
    /// that point outside `dir` become copies of their target, so the result stays valid.
    pub fn subtree(&self, dir: &TreePath) -> Option<Tree> {
        let root = self.entries.get(dir).filter(|e| e.is_dir())?;
        let strip = dir.0.len() + usize::from(!dir.is_root());
        let rebase = |p: &TreePath| TreePath(p.0[strip..].to_vec());
        let mut out = Tree::new(root.meta.clone());
        for (path, entry) in self.descendants(dir) {
            let mut entry = entry.clone();
            if let Kind::HardLink(target) = &entry.kind {
                let inside = dir.is_root()
                    || (target.0.len() > strip
                        && target.0.starts_with(&dir.0)
                        && target.0[dir.0.len()] == b'/');
                entry.kind = if inside {
                    Kind::HardLink(rebase(target))
                } else {
                    self.entries.get(target)?.kind.clone()
                };
            }
            out.entries.insert(rebase(path), entry);
        }
        Some(out)
    }

    /// Adds every entry of `other` below `at` (created with `dir_meta` when missing); entries
    /// already here are replaced, directories keep their children. Hard links are re-pointed.
    pub fn graft(&mut self, at: &TreePath, other: &Tree, dir_meta: &Meta) -> Result<(), TreeError> {
        self.create_dirs(at, dir_meta)?;
        let rebase = |p: &TreePath| -> Result<TreePath, TreeError> {
            match (at.is_root(), p.is_root()) {
                (_, true) => Ok(at.clone()),
                (true, false) => Ok(p.clone()),
                (false, false) => TreePath::new([at.as_bytes(), b"/", p.as_bytes()].concat()),
            }
        };
        for (path, entry) in other.iter() {
            let mut entry = entry.clone();
            if let Kind::HardLink(target) = &entry.kind {
                entry.kind = Kind::HardLink(rebase(target)?);
            }
            self.insert_at(rebase(path)?, entry)?;
        }
        Ok(())
    }

    /// Clamps every mtime to at most `epoch` (the `SOURCE_DATE_EPOCH` rule).
    pub fn clamp_mtimes(&mut self, epoch: i64) {
        for entry in self.entries.values_mut() {
            entry.meta.mtime = entry.meta.mtime.min(epoch);
        }
    }
}

/// A tree holding one entry of every kind, for the writers' tests.
#[doc(hidden)]
pub fn sample_tree() -> Tree {
    let t = 1_700_000_000;
    let mut tree = Tree::new(Meta::root(0o755, t));
    let dir = Meta::root(0o755, t);
    let mut add = |path: &str, kind: Kind, meta: Meta| {
        tree.insert_with_parents(path, Entry::new(kind, meta), &dir)
            .expect("sample path is valid")
    };
    add(
        "etc/hostname",
        Kind::File(Content::bytes(b"kiln\n".to_vec())),
        Meta::root(0o644, t),
    );
    add(
        "etc/empty",
        Kind::File(Content::bytes(Vec::new())),
        Meta::root(0o600, t),
    );
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    add(
        "usr/lib/big.bin",
        Kind::File(Content::bytes(big)),
        Meta::root(0o644, t),
    );
    // A sparse file: 1 MiB of zeros with 4 KiB of data in the middle.
    let mut sparse = vec![0u8; 1 << 20];
    sparse[512 * 1024..512 * 1024 + 4096].fill(0xAB);
    add(
        "var/sparse.img",
        Kind::File(Content::bytes(sparse)),
        Meta::root(0o600, t),
    );
    let mut ping = Meta::root(0o4755, t);
    ping.xattrs.insert(
        "security.capability".into(),
        vec![
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    add(
        "usr/bin/ping",
        Kind::File(Content::bytes(b"\x7fELF-not-really".to_vec())),
        ping,
    );
    add(
        "usr/bin/ping6",
        Kind::HardLink(TreePath::new("usr/bin/ping").unwrap()),
        Meta::root(0o4755, t),
    );
    add(
        "bin",
        Kind::Symlink(b"usr/bin".to_vec()),
        Meta::root(0o777, t),
    );
    let long_target = format!("/{}", "a-long-symlink-target/".repeat(12));
    add(
        "usr/long-link",
        Kind::Symlink(long_target.into_bytes()),
        Meta::root(0o777, t),
    );
    add(
        "dev/console",
        Kind::CharDevice { major: 5, minor: 1 },
        Meta::root(0o600, t),
    );
    add(
        "dev/vda",
        Kind::BlockDevice {
            major: 254,
            minor: 0,
        },
        Meta::root(0o660, t),
    );
    add("run/initctl", Kind::Fifo, Meta::root(0o600, t));
    let mut owned = Meta::root(0o640, t);
    owned.uid = 1000;
    owned.gid = 100;
    add(
        "home/core/.profile",
        Kind::File(Content::bytes(b"# hi\n".to_vec())),
        owned,
    );
    for i in 0..2000 {
        add(
            &format!("usr/lib/modules/many/file-{i:05}.ko"),
            Kind::File(Content::bytes(format!("module {i}\n").into_bytes())),
            Meta::root(0o644, t),
        );
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(s: &str) -> Entry {
        Entry::new(
            Kind::File(Content::bytes(s.as_bytes().to_vec())),
            Meta::root(0o644, 0),
        )
    }

    #[test]
    fn bad_paths_are_refused_with_the_reason() {
        for bad in ["a/../b", "a//b", "a/", "./a", "a\0b"] {
            let err = TreePath::new(bad).unwrap_err();
            assert!(matches!(err, TreeError::InvalidPath { .. }), "{bad}: {err}");
        }
        let long = "x".repeat(256);
        assert!(TreePath::new(&long)
            .unwrap_err()
            .to_string()
            .contains("255 bytes"));
        assert!(TreePath::new("x".repeat(255)).is_ok());
        assert!(TreePath::new("/usr/bin").is_ok());
    }

    #[test]
    fn parents_come_before_children_and_children_are_sorted() {
        let mut t = Tree::new(Meta::root(0o755, 0));
        let d = Meta::root(0o755, 0);
        t.insert_with_parents("a/b/c", file("1"), &d).unwrap();
        t.insert_with_parents("a-b", file("2"), &d).unwrap();
        t.insert_with_parents("a/a", file("3"), &d).unwrap();
        let order: Vec<String> = t.iter().map(|(p, _)| p.display()).collect();
        // Byte order, not depth-first: "a-b" sorts before "a/...", but every parent precedes its children.
        assert_eq!(order, ["/", "/a", "/a-b", "/a/a", "/a/b", "/a/b/c"]);
        let root_children: Vec<String> = t
            .children(&TreePath::root())
            .map(|(p, _)| p.display())
            .collect();
        assert_eq!(root_children, ["/a", "/a-b"]);
        let a: Vec<String> = t
            .children(&TreePath::new("a").unwrap())
            .map(|(p, _)| p.display())
            .collect();
        assert_eq!(a, ["/a/a", "/a/b"]);
    }

    #[test]
    fn missing_parent_and_file_parent_are_errors() {
        let mut t = Tree::new(Meta::root(0o755, 0));
        assert!(matches!(
            t.insert("a/b", file("x")),
            Err(TreeError::MissingParent { .. })
        ));
        t.insert("a", file("x")).unwrap();
        assert!(matches!(
            t.insert("a/b", file("x")),
            Err(TreeError::ParentNotDirectory { .. })
        ));
    }

    #[test]
    fn replacing_a_directory_with_a_file_drops_its_children() {
        let mut t = Tree::new(Meta::root(0o755, 0));
        let d = Meta::root(0o755, 0);
        t.insert_with_parents("a/b/c", file("1"), &d).unwrap();
        t.insert("a", file("now a file")).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.remove("a"));
        assert!(!t.remove(""));
    }

    #[test]
    fn hard_links_must_point_at_files() {
        let mut t = sample_tree();
        t.validate().unwrap();
        t.insert(
            "dangling",
            Entry::new(
                Kind::HardLink(TreePath::new("nope").unwrap()),
                Meta::root(0o644, 0),
            ),
        )
        .unwrap();
        assert!(matches!(
            t.validate(),
            Err(TreeError::MissingLinkTarget { .. })
        ));
        t.insert(
            "dangling",
            Entry::new(
                Kind::HardLink(TreePath::new("usr").unwrap()),
                Meta::root(0o644, 0),
            ),
        )
        .unwrap();
        assert!(matches!(t.validate(), Err(TreeError::BadLinkTarget { .. })));
    }

    #[test]
    fn subtree_rebases_paths_and_resolves_outside_links() {
        let mut t = sample_tree();
        t.insert(
            "usr/outside-link",
            Entry::new(
                Kind::HardLink(TreePath::new("etc/hostname").unwrap()),
                Meta::root(0o644, 0),
            ),
        )
        .unwrap();
        let usr = t.subtree(&TreePath::new("usr").unwrap()).unwrap();
        usr.validate().unwrap();
        assert!(usr.get("bin/ping").is_some());
        assert_eq!(
            usr.get("bin/ping6").unwrap().kind,
            Kind::HardLink(TreePath::new("bin/ping").unwrap())
        );
        assert!(matches!(
            usr.get("outside-link").unwrap().kind,
            Kind::File(_)
        ));
        assert!(usr.get("etc").is_none());
        assert!(t.subtree(&TreePath::new("etc/hostname").unwrap()).is_none());
    }

    #[test]
    fn graft_puts_a_tree_below_a_path() {
        let mut t = Tree::new(Meta::root(0o755, 0));
        let sample = sample_tree();
        t.graft(
            &TreePath::new("opt/sample").unwrap(),
            &sample,
            &Meta::root(0o755, 0),
        )
        .unwrap();
        t.validate().unwrap();
        assert_eq!(
            t.get("opt/sample/usr/bin/ping6").unwrap().kind,
            Kind::HardLink(TreePath::new("opt/sample/usr/bin/ping").unwrap())
        );
        assert_eq!(t.len(), sample.len() + 2);
    }

    #[test]
    fn host_content_checks_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let c = Content::host(&p).unwrap();
        assert_eq!(c.read_all().unwrap(), b"abc");
        std::fs::write(&p, b"abcd").unwrap();
        assert!(c.read_all().is_err());
    }
}
