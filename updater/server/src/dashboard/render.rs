//! The dashboard's HTML, written out as strings: every value from the database or a request goes
//! through [`escape`](super::text::escape), lists come sorted, and times are printed from the engine's clock, so the
//! same state always renders the same page.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kiln_updater::omaha::normalize_id;

use crate::clock::Timestamp;
use crate::engine::view::{AppView, ChannelView};
use crate::model::{Instance, InstanceEvent, Policy, Status};
use crate::rollout::compare_versions;

use super::chart::color;
use super::text::{datetime, escape};
use super::{AppData, Session};

/// The most machines an app page lists; the rest are counted.
pub const MACHINES_SHOWN: usize = 500;

/// The app page's path. App ids are normalized to letters, digits and `.-_+` by the engine, but
/// anything else is percent-encoded so the path is always a valid `Location`.
pub fn app_href(app: &str) -> String {
    let mut out = String::from("/dashboard/apps/");
    for byte in normalize_id(app).bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// `3 min ago`, for check-in times.
pub(super) fn ago(now: Timestamp, at: Timestamp) -> String {
    let secs = now.saturating_sub(at);
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// The page frame: head, the stylesheet, a header with the pages and the logout form when
/// logged in.
pub(super) fn layout(title: &str, session: Option<&Session>, body: &str) -> String {
    let logout = match session {
        Some(s) => format!(
            "<nav><a href=\"/dashboard/\">Apps</a><a href=\"{}\">etcd discovery</a></nav>\
             <form method=\"post\" action=\"/dashboard/logout\" class=\"logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Log out</button></form>",
            DISCOVERY_PAGE,
            escape(&s.csrf)
        ),
        None => String::new(),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} · Kiln updates</title>\n\
         <link rel=\"stylesheet\" href=\"/dashboard/style.css\">\n</head>\n<body>\n\
         <header><a href=\"/dashboard/\" class=\"brand\">Kiln update server</a>{logout}</header>\n\
         <main>\n{body}</main>\n</body>\n</html>\n",
        title = escape(title)
    )
}

/// The login form; `message` says why the last attempt failed.
pub fn login_page(message: Option<&str>) -> String {
    let note = message.map_or(String::new(), |m| {
        format!("<p class=\"error\">{}</p>\n", escape(m))
    });
    let body = format!(
        "<h1>Log in</h1>\n{note}<p>The dashboard shows the fleet and changes rollouts: \
         enter the server's admin token.</p>\n\
         <form method=\"post\" action=\"/dashboard/login\" class=\"login\">\n\
         <label>Admin token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" required></label>\n\
         <button>Log in</button>\n</form>\n"
    );
    layout("Log in", None, &body)
}

/// A page with one message, for refusals and errors.
pub fn message_page(title: &str, message: &str, session: Option<&Session>) -> String {
    let body = format!(
        "<h1>{}</h1>\n<p class=\"error\">{}</p>\n<p><a href=\"/dashboard/\">Back to the dashboard</a></p>\n",
        escape(title),
        escape(message)
    );
    layout(title, session, &body)
}

/// `/dashboard/`: each app with its channels.
pub fn overview(apps: &[AppView], now: Timestamp, session: &Session) -> String {
    let mut body = String::from("<h1>Apps</h1>\n");
    if apps.is_empty() {
        body.push_str(
            "<p>No app yet: publish a payload with <code>cargo xtask publish</code>.</p>\n",
        );
    }
    for app in apps {
        let machines: usize = app.fleet.iter().map(|f| f.machines).sum();
        let _ = write!(
            body,
            "<section class=\"app\">\n<h2><a href=\"{}\">{}</a></h2>\n<p class=\"id\">{} · {machines} machine(s)</p>\n",
            escape(&app_href(&app.record.id)),
            escape(&app.record.name),
            escape(&app.record.id),
        );
        body.push_str(&channels_table(app, &[], now, None));
        body.push_str("</section>\n");
    }
    layout("Apps", Some(session), &body)
}

/// `/dashboard/apps/<app>`: channels with actions, fleet counts, the chart, errors, machines.
pub fn app_page(data: &AppData, session: &Session) -> String {
    let app = &data.view;
    let mut body = format!(
        "<h1>{}</h1>\n<p class=\"id\">app id {}</p>\n<h2>Channels</h2>\n",
        escape(&app.record.name),
        escape(&app.record.id)
    );
    body.push_str(&channels_table(
        app,
        &data.instances,
        data.now,
        Some(&session.csrf),
    ));
    body.push_str(&promote_form(app, &session.csrf));
    body.push_str(&fleet_table(app));
    body.push_str(&chart_section(data));
    body.push_str(&errors_table(&data.errors));
    body.push_str(&machines_table(&data.instances, data.now));
    layout(&app.record.name, Some(session), &body)
}

/// One row per channel: version, state, policy, progress; with pause/resume when `csrf` is given.
fn channels_table(
    app: &AppView,
    instances: &[Instance],
    now: Timestamp,
    csrf: Option<&str>,
) -> String {
    if app.channels.is_empty() {
        return "<p>No channel yet.</p>\n".into();
    }
    let action_head = if csrf.is_some() {
        "<th>action</th>"
    } else {
        ""
    };
    let mut out = format!(
        "<table class=\"channels\">\n<thead><tr><th>channel</th><th>version</th><th>state</th>\
         <th>policy</th><th>in flight</th><th>complete</th><th>failed</th><th>granted this period</th>\
         {action_head}</tr></thead>\n<tbody>\n"
    );
    for channel in &app.channels {
        let granted = match csrf {
            Some(_) => granted_this_period(channel, instances, now).to_string(),
            None => "–".into(),
        };
        let _ = write!(
            out,
            "<tr data-channel=\"{name}\"><td>{name}</td><td class=\"version\">{version}</td>\
             <td class=\"state {state_class}\">{state}</td><td>{policy}</td><td>{}</td><td>{}</td><td>{}</td><td>{granted}</td>",
            channel.in_flight,
            channel.completes,
            channel.errors,
            name = escape(&channel.record.name),
            version = escape(channel.record.version.as_deref().unwrap_or("–")),
            state_class = state_class(channel),
            state = escape(&rollout_state(channel)),
            policy = escape(&policy_summary(&channel.record.policy)),
        );
        if let Some(csrf) = csrf {
            out.push_str("<td>");
            out.push_str(&pause_form(app, channel, csrf));
            out.push_str("</td>");
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

/// Updates of the channel's version granted within its policy's period, as the rate limit
/// counts them.
fn granted_this_period(channel: &ChannelView, instances: &[Instance], now: Timestamp) -> usize {
    let record = &channel.record;
    let since = now.saturating_sub(record.policy.period_secs);
    instances
        .iter()
        .filter(|i| i.channel == record.name)
        .filter(|i| i.target_version.is_some() && i.target_version == record.version)
        .filter(|i| i.granted_at.is_some_and(|at| at > since))
        .count()
}

fn state_class(channel: &ChannelView) -> &'static str {
    let record = &channel.record;
    if record.halted.is_some() {
        "halted"
    } else if record.paused {
        "paused"
    } else {
        "active"
    }
}

/// `paused`, `halted: <why>`, `safe mode (waiting for a first success)` or `active`.
pub fn rollout_state(channel: &ChannelView) -> String {
    let record = &channel.record;
    let mut parts = Vec::new();
    if record.paused {
        parts.push("paused".to_owned());
    }
    if let Some(why) = &record.halted {
        parts.push(format!("halted: {why}"));
    }
    if record.policy.safe_mode {
        if channel.completes == 0 {
            parts.push("safe mode (one at a time until a first success)".into());
        } else {
            parts.push("safe mode passed".into());
        }
    }
    if !record.paused && record.halted.is_none() {
        parts.insert(0, "active".into());
    }
    parts.join("; ")
}

fn policy_summary(policy: &Policy) -> String {
    let mut parts = vec![format!("{}% of machines", policy.percent)];
    if policy.max_updates_per_period > 0 {
        parts.push(format!(
            "at most {} per {}",
            policy.max_updates_per_period,
            duration(policy.period_secs)
        ));
    }
    if policy.update_timeout_secs > 0 {
        parts.push(format!("timeout {}", duration(policy.update_timeout_secs)));
    }
    if let Some(rate) = policy.halt_error_rate {
        parts.push(format!(
            "halt above {:.0}% errors (after {})",
            rate * 100.0,
            policy.halt_min_errors
        ));
    }
    parts.join(", ")
}

fn duration(secs: u64) -> String {
    match secs {
        s if s > 0 && s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s > 0 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

fn pause_form(app: &AppView, channel: &ChannelView, csrf: &str) -> String {
    let record = &channel.record;
    let (action, label) = if record.paused || record.halted.is_some() {
        ("resume", "Resume")
    } else {
        ("pause", "Pause")
    };
    format!(
        "<form method=\"post\" action=\"{}/channels/{}/{action}\" class=\"inline\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button name=\"do\" value=\"{action}\">{label}</button></form>",
        escape(&app_href(&app.record.id)),
        escape(&record.name),
        escape(csrf)
    )
}

fn promote_form(app: &AppView, csrf: &str) -> String {
    let sources: Vec<&ChannelView> = app
        .channels
        .iter()
        .filter(|c| c.record.version.is_some())
        .collect();
    if sources.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "<form method=\"post\" action=\"{}/promote\" class=\"promote\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\n<label>Promote the version of \
         <select name=\"from\">",
        escape(&app_href(&app.record.id)),
        escape(csrf)
    );
    for channel in &sources {
        let _ = write!(
            out,
            "<option value=\"{name}\">{name} ({version})</option>",
            name = escape(&channel.record.name),
            version = escape(channel.record.version.as_deref().unwrap_or_default())
        );
    }
    out.push_str(
        "</select></label>\n<label>to channel <input name=\"to\" list=\"channel-names\" required \
         pattern=\"[A-Za-z0-9._+\\-]+\"></label>\n<datalist id=\"channel-names\">",
    );
    for channel in &app.channels {
        let _ = write!(
            out,
            "<option value=\"{}\"></option>",
            escape(&channel.record.name)
        );
    }
    out.push_str("</datalist>\n<button>Promote</button>\n</form>\n");
    out
}

/// Machines per version (rows) and status (columns).
fn fleet_table(app: &AppView) -> String {
    let mut rows: BTreeMap<&str, [usize; Status::ALL.len()]> = BTreeMap::new();
    for count in &app.fleet {
        let column = Status::ALL
            .iter()
            .position(|s| *s == count.status)
            .unwrap_or_default();
        rows.entry(count.version.as_str()).or_default()[column] += count.machines;
    }
    let mut versions: Vec<&str> = rows.keys().copied().collect();
    versions.sort_by(|a, b| compare_versions(a, b).then(a.cmp(b)));
    let mut out = String::from("<h2>Machines per version and status</h2>\n");
    if versions.is_empty() {
        out.push_str("<p>No machine has checked in yet.</p>\n");
        return out;
    }
    out.push_str("<table class=\"fleet\">\n<thead><tr><th>version</th>");
    for status in Status::ALL {
        let _ = write!(out, "<th>{}</th>", status.as_str());
    }
    out.push_str("<th>total</th></tr></thead>\n<tbody>\n");
    let mut totals = [0usize; Status::ALL.len()];
    for version in versions {
        let counts = rows[version];
        let _ = write!(
            out,
            "<tr data-version=\"{v}\"><td class=\"version\">{v}</td>",
            v = escape(display_version(version))
        );
        for (i, n) in counts.iter().enumerate() {
            totals[i] += n;
            let _ = write!(out, "<td>{n}</td>");
        }
        let _ = writeln!(out, "<td>{}</td></tr>", counts.iter().sum::<usize>());
    }
    out.push_str("<tr class=\"total\"><td>all</td>");
    for n in totals {
        let _ = write!(out, "<td>{n}</td>");
    }
    let _ = write!(
        out,
        "<td class=\"machines-total\">{}</td></tr>\n</tbody>\n</table>\n",
        totals.iter().sum::<usize>()
    );
    out
}

fn display_version(version: &str) -> &str {
    if version.is_empty() {
        "unknown"
    } else {
        version
    }
}

fn chart_section(data: &AppData) -> String {
    let chart = &data.chart;
    let mut out = String::from("<h2>Versions over time</h2>\n<figure>\n");
    out.push_str(&chart.svg());
    out.push_str("\n<figcaption><ul class=\"legend\">");
    for (index, series) in chart.series.iter().enumerate() {
        let _ = write!(
            out,
            "<li><svg width=\"12\" height=\"12\" aria-hidden=\"true\"><rect width=\"12\" height=\"12\" fill=\"{}\"/></svg> {}</li>",
            color(index),
            escape(&series.version)
        );
    }
    out.push_str("</ul>");
    if chart.machines_shown < chart.machines_total {
        let _ = write!(
            out,
            "<p>History of the first {} of {} machines (by id).</p>",
            chart.machines_shown, chart.machines_total
        );
    }
    out.push_str("</figcaption>\n</figure>\n");
    out
}

fn errors_table(errors: &[InstanceEvent]) -> String {
    let mut out = String::from("<h2>Recent errors</h2>\n");
    if errors.is_empty() {
        out.push_str("<p>No error reported.</p>\n");
        return out;
    }
    out.push_str(
        "<table class=\"errors\">\n<thead><tr><th>when (UTC)</th><th>machine</th><th>version</th>\
         <th>code</th><th>error</th></tr></thead>\n<tbody>\n",
    );
    for event in errors {
        let code = event.error_code.map_or("–".to_owned(), |c| c.to_string());
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"machine\">{}</td><td>{}</td><td>{}</td><td class=\"error-name\">{}</td></tr>",
            datetime(event.at),
            escape(&event.machine_id),
            escape(display_version(&event.version)),
            escape(&code),
            escape(&event.description)
        );
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

fn machines_table(instances: &[Instance], now: Timestamp) -> String {
    let mut out = format!("<h2>Machines ({})</h2>\n", instances.len());
    if instances.is_empty() {
        out.push_str("<p>No machine has checked in yet.</p>\n");
        return out;
    }
    out.push_str(
        "<table class=\"machines\">\n<thead><tr><th>machine id</th><th>channel</th><th>version</th>\
         <th>status</th><th>target</th><th>last check-in (UTC)</th><th>last error</th></tr></thead>\n<tbody>\n",
    );
    for instance in instances.iter().take(MACHINES_SHOWN) {
        let _ = writeln!(
            out,
            "<tr><td class=\"machine\">{}</td><td>{}</td><td>{}</td><td class=\"status {status}\">{status}</td>\
             <td>{}</td><td>{} ({})</td><td>{}</td></tr>",
            escape(&instance.machine_id),
            escape(&instance.channel),
            escape(display_version(&instance.version)),
            escape(instance.target_version.as_deref().unwrap_or("–")),
            datetime(instance.last_check),
            ago(now, instance.last_check),
            escape(instance.last_error.as_deref().unwrap_or("–")),
            status = instance.status.as_str(),
        );
    }
    out.push_str("</tbody>\n</table>\n");
    if instances.len() > MACHINES_SHOWN {
        let _ = writeln!(
            out,
            "<p>The first {MACHINES_SHOWN} of {} machines, by id; the admin API lists them all.</p>",
            instances.len()
        );
    }
    out
}

/// The discovery tokens' page (in the navigation here, its content in `discovery.rs`).
pub const DISCOVERY_PAGE: &str = "/dashboard/discovery";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_links_are_always_valid_paths() {
        assert_eq!(app_href("{ABC-1}"), "/dashboard/apps/abc-1");
        assert_eq!(app_href("a b/c"), "/dashboard/apps/a%20b%2Fc");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(3600), "1 h");
        assert_eq!(duration(86_400 * 2), "2 d");
        assert_eq!(duration(90), "90 s");
    }
}
