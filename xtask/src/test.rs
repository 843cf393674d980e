//! `cargo xtask test`: the README's test command, and what CI runs.
//!
//! 1. the host tools our formats are checked against are installed (as root) or named;
//! 2. every crate's tests (formats against their reference tools, protocol, harness);
//! 3. the image is built as `cargo xtask build-image` builds it, and two more versions of it
//!    for the update scenarios (a good one and a bad one);
//! 4. the checks of the built image and the VM scenarios in `ci/`, one at a time.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::build::{self, BuildConfig};
use crate::host::{self, HostPackage};

#[derive(clap::Args)]
pub struct TestConfig {
    /// Only the crates' tests: no image build, no VM scenarios.
    #[arg(long)]
    pub unit_only: bool,
    /// Extra arguments for the test runner (a filter, `--no-capture`, ...).
    #[arg(trailing_var_arg = true)]
    pub runner_args: Vec<String>,
}

/// The reference tools that define our formats, and what boots images.
pub const TEST_PACKAGES: &[HostPackage] = &[
    HostPackage {
        package: "e2fsprogs",
        provides: "e2fsck",
    },
    HostPackage {
        package: "cryptsetup-bin",
        provides: "veritysetup",
    },
    HostPackage {
        package: "dosfstools",
        provides: "fsck.fat",
    },
    HostPackage {
        package: "mtools",
        provides: "mtype",
    },
    HostPackage {
        package: "gdisk",
        provides: "sgdisk",
    },
    HostPackage {
        package: "cpio",
        provides: "cpio",
    },
    HostPackage {
        package: "zstd",
        provides: "zstd",
    },
    HostPackage {
        package: "kmod",
        provides: "depmod",
    },
    HostPackage {
        package: "busybox-static",
        provides: "/bin/busybox",
    },
    HostPackage {
        package: "qemu-system-x86",
        provides: "qemu-system-x86_64",
    },
    HostPackage {
        package: "qemu-utils",
        provides: "qemu-img",
    },
    HostPackage {
        package: "ovmf",
        provides: "/usr/share/OVMF/OVMF_CODE_4M.fd",
    },
    HostPackage {
        package: "openssh-client",
        provides: "ssh",
    },
];

pub fn run(cfg: &TestConfig) -> Result<()> {
    host::ensure_packages(TEST_PACKAGES, "checking images against the reference tools")?;
    runner(
        &["--workspace", "--exclude", "kiln-ci"],
        &cfg.runner_args,
        &[],
    )?;
    if cfg.unit_only {
        return Ok(());
    }
    let build_cfg = BuildConfig {
        version: None,
        mirror: None,
        definition: "image/image.toml".into(),
        out: "build".into(),
        debug_ssh_key: None,
        signing_key: None,
        usr_overlays: Vec::new(),
    };
    let mut build = build::Build::new(&build_cfg)?;
    let artifacts = build.run()?;
    let disk = artifacts.disk.to_string_lossy().into_owned();
    // The update scenarios need two more versions of the same commit: a good one, and a bad one
    // whose /usr carries a service that always fails (so it is never blessed and rolls back).
    let v2 = update_version(&build_cfg, &format!("{}.2", build.version), &[])?;
    let v3 = update_version(
        &build_cfg,
        &format!("{}.3", build.version),
        &[PathBuf::from("ci/fixtures/broken-usr")],
    )?;
    runner(
        &["-p", "kiln-ci"],
        &cfg.runner_args,
        &[
            ("KILN_CI_DISK", &disk),
            ("KILN_CI_VERSION", &build.version),
            ("KILN_CI_V2", &v2),
            ("KILN_CI_V3_BROKEN", &v3),
        ],
    )
}

/// Builds `version` of this commit under `build/ci/versions/` for the update scenarios; returns
/// its output directory (with `update.payload`).
fn update_version(base: &BuildConfig, version: &str, usr_overlays: &[PathBuf]) -> Result<String> {
    let cfg = BuildConfig {
        version: Some(version.to_owned()),
        out: "build/ci/versions".into(),
        usr_overlays: usr_overlays.to_vec(),
        ..base.clone()
    };
    let mut build = build::Build::new(&cfg)?;
    build.run()?;
    Ok(build.out_dir.to_string_lossy().into_owned())
}

/// Runs the tests of `scope` under nextest (cargo test where nextest is missing).
fn runner(scope: &[&str], extra: &[String], env: &[(&str, &str)]) -> Result<()> {
    let mut cmd = Command::new("cargo");
    if nextest_available() {
        cmd.args(["nextest", "run", "--no-fail-fast"])
            .args(scope)
            .args(extra);
    } else {
        eprintln!("cargo-nextest is not installed: running `cargo test` instead");
        cmd.args(["test", "--no-fail-fast"])
            .args(scope)
            .arg("--")
            .args(extra);
    }
    cmd.envs(env.iter().copied())
        .current_dir(host::workspace_root());
    host::run(&mut cmd)
}

fn nextest_available() -> bool {
    Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    /// The README opens with two commands; CI must run the second one, as written.
    #[test]
    fn ci_runs_the_readme_test_command() {
        let root = crate::host::workspace_root();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let block = readme
            .split("```sh\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("a ```sh block in the README");
        let commands: Vec<&str> = block
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(
            commands.len(),
            2,
            "the README's first block should hold two commands: {commands:?}"
        );
        let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
        assert!(
            ci.lines().any(|l| l.trim() == commands[1]),
            ".ci/run does not run `{}`",
            commands[1]
        );
    }
}
