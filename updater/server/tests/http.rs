//! The server over HTTP on loopback: the Omaha endpoint with the documents of
//! `shared/omaha-interop/`, payload downloads with Range, the admin API's token, publishing,
//! and the answers to malformed and oversized bodies.

// ureq's error is large; these helpers only hand it to assertions.
#![allow(clippy::result_large_err)]

mod common;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use kiln_server::context::ServerContext;
use kiln_server::http::RunningServer;
use kiln_server::verify::{PayloadVerifier, VerifiedPayload};
use kiln_updater::omaha::Response;
use sha2::{Digest, Sha256};

const TOKEN: &str = "test-token-0123456789";
const FLATCAR_APP: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";

/// Stands in for the signature check: a "payload" is a line `app_id version`, then filler;
/// one starting with `BAD` fails as a wrong signature would.
struct FakeVerifier;

impl PayloadVerifier for FakeVerifier {
    fn verify(&self, path: &Path) -> Result<VerifiedPayload, String> {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&bytes);
        let line = text.lines().next().unwrap_or_default();
        if line.starts_with("BAD") {
            return Err(format!(
                "{}: the manifest signature does not verify",
                path.display()
            ));
        }
        let (app_id, version) = line.split_once(' ').ok_or("no manifest line")?;
        Ok(VerifiedPayload {
            app_id: app_id.into(),
            version: version.into(),
            min_from_version: None,
            manifest_json: format!("{{\"app_id\":\"{app_id}\"}}"),
        })
    }
}

struct Fixture {
    server: RunningServer,
    engine: Arc<kiln_server::Engine>,
    _dir: tempfile::TempDir,
}

fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _clock) = common::engine_with_url("http://placeholder/");
    let engine = Arc::new(engine);
    let ctx = Arc::new(ServerContext {
        engine: Arc::clone(&engine),
        token: TOKEN.into(),
        data_dir: dir.path().to_owned(),
        verifier: Some(Arc::new(FakeVerifier)),
    });
    let server = RunningServer::start(ctx, "127.0.0.1:0".parse().unwrap(), 2).unwrap();
    Fixture {
        server,
        engine,
        _dir: dir,
    }
}

fn fake_payload(app: &str, version: &str) -> Vec<u8> {
    let mut bytes = format!("{app} {version}\n").into_bytes();
    bytes.extend((0..100_000u32).map(|i| (i % 251) as u8));
    bytes
}

fn publish(
    f: &Fixture,
    app: &str,
    channel: &str,
    payload: &[u8],
    token: &str,
) -> Result<serde_json::Value, ureq::Error> {
    ureq::post(&format!("{}admin/v1/apps/{app}/publish", f.server.url()))
        .query("channel", channel)
        .set("Authorization", &format!("Bearer {token}"))
        .send_bytes(payload)
        .map(|r| r.into_json().unwrap())
}

fn post_omaha(f: &Fixture, body: &[u8]) -> Result<String, ureq::Error> {
    ureq::post(&format!("{}v1/update/", f.server.url()))
        .set("Content-Type", "text/xml")
        .send_bytes(body)
        .map(|r| r.into_string().unwrap())
}

fn status_of(result: Result<impl Sized, ureq::Error>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("transport error: {e}"),
    }
}

fn interop(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(name),
    )
    .unwrap()
}

