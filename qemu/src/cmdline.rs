//! Turning a `VmConfig` into a plan (every file path, port and format decided) and the plan into
//! QEMU's argument list. Building the arguments is pure, so the rules are unit-tested: user-mode
//! networking always `restrict=on`, forwards bound on 127.0.0.1, overlays backed by absolute paths.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{Firmware, Serial, SocketMode, SocketNic, VmConfig};
use crate::{Accel, OvmfPaths, QemuError};

/// The fw_cfg item the guest's init reads its cloud-config from.
pub const FW_CFG_CONFIG_NAME: &str = "opt/org.kiln/config";

/// The longest path a Unix socket can have (`sun_path` is 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A disk image format QEMU must be told explicitly (guessing is refused for raw images).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    /// Reads the image's first bytes: qcow2 files start with `QFI\xfb`, anything else is raw.
    pub fn detect(path: &Path) -> Result<DiskFormat, QemuError> {
        let mut magic = [0u8; 4];
        let mut file =
            File::open(path).map_err(|e| QemuError::io("opening disk image", path, e))?;
        let n = file
            .read(&mut magic)
            .map_err(|e| QemuError::io("reading disk image", path, e))?;
        Ok(if n == 4 && magic == *b"QFI\xfb" {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// A disk as QEMU opens it; `overlay` is set when `file` is a fresh overlay over the caller's disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskPlan {
    pub file: PathBuf,
    pub format: DiskFormat,
    pub overlay: Option<Backing>,
}

/// The image under an overlay: an absolute path, because qemu-img resolves a relative backing path
/// against the overlay's directory, not the caller's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backing {
    pub file: PathBuf,
    pub format: DiskFormat,
}

/// Every decision about one VM's start, made before anything is written or spawned.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub cfg: VmConfig,
    pub qemu: PathBuf,
    pub accel: Accel,
    pub disk: Option<DiskPlan>,
    pub extra_disks: Vec<DiskPlan>,
    /// The firmware code and this VM's own copy of the variable store.
    pub uefi: Option<(OvmfPaths, PathBuf)>,
    pub ssh_port: Option<u16>,
    pub serial_log: PathBuf,
    pub qemu_log: PathBuf,
    pub qmp_socket: PathBuf,
    /// A second monitor the reboot supervisor reads QEMU's events from, for a VM whose guest
    /// reboots end QEMU so that the harness starts it again (see `Plan::restarts_on_reboot`).
    pub events_socket: Option<PathBuf>,
}

impl Plan {
    /// Decides paths and formats. `accel` must already be resolved, `ovmf` given for UEFI VMs.
    pub fn new(
        cfg: &VmConfig,
        qemu: PathBuf,
        accel: Accel,
        ovmf: Option<OvmfPaths>,
        ssh_port: Option<u16>,
    ) -> Result<Plan, QemuError> {
        check_name(cfg)?;
        let work_dir = absolute(&cfg.work_dir)?;
        let cfg = VmConfig {
            work_dir,
            ..cfg.clone()
        };
        let disk = cfg
            .disk
            .as_deref()
            .map(|d| boot_disk_plan(&cfg, d))
            .transpose()?;
        let extra_disks = cfg
            .extra_disks
            .iter()
            .map(|d| {
                Ok(DiskPlan {
                    file: d.clone(),
                    format: DiskFormat::detect(d)?,
                    overlay: None,
                })
            })
            .collect::<Result<_, QemuError>>()?;
        let uefi = match (&cfg.firmware, ovmf) {
            (Firmware::Uefi, Some(ovmf)) => Some((ovmf, cfg.work_file("OVMF_VARS.fd"))),
            (Firmware::Uefi, None) => return Err(invalid(&cfg, "UEFI boot needs the OVMF paths")),
            (Firmware::DirectKernel { .. }, _) => None,
        };
        let serial_log = match &cfg.serial {
            Serial::LogFile(path) => path.clone(),
            Serial::Terminal => cfg.work_file("serial.log"),
        };
        let qmp_socket = cfg.work_file("qmp");
        let events_socket = restarts_on_reboot(&cfg).then(|| cfg.work_file("events"));
        if qmp_socket.as_os_str().len() > MAX_SOCKET_PATH {
            let reason = format!(
                "the monitor socket path {} is too long; use a shorter work_dir",
                qmp_socket.display()
            );
            return Err(invalid(&cfg, &reason));
        }
        if ssh_port.is_none() && cfg.ssh_forward {
            return Err(invalid(
                &cfg,
                "ssh_forward is set but no host port was chosen",
            ));
        }
        Ok(Plan {
            qemu,
            accel: match accel {
                Accel::Auto => return Err(invalid(&cfg, "the accelerator must be resolved first")),
                a => a,
            },
            disk,
            extra_disks,
            uefi,
            ssh_port,
            serial_log,
            qemu_log: cfg.work_file("qemu.log"),
            qmp_socket,
            events_socket,
            cfg,
        })
    }

