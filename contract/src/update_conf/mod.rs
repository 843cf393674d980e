//! `update.conf`, the update agent's settings: every key, its default, where the cloud-config sets
//! it, how its value is read and how it is written.
//!
//! Two files: `/usr/lib/kiln/update.conf`, the image's defaults (the build renders it from
//! [`KEYS`] with [`defaults_file`]), and `/etc/kiln/update.conf`, the machine's own, which
//! `kiln-config` renders from the cloud-config's `update:` and `locksmith:` sections with only
//! the keys the document sets ([`Given::render`]). The agent reads both, the second over the
//! first key by key ([`Settings::apply`]). Both are TOML with one `key = value` a line. A key the
//! agent does not know is a warning, not an error: a newer cloud-config must not stop an older
//! agent.
//!
//! Values reach [`Settings::set`] as a [`Raw`] value, whichever file format they came from, so the
//! cloud-config and the agent read a duration, a list or a strategy the same way.

mod keys;
mod strategy;
mod window;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use keys::{cloud_config_key, key, Key, Kind, Section, KEYS};
pub use strategy::RebootStrategy;
pub use window::{duration_secs, duration_text, Weekday, Window, WindowError};

/// Everything the agent reads from `update.conf`, with the defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The Omaha endpoint, e.g. `http://updates.example:8000/v1/update/`; `None` means "do not check".
    pub server: Option<String>,
    /// The channel (Omaha `track`); `None` means the image's `KILN_CHANNEL` from os-release.
    pub channel: Option<String>,
    /// The Omaha app id; `None` means the image's `KILN_APP_ID` from os-release.
    pub app_id: Option<String>,
    pub reboot_strategy: RebootStrategy,
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
    /// The group whose machines reboot one at a time: the FleetLock group, and under
    /// `etcd-lock` a semaphore of its own (`<etcd_lock_key>/groups/<group>`) unless `default`.
    pub lock_group: String,
    /// Base URL of the FleetLock server for `fleetlock`.
    pub fleetlock_url: Option<String>,
    /// Units that must be active before a new version is blessed.
    pub health_units: Vec<String>,
    /// How long the rebooted machine may take to become healthy before it is not blessed.
    pub health_timeout: Duration,
    /// Whether this machine installs a signed payload that is not newer than what runs.
    pub allow_downgrade: bool,
    /// The CA certificates (PEM) an `https://` update server and FleetLock server are checked
    /// against; `None`: the Mozilla roots built into the agent.
    pub ca_file: Option<PathBuf>,
}

/// The lock group every machine is in unless told otherwise.
pub const DEFAULT_LOCK_GROUP: &str = "default";

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server: None,
            channel: None,
            app_id: None,
            reboot_strategy: RebootStrategy::Immediate,
            window: None,
            check_interval: Duration::from_secs(3600),
            http_timeout: Duration::from_secs(60),
            etcd_endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            etcd_lock_key: "/kiln/reboot-lock".to_owned(),
            etcd_lock_ttl: Duration::from_secs(3600),
            lock_retry: Duration::from_secs(300),
            lock_install: false,
            lock_group: DEFAULT_LOCK_GROUP.to_owned(),
            fleetlock_url: None,
            health_units: Vec::new(),
            health_timeout: Duration::from_secs(600),
            allow_downgrade: false,
            ca_file: None,
        }
    }
}

impl Settings {
    /// The etcd key of this machine's reboot semaphore: `etcd_lock_key`, or per group
    /// `<etcd_lock_key>/groups/<group>`, as locksmith kept a semaphore per group.
    pub fn etcd_semaphore_key(&self) -> String {
        if self.lock_group == DEFAULT_LOCK_GROUP {
            self.etcd_lock_key.clone()
        } else {
            format!(
                "{}/groups/{}",
                self.etcd_lock_key.trim_end_matches('/'),
                self.lock_group
            )
        }
    }
}

/// A value as a file gave it, before it is read as its key's kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Text(String),
    Int(i64),
    Bool(bool),
    List(Vec<String>),
}

