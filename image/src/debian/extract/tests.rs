//! Extraction checked against `dpkg-deb -x`, the reference unpacker, on packages built in the
//! test with `dpkg-deb --build` in every compression dpkg offers.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use super::*;
use crate::debian::testrepo::{build_deb, put};
use crate::testutil::require_tool;

/// Stages a package with one entry of every kind, owners, a setuid bit, a hard link, merged
/// directories, and a /bin vs /usr/bin clash.
fn stage_everything(root: &Path) {
    let mode = |p: &str, m: u32| {
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(m)).unwrap()
    };
    put(root, "usr/bin/hello", b"#!/bin/sh\necho hello\n");
    mode("usr/bin/hello", 0o755);
    put(root, "bin/legacy", b"legacy\n");
    put(root, "lib/x86_64-linux-gnu/libx.so.1", &vec![7u8; 100_000]);
    std::os::unix::fs::symlink("libx.so.1", root.join("lib/x86_64-linux-gnu/libx.so")).unwrap();
    put(root, "lib64/ld-linux-x86-64.so.2", b"ld\n");
    put(root, "usr/share/doc/fixture/a", b"same inode\n");
    std::fs::hard_link(
        root.join("usr/share/doc/fixture/a"),
        root.join("usr/share/doc/fixture/b"),
    )
    .unwrap();
    put(root, "etc/kiln.conf", b"key = value\n");
    mode("etc/kiln.conf", 0o640);
    std::os::unix::fs::chown(root.join("etc/kiln.conf"), Some(1000), Some(100)).unwrap();
    put(root, "usr/bin/su-like", b"suid\n");
    mode("usr/bin/su-like", 0o4755);
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let status = Command::new("mknod")
        .arg(root.join("dev/null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "mknod needs root (the extraction test checks device nodes)"
    );
    let status = Command::new("mknod")
        .arg(root.join("dev/loop9"))
        .args(["b", "7", "9"])
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("mkfifo")
        .arg(root.join("dev/initctl"))
        .status()
        .unwrap();
    assert!(status.success());
    // The same name under /sbin and /usr/sbin, with different contents: /usr must win.
    put(root, "sbin/tool", b"from /sbin\n");
    put(root, "usr/sbin/tool", b"from /usr/sbin\n");
    put(root, "DEBIAN/conffiles", b"/etc/kiln.conf\n");
    put(
        root,
        "DEBIAN/postinst",
        b"#!/bin/sh\nsystemctl enable fixture.service\n",
    );
    mode("DEBIAN/postinst", 0o755);
}

/// What `dpkg-deb -x` put on disk, as (tree path → description), with the merged-/usr
/// mapping applied and a /usr file preferred over its merged twin.
fn reference(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut paths = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.symlink_metadata().unwrap().is_dir() {
                stack.push(p.clone());
            }
            paths.push(p);
        }
    }
    // Sorted as tar lists them, so the first name of a hard-linked inode is the link target.
    paths.sort();
    for p in paths {
        let rel = p.strip_prefix(dir).unwrap().to_str().unwrap().to_string();
        let (tree_path, moved) = merged_usr_path(rel.as_bytes()).unwrap().unwrap();
        let key = tree_path.display();
        if moved && dir.join(&key[1..]).exists() && !dir.join(&key[1..]).is_dir() {
            continue;
        }
        let m = p.symlink_metadata().unwrap();
        let ft = m.file_type();
        let what = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("symlink {}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            match inodes.get(&m.ino()) {
                Some(first) => format!("hardlink {first}"),
                None => {
                    inodes.insert(m.ino(), key.clone());
                    format!("file {:?}", std::fs::read(&p).unwrap())
                }
            }
        } else {
            use std::os::unix::fs::FileTypeExt;
            let (major, minor) = ((m.rdev() >> 8) & 0xfff, m.rdev() & 0xff);
            if ft.is_char_device() {
                format!("char {major}:{minor}")
            } else if ft.is_block_device() {
                format!("block {major}:{minor}")
            } else {
                "fifo".to_string()
            }
        };
        // Symlink modes are not meaningful on Linux. Directory times are not comparable:
        // dpkg-deb puts symlinks last in the archive, so tar touches their directory after
        // restoring its time.
        let mtime = if ft.is_symlink() || ft.is_dir() {
            0
        } else {
            m.mtime()
        };
        out.insert(
            key,
            format!(
                "{what} mode {:o} owner {}:{} mtime {mtime}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ),
        );
    }
    out
}

/// The same description of our tree.
fn ours(tree: &Tree) -> BTreeMap<String, String> {
    tree.iter()
        .filter(|(p, _)| !p.is_root())
        .map(|(p, e)| {
            let what = match &e.kind {
                Kind::Dir => "dir".to_string(),
                Kind::Symlink(t) => format!("symlink {}", String::from_utf8_lossy(t)),
                Kind::File(c) => format!("file {:?}", c.read_all().unwrap()),
                Kind::HardLink(t) => format!("hardlink {}", t.display()),
                Kind::CharDevice { major, minor } => format!("char {major}:{minor}"),
                Kind::BlockDevice { major, minor } => format!("block {major}:{minor}"),
                Kind::Fifo => "fifo".to_string(),
                other => format!("{other:?}"),
            };
            let mode = if matches!(e.kind, Kind::Symlink(_)) {
                0o777
            } else {
                e.meta.mode
            };
            let mtime = if matches!(e.kind, Kind::Symlink(_) | Kind::Dir) {
                0
            } else {
                e.meta.mtime
            };
            (
                p.display(),
                format!(
                    "{what} mode {mode:o} owner {}:{} mtime {mtime}",
                    e.meta.uid, e.meta.gid
                ),
            )
        })
        .collect()
}

