//! The QEMU launcher and the VM test harness: serial console, ssh, waits with timeouts.
