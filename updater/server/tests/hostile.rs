//! The server against clients that mean harm, over HTTP on loopback. A second loopback address
//! (127.0.0.2) stands for the attacker, so that the per-source caps can be told apart from the
//! honest machine's traffic (127.0.0.1). Each test repeats an attack that once worked:
//! - fresh machine ids by the thousand, and ids and versions of kilobytes, each becoming a
//!   machine kept for ever in memory and in the database;
//! - requests stuffed with events, each written as a row;
//! - connections that never finish their request, holding the server's descriptors;
//! - an unauthenticated admin request the server read a gigabyte of before its 401.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_server::context::ServerContext;
use kiln_server::engine::{AdmissionLimits, MAX_EVENTS_PER_APP};
use kiln_server::http::RunningServer;
use kiln_server::listen::Limits;
use kiln_server::Engine;
use kiln_updater::omaha::{Event, Response};

use common::{app, package, request, with_events, APP};

const TOKEN: &str = "test-token-0123456789";

/// The attacker's address: loopback, but not the honest machine's.
const ATTACKER: &str = "127.0.0.2";

struct Fixture {
    server: RunningServer,
    engine: Arc<Engine>,
    _dir: tempfile::TempDir,
}

fn start(limits: Limits) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _clock) = common::engine();
    let engine = Arc::new(engine);
    engine.publish(package("1.1.0"), Some("stable")).unwrap();
    let ctx = Arc::new(ServerContext {
        engine: Arc::clone(&engine),
        token: TOKEN.into(),
        data_dir: dir.path().to_owned(),
        verifier: None,
    });
    let server = RunningServer::start_with(ctx, "127.0.0.1:0".parse().unwrap(), 2, limits).unwrap();
    Fixture {
        server,
        engine,
        _dir: dir,
    }
}

