//! Checks the writer against e2fsprogs: e2fsck must find nothing, debugfs must read back
//! every entry as the tree describes it, resize2fs must grow it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::htree;
use super::*;
use crate::testutil::require_tool;
use crate::tree::{sample_tree, Entry, Kind, Meta, TreePath};

fn opts(size: u64, journal: bool) -> Ext4Options {
    Ext4Options {
        size_bytes: size,
        uuid: *b"kiln-ext4-test-u",
        hash_seed: *b"kiln-hash-seed-1",
        label: "test".into(),
        journal,
        timestamp: 1_700_000_000,
    }
}

/// Writes `tree` at exactly its required size into `dir/name`.
fn write_at_required(tree: &Tree, journal: bool, dir: &Path, name: &str) -> (PathBuf, Ext4Stats) {
    let size = required_bytes(tree, journal).unwrap();
    let path = dir.join(name);
    let file = File::create(&path).unwrap();
    let stats = write(tree, &opts(size, journal), &file).unwrap();
    assert_eq!(file.metadata().unwrap().len(), size);
    (path, stats)
}

/// e2fsck -fn: exit 0 and nothing printed but the five pass headers and the summary.
fn assert_fsck_clean(img: &Path) {
    let e2fsck = require_tool("e2fsck", "e2fsprogs");
    let out = Command::new(&e2fsck).arg("-fn").arg(img).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let unexpected: Vec<&str> = stdout
        .lines()
        .filter(|l| !(l.starts_with("Pass ") || (l.contains(" files (") && l.ends_with(" blocks"))))
        .collect();
    assert!(
        out.status.success() && unexpected.is_empty() && stdout.contains("Pass 5"),
        "e2fsck -fn {} exited {:?}:\n{stdout}\n{stderr}",
        img.display(),
        out.status.code()
    );
}

/// Runs debugfs commands in one session; returns each command's output.
fn debugfs(img: &Path, commands: &[String]) -> Vec<String> {
    let debugfs = require_tool("debugfs", "e2fsprogs");
    let cmdfile = img.with_extension("cmds");
    std::fs::write(&cmdfile, commands.join("\n") + "\n").unwrap();
    let out = Command::new(&debugfs)
        .arg("-f")
        .arg(&cmdfile)
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debugfs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With -f, debugfs echoes each command as "debugfs: <command>" before its output.
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut sections: Vec<String> = Vec::new();
    for line in stdout.lines() {
        if line.starts_with("debugfs: ") {
            sections.push(String::new());
        } else if let Some(s) = sections.last_mut() {
            s.push_str(line);
            s.push('\n');
        }
    }
    assert_eq!(sections.len(), commands.len(), "debugfs output:\n{stdout}");
    sections
}

/// The value after `key` in debugfs's stat output, up to the next blank.
fn field<'a>(stat: &'a str, key: &str) -> &'a str {
    let at = stat
        .find(key)
        .unwrap_or_else(|| panic!("no {key:?} in:\n{stat}"))
        + key.len();
    stat[at..].split_whitespace().next().unwrap()
}

/// Files and slow symlinks are read back with `dump`; fast symlinks show in `stat`.
fn dumped(kind: &Kind) -> bool {
    match kind {
        Kind::File(_) => true,
        Kind::Symlink(t) => t.len() >= 60,
        _ => false,
    }
}

fn quote(path: &TreePath) -> String {
    format!("\"{}\"", path.display())
}

