//! Progress of one version across the fleet: the machines granted it and not finished (in grant
//! order, so timeouts are found without a scan), and how many completed or failed, in all and
//! among machines the server had known for a while ([`known`]). Safe mode, halting and the
//! operator's view read it.

use std::collections::{BTreeSet, HashMap};

use crate::clock::Timestamp;
use crate::model::{Instance, Status};

/// How long the server must have known a machine before it takes a place in a limited rollout
/// (`max_updates_per_period`, `safe_mode`) and before its outcomes count toward safe mode and
/// halting: anyone can make up machine ids, but not an hour of history for each (new ones are
/// admitted at a bounded rate, `admission`). Without limits a new machine updates at once.
pub const KNOWN_AFTER: Timestamp = 3600;

/// Whether the server had known `instance` for [`KNOWN_AFTER`] at `at`.
pub(super) fn known(instance: &Instance, at: Timestamp) -> bool {
    at.saturating_sub(instance.first_seen) >= KNOWN_AFTER
}

/// Progress of one version across the fleet, for safe mode and halting.
#[derive(Debug, Default)]
pub(super) struct VersionStats {
    /// Machines granted this version and not finished, with the grant time.
    pub(super) in_flight: HashMap<String, Timestamp>,
    /// The same, ordered by grant time, so timeouts are found without a scan.
    pub(super) by_grant: BTreeSet<(Timestamp, String)>,
    /// Every finished update, for the operator.
    pub(super) all: Tally,
    /// Those of machines known when granted (`grants::known`): what safe mode and halting go by.
    pub(super) known: Tally,
}

/// Finished updates of a version.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Tally {
    pub(super) completes: u64,
    pub(super) errors: u64,
}

impl Tally {
    /// Counts an update that ended with `status`: a success (which takes back a failure counted
    /// for a machine that timed out and then made it after all), or a failure once.
    fn count(&mut self, status: Status, was_failed: bool, was_in_flight: bool) {
        match status {
            Status::Complete => {
                self.completes += 1;
                if was_failed && !was_in_flight {
                    self.errors = self.errors.saturating_sub(1);
                }
            }
            s if s.failed() && was_in_flight => self.errors += 1,
            _ => {}
        }
    }
}

impl VersionStats {
    pub(super) fn start(&mut self, machine: &str, at: Timestamp) {
        if let Some(old) = self.in_flight.insert(machine.to_owned(), at) {
            self.by_grant.remove(&(old, machine.to_owned()));
        }
        self.by_grant.insert((at, machine.to_owned()));
    }

    /// Ends a machine's update; whether it was in flight (so that it is counted once).
    pub(super) fn finish(&mut self, machine: &str) -> bool {
        match self.in_flight.remove(machine) {
            Some(at) => {
                self.by_grant.remove(&(at, machine.to_owned()));
                true
            }
            None => false,
        }
    }

    /// Counts a finished update in every tally, and in the known machines' when `known`.
    pub(super) fn count(
        &mut self,
        status: Status,
        was_failed: bool,
        was_in_flight: bool,
        known: bool,
    ) {
        self.all.count(status, was_failed, was_in_flight);
        if known {
            self.known.count(status, was_failed, was_in_flight);
        }
    }

    /// Machines granted at or before `deadline`.
    pub(super) fn expired(&self, deadline: Timestamp) -> Vec<String> {
        self.by_grant
            .iter()
            .take_while(|(at, _)| *at <= deadline)
            .map(|(_, m)| m.clone())
            .collect()
    }
}
