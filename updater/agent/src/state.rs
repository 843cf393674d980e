//! The agent's persisted state: where the update stands (one variant per state of the machine),
//! progress, versions known to be bad, whether a reboot lock is held, and the events the server
//! has not taken yet. Saved as JSON atomically
//! (temp file, fsync, rename, fsync the directory) after every transition, so a restart resumes.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_contract::boot::Slot;
use kiln_updater::omaha::{Event, OfferedUpdate};
use serde::{Deserialize, Serialize};

/// An update the server offered, as the agent keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub version: String,
    pub url: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

impl From<&OfferedUpdate> for Offer {
    fn from(o: &OfferedUpdate) -> Offer {
        Offer {
            version: o.version.clone(),
            url: o.url.clone(),
            size: o.size,
            sha256: kiln_contract::hex::encode(&o.sha256),
        }
    }
}

/// An installed update waiting for, or going through, its reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The version written to the other slot.
    pub version: String,
    /// The version running when it was written (sent back as `previousversion`).
    pub previous_version: String,
    /// The slot written, which the next boot tries.
    #[serde(with = "slot_letter")]
    pub slot: Slot,
    /// The boot id when the reboot was asked for; a different one proves the machine rebooted.
    #[serde(default)]
    pub boot_id: String,
}

/// The states of the update machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum State {
    /// Nothing under way; the next check is at `Status::next_check`.
    Idle,
    Checking,
    Downloading {
        offer: Offer,
    },
    /// The verified payload is being written to the inactive slot.
    Writing {
        offer: Offer,
    },
    /// The written slot is being read back and checked.
    Verifying {
        offer: Offer,
    },
    /// Kernel, initramfs and the boot entry with tries left are being installed.
    Finalizing {
        offer: Offer,
    },
    /// Installed; waiting for the reboot strategy (window, lock) to allow the reboot.
    RebootNeeded {
        pending: Pending,
    },
    /// The reboot has been asked for.
    Rebooting {
        pending: Pending,
    },
    /// Booted after an update: waiting for health on the new slot, or reporting a fallback.
    Confirming {
        pending: Pending,
    },
    /// A transient failure; at `retry_at` go back to downloading `offer` or to checking.
    Backoff {
        attempt: u32,
        retry_at: u64,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offer: Option<Offer>,
    },
}

impl State {
    /// The state's name, as `kiln-update status` prints it.
    pub fn name(&self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Checking => "checking",
            State::Downloading { .. } => "downloading",
            State::Writing { .. } => "writing",
            State::Verifying { .. } => "verifying",
            State::Finalizing { .. } => "finalizing",
            State::RebootNeeded { .. } => "reboot-needed",
            State::Rebooting { .. } => "rebooting",
            State::Confirming { .. } => "confirming",
            State::Backoff { .. } => "backoff",
        }
    }

    /// Whether the inactive slot is being written now (a manual rollback must wait).
    pub fn is_installing(&self) -> bool {
        matches!(
            self,
            State::Writing { .. } | State::Verifying { .. } | State::Finalizing { .. }
        )
    }
}

/// Bytes done out of a total in the current phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: String,
    pub done: u64,
    pub total: u64,
}

/// Everything `state.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Unix time of the next scheduled check.
    #[serde(default)]
    pub next_check: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// How many checks were made (the jitter's seed, so checks spread without randomness).
    #[serde(default)]
    pub checks: u64,
    /// Transient failures in a row (the backoff's exponent).
    #[serde(default)]
    pub failures: u32,
    /// Versions that failed to boot here: never installed again.
    #[serde(default)]
    pub bad_versions: BTreeSet<String>,
    /// Set while this machine holds the cluster's reboot lock.
    #[serde(default)]
    pub lock_held: bool,
    /// Events the server could not be reached for, oldest first: sent again, in order, before
    /// the next check. The 3/0 of a fallback is sent first thing on the boot that finds it,
    /// when the network may still be coming up; it must reach the server all the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsent_events: Vec<Event>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            state: State::Idle,
            progress: None,
            next_check: 0,
            last_check: None,
            last_error: None,
            checks: 0,
            failures: 0,
            bad_versions: BTreeSet::new(),
            lock_held: false,
            unsent_events: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("writing the update state {path}: {source}; check that /var is writable")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the update state {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the update state {path} is not valid ({source}); move it away to start from idle")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl Status {
    /// The saved status, or the default (idle) when there is none yet.
    pub fn load(path: &Path) -> Result<Status, StateError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Status::default()),
            Err(source) => Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Saves atomically: a crash leaves either the old or the new file, never a torn one.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| StateError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        text.push(b'\n');
        write_atomically(path, &text).map_err(|source| StateError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// temp file in the same directory, fsync, rename over `path`, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("state path has no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Slots as `"a"` / `"b"` in the JSON, as on the kernel command line.
mod slot_letter {
    use kiln_contract::boot::Slot;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(slot: &Slot, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(slot.letter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Slot, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("update/state.json");
        assert_eq!(Status::load(&path).unwrap(), Status::default());
        let mut status = Status {
            state: State::Confirming {
                pending: Pending {
                    version: "0.2.0".into(),
                    previous_version: "0.1.0".into(),
                    slot: Slot::B,
                    boot_id: "{x}".into(),
                },
            },
            ..Status::default()
        };
        status.bad_versions.insert("0.1.5".into());
        status.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"state\": \"confirming\"") && text.contains("\"slot\": \"b\""),
            "{text}"
        );
        assert_eq!(Status::load(&path).unwrap(), status);
        assert!(!dir.path().join("update/state.json.tmp").exists());
        std::fs::write(&path, "{").unwrap();
        let e = Status::load(&path).unwrap_err().to_string();
        assert!(e.contains("move it away"), "{e}");
    }
}
