//! Test fixtures for real boots: Debian's kernel (downloaded once into a shared cache) and a tiny
//! initramfs made on the fly from a shell script and the host's static busybox.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::run_checked;

/// Shared by all Kiln tests; the kernel package is 70 MB, fetched once.
const CACHE: &str = "/var/tmp/kiln-test-cache";

/// The kernel modules the test init loads, in dependency order.
pub(crate) const MODULES: [&str; 10] = [
    "qemu_fw_cfg",
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
];

/// A Debian kernel and the few modules the test init needs, unpacked from the package that the
/// `linux-image-amd64` metapackage depends on.
pub(crate) struct TestKernel {
    pub vmlinuz: PathBuf,
    pub modules: Vec<PathBuf>,
}

/// Downloads (once) and unpacks (once) the kernel, under a lock so parallel tests share the work.
pub(crate) fn test_kernel() -> TestKernel {
    kiln_image::testutil::require_tool("apt-get", "apt");
    kiln_image::testutil::require_tool("dpkg-deb", "dpkg");
    std::fs::create_dir_all(CACHE).expect("creating the test cache");
    let patterns: Vec<String> = MODULES.iter().map(|m| format!("'*/{m}.ko'")).collect();
    // The metapackage names the exact kernel package; the .deb is fetched into the cache, and only
    // vmlinuz and our modules are unpacked (the whole package is 400 MB of modules).
    let script = format!(
        r#"set -e
cd {CACHE}
pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1)
[ -n "$pkg" ] || {{ echo "linux-image-amd64 depends on no kernel package" >&2; exit 1; }}
dest=qemu-kernel/$pkg
if [ ! -f "$dest/.complete" ]; then
  ls "$pkg"_*.deb >/dev/null 2>&1 || apt-get download -q "$pkg" >&2
  deb=$(ls "$pkg"_*.deb | head -n 1)
  rm -rf "$dest" && mkdir -p "$dest"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dest" --wildcards './boot/vmlinuz-*' {}
  touch "$dest/.complete"
fi
echo "{CACHE}/$dest""#,
        patterns.join(" ")
    );
    let mut cmd = Command::new("flock");
    cmd.args([&format!("{CACHE}/.qemu-kernel.lock"), "sh", "-c", &script]);
    let out = run_checked(&mut cmd, Duration::from_secs(900)).expect("fetching the Debian kernel");
    let dest = PathBuf::from(String::from_utf8_lossy(&out).trim());
    let vmlinuz = find_files(&dest, &|name| name.starts_with("vmlinuz-"))
        .pop()
        .expect("vmlinuz in the package");
    let modules = MODULES
        .iter()
        .map(|m| {
            find_files(&dest, &|name| name == format!("{m}.ko"))
                .pop()
                .unwrap_or_else(|| panic!("{m}.ko missing from the kernel package"))
        })
        .collect();
    TestKernel { vmlinuz, modules }
}

fn find_files(dir: &Path, wanted: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)
        .expect("reading the unpacked kernel")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            found.extend(find_files(&path, wanted));
        } else if wanted(&entry.file_name().to_string_lossy()) {
            found.push(path);
        }
    }
    found
}

/// Writes `dir/initrd.cpio`: `/init` is `script` run by busybox's shell, with busybox at
/// `/bin/busybox`, the kernel's modules in `/lib` and their names, in the order given, in
/// `/lib/modules.order`. Packed by the host's `cpio`, the reference
/// tool for the newc format the kernel reads.
pub(crate) fn initramfs(dir: &Path, script: &str, modules: &[PathBuf]) -> PathBuf {
    let cpio = kiln_image::testutil::require_tool("cpio", "cpio");
    // Debian's busybox-static is a static binary, so it runs in a root with no libraries.
    let busybox = kiln_image::testutil::require_tool("busybox", "busybox-static");
    let root = dir.join("initrd-root");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir bin");
    std::fs::create_dir_all(root.join("lib")).expect("mkdir lib");
    std::fs::copy(&busybox, root.join("bin/busybox")).expect("copying busybox");
    let mut order = String::new();
    for module in modules {
        let name = module.file_name().expect("module name");
        std::fs::copy(module, root.join("lib").join(name)).expect("copy module");
        order += &format!("{}\n", name.to_string_lossy());
    }
    std::fs::write(root.join("lib/modules.order"), order).expect("writing modules.order");
    let init = root.join("init");
    std::fs::write(&init, format!("#!/bin/busybox sh\n{script}")).expect("writing init");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).expect("chmod init");
    let image = dir.join("initrd.cpio");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "find . | LC_ALL=C sort | '{}' -o -H newc -R 0:0 --quiet > '{}'",
            cpio.display(),
            image.display()
        ))
        .current_dir(&root);
    run_checked(&mut cmd, Duration::from_secs(60)).expect("packing the initramfs");
    image
}