impl Raw {
    fn text(&self) -> Result<&str, String> {
        match self {
            Raw::Text(s) => Ok(s),
            _ => Err("expected a string in double quotes".to_owned()),
        }
    }

    fn duration(&self) -> Result<Duration, String> {
        let secs = match self {
            Raw::Int(n) => u64::try_from(*n).ok(),
            Raw::Text(s) => duration_secs(s),
            _ => None,
        };
        secs.filter(|s| *s > 0)
            .map(Duration::from_secs)
            .ok_or_else(|| {
                "expected a duration like \"1h\", \"30m\", \"1h30m\" or seconds".to_owned()
            })
    }

    fn boolean(&self) -> Result<bool, String> {
        match self {
            Raw::Bool(b) => Ok(*b),
            _ => Err("expected true or false, without quotes".to_owned()),
        }
    }

    fn list(&self) -> Result<Vec<String>, String> {
        match self {
            Raw::Text(s) => Ok(s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()),
            Raw::List(items) => Ok(items.clone()),
            _ => Err("expected a list of strings or \"a, b\"".to_owned()),
        }
    }

    fn optional_absolute_path(&self) -> Result<Option<PathBuf>, String> {
        match non_empty(self.text()?) {
            Some(p) if !p.starts_with('/') => {
                Err("expected an absolute path, e.g. \"/etc/kiln/update-ca.pem\"".to_owned())
            }
            p => Ok(p.map(PathBuf::from)),
        }
    }

    fn optional_url(&self) -> Result<Option<String>, String> {
        let url = non_empty(self.text()?);
        match &url {
            Some(u)
                if !(u.starts_with("http://") || u.starts_with("https://"))
                    || u.contains(char::is_whitespace) =>
            {
                Err(format!("{u:?} is not an http:// or https:// URL"))
            }
            _ => Ok(url),
        }
    }