/// Reads back every entry of `tree` from `img` with debugfs and compares type, mode, owner,
/// size, mtime, link count, inode sharing, content, symlink target, device number and xattrs.
fn assert_reads_back(img: &Path, tree: &Tree) {
    let dump = img.with_extension("dump");
    std::fs::create_dir_all(&dump).unwrap();
    let entries: Vec<(&TreePath, &Entry)> = tree.iter().collect();
    let mut cmds = Vec::new();
    let mut expect_links: HashMap<TreePath, u32> = HashMap::new();
    for (path, e) in &entries {
        match &e.kind {
            Kind::HardLink(t) => *expect_links.entry(t.clone()).or_insert(1) += 1,
            Kind::Dir => {
                let subdirs = tree.children(path).filter(|(_, c)| c.is_dir()).count() as u32;
                let lf = u32::from(path.is_root() && tree.get("lost+found").is_none());
                expect_links.insert((*path).clone(), 2 + subdirs + lf);
            }
            _ => {
                expect_links.entry((*path).clone()).or_insert(1);
            }
        }
    }
    for (i, (path, e)) in entries.iter().enumerate() {
        cmds.push(format!("stat {}", quote(path)));
        let target = match &e.kind {
            Kind::HardLink(t) => tree.get_at(t).unwrap(),
            _ => e,
        };
        if dumped(&target.kind) {
            cmds.push(format!("dump {} {}/{i}", quote(path), dump.display()));
        }
        for name in target.meta.xattrs.keys() {
            cmds.push(format!(
                "ea_get -f {}/{i}.{name} {} {name}",
                dump.display(),
                quote(path)
            ));
        }
    }
    let out = debugfs(img, &cmds);
    let mut out = out.iter();
    let mut inode_of: HashMap<TreePath, u64> = HashMap::new();
    for (i, (path, e)) in entries.iter().enumerate() {
        let stat = out.next().unwrap();
        let ctx = format!("{} in {}:\n{stat}", path.display(), img.display());
        let ino: u64 = field(stat, "Inode:").parse().unwrap();
        let (owner, target) = match &e.kind {
            Kind::HardLink(t) => (t.clone(), tree.get_at(t).unwrap()),
            _ => ((*path).clone(), *e),
        };
        if let Some(prev) = inode_of.insert(owner.clone(), ino) {
            assert_eq!(prev, ino, "hard link shares the inode: {ctx}");
        }
        if path.is_root() {
            assert_eq!(ino, 2, "{ctx}");
        }
        let (ty, data): (&str, Option<Vec<u8>>) = match &target.kind {
            Kind::File(c) => ("regular", Some(c.read_all().unwrap())),
            Kind::Dir => ("directory", None),
            Kind::Symlink(t) => ("symlink", Some(t.clone())),
            Kind::CharDevice { .. } => ("character", None),
            Kind::BlockDevice { .. } => ("block", None),
            Kind::Fifo => ("FIFO", None),
            Kind::Socket => ("socket", None),
            Kind::HardLink(_) => unreachable!(),
        };
        assert_eq!(field(stat, "Type:"), ty, "{ctx}");
        let mode = u16::from_str_radix(field(stat, "Mode:"), 8).unwrap();
        assert_eq!(mode, target.meta.mode, "{ctx}");
        assert_eq!(
            field(stat, "User:").parse::<u32>().unwrap(),
            target.meta.uid,
            "{ctx}"
        );
        assert_eq!(
            field(stat, "Group:").parse::<u32>().unwrap(),
            target.meta.gid,
            "{ctx}"
        );
        let mtime =
            u32::from_str_radix(field(stat, "mtime: 0x").split(':').next().unwrap(), 16).unwrap();
        assert_eq!(mtime, target.meta.mtime as u32, "{ctx}");
        assert_eq!(
            field(stat, "Links:").parse::<u32>().unwrap(),
            expect_links[&owner],
            "{ctx}"
        );
        if let Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } = &target.kind
        {
            assert_eq!(
                field(stat, "number:"),
                format!("{major:02}:{minor:02}"),
                "{ctx}"
            );
        }
        if let Some(data) = data {
            assert_eq!(
                field(stat, "Size:").parse::<usize>().unwrap(),
                data.len(),
                "{ctx}"
            );
            if let Kind::Symlink(t) = &target.kind {
                if t.len() < 60 {
                    let shown = format!("Fast link dest: \"{}\"", String::from_utf8_lossy(t));
                    assert!(stat.contains(&shown), "{ctx}");
                }
            }
            if dumped(&target.kind) {
                out.next().unwrap();
                let got = std::fs::read(dump.join(i.to_string())).unwrap();
                assert!(got == data, "content of {ctx}");
            }
        }
        for (name, value) in &target.meta.xattrs {
            out.next().unwrap();
            let got = std::fs::read(dump.join(format!("{i}.{name}"))).unwrap();
            assert_eq!(&got, value, "xattr {name} of {ctx}");
        }
    }
}

