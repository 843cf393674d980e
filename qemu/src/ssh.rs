//! The host's OpenSSH client, used to reach a VM through its forwarded port: key generation and
//! the one way every harness command connects (no prompts, no host-key bookkeeping for throwaway VMs).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::host::find_tool;
use crate::process::{run_checked, ChildGuard};
use crate::QemuError;

/// The Debian package with `ssh` and `ssh-keygen`.
const SSH_PACKAGE: &str = "openssh-client";

/// The longest a single connection attempt waits for the TCP and SSH handshakes.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether an SSH server answers on 127.0.0.1:`port` with its banner within `wait`.
///
/// QEMU's user network accepts a forwarded connection on the host at once, whatever the guest
/// does; its own connection into the guest then retries on a backoff of seconds, so an `ssh`
/// started before the guest's network and sshd are up can sit for many seconds after both are.
/// A probe that gives up after `wait` and is tried again costs a fresh connection each time and
/// sees the server within about `wait` of it answering.
pub fn ssh_banner(port: u16, wait: Duration) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, wait) else {
        return false;
    };
    let mut banner = [0u8; 4];
    stream.set_read_timeout(Some(wait)).is_ok()
        && stream.read_exact(&mut banner).is_ok()
        && &banner == b"SSH-"
}

/// Makes a fresh ed25519 key pair without a passphrase at `dir/id_ed25519` (replacing an old one);
/// returns the private key's path and the public key line for `authorized_keys` or a cloud-config.
pub fn ssh_keygen(dir: &Path) -> Result<(PathBuf, String), QemuError> {
    let keygen = find_tool("ssh-keygen", SSH_PACKAGE)?;
    let private = dir.join("id_ed25519");
    let public = dir.join("id_ed25519.pub");
    for path in [&private, &public] {
        // ssh-keygen would ask before overwriting; a missing file is what we want anyway.
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(QemuError::io("removing old key", path, e));
            }
        }
    }
    let mut cmd = Command::new(keygen);
    cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-vm-test", "-f"])
        .arg(&private);
    run_checked(&mut cmd, Duration::from_secs(30))?;
    let line =
        std::fs::read_to_string(&public).map_err(|e| QemuError::io("reading", &public, e))?;
    Ok((private, line.trim().to_string()))
}

/// The `ssh` command that runs `command` as `user` on 127.0.0.1:`port` with `key`, non-interactive,
/// trusting whatever host key the VM presents (every test VM makes a new one). With `shared`, the
/// command goes over the connection kept at that socket ([`start_shared`]), and over a
/// connection of its own if that one is gone.
pub fn ssh_command(
    key: &Path,
    user: &str,
    port: u16,
    command: &str,
    timeout: Duration,
    shared: Option<&Path>,
) -> Result<Command, QemuError> {
    let mut cmd = ssh_base(key, port, timeout)?;
    if let Some(socket) = shared {
        cmd.arg("-S").arg(socket).args(["-o", "ControlMaster=no"]);
    }
    cmd.arg(format!("{user}@127.0.0.1")).arg("--").arg(command);
    Ok(cmd)
}

/// `ssh` with the options every connection to a VM uses.
fn ssh_base(key: &Path, port: u16, timeout: Duration) -> Result<Command, QemuError> {
    let ssh = find_tool("ssh", SSH_PACKAGE)?;
    let connect = timeout.min(MAX_CONNECT_TIMEOUT).as_secs().max(1);
    let mut cmd = Command::new(ssh);
    cmd.arg("-i").arg(key).args(["-p", &port.to_string()]);
    for option in [
        "BatchMode=yes",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "IdentitiesOnly=yes",
        "LogLevel=ERROR",
        &format!("ConnectTimeout={connect}"),
        // A guest that freezes mid-command is noticed instead of holding the connection open.
        "ServerAliveInterval=5",
        "ServerAliveCountMax=3",
    ] {
        cmd.args(["-o", option]);
    }
    Ok(cmd)
}

/// How long a shared connection stays after its last command.
const SHARED_PERSIST: &str = "ControlPersist=120";

