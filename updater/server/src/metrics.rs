//! Prometheus metrics in the text exposition format: counters of what the Omaha endpoint
//! answered, and gauges of the fleet by app, channel version, machine version and status.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::counters::Counters;
use crate::engine::view::AppView;

/// The whole exposition: counters, then per-app gauges.
pub fn render(counters: &Counters, apps: &[AppView]) -> String {
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, value: &AtomicU64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
    };
    counter(
        &mut out,
        "kiln_omaha_requests_total",
        "Omaha requests answered.",
        &counters.requests,
    );
    counter(
        &mut out,
        "kiln_omaha_rejected_total",
        "Omaha bodies refused as malformed or too large.",
        &counters.rejected,
    );
    counter(
        &mut out,
        "kiln_omaha_update_checks_total",
        "Update checks received.",
        &counters.update_checks,
    );
    counter(
        &mut out,
        "kiln_omaha_updates_offered_total",
        "Update checks answered with an update.",
        &counters.updates_offered,
    );
    counter(
        &mut out,
        "kiln_omaha_unknown_apps_total",
        "Apps answered error-unknownApplication.",
        &counters.unknown_apps,
    );
    counter(
        &mut out,
        "kiln_omaha_events_total",
        "Events reported by machines.",
        &counters.events,
    );
    counter(
        &mut out,
        "kiln_omaha_error_events_total",
        "Error events reported by machines.",
        &counters.error_events,
    );
    counter(
        &mut out,
        "kiln_omaha_unrecorded_total",
        "Check-ins answered without recording the machine: no id, an id, version or channel the server does not keep, or more new machines than admitted per minute.",
        &counters.unrecorded,
    );

    let _ = writeln!(
        out,
        "# HELP kiln_instances Machines by app, version and status.\n# TYPE kiln_instances gauge"
    );
    for app in apps {
        for count in &app.fleet {
            let _ = writeln!(
                out,
                "kiln_instances{{app=\"{}\",version=\"{}\",status=\"{}\"}} {}",
                label(&app.record.id),
                label(&count.version),
                count.status.as_str(),
                count.machines
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP kiln_channel_state Per channel: 1 when paused or halted, with its version.\n# TYPE kiln_channel_state gauge"
    );
    for app in apps {
        for channel in &app.channels {
            let r = &channel.record;
            let version = r.version.as_deref().unwrap_or("");
            for (state, on) in [("paused", r.paused), ("halted", r.halted.is_some())] {
                let _ = writeln!(
                    out,
                    "kiln_channel_state{{app=\"{}\",channel=\"{}\",version=\"{}\",state=\"{state}\"}} {}",
                    label(&app.record.id),
                    label(&r.name),
                    label(version),
                    u8::from(on)
                );
            }
        }
    }
    out
}

/// Escapes a label value as the exposition format asks (backslash, quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
