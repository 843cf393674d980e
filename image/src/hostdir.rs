//! Reads a directory of the host into a [`Tree`]: for overlays, for tests on real trees, and for
//! anything else that starts as files on disk.
//!
//! Owners are not taken from the host (a build runs as any user): the caller says who owns what.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::tree::{Content, Entry, Kind, Meta, Tree, TreePath};

/// How host metadata becomes tree metadata.
#[derive(Clone, Debug)]
pub struct HostDirOptions {
    pub uid: u32,
    pub gid: u32,
    /// Every mtime is set to this (reproducible builds do not take the checkout's times).
    pub mtime: i64,
}

/// Adds everything below `src` to `tree` under `dest` (created as needed, owned like the rest).
/// Regular files are referenced, not copied; modes come from the host, owners from `opts`.
/// Sockets and device nodes in `src` are refused: overlays have no business carrying them.
pub fn add_host_dir(
    tree: &mut Tree,
    src: &Path,
    dest: &TreePath,
    opts: &HostDirOptions,
) -> io::Result<()> {
    let meta_for = |mode: u32| Meta {
        mode: (mode & 0o7777) as u16,
        uid: opts.uid,
        gid: opts.gid,
        mtime: opts.mtime,
        xattrs: Default::default(),
    };
    let dir_meta = meta_for(0o755);
    tree.create_dirs(dest, &dir_meta)
        .map_err(io::Error::other)?;
    let mut names: Vec<_> = fs::read_dir(src)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", src.display())))?
        .collect::<Result<_, _>>()?;
    names.sort_by_key(|e| e.file_name());
    for dirent in names {
        let path = dirent.path();
        let md = fs::symlink_metadata(&path)?;
        let name = dirent.file_name();
        let target = dest.join(name.as_encoded_bytes()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: {e}", path.display()),
            )
        })?;
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File(Content::Host {
                path: path.clone(),
                len: md.len(),
            })
        } else if ft.is_symlink() {
            Kind::Symlink(fs::read_link(&path)?.into_os_string().into_encoded_bytes())
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: device nodes and sockets are not taken from host directories",
                    path.display()
                ),
            ));
        };
        let is_dir = matches!(kind, Kind::Dir);
        tree.insert_at(target.clone(), Entry::new(kind, meta_for(md.mode())))
            .map_err(io::Error::other)?;
        if is_dir {
            add_host_dir(tree, &path, &target, opts)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn reads_files_dirs_and_links_with_host_modes() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc/kiln")).unwrap();
        fs::write(dir.path().join("etc/kiln/a.conf"), b"x=1\n").unwrap();
        fs::set_permissions(
            dir.path().join("etc/kiln/a.conf"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("kiln/a.conf", dir.path().join("etc/link")).unwrap();
        let mut tree = Tree::new(Meta::root(0o755, 0));
        let opts = HostDirOptions {
            uid: 0,
            gid: 0,
            mtime: 42,
        };
        add_host_dir(
            &mut tree,
            dir.path(),
            &TreePath::new("usr/share").unwrap(),
            &opts,
        )
        .unwrap();
        let f = tree.get("usr/share/etc/kiln/a.conf").unwrap();
        assert_eq!(f.meta.mode, 0o600);
        assert_eq!(f.meta.mtime, 42);
        match &f.kind {
            Kind::File(c) => assert_eq!(c.read_all().unwrap(), b"x=1\n"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            tree.get("usr/share/etc/link").unwrap().kind,
            Kind::Symlink(b"kiln/a.conf".to_vec())
        );
    }
}
