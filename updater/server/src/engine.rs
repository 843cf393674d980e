//! The update server's brain: answers Omaha requests from state kept in memory, applies the
//! rollout policy, tracks instances, and queues every change for the store. One lock guards the
//! state; a check holds it for a few microseconds (parsing and writing XML happen outside).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use kiln_updater::omaha::{
    self, kiln_codes, normalize_id, App, Event, EventResult, EventType, Response, ResponseApp,
};

use crate::clock::{Clock, Timestamp};
use crate::errorcode;
use crate::metrics::Counters;
use crate::model::{
    AppRecord, ChannelRecord, Instance, InstanceEvent, PackageRecord, Policy, Status,
};
use crate::rollout;
use crate::store::{self, Snapshot, Store, StoreError, Write};
use crate::writer::{lock, Writer};

/// The channel of a machine that names none (`track` absent).
pub const DEFAULT_CHANNEL: &str = "stable";

/// Why an admin action was refused. Messages name the app, channel or version and what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown app {0}; publish a payload for it first or create it with `kiln-server app create`")]
    UnknownApp(String),
    #[error("app {app} has no channel {channel}; publish or promote a version to it first")]
    UnknownChannel { app: String, channel: String },
    #[error("app {app} has no published version {version}; publish it first")]
    UnknownVersion { app: String, version: String },
    #[error("channel {channel} of app {app} has no version to promote")]
    EmptyChannel { app: String, channel: String },
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: String,
    },
    #[error("storing the change failed: {0}")]
    Store(String),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Store(e.to_string())
    }
}

/// The answer to one update check, as the engine decided it.
#[derive(Debug, Clone)]
struct Offer {
    min_from_version: Option<String>,
    /// The `<app>` answer offering it, built once: every machine granted the version gets the
    /// same one, with only its own app id spelling and acknowledgements added.
    answer: ResponseApp,
}

/// Progress of one version across the fleet, for safe mode and halting.
#[derive(Debug, Default)]
struct VersionStats {
    /// Machines granted this version and not finished, with the grant time.
    in_flight: HashMap<String, Timestamp>,
    /// The same, ordered by grant time, so timeouts are found without a scan.
    by_grant: BTreeSet<(Timestamp, String)>,
    completes: u64,
    errors: u64,
}

impl VersionStats {
    fn start(&mut self, machine: &str, at: Timestamp) {
        if let Some(old) = self.in_flight.insert(machine.to_owned(), at) {
            self.by_grant.remove(&(old, machine.to_owned()));
        }
        self.by_grant.insert((at, machine.to_owned()));
    }

    /// Ends a machine's update; whether it was in flight (so that it is counted once).
    fn finish(&mut self, machine: &str) -> bool {
        match self.in_flight.remove(machine) {
            Some(at) => {
                self.by_grant.remove(&(at, machine.to_owned()));
                true
            }
            None => false,
        }
    }

    /// Machines granted at or before `deadline`.
    fn expired(&self, deadline: Timestamp) -> Vec<String> {
        self.by_grant
            .iter()
            .take_while(|(at, _)| *at <= deadline)
            .map(|(_, m)| m.clone())
            .collect()
    }
}

#[derive(Debug)]
struct ChannelState {
    record: ChannelRecord,
    /// Grant times inside the current period, oldest first.
    grants: VecDeque<Timestamp>,
}

#[derive(Debug)]
struct AppState {
    record: AppRecord,
    packages: HashMap<String, PackageRecord>,
    offers: HashMap<String, Arc<Offer>>,
    channels: HashMap<String, ChannelState>,
    instances: HashMap<String, Instance>,
    /// Each instance as last sent to the store: an instance is written when it changed, and
    /// when only its check-in time did, at most every [`CHECK_IN_WRITE_EVERY`].
    persisted: HashMap<String, Instance>,
    versions: HashMap<String, VersionStats>,
}

/// How stale an instance's check-in time in the store may get while nothing else about it
/// changes: what a restart can set it back by. (Expiry counts in days; the dashboard and the
/// API read the engine's memory, which is always current.)
const CHECK_IN_WRITE_EVERY: Timestamp = 60;

/// How the engine builds URLs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The server's URL as machines reach it, ending in `/`; payloads served by the server are
    /// at `{public_url}v1/payloads/{app}/{version}/{file}`.
    pub public_url: String,
}

/// The server state and the writer that persists it.
pub struct Engine {
    state: Mutex<HashMap<String, AppState>>,
    writer: Writer,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    /// What the Omaha endpoint answered, for `/metrics`.
    pub counters: Counters,
}

