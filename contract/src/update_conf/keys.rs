//! Every key of `update.conf`: its name there and the older names still read, the cloud-config
//! section and names that set it, how its value is read, and what the defaults file says of it.

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
        doc: "Time between two update checks (up to a tenth more or less, different on each machine).",
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
    Key {
        name: "allow_downgrade",
        old_names: &[],
        section: Section::Update,
        cloud_config: &["allow-downgrade"],
        kind: Kind::Bool,
        doc: "Install a signed payload that is not newer than the running version (a downgrade the\n\
              operator wants). Off, the agent refuses one, whatever version the server offers it as.",
        example: None,
    },
    Key {
        name: "ca_file",
        old_names: &[],
        section: Section::Update,
        cloud_config: &["ca-file"],
        kind: Kind::Text,
        doc: "The CA certificates (PEM) an https:// server (and FleetLock) must be signed by: a pinned\n\
              CA, e.g. one the cloud-config writes with write_files. Empty: the Mozilla roots built in.",
        example: Some("\"/etc/kiln/update-ca.pem\""),
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
