//! Test fixtures for real boots: Debian's kernel (downloaded once into a shared cache) and a tiny
//! initramfs made on the fly from a shell script and the host's static busybox.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::run_checked;

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

/// Debian's kernel, from the tests' shared cache (downloaded and unpacked once).
pub(crate) fn test_kernel() -> TestKernel {
    let (dest, _) = kiln_image::testutil::debian_kernel();
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
