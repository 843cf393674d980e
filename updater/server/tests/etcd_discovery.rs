//! Debian's etcd 3.4 bootstrapping from this server's discovery URL, exactly as a Kiln cluster's
//! machines do: three members started on 127.0.0.1 with nothing but `--discovery <url>` (and
//! their own addresses and data folders) form one healthy cluster, and a fourth, told the
//! cluster is full, exits (`--discovery-fallback=exit`). Every etcd is killed when the test
//! ends, passing or not.

mod common;

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kiln_etcd::testutil::free_port;
use kiln_etcd::Client;
use kiln_image::testutil::require_tool;
use kiln_server::client::AdminClient;
use kiln_server::discovery::Limits;
use kiln_server::serve;
use serde_json::{json, Value};

const TOKEN: &str = "etcd-discovery-test-token-0123";

/// One etcd we started, with its output in a file; killed when dropped.
struct Member {
    name: String,
    child: Child,
    client_url: String,
    peer_url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Member {
    /// Starts member `name` bootstrapping from `discovery` alone.
    fn start(etcd: &PathBuf, name: &str, discovery: &str) -> Member {
        let dir = tempfile::tempdir().expect("temp dir");
        let client_url = format!("http://127.0.0.1:{}", free_port());
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        let log = dir.path().join("etcd.log");
        let output = File::create(&log).expect("creating the log");
        let child = Command::new(etcd)
            .arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--discovery={discovery}"))
            .arg("--discovery-fallback=exit")
            .stdout(Stdio::null())
            .stderr(output)
            .spawn()
            .expect("starting etcd");
        Member {
            name: name.to_owned(),
            child,
            client_url,
            peer_url,
            log,
            _dir: dir,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most 60 s) until `/health` says true.
    fn wait_healthy(&mut self) {
        let http = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(2))
            .build();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let healthy = http
                .get(&format!("{}/health", self.client_url))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .is_some_and(|body| body.contains("\"true\""));
            if healthy {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.name, self.output());
            }
            assert!(
                Instant::now() < deadline,
                "{} not healthy within 60 s:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits (at most 60 s) for the process to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for etcd") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still runs after 60 s:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn etcd_bootstraps_from_the_servers_discovery_url_and_a_fourth_member_finds_it_full() {
    let etcd = require_tool("etcd", "etcd-server");
    let dir = tempfile::tempdir().unwrap();
    // Declared before the members, so it is dropped after them: no wait of theirs is held then.
    let server = serve::spawn(&common::serve_config(dir.path(), TOKEN)).unwrap();
    // Short holds, so that the members waiting for the third go through etcd's "ask again" on
    // an empty answer.
    let engine = server.engine().expect("a lone server decides");
    engine.discovery.set_limits(Limits {
        hold: Duration::from_secs(1),
        ..Limits::default()
    });
    let admin = AdminClient::new(&format!("http://{}/", server.addr), TOKEN);
    let made = admin.discovery_new(3).unwrap();
    let url = made["url"].as_str().unwrap().to_owned();
    let token = made["token"].as_str().unwrap().to_owned();

    let mut members: Vec<Member> = ["m1", "m2"]
        .iter()
        .map(|name| Member::start(&etcd, name, &url))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine.discovery.waits_held() < 2 {
        assert!(
            Instant::now() < deadline,
            "m1 and m2 did not both wait for a third within 60 s:\nm1:\n{}\nm2:\n{}",
            members[0].output(),
            members[1].output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Several holds end empty meanwhile, and each member asks again from the same index.
    std::thread::sleep(Duration::from_secs(3));
    members.push(Member::start(&etcd, "m3", &url));
    for member in &mut members {
        member.wait_healthy();
    }

    // No member took etcd's error path, which logs "retrying in" and backs off: the empty
    // answers were asked again, as meant.
    for member in &members {
        let output = member.output();
        assert!(
            !output.contains("retrying in"),
            "{}:\n{output}",
            member.name
        );
    }

    // One cluster of the three, by name and peer URL.
    let client = Client::new(&[members[0].client_url.clone()], Duration::from_secs(5));
    let list = client
        .call("/v3/cluster/member/list", &json!({}))
        .expect("listing the members");
    let mut seen: Vec<(String, String)> = list["members"]
        .as_array()
        .expect("a member list")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_owned(),
                m["peerURLs"][0].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    seen.sort();
    let expected: Vec<(String, String)> = members
        .iter()
        .map(|m| (m.name.clone(), m.peer_url.clone()))
        .collect();
    assert_eq!(seen, expected, "{list}");

    // The token holds exactly their three registrations, `name=peer URL`, keyed by member id.
    let listed = admin.discovery_list().unwrap();
    let ours: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["token"] == token.as_str())
        .collect();
    let registrations = ours[0]["registrations"].as_array().unwrap();
    let mut values: Vec<&str> = registrations
        .iter()
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    values.sort();
    let expected: Vec<String> = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect();
    assert_eq!(values, expected);
    let ids: Vec<String> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{:x}", m["ID"].as_str().unwrap().parse::<u64>().unwrap()))
        .collect();
    for registration in registrations {
        let id = registration["id"].as_str().unwrap();
        assert!(
            ids.iter().any(|i| i == id),
            "{id} is a member's id: {ids:?}"
        );
    }

    // What a machine's own check (`kiln-etcd check-discovery`, before its member first starts)
    // and a worker's gateway read from the same URL: a member is registered, a fourth machine
    // finds the cluster full, and the gateway finds the three members' peer URLs.
    use kiln_etcd::discovery::{check, Finding};
    let t = Duration::from_secs(5);
    match check(&url, &[members[1].peer_url.clone()], t) {
        Finding::Registered { size: 3, me, .. } => assert_eq!(me, members[1].name),
        other => panic!("m2's check: {other:?}"),
    }
    let fourth_peer = format!("http://127.0.0.1:{}", free_port());
    let full = check(&url, std::slice::from_ref(&fourth_peer), t);
    assert!(matches!(full, Finding::Full { size: 3, .. }), "{full:?}");
    eprintln!(
        "a fourth machine's check: {}",
        full.message(&url, &[fourth_peer])
    );
    let mut peers =
        kiln_etcd::gateway::peer_urls(&kiln_etcd::gateway::Seeds::Discovery(url.clone()), t)
            .unwrap();
    peers.sort();
    let mut want: Vec<String> = members.iter().map(|m| m.peer_url.clone()).collect();
    want.sort();
    assert_eq!(peers, want);

    // A fourth with the same URL is told the cluster is full, and exits.
    let mut fourth = Member::start(&etcd, "m4", &url);
    let status = fourth.wait_exit();
    let output = fourth.output();
    assert!(!status.success(), "m4 exited with {status}:\n{output}");
    let full = output
        .lines()
        .find(|line| line.contains("cluster is full"))
        .unwrap_or_else(|| panic!("no \"cluster is full\" in m4's output:\n{output}"));
    eprintln!("m4 ({status}): {full}");
    let after = admin.discovery_list().unwrap();
    let still: Vec<&Value> = after
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["token"] == token.as_str())
        .collect();
    assert_eq!(
        still[0]["registrations"].as_array().unwrap().len(),
        3,
        "m4 did not register"
    );
    drop(fourth);
    drop(members);
}
