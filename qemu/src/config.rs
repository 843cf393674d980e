//! What a VM is made of: the configuration a caller fills in before `Vm::start`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Accel;

/// Everything needed to start one VM. Start from [`VmConfig::new`] and change the fields you need.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// A short name (letters, digits, `-`, `_`): prefixes the files in `work_dir`, names the VM in errors.
    pub name: String,
    /// Where the VM's files go: serial log, QEMU's messages, overlay, UEFI variables, monitor socket.
    /// Several VMs may share one directory. Nothing here is deleted, so a failed VM's logs stay.
    pub work_dir: PathBuf,
    /// The boot disk (raw or qcow2, detected from its content), attached as virtio-blk.
    pub disk: Option<PathBuf>,
    /// `false`: the VM writes to a qcow2 overlay in `work_dir`, made fresh at each start, and `disk`
    /// stays pristine. `true`: the VM writes to `disk` itself.
    pub persist: bool,
    /// The size in bytes of the overlay's virtual disk (at least `disk`'s size): the guest sees a
    /// disk this large, as on a real machine's bigger disk. `None`: `disk`'s own size.
    pub overlay_size: Option<u64>,
    /// More disks, attached writable as they are (e.g. a blank target for `flash`), in order after
    /// `disk`; the guest sees them with serial numbers `kiln-extra-0`, `kiln-extra-1`, ...
    pub extra_disks: Vec<PathBuf>,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    pub firmware: Firmware,
    /// Forward a free port on 127.0.0.1 to the guest's port 22 (see `Vm::ssh_port`).
    pub ssh_forward: bool,
    /// More host→guest TCP forwards, all bound on 127.0.0.1.
    pub extra_forwards: Vec<HostFwd>,
    /// Guest→host TCP forwards: the guest connects to a virtual address, the host side answers.
    pub guest_forwards: Vec<GuestFwd>,
    /// A file handed to the guest through QEMU's fw_cfg as `opt/org.kiln/config` (the cloud-config).
    pub config_file: Option<PathBuf>,
    /// Extra NICs on a private VM-to-VM network (QEMU socket networking on 127.0.0.1).
    pub socket_nics: Vec<SocketNic>,
    pub serial: Serial,
    /// Make a guest reboot end QEMU instead of restarting the machine.
    pub no_reboot: bool,
    /// A UEFI VM whose console stays silent this long after the kernel's `reboot: machine
    /// restart` is power-cycled: QEMU 7.2's TCG now and then spins at 100 % CPU in the reset,
    /// with nothing from the firmware. The firmware prints within seconds of a reset that works.
    pub reset_hang: Duration,
}

impl VmConfig {
    /// A 2-CPU, 2 GiB UEFI VM with the serial console in `work_dir/<name>.serial.log`, no disk yet,
    /// booting through an overlay, accelerator chosen by probing.
    pub fn new(name: &str, work_dir: &Path) -> VmConfig {
        VmConfig {
            name: name.to_string(),
            work_dir: work_dir.to_path_buf(),
            disk: None,
            persist: false,
            overlay_size: None,
            extra_disks: Vec::new(),
            memory_mib: 2048,
            cpus: 2,
            accel: Accel::Auto,
            firmware: Firmware::Uefi,
            ssh_forward: false,
            extra_forwards: Vec::new(),
            guest_forwards: Vec::new(),
            config_file: None,
            socket_nics: Vec::new(),
            serial: Serial::LogFile(work_dir.join(format!("{name}.serial.log"))),
            no_reboot: false,
            reset_hang: Duration::from_secs(120),
        }
    }

    /// The file a VM's file of the given kind lives in: `work_dir/<name>.<suffix>`.
    pub(crate) fn work_file(&self, suffix: &str) -> PathBuf {
        self.work_dir.join(format!("{}.{suffix}", self.name))
    }
}

/// How the machine starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// OVMF from the host, with a per-VM copy of the variable store in `work_dir`.
    Uefi,
    /// QEMU loads a kernel (and initramfs) directly, without firmware boot menus or a boot loader.
    DirectKernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
}

/// Where the serial console goes. Both keep a copy in the log file, which `wait_for_serial` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serial {
    /// The serial console (and QEMU's monitor, behind Ctrl-a c) on this terminal; Ctrl-a x quits.
    /// Everything shown is also logged to `work_dir/<name>.serial.log`.
    Terminal,
    /// Only to this file.
    LogFile(PathBuf),
}

/// A host→guest TCP forward: 127.0.0.1:`host_port` on the host reaches `guest_port` in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFwd {
    pub host_port: u16,
    pub guest_port: u16,
}

/// A guest→host TCP forward: connections from the guest to `guest_addr:guest_port` (an address in
/// QEMU's 10.0.2.0/24 user network, e.g. 10.0.2.100) reach `target` on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFwd {
    pub guest_addr: Ipv4Addr,
    pub guest_port: u16,
    pub target: GuestFwdTarget,
}

/// The host end of a guest→host forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestFwdTarget {
    /// 127.0.0.1:port through a QEMU character device. QEMU connects once, when it starts (so the
    /// server must already listen), and only that one connection is ever forwarded: checked here,
    /// a second `wget` from the guest got no answer. Right for one long-lived stream only.
    HostPort(u16),
    /// 127.0.0.1:port, a new host connection for each guest connection, relayed by a small `bash`
    /// process QEMU starts per connection (bash's `/dev/tcp`, no netcat needed). The host server
    /// may start after the VM. Right for HTTP clients such as the update agent.
    Relay(u16),
    /// A host command started for each guest connection, talking to it on stdin/stdout
    /// (e.g. `nc 127.0.0.1 8080`). QEMU splits it into words like a shell, but runs no shell.
    Command(String),
}

impl GuestFwdTarget {
    /// The `guestfwd=` device part QEMU takes after the `-`.
    pub(crate) fn qemu_target(&self) -> String {
        match self {
            GuestFwdTarget::HostPort(port) => format!("tcp:127.0.0.1:{port}"),
            GuestFwdTarget::Relay(port) => format!("cmd:{}", relay_command(*port)),
            GuestFwdTarget::Command(command) => format!("cmd:{command}"),
        }
    }
}

/// Copies host→guest in the foreground and guest→host in the background; when the host side ends
/// first (a server closing after its reply), the background copy is stopped so the guest sees the
/// end of the stream too. stderr is silenced because it is the guest's socket as well.
fn relay_command(port: u16) -> String {
    format!("bash -c 'exec 2>/dev/null 4<&0 3<>/dev/tcp/127.0.0.1/{port} || exit 1; cat <&4 >&3 & w=$!; cat <&3; kill $w'")
}

/// A NIC on a private network between VMs, carried over TCP or UDP multicast on 127.0.0.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketNic {
    pub mode: SocketMode,
    /// The NIC's MAC address; by default derived from the VM name and the NIC's index, so every VM
    /// on the segment has its own, the same at every run.
    pub mac: Option<[u8; 6]>,
}

/// How a socket NIC reaches its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketMode {
    /// Wait for one peer VM to connect to 127.0.0.1:port.
    Listen(u16),
    /// Connect to a peer VM listening on 127.0.0.1:port (start the listener first).
    Connect(u16),
    /// A hub of any number of VMs: UDP multicast to group:port, sent through 127.0.0.1.
    Mcast { group: Ipv4Addr, port: u16 },
}
