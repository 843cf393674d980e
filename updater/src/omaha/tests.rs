//! Tests of the Omaha module against real documents from Flatcar's update_engine, Nebraska and
//! go-omaha (copies in `tests/fixtures/`), and of our own output against libxml2's `xmllint`,
//! the XML library update_engine itself parses responses with.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

const FIXTURES: [&str; 4] = [
    "flatcar-request.xml",
    "update-engine-request.xml",
    "nebraska-response.xml",
    "update-engine-response.xml",
];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture(name: &str) -> String {
    let path = fixture_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn first_app(response: &Response) -> &ResponseApp {
    response.apps.first().expect("the response has an app")
}

/// The copies must stay byte-identical to the shared originals they were taken from. In a clone
/// of the repository without `shared/` beside it there is nothing to compare with.
#[test]
fn fixtures_match_shared_originals() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/omaha-interop");
    if !shared.is_dir() {
        eprintln!("{} absent: comparing nothing", shared.display());
        return;
    }
    for name in FIXTURES {
        let original = std::fs::read(shared.join(name)).expect("reading the shared original");
        assert_eq!(
            fixture(name).as_bytes(),
            original,
            "{name} differs from the shared copy"
        );
    }
}

#[test]
fn flatcar_request_has_updatecheck_and_event_in_one_app() {
    let request = Request::parse(&fixture("flatcar-request.xml")).unwrap();
    assert_eq!(request.protocol, "3.0");
    assert_eq!(request.version.as_deref(), Some("update_engine-0.4.10"));
    assert_eq!(request.installsource.as_deref(), Some("scheduler"));
    assert_eq!(request.ismachine.as_deref(), Some("1"));
    assert_eq!(request.os.platform.as_deref(), Some("CoreOS"));
    assert_eq!(request.os.version.as_deref(), Some("Chateau"));
    assert_eq!(request.os.sp.as_deref(), Some("2512.2.0_x86_64"));
    assert_eq!(request.os.arch, None);
    assert_eq!(request.apps.len(), 1);
    let app = &request.apps[0];
    assert_eq!(app.appid, "e96281a6-d1af-4bde-9a0a-97b76e56dc57");
    assert_eq!(app.version.as_deref(), Some("1.2.3"));
    assert_eq!(app.track.as_deref(), Some("alpha"));
    assert_eq!(
        app.machineid.as_deref(),
        Some("abce671d61774703ac7be60715220bfe")
    );
    assert_eq!(app.oem.as_deref(), Some("ami"));
    assert_eq!(app.oemversion.as_deref(), Some("0.1.1-r1"));
    assert_eq!(app.alephversion.as_deref(), Some("1688.5.3"));
    assert_eq!(app.board.as_deref(), Some("amd64-usr"));
    assert_eq!(app.hardware_class.as_deref(), Some(""));
    assert_eq!(app.delta_okay.as_deref(), Some("false"));
    assert_eq!(
        app.ping.as_ref().and_then(|p| p.active.as_deref()),
        Some("1")
    );
    assert_eq!(app.updatecheck, Some(UpdateCheck::default()));
    assert_eq!(
        app.events,
        [Event::new(EventType::UpdateComplete, EventResult::Success)]
    );
    let bootid = app.bootid.as_deref().unwrap();
    assert_eq!(normalize_id(bootid), "965fb4c5-ad3e-4eb7-a4c2-ca0c0e31ec84");
    assert!(request
        .app("{E96281A6-D1AF-4BDE-9A0A-97B76E56DC57}")
        .is_some());
}

