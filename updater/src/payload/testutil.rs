//! A small signed payload for tests, here and in the crates that install or serve payloads
//! (feature `testutil`): a 1 MiB "filesystem" with its verity tree, a kernel and an initramfs.

use std::path::{Path, PathBuf};

use kiln_image::verity;

use super::{write_payload, Manifest, ManifestInput};
use crate::keys::SigningKey;

/// Bytes that differ everywhere but compress (a filesystem is not random either).
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| ((i / 7).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 27) as u8)
        .collect()
}

/// The files a payload is made of: a 1 MiB "filesystem" with its verity tree appended, a
/// kernel and an initramfs, and the verity info.
pub struct Inputs {
    pub usr: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub verity: verity::VerityInfo,
}

/// Writes the inputs into `dir`; `seed` varies their bytes.
pub fn inputs(dir: &Path, seed: u32) -> Inputs {
    let usr = dir.join("usr.img");
    std::fs::write(&usr, pattern(1 << 20, seed)).expect("writing a test payload's inputs");
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&usr)
        .expect("writing a test payload's inputs");
    let params = verity::VerityParams {
        salt: vec![seed as u8; 32],
        uuid: [7; 16],
    };
    let info = verity::append(&file, 1 << 20, &params).expect("writing a test payload's inputs");
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, pattern(20_000, seed + 1)).expect("writing a test payload's inputs");
    let initrd = dir.join("initrd");
    std::fs::write(&initrd, pattern(9_000, seed + 2)).expect("writing a test payload's inputs");
    Inputs {
        usr,
        kernel,
        initrd,
        verity: info,
    }
}

/// A payload of app `{app}` at `version`, signed with `key`, written to `dir/name`.
pub fn make(dir: &Path, name: &str, version: &str, key: &SigningKey) -> (PathBuf, Manifest) {
    let inp = inputs(dir, 3);
    let out = dir.join(name);
    let m = write_payload(
        &out,
        ManifestInput::new("{app}", version, inp.verity.hash_offset),
        &inp.usr,
        &inp.kernel,
        &inp.initrd,
        key,
    )
    .expect("writing a test payload");
    (out, m)
}
