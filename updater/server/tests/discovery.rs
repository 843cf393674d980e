//! etcd discovery over HTTP on loopback, as etcd's v2 discovery client uses it: the routes one
//! by one with their answers, codes and `X-Etcd-Index`, refusals of bad requests, the bounds on
//! registrations and waits, a held wait woken by another client, a wait for a past index
//! answered at once, tokens surviving a restart on SQLite, and the `kiln-server discovery`
//! commands.

// ureq's error is large; these helpers only hand it to assertions.
#![allow(clippy::result_large_err)]

mod common;

use std::io::Write as _;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_server::client::AdminClient;
use kiln_server::discovery::Limits;
use kiln_server::serve::{self, Background};
use kiln_server::Engine;
use serde_json::{json, Value};

const TOKEN: &str = "discovery-test-token-0123456789";
const MEMBER: &str = "8e9e05c52164694d";
const OTHER: &str = "91bc3c398fb3c146";

/// A server on a SQLite file in `dir`, listening on a port of its own.
fn spawn(dir: &Path) -> Background {
    serve::spawn(&common::serve_config(dir, TOKEN)).unwrap()
}

fn base(server: &Background) -> String {
    format!("http://{}/", server.addr)
}

fn engine(server: &Background) -> Arc<Engine> {
    server.engine().expect("a lone server decides")
}

/// A token for a cluster of `size`: (token, URL).
fn new_token(server: &Background, size: u32) -> (String, String) {
    let answer = AdminClient::new(&base(server), TOKEN)
        .discovery_new(size)
        .unwrap();
    let token = answer["token"].as_str().unwrap().to_owned();
    let url = answer["url"].as_str().unwrap().to_owned();
    (token, url)
}

/// What the server answered, whatever the status.
struct Reply {
    status: u16,
    index: Option<u64>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer {} is not JSON ({e}): {}", self.status, self.body))
    }
}

fn agent() -> ureq::Agent {
    // Longer than any wait a test expects to be answered at once, shorter than a hold.
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

fn reply(result: Result<ureq::Response, ureq::Error>) -> Reply {
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(err) => panic!("transport error: {err}"),
    };
    Reply {
        status: response.status(),
        index: response
            .header("X-Etcd-Index")
            .map(|v| v.parse().expect("X-Etcd-Index is a number")),
        body: response.into_string().unwrap(),
    }
}

fn get(url: &str) -> Reply {
    reply(agent().get(url).call())
}

/// A registration, as etcd's discovery client sends it.
fn register(dir_url: &str, id: &str, value: &str) -> Reply {
    reply(
        agent()
            .put(&format!("{dir_url}/{id}?prevExist=false"))
            .send_form(&[("value", value)]),
    )
}

fn delete(url: &str) -> Reply {
    reply(agent().delete(url).call())
}