#[test]
fn update_engine_request_has_braces_ping_days_and_previous_version() {
    let request = Request::parse(&fixture("update-engine-request.xml")).unwrap();
    assert_eq!(request.installsource.as_deref(), Some("ondemandupdate"));
    assert_eq!(request.os.platform.as_deref(), Some("Chrome OS"));
    let app = request
        .app("87efface-864d-49a5-9bb3-4b050a7c227a")
        .expect("app found without braces");
    assert_eq!(app.appid, "{87efface-864d-49a5-9bb3-4b050a7c227a}");
    assert_eq!(
        normalize_id(&app.appid),
        "87efface-864d-49a5-9bb3-4b050a7c227a"
    );
    assert_eq!(
        normalize_id(app.machineid.as_deref().unwrap()),
        "8bde4c4d-9083-4d61-b41c-3253212c0c37"
    );
    assert_eq!(app.track.as_deref(), Some("dev-channel"));
    let ping = app.ping.as_ref().unwrap();
    assert_eq!(
        (ping.active.as_deref(), ping.a.as_deref(), ping.r.as_deref()),
        (Some("1"), Some("-1"), Some("-1"))
    );
    assert_eq!(
        app.updatecheck
            .as_ref()
            .unwrap()
            .targetversionprefix
            .as_deref(),
        Some("")
    );
    let expected = Event {
        previousversion: Some(String::new()),
        ..Event::new(EventType::UpdateComplete, EventResult::SuccessReboot)
    };
    assert_eq!(app.events, [expected]);
}

#[test]
fn nebraska_response_offers_the_first_package() {
    let response = Response::parse(&fixture("nebraska-response.xml")).unwrap();
    assert_eq!(response.server.as_deref(), Some("nebraska"));
    assert_eq!(
        response.daystart.as_ref().and_then(|d| d.elapsed_seconds),
        Some(0)
    );
    let app = response
        .app("{e96281a6-d1af-4bde-9a0a-97b76e56dc57}")
        .unwrap();
    assert_eq!(app.ping, Some(Ack::ok()));
    assert_eq!(app.events, [Ack::ok()]);
    let manifest = app.updatecheck.as_ref().unwrap().manifest.as_ref().unwrap();
    assert_eq!(manifest.packages.len(), 3);
    assert!(manifest.packages[0].required && !manifest.packages[1].required);
    assert_eq!(
        manifest.packages[0].hash.as_deref(),
        Some("I6DGNAOrJRUxPbCuLw+AITfiVMo=")
    );
    assert_eq!(
        manifest.actions[0].disable_payload_backoff.as_deref(),
        Some("true")
    );
    let offered = app.update().unwrap().expect("an update is offered");
    assert_eq!(offered.version, "3732.0.0");
    assert_eq!(
        offered.url,
        "https://update.release.flatcar-linux.net/amd64-usr/3732.0.0/flatcar_production_update.gz"
    );
    assert_eq!(offered.size, 382137917);
    // Decoded from the action's base64 with Python's base64 module.
    assert_eq!(
        kiln_contract::hex::encode(&offered.sha256),
        "b2d2c6dd4fe8e00afc4cc1c5c13fd1581d2236469638ee90b4baeaebe00705b0"
    );
}

#[test]
fn update_engine_response_with_extra_action_attributes() {
    let response = Response::parse(&fixture("update-engine-response.xml")).unwrap();
    assert_eq!(response.server, None);
    assert_eq!(
        response.daystart.as_ref().and_then(|d| d.elapsed_seconds),
        Some(49008)
    );
    let app = first_app(&response);
    assert_eq!(app.ping, Some(Ack::ok()));
    assert!(app.events.is_empty());
    let action = &app
        .updatecheck
        .as_ref()
        .unwrap()
        .manifest
        .as_ref()
        .unwrap()
        .actions[0];
    assert_eq!(action.needsadmin.as_deref(), Some("false"));
    let offered = app.update().unwrap().unwrap();
    assert_eq!(offered.version, "9999.0.0");
    assert_eq!(offered.url, "http://kam:8080/static/update.gz");
    assert_eq!(offered.size, 67546213);
    assert_eq!(
        kiln_contract::hex::encode(&offered.sha256),
        "d15025416dd113df521ad481e51e26d3c6a7b401cef170e804c283cb1413fcc8"
    );
}

