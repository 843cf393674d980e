//! Choosing the accelerator: KVM when it really runs guest code, TCG (pure emulation) otherwise.
//!
//! Opening `/dev/kvm` is not enough to trust KVM: on nested or unusual hosts KVM can create a VM and
//! then fail on the first x87 instruction with "KVM internal error ... emulation failure", after which
//! QEMU pauses the guest and waits for ever. So the probe boots a 64 KiB firmware of our own whose
//! reset vector runs `fninit` and then writes to QEMU's `isa-debug-exit` port: QEMU exits with a known
//! code only if KVM executed both. The probe has a hard deadline and is killed when it overruns.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::find_qemu;
use crate::process::{command_line, ChildGuard};

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM if the probe shows it works, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    /// The value of QEMU's `-accel` option (and of [`ACCEL_ENV`]). `Auto` must be resolved first.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg | Accel::Auto => "tcg",
        }
    }
}

/// How long the KVM probe may take; a working KVM answers in well under a second.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The probe firmware's debug-exit value; QEMU exits with `(value << 1) | 1`.
const PROBE_EXIT_VALUE: u8 = 0x10;
const PROBE_EXIT_CODE: i32 = ((PROBE_EXIT_VALUE as i32) << 1) | 1;
const DEBUG_EXIT_PORT: u8 = 0xf4;

/// Settles `Auto` without a probe when set, to `tcg` or `kvm`: the test command probes once and
/// hands the answer to every test process (nextest runs each test in a process of its own, and
/// on a host whose KVM hangs each probe cost one 5 s).
pub const ACCEL_ENV: &str = "KILN_QEMU_ACCEL";

/// Turns `Auto` into `Kvm` or `Tcg` (other values pass through): as [`ACCEL_ENV`] says, else by
/// the probe, run once per process; when it falls back to TCG it says why on stderr.
pub fn resolve_accel(accel: Accel) -> Accel {
    static RESOLVED: OnceLock<Accel> = OnceLock::new();
    match accel {
        Accel::Auto => *RESOLVED.get_or_init(|| {
            let given = std::env::var(ACCEL_ENV).ok();
            if let Some(accel) = given.as_deref().and_then(accel_named) {
                return accel;
            }
            if let Some(other) = given {
                eprintln!(
                    "kiln-qemu: {ACCEL_ENV}={other:?} is neither `tcg` nor `kvm`: probing KVM"
                );
            }
            match probe_kvm() {
                Ok(()) => Accel::Kvm,
                Err(reason) => {
                    eprintln!(
                        "kiln-qemu: using TCG (software emulation): KVM is not usable: {reason}"
                    );
                    Accel::Tcg
                }
            }
        }),
        other => other,
    }
}

/// The accelerator a value of [`ACCEL_ENV`] names.
fn accel_named(name: &str) -> Option<Accel> {
    [Accel::Kvm, Accel::Tcg]
        .into_iter()
        .find(|a| a.qemu_name() == name)
}

/// Checks that KVM can run guest code, returning why not otherwise.
pub fn probe_kvm() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let qemu = find_qemu().map_err(|e| e.to_string())?;
    let mut firmware =
        tempfile::NamedTempFile::new().map_err(|e| format!("creating the probe firmware: {e}"))?;
    firmware
        .write_all(&probe_firmware())
        .and_then(|()| firmware.flush())
        .map_err(|e| format!("writing the probe firmware: {e}"))?;
    let stderr = tempfile::tempfile()
        .map_err(|e| format!("creating a file for the probe's messages: {e}"))?;
    run_probe(&qemu, firmware.path(), stderr)
}

/// Runs the probe; QEMU's messages go to a file rather than a pipe so that a QEMU stuck in the
/// kernel cannot leave a reader thread waiting on an open pipe.
fn run_probe(qemu: &Path, firmware: &Path, mut stderr: std::fs::File) -> Result<(), String> {
    let stderr_for_child = stderr
        .try_clone()
        .map_err(|e| format!("duplicating a file handle: {e}"))?;
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-accel",
        "kvm",
        "-machine",
        "q35",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-bios")
    .arg(firmware)
    .args([
        "-device",
        &format!("isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04"),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(stderr_for_child);
    let line = command_line(&cmd);
    let child = cmd
        .spawn()
        .map_err(|e| format!("could not start `{line}`: {e}"))?;
    let mut guard = ChildGuard::new(child);
    match guard.wait_timeout(PROBE_TIMEOUT) {
        Some(status) if status.code() == Some(PROBE_EXIT_CODE) => Ok(()),
        Some(status) => Err(format!(
            "`{line}` exited with {status}, expected code {PROBE_EXIT_CODE}{}",
            first_message(&mut stderr)
        )),
        None => {
            guard.kill();
            Err(format!(
                "`{line}` hung for {PROBE_TIMEOUT:?} (killed){}",
                first_message(&mut stderr)
            ))
        }
    }
}

/// The first lines QEMU printed that are not mere warnings, for the fallback message.
fn first_message(file: &mut std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut text = String::new();
    // The message is a courtesy; an unreadable file just leaves it out.
    let _ = file
        .rewind()
        .and_then(|()| Read::by_ref(file).take(4096).read_to_string(&mut text));
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("warning:"))
        .take(2)
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!("; QEMU said: {}", lines.join(" / "))
    }
}

