//! Flash against loop devices and files (as root), checked with the reference tools (`sgdisk`,
//! `fsck.fat`): every refusal leaves the target byte for byte unchanged, and a flash gives a
//! valid GPT with its backup at the end and the cloud-config on OEM.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_contract::disk::{self, MIB};
use kiln_image::gpt::{Gpt, TableSource};
use kiln_image::region::Region;
use kiln_image::testutil::require_tool;

use kiln_updater::keys::{SigningKey, VerifyingKey};

use super::image::Trust;
use super::testutil::{sh, sha256, small_image, target_file, Loop, Scratch};
use super::trust::{KeySource, KeySources, TrustedKey};
use super::{execute, prepare, FlashConfig, OEM_CONFIG};
use crate::keygen;
use crate::release::chunks::ChunkList;
use crate::release::signature::sign;
use crate::release::{self, CHUNKS_FILE, KEY_FILE, SIG_FILE, SUMS_FILE, ZST_FILE};

const GOOD_CONFIG: &str = "#cloud-config\nhostname: flashed\nssh_authorized_keys:\n  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ4b3dtcmFwcGVkZXhhbXBsZWtleWZvcnRlc3Rz test\n";

struct Fixture {
    dir: Scratch,
    image: PathBuf,
    config: PathBuf,
    /// The user's key, made by keygen in the fixture's own home directory: it signed the build.
    key: SigningKey,
    /// Where flash looks for the keys it trusts by default: that home and a checkout without a
    /// development key, never the real ones.
    sources: KeySources,
}

fn fixture(name: &str) -> Fixture {
    let dir = Scratch::new(name);
    let build = dir.path().join("build");
    std::fs::create_dir(&build).unwrap();
    let image = small_image(&build);
    let config = dir.path().join("cloud-config.yml");
    std::fs::write(&config, GOOD_CONFIG).unwrap();
    let home = dir.path().join("home");
    let (private, _) = keygen::keygen(&keygen::dir_in_home(&home)).unwrap();
    let key = SigningKey::load_pem(&private).unwrap();
    sign_build(&build, &key);
    let sources = KeySources {
        home: Some(home),
        signing_key: None,
        checkout: dir.path().join("checkout"),
    };
    Fixture {
        dir,
        image,
        config,
        key,
        sources,
    }
}

impl Fixture {
    fn build_dir(&self) -> &Path {
        self.image.parent().unwrap()
    }

    /// The public key keygen wrote in the fixture's home.
    fn trusted_key_path(&self) -> PathBuf {
        keygen::dir_in_home(self.sources.home.as_ref().unwrap()).join(keygen::PUBLIC_FILE)
    }

    /// Signs the build's `SHA256SUMS` again with the user's key, after a test rewrote it.
    fn sign_again(&self) {
        sign_build(self.build_dir(), &self.key);
    }
}

/// Signs `dir/SHA256SUMS` with `key` and puts its public key beside it, as a build does.
fn sign_build(dir: &Path, key: &SigningKey) {
    let sums = std::fs::read(dir.join(SUMS_FILE)).unwrap();
    std::fs::write(dir.join(SIG_FILE), sign(&sums, key)).unwrap();
    let public = dir.join(KEY_FILE);
    let _ = std::fs::remove_file(&public);
    key.verifying_key().write_pem(&public).unwrap();
}

fn device_cfg(f: &Fixture, dev: &Path) -> FlashConfig {
    FlashConfig {
        device: Some(dev.to_owned()),
        image: Some(f.image.clone()),
        config: Some(f.config.clone()),
        yes: true,
        key_sources: Some(f.sources.clone()),
        ..FlashConfig::default()
    }
}

/// The fixture's image into a new file under its scratch directory.
fn file_cfg(f: &Fixture) -> FlashConfig {
    FlashConfig {
        device: None,
        to_file: Some(f.dir.path().join("out.img")),
        ..device_cfg(f, Path::new("/unused"))
    }
}

