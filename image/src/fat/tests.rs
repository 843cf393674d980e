//! Volumes checked with the reference tools: `fsck.fat` (dosfstools) must find nothing to fix,
//! and mtools must list the names and read the contents we wrote.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::testutil::require_tool;
use crate::tree::{Content, Entry, Kind, Meta, Tree, TreePath};

const T: i64 = 1_700_000_000;

fn opts(mib: u64) -> FatOptions {
    FatOptions {
        size_bytes: mib << 20,
        volume_id: 0x1234_abcd,
        label: "kiln-test".into(),
        timestamp: T,
    }
}

fn add(tree: &mut Tree, path: &str, data: Vec<u8>) {
    let entry = Entry::new(Kind::File(Content::bytes(data)), Meta::root(0o644, T + 1));
    tree.insert_with_parents(path, entry, &Meta::root(0o755, T))
        .unwrap();
}

/// Bytes that differ at every position of a cluster and between files (`seed`).
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

fn make_image(dir: &Path, name: &str, tree: &Tree, opts: &FatOptions) -> (PathBuf, FatStats) {
    let path = dir.join(name);
    let mut f = File::create_new(&path).unwrap();
    let stats = format(tree, opts, &mut f).unwrap();
    assert_eq!(f.metadata().unwrap().len(), opts.size_bytes);
    (path, stats)
}

/// fsck.fat's check pass and its verification pass both find nothing to fix.
fn assert_fsck_clean(img: &Path) {
    let fsck = require_tool("fsck.fat", "dosfstools");
    for args in [&["-n"][..], &["-n", "-V"]] {
        let out = Command::new(&fsck).args(args).arg(img).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "fsck.fat {args:?} failed:\n{text}");
        // Anything beyond the banner, the pass names and the summary line is a complaint.
        let unexpected: Vec<&str> = text
            .lines()
            .filter(|l| {
                !(l.starts_with("fsck.fat ")
                    || l.starts_with("Starting check/repair pass")
                    || l.starts_with("Starting verification pass")
                    || l.contains(" files, "))
            })
            .collect();
        assert!(
            unexpected.is_empty() && !text.contains("Fixing") && !text.contains("differ"),
            "fsck.fat {args:?} complained:\n{text}"
        );
    }
}

