//! The cloud-config as typed values: what `parse` produces and `apply` consumes.
//!
//! Everything here is already checked: paths are absolute, contents decoded, permissions and
//! strategies valid. Defaults that the apply step needs (home directory, shell) are left as
//! `None` so that the document's own choices stay visible.

use std::collections::BTreeMap;
use std::fmt;

/// A whole cloud-config document.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CloudConfig {
    pub hostname: Option<String>,
    /// Keys for the `core` user.
    pub ssh_authorized_keys: Vec<String>,
    pub users: Vec<User>,
    pub write_files: Vec<WriteFile>,
    /// `manage_etc_hosts: localhost`: `/etc/hosts` names `hostname` on 127.0.0.1 and ::1.
    pub manage_etc_hosts: bool,
    /// The `kiln:` section (or `coreos:`).
    pub kiln: KilnSection,
    /// The document as given, recorded as `/var/lib/kiln/cloud-config.applied`.
    pub source: String,
}

impl CloudConfig {
    /// `later` over `self`, for the cloud-config parts of one multipart user-data: lists are
    /// joined (users, keys, files, units, network), etcd's, fleet's and flannel's settings merged key by
    /// key, and the rest (hostname, `update:`/`locksmith:`, `addresses:`) taken from `later`
    /// where it sets them.
    pub fn merge(&mut self, later: CloudConfig) {
        if later.hostname.is_some() {
            self.hostname = later.hostname;
        }
        self.ssh_authorized_keys.extend(later.ssh_authorized_keys);
        self.users.extend(later.users);
        self.write_files.extend(later.write_files);
        self.manage_etc_hosts |= later.manage_etc_hosts;
        let (k, l) = (&mut self.kiln, later.kiln);
        match (&mut k.etcd, l.etcd) {
            (Some(mine), Some(theirs)) => mine.settings.extend(theirs.settings),
            (mine, theirs) => *mine = theirs.or(mine.take()),
        }
        match (&mut k.fleet, l.fleet) {
            (Some(mine), Some(theirs)) => mine.values.extend(theirs.values),
            (mine, theirs) => *mine = theirs.or(mine.take()),
        }
        match (&mut k.flannel, l.flannel) {
            (Some(mine), Some(theirs)) => mine.values.extend(theirs.values),
            (mine, theirs) => *mine = theirs.or(mine.take()),
        }
        if l.update_agent.is_some() {
            k.update_agent = l.update_agent;
        }
        k.units.extend(l.units);
        k.network.extend(l.network);
        if l.addresses != Default::default() {
            k.addresses = l.addresses;
        }
        if !self.source.is_empty() && !later.source.is_empty() {
            self.source.push('\n');
        }
        self.source.push_str(&later.source);
    }
}

/// One entry of `users:`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct User {
    pub name: String,
    pub gecos: Option<String>,
    /// Supplementary groups.
    pub groups: Vec<String>,
    /// A crypt(3) hash for `/etc/shadow`.
    pub passwd: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub primary_group: Option<String>,
    pub homedir: Option<String>,
    pub shell: Option<String>,
    pub no_create_home: bool,
    pub system: bool,
    /// useradd's `--no-user-group`: the primary group is `users`, not a group named like the
    /// user (when `primary_group` is not given).
    pub no_user_group: bool,
}

/// One entry of `write_files:`.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteFile {
    /// Absolute, without `..`.
    pub path: String,
    /// Decoded content.
    pub content: Vec<u8>,
    /// Mode bits; `None` means 0644.
    pub permissions: Option<u32>,
    /// `None` means root:root.
    pub owner: Option<Owner>,
    pub encoding: Encoding,
    pub append: bool,
}

/// How `content` was encoded in the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Encoding {
    #[default]
    Plain,
    Base64,
    /// `gzip` / `gz`: the content (usually `!!binary`) is gzip data.
    Gzip,
    GzipBase64,
}

/// `owner: user:group`; each part a name or a number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub user: IdRef,
    /// `None` when only a user was given: the user's primary group is used.
    pub group: Option<IdRef>,
}

