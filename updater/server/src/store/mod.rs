//! Persistence behind a trait. The server keeps the state it decides on in memory (see
//! `engine`), so a store only has to load everything at start, apply batches of writes in order,
//! and answer the few queries whose data is not kept in memory (event history).

mod migrations;
mod postgres;
mod sqlite;
mod tables;

pub use migrations::MIGRATIONS;
pub use postgres::{PostgresStore, PostgresTarget, Protection};
pub use sqlite::SqliteStore;

use crate::clock::Timestamp;
use crate::model::{
    AppRecord, ChannelRecord, DiscoveryToken, Instance, InstanceEvent, PackageRecord, Registration,
};

/// Everything the server needs in memory, as loaded at start.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub apps: Vec<AppRecord>,
    pub packages: Vec<PackageRecord>,
    pub channels: Vec<ChannelRecord>,
    pub instances: Vec<Instance>,
    pub discovery_tokens: Vec<DiscoveryToken>,
    pub registrations: Vec<Registration>,
}

/// One change to persist. Records are written whole, so applying writes in order gives the state
/// the engine had when it made them.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    App(AppRecord),
    Package(PackageRecord),
    Channel(ChannelRecord),
    Instance(Instance),
    Event(InstanceEvent),
    /// Remove an instance (and its history) that has not checked in for too long.
    DeleteInstance {
        app_id: String,
        machine_id: String,
    },
    DiscoveryToken(DiscoveryToken),
    Registration(Registration),
    DeleteRegistration {
        token: String,
        id: String,
    },
    /// Remove a discovery token and every registration under it.
    DeleteDiscoveryToken {
        token: String,
    },
}

/// Why the store failed. The message names the database and the operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "opening database {path}: {source}; check the path and that the directory is writable"
    )]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("making database {path} readable by this user only (mode 0600): {source}; check that this user owns it")]
    Private {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than the {known} this server knows; \
         run a newer kiln-server"
    )]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("database {path}: {what}: {source}")]
    Query {
        path: String,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path}: {what}: {message}")]
    Backend {
        path: String,
        what: &'static str,
        message: String,
    },
    #[error("database {path} holds an unreadable {what}: {value:?}")]
    Corrupt {
        path: String,
        what: &'static str,
        value: String,
    },
}

/// A place the server's state lives between runs.
pub trait Store: Send {
    /// Reads all apps, packages, channels, instances, discovery tokens and registrations.
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// Applies the writes in order, all or none.
    fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError>;
    /// The newest `limit` events of one instance, newest first.
    fn events(
        &mut self,
        app_id: &str,
        machine_id: &str,
        limit: u32,
    ) -> Result<Vec<InstanceEvent>, StoreError>;
    /// The newest `limit` error events of an app, newest first (for the operator's "recent errors").
    fn recent_errors(&mut self, app_id: &str, limit: u32)
        -> Result<Vec<InstanceEvent>, StoreError>;
    /// Whether the database still answers (a leader that lost it must stop deciding).
    fn ping(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// When the last write happened; for diagnostics.
    fn describe(&self) -> String;
}

/// A machine the server saw in one check-in only (its last within a minute of its first) is
/// stale after this, whatever the expiry's age: made-up machine ids are not kept for a month.
pub const ONCE_SEEN_STALE_AFTER: u64 = 86_400;

/// Expiry: instances whose last check-in is older than `max_age_secs` are stale, and those seen
/// once older than [`ONCE_SEEN_STALE_AFTER`].
pub fn is_stale(instance: &Instance, now: Timestamp, max_age_secs: u64) -> bool {
    let seen_once =
        instance.first_seen > 0 && instance.last_check.saturating_sub(instance.first_seen) < 60;
    let max_age = if seen_once {
        max_age_secs.min(ONCE_SEEN_STALE_AFTER)
    } else {
        max_age_secs
    };
    instance.last_check.saturating_add(max_age) < now
}