fn mtool(tool: &str, img: &Path, path: &str) -> Vec<u8> {
    let bin = require_tool(tool, "mtools");
    let out = Command::new(bin)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .arg("-i")
        .arg(img)
        // mtools reads `[`, `]`, `*` and `?` in paths as wildcards unless escaped.
        .arg(format!(
            "::{}",
            path.replace('[', "\\[").replace(']', "\\]")
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} {path} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn mdir(img: &Path, path: &str) -> String {
    String::from_utf8_lossy(&mtool("mdir", img, path)).into_owned()
}

fn mtype(img: &Path, path: &str) -> Vec<u8> {
    mtool("mtype", img, path)
}

fn names(img: &Path, path: &str) -> Vec<String> {
    let mut f = File::open(img).unwrap();
    list_dir(&mut f, path)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect()
}

/// A tree like the ESP's plus every kind of name: long, unicode (with a character outside the
/// BMP), mixed case, leading dot, several dots, characters a short name cannot hold.
fn esp_like_tree() -> Tree {
    let mut t = Tree::new(Meta::root(0o755, T));
    add(&mut t, "EFI/BOOT/BOOTX64.EFI", pattern(120_000, 1));
    add(
        &mut t,
        "loader/loader.conf",
        b"timeout 3\ndefault kiln-*\n".to_vec(),
    );
    add(
        &mut t,
        "loader/entries/kiln-a+3.conf",
        b"title Kiln A\n".to_vec(),
    );
    add(
        &mut t,
        "loader/entries/kiln-b+0-2.conf",
        b"title Kiln B\n".to_vec(),
    );
    add(
        &mut t,
        "kiln/a/vmlinuz-6.1.0-kiln-amd64",
        pattern(20 << 20, 2),
    );
    add(&mut t, "kiln/a/initramfs.cpio.zst", pattern(3 << 20, 3));
    add(&mut t, "empty.txt", Vec::new());
    t.insert("empty-dir", Entry::new(Kind::Dir, Meta::root(0o755, T)))
        .unwrap();
    add(&mut t, "données/résumé 日本語 ✓.txt", b"unicode\n".to_vec());
    add(&mut t, "données/🦀 crab.txt", b"surrogates\n".to_vec());
    add(
        &mut t,
        "a/b/c/d/e/f/g/h/deep file with a rather long name, (parens) + [brackets];=.txt",
        b"deep\n".to_vec(),
    );
    add(&mut t, "README.TXT", b"upper\n".to_vec());
    add(&mut t, "readme.md", b"lower\n".to_vec());
    add(&mut t, ".hidden", b"dot\n".to_vec());
    add(&mut t, "a.b.c.d", b"dots\n".to_vec());
    add(&mut t, "Long Name One.conf", b"1\n".to_vec());
    add(&mut t, "Long Name Two.conf", b"2\n".to_vec());
    t
}

fn files_of(tree: &Tree) -> Vec<(String, Vec<u8>)> {
    tree.iter()
        .filter_map(|(p, e)| match &e.kind {
            Kind::File(c) => Some((p.display(), c.read_all().unwrap())),
            _ => None,
        })
        .collect()
}

#[test]
fn esp_like_tree_passes_fsck_and_mtools_reads_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let tree = esp_like_tree();
    let (img, stats) = make_image(dir.path(), "esp.img", &tree, &opts(256));
    assert_eq!(stats.cluster_bytes, 512);
    assert!(stats.clusters_used as u64 * 512 >= tree.content_bytes());
    assert!(stats.clusters_total > 500_000, "{stats:?}");
    assert_fsck_clean(&img);

    let root = mdir(&img, "/");
    for name in [
        "EFI",
        "loader",
        "empty-dir",
        "données",
        "README",
        "readme.md",
        ".hidden",
        "a.b.c.d",
        "Long Name Two.conf",
    ] {
        assert!(root.contains(name), "mdir / lacks {name}:\n{root}");
    }
    assert!(root.contains("KILN-TEST"), "label missing:\n{root}");
    let entries = mdir(&img, "/loader/entries");
    assert!(
        entries.contains("kiln-a+3.conf") && entries.contains("kiln-b+0-2.conf"),
        "{entries}"
    );
    let unicode = mdir(&img, "/données");
    // mtools 4.0.32 shows a character outside the BMP (stored as a surrogate pair, as Windows
    // and Linux do) as one or two placeholder characters, and cannot look it up by name.
    assert!(
        unicode.contains("résumé 日本語 ✓.txt") && unicode.contains(" crab.txt"),
        "{unicode}"
    );
    assert!(names(&img, "/données").contains(&"🦀 crab.txt".to_string()));
    assert_eq!(mtype(&img, "/données/_CRAB~1.TXT"), b"surrogates\n");

    let mut f = File::open(&img).unwrap();
    for (path, data) in files_of(&tree) {
        if !path.contains('🦀') {
            assert!(mtype(&img, &path) == data, "mtype {path} differs");
        }
        assert!(
            read_file(&mut f, &path).unwrap() == data,
            "read_file {path} differs"
        );
    }
    // Names match case-insensitively, by long or short name.
    assert_eq!(
        read_file(&mut f, "/efi/boot/bootx64.efi").unwrap().len(),
        120_000
    );
    assert_eq!(read_file(&mut f, "/LONGNA~2.CON").unwrap(), b"2\n");
    assert!(names(&img, "/empty-dir").is_empty());
}

#[test]
fn short_names_and_times_are_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let mut tree = esp_like_tree();
    let old = Entry::new(
        Kind::File(Content::bytes(b"old".to_vec())),
        Meta::root(0o644, 0),
    );
    tree.insert("OLD.TXT", old).unwrap();
    let later_dir = Entry::new(Kind::Dir, Meta::root(0o755, T + 5000));
    tree.insert("LATER", later_dir).unwrap();
    let (img, _) = make_image(dir.path(), "esp.img", &tree, &opts(64));
    let mut f = File::open(&img).unwrap();
    let root = list_dir(&mut f, "/").unwrap();
    let short = |name: &str| {
        let e = root.iter().find(|e| e.name == name).unwrap();
        (e.short_name.clone(), e.mtime)
    };
    assert_eq!(short("README.TXT"), ("README.TXT".into(), T));
    // T + 1 is odd: FAT's write time keeps even seconds.
    assert_eq!(short("readme.md"), ("README.MD".into(), T));
    assert_eq!(short(".hidden").0, "HIDDEN~1");
    assert_eq!(short("Long Name One.conf").0, "LONGNA~1.CON");
    assert_eq!(short("Long Name Two.conf").0, "LONGNA~2.CON");
    // Before 1980: clamped to FAT's first day.
    assert_eq!(short("OLD.TXT").1, 315_532_800);
    // Directories take the volume's timestamp, not their own mtime.
    assert_eq!(short("LATER").1, T);
}

