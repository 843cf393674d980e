//! Host processes with deadlines: a guard that kills and reaps its child on drop, a runner that kills
//! a command which overruns its timeout, the shell-quoted rendering of a command line for errors,
//! and cargo run from inside a cargo-run process.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::QemuError;

/// How often a waiting loop looks again. Short enough that waits end promptly, long enough not to
/// spin on a machine whose two cores are shared.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// How long to wait for a killed process to be reaped. A process stuck in the kernel (as QEMU can be
/// with a broken KVM) may never die; then it is left behind rather than hanging the caller.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// The instant `timeout` from now; a timeout too large to represent (`Duration::MAX`, for an
/// interactive VM the user ends) means a century, which is as good as never.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// `cargo`, for a build started by a process that cargo itself started (`cargo xtask`, a test):
/// with [`without_cargo_run_env`], so that it sees the environment a build from a shell sees.
pub fn cargo_command() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    without_cargo_run_env(&mut cmd);
    cmd
}

/// Takes out of `cmd`'s environment what cargo sets for a program it runs (`cargo run`, a test):
/// the package's manifest path, name and version. Build scripts may ask cargo to build again
/// when one of them differs from the last build's (ring's asks so for `CARGO_MANIFEST_DIR` and
/// `CARGO_PKG_NAME`), so a cargo started with xtask's or a test's values rebuilt ring and
/// everything above it (rustls, the update server, xtask): the test command's crate tests did
/// so after `cargo xtask` had just built them, and a scenario's `cargo xtask` again. `cmd` may
/// be cargo, or a script that runs it.
pub fn without_cargo_run_env(cmd: &mut Command) -> &mut Command {
    const SET_BY_CARGO: &[&str] = &[
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_") || SET_BY_CARGO.contains(&name.as_ref()) {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd
}

/// Renders a command as a line that can be pasted into a shell.
pub fn command_line(cmd: &Command) -> String {
    let program = cmd.get_program().to_string_lossy().into_owned();
    std::iter::once(program)
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes one word for a POSIX shell, leaving plain words readable.
pub(crate) fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@+%^".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A child process that is killed and reaped when the guard goes away, so no test or command leaves
/// a QEMU behind, whatever path it leaves by.
#[derive(Debug)]
pub(crate) struct ChildGuard {
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    pub(crate) fn new(child: Child) -> Self {
        ChildGuard {
            child,
            status: None,
        }
    }

    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the child has exited, without blocking.
    pub(crate) fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            // An error here means the child was already reaped, which the cached status covers.
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the child to exit.
    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = deadline_after(timeout);
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    /// Kills the child (SIGKILL, like pulling the power cord) and reaps it, giving up after a few
    /// seconds if the kernel does not let it die.
    pub(crate) fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.try_status() {
            return Some(status);
        }
        // Failing to kill means it has just exited; the wait below picks that up.
        let _ = self.child.kill();
        let status = self.wait_timeout(REAP_TIMEOUT);
        if status.is_none() {
            eprintln!(
                "kiln-qemu: process {} did not die within {REAP_TIMEOUT:?} of SIGKILL; leaving it",
                self.child.id()
            );
        }
        status
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command to completion with stdin closed, collecting its output, and kills it when it
/// overruns `timeout`.
pub(crate) fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, QemuError> {
    let line = command_line(cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| QemuError::Spawn {
            command: line.clone(),
            error,
        })?;
    let mut guard = ChildGuard::new(child);
    // Pipes are drained on threads so a chatty command cannot block on a full pipe while we wait.
    let stdout = drain(guard.child_mut().stdout.take());
    let stderr = drain(guard.child_mut().stderr.take());
    let Some(status) = guard.wait_timeout(timeout) else {
        guard.kill();
        return Err(QemuError::CommandTimeout {
            command: line,
            timeout,
        });
    };
    Ok(Output {
        status,
        stdout: join_drain(stdout),
        stderr: join_drain(stderr),
    })
}

/// Runs a command that must succeed within `timeout`; returns its stdout.
pub(crate) fn run_checked(cmd: &mut Command, timeout: Duration) -> Result<Vec<u8>, QemuError> {
    let output = run_with_timeout(cmd, timeout)?;
    if !output.status.success() {
        return Err(QemuError::CommandFailed {
            command: command_line(cmd),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(output.stdout)
}

type Drain = Option<thread::JoinHandle<Vec<u8>>>;

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Drain {
    pipe.map(|mut pipe| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            // A read error only truncates what we report; the exit status still decides.
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    })
}

fn join_drain(handle: Drain) -> Vec<u8> {
    handle.and_then(|h| h.join().ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_plain_words_and_quotes_the_rest() {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-netdev",
            "user,id=n0,restrict=on",
            "-append",
            "console=ttyS0 quiet",
            "it's",
        ]);
        assert_eq!(
            command_line(&cmd),
            r"qemu-system-x86_64 -netdev user,id=n0,restrict=on -append 'console=ttyS0 quiet' 'it'\''s'"
        );
    }

    #[test]
    fn an_unbounded_timeout_is_a_far_deadline_not_an_overflow() {
        assert!(
            deadline_after(Duration::MAX) > Instant::now() + Duration::from_secs(3600 * 24 * 365)
        );
    }

    #[test]
    fn a_command_that_overruns_is_killed() {
        let start = Instant::now();
        let err = run_with_timeout(Command::new("sleep").arg("30"), Duration::from_millis(300))
            .expect_err("sleep 30 must time out");
        assert!(matches!(err, QemuError::CommandTimeout { .. }), "{err}");
        assert!(err.to_string().contains("sleep 30"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_failing_command_reports_its_line_and_stderr() {
        let err = run_checked(
            Command::new("sh").args(["-c", "echo nope >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .expect_err("exit 3 must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("sh -c 'echo nope >&2; exit 3'") && msg.contains("nope"),
            "{msg}"
        );
    }
}
