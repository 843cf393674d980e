//! End-to-end scenarios that boot built images in QEMU, and checks of built images against the
//! reference tools. `cargo xtask test` builds the image and runs these tests with
//! `KILN_CI_DISK` naming it; run alone, they fail and say so (they never skip).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};
use kiln_image::gpt::Gpt;

/// The built disk the scenarios boot (a `disk.raw` from `cargo xtask build-image`).
pub fn disk_under_test() -> PathBuf {
    let disk = std::env::var_os("KILN_CI_DISK").expect(
        "KILN_CI_DISK is not set: the VM scenarios run through `cargo xtask test`, which builds the image first",
    );
    let disk = PathBuf::from(disk);
    assert!(
        disk.exists(),
        "KILN_CI_DISK={} does not exist",
        disk.display()
    );
    disk
}

/// A fresh directory for one scenario under `build/ci/<name>`; it is kept after the run so a
/// failure's serial logs stay where the test output names them.
pub fn work_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("build/ci")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the scenario's work dir");
    eprintln!("scenario {name}: files in {}", dir.display());
    dir
}

/// Runs a host command and returns its output; failure to start is an error naming it.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let line = kiln_qemu::command_line(cmd);
    cmd.output().with_context(|| format!("starting `{line}`"))
}

/// Runs a host command that must succeed; returns its stdout.
pub fn check(cmd: &mut Command) -> Result<String> {
    let line = kiln_qemu::command_line(cmd);
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where partition `name` sits in `disk`: (offset, length) in bytes.
pub fn partition(disk: &Path, name: &str) -> Result<(u64, u64)> {
    let mut f = File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
    let len = f.metadata()?.len();
    let gpt =
        Gpt::read(&mut f, len).with_context(|| format!("reading the GPT of {}", disk.display()))?;
    let (_, p) = gpt
        .find_by_name(name)
        .with_context(|| format!("{} has no partition {name}", disk.display()))?;
    Ok((p.start_bytes(), p.size_bytes()))
}

/// Copies one partition of `disk` into its own file (sparse), for tools that take a file.
pub fn extract_partition(disk: &Path, name: &str, out: &Path) -> Result<PathBuf> {
    let (offset, len) = partition(disk, name)?;
    let mut src = File::open(disk)?;
    src.seek(SeekFrom::Start(offset))?;
    let mut dst = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    dst.set_len(len)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_exact(&mut buf[..n])?;
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(done))?;
            dst.write_all(&buf[..n])?;
        }
        done += n as u64;
    }
    Ok(out.to_owned())
}

/// A cloud-config that lets the scenario in: the key for `core`.
pub fn ssh_cloud_config(dir: &Path, public_key: &str) -> Result<PathBuf> {
    let path = dir.join("cloud-config.yml");
    std::fs::write(
        &path,
        format!("#cloud-config\nhostname: kiln-ci\nssh_authorized_keys:\n  - {public_key}\n"),
    )?;
    Ok(path)
}