/// The payload's SHA-256 may come from the package's hex alone, and must agree when both are given.
#[test]
fn hex_and_base64_sha256_are_cross_checked() {
    let digest = "b2d2c6dd4fe8e00afc4cc1c5c13fd1581d2236469638ee90b4baeaebe00705b0";
    let text = fixture("nebraska-response.xml");
    let first = r#"<package name="flatcar_production_update.gz" "#;
    let agreeing = text.replace(
        first,
        &format!(r#"{first}hash_sha256="{}" "#, digest.to_uppercase()),
    );
    let app = first_app(&Response::parse(&agreeing).unwrap()).clone();
    assert_eq!(
        kiln_contract::hex::encode(&app.update().unwrap().unwrap().sha256),
        digest
    );

    let without_action = agreeing.replace(
        r#"sha256="stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA=""#,
        "",
    );
    let app = first_app(&Response::parse(&without_action).unwrap()).clone();
    assert_eq!(
        kiln_contract::hex::encode(&app.update().unwrap().unwrap().sha256),
        digest
    );

    let other = "3aed3129de50b959a97e4913ba485bd60e72d2bb6aa377d5ed404103f0680043";
    let disagreeing = text.replace(first, &format!(r#"{first}hash_sha256="{other}" "#));
    let app = first_app(&Response::parse(&disagreeing).unwrap()).clone();
    match app.update() {
        Err(OmahaError::HashMismatch {
            action, package, ..
        }) => {
            assert_eq!((action.as_str(), package.as_str()), (digest, other));
        }
        other => panic!("expected a hash mismatch, got {other:?}"),
    }

    let neither = text.replace(
        r#"sha256="stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA=""#,
        "",
    );
    let app = first_app(&Response::parse(&neither).unwrap()).clone();
    assert!(
        matches!(app.update(), Err(OmahaError::Missing { .. })),
        "{:?}",
        app.update()
    );

    let short = text.replace("stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA=", "c2hvcnQ=");
    let app = first_app(&Response::parse(&short).unwrap()).clone();
    assert!(
        matches!(app.update(), Err(OmahaError::BadHash { .. })),
        "{:?}",
        app.update()
    );
}

#[test]
fn fixtures_round_trip_through_our_writer() {
    for name in ["flatcar-request.xml", "update-engine-request.xml"] {
        let parsed = Request::parse(&fixture(name)).unwrap();
        let written = parsed.to_xml();
        assert!(
            written.starts_with(&format!("{XML_DECLARATION}\n<request ")),
            "{written}"
        );
        assert_eq!(
            Request::parse(&written).unwrap(),
            parsed,
            "{name} after writing:\n{written}"
        );
        xmllint_well_formed(&[written]);
    }
    for name in ["nebraska-response.xml", "update-engine-response.xml"] {
        let parsed = Response::parse(&fixture(name)).unwrap();
        let written = parsed.to_xml();
        assert!(
            written.starts_with(&format!("{XML_DECLARATION}\n<response ")),
            "{written}"
        );
        assert_eq!(
            Response::parse(&written).unwrap(),
            parsed,
            "{name} after writing:\n{written}"
        );
        xmllint_well_formed(&[written]);
    }
}

#[test]
fn update_ok_parses_back_to_the_same_offer() {
    let sha256: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37));
    let response = Response::update_ok(
        "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}",
        "4000.1.0",
        "http://127.0.0.1:8080/payloads/4000.1.0",
        "kiln_update.bin",
        123_456_789,
        &sha256,
    );
    let xml = response.to_xml();
    assert!(
        xml.contains(r#"<url codebase="http://127.0.0.1:8080/payloads/4000.1.0/"/>"#),
        "{xml}"
    );
    assert!(
        xml.contains(&format!(
            r#"hash_sha256="{}""#,
            kiln_contract::hex::encode(&sha256)
        )),
        "{xml}"
    );
    assert!(!xml.contains(" hash="), "no SHA-1 is invented: {xml}");
    let parsed = Response::parse(&xml).unwrap();
    assert_eq!(parsed, response);
    let offered = parsed
        .app("e96281a6-d1af-4bde-9a0a-97b76e56dc57")
        .unwrap()
        .update()
        .unwrap();
    let expected = OfferedUpdate {
        version: "4000.1.0".into(),
        url: "http://127.0.0.1:8080/payloads/4000.1.0/kiln_update.bin".into(),
        size: 123_456_789,
        sha256,
    };
    assert_eq!(offered, Some(expected));
}

/// Reads our `update_ok` answer with libxml2 along the XPaths update_engine's ParseResponse uses,
/// and checks each value it requires is there and right.
#[test]
fn update_ok_satisfies_update_engine_xpaths() {
    let sha256 = [0xabu8; 32];
    let xml = Response::update_ok(
        "e96281a6-d1af-4bde-9a0a-97b76e56dc57",
        "4000.1.0",
        "http://127.0.0.1:8080/p/",
        "kiln_update.bin",
        4096,
        &sha256,
    )
    .to_xml();
    let checks = [
        ("string(/response/app/updatecheck/@status)", "ok"),
        ("string(/response/app/updatecheck/manifest/@version)", "4000.1.0"),
        ("string(/response/app/updatecheck/urls/url[1]/@codebase)", "http://127.0.0.1:8080/p/"),
        ("string(/response/app/updatecheck/manifest/packages/package[1]/@name)", "kiln_update.bin"),
        ("string(/response/app/updatecheck/manifest/packages/package[1]/@size)", "4096"),
        (
            "string(/response/app/updatecheck/manifest/actions/action[@event='postinstall'][1]/@sha256)",
            "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=",
        ),
    ];
    for (xpath, expected) in checks {
        assert_eq!(xmllint_xpath(&xml, xpath), expected, "{xpath} in\n{xml}");
    }
    let noupdate = Response::noupdate("e96281a6-d1af-4bde-9a0a-97b76e56dc57").to_xml();
    assert_eq!(
        xmllint_xpath(&noupdate, "string(/response/app/updatecheck/@status)"),
        "noupdate"
    );
}

#[test]
fn noupdate_unknown_application_and_acks() {
    let appid = "{87efface-864d-49a5-9bb3-4b050a7c227a}";
    let noupdate = Response::parse(&Response::noupdate(appid).to_xml()).unwrap();
    assert_eq!(first_app(&noupdate).update().unwrap(), None);

    let unknown = Response::parse(&Response::error_unknown_application(appid).to_xml()).unwrap();
    match first_app(&unknown).update() {
        Err(e @ OmahaError::Status { .. }) => {
            assert!(e.to_string().contains("error-unknownApplication"), "{e}")
        }
        other => panic!("expected a status error, got {other:?}"),
    }

    let request = Request::parse(&fixture("flatcar-request.xml")).unwrap();
    let answer = ResponseApp::noupdate(&request.apps[0].appid).acknowledge(&request.apps[0]);
    let xml = Response::new(vec![answer]).to_xml();
    assert!(
        xml.contains(r#"<ping status="ok"/>"#) && xml.contains(r#"<event status="ok"/>"#),
        "{xml}"
    );
    let acked = Response::parse(&xml).unwrap();
    assert_eq!(
        (
            first_app(&acked).ping.clone(),
            first_app(&acked).events.len()
        ),
        (Some(Ack::ok()), 1)
    );
}

#[test]
fn unknown_update_status_is_named() {
    let text = fixture("update-engine-response.xml").replace(
        r#"<updatecheck status="ok">"#,
        r#"<updatecheck status="error-internal">"#,
    );
    let response = Response::parse(&text).unwrap();
    match first_app(&response).update() {
        Err(OmahaError::Status {
            element, status, ..
        }) => {
            assert_eq!(
                (element, status.as_str()),
                ("updatecheck", "error-internal")
            )
        }
        other => panic!("expected a status error, got {other:?}"),
    }
}

#[test]
fn event_numbers_round_trip_including_unknown_ones() {
    for n in [0, 1, 2, 3, 9, 13, 14, 42] {
        assert_eq!(u32::from(EventType::from(n)), n);
        assert_eq!(u32::from(EventResult::from(n)), n);
    }
    assert_eq!(EventType::from(42), EventType::Other(42));
    assert_eq!(EventResult::from(9), EventResult::UpdateDeferred);
    let text = r#"<request protocol="3.0"><app appid="x"><event eventtype="3" eventresult="0" errorcode="-2147483600"/><event eventtype="77" eventresult="9"/></app></request>"#;
    let request = Request::parse(text).unwrap();
    let events = &request.apps[0].events;
    assert_eq!(
        (events[0].eventresult, events[0].errorcode),
        (EventResult::Error, Some(-2147483600))
    );
    assert_eq!(
        (events[1].eventtype, events[1].eventresult),
        (EventType::Other(77), EventResult::UpdateDeferred)
    );
}

/// What the agent will send: each event in update_engine's numbers, written and read back, and
/// accepted by libxml2.
#[test]
fn agent_request_round_trips() {
    let os = Os {
        platform: Some("Kiln".into()),
        version: Some("4000.0.0".into()),
        sp: Some("4000.0.0_x86_64".into()),
        arch: Some("x86_64".into()),
    };
    let app = App {
        appid: "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}".into(),
        version: Some("4000.0.0".into()),
        track: Some("stable".into()),
        ping: Some(Ping {
            active: Some("1".into()),
            ..Ping::default()
        }),
        updatecheck: Some(UpdateCheck::default()),
        events: vec![
            Event::download_started(),
            Event::download_finished(),
            Event::installed(),
            Event::updated_after_reboot("3999.0.0"),
            Event::error(-2147483600),
            Event::deferred(),
        ],
        ..App::default()
    };
    let request = Request::new("kiln-updater-0.1.0", os, vec![app]);
    let xml = request.to_xml();
    for expected in [
        r#"<request protocol="3.0" version="kiln-updater-0.1.0" updaterversion="kiln-updater-0.1.0" installsource="scheduler" ismachine="1">"#,
        r#"<event eventtype="13" eventresult="1"/>"#,
        r#"<event eventtype="14" eventresult="1"/>"#,
        r#"<event eventtype="3" eventresult="1"/>"#,
        r#"<event eventtype="3" eventresult="2" previousversion="3999.0.0"/>"#,
        r#"<event eventtype="3" eventresult="0" errorcode="-2147483600"/>"#,
        r#"<event eventtype="3" eventresult="9"/>"#,
        "<updatecheck/>",
    ] {
        assert!(xml.contains(expected), "{expected} missing from\n{xml}");
    }
    assert_eq!(Request::parse(&xml).unwrap(), request);
    xmllint_well_formed(&[xml]);
}

/// Unknown elements and attributes are skipped, even between the events of a list.
#[test]
fn unknown_elements_and_attributes_are_ignored() {
    let text = r#"<?xml version="1.0"?><request protocol="3.0" future="1"><extension><deep x="1"/></extension>
        <app appid="x" newattr="y"><event eventtype="13" eventresult="1"/><telemetry/><event eventtype="14" eventresult="1"/></app></request>"#;
    let request = Request::parse(text).unwrap();
    let types: Vec<_> = request.apps[0].events.iter().map(|e| e.eventtype).collect();
    assert_eq!(
        types,
        [
            EventType::UpdateDownloadStarted,
            EventType::UpdateDownloadFinished
        ]
    );
}

#[test]
fn hostile_and_broken_documents_are_refused() {
    let doctype = r#"<?xml version="1.0"?><!DOCTYPE request [<!ENTITY x "boom">]><request protocol="3.0"><app appid="&x;"/></request>"#;
    assert!(
        matches!(
            Request::parse(doctype),
            Err(OmahaError::Doctype { line: 1 })
        ),
        "{:?}",
        Request::parse(doctype)
    );

    let entity = r#"<request protocol="3.0"><app appid="a">&x;</app></request>"#;
    match Request::parse(entity) {
        Err(OmahaError::Entity { name, .. }) => assert_eq!(name, "x"),
        other => panic!("expected an entity error, got {other:?}"),
    }
    let attribute_entity = r#"<request protocol="3.0"><app appid="&x;"/></request>"#;
    assert!(matches!(
        Request::parse(attribute_entity),
        Err(OmahaError::Malformed { .. })
    ));
    let unclosed = r#"<request protocol="3.0"><app appid="a"><ping>"#;
    match Request::parse(unclosed) {
        Err(e @ OmahaError::Malformed { .. }) => {
            assert!(e.to_string().contains("ends inside <ping>"), "{e}")
        }
        other => panic!("expected a malformed document, got {other:?}"),
    }
    let predefined = r#"<request protocol="3.0"><app appid="a&amp;b&#x41;"/></request>"#;
    assert_eq!(Request::parse(predefined).unwrap().apps[0].appid, "a&bA");

    let big = format!(
        "<request protocol=\"3.0\">{}</request>",
        " ".repeat(MAX_DOCUMENT_BYTES)
    );
    assert!(matches!(
        Request::parse(&big),
        Err(OmahaError::TooLarge { .. })
    ));

    let deep = format!(
        "<request protocol=\"3.0\">{}{}</request>",
        "<x>".repeat(MAX_DEPTH),
        "</x>".repeat(MAX_DEPTH)
    );
    assert!(matches!(
        Request::parse(&deep),
        Err(OmahaError::TooDeep { .. })
    ));

    let malformed = [
        "",
        "<request protocol=\"3.0\">",
        "<request protocol=\"3.0\"><app appid=\"a\"></request>",
        "<request protocol=\"3.0\" protocol=\"3.0\"/>",
        "<request protocol=\"3.0\"/><request protocol=\"3.0\"/>",
        "<request protocol=\"3.0\"/>trailing",
        "<request protocol='3.0'><app appid=\"a></app></request>",
    ];
    for text in malformed {
        assert!(
            matches!(Request::parse(text), Err(OmahaError::Malformed { .. })),
            "{text:?}: {:?}",
            Request::parse(text)
        );
    }
    let err =
        Request::parse("<request protocol=\"3.0\">\n  <app appid=\"a\">\n</request>").unwrap_err();
    assert!(
        matches!(err, OmahaError::Malformed { line: 3, .. }),
        "{err}"
    );

    assert!(matches!(
        Request::parse(&fixture("nebraska-response.xml")),
        Err(OmahaError::WrongRoot { .. })
    ));
    assert!(matches!(
        Request::parse(r#"<request protocol="2.0"/>"#),
        Err(OmahaError::Protocol { .. })
    ));
    assert!(matches!(
        Request::parse(r#"<request/>"#),
        Err(OmahaError::Shape { .. })
    ));
    let bad_number = r#"<request protocol="3.0"><app appid="a"><event eventtype="three" eventresult="1"/></app></request>"#;
    assert!(matches!(
        Request::parse(bad_number),
        Err(OmahaError::Shape { .. })
    ));
}

/// A small deterministic generator (xorshift) mutates the fixtures: whatever comes out, the parser
/// returns, never panics, and anything it accepts writes back to XML that parses to the same value
/// and that libxml2 finds well-formed.
#[test]
fn mutated_fixtures_never_panic() {
    const ROUNDS: usize = 2000;
    const SNIPPETS: [&str; 15] = [
        "<",
        ">",
        "\"",
        "&",
        "&x;",
        "&#0;",
        "&#1;",
        "&#10;",
        "\u{1}",
        "</app>",
        "<app appid=\"z\">",
        "<!DOCTYPE r>",
        "<![CDATA[",
        "<event eventtype=\"3\" eventresult=\"2\"/>",
        "\u{feff}",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound.max(1) as u64) as usize
    };
    let mut written = Vec::new();
    for name in FIXTURES {
        let original = fixture(name).into_bytes();
        for _ in 0..ROUNDS {
            let mut bytes = original.clone();
            for _ in 0..1 + next(4) {
                let at = next(bytes.len() + 1);
                match next(5) {
                    0 => {
                        let end = (at + next(16)).min(bytes.len());
                        bytes.drain(at..end);
                    }
                    1 => {
                        let snippet = SNIPPETS[next(SNIPPETS.len())].as_bytes();
                        bytes.splice(at..at, snippet.iter().copied());
                    }
                    2 => bytes.truncate(at),
                    3 if at < bytes.len() => bytes[at] = next(256) as u8,
                    _ => {
                        let end = (at + next(64)).min(bytes.len());
                        let copy = bytes[at..end].to_vec();
                        let to = next(bytes.len() + 1);
                        bytes.splice(to..to, copy);
                    }
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            same_request_as_serde(&text);
            if let Ok(request) = Request::parse(&text) {
                let xml = request.to_xml();
                assert_eq!(Request::parse(&xml).unwrap(), request, "{text}");
                written.push(xml);
            }
            if let Ok(response) = Response::parse(&text) {
                for app in &response.apps {
                    let _ = app.update();
                }
                let xml = response.to_xml();
                assert_eq!(Response::parse(&xml).unwrap(), response, "{text}");
                written.push(xml);
            }
        }
    }
    // Some mutations (a changed byte inside a value, a duplicated whitespace run) leave valid
    // documents; if none were accepted the round-trip half of this test would check nothing.
    eprintln!(
        "{} of {} mutated documents were accepted",
        written.len(),
        ROUNDS * FIXTURES.len()
    );
    assert!(
        written.len() > 100,
        "only {} mutated documents were accepted",
        written.len()
    );
    xmllint_well_formed(&written);
}

/// The server's one-pass request reader and the serde derive of [`Request`] (after the same
/// checks) agree: the same request, or both an error.
fn same_request_as_serde(text: &str) {
    let ours = Request::parse(text);
    let serde = safety::parse_document::<Request>(text, "request")
        .and_then(|r| check_protocol("request", &r.protocol).map(|()| r));
    match (&ours, &serde) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
        (Err(_), Err(_)) => {}
        _ => panic!("one-pass reader: {ours:?}\nserde: {serde:?}\ndocument: {text}"),
    }
}

#[test]
fn the_one_pass_request_reader_reads_what_serde_reads() {
    let documents = [
        fixture("flatcar-request.xml"),
        fixture("update-engine-request.xml"),
        // Attributes in any order, escapes, unknown elements (with known names inside),
        // unknown attributes, text, an empty ping, two apps.
        r#"<?xml version="1.0"?><request ismachine="1" protocol="3.0" x="y"><!-- c --><os arch="x86_64" platform="Kiln" sp="1_x"/><extra><app appid="nope"/></extra><app machineid="m" appid="{A}" version="1&amp;2" track="be&#116;a"><ping/><updatecheck targetversionprefix="2."></updatecheck><event eventresult="0" eventtype="3" errorcode="-2147483648"/>text<event eventtype="99" eventresult="7" previousversion="0.9"><unknown/></event></app><app appid="b"><event eventtype="3" eventresult="2"/></app></request>"#.to_owned(),
        r#"<request protocol="3.1"/>"#.to_owned(),
        // Errors on both sides: no protocol, no appid, a missing event number, a bad number,
        // a second os, ping or updatecheck, protocol 2.0.
        r#"<request><app appid="a"/></request>"#.to_owned(),
        r#"<request protocol="3.0"><app version="1"/></request>"#.to_owned(),
        r#"<request protocol="3.0"><app appid="a"><event eventtype="3"/></app></request>"#.to_owned(),
        r#"<request protocol="3.0"><app appid="a"><event eventtype="3" eventresult="x"/></app></request>"#.to_owned(),
        r#"<request protocol="3.0"><os/><os/></request>"#.to_owned(),
        r#"<request protocol="3.0"><app appid="a"><ping/><ping a="1"/></app></request>"#.to_owned(),
        r#"<request protocol="3.0"><app appid="a"><updatecheck/><updatecheck/></app></request>"#.to_owned(),
        r#"<request protocol="2.0"/>"#.to_owned(),
    ];
    for document in &documents {
        same_request_as_serde(document);
    }
    let read = Request::parse(&documents[2]).unwrap();
    assert_eq!(read.apps.len(), 2);
    assert_eq!(read.apps[0].version.as_deref(), Some("1&2"));
    assert_eq!(read.apps[0].events[0].errorcode, Some(-2_147_483_648));
    assert_eq!(read.apps[0].events[1].eventtype, EventType::Other(99));
    for document in &documents[4..] {
        assert!(Request::parse(document).is_err(), "{document}");
    }
}

/// Writes each document to a file of its own and runs libxml2's `xmllint` once over all of them,
/// installing it when missing and root (as in CI).
fn xmllint(documents: &[String], args: &[&str]) -> std::process::Output {
    let tool = require_xmllint();
    let key = fnv1a(documents.concat().as_bytes());
    let dir = std::env::temp_dir().join(format!("kiln-omaha-{}-{key:016x}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = Command::new(&tool);
    command.args(args);
    for (i, xml) in documents.iter().enumerate() {
        let file = dir.join(format!("{i}.xml"));
        std::fs::write(&file, xml).unwrap();
        command.arg(file);
    }
    let output = command.output().expect("running xmllint");
    let _ = std::fs::remove_dir_all(&dir);
    output
}

fn xmllint_well_formed(documents: &[String]) {
    let output = xmllint(documents, &["--noout", "--nonet"]);
    assert!(
        output.status.success(),
        "xmllint refuses our output: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn xmllint_xpath(xml: &str, xpath: &str) -> String {
    let output = xmllint(&[xml.to_owned()], &["--nonet", "--xpath", xpath]);
    assert!(
        output.status.success(),
        "xmllint --xpath {xpath}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // libxml2 2.9 prints the string bare, later versions end it with a newline.
    let text = String::from_utf8(output.stdout).unwrap();
    text.strip_suffix('\n').unwrap_or(&text).to_owned()
}

/// Names temporary files after their content so parallel tests never share one.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// `xmllint` from Debian's libxml2-utils: installed under the same lock the image crate's
/// `require_tool` uses, because a reference check that silently skipped would prove nothing.
fn require_xmllint() -> PathBuf {
    let find = || {
        ["/usr/bin/xmllint", "/bin/xmllint", "/usr/local/bin/xmllint"]
            .map(PathBuf::from)
            .into_iter()
            .find(|p| p.is_file())
    };
    if let Some(path) = find() {
        return path;
    }
    let status = Command::new("flock")
        .args(["/tmp/kiln-apt.lock", "sh", "-c"])
        .arg(
            "command -v xmllint >/dev/null || \
             { DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 libxml2-utils >/tmp/kiln-apt-libxml2-utils.log 2>&1 || \
               { apt-get update -q -o DPkg::Lock::Timeout=600 >>/tmp/kiln-apt-libxml2-utils.log 2>&1 && \
                 DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 libxml2-utils >>/tmp/kiln-apt-libxml2-utils.log 2>&1; }; }",
        )
        .status()
        .expect("running flock/apt-get");
    assert!(
        status.success(),
        "test needs `xmllint`: apt-get install libxml2-utils (see /tmp/kiln-apt-libxml2-utils.log)"
    );
    find().expect("libxml2-utils is installed but xmllint is still not found")
}

/// What update_engine ignores does not refuse a response: a `<daystart>` that is not a number,
/// the manifests after the first (the first is the one offered), and the app's own `status`
/// when its `<updatecheck>` answers.
#[test]
fn what_update_engine_ignores_is_ignored() {
    let sha = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
    let manifest = |v: &str, size: u32| {
        format!("<manifest version=\"{v}\"><packages><package name=\"p-{v}\" size=\"{size}\" required=\"true\"/></packages><actions><action event=\"postinstall\" sha256=\"{sha}\"/></actions></manifest>")
    };
    let doc = format!(
        "<?xml version=\"1.0\"?><response protocol=\"3.0\"><daystart elapsed_seconds=\"x\" elapsed_days=\"12\"/><app appid=\"a\" status=\"error-whatever\"><updatecheck status=\"ok\"><urls><url codebase=\"http://h/d/\"/></urls>{}{}</updatecheck></app></response>",
        manifest("1.5.0", 10),
        manifest("2.0.0", 20)
    );
    let response = Response::parse(&doc).unwrap();
    let day = response.daystart.as_ref().unwrap();
    assert_eq!((day.elapsed_seconds, day.elapsed_days), (None, Some(12)));
    let offer = first_app(&response).update().unwrap().unwrap();
    assert_eq!(
        (offer.version.as_str(), offer.url.as_str(), offer.size),
        ("1.5.0", "http://h/d/p-1.5.0", 10)
    );
    // Without an update check, the app's status says why.
    let doc = "<response protocol=\"3.0\"><app appid=\"a\" status=\"error-unknownApplication\"/></response>";
    let e = first_app(&Response::parse(doc).unwrap())
        .update()
        .unwrap_err();
    assert!(e.to_string().contains("error-unknownApplication"), "{e}");
    let doc = "<response protocol=\"3.0\"><app appid=\"a\" status=\"error-unknownApplicationOrGroup\"><updatecheck status=\"error-internal\"/></app></response>";
    let e = first_app(&Response::parse(doc).unwrap())
        .update()
        .unwrap_err();
    assert!(
        e.to_string().contains("error-unknownApplicationOrGroup"),
        "{e}"
    );
}
