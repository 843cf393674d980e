//! Everything the xtask runs on the host goes through here, so that every failure names the
//! full command line, and missing host packages are installed (as root) or named.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The workspace root (the xtask crate's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// A command's full line, for messages (the one formatting the QEMU harness uses too).
pub use kiln_qemu::{cargo_command, command_line};

/// Runs a command with inherited output; a non-zero exit is an error naming the command.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = command_line(cmd);
    let status = cmd.status().with_context(|| format!("starting `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Bytes free for an unprivileged user on the filesystem holding `path` (statvfs(3)).
pub fn free_bytes(path: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("{} holds a NUL byte", path.display()))?;
    // SAFETY: statvfs writes only into the zeroed struct we pass; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", path.display()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() == 0 }
}

extern "C" {
    fn geteuid() -> u32;
}

/// Whether `tool` is on the PATH (or in the sbin directories, which a non-root PATH may lack).
pub fn has_tool(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|d| d.join(tool).is_file())
}

/// A Debian package the xtask needs on the host, and a file that shows it is installed: a tool
/// on the PATH, or an absolute path.
#[derive(Clone, Copy)]
pub struct HostPackage {
    pub package: &'static str,
    pub provides: &'static str,
}

impl HostPackage {
    fn is_present(&self) -> bool {
        let f = Path::new(self.provides);
        if f.is_absolute() {
            f.exists()
        } else {
            has_tool(self.provides)
        }
    }
}

/// What boots images: `cargo xtask qemu`, the VM scenarios and `bench boot` all need these.
/// QEMU's system emulator and `qemu-img` come from two packages that must agree on a version:
/// a machine with a newer `qemu-utils` (a backport) loses it to apt when `qemu-system-x86` comes
/// from the release, which is why every install checks again afterwards.
pub const QEMU_PACKAGES: &[HostPackage] = &[
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
];

/// Makes sure the packages are installed: as root, installs the missing ones with apt-get;
/// otherwise fails with the command to run.
///
/// Everything missing goes into one apt transaction. apt may remove an installed package to
/// resolve a conflict (a backported `qemu-utils` against the release's `qemu-system-x86`), so
/// every package is checked again afterwards; what apt took away is installed once more in a
/// second transaction (now from the same release as the rest), and if it is still missing the
/// error names it and the conflict apt reports.
pub fn ensure_packages(packages: &[HostPackage], why: &str) -> Result<()> {
    if packages.iter().all(HostPackage::is_present) {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{why} needs these Debian packages: run `sudo apt-get install {}`",
            missing(packages).join(" ")
        );
    }
    install_checked(packages, why, OsStr::new("apt-get"))
}

fn missing(packages: &[HostPackage]) -> Vec<&'static str> {
    let mut names: Vec<&str> = packages
        .iter()
        .filter(|p| !p.is_present())
        .map(|p| p.package)
        .collect();
    names.dedup();
    names
}

/// The install, the check after it and the second try, with `apt_get` as the package tool (a
/// stand-in in tests).
fn install_checked(packages: &[HostPackage], why: &str, apt_get: &OsStr) -> Result<()> {
    let first = missing(packages);
    eprintln!("installing {} ({why})", first.join(" "));
    apt_install(apt_get, &first).context("installing host packages")?;
    let lost = missing(packages);
    if lost.is_empty() {
        return Ok(());
    }
    let removed: Vec<&str> = lost
        .iter()
        .copied()
        .filter(|p| !first.contains(p))
        .collect();
    eprintln!(
        "after installing {}, these are missing: {}{}; installing them again",
        first.join(" "),
        lost.join(" "),
        if removed.is_empty() {
            String::new()
        } else {
            format!(" (apt removed {}: a conflict)", removed.join(" "))
        }
    );
    apt_install(apt_get, &lost).context("installing host packages again")?;
    let still = missing(packages);
    if still.is_empty() {
        return Ok(());
    }
    let conflict = simulate(apt_get, &still);
    bail!(
        "{why} needs {} but it is still missing after installing it twice: apt cannot keep it \
         beside {}.{conflict} Install a version of each that fits together (e.g. all of QEMU from \
         the same release), then run this again",
        still.join(" "),
        first.join(" ")
    )
}

/// `apt-get install` of `packages`; a fresh machine's package lists may be missing or stale, so
/// a failed install updates them once and tries again.
fn apt_install(apt_get: &OsStr, packages: &[&str]) -> Result<()> {
    let install = || {
        run(Command::new(apt_get)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "-o", "DPkg::Lock::Timeout=600"])
            .args(packages))
    };
    install().or_else(|_| {
        run(Command::new(apt_get).args(["update", "-q", "-o", "DPkg::Lock::Timeout=600"]))?;
        install()
    })
}

