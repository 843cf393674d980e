//! The initramfs archive: a [`Tree`] as a cpio "newc" archive (the format the kernel unpacks
//! into its rootfs, see the kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`),
//! optionally zstd-compressed.
//!
//! Each entry is a 110-byte ASCII header (`070701` and thirteen 8-digit hex fields), the name
//! with its NUL padded to 4 bytes, then the data padded to 4 bytes; a `TRAILER!!!` entry ends the
//! archive. Entries come in [`Tree::iter`] order, so every directory precedes its contents.
//! Hard links follow the newc convention: every name carries the same inode number and the
//! number of names as its link count, and only the last name carries the data (the kernel and
//! GNU cpio link the earlier names and fill the file when the data arrives). Inode numbers count
//! up from 1 in tree order, so the same tree always gives the same bytes.

use crate::tree::{Content, Entry, Kind, Meta, Tree, TreeError, TreePath};
use std::collections::BTreeMap;
use std::io::{self, BufWriter, Read, Write};

/// The kernel refuses names (with their NUL) and symlink targets longer than its PATH_MAX.
const PATH_MAX: usize = 4096;
const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &[u8] = b"TRAILER!!!";

const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("invalid tree: {0}")]
    Tree(#[from] TreeError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: the name is {len} bytes; the kernel's initramfs unpacker takes at most {} (PATH_MAX with its NUL)", PATH_MAX - 1)]
    NameTooLong { path: String, len: usize },
    #[error("{path}: symlink target of {len} bytes must be 1 to {} bytes", PATH_MAX - 1)]
    BadSymlinkTarget { path: String, len: usize },
    #[error("{path}: {len} bytes is more than the 4 GiB - 1 a newc header can record")]
    FileTooLarge { path: String, len: u64 },
    #[error("{path}: mtime {mtime} is outside 0..=4294967295, which a newc header cannot record (clamp it with SOURCE_DATE_EPOCH)")]
    BadMtime { path: String, mtime: i64 },
    #[error("{path}: has extended attributes, which newc cannot carry; remove them from the initramfs tree")]
    Xattrs { path: String },
    #[error("{path}: expected {expected} bytes but the content has {actual} (the file changed during the build)")]
    ContentChanged {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("zstd level {level} is outside 1..=19 (higher levels need windows the kernel's decompressor may refuse)")]
    BadZstdLevel { level: i32 },
}

/// Writes `tree` as a newc archive, parents before children, ending with the trailer.
pub fn write_newc(tree: &Tree, out: impl Write) -> Result<(), CpioError> {
    tree.validate()?;
    let inodes = Inodes::plan(tree);
    let mut out = BufWriter::with_capacity(1 << 16, out);
    for (path, entry) in tree.iter() {
        write_entry(tree, &inodes, path, entry, &mut out)?;
    }
    let trailer = Header {
        nlink: 1,
        ..Header::default()
    };
    write_record(&mut out, &trailer, TRAILER).map_err(io_err("writing the trailer"))?;
    out.flush().map_err(io_err("flushing the archive"))
}

/// Writes `tree` as a zstd-compressed newc archive (with a content checksum), ready to be a
/// kernel's initramfs. The encoder is single-threaded, which keeps the bytes reproducible.
#[cfg(feature = "build")]
pub fn write_initramfs(tree: &Tree, out: impl Write, zstd_level: i32) -> Result<(), CpioError> {
    if !(1..=19).contains(&zstd_level) {
        return Err(CpioError::BadZstdLevel { level: zstd_level });
    }
    let mut encoder =
        zstd::stream::Encoder::new(out, zstd_level).map_err(io_err("starting zstd"))?;
    encoder
        .include_checksum(true)
        .map_err(io_err("configuring zstd"))?;
    write_newc(tree, &mut encoder)?;
    encoder.finish().map_err(io_err("finishing zstd"))?;
    Ok(())
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> CpioError {
    let context = context.into();
    move |source| CpioError::Io { context, source }
}

/// Inode numbers and link counts, decided before writing so that hard links agree.
struct Inodes<'t> {
    /// By the path that owns the inode (a hard link's target, or the entry itself).
    ino: BTreeMap<&'t TreePath, u32>,
    names: BTreeMap<&'t TreePath, u32>,
    /// The name, in tree order, that carries the data.
    last_name: BTreeMap<&'t TreePath, &'t TreePath>,
    /// Subdirectories per directory, for the directories' link counts.
    subdirs: BTreeMap<TreePath, u32>,
}

