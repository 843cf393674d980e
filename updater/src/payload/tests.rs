//! Payload round trips, the zstd reference tool, determinism, and rejection of every damaged
//! byte.

use std::path::Path;
use std::process::Command;

use kiln_image::testutil::require_tool;
use kiln_image::verity;

use super::testutil::{inputs, make, pattern};
use super::*;
use crate::keys::{SigningKey, VerifyingKey};
use kiln_contract::hex;

fn sha_hex(path: &Path) -> String {
    hex::encode(&kiln_contract::digest::sha256_file(path).unwrap().0)
}

#[test]
fn payloads_round_trip_and_zstd_reads_the_usr_part() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let inp = inputs(dir.path(), 3);
    let (out, m) = make(dir.path(), "p", "2.0.0", &key);
    assert_eq!(
        read_verified_manifest(&out, &key.verifying_key()).unwrap(),
        m
    );
    check_parts(&out, &m, &mut |_, _| {}).unwrap();
    assert_eq!(m.board, BOARD);
    assert_eq!(m.version, "2.0.0");
    assert_eq!(m.usr_size, std::fs::metadata(&inp.usr).unwrap().len());
    assert_eq!(m.usr_sha256, sha_hex(&inp.usr));
    assert_eq!(m.verity_root_hash, inp.verity.root_hash_hex());
    assert_eq!(m.verity_salt, hex::encode(&inp.verity.salt));
    assert_eq!(m.verity_hash_offset, 1 << 20);
    assert_eq!(m.kernel_sha256, sha_hex(&inp.kernel));
    assert_eq!(m.initrd_sha256, sha_hex(&inp.initrd));

    // The reference decoder gets the USR image back from the part's bytes.
    let bytes = std::fs::read(&out).unwrap();
    let part = &m.parts.usr;
    let zst = dir.path().join("usr.zst");
    std::fs::write(&zst, &bytes[part.offset as usize..][..part.length as usize]).unwrap();
    let zstd = require_tool("zstd", "zstd");
    let status = Command::new(zstd)
        .args(["-q", "-d", "-o"])
        .arg(dir.path().join("usr.out"))
        .arg(&zst)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(sha_hex(&dir.path().join("usr.out")), m.usr_sha256);
    assert!(
        part.length < m.usr_size / 2,
        "compressed to {}",
        part.length
    );
}

#[test]
fn same_inputs_give_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let (a, _) = make(dir.path(), "a", "2.0.0", &key);
    let (b, _) = make(dir.path(), "b", "2.0.0", &key);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

/// The sizes (content, compressed) of the zstd frames that make up `part`.
fn frames_of(mut part: &[u8]) -> Vec<(u64, usize)> {
    let mut frames = Vec::new();
    while !part.is_empty() {
        let content = zstd::zstd_safe::get_frame_content_size(part)
            .unwrap()
            .expect("a frame without its content size");
        let len = zstd::zstd_safe::find_frame_compressed_size(part).unwrap();
        frames.push((content, len));
        part = &part[len..];
    }
    frames
}

#[test]
fn the_usr_part_is_frames_of_frame_size_that_zstd_reads_as_one_image() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    // Two whole frames and a part of one: two rounds of the two compressing threads.
    let data_len = 2 * write::FRAME_SIZE as u64 + (1 << 20);
    let usr = dir.path().join("usr.img");
    std::fs::write(&usr, pattern(data_len as usize, 5)).unwrap();
    let params = verity::VerityParams {
        salt: vec![5; 32],
        uuid: [7; 16],
    };
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&usr)
        .unwrap();
    let info = verity::append(&file, data_len, &params).unwrap();
    // The kernel and initramfs of another directory: `inputs` writes a usr.img too.
    let others = dir.path().join("others");
    std::fs::create_dir(&others).unwrap();
    let inp = inputs(&others, 3);
    let write = |name: &str| {
        let out = dir.path().join(name);
        let m = write_payload(
            &out,
            ManifestInput::new("{app}", "2.0.0", info.hash_offset),
            &usr,
            &inp.kernel,
            &inp.initrd,
            &key,
        )
        .unwrap();
        (out, m)
    };
    let (out, m) = write("p");
    let bytes = std::fs::read(&out).unwrap();
    let part = &bytes[m.parts.usr.offset as usize..][..m.parts.usr.length as usize];
    let frames = frames_of(part);
    let contents: Vec<u64> = frames.iter().map(|f| f.0).collect();
    let frame = write::FRAME_SIZE as u64;
    assert_eq!(contents, [frame, frame, m.usr_size - 2 * frame]);

    let zst = dir.path().join("usr.zst");
    std::fs::write(&zst, part).unwrap();
    let status = Command::new(require_tool("zstd", "zstd"))
        .args(["-q", "-d", "-o"])
        .arg(dir.path().join("usr.out"))
        .arg(&zst)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(sha_hex(&dir.path().join("usr.out")), m.usr_sha256);
    assert_eq!(sha_hex(&dir.path().join("usr.out")), sha_hex(&usr));
    let (again, _) = write("q");
    assert_eq!(std::fs::read(&again).unwrap(), bytes);
}