    /// Whether a guest reboot ends QEMU and the harness starts a new QEMU on the same disk and
    /// UEFI variables, instead of QEMU resetting the machine itself: for UEFI VMs with a log-file
    /// console that reboot by themselves. QEMU 7.2's TCG now and then spins for ever in the reset
    /// of a machine (the firmware never prints again); a fresh process has no reset to hang in.
    pub fn restarts_on_reboot(&self) -> bool {
        self.events_socket.is_some()
    }

    /// QEMU's full argument list (without the program).
    pub fn args(&self) -> Result<Vec<String>, QemuError> {
        let mut a = Args::new(&self.cfg);
        self.machine_args(&mut a)?;
        self.firmware_args(&mut a)?;
        self.disk_args(&mut a)?;
        self.net_args(&mut a);
        self.console_args(&mut a)?;
        if let Some(config) = &self.cfg.config_file {
            let file = a.opt_path(config)?;
            a.push(["-fw_cfg", &format!("name={FW_CFG_CONFIG_NAME},file={file}")]);
        }
        Ok(a.args)
    }

    /// The command that starts this VM.
    pub fn command(&self) -> Result<Command, QemuError> {
        let mut cmd = Command::new(&self.qemu);
        cmd.args(self.args()?);
        Ok(cmd)
    }