/// `prepare` must refuse with a message holding every one of `words`, and the target must
/// read the same before and after.
fn assert_refused(cfg: &FlashConfig, target: &Path, words: &[&str]) {
    let before = sha256(target);
    let err = match prepare(cfg) {
        Ok(_) => panic!("{cfg:?} was not refused"),
        Err(e) => format!("{e:#}"),
    };
    for w in words {
        assert!(err.contains(w), "{w:?} missing from: {err}");
    }
    assert_eq!(sha256(target), before, "{} changed", target.display());
}

#[test]
fn a_mounted_partition_of_the_disk_is_refused() {
    let f = fixture("mounted");
    let backing = f.dir.path().join("target.img");
    target_file(&backing, 64 * MIB);
    let mut lo = Loop::attach(&backing);
    let part = lo.add_partition(1, 2048, 16 * 2048);
    sh(Command::new(require_tool("mkfs.ext4", "e2fsprogs"))
        .args(["-q"])
        .arg(&part));
    let mnt = f.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // Read-only and without replaying the journal: the mount itself writes nothing.
    sh(Command::new("mount")
        .args(["-o", "ro,noload"])
        .arg(&part)
        .arg(&mnt));
    let cfg = device_cfg(&f, &lo.dev);
    let before = sha256(&lo.dev);
    let err = prepare(&cfg).err().map(|e| format!("{e:#}"));
    let _ = Command::new("umount").arg(&mnt).status();
    let err = err.expect("a disk with a mounted partition was not refused");
    assert!(
        err.contains("mounted on") && err.contains(&*mnt.to_string_lossy()),
        "{err}"
    );
    assert_eq!(sha256(&lo.dev), before);
}

#[test]
fn a_partition_is_refused_with_the_disk_named() {
    let f = fixture("partition");
    let backing = f.dir.path().join("target.img");
    target_file(&backing, 64 * MIB);
    let mut lo = Loop::attach(&backing);
    let part = lo.add_partition(1, 2048, 16 * 2048);
    let disk = lo.dev.display().to_string();
    assert_refused(
        &device_cfg(&f, &part),
        &part,
        &["partition 1 of", &disk, "whole disk"],
    );
}

#[test]
fn a_too_small_disk_is_refused() {
    let f = fixture("small");
    let backing = f.dir.path().join("target.img");
    target_file(&backing, 8 * MIB);
    let lo = Loop::attach(&backing);
    assert_refused(
        &device_cfg(&f, &lo.dev),
        &lo.dev,
        &["holds 8 MiB", "at least 19 MiB"],
    );
}

#[test]
fn a_regular_file_without_to_file_is_refused() {
    let f = fixture("not-block");
    let file = f.dir.path().join("target.img");
    target_file(&file, 64 * MIB);
    assert_refused(
        &device_cfg(&f, &file),
        &file,
        &["not a block device", "--to-file"],
    );
}

#[test]
fn a_swap_device_is_refused() {
    let f = fixture("swap");
    let backing = f.dir.path().join("target.img");
    target_file(&backing, 64 * MIB);
    let lo = Loop::attach(&backing);
    sh(Command::new("mkswap").arg(&lo.dev));
    let on = Command::new("swapon").arg(&lo.dev).status().unwrap();
    assert!(on.success(), "swapon {} failed", lo.dev.display());
    let before = sha256(&lo.dev);
    let err = prepare(&device_cfg(&f, &lo.dev))
        .err()
        .map(|e| format!("{e:#}"));
    let _ = Command::new("swapoff").arg(&lo.dev).status();
    let err = err.expect("a swap device was not refused");
    assert!(err.contains("is swap") && err.contains("swapoff"), "{err}");
    assert_eq!(sha256(&lo.dev), before);
}

#[test]
fn the_disk_holding_root_is_refused() {
    // The host's `/` is on some disk; flash must refuse it (as mounted, or as the boot disk).
    let source = sh(Command::new("findmnt").args(["-n", "-o", "SOURCE", "/"]));
    let source = PathBuf::from(source.trim());
    let Ok(meta) = std::fs::metadata(&source) else {
        panic!("/ is on {}, which is not a device here", source.display());
    };
    assert!(std::os::unix::fs::FileTypeExt::is_block_device(
        &meta.file_type()
    ));
    let parent = sh(Command::new("lsblk").args(["-ndo", "PKNAME"]).arg(&source));
    let disk = match parent.trim() {
        "" => source,
        p => PathBuf::from(format!("/dev/{p}")),
    };
    let f = fixture("root-disk");
    let err = format!("{:#}", prepare(&device_cfg(&f, &disk)).err().unwrap());
    assert!(
        err.contains("mounted on") || err.contains("runs from"),
        "{err}"
    );
}

