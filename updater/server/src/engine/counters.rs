//! What the Omaha endpoint answered since the server started: requests, update checks, offers,
//! unknown apps, events and refused bodies. The engine counts every request it answers; the
//! HTTP face counts the bodies it refuses before they reach the engine; `metrics` prints them.

use std::sync::atomic::{AtomicU64, Ordering};

use kiln_updater::omaha::{EventResult, Request, Response};

/// Counters of the Omaha endpoint since the server started.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub rejected: AtomicU64,
    pub update_checks: AtomicU64,
    pub updates_offered: AtomicU64,
    pub unknown_apps: AtomicU64,
    pub events: AtomicU64,
    pub error_events: AtomicU64,
    /// `<app>`s of known apps whose machine was not recorded: no id, a name the server does not
    /// keep, or more new machines than admitted this minute.
    pub unrecorded: AtomicU64,
}

impl Counters {
    /// Counts one answered request.
    pub fn record(&self, request: &Request, response: &Response, unrecorded: usize) {
        let add = |counter: &AtomicU64, n: usize| {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        };
        add(&self.requests, 1);
        add(&self.unrecorded, unrecorded);
        for app in &request.apps {
            add(&self.update_checks, usize::from(app.updatecheck.is_some()));
            add(&self.events, app.events.len());
            let errors = app
                .events
                .iter()
                .filter(|e| e.eventresult == EventResult::Error)
                .count();
            add(&self.error_events, errors);
        }
        for app in &response.apps {
            let unknown = app.status.as_deref() == Some("error-unknownApplication");
            add(&self.unknown_apps, usize::from(unknown));
            let offered = app.updatecheck.as_ref().is_some_and(|c| c.status == "ok");
            add(&self.updates_offered, usize::from(offered));
        }
    }

    /// Counts a body refused as malformed or too large.
    pub fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }
}