#[test]
fn sample_tree_is_clean_and_reads_back_with_and_without_journal() {
    let tree = sample_tree();
    let dir = tempfile::tempdir().unwrap();
    for journal in [false, true] {
        let (img, stats) =
            write_at_required(&tree, journal, dir.path(), &format!("j{journal}.img"));
        assert_fsck_clean(&img);
        assert_reads_back(&img, &tree);
        // Inodes 1-11 (root and lost+found among them), then every other non-hard-link entry.
        let hard_links = tree
            .iter()
            .filter(|(_, e)| matches!(e.kind, Kind::HardLink(_)))
            .count();
        assert_eq!(
            stats.inodes_used as usize,
            11 + (tree.len() - 1 - hard_links)
        );
    }
}

/// A tree with every kind and the edge cases: big device numbers, a socket, 3 names for one
/// inode, xattrs too big for the inode, a file needing a 2-level extent tree, a 5000-entry
/// directory, times past 2038, 32-bit owners, a lost+found of its own.
fn edge_tree() -> Tree {
    let t = 1_700_000_000;
    let mut tree = Tree::new(Meta::root(0o755, t));
    let dir = Meta::root(0o755, t);
    let mut add = |path: &str, kind: Kind, meta: Meta| {
        tree.insert_with_parents(path, Entry::new(kind, meta), &dir)
            .unwrap()
    };
    add("lost+found", Kind::Dir, Meta::root(0o700, t));
    add(
        "dev/big",
        Kind::BlockDevice {
            major: 259,
            minor: 70000,
        },
        Meta::root(0o660, t),
    );
    add(
        "dev/tty",
        Kind::CharDevice {
            major: 4,
            minor: 300,
        },
        Meta::root(0o620, t),
    );
    add("run/sock", Kind::Socket, Meta::root(0o777, t));
    add("run/fifo", Kind::Fifo, Meta::root(0o644, t));
    let mut far = Meta::root(0o1777, 5_000_000_000);
    far.uid = 100_000;
    far.gid = 70_000;
    add("tmp", Kind::Dir, far);
    let mut many = Meta::root(0o644, t);
    for i in 0..20 {
        many.xattrs
            .insert(format!("user.attribute-number-{i}"), vec![i as u8; 50]);
    }
    many.xattrs.insert("trusted.x".into(), b"y".to_vec());
    many.xattrs.insert(
        "security.selinux".into(),
        b"system_u:object_r:etc_t:s0\0".to_vec(),
    );
    add(
        "etc/attrs",
        Kind::File(Content::bytes(b"attrs".to_vec())),
        many.clone(),
    );
    add("etc/attrdir", Kind::Dir, many);
    add(
        "a/first",
        Kind::HardLink(TreePath::new("z/target").unwrap()),
        Meta::root(0o644, t),
    );
    add(
        "z/target",
        Kind::File(Content::bytes(vec![0x5a; 10_000])),
        Meta::root(0o600, t),
    );
    add(
        "z/second",
        Kind::HardLink(TreePath::new("z/target").unwrap()),
        Meta::root(0o644, t),
    );
    // 1500 data blocks separated by holes: 1500 extents, 5 leaves, a 2-level tree.
    let mut striped = vec![0u8; 3000 * 4096];
    for b in (0..3000).step_by(2) {
        striped[b * 4096..b * 4096 + 10].copy_from_slice(&(b as u64).to_le_bytes().repeat(2)[..10]);
    }
    add(
        "var/striped",
        Kind::File(Content::bytes(striped)),
        Meta::root(0o644, t),
    );
    // 10 extents: a 1-level tree.
    let mut ten = vec![0u8; 20 * 4096];
    for b in (0..20).step_by(2) {
        ten[b * 4096] = 1;
    }
    add(
        "var/ten",
        Kind::File(Content::bytes(ten)),
        Meta::root(0o644, t),
    );
    add(
        "var/zeros",
        Kind::File(Content::bytes(vec![0; 100_000])),
        Meta::root(0o644, t),
    );
    add(
        "var/tail",
        Kind::File(Content::bytes(vec![3; 4097])),
        Meta::root(0o644, t),
    );
    add("l/59", Kind::Symlink(vec![b'x'; 59]), Meta::root(0o777, t));
    add("l/60", Kind::Symlink(vec![b'y'; 60]), Meta::root(0o777, t));
    add(
        "l/4095",
        Kind::Symlink(vec![b'z'; 4095]),
        Meta::root(0o777, t),
    );
    add(
        &"n".repeat(255),
        Kind::File(Content::bytes(b"long name".to_vec())),
        Meta::root(0o644, t),
    );
    for i in 0..5000 {
        // Some names with bytes >= 0x80, whose hash depends on the unsigned-hash flag.
        let stem = if i % 7 == 0 { "\u{e9}" } else { "e" };
        let name = format!("big/{}-{i}", stem.repeat(i % 120));
        let kind = if i % 100 == 0 {
            Kind::Dir
        } else {
            Kind::File(Content::bytes(vec![]))
        };
        add(&name, kind, Meta::root(0o644, t));
    }
    tree
}

