//! What the agent asks of the machine besides the disk: the clock, sleeping, the boot id, systemd's
//! view of health, and the reboot itself. A trait so the state machine runs in tests without
//! rebooting anything; `SystemHost` is the real one.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The machine, as the state machine sees it.
pub trait Host {
    /// Unix time in seconds.
    fn now(&self) -> u64;
    fn sleep(&mut self, duration: Duration);
    /// The current boot id (braced); it changes across a reboot.
    fn boot_id(&self) -> String;
    /// `systemctl is-system-running`'s answer (`starting`, `running`, `degraded`, ...).
    fn system_state(&self) -> String;
    /// Whether `systemctl is-active UNIT` says `active`.
    fn unit_active(&self, unit: &str) -> bool;
    /// Asks for a reboot; returns once asked (the machine goes down later).
    fn reboot(&mut self) -> Result<(), String>;
}

/// The real machine.
pub struct SystemHost {
    pub boot_id_path: PathBuf,
}

impl Host for SystemHost {
    fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn sleep(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }

    fn boot_id(&self) -> String {
        std::fs::read_to_string(&self.boot_id_path)
            .map(|id| crate::identity::braced(id.trim()))
            .unwrap_or_default()
    }

    fn system_state(&self) -> String {
        // is-system-running exits non-zero for every state but `running`; the text is the answer.
        systemctl(&["is-system-running"]).unwrap_or_else(|e| format!("unknown ({e})"))
    }

    fn unit_active(&self, unit: &str) -> bool {
        systemctl(&["is-active", unit]).is_ok_and(|s| s == "active")
    }

    fn reboot(&mut self) -> Result<(), String> {
        let out = Command::new("systemctl")
            .arg("reboot")
            .output()
            .map_err(|e| format!("running `systemctl reboot`: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`systemctl reboot` failed with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

fn systemctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| format!("running `systemctl {}`: {e}", args.join(" ")))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Why the machine is not (yet) healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Still booting: ask again.
    Starting,
    /// Booted but not healthy (yet): an inactive unit, or a state that may pass.
    Unhealthy(String),
    /// Booted and a unit failed (`degraded`): no use waiting, it stays failed until someone acts.
    Failed(String),
}

/// One look at the machine's health: systemd up and `running`, and every named unit active.
pub fn health(host: &dyn Host, units: &[String]) -> Health {
    let state = host.system_state();
    match state.as_str() {
        "running" => {}
        "initializing" | "starting" => return Health::Starting,
        "degraded" => return Health::Failed("systemd is degraded: a unit failed".to_owned()),
        other => return Health::Unhealthy(format!("systemd is {other}")),
    }
    match units.iter().find(|u| !host.unit_active(u)) {
        Some(unit) => Health::Unhealthy(format!("{unit} is not active")),
        None => Health::Healthy,
    }
}

/// Polls health until healthy or `timeout` passes (every wait bounded by the timeout); a failed
/// unit ends the wait at once.
pub fn wait_healthy(
    host: &mut dyn Host,
    units: &[String],
    timeout: Duration,
    poll: Duration,
) -> Result<(), String> {
    let deadline = host.now() + timeout.as_secs();
    loop {
        let last = match health(host, units) {
            Health::Healthy => return Ok(()),
            Health::Starting => "systemd is still starting".to_owned(),
            Health::Unhealthy(why) => why,
            Health::Failed(why) => return Err(why),
        };
        if host.now() >= deadline {
            return Err(format!("not healthy within {}s: {last}", timeout.as_secs()));
        }
        host.sleep(poll);
    }
}
