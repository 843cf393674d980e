//! The install path on a small disk image made here (GPT from `kiln_image::disk`, ESP from
//! `kiln_image::fat`), checked with `fsck.fat` and by comparing partition bytes.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_contract::boot::{BootEntry, Counter, Slot};
use kiln_contract::disk::{self, MIB};
use kiln_image::disk::{assemble, PartitionContent};
use kiln_image::gpt::Guid;
use kiln_image::testutil::require_tool;
use kiln_image::tree::{Content, Entry, Kind, Meta, Tree};
use sha2::{Digest, Sha256};

use super::*;
use crate::keys::SigningKey;
use crate::payload::testutil::{inputs, make};
use crate::payload::{write_payload, ManifestInput};

/// A disk ([`make_disk`]) in a temporary directory, the key payloads are signed with (and its
/// public half), and the disk with slot A running.
fn fixture() -> (tempfile::TempDir, PathBuf, SigningKey, VerifyingKey, Target) {
    let dir = tempfile::tempdir().unwrap();
    let disk = make_disk(dir.path());
    let key = SigningKey::generate().unwrap();
    let vk = key.verifying_key();
    let t = running_a(&disk);
    (dir, disk, key, vk, t)
}

/// A progress callback that notes each phase once, in order.
fn note_phases(phases: &mut Vec<Phase>) -> impl FnMut(Phase, u64, u64) + '_ {
    move |p, _, _| {
        if phases.last() != Some(&p) {
            phases.push(p);
        }
    }
}

/// `disk` with slot A running.
fn running_a(disk: &Path) -> Target {
    Target {
        disk: disk.to_owned(),
        running: Slot::A,
    }
}

/// What a machine running `{app}` 1.0.0 accepts.
const ON_1_0_0: Accept<'static> = Accept {
    app_id: "{app}",
    running_version: "1.0.0",
    allow_downgrade: false,
    bad_versions: &[],
};

const T: i64 = 1_700_000_000;
const CMDLINE: &str = "console=ttyS0,115200n8 quiet";

/// A disk like the build's, small: an ESP with slot A's entry and boot files, USR-A holding an
/// image with its verity tree, USR-B empty.
fn make_disk(dir: &Path) -> PathBuf {
    let a = dir.join("a");
    std::fs::create_dir_all(&a).unwrap();
    let usr_a = inputs(&a, 1);
    let entry = BootEntry::new(
        Slot::A,
        "1.0.0",
        &usr_a.verity.root_hash_hex(),
        CMDLINE,
        Counter::Blessed,
    );
    let mut esp = Tree::new(Meta::root(0o755, T));
    let dir_meta = Meta::root(0o755, T);
    let file = |b: Vec<u8>| Entry::new(Kind::File(Content::bytes(b)), Meta::root(0o644, T));
    for (path, data) in [
        ("loader/loader.conf".to_string(), b"timeout 3\n".to_vec()),
        (
            format!("loader/entries/{}", entry.file_name()),
            entry.render().into_bytes(),
        ),
        (
            "kiln/a/vmlinuz".to_string(),
            std::fs::read(&usr_a.kernel).unwrap(),
        ),
        (
            "kiln/a/initrd".to_string(),
            std::fs::read(&usr_a.initrd).unwrap(),
        ),
    ] {
        esp.insert_with_parents(path, file(data), &dir_meta)
            .unwrap();
    }
    let esp_img = dir.join("esp.img");
    let opts = kiln_image::fat::FatOptions {
        size_bytes: 8 * MIB,
        volume_id: 1,
        label: disk::ESP.into(),
        timestamp: T,
    };
    kiln_image::fat::format(&esp, &opts, &mut File::create(&esp_img).unwrap()).unwrap();
    let layout = disk::layout(8, 4, 1, 1);
    let path = dir.join("disk.raw");
    let contents = [
        PartitionContent {
            number: disk::ESP_NUMBER,
            image: Some(&esp_img),
        },
        PartitionContent {
            number: disk::USR_A_NUMBER,
            image: Some(&usr_a.usr),
        },
    ];
    assemble(&path, &layout, &contents, |n| Guid::from_hash(n.as_bytes())).unwrap();
    path
}