/// Waits (polling, at most 30 s) until `done`.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn routes_answer_as_etcd_v2_does() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path());
    let (token, url) = new_token(&server, 3);
    assert_eq!(token.len(), 32);
    assert!(token
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(url, format!("{}discovery/{token}", base(&server)));
    let key = |rest: &str| format!("/discovery/{token}{rest}");

    // What etcd reads first: the size, then the directory.
    let size = get(&format!(
        "{url}/_config/size?quorum=false&recursive=false&sorted=false"
    ));
    assert_eq!((size.status, size.index), (200, Some(1)));
    assert_eq!(
        size.json(),
        json!({"action": "get", "node": {"key": key("/_config/size"), "value": "3",
            "modifiedIndex": 1, "createdIndex": 1}})
    );
    let listing = get(&format!("{url}?quorum=false&recursive=false&sorted=false"));
    assert_eq!((listing.status, listing.index), (200, Some(1)));
    assert_eq!(
        listing.json()["node"],
        json!({"key": key(""), "dir": true, "modifiedIndex": 1, "createdIndex": 1,
            "nodes": [{"key": key("/_config"), "dir": true, "modifiedIndex": 1,
                "createdIndex": 1}]})
    );

    // Registering: 201 with the node; the same id again: 412, errorCode 105.
    let created = register(&url, MEMBER, "m1=http://127.0.0.1:2380");
    assert_eq!((created.status, created.index), (201, Some(2)));
    let member = json!({"key": key(&format!("/{MEMBER}")), "value": "m1=http://127.0.0.1:2380",
        "modifiedIndex": 2, "createdIndex": 2});
    assert_eq!(created.json(), json!({"action": "create", "node": member}));
    let again = register(&url, MEMBER, "m1=http://127.0.0.1:2380");
    assert_eq!((again.status, again.index), (412, Some(2)));
    assert_eq!(
        again.json(),
        json!({"errorCode": 105, "message": "Key already exists",
            "cause": key(&format!("/{MEMBER}")), "index": 2})
    );
    register(
        &url,
        OTHER,
        "m2=http://127.0.0.1:2381,m2=http://10.0.0.2:2381",
    );

    // The directory lists them in the order they registered, each key ending in its id.
    let listing = get(&format!("{url}?quorum=false&recursive=false&sorted=false"));
    assert_eq!(listing.index, Some(3));
    let nodes = listing.json()["node"]["nodes"].clone();
    let keys: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            key("/_config"),
            key(&format!("/{MEMBER}")),
            key(&format!("/{OTHER}"))
        ]
    );
    assert_eq!(nodes[1], member);
    let recursive = get(&format!("{url}?recursive=true"));
    assert_eq!(
        recursive.json()["node"]["nodes"][0]["nodes"][0]["value"],
        "3",
        "a recursive listing shows _config/size"
    );
    assert_eq!(get(&format!("{url}/{MEMBER}")).json()["node"], member);
    assert_eq!(
        get(&format!("{url}/")).json()["node"]["key"],
        key(""),
        "a trailing slash names the directory"
    );

    // Unknown keys and tokens: 404, errorCode 100, the key as the cause.
    let missing = get(&format!("{url}/abcdef"));
    assert_eq!((missing.status, missing.index), (404, Some(3)));
    assert_eq!(
        missing.json(),
        json!({"errorCode": 100, "message": "Key not found", "cause": key("/abcdef"),
            "index": 3})
    );
    let unknown = format!("{}discovery/{}", base(&server), "0".repeat(32));
    let none = get(&format!("{unknown}/_config/size"));
    assert_eq!((none.status, none.index), (404, Some(0)));
    assert_eq!(none.json()["errorCode"], 100);
    assert_eq!(register(&unknown, MEMBER, "m1=http://h:1").status, 404);

    // DELETE: the node without its value, and the node as it was.
    let removed = delete(&format!("{url}/{MEMBER}"));
    assert_eq!((removed.status, removed.index), (200, Some(4)));
    assert_eq!(
        removed.json(),
        json!({"action": "delete",
            "node": {"key": key(&format!("/{MEMBER}")), "modifiedIndex": 4, "createdIndex": 2},
            "prevNode": member})
    );
    assert_eq!(get(&format!("{url}/{MEMBER}")).status, 404);
    assert_eq!(delete(&format!("{url}/{MEMBER}")).json()["errorCode"], 100);
    // The index only grows: a registration after the removal gets the next one.
    assert_eq!(
        register(&url, MEMBER, "m1=http://127.0.0.1:2380").json()["node"]["createdIndex"],
        5
    );
}

