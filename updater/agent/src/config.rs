//! The agent's configuration: `/usr/lib/kiln/update.conf` (the image's defaults) overridden key by
//! key by `/etc/kiln/update.conf` (what the cloud-config's `update:` and `locksmith:` sections write).
//!
//! Both files are TOML with one `key = value` per line, the format `kiln-config` writes. Unknown
//! keys are kept as warnings rather than errors: a newer cloud-config must not stop an older agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::window::Window;

/// How the agent reboots into a new version once it is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrategyKind {
    /// Reboot as soon as the update is installed (inside the window, if one is set).
    Immediate,
    /// Never reboot: stop at reboot-needed and let an operator decide.
    Off,
    /// Take a semaphore key in etcd first; release it once the rebooted machine is healthy.
    EtcdLock,
    /// Ask a FleetLock server first (`/v1/pre-reboot`), release with `/v1/steady-state`.
    FleetLock,
}

impl StrategyKind {
    fn parse(text: &str) -> Option<StrategyKind> {
        match text {
            "immediate" | "reboot" => Some(StrategyKind::Immediate),
            "off" => Some(StrategyKind::Off),
            "etcd-lock" => Some(StrategyKind::EtcdLock),
            "fleetlock" | "fleet-lock" => Some(StrategyKind::FleetLock),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::Immediate => "immediate",
            StrategyKind::Off => "off",
            StrategyKind::EtcdLock => "etcd-lock",
            StrategyKind::FleetLock => "fleetlock",
        }
    }
}

/// Everything the agent reads from `update.conf`, with the defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The Omaha endpoint, e.g. `http://updates.example:8000/v1/update/`; `None` means "do not check".
    pub server: Option<String>,
    /// The channel (Omaha `track`); `None` means the image's `KILN_CHANNEL` from os-release.
    pub channel: Option<String>,
    /// The Omaha app id; `None` means the image's `KILN_APP_ID` from os-release.
    pub app_id: Option<String>,
    pub reboot_strategy: StrategyKind,
    /// When reboots may happen; `None` means any time.
    pub window: Option<Window>,
    /// Time between two update checks (before jitter).
    pub check_interval: Duration,
    /// Timeout of one HTTP exchange (connect, and each read or write).
    pub http_timeout: Duration,
    /// etcd client URLs for `etcd-lock` (the JSON gateway of etcd v3).
    pub etcd_endpoints: Vec<String>,
    /// The semaphore key in etcd: one machine holds it while rebooting.
    pub etcd_lock_key: String,
    /// Lease TTL of the etcd lock: a machine that never comes back frees the lock after this.
    pub etcd_lock_ttl: Duration,
    /// How long a machine waits before asking again for a reboot lock another machine holds.
    pub lock_retry: Duration,
    /// Take the lock before writing the new slot, not only before rebooting: one machine of
    /// the cluster at a time installs or reboots.
    pub lock_install: bool,
    /// Base URL of the FleetLock server for `fleetlock`.
    pub fleetlock_url: Option<String>,
    /// The FleetLock group this machine belongs to.
    pub fleetlock_group: String,
    /// Units that must be active before a new version is blessed.
    pub health_units: Vec<String>,
    /// How long the rebooted machine may take to become healthy before it is not blessed.
    pub health_timeout: Duration,
    /// Keys the files set that the agent does not know, as `file: key`.
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: None,
            channel: None,
            app_id: None,
            reboot_strategy: StrategyKind::Immediate,
            window: None,
            check_interval: Duration::from_secs(3600),
            http_timeout: Duration::from_secs(60),
            etcd_endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            etcd_lock_key: "/kiln/reboot-lock".to_owned(),
            etcd_lock_ttl: Duration::from_secs(3600),
            lock_retry: Duration::from_secs(300),
            lock_install: false,
            fleetlock_url: None,
            fleetlock_group: "default".to_owned(),
            health_units: Vec::new(),
            health_timeout: Duration::from_secs(600),
            warnings: Vec::new(),
        }
    }
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}; check the file's permissions")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}; write one `key = \"value\"` per line")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: `{key}` = {value}: {problem}")]
    Value {
        path: PathBuf,
        key: String,
        value: String,
        problem: String,
    },
}