    /// The `qemu-img create` command for the overlay, if this VM boots through one.
    pub fn overlay_command(&self, qemu_img: &Path) -> Option<Command> {
        let disk = self.disk.as_ref()?;
        let backing = disk.overlay.as_ref()?;
        let mut cmd = Command::new(qemu_img);
        cmd.args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            backing.format.name(),
            "-b",
        ])
        .arg(&backing.file)
        .arg(&disk.file);
        if let Some(size) = self.cfg.overlay_size {
            cmd.arg(size.to_string());
        }
        Some(cmd)
    }

    fn machine_args(&self, a: &mut Args) -> Result<(), QemuError> {
        let cpu = match self.accel {
            Accel::Kvm => "host",
            // Under emulation `max` offers every instruction TCG implements, so guest binaries built
            // for newer CPUs still run.
            Accel::Tcg | Accel::Auto => "max",
        };
        a.push([
            "-name",
            &format!("{},process=kiln-{}", self.cfg.name, self.cfg.name),
        ]);
        a.push([
            "-machine",
            "q35",
            "-accel",
            self.accel.qemu_name(),
            "-cpu",
            cpu,
        ]);
        a.push([
            "-smp",
            &self.cfg.cpus.to_string(),
            "-m",
            &self.cfg.memory_mib.to_string(),
        ]);
        // No default devices (VGA, e1000 NIC, serial on a tab): everything the VM has is listed here.
        a.push(["-nodefaults", "-display", "none"]);
        // Guest entropy from the host, so first-boot key generation does not stall under emulation.
        a.push(["-device", "virtio-rng-pci"]);
        if self.cfg.no_reboot || self.restarts_on_reboot() {
            a.push(["-no-reboot"]);
        }
        Ok(())
    }

    fn firmware_args(&self, a: &mut Args) -> Result<(), QemuError> {
        if let Some((ovmf, vars)) = &self.uefi {
            let code = a.opt_path(&ovmf.code)?;
            let vars = a.opt_path(vars)?;
            a.push([
                "-drive",
                &format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"),
            ]);
            a.push([
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={vars}"),
            ]);
        }
        if let Firmware::DirectKernel {
            kernel,
            initrd,
            cmdline,
        } = &self.cfg.firmware
        {
            a.push(["-kernel", &a.path(kernel)?]);
            if let Some(initrd) = initrd {
                a.push(["-initrd", &a.path(initrd)?]);
            }
            a.push(["-append", cmdline]);
        }
        Ok(())
    }

    fn disk_args(&self, a: &mut Args) -> Result<(), QemuError> {
        let disks = self.disk.iter().map(|d| (d, None)).chain(
            self.extra_disks
                .iter()
                .enumerate()
                .map(|(i, d)| (d, Some(format!("kiln-extra-{i}")))),
        );
        for (index, (disk, serial)) in disks.enumerate() {
            let file = a.opt_path(&disk.file)?;
            let id = format!("disk{index}");
            a.push([
                "-drive",
                &format!("if=none,id={id},format={},file={file}", disk.format.name()),
            ]);
            let serial = serial.map(|s| format!(",serial={s}")).unwrap_or_default();
            a.push(["-device", &format!("virtio-blk-pci,drive={id}{serial}")]);
        }
        Ok(())
    }

    fn net_args(&self, a: &mut Args) {
        // restrict=on: the guest reaches nothing but the forwards listed here, never the host's
        // network or beyond. Every host-side socket is on 127.0.0.1.
        let mut user = String::from("user,id=net0,restrict=on");
        let forwards = self.ssh_port.map(|p| (p, 22)).into_iter().chain(
            self.cfg
                .extra_forwards
                .iter()
                .map(|f| (f.host_port, f.guest_port)),
        );
        for (host, guest) in forwards {
            user += &format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}");
        }
        for fwd in &self.cfg.guest_forwards {
            // A literal comma inside an option value is written twice.
            let target = fwd.target.qemu_target().replace(',', ",,");
            user += &format!(
                ",guestfwd=tcp:{}:{}-{target}",
                fwd.guest_addr, fwd.guest_port
            );
        }
        a.push(["-netdev", &user, "-device", "virtio-net-pci,netdev=net0"]);
        for (index, nic) in self.cfg.socket_nics.iter().enumerate() {
            let id = format!("sock{index}");
            let peer = match nic.mode {
                SocketMode::Listen(port) => format!("listen=127.0.0.1:{port}"),
                SocketMode::Connect(port) => format!("connect=127.0.0.1:{port}"),
                SocketMode::Mcast { group, port } => {
                    format!("mcast={group}:{port},localaddr=127.0.0.1")
                }
            };
            let mac = format_mac(socket_nic_mac(&self.cfg.name, index, nic));
            a.push(["-netdev", &format!("socket,id={id},{peer}")]);
            a.push(["-device", &format!("virtio-net-pci,netdev={id},mac={mac}")]);
        }
    }

    fn console_args(&self, a: &mut Args) -> Result<(), QemuError> {
        let log = a.opt_path(&self.serial_log)?;
        match self.cfg.serial {
            // Appending: a restarted VM continues the log the previous run wrote (start removes it).
            Serial::LogFile(_) => {
                a.push(["-chardev", &format!("file,id=serial0,path={log},append=on")])
            }
            Serial::Terminal => {
                // signal=off: Ctrl-C goes to the guest; Ctrl-a x quits QEMU, Ctrl-a c is the monitor.
                a.push([
                    "-chardev",
                    &format!("stdio,id=serial0,mux=on,signal=off,logfile={log},logappend=on"),
                ]);
                a.push(["-mon", "chardev=serial0,mode=readline"]);
            }
        }
        a.push(["-serial", "chardev:serial0"]);
        let qmp = a.opt_path(&self.qmp_socket)?;
        a.push([
            "-chardev",
            &format!("socket,id=qmp0,path={qmp},server=on,wait=off"),
        ]);
        a.push(["-mon", "chardev=qmp0,mode=control"]);
        if let Some(events) = &self.events_socket {
            let events = a.opt_path(events)?;
            a.push([
                "-chardev",
                &format!("socket,id=qmp1,path={events},server=on,wait=off"),
            ]);
            a.push(["-mon", "chardev=qmp1,mode=control"]);
        }
        Ok(())
    }
}