#[test]
fn flatcar_request_gets_everything_update_engine_needs_and_payload_resumes() {
    let f = start();
    let payload = fake_payload(FLATCAR_APP, "1.2.4");
    let published = publish(&f, FLATCAR_APP, "alpha", &payload, TOKEN).unwrap();
    assert_eq!(published["version"], "1.2.4");

    let xml = post_omaha(&f, &interop("flatcar-request.xml")).unwrap();
    let response = Response::parse(&xml).unwrap();
    let app = response.app(FLATCAR_APP).expect("the app is answered");
    assert_eq!(app.status.as_deref(), Some("ok"));
    assert!(app.ping.is_some(), "the ping is acknowledged");
    assert_eq!(app.events.len(), 1, "the event is acknowledged");
    let check = app.updatecheck.as_ref().unwrap();
    assert_eq!(check.status, "ok");
    assert!(check.urls[0].codebase.ends_with('/'));
    let manifest = check.manifest.as_ref().unwrap();
    assert_eq!(manifest.version, "1.2.4");
    let package = &manifest.packages[0];
    let digest: [u8; 32] = Sha256::digest(&payload).into();
    let hex = kiln_contract::hex::encode(&digest);
    assert_eq!(package.hash_sha256.as_deref(), Some(hex.as_str()));
    assert_eq!(package.size, payload.len() as u64);
    assert!(package.required);
    let action = &manifest.actions[0];
    assert_eq!(action.event, "postinstall");
    assert_eq!(
        action.sha256.as_deref(),
        Some(kiln_server::engine::offer::sha256_base64(&digest).as_str())
    );
    // The raw XML too: attribute names exactly as update_engine looks them up.
    for needle in [
        "codebase=\"",
        "hash_sha256=\"",
        "size=\"",
        "event=\"postinstall\"",
        "sha256=\"",
    ] {
        assert!(xml.contains(needle), "{needle} missing from\n{xml}");
    }

    // Download the offered URL (rewritten onto the test server's address), whole and resumed.
    let offer = app.update().unwrap().unwrap();
    let path = offer.url.split_once("/v1/").unwrap().1;
    let url = format!("{}v1/{path}", f.server.url());
    let mut whole = Vec::new();
    let response = ureq::get(&url).call().unwrap();
    assert_eq!(response.header("Accept-Ranges"), Some("bytes"));
    response.into_reader().read_to_end(&mut whole).unwrap();
    assert_eq!(whole, payload);
    let response = ureq::get(&url).set("Range", "bytes=1000-").call().unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.header("Content-Range"),
        Some(format!("bytes 1000-{}/{}", payload.len() - 1, payload.len()).as_str())
    );
    let mut rest = Vec::new();
    response.into_reader().read_to_end(&mut rest).unwrap();
    assert_eq!(rest, payload[1000..]);
    let response = ureq::get(&url).set("Range", "bytes=10-19").call().unwrap();
    let mut ten = Vec::new();
    response.into_reader().read_to_end(&mut ten).unwrap();
    assert_eq!(ten, payload[10..20]);
    let past_end = format!("bytes={}-", payload.len());
    assert_eq!(
        status_of(ureq::get(&url).set("Range", &past_end).call()),
        416
    );
    assert_eq!(status_of(ureq::get(&format!("{url}x")).call()), 404);
}

#[test]
fn old_update_engine_request_with_braces_and_unknown_app() {
    let f = start();
    // The old request's app is not known to this server.
    let xml = post_omaha(&f, &interop("update-engine-request.xml")).unwrap();
    let response = Response::parse(&xml).unwrap();
    assert_eq!(response.apps.len(), 1);
    assert_eq!(
        response.apps[0].status.as_deref(),
        Some("error-unknownApplication")
    );
    // Once published, the braced id is the same app.
    let app = "87efface-864d-49a5-9bb3-4b050a7c227a";
    publish(
        &f,
        app,
        "dev-channel",
        &fake_payload(app, "9999.0.0"),
        TOKEN,
    )
    .unwrap();
    let xml = post_omaha(&f, &interop("update-engine-request.xml")).unwrap();
    let response = Response::parse(&xml).unwrap();
    let answer = &response.apps[0];
    assert_eq!(answer.appid, "{87efface-864d-49a5-9bb3-4b050a7c227a}");
    // Its version "ForcedUpdate" does not compare below 9999.0.0 numerically; either answer is
    // a valid Omaha answer, and it must parse as one.
    answer.update().unwrap();
}

#[test]
fn malformed_hostile_and_oversized_bodies() {
    let f = start();
    assert_eq!(
        status_of(post_omaha(&f, b"<request protocol=\"3.0\"><app")),
        400
    );
    assert_eq!(status_of(post_omaha(&f, b"\xff\xfe")), 400);
    assert_eq!(
        status_of(post_omaha(&f, b"<response protocol=\"3.0\"/>")),
        400
    );
    let bomb = br#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><request protocol="3.0">&b;</request>"#;
    assert_eq!(status_of(post_omaha(&f, bomb)), 400);
    let entity = br#"<request protocol="3.0"><app appid="&xxe;"/></request>"#;
    assert_eq!(status_of(post_omaha(&f, entity)), 400);
    let mut big = b"<request protocol=\"3.0\">".to_vec();
    big.extend(std::iter::repeat_n(b' ', 70_000));
    big.extend(b"</request>");
    assert_eq!(status_of(post_omaha(&f, &big)), 413);
    // The server is still up and answering.
    let xml = post_omaha(&f, &interop("flatcar-request.xml")).unwrap();
    assert!(Response::parse(&xml).is_ok());
}

#[test]
fn admin_api_refuses_without_the_token() {
    let f = start();
    let apps = format!("{}admin/v1/apps", f.server.url());
    assert_eq!(status_of(ureq::get(&apps).call()), 401);
    assert_eq!(
        status_of(ureq::get(&apps).set("Authorization", "Bearer wrong").call()),
        401
    );
    // A body the server reads whole before it refuses (it drains up to 64 KiB, then closes: an
    // upload larger than that goes through `AdminClient`, which checks its token first). The
    // 100 kB fake payload here was cut off now and then: the client saw "broken pipe".
    let payload = format!("{FLATCAR_APP} 1.2.4\n").into_bytes();
    assert_eq!(
        status_of(publish(&f, FLATCAR_APP, "alpha", &payload, "nope")),
        401
    );
    assert_eq!(
        status_of(
            ureq::get(&apps)
                .set("Authorization", &format!("Bearer {TOKEN}"))
                .call()
        ),
        200
    );
    // The public endpoint does not serve the admin API under another path.
    assert_eq!(
        status_of(ureq::get(&format!("{}v1/update/", f.server.url())).call()),
        405
    );
}

