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

/// The kernel package the tests were written against, used when apt cannot name the current one.
const DEBIAN_KERNEL: &str = "linux-image-6.1.0-56-amd64";
pub const TEST_CACHE: &str = "/var/tmp/kiln-test-cache";

/// For tests (formats, modules, the QEMU harness, the init): Debian's current kernel package, downloaded
/// once with apt-get and extracted into `/var/tmp/kiln-test-cache`. Returns the extraction
/// directory (holding `boot/vmlinuz-*` and `lib/modules/<kver>/`) and the kernel version.
pub fn debian_kernel() -> (std::path::PathBuf, String) {
    require_tool("dpkg-deb", "dpkg");
    std::fs::create_dir_all(TEST_CACHE).expect("creating the test cache");
    let package = current_kernel_package();
    let kver = package.trim_start_matches("linux-image-").to_string();
    let dir = std::path::Path::new(TEST_CACHE).join(format!("{package}.extracted"));
    let status = std::process::Command::new("flock")
        .args([&format!("{TEST_CACHE}/.kernel.lock"), "sh", "-c"])
        .arg(format!(
            "set -e; cd {TEST_CACHE}; test -d {dir} && exit 0; ls {package}_*.deb >/dev/null 2>&1 || apt-get download -q {package} >/dev/null; \
             rm -rf {dir}.tmp; dpkg-deb -x {package}_*.deb {dir}.tmp; mv {dir}.tmp {dir}",
            dir = dir.display()
        ))
        .status()
        .expect("running flock/apt-get/dpkg-deb");
    assert!(
        status.success(),
        "downloading or extracting {package} failed"
    );
    (dir, kver)
}

/// The kernel package linux-image-amd64 depends on, falling back to the one this test
/// was written against when apt cannot say.
fn current_kernel_package() -> String {
    let out = std::process::Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output();
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Depends: "))
                .find(|p| p.starts_with("linux-image-6."))
                .map(str::to_string)
        })
        .unwrap_or_else(|| DEBIAN_KERNEL.to_string())
}