/// See [`Plan::restarts_on_reboot`].
fn restarts_on_reboot(cfg: &VmConfig) -> bool {
    cfg.firmware == Firmware::Uefi && !cfg.no_reboot && matches!(cfg.serial, Serial::LogFile(_))
}

/// Argument list under construction, with the VM name at hand for path errors.
struct Args {
    vm: String,
    args: Vec<String>,
}

impl Args {
    fn new(cfg: &VmConfig) -> Args {
        Args {
            vm: cfg.name.clone(),
            args: Vec::new(),
        }
    }

    fn push<const N: usize>(&mut self, words: [&str; N]) {
        self.args.extend(words.iter().map(|w| w.to_string()));
    }

    /// A path as a plain argument; QEMU takes only UTF-8 on its command line in practice.
    fn path(&self, path: &Path) -> Result<String, QemuError> {
        path.to_str()
            .map(str::to_string)
            .ok_or_else(|| QemuError::InvalidConfig {
                vm: self.vm.clone(),
                reason: format!("path {} is not UTF-8", path.display()),
            })
    }

    /// A path inside a comma-separated option, where a literal comma is written twice.
    fn opt_path(&self, path: &Path) -> Result<String, QemuError> {
        Ok(self.path(path)?.replace(',', ",,"))
    }
}

fn boot_disk_plan(cfg: &VmConfig, disk: &Path) -> Result<DiskPlan, QemuError> {
    let format = DiskFormat::detect(disk)?;
    if let Some(size) = cfg.overlay_size {
        if cfg.persist {
            return Err(invalid(
                cfg,
                "a disk size is for the overlay, and a persistent VM writes to its disk itself",
            ));
        }
        let own = virtual_size(disk, format)?;
        if size < own {
            return Err(invalid(
                cfg,
                &format!(
                    "the disk size {size} bytes is smaller than {} ({own} bytes)",
                    disk.display()
                ),
            ));
        }
    }
    if cfg.persist {
        return Ok(DiskPlan {
            file: disk.to_path_buf(),
            format,
            overlay: None,
        });
    }
    let backing = Backing {
        file: absolute(disk)?,
        format,
    };
    Ok(DiskPlan {
        file: cfg.work_file("overlay.qcow2"),
        format: DiskFormat::Qcow2,
        overlay: Some(backing),
    })
}

/// The size of the disk a guest sees in `disk`: a raw file's length, or a qcow2 header's size
/// field (big-endian, at byte 24).
fn virtual_size(disk: &Path, format: DiskFormat) -> Result<u64, QemuError> {
    let io = |e| QemuError::io("reading disk image", disk, e);
    match format {
        DiskFormat::Raw => Ok(std::fs::metadata(disk).map_err(io)?.len()),
        DiskFormat::Qcow2 => {
            let mut header = [0u8; 32];
            File::open(disk)
                .and_then(|mut f| f.read_exact(&mut header))
                .map_err(io)?;
            Ok(u64::from_be_bytes(
                header[24..32].try_into().expect("8 bytes"),
            ))
        }
    }
}

/// An absolute, symlink-free path for an existing file or directory.
fn absolute(path: &Path) -> Result<PathBuf, QemuError> {
    std::fs::canonicalize(path).map_err(|e| QemuError::io("resolving", path, e))
}

/// Names become file names and QEMU option values, so they are kept to a safe alphabet.
fn check_name(cfg: &VmConfig) -> Result<(), QemuError> {
    let ok = !cfg.name.is_empty()
        && cfg.name.len() <= 40
        && cfg
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            cfg,
            "the name must be 1-40 letters, digits, `-` or `_`",
        ))
    }
}

