//! What an unauthenticated client can make the server keep. Anyone can post an Omaha request,
//! and every machine id the server has not seen would become an instance kept in memory and in
//! the database. So a machine is recorded only when its id, version and channel are names the
//! server accepts (short, of a small alphabet); new machines are admitted at a bounded rate per
//! source address and per app (a machine refused is answered "no update" and counted in on a
//! later check); and of a request's events only the first few distinct ones are applied.

use std::collections::HashMap;
use std::net::IpAddr;

use kiln_updater::omaha::Event;

use crate::clock::Timestamp;

/// The longest machine id recorded (a systemd machine id is 32 characters, a braced GUID 38).
pub const MAX_MACHINE_ID: usize = 64;

/// The most distinct events of one app in one request that are applied; an agent reports one
/// or two at a time.
pub const MAX_EVENTS_PER_APP: usize = 8;

/// Sources counted within one minute; beyond it, a source not yet counted is refused new
/// machines until the minute ends (a flood from many addresses then meets the app's cap).
const MAX_SOURCES: usize = 65_536;

/// How many machines the server begins to track per minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// New machines per source address per minute.
    pub per_source: u32,
    /// New machines per app per minute, whatever their source.
    pub per_app: u32,
}

impl Default for AdmissionLimits {
    /// A fleet of thousands comes up within an hour or so; a source (one machine, or one NAT)
    /// seldom brings more than a few new machines a second.
    fn default() -> Self {
        Self {
            per_source: 120,
            per_app: 3000,
        }
    }
}

impl AdmissionLimits {
    /// No limit, for tests and benches that make their own fleets.
    pub const UNLIMITED: AdmissionLimits = AdmissionLimits {
        per_source: u32::MAX,
        per_app: u32::MAX,
    };
}

/// The counts of the current minute.
#[derive(Debug, Default)]
pub(super) struct Admission {
    minute: u64,
    per_source: HashMap<IpAddr, u32>,
    per_app: HashMap<String, u32>,
}

impl Admission {
    /// Whether a machine the server does not know may be recorded now; counts it if so.
    /// `source` is `None` for requests that did not come over the network (tests, tools).
    pub(super) fn admit(
        &mut self,
        limits: AdmissionLimits,
        now: Timestamp,
        source: Option<IpAddr>,
        app: &str,
    ) -> bool {
        let minute = now / 60;
        if minute != self.minute {
            self.minute = minute;
            self.per_source.clear();
            self.per_app.clear();
        }
        let app_count = self.per_app.get(app).copied().unwrap_or(0);
        if app_count >= limits.per_app {
            return false;
        }
        if let Some(source) = source {
            let known = self.per_source.contains_key(&source);
            if !known && self.per_source.len() >= MAX_SOURCES {
                return false;
            }
            let count = self.per_source.entry(source).or_insert(0);
            if *count >= limits.per_source {
                return false;
            }
            *count += 1;
        }
        *self.per_app.entry(app.to_owned()).or_insert(0) += 1;
        true
    }
}

/// Whether a normalized machine id may be recorded: 1 to [`MAX_MACHINE_ID`] letters, digits,
/// '-', '_' or '.' (systemd machine ids, GUIDs, host names).
pub fn valid_machine_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_MACHINE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The events of one app of a request that are applied: the first [`MAX_EVENTS_PER_APP`]
/// distinct ones, in order (an event repeated in one request says nothing new).
pub fn events_to_apply(events: &[Event]) -> Vec<&Event> {
    let mut applied: Vec<&Event> = Vec::new();
    for event in events {
        if applied.len() == MAX_EVENTS_PER_APP {
            break;
        }
        if !applied.contains(&event) {
            applied.push(event);
        }
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_updater::omaha::{EventResult, EventType};

    #[test]
    fn new_machines_are_capped_per_source_and_per_app_per_minute() {
        let limits = AdmissionLimits {
            per_source: 2,
            per_app: 3,
        };
        let mut a = Admission::default();
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let two: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(a.admit(limits, 60, Some(one), "app"));
        assert!(a.admit(limits, 61, Some(one), "app"));
        assert!(
            !a.admit(limits, 62, Some(one), "app"),
            "third from one source"
        );
        assert!(a.admit(limits, 63, Some(two), "app"));
        assert!(!a.admit(limits, 64, Some(two), "app"), "fourth for the app");
        assert!(
            a.admit(limits, 65, Some(two), "other"),
            "another app counts apart"
        );
        assert!(a.admit(limits, 120, Some(one), "app"), "a new minute");
        assert!(
            a.admit(limits, 121, None, "app"),
            "no source: the app's cap only"
        );
    }

    #[test]
    fn machine_ids_are_short_and_plain() {
        assert!(valid_machine_id("0123456789abcdef0123456789abcdef"));
        assert!(valid_machine_id("c3b8e9d2-8f0e-4e8b-9d5c-0a3f1f3e2b11"));
        assert!(!valid_machine_id(""));
        assert!(!valid_machine_id(&"a".repeat(MAX_MACHINE_ID + 1)));
        assert!(!valid_machine_id("<script>alert(1)</script>"));
        assert!(!valid_machine_id("a b"));
    }

    #[test]
    fn repeated_events_apply_once_and_many_are_capped() {
        let event = |code| Event {
            eventtype: EventType::UpdateComplete,
            eventresult: EventResult::Error,
            errorcode: Some(code),
            previousversion: None,
        };
        let same = vec![event(7); 1000];
        assert_eq!(events_to_apply(&same).len(), 1);
        let many: Vec<Event> = (0..1000).map(event).collect();
        let applied = events_to_apply(&many);
        assert_eq!(applied.len(), MAX_EVENTS_PER_APP);
        assert_eq!(applied[1].errorcode, Some(1));
    }
}