#[test]
fn publish_checks_signature_and_app_id_then_client_drives_channels() {
    let f = start();
    let client = kiln_server::client::AdminClient::new(&f.server.url(), TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("update.payload");

    std::fs::write(
        &file,
        fake_payload("00000000-0000-0000-0000-000000000000", "1.0.0"),
    )
    .unwrap();
    let err = client
        .publish(FLATCAR_APP, Some("alpha"), &file, None, false)
        .unwrap_err();
    assert!(err.to_string().contains("not app"), "{err}");

    let mut bad = b"BAD".to_vec();
    bad.extend(fake_payload(FLATCAR_APP, "1.0.0"));
    std::fs::write(&file, bad).unwrap();
    let err = client
        .publish(FLATCAR_APP, Some("alpha"), &file, None, false)
        .unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");

    std::fs::write(&file, fake_payload(FLATCAR_APP, "1.2.4")).unwrap();
    client
        .publish(FLATCAR_APP, Some("alpha"), &file, None, false)
        .unwrap();
    client.promote(FLATCAR_APP, "alpha", "beta").unwrap();
    client.pause(FLATCAR_APP, "beta").unwrap();
    let policy = kiln_server::model::Policy {
        percent: 10,
        ..Default::default()
    };
    client.set_policy(FLATCAR_APP, "beta", &policy).unwrap();
    let app = client.app(FLATCAR_APP).unwrap();
    let beta = &app["channels"][1];
    assert_eq!(beta["name"], "beta");
    assert_eq!(beta["version"], "1.2.4");
    assert_eq!(beta["paused"], true);
    assert_eq!(beta["policy"]["percent"], 10);
    let err = client.set_policy(
        FLATCAR_APP,
        "beta",
        &kiln_server::model::Policy {
            percent: 101,
            ..Default::default()
        },
    );
    assert!(err.unwrap_err().to_string().contains("percent"));

    post_omaha(&f, &interop("flatcar-request.xml")).unwrap();
    let instances = client
        .instances(FLATCAR_APP, Some("alpha"), Some("granted"))
        .unwrap();
    assert_eq!(instances.as_array().unwrap().len(), 1);
    assert_eq!(
        instances[0]["machine_id"],
        "abce671d61774703ac7be60715220bfe"
    );
    let detail = client
        .instance(FLATCAR_APP, "abce671d61774703ac7be60715220bfe")
        .unwrap();
    assert_eq!(detail["events"][0]["description"], "Installed");
    assert!(client
        .instances(FLATCAR_APP, None, Some("sideways"))
        .is_err());
}

/// What the server serves for a version of the Flatcar app.
fn served(f: &Fixture, version: &str) -> Vec<u8> {
    let url = format!(
        "{}v1/payloads/{FLATCAR_APP}/{version}/update.payload",
        f.server.url()
    );
    let mut bytes = Vec::new();
    ureq::get(&url)
        .call()
        .unwrap()
        .into_reader()
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

#[test]
fn republishing_a_version_with_other_bytes_is_refused_unless_replaced() {
    let f = start();
    let client = kiln_server::client::AdminClient::new(&f.server.url(), TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    let first_bytes = fake_payload(FLATCAR_APP, "1.3.0");
    let mut second_bytes = first_bytes.clone();
    second_bytes.extend(b"changed");
    std::fs::write(&first, &first_bytes).unwrap();
    std::fs::write(&second, &second_bytes).unwrap();
    let published = |file: &Path, replace: bool| {
        client.publish(FLATCAR_APP, Some("alpha"), file, None, replace)
    };
    let hash = |bytes: &[u8]| kiln_contract::hex::encode(&Sha256::digest(bytes));

    let one = published(&first, false).unwrap();
    assert_eq!(one["sha256"], hash(&first_bytes));
    // Other bytes under the same version: refused, and nothing served or stored changes.
    let err = published(&second, false).unwrap_err().to_string();
    assert!(
        err.contains("409") && err.contains("already published"),
        "{err}"
    );
    assert!(
        err.contains(&hash(&first_bytes)) && err.contains("--replace"),
        "{err}"
    );
    assert_eq!(served(&f, "1.3.0"), first_bytes);
    let app = client.app(FLATCAR_APP).unwrap();
    assert_eq!(app["packages"][0]["sha256"], hash(&first_bytes), "{app}");
    // The same bytes again: accepted, as before.
    assert_eq!(
        published(&first, false).unwrap()["sha256"],
        hash(&first_bytes)
    );
    // Replaced on purpose: the new bytes are served, and the old file is gone.
    assert_eq!(
        published(&second, true).unwrap()["sha256"],
        hash(&second_bytes)
    );
    assert_eq!(served(&f, "1.3.0"), second_bytes);
    let files: Vec<_> = std::fs::read_dir(
        f._dir
            .path()
            .join(kiln_server::payloads::PAYLOADS_DIR)
            .join(FLATCAR_APP)
            .join("1.3.0"),
    )
    .unwrap()
    .map(|e| e.unwrap().file_name().into_string().unwrap())
    .collect();
    assert_eq!(files, [format!("{}.payload", hash(&second_bytes))]);
}

#[test]
fn the_data_directory_and_the_database_are_private_and_leftovers_are_swept() {
    use kiln_server::payloads::{content_path, INCOMING_DIR};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // What a crash leaves: an upload half received, and a payload renamed into place whose
    // database row was never committed. Both from over an hour ago.
    let upload = data.join(INCOMING_DIR).join("upload-1-0");
    let orphan = content_path(&data, FLATCAR_APP, "9.9.9", &[7; 32]);
    for path in [&upload, &orphan] {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"left over").unwrap();
        let file = std::fs::File::options().write(true).open(path).unwrap();
        let hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        file.set_modified(hours_ago).unwrap();
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = kiln_server::serve::spawn(&common::serve_config(dir.path(), TOKEN)).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&dir.path().join("kiln.db")), 0o600);
    for journal in ["kiln.db-wal", "kiln.db-shm"] {
        let path = dir.path().join(journal);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{journal}");
        }
    }
    assert!(!upload.exists(), "an unfinished upload was kept");
    assert!(!orphan.exists(), "a payload no package refers to was kept");
    drop(server);
}

