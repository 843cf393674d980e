//! The one error type of the crate: every variant names what was being done, the input, and, where a
//! host command was involved, its full command line, so a failed VM scenario can be rerun by hand.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything that can go wrong while finding, starting, driving or stopping a VM.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// A host program is not installed.
    #[error("`{tool}` not found in PATH: install it with `apt-get install {package}`")]
    ToolMissing { tool: String, package: String },

    /// No OVMF firmware pair was found in the places Debian's `ovmf` package uses.
    #[error("UEFI firmware (OVMF) not found, looked for {searched}: install it with `apt-get install ovmf`")]
    OvmfMissing { searched: String },

    /// A file or directory operation failed. (The OS error is part of the message rather than a
    /// `source`, so a printed cause chain does not repeat it.)
    #[error("{action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },

    /// A host command could not be started at all.
    #[error("could not start `{command}`: {error}")]
    Spawn {
        command: String,
        error: std::io::Error,
    },

    /// A host command ran but failed.
    #[error("`{command}` failed ({status}){}", stderr_suffix(stderr))]
    CommandFailed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },

    /// A host command did not finish in time and was killed.
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    CommandTimeout { command: String, timeout: Duration },

    /// The configuration cannot be turned into a QEMU command line.
    #[error("invalid VM configuration for `{vm}`: {reason}")]
    InvalidConfig { vm: String, reason: String },

    /// QEMU exited (or closed its monitor) before the VM was up.
    #[error("QEMU exited during start-up ({status}); command: `{command}`; its messages are in {}{}",
        stderr_log.display(), stderr_suffix(stderr_tail))]
    StartFailed {
        command: String,
        status: String,
        stderr_log: PathBuf,
        stderr_tail: String,
    },

    /// QEMU did not open its monitor in time.
    #[error("QEMU did not become ready within {timeout:?}; command: `{command}`; its messages are in {}",
        stderr_log.display())]
    StartTimeout {
        command: String,
        timeout: Duration,
        stderr_log: PathBuf,
    },

    /// The pattern did not appear on the serial console in time.
    #[error("`{pattern}` did not appear on the serial console of `{vm}` within {timeout:?}; \
             log: {}; last lines:\n{tail}", log.display())]
    SerialTimeout {
        vm: String,
        pattern: String,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },

    /// The VM exited before the pattern appeared on its serial console.
    #[error("VM `{vm}` exited ({status}) before `{pattern}` appeared on its serial console; \
             log: {}; last lines:\n{tail}", log.display())]
    SerialExited {
        vm: String,
        pattern: String,
        status: String,
        log: PathBuf,
        tail: String,
    },

    /// The VM is not running any more, so the guest cannot be reached.
    #[error("VM `{vm}` is not running ({status}); serial log: {}", log.display())]
    NotRunning {
        vm: String,
        status: String,
        log: PathBuf,
    },

    /// The VM has no ssh port forward.
    #[error("VM `{vm}` was started without `ssh_forward`, so there is no port to ssh to")]
    NoSshForward { vm: String },

    /// ssh never succeeded before the deadline.
    #[error("ssh to {user}@127.0.0.1:{port} (VM `{vm}`) did not succeed within {timeout:?}; \
             last attempt: {last_error}; serial log: {}", log.display())]
    SshTimeout {
        vm: String,
        user: String,
        port: u16,
        timeout: Duration,
        last_error: String,
        log: PathBuf,
    },

    /// The VM did not exit in time.
    #[error("VM `{vm}` did not exit within {timeout:?}; serial log: {}", log.display())]
    ExitTimeout {
        vm: String,
        timeout: Duration,
        log: PathBuf,
    },

    /// The QEMU monitor (QMP) refused a command or broke the protocol.
    #[error("QMP `{command}` on VM `{vm}` failed: {reason}")]
    Qmp {
        vm: String,
        command: String,
        reason: String,
    },
}

/// Appends a command's stderr to a message when there is any.
fn stderr_suffix(stderr: &str) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() {
        String::new()
    } else {
        format!(":\n{stderr}")
    }
}

impl QemuError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        error: std::io::Error,
    ) -> Self {
        QemuError::Io {
            action,
            path: path.into(),
            error,
        }
    }
}