fn partition_bytes(disk: &Path, name: &str) -> Vec<u8> {
    let mut f = File::open(disk).unwrap();
    let len = f.metadata().unwrap().len();
    let gpt = kiln_image::gpt::Gpt::read(&mut f, len).unwrap();
    let (_, p) = gpt.find_by_name(name).unwrap();
    let mut region = Region::new(f, p.start_bytes(), p.size_bytes()).unwrap();
    let mut out = Vec::new();
    region.read_to_end(&mut out).unwrap();
    out
}

fn sha(bytes: &[u8]) -> String {
    kiln_contract::hex::encode(&Sha256::digest(bytes))
}

fn entry_names(t: &Target) -> Vec<String> {
    boot_entries(t)
        .unwrap()
        .iter()
        .map(BootEntry::file_name)
        .collect()
}

/// `fsck.fat -n` finds nothing to fix in the disk's ESP.
fn assert_esp_clean(disk: &Path, dir: &Path) {
    let img = dir.join("esp-check.img");
    std::fs::write(&img, partition_bytes(disk, disk::ESP)).unwrap();
    let fsck = require_tool("fsck.fat", "dosfstools");
    let out = Command::new(fsck).arg("-n").arg(&img).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fsck.fat -n: {text}");
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| {
            !(l.starts_with("fsck.fat ")
                || l.starts_with("Starting check")
                || l.contains(" files, "))
        })
        .collect();
    assert!(complaints.is_empty(), "fsck.fat -n: {text}");
}

/// What reached the slot is compared with what was written: a byte changed in the data, or in
/// the tree written after it, fails the read-back, naming the partition and where; the slot as
/// written passes. A tree that reads back as written but is not the signed one is refused too.
#[test]
fn the_read_back_catches_a_byte_changed_in_the_data_or_in_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_disk(dir.path());
    let key = SigningKey::generate().unwrap();
    let (payload, m) = make(dir.path(), "p", "2.0.0", &key);
    install(
        &running_a(&path),
        &payload,
        &key.verifying_key(),
        &ON_1_0_0,
        &mut |_, _, _| {},
    )
    .unwrap();
    let disk = Disk::open(&path, true).unwrap();
    let (_, part) = disk.partition(disk::USR_B).unwrap();
    let window = (part.start_bytes(), part.size_bytes());
    // What the writer saw: the image as it is on the disk now.
    let digests_now = || {
        let mut p = pieces::Pieces::new();
        p.add(&partition_bytes(&path, disk::USR_B)[..m.usr_size as usize]);
        p.finish()
    };
    let written = digests_now();
    let check =
        |written: &[u128]| read_back(&disk, window, &m, written, disk::USR_B, &mut |_, _, _| {});
    check(&written).unwrap();
    let flip = |at: u64| {
        let f = File::options().read(true).write(true).open(&path).unwrap();
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, window.0 + at).unwrap();
        f.write_all_at(&[byte[0] ^ 0x01], window.0 + at).unwrap();
    };
    // The middle of the data; the tree's first block (its top level) after the superblock.
    let top = m.verity_hash_offset + 4096 + 5;
    for at in [m.verity_hash_offset / 2, top] {
        flip(at);
        let err = check(&written).unwrap_err();
        let InstallError::ReadBack { offset, len, .. } = err else {
            panic!("{err}");
        };
        assert!(offset <= at && at < offset + len, "byte {at}: {err}");
        assert!(err.to_string().contains(disk::USR_B), "{err}");
        flip(at);
        check(&written).unwrap();
    }
    // Written so (the digests taken of the changed tree), the tree no longer covers its lowest
    // level: dm-verity would refuse the slot, and so does the read-back.
    flip(top);
    let err = check(&digests_now()).unwrap_err();
    assert!(matches!(err, InstallError::Verity { .. }), "{err}");
    flip(top);
}