#[test]
fn a_bad_cloud_config_is_refused_with_its_line() {
    let f = fixture("bad-config");
    let backing = f.dir.path().join("target.img");
    target_file(&backing, 64 * MIB);
    let lo = Loop::attach(&backing);
    std::fs::write(&f.config, "#cloud-config\nhostname: [unclosed\n").unwrap();
    assert_refused(
        &device_cfg(&f, &lo.dev),
        &lo.dev,
        &["--config", "line", "nothing was written"],
    );
    std::fs::write(&f.config, "#!/bin/sh\necho hi\n").unwrap();
    assert_refused(
        &device_cfg(&f, &lo.dev),
        &lo.dev,
        &["#cloud-config", "script"],
    );
}

#[test]
fn a_corrupted_image_is_refused_raw_and_compressed() {
    let f = fixture("corrupt");
    let backing = f.dir.path().join("target.img");
    target_file(&backing, 64 * MIB);
    let lo = Loop::attach(&backing);
    flip(&f.image, 5 * MIB);
    assert_refused(
        &device_cfg(&f, &lo.dev),
        &lo.dev,
        &["SHA-256", "corrupt", "nothing was written"],
    );
    flip(&f.image, 5 * MIB);
    let zst = f.image.with_file_name(ZST_FILE);
    flip(&zst, 100);
    let mut cfg = device_cfg(&f, &lo.dev);
    cfg.image = Some(zst.clone());
    assert_refused(&cfg, &lo.dev, &["disk.raw.zst", "SHA-256"]);
    // Without SHA256SUMS, nothing can be checked: refused.
    std::fs::remove_file(f.image.with_file_name(SUMS_FILE)).unwrap();
    assert_refused(
        &device_cfg(&f, &lo.dev),
        &lo.dev,
        &["SHA256SUMS", "build-image"],
    );
}

#[test]
fn signed_sums_verify_and_a_changed_list_or_a_missing_signature_is_refused() {
    let f = fixture("signed");
    let dir = f.build_dir().to_owned();
    let sums = std::fs::read(dir.join(SUMS_FILE)).unwrap();
    let cfg = file_cfg(&f);
    let plan = prepare(&cfg).unwrap();
    // Verified with the key keygen made in (the test's) home, and the summary says which.
    let trusted = f.trusted_key_path();
    assert_eq!(
        plan.image.trust,
        Trust::Signed(Box::new(TrustedKey {
            key: f.key.verifying_key(),
            path: trusted.clone(),
            source: KeySource::Keygen,
        }))
    );
    let summary = plan.image.trust.to_string();
    let fingerprint = f.key.verifying_key().fingerprint();
    assert!(
        summary.contains(&fingerprint)
            && summary.contains(&*trusted.to_string_lossy())
            && summary.contains("keygen"),
        "{summary}"
    );
    // OpenSSL (the reference) agrees: Ed25519 over the SHA-256 digest of SHA256SUMS.
    let digest = f.dir.path().join("digest.bin");
    std::fs::write(&digest, sha256(&dir.join(SUMS_FILE))).unwrap();
    let raw_sig = f.dir.path().join("sig.bin");
    let text = std::fs::read_to_string(dir.join(SIG_FILE)).unwrap();
    use base64::Engine;
    std::fs::write(
        &raw_sig,
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .unwrap(),
    )
    .unwrap();
    let out = sh(Command::new(require_tool("openssl", "openssl"))
        .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
        .arg(&trusted)
        .arg("-in")
        .arg(&digest)
        .arg("-sigfile")
        .arg(&raw_sig));
    assert!(out.contains("Signature Verified Successfully"), "{out}");

    // An attacker who changes the image and rewrites SHA256SUMS cannot sign it.
    std::fs::write(dir.join(SUMS_FILE), [&sums[..], b"\n"].concat()).unwrap();
    let err = format!("{:#}", prepare(&cfg).err().unwrap());
    assert!(
        err.contains("does not verify with any key you trust") && err.contains(&fingerprint),
        "{err}"
    );
    std::fs::write(dir.join(SUMS_FILE), &sums).unwrap();
    std::fs::remove_file(dir.join(SIG_FILE)).unwrap();
    let err = format!("{:#}", prepare(&cfg).err().unwrap());
    assert!(
        err.contains("SHA256SUMS.sig is missing") && err.contains("--allow-unsigned"),
        "{err}"
    );
    assert!(
        !cfg.to_file.unwrap().exists(),
        "a refused flash created the file"
    );
}

