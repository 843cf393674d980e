//! The device-side programs the image carries (the init, `kiln-config`, the update agent and
//! CLI), built static with cargo once per build.

use std::path::PathBuf;

use anyhow::Result;

use super::Build;
use crate::host;

impl Build {
    /// The directory of the static device binaries, built on first use.
    pub(super) fn static_binaries(&mut self) -> Result<PathBuf> {
        if self.static_dir.is_none() {
            self.static_dir = Some(build_static_binaries()?);
        }
        Ok(self.static_dir.clone().expect("set above"))
    }
}

/// The device-side programs, built static (they run before `/usr` is there, or must not
/// depend on the image's C library version): (package, binary).
pub(super) const STATIC_BINARIES: &[(&str, &str)] = &[
    ("kiln-initramfs", "init"),
    ("kiln-config", "kiln-config"),
    ("kiln-agent", "kiln-update-agent"),
    ("kiln-agent", "kiln-update"),
    ("kiln-fleet", "kiln-fleetd"),
    ("kiln-fleet", "fleetctl"),
    ("kiln-flannel", "kiln-flanneld"),
    ("kiln-etcd", "kiln-etcd"),
];

/// Builds [`STATIC_BINARIES`] (their own target dir: other RUSTFLAGS would rebuild the
/// workspace's) and returns the directory holding them.
fn build_static_binaries() -> Result<PathBuf> {
    let root = host::workspace_root();
    let target_dir = root.join("target/static");
    let mut cmd = host::cargo_command();
    cmd.args([
        "build",
        "--quiet",
        "--release",
        "--target",
        "x86_64-unknown-linux-gnu",
    ]);
    for (package, bin) in STATIC_BINARIES {
        cmd.args(["-p", package, "--bin", bin]);
    }
    host::run(
        cmd.env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("CARGO_TARGET_DIR", &target_dir)
            .current_dir(&root),
    )?;
    Ok(target_dir.join("x86_64-unknown-linux-gnu/release"))
}
