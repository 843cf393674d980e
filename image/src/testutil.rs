//! Helpers for tests that check our formats against the reference tools (e2fsck, veritysetup,
//! sgdisk, fsck.fat, cpio, ...). Not part of the image build.

use std::path::PathBuf;
use std::process::Command;

/// Returns the path of `tool`, installing Debian package `package` first when the tool is
/// missing and we are root (as in CI). Panics with what to install otherwise: a format test
/// that silently skipped its reference check would prove nothing.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    if let Some(p) = find_tool(tool) {
        return p;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc_geteuid() } == 0;
    assert!(is_root, "test needs `{tool}`: install it with `apt-get install {package}` (or run the tests as root)");
    // Tests run in parallel: serialize installs behind one lock file, and let apt wait for its own.
    let status = Command::new("flock")
        .args(["/tmp/kiln-apt.lock", "sh", "-c"])
        .arg(format!(
            "command -v {tool} >/dev/null || PATH=$PATH:/usr/sbin:/sbin command -v {tool} >/dev/null || \
             {{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 {package} >/tmp/kiln-apt-{package}.log 2>&1 || \
               {{ apt-get update -q -o DPkg::Lock::Timeout=600 >>/tmp/kiln-apt-{package}.log 2>&1 && \
                  DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 {package} >>/tmp/kiln-apt-{package}.log 2>&1; }}; }}"
        ))
        .status()
        .expect("running flock/apt-get");
    assert!(
        status.success(),
        "installing {package} for `{tool}` failed: see /tmp/kiln-apt-{package}.log"
    );
    find_tool(tool)
        .unwrap_or_else(|| panic!("{package} is installed but `{tool}` is still not found"))
}

fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