#[test]
fn extraction_matches_dpkg_deb_in_every_compression() {
    let dpkg_deb = require_tool("dpkg-deb", "dpkg");
    let out = tempfile::tempdir().unwrap();
    for compression in ["xz", "zstd", "gzip", "none"] {
        let dir = out.path().join(compression);
        std::fs::create_dir(&dir).unwrap();
        let deb = build_deb(&dir, "fixture", "1.0-1", "", compression, stage_everything);
        let unpacked = dir.join("x");
        let status = Command::new(&dpkg_deb)
            .arg("-x")
            .arg(&deb)
            .arg(&unpacked)
            .status()
            .unwrap();
        assert!(status.success());
        // dpkg-deb -x does not create the merged twins' parents under /usr; compare only entries.
        let mut extractor = Extractor::new(Tree::new(Meta::root(0o755, 0)));
        let info = extractor.add_deb(&deb).unwrap();
        let (tree, warnings) = extractor.finish();
        let mut theirs = reference(&unpacked);
        let ours = ours(&tree);
        // Directories that only exist because of the mapping (usr/lib64) are made by us.
        theirs.retain(|k, _| {
            ours.contains_key(k)
                || !k.starts_with("/lib") && !k.starts_with("/bin") && !k.starts_with("/sbin")
        });
        let only_ours: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
        assert!(
            only_ours.iter().all(|k| *k == "/usr/lib64"),
            "{compression}: extra entries {only_ours:?}"
        );
        for (k, v) in &theirs {
            assert_eq!(ours.get(k), Some(v), "{compression}: {k}");
        }
        assert_eq!(
            tree.get("usr/sbin/tool").map(|e| e.kind.clone()),
            Some(Kind::File(Content::bytes(b"from /usr/sbin\n".to_vec())))
        );
        assert!(
            tree.get("bin").is_none() && tree.get("lib").is_none(),
            "top-level merged dirs are the caller's"
        );
        assert!(
            warnings.iter().any(|w| w.contains("usr/sbin/tool")),
            "{warnings:?}"
        );
        assert_eq!(
            (info.package.as_str(), info.version.as_str()),
            ("fixture", "1.0-1")
        );
        assert_eq!(info.conffiles, ["/etc/kiln.conf"]);
        assert!(info.scripts["postinst"].contains("systemctl enable"));
        assert!(info.control.contains("Maintainer: Kiln"));
        tree.validate().unwrap();
    }
}

#[test]
fn usr_file_of_an_earlier_package_wins_over_a_later_merged_one() {
    let out = tempfile::tempdir().unwrap();
    let a = build_deb(out.path(), "a", "1", "", "xz", |r| {
        put(r, "usr/bin/sh", b"usr\n")
    });
    let b = build_deb(out.path(), "b", "1", "", "xz", |r| {
        put(r, "bin/sh", b"root\n")
    });
    let c = build_deb(out.path(), "c", "1", "", "xz", |r| {
        put(r, "bin/same", b"x\n")
    });
    let d = build_deb(out.path(), "d", "1", "", "xz", |r| {
        put(r, "usr/bin/same", b"x\n")
    });
    let got = extract_all(&[a, b, c, d], Tree::new(Meta::root(0o755, 0)), 2).unwrap();
    assert_eq!(
        got.tree.get("usr/bin/sh").unwrap().kind,
        Kind::File(Content::bytes(b"usr\n".to_vec()))
    );
    assert_eq!(
        got.warnings.len(),
        1,
        "identical twins are no conflict: {:?}",
        got.warnings
    );
    assert!(
        got.warnings[0].starts_with("b: /bin/sh differs from /usr/bin/sh shipped by a"),
        "{:?}",
        got.warnings
    );
    assert_eq!(
        got.infos
            .iter()
            .map(|i| i.package.as_str())
            .collect::<Vec<_>>(),
        ["a", "b", "c", "d"]
    );
}

#[test]
fn corrupt_debs_are_reported_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.deb");
    std::fs::write(
        &p,
        b"!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n",
    )
    .unwrap();
    let err = read_deb(&p).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: it has no control.tar* member: not a Debian binary package",
            p.display()
        )
    );
    std::fs::write(&p, b"PK zip").unwrap();
    assert!(read_deb(&p)
        .unwrap_err()
        .to_string()
        .contains("not an ar archive"));
    let deb = build_deb(dir.path(), "t", "1", "", "xz", |r| put(r, "x", b"x"));
    let mut bytes = std::fs::read(&deb).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 100);
    std::fs::write(&p, &bytes).unwrap();
    let err = read_deb(&p).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn merged_usr_mapping() {
    let m = |p: &str| {
        merged_usr_path(p.as_bytes())
            .unwrap()
            .map(|(t, moved)| (t.display(), moved))
    };
    assert_eq!(m("./"), None);
    assert_eq!(m("./bin/"), Some(("/usr/bin".to_string(), true)));
    assert_eq!(
        m("./lib64/ld.so"),
        Some(("/usr/lib64/ld.so".to_string(), true))
    );
    assert_eq!(m("./libexec/x"), Some(("/libexec/x".to_string(), false)));
    assert_eq!(m("./usr/lib/x"), Some(("/usr/lib/x".to_string(), false)));
    assert!(merged_usr_path(b"./a/../b").is_err());
}