/// A 64 KiB BIOS image: `hlt` everywhere, and at the reset vector (16 bytes from the end)
/// `fwait; fninit; mov al, 0x10; out 0xf4, al; hlt; jmp $-1`, in 16-bit real mode.
fn probe_firmware() -> Vec<u8> {
    const HLT: u8 = 0xf4;
    let mut image = vec![HLT; 64 * 1024];
    let reset_vector = [
        0x9b,
        0xdb,
        0xe3, // fwait; fninit: the x87 instruction broken KVMs fail on
        0xb0,
        PROBE_EXIT_VALUE, // mov al, value
        0xe6,
        DEBUG_EXIT_PORT, // out port, al: QEMU exits here
        HLT,
        0xeb,
        0xfd, // hlt; jmp back to hlt, in case the device is missing
    ];
    let start = image.len() - 16;
    image[start..start + reset_vector.len()].copy_from_slice(&reset_vector);
    image
}

/// A probe run through TCG, to check the firmware itself without KVM (used by the tests).
#[cfg(test)]
fn probe_firmware_under_tcg() -> Result<Option<i32>, crate::QemuError> {
    use crate::QemuError;
    let qemu = find_qemu()?;
    let dir =
        tempfile::tempdir().map_err(|e| QemuError::io("creating a temp dir in", "/tmp", e))?;
    let path = dir.path().join("probe.bin");
    std::fs::write(&path, probe_firmware()).map_err(|e| QemuError::io("writing", &path, e))?;
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-accel",
        "tcg",
        "-machine",
        "q35",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-bios",
    ])
    .arg(&path)
    .args([
        "-device",
        &format!("isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04"),
    ]);
    let out = crate::process::run_with_timeout(&mut cmd, Duration::from_secs(20))?;
    Ok(out.status.code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_environment_names_an_accelerator_by_its_qemu_name_or_not_at_all() {
        assert_eq!(accel_named("tcg"), Some(Accel::Tcg));
        assert_eq!(accel_named("kvm"), Some(Accel::Kvm));
        assert_eq!(accel_named("auto"), None);
        assert_eq!(accel_named("TCG "), None);
        assert_eq!(accel_named(""), None);
    }

    #[test]
    fn probe_firmware_has_the_reset_vector_16_bytes_from_the_end() {
        let fw = probe_firmware();
        assert_eq!(fw.len(), 65536);
        assert_eq!(&fw[65536 - 16..65536 - 11], &[0x9b, 0xdb, 0xe3, 0xb0, 0x10]);
    }

    #[test]
    fn probe_firmware_exits_with_the_expected_code_under_tcg() {
        kiln_image::testutil::require_tool(crate::host::QEMU_SYSTEM, "qemu-system-x86");
        assert_eq!(
            probe_firmware_under_tcg().expect("tcg probe"),
            Some(PROBE_EXIT_CODE)
        );
    }

    #[test]
    fn auto_resolves_quickly_to_a_concrete_accelerator() {
        kiln_image::testutil::require_tool(crate::host::QEMU_SYSTEM, "qemu-system-x86");
        let start = Instant::now();
        let chosen = resolve_accel(Accel::Auto);
        let took = start.elapsed();
        eprintln!("Accel::Auto resolved to {chosen:?} in {took:?}");
        assert_ne!(chosen, Accel::Auto);
        assert!(took < Duration::from_secs(15), "resolving took {took:?}");
        // Resolving again uses the cached answer.
        assert_eq!(resolve_accel(Accel::Auto), chosen);
        assert_eq!(resolve_accel(Accel::Tcg), Accel::Tcg);
    }
}