#[test]
fn install_writes_the_other_slot_then_its_entry_and_bless_and_rollback_rename() {
    let dir = tempfile::tempdir().unwrap();
    let disk = make_disk(dir.path());
    let key = SigningKey::generate().unwrap();
    let (payload, m) = make(dir.path(), "p", "2.0.0", &key);
    let t = running_a(&disk);
    let usr_a = sha(&partition_bytes(&disk, disk::USR_A));
    assert_eq!(entry_names(&t), ["kiln-a.conf"]);

    let mut phases = Vec::new();
    let done = install(
        &t,
        &payload,
        &key.verifying_key(),
        &ON_1_0_0,
        &mut note_phases(&mut phases),
    )
    .unwrap();
    assert_eq!(done.slot, Slot::B);
    assert_eq!(done.manifest, m);
    use Phase::*;
    assert_eq!(phases, [Verifying, Writing, ReadingBack, Esp, Entry]);
    assert_eq!(sha(&partition_bytes(&disk, disk::USR_A)), usr_a);
    let usr_b = partition_bytes(&disk, disk::USR_B);
    assert_eq!(sha(&usr_b[..m.usr_size as usize]), m.usr_sha256);
    assert_esp_clean(&disk, dir.path());

    let entries = boot_entries(&t).unwrap();
    let names: Vec<String> = entries.iter().map(BootEntry::file_name).collect();
    assert_eq!(names, ["kiln-a.conf", "kiln-b+3.conf"]);
    let b = &entries[1];
    assert_eq!(b.version, "2.0.0");
    assert_eq!(
        b.options,
        format!("kiln.slot=b kiln.usrhash={} {CMDLINE}", m.verity_root_hash)
    );
    assert_eq!(b.linux, "/kiln/b/vmlinuz");

    // Booted into B: bless it, then roll back to A by hand, then forward again.
    let on_b = Target {
        disk: disk.clone(),
        running: Slot::B,
    };
    assert!(bless(&on_b).unwrap());
    assert!(!bless(&on_b).unwrap());
    assert_eq!(entry_names(&t), ["kiln-a.conf", "kiln-b.conf"]);
    assert_eq!(rollback(&on_b).unwrap(), Slot::A);
    assert_eq!(entry_names(&t), ["kiln-a.conf", "kiln-b+0-1.conf"]);
    assert_eq!(rollback(&t).unwrap(), Slot::B);
    assert_eq!(entry_names(&t), ["kiln-a+0-1.conf", "kiln-b+3.conf"]);
    assert_esp_clean(&disk, dir.path());

    // Installing again over B (running A, back on 1.0.0) replaces B's entry and files.
    let a_again = Target {
        disk: disk.clone(),
        running: Slot::A,
    };
    install(
        &a_again,
        &payload,
        &key.verifying_key(),
        &ON_1_0_0,
        &mut |_, _, _| {},
    )
    .unwrap();
    assert_eq!(entry_names(&t), ["kiln-a+0-1.conf", "kiln-b+3.conf"]);
    assert_esp_clean(&disk, dir.path());
}

#[test]
fn damaged_or_foreign_payloads_change_nothing_on_the_disk() {
    let (dir, disk, key, vk, t) = fixture();
    // A first good install, so B has an entry that a bad payload must not remove.
    let (good, m) = make(dir.path(), "good", "2.0.0", &key);
    install(&t, &good, &vk, &ON_1_0_0, &mut |_, _, _| {}).unwrap();
    let before = std::fs::read(&disk).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.path().join("bad");
    let manifest_at = crate::payload::HEADER_LEN as usize + 5;
    let mut flips = vec![3, 20, manifest_at];
    for (_, part) in m.parts() {
        flips.push((part.offset + part.length / 2) as usize);
    }
    for at in flips {
        let mut b = bytes.clone();
        b[at] ^= 1;
        std::fs::write(&bad, &b).unwrap();
        let err = install(&t, &bad, &vk, &ON_1_0_0, &mut |_, _, _| {})
            .expect_err(&format!("flip at {at}"));
        assert!(matches!(err, InstallError::Payload(_)), "{at}: {err}");
        assert!(
            std::fs::read(&disk).unwrap() == before,
            "flip at {at} changed the disk"
        );
    }
    // Signed by another key.
    let other = SigningKey::generate().unwrap();
    let (foreign, _) = make(dir.path(), "foreign", "2.0.0", &other);
    assert!(install(&t, &foreign, &vk, &ON_1_0_0, &mut |_, _, _| {}).is_err());
    // Another board.
    let inp = inputs(dir.path(), 5);
    let mut input = ManifestInput::new("{app}", "2.0.0", inp.verity.hash_offset);
    input.board = "arm64-usr".into();
    let arm = dir.path().join("arm");
    write_payload(&arm, input, &inp.usr, &inp.kernel, &inp.initrd, &key).unwrap();
    let err = install(&t, &arm, &vk, &ON_1_0_0, &mut |_, _, _| {}).unwrap_err();
    assert!(matches!(err, InstallError::WrongBoard { .. }), "{err}");
    assert!(std::fs::read(&disk).unwrap() == before);
}

