//! The agent's hands: loading, starting, stopping and unloading units in the machine's systemd,
//! the way fleet did it: the unit file kept in `units_directory` (`/run/fleet/units/`) and linked
//! into systemd's runtime configuration, so `systemctl status` shows it as `linked-runtime`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::dbus::{Manager, SYSTEMD_PRIVATE};

/// systemd's three states of a unit, as `systemctl show` gives them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SystemdState {
    pub load: String,
    pub active: String,
    pub sub: String,
}

/// What the agent asks of systemd. [`Systemctl`] is the machine's; tests use their own.
pub trait Systemd: Send {
    /// The units loaded by fleet now: name → the text of their file.
    fn loaded(&self) -> Result<BTreeMap<String, String>, String>;
    /// Writes the unit's file and links it (and enables it at runtime if it has `[Install]`).
    fn load(&mut self, name: &str, text: &str) -> Result<(), String>;
    /// Stops, unlinks and forgets a unit, and removes its file.
    fn unload(&mut self, name: &str) -> Result<(), String>;
    /// [`Systemd::unload`] for several units (a machine leaving the cluster); the units that
    /// could not be unloaded, with why. One after another unless an implementation knows better.
    fn unload_many(&mut self, names: &[String]) -> Vec<(String, String)> {
        unload_each(self, names)
    }
    /// Makes systemd read the changed unit files (after loads and unloads).
    fn reload(&mut self) -> Result<(), String>;
    fn start(&mut self, name: &str) -> Result<(), String>;
    fn stop(&mut self, name: &str) -> Result<(), String>;
    /// The states of these units.
    fn states(&self, names: &[String]) -> Result<BTreeMap<String, SystemdState>, String>;
}

/// [`Systemd::unload`] of each unit in turn; the ones that failed, with why.
fn unload_each<S: Systemd + ?Sized>(systemd: &mut S, names: &[String]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|n| systemd.unload(n).err().map(|e| (n.clone(), e)))
        .collect()
}

/// The machine's systemd: unit states asked over D-Bus ([`crate::dbus`]), everything else
/// through `systemctl` (loads, starts and stops are rare; the states are read on every
/// reconcile). Where D-Bus fails, the states come from `systemctl show`, and the journal says so
/// once.
pub struct Systemctl {
    pub units_directory: PathBuf,
    manager: RefCell<Manager>,
    /// After D-Bus failed: when to try it again (a failure is said once, until it works again).
    bus_retry: Cell<Option<Instant>>,
}

/// How long the states come from `systemctl show` after D-Bus failed: a call that hangs holds
/// up the daemon's loop, so it is not tried on every reconcile.
const BUS_RETRY: Duration = Duration::from_secs(60);

fn systemctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| format!("running systemctl {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "systemctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Systemctl {
    pub fn new(units_directory: PathBuf) -> Self {
        Systemctl {
            units_directory,
            manager: RefCell::new(Manager::new(SYSTEMD_PRIVATE)),
            bus_retry: Cell::new(None),
        }
    }

    /// Removes a unit's file from `units_directory` (gone already is fine).
    fn remove_file(&self, name: &str) -> Result<(), String> {
        let path = self.units_directory.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("removing {}: {e}", path.display())),
        }
    }
}