#[test]
fn a_directory_of_500_long_names_spans_many_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let mut tree = Tree::new(Meta::root(0o755, T));
    for i in 0..500 {
        add(
            &mut tree,
            &format!("many/file number {i:03} with a long name.conf"),
            format!("{i}\n").into_bytes(),
        );
    }
    let (img, stats) = make_image(dir.path(), "many.img", &tree, &opts(64));
    // 500 files x (1 short + 3 long-name entries) x 32 bytes is 125 clusters of 512 bytes.
    assert!(stats.clusters_used > 500 + 125, "{stats:?}");
    assert_fsck_clean(&img);
    let listing = mdir(&img, "/many");
    for i in 0..500 {
        let name = format!("file number {i:03} with a long name.conf");
        assert!(listing.contains(&name), "mdir lacks {name}");
    }
    for i in [0, 255, 499] {
        let path = format!("/many/file number {i:03} with a long name.conf");
        assert_eq!(mtype(&img, &path), format!("{i}\n").into_bytes());
    }
    assert_eq!(names(&img, "/many").len(), 500);
    // One more entry in the last cluster's free slots.
    let name = "/many/one more file with a long name.conf";
    write_file(&mut open_rw(&img), name, b"501\n", T).unwrap();
    assert_fsck_clean(&img);
    assert_eq!(mtype(&img, name), b"501\n");
    assert_eq!(
        mtype(&img, "/many/file number 499 with a long name.conf"),
        b"499\n"
    );
    assert_eq!(names(&img, "/many").len(), 501);
}

#[test]
fn the_same_tree_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let tree = esp_like_tree();
    let (a, _) = make_image(dir.path(), "a.img", &tree, &opts(64));
    let (b, _) = make_image(dir.path(), "b.img", &tree, &opts(64));
    let bytes = std::fs::read(&a).unwrap();
    assert!(bytes == std::fs::read(&b).unwrap());
    // FAT32's backup boot sector and FSInfo (sectors 6 and 7) equal the originals.
    assert_eq!(bytes[..1024], bytes[6 * 512..8 * 512]);
    // And the options are what the bytes depend on.
    let mut other = opts(64);
    other.volume_id += 1;
    let (c, _) = make_image(dir.path(), "c.img", &tree, &other);
    assert!(std::fs::read(&a).unwrap() != std::fs::read(&c).unwrap());
}