#[test]
fn edge_tree_is_clean_and_reads_back() {
    let tree = edge_tree();
    let dir = tempfile::tempdir().unwrap();
    for journal in [false, true] {
        let (img, _) =
            write_at_required(&tree, journal, dir.path(), &format!("edge-{journal}.img"));
        assert_fsck_clean(&img);
        assert_reads_back(&img, &tree);
    }
    // The striped file really has a 2-level tree and holes, the zero file no blocks.
    let img = dir.path().join("edge-false.img");
    let out = debugfs(
        &img,
        &[
            "stat /var/striped".into(),
            "stat /var/zeros".into(),
            "stat /var/ten".into(),
        ],
    );
    assert!(
        out[0].contains("Level Entries") || out[0].contains("(ETB1)"),
        "{}",
        out[0]
    );
    assert!(
        out[0].contains("(ETB1)"),
        "a depth-2 tree shows level-1 index blocks:\n{}",
        out[0]
    );
    assert_eq!(field(&out[1], "Blockcount:"), "0");
    assert!(out[2].contains("(ETB0)"), "{}", out[2]);
}

#[test]
fn same_tree_gives_identical_bytes() {
    let tree = edge_tree();
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = write_at_required(&tree, true, dir.path(), "a.img");
    let (b, _) = write_at_required(&tree, true, dir.path(), "b.img");
    assert!(std::fs::read(a).unwrap() == std::fs::read(b).unwrap());
}

#[test]
fn required_bytes_is_the_smallest_size_that_fits() {
    for journal in [false, true] {
        smallest_size_fits(journal);
    }
}