#[test]
fn bad_requests_are_refused_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path());
    let (_, url) = new_token(&server, 3);
    let refused = |reply: Reply, status: u16, needle: &str| {
        assert_eq!(reply.status, status, "{}", reply.body);
        assert_eq!(reply.index, Some(1), "every answer has X-Etcd-Index");
        let message = reply.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    };
    refused(register(&url, "xyz", "m1=http://h:1"), 400, "member id");
    refused(
        register(&url, &"a".repeat(33), "m1=http://h:1"),
        400,
        "1 to 32 hex",
    );
    refused(
        register(&url, "a/b", "m1=http://h:1"),
        400,
        "one level deep",
    );
    refused(register(&url, MEMBER, "m1"), 400, "<name>=<peer URL>");
    let long = format!("m1=http://{}", "h".repeat(1100));
    refused(register(&url, MEMBER, &long), 400, "more than 1024");
    refused(register(&url, "_config/size", "7"), 403, "operator's");
    let no_value = reply(
        agent()
            .put(&format!("{url}/{MEMBER}?prevExist=false"))
            .send_string(""),
    );
    refused(no_value, 400, "no value");
    let plain_put = reply(
        agent()
            .put(&format!("{url}/{MEMBER}"))
            .send_form(&[("value", "m1=http://h:1")]),
    );
    refused(plain_put, 400, "prevExist=false");
    let huge = reply(
        agent()
            .put(&format!("{url}/{MEMBER}?prevExist=false"))
            .send_string(&"v".repeat(10_000)),
    );
    refused(huge, 400, "request body");
    refused(get(&format!("{url}?wait=maybe")), 400, "true or false");
    refused(
        get(&format!("{url}?wait=true&waitIndex=soon")),
        400,
        "whole number",
    );
    refused(reply(agent().post(&url).call()), 400, "GET, PUT and DELETE");
    refused(delete(&url), 403, "operator's");
    // Nothing was stored.
    let token = engine(&server).discovery.tokens().remove(0);
    assert!(token.registrations.is_empty());
    assert_eq!(token.index, 1);
}

#[test]
fn a_token_stores_at_most_its_size_and_sixteen_more() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path());
    let (_, url) = new_token(&server, 1);
    for n in 0..17u32 {
        let created = register(&url, &format!("{n:x}"), &format!("m{n}=http://h:{n}"));
        assert_eq!(created.status, 201, "{}", created.body);
    }
    let full = register(&url, "ff", "m=http://h:1");
    assert_eq!(full.status, 403);
    let body = full.json();
    assert_eq!(body["errorCode"], 1000);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("already holds 17 registrations"));
    // The size itself is checked too.
    let admin = AdminClient::new(&base(&server), TOKEN);
    for bad in [0, 100] {
        let err = admin.discovery_new(bad).unwrap_err().to_string();
        assert!(err.contains("1 to 99 members"), "{err}");
    }
}

#[test]
fn a_held_wait_is_answered_by_another_clients_change() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path());
    let (token, url) = new_token(&server, 3);
    let discovery = engine(&server);

    // The directory's wait, as etcd's waitNodes sends it: from X-Etcd-Index + 1.
    let waiting = {
        let url = format!("{url}?recursive=true&wait=true&waitIndex=2");
        std::thread::spawn(move || get(&url))
    };
    wait_until("the wait is held", || discovery.discovery.waits_held() == 1);
    register(&url, MEMBER, "m1=http://127.0.0.1:2380");
    let woken = waiting.join().unwrap();
    assert_eq!((woken.status, woken.index), (200, Some(2)));
    assert_eq!(woken.json()["action"], "create");
    assert_eq!(
        woken.json()["node"]["key"],
        format!("/discovery/{token}/{MEMBER}")
    );

    // A key's wait sees its key's removal, not another key's registration.
    let waiting = {
        let url = format!("{url}/{MEMBER}?wait=true&waitIndex=3");
        std::thread::spawn(move || get(&url))
    };
    wait_until("the key's wait is held", || {
        discovery.discovery.waits_held() == 1
    });
    register(&url, OTHER, "m2=http://127.0.0.1:2381");
    delete(&format!("{url}/{MEMBER}"));
    let woken = waiting.join().unwrap();
    assert_eq!(woken.json()["action"], "delete");
    assert_eq!(woken.json()["node"]["modifiedIndex"], 4);
    assert_eq!(
        woken.json()["prevNode"]["value"],
        "m1=http://127.0.0.1:2380"
    );
    wait_until("the waits are given back", || {
        discovery.discovery.waits_held() == 0
    });
}