#[test]
fn small_volumes_are_fat16_and_pass_fsck() {
    let dir = tempfile::tempdir().unwrap();
    let mut tree = esp_like_tree();
    tree.remove("kiln");
    for i in 0..100 {
        add(
            &mut tree,
            &format!("root file {i}.txt"),
            pattern(i * 100, i as u32),
        );
    }
    let (img, stats) = make_image(dir.path(), "small.img", &tree, &opts(16));
    assert_eq!(stats.cluster_bytes, 2048);
    assert_fsck_clean(&img);
    for (path, data) in files_of(&tree) {
        if !path.contains('🦀') {
            assert!(mtype(&img, &path) == data, "mtype {path} differs");
        }
    }
    // The FAT16 root directory has 512 entries and cannot grow.
    for i in 100..200 {
        add(&mut tree, &format!("root file {i}.txt"), Vec::new());
    }
    let err = format(&tree, &opts(16), &mut std::io::Cursor::new(Vec::new())).unwrap_err();
    assert!(matches!(err, FatError::DirectoryFull { .. }), "{err}");
}

/// Replaces small by big, big by small, and adds a file in new directories; after each step
/// fsck.fat is clean, mtools reads the new content and every other file is unchanged.
fn replace_files_and_check(img: &Path, mut expected: Vec<(String, Vec<u8>)>) {
    let steps: Vec<(&str, Vec<u8>)> = vec![
        ("/cloud-config.yml", pattern(2 << 20, 7)),
        ("/big.bin", b"#cloud-config\nhostname: small\n".to_vec()),
        ("/new/dir/a file with a long name.yml", pattern(5000, 8)),
        ("/new/dir/EMPTY", Vec::new()),
        ("/cloud-config.yml", b"#cloud-config\n".to_vec()),
    ];
    for (path, data) in steps {
        write_file(&mut open_rw(img), path, &data, T + 100).unwrap();
        expected.retain(|(p, _)| p != path);
        expected.push((path.to_string(), data));
        assert_fsck_clean(img);
        for (p, d) in &expected {
            assert!(
                &mtype(img, p) == d,
                "after writing {path}: mtype {p} differs"
            );
        }
    }
    let mut f = File::open(img).unwrap();
    let new = list_dir(&mut f, "/new/dir").unwrap();
    assert_eq!(new.len(), 2);
    assert_eq!(new[0].mtime, T + 100);
}

fn oem_files() -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "/cloud-config.yml".into(),
            b"#cloud-config\nhostname: one\n".to_vec(),
        ),
        ("/big.bin".into(), pattern(3 << 20, 5)),
        ("/platform/settings.conf".into(), b"x=1\n".to_vec()),
    ]
}

#[test]
fn write_file_replaces_files_in_our_volume() {
    let dir = tempfile::tempdir().unwrap();
    let mut tree = Tree::new(Meta::root(0o755, T));
    for (p, d) in oem_files() {
        add(&mut tree, &p, d);
    }
    let (img, _) = make_image(dir.path(), "oem.img", &tree, &opts(64));
    replace_files_and_check(&img, oem_files());
}

#[test]
fn write_file_replaces_files_in_volumes_made_by_mkfs_fat() {
    let mkfs = require_tool("mkfs.fat", "dosfstools");
    let mcopy = require_tool("mcopy", "mtools");
    let mmd = require_tool("mmd", "mtools");
    let dir = tempfile::tempdir().unwrap();
    // FAT32 as the brief asks, and mkfs.fat's own choice for 64 MiB (FAT16, fixed root).
    for (name, fat_args) in [("fat32.img", &["-F", "32"][..]), ("default.img", &[][..])] {
        let img = dir.path().join(name);
        let ok = Command::new(&mkfs)
            .args(fat_args)
            .args(["-n", "OEM", "-i", "12345678", "-C"])
            .arg(&img)
            .arg("65536")
            .status()
            .unwrap();
        assert!(ok.success());
        let mtools = |tool: &PathBuf, args: &[&std::ffi::OsStr]| {
            let st = Command::new(tool)
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(&img)
                .args(args)
                .status()
                .unwrap();
            assert!(st.success());
        };
        mtools(&mmd, &["::/platform".as_ref()]);
        for (p, d) in oem_files() {
            let src = dir.path().join("src");
            std::fs::write(&src, &d).unwrap();
            mtools(&mcopy, &[src.as_os_str(), format!("::{p}").as_ref()]);
        }
        assert_fsck_clean(&img);
        replace_files_and_check(&img, oem_files());
    }
}