/// The attack: a build directory swapped for another image, its `SHA256SUMS` signed by a key
/// pair that came with it (`update-key.pub.pem` beside the image is the attacker's).
fn substitute_build(f: &Fixture) -> VerifyingKey {
    let dir = f.build_dir();
    flip(&f.image, 3 * MIB);
    ChunkList::of_file(&f.image, release::chunks::CHUNK)
        .unwrap()
        .write_to(&dir.join(CHUNKS_FILE))
        .unwrap();
    release::write_sums(dir, &[]).unwrap();
    let theirs = SigningKey::generate().unwrap();
    sign_build(dir, &theirs);
    theirs.verifying_key()
}

#[test]
fn a_substituted_build_directory_signed_by_its_own_key_pair_is_refused() {
    let f = fixture("substituted");
    let theirs = substitute_build(&f);
    let backing = f.dir.path().join("target.img");
    target_file(&backing, 64 * MIB);
    let lo = Loop::attach(&backing);
    let ours = f.key.verifying_key().fingerprint();
    let trusted = f.trusted_key_path();
    let words = [
        "SHA256SUMS.sig does not verify with any key you trust",
        &ours,
        &trusted.to_string_lossy(),
        "is not trusted by itself",
        &theirs.fingerprint(),
        "the signature is by that key",
        "--public-key",
        "nothing was written",
    ];
    let mut cfg = device_cfg(&f, &lo.dev);
    assert_refused(&cfg, &lo.dev, &words);
    // --allow-unsigned lets an image without a signature through, never a bad signature.
    cfg.allow_unsigned = true;
    assert_refused(&cfg, &lo.dev, &words);
    // Trusting the key beside the image takes naming it.
    cfg.public_key = vec![f.build_dir().join(KEY_FILE)];
    let plan = prepare(&cfg).unwrap();
    let Trust::Signed(key) = &plan.image.trust else {
        panic!("{:?}", plan.image.trust)
    };
    assert_eq!((&key.key, key.source), (&theirs, KeySource::Named));
}

#[test]
fn a_signed_image_without_any_trusted_key_says_to_make_or_name_one() {
    let mut f = fixture("no-trusted-key");
    let dir = f.build_dir().to_owned();
    f.sources.home = Some(f.dir.path().join("empty-home"));
    let cfg = file_cfg(&f);
    let beside = VerifyingKey::load_pem(&dir.join(KEY_FILE)).unwrap();
    let looked_at = keygen::dir_in_home(f.sources.home.as_ref().unwrap()).join(keygen::PUBLIC_FILE);
    let err = format!("{:#}", prepare(&cfg).err().unwrap());
    for w in [
        "is signed, but no key you trust exists",
        &looked_at.to_string_lossy(),
        "cargo xtask keygen",
        "--public-key",
        &beside.fingerprint(),
        "is not trusted by itself",
        "nothing was written",
    ] {
        assert!(err.contains(w), "{w:?} missing from: {err}");
    }
    assert!(!cfg.to_file.unwrap().exists());
}

