//! `kiln-etcd gateway` as a worker runs it: etcd's settings in the environment,
//! its proxy in front of a real 3-member cluster on 127.0.0.1.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_etcd::testutil::{free_port, TestEtcd};
use kiln_etcd::Client;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // The gateway is the supervisor's child: end both.
        let _ = Command::new("pkill")
            .args(["-P", &self.0.id().to_string()])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_worker_reaches_the_cluster_through_the_gateway_while_a_member_is_down() {
    let mut cluster = TestEtcd::cluster(3);
    let initial: Vec<String> = cluster
        .iter()
        .enumerate()
        .map(|(i, m)| format!("m{i}={}", m.peer_url))
        .collect();
    let listen = format!("http://127.0.0.1:{}", free_port());
    let _gateway = Killed(
        Command::new(env!("CARGO_BIN_EXE_kiln-etcd"))
            .arg("gateway")
            .env("ETCD_INITIAL_CLUSTER", initial.join(","))
            .env("ETCD_LISTEN_CLIENT_URLS", &listen)
            // A member's setting the gateway must not be handed.
            .env("ETCD_DATA_DIR", "/nonexistent")
            .stdout(Stdio::null())
            .spawn()
            .expect("starting kiln-etcd gateway"),
    );
    let local = Client::new(std::slice::from_ref(&listen), Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(30);
    while local.put("/worker/hello", b"1", 0).is_err() {
        assert!(
            Instant::now() < deadline,
            "the gateway at {listen} never passed a put"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The write is in the cluster, seen from a member directly.
    let member = Client::new(&[cluster[2].url.clone()], Duration::from_secs(5));
    assert_eq!(member.get("/worker/hello").unwrap().unwrap().value, b"1");
    // A watch streams through it (fleet and flannel live on watches).
    let rev = member.get_prefix("/worker/").unwrap().revision;
    let mut watch = local.watch("/worker/", true, rev + 1).unwrap();
    member.put("/worker/event", b"2", 0).unwrap();
    // Confirmation and progress lines come first, empty; the event within the watch's bound.
    let events = loop {
        let events = watch.next_events().unwrap();
        if !events.is_empty() {
            break events;
        }
    };
    assert_eq!(events[0].kv.key, "/worker/event", "{events:?}");
    // One member gone, a follower (a leader's loss would add an election, which is not the
    // gateway's): every request still gets through, the gateway moving to another member.
    let follower = cluster
        .iter()
        .position(|m| {
            let status = Client::new(std::slice::from_ref(&m.url), Duration::from_secs(5))
                .call("/v3/maintenance/status", &serde_json::json!({}))
                .unwrap();
            status["header"]["member_id"] != status["leader"]
        })
        .expect("a follower");
    drop(cluster.remove(follower));
    for i in 0..10 {
        local
            .put(&format!("/worker/after/{i}"), b"x", 0)
            .unwrap_or_else(|e| panic!("put {i} through the gateway with one member down: {e}"));
    }
}
