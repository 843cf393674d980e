//! Slot tests on a sparse copy of the built disk: a payload made from the build's own USR
//! image, kernel and initramfs is installed into USR-B, checked with the reference tools
//! (`veritysetup`, `fsck.fat`, `mdir`), and damaged payloads are shown to change nothing.
//!
//! Run with `KILN_CI_DISK=build/<version>/disk.raw cargo test -p kiln-ci --test slots`; the
//! build's `work/` directory beside the disk provides `usr.img`, `vmlinuz` and `initrd`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kiln_ci::{check, disk_under_test, extract_partition, partition, work_dir};
use kiln_contract::boot::{BootEntry, Slot};
use kiln_image::region::Region;
use kiln_image::testutil::require_tool;
use kiln_updater::install::{self, boot_entries, Phase, Target};
use kiln_updater::keys::{SigningKey, VerifyingKey};
use kiln_updater::payload::{self, Manifest, ManifestInput};

/// What the disk under test takes: the fixture's app, at a version below the fixture's 99.0.0.
const ACCEPT: install::Accept<'static> = install::Accept {
    app_id: "kiln-ci",
    running_version: "0",
    allow_downgrade: false,
    bad_versions: &[],
};
use sha2::{Digest, Sha256};

/// One payload for every test of this file (making it compresses 570 MiB), in one work directory
/// that each process starts afresh: a runner with a process per test (nextest) runs them one at a
/// time (`.config/nextest.toml`).
struct Fixture {
    dir: PathBuf,
    payload: PathBuf,
    manifest: Manifest,
    key: VerifyingKey,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let disk = disk_under_test();
        let work = disk.parent().expect("the disk's directory").join("work");
        let dir = work_dir("slots");
        let key = SigningKey::generate().unwrap();
        let usr = work.join("usr.img");
        let input = ManifestInput::new("kiln-ci", "99.0.0", ext4_bytes(&usr));
        let path = dir.join("update.payload");
        let manifest = payload::write_payload(
            &path,
            input,
            &usr,
            &work.join("vmlinuz"),
            &work.join("initrd"),
            &key,
        )
        .unwrap();
        Fixture {
            dir,
            payload: path,
            manifest,
            key: key.verifying_key(),
        }
    })
}

/// The filesystem's size from its ext4 superblock: where the verity superblock starts.
fn ext4_bytes(img: &Path) -> u64 {
    let mut sb = [0u8; 1024];
    let mut f = File::open(img).unwrap();
    f.seek(SeekFrom::Start(1024)).unwrap();
    f.read_exact(&mut sb).unwrap();
    let lo = u64::from(u32::from_le_bytes(sb[4..8].try_into().unwrap()));
    let hi = u64::from(u32::from_le_bytes(sb[0x150..0x154].try_into().unwrap()));
    let log = u32::from_le_bytes(sb[24..28].try_into().unwrap());
    ((hi << 32) | lo) << (10 + log)
}

/// A sparse copy of the disk under test (holes stay holes, so only the data is copied).
fn copy_disk(name: &str) -> PathBuf {
    let out = fixture().dir.join(name);
    check(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(disk_under_test())
            .arg(&out),
    )
    .unwrap();
    out
}

fn region(disk: &Path, name: &str) -> Region<File> {
    let (offset, len) = partition(disk, name).unwrap();
    Region::new(File::open(disk).unwrap(), offset, len).unwrap()
}

/// SHA-256 of the first `len` bytes of a partition (all of it for `None`).
fn partition_sha(disk: &Path, name: &str, len: Option<u64>) -> String {
    let mut r = region(disk, name);
    let len = len.unwrap_or(r.len());
    let mut h = Sha256::new();
    // Large reads: most of a partition is holes, which read fast but not 8 KiB at a time.
    let mut buf = vec![0u8; 8 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..n]).unwrap();
        h.update(&buf[..n]);
        left -= n as u64;
    }
    kiln_contract::hex::encode(&h.finalize())
}

fn entry_names(disk: &Path) -> Vec<String> {
    let t = Target {
        disk: disk.to_owned(),
        running: Slot::A,
    };
    boot_entries(&t)
        .unwrap()
        .iter()
        .map(BootEntry::file_name)
        .collect()
}

