//! Tests of the module reader, the indices, the selection and the initramfs subset: on small
//! synthetic modules (ELF files made by hand here), and on Debian's kernel against Debian's
//! `depmod`, `modprobe` and `modinfo`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::depmod::{builtin_alias_index, builtin_index, devname_of};
use super::elf::parse_modinfo;
use super::error::KmodError;
use super::glob::glob_match;
use super::initramfs::{
    initramfs_modules, initramfs_modules_with, InitramfsModules, ALWAYS_LOAD_FILE,
};
use super::mod_index::ModIndex;
use super::select::select_in_tree;
use super::set::{modules_dir, ModuleSet};
use crate::tree::{Content, Entry, Kind, Meta, Tree, TreePath};

/// A minimal ELF64 relocatable file whose only sections are the null section, `.modinfo`
/// holding `fields`, and the section name table: the layout the kernel's modpost produces,
/// without code. Built by hand here so the tests need no toolchain.
pub(crate) fn fake_module(fields: &[&str]) -> Vec<u8> {
    let mut modinfo = Vec::new();
    for f in fields {
        modinfo.extend_from_slice(f.as_bytes());
        modinfo.push(0);
        // The linker aligns some fields; padding NULs must be ignored.
        modinfo.push(0);
    }
    let shstrtab = b"\0.modinfo\0.shstrtab\0".to_vec();
    let modinfo_off = 64usize;
    let shstr_off = modinfo_off + modinfo.len();
    let shoff = (shstr_off + shstrtab.len() + 7) & !7;
    let mut elf = vec![0u8; shoff + 3 * 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // ELFCLASS64
    elf[5] = 1; // little endian
    elf[6] = 1; // EV_CURRENT
    elf[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
    elf[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
    elf[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
    elf[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
    elf[0x3E..0x40].copy_from_slice(&2u16.to_le_bytes());
    elf[modinfo_off..shstr_off].copy_from_slice(&modinfo);
    elf[shstr_off..shstr_off + shstrtab.len()].copy_from_slice(&shstrtab);
    let mut section = |i: usize, name: u32, ty: u32, off: usize, size: usize| {
        let at = shoff + i * 64;
        elf[at..at + 4].copy_from_slice(&name.to_le_bytes());
        elf[at + 4..at + 8].copy_from_slice(&ty.to_le_bytes());
        elf[at + 24..at + 32].copy_from_slice(&(off as u64).to_le_bytes());
        elf[at + 32..at + 40].copy_from_slice(&(size as u64).to_le_bytes());
    };
    section(1, 1, 1, modinfo_off, modinfo.len()); // PROGBITS
    section(2, 10, 3, shstr_off, shstrtab.len()); // STRTAB
    elf
}

fn tree_with(modules: &[(&str, Vec<u8>)]) -> Tree {
    let mut tree = Tree::new(Meta::root(0o755, 5));
    let dir = Meta::root(0o755, 5);
    tree.create_dirs(&TreePath::new("usr/lib/modules/6.1.0-test").unwrap(), &dir)
        .unwrap();
    for (path, bytes) in modules {
        tree.insert_with_parents(
            format!("usr/lib/modules/6.1.0-test/{path}"),
            Entry::new(
                Kind::File(Content::bytes(bytes.clone())),
                Meta::root(0o644, 5),
            ),
            &dir,
        )
        .unwrap();
    }
    tree
}

fn synthetic_tree() -> Tree {
    tree_with(&[
        (
            "kernel/fs/ext4/ext4.ko",
            fake_module(&[
                "softdep=pre: crypto-crc32c",
                "alias=fs-ext4",
                "depends=jbd2,mbcache",
                "name=ext4",
            ]),
        ),
        (
            "kernel/fs/jbd2/jbd2.ko",
            fake_module(&["depends=", "name=jbd2"]),
        ),
        ("kernel/fs/mbcache.ko", fake_module(&["name=mbcache"])),
        (
            "kernel/crypto/crc32c_generic.ko",
            fake_module(&["alias=crypto-crc32c", "alias=crc32c", "name=crc32c_generic"]),
        ),
        (
            "kernel/drivers/block/virtio_blk.ko",
            fake_module(&[
                "alias=virtio:d00000002v*",
                "depends=virtio,virtio_ring",
                "name=virtio_blk",
            ]),
        ),
        (
            "kernel/drivers/virtio/virtio.ko",
            fake_module(&["name=virtio"]),
        ),
        (
            "kernel/drivers/virtio/virtio_ring.ko",
            fake_module(&["depends=virtio", "name=virtio_ring"]),
        ),
        (
            "kernel/drivers/md/dm-verity.ko",
            fake_module(&["depends=dm-bufio,dm-mod", "name=dm_verity"]),
        ),
        (
            "kernel/drivers/md/dm-bufio.ko",
            fake_module(&["depends=dm-mod", "name=dm_bufio"]),
        ),
        (
            "kernel/drivers/md/dm-mod.ko",
            fake_module(&["alias=devname:mapper/control", "name=dm_mod"]),
        ),
        ("kernel/sound/snd.ko", fake_module(&["name=snd"])),
    ])
}

#[test]
fn modinfo_fields_are_read_from_a_synthetic_module() {
    let elf = fake_module(&[
        "alias=fs-ext4",
        "depends=jbd2,mbcache",
        "softdep=pre: crc32c",
        "name=ext4",
        "license=GPL",
    ]);
    let info = parse_modinfo("ext4.ko", &elf).unwrap();
    assert_eq!(info.name.as_deref(), Some("ext4"));
    assert_eq!(info.depends, ["jbd2", "mbcache"]);
    assert_eq!(info.aliases, ["fs-ext4"]);
    assert_eq!(info.softdeps, ["pre: crc32c"]);
}

#[test]
fn broken_and_compressed_modules_are_refused_with_the_path() {
    let err = parse_modinfo("x.ko", b"not elf").unwrap_err().to_string();
    assert!(err.contains("x.ko") && err.contains("ELF"), "{err}");
    let mut elf = fake_module(&["name=x"]);
    elf.truncate(100);
    let err = parse_modinfo("x.ko", &elf).unwrap_err().to_string();
    assert!(err.contains("truncated") || err.contains("beyond"), "{err}");
    let tree = tree_with(&[("kernel/a.ko.xz", b"xz".to_vec())]);
    let err = ModuleSet::from_tree(&tree, "6.1.0-test")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a.ko.xz") && err.contains("compressed"),
        "{err}"
    );
    let err = ModuleSet::from_tree(&tree, "9.9").unwrap_err().to_string();
    assert!(err.contains("usr/lib/modules/9.9"), "{err}");
}

#[test]
fn indices_list_transitive_dependencies_in_load_order() {
    let set = ModuleSet::from_tree(&synthetic_tree(), "6.1.0-test").unwrap();
    let dep = set.modules_dep().unwrap();
    assert!(dep.contains("kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko\n"), "{dep}");
    assert!(dep.contains("kernel/fs/mbcache.ko:\n"), "{dep}");
    assert!(dep.contains("kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n"), "{dep}");
    let alias = set.modules_alias();
    assert!(
        alias.contains("alias virtio:d00000002v* virtio_blk\n"),
        "{alias}"
    );
    assert!(
        alias.contains("alias devname:mapper/control dm_mod\n"),
        "{alias}"
    );
    let soft = set.modules_softdep();
    assert!(soft.contains("softdep ext4 pre: crypto-crc32c\n"), "{soft}");

    let index = ModIndex::parse(&dep, &alias, &soft).unwrap();
    assert_eq!(
        index.load_order("dm-verity").unwrap(),
        [
            "kernel/drivers/md/dm-mod.ko",
            "kernel/drivers/md/dm-bufio.ko",
            "kernel/drivers/md/dm-verity.ko"
        ]
    );
    assert_eq!(
        index.lookup_alias("virtio:d00000002v00001AF4"),
        ["virtio_blk"]
    );
    assert_eq!(index.pre_softdeps["ext4"], ["crypto-crc32c"]);
    assert!(index.load_order("snd_hda").is_none());
}

#[test]
fn missing_dependency_and_cycles_are_errors() {
    let tree = tree_with(&[("kernel/a.ko", fake_module(&["depends=b", "name=a"]))]);
    let err = ModuleSet::from_tree(&tree, "6.1.0-test")
        .unwrap()
        .modules_dep()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kernel/a.ko") && err.contains("\"b\""),
        "{err}"
    );
    let tree = tree_with(&[
        ("kernel/a.ko", fake_module(&["depends=b", "name=a"])),
        ("kernel/b.ko", fake_module(&["depends=a", "name=b"])),
    ]);
    let err = ModuleSet::from_tree(&tree, "6.1.0-test")
        .unwrap()
        .modules_dep()
        .unwrap_err();
    assert!(matches!(err, KmodError::Cycle { .. }), "{err}");
}

#[test]
fn selection_keeps_matches_dependencies_and_softdeps_and_drops_the_rest() {
    let mut tree = synthetic_tree();
    let kept = select_in_tree(
        &mut tree,
        "6.1.0-test",
        &[
            "kernel/fs/ext4",
            "kernel/drivers/md/dm-verity.ko",
            "kernel/drivers/bl",
        ],
    )
    .unwrap();
    let names: BTreeSet<&str> = kept.modules.iter().map(|m| m.name.as_str()).collect();
    let expected: BTreeSet<&str> = [
        "ext4",
        "jbd2",
        "mbcache",
        "crc32c_generic",
        "dm_verity",
        "dm_bufio",
        "dm_mod",
    ]
    .into();
    // "kernel/drivers/bl" is not a directory boundary: virtio_blk stays out.
    assert_eq!(names, expected);
    let d = "usr/lib/modules/6.1.0-test";
    assert!(tree.get(format!("{d}/kernel/sound/snd.ko")).is_none());
    assert!(tree
        .get(format!("{d}/kernel/drivers/block/virtio_blk.ko"))
        .is_none());
    assert!(tree.get(format!("{d}/kernel/fs/jbd2/jbd2.ko")).is_some());
    let Kind::File(dep) = &tree.get(format!("{d}/modules.dep")).unwrap().kind else {
        panic!("modules.dep is not a file")
    };
    let dep = String::from_utf8(dep.read_all().unwrap()).unwrap();
    assert_eq!(dep.lines().count(), 7, "{dep}");
    assert!(!dep.contains("snd"));
}

#[test]
fn modules_named_in_the_load_list_are_kept_with_their_dependencies() {
    let spec = InitramfsModules {
        classes: &["kernel/fs/ext4"],
        always_load: &["virtio-blk", "ext4", "not_a_module"],
    };
    let (tree, subset) = initramfs_modules_with(&synthetic_tree(), "6.1.0-test", &spec, 0).unwrap();
    let names: BTreeSet<&str> = subset.modules.iter().map(|m| m.name.as_str()).collect();
    let expected: BTreeSet<&str> = [
        "ext4",
        "jbd2",
        "mbcache",
        "crc32c_generic",
        "virtio_blk",
        "virtio",
        "virtio_ring",
    ]
    .into();
    assert_eq!(names, expected);
    let Kind::File(list) = &tree.get(ALWAYS_LOAD_FILE).unwrap().kind else {
        panic!("the load list is not a file")
    };
    assert_eq!(list.read_all().unwrap(), b"virtio_blk\next4\n");
}

#[test]
fn initramfs_subset_has_its_own_indices_and_load_list() {
    let (tree, subset) = initramfs_modules(&synthetic_tree(), "6.1.0-test", 9).unwrap();
    assert!(subset.modules.iter().all(|m| m.name != "snd"));
    let read = |p: &str| match &tree.get(p).unwrap_or_else(|| panic!("{p} missing")).kind {
        Kind::File(c) => String::from_utf8(c.read_all().unwrap()).unwrap(),
        k => panic!("{p} is {k:?}"),
    };
    let list = read(ALWAYS_LOAD_FILE);
    assert_eq!(list, "crc32c_generic\ndm_verity\next4\n");
    let index = ModIndex::parse(
        &read("lib/modules/6.1.0-test/modules.dep"),
        &read("lib/modules/6.1.0-test/modules.alias"),
        &read("lib/modules/6.1.0-test/modules.softdep"),
    )
    .unwrap();
    for m in list.lines() {
        for path in index.load_order(m).unwrap() {
            assert!(
                tree.get(format!("lib/modules/6.1.0-test/{path}")).is_some(),
                "{path}"
            );
        }
    }
}

#[test]
fn binary_indices_of_a_synthetic_set_hold_names_aliases_and_builtins() {
    use super::trie::lookup;
    let set = ModuleSet::from_tree(&synthetic_tree(), "6.1.0-test").unwrap();
    let dep = set.modules_dep_bin().unwrap();
    let line = lookup(&dep, "dm_verity").unwrap();
    assert_eq!(line.len(), 1);
    assert_eq!(
        line[0].1,
        "kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko"
    );
    let alias = set.modules_alias_bin().unwrap();
    // Looked up by the normalised pattern, with the module's position as priority.
    let found = lookup(&alias, "crypto_crc32c").unwrap();
    assert_eq!(
        found.iter().map(|v| v.1.as_str()).collect::<Vec<_>>(),
        ["crc32c_generic"]
    );
    assert_eq!(
        lookup(&alias, "virtio:d00000002v*").unwrap()[0].1,
        "virtio_blk"
    );
    assert!(
        lookup(&alias, "fs-ext4").unwrap().is_empty(),
        "dashes are stored as _"
    );
    // No symbol tables in the synthetic modules: an empty but valid index.
    let symbols = set.modules_symbols_bin().unwrap();
    assert_eq!(lookup(&symbols, "symbol:x").unwrap(), []);

    let builtin = builtin_index(b"kernel/net/unix/unix.ko\nkernel/fs/nls/nls-base.ko\n\n").unwrap();
    assert_eq!(lookup(&builtin, "unix").unwrap(), [(0, String::new())]);
    assert_eq!(lookup(&builtin, "nls_base").unwrap().len(), 1);
    let modinfo = b"unix.license=GPL\0unix.alias=net-pf-1\0\0\0dh_generic.alias=crypto-dh\0bad\0";
    let aliases = builtin_alias_index(modinfo).unwrap();
    assert_eq!(
        lookup(&aliases, "net_pf_1").unwrap(),
        [(0, "unix".to_string())]
    );
    assert_eq!(lookup(&aliases, "crypto_dh").unwrap()[0].1, "dh_generic");
    assert!(lookup(&aliases, "GPL").unwrap().is_empty());

    let aliases = [
        "devname:fuse".to_string(),
        "char-major-10-*".to_string(),
        "char-major-10-229".to_string(),
    ];
    let devname = devname_of(&aliases);
    assert_eq!(devname, Some(("fuse", 'c', 10, 229)));
    assert_eq!(devname_of(&["devname:mapper/control".to_string()]), None);
}

#[test]
fn glob_matching_follows_fnmatch() {
    assert!(glob_match(
        "pci:v00001AF4d00001001sv*sd*bc*sc*i*",
        "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"
    ));
    assert!(!glob_match(
        "pci:v00001AF4d00001001sv*",
        "pci:v00001AF4d00001000sv0"
    ));
    assert!(glob_match(
        "usb:v*p*d*dc*dsc*dp*ic08isc06ip50in*",
        "usb:v0781p5567d0100dc00dsc00dp00ic08isc06ip50in00"
    ));
    assert!(glob_match("scsi:t-0x0[07]*", "scsi:t-0x00"));
    assert!(!glob_match("scsi:t-0x0[07]*", "scsi:t-0x05"));
    assert!(glob_match("a[!b]c", "axc") && !glob_match("a[!b]c", "abc"));
    assert!(glob_match("x[a-c]?", "xbz") && !glob_match("x[a-c]?", "xdz"));
    assert!(glob_match("*", "") && glob_match("a*b*c", "aXbYbc") && !glob_match("a*b", "ab c"));
    assert!(glob_match("[", "[") && !glob_match("?", ""));
}

fn dep_map(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, deps)| {
            (
                m.to_string(),
                deps.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect()
}

fn line_set(text: &str) -> BTreeSet<String> {
    text.lines().map(str::to_string).collect()
}

/// Debian's kernel as the image build sees it (read into a tree at `usr/lib/modules/<kver>`)
/// next to a hard-linked copy of the package on which Debian's `depmod` has run. Returns
/// the work directory (keep it alive), the copy's root, the kernel version, the tree and
/// the module set read from it.
fn debian_kernel_and_depmod() -> (tempfile::TempDir, PathBuf, String, Tree, ModuleSet) {
    let depmod = crate::testutil::require_tool("depmod", "kmod");
    let (extracted, kver) = crate::testutil::debian_kernel();
    let work = tempfile::Builder::new()
        .prefix("kiln-depmod")
        .tempdir_in(crate::testutil::TEST_CACHE)
        .unwrap();
    // depmod writes into the directory it reads: give it a hard-linked copy.
    let copy = work.path().join("depmod");
    hard_link_copy(&extracted, &copy);
    let st = Command::new(&depmod)
        .arg("-b")
        .arg(&copy)
        .arg(&kver)
        .status()
        .unwrap();
    assert!(st.success(), "depmod failed");

    let mut tree = Tree::new(Meta::root(0o755, 0));
    let opts = crate::hostdir::HostDirOptions {
        uid: 0,
        gid: 0,
        mtime: 0,
    };
    let src = extracted.join("lib/modules").join(&kver);
    crate::hostdir::add_host_dir(
        &mut tree,
        &src,
        &TreePath::new(modules_dir(&kver)).unwrap(),
        &opts,
    )
    .unwrap();
    let set = ModuleSet::from_tree(&tree, &kver).unwrap();
    assert!(
        set.modules.len() > 3000,
        "only {} modules",
        set.modules.len()
    );
    (work, copy, kver, tree, set)
}

fn hard_link_copy(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-al")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -al {} {}", from.display(), to.display());
}

/// Runs a kmod tool and returns its exit status, stdout and stderr with `base` replaced by
/// `BASE`, so runs over two directories compare.
fn run_kmod_tool(tool: &Path, args: &[&str], base: &Path) -> String {
    let out = Command::new(tool).args(args).output().unwrap();
    let text = format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.replace(&base.display().to_string(), "BASE")
}

#[test]
fn binary_indices_answer_modprobe_and_modinfo_as_depmods_do() {
    let modprobe = crate::testutil::require_tool("modprobe", "kmod");
    let modinfo = crate::testutil::require_tool("modinfo", "kmod");
    let (work, reference, kver, mut tree, set) = debian_kernel_and_depmod();
    let (extracted, _) = crate::testutil::debian_kernel();
    set.write_indices(&mut tree).unwrap();
    let dir = modules_dir(&kver);
    let read = |name: &str| match tree.get(format!("{dir}/{name}")).map(|e| &e.kind) {
        Some(Kind::File(c)) => c.read_all().unwrap(),
        k => panic!("{name} is {k:?}"),
    };

    // Same input, same bytes.
    let builtin = std::fs::read(
        extracted
            .join("lib/modules")
            .join(&kver)
            .join("modules.builtin"),
    )
    .unwrap();
    let builtin_modinfo = std::fs::read(
        extracted
            .join("lib/modules")
            .join(&kver)
            .join("modules.builtin.modinfo"),
    )
    .unwrap();
    let files = set
        .index_files(Some(&builtin), Some(&builtin_modinfo))
        .unwrap();
    assert_eq!(files.len(), 10);
    for (name, bytes) in &files {
        assert_eq!(&read(name), bytes, "{name} differs between two runs");
    }

    // Byte for byte what Debian's depmod writes, except modules.symbols, whose line order
    // is depmod's hash table's.
    let ref_dir = reference.join("lib/modules").join(&kver);
    for (name, ours) in &files {
        let theirs = std::fs::read(ref_dir.join(name)).unwrap();
        if *name == "modules.symbols" {
            let lines = |b: &[u8]| line_set(&String::from_utf8_lossy(b));
            assert_eq!(lines(ours), lines(&theirs), "{name}");
        } else {
            assert!(
                ours == &theirs,
                "{name} differs from depmod's ({} vs {} bytes)",
                ours.len(),
                theirs.len()
            );
        }
    }
    assert!(read("modules.symbols.bin").len() > 100_000);
    assert!(String::from_utf8(read("modules.devname"))
        .unwrap()
        .contains("fuse fuse c10:229\n"));

    // modprobe and modinfo give the same answers from our indices as from depmod's. Host
    // configuration is left out (-C an empty directory).
    let ours = work.path().join("ours");
    hard_link_copy(&extracted, &ours);
    let our_dir = ours.join("lib/modules").join(&kver);
    for (name, bytes) in &files {
        std::fs::write(our_dir.join(name), bytes).unwrap();
    }
    let no_config = work.path().join("modprobe.d");
    std::fs::create_dir(&no_config).unwrap();
    let no_config = no_config.display().to_string();
    let names = [
        "virtio_net",
        "virtio-net",
        "ext4",
        "br_netfilter",
        "overlay",
        "nf_tables",
        "dm_verity",
        "pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00",
        "fs-overlay",
        "net-pf-16-proto-12",
        "crypto-crc32c",
        "char-major-10-229",
        "symbol:jbd2_journal_start",
        "unix",
        "net-pf-1",
        "fs-debugfs",
        "no_such_module",
    ];
    let answers = |base: &Path| -> Vec<String> {
        let base_s = base.display().to_string();
        let mut out = Vec::new();
        for name in names {
            out.push(run_kmod_tool(
                &modprobe,
                &[
                    "-C",
                    &no_config,
                    "-d",
                    &base_s,
                    "-S",
                    &kver,
                    "--show-depends",
                    name,
                ],
                base,
            ));
            out.push(run_kmod_tool(
                &modinfo,
                &["-b", &base_s, "-k", &kver, "-F", "filename", name],
                base,
            ));
        }
        out
    };
    let (ours_said, theirs_said) = (answers(&ours), answers(&reference));
    for (i, (o, t)) in ours_said.iter().zip(&theirs_said).enumerate() {
        assert_eq!(o, t, "{} answers differently", names[i / 2]);
    }
    let said = ours_said.join("");
    assert!(said.contains("insmod BASE/lib/modules/"), "{said}");
    assert!(said.contains("virtio_net.ko"), "{said}");
    assert!(said.contains("builtin unix"), "{said}");

    // Without the binary indices modprobe finds nothing: they are what it reads.
    for (name, _) in files.iter().filter(|(n, _)| n.ends_with(".bin")) {
        std::fs::remove_file(our_dir.join(name)).unwrap();
    }
    let base_s = ours.display().to_string();
    let without = run_kmod_tool(
        &modprobe,
        &[
            "-C",
            &no_config,
            "-d",
            &base_s,
            "-S",
            &kver,
            "--show-depends",
            "virtio_net",
        ],
        &ours,
    );
    assert!(!without.contains("virtio_net.ko"), "{without}");
}

#[test]
fn indices_of_debians_kernel_match_depmod() {
    let (_work, copy, kver, tree, set) = debian_kernel_and_depmod();
    let ref_dir = copy.join("lib/modules").join(&kver);
    let reference = |name: &str| std::fs::read_to_string(ref_dir.join(name)).unwrap();
    let ours = set.modules_dep().unwrap();
    let theirs = reference("modules.dep");
    // Same lines in the same order (modules.order), each listing its dependencies in
    // depmod's order.
    assert_eq!(ours, theirs);
    assert_eq!(
        line_set(&set.modules_alias()),
        line_set(&reference("modules.alias"))
    );
    assert_eq!(
        line_set(&set.modules_softdep()),
        line_set(&reference("modules.softdep"))
    );

    // Our order is a valid load order: each listed dependency's own dependencies come
    // after it in the line (modprobe loads from the end).
    let deps = dep_map(&ours);
    for line in ours.lines() {
        let (_, list) = line.split_once(':').unwrap();
        let list: Vec<&str> = list.split_whitespace().collect();
        for (i, d) in list.iter().enumerate() {
            for dd in &deps[*d] {
                assert!(
                    list[i + 1..].contains(&dd.as_str()),
                    "{line}: {dd} should follow {d}"
                );
            }
        }
    }

    let (initrd, subset) = initramfs_modules(&tree, &kver, 0).unwrap();
    let names: BTreeSet<&str> = subset.modules.iter().map(|m| m.name.as_str()).collect();
    for needed in [
        "virtio_blk",
        "virtio_pci",
        "dm_verity",
        "dm_mod",
        "ext4",
        "jbd2",
        "vfat",
        "nvme",
        "ahci",
        "usb_storage",
        "sd_mod",
        "crc32c_generic",
        "qemu_fw_cfg",
        "uas",
        "nls_iso8859_1",
    ] {
        assert!(
            names.contains(needed),
            "{needed} missing from the initramfs subset"
        );
    }
    let bytes: u64 = initrd.content_bytes();
    assert!(bytes < 40 << 20, "initramfs modules take {bytes} bytes");
    assert!(initrd
        .get(format!("lib/modules/{kver}/modules.builtin"))
        .is_some());
}