#[test]
fn an_unsigned_image_is_refused_unless_allow_unsigned() {
    // A build without a signing key, as before builds had one: no signature, no key beside.
    let f = fixture("unsigned");
    let dir = f.build_dir();
    std::fs::remove_file(dir.join(SIG_FILE)).unwrap();
    std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
    let backing = f.dir.path().join("target.img");
    target_file(&backing, 64 * MIB);
    let lo = Loop::attach(&backing);
    let mut cfg = device_cfg(&f, &lo.dev);
    assert_refused(
        &cfg,
        &lo.dev,
        &[
            "SHA256SUMS.sig is missing",
            "substituted",
            "--allow-unsigned",
            "nothing was written",
        ],
    );
    cfg.allow_unsigned = true;
    let plan = prepare(&cfg).unwrap();
    assert_eq!(plan.image.trust, Trust::Unsigned);
    execute(&plan).unwrap();
    drop(lo);
    check_flashed(&backing, &f.image, GOOD_CONFIG.as_bytes());
}

/// Flips the lowest bit of the byte at `at` of the file.
fn flip(path: &Path, at: u64) {
    let file = File::options().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    file.read_exact_at(&mut b, at).unwrap();
    file.write_all_at(&[b[0] ^ 1], at).unwrap();
}

/// Replaces the fixture's chunk list by one of 1 MiB chunks (the format allows it), so that
/// the 19 MiB image has all-zero chunks (USR-B, ROOT) besides data chunks; sums again.
fn one_mib_chunks(f: &Fixture) -> PathBuf {
    let dir = f.image.parent().unwrap();
    let list = ChunkList::of_file(&f.image, MIB as usize).unwrap();
    let path = dir.join(CHUNKS_FILE);
    std::fs::write(&path, list.render()).unwrap();
    release::write_sums(dir, &[]).unwrap();
    f.sign_again();
    path
}

#[test]
fn with_a_chunk_list_a_byte_flipped_in_a_data_or_a_zero_chunk_or_in_the_list_is_refused() {
    let f = fixture("chunks");
    let list_path = one_mib_chunks(&f);
    let backing = f.dir.path().join("target.img");
    target_file(&backing, 64 * MIB);
    let lo = Loop::attach(&backing);
    // USR-A (2 to 5 MiB) holds data; USR-B (5 to 8 MiB) is all zeros.
    let mut usr_b = vec![0u8; MIB as usize];
    File::open(&f.image)
        .unwrap()
        .read_exact_at(&mut usr_b, 6 * MIB)
        .unwrap();
    assert!(usr_b.iter().all(|&b| b == 0), "chunk 6 is not a zero chunk");
    for (at, chunk) in [(3 * MIB + 5, 3), (6 * MIB + 5, 6)] {
        flip(&f.image, at);
        assert_refused(
            &device_cfg(&f, &lo.dev),
            &lo.dev,
            &[
                &format!("in its chunk {chunk} "),
                "corrupt",
                "nothing was written",
            ],
        );
        flip(&f.image, at);
    }
    // A hash in the list changed (still hex), SHA256SUMS not: the list's line catches it.
    let good = std::fs::read_to_string(&list_path).unwrap();
    let last = good.trim_end().rsplit('\n').next().unwrap().to_owned();
    let changed = format!(
        "{}{}",
        if last.starts_with('0') { '1' } else { '0' },
        &last[1..]
    );
    std::fs::write(&list_path, good.replace(&last, &changed)).unwrap();
    assert_refused(
        &device_cfg(&f, &lo.dev),
        &lo.dev,
        &[
            "disk.raw.chunks",
            "chunk list is corrupt",
            "nothing was written",
        ],
    );
    std::fs::write(&list_path, &good).unwrap();
    let plan = prepare(&device_cfg(&f, &lo.dev)).unwrap();
    assert_eq!(
        plan.image.map.as_ref().map(|m| m.block()),
        Some(MIB as usize)
    );
    execute(&plan).unwrap();
    drop(lo);
    check_flashed(&backing, &f.image, GOOD_CONFIG.as_bytes());
}