impl Systemd for Systemctl {
    fn loaded(&self) -> Result<BTreeMap<String, String>, String> {
        let mut units = BTreeMap::new();
        let entries = match std::fs::read_dir(&self.units_directory) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(units),
            Err(e) => return Err(format!("reading {}: {e}", self.units_directory.display())),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                units.insert(name, text);
            }
        }
        Ok(units)
    }

    fn load(&mut self, name: &str, text: &str) -> Result<(), String> {
        std::fs::create_dir_all(&self.units_directory)
            .map_err(|e| format!("creating {}: {e}", self.units_directory.display()))?;
        let path = self.units_directory.join(name);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        let path = path.to_string_lossy();
        systemctl(&["link", "--runtime", "--force", "--no-reload", &path])?;
        if crate::unit::UnitFile::parse(text)
            .is_ok_and(|u| u.options.iter().any(|o| o.section == "Install"))
        {
            systemctl(&["enable", "--runtime", "--force", "--no-reload", name])?;
        }
        Ok(())
    }

    fn unload(&mut self, name: &str) -> Result<(), String> {
        // The file goes only once the unit stopped, so a unit that will not stop stays visible.
        systemctl(&["stop", name])?;
        systemctl(&["disable", "--runtime", "--no-reload", name])?;
        let _ = systemctl(&["reset-failed", name]);
        self.remove_file(name)
    }

    /// One `systemctl` call for each step, for all the units: systemd stops them side by side,
    /// and a machine leaving at shutdown does not spend three calls a unit (each about half a
    /// second under emulation, ten seconds of a reboot). A failed step falls back to one unit at
    /// a time, which names the unit that failed.
    fn unload_many(&mut self, names: &[String]) -> Vec<(String, String)> {
        if names.is_empty() {
            return Vec::new();
        }
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        let step = |verb: &[&str]| systemctl(&[verb, &all[..]].concat());
        if step(&["stop"]).is_err() || step(&["disable", "--runtime", "--no-reload"]).is_err() {
            return unload_each(self, names);
        }
        let _ = step(&["reset-failed"]);
        names
            .iter()
            .filter_map(|n| self.remove_file(n).err().map(|e| (n.clone(), e)))
            .collect()
    }

    fn reload(&mut self) -> Result<(), String> {
        systemctl(&["daemon-reload"]).map(|_| ())
    }

    fn start(&mut self, name: &str) -> Result<(), String> {
        systemctl(&["start", "--no-block", name]).map(|_| ())
    }

    fn stop(&mut self, name: &str) -> Result<(), String> {
        systemctl(&["stop", "--no-block", name]).map(|_| ())
    }

    fn states(&self, names: &[String]) -> Result<BTreeMap<String, SystemdState>, String> {
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        let retry = self.bus_retry.get();
        if retry.is_none_or(|at| Instant::now() >= at) {
            match self.manager.borrow_mut().states(names) {
                Ok(states) => {
                    if self.bus_retry.take().is_some() {
                        eprintln!("fleet agent: unit states over D-Bus again");
                    }
                    let states = states.into_iter().map(|(load, active, sub)| SystemdState {
                        load,
                        active,
                        sub,
                    });
                    return Ok(names.iter().cloned().zip(states).collect());
                }
                Err(e) => {
                    if retry.is_none() {
                        eprintln!("fleet agent: unit states over D-Bus failed ({e}); asking `systemctl show` until it works again (D-Bus tried every {} s)", BUS_RETRY.as_secs());
                    }
                    self.bus_retry.set(Some(Instant::now() + BUS_RETRY));
                }
            }
        }
        let mut args = vec!["show", "--property=Id,LoadState,ActiveState,SubState"];
        args.extend(names.iter().map(String::as_str));
        Ok(parse_show(&systemctl(&args)?, names))
    }
}

/// `systemctl show` of several units: one block of `Key=Value` lines per unit, in the order asked.
pub fn parse_show(text: &str, names: &[String]) -> BTreeMap<String, SystemdState> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .zip(names)
        .map(|(block, name)| {
            let mut state = SystemdState::default();
            for line in block.lines() {
                match line.split_once('=') {
                    Some(("LoadState", v)) => state.load = v.into(),
                    Some(("ActiveState", v)) => state.active = v.into(),
                    Some(("SubState", v)) => state.sub = v.into(),
                    _ => {}
                }
            }
            (name.clone(), state)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_blocks_follow_the_names() {
        let text = "Id=a.service\nLoadState=loaded\nActiveState=active\nSubState=running\n\nId=b.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\n";
        let names = vec!["a.service".to_string(), "b.service".to_string()];
        let states = parse_show(text, &names);
        assert_eq!(states["a.service"].sub, "running");
        assert_eq!(states["b.service"].load, "not-found");
    }
}