impl<'t> Inodes<'t> {
    fn plan(tree: &'t Tree) -> Self {
        let mut plan = Inodes {
            ino: BTreeMap::new(),
            names: BTreeMap::new(),
            last_name: BTreeMap::new(),
            subdirs: BTreeMap::new(),
        };
        for (path, entry) in tree.iter() {
            let owner = inode_owner(tree, path, entry);
            let next = plan.ino.len() as u32 + 1;
            plan.ino.entry(owner).or_insert(next);
            *plan.names.entry(owner).or_default() += 1;
            plan.last_name.insert(owner, path);
            if let (true, Some(parent)) = (entry.is_dir(), path.parent()) {
                *plan.subdirs.entry(parent).or_default() += 1;
            }
        }
        plan
    }
}

/// The path whose inode `path` uses: its hard-link target, except for links to symlinks, which
/// neither the kernel nor GNU cpio link, so they become symlinks of their own.
fn inode_owner<'t>(tree: &'t Tree, path: &'t TreePath, entry: &'t Entry) -> &'t TreePath {
    match &entry.kind {
        Kind::HardLink(target) => match tree.get_at(target) {
            Some(Entry {
                kind: Kind::Symlink(_),
                ..
            }) => path,
            Some(_) => target,
            None => path,
        },
        _ => path,
    }
}

/// The thirteen fields of a newc header (the check field is always 0).
#[derive(Default)]
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdevmajor: u32,
    rdevminor: u32,
}

impl Header {
    fn encode(&self, namesize: u32) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..6].copy_from_slice(MAGIC);
        // devmajor, devminor (the device holding the file) and check are 0.
        let fields = [
            self.ino,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.mtime,
            self.filesize,
            0,
            0,
            self.rdevmajor,
            self.rdevminor,
            namesize,
            0,
        ];
        for (i, v) in fields.iter().enumerate() {
            let text = format!("{v:08X}");
            h[6 + 8 * i..14 + 8 * i].copy_from_slice(text.as_bytes());
        }
        h
    }
}

