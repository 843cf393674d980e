//! Checks of the built disk against the reference tools that define its formats, and the
//! reproducibility of the build.

use std::fs::File;
use std::process::Command;

use kiln_ci::{check, disk_under_test, extract_partition, partition, run, work_dir};
use kiln_contract::boot::BootEntry;
use kiln_image::region::Region;
use kiln_image::testutil::require_tool;

#[test]
fn partition_table_and_filesystems_pass_their_reference_tools() {
    let disk = disk_under_test();
    let work = work_dir("image-checks");
    let sgdisk = require_tool("sgdisk", "gdisk");
    let out = check(Command::new(&sgdisk).arg("-v").arg(&disk)).unwrap();
    assert!(out.contains("No problems found"), "sgdisk -v: {out}");

    let fsck_fat = require_tool("fsck.fat", "dosfstools");
    for name in ["EFI-SYSTEM", "OEM"] {
        let img = extract_partition(&disk, name, &work.join(format!("{name}.img"))).unwrap();
        check(Command::new(&fsck_fat).arg("-n").arg(&img)).unwrap();
    }
    let e2fsck = require_tool("e2fsck", "e2fsprogs");
    for name in ["USR-A", "ROOT"] {
        let img = extract_partition(&disk, name, &work.join(format!("{name}.img"))).unwrap();
        let out = run(Command::new(&e2fsck).args(["-fn"]).arg(&img)).unwrap();
        assert!(
            out.status.success(),
            "e2fsck -fn {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn usr_a_verifies_against_the_root_hash_of_its_boot_entry() {
    let disk = disk_under_test();
    let work = work_dir("image-verity");
    let (offset, len) = partition(&disk, "EFI-SYSTEM").unwrap();
    let mut esp = Region::new(File::open(&disk).unwrap(), offset, len).unwrap();
    let text = String::from_utf8(
        kiln_image::fat::read_file(&mut esp, "/loader/entries/kiln-a.conf").unwrap(),
    )
    .unwrap();
    let entry = BootEntry::parse("kiln-a.conf", &text).unwrap();
    let hash = entry
        .options
        .split_whitespace()
        .find_map(|w| w.strip_prefix("kiln.usrhash="))
        .unwrap();
    let usr = extract_partition(&disk, "USR-A", &work.join("usr.img")).unwrap();
    let info =
        kiln_image::verity::verify(&mut File::open(&usr).unwrap(), ext4_bytes(&usr)).unwrap();
    assert_eq!(info.root_hash_hex(), hash);
    let veritysetup = require_tool("veritysetup", "cryptsetup-bin");
    check(
        Command::new(&veritysetup)
            .arg("verify")
            .arg(&usr)
            .arg(&usr)
            .arg(hash)
            .arg(format!("--hash-offset={}", ext4_bytes(&usr))),
    )
    .unwrap();
}

/// The filesystem's size from its superblock: where the verity superblock starts.
fn ext4_bytes(img: &std::path::Path) -> u64 {
    let b = std::fs::read(img).unwrap();
    let sb = &b[1024..2048];
    let lo = u32::from_le_bytes(sb[4..8].try_into().unwrap()) as u64;
    let hi = u32::from_le_bytes(sb[0x150..0x154].try_into().unwrap()) as u64;
    let log = u32::from_le_bytes(sb[24..28].try_into().unwrap());
    ((hi << 32) | lo) << (10 + log)
}

#[test]
fn a_second_build_of_the_same_inputs_gives_the_same_disk() {
    let disk = disk_under_test();
    let version = std::env::var("KILN_CI_VERSION").expect("KILN_CI_VERSION");
    let work = work_dir("reproducible");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    check(
        kiln_qemu::cargo_command()
            .args(["xtask", "build-image", "--version", &version, "--out"])
            .arg(&work)
            .current_dir(root),
    )
    .unwrap();
    let again = work.join(&version).join("disk.raw");
    assert_eq!(
        sha256(&again),
        sha256(&disk),
        "two builds of the same inputs differ: {} vs {}",
        again.display(),
        disk.display()
    );
}

fn sha256(path: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    std::io::copy(&mut File::open(path).unwrap(), &mut h).unwrap();
    format!("{:x}", h.finalize())
}
