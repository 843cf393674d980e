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

mod window;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use window::{duration_secs, duration_text, Weekday, Window, WindowError};

/// How the agent reboots into a new version once it is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootStrategy {
    /// Reboot as soon as the update is installed (inside the window, if one is set).
    Immediate,
    /// Never reboot: stop at reboot-needed and let an operator decide.
    Off,
    /// Take a semaphore key in etcd first; release it once the rebooted machine is healthy.
    EtcdLock,
    /// Ask a FleetLock server first (`/v1/pre-reboot`), release with `/v1/steady-state`.
    FleetLock,
}

/// What a strategy's name stands for.
#[derive(Clone, Copy)]
enum Spelling {
    Is(RebootStrategy),
    /// An older name, read with a note.
    Old(RebootStrategy),
    /// CoreOS's `best-effort`: etcd-lock where etcd runs on the machine, else immediate.
    BestEffort,
}

/// Every name of a strategy: Kiln's, CoreOS's (`reboot`, `best-effort`), and FleetLock's as
/// Zincati and the agent's first versions wrote it.
const STRATEGY_NAMES: [(&str, Spelling); 8] = [
    ("immediate", Spelling::Is(RebootStrategy::Immediate)),
    ("off", Spelling::Is(RebootStrategy::Off)),
    ("etcd-lock", Spelling::Is(RebootStrategy::EtcdLock)),
    ("fleetlock", Spelling::Is(RebootStrategy::FleetLock)),
    ("fleet-lock", Spelling::Is(RebootStrategy::FleetLock)),
    ("fleet_lock", Spelling::Is(RebootStrategy::FleetLock)),
    ("reboot", Spelling::Old(RebootStrategy::Immediate)),
    ("best-effort", Spelling::BestEffort),
];

impl RebootStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            RebootStrategy::Immediate => "immediate",
            RebootStrategy::Off => "off",
            RebootStrategy::EtcdLock => "etcd-lock",
            RebootStrategy::FleetLock => "fleetlock",
        }
    }

    /// The key the strategy cannot work without (it has no default).
    pub fn required_key(self) -> Option<&'static str> {
        match self {
            RebootStrategy::FleetLock => Some("fleetlock_url"),
            _ => None,
        }
    }

    /// Reads a strategy's name, with a note when the name is an old one. `etcd_here` says whether
    /// etcd runs on this machine, which decides `best-effort`; `None` where that is not known
    /// (the agent's own files), which refuses `best-effort` with what to write instead.
    pub fn read(
        text: &str,
        etcd_here: Option<bool>,
    ) -> Result<(RebootStrategy, Option<String>), String> {
        let spelling = STRATEGY_NAMES
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, s)| *s)
            .ok_or_else(|| {
                format!(
                    "unknown reboot strategy {text:?}; use immediate, etcd-lock, fleetlock or off"
                )
            })?;
        Ok(match (spelling, etcd_here) {
            (Spelling::Is(s), _) => (s, None),
            (Spelling::Old(s), _) => (
                s,
                Some(format!(
                    "`{text}` is the old name of `{}`; using `{}`",
                    s.as_str(),
                    s.as_str()
                )),
            ),
            (Spelling::BestEffort, Some(etcd)) => {
                let s = if etcd {
                    RebootStrategy::EtcdLock
                } else {
                    RebootStrategy::Immediate
                };
                let why = if etcd { "" } else { "not " };
                let note = format!(
                    "`best-effort` is an old CoreOS strategy; using `{}` because etcd is {why}configured",
                    s.as_str()
                );
                (s, Some(note))
            }
            (Spelling::BestEffort, None) => {
                return Err(
                    "`best-effort` is decided from the cloud-config's etcd section; \
                    write etcd-lock or immediate here"
                        .to_owned(),
                )
            }
        })
    }
}

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

/// Where in the cloud-config's `kiln:` (or `coreos:`) section a key is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    Update,
    Locksmith,
}

impl Section {
    pub fn name(self) -> &'static str {
        match self {
            Section::Update => "update",
            Section::Locksmith => "locksmith",
        }
    }
}

/// How a key's value is written and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string; empty means "not set" where the setting is optional.
    Text,
    /// An `http://` or `https://` URL; empty means "not set".
    Url,
    /// A channel name: letters, digits, `-`, `_`, `.`.
    Channel,
    Strategy,
    /// A Go-style duration (`1h30m`) or a number of seconds.
    Duration,
    Bool,
    /// A list of strings, or one string of comma-separated items.
    List,
    /// Half of the reboot window; both halves are given together.
    WindowStart,
    WindowLength,
}

/// One key of `update.conf`.
#[derive(Debug)]
pub struct Key {
    /// Its name in `update.conf`.
    pub name: &'static str,
    /// Older names the agent still reads in `update.conf`.
    pub old_names: &'static [&'static str],
    pub section: Section,
    /// Its names in that cloud-config section, `-` and `_` alike: CoreOS's where CoreOS had the
    /// setting, first the one the documentation uses.
    pub cloud_config: &'static [&'static str],
    pub kind: Kind,
    /// What the defaults file says about it.
    pub doc: &'static str,
    /// Written commented out in the defaults file, as an example, when the setting has no default.
    pub example: Option<&'static str>,
}

