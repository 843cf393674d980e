//! Rollout decisions: whether a machine is granted its channel's version now (percent, pause and
//! halt, safe mode, updates per period), and how a grant ends (complete, failed, timed out). A
//! channel halts when its version fails more than its policy allows.

use std::sync::Arc;

use crate::clock::Timestamp;
use crate::model::{Instance, InstanceEvent, Status};
use crate::rollout;
use crate::store::Write;
use crate::writer::Writer;

use super::offer::Offer;
use super::state::AppState;
use super::stats::known;

impl AppState {
    /// Ends an instance's update with `status`, counting it once for its target version.
    pub(super) fn finish(
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
        // What a machine the server had just met reports does not steer the rollout.
        let known = known(instance, instance.granted_at.unwrap_or(now));
        stats.count(status, was_failed, was_in_flight, known);
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
            if let Some(reason) = rollout::halt_reason(
                &record.policy,
                version,
                stats.known.errors,
                stats.known.completes,
            ) {
                record.halted = Some(reason);
                record.updated_at = now;
                writer.send(Write::Channel(record.clone()));
            }
        }
    }

    /// Marks updates not finished within their channel's timeout as failed.
    pub(super) fn expire_grants(&mut self, now: Timestamp, writer: &Writer) {
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
    pub(super) fn decide(&mut self, machine: &str, now: Timestamp) -> Option<Arc<Offer>> {
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
        if (policy.safe_mode || policy.max_updates_per_period > 0) && !known(instance, now) {
            // A limited rollout's places go to machines the server has known for a while; a
            // new one is granted once it has been (see `KNOWN_AFTER`).
            return None;
        }
        if !rollout::in_percent(machine, policy.percent) {
            return None;
        }
        let stats = self.versions.entry(version.clone()).or_default();
        if policy.safe_mode && stats.known.completes == 0 && !stats.in_flight.is_empty() {
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
}
