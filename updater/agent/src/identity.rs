//! Who this machine is to the update server (app id, version, channel, machine id, boot id), and
//! where the agent finds and keeps its files. Paths are a struct so tests can root them in a temp dir.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_contract::paths::{self, under};
use kiln_contract::update_conf::Settings;

/// The files the agent reads and writes.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Defaults shipped in `/usr`, then the machine's overrides.
    pub config_files: Vec<PathBuf>,
    pub os_release: PathBuf,
    pub machine_id: PathBuf,
    pub boot_id: PathBuf,
    pub cmdline: PathBuf,
    /// `state.json` and `download/`.
    pub state_dir: PathBuf,
    /// The check trigger the CLI creates.
    pub run_dir: PathBuf,
    /// The public key payload manifests are checked against.
    pub update_key: PathBuf,
}

impl Paths {
    /// The paths on a Kiln machine.
    pub fn system() -> Paths {
        Paths::under(Path::new("/"))
    }

    /// The same layout below `root` (tests).
    pub fn under(root: &Path) -> Paths {
        Paths {
            config_files: vec![
                root.join(under(paths::UPDATE_CONF_DEFAULTS)),
                root.join(under(paths::UPDATE_CONF)),
            ],
            os_release: root.join("usr/lib/os-release"),
            machine_id: root.join("etc/machine-id"),
            boot_id: root.join("proc/sys/kernel/random/boot_id"),
            cmdline: root.join("proc/cmdline"),
            state_dir: root.join(under(paths::UPDATE_STATE_DIR)),
            run_dir: root.join(under(paths::UPDATE_RUN_DIR)),
            update_key: root.join(under(paths::UPDATE_KEY)),
        }
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    pub fn download_dir(&self) -> PathBuf {
        self.state_dir.join("download")
    }

    /// Created by `kiln-update check`; the daemon removes it and checks at once.
    pub fn check_trigger(&self) -> PathBuf {
        self.run_dir.join("check-now")
    }
}

/// What identifies this machine and its software in an Omaha request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// With braces, as update_engine sends it and Nebraska expects.
    pub app_id: String,
    /// The running version (`VERSION_ID` of os-release).
    pub version: String,
    pub channel: String,
    /// `/etc/machine-id` as is (32 hex digits, as Flatcar sends it).
    pub machine_id: String,
    /// `/proc/sys/kernel/random/boot_id` with braces.
    pub boot_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} has no {key}; the image's os-release must name it (or set `{config_key}` in {})",
        kiln_contract::paths::UPDATE_CONF
    )]
    Missing {
        path: PathBuf,
        key: &'static str,
        config_key: &'static str,
    },
    #[error("{path} is empty; systemd writes the machine id at first boot")]
    EmptyMachineId { path: PathBuf },
}

impl Identity {
    /// Reads os-release, the machine id and the boot id; the config's app id and channel win.
    pub fn read(paths: &Paths, config: &Settings) -> Result<Identity, IdentityError> {
        let os = os_release(&read(&paths.os_release)?);
        let need = |key: &'static str, config_key: &'static str| {
            os.get(key).cloned().ok_or(IdentityError::Missing {
                path: paths.os_release.clone(),
                key,
                config_key,
            })
        };
        let app_id = match &config.app_id {
            Some(id) => id.clone(),
            None => need("KILN_APP_ID", "app_id")?,
        };
        let channel = match &config.channel {
            Some(c) => c.clone(),
            None => need("KILN_CHANNEL", "channel")?,
        };
        let machine_id = read(&paths.machine_id)?.trim().to_owned();
        if machine_id.is_empty() {
            return Err(IdentityError::EmptyMachineId {
                path: paths.machine_id.clone(),
            });
        }
        Ok(Identity {
            app_id: braced(&app_id),
            version: need("VERSION_ID", "version")?,
            channel,
            machine_id,
            boot_id: braced(read(&paths.boot_id)?.trim()),
        })
    }
}

/// The current boot id (with braces), read fresh: it changes when the machine reboots.
pub fn boot_id(paths: &Paths) -> Result<String, IdentityError> {
    Ok(braced(read(&paths.boot_id)?.trim()))
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// `KEY=value` / `KEY="value"` lines of an os-release file.
pub fn os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.trim_start().starts_with('#'))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_owned(), v.to_owned())
        })
        .collect()
}

/// `{id}`, whether or not `id` already had braces.
pub fn braced(id: &str) -> String {
    format!("{{{}}}", kiln_updater::omaha::normalize_id(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_image_os_release_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        for (p, text) in [
            (&paths.os_release, "NAME=\"Kiln\"\nVERSION_ID=0.1.0\nKILN_APP_ID=d57468fa-057a-43ea-97b0-0ed17b82a948\nKILN_CHANNEL=stable\n"),
            (&paths.machine_id, "abce671d61774703ac7be60715220bfe\n"),
            (&paths.boot_id, "965fb4c5-ad3e-4eb7-a4c2-ca0c0e31ec84\n"),
        ] {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let id = Identity::read(&paths, &Settings::default()).unwrap();
        assert_eq!(id.app_id, "{d57468fa-057a-43ea-97b0-0ed17b82a948}");
        assert_eq!(id.version, "0.1.0");
        assert_eq!(id.channel, "stable");
        assert_eq!(id.machine_id, "abce671d61774703ac7be60715220bfe");
        assert_eq!(id.boot_id, "{965fb4c5-ad3e-4eb7-a4c2-ca0c0e31ec84}");
        let config = Settings {
            channel: Some("beta".into()),
            ..Settings::default()
        };
        assert_eq!(Identity::read(&paths, &config).unwrap().channel, "beta");
        std::fs::write(&paths.machine_id, "\n").unwrap();
        let e = Identity::read(&paths, &config).unwrap_err().to_string();
        assert!(e.contains("machine-id"), "{e}");
    }
}