#[test]
fn a_wait_for_a_past_index_is_answered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path());
    let (_, url) = new_token(&server, 3);
    register(&url, MEMBER, "m1=http://127.0.0.1:2380");
    register(&url, OTHER, "m2=http://127.0.0.1:2381");
    // etcd watches its own key from its createdIndex right after registering.
    let own = get(&format!(
        "{url}/{OTHER}?recursive=false&wait=true&waitIndex=3"
    ));
    assert_eq!((own.status, own.index), (200, Some(3)));
    assert_eq!(own.json()["node"]["value"], "m2=http://127.0.0.1:2381");
    let first = get(&format!("{url}?recursive=true&wait=true&waitIndex=1"));
    assert_eq!(
        first.json()["node"]["createdIndex"],
        2,
        "the first change from 1"
    );
    let second = get(&format!("{url}?recursive=true&wait=true&waitIndex=3"));
    assert_eq!(second.json()["node"]["createdIndex"], 3);
}

#[test]
fn waits_are_bounded_and_a_held_one_ends_empty() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path());
    let (token, url) = new_token(&server, 1);
    let engine = engine(&server);
    let discovery = &engine.discovery;

    // Per token: twice the registrations it can hold (size 1 + 16 spares: 34 waits). Held on
    // raw connections, so the test needs no thread per wait.
    let held: Vec<TcpStream> = (0..34)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr).unwrap();
            write!(
                stream,
                "GET /discovery/{token}?recursive=true&wait=true HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            .unwrap();
            stream
        })
        .collect();
    wait_until("34 waits are held", || discovery.waits_held() == 34);
    let busy = get(&format!("{url}?recursive=true&wait=true"));
    assert_eq!((busy.status, busy.index), (503, Some(1)));
    assert_eq!(busy.json()["errorCode"], 1001);
    assert!(busy.json()["message"]
        .as_str()
        .unwrap()
        .contains(&format!("discovery token {token} already has 34 waits")));
    // Deleting the token ends its waits: each is answered "not found".
    AdminClient::new(&base(&server), TOKEN)
        .discovery_delete(&token, None)
        .unwrap();
    for mut stream in held {
        let mut answer = String::new();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = std::io::Read::read(&mut stream, &mut buf).unwrap();
        answer.push_str(&String::from_utf8_lossy(&buf[..n]));
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    }
    wait_until("the waits are given back", || discovery.waits_held() == 0);

    // Over every token: the server's limit; and a wait held as long as allowed ends with an
    // empty 200, which etcd's client takes as "ask again".
    discovery.set_limits(Limits {
        max_waits: 1,
        hold: Duration::from_secs(1),
    });
    let (_, url) = new_token(&server, 3);
    let waiting = {
        let url = format!("{url}?recursive=true&wait=true");
        std::thread::spawn(move || get(&url))
    };
    wait_until("the wait is held", || discovery.waits_held() == 1);
    let busy = get(&format!("{url}/{MEMBER}?wait=true&waitIndex=2"));
    assert_eq!(busy.status, 503);
    assert!(busy.json()["message"]
        .as_str()
        .unwrap()
        .contains("already holds 1 discovery waits"));
    let ended = waiting.join().unwrap();
    assert_eq!(
        (ended.status, ended.index, ended.body.as_str()),
        (200, Some(1), "")
    );
}

#[test]
fn a_client_that_goes_away_gives_its_wait_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path());
    let (token, _) = new_token(&server, 1);
    let engine = engine(&server);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    write!(
        stream,
        "GET /discovery/{token}?recursive=true&wait=true HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    wait_until("the wait is held", || engine.discovery.waits_held() == 1);
    drop(stream);
    // Well before the hold (50 s) would end it.
    wait_until("the wait is given back", || {
        engine.discovery.waits_held() == 0
    });
}

