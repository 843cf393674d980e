//! The update server's brain: answers Omaha requests from state kept in memory, applies the
//! rollout policy, tracks instances, and queues every change for the store. One lock guards the
//! state; a check holds it for a few microseconds (parsing and writing XML happen outside).
//!
//! The engine's files, from the facade down: this one holds [`Engine`], the entry points of the
//! Omaha endpoint and the admin API; `instances` tracks machines as they check in, `events`
//! applies what they report, `grants` decides the rollout, `view` shows an app to the operator
//! and `counters` count what the Omaha endpoint answered; `state` is one app's state, loaded and
//! persisted, `offer` the answer offering a version, `stats` a version's progress, and `error`
//! the refusals and name checks. The etcd discovery tokens (`crate::discovery`) are loaded and
//! written with the rest, through the same writer.

mod admission;
mod events;
mod grants;
mod state;
mod stats;

pub mod counters;
pub mod error;
pub mod instances;
pub mod offer;
pub mod view;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use kiln_updater::omaha::{self, normalize_id, Response, ResponseApp};

use crate::clock::{Clock, Timestamp};
use crate::discovery::Discovery;
use crate::model::{
    AppRecord, ChannelRecord, Instance, InstanceEvent, PackageRecord, Policy, Status,
};
use crate::rollout;
use crate::store::{Store, Write};
use crate::writer::{lock, Writer};

use admission::Admission;
pub use admission::{AdmissionLimits, MAX_EVENTS_PER_APP, MAX_MACHINE_ID};
use counters::Counters;
use error::{checked_app_id, checked_name, EngineError};
use instances::Gate;
use offer::offer_for;
use state::{build_state, AppState};
pub use stats::KNOWN_AFTER;
use view::AppView;

/// How the engine builds URLs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The server's URL as machines reach it, ending in `/`; payloads served by the server are
    /// at `{public_url}v1/payloads/{app}/{version}/{file}`.
    pub public_url: String,
    /// How many new machines are recorded per minute.
    pub admission: AdmissionLimits,
}

impl EngineConfig {
    /// Served at `public_url`, with the default admission limits.
    pub fn new(public_url: impl Into<String>) -> Self {
        Self {
            public_url: public_url.into(),
            admission: AdmissionLimits::default(),
        }
    }
}

/// The server state and the writer that persists it.
pub struct Engine {
    state: Mutex<HashMap<String, AppState>>,
    /// New machines recorded this minute; locked only while `state` is.
    admission: Mutex<Admission>,
    /// Shared with `discovery`, so that all the server's writes reach the store in one order.
    writer: Arc<Writer>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    /// What the Omaha endpoint answered, for `/metrics`.
    pub counters: Counters,
    /// The etcd discovery tokens and their registrations.
    pub discovery: Discovery,
}

