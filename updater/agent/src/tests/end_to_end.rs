//! The agent with the real installer (`kiln_updater::install`) on a small Kiln disk image made
//! here, fed a real signed payload by the mock Omaha server: the update lands on USR-B with a
//! counted boot entry, USR-A stays byte for byte the same, and the rebooted slot is blessed. A
//! payload with one byte flipped is refused and changes no boot entry.

use std::fs::File;
use std::path::{Path, PathBuf};

use kiln_contract::boot::{BootEntry, Counter, Slot};
use kiln_contract::disk::{self, MIB};
use kiln_image::disk::{assemble, PartitionContent};
use kiln_image::gpt::Guid;
use kiln_image::tree::{Content, Entry, Kind, Meta, Tree};
use kiln_updater::install::Target;
use kiln_updater::keys::SigningKey;
use kiln_updater::payload::{write_payload, ManifestInput};
use sha2::{Digest, Sha256};

use super::*;
use crate::real::RealInstaller;
use kiln_contract::errorcode;

const T: i64 = 1_700_000_000;

/// A 1 MiB "USR filesystem" with its verity tree, a kernel and an initramfs in `dir`.
fn slot_files(
    dir: &Path,
    seed: u32,
) -> (PathBuf, PathBuf, PathBuf, kiln_image::verity::VerityInfo) {
    std::fs::create_dir_all(dir).unwrap();
    let i = kiln_updater::payload::testutil::inputs(dir, seed);
    (i.usr, i.kernel, i.initrd, i.verity)
}

/// A disk laid out as the build's (small): slot A installed and blessed, USR-B empty.
fn make_disk(dir: &Path) -> PathBuf {
    let (usr, kernel, initrd, verity) = slot_files(&dir.join("a"), 1);
    let entry = BootEntry::new(
        Slot::A,
        "0.1.0",
        &verity.root_hash_hex(),
        "console=ttyS0",
        Counter::Blessed,
    );
    let meta = Meta::root(0o755, T);
    let file = |b: Vec<u8>| Entry::new(Kind::File(Content::bytes(b)), Meta::root(0o644, T));
    let mut esp = Tree::new(meta.clone());
    for (path, data) in [
        ("loader/loader.conf".to_owned(), b"timeout 3\n".to_vec()),
        (
            format!("loader/entries/{}", entry.file_name()),
            entry.render().into_bytes(),
        ),
        ("kiln/a/vmlinuz".to_owned(), std::fs::read(&kernel).unwrap()),
        ("kiln/a/initrd".to_owned(), std::fs::read(&initrd).unwrap()),
    ] {
        esp.insert_with_parents(path, file(data), &meta).unwrap();
    }
    let esp_img = dir.join("esp.img");
    let opts = kiln_image::fat::FatOptions {
        size_bytes: 8 * MIB,
        volume_id: 1,
        label: disk::ESP.into(),
        timestamp: T,
    };
    kiln_image::fat::format(&esp, &opts, &mut File::create(&esp_img).unwrap()).unwrap();
    let path = dir.join("disk.raw");
    let contents = [
        PartitionContent {
            number: disk::ESP_NUMBER,
            image: Some(&esp_img),
        },
        PartitionContent {
            number: disk::USR_A_NUMBER,
            image: Some(&usr),
        },
    ];
    assemble(&path, &disk::layout(8, 4, 1, 1), &contents, |n| {
        Guid::from_hash(n.as_bytes())
    })
    .unwrap();
    path
}

/// SHA-256 of the first `len` bytes of the partition named `name`.
fn partition_prefix_sha(disk: &Path, name: &str, len: usize) -> String {
    let bytes = std::fs::read(disk).unwrap();
    let gpt =
        kiln_image::gpt::Gpt::read(&mut std::io::Cursor::new(&bytes), bytes.len() as u64).unwrap();
    let (_, part) = gpt.find_by_name(name).unwrap();
    let start = part.start_bytes() as usize;
    kiln_contract::hex::encode(&Sha256::digest(&bytes[start..start + len]))
}