fn invalid(cfg: &VmConfig, reason: &str) -> QemuError {
    QemuError::InvalidConfig {
        vm: cfg.name.clone(),
        reason: reason.to_string(),
    }
}

/// The NIC's MAC: the configured one, or 52:54:00 (QEMU's locally administered prefix) followed by
/// three bytes of an FNV-1a hash of the VM name and the NIC index.
fn socket_nic_mac(vm: &str, index: usize, nic: &SocketNic) -> [u8; 6] {
    if let Some(mac) = nic.mac {
        return mac;
    }
    let mut hash: u32 = 0x811c_9dc5;
    for byte in vm.bytes().chain([b'/', index as u8]) {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    let [_, a, b, c] = hash.to_be_bytes();
    [0x52, 0x54, 0x00, a, b, c]
}

/// A MAC address as QEMU and networkd write it: `52:54:00:77:00:03`.
pub fn format_mac(mac: [u8; 6]) -> String {
    kiln_contract::hex::mac(&mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GuestFwd, GuestFwdTarget, HostFwd};
    use std::net::Ipv4Addr;

    fn ovmf() -> OvmfPaths {
        OvmfPaths {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
        }
    }

    fn plan(cfg: &VmConfig, ssh_port: Option<u16>) -> Plan {
        Plan::new(
            cfg,
            "/usr/bin/qemu-system-x86_64".into(),
            Accel::Tcg,
            Some(ovmf()),
            ssh_port,
        )
        .expect("plan")
    }

    /// The value following `option`, for each time it occurs.
    fn values<'a>(args: &'a [String], option: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == option)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn user_network_is_always_restricted_and_forwards_bind_loopback() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = VmConfig::new("node-1", dir.path());
        cfg.ssh_forward = true;
        cfg.extra_forwards.push(HostFwd {
            host_port: 18080,
            guest_port: 80,
        });
        cfg.guest_forwards.push(GuestFwd {
            guest_addr: Ipv4Addr::new(10, 0, 2, 100),
            guest_port: 8080,
            target: GuestFwdTarget::HostPort(9000),
        });
        cfg.guest_forwards.push(GuestFwd {
            guest_addr: Ipv4Addr::new(10, 0, 2, 101),
            guest_port: 2379,
            target: GuestFwdTarget::Command("nc 127.0.0.1 2379".into()),
        });
        cfg.guest_forwards.push(GuestFwd {
            guest_addr: Ipv4Addr::new(10, 0, 2, 102),
            guest_port: 80,
            target: GuestFwdTarget::Relay(8000),
        });
        let args = plan(&cfg, Some(2222)).args().expect("args");
        assert_eq!(
            values(&args, "-netdev"),
            ["user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:18080-:80,\
              guestfwd=tcp:10.0.2.100:8080-tcp:127.0.0.1:9000,guestfwd=tcp:10.0.2.101:2379-cmd:nc 127.0.0.1 2379,\
              guestfwd=tcp:10.0.2.102:80-cmd:bash -c 'exec 2>/dev/null 4<&0 3<>/dev/tcp/127.0.0.1/8000 || exit 1; \
              cat <&4 >&3 & w=$!; cat <&3; kill $w'"]
        );
        assert!(values(&args, "-device").contains(&"virtio-net-pci,netdev=net0"));
        // Even a VM with no forwards at all is restricted.
        let bare = plan(&VmConfig::new("bare", dir.path()), None)
            .args()
            .expect("args");
        assert_eq!(values(&bare, "-netdev"), ["user,id=net0,restrict=on"]);
    }

    #[test]
    fn machine_is_q35_without_default_devices_and_with_the_chosen_accelerator() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = plan(&VmConfig::new("m", dir.path()), None)
            .args()
            .expect("args");
        assert_eq!(values(&args, "-machine"), ["q35"]);
        assert_eq!(values(&args, "-accel"), ["tcg"]);
        assert!(args.contains(&"-nodefaults".to_string()));
        assert_eq!(values(&args, "-display"), ["none"]);
        // A UEFI VM logging its console restarts on reboot: QEMU exits at the guest's reset, and
        // the harness hears why on a second monitor.
        assert!(args.contains(&"-no-reboot".to_string()));
        assert_eq!(values(&args, "-mon").len(), 2);
        // On a terminal QEMU resets the machine itself.
        let mut cfg = VmConfig::new("t", dir.path());
        cfg.serial = Serial::Terminal;
        let args = plan(&cfg, None).args().expect("args");
        assert!(!args.contains(&"-no-reboot".to_string()));
        assert_eq!(
            values(&args, "-mon").len(),
            2,
            "the terminal's monitor and QMP"
        );
    }

    #[test]
    fn config_file_goes_to_fw_cfg_with_commas_doubled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = VmConfig::new("c", dir.path());
        cfg.config_file = Some("/tmp/a,b/cloud-config.yml".into());
        let args = plan(&cfg, None).args().expect("args");
        assert_eq!(
            values(&args, "-fw_cfg"),
            ["name=opt/org.kiln/config,file=/tmp/a,,b/cloud-config.yml"]
        );
    }

    #[test]
    fn overlay_is_backed_by_the_absolute_disk_path_and_the_vm_uses_the_overlay() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("disk.raw"), vec![0u8; 4096]).expect("write disk");
        let cwd = std::env::current_dir().expect("cwd");
        // A relative disk path, as a user would type it.
        let relative: PathBuf = std::iter::repeat_n("..", cwd.components().count())
            .collect::<PathBuf>()
            .join(dir.path().strip_prefix("/").expect("absolute tempdir"))
            .join("disk.raw");
        let mut cfg = VmConfig::new("o", dir.path());
        cfg.disk = Some(relative);
        let plan = plan(&cfg, None);
        let cmd = plan
            .overlay_command(Path::new("/usr/bin/qemu-img"))
            .expect("overlay command");
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let work = std::fs::canonicalize(dir.path()).expect("canonical");
        let backing = work.join("disk.raw").to_string_lossy().into_owned();
        let overlay = work.join("o.overlay.qcow2").to_string_lossy().into_owned();
        assert_eq!(
            args,
            ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", &backing, &overlay]
        );
        let vm_args = plan.args().expect("args");
        assert_eq!(
            values(&vm_args, "-drive")[2],
            format!("if=none,id=disk0,format=qcow2,file={overlay}")
        );
        assert!(values(&vm_args, "-device").contains(&"virtio-blk-pci,drive=disk0"));
    }

    #[test]
    fn persistent_disks_are_used_directly_with_their_detected_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("disk.qcow2");
        std::fs::write(&disk, b"QFI\xfb\0\0\0\x03").expect("write disk");
        let blank = dir.path().join("blank.raw");
        std::fs::write(&blank, [0u8; 512]).expect("write blank");
        let mut cfg = VmConfig::new("p", dir.path());
        cfg.disk = Some(disk.clone());
        cfg.persist = true;
        cfg.extra_disks.push(blank.clone());
        let plan = plan(&cfg, None);
        assert!(plan.overlay_command(Path::new("qemu-img")).is_none());
        let args = plan.args().expect("args");
        let drives = values(&args, "-drive");
        assert_eq!(
            drives[2],
            format!("if=none,id=disk0,format=qcow2,file={}", disk.display())
        );
        assert_eq!(
            drives[3],
            format!("if=none,id=disk1,format=raw,file={}", blank.display())
        );
        assert!(
            values(&args, "-device").contains(&"virtio-blk-pci,drive=disk1,serial=kiln-extra-0")
        );
    }

    #[test]
    fn uefi_uses_readonly_code_and_a_per_vm_vars_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan(&VmConfig::new("u", dir.path()), None);
        let args = plan.args().expect("args");
        let work = std::fs::canonicalize(dir.path()).expect("canonical");
        assert_eq!(
            values(&args, "-drive"),
            [
                "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
                    .to_string(),
                format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    work.join("u.OVMF_VARS.fd").display()
                ),
            ]
        );
    }

    #[test]
    fn direct_kernel_boot_passes_kernel_initrd_and_command_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = VmConfig::new("k", dir.path());
        cfg.firmware = Firmware::DirectKernel {
            kernel: "/k/vmlinuz".into(),
            initrd: Some("/k/initrd".into()),
            cmdline: "console=ttyS0 panic=-1".into(),
        };
        cfg.no_reboot = true;
        let args = plan(&cfg, None).args().expect("args");
        assert_eq!(values(&args, "-kernel"), ["/k/vmlinuz"]);
        assert_eq!(values(&args, "-initrd"), ["/k/initrd"]);
        assert_eq!(values(&args, "-append"), ["console=ttyS0 panic=-1"]);
        assert!(
            values(&args, "-drive").is_empty(),
            "no pflash for a direct kernel boot"
        );
        assert!(args.contains(&"-no-reboot".to_string()));
    }

    #[test]
    fn serial_goes_to_the_log_file_and_the_monitor_to_a_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = std::fs::canonicalize(dir.path()).expect("canonical");
        let mut cfg = VmConfig::new("s", &work);
        let args = plan(&cfg, None).args().expect("args");
        let log = work.join("s.serial.log");
        let qmp = work.join("s.qmp");
        let events = work.join("s.events");
        assert_eq!(
            values(&args, "-chardev"),
            [
                format!("file,id=serial0,path={},append=on", log.display()),
                format!("socket,id=qmp0,path={},server=on,wait=off", qmp.display()),
                format!(
                    "socket,id=qmp1,path={},server=on,wait=off",
                    events.display()
                ),
            ]
        );
        assert_eq!(values(&args, "-serial"), ["chardev:serial0"]);
        cfg.serial = Serial::Terminal;
        let args = plan(&cfg, None).args().expect("args");
        assert_eq!(
            values(&args, "-chardev")[0],
            format!(
                "stdio,id=serial0,mux=on,signal=off,logfile={},logappend=on",
                log.display()
            )
        );
    }

    #[test]
    fn socket_nics_listen_or_connect_on_loopback_with_distinct_stable_macs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = VmConfig::new("a", dir.path());
        cfg.socket_nics = vec![
            SocketNic {
                mode: SocketMode::Listen(4000),
                mac: None,
            },
            SocketNic {
                mode: SocketMode::Connect(4001),
                mac: Some([2, 0, 0, 0, 0, 1]),
            },
            SocketNic {
                mode: SocketMode::Mcast {
                    group: Ipv4Addr::new(230, 0, 0, 1),
                    port: 4002,
                },
                mac: None,
            },
        ];
        let args = plan(&cfg, None).args().expect("args");
        assert_eq!(
            values(&args, "-netdev")[1..],
            [
                "socket,id=sock0,listen=127.0.0.1:4000",
                "socket,id=sock1,connect=127.0.0.1:4001",
                "socket,id=sock2,mcast=230.0.0.1:4002,localaddr=127.0.0.1",
            ]
        );
        let macs: Vec<&str> = values(&args, "-device")
            .into_iter()
            .filter(|d| d.contains("netdev=sock"))
            .collect();
        assert_eq!(macs[1], "virtio-net-pci,netdev=sock1,mac=02:00:00:00:00:01");
        assert_ne!(macs[0], macs[2]);
        assert_eq!(
            args,
            plan(&cfg, None).args().expect("args"),
            "same config, same command line"
        );
        let other = socket_nic_mac("b", 0, &cfg.socket_nics[0]);
        assert_ne!(
            other,
            socket_nic_mac("a", 0, &cfg.socket_nics[0]),
            "VMs differ in MAC"
        );
    }

    #[test]
    fn bad_names_and_unresolved_accel_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = VmConfig::new("no spaces", dir.path());
        let err =
            Plan::new(&cfg, "q".into(), Accel::Tcg, Some(ovmf()), None).expect_err("bad name");
        assert!(err.to_string().contains("no spaces"), "{err}");
        let cfg = VmConfig::new("ok", dir.path());
        assert!(Plan::new(&cfg, "q".into(), Accel::Auto, Some(ovmf()), None).is_err());
        assert!(
            Plan::new(&cfg, "q".into(), Accel::Tcg, None, None).is_err(),
            "UEFI without OVMF"
        );
    }
}
