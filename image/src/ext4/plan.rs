//! From a [`Tree`] to the list of inodes to write: numbers in tree order, link counts,
//! directory entries and where extended attributes go. Independent of the filesystem size.

use std::collections::HashMap;

use super::format::{self, ftype, DirEnt, Xattr};
use super::Ext4Error;
use crate::tree::{Content, Kind, Meta, Tree, TreePath, MAX_NAME_LEN};

pub(crate) const ROOT_INO: u32 = 2;
pub(crate) const JOURNAL_INO: u32 = 8;
pub(crate) const LOST_FOUND_INO: u32 = 11;
pub(crate) const FIRST_INO: u32 = 11;
/// lost+found gets 4 blocks up front, like mke2fs, so e2fsck can reconnect files into it
/// without allocating.
pub(crate) const LOST_FOUND_BLOCKS: u64 = 4;
/// The longest symlink target: one block, less the terminating NUL.
const MAX_SYMLINK: usize = 4095;
/// Targets shorter than this live in the inode itself ("fast" symlinks).
pub(crate) const FAST_SYMLINK_MAX: usize = 59;

/// What an inode holds.
pub(crate) enum Body<'t> {
    File(&'t Content),
    /// Entries including `.` and `..`; `extra_blocks` empty blocks follow (lost+found).
    Dir {
        entries: Vec<DirEnt>,
        extra_blocks: u64,
    },
    Symlink(&'t [u8]),
    Device {
        block: bool,
        major: u32,
        minor: u32,
    },
    Fifo,
    Socket,
}

/// Where an inode's extended attributes go.
pub(crate) enum XattrPlace {
    None,
    Inline(Vec<Xattr>),
    Block(Vec<Xattr>),
}

pub(crate) struct Node<'t> {
    pub ino: u32,
    pub path: TreePath,
    pub meta: Meta,
    pub body: Body<'t>,
    pub links: u32,
    pub xattrs: XattrPlace,
}

/// All inodes from 11 (lost+found) up, plus the root, in inode order.
pub(crate) struct Plan<'t> {
    pub root: Node<'t>,
    /// Inodes 11, 12, ... in order: `nodes[i].ino == 11 + i`.
    pub nodes: Vec<Node<'t>>,
}

impl Plan<'_> {
    /// The highest inode number in use, which is also how many are in use (reserved ones
    /// included).
    pub fn inodes_used(&self) -> u64 {
        FIRST_INO as u64 + self.nodes.len() as u64 - 1
    }
}

fn kind_ftype(kind: &Kind) -> u8 {
    match kind {
        Kind::File(_) | Kind::HardLink(_) => ftype::REG,
        Kind::Dir => ftype::DIR,
        Kind::Symlink(_) => ftype::LNK,
        Kind::CharDevice { .. } => ftype::CHR,
        Kind::BlockDevice { .. } => ftype::BLK,
        Kind::Fifo => ftype::FIFO,
        Kind::Socket => ftype::SOCK,
    }
}

pub(crate) fn plan(tree: &Tree) -> Result<Plan<'_>, Ext4Error> {
    tree.validate()?;
    let lost_found = TreePath::new("lost+found")?;
    let numbers = number_inodes(tree, &lost_found)?;
    let ino_of = |p: &TreePath| -> u32 {
        match &tree.get_at(p).map(|e| &e.kind) {
            Some(Kind::HardLink(target)) => numbers[target],
            _ => numbers[p],
        }
    };
    // Children in tree order are sorted by name within each directory.
    let mut children: HashMap<u32, Vec<DirEnt>> = HashMap::new();
    let mut extra_links: HashMap<u32, u32> = HashMap::new();
    for (path, entry) in tree.iter() {
        let Some(parent) = path.parent() else {
            continue;
        };
        if path.name().len() > MAX_NAME_LEN {
            return Err(Ext4Error::NameTooLong {
                path: path.display(),
                len: path.name().len(),
            });
        }
        let ino = ino_of(path);
        let kind = match &entry.kind {
            Kind::HardLink(target) => {
                *extra_links.entry(ino).or_default() += 1;
                &tree.get_at(target).expect("validated").kind
            }
            k => k,
        };
        children.entry(numbers[&parent]).or_default().push(DirEnt {
            name: path.name().to_vec(),
            ino,
            ftype: kind_ftype(kind),
        });
    }
    let mut nodes: Vec<Option<Node>> = Vec::new();
    let mut root = None;
    let lf_in_tree = tree.get_at(&lost_found).is_some();
    if !lf_in_tree {
        let meta = Meta::root(
            0o700,
            tree.get_at(&TreePath::root()).expect("root").meta.mtime,
        );
        let lf = TreePath::new("lost+found")?;
        let ents = children.entry(ROOT_INO).or_default();
        ents.insert(
            0,
            DirEnt {
                name: b"lost+found".to_vec(),
                ino: LOST_FOUND_INO,
                ftype: ftype::DIR,
            },
        );
        nodes.push(Some(dir_node(
            LOST_FOUND_INO,
            ROOT_INO,
            lf,
            meta,
            Vec::new(),
        )?));
    }
    for (path, entry) in tree.iter() {
        if matches!(entry.kind, Kind::HardLink(_)) {
            continue;
        }
        let ino = numbers[path];
        let node = match &entry.kind {
            Kind::Dir => {
                let parent = path.parent().map_or(ROOT_INO, |p| numbers[&p]);
                let own = children.remove(&ino).unwrap_or_default();
                dir_node(ino, parent, path.clone(), entry.meta.clone(), own)?
            }
            kind => leaf_node(ino, path, entry.meta.clone(), kind, &extra_links)?,
        };
        if ino == ROOT_INO {
            root = Some(node);
        } else {
            let i = (ino - FIRST_INO) as usize;
            if nodes.len() <= i {
                nodes.resize_with(i + 1, || None);
            }
            nodes[i] = Some(node);
        }
    }
    let nodes: Vec<Node> = nodes
        .into_iter()
        .map(|n| n.expect("inode numbers are dense"))
        .collect();
    Ok(Plan {
        root: root.expect("the tree has a root"),
        nodes,
    })
}

