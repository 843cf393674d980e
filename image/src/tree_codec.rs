//! A [`Tree`] as bytes and back, for the build's stage cache; and the SHA-256 of a tree's
//! entries in the same encoding, which is how a stage names what it read from a tree.
//!
//! The encoding is private to Kiln and versioned by its first line. Entries follow in the
//! tree's order, each: its path, kind, metadata and, for a file, its content; every
//! variable-length field is preceded by its length (u32 little-endian, u64 for content), so
//! no two different trees encode to the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::Arc;

use kiln_contract::digest::Hashing;

use crate::tree::{Content, Entry, Kind, Meta, Tree, TreePath};

/// The first bytes of an encoded tree, with the format's version.
const MAGIC: &[u8] = b"kiln-tree 1\n";

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not an encoded tree (no `kiln-tree 1` header)")]
    Magic,
    #[error("encoded tree ends inside an entry at byte {0}")]
    Truncated(usize),
    #[error("encoded tree has an unknown entry kind {kind} at byte {at}")]
    Kind { kind: u8, at: usize },
    #[error("encoded tree holds a bad entry: {0}")]
    Entry(#[from] crate::tree::TreeError),
    #[error("reading a file of the tree: {0}")]
    Io(#[from] io::Error),
}

/// Every entry of `tree`, host file contents read in.
pub fn encode(tree: &Tree) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(tree.content_bytes() as usize + tree.len() * 64);
    out.extend_from_slice(MAGIC);
    for (path, entry) in tree.iter() {
        write_entry(&mut out, path, entry)?;
    }
    Ok(out)
}

/// The tree [`encode`] made.
pub fn decode(bytes: &[u8]) -> Result<Tree, CodecError> {
    let mut r = Cursor { bytes, at: 0 };
    if r.take(MAGIC.len())? != MAGIC {
        return Err(CodecError::Magic);
    }
    let mut entries = Vec::new();
    while r.at < bytes.len() {
        let path = TreePath::new(r.field()?)?;
        let at = r.at;
        let kind = match r.take(1)?[0] {
            b'f' => Kind::File(Content::Bytes(Arc::from(r.content()?))),
            b'd' => Kind::Dir,
            b'l' => Kind::Symlink(r.field()?.to_vec()),
            b'c' => Kind::CharDevice {
                major: r.u32()?,
                minor: r.u32()?,
            },
            b'b' => Kind::BlockDevice {
                major: r.u32()?,
                minor: r.u32()?,
            },
            b'p' => Kind::Fifo,
            b's' => Kind::Socket,
            b'h' => Kind::HardLink(TreePath::new(r.field()?)?),
            kind => return Err(CodecError::Kind { kind, at }),
        };
        let mode = u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes"));
        let (uid, gid) = (r.u32()?, r.u32()?);
        let mtime = i64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
        let mut xattrs = BTreeMap::new();
        for _ in 0..r.u32()? {
            let name = String::from_utf8_lossy(r.field()?).into_owned();
            xattrs.insert(name, r.field()?.to_vec());
        }
        let meta = Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        };
        entries.push((path, Entry::new(kind, meta)));
    }
    let mut entries = entries.into_iter();
    let root = match entries.next() {
        Some((path, entry)) if path.is_root() => entry.meta,
        _ => return Err(CodecError::Truncated(r.at)),
    };
    let mut tree = Tree::new(root);
    for (path, entry) in entries {
        tree.insert_at(path, entry)?;
    }
    Ok(tree)
}

/// The SHA-256 of the entries at or below each of `prefixes` (in the tree's order, as
/// [`encode`] writes them): what a stage that reads only those parts of a tree depends on.
pub fn digest_under(tree: &Tree, prefixes: &[&str]) -> Result<[u8; 32], CodecError> {
    let mut hasher = Hashing::new(io::sink());
    for (path, entry) in tree.iter() {
        let p = path.as_bytes();
        let wanted = prefixes.iter().any(|pre| {
            let pre = pre.as_bytes();
            p == pre || (p.starts_with(pre) && p.get(pre.len()) == Some(&b'/'))
        });
        if wanted {
            write_entry(&mut hasher, path, entry)?;
        }
    }
    Ok(hasher.finish().0)
}