#[test]
fn entries_fat_cannot_hold_are_refused_by_path() {
    let kinds = [
        Kind::Symlink(b"target".to_vec()),
        Kind::CharDevice { major: 5, minor: 1 },
        Kind::BlockDevice { major: 8, minor: 0 },
        Kind::Fifo,
        Kind::HardLink(TreePath::new("etc/file").unwrap()),
    ];
    for kind in kinds {
        let mut tree = Tree::new(Meta::root(0o755, T));
        add(&mut tree, "etc/file", b"x".to_vec());
        tree.insert("etc/odd", Entry::new(kind, Meta::root(0o644, T)))
            .unwrap();
        let err = format(&tree, &opts(64), &mut std::io::Cursor::new(Vec::new())).unwrap_err();
        assert!(matches!(err, FatError::UnsupportedKind { .. }), "{err}");
        assert!(err.to_string().contains("/etc/odd"), "{err}");
    }
}

#[test]
fn bad_names_collisions_labels_and_sizes_are_clear_errors() {
    let try_format = |tree: &Tree, opts: &FatOptions| {
        format(tree, opts, &mut std::io::Cursor::new(Vec::new())).unwrap_err()
    };
    let mut tree = Tree::new(Meta::root(0o755, T));
    add(&mut tree, "dir/a:b", Vec::new());
    let err = try_format(&tree, &opts(64));
    assert!(
        matches!(err, FatError::InvalidName { .. }) && err.to_string().contains("/dir/a:b"),
        "{err}"
    );

    let mut tree = Tree::new(Meta::root(0o755, T));
    add(&mut tree, "dir/Readme.txt", Vec::new());
    add(&mut tree, "dir/README.txt", Vec::new());
    let err = try_format(&tree, &opts(64));
    let msg = err.to_string();
    assert!(
        msg.contains("/dir/Readme.txt") && msg.contains("/dir/README.txt"),
        "{msg}"
    );

    let mut tree = Tree::new(Meta::root(0o755, T));
    add(&mut tree, "kernel", vec![0; 70 << 20]);
    let err = try_format(&tree, &opts(64));
    match err {
        FatError::TooLarge { needed, given, .. } => {
            assert!(needed > 70 << 20 && given == 64 << 20, "{needed} {given}")
        }
        other => panic!("expected TooLarge, got {other}"),
    }

    let empty = Tree::new(Meta::root(0o755, T));
    assert!(matches!(
        try_format(&empty, &opts(4)),
        FatError::VolumeSize { .. }
    ));
    for label in ["much too long label", "bad/label", " lead"] {
        let mut o = opts(64);
        o.label = label.into();
        assert!(
            matches!(try_format(&empty, &o), FatError::InvalidLabel { .. }),
            "{label}"
        );
    }
}