/// Every key, in the defaults file's order.
pub const KEYS: &[Key] = &[
    Key {
        name: "server",
        old_names: &[],
        section: Section::Update,
        cloud_config: &["server"],
        kind: Kind::Url,
        doc: "The Omaha endpoint, e.g. \"http://updates.example:8000/v1/update/\". Empty: the agent does not check.",
        example: None,
    },
    Key {
        name: "app_id",
        old_names: &[],
        section: Section::Update,
        cloud_config: &["app-id"],
        kind: Kind::Text,
        doc: "The Omaha app id; by default KILN_APP_ID in /usr/lib/os-release.",
        example: Some("\"d57468fa-057a-43ea-97b0-0ed17b82a948\""),
    },
    Key {
        name: "channel",
        old_names: &["group"],
        section: Section::Update,
        cloud_config: &["group", "channel"],
        kind: Kind::Channel,
        doc: "The channel (CoreOS's update group); by default KILN_CHANNEL in /usr/lib/os-release.",
        example: Some("\"stable\""),
    },
    Key {
        name: "reboot_strategy",
        old_names: &[],
        section: Section::Update,
        cloud_config: &["reboot-strategy"],
        kind: Kind::Strategy,
        doc: "immediate, off, etcd-lock or fleetlock.",
        example: None,
    },
    Key {
        name: "window_start",
        old_names: &[],
        section: Section::Locksmith,
        cloud_config: &["window-start"],
        kind: Kind::WindowStart,
        doc: "An optional reboot window (UTC), both keys together:",
        example: Some("\"Thu 04:00\""),
    },
    Key {
        name: "window_length",
        old_names: &[],
        section: Section::Locksmith,
        cloud_config: &["window-length"],
        kind: Kind::WindowLength,
        doc: "",
        example: Some("\"1h\""),
    },
    Key {
        name: "check_interval",
        old_names: &[],
        section: Section::Update,
        cloud_config: &["check-interval"],
        kind: Kind::Duration,
        doc: "Time between two update checks (a random tenth is added or taken away).",
        example: None,
    },
    Key {
        name: "http_timeout",
        old_names: &[],
        section: Section::Update,
        cloud_config: &["http-timeout"],
        kind: Kind::Duration,
        doc: "Timeout of one HTTP exchange with the update server or a lock.",
        example: None,
    },
    Key {
        name: "etcd_endpoints",
        old_names: &[],
        section: Section::Locksmith,
        cloud_config: &["endpoint", "etcd-endpoints"],
        kind: Kind::List,
        doc: "etcd-lock: the etcd client URLs (comma-separated in the cloud-config, as locksmith's endpoint).",
        example: None,
    },
    Key {
        name: "etcd_lock_key",
        old_names: &[],
        section: Section::Locksmith,
        cloud_config: &["etcd-lock-key"],
        kind: Kind::Text,
        doc: "etcd-lock: the semaphore key; one machine of the cluster holds it while it reboots.",
        example: None,
    },
    Key {
        name: "etcd_lock_ttl",
        old_names: &[],
        section: Section::Locksmith,
        cloud_config: &["etcd-lock-ttl"],
        kind: Kind::Duration,
        doc: "etcd-lock: a machine that never comes back frees the lock after this.",
        example: None,
    },
    Key {
        name: "lock_retry",
        old_names: &[],
        section: Section::Locksmith,
        cloud_config: &["lock-retry"],
        kind: Kind::Duration,
        doc: "How long a machine waits before asking again for a reboot lock another machine holds.",
        example: None,
    },
    Key {
        name: "lock_install",
        old_names: &[],
        section: Section::Locksmith,
        cloud_config: &["lock-install"],
        kind: Kind::Bool,
        doc: "etcd-lock and fleetlock: take the lock before writing the new slot too, so that one machine\n\
              at a time installs or reboots (a small cluster whose members are its own quorum keeps two\n\
              members at full speed while the third is away). It is then held from the install to the\n\
              healthy boot, reboot window included.",
        example: None,
    },
    Key {
        name: "lock_group",
        old_names: &["fleetlock_group"],
        section: Section::Locksmith,
        cloud_config: &["group"],
        kind: Kind::Text,
        doc: "The group whose machines reboot one at a time: the FleetLock group, and under etcd-lock\n\
              a semaphore of its own, <etcd_lock_key>/groups/<group>, unless it is \"default\".",
        example: None,
    },
    Key {
        name: "fleetlock_url",
        old_names: &[],
        section: Section::Locksmith,
        cloud_config: &["fleetlock-url"],
        kind: Kind::Url,
        doc: "fleetlock: the base URL of the FleetLock server.",
        example: Some("\"http://fleetlock.example:8080\""),
    },
    Key {
        name: "health_units",
        old_names: &[],
        section: Section::Update,
        cloud_config: &["health-units"],
        kind: Kind::List,
        doc: "After rebooting into a new version: these units must be active (and the system running)\n\
              within health_timeout, else the new version is not blessed and the boot counter falls back.",
        example: None,
    },
    Key {
        name: "health_timeout",
        old_names: &[],
        section: Section::Update,
        cloud_config: &["health-timeout"],
        kind: Kind::Duration,
        doc: "",
        example: None,
    },
];

/// The key `name` stands for in `update.conf` (its name or an older one).
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter()
        .find(|k| k.name == name || k.old_names.contains(&name))
}

/// The key a cloud-config section's `name` stands for (`-` and `_` alike).
pub fn cloud_config_key(section: Section, name: &str) -> Option<&'static Key> {
    let name = name.replace('_', "-");
    KEYS.iter()
        .find(|k| k.section == section && k.cloud_config.contains(&name.as_str()))
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

    /// Sets the reboot window from its two halves.
    pub fn set_window(&mut self, start: &Raw, length: &Raw) -> Result<(), Refused> {
        self.settings.set_window(start, length)?;
        self.keys.extend(
            KEYS.iter()
                .filter(|k| matches!(k.kind, Kind::WindowStart | Kind::WindowLength))
                .map(|k| k.name),
        );
        Ok(())
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