#[test]
fn an_update_writes_usr_b_only_and_its_entry_follows_boot_counting() {
    let fx = fixture();
    let disk = copy_disk("install.raw");
    let usr_a = partition_sha(&disk, "USR-A", None);
    let t = Target {
        disk: disk.clone(),
        running: Slot::A,
    };
    let mut writing = None;
    let start = std::time::Instant::now();
    let done = install::install(&t, &fx.payload, &fx.key, &ACCEPT, &mut |phase, _, _| {
        if phase == Phase::ReadingBack && writing.is_none() {
            writing = Some(start.elapsed());
        }
    })
    .unwrap();
    eprintln!(
        "install: {:.1} s in all, {:.1} s to verify and write {} MiB",
        start.elapsed().as_secs_f64(),
        writing.unwrap().as_secs_f64(),
        fx.manifest.usr_size >> 20
    );
    assert_eq!(done.slot, Slot::B);
    assert_eq!(partition_sha(&disk, "USR-A", None), usr_a, "USR-A changed");
    let m = &fx.manifest;
    assert_eq!(
        partition_sha(&disk, "USR-B", Some(m.usr_size)),
        m.usr_sha256
    );

    // Our verity check and veritysetup's agree with the signed root hash.
    let info =
        kiln_image::verity::verify(&mut region(&disk, "USR-B"), m.verity_hash_offset).unwrap();
    assert_eq!(info.root_hash_hex(), m.verity_root_hash);
    let usr_b = fx.dir.join("usr-b.img");
    let mut out = File::create(&usr_b).unwrap();
    std::io::copy(&mut region(&disk, "USR-B").take(m.usr_size), &mut out).unwrap();
    out.flush().unwrap();
    let veritysetup = require_tool("veritysetup", "cryptsetup-bin");
    check(
        Command::new(&veritysetup)
            .arg("verify")
            .arg(&usr_b)
            .arg(&usr_b)
            .arg(&m.verity_root_hash)
            .arg(format!("--hash-offset={}", m.verity_hash_offset)),
    )
    .unwrap();

    // The ESP: clean for fsck.fat, entries and files as mtools sees them.
    let esp = extract_partition(&disk, "EFI-SYSTEM", &fx.dir.join("esp.img")).unwrap();
    let fsck = require_tool("fsck.fat", "dosfstools");
    let report = check(Command::new(&fsck).arg("-n").arg(&esp)).unwrap();
    assert!(
        !report.contains("Fix") && !report.contains("differ"),
        "{report}"
    );
    let mdir = require_tool("mdir", "mtools");
    let listing = check(
        Command::new(&mdir)
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-b", "-i"])
            .arg(&esp)
            .arg("::/loader/entries"),
    )
    .unwrap();
    let mut names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    assert_eq!(names, ["kiln-a.conf", "kiln-b+3.conf"], "{listing}");
    assert_eq!(entry_names(&disk), ["kiln-a.conf", "kiln-b+3.conf"]);
    let mtype = require_tool("mtype", "mtools");
    let entry = check(
        Command::new(&mtype)
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&esp)
            .arg("::/loader/entries/kiln-b+3.conf"),
    )
    .unwrap();
    assert!(
        entry.contains(&format!(
            "options kiln.slot=b kiln.usrhash={} ",
            m.verity_root_hash
        )) && entry.contains("version 99.0.0\n")
            && entry.contains("linux /kiln/b/vmlinuz\n"),
        "{entry}"
    );
    // The initramfs is binary: compare it through our reader's hash.
    let initrd =
        kiln_image::fat::read_file(&mut region(&disk, "EFI-SYSTEM"), "/kiln/b/initrd").unwrap();
    assert_eq!(
        kiln_contract::hex::encode(&Sha256::digest(&initrd)),
        m.initrd_sha256
    );

    // Booted into B: bless, then roll back to A by hand.
    let on_b = Target {
        disk: disk.clone(),
        running: Slot::B,
    };
    assert!(install::bless(&on_b).unwrap());
    assert_eq!(entry_names(&disk), ["kiln-a.conf", "kiln-b.conf"]);
    assert_eq!(install::rollback(&on_b).unwrap(), Slot::A);
    assert_eq!(entry_names(&disk), ["kiln-a.conf", "kiln-b+0-1.conf"]);
    let esp = extract_partition(&disk, "EFI-SYSTEM", &fx.dir.join("esp-after.img")).unwrap();
    check(Command::new(&fsck).arg("-n").arg(&esp)).unwrap();
    assert_eq!(partition_sha(&disk, "USR-A", None), usr_a, "USR-A changed");
    // Passed: the large copies go (a failure keeps them to look at).
    for big in [&disk, &usr_b] {
        std::fs::remove_file(big).unwrap();
    }
}