/// Root is 2, lost+found 11, everything else from 12 in tree order; hard links get none.
fn number_inodes(tree: &Tree, lost_found: &TreePath) -> Result<HashMap<TreePath, u32>, Ext4Error> {
    let mut numbers = HashMap::with_capacity(tree.len());
    let mut next: u32 = LOST_FOUND_INO + 1;
    for (path, entry) in tree.iter() {
        let ino = if path.is_root() {
            ROOT_INO
        } else if path == lost_found {
            if !entry.is_dir() {
                return Err(Ext4Error::LostFoundNotDir);
            }
            LOST_FOUND_INO
        } else if matches!(entry.kind, Kind::HardLink(_)) {
            continue;
        } else {
            let n = next;
            next = next.checked_add(1).ok_or(Ext4Error::TooManyInodes)?;
            n
        };
        numbers.insert(path.clone(), ino);
    }
    Ok(numbers)
}

fn dir_node<'t>(
    ino: u32,
    parent: u32,
    path: TreePath,
    meta: Meta,
    own: Vec<DirEnt>,
) -> Result<Node<'t>, Ext4Error> {
    let subdirs = own.iter().filter(|e| e.ftype == ftype::DIR).count() as u64;
    let mut entries = Vec::with_capacity(own.len() + 2);
    entries.push(DirEnt {
        name: b".".to_vec(),
        ino,
        ftype: ftype::DIR,
    });
    entries.push(DirEnt {
        name: b"..".to_vec(),
        ino: parent,
        ftype: ftype::DIR,
    });
    entries.extend(own);
    // dir_nlink: a count that would overflow is 1, meaning "many".
    let links = if 2 + subdirs >= 65000 {
        1
    } else {
        2 + subdirs as u32
    };
    let extra_blocks = if ino == LOST_FOUND_INO {
        LOST_FOUND_BLOCKS - 1
    } else {
        0
    };
    let xattrs = place_xattrs(&path, &meta)?;
    Ok(Node {
        ino,
        path,
        meta,
        body: Body::Dir {
            entries,
            extra_blocks,
        },
        links,
        xattrs,
    })
}

fn leaf_node<'t>(
    ino: u32,
    path: &TreePath,
    meta: Meta,
    kind: &'t Kind,
    extra_links: &HashMap<u32, u32>,
) -> Result<Node<'t>, Ext4Error> {
    let body = match kind {
        Kind::File(c) => Body::File(c),
        Kind::Symlink(target) => {
            if target.is_empty() || target.len() > MAX_SYMLINK {
                return Err(Ext4Error::BadSymlink {
                    path: path.display(),
                    len: target.len(),
                });
            }
            Body::Symlink(target)
        }
        Kind::CharDevice { major, minor } => Body::Device {
            block: false,
            major: *major,
            minor: *minor,
        },
        Kind::BlockDevice { major, minor } => Body::Device {
            block: true,
            major: *major,
            minor: *minor,
        },
        Kind::Fifo => Body::Fifo,
        Kind::Socket => Body::Socket,
        Kind::Dir | Kind::HardLink(_) => unreachable!("handled by the caller"),
    };
    let links = 1 + extra_links.get(&ino).copied().unwrap_or(0);
    if links > u16::MAX as u32 {
        return Err(Ext4Error::TooManyLinks {
            path: path.display(),
            links,
        });
    }
    let xattrs = place_xattrs(path, &meta)?;
    Ok(Node {
        ino,
        path: path.clone(),
        meta,
        body,
        links,
        xattrs,
    })
}

/// In the inode when they fit (the common case: one `security.capability`), else one block.
fn place_xattrs(path: &TreePath, meta: &Meta) -> Result<XattrPlace, Ext4Error> {
    if meta.xattrs.is_empty() {
        return Ok(XattrPlace::None);
    }
    let mut xs = Vec::with_capacity(meta.xattrs.len());
    for (name, value) in &meta.xattrs {
        let (index, rest) = format::xattr_index(name).ok_or_else(|| Ext4Error::XattrName {
            path: path.display(),
            name: name.clone(),
        })?;
        if rest.len() > 255 {
            return Err(Ext4Error::XattrName {
                path: path.display(),
                name: name.clone(),
            });
        }
        xs.push(Xattr {
            index,
            name: rest.as_bytes().to_vec(),
            value: value.clone(),
        });
    }
    // Sorted as the kernel searches xattr blocks: by index, name length, then name.
    xs.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));
    let size = format::xattrs_size(&xs);
    if size <= format::INLINE_XATTR_SPACE {
        Ok(XattrPlace::Inline(xs))
    } else if size <= format::XATTR_BLOCK_SPACE {
        Ok(XattrPlace::Block(xs))
    } else {
        Err(Ext4Error::XattrTooBig {
            path: path.display(),
            size,
        })
    }
}
