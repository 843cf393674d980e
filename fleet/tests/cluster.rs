//! Three machines' engines and agents against a real etcd on 127.0.0.1 (Debian's etcd-server),
//! each agent with an in-memory systemd, driven pass by pass through the API's handler: fleet's
//! scheduling end to end, leader fencing, a machine leaving and a machine lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_etcd::testutil::TestEtcd;
use kiln_etcd::Client;
use kiln_fleet::agent::Agent;
use kiln_fleet::api::{self, ApiUnit};
use kiln_fleet::engine::Engine;
use kiln_fleet::registry::{MachineObject, Registry};
use kiln_fleet::systemd::{Systemd, SystemdState};
use kiln_fleet::unit::UnitFile;

const PREFIX: &str = "/_coreos.com/fleet/";

/// systemd in memory: loaded files and running units, shared with the test.
#[derive(Clone, Default)]
struct FakeSystemd {
    loaded: Arc<Mutex<BTreeMap<String, String>>>,
    running: Arc<Mutex<BTreeSet<String>>>,
}

impl Systemd for FakeSystemd {
    fn loaded(&self) -> Result<BTreeMap<String, String>, String> {
        Ok(self.loaded.lock().unwrap().clone())
    }
    fn load(&mut self, name: &str, text: &str) -> Result<(), String> {
        self.loaded.lock().unwrap().insert(name.into(), text.into());
        Ok(())
    }
    fn unload(&mut self, name: &str) -> Result<(), String> {
        self.running.lock().unwrap().remove(name);
        self.loaded.lock().unwrap().remove(name);
        Ok(())
    }
    fn reload(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn start(&mut self, name: &str) -> Result<(), String> {
        self.running.lock().unwrap().insert(name.into());
        Ok(())
    }
    fn stop(&mut self, name: &str) -> Result<(), String> {
        self.running.lock().unwrap().remove(name);
        Ok(())
    }
    fn states(&self, names: &[String]) -> Result<BTreeMap<String, SystemdState>, String> {
        let loaded = self.loaded.lock().unwrap();
        let running = self.running.lock().unwrap();
        Ok(names
            .iter()
            .map(|n| {
                let state = SystemdState {
                    load: if loaded.contains_key(n) {
                        "loaded"
                    } else {
                        "not-found"
                    }
                    .into(),
                    active: if running.contains(n) {
                        "active"
                    } else {
                        "inactive"
                    }
                    .into(),
                    sub: if running.contains(n) {
                        "running"
                    } else {
                        "dead"
                    }
                    .into(),
                };
                (n.clone(), state)
            })
            .collect())
    }
}

struct Node {
    id: String,
    engine: Engine,
    agent: Agent,
    systemd: FakeSystemd,
}

fn client(etcd: &TestEtcd) -> Client {
    Client::new(std::slice::from_ref(&etcd.url), Duration::from_secs(5))
}

fn node(etcd: &TestEtcd, i: usize, metadata: &[(&str, &str)]) -> Node {
    let id = format!("{i:x}{}", "0".repeat(31));
    let systemd = FakeSystemd::default();
    let me = MachineObject {
        id: id.clone(),
        public_ip: format!("10.77.0.{}", i + 1),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        version: "test".into(),
    };
    let mut agent = Agent::new(
        client(etcd),
        PREFIX,
        me,
        Duration::from_secs(3),
        true,
        Box::new(systemd.clone()),
    );
    agent.heartbeat().expect("registering");
    Node {
        engine: Engine::new(client(etcd), PREFIX, &id, Duration::from_millis(400)),
        id,
        agent,
        systemd,
    }
}

/// Every machine's engine once, then every agent once.
fn settle(nodes: &mut [Node]) {
    for _ in 0..2 {
        for n in nodes.iter_mut() {
            n.engine.pass().expect("engine pass");
        }
        for n in nodes.iter_mut() {
            n.agent.reconcile().expect("agent pass");
        }
    }
}

fn put(registry: &Registry, name: &str, state: &str, text: Option<&str>) -> u16 {
    let mut body = serde_json::json!({ "desiredState": state });
    if let Some(text) = text {
        body["options"] = serde_json::to_value(UnitFile::parse(text).unwrap().options).unwrap();
    }
    api::handle(
        registry,
        "PUT",
        &format!("/fleet/v1/units/{name}"),
        body.to_string().as_bytes(),
    )
    .status
}

fn unit(registry: &Registry, name: &str) -> ApiUnit {
    let answer = api::handle(registry, "GET", &format!("/fleet/v1/units/{name}"), b"");
    assert_eq!(answer.status, 200, "{name}: {:?}", answer.body);
    serde_json::from_value(answer.body.unwrap()).unwrap()
}

fn running_on<'a>(nodes: &'a [Node], name: &str) -> Vec<&'a str> {
    nodes
        .iter()
        .filter(|n| n.systemd.running.lock().unwrap().contains(name))
        .map(|n| n.id.as_str())
        .collect()
}

