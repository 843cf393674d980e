//! A direct writer for responses. The server writes one per update check, and going through
//! quick-xml's serde serializer cost more than everything else the server does for a check; the
//! response's shape is small and fixed, so it is written out by hand here, byte for byte as the
//! serde path writes it (a test checks both agree).

use std::fmt::Write as _;

use super::{Action, DayStart, Manifest, Package, Response, ResponseApp, UpdateCheckResponse};

/// `value` escaped for a double-quoted attribute, as quick-xml escapes it: `<`, `>`, `&`, `"`,
/// and the whitespace a reader would normalize away (tab, line feed, carriage return).
fn push_escaped(out: &mut String, value: &str) {
    let mut rest = value;
    while let Some(at) = rest.find(['<', '>', '&', '"', '\t', '\n', '\r']) {
        out.push_str(&rest[..at]);
        out.push_str(match rest.as_bytes()[at] {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'&' => "&amp;",
            b'"' => "&quot;",
            b'\t' => "&#9;",
            b'\n' => "&#10;",
            _ => "&#13;",
        });
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
}

/// Writes `<name attr="…"…>`, the children, and `</name>`, or `<name …/>` when `children`
/// writes nothing; each element on its own line, indented two spaces per level.
fn element(
    out: &mut String,
    depth: usize,
    name: &str,
    attrs: &[(&str, Option<&str>)],
    children: impl FnOnce(&mut String, usize),
) {
    indent(out, depth);
    out.push('<');
    out.push_str(name);
    for (key, value) in attrs {
        if let Some(value) = value {
            out.push(' ');
            out.push_str(key);
            out.push_str("=\"");
            push_escaped(out, value);
            out.push('"');
        }
    }
    let mark = out.len();
    out.push_str(">\n");
    let body = out.len();
    children(out, depth + 1);
    if out.len() == body {
        out.truncate(mark);
        out.push_str("/>\n");
    } else {
        indent(out, depth);
        out.push_str("</");
        out.push_str(name);
        out.push_str(">\n");
    }
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

/// The whole document: declaration, `<response>`, a final newline.
pub(super) fn response(response: &Response) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str(super::XML_DECLARATION);
    out.push('\n');
    let attrs = [
        ("protocol", Some(response.protocol.as_str())),
        ("server", response.server.as_deref()),
    ];
    element(&mut out, 0, "response", &attrs, |out, depth| {
        if let Some(daystart) = &response.daystart {
            day_start(out, depth, daystart);
        }
        for app in &response.apps {
            response_app(out, depth, app);
        }
    });
    out
}

fn day_start(out: &mut String, depth: usize, daystart: &DayStart) {
    let seconds = daystart.elapsed_seconds.map(|n| n.to_string());
    let days = daystart.elapsed_days.map(|n| n.to_string());
    let attrs = [
        ("elapsed_seconds", seconds.as_deref()),
        ("elapsed_days", days.as_deref()),
    ];
    element(out, depth, "daystart", &attrs, |_, _| {});
}

fn response_app(out: &mut String, depth: usize, app: &ResponseApp) {
    let attrs = [
        ("appid", Some(app.appid.as_str())),
        ("status", app.status.as_deref()),
    ];
    element(out, depth, "app", &attrs, |out, depth| {
        if let Some(ping) = &app.ping {
            element(
                out,
                depth,
                "ping",
                &[("status", Some(&ping.status))],
                |_, _| {},
            );
        }
        if let Some(check) = &app.updatecheck {
            update_check(out, depth, check);
        }
        for event in &app.events {
            element(
                out,
                depth,
                "event",
                &[("status", Some(&event.status))],
                |_, _| {},
            );
        }
    });
}

fn update_check(out: &mut String, depth: usize, check: &UpdateCheckResponse) {
    let attrs = [("status", Some(check.status.as_str()))];
    element(out, depth, "updatecheck", &attrs, |out, depth| {
        if !check.urls.is_empty() {
            element(out, depth, "urls", &[], |out, depth| {
                for url in &check.urls {
                    let attrs = [("codebase", Some(url.codebase.as_str()))];
                    element(out, depth, "url", &attrs, |_, _| {});
                }
            });
        }
        if let Some(manifest) = &check.manifest {
            self::manifest(out, depth, manifest);
        }
    });
}

fn manifest(out: &mut String, depth: usize, manifest: &Manifest) {
    let attrs = [("version", Some(manifest.version.as_str()))];
    element(out, depth, "manifest", &attrs, |out, depth| {
        if !manifest.packages.is_empty() {
            element(out, depth, "packages", &[], |out, depth| {
                for p in &manifest.packages {
                    package(out, depth, p);
                }
            });
        }
        if !manifest.actions.is_empty() {
            element(out, depth, "actions", &[], |out, depth| {
                for a in &manifest.actions {
                    action(out, depth, a);
                }
            });
        }
    });
}

fn package(out: &mut String, depth: usize, package: &Package) {
    let mut size = String::new();
    let _ = write!(size, "{}", package.size);
    let attrs = [
        ("name", Some(package.name.as_str())),
        ("hash", package.hash.as_deref()),
        ("hash_sha256", package.hash_sha256.as_deref()),
        ("size", Some(size.as_str())),
        (
            "required",
            Some(if package.required { "true" } else { "false" }),
        ),
    ];
    element(out, depth, "package", &attrs, |_, _| {});
}

fn action(out: &mut String, depth: usize, action: &Action) {
    let attrs = [
        ("event", Some(action.event.as_str())),
        ("sha256", action.sha256.as_deref()),
        ("needsadmin", action.needsadmin.as_deref()),
        ("IsDeltaPayload", action.is_delta_payload.as_deref()),
        (
            "DisablePayloadBackoff",
            action.disable_payload_backoff.as_deref(),
        ),
        (
            "MaxFailureCountPerUrl",
            action.max_failure_count_per_url.as_deref(),
        ),
        ("deadline", action.deadline.as_deref()),
    ];
    element(out, depth, "action", &attrs, |_, _| {});
}

#[cfg(test)]
mod tests {
    use super::super::{
        write_document, Ack, Action, DayStart, Manifest, Package, Response, ResponseApp,
        UpdateCheckResponse, Url,
    };

    /// Responses of every shape, with the characters XML escapes in every kind of value.
    fn samples() -> Vec<Response> {
        let hostile = "a<b>&c\"d'e\n f\tg\rh";
        let full = ResponseApp::update_ok(
            "{87efface-864d-49a5-9bb3-4b050a7c227a}",
            "1.2.4",
            "http://127.0.0.1:8470/v1/payloads/",
            "update.payload",
            382_137_917,
            &[0x5a; 32],
        );
        let mut everything = full.clone();
        everything.ping = Some(Ack::ok());
        everything.events = vec![
            Ack::ok(),
            Ack {
                status: hostile.into(),
            },
        ];
        if let Some(check) = everything.updatecheck.as_mut() {
            check.urls.push(Url {
                codebase: hostile.into(),
            });
            if let Some(manifest) = check.manifest.as_mut() {
                manifest.packages.push(Package {
                    name: hostile.into(),
                    hash: Some("sha1==".into()),
                    hash_sha256: None,
                    size: 0,
                    required: false,
                });
                manifest.actions.push(Action {
                    event: hostile.into(),
                    needsadmin: Some("false".into()),
                    is_delta_payload: Some("false".into()),
                    max_failure_count_per_url: Some("3".into()),
                    deadline: Some("now".into()),
                    ..Action::default()
                });
            }
        }
        let bare_manifest = ResponseApp {
            appid: hostile.into(),
            status: None,
            ping: None,
            updatecheck: Some(UpdateCheckResponse {
                status: String::new(),
                urls: Vec::new(),
                manifest: Some(Manifest::default()),
            }),
            events: Vec::new(),
        };
        let mut with_daystart = Response::new(vec![full.clone()]);
        with_daystart.daystart = Some(DayStart {
            elapsed_seconds: Some(49_008),
            elapsed_days: Some(6_000),
        });
        vec![
            Response::new(vec![full]),
            Response::new(vec![everything]),
            Response::new(vec![
                ResponseApp::noupdate("x"),
                ResponseApp::error_unknown_application(hostile),
                bare_manifest,
            ]),
            Response::new(Vec::new()),
            Response {
                protocol: "3.0".into(),
                server: None,
                daystart: Some(DayStart::default()),
                apps: Vec::new(),
            },
            with_daystart,
        ]
    }

    #[test]
    fn writes_what_the_serde_serializer_writes() {
        for response in samples() {
            let by_hand = super::response(&response);
            assert_eq!(by_hand, write_document("response", &response));
            assert_eq!(Response::parse(&by_hand).unwrap(), response);
        }
    }
}