impl Engine {
    /// Loads the store's state and starts its writer.
    pub fn open(
        mut store: Box<dyn Store>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        let mut snapshot = store.load()?;
        let mut config = config;
        if !config.public_url.ends_with('/') {
            config.public_url.push('/');
        }
        let writer = Arc::new(Writer::start(store));
        let discovery = Discovery::load(
            std::mem::take(&mut snapshot.discovery_tokens),
            std::mem::take(&mut snapshot.registrations),
            Arc::clone(&writer),
            Arc::clone(&clock),
            &config.public_url,
        );
        let state = build_state(snapshot, &config.public_url, clock.now());
        Ok(Self {
            state: Mutex::new(state),
            admission: Mutex::new(Admission::default()),
            writer,
            clock,
            config,
            counters: Counters::default(),
            discovery,
        })
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Answers an Omaha request: one `<app>` per app asked about, in order. `source` is the
    /// client's address (`None` for a request that did not come over the network), which the
    /// admission of new machines counts by.
    pub fn handle(&self, request: &omaha::Request, source: Option<IpAddr>) -> Response {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        let mut admission = lock(&self.admission);
        let mut gate = Gate {
            admission: &mut admission,
            limits: self.config.admission,
            source,
        };
        let mut unrecorded = 0;
        let apps = request
            .apps
            .iter()
            .map(|app| match state.get_mut(&normalize_id(&app.appid)) {
                Some(app_state) => {
                    let (answer, recorded) = app_state.answer(app, now, &self.writer, &mut gate);
                    unrecorded += usize::from(!recorded);
                    answer
                }
                None => ResponseApp::error_unknown_application(&app.appid).acknowledge(app),
            })
            .collect();
        drop(admission);
        drop(state);
        let response = Response::new(apps);
        self.counters.record(request, &response, unrecorded);
        response
    }

    /// Whether the store still answers, after committing what is queued.
    pub fn ping(&self) -> Result<(), EngineError> {
        self.writer
            .read(|store| store.ping())
            .map_err(EngineError::Store)
    }

    /// Waits until every change so far is in the store.
    pub fn flush(&self) -> Result<(), EngineError> {
        self.writer.flush().map_err(EngineError::Store)
    }

    /// Creates an app (or renames it).
    pub fn create_app(&self, id: &str, name: &str) -> Result<AppRecord, EngineError> {
        let id = checked_app_id(id)?;
        let record = AppRecord {
            id: id.clone(),
            name: name.to_owned(),
        };
        {
            let mut state = lock(&self.state);
            let app = state
                .entry(id.clone())
                .or_insert_with(|| AppState::new(record.clone()));
            app.record = record.clone();
            self.writer.send(Write::App(record.clone()));
        }
        self.flush()?;
        Ok(record)
    }

    /// Registers a verified package, creating its app if needed, and points `channel` at it.
    /// A version published before is refused unless its bytes are the same (then this only
    /// points the channel at it again).
    pub fn publish(
        &self,
        package: PackageRecord,
        channel: Option<&str>,
    ) -> Result<PackageRecord, EngineError> {
        self.register(package, channel, false)
    }

    /// [`Engine::publish`], replacing a version published before with other bytes (`--replace`).
    pub fn republish(
        &self,
        package: PackageRecord,
        channel: Option<&str>,
    ) -> Result<PackageRecord, EngineError> {
        self.register(package, channel, true)
    }

    fn register(
        &self,
        package: PackageRecord,
        channel: Option<&str>,
        replace: bool,
    ) -> Result<PackageRecord, EngineError> {
        let app_id = checked_app_id(&package.app_id)?;
        checked_name("version", &package.version)?;
        if let Some(channel) = channel {
            checked_name("channel", channel)?;
        }
        let now = self.clock.now();
        let package = PackageRecord {
            app_id: app_id.clone(),
            ..package
        };
        {
            let mut state = lock(&self.state);
            let app = state.entry(app_id.clone()).or_insert_with(|| {
                let record = AppRecord {
                    id: app_id.clone(),
                    name: app_id.clone(),
                };
                self.writer.send(Write::App(record.clone()));
                AppState::new(record)
            });
            if let Some(published) = app.packages.get(&package.version) {
                if published.sha256 != package.sha256 && !replace {
                    return Err(EngineError::AlreadyPublished {
                        app: app_id,
                        version: package.version,
                        published: published.sha256.clone(),
                        uploaded: package.sha256,
                    });
                }
            }
            let offer = offer_for(&package, &self.config.public_url)?;
            app.offers.insert(package.version.clone(), Arc::new(offer));
            app.packages
                .insert(package.version.clone(), package.clone());
            self.writer.send(Write::Package(package.clone()));
            if let Some(channel) = channel {
                app.set_version(channel, &package.version, now, &self.writer);
            }
        }
        self.flush()?;
        Ok(package)
    }

    /// Points `channel` at `version`, which must be published.
    pub fn set_channel_version(
        &self,
        app_id: &str,
        channel: &str,
        version: &str,
    ) -> Result<ChannelRecord, EngineError> {
        checked_name("channel", channel)?;
        let now = self.clock.now();
        let record = self.with_app(app_id, |app, writer| {
            if !app.packages.contains_key(version) {
                return Err(EngineError::UnknownVersion {
                    app: app.record.id.clone(),
                    version: version.to_owned(),
                });
            }
            Ok(app.set_version(channel, version, now, writer))
        })?;
        self.flush()?;
        Ok(record)
    }

    /// Points `to` at the version `from` offers.
    pub fn promote(
        &self,
        app_id: &str,
        from: &str,
        to: &str,
    ) -> Result<ChannelRecord, EngineError> {
        let version = self.with_app(app_id, |app, _| {
            let source = app.channel(from)?;
            source
                .record
                .version
                .clone()
                .ok_or_else(|| EngineError::EmptyChannel {
                    app: app.record.id.clone(),
                    channel: from.to_owned(),
                })
        })?;
        self.set_channel_version(app_id, to, &version)
    }

    /// Pauses (no new updates granted) or resumes a channel; resuming also lifts an automatic halt.
    pub fn set_paused(
        &self,
        app_id: &str,
        channel: &str,
        paused: bool,
    ) -> Result<ChannelRecord, EngineError> {
        let now = self.clock.now();
        let record = self.with_app(app_id, |app, writer| {
            let state = app.channel_mut(channel)?;
            state.record.paused = paused;
            if !paused {
                state.record.halted = None;
            }
            state.record.updated_at = now;
            writer.send(Write::Channel(state.record.clone()));
            Ok(state.record.clone())
        })?;
        self.flush()?;
        Ok(record)
    }

    /// Replaces a channel's rollout policy.
    pub fn set_policy(
        &self,
        app_id: &str,
        channel: &str,
        policy: Policy,
    ) -> Result<ChannelRecord, EngineError> {
        rollout::validate(&policy).map_err(|why| EngineError::Invalid {
            what: "policy",
            value: format!("{policy:?}"),
            why,
        })?;
        let now = self.clock.now();
        let record = self.with_app(app_id, |app, writer| {
            let state = app.channel_mut(channel)?;
            state.record.policy = policy;
            state.record.updated_at = now;
            writer.send(Write::Channel(state.record.clone()));
            Ok(state.record.clone())
        })?;
        self.flush()?;
        Ok(record)
    }

    /// Every app with its channels, packages and fleet counts.
    pub fn apps(&self) -> Vec<AppView> {
        let state = lock(&self.state);
        let mut apps: Vec<AppView> = state.values().map(AppState::view).collect();
        apps.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        apps
    }

    /// One app's view.
    pub fn app(&self, app_id: &str) -> Result<AppView, EngineError> {
        self.with_app(app_id, |app, _| Ok(app.view()))
    }

    /// An app's instances, optionally only those of one channel or status, by machine id.
    pub fn instances(
        &self,
        app_id: &str,
        channel: Option<&str>,
        status: Option<Status>,
    ) -> Result<Vec<Instance>, EngineError> {
        self.with_app(app_id, |app, _| {
            let mut list: Vec<Instance> = app
                .instances
                .values()
                .filter(|i| channel.is_none_or(|c| i.channel == c))
                .filter(|i| status.is_none_or(|s| i.status == s))
                .cloned()
                .collect();
            list.sort_by(|a, b| a.machine_id.cmp(&b.machine_id));
            Ok(list)
        })
    }

    /// One instance and its newest events.
    pub fn instance(
        &self,
        app_id: &str,
        machine_id: &str,
        limit: u32,
    ) -> Result<(Instance, Vec<InstanceEvent>), EngineError> {
        let machine = normalize_id(machine_id);
        let (app, instance) = self.with_app(app_id, |app, _| {
            let instance =
                app.instances
                    .get(&machine)
                    .cloned()
                    .ok_or_else(|| EngineError::Invalid {
                        what: "machine id",
                        value: machine_id.to_owned(),
                        why: format!("no such instance of app {}", app.record.id),
                    })?;
            Ok((app.record.id.clone(), instance))
        })?;
        let events = self
            .writer
            .read(|store| store.events(&app, &machine, limit))
            .map_err(EngineError::Store)?;
        Ok((instance, events))
    }

    /// The newest error events of an app.
    pub fn recent_errors(
        &self,
        app_id: &str,
        limit: u32,
    ) -> Result<Vec<InstanceEvent>, EngineError> {
        let app = self.with_app(app_id, |app, _| Ok(app.record.id.clone()))?;
        self.writer
            .read(|store| store.recent_errors(&app, limit))
            .map_err(EngineError::Store)
    }

    /// Forgets instances that have not checked in for `max_age_secs`; returns how many.
    pub fn expire(&self, max_age_secs: u64) -> Result<usize, EngineError> {
        let now = self.clock.now();
        let removed = {
            let mut state = lock(&self.state);
            state
                .values_mut()
                .map(|app| app.expire(now, max_age_secs, &self.writer))
                .sum()
        };
        self.flush()?;
        Ok(removed)
    }

    /// Where every package this server serves itself is on its disk (for sweeping the files
    /// no package refers to).
    pub fn payload_paths(&self) -> std::collections::HashSet<std::path::PathBuf> {
        let state = lock(&self.state);
        state
            .values()
            .flat_map(|app| app.packages.values())
            .filter_map(|p| p.path.as_deref().map(std::path::PathBuf::from))
            .collect()
    }

    /// The package a payload request names, for serving it.
    pub fn package(&self, app_id: &str, version: &str) -> Option<PackageRecord> {
        let state = lock(&self.state);
        state
            .get(&normalize_id(app_id))
            .and_then(|app| app.packages.get(version))
            .cloned()
    }

    /// Commits what is queued and stops the writer.
    pub fn shutdown(&self) {
        self.writer.stop();
    }

    fn with_app<T>(
        &self,
        app_id: &str,
        f: impl FnOnce(&mut AppState, &Writer) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let mut state = lock(&self.state);
        let app = state
            .get_mut(&normalize_id(app_id))
            .ok_or_else(|| EngineError::UnknownApp(app_id.to_owned()))?;
        f(app, &self.writer)
    }
}