/// A connection to the server from `source`.
fn connect(server: SocketAddr, source: &str) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect(&server.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Posts an Omaha document from `source` on a connection of its own; the status and body.
fn post_omaha(server: SocketAddr, source: &str, xml: &str) -> (u16, String) {
    let mut stream = connect(server, source);
    write!(
        stream,
        "POST /v1/update/ HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
        xml.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn machines(f: &Fixture) -> usize {
    f.engine.instances(APP, None, None).unwrap().len()
}

#[test]
fn fresh_machine_ids_from_one_source_are_recorded_at_a_bounded_rate() {
    let f = start(Limits::default());
    let cap = AdmissionLimits::default().per_source as usize;
    let flood = cap + 80;
    for n in 0..flood {
        let xml = request(vec![app(&format!("fake{n:06}"), "1.0.0", "stable")]).to_xml();
        let (status, body) = post_omaha(f.server.addr, ATTACKER, &xml);
        assert_eq!(status, 200, "{body}");
        // Every one is answered (a machine refused is counted in on a later check)...
        Response::parse(&body).expect("an Omaha answer");
    }
    // ...but only the source's share of a minute is kept. (The minute may turn during the
    // loop, which lets in at most one more share.)
    let kept = machines(&f);
    assert!(
        kept == cap || kept <= 2 * cap.min(flood - cap),
        "{kept} of {flood} fresh machines recorded, the cap is {cap} a minute"
    );
    assert!(kept < flood, "every fresh machine was recorded");
    // A real machine from another address is still recorded and offered the update.
    let xml = request(vec![app(
        "0123456789abcdef0123456789abcdef",
        "1.0.0",
        "stable",
    )])
    .to_xml();
    let (status, body) = post_omaha(f.server.addr, "127.0.0.1", &xml);
    assert_eq!(status, 200);
    let answer = &Response::parse(&body).unwrap().apps[0];
    assert!(common::offered(answer), "{body}");
    assert_eq!(machines(&f), kept + 1);
}

#[test]
fn kilobyte_ids_versions_and_channels_are_not_recorded() {
    let f = start(Limits::default());
    let long = "a".repeat(30_000);
    for hostile in [
        app(&long, "1.0.0", "stable"),
        app("<script>", "1.0.0", "stable"),
        app("m1", &long, "stable"),
        app("m1", "1.0.0", &long),
        app("m1", "1.0.0/../../x", "stable"),
    ] {
        let xml = request(vec![hostile]).to_xml();
        let (status, body) = post_omaha(f.server.addr, ATTACKER, &xml);
        assert_eq!(status, 200, "{body}");
        let answer = &Response::parse(&body).unwrap().apps[0];
        assert!(
            !common::offered(answer),
            "a machine not recorded is offered nothing"
        );
    }
    assert_eq!(machines(&f), 0, "nothing of them is kept");
    let metrics = ureq::get(&format!("{}admin/v1/metrics", f.server.url()))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("kiln_omaha_unrecorded_total 5"),
        "{metrics}"
    );
}

#[test]
fn a_request_stuffed_with_events_writes_a_few_rows() {
    let f = start(Limits::default());
    let machine = "0123456789abcdef0123456789abcdef";
    common::check(&f.engine, app(machine, "1.0.0", "stable"));
    // As many events as fit in a document: the same error again and again, then distinct ones.
    let mut events = vec![Event::error(10); 300];
    events.extend((0..300).map(Event::error));
    let xml = request(vec![with_events(app(machine, "1.0.0", "stable"), events)]).to_xml();
    assert!(xml.len() < kiln_updater::omaha::MAX_DOCUMENT_BYTES);
    let (status, body) = post_omaha(f.server.addr, ATTACKER, &xml);
    assert_eq!(status, 200, "{body}");
    let (_, rows) = f.engine.instance(APP, machine, 10_000).unwrap();
    assert_eq!(
        rows.len(),
        MAX_EVENTS_PER_APP,
        "events of one request written"
    );
    let codes: Vec<Option<i64>> = rows.iter().map(|r| r.error_code).collect();
    let mut distinct = codes.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        codes.len(),
        "a repeated event written twice"
    );
}

/// Opens a connection from the attacker that sends half a request head and then nothing.
fn stall(server: SocketAddr) -> TcpStream {
    let mut stream = connect(server, ATTACKER);
    stream
        .write_all(b"POST /v1/update/ HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    stream
}

/// Whether the server closed `stream` (EOF, or a reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn slow_clients_hold_neither_the_descriptors_nor_the_honest_machines() {
    let limits = Limits {
        max_per_source: 64,
        header_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let f = start(limits);
    // More half-sent requests from one address than it may hold: those over the cap are
    // closed at once, before anything is read.
    let mut stalled: Vec<TcpStream> = (0..80).map(|_| stall(f.server.addr)).collect();
    let over: Vec<bool> = stalled
        .iter_mut()
        .skip(64)
        .map(|s| closed_within(s, Duration::from_secs(5)))
        .collect();
    assert!(
        over.iter().all(|c| *c),
        "connections over the cap left open: {over:?}"
    );
    // The honest machine is answered meanwhile.
    let xml = request(vec![app(
        "0123456789abcdef0123456789abcdef",
        "1.0.0",
        "stable",
    )])
    .to_xml();
    let (status, _) = post_omaha(f.server.addr, "127.0.0.1", &xml);
    assert_eq!(status, 200);
    // Those within the cap are closed once their head is late (2 s here, 10 s by default).
    let started = Instant::now();
    let first = &mut stalled[0];
    assert!(
        closed_within(first, Duration::from_secs(20)),
        "a connection that never sent its head was kept"
    );
    eprintln!("closed after {:.1} s", started.elapsed().as_secs_f64());
    // A body that never arrives is answered 408 (after the body timeout) and closed.
    let mut slow_body = connect(f.server.addr, ATTACKER);
    slow_body
        .write_all(b"POST /v1/update/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n<?xml")
        .unwrap();
    let mut answer = String::new();
    let _ = slow_body.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
}

#[test]
fn an_unauthenticated_upload_is_refused_after_a_little_of_its_body() {
    let f = start(Limits::default());
    let mut stream = connect(f.server.addr, ATTACKER);
    let size: u64 = 1 << 30;
    write!(
        stream,
        "POST /admin/v1/apps/{APP}/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-token-0123456789\r\nContent-Length: {size}\r\n\r\n"
    )
    .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![0u8; 1 << 16];
        let mut sent: u64 = 0;
        while sent < size {
            match stream.write(&chunk) {
                Ok(n) => sent += n as u64,
                Err(_) => break,
            }
        }
        sent
    });
    let mut answer = Vec::new();
    let _ = reader.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let sent = writer.join().unwrap();
    // What the socket buffers hold on both sides, beside the 64 KiB the server reads.
    assert!(
        sent < 32 << 20,
        "the server took {sent} bytes of a refused upload"
    );
}