#[test]
fn the_server_answers_https_that_a_client_with_its_pinned_ca_trusts_and_others_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let ca = kiln_updater::tls::testutil::make_ca(dir.path(), "server");
    let server = kiln_server::serve::spawn(&kiln_server::serve::ServeConfig {
        tls: kiln_server::serve::ServeTls {
            tls_cert: Some(ca.cert.clone()),
            tls_key: Some(ca.key.clone()),
        },
        ..common::serve_config(dir.path(), TOKEN)
    })
    .unwrap();
    let url = format!("https://{}/", server.addr);
    let pinned = kiln_server::client::AdminClient::with_ca_file(&url, TOKEN, Some(&ca.ca)).unwrap();
    assert_eq!(pinned.apps().unwrap(), serde_json::json!([]));
    // The Omaha endpoint too, through the same TLS settings the agent uses.
    let agent = ureq::AgentBuilder::new()
        .tls_config(kiln_updater::tls::client_config(Some(&ca.ca)).unwrap())
        .build();
    let answer = agent
        .post(&format!("{url}v1/update/"))
        .send_bytes(&interop("flatcar-request.xml"))
        .unwrap()
        .into_string()
        .unwrap();
    assert!(Response::parse(&answer).is_ok(), "{answer}");
    // A client trusting only the public roots refuses the certificate; plain HTTP gets nowhere.
    let public = kiln_server::client::AdminClient::new(&url, TOKEN);
    let err = public.apps().unwrap_err().to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
    let plain = ureq::get(&format!("http://{}/healthz", server.addr)).call();
    assert!(plain.is_err(), "plain HTTP answered on the HTTPS port");
}

#[test]
fn instance_lists_come_in_pages_and_the_client_reads_them_all() {
    let f = start();
    let client = kiln_server::client::AdminClient::new(&f.server.url(), TOKEN);
    let n = kiln_server::http::MAX_INSTANCES_PAGE + 5;
    let engine = &f.engine;
    engine
        .publish(common::package("1.0.0"), Some("stable"))
        .unwrap();
    for i in 0..n {
        common::check(engine, common::app(&format!("m{i:05}"), "1.0.0", "stable"));
    }
    let url = format!("{}admin/v1/apps/{FLATCAR_APP}/instances", f.server.url());
    let page = |query: &[(&str, &str)]| -> serde_json::Value {
        let mut request = ureq::get(&url).set("Authorization", &format!("Bearer {TOKEN}"));
        for (k, v) in query {
            request = request.query(k, v);
        }
        request.call().unwrap().into_json().unwrap()
    };
    assert_eq!(
        page(&[]).as_array().unwrap().len(),
        n - 5,
        "one page at most"
    );
    let two = page(&[("limit", "2"), ("after", "m00003")]);
    let ids: Vec<&str> = two
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["machine_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m00004", "m00005"]);
    let all = client.instances(FLATCAR_APP, None, None).unwrap();
    assert_eq!(all.as_array().unwrap().len(), n);
}