impl Config {
    /// The defaults, overridden by each existing file in order (later files win key by key).
    pub fn load(files: &[&Path]) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        for path in files {
            match std::fs::read_to_string(path) {
                Ok(text) => config.apply(path, &text)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ConfigError::Read {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
        Ok(config)
    }

    /// Applies one file's keys over the current values.
    pub fn apply(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_path_buf(),
                    message: e.message().to_owned(),
                })?;
        for (key, value) in &table {
            let field = Field { path, key, value };
            self.set(&field)?;
        }
        if let Some(window) = window_from(path, &table)? {
            self.window = window;
        }
        Ok(())
    }

    fn set(&mut self, f: &Field) -> Result<(), ConfigError> {
        match f.key.as_str() {
            "server" => self.server = non_empty(f.string()?),
            "channel" | "group" => self.channel = non_empty(f.string()?),
            "app_id" => self.app_id = non_empty(f.string()?),
            "reboot_strategy" => {
                let text = f.string()?;
                self.reboot_strategy = StrategyKind::parse(&text)
                    .ok_or_else(|| f.invalid("expected immediate, off, etcd-lock or fleetlock"))?;
            }
            "check_interval" => self.check_interval = f.duration()?,
            "http_timeout" => self.http_timeout = f.duration()?,
            "etcd_endpoints" => self.etcd_endpoints = f.list()?,
            "etcd_lock_key" => self.etcd_lock_key = f.string()?,
            "etcd_lock_ttl" => self.etcd_lock_ttl = f.duration()?,
            "fleetlock_url" => self.fleetlock_url = non_empty(f.string()?),
            "fleetlock_group" => self.fleetlock_group = f.string()?,
            "health_units" => self.health_units = f.list()?,
            "health_timeout" => self.health_timeout = f.duration()?,
            "lock_retry" => self.lock_retry = f.duration()?,
            "lock_install" => self.lock_install = f.boolean()?,
            // Read together by `window_from`, since either alone means nothing.
            "window_start" | "window_length" => {}
            _ => self.warnings.push(format!(
                "{}: unknown key `{}` ignored",
                f.path.display(),
                f.key
            )),
        }
        Ok(())
    }
}

/// `Some(None)` when the file clears the window (`window_start = ""`), `None` when it says nothing.
fn window_from(path: &Path, table: &toml::Table) -> Result<Option<Option<Window>>, ConfigError> {
    let start = table.get("window_start");
    let length = table.get("window_length");
    let (start, length) = match (start, length) {
        (None, None) => return Ok(None),
        (Some(s), Some(l)) => (s, l),
        (Some(v), None) | (None, Some(v)) => {
            return Err(ConfigError::Value {
                path: path.to_path_buf(),
                key: "window_start/window_length".to_owned(),
                value: v.to_string(),
                problem: "a reboot window needs both window_start and window_length".to_owned(),
            })
        }
    };
    let as_str = |key: &str, v: &toml::Value| {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| ConfigError::Value {
                path: path.to_path_buf(),
                key: key.to_owned(),
                value: v.to_string(),
                problem: "expected a string".to_owned(),
            })
    };
    let start = as_str("window_start", start)?;
    let length = as_str("window_length", length)?;
    if start.trim().is_empty() {
        return Ok(Some(None));
    }
    Window::parse(&start, &length)
        .map(|w| Some(Some(w)))
        .map_err(|problem| ConfigError::Value {
            path: path.to_path_buf(),
            key: "window_start/window_length".to_owned(),
            value: format!("{start:?} / {length:?}"),
            problem,
        })
}

fn non_empty(s: String) -> Option<String> {
    Some(s).filter(|s| !s.trim().is_empty())
}

/// One `key = value` of a file, for readable errors.
struct Field<'a> {
    path: &'a Path,
    key: &'a String,
    value: &'a toml::Value,
}