/// SHA-256 of the partition named `name`, located through the disk's own GPT.
fn partition_sha(disk: &Path, name: &str) -> String {
    let bytes = std::fs::read(disk).unwrap();
    let gpt =
        kiln_image::gpt::Gpt::read(&mut std::io::Cursor::new(&bytes), bytes.len() as u64).unwrap();
    let (_, part) = gpt.find_by_name(name).unwrap();
    let start = part.start_bytes() as usize;
    let end = start + part.size_bytes() as usize;
    kiln_contract::hex::encode(&Sha256::digest(&bytes[start..end]))
}

/// The real installer on `disk`, running slot A, trusting `key`.
fn installer_on(disk: &Path, key: &SigningKey) -> RealInstaller {
    RealInstaller::new(
        Target {
            disk: disk.to_owned(),
            running: Slot::A,
        },
        key.verifying_key(),
    )
}

#[test]
fn real_install_through_the_agent_then_bless() {
    let work = tempfile::tempdir().unwrap();
    let disk = make_disk(work.path());
    let key = SigningKey::generate().unwrap();
    let (usr, kernel, initrd, verity) = slot_files(&work.path().join("b"), 3);
    let payload = work.path().join("payload");
    let input = ManifestInput::new(APP_ID, "0.2.0", verity.hash_offset);
    write_payload(&payload, input, &usr, &kernel, &initrd, &key).unwrap();

    let env = Env::new();
    env.script().payload = std::fs::read(&payload).unwrap();
    let usr_a_before = partition_sha(&disk, disk::USR_A);
    let mut real = installer_on(&disk, &key);
    let mut host = FakeHost::new();
    {
        let mut agent = env.agent(&mut real, &mut host);
        step_until(&mut agent, "reboot-needed", 5);
    }
    assert_eq!(env.events(), ["13/1", "14/1", "3/1"]);
    assert_eq!(
        partition_sha(&disk, disk::USR_A),
        usr_a_before,
        "the running slot is untouched"
    );
    let image = std::fs::read(&usr).unwrap();
    assert_eq!(
        partition_prefix_sha(&disk, disk::USR_B, image.len()),
        kiln_contract::hex::encode(&Sha256::digest(&image)),
        "USR-B holds the payload's USR image with its verity tree"
    );
    let entries = real.boot_entries().unwrap();
    assert!(
        entries.iter().any(|e| e.starts_with("kiln-b+3.conf")),
        "{entries:?}"
    );

    // Rebooted into B: confirmed healthy, blessed on the real ESP, 3/2 reported.
    host.boot_id = BOOT_2.into();
    real.target.running = Slot::B;
    {
        let mut agent = env.agent(&mut real, &mut host);
        step_until(&mut agent, "idle", 2);
    }
    let entries = real.boot_entries().unwrap();
    assert!(
        entries.iter().any(|e| e.starts_with("kiln-b.conf")),
        "{entries:?}"
    );
    assert_eq!(env.events(), ["13/1", "14/1", "3/1", "3/2 previous=0.1.0"]);
}

/// One byte flipped after signing, at the start (magic), in the manifest area, in the middle
/// and near the end (compressed parts): each is refused with a payload error code, and no boot
/// entry changes. The Omaha response announces the flipped file's hash, so only the payload's
/// own checks can catch it.
#[test]
fn a_flipped_byte_in_a_signed_payload_changes_no_entry() {
    let work = tempfile::tempdir().unwrap();
    let disk = make_disk(work.path());
    let key = SigningKey::generate().unwrap();
    let (usr, kernel, initrd, verity) = slot_files(&work.path().join("b"), 3);
    let payload = work.path().join("payload");
    let input = ManifestInput::new(APP_ID, "0.2.0", verity.hash_offset);
    write_payload(&payload, input, &usr, &kernel, &initrd, &key).unwrap();
    let good = std::fs::read(&payload).unwrap();
    let mut real = installer_on(&disk, &key);
    let before = real.boot_entries().unwrap();
    let usr_a_before = partition_sha(&disk, disk::USR_A);
    let allowed = [
        errorcode::SIGNATURE,
        errorcode::PAYLOAD_HASH_MISMATCH,
        errorcode::PAYLOAD_VERIFICATION,
        errorcode::ROOTFS_VERIFICATION,
    ]
    .map(|c| format!("3/0 code={c}"));
    for offset in [0, 200, good.len() / 2, good.len() - 100] {
        let mut bytes = good.clone();
        bytes[offset] ^= 0x01;
        let env = Env::new();
        env.script().payload = bytes;
        let mut host = FakeHost::new();
        {
            let mut agent = env.agent(&mut real, &mut host);
            step_until(&mut agent, "writing", 3);
            agent.step().unwrap();
            assert_eq!(state_name(agent.status()), "idle");
        }
        let events = env.events();
        assert_eq!(events.len(), 3, "offset {offset}: {events:?}");
        assert!(
            allowed.contains(&events[2]),
            "offset {offset}: {events:?} {:?}",
            env.saved().last_error
        );
        assert_eq!(real.boot_entries().unwrap(), before, "offset {offset}");
        assert_eq!(
            partition_sha(&disk, disk::USR_A),
            usr_a_before,
            "offset {offset}"
        );
    }
}