/// Checked ahead of time ([`verify`]: an agent before it waits for a cluster's lock), a payload
/// is written without its parts hashed again (no `Verifying` phase) while the file is the one
/// checked. One changed since, even by a byte written in place, is checked in full again and
/// refused with nothing on the disk changed; the signed manifest's `accept` is always asked
/// again (a version may have been marked bad meanwhile).
#[test]
fn a_payload_verified_ahead_is_written_without_hashing_its_parts_again_unless_it_changed() {
    let (dir, disk, key, vk, t) = fixture();
    let (payload, m) = make(dir.path(), "p", "2.0.0", &key);
    let sys = SysPaths::default();
    let mut phases = Vec::new();
    let verified = verify(&payload, &vk, &ON_1_0_0, &mut note_phases(&mut phases)).unwrap();
    assert_eq!(phases, [Phase::Verifying]);
    let before = std::fs::read(&disk).unwrap();

    // A byte of the USR part changed in place: same file, same size, a new change time (the
    // kernel's file clock ticks every few milliseconds, so the test lets one pass first).
    std::thread::sleep(std::time::Duration::from_millis(20));
    let at = m.parts.usr.offset + m.parts.usr.length / 2;
    let flip = || {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&payload)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 1], at).unwrap();
    };
    // What installing it with `accept` says: it must fail, with the disk as it was.
    let refused = |accept: &Accept, verified: &Verified| {
        let err = install_with(
            &t,
            &payload,
            &vk,
            accept,
            Some(verified),
            &sys,
            &mut |_, _, _| {},
        )
        .unwrap_err();
        assert!(std::fs::read(&disk).unwrap() == before, "the disk changed");
        err
    };
    flip();
    let err = refused(&ON_1_0_0, &verified);
    assert!(
        matches!(
            err,
            InstallError::Payload(PayloadError::PartMismatch { .. })
        ),
        "{err}"
    );

    // Put back and checked again: written without a second pass over the parts.
    flip();
    let verified = verify(&payload, &vk, &ON_1_0_0, &mut |_, _, _| {}).unwrap();
    let failed_here = [String::from("2.0.0")];
    let marked_bad = Accept {
        bad_versions: &failed_here,
        ..ON_1_0_0
    };
    let err = refused(&marked_bad, &verified);
    assert!(matches!(err, InstallError::Refused { .. }), "{err}");
    let mut phases = Vec::new();
    let done = install_with(
        &t,
        &payload,
        &vk,
        &ON_1_0_0,
        Some(&verified),
        &sys,
        &mut note_phases(&mut phases),
    )
    .unwrap();
    assert_eq!(done.manifest, m);
    use Phase::*;
    assert_eq!(phases, [Writing, ReadingBack, Esp, Entry]);
    let usr_b = partition_bytes(&disk, disk::USR_B);
    assert_eq!(sha(&usr_b[..m.usr_size as usize]), m.usr_sha256);
}