#[test]
fn without_its_chunk_list_a_raw_image_is_checked_whole() {
    let f = fixture("no-chunks");
    let dir = f.build_dir();
    let cfg = file_cfg(&f);
    // Listed in SHA256SUMS but not copied along: the whole image is hashed instead.
    std::fs::remove_file(dir.join(CHUNKS_FILE)).unwrap();
    let plan = prepare(&cfg).unwrap();
    assert_eq!(
        plan.image.map.as_ref().map(|m| m.block()),
        Some(crate::release::chunks::CHUNK)
    );
    flip(&f.image, 3 * MIB);
    let err = format!("{:#}", prepare(&cfg).err().unwrap());
    assert!(
        err.contains("has SHA-256")
            && !err.contains("in its chunk")
            && err.contains("nothing was written"),
        "{err}"
    );
    flip(&f.image, 3 * MIB);
    // A build from before the lists: SHA256SUMS without its line.
    release::write_sums(dir, &[]).unwrap();
    f.sign_again();
    assert!(!std::fs::read_to_string(dir.join(SUMS_FILE))
        .unwrap()
        .contains(CHUNKS_FILE));
    execute(&prepare(&cfg).unwrap()).unwrap();
    check_flashed(
        cfg.to_file.as_ref().unwrap(),
        &f.image,
        GOOD_CONFIG.as_bytes(),
    );
}

/// Checks a flashed target with the reference tools: `sgdisk -v` clean, the backup GPT in the
/// last sector, USR-A as in the image, OEM a clean FAT holding the cloud-config.
fn check_flashed(target: &Path, image: &Path, config: &[u8]) {
    let sgdisk = require_tool("sgdisk", "gdisk");
    let out = sh(Command::new(&sgdisk).arg("-v").arg(target));
    assert!(out.contains("No problems found"), "sgdisk -v: {out}");
    let mut t = File::open(target).unwrap();
    let size = t.metadata().unwrap().len();
    let size = if size == 0 { device_size(target) } else { size };
    let gpt = Gpt::read(&mut t, size).unwrap();
    assert_eq!(gpt.source, TableSource::Primary);
    assert_eq!(gpt.disk_sectors, size / 512);
    let mut last = [0u8; 8];
    t.read_exact_at(&mut last, size - 512).unwrap();
    assert_eq!(
        &last, b"EFI PART",
        "no backup GPT header in the last sector"
    );

    let (_, usr) = gpt.find_by_name("USR-A").unwrap();
    let mut ours = vec![0u8; usr.size_bytes() as usize];
    let mut theirs = ours.clone();
    t.read_exact_at(&mut ours, usr.start_bytes()).unwrap();
    File::open(image)
        .unwrap()
        .read_exact_at(&mut theirs, usr.start_bytes())
        .unwrap();
    assert!(ours == theirs, "USR-A differs from the image");

    let (_, oem) = gpt.find_by_name(disk::OEM).unwrap();
    let mut region = Region::new(
        File::open(target).unwrap(),
        oem.start_bytes(),
        oem.size_bytes(),
    )
    .unwrap();
    assert_eq!(
        kiln_image::fat::read_file(&mut region, OEM_CONFIG).unwrap(),
        config
    );
    let oem_copy = target.with_extension("oem");
    let mut bytes = vec![0u8; oem.size_bytes() as usize];
    t.read_exact_at(&mut bytes, oem.start_bytes()).unwrap();
    std::fs::write(&oem_copy, bytes).unwrap();
    sh(Command::new(require_tool("fsck.fat", "dosfstools"))
        .arg("-n")
        .arg(&oem_copy));
    std::fs::remove_file(&oem_copy).unwrap();
}

fn device_size(dev: &Path) -> u64 {
    sh(Command::new("blockdev").arg("--getsize64").arg(dev))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn flashes_a_loop_device_larger_than_the_image() {
    let f = fixture("loop");
    let backing = f.dir.path().join("target.img");
    target_file(&backing, 48 * MIB);
    // Stale data everywhere, as on a used disk: flash must overwrite the zero blocks too.
    File::options()
        .write(true)
        .open(&backing)
        .unwrap()
        .write_all_at(&vec![0xEE; 47 << 20], MIB)
        .unwrap();
    let lo = Loop::attach(&backing);
    let plan = prepare(&device_cfg(&f, &lo.dev)).unwrap();
    let outcome = execute(&plan).unwrap();
    assert!(outcome.backup_moved);
    drop(lo);
    check_flashed(&backing, &f.image, GOOD_CONFIG.as_bytes());
    // Past the partitions and the image's old backup table, the disk reads as the image: zero.
    let mut tail = vec![0u8; MIB as usize];
    File::open(&backing)
        .unwrap()
        .read_exact_at(&mut tail, plan.image.size - MIB)
        .unwrap();
    assert!(
        tail.iter().all(|&b| b == 0),
        "the image's last MiB is not zero on the disk"
    );
}

#[test]
fn flashes_the_compressed_image_to_a_larger_file_sparse() {
    let f = fixture("file");
    let out = f.dir.path().join("disk.img");
    target_file(&out, 64 * MIB);
    let mut cfg = device_cfg(&f, Path::new("/unused"));
    cfg.device = None;
    cfg.to_file = Some(out.clone());
    cfg.image = Some(f.image.with_file_name(ZST_FILE));
    let plan = prepare(&cfg).unwrap();
    execute(&plan).unwrap();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 64 * MIB);
    check_flashed(&out, &f.image, GOOD_CONFIG.as_bytes());
    let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
    assert!(
        allocated < 16 * MIB,
        "{allocated} bytes allocated: not sparse"
    );
}

