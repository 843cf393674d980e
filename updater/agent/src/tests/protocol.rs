//! Protocol tests: the agent's requests have the shape of the real update_engine requests in
//! updater/tests/fixtures, and the agent accepts the real Nebraska and update_engine responses.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use kiln_updater::omaha::Event;

use super::mock::{MockServer, Reply};
use super::*;
use crate::client::OmahaClient;

const FLATCAR_REQUEST: &str = include_str!("../../../tests/fixtures/flatcar-request.xml");
const UE_REQUEST: &str = include_str!("../../../tests/fixtures/update-engine-request.xml");
const NEBRASKA_RESPONSE: &str = include_str!("../../../tests/fixtures/nebraska-response.xml");
const UE_RESPONSE: &str = include_str!("../../../tests/fixtures/update-engine-response.xml");

/// Attributes Flatcar sends that describe things Kiln does not have (an OEM partition's
/// product, the first-installed "aleph" version); leaving them out is what update_engine does
/// when it has no value.
const NOT_ON_KILN: &[&str] = &["app@oem", "app@oemversion", "app@alephversion"];

/// `element@attribute` → value, for every element of a document (read with quick-xml directly,
/// not through our types, so a field our types drop would show).
fn attributes(xml: &str) -> BTreeMap<String, String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = BTreeMap::new();
    loop {
        match reader.read_event().expect("well-formed XML") {
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                let name = e.name().into_inner().to_owned();
                for a in e.attributes() {
                    let a = a.expect("attribute");
                    let key = a.key.into_inner().to_owned();
                    // Raw text: the fixtures and our requests hold no escapes in attributes.
                    let value = a.value.clone().into_owned();
                    out.insert(format!("{name}@{key}"), value);
                }
            }
            quick_xml::events::Event::Eof => return out,
            _ => {}
        }
    }
}

fn client(url: &str, app_id: &str) -> OmahaClient {
    let env_identity = Identity {
        app_id: crate::identity::braced(app_id),
        version: "0.1.0".into(),
        channel: "stable".into(),
        machine_id: MACHINE_ID.into(),
        boot_id: BOOT_1.into(),
    };
    OmahaClient::new(
        crate::http::agent(std::time::Duration::from_secs(2)),
        url,
        env_identity,
    )
}

#[test]
fn check_request_has_the_shape_of_update_engines() {
    let ours = client("http://127.0.0.1:1/", APP_ID)
        .check_request(false)
        .to_xml();
    assert!(ours.starts_with(kiln_updater::omaha::XML_DECLARATION));
    let parsed = Request::parse(&ours).expect("our request parses as an Omaha request");
    assert_eq!(parsed.apps.len(), 1);
    let ours = attributes(&ours);
    let theirs = attributes(FLATCAR_REQUEST);
    let ours_keys: BTreeSet<_> = ours.keys().map(String::as_str).collect();
    let missing: Vec<_> = theirs
        .keys()
        .map(String::as_str)
        .filter(|k| !ours_keys.contains(k) && !k.starts_with("event@") && !NOT_ON_KILN.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "attributes update_engine sends and we do not: {missing:?}"
    );
    // The values in the forms Nebraska reads.
    assert_eq!(ours["request@protocol"], "3.0");
    assert_eq!(ours["request@installsource"], "scheduler");
    assert_eq!(ours["request@ismachine"], "1");
    assert_eq!(ours["app@appid"], APP_ID);
    assert_eq!(ours["app@bootid"], BOOT_1, "braced, as in the fixture");
    assert!(theirs["app@bootid"].starts_with('{'));
    assert_eq!(ours["app@machineid"].len(), theirs["app@machineid"].len());
    assert_eq!(ours["app@track"], "stable");
    assert_eq!(ours["app@version"], "0.1.0");
    assert_eq!(ours["app@delta_okay"], "false");
    assert_eq!(ours["ping@active"], "1");
    assert_eq!(ours["os@sp"], format!("0.1.0_{}", std::env::consts::ARCH));
}

#[test]
fn event_requests_have_the_shape_of_update_engines() {
    let c = client("http://127.0.0.1:1/", APP_ID);
    let ours = attributes(
        &c.event_request(Event::updated_after_reboot("0.1.0"))
            .to_xml(),
    );
    let theirs = attributes(UE_REQUEST);
    for key in [
        "event@eventtype",
        "event@eventresult",
        "event@previousversion",
    ] {
        assert!(ours.contains_key(key) && theirs.contains_key(key), "{key}");
    }
    assert_eq!(
        (
            ours["event@eventtype"].as_str(),
            ours["event@eventresult"].as_str()
        ),
        ("3", "2")
    );
    assert_eq!(ours["event@previousversion"], "0.1.0");
    // An event-only request carries no update check (update_engine sends events on their own).
    assert!(!ours.contains_key("updatecheck@targetversionprefix"));
    let failed = attributes(&c.event_request(Event::error(10)).to_xml());
    assert_eq!(
        (
            failed["event@eventresult"].as_str(),
            failed["event@errorcode"].as_str()
        ),
        ("0", "10")
    );
}

/// Serves a fixture response and checks what the agent reads from it.
fn offer_from(fixture: &'static str, app_id: &str) -> kiln_updater::omaha::OfferedUpdate {
    let server = MockServer::start(move |_| Reply::xml(fixture.to_owned()));
    let url = format!("{}/v1/update/", server.url);
    client(&url, app_id)
        .check(false)
        .expect("the fixture is accepted")
        .expect("the fixture offers an update")
}

#[test]
fn accepts_nebraskas_response() {
    let offer = offer_from(NEBRASKA_RESPONSE, "e96281a6-d1af-4bde-9a0a-97b76e56dc57");
    assert_eq!(offer.version, "3732.0.0");
    assert!(
        offer
            .url
            .ends_with("/amd64-usr/3732.0.0/flatcar_production_update.gz"),
        "{}",
        offer.url
    );
    assert_eq!(offer.size, 382_137_917);
    let expected = base64::engine::general_purpose::STANDARD
        .decode("stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA=")
        .unwrap();
    assert_eq!(offer.sha256.as_slice(), expected.as_slice());
}

#[test]
fn accepts_update_engines_response() {
    let offer = offer_from(UE_RESPONSE, "{87efface-864d-49a5-9bb3-4b050a7c227a}");
    assert_eq!(offer.version, "9999.0.0");
    assert_eq!(offer.url, "http://kam:8080/static/update.gz");
    assert_eq!(offer.size, 67_546_213);
    let expected = base64::engine::general_purpose::STANDARD
        .decode("0VAlQW3RE99SGtSB5R4m08antAHO8XDoBMKDyxQT/Mg=")
        .unwrap();
    assert_eq!(offer.sha256.as_slice(), expected.as_slice());
}

#[test]
fn a_response_for_another_app_is_refused() {
    let server = MockServer::start(|_| Reply::xml(NEBRASKA_RESPONSE.to_owned()));
    let e = client(&format!("{}/v1/update/", server.url), APP_ID)
        .check(false)
        .unwrap_err();
    assert!(!e.is_transient());
    assert!(e.to_string().contains(APP_ID), "{e}");
}
