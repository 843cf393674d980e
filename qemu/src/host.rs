//! Finding what the host provides: the QEMU binaries, the OVMF firmware, free local ports.
//! A missing piece is an error naming the Debian package that provides it.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

use crate::QemuError;

/// The emulator this crate drives.
pub const QEMU_SYSTEM: &str = "qemu-system-x86_64";

/// The two halves of a UEFI firmware: read-only code and the variable store template each VM copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvmfPaths {
    pub code: PathBuf,
    pub vars: PathBuf,
}

/// Where Debian's `ovmf` package puts the firmware, best first. The 4 MiB build is the current one;
/// the 2 MiB names are what older releases ship. Secure-boot builds are skipped on purpose: they need
/// SMM and enrolled keys, which the Kiln image does not use.
const OVMF_CANDIDATES: [(&str, &str); 2] = [
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
];

/// The `qemu-system-x86_64` binary.
pub fn find_qemu() -> Result<PathBuf, QemuError> {
    find_tool(QEMU_SYSTEM, "qemu-system-x86")
}

/// The `qemu-img` binary, used to make copy-on-write overlays.
pub fn find_qemu_img() -> Result<PathBuf, QemuError> {
    find_tool("qemu-img", "qemu-utils")
}

/// The OVMF firmware pair from Debian's `ovmf` package.
pub fn find_ovmf() -> Result<OvmfPaths, QemuError> {
    find_ovmf_in(&OVMF_CANDIDATES)
}

fn find_ovmf_in(candidates: &[(&str, &str)]) -> Result<OvmfPaths, QemuError> {
    candidates
        .iter()
        .map(|(code, vars)| OvmfPaths {
            code: code.into(),
            vars: vars.into(),
        })
        .find(|p| p.code.is_file() && p.vars.is_file())
        .ok_or_else(|| QemuError::OvmfMissing {
            searched: candidates
                .iter()
                .map(|(c, v)| format!("{c} + {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Looks `tool` up in `PATH` (and the sbin directories, which a non-login root shell may lack).
pub fn find_tool(tool: &str, package: &str) -> Result<PathBuf, QemuError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| is_executable(p))
        .ok_or_else(|| QemuError::ToolMissing {
            tool: tool.into(),
            package: package.into(),
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it; we release it at once).
/// Another process may take it before QEMU binds it; QEMU then fails to start and says so, which is
/// rare enough on a test machine to accept rather than hand QEMU a bound socket.
pub fn free_port() -> Result<u16, QemuError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| QemuError::io("binding a free port on", "127.0.0.1:0", source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_the_package() {
        let err = find_tool("kiln-no-such-tool", "kiln-pkg").expect_err("tool must be missing");
        assert_eq!(
            err.to_string(),
            "`kiln-no-such-tool` not found in PATH: install it with `apt-get install kiln-pkg`"
        );
    }

    #[test]
    fn missing_ovmf_names_the_package_and_the_paths() {
        let err =
            find_ovmf_in(&[("/nonexistent/CODE.fd", "/nonexistent/VARS.fd")]).expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.contains("apt-get install ovmf") && msg.contains("/nonexistent/CODE.fd"),
            "{msg}"
        );
    }

    #[test]
    fn free_ports_are_bindable_on_loopback() {
        let port = free_port().expect("free port");
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("port from free_port is bindable");
    }
}