#[test]
fn a_failure_after_the_first_write_wipes_the_partition_table() {
    // A .zst whose SHA256SUMS line matches (so the checks pass) but which decompresses to
    // another disk: the mismatch shows only while writing.
    let f = fixture("wipe");
    let dir = f.image.parent().unwrap();
    let other = f.dir.path().join("other.raw");
    std::fs::copy(&f.image, &other).unwrap();
    File::options()
        .write(true)
        .open(&other)
        .unwrap()
        .write_all_at(b"changed", 6 * MIB)
        .unwrap();
    release::compress_plain(&other, &dir.join(ZST_FILE)).unwrap();
    let sums = release::render_sums(&[
        (
            release::DISK_FILE.into(),
            release::digest_of(&f.image).unwrap(),
        ),
        (
            ZST_FILE.into(),
            release::digest_of(&dir.join(ZST_FILE)).unwrap(),
        ),
    ]);
    std::fs::write(dir.join(SUMS_FILE), sums).unwrap();
    f.sign_again();

    let backing = f.dir.path().join("target.img");
    target_file(&backing, 32 * MIB);
    let lo = Loop::attach(&backing);
    // A bootable-looking disk before: a valid GPT that the failed flash must not leave behind.
    sh(Command::new(require_tool("sgdisk", "gdisk"))
        .args(["-o", "-n", "1:0:+4M"])
        .arg(&lo.dev));
    let mut cfg = device_cfg(&f, &lo.dev);
    cfg.image = Some(dir.join(ZST_FILE));
    let plan = prepare(&cfg).unwrap();
    let err = format!("{:#}", execute(&plan).unwrap_err());
    assert!(
        err.contains("SHA-256") && err.contains("partition table was wiped"),
        "{err}"
    );
    drop(lo);
    let bytes = std::fs::read(&backing).unwrap();
    let n = bytes.len();
    assert!(
        bytes[..MIB as usize].iter().all(|&b| b == 0),
        "first MiB not wiped"
    );
    assert!(
        bytes[n - MIB as usize..].iter().all(|&b| b == 0),
        "last MiB not wiped"
    );
}

#[test]
fn an_image_changed_after_its_check_fails_the_write_and_wipes_the_table() {
    let f = fixture("changed");
    let backing = f.dir.path().join("target.img");
    target_file(&backing, 32 * MIB);
    let lo = Loop::attach(&backing);
    let plan = prepare(&device_cfg(&f, &lo.dev)).unwrap();
    // Rewritten in place after the check, as a concurrent build would.
    File::options()
        .write(true)
        .open(&f.image)
        .unwrap()
        .write_all_at(b"new", 7 * MIB + 5)
        .unwrap();
    let err = format!("{:#}", execute(&plan).unwrap_err());
    assert!(
        err.contains("changed in the 16 MiB at byte 0")
            && err.contains("partition table was wiped"),
        "{err}"
    );
    drop(lo);
    let mut first = vec![0u8; MIB as usize];
    File::open(&backing)
        .unwrap()
        .read_exact_at(&mut first, 0)
        .unwrap();
    assert!(first.iter().all(|&b| b == 0), "first MiB not wiped");
}