#[test]
fn reading_and_writing_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut tree = Tree::new(Meta::root(0o755, T));
    for (p, d) in oem_files() {
        add(&mut tree, &p, d);
    }
    let (img, _) = make_image(dir.path(), "oem.img", &tree, &opts(64));
    let mut f = open_rw(&img);
    let err = read_file(&mut f, "/missing.yml").unwrap_err();
    assert!(
        matches!(&err, FatError::NotFound { path } if path == "/missing.yml"),
        "{err}"
    );
    assert!(matches!(
        read_file(&mut f, "/platform"),
        Err(FatError::IsADirectory { .. })
    ));
    assert!(matches!(
        list_dir(&mut f, "/big.bin"),
        Err(FatError::NotADirectory { .. })
    ));
    let err = write_file(&mut f, "/big.bin/x", b"", T).unwrap_err();
    assert!(matches!(err, FatError::NotADirectory { .. }), "{err}");
    assert!(matches!(
        write_file(&mut f, "/platform", b"", T),
        Err(FatError::IsADirectory { .. })
    ));
    assert!(matches!(
        write_file(&mut f, "/a?b", b"", T),
        Err(FatError::InvalidName { .. })
    ));
    let err = write_file(&mut f, "/huge", &vec![0; 70 << 20], T).unwrap_err();
    assert!(matches!(err, FatError::NoSpace { .. }), "{err}");
    // A failed write changed nothing.
    assert_fsck_clean(&img);
    let mut zeros = std::io::Cursor::new(vec![0u8; 1 << 20]);
    assert!(matches!(
        read_file(&mut zeros, "/x"),
        Err(FatError::NotFat { .. })
    ));
}

#[test]
fn a_full_directory_grows_by_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut tree = Tree::new(Meta::root(0o755, T));
    // `.`, `..` and 14 short names fill the 16 slots of one 512-byte cluster exactly.
    for i in 0..14 {
        add(
            &mut tree,
            &format!("full/FILE{i:02}.TXT"),
            format!("{i}\n").into_bytes(),
        );
    }
    add(&mut tree, "after.bin", pattern(4096, 9));
    let (img, stats) = make_image(dir.path(), "full.img", &tree, &opts(64));
    let name = "/full/a new file with a long name that needs three slots.txt";
    write_file(&mut open_rw(&img), name, b"grown\n", T).unwrap();
    assert_fsck_clean(&img);
    assert_eq!(mtype(&img, name), b"grown\n");
    assert_eq!(mtype(&img, "/full/FILE13.TXT"), b"13\n");
    assert_eq!(mtype(&img, "/after.bin"), pattern(4096, 9));
    assert_eq!(names(&img, "/full").len(), 15);
    // The new cluster and the file's: two more in use.
    let fsck = require_tool("fsck.fat", "dosfstools");
    let out = Command::new(fsck).arg("-n").arg(&img).output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    let used = format!("{}/{}", stats.clusters_used + 2, stats.clusters_total);
    assert!(
        summary.contains(&used),
        "expected {used} clusters in use: {summary}"
    );
}

/// Removes and renames entries of `img` (which must hold `/loader/entries/kiln-a+3.conf`,
/// `kiln-b+0-2.conf`, `/README.TXT` and `/readme.md`), checking with fsck.fat and mtools.
fn remove_and_rename_and_check(img: &Path) {
    let mut f = open_rw(img);
    remove_file(&mut f, "/loader/entries/kiln-b+0-2.conf").unwrap();
    remove_file(&mut f, "/README.TXT").unwrap();
    rename(
        &mut f,
        "/loader/entries/kiln-a+3.conf",
        "/loader/entries/kiln-a.conf",
    )
    .unwrap();
    rename(&mut f, "/readme.md", "/ReadMe.md").unwrap();
    drop(f);
    assert_fsck_clean(img);
    assert_eq!(names(img, "/loader/entries"), ["kiln-a.conf"]);
    let entries = mdir(img, "/loader/entries");
    assert!(
        entries.contains("kiln-a.conf") && !entries.contains("kiln-b") && !entries.contains("+3"),
        "{entries}"
    );
    assert_eq!(mtype(img, "/loader/entries/kiln-a.conf"), b"title Kiln A\n");
    let root = mdir(img, "/");
    assert!(
        root.contains(" ReadMe.md") && !root.contains("README.TXT") && !root.contains("readme"),
        "{root}"
    );
    assert_eq!(mtype(img, "/ReadMe.md"), b"lower\n");
    let ours = names(img, "/");
    assert!(ours.iter().any(|n| n == "ReadMe.md"), "{ours:?}");
    assert!(
        !ours.iter().any(|n| n == "README.TXT" || n == "readme.md"),
        "{ours:?}"
    );

    // The freed clusters and slots are used again, and the volume stays clean.
    let mut f = open_rw(img);
    write_file(
        &mut f,
        "/loader/entries/kiln-b+3.conf",
        b"title Kiln B\n",
        T,
    )
    .unwrap();
    drop(f);
    assert_fsck_clean(img);
    assert_eq!(
        mtype(img, "/loader/entries/kiln-b+3.conf"),
        b"title Kiln B\n"
    );
}

