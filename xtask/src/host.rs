//! Everything the xtask runs on the host goes through here, so that every failure names the
//! full command line, and missing host packages are installed (as root) or named.

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
pub use kiln_qemu::command_line;

/// Runs a command with inherited output; a non-zero exit is an error naming the command.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = command_line(cmd);
    let status = cmd.status().with_context(|| format!("starting `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
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

/// A Debian package the xtask needs on the host, and a file that shows it is installed.
pub struct HostPackage {
    pub package: &'static str,
    pub provides: &'static str,
}

/// Makes sure the packages are installed: as root, installs the missing ones with apt-get;
/// otherwise fails with the command to run.
pub fn ensure_packages(packages: &[HostPackage], why: &str) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|p| {
            let f = Path::new(p.provides);
            if f.is_absolute() {
                !f.exists()
            } else {
                !has_tool(p.provides)
            }
        })
        .map(|p| p.package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{why} needs these Debian packages: run `sudo apt-get install {}`",
            missing.join(" ")
        );
    }
    eprintln!("installing {} ({why})", missing.join(" "));
    let install = |update_first: bool| -> Result<()> {
        if update_first {
            run(Command::new("apt-get").args(["update", "-q", "-o", "DPkg::Lock::Timeout=600"]))?;
        }
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "-o", "DPkg::Lock::Timeout=600"])
            .args(&missing))
    };
    // A fresh machine's package lists may be missing or stale: update once, only if needed.
    install(false)
        .or_else(|_| install(true))
        .context("installing host packages")
}