    fn optional_channel(&self) -> Result<Option<String>, String> {
        let channel = non_empty(self.text()?);
        let ok = |c: &str| {
            c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        };
        match &channel {
            Some(c) if !ok(c) => Err(format!(
                "{c:?} is not a channel name (letters, digits, `-`, `_`, `.`)"
            )),
            _ => Ok(channel),
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    Some(s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Why a key's value could not be taken; the caller adds the file and the key.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused(pub String);

impl Settings {
    /// Sets `key` from a file's value. Returns a note when the value was an old spelling.
    /// `etcd_here` decides `best-effort` (see [`RebootStrategy::read`]). The window's two halves
    /// are set together with [`Settings::set_window`].
    pub fn set(
        &mut self,
        key: &Key,
        raw: &Raw,
        etcd_here: Option<bool>,
    ) -> Result<Option<String>, Refused> {
        let refused = Refused;
        match key.name {
            "server" => self.server = raw.optional_url().map_err(refused)?,
            "channel" => self.channel = raw.optional_channel().map_err(refused)?,
            "app_id" => self.app_id = non_empty(raw.text().map_err(refused)?),
            "reboot_strategy" => {
                let (s, note) = RebootStrategy::read(raw.text().map_err(refused)?, etcd_here)
                    .map_err(refused)?;
                self.reboot_strategy = s;
                return Ok(note);
            }
            "check_interval" => self.check_interval = raw.duration().map_err(refused)?,
            "http_timeout" => self.http_timeout = raw.duration().map_err(refused)?,
            "etcd_endpoints" => self.etcd_endpoints = raw.list().map_err(refused)?,
            "etcd_lock_key" => self.etcd_lock_key = raw.text().map_err(refused)?.to_owned(),
            "etcd_lock_ttl" => self.etcd_lock_ttl = raw.duration().map_err(refused)?,
            "lock_retry" => self.lock_retry = raw.duration().map_err(refused)?,
            "lock_install" => self.lock_install = raw.boolean().map_err(refused)?,
            "lock_group" => {
                self.lock_group = non_empty(raw.text().map_err(refused)?)
                    .unwrap_or_else(|| DEFAULT_LOCK_GROUP.to_owned())
            }
            "fleetlock_url" => self.fleetlock_url = raw.optional_url().map_err(refused)?,
            "health_units" => self.health_units = raw.list().map_err(refused)?,
            "health_timeout" => self.health_timeout = raw.duration().map_err(refused)?,
            "allow_downgrade" => self.allow_downgrade = raw.boolean().map_err(refused)?,
            "ca_file" => self.ca_file = raw.optional_absolute_path().map_err(refused)?,
            other => {
                unreachable!("update.conf key {other} has no setting; add it to Settings::set")
            }
        }
        Ok(None)
    }

    /// Sets the reboot window from its two halves; an empty start clears it.
    pub fn set_window(&mut self, start: &Raw, length: &Raw) -> Result<(), Refused> {
        let start = start.text().map_err(Refused)?;
        if start.trim().is_empty() {
            self.window = None;
            return Ok(());
        }
        let length = length.text().map_err(Refused)?;
        let window = Window::parse(start, length).map_err(|e| Refused(e.to_string()))?;
        self.window = Some(window);
        Ok(())
    }

    /// The value of `key` as `update.conf` writes it (a TOML value), `None` for an unset option.
    pub fn render_value(&self, key: &Key) -> Option<String> {
        let text = |s: &str| Some(toml_string(s));
        let duration = |d: &Duration| text(&duration_text(d.as_secs()));
        let list = |l: &[String]| {
            Some(format!(
                "[{}]",
                l.iter()
                    .map(|s| toml_string(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
        match key.name {
            "server" => self.server.as_deref().and_then(text),
            "channel" => self.channel.as_deref().and_then(text),
            "app_id" => self.app_id.as_deref().and_then(text),
            "reboot_strategy" => text(self.reboot_strategy.as_str()),
            "window_start" => self.window.map(|w| toml_string(&w.start_text())),
            "window_length" => self.window.map(|w| toml_string(&w.length_text())),
            "check_interval" => duration(&self.check_interval),
            "http_timeout" => duration(&self.http_timeout),
            "etcd_endpoints" => list(&self.etcd_endpoints),
            "etcd_lock_key" => text(&self.etcd_lock_key),
            "etcd_lock_ttl" => duration(&self.etcd_lock_ttl),
            "lock_retry" => duration(&self.lock_retry),
            "lock_install" => Some(self.lock_install.to_string()),
            "lock_group" => text(&self.lock_group),
            "fleetlock_url" => self.fleetlock_url.as_deref().and_then(text),
            "health_units" => list(&self.health_units),
            "health_timeout" => duration(&self.health_timeout),
            "allow_downgrade" => Some(self.allow_downgrade.to_string()),
            "ca_file" => self
                .ca_file
                .as_deref()
                .and_then(|p| text(&p.display().to_string())),
            other => unreachable!("update.conf key {other} has no setting; add it to render_value"),
        }
    }

    /// The defaults, overridden by each existing file in order (later files win key by key).
    /// Returns the settings and the warnings (unknown keys, old spellings), as `file: …`.
    pub fn load(files: &[&Path]) -> Result<(Settings, Vec<String>), ConfError> {
        let mut settings = Settings::default();
        let mut warnings = Vec::new();
        for path in files {
            match std::fs::read_to_string(path) {
                Ok(text) => warnings.extend(settings.apply(path, &text)?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ConfError::Read {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
        Ok((settings, warnings))
    }

    /// Applies one file's keys over the current values; returns its warnings.
    pub fn apply(&mut self, path: &Path, text: &str) -> Result<Vec<String>, ConfError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfError::Syntax {
                path: path.to_path_buf(),
                message: e.message().to_owned(),
            })?;
        let value_error = |key: &str, value: &toml::Value, Refused(problem)| ConfError::Value {
            path: path.to_path_buf(),
            key: key.to_owned(),
            value: value.to_string(),
            problem,
        };
        let mut warnings = Vec::new();
        let mut window = (None, None);
        for (name, value) in &table {
            let Some(key) = key(name) else {
                warnings.push(format!("{}: unknown key `{name}` ignored", path.display()));
                continue;
            };
            let raw = raw_of(value).map_err(|r| value_error(name, value, r))?;
            match key.kind {
                Kind::WindowStart => window.0 = Some((raw, value)),
                Kind::WindowLength => window.1 = Some((raw, value)),
                _ => {
                    let note = self
                        .set(key, &raw, None)
                        .map_err(|r| value_error(name, value, r))?;
                    warnings.extend(note.map(|n| format!("{}: {name}: {n}", path.display())));
                }
            }
        }
        let both = "window_start/window_length";
        match window {
            (None, None) => {}
            (Some((start, v)), Some((length, _))) => self
                .set_window(&start, &length)
                .map_err(|r| value_error(both, v, r))?,
            (Some((_, v)), None) | (None, Some((_, v))) => {
                let problem = "a reboot window needs both window_start and window_length";
                return Err(value_error(both, v, Refused(problem.to_owned())));
            }
        }
        Ok(warnings)
    }
}

fn raw_of(value: &toml::Value) -> Result<Raw, Refused> {
    Ok(match value {
        toml::Value::String(s) => Raw::Text(s.clone()),
        toml::Value::Integer(n) => Raw::Int(*n),
        toml::Value::Boolean(b) => Raw::Bool(*b),
        toml::Value::Array(items) => Raw::List(
            items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| Refused("expected a list of strings".to_owned()))?,
        ),
        _ => {
            return Err(Refused(
                "expected a string, number, true/false or a list".to_owned(),
            ))
        }
    })
}

/// Why an `update.conf` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
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

/// The settings a cloud-config gives: the values, and which keys it set. Rendered, it is
/// `/etc/kiln/update.conf`, with only those keys, so the image's defaults hold for the rest
/// (and a later version's new defaults reach the machine).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Given {
    pub settings: Settings,
    /// `update.conf` names of the keys set.
    pub keys: BTreeSet<&'static str>,
}

impl Given {
    /// Sets `key` (from the cloud-config); see [`Settings::set`].
    pub fn set(
        &mut self,
        key: &'static Key,
        raw: &Raw,
        etcd_here: bool,
    ) -> Result<Option<String>, Refused> {
        let note = self.settings.set(key, raw, Some(etcd_here))?;
        self.keys.insert(key.name);
        Ok(note)
    }

    /// Sets the reboot window (read with [`Window::parse`], which says which half is wrong).
    pub fn set_window(&mut self, window: Window) {
        self.settings.window = Some(window);
        self.keys.extend(
            KEYS.iter()
                .filter(|k| matches!(k.kind, Kind::WindowStart | Kind::WindowLength))
                .map(|k| k.name),
        );
    }

    /// `/etc/kiln/update.conf`: the keys set, in [`KEYS`]' order. An option set to nothing
    /// (`server: ""`) is written as `""`, which the agent reads as unset over the default.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# Written by kiln-config from the cloud-config; read by the update agent.\n",
        );
        for key in KEYS.iter().filter(|k| self.keys.contains(k.name)) {
            let value = self
                .settings
                .render_value(key)
                .unwrap_or_else(|| "\"\"".to_owned());
            out.push_str(&format!("{} = {value}\n", key.name));
        }
        out
    }
}

/// `/usr/lib/kiln/update.conf`: every key with its default and what it means.
pub fn defaults_file() -> String {
    let defaults = Settings::default();
    let mut out = String::from(
        "# Defaults of the Kiln update agent (kiln-update-agent). Do not edit: /etc/kiln/update.conf\n\
         # overrides these key by key (the cloud-config's `update:` and `locksmith:` sections write it).\n",
    );
    for key in KEYS {
        if !key.doc.is_empty() {
            out.push('\n');
            for line in key.doc.lines() {
                out.push_str(&format!("# {}\n", line.trim_start()));
            }
        }
        match (defaults.render_value(key), key.example) {
            (Some(value), _) => out.push_str(&format!("{} = {value}\n", key.name)),
            (None, Some(example)) => out.push_str(&format!("# {} = {example}\n", key.name)),
            (None, None) => out.push_str(&format!("{} = \"\"\n", key.name)),
        }
    }
    out
}

/// A TOML basic string.
fn toml_string(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests;
