//! One app's state in memory, as the engine decides on it: its packages and their offers, its
//! channels, its instances and the progress of each version. How it is loaded from the store's
//! snapshot, and how an instance is written back only when the store's copy is out of date.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::clock::Timestamp;
use crate::model::{AppRecord, ChannelRecord, Instance, PackageRecord};
use crate::store::{Snapshot, Write};
use crate::writer::Writer;

use super::error::EngineError;
use super::offer::{offer_for, Offer};
use super::stats::VersionStats;

#[derive(Debug)]
pub(super) struct ChannelState {
    pub(super) record: ChannelRecord,
    /// Grant times inside the current period, oldest first.
    pub(super) grants: VecDeque<Timestamp>,
}

#[derive(Debug)]
pub(super) struct AppState {
    pub(super) record: AppRecord,
    pub(super) packages: HashMap<String, PackageRecord>,
    pub(super) offers: HashMap<String, Arc<Offer>>,
    pub(super) channels: HashMap<String, ChannelState>,
    pub(super) instances: HashMap<String, Instance>,
    /// Each instance as last sent to the store: an instance is written when it changed, and
    /// when only its check-in time did, at most every [`CHECK_IN_WRITE_EVERY`].
    pub(super) persisted: HashMap<String, Instance>,
    pub(super) versions: HashMap<String, VersionStats>,
}

/// How stale an instance's check-in time in the store may get while nothing else about it
/// changes: what a restart can set it back by. (Expiry counts in days; the dashboard and the
/// API read the engine's memory, which is always current.)
const CHECK_IN_WRITE_EVERY: Timestamp = 60;

/// Every app as the store's snapshot holds it, with its offers and counters rebuilt.
pub(super) fn build_state(
    snapshot: Snapshot,
    public_url: &str,
    now: Timestamp,
) -> HashMap<String, AppState> {
    let mut apps: HashMap<String, AppState> = snapshot
        .apps
        .into_iter()
        .map(|record| (record.id.clone(), AppState::new(record)))
        .collect();
    for package in snapshot.packages {
        if let Some(app) = apps.get_mut(&package.app_id) {
            // A package whose stored hash is unreadable is kept for the operator but not offered.
            if let Ok(offer) = offer_for(&package, public_url) {
                app.offers.insert(package.version.clone(), Arc::new(offer));
            }
            app.packages.insert(package.version.clone(), package);
        }
    }
    for record in snapshot.channels {
        if let Some(app) = apps.get_mut(&record.app_id) {
            let state = ChannelState {
                record,
                grants: VecDeque::new(),
            };
            app.channels.insert(state.record.name.clone(), state);
        }
    }
    for instance in snapshot.instances {
        if let Some(app) = apps.get_mut(&instance.app_id) {
            app.restore(instance, now);
        }
    }
    apps
}

impl AppState {
    pub(super) fn new(record: AppRecord) -> Self {
        Self {
            record,
            packages: HashMap::new(),
            offers: HashMap::new(),
            channels: HashMap::new(),
            instances: HashMap::new(),
            persisted: HashMap::new(),
            versions: HashMap::new(),
        }
    }

    /// Sends the machine's instance to the store if the store's copy is out of date.
    pub(super) fn persist(&mut self, machine: &str, writer: &Writer) {
        let Some(instance) = self.instances.get(machine) else {
            return;
        };
        let due = self.persisted.get(machine).is_none_or(|stored| {
            instance.last_check >= stored.last_check + CHECK_IN_WRITE_EVERY
                || !same_but_check_in(instance, stored)
        });
        if due {
            writer.send(Write::Instance(instance.clone()));
            self.persisted.insert(machine.to_owned(), instance.clone());
        }
    }

    /// Rebuilds the counters an instance contributes to, as loaded from the store.
    pub(super) fn restore(&mut self, instance: Instance, now: Timestamp) {
        if let (Some(target), Some(granted_at)) = (&instance.target_version, instance.granted_at) {
            let stats = self.versions.entry(target.clone()).or_default();
            let known = super::stats::known(&instance, granted_at);
            match instance.status {
                s if s.in_flight() => stats.start(&instance.machine_id, granted_at),
                s => stats.count(s, false, true, known),
            }
            if let Some(channel) = self.channels.get_mut(&instance.channel) {
                if granted_at + channel.record.policy.period_secs > now {
                    channel.grants.push_back(granted_at);
                }
            }
        }
        self.persisted
            .insert(instance.machine_id.clone(), instance.clone());
        self.instances.insert(instance.machine_id.clone(), instance);
    }

    pub(super) fn channel(&self, name: &str) -> Result<&ChannelState, EngineError> {
        self.channels
            .get(name)
            .ok_or_else(|| EngineError::UnknownChannel {
                app: self.record.id.clone(),
                channel: name.to_owned(),
            })
    }

    pub(super) fn channel_mut(&mut self, name: &str) -> Result<&mut ChannelState, EngineError> {
        let app = &self.record.id;
        self.channels
            .get_mut(name)
            .ok_or_else(|| EngineError::UnknownChannel {
                app: app.clone(),
                channel: name.to_owned(),
            })
    }

    pub(super) fn set_version(
        &mut self,
        channel: &str,
        version: &str,
        now: Timestamp,
        writer: &Writer,
    ) -> ChannelRecord {
        let app_id = self.record.id.clone();
        let state = self
            .channels
            .entry(channel.to_owned())
            .or_insert_with(|| ChannelState {
                record: ChannelRecord::new(&app_id, channel, now),
                grants: VecDeque::new(),
            });
        if state.record.version.as_deref() != Some(version) {
            // A new version starts a new rollout: the old one's halt does not carry over.
            state.record.halted = None;
            state.grants.clear();
        }
        state.record.version = Some(version.to_owned());
        state.record.updated_at = now;
        writer.send(Write::Channel(state.record.clone()));
        state.record.clone()
    }
}

/// Whether two states of an instance differ in nothing but the check-in time. (Every field is
/// named, so a new one cannot be forgotten here.)
fn same_but_check_in(a: &Instance, b: &Instance) -> bool {
    let Instance {
        machine_id,
        app_id,
        version,
        channel,
        status,
        target_version,
        granted_at,
        last_check: _,
        last_error,
        boot_id,
        first_seen,
    } = a;
    *machine_id == b.machine_id
        && *app_id == b.app_id
        && *version == b.version
        && *channel == b.channel
        && *status == b.status
        && *target_version == b.target_version
        && *granted_at == b.granted_at
        && *last_error == b.last_error
        && *boot_id == b.boot_id
        && *first_seen == b.first_seen
}
