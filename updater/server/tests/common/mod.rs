//! Helpers shared by the server's integration tests: an engine on an in-memory SQLite store with
//! a manual clock, and Omaha requests shaped like the ones update_engine sends.

#![allow(dead_code)]

use std::sync::Arc;

use kiln_server::clock::ManualClock;
use kiln_server::model::PackageRecord;
use kiln_server::store::SqliteStore;
use kiln_server::{Engine, EngineConfig};
use kiln_updater::omaha::{App, Event, Os, Ping, Request, Response, ResponseApp, UpdateCheck};

pub const APP: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";
pub const SHA: [u8; 32] = [0x5a; 32];

pub fn engine() -> (Engine, ManualClock) {
    let clock = ManualClock::new(1_000_000);
    let store = SqliteStore::in_memory().expect("in-memory SQLite");
    let engine = Engine::open(
        Box::new(store),
        Arc::new(clock.clone()),
        EngineConfig::new("http://updates.invalid:8470"),
    )
    .expect("engine");
    (engine, clock)
}

/// An engine on a SQLite file, to reopen it (a restart) or read its store beside it.
pub fn engine_on_file(db: &std::path::Path, clock: &ManualClock) -> Engine {
    Engine::open(
        Box::new(SqliteStore::open(db).expect("SQLite file")),
        Arc::new(clock.clone()),
        EngineConfig::new("http://h/"),
    )
    .expect("engine")
}

/// A server on a SQLite file and a data directory (`data`) in `dir`, on a port of its own on
/// 127.0.0.1, the rest as `kiln-server serve` defaults it (no expiry).
pub fn serve_config(dir: &std::path::Path, token: &str) -> kiln_server::serve::ServeConfig {
    kiln_server::serve::ServeConfig {
        db: dir.join("kiln.db"),
        postgres: None,
        postgres_ca: None,
        peer_url: None,
        data_dir: dir.join("data"),
        listen: "127.0.0.1:0".parse().expect("an address"),
        token: Some(token.to_owned()),
        public_key: None,
        public_url: None,
        stale_after_days: 0,
        limits: Default::default(),
        tls: Default::default(),
    }
}

/// The machine ids of the app's instances, in order.
pub fn machine_ids(engine: &Engine) -> Vec<String> {
    engine
        .instances(APP, None, None)
        .expect("the app's instances")
        .into_iter()
        .map(|i| i.machine_id)
        .collect()
}

pub fn package(version: &str) -> PackageRecord {
    PackageRecord {
        app_id: APP.into(),
        version: version.into(),
        file_name: "update.payload".into(),
        path: Some("/nonexistent/update.payload".into()),
        url: None,
        size: 4096,
        sha256: kiln_contract::hex::encode(&SHA),
        min_from_version: None,
        manifest: "{}".into(),
        created_at: 0,
    }
}

/// An `<app>` as update_engine sends it on a periodic check.
pub fn app(machine: &str, version: &str, track: &str) -> App {
    App {
        appid: APP.into(),
        version: Some(version.into()),
        track: Some(track.into()),
        bootid: Some("{boot-1}".into()),
        machineid: Some(machine.into()),
        board: Some("amd64-usr".into()),
        ping: Some(Ping {
            active: Some("1".into()),
            ..Ping::default()
        }),
        updatecheck: Some(UpdateCheck::default()),
        ..App::default()
    }
}

pub fn request(apps: Vec<App>) -> Request {
    Request::new("update_engine-0.4.10", Os::default(), apps)
}

/// Sends one app's check and returns its answer, after a round trip through XML both ways.
pub fn check(engine: &Engine, app: App) -> ResponseApp {
    let xml = engine.handle(&request(vec![app]), None).to_xml();
    let response = Response::parse(&xml).expect("the server's response parses");
    response.apps.into_iter().next().expect("one app answered")
}

/// The server meets `machines` (a check-in on 1.0.0 of `stable` without an update check), and
/// an hour passes: they are known, and take part in a limited rollout (`KNOWN_AFTER`).
pub fn meet(engine: &Engine, clock: &ManualClock, machines: &[&str]) {
    for machine in machines {
        check(
            engine,
            with_events(app(machine, "1.0.0", "stable"), Vec::new()),
        );
    }
    clock.advance(kiln_server::engine::KNOWN_AFTER);
}

pub fn with_events(mut app: App, events: Vec<Event>) -> App {
    app.updatecheck = None;
    app.events = events;
    app
}

/// Whether the answer offers an update.
pub fn offered(answer: &ResponseApp) -> bool {
    answer.update().expect("a usable answer").is_some()
}

pub fn engine_with_url(public_url: &str) -> (Engine, ManualClock) {
    let clock = ManualClock::new(1_000_000);
    let store = SqliteStore::in_memory().expect("in-memory SQLite");
    let engine = Engine::open(
        Box::new(store),
        Arc::new(clock.clone()),
        EngineConfig::new(public_url),
    )
    .expect("engine");
    (engine, clock)
}