/// Flips the byte at `at` of `path` in place (twice restores it).
fn flip(path: &Path, at: u64) {
    let mut f = File::options().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x01;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&b).unwrap();
}

#[test]
fn a_payload_with_one_byte_flipped_is_rejected_and_changes_nothing() {
    let fx = fixture();
    let disk = copy_disk("damaged.raw");
    let t = Target {
        disk: disk.clone(),
        running: Slot::A,
    };
    let esp_before = partition_sha(&disk, "EFI-SYSTEM", None);
    let usr_b_before = partition_sha(&disk, "USR-B", Some(fx.manifest.usr_size));
    // A private copy: the other test reads the shared payload at the same time.
    let bad = fx.dir.join("damaged.payload");
    std::fs::copy(&fx.payload, &bad).unwrap();
    let m = &fx.manifest;
    let flips = [
        ("magic", 0),
        ("format version", 8),
        ("signature", 40),
        ("manifest", payload::HEADER_LEN + 30),
        ("usr part, start", m.parts.usr.offset),
        (
            "usr part, middle",
            m.parts.usr.offset + m.parts.usr.length / 2,
        ),
        ("usr part, end", m.parts.usr.offset + m.parts.usr.length - 1),
        (
            "kernel part",
            m.parts.kernel.offset + m.parts.kernel.length / 3,
        ),
        (
            "initrd part",
            m.parts.initrd.offset + m.parts.initrd.length - 1,
        ),
    ];
    for (what, at) in flips {
        flip(&bad, at);
        let result = install::install(&t, &bad, &fx.key, &ACCEPT, &mut |_, _, _| {});
        flip(&bad, at);
        let err = result.expect_err(what);
        assert!(
            matches!(err, install::InstallError::Payload(_)),
            "{what}: {err}"
        );
        assert_eq!(entry_names(&disk), ["kiln-a.conf"], "{what}");
    }
    assert_eq!(partition_sha(&disk, "EFI-SYSTEM", None), esp_before);
    assert_eq!(
        partition_sha(&disk, "USR-B", Some(fx.manifest.usr_size)),
        usr_b_before
    );
    for big in [&disk, &bad] {
        std::fs::remove_file(big).unwrap();
    }
}

/// The agent's seam over the install path, on a copy of the built disk: it reads the real boot
/// entries, blessing the blessed factory entry changes nothing, and a rollback with no second
/// slot installed is refused without touching the entries.
#[test]
fn the_agents_installer_reads_entries_and_refuses_a_rollback_to_an_empty_slot() {
    use kiln_agent::installer::Installer;
    use kiln_contract::errorcode;
    let disk = copy_disk("agent-seam");
    let key_pem = SigningKey::generate()
        .unwrap()
        .verifying_key()
        .to_pem()
        .unwrap();
    let mut real = kiln_agent::real::RealInstaller::new(
        Target {
            disk: disk.clone(),
            running: Slot::A,
        },
        VerifyingKey::from_pem(&key_pem).unwrap(),
    );
    let before = real.boot_entries().unwrap();
    assert!(before.iter().any(|e| e.starts_with("kiln-a")), "{before:?}");
    assert!(
        !real.bless().unwrap(),
        "the factory entry is already blessed"
    );
    let e = real.rollback().unwrap_err();
    assert_eq!(e.code, errorcode::GENERIC);
    assert!(
        e.message.contains("roll back") || e.message.contains("slot b"),
        "{}",
        e.message
    );
    assert_eq!(real.boot_entries().unwrap(), before);
    let _ = std::fs::remove_file(&disk);
}