impl Field<'_> {
    fn invalid(&self, problem: &str) -> ConfigError {
        ConfigError::Value {
            path: self.path.to_path_buf(),
            key: self.key.clone(),
            value: self.value.to_string(),
            problem: problem.to_owned(),
        }
    }

    fn string(&self) -> Result<String, ConfigError> {
        self.value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| self.invalid("expected a string in double quotes"))
    }

    fn boolean(&self) -> Result<bool, ConfigError> {
        self.value
            .as_bool()
            .ok_or_else(|| self.invalid("expected true or false, without quotes"))
    }

    /// A Go-style duration string (`1h`, `90m`, `1h30m`, `45s`) or a number of seconds.
    fn duration(&self) -> Result<Duration, ConfigError> {
        let secs = match self.value {
            toml::Value::Integer(n) => u64::try_from(*n).ok(),
            toml::Value::String(s) => crate::window::duration_secs(s),
            _ => None,
        };
        match secs {
            Some(s) if s > 0 => Ok(Duration::from_secs(s)),
            _ => {
                Err(self.invalid("expected a duration like \"1h\", \"30m\", \"1h30m\" or seconds"))
            }
        }
    }

    /// An array of strings, or one string of comma-separated items.
    fn list(&self) -> Result<Vec<String>, ConfigError> {
        let items: Option<Vec<String>> = match self.value {
            toml::Value::String(s) => Some(
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            toml::Value::Array(a) => a.iter().map(|v| v.as_str().map(str::to_owned)).collect(),
            _ => None,
        };
        items.ok_or_else(|| self.invalid("expected a list of strings or \"a, b\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exactly what `kiln-config` writes for a cloud-config with `update:` and `locksmith:`
    /// (see config/src/apply.rs `update_conf` and its test).
    const FROM_CLOUD_CONFIG: &str =
        "# Written by kiln-config from the cloud-config; read by the update agent.\n\
        server = \"http://10.0.0.1:8000/v1/update/\"\n\
        channel = \"stable\"\nreboot_strategy = \"etcd-lock\"\n\
        window_start = \"Thu 04:00\"\nwindow_length = \"1h\"\n";

    #[test]
    fn reads_what_kiln_config_writes_over_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let usr = dir.path().join("usr.conf");
        let etc = dir.path().join("etc.conf");
        let defaults = include_str!("../../../overlays/usr/lib/kiln/update.conf");
        std::fs::write(&usr, defaults).unwrap();
        std::fs::write(&etc, FROM_CLOUD_CONFIG).unwrap();
        let c = Config::load(&[&usr, &etc]).unwrap();
        assert_eq!(c.server.as_deref(), Some("http://10.0.0.1:8000/v1/update/"));
        assert_eq!(c.channel.as_deref(), Some("stable"));
        assert_eq!(c.reboot_strategy, StrategyKind::EtcdLock);
        let w = c.window.expect("window");
        assert_eq!(
            (w.weekday, w.start_secs, w.length_secs),
            (Some(3), 4 * 3600, 3600)
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // The defaults file's values survive where /etc says nothing.
        assert_eq!(c.check_interval, Duration::from_secs(3600));
    }

    #[test]
    fn etc_overrides_usr_and_unknown_keys_warn() {
        let mut c = Config::default();
        c.apply(
            Path::new("usr"),
            "reboot_strategy = \"off\"\ncheck_interval = \"30m\"\n",
        )
        .unwrap();
        c.apply(
            Path::new("etc"),
            "reboot_strategy = \"fleetlock\"\nfleetlock_url = \"http://l:1\"\nhealth_units = \"etcd.service, containerd.service\"\ncolour = \"red\"\n",
        )
        .unwrap();
        assert_eq!(c.reboot_strategy, StrategyKind::FleetLock);
        assert_eq!(c.check_interval, Duration::from_secs(1800));
        assert_eq!(c.health_units, ["etcd.service", "containerd.service"]);
        assert_eq!(c.warnings, ["etc: unknown key `colour` ignored"]);
    }

    #[test]
    fn bad_values_name_the_file_and_key() {
        let mut c = Config::default();
        let e = c
            .apply(
                Path::new("/etc/kiln/update.conf"),
                "reboot_strategy = \"sometimes\"\n",
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/kiln/update.conf") && e.contains("reboot_strategy"),
            "{e}"
        );
        let e = c
            .apply(Path::new("x"), "window_start = \"Thu 04:00\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs both"), "{e}");
        assert!(c
            .apply(Path::new("x"), "check_interval = \"soon\"\n")
            .is_err());
        assert!(c.apply(Path::new("x"), "server = [\n").is_err());
    }
}