/// What the operator sees of a channel.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelView {
    #[serde(flatten)]
    pub record: ChannelRecord,
    pub in_flight: usize,
    pub completes: u64,
    pub errors: u64,
}

/// What the operator sees of an app.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppView {
    #[serde(flatten)]
    pub record: AppRecord,
    pub channels: Vec<ChannelView>,
    pub packages: Vec<PackageRecord>,
    /// Machines per (version, status), sorted.
    pub fleet: Vec<FleetCount>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FleetCount {
    pub version: String,
    pub status: Status,
    pub machines: usize,
}

impl Engine {
    /// Loads the store's state and starts its writer.
    pub fn open(
        mut store: Box<dyn Store>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        let snapshot = store.load()?;
        let mut config = config;
        if !config.public_url.ends_with('/') {
            config.public_url.push('/');
        }
        let state = build_state(snapshot, &config, clock.now());
        Ok(Self {
            state: Mutex::new(state),
            writer: Writer::start(store),
            clock,
            config,
            counters: Counters::default(),
        })
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Answers an Omaha request: one `<app>` per app asked about, in order.
    pub fn handle(&self, request: &omaha::Request) -> Response {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        let apps = request
            .apps
            .iter()
            .map(|app| match state.get_mut(&normalize_id(&app.appid)) {
                Some(app_state) => app_state.answer(app, now, &self.writer),
                None => ResponseApp::error_unknown_application(&app.appid).acknowledge(app),
            })
            .collect();
        drop(state);
        let response = Response::new(apps);
        self.counters.record(request, &response);
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
    pub fn publish(
        &self,
        package: PackageRecord,
        channel: Option<&str>,
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
            let offer = offer_for(&package, &self.config)?;
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

fn build_state(
    snapshot: Snapshot,
    config: &EngineConfig,
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
            if let Ok(offer) = offer_for(&package, config) {
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

fn offer_for(package: &PackageRecord, config: &EngineConfig) -> Result<Offer, EngineError> {
    let sha256 = from_hex(&package.sha256).ok_or_else(|| EngineError::Invalid {
        what: "package sha256",
        value: package.sha256.clone(),
        why: "not 64 hexadecimal digits".into(),
    })?;
    let (codebase, file_name) = match &package.url {
        Some(url) => match url.rsplit_once('/') {
            Some((dir, name)) if !name.is_empty() => (format!("{dir}/"), name.to_owned()),
            _ => {
                return Err(EngineError::Invalid {
                    what: "payload URL",
                    value: url.clone(),
                    why: "it must end in the payload's file name".into(),
                })
            }
        },
        None => (
            format!(
                "{}v1/payloads/{}/{}/",
                config.public_url, package.app_id, package.version
            ),
            package.file_name.clone(),
        ),
    };
    let answer = ResponseApp::update_ok(
        &package.app_id,
        &package.version,
        &codebase,
        &file_name,
        package.size,
        &sha256,
    );
    Ok(Offer {
        min_from_version: package.min_from_version.clone(),
        answer,
    })
}

impl AppState {
    fn new(record: AppRecord) -> Self {
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
    fn persist(&mut self, machine: &str, writer: &Writer) {
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
    fn restore(&mut self, instance: Instance, now: Timestamp) {
        if let (Some(target), Some(granted_at)) = (&instance.target_version, instance.granted_at) {
            let stats = self.versions.entry(target.clone()).or_default();
            match instance.status {
                s if s.in_flight() => stats.start(&instance.machine_id, granted_at),
                Status::Complete => stats.completes += 1,
                s if s.failed() => stats.errors += 1,
                _ => {}
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

    fn channel(&self, name: &str) -> Result<&ChannelState, EngineError> {
        self.channels
            .get(name)
            .ok_or_else(|| EngineError::UnknownChannel {
                app: self.record.id.clone(),
                channel: name.to_owned(),
            })
    }

    fn channel_mut(&mut self, name: &str) -> Result<&mut ChannelState, EngineError> {
        let app = &self.record.id;
        self.channels
            .get_mut(name)
            .ok_or_else(|| EngineError::UnknownChannel {
                app: app.clone(),
                channel: name.to_owned(),
            })
    }

    fn set_version(
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

    /// The `<app>` answer for one app of a request, recording what the machine said.
    fn answer(&mut self, app: &App, now: Timestamp, writer: &Writer) -> ResponseApp {
        self.expire_grants(now, writer);
        let machine = app
            .machineid
            .as_deref()
            .map(normalize_id)
            .filter(|m| !m.is_empty());
        let Some(machine) = machine else {
            // A machine that does not say who it is cannot be counted by the rollout policy:
            // it is acknowledged and offered nothing.
            return match app.updatecheck {
                Some(_) => ResponseApp::noupdate(&app.appid).acknowledge(app),
                None => ResponseApp::ack_only(app),
            };
        };
        self.check_in(&machine, app, now, writer);
        let response = match app.updatecheck {
            None => ResponseApp::ack_only(app),
            Some(_) => match self.decide(&machine, now) {
                Some(offer) => ResponseApp {
                    appid: app.appid.clone(),
                    ..offer.answer.clone()
                }
                .acknowledge(app),
                None => ResponseApp::noupdate(&app.appid).acknowledge(app),
            },
        };
        self.persist(&machine, writer);
        response
    }

    /// Updates the instance from the request's attributes and events.
    fn check_in(&mut self, machine: &str, app: &App, now: Timestamp, writer: &Writer) {
        let version = app.version.as_deref().unwrap_or_default();
        let channel = app
            .track
            .as_deref()
            .filter(|t| !t.is_empty())
            .unwrap_or(DEFAULT_CHANNEL);
        // Taken out of the map while the events change it (they need `self` too), and put
        // back under the same key: no copy of the instance, no new key.
        let (key, mut instance) = self.instances.remove_entry(machine).unwrap_or_else(|| {
            let fresh = Instance {
                machine_id: machine.to_owned(),
                app_id: self.record.id.clone(),
                version: version.to_owned(),
                channel: channel.to_owned(),
                status: Status::Idle,
                target_version: None,
                granted_at: None,
                last_check: now,
                last_error: None,
                boot_id: None,
            };
            (machine.to_owned(), fresh)
        });
        // Installed, then a new boot still on the old version: the new slot did not come up
        // and the boot loader went back to the old one.
        let rebooted_on_old_version = instance.status == Status::Installed
            && instance.target_version.as_deref() != Some(version)
            && app
                .events
                .iter()
                .all(|e| e.eventtype != EventType::UpdateComplete)
            && app.bootid.as_deref().is_some_and(|boot| {
                instance
                    .boot_id
                    .as_deref()
                    .is_some_and(|old| !omaha::ids_equal(old, boot))
            });
        if instance.version != version {
            instance.version = version.to_owned();
        }
        if instance.channel != channel {
            instance.channel = channel.to_owned();
        }
        instance.last_check = now;
        for event in &app.events {
            self.apply_event(&mut instance, event, now, writer);
        }
        if rebooted_on_old_version {
            self.finish(
                &mut instance,
                Status::RolledBack,
                Some("RolledBack".into()),
                now,
                writer,
            );
        } else if instance.target_version.as_deref() == Some(version)
            && (instance.status.in_flight() || instance.status == Status::Error)
        {
            // Running the granted version is success, whether or not the 3/2 event got through.
            self.finish(&mut instance, Status::Complete, None, now, writer);
        }
        if let Some(boot) = &app.bootid {
            instance.boot_id = Some(normalize_id(boot));
        }
        self.instances.insert(key, instance);
    }

    fn apply_event(
        &mut self,
        instance: &mut Instance,
        event: &Event,
        now: Timestamp,
        writer: &Writer,
    ) {
        let description = match (event.eventtype, event.eventresult) {
            (_, EventResult::Error) => errorcode::describe(event.errorcode.unwrap_or(1)),
            (EventType::UpdateDownloadStarted, _) => "DownloadStarted".into(),
            (EventType::UpdateDownloadFinished, _) => "DownloadFinished".into(),
            (EventType::UpdateComplete, EventResult::Success) => "Installed".into(),
            (EventType::UpdateComplete, EventResult::SuccessReboot) => "UpdatedAfterReboot".into(),
            (EventType::UpdateComplete, EventResult::UpdateDeferred) => "Deferred".into(),
            (t, r) => format!("Event({}/{})", u32::from(t), u32::from(r)),
        };
        writer.send(Write::Event(InstanceEvent {
            machine_id: instance.machine_id.clone(),
            app_id: self.record.id.clone(),
            at: now,
            event_type: event.eventtype.into(),
            event_result: event.eventresult.into(),
            error_code: event.errorcode,
            description: description.clone(),
            version: instance.version.clone(),
            previous_version: event.previousversion.clone(),
        }));
        match (event.eventtype, event.eventresult) {
            (_, EventResult::Error) => {
                // Kiln's agent says outright when the boot loader fell back to the old slot.
                let status = if event.errorcode == Some(kiln_codes::BOOT_FALLBACK) {
                    Status::RolledBack
                } else {
                    Status::Error
                };
                self.finish(instance, status, Some(description), now, writer);
            }
            (
                EventType::UpdateDownloadStarted | EventType::UpdateDownloadFinished,
                EventResult::Success,
            ) if instance.status.in_flight() => {
                instance.status = Status::Downloading;
            }
            (EventType::UpdateComplete, EventResult::Success) if instance.status.in_flight() => {
                instance.status = Status::Installed;
            }
            (EventType::UpdateComplete, EventResult::SuccessReboot) => {
                if instance.target_version.is_none() {
                    instance.target_version = Some(instance.version.clone());
                }
                self.finish(instance, Status::Complete, None, now, writer);
            }
            _ => {}
        }
    }

    /// Ends an instance's update with `status`, counting it once for its target version.
    fn finish(
        &mut self,
        instance: &mut Instance,
        status: Status,
        error: Option<String>,
        now: Timestamp,
        writer: &Writer,
    ) {
        let Some(target) = instance.target_version.clone() else {
            instance.status = status;
            instance.last_error = error;
            return;
        };
        let stats = self.versions.entry(target.clone()).or_default();
        let was_in_flight = stats.finish(&instance.machine_id);
        let was_failed = instance.status.failed();
        match status {
            Status::Complete => {
                stats.completes += 1;
                // A machine that timed out and then made it after all is not a failure.
                if was_failed && !was_in_flight {
                    stats.errors = stats.errors.saturating_sub(1);
                }
            }
            s if s.failed() && was_in_flight => stats.errors += 1,
            _ => {}
        }
        instance.status = status;
        instance.last_error = error;
        if status.failed() {
            self.check_halt(&target, now, writer);
        }
    }

    /// Halts each channel offering `version` whose policy's error threshold it has passed.
    fn check_halt(&mut self, version: &str, now: Timestamp, writer: &Writer) {
        let Some(stats) = self.versions.get(version) else {
            return;
        };
        for channel in self.channels.values_mut() {
            let record = &mut channel.record;
            if record.version.as_deref() != Some(version) || record.halted.is_some() {
                continue;
            }
            if let Some(reason) =
                rollout::halt_reason(&record.policy, version, stats.errors, stats.completes)
            {
                record.halted = Some(reason);
                record.updated_at = now;
                writer.send(Write::Channel(record.clone()));
            }
        }
    }

    /// Marks updates not finished within their channel's timeout as failed.
    fn expire_grants(&mut self, now: Timestamp, writer: &Writer) {
        let mut expired = Vec::new();
        for channel in self.channels.values() {
            let timeout = channel.record.policy.update_timeout_secs;
            let Some(version) = &channel.record.version else {
                continue;
            };
            if timeout == 0 {
                continue;
            }
            if let Some(stats) = self.versions.get(version) {
                let deadline = now.saturating_sub(timeout);
                if stats
                    .by_grant
                    .first()
                    .is_some_and(|(at, _)| *at <= deadline)
                {
                    expired.extend(stats.expired(deadline));
                }
            }
        }
        for machine in expired {
            let Some(mut instance) = self.instances.get(&machine).cloned() else {
                continue;
            };
            writer.send(Write::Event(InstanceEvent {
                machine_id: machine.clone(),
                app_id: self.record.id.clone(),
                at: now,
                event_type: 0,
                event_result: 0,
                error_code: None,
                description: "UpdateTimedOut".into(),
                version: instance.version.clone(),
                previous_version: None,
            }));
            self.finish(
                &mut instance,
                Status::Error,
                Some("UpdateTimedOut".into()),
                now,
                writer,
            );
            self.instances.insert(machine.clone(), instance);
            self.persist(&machine, writer);
        }
    }

    /// Whether to offer this machine its channel's version now; grants it if so.
    fn decide(&mut self, machine: &str, now: Timestamp) -> Option<Arc<Offer>> {
        let instance = self.instances.get(machine)?;
        let channel = self.channels.get_mut(&instance.channel)?;
        let version = channel.record.version.clone()?;
        let offer = Arc::clone(self.offers.get(&version)?);
        if rollout::compare_versions(&version, &instance.version) != std::cmp::Ordering::Greater {
            return None;
        }
        if let Some(min) = &offer.min_from_version {
            if rollout::compare_versions(&instance.version, min) == std::cmp::Ordering::Less {
                return None;
            }
        }
        if instance.status.in_flight() && instance.target_version.as_deref() == Some(&version) {
            // Already granted: a machine retrying its download gets the same answer.
            return Some(offer);
        }
        if instance.status == Status::RolledBack
            && instance.target_version.as_deref() == Some(&version)
        {
            // The version did not boot on this machine; offering it again would loop until an
            // operator publishes a fixed one.
            return None;
        }
        let policy = &channel.record.policy;
        if channel.record.paused || channel.record.halted.is_some() {
            return None;
        }
        if !rollout::in_percent(machine, policy.percent) {
            return None;
        }
        let stats = self.versions.entry(version.clone()).or_default();
        if policy.safe_mode && stats.completes == 0 && !stats.in_flight.is_empty() {
            return None;
        }
        if policy.max_updates_per_period > 0 {
            let window_start = now.saturating_sub(policy.period_secs);
            while channel.grants.front().is_some_and(|&at| at <= window_start) {
                channel.grants.pop_front();
            }
            if channel.grants.len() >= policy.max_updates_per_period as usize {
                return None;
            }
        }
        channel.grants.push_back(now);
        stats.start(machine, now);
        let instance = self.instances.get_mut(machine)?;
        instance.status = Status::Granted;
        instance.target_version = Some(version);
        instance.granted_at = Some(now);
        instance.last_error = None;
        Some(offer)
    }

    fn expire(&mut self, now: Timestamp, max_age_secs: u64, writer: &Writer) -> usize {
        let stale: Vec<String> = self
            .instances
            .values()
            .filter(|i| store::is_stale(i, now, max_age_secs))
            .map(|i| i.machine_id.clone())
            .collect();
        for machine in &stale {
            self.persisted.remove(machine);
            if let Some(instance) = self.instances.remove(machine) {
                if let Some(target) = &instance.target_version {
                    if let Some(stats) = self.versions.get_mut(target) {
                        stats.finish(machine);
                    }
                }
            }
            writer.send(Write::DeleteInstance {
                app_id: self.record.id.clone(),
                machine_id: machine.clone(),
            });
        }
        stale.len()
    }

    fn view(&self) -> AppView {
        let mut channels: Vec<ChannelView> = self
            .channels
            .values()
            .map(|c| {
                let stats = c.record.version.as_ref().and_then(|v| self.versions.get(v));
                ChannelView {
                    record: c.record.clone(),
                    in_flight: stats.map_or(0, |s| s.in_flight.len()),
                    completes: stats.map_or(0, |s| s.completes),
                    errors: stats.map_or(0, |s| s.errors),
                }
            })
            .collect();
        channels.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        let mut packages: Vec<PackageRecord> = self.packages.values().cloned().collect();
        packages.sort_by(|a, b| rollout::compare_versions(&a.version, &b.version));
        let mut counts: HashMap<(String, Status), usize> = HashMap::new();
        for instance in self.instances.values() {
            *counts
                .entry((instance.version.clone(), instance.status))
                .or_default() += 1;
        }
        let mut fleet: Vec<FleetCount> = counts
            .into_iter()
            .map(|((version, status), machines)| FleetCount {
                version,
                status,
                machines,
            })
            .collect();
        fleet.sort_by(|a, b| {
            rollout::compare_versions(&a.version, &b.version)
                .then(a.status.as_str().cmp(b.status.as_str()))
        });
        AppView {
            record: self.record.clone(),
            channels,
            packages,
            fleet,
        }
    }
}

/// App ids are stored normalized; anything but hex digits, letters and dashes is refused, since
/// the id becomes part of payload paths and URLs.
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
}

fn checked_app_id(id: &str) -> Result<String, EngineError> {
    let id = normalize_id(id);
    checked_name("app id", &id)?;
    Ok(id)
}

/// Versions, channels and app ids become path components and URL segments.
pub fn checked_name(what: &'static str, value: &str) -> Result<(), EngineError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::Invalid {
            what,
            value: value.to_owned(),
            why: "use 1 to 128 letters, digits, '.', '-', '_' or '+'".into(),
        })
    }
}

fn from_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The payload's SHA-256 in base64, as the postinstall action carries it (for tests and logs).
pub fn sha256_base64(digest: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(digest)
}
