//! `cargo xtask qemu`: boots a built image on this terminal's serial console, through a
//! copy-on-write overlay so the built image stays pristine.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln_image::definition::Definition;
use kiln_qemu::{Accel, Serial, Vm, VmConfig};

use crate::host;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum AccelArg {
    /// KVM when it answers a probe within seconds, else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(clap::Args)]
pub struct QemuConfig {
    /// The disk to boot (default: build/<version>/disk.raw).
    #[arg(long)]
    pub disk: Option<PathBuf>,
    /// The build to boot when --disk is not given (default: image.toml's version).
    #[arg(long)]
    pub version: Option<String>,
    /// A cloud-config handed to the guest through fw_cfg (opt/org.kiln/config).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    pub memory: u32,
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Write to the disk itself instead of a fresh overlay (changes survive the next boot).
    #[arg(long)]
    pub persist: bool,
    /// Stop the VM after this many seconds (default: run until the guest powers off or you
    /// quit with Ctrl-a x).
    #[arg(long)]
    pub timeout: Option<u64>,
}

pub fn run(cfg: &QemuConfig) -> Result<()> {
    let root = host::workspace_root();
    let disk = match &cfg.disk {
        Some(d) => d.clone(),
        None => {
            let def = Definition::load(&root.join("image/image.toml"))?;
            let version = cfg.version.clone().unwrap_or(def.image.version);
            root.join("build").join(version).join("disk.raw")
        }
    };
    if !disk.exists() {
        bail!(
            "{} does not exist: build it with `cargo xtask build-image` (or name one with --disk)",
            disk.display()
        );
    }
    host::ensure_packages(
        &[
            host::HostPackage {
                package: "qemu-system-x86",
                provides: "qemu-system-x86_64",
            },
            host::HostPackage {
                package: "ovmf",
                provides: "/usr/share/OVMF/OVMF_CODE_4M.fd",
            },
            host::HostPackage {
                package: "qemu-utils",
                provides: "qemu-img",
            },
        ],
        "booting an image",
    )?;
    let work_dir = disk.parent().context("disk has no directory")?.join("vm");
    let mut vm_cfg = VmConfig::new("kiln", &work_dir);
    vm_cfg.disk = Some(disk.clone());
    vm_cfg.persist = cfg.persist;
    vm_cfg.memory_mib = cfg.memory;
    vm_cfg.cpus = cfg.cpus;
    vm_cfg.accel = match cfg.accel {
        AccelArg::Auto => Accel::Auto,
        AccelArg::Kvm => Accel::Kvm,
        AccelArg::Tcg => Accel::Tcg,
    };
    vm_cfg.ssh_forward = true;
    vm_cfg.config_file = cfg.config.clone();
    vm_cfg.serial = Serial::Terminal;
    let vm = Vm::start(&vm_cfg)?;
    let port = vm.ssh_port().context("no ssh port")?;
    eprintln!(
        "kiln: booting {} ({:?}); ssh: ssh -p {port} core@127.0.0.1 (with a key from --config); quit: Ctrl-a x",
        disk.display(),
        vm.accel()
    );
    // A day is "until the guest stops" for an interactive session, and still a bound.
    let limit = Duration::from_secs(cfg.timeout.unwrap_or(24 * 3600));
    match vm.wait_exit(limit) {
        Ok(status) => {
            eprintln!(
                "kiln: QEMU exited ({status}); serial log: {}",
                vm.serial_log().display()
            );
            Ok(())
        }
        Err(e) => {
            vm.kill();
            Err(e).context("the VM did not stop in time; it was killed")
        }
    }
}