fn smallest_size_fits(journal: bool) {
    let tree = sample_tree();
    let dir = tempfile::tempdir().unwrap();
    let size = required_bytes(&tree, journal).unwrap();
    let file = File::create(dir.path().join("small.img")).unwrap();
    let err = write(&tree, &opts(size - 4096, journal), &file).unwrap_err();
    match &err {
        Ext4Error::TooSmall { needed, given } => assert_eq!((*needed, *given), (size, size - 4096)),
        other => panic!("{other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&size.to_string()) && msg.contains(&(size - 4096).to_string()),
        "{msg}"
    );
    write(&tree, &opts(size, journal), &file).unwrap();
}

#[test]
fn bad_options_and_trees_are_clear_errors() {
    let tree = sample_tree();
    let dir = tempfile::tempdir().unwrap();
    let file = File::create(dir.path().join("x.img")).unwrap();
    let mut o = opts(64 << 20, false);
    o.label = "seventeen-bytes!!".into();
    assert!(matches!(
        write(&tree, &o, &file),
        Err(Ext4Error::BadLabel { len: 17, .. })
    ));
    assert!(matches!(
        write(&tree, &opts(1000, false), &file),
        Err(Ext4Error::BadSize { .. })
    ));
    assert!(matches!(
        write(&tree, &opts(64 << 10, false), &file),
        Err(Ext4Error::TooSmall { .. })
    ));

    let mut dangling = tree.clone();
    let link = Kind::HardLink(TreePath::new("nowhere").unwrap());
    dangling
        .insert("broken", Entry::new(link, Meta::root(0o644, 0)))
        .unwrap();
    let err = write(&dangling, &opts(64 << 20, false), &file).unwrap_err();
    assert!(matches!(err, Ext4Error::Tree(_)), "{err}");
    assert!(err.to_string().contains("/broken"), "{err}");

    let mut acl = tree.clone();
    acl.get_mut("etc/hostname")
        .unwrap()
        .meta
        .xattrs
        .insert("system.posix_acl_access".into(), vec![2]);
    let err = write(&acl, &opts(64 << 20, false), &file).unwrap_err();
    assert!(
        err.to_string().contains("/etc/hostname") && err.to_string().contains("posix_acl"),
        "{err}"
    );

    let mut lf = tree.clone();
    lf.insert("lost+found", Entry::new(Kind::Fifo, Meta::root(0o644, 0)))
        .unwrap();
    assert!(matches!(
        required_bytes(&lf, false),
        Err(Ext4Error::LostFoundNotDir)
    ));

    let mut huge = tree;
    let mut big = Meta::root(0o644, 0);
    big.xattrs.insert("user.big".into(), vec![1; 5000]);
    huge.insert(
        "etc/big-xattr",
        Entry::new(Kind::File(Content::bytes(vec![])), big),
    )
    .unwrap();
    assert!(matches!(
        required_bytes(&huge, false),
        Err(Ext4Error::XattrTooBig { .. })
    ));
}

#[test]
fn resize2fs_grows_it_8x_and_e2fsck_stays_clean() {
    let resize2fs = require_tool("resize2fs", "e2fsprogs");
    let tree = sample_tree();
    let dir = tempfile::tempdir().unwrap();
    // 600 MiB: 5 groups, growing to 4.7 GiB (38 groups) crosses flex group boundaries.
    let path = dir.path().join("grow.img");
    let file = File::create(&path).unwrap();
    write(&tree, &opts(600 << 20, true), &file).unwrap();
    file.set_len(8 * (600 << 20)).unwrap();
    let out = Command::new(&resize2fs).arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "resize2fs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fsck_clean(&path);
    assert_reads_back(&path, &tree);
}

/// Deterministic filler content: varied sizes, some with all-zero blocks.
fn generated(i: usize) -> Vec<u8> {
    let len = (i * 7919) % 9000;
    let mut v: Vec<u8> = (0..len).map(|k| ((k * 31 + i * 17) % 251) as u8).collect();
    if i.is_multiple_of(10) && len > 8192 {
        v[..8192].fill(0);
    }
    v
}

#[test]
fn real_kernel_tree_of_50000_entries_and_500_mib_is_clean() {
    let start = std::time::Instant::now();
    let (kernel_dir, _) = crate::testutil::debian_kernel();
    let extracted = start.elapsed();
    let t = 1_700_000_000;
    let mut tree = Tree::new(Meta::root(0o755, t));
    let host = crate::hostdir::HostDirOptions {
        uid: 0,
        gid: 0,
        mtime: t,
    };
    crate::hostdir::add_host_dir(&mut tree, &kernel_dir, &TreePath::root(), &host).unwrap();
    let dir = Meta::root(0o755, t);
    let mut i = 0;
    while tree.len() < 50_000 || tree.content_bytes() < 500 << 20 {
        let entry = Entry::new(
            Kind::File(Content::bytes(generated(i))),
            Meta::root(0o644, t),
        );
        tree.insert_with_parents(
            format!("usr/share/gen/d{:03}/f{i:05}", i / 100),
            entry,
            &dir,
        )
        .unwrap();
        i += 1;
    }
    let img_dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let (img, stats) = write_at_required(&tree, false, img_dir.path(), "real.img");
    let written = start.elapsed();
    assert_fsck_clean(&img);
    eprintln!(
        "{} entries, {} MiB content: {stats:?}; extract {:.1}s, size+write {:.1}s, e2fsck {:.1}s",
        tree.len(),
        tree.content_bytes() >> 20,
        extracted.as_secs_f64(),
        (written - extracted).as_secs_f64(),
        (start.elapsed() - written).as_secs_f64()
    );
    // Spot-check contents of host and generated files, one in 500.
    let files: Vec<(&TreePath, &Content)> = tree
        .iter()
        .filter_map(|(p, e)| match &e.kind {
            Kind::File(c) => Some((p, c)),
            _ => None,
        })
        .step_by(500)
        .collect();
    let dump = img_dir.path().join("dump");
    std::fs::create_dir_all(&dump).unwrap();
    let cmds: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, (p, _))| format!("dump {} {}/{i}", quote(p), dump.display()))
        .collect();
    debugfs(&img, &cmds);
    for (i, (p, c)) in files.iter().enumerate() {
        assert!(
            std::fs::read(dump.join(i.to_string())).unwrap() == c.read_all().unwrap(),
            "{}",
            p.display()
        );
    }
    // The same filesystem through dm-verity, as /usr is built: veritysetup accepts our tree
    // with our root hash.
    let data_bytes = std::fs::metadata(&img).unwrap().len();
    let params = crate::verity::VerityParams {
        salt: vec![0x4b; 32],
        uuid: [0x4b; 16],
    };
    let file = File::options().read(true).write(true).open(&img).unwrap();
    let info = crate::verity::append(&file, data_bytes, &params).unwrap();
    let veritysetup = crate::testutil::require_tool("veritysetup", "cryptsetup-bin");
    let out = Command::new(veritysetup)
        .arg("verify")
        .arg(&img)
        .arg(&img)
        .arg(info.root_hash_hex())
        .arg(format!("--hash-offset={data_bytes}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "veritysetup verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes the sample and edge trees with a journal to `$KILN_EXT4_IMAGE_OUT-{sample,edge}.img`
/// at 300 MiB (for checks by hand, such as mounting them and growing them online).
#[test]
#[ignore = "writes images for checks by hand"]
fn write_images_for_manual_checks() {
    let out = std::env::var("KILN_EXT4_IMAGE_OUT").expect("set KILN_EXT4_IMAGE_OUT");
    for (name, tree) in [("sample", sample_tree()), ("edge", edge_tree())] {
        let file = File::create(format!("{out}-{name}.img")).unwrap();
        write(&tree, &opts(300 << 20, true), &file).unwrap();
    }
}

#[test]
fn directory_hash_matches_debugfs() {
    let debugfs = require_tool("debugfs", "e2fsprogs");
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = write_at_required(&sample_tree(), false, dir.path(), "hash.img");
    let seed = *b"kiln-hash-seed-1";
    let hex = kiln_contract::hex::encode(&seed);
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    let long = "x".repeat(100);
    // ASCII only: debugfs hashes as signed chars, we as unsigned (the superblock says so);
    // names with high bytes are checked by e2fsck on edge_tree's big directory.
    for name in [
        "a",
        "file-00001.ko",
        "exactly-thirty-two-bytes-long-ok",
        &long,
    ] {
        let out = Command::new(&debugfs)
            .arg("-R")
            .arg(format!("dx_hash -h half_md4 -s {uuid} {name}"))
            .arg(&img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let want =
            u32::from_str_radix(field(&text, " is 0x"), 16).unwrap_or_else(|_| panic!("{text}"));
        assert_eq!(
            htree::name_hash(name.as_bytes(), &seed),
            want,
            "{name}: {text}"
        );
    }
}