/// A validly signed payload is still refused, with nothing on the disk changed, when its
/// signed manifest names another app, a version not newer than the running one (a downgrade a
/// man-in-the-middle can offer under any label), a version that failed on this machine, or a
/// `min_from_version` newer than what runs. An operator's `allow_downgrade` lets an older one
/// in.
#[test]
fn validly_signed_payloads_for_another_app_older_or_failed_here_change_nothing() {
    let (dir, disk, key, vk, t) = fixture();
    let before = std::fs::read(&disk).unwrap();
    let (older, _) = make(dir.path(), "older", "0.9.0", &key);
    let (same, _) = make(dir.path(), "same", "1.0.0", &key);
    let (newer, _) = make(dir.path(), "newer", "2.0.0", &key);
    let inp = inputs(dir.path(), 6);
    let other_app = dir.path().join("other-app");
    let input = ManifestInput::new("{another-app}", "3.0.0", inp.verity.hash_offset);
    write_payload(&other_app, input, &inp.usr, &inp.kernel, &inp.initrd, &key).unwrap();
    let needs_1_5 = dir.path().join("needs-1.5");
    let mut input = ManifestInput::new("{app}", "3.0.0", inp.verity.hash_offset);
    input.min_from_version = Some("1.5.0".into());
    write_payload(&needs_1_5, input, &inp.usr, &inp.kernel, &inp.initrd, &key).unwrap();
    let bad = ["2.0.0".to_owned()];
    let failed_here = Accept {
        bad_versions: &bad,
        ..ON_1_0_0
    };
    let cases: [(&Path, &Accept, &str); 5] = [
        (&older, &ON_1_0_0, "not newer than the running 1.0.0"),
        (&same, &ON_1_0_0, "not newer than the running 1.0.0"),
        (&other_app, &ON_1_0_0, "signed for app {another-app}"),
        (&needs_1_5, &ON_1_0_0, "installs only over 1.5.0 or newer"),
        (
            &newer,
            &failed_here,
            "failed to boot on this machine before",
        ),
    ];
    for (payload, accept, said) in cases {
        let err = install(&t, payload, &vk, accept, &mut |_, _, _| {}).unwrap_err();
        assert!(
            matches!(
                err,
                InstallError::Refused { .. } | InstallError::OtherApp { .. }
            ),
            "{}: {err}",
            payload.display()
        );
        assert!(err.to_string().contains(said), "{err}");
        assert!(
            std::fs::read(&disk).unwrap() == before,
            "{} changed the disk",
            payload.display()
        );
    }
    // The app id as update_engine sends it (braces, another case) is the same app.
    let braced = Accept {
        app_id: "{APP}",
        ..ON_1_0_0
    };
    install(&t, &newer, &vk, &braced, &mut |_, _, _| {}).unwrap();
    // Allowed by the operator, an older version installs.
    let downgrade = Accept {
        allow_downgrade: true,
        ..ON_1_0_0
    };
    let done = install(&t, &older, &vk, &downgrade, &mut |_, _, _| {}).unwrap();
    assert_eq!(done.manifest.version, "0.9.0");
}

#[test]
fn a_payload_may_hold_the_inactive_slot_and_the_esp() {
    let dir = tempfile::tempdir().unwrap();
    let disk = make_disk(dir.path());
    let bytes = std::fs::read(&disk).unwrap();
    let gpt =
        kiln_image::gpt::Gpt::read(&mut std::io::Cursor::new(&bytes), bytes.len() as u64).unwrap();
    let size = |name| gpt.find_by_name(name).unwrap().1.size_bytes();
    assert_eq!(
        payload_room(&running_a(&disk)).unwrap(),
        crate::payload::PARTS_OFFSET + size(disk::USR_B) + size(disk::ESP)
    );
}

#[test]
fn a_usr_image_that_does_not_match_its_tree_makes_no_payload() {
    // A payload whose image would fail the device's verity check after writing is never
    // made: write_payload checks the tree first.
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let inp = inputs(dir.path(), 4);
    let mut img = std::fs::read(&inp.usr).unwrap();
    img[100] ^= 1;
    std::fs::write(&inp.usr, &img).unwrap();
    let err = write_payload(
        &dir.path().join("p"),
        ManifestInput::new("{app}", "2.0.0", inp.verity.hash_offset),
        &inp.usr,
        &inp.kernel,
        &inp.initrd,
        &key,
    )
    .unwrap_err();
    assert!(matches!(err, PayloadError::Verity { .. }), "{err}");
    assert!(!dir.path().join("p").exists() && !dir.path().join("p.partial").exists());
}

#[test]
fn the_running_slot_comes_from_the_command_line() {
    assert_eq!(running_slot("BOOT_IMAGE=x kiln.slot=b ro"), Some(Slot::B));
    assert_eq!(running_slot("kiln.slot=a kiln.slot=b"), Some(Slot::B));
    assert_eq!(running_slot("kiln.slot=c"), None);
    assert_eq!(running_slot("quiet"), None);
    assert_eq!(
        carried_cmdline("kiln.slot=a kiln.usrhash=00 console=ttyS0  rw"),
        "console=ttyS0 rw"
    );
}
