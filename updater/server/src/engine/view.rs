//! What the operator sees of an app: its channels with their rollout progress, its packages, and
//! the fleet counted by version and status. Built from the engine's memory for the admin API, the
//! dashboard and the metrics.

use std::collections::HashMap;

use crate::model::{AppRecord, ChannelRecord, PackageRecord, Status};
use crate::rollout;

use super::state::AppState;

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

impl AppState {
    pub(super) fn view(&self) -> AppView {
        let mut channels: Vec<ChannelView> = self
            .channels
            .values()
            .map(|c| {
                let stats = c.record.version.as_ref().and_then(|v| self.versions.get(v));
                ChannelView {
                    record: c.record.clone(),
                    in_flight: stats.map_or(0, |s| s.in_flight.len()),
                    completes: stats.map_or(0, |s| s.all.completes),
                    errors: stats.map_or(0, |s| s.all.errors),
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