const EXAMPLE: &str = "[Unit]\nDescription=example %i\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[X-Fleet]\nConflicts=example@*.service\n";

#[test]
fn scheduling_failover_and_loss() {
    let etcd = TestEtcd::start();
    let registry = Registry::new(client(&etcd), PREFIX);
    let mut nodes = vec![
        node(&etcd, 1, &[("region", "eu"), ("role", "web")]),
        node(&etcd, 2, &[("region", "us")]),
        node(&etcd, 3, &[("region", "us"), ("role", "web")]),
    ];

    // A template, and three conflicting instances of it: three machines.
    assert_eq!(
        put(&registry, "example@.service", "inactive", Some(EXAMPLE)),
        201
    );
    assert_eq!(
        put(&registry, "example@.service", "launched", None),
        400,
        "a template cannot start"
    );
    for i in 1..=4 {
        assert_eq!(
            put(
                &registry,
                &format!("example@{i}.service"),
                "launched",
                Some(EXAMPLE)
            ),
            201
        );
    }
    settle(&mut nodes);
    let mut hosts = BTreeSet::new();
    for i in 1..=3 {
        let name = format!("example@{i}.service");
        let on = running_on(&nodes, &name);
        assert_eq!(on.len(), 1, "{name} runs once: {on:?}");
        hosts.insert(on[0].to_string());
        let u = unit(&registry, &name);
        assert_eq!(
            (u.current_state.as_str(), u.machine_id.as_str()),
            ("launched", on[0])
        );
    }
    assert_eq!(hosts.len(), 3, "three machines");
    // The list shows the same as each unit's own answer.
    let list = api::handle(&registry, "GET", "/fleet/v1/units", b"");
    let units: Vec<ApiUnit> = serde_json::from_value(list.body.unwrap()["units"].clone()).unwrap();
    assert_eq!(units.len(), 5, "{units:?}");
    for u in &units {
        assert_eq!(*u, unit(&registry, &u.name));
        assert!(!u.options.is_empty(), "{u:?}");
    }
    let fourth = unit(&registry, "example@4.service");
    assert!(
        fourth.machine_id.is_empty() && fourth.reason.contains("example@"),
        "{fourth:?}"
    );

    // Metadata, global with metadata, MachineOf, MachineID by its short form.
    let meta = "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineMetadata=region=eu\n";
    let global =
        "[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\nMachineMetadata=role=web\n";
    let side = "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineOf=example@2.service\n";
    let pinned = format!(
        "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineID={}\n",
        &nodes[1].id[..8]
    );
    put(&registry, "meta.service", "launched", Some(meta));
    put(&registry, "web-global.service", "launched", Some(global));
    put(&registry, "side.service", "launched", Some(side));
    put(&registry, "pinned.service", "launched", Some(&pinned));
    settle(&mut nodes);
    assert_eq!(running_on(&nodes, "meta.service"), [nodes[0].id.as_str()]);
    assert_eq!(
        running_on(&nodes, "web-global.service"),
        [nodes[0].id.as_str(), nodes[2].id.as_str()]
    );
    assert_eq!(
        running_on(&nodes, "side.service"),
        running_on(&nodes, "example@2.service")
    );
    assert_eq!(running_on(&nodes, "pinned.service"), [nodes[1].id.as_str()]);

    // stop keeps it loaded; unload takes it off; destroy forgets it.
    put(&registry, "meta.service", "loaded", None);
    settle(&mut nodes);
    assert!(running_on(&nodes, "meta.service").is_empty());
    assert!(nodes[0]
        .systemd
        .loaded
        .lock()
        .unwrap()
        .contains_key("meta.service"));
    put(&registry, "meta.service", "inactive", None);
    settle(&mut nodes);
    assert!(!nodes[0]
        .systemd
        .loaded
        .lock()
        .unwrap()
        .contains_key("meta.service"));
    assert_eq!(
        api::handle(&registry, "DELETE", "/fleet/v1/units/meta.service", b"").status,
        204
    );
    assert_eq!(
        api::handle(&registry, "GET", "/fleet/v1/units/meta.service", b"").status,
        404
    );

    // Bad input is refused at submit, naming what is wrong.
    let bad = api::handle(&registry, "PUT", "/fleet/v1/units/bad.service", br#"{"desiredState":"launched","options":[{"section":"X-Fleet","name":"Global","value":"true"},{"section":"X-Fleet","name":"MachineOf","value":"a.service"}]}"#);
    assert_eq!(bad.status, 400, "{:?}", bad.body);
    let typo = api::handle(&registry, "PUT", "/fleet/v1/units/typo.service", br#"{"desiredState":"launched","options":[{"section":"X-Fleet","name":"Conflict","value":"a*"}]}"#);
    assert_eq!(typo.status, 400, "{:?}", typo.body);
    assert!(typo.body.unwrap().to_string().contains("Conflict"));

    // The leader gives up (its daemon stopped): another engine leads and schedules.
    let leader = nodes
        .iter()
        .position(|n| n.engine.is_leading())
        .expect("a leader");
    nodes[leader].engine.resign();
    put(
        &registry,
        "after-failover.service",
        "launched",
        Some("[Service]\nExecStart=/bin/true\n"),
    );
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for _ in 0..2 {
        for i in &others {
            nodes[*i].engine.pass().unwrap();
        }
        for n in nodes.iter_mut() {
            n.agent.reconcile().unwrap();
        }
    }
    assert_eq!(running_on(&nodes, "after-failover.service").len(), 1);

    // A machine leaves gracefully: its units move at once, nothing runs twice.
    let leaving = 2;
    let had: Vec<String> = nodes[leaving]
        .systemd
        .running
        .lock()
        .unwrap()
        .iter()
        .cloned()
        .collect();
    nodes[leaving].agent.leave();
    nodes[leaving].engine.resign();
    let mut rest: Vec<Node> = nodes
        .drain(..)
        .enumerate()
        .filter(|(i, _)| *i != leaving)
        .map(|(_, n)| n)
        .collect();
    settle(&mut rest);
    for name in had
        .iter()
        .filter(|n| !n.starts_with("web-global") && !n.starts_with("example@"))
    {
        assert_eq!(
            running_on(&rest, name).len(),
            1,
            "{name} moved to one machine"
        );
    }
    // The example instances: two machines left, so two of the three run and one waits.
    let running: usize = (1..=4)
        .map(|i| running_on(&rest, &format!("example@{i}.service")).len())
        .sum();
    assert_eq!(running, 2);
}

/// An engine that lost its lease cannot write: its transactions compare the leader key.
#[test]
fn a_deposed_engine_cannot_schedule() {
    let etcd = TestEtcd::start();
    let c = client(&etcd);
    let registry = Registry::new(c.clone(), PREFIX);
    let mut a = node(&etcd, 1, &[]);
    a.engine.pass().unwrap();
    assert!(a.engine.is_leading());
    // Someone else takes the leader key (as after a's lease expired).
    let key = "/_coreos.com/fleet/lease/engine-leader";
    c.delete(key, false).unwrap();
    c.put(key, br#"{"MachineID":"other","Version":1}"#, 0)
        .unwrap();
    put(
        &registry,
        "x.service",
        "launched",
        Some("[Service]\nExecStart=/bin/true\n"),
    );
    // Its lease still renews, but every write compares the leader key it created: refused.
    a.engine.pass().unwrap();
    assert!(!a.engine.is_leading());
    assert!(unit(&registry, "x.service").machine_id.is_empty());
}

/// `fleetctl` (the binary) from elsewhere, through `--endpoint http://…`: the API served over TCP
/// as `api_address` serves it, fleet's columns and messages, and its exit status.
#[test]
fn fleetctl_over_http() {
    let etcd = TestEtcd::start();
    let registry = Registry::new(client(&etcd), PREFIX);
    let mut nodes = vec![node(&etcd, 1, &[("region", "eu")]), node(&etcd, 2, &[])];
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", server.server_addr().to_ip().unwrap());
    let api_registry = Registry::new(client(&etcd), PREFIX);
    std::thread::spawn(move || api::serve(&api_registry, &server));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.service"), "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nMachineMetadata=region=eu\n").unwrap();
    let fleetctl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
            .arg("--endpoint")
            .arg(&endpoint)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = fleetctl(&["list-machines", "--no-legend"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("10.77.0.2\tregion=eu"), "{out}");
    assert_eq!(
        fleetctl(&["submit", "hello.service"]).1,
        "Unit hello.service inactive\n"
    );
    assert_eq!(
        fleetctl(&["start", "--no-block", "hello"]).1,
        "Triggered unit hello.service start\n"
    );
    settle(&mut nodes);
    let (_, out, _) = fleetctl(&["list-unit-files"]);
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        ["UNIT", "HASH", "DSTATE", "STATE", "TARGET"],
        "{out}"
    );
    assert_eq!(lines[1][0], "hello.service");
    assert_eq!(lines[1][2..4], ["launched", "launched"]);
    assert!(
        lines[1][4].ends_with("/10.77.0.2") && lines[1][4].starts_with(&nodes[0].id[..8]),
        "{out}"
    );
    assert_eq!(
        fleetctl(&["cat", "hello"]).1,
        UnitFile::parse(&std::fs::read_to_string(dir.path().join("hello.service")).unwrap())
            .unwrap()
            .serialize()
    );
    // A unit that does not exist, and an endpoint nobody serves: exit 1, with the name.
    let (code, _, err) = fleetctl(&["destroy", "nothing.service"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("nothing.service"), "{err}");
    let (code, _, err) = std::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args([
            "--endpoint",
            "http://127.0.0.1:9",
            "--request-timeout",
            "2",
            "list-units",
        ])
        .output()
        .map(|o| {
            (
                o.status.code(),
                (),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("http://127.0.0.1:9"), "{err}");
    assert_eq!(registry.jobs().unwrap().len(), 1);
}
