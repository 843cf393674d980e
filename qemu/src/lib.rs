//! The QEMU launcher and the VM test harness: serial console, ssh, waits with timeouts.
//!
//! A caller fills in a [`VmConfig`], calls [`Vm::start`], and drives the guest with waits that
//! each have a deadline ([`Vm::wait_for_serial`], [`Vm::wait_for_ssh`], [`Vm::wait_exit`]).
//! QEMU always runs a q35 machine with virtio disks and NICs, user networking restricted to the
//! forwards asked for (all on 127.0.0.1), and is killed when the [`Vm`] is dropped.

mod accel;
mod cmdline;
mod config;
mod error;
mod host;
mod process;
mod qmp;
mod scratch;
mod ssh;
#[cfg(test)]
mod testkit;
mod vm;

pub use accel::{probe_kvm, resolve_accel, Accel, ACCEL_ENV};
pub use cmdline::{format_mac, DiskFormat, FW_CFG_CONFIG_NAME};
pub use config::{
    Firmware, GuestFwd, GuestFwdTarget, HostFwd, Serial, SocketMode, SocketNic, VmConfig,
};
pub use error::QemuError;
pub use host::{find_ovmf, find_qemu, find_qemu_img, find_tool, free_port, OvmfPaths, QEMU_SYSTEM};
pub use process::{cargo_command, command_line, without_cargo_run_env};
pub use scratch::ScratchDir;
pub use ssh::{ssh_command, ssh_keygen};
pub use vm::{log_tail, read_from as read_log_from, Vm, RESTART_NOTE, WATCHDOG_NOTE};