#[test]
fn remove_file_and_rename_keep_our_volume_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = make_image(dir.path(), "esp.img", &esp_like_tree(), &opts(64));
    // A 20 MiB file: its whole chain goes back to the free count fsck.fat checks.
    let mut f = open_rw(&img);
    remove_file(&mut f, "/kiln/a/vmlinuz-6.1.0-kiln-amd64").unwrap();
    rename(&mut f, "/empty-dir", "/Another Dir").unwrap();
    // A rename that finds the same entry through its short name is a no-op.
    rename(&mut f, "/a.b.c.d", "/a.b.c.d").unwrap();
    drop(f);
    assert_fsck_clean(&img);
    assert!(!names(&img, "/kiln/a").contains(&"vmlinuz-6.1.0-kiln-amd64".to_string()));
    assert!(names(&img, "/").contains(&"Another Dir".to_string()));
    remove_and_rename_and_check(&img);

    let mut f = open_rw(&img);
    let before = std::fs::read(&img).unwrap();
    let err = rename(&mut f, "/.hidden", "/a.b.c.d").unwrap_err();
    assert!(
        matches!(err, FatError::Exists { ref path } if path == "/a.b.c.d"),
        "{err}"
    );
    let err = rename(&mut f, "/.hidden", "/loader/.hidden").unwrap_err();
    assert!(matches!(err, FatError::InvalidPath { .. }), "{err}");
    let err = rename(&mut f, "/nothing", "/something").unwrap_err();
    assert!(matches!(err, FatError::NotFound { .. }), "{err}");
    let err = remove_file(&mut f, "/loader").unwrap_err();
    assert!(matches!(err, FatError::IsADirectory { .. }), "{err}");
    let err = remove_file(&mut f, "/loader/missing.conf").unwrap_err();
    assert!(err.to_string().contains("/loader/missing.conf"), "{err}");
    drop(f);
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a refused edit wrote"
    );
}

#[test]
fn remove_file_and_rename_work_in_volumes_made_by_mkfs_fat() {
    let mkfs = require_tool("mkfs.fat", "dosfstools");
    let dir = tempfile::tempdir().unwrap();
    // FAT16 with its fixed root directory, and FAT32.
    for (name, fat_args) in [("fat16.img", &[][..]), ("fat32.img", &["-F", "32"][..])] {
        let img = dir.path().join(name);
        let ok = Command::new(&mkfs)
            .args(fat_args)
            .args(["-n", "ESP", "-i", "12345678", "-C"])
            .arg(&img)
            .arg("65536")
            .status()
            .unwrap();
        assert!(ok.success());
        let mut f = open_rw(&img);
        for (p, d) in [
            ("/loader/entries/kiln-a+3.conf", &b"title Kiln A\n"[..]),
            ("/loader/entries/kiln-b+0-2.conf", b"title Kiln B\n"),
            ("/README.TXT", b"upper\n"),
            ("/readme.md", b"lower\n"),
        ] {
            write_file(&mut f, p, d, T).unwrap();
        }
        drop(f);
        assert_fsck_clean(&img);
        remove_and_rename_and_check(&img);
    }
}