#[test]
fn tokens_registrations_and_indexes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let token = {
        let server = spawn(dir.path());
        let (token, url) = new_token(&server, 3);
        register(&url, MEMBER, "m1=http://127.0.0.1:2380");
        register(&url, OTHER, "m2=http://127.0.0.1:2381");
        register(&url, "abc", "m3=http://127.0.0.1:2382");
        delete(&format!("{url}/{OTHER}"));
        token
    };
    let server = spawn(dir.path());
    let url = format!("{}discovery/{token}", base(&server));
    let listing = get(&url);
    assert_eq!(listing.index, Some(5), "the index is where it was");
    let values: Vec<String> = listing.json()["node"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|n| n["value"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        values,
        ["m1=http://127.0.0.1:2380", "m3=http://127.0.0.1:2382"]
    );
    assert_eq!(
        get(&format!("{url}/_config/size")).json()["node"]["value"],
        "3"
    );
    let again = register(&url, OTHER, "m2=http://127.0.0.1:2381");
    assert_eq!(again.json()["node"]["createdIndex"], 6, "{}", again.body);
    // Changes after the last removal are known again; from before it they are not (the
    // removal itself was not stored), and the client is told to read the directory again.
    let after = get(&format!("{url}?recursive=true&wait=true&waitIndex=6"));
    assert_eq!(after.json()["node"]["createdIndex"], 6);
    let before = get(&format!("{url}?recursive=true&wait=true&waitIndex=5"));
    assert_eq!(before.status, 400);
    assert_eq!(before.json()["errorCode"], 401);
    assert!(before.json()["message"]
        .as_str()
        .unwrap()
        .contains("read the directory again"));
}

/// `kiln-server` itself, with the server's URL and token in its environment.
fn cli(server: &Background, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln-server"))
        .args(args)
        .env("KILN_SERVER", base(server))
        .env("KILN_SERVER_TOKEN", TOKEN)
        .output()
        .expect("running kiln-server")
}

#[test]
fn the_cli_creates_lists_and_deletes_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path());

    let made = cli(&server, &["discovery", "new", "--size", "3"]);
    assert!(made.status.success(), "{made:?}");
    let stdout = String::from_utf8(made.stdout).unwrap();
    let url = stdout.strip_suffix('\n').expect("one line");
    let token = url
        .strip_prefix(&format!("{}discovery/", base(&server)))
        .unwrap_or_else(|| panic!("{stdout:?} is only the URL"));
    assert_eq!(token.len(), 32);
    register(url, MEMBER, "m1=http://127.0.0.1:2380");
    register(url, OTHER, "m2=http://127.0.0.1:2381");

    let listed = cli(&server, &["discovery", "list"]);
    assert!(listed.status.success(), "{listed:?}");
    let list: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(list[0]["token"], token);
    assert_eq!(list[0]["url"], url);
    assert_eq!(list[0]["size"], 3);
    let ids: Vec<&str> = list[0]["registrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [MEMBER, OTHER]);
    let one = reply(
        agent()
            .get(&format!("{}admin/v1/discovery/{token}", base(&server)))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .call(),
    );
    assert_eq!(one.status, 200);
    assert_eq!(one.json(), list[0], "one token, as the list shows it");

    // A stale registration, then the token.
    let removed = cli(&server, &["discovery", "delete", token, MEMBER]);
    assert!(removed.status.success(), "{removed:?}");
    assert_eq!(get(&format!("{url}/{MEMBER}")).status, 404);
    assert_eq!(get(&format!("{url}/{OTHER}")).status, 200);
    let gone = cli(&server, &["discovery", "delete", token, MEMBER]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no key"));
    assert!(cli(&server, &["discovery", "delete", token])
        .status
        .success());
    assert_eq!(get(&format!("{url}/_config/size")).status, 404);
    let listed = cli(&server, &["discovery", "list"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "[]");

    // Refusals say what is wrong; the admin routes want the token.
    let bad = cli(&server, &["discovery", "new", "--size", "0"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid cluster size \"0\""));
    let anonymous = reply(
        agent()
            .post(&format!("{}admin/v1/discovery", base(&server)))
            .send_json(json!({"size": 3})),
    );
    assert_eq!(anonymous.status, 401);
}