/// What apt says it would do to install `packages` now: its removals and broken dependencies,
/// one line each, for the error message.
fn simulate(apt_get: &OsStr, packages: &[&str]) -> String {
    let out = Command::new(apt_get)
        .args(["install", "-s", "-q"])
        .args(packages)
        .output();
    let Ok(out) = out else {
        return String::new();
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("Remv ")
                || l.contains("Breaks:")
                || l.contains("Conflicts:")
                || l.starts_with("E: ")
        })
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(" apt says: {}.", lines.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for apt-get over a directory of marker files: `install` creates one per
    /// package, and installing `system` removes `utils` (as the release's qemu-system-x86 removes
    /// a backported qemu-utils) unless `utils` is installed in the same call. A package with a
    /// `ghost-` file is "installed" without its marker appearing.
    fn fake_apt(dir: &Path, log: &Path) -> PathBuf {
        let apt = dir.join("apt-get");
        let script = format!(
            r#"#!/bin/sh
echo "$@" >> '{log}'
cd '{dir}'
case "$1" in update) exit 0;; esac
sim=no; pkgs=
for a in "$@"; do case "$a" in -s) sim=yes;; install|-y|-q|-o|DPkg::*) ;; *) pkgs="$pkgs $a";; esac; done
if [ $sim = yes ]; then echo " utils : Breaks: system (<< 2) but 1 is to be installed"; echo "E: Unable to correct problems"; exit 100; fi
for p in $pkgs; do
  [ -e ghost-$p ] && continue
  touch $p.present
  [ $p = system ] && case " $pkgs " in *" utils "*) ;; *) rm -f utils.present;; esac
done
exit 0
"#,
            log = log.display(),
            dir = dir.display()
        );
        std::fs::write(&apt, script).unwrap();
        std::fs::set_permissions(&apt, std::fs::Permissions::from_mode(0o755)).unwrap();
        apt
    }

    fn packages(dir: &Path) -> Vec<HostPackage> {
        ["system", "utils", "firmware"]
            .map(|name| HostPackage {
                package: name,
                provides: Box::leak(
                    dir.join(format!("{name}.present"))
                        .to_string_lossy()
                        .into_owned()
                        .into_boxed_str(),
                ),
            })
            .to_vec()
    }

    /// A directory of the test's own, removed after it (kept when it failed).
    fn scratch(name: &str) -> kiln_qemu::ScratchDir {
        kiln_qemu::ScratchDir::new(&format!("host-{name}")).unwrap()
    }

    #[test]
    fn a_package_apt_removed_is_installed_again() {
        let scratch = scratch("removed");
        let dir = scratch.path();
        let log = dir.join("calls");
        let apt = fake_apt(dir, &log);
        std::fs::write(dir.join("utils.present"), "").unwrap();
        let pkgs = packages(dir);
        install_checked(&pkgs, "the test", apt.as_os_str()).unwrap();
        assert!(pkgs.iter().all(HostPackage::is_present));
        let calls = std::fs::read_to_string(&log).unwrap();
        let installs: Vec<&str> = calls.lines().filter(|l| l.starts_with("install")).collect();
        assert_eq!(installs.len(), 2, "{calls}");
        assert!(installs[0].ends_with(" system firmware"), "{calls}");
        assert!(installs[1].ends_with(" utils"), "{calls}");
    }

    #[test]
    fn a_package_that_stays_missing_is_named_with_the_conflict() {
        let scratch = scratch("conflict");
        let dir = scratch.path();
        let log = dir.join("calls");
        let apt = fake_apt(dir, &log);
        std::fs::write(dir.join("utils.present"), "").unwrap();
        std::fs::write(dir.join("ghost-utils"), "").unwrap();
        let err = install_checked(&packages(dir), "the test", apt.as_os_str()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with("the test needs utils but it is still missing"),
            "{msg}"
        );
        assert!(msg.contains("beside system firmware"), "{msg}");
        assert!(msg.contains("Breaks: system (<< 2)"), "{msg}");
    }

    #[test]
    fn nothing_missing_after_the_first_install_needs_no_second() {
        let scratch = scratch("plain");
        let dir = scratch.path();
        let log = dir.join("calls");
        let apt = fake_apt(dir, &log);
        let pkgs = packages(dir);
        install_checked(&pkgs[1..], "the test", apt.as_os_str()).unwrap();
        let calls = std::fs::read_to_string(&log).unwrap();
        assert_eq!(calls.lines().count(), 1, "{calls}");
    }
}