/// Whether a shared connection (OpenSSH's connection multiplexing) answers at `socket`. A stale
/// socket (its `ssh` gone) is removed.
pub(crate) fn shared_alive(socket: &Path) -> bool {
    if !socket.exists() {
        return false;
    }
    let alive = find_tool("ssh", SSH_PACKAGE).is_ok_and(|ssh| {
        Command::new(ssh)
            .arg("-S")
            .arg(socket)
            .args(["-O", "check", "kiln-vm"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !alive {
        let _ = std::fs::remove_file(socket);
    }
    alive
}

/// Opens a connection as `user` that later commands share ([`ssh_command`]'s `shared`): each
/// command then costs a channel instead of a key exchange and a login, about 2 s of a guest's
/// CPU under TCG. `ssh` authenticates, then stays in the background with none of our output
/// pipes (a background `ssh` holding a pipe would keep its reader waiting), until the guest
/// goes away or [`SHARED_PERSIST`] after the last command. Returns whether it is up.
pub(crate) fn start_shared(
    key: &Path,
    user: &str,
    port: u16,
    socket: &Path,
    timeout: Duration,
) -> bool {
    let Ok(mut cmd) = ssh_base(key, port, timeout) else {
        return false;
    };
    cmd.args(["-M", "-N", "-f", "-S"])
        .arg(socket)
        .args(["-o", SHARED_PERSIST])
        .arg(format!("{user}@127.0.0.1"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let Ok(child) = cmd.spawn() else {
        return false;
    };
    // The foreground `ssh` ends once the background one is up (or the login failed).
    let mut guard = ChildGuard::new(child);
    let Some(status) = guard.wait_timeout(timeout) else {
        guard.kill();
        return false;
    };
    status.success() && socket.exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::command_line;

    #[test]
    fn ssh_command_is_batch_mode_on_loopback_with_the_key() {
        kiln_image::testutil::require_tool("ssh", SSH_PACKAGE);
        let cmd = ssh_command(
            Path::new("/k/id"),
            "core",
            2222,
            "systemctl is-system-running",
            Duration::from_secs(60),
            None,
        )
        .expect("ssh command");
        let line = command_line(&cmd);
        assert!(line.ends_with(
            "-i /k/id -p 2222 -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o IdentitiesOnly=yes -o LogLevel=ERROR -o ConnectTimeout=10 -o ServerAliveInterval=5 \
             -o ServerAliveCountMax=3 core@127.0.0.1 -- 'systemctl is-system-running'"
        ), "{line}");
    }

    #[test]
    fn a_shared_command_names_the_socket_and_never_becomes_the_master() {
        kiln_image::testutil::require_tool("ssh", SSH_PACKAGE);
        let cmd = ssh_command(
            Path::new("/k/id"),
            "core",
            2222,
            "true",
            Duration::from_secs(60),
            Some(Path::new("/w/vm.core.ssh")),
        )
        .expect("ssh command");
        let line = command_line(&cmd);
        assert!(
            line.ends_with("-S /w/vm.core.ssh -o ControlMaster=no core@127.0.0.1 -- true"),
            "{line}"
        );
        // No socket there: nothing answers, and nothing is left behind.
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!shared_alive(&dir.path().join("none.ssh")));
        std::fs::write(dir.path().join("stale.ssh"), b"").unwrap();
        assert!(!shared_alive(&dir.path().join("stale.ssh")));
        assert!(!dir.path().join("stale.ssh").exists());
    }

    #[test]
    fn keygen_makes_an_ed25519_pair_that_ssh_keygen_accepts() {
        let keygen = kiln_image::testutil::require_tool("ssh-keygen", SSH_PACKAGE);
        let dir = tempfile::tempdir().expect("tempdir");
        let (private, public) = ssh_keygen(dir.path()).expect("keygen");
        assert!(
            public.starts_with("ssh-ed25519 AAAA") && public.ends_with(" kiln-vm-test"),
            "{public}"
        );
        // The reference tool derives the same public key from the private file.
        let derived = Command::new(keygen)
            .arg("-y")
            .arg("-f")
            .arg(&private)
            .output()
            .expect("ssh-keygen -y");
        assert!(derived.status.success());
        let derived = String::from_utf8_lossy(&derived.stdout);
        assert_eq!(
            derived.split_whitespace().nth(1),
            public.split_whitespace().nth(1)
        );
        // A second call replaces the pair instead of prompting.
        let (_, again) = ssh_keygen(dir.path()).expect("second keygen");
        assert_ne!(again, public);
    }
}
