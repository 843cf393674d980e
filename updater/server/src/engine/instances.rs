//! Instance tracking: each app of an Omaha request updates its machine's instance from what the
//! machine reports (version, channel, boot id, events) and then gets its answer; instances that
//! stop checking in are forgotten.

use std::net::IpAddr;

use kiln_updater::omaha::{self, normalize_id, App, EventType, ResponseApp};

use crate::clock::Timestamp;
use crate::model::{Instance, Status};
use crate::store::{self, Write};
use crate::writer::Writer;

use super::admission::{events_to_apply, valid_machine_id, Admission, AdmissionLimits};
use super::error::checked_name;
use super::state::AppState;

/// Who may be recorded: the admission counts, their limits and the request's source.
pub(super) struct Gate<'a> {
    pub(super) admission: &'a mut Admission,
    pub(super) limits: AdmissionLimits,
    pub(super) source: Option<IpAddr>,
}

/// The channel of a machine that names none (`track` absent).
pub const DEFAULT_CHANNEL: &str = "stable";

impl AppState {
    /// The `<app>` answer for one app of a request, recording what the machine said.
    /// With it, whether the machine was recorded (see [`Gate`]).
    pub(super) fn answer(
        &mut self,
        app: &App,
        now: Timestamp,
        writer: &Writer,
        gate: &mut Gate,
    ) -> (ResponseApp, bool) {
        self.expire_grants(now, writer);
        let Some(machine) = self.admitted(app, now, gate) else {
            // A machine that does not say who it is, in names the server keeps, cannot be
            // counted by the rollout policy: it is acknowledged and offered nothing.
            let response = match app.updatecheck {
                Some(_) => ResponseApp::noupdate(&app.appid).acknowledge(app),
                None => ResponseApp::ack_only(app),
            };
            return (response, false);
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
        (response, true)
    }

    /// The normalized id of the machine of `app` if it may be recorded: a known machine, or a
    /// new one the gate admits; its id, version and channel valid names.
    fn admitted(&self, app: &App, now: Timestamp, gate: &mut Gate) -> Option<String> {
        let machine = normalize_id(app.machineid.as_deref()?);
        let version = app.version.as_deref().unwrap_or_default();
        let channel = app.track.as_deref().unwrap_or_default();
        let valid = valid_machine_id(&machine)
            && (version.is_empty() || checked_name("version", version).is_ok())
            && (channel.is_empty() || checked_name("channel", channel).is_ok());
        if !valid {
            return None;
        }
        if self.instances.contains_key(&machine)
            || gate
                .admission
                .admit(gate.limits, now, gate.source, &self.record.id)
        {
            Some(machine)
        } else {
            None
        }
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
                first_seen: now,
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
        for event in events_to_apply(&app.events) {
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

    pub(super) fn expire(&mut self, now: Timestamp, max_age_secs: u64, writer: &Writer) -> usize {
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
}