/// Header, name, NUL and padding to a multiple of 4.
fn write_record(out: &mut impl Write, header: &Header, name: &[u8]) -> io::Result<()> {
    let namesize = name.len() + 1;
    out.write_all(&header.encode(namesize as u32))?;
    out.write_all(name)?;
    out.write_all(&[0u8; 4][..1 + pad4(HEADER_LEN + namesize)])
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// What one name's record holds besides the header: nothing, bytes, or a file's content.
enum Body<'a> {
    None,
    Bytes(&'a [u8]),
    Content(&'a Content),
}

fn write_entry(
    tree: &Tree,
    inodes: &Inodes,
    path: &TreePath,
    entry: &Entry,
    out: &mut impl Write,
) -> Result<(), CpioError> {
    let owner = inode_owner(tree, path, entry);
    // A hard link takes everything from its target's inode; checked by Tree::validate.
    let inode = tree.get_at(owner).unwrap_or(entry);
    let inode = match &inode.kind {
        Kind::HardLink(target) => tree.get_at(target).unwrap_or(inode),
        _ => inode,
    };
    let name = if path.is_root() {
        b"."
    } else {
        path.as_bytes()
    };
    if name.len() + 1 > PATH_MAX {
        return Err(CpioError::NameTooLong {
            path: path.display(),
            len: name.len(),
        });
    }
    let carries_data = inodes.last_name.get(owner) == Some(&path);
    let (mode_type, body, rdev) = describe(path, &inode.kind, carries_data)?;
    let header = Header {
        ino: inodes.ino.get(owner).copied().unwrap_or(0),
        mode: mode_type | u32::from(inode.meta.mode & 0o7777),
        uid: inode.meta.uid,
        gid: inode.meta.gid,
        nlink: match inode.kind {
            Kind::Dir => 2 + inodes.subdirs.get(path).copied().unwrap_or(0),
            _ => inodes.names.get(owner).copied().unwrap_or(1),
        },
        mtime: mtime_of(path, &inode.meta)?,
        filesize: body_len(path, &body)?,
        rdevmajor: rdev.0,
        rdevminor: rdev.1,
    };
    let context = || format!("writing {}", path.display());
    write_record(out, &header, name).map_err(io_err(context()))?;
    write_body(path, &body, header.filesize, out)
}

/// The file-type bits, the data and the device number of an inode.
fn describe<'a>(
    path: &TreePath,
    kind: &'a Kind,
    carries_data: bool,
) -> Result<(u32, Body<'a>, (u32, u32)), CpioError> {
    Ok(match kind {
        Kind::File(c) if carries_data => (S_IFREG, Body::Content(c), (0, 0)),
        Kind::File(_) => (S_IFREG, Body::None, (0, 0)),
        Kind::Dir => (S_IFDIR, Body::None, (0, 0)),
        Kind::Symlink(target) => {
            if target.is_empty() || target.len() >= PATH_MAX {
                return Err(CpioError::BadSymlinkTarget {
                    path: path.display(),
                    len: target.len(),
                });
            }
            (S_IFLNK, Body::Bytes(target), (0, 0))
        }
        Kind::CharDevice { major, minor } => (S_IFCHR, Body::None, (*major, *minor)),
        Kind::BlockDevice { major, minor } => (S_IFBLK, Body::None, (*major, *minor)),
        Kind::Fifo => (S_IFIFO, Body::None, (0, 0)),
        Kind::Socket => (S_IFSOCK, Body::None, (0, 0)),
        // Resolved to the target by the caller; a link to a link is refused by validate().
        Kind::HardLink(_) => {
            return Err(CpioError::Tree(TreeError::BadLinkTarget {
                path: path.display(),
                target: "another hard link".into(),
            }))
        }
    })
}

fn mtime_of(path: &TreePath, meta: &Meta) -> Result<u32, CpioError> {
    if !meta.xattrs.is_empty() {
        return Err(CpioError::Xattrs {
            path: path.display(),
        });
    }
    u32::try_from(meta.mtime).map_err(|_| CpioError::BadMtime {
        path: path.display(),
        mtime: meta.mtime,
    })
}

fn body_len(path: &TreePath, body: &Body) -> Result<u32, CpioError> {
    let len = match body {
        Body::None => 0,
        Body::Bytes(b) => b.len() as u64,
        Body::Content(c) => c.len(),
    };
    u32::try_from(len).map_err(|_| CpioError::FileTooLarge {
        path: path.display(),
        len,
    })
}

/// The data and its padding; a host file must still have the length recorded in the tree.
fn write_body(
    path: &TreePath,
    body: &Body,
    len: u32,
    out: &mut impl Write,
) -> Result<(), CpioError> {
    let context = || format!("writing the data of {}", path.display());
    match body {
        Body::None => return Ok(()),
        Body::Bytes(b) => out.write_all(b).map_err(io_err(context()))?,
        Body::Content(c) => {
            let reader = c
                .open()
                .map_err(io_err(format!("reading {}", path.display())))?;
            // One byte more than expected tells a grown file from an unchanged one.
            let copied =
                io::copy(&mut reader.take(u64::from(len) + 1), out).map_err(io_err(context()))?;
            if copied != u64::from(len) {
                return Err(CpioError::ContentChanged {
                    path: path.display(),
                    expected: u64::from(len),
                    actual: copied,
                });
            }
        }
    }
    out.write_all(&[0u8; 3][..pad4(len as usize)])
        .map_err(io_err(context()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::require_tool;
    use crate::tree::sample_tree;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::Path;
    use std::process::{Command, Stdio};

    /// The sample tree without xattrs (newc has no place for them) and with a second hard
    /// link whose name sorts before its target, so the data-carrying name is not the target.
    fn tree() -> Tree {
        let mut t = sample_tree();
        for (_, e) in t.iter_mut() {
            e.meta.xattrs.clear();
        }
        let link = Entry::new(
            Kind::HardLink(TreePath::new("usr/bin/ping").unwrap()),
            Meta::root(0o755, 0),
        );
        t.insert("usr/bin/aping", link).unwrap();
        t.insert("run/sock", Entry::new(Kind::Socket, Meta::root(0o755, 5)))
            .unwrap();
        t
    }

    fn archive(t: &Tree) -> Vec<u8> {
        let mut out = Vec::new();
        write_newc(t, &mut out).unwrap();
        out
    }

    fn run_with_input(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = input.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn mode_string(type_char: char, mode: u16) -> String {
        let mut s = String::from(type_char);
        for (shift, special, lower, upper) in [
            (6, 0o4000, 's', 'S'),
            (3, 0o2000, 's', 'S'),
            (0, 0o1000, 't', 'T'),
        ] {
            let bits = (mode >> shift) & 7;
            s.push(if bits & 4 != 0 { 'r' } else { '-' });
            s.push(if bits & 2 != 0 { 'w' } else { '-' });
            s.push(match (bits & 1 != 0, mode & special != 0) {
                (true, true) => lower,
                (false, true) => upper,
                (true, false) => 'x',
                (false, false) => '-',
            });
        }
        s
    }

    /// The `cpio -itv --numeric-uid-gid` line we expect for one name, without the date.
    fn expected_line(
        t: &Tree,
        path: &TreePath,
        entry: &Entry,
        carries_data: bool,
        nlink: u32,
    ) -> String {
        let inode = match &entry.kind {
            Kind::HardLink(target) => t.get_at(target).unwrap(),
            _ => entry,
        };
        let m = &inode.meta;
        let (c, size, suffix) = match &inode.kind {
            Kind::File(content) => (
                '-',
                if carries_data {
                    content.len().to_string()
                } else {
                    "0".into()
                },
                String::new(),
            ),
            Kind::Dir => ('d', "0".into(), String::new()),
            Kind::Symlink(target) => (
                'l',
                target.len().to_string(),
                format!(" -> {}", String::from_utf8_lossy(target)),
            ),
            Kind::CharDevice { major, minor } => ('c', format!("{major}, {minor}"), String::new()),
            Kind::BlockDevice { major, minor } => ('b', format!("{major}, {minor}"), String::new()),
            Kind::Fifo => ('p', "0".into(), String::new()),
            Kind::Socket => ('s', "0".into(), String::new()),
            Kind::HardLink(_) => unreachable!(),
        };
        let name = if path.is_root() {
            ".".to_string()
        } else {
            String::from_utf8_lossy(path.as_bytes()).into_owned()
        };
        format!(
            "{} {nlink} {} {} {size} {name}{suffix}",
            mode_string(c, m.mode),
            m.uid,
            m.gid
        )
    }

    /// A `cpio -itv` line with the date (three fields after the size) removed and spaces squeezed.
    fn normalise(line: &str) -> String {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Device numbers print as "5,   1": one more field before the date.
        let size_fields = if f[4].ends_with(',') { 2 } else { 1 };
        let mut kept: Vec<&str> = f[..4 + size_fields].to_vec();
        kept.extend(&f[4 + size_fields + 3..]);
        kept.join(" ")
    }

    #[test]
    fn gnu_cpio_lists_exactly_the_tree() {
        let t = tree();
        let bytes = archive(&t);
        let cpio = require_tool("cpio", "cpio");
        let listing = run_with_input(
            Command::new(&cpio).args(["-itv", "--numeric-uid-gid", "--quiet"]),
            &bytes,
        );
        let got: Vec<String> = String::from_utf8(listing)
            .unwrap()
            .lines()
            .map(normalise)
            .collect();
        let inodes = Inodes::plan(&t);
        let want: Vec<String> = t
            .iter()
            .map(|(p, e)| {
                let owner = inode_owner(&t, p, e);
                let nlink = match e.kind {
                    Kind::Dir => 2 + inodes.subdirs.get(p).copied().unwrap_or(0),
                    _ => inodes.names[owner],
                };
                expected_line(&t, p, e, inodes.last_name[owner] == p, nlink)
            })
            .collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w);
        }
        // Spot checks that do not go through the helpers above.
        assert!(
            got.contains(&"crw------- 1 0 0 5, 1 dev/console".to_string()),
            "{got:?}"
        );
        assert!(got.contains(&"-rw-r----- 1 1000 100 5 home/core/.profile".to_string()));
        assert!(got.contains(&"-rwsr-xr-x 3 0 0 0 usr/bin/aping".to_string()));
        assert!(got.contains(&"-rwsr-xr-x 3 0 0 15 usr/bin/ping6".to_string()));
        // The root has six subdirectories: dev etc home run usr var.
        assert_eq!(got[0], "drwxr-xr-x 8 0 0 0 .");
    }

    #[test]
    fn gnu_cpio_extracts_contents_and_hard_links() {
        let t = tree();
        let bytes = archive(&t);
        let dir = tempfile::tempdir().unwrap();
        let cpio = require_tool("cpio", "cpio");
        run_with_input(
            Command::new(&cpio)
                .args(["-idm", "--quiet"])
                .current_dir(dir.path()),
            &bytes,
        );
        for (path, entry) in t.iter() {
            let on_disk = dir
                .path()
                .join(String::from_utf8_lossy(path.as_bytes()).as_ref());
            let meta = std::fs::symlink_metadata(&on_disk).unwrap();
            match &entry.kind {
                Kind::File(c) => assert_eq!(
                    std::fs::read(&on_disk).unwrap(),
                    c.read_all().unwrap(),
                    "{path}"
                ),
                Kind::Symlink(target) => assert_eq!(
                    std::fs::read_link(&on_disk)
                        .unwrap()
                        .as_os_str()
                        .as_encoded_bytes(),
                    &target[..]
                ),
                Kind::CharDevice { major, minor } => {
                    assert!(meta.file_type().is_char_device());
                    assert_eq!(meta.rdev(), (u64::from(*major) << 8) | u64::from(*minor));
                }
                Kind::Fifo => assert!(meta.file_type().is_fifo()),
                _ => {}
            }
            // GNU cpio sets a directory's time before filling it (so the time does not
            // survive), and does not set symlinks' times: check the others.
            if !matches!(entry.kind, Kind::Symlink(_) | Kind::Dir) {
                assert_eq!(meta.mtime(), entry_meta(&t, entry).mtime, "{path}");
                assert_eq!(
                    meta.mode() & 0o7777,
                    u32::from(entry_meta(&t, entry).mode),
                    "{path}"
                );
            }
        }
        let ino = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().ino();
        assert_eq!(ino("usr/bin/ping"), ino("usr/bin/ping6"));
        assert_eq!(ino("usr/bin/ping"), ino("usr/bin/aping"));
        assert_eq!(
            std::fs::metadata(dir.path().join("usr/bin/ping"))
                .unwrap()
                .nlink(),
            3
        );
        assert_ne!(ino("usr/bin/ping"), ino("etc/hostname"));
    }

    fn entry_meta<'a>(t: &'a Tree, e: &'a Entry) -> &'a Meta {
        match &e.kind {
            Kind::HardLink(target) => &t.get_at(target).unwrap().meta,
            _ => &e.meta,
        }
    }

    #[test]
    fn identical_bytes_and_stable_inodes() {
        let a = archive(&tree());
        assert!(a == archive(&tree()));
        assert_eq!(&a[..6], b"070701");
        assert_eq!(a.len() % 4, 0);
        // Root is inode 1, named ".".
        assert_eq!(&a[6..14], b"00000001");
        assert_eq!(&a[110..112], b".\0");
        // 110-byte header + "TRAILER!!!" + NUL, padded to 124.
        assert!(a.ends_with(b"00000000TRAILER!!!\0\0\0\0"));
    }

    #[cfg(feature = "build")]
    #[test]
    fn zstd_then_cpio() {
        let t = tree();
        let mut z = Vec::new();
        write_initramfs(&t, &mut z, 3).unwrap();
        let mut z2 = Vec::new();
        write_initramfs(&t, &mut z2, 3).unwrap();
        assert!(z == z2);
        let zstd = require_tool("zstd", "zstd");
        let plain = run_with_input(Command::new(&zstd).args(["-d", "-c", "-q"]), &z);
        assert!(plain == archive(&t));
        let cpio = require_tool("cpio", "cpio");
        let listing = run_with_input(Command::new(&cpio).args(["-it", "--quiet"]), &plain);
        assert_eq!(String::from_utf8(listing).unwrap().lines().count(), t.len());
        assert!(matches!(
            write_initramfs(&t, Vec::new(), 22),
            Err(CpioError::BadZstdLevel { level: 22 })
        ));
    }

    #[test]
    fn hard_links_to_special_files() {
        let mut t = Tree::new(Meta::root(0o755, 0));
        let target = |p: &str| Kind::HardLink(TreePath::new(p).unwrap());
        t.insert("fifo", Entry::new(Kind::Fifo, Meta::root(0o640, 7)))
            .unwrap();
        t.insert("fifo2", Entry::new(target("fifo"), Meta::root(0o600, 0)))
            .unwrap();
        t.insert(
            "sl",
            Entry::new(Kind::Symlink(b"fifo".to_vec()), Meta::root(0o777, 0)),
        )
        .unwrap();
        t.insert("sl2", Entry::new(target("sl"), Meta::root(0o777, 0)))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cpio = require_tool("cpio", "cpio");
        run_with_input(
            Command::new(&cpio)
                .args(["-idm", "--quiet"])
                .current_dir(dir.path()),
            &archive(&t),
        );
        let meta = |p: &str| std::fs::symlink_metadata(dir.path().join(p)).unwrap();
        // The fifo's two names share one inode with the target's metadata.
        assert_eq!(meta("fifo").ino(), meta("fifo2").ino());
        assert_eq!(meta("fifo2").mode() & 0o7777, 0o640);
        assert_eq!(meta("fifo2").nlink(), 2);
        // A hard link to a symlink becomes a second symlink with the same target.
        assert_ne!(meta("sl").ino(), meta("sl2").ino());
        assert_eq!(
            std::fs::read_link(dir.path().join("sl2")).unwrap(),
            Path::new("fifo")
        );
    }

    #[test]
    fn bad_trees_are_refused_with_the_path() {
        let dir_meta = Meta::root(0o755, 0);
        let mut t = Tree::new(dir_meta.clone());
        let deep = vec!["d".repeat(255); 17].join("/");
        t.insert_with_parents(
            &deep,
            Entry::new(Kind::Fifo, Meta::root(0o644, 0)),
            &dir_meta,
        )
        .unwrap();
        let err = write_newc(&t, Vec::new()).unwrap_err();
        assert!(matches!(err, CpioError::NameTooLong { .. }), "{err}");

        let mut t = Tree::new(dir_meta.clone());
        let mut m = Meta::root(0o644, -1);
        t.insert("old", Entry::new(Kind::Fifo, m.clone())).unwrap();
        assert!(matches!(
            write_newc(&t, Vec::new()),
            Err(CpioError::BadMtime { mtime: -1, .. })
        ));
        m.mtime = 0;
        m.xattrs.insert("user.x".into(), vec![1]);
        t.insert("old", Entry::new(Kind::Fifo, m)).unwrap();
        assert!(write_newc(&t, Vec::new())
            .unwrap_err()
            .to_string()
            .contains("/old: has extended attributes"));

        let mut t = Tree::new(dir_meta.clone());
        t.insert(
            "l",
            Entry::new(Kind::Symlink(Vec::new()), Meta::root(0o777, 0)),
        )
        .unwrap();
        assert!(matches!(
            write_newc(&t, Vec::new()),
            Err(CpioError::BadSymlinkTarget { len: 0, .. })
        ));

        let mut t = Tree::new(dir_meta);
        t.insert(
            "h",
            Entry::new(
                Kind::HardLink(TreePath::new("nope").unwrap()),
                Meta::root(0o644, 0),
            ),
        )
        .unwrap();
        assert!(matches!(
            write_newc(&t, Vec::new()),
            Err(CpioError::Tree(_))
        ));
    }

    #[test]
    fn host_file_that_changed_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let mut t = Tree::new(Meta::root(0o755, 0));
        t.insert(
            "f",
            Entry::new(Kind::File(Content::host(&p).unwrap()), Meta::root(0o644, 0)),
        )
        .unwrap();
        assert!(write_newc(&t, Vec::new()).is_ok());
        std::fs::write(&p, b"abcd").unwrap();
        let err = write_newc(&t, Vec::new()).unwrap_err();
        assert!(
            matches!(
                err,
                CpioError::ContentChanged {
                    expected: 3,
                    actual: 4,
                    ..
                }
            ),
            "{err}"
        );
    }
}