fn write_entry(out: &mut impl Write, path: &TreePath, entry: &Entry) -> Result<(), CodecError> {
    field(out, path.as_bytes())?;
    match &entry.kind {
        Kind::File(content) => {
            out.write_all(b"f")?;
            out.write_all(&content.len().to_le_bytes())?;
            let copied = io::copy(&mut content.open()?, out)?;
            if copied != content.len() {
                return Err(CodecError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} changed size: expected {} bytes, read {copied}",
                        path.display(),
                        content.len()
                    ),
                )));
            }
        }
        Kind::Dir => out.write_all(b"d")?,
        Kind::Symlink(target) => {
            out.write_all(b"l")?;
            field(out, target)?;
        }
        Kind::CharDevice { major, minor } => {
            out.write_all(b"c")?;
            out.write_all(&major.to_le_bytes())?;
            out.write_all(&minor.to_le_bytes())?;
        }
        Kind::BlockDevice { major, minor } => {
            out.write_all(b"b")?;
            out.write_all(&major.to_le_bytes())?;
            out.write_all(&minor.to_le_bytes())?;
        }
        Kind::Fifo => out.write_all(b"p")?,
        Kind::Socket => out.write_all(b"s")?,
        Kind::HardLink(target) => {
            out.write_all(b"h")?;
            field(out, target.as_bytes())?;
        }
    }
    let m = &entry.meta;
    out.write_all(&m.mode.to_le_bytes())?;
    out.write_all(&m.uid.to_le_bytes())?;
    out.write_all(&m.gid.to_le_bytes())?;
    out.write_all(&m.mtime.to_le_bytes())?;
    out.write_all(&(m.xattrs.len() as u32).to_le_bytes())?;
    for (name, value) in &m.xattrs {
        field(out, name.as_bytes())?;
        field(out, value)?;
    }
    Ok(())
}

fn field(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(CodecError::Truncated(self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn field(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn content(&mut self) -> Result<&'a [u8], CodecError> {
        let n = u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"));
        let n = usize::try_from(n).map_err(|_| CodecError::Truncated(self.at))?;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::sample_tree;

    #[test]
    fn a_tree_comes_back_equal_with_host_contents_read_in() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("f");
        std::fs::write(&host, b"from the host").unwrap();
        let mut tree = sample_tree();
        let mut meta = Meta::root(0o4755, 7);
        meta.xattrs
            .insert("security.capability".into(), vec![1, 0, 0, 2]);
        tree.insert(
            "hostfile",
            Entry::new(Kind::File(Content::host(&host).unwrap()), meta),
        )
        .unwrap();
        let bytes = encode(&tree).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!(back.len(), tree.len());
        for ((p1, e1), (p2, e2)) in tree.iter().zip(back.iter()) {
            assert_eq!(p1, p2);
            assert_eq!(e1.meta, e2.meta, "{p1}");
            match (&e1.kind, &e2.kind) {
                (Kind::File(a), Kind::File(b)) => {
                    assert_eq!(a.read_all().unwrap(), b.read_all().unwrap(), "{p1}")
                }
                (a, b) => assert_eq!(a, b, "{p1}"),
            }
        }
        assert_eq!(encode(&back).unwrap(), bytes, "a second encoding differs");
    }

    #[test]
    fn a_cut_or_foreign_encoding_is_refused() {
        let bytes = encode(&sample_tree()).unwrap();
        for cut in [bytes.len() - 1, bytes.len() / 2, MAGIC.len() + 3] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut} was read");
        }
        assert!(matches!(decode(b"kiln-tree 2\n"), Err(CodecError::Magic)));
    }

    #[test]
    fn the_digest_under_a_prefix_follows_only_its_entries() {
        let tree = sample_tree();
        let first = String::from_utf8(tree.iter().nth(1).unwrap().0.as_bytes().to_vec()).unwrap();
        let top = first.split('/').next().unwrap().to_owned();
        let before = digest_under(&tree, &[&top]).unwrap();
        let mut other = tree.clone();
        other
            .insert("zz-elsewhere", Entry::new(Kind::Dir, Meta::root(0o755, 1)))
            .unwrap();
        assert_eq!(digest_under(&other, &[&top]).unwrap(), before);
        let mut changed = tree.clone();
        changed.get_mut(&first).unwrap().meta.mode ^= 0o1;
        assert_ne!(digest_under(&changed, &[&top]).unwrap(), before);
        // A sibling whose name starts with the prefix is not under it.
        let mut sibling = tree;
        sibling
            .insert(
                format!("{top}x"),
                Entry::new(Kind::Dir, Meta::root(0o755, 1)),
            )
            .unwrap();
        assert_eq!(digest_under(&sibling, &[&top]).unwrap(), before);
    }
}
