//! End-to-end scenarios that boot built images in QEMU, and checks of built images against the
//! reference tools. `cargo xtask test` builds the image and runs these tests with
//! `KILN_CI_DISK` naming it; run alone, they fail and say so (they never skip).

pub mod flannel;
pub mod flash;
pub mod fleet;
pub mod update;

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

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds ci/")
        .to_path_buf()
}

/// A fresh directory for one scenario under `build/ci/<name>`; it is kept after the run so a
/// failure's serial logs stay where the test output names them.
pub fn work_dir(name: &str) -> PathBuf {
    let dir = workspace().join("build/ci").join(name);
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

/// A copy-on-write qcow2 overlay of `disk` at `out`, `size` large (e.g. `8G`): the guest writes
/// there and the built disk stays pristine.
pub fn overlay(disk: &Path, out: &Path, size: &str) -> Result<PathBuf> {
    check(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(disk)
            .arg(out)
            .arg(size),
    )?;
    Ok(out.to_owned())
}

/// How long a guest command may take before [`guest`] gives up on it.
const GUEST_COMMAND: std::time::Duration = std::time::Duration::from_secs(90);

/// Runs `command` as `user` over ssh and returns its trimmed stdout; panics with the output and
/// the VM's serial log when it fails.
pub fn guest_as(vm: &kiln_qemu::Vm, key: &Path, user: &str, command: &str) -> String {
    guest_as_within(vm, key, user, command, GUEST_COMMAND)
}

/// [`guest_as`] for a command that may take up to `limit` (one that waits in the guest, under
/// its own `timeout`, for work that takes minutes under TCG).
pub fn guest_as_within(
    vm: &kiln_qemu::Vm,
    key: &Path,
    user: &str,
    command: &str,
    limit: std::time::Duration,
) -> String {
    let out = vm
        .ssh(key, user, command, limit)
        .unwrap_or_else(|e| panic!("{}: ssh `{command}`: {e}", vm.name()));
    assert!(
        out.status.success(),
        "{}: `{command}` failed in the guest ({}): {}{}\nserial log: {}",
        vm.name(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        vm.serial_log().display()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// [`guest_as`] for the operator account `core`.
pub fn guest(vm: &kiln_qemu::Vm, key: &Path, command: &str) -> String {
    guest_as(vm, key, "core", command)
}

/// [`guest_as_within`] for the operator account `core`: `command` waits in the guest under
/// `timeout <secs>`, and the host waits a minute longer for its answer.
pub fn guest_waiting(vm: &kiln_qemu::Vm, key: &Path, secs: u64, command: &str) -> String {
    guest_as_within(
        vm,
        key,
        "core",
        &format!("timeout {secs} {command}"),
        std::time::Duration::from_secs(secs + 60),
    )
}

/// Runs `check` on every machine at once, one thread each, and returns what each gave, in the
/// machines' order; a check that panics fails the caller with its own message. The cluster's
/// guests have one vCPU each: a check made one machine after another keeps one of the host's
/// two cores busy, however many machines wait their turn.
pub fn on_each<T: Send>(
    vms: &[&kiln_qemu::Vm],
    check: impl Fn(usize, &kiln_qemu::Vm) -> T + Sync,
) -> Vec<T> {
    std::thread::scope(|s| {
        let running: Vec<_> = vms
            .iter()
            .enumerate()
            .map(|(i, vm)| {
                let check = &check;
                s.spawn(move || check(i, vm))
            })
            .collect();
        running
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Polls `command` in the guest until `done` accepts its stdout; panics after `timeout`
/// with the last output.
pub fn wait_in_guest(
    vm: &kiln_qemu::Vm,
    key: &Path,
    command: &str,
    timeout: std::time::Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        if let Ok(out) = vm.ssh(key, "core", command, std::time::Duration::from_secs(60)) {
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() && done(&last) {
                return String::from_utf8_lossy(&out.stdout).trim().to_owned();
            }
        }
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
    panic!(
        "{}: `{command}` did not succeed within {timeout:?}; last output:\n{last}\nserial log: {}",
        vm.name(),
        vm.serial_log().display()
    )
}

/// The state a oneshot `unit` ends its run in, `active` or `failed`, once it has ended: a unit
/// that is still starting when ssh answers (nothing orders sshd after it) is waited for.
pub fn unit_ended(
    vm: &kiln_qemu::Vm,
    key: &Path,
    unit: &str,
    timeout: std::time::Duration,
) -> String {
    wait_in_guest(
        vm,
        key,
        &format!("systemctl show -p ActiveState --value {unit}"),
        timeout,
        |state| matches!(state.trim(), "active" | "failed"),
    )
}

/// A sparse copy of `disk` at `out` with `files` (name, content) written into its OEM
/// partition's FAT, the way `flash --config` and `build-image --debug-ssh-key` put them there.
pub fn disk_with_oem_files(disk: &Path, out: &Path, files: &[(&str, &[u8])]) -> Result<PathBuf> {
    check(Command::new("cp").arg("--sparse=always").arg(disk).arg(out))?;
    let (offset, len) = partition(out, kiln_contract::disk::OEM)?;
    let file = File::options()
        .read(true)
        .write(true)
        .open(out)
        .with_context(|| format!("opening {}", out.display()))?;
    let mut region = kiln_image::region::Region::new(file, offset, len)?;
    for (name, content) in files {
        kiln_image::fat::write_file(&mut region, &format!("/{name}"), content, 0).with_context(
            || format!("writing {name} into the OEM partition of {}", out.display()),
        )?;
    }
    Ok(out.to_owned())
}
