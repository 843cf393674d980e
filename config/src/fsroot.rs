//! File operations confined to a root directory (the machine's ROOT mounted somewhere):
//! paths are resolved as if the root were `/`, symlinks included, so nothing is written outside
//! it; files are written atomically (temp file, fsync, rename, fsync the directory).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// More symlinks than this while resolving one path means a loop, as for the kernel.
const MAX_LINKS: usize = 40;

/// What to do when the last component of a path is a symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LastLink {
    /// Write to where it points (inside the root), like `open()` would.
    Follow,
    /// Replace the link itself (our own files: a masked unit's `/dev/null` link).
    Replace,
}

/// Mode and owner of a file or directory to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Meta {
    pub const ROOT_FILE: Meta = Meta {
        mode: 0o644,
        uid: 0,
        gid: 0,
    };
}

/// A root directory and whether we may set owners in it.
pub(crate) struct Root {
    root: PathBuf,
    /// False when not running as root: owners are left as they are (reported by the caller).
    pub chown: bool,
}

/// An I/O error with the path it happened on.
pub(crate) fn err(what: &str, path: &Path, e: io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

impl Root {
    pub fn new(root: &Path, chown: bool) -> Root {
        Root {
            root: root.to_path_buf(),
            chown,
        }
    }

    /// The host path of `guest` (an absolute path as the machine sees it), following symlinks
    /// as if `root` were `/`: absolute targets restart at the root, `..` stops at it.
    pub fn resolve(&self, guest: &str, last: LastLink) -> Result<PathBuf, String> {
        let mut todo: Vec<String> = components(guest).rev().collect();
        let mut done: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                done.pop();
                continue;
            }
            let host = self.host(&done).join(&c);
            let is_last = todo.is_empty();
            match fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() && !(is_last && last == LastLink::Replace) => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(format!("too many symlinks resolving {guest}"));
                    }
                    let target = fs::read_link(&host).map_err(|e| err("reading link", &host, e))?;
                    let target = target.to_string_lossy().into_owned();
                    if target.starts_with('/') {
                        done.clear();
                    }
                    todo.extend(components(&target).rev());
                }
                Ok(_) => done.push(c),
                Err(e) if e.kind() == io::ErrorKind::NotFound => done.push(c),
                Err(e) => return Err(err("looking at", &host, e)),
            }
        }
        Ok(self.host(&done))
    }

    fn host(&self, parts: &[String]) -> PathBuf {
        let mut p = self.root.clone();
        p.extend(parts);
        p
    }

    /// Reads a file if it exists.
    pub fn read(&self, guest: &str) -> Result<Option<Vec<u8>>, String> {
        let path = self.resolve(guest, LastLink::Follow)?;
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err("reading", &path, e)),
        }
    }

    /// Whether `guest` exists (following links).
    pub fn exists(&self, guest: &str) -> bool {
        self.resolve(guest, LastLink::Follow)
            .map(|p| p.exists())
            .unwrap_or(false)
    }

    /// Mode and owner of an existing file, to keep them when rewriting it.
    pub fn meta_of(&self, guest: &str) -> Option<Meta> {
        let path = self.resolve(guest, LastLink::Follow).ok()?;
        let m = fs::metadata(path).ok()?;
        Some(Meta {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        })
    }

    /// Creates directory `guest` and any missing parents. New parents are root's 0755; the
    /// last one gets `meta` if it is created here. Returns the host path.
    pub fn mkdir_all(&self, guest: &str, meta: Meta) -> Result<PathBuf, String> {
        let path = self.resolve(guest, LastLink::Follow)?;
        if path.is_dir() {
            return Ok(path);
        }
        if let Some(parent) = path.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|e| err("creating directory", parent, e))?;
        }
        match DirBuilder::new().mode(meta.mode).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(path),
            Err(e) => return Err(err("creating directory", &path, e)),
        }
        self.set_meta(&path, meta)?;
        Ok(path)
    }

    /// Sets mode (ignoring the umask) and, when allowed, owner of a host path.
    pub fn set_meta(&self, path: &Path, meta: Meta) -> Result<(), String> {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))
            .map_err(|e| err("setting the mode of", path, e))?;
        if self.chown {
            std::os::unix::fs::chown(path, Some(meta.uid), Some(meta.gid))
                .map_err(|e| err("setting the owner of", path, e))?;
        }
        Ok(())
    }

    /// Writes `data` to `guest` atomically with `meta`, creating parent directories (root's,
    /// 0755). Returns the host path written.
    pub fn write(
        &self,
        guest: &str,
        data: &[u8],
        meta: Meta,
        last: LastLink,
    ) -> Result<PathBuf, String> {
        let path = self.resolve(guest, last)?;
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(d), Some(n)) => (d.to_path_buf(), n.to_string_lossy().into_owned()),
            _ => return Err(format!("{guest} does not name a file")),
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| err("creating directory", &dir, e))?;
        if path.is_dir() {
            return Err(format!("{} is a directory", path.display()));
        }
        let tmp = dir.join(format!(".{name}.kiln-tmp"));
        let _ = fs::remove_file(&tmp);
        self.write_temp(&tmp, data, meta).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            err("renaming into place", &path, e)
        })?;
        sync_dir(&dir)?;
        Ok(path)
    }

    fn write_temp(&self, tmp: &Path, data: &[u8], meta: Meta) -> Result<(), String> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
            .map_err(|e| err("creating", tmp, e))?;
        file.write_all(data).map_err(|e| err("writing", tmp, e))?;
        if self.chown {
            std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))
                .map_err(|e| err("setting the owner of", tmp, e))?;
        }
        // After chown: chown clears set-id bits.
        file.set_permissions(fs::Permissions::from_mode(meta.mode))
            .map_err(|e| err("setting the mode of", tmp, e))?;
        file.sync_all().map_err(|e| err("syncing", tmp, e))
    }

    /// Makes `guest` a symlink to `target`, replacing what is there (a file or another link),
    /// atomically. Idempotent.
    pub fn symlink(&self, guest: &str, target: &str) -> Result<(), String> {
        let path = self.resolve(guest, LastLink::Replace)?;
        if fs::read_link(&path)
            .map(|t| t == Path::new(target))
            .unwrap_or(false)
        {
            return Ok(());
        }
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(d), Some(n)) => (d.to_path_buf(), n.to_string_lossy().into_owned()),
            _ => return Err(format!("{guest} does not name a link")),
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| err("creating directory", &dir, e))?;
        if path.is_dir() && !path.is_symlink() {
            return Err(format!("{} is a directory", path.display()));
        }
        let tmp = dir.join(format!(".{name}.kiln-tmp"));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).map_err(|e| err("creating link", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| err("renaming into place", &path, e))?;
        sync_dir(&dir)
    }

    /// Removes a file if it exists.
    pub fn remove(&self, guest: &str) -> Result<(), String> {
        let path = self.resolve(guest, LastLink::Replace)?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err("removing", &path, e)),
        }
    }
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = String> + '_ {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err("syncing directory", dir, e))
}