/// What reading and checking a payload says.
fn verdict(path: &Path, key: &VerifyingKey) -> Result<(), PayloadError> {
    let m = read_verified_manifest(path, key)?;
    check_parts(path, &m, &mut |_, _| {})
}

#[test]
fn any_flipped_byte_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let vk = key.verifying_key();
    let (out, m) = make(dir.path(), "p", "2.0.0", &key);
    let good = std::fs::read(&out).unwrap();
    let manifest_end = HEADER_LEN as usize + serde_json::to_vec(&m).unwrap().len();
    // Every header and manifest byte, padding bytes, and bytes spread over each part with
    // both of its ends.
    let mut positions: Vec<usize> = (0..manifest_end).collect();
    positions.extend((manifest_end..PARTS_OFFSET as usize).step_by(251));
    positions.push(PARTS_OFFSET as usize - 1);
    for (_, part) in m.parts() {
        let (start, len) = (part.offset as usize, part.length as usize);
        positions.extend((0..len).step_by(len / 40 + 1).map(|i| start + i));
        positions.push(start + len - 1);
    }
    let bad = dir.path().join("bad");
    for &at in &positions {
        let mut bytes = good.clone();
        bytes[at] ^= 0x20;
        std::fs::write(&bad, &bytes).unwrap();
        let err = verdict(&bad, &vk).expect_err(&format!("byte {at} flipped was accepted"));
        let text = err.to_string();
        assert!(text.contains(&*bad.to_string_lossy()), "{text}");
        if at < 8 {
            assert!(matches!(err, PayloadError::BadMagic { .. }), "{at}: {err}");
        } else if (8..12).contains(&at) {
            assert!(
                matches!(err, PayloadError::UnsupportedVersion { .. }),
                "{at}: {err}"
            );
        } else if (16..manifest_end).contains(&at) {
            assert!(
                matches!(err, PayloadError::BadSignature { .. }),
                "{at}: {err}"
            );
        }
    }
    // Cut short or with a byte more.
    std::fs::write(&bad, &good[..good.len() - 1]).unwrap();
    assert!(matches!(
        verdict(&bad, &vk),
        Err(PayloadError::Malformed { .. })
    ));
    let mut longer = good.clone();
    longer.push(0);
    std::fs::write(&bad, &longer).unwrap();
    assert!(matches!(
        verdict(&bad, &vk),
        Err(PayloadError::Malformed { .. })
    ));
    // Another key.
    let other = SigningKey::generate().unwrap().verifying_key();
    assert!(matches!(
        verdict(&out, &other),
        Err(PayloadError::BadSignature { .. })
    ));
    verdict(&out, &vk).unwrap();
}

#[test]
fn magic_and_version_are_checked_before_anything_else() {
    let dir = tempfile::tempdir().unwrap();
    let vk = SigningKey::generate().unwrap().verifying_key();
    let path = dir.path().join("p");
    // Nothing after the version: a reader that read further would report a short file.
    let mut head = MAGIC.to_vec();
    head.extend_from_slice(&2u32.to_le_bytes());
    std::fs::write(&path, &head).unwrap();
    let err = read_verified_manifest(&path, &vk).unwrap_err();
    assert!(
        matches!(err, PayloadError::UnsupportedVersion { found: 2, .. }),
        "{err}"
    );
    std::fs::write(&path, b"PK\x03\x04 not a payload at all").unwrap();
    let err = read_verified_manifest(&path, &vk).unwrap_err();
    assert!(matches!(err, PayloadError::BadMagic { .. }), "{err}");
    assert!(err.to_string().contains("download it again"), "{err}");
    std::fs::write(&path, b"KILN").unwrap();
    assert!(matches!(
        read_verified_manifest(&path, &vk),
        Err(PayloadError::BadMagic { .. })
    ));
    std::fs::write(&path, &head[..10]).unwrap();
    assert!(matches!(
        read_verified_manifest(&path, &vk),
        Err(PayloadError::Malformed { .. })
    ));
}
