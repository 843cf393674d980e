//! Where an update check's time goes, stage by stage (ignored: a measurement, not a check).
//! `cargo test --release -p kiln-server --test stage_timing -- --ignored --nocapture`

mod common;

use std::time::Instant;

use kiln_server::store::{SqliteStore, Store, Write};
use kiln_updater::omaha::{Event, Request};

#[test]
#[ignore]
fn stage_timing() {
    let n = 20_000;
    let bodies: Vec<String> = (0..n)
        .map(|i| {
            let mut app = common::app(&format!("{i:032x}"), "1.0.0", "stable");
            app.events = vec![Event::installed()];
            common::request(vec![app]).to_xml()
        })
        .collect();
    let t = Instant::now();
    let requests: Vec<Request> = bodies.iter().map(|b| Request::parse(b).unwrap()).collect();
    let parse = t.elapsed() / n;
    let (engine, _) = common::engine();
    engine
        .publish(common::package("1.1.0"), Some("stable"))
        .unwrap();
    let t = Instant::now();
    let responses: Vec<_> = requests.iter().map(|r| engine.handle(r, None)).collect();
    let handle = t.elapsed() / n;
    let t = Instant::now();
    let xml: usize = responses.iter().map(|r| r.to_xml().len()).sum();
    let write = t.elapsed() / n;
    let t = Instant::now();
    engine.flush().unwrap();
    let flush = t.elapsed() / n;
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
    let writes: Vec<Write> = engine
        .instances(common::APP, None, None)
        .unwrap()
        .into_iter()
        .map(Write::Instance)
        .collect();
    let t = Instant::now();
    for chunk in writes.chunks(1000) {
        store.apply(chunk).unwrap();
    }
    let sqlite = t.elapsed() / n;
    eprintln!(
        "per check: parse {parse:?}, handle {handle:?} (queueing), to_xml {write:?} ({} bytes), \
         writer backlog {flush:?}, SQLite instance upsert alone {sqlite:?}",
        xml / n as usize
    );
}