/// Whether we run with effective uid 0, read from `/proc/self/status`. Without `/proc` (an
/// init that has not mounted it yet) we assume root: the init runs as root.
pub(crate) fn running_as_root() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kiln-config-fsroot-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = temp_root("links");
        fs::create_dir_all(dir.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", dir.join("lib")).unwrap();
        std::os::unix::fs::symlink("/etc/outside", dir.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", dir.join("usr/up")).unwrap();
        let root = Root::new(&dir, false);
        assert_eq!(
            root.resolve("/lib/x", LastLink::Follow).unwrap(),
            dir.join("usr/lib/x")
        );
        // An absolute link target restarts at the root, not at the host's `/`.
        assert_eq!(
            root.resolve("/abs", LastLink::Follow).unwrap(),
            dir.join("etc/outside")
        );
        assert_eq!(
            root.resolve("/abs", LastLink::Replace).unwrap(),
            dir.join("abs")
        );
        // `..` in a link target stops at the root.
        assert_eq!(
            root.resolve("/usr/up/passwd", LastLink::Follow).unwrap(),
            dir.join("etc/passwd")
        );
        std::os::unix::fs::symlink("loop", dir.join("loop")).unwrap();
        assert!(root
            .resolve("/loop", LastLink::Follow)
            .unwrap_err()
            .contains("too many symlinks"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_is_atomic_and_sets_mode() {
        let dir = temp_root("write");
        let root = Root::new(&dir, false);
        let meta = Meta {
            mode: 0o640,
            uid: 0,
            gid: 0,
        };
        let p = root
            .write("/a/b/c.txt", b"one", meta, LastLink::Follow)
            .unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        root.write("/a/b/c.txt", b"two", meta, LastLink::Follow)
            .unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["c.txt"], "no temp file left behind");
        root.symlink("/l", "/dev/null").unwrap();
        root.symlink("/l", "/dev/null").unwrap();
        assert_eq!(
            fs::read_link(dir.join("l")).unwrap(),
            Path::new("/dev/null")
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
