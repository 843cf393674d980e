//! The server's records: apps, their channels and rollout policies, published packages, and the
//! machines (instances) that check in. The same shapes are stored, kept in memory and returned
//! as JSON by the admin API.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// An application the server serves updates for (Kiln's OS image is one app id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// Normalized (no braces, lower case): see [`kiln_updater::omaha::normalize_id`].
    pub id: String,
    pub name: String,
}

/// A version published for an app: the payload and where machines download it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRecord {
    pub app_id: String,
    pub version: String,
    /// The file name machines append to the codebase (`update.payload`).
    pub file_name: String,
    /// Where the payload is on this server's disk, when the server serves it itself.
    pub path: Option<String>,
    /// An operator-given URL of the payload (its directory is the codebase); takes precedence
    /// over serving it from `path`.
    pub url: Option<String>,
    pub size: u64,
    /// Hex.
    pub sha256: String,
    /// The oldest version this payload may update from (from the signed manifest).
    pub min_from_version: Option<String>,
    /// The signed manifest as JSON, kept for the operator.
    pub manifest: String,
    pub created_at: Timestamp,
}

/// How fast and to whom a channel hands out its version. Every limit is optional: the default
/// policy grants every machine that asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// At most this many updates granted per `period_secs` (0: no limit).
    pub max_updates_per_period: u32,
    pub period_secs: u64,
    /// The share of the fleet (0..=100) that may update; a machine's membership is fixed by a hash
    /// of its machine id, so the same machines stay in as the percentage grows.
    pub percent: u8,
    /// A granted update not reported complete after this long counts as failed (and frees its
    /// place in safe mode); 0 means never.
    pub update_timeout_secs: u64,
    /// Grant one machine at a time until the first machine reports the version running.
    pub safe_mode: bool,
    /// Halt the channel when the share of failed updates of its version passes this (0..=1).
    pub halt_error_rate: Option<f64>,
    /// ... but only once at least this many updates of the version have failed.
    pub halt_min_errors: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_updates_per_period: 0,
            period_secs: 3600,
            percent: 100,
            update_timeout_secs: 3600,
            safe_mode: false,
            halt_error_rate: None,
            halt_min_errors: 1,
        }
    }
}

/// A channel (track) of an app: the one version it offers and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelRecord {
    pub app_id: String,
    pub name: String,
    pub version: Option<String>,
    /// Set by an operator: no new updates are granted until resumed.
    pub paused: bool,
    /// Set by the server when the error rate passed the policy's threshold; cleared by resume.
    pub halted: Option<String>,
    pub policy: Policy,
    pub updated_at: Timestamp,
}

impl ChannelRecord {
    pub fn new(app_id: &str, name: &str, now: Timestamp) -> Self {
        Self {
            app_id: app_id.to_owned(),
            name: name.to_owned(),
            version: None,
            paused: false,
            halted: None,
            policy: Policy::default(),
            updated_at: now,
        }
    }
}

/// Where a machine is in the update of its app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Checking in, nothing granted (up to date, or held back by the rollout policy).
    Idle,
    /// The server answered with an update.
    Granted,
    /// The machine reported the download started (13/1) or finished (14/1).
    Downloading,
    /// The machine reported the update installed (3/1) and waits to reboot.
    Installed,
    /// The machine runs the new version (3/2, or a check-in with that version).
    Complete,
    /// The machine reported an error (3/0), or did not finish within the update timeout.
    Error,
    /// The machine came back on its old version after installing the new one.
    RolledBack,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Idle,
        Status::Granted,
        Status::Downloading,
        Status::Installed,
        Status::Complete,
        Status::Error,
        Status::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Idle => "idle",
            Status::Granted => "granted",
            Status::Downloading => "downloading",
            Status::Installed => "installed",
            Status::Complete => "complete",
            Status::Error => "error",
            Status::RolledBack => "rolled-back",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Granted and not yet finished one way or the other.
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            Status::Granted | Status::Downloading | Status::Installed
        )
    }

    /// A finished update that failed.
    pub fn failed(self) -> bool {
        matches!(self, Status::Error | Status::RolledBack)
    }
}

/// One machine running one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Normalized machine id.
    pub machine_id: String,
    pub app_id: String,
    /// The version it reported on its last check-in.
    pub version: String,
    pub channel: String,
    pub status: Status,
    /// The version granted to it, while and after updating.
    pub target_version: Option<String>,
    pub granted_at: Option<Timestamp>,
    pub last_check: Timestamp,
    /// The last error code it reported, decoded.
    pub last_error: Option<String>,
    /// The boot id of its last check-in; a new one after an install tells a reboot happened.
    pub boot_id: Option<String>,
    /// When the server first recorded it (0: before servers kept this). A machine takes part
    /// in a limited rollout, and counts toward halting one, once known for an hour
    /// (`engine::KNOWN_AFTER`).
    #[serde(default)]
    pub first_seen: Timestamp,
}

/// One event a machine reported (or the server concluded, such as a timeout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceEvent {
    pub machine_id: String,
    pub app_id: String,
    pub at: Timestamp,
    /// Omaha `eventtype`; 0 for events the server made up (timeouts, rollbacks).
    pub event_type: u32,
    pub event_result: u32,
    pub error_code: Option<i64>,
    /// `errorcode` decoded, or what the server concluded.
    pub description: String,
    pub version: String,
    pub previous_version: Option<String>,
}

/// A discovery token: the etcd cluster whose machines are given its URL (`etcd2: discovery:`)
/// bootstraps with its first `size` registrations as members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryToken {
    /// 32 lowercase hex digits from the system's random source; the URL's last segment.
    pub token: String,
    /// How many members the cluster starts with.
    pub size: u32,
    /// The token's etcd index: 1 when created, raised by each registration and removal. It is
    /// what `X-Etcd-Index` says and what `waitIndex` counts in, so it never goes back.
    pub index: u64,
    /// The index of the token's latest removal of a registration (0: none). Removals are not
    /// stored, so after a restart a wait from this index or below cannot be answered exactly.
    pub last_delete_index: u64,
    pub created_at: Timestamp,
}

/// One etcd member's registration under a discovery token, as etcd's discovery client made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub token: String,
    /// The member id in hex: the key's last segment.
    pub id: String,
    /// `name=peerURL[,name=peerURL…]`.
    pub value: String,
    /// The token's index when it was registered (the node's createdIndex and modifiedIndex).
    pub index: u64,
    pub created_at: Timestamp,
}