/// A user or group given by name or number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdRef {
    Name(String),
    Id(u32),
}

impl fmt::Display for IdRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdRef::Name(n) => f.write_str(n),
            IdRef::Id(i) => write!(f, "{i}"),
        }
    }
}

/// The `kiln:` / `coreos:` section.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KilnSection {
    pub etcd: Option<Etcd>,
    /// The update agent's settings from `update:` and `locksmith:`; `None` when neither is given.
    pub update_agent: Option<kiln_contract::update_conf::Given>,
    /// fleet's settings from `fleet:`; `None` when the section is not given.
    pub fleet: Option<crate::fleet::FleetSettings>,
    /// flannel's settings from `flannel:`; `None` when the section is not given.
    pub flannel: Option<crate::flannel::FlannelSettings>,
    pub units: Vec<Unit>,
    pub network: Vec<NetworkInterface>,
    /// Which interfaces `$private_ipv4` and `$public_ipv4` stand for (`addresses:`).
    pub addresses: crate::addresses::AddressSettings,
}

/// etcd settings: canonical key (`initial-cluster`) to value, each becoming `ETCD_*`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Etcd {
    pub settings: BTreeMap<String, String>,
    /// `proxy: on` (a worker): no member here, `kiln-etcd-gateway.service` to the cluster's members.
    pub proxy: bool,
}

impl Etcd {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }
}

/// One entry of `units:`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Unit {
    pub name: String,
    pub content: Option<String>,
    pub drop_ins: Vec<DropIn>,
    pub enable: bool,
    pub mask: bool,
    /// Write under `/run` (gone after this boot) instead of `/etc`.
    pub runtime: bool,
    pub command: Option<UnitCommand>,
}

impl Unit {
    /// networkd files (`.network`, `.netdev`, `.link`) go to `/etc/systemd/network`, as
    /// coreos-cloudinit did; they are not systemd units to enable or start.
    pub fn is_networkd(&self) -> bool {
        [".network", ".netdev", ".link"]
            .iter()
            .any(|s| self.name.ends_with(s))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DropIn {
    pub name: String,
    pub content: String,
}

/// What to do with a unit once the system runs (`systemctl <command> <unit>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitCommand {
    Start,
    Stop,
    Restart,
    Reload,
    TryRestart,
    ReloadOrRestart,
    ReloadOrTryRestart,
}

impl UnitCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitCommand::Start => "start",
            UnitCommand::Stop => "stop",
            UnitCommand::Restart => "restart",
            UnitCommand::Reload => "reload",
            UnitCommand::TryRestart => "try-restart",
            UnitCommand::ReloadOrRestart => "reload-or-restart",
            UnitCommand::ReloadOrTryRestart => "reload-or-try-restart",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        let all = [
            UnitCommand::Start,
            UnitCommand::Stop,
            UnitCommand::Restart,
            UnitCommand::Reload,
            UnitCommand::TryRestart,
            UnitCommand::ReloadOrRestart,
            UnitCommand::ReloadOrTryRestart,
        ];
        all.into_iter().find(|c| c.as_str() == name)
    }
}

/// Static settings for one interface in `network:`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetworkInterface {
    /// The `[Match] Name=` value: an interface name or a glob like `en*`; empty when the
    /// interface is matched by `mac` alone.
    pub name: String,
    /// The `[Match] MACAddress=` value, lower case.
    pub mac: Option<String>,
    /// Addresses in CIDR form.
    pub addresses: Vec<String>,
    pub gateway: Option<String>,
    pub dns: Vec<String>,
    /// `ipv6-accept-ra:`, networkd's `IPv6AcceptRA=`; `None` leaves networkd's default (accept
    /// router advertisements unless the machine forwards). Off, a link with no IPv6 router
    /// is configured at once: otherwise networkd waits about 12 s for an advertisement before
    /// the link counts as configured, and `network-online.target` with it.
    pub ipv6_accept_ra: Option<bool>,
}
