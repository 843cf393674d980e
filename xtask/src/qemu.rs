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
    /// The size of the disk the VM sees (a sparse overlay; `16G`, `500M`, `20GiB` or bytes):
    /// ROOT grows into it at first boot, as on a real machine's disk. Not with --persist.
    #[arg(long, value_parser = parse_size)]
    pub disk_size: Option<u64>,
    /// Stop the VM after this many seconds (default: run until the guest powers off or you
    /// quit with Ctrl-a x).
    #[arg(long)]
    pub timeout: Option<u64>,
}

/// What `--disk-size` is when not given: room for real container images on ROOT.
const DEFAULT_DISK_SIZE: u64 = 16 << 30;

/// A size as `qemu-img` and users write it: bytes, or a number with K, M, G or T (powers of
/// 1024; `G`, `GB`, `GiB` all mean GiB).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: u64 = number.parse().map_err(|_| {
        format!("`{text}` is not a size: write e.g. 16G, 500M or a number of bytes")
    })?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use K, M, G or T)"
            ))
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

pub fn run(cfg: &QemuConfig) -> Result<()> {
    let root = host::workspace_root();
    let disk = match &cfg.disk {
        Some(d) => d.clone(),
        None => {
            let def = Definition::load(&root.join("image/image.toml"))?;
            let version = cfg.version.clone().unwrap_or(def.image.version);
            root.join("build")
                .join(version)
                .join(crate::release::DISK_FILE)
        }
    };
    if !disk.exists() {
        bail!(
            "{} does not exist: build it with `cargo xtask build-image` (or name one with --disk)",
            disk.display()
        );
    }
    host::ensure_packages(host::QEMU_PACKAGES, "booting an image")?;
    let work_dir = disk.parent().context("disk has no directory")?.join("vm");
    let mut vm_cfg = VmConfig::new("kiln", &work_dir);
    vm_cfg.disk = Some(disk.clone());
    vm_cfg.persist = cfg.persist;
    vm_cfg.overlay_size = match (cfg.disk_size, cfg.persist) {
        (Some(_), true) => bail!("--disk-size sizes the overlay; --persist boots the disk itself"),
        (Some(size), false) => Some(size),
        (None, true) => None,
        (None, false) => Some(DEFAULT_DISK_SIZE),
    };
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

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_read_as_qemu_img_writes_them() {
        assert_eq!(parse_size("16G"), Ok(16 << 30));
        assert_eq!(parse_size("20GiB"), Ok(20 << 30));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("sixteen").unwrap_err().contains("not a size"));
        assert!(parse_size("16X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }
}