/// What a man-in-the-middle can offer over plain HTTP: a validly signed older payload under a
/// newer label, and a version that failed on this machine relabelled. The offer's label says
/// nothing: the real installer checks the signed manifest, refuses both before writing, and the
/// server hears why.
#[test]
fn signed_downgrades_and_relabelled_bad_versions_are_refused_whatever_the_offer_says() {
    let work = tempfile::tempdir().unwrap();
    let disk = make_disk(work.path());
    let key = SigningKey::generate().unwrap();
    let (usr, kernel, initrd, verity) = slot_files(&work.path().join("b"), 3);
    let signed = |version: &str| {
        let payload = work.path().join(format!("payload-{version}"));
        let input = ManifestInput::new(APP_ID, version, verity.hash_offset);
        write_payload(&payload, input, &usr, &kernel, &initrd, &key).unwrap();
        std::fs::read(&payload).unwrap()
    };
    let mut real = installer_on(&disk, &key);
    let before = std::fs::read(&disk).unwrap();
    // (signed version, offered as, versions that failed here, the code the server hears)
    let cases = [
        ("0.0.9", "0.3.0", vec![], errorcode::REFUSED_VERSION),
        (
            "0.2.0",
            "0.2.0.1",
            vec!["0.2.0"],
            errorcode::REFUSED_BAD_VERSION,
        ),
    ];
    for (version, offered, bad, code) in cases {
        let env = Env::new();
        env.script().payload = signed(version);
        env.script().offer = Some(offered.into());
        let status = Status {
            bad_versions: bad.iter().map(|v| v.to_string()).collect(),
            ..Status::default()
        };
        std::fs::create_dir_all(env.paths.state_file().parent().unwrap()).unwrap();
        status.save(&env.paths.state_file()).unwrap();
        let mut host = FakeHost::new();
        {
            let mut agent = env.agent(&mut real, &mut host);
            step_until(&mut agent, "writing", 3);
            agent.step().unwrap();
            assert_eq!(state_name(agent.status()), "idle");
        }
        assert_eq!(
            env.events(),
            ["13/1", "14/1", &format!("3/0 code={code}")],
            "{version} offered as {offered}"
        );
        let said = env.saved().last_error.unwrap_or_default();
        assert!(
            said.contains(&format!("version {version}, refused")),
            "{said}"
        );
        assert!(
            std::fs::read(&disk).unwrap() == before,
            "{version} offered as {offered} changed the disk"
        );
        assert_eq!(host.reboots, 0);
    }
    // An offer that says it is older is not downloaded at all.
    let env = Env::new();
    env.script().offer = Some("0.0.9".into());
    let mut host = FakeHost::new();
    {
        let mut agent = env.agent(&mut real, &mut host);
        agent.step().unwrap();
        agent.step().unwrap();
        assert_eq!(state_name(agent.status()), "idle");
    }
    assert!(env.events().is_empty(), "{:?}", env.events());
    assert!(env
        .saved()
        .last_error
        .unwrap_or_default()
        .contains("a downgrade, refused"));
}
