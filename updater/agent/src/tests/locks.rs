//! Reboot locks: `etcd-lock` against a real etcd on 127.0.0.1 (Debian's etcd-server), and
//! `fleetlock` against a small FleetLock server, both driven through the state machine too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_contract::boot::Slot;
use kiln_etcd::testutil::{free_port, TestEtcd};

use super::mock::{MockServer, Reply};
use super::*;
use crate::strategy::{EtcdLock, FleetLock, RebootLock};

fn start_etcd() -> TestEtcd {
    TestEtcd::start()
}

fn etcd_lock(url: &str, holder: &str) -> EtcdLock {
    EtcdLock {
        // The first endpoint is down: the lock must move on to the next.
        etcd: kiln_etcd::Client::new(
            &[format!("http://127.0.0.1:{}", free_port()), url.to_owned()],
            Duration::from_secs(5),
        ),
        key: "/kiln/reboot-lock".into(),
        ttl: Duration::from_secs(600),
        holder: holder.into(),
        local_member: true,
    }
}

/// (this member's id, the leader's id) from etcd's own status of the member at `url`.
fn member_status(url: &str) -> (String, String) {
    let text = crate::http::agent(Duration::from_secs(5))
        .post(&format!("{url}/v3/maintenance/status"))
        .send_string("{}")
        .expect("status")
        .into_string()
        .expect("status answer");
    let answer: serde_json::Value = serde_json::from_str(&text).expect("json");
    let id = |v: &serde_json::Value| v.as_str().expect("an id string").to_owned();
    (id(&answer["header"]["member_id"]), id(&answer["leader"]))
}

/// The key's value as etcd itself reports it (`None` when absent).
fn etcd_holder(url: &str) -> Option<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = serde_json::json!({ "key": b64.encode("/kiln/reboot-lock") }).to_string();
    let text = crate::http::agent(Duration::from_secs(5))
        .post(&format!("{url}/v3/kv/range"))
        .send_string(&body)
        .expect("range")
        .into_string()
        .expect("range answer");
    let answer: serde_json::Value = serde_json::from_str(&text).expect("json");
    let kv = answer.get("kvs")?.as_array()?.first()?.clone();
    assert!(
        kv.get("lease").is_some(),
        "the key is held under a lease: {kv}"
    );
    let value = b64.decode(kv["value"].as_str()?).ok()?;
    Some(String::from_utf8(value).expect("utf-8"))
}

#[test]
fn etcd_lock_has_one_holder_at_a_time() {
    let etcd = start_etcd();
    let a = etcd_lock(&etcd.url, "machine-a");
    let b = etcd_lock(&etcd.url, "machine-b");
    assert!(a.acquire().unwrap(), "a free lock is taken");
    assert_eq!(etcd_holder(&etcd.url).as_deref(), Some("machine-a"));
    assert!(!b.acquire().unwrap(), "a held lock is refused");
    assert!(
        a.acquire().unwrap(),
        "taking it again (after a restart) is fine"
    );
    b.release().unwrap();
    assert_eq!(
        etcd_holder(&etcd.url).as_deref(),
        Some("machine-a"),
        "only the holder releases"
    );
    a.release().unwrap();
    assert_eq!(etcd_holder(&etcd.url), None);
    assert!(b.acquire().unwrap());
    assert_eq!(etcd_holder(&etcd.url).as_deref(), Some("machine-b"));
}

/// The lease is renewed each time the holder takes the lock again (the agent does while it
/// waits with the lock held): it does not free itself a TTL after it was first taken.
#[test]
fn etcd_lock_held_is_renewed_not_freed_by_its_first_ttl() {
    let etcd = start_etcd();
    let mut a = etcd_lock(&etcd.url, "machine-a");
    a.ttl = Duration::from_secs(3);
    let b = etcd_lock(&etcd.url, "machine-b");
    assert!(a.acquire().unwrap());
    std::thread::sleep(Duration::from_secs(2));
    assert!(a.acquire().unwrap(), "renewed by its holder");
    std::thread::sleep(Duration::from_secs(2));
    // 4 s after it was taken, 2 s after it was renewed: still a's.
    assert!(!b.acquire().unwrap(), "the lock freed itself while held");
    assert_eq!(etcd_holder(&etcd.url).as_deref(), Some("machine-a"));
    // Not renewed, it does expire: a machine that never comes back frees it.
    std::thread::sleep(Duration::from_secs(4));
    assert!(b.acquire().unwrap());
}

/// An agent environment with `etcd-lock` on `etcd`, whose lock another machine holds.
fn env_with_lock_held_elsewhere(etcd: &TestEtcd) -> (Env, EtcdLock) {
    let mut env = Env::new();
    env.config.reboot_strategy = RebootStrategy::EtcdLock;
    env.config.etcd_endpoints = vec![etcd.url.clone()];
    let other = etcd_lock(&etcd.url, "another-machine");
    assert!(other.acquire().unwrap());
    (env, other)
}

/// One step while another machine holds the lock: a bounded wait, still in `state`.
fn waits_for_the_lock(agent: &mut Agent, state: &str) {
    let next = agent.step().unwrap();
    assert!(
        matches!(next, Next::Wait(d) if d <= Duration::from_secs(330)),
        "{next:?}"
    );
    assert_eq!(state_name(agent.status()), state);
}

/// Through the state machine: the lock is taken before the reboot and released only once the
/// rebooted machine is healthy.
#[test]
fn etcd_lock_is_held_across_the_reboot_until_healthy() {
    let etcd = start_etcd();
    let (env, other) = env_with_lock_held_elsewhere(&etcd);
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "reboot-needed", 5);
        // Another machine holds the lock: wait (bounded), no reboot.
        waits_for_the_lock(&mut agent, "reboot-needed");
        other.release().unwrap();
        step_until(&mut agent, "rebooting", 1);
        assert!(agent.status().lock_held);
        agent.step().unwrap();
    }
    assert_eq!(host.reboots, 1);
    assert_eq!(etcd_holder(&etcd.url).as_deref(), Some(MACHINE_ID));

    host.boot_id = BOOT_2.into();
    installer.running = Slot::B;
    {
        let mut agent = env.agent(&mut installer, &mut host);
        assert_eq!(
            etcd_holder(&etcd.url).as_deref(),
            Some(MACHINE_ID),
            "held while confirming"
        );
        step_until(&mut agent, "idle", 1);
        assert!(!agent.status().lock_held);
    }
    assert_eq!(installer.blessed, 1);
    assert_eq!(etcd_holder(&etcd.url), None);
}

/// `lock_install`: the lock is taken before the slot is written, so that a machine does not
/// install while another reboots; a failed install gives it back at once.
#[test]
fn etcd_lock_taken_before_installing_when_asked() {
    let etcd = start_etcd();
    let (mut env, other) = env_with_lock_held_elsewhere(&etcd);
    env.config.lock_install = true;
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    installer.fail = Some(crate::installer::InstallFailure {
        code: kiln_contract::errorcode::INSTALL_DEVICE,
        message: "the inactive partition is gone".into(),
    });
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "writing", 5);
        // Downloaded, but another machine is busy: no write yet.
        waits_for_the_lock(&mut agent, "writing");
        assert!(!agent.status().lock_held);
        drop(agent);
        // The payload was checked before the wait, so the turn goes to writing.
        assert!(!installer.checked.is_empty(), "checked before the lock");
        assert!(
            installer.payloads.is_empty(),
            "nothing written before the lock"
        );
        let mut agent = env.agent(&mut installer, &mut host);
        waits_for_the_lock(&mut agent, "writing");
        other.release().unwrap();
        // Taken, then the write fails: the machine is idle and the lock free again.
        agent.step().unwrap();
        step_until(&mut agent, "idle", 2);
        assert!(!agent.status().lock_held);
    }
    assert_eq!(installer.payloads.len(), 1, "one attempt, after the lock");
    assert_eq!(etcd_holder(&etcd.url), None, "given back after the failure");

    installer.fail = None;
    std::fs::create_dir_all(&env.paths.run_dir).unwrap();
    std::fs::write(env.paths.check_trigger(), "").unwrap();
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "reboot-needed", 6);
        assert!(agent.status().lock_held, "held from the install on");
        assert_eq!(etcd_holder(&etcd.url).as_deref(), Some(MACHINE_ID));
        step_until(&mut agent, "rebooting", 1);
    }
    assert_eq!(installer.payloads.len(), 2);
}

/// With `lock_install`, a payload that fails the checks made before the wait never takes the
/// lock: 3/0 with the installer's code, nothing written, the lock free for the others.
#[test]
fn a_payload_that_fails_its_checks_never_takes_the_install_lock() {
    let etcd = start_etcd();
    let (mut env, other) = env_with_lock_held_elsewhere(&etcd);
    other.release().unwrap();
    env.config.lock_install = true;
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    installer.refuse = Some(crate::installer::InstallFailure {
        code: kiln_contract::errorcode::SIGNATURE,
        message: "manifest signature does not verify".into(),
    });
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "writing", 5);
        agent.step().unwrap();
        assert_eq!(state_name(agent.status()), "idle");
        assert!(!agent.status().lock_held);
        let e = agent.status().last_error.clone().unwrap();
        assert!(e.contains("signature"), "{e}");
    }
    assert_eq!(installer.checked.len(), 1);
    assert!(installer.payloads.is_empty(), "nothing written");
    assert_eq!(etcd_holder(&etcd.url), None, "the lock was never taken");
    assert_eq!(env.events(), ["13/1", "14/1", "3/0 code=18"]);
}

#[test]
fn fleetlock_asks_before_rebooting_and_reports_steady_state() {
    let busy = Arc::new(AtomicUsize::new(1));
    let lock_server = {
        let busy = busy.clone();
        MockServer::start(move |seen| {
            if seen.header("fleet-lock-protocol") != Some("true") {
                return Reply::status(400, "missing fleet-lock-protocol header");
            }
            match seen.path.as_str() {
                // The first pre-reboot finds the semaphore full.
                "/v1/pre-reboot" if busy.fetch_sub(1, Ordering::SeqCst) == 1 => {
                    Reply::status(409, r#"{"kind":"failed_lock","value":"semaphore full"}"#)
                }
                "/v1/pre-reboot" | "/v1/steady-state" => Reply::status(200, ""),
                _ => Reply::status(404, ""),
            }
        })
    };
    let mut env = Env::new();
    env.config.reboot_strategy = RebootStrategy::FleetLock;
    env.config.fleetlock_url = Some(format!("{}/", lock_server.url));
    env.config.lock_group = "workers".into();
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "reboot-needed", 5);
        assert!(matches!(agent.step().unwrap(), Next::Wait(_)));
        assert_eq!(state_name(agent.status()), "reboot-needed");
        step_until(&mut agent, "rebooting", 1);
        agent.step().unwrap();
    }
    host.boot_id = BOOT_2.into();
    installer.running = Slot::B;
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "idle", 1);
    }
    let seen = lock_server.seen();
    let paths: Vec<_> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/v1/pre-reboot", "/v1/pre-reboot", "/v1/steady-state"]
    );
    let body: serde_json::Value = serde_json::from_str(&seen[2].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({ "client_params": { "group": "workers", "id": MACHINE_ID } })
    );
    assert_eq!(host.reboots, 1);
    assert_eq!(installer.blessed, 1);
}

/// Only 200 takes or gives back a FleetLock; a group the protocol does not allow is refused
/// when the strategy is made.
#[test]
fn fleetlock_success_is_200_only_and_its_group_is_checked() {
    let server = MockServer::start(|_| Reply::status(204, ""));
    let lock = FleetLock {
        http: crate::http::agent(Duration::from_secs(5)),
        base: server.url.clone(),
        group: "default".into(),
        id: MACHINE_ID.into(),
    };
    let e = lock.acquire().unwrap_err();
    assert!(e.to_string().contains("status 204"), "{e}");
    assert!(lock.release().is_err());
    let mut config = Env::new().config;
    config.reboot_strategy = RebootStrategy::FleetLock;
    config.fleetlock_url = Some(server.url.clone());
    for bad in ["", "my group", "a/b", "grüppe"] {
        config.lock_group = bad.into();
        let made = crate::strategy::Strategy::from_config(
            &config,
            &crate::http::agent(Duration::from_secs(1)),
            MACHINE_ID,
        );
        assert!(
            matches!(made, Err(crate::strategy::LockError::BadGroup(_))),
            "{bad:?} taken"
        );
    }
    config.lock_group = "workers-1.eu".into();
    assert!(crate::strategy::Strategy::from_config(
        &config,
        &crate::http::agent(Duration::from_secs(1)),
        MACHINE_ID
    )
    .is_ok());
}

#[test]
fn fleetlock_server_down_is_an_error_not_a_reboot() {
    let lock = FleetLock {
        http: crate::http::agent(Duration::from_secs(1)),
        base: format!("http://127.0.0.1:{}", free_port()),
        group: "default".into(),
        id: MACHINE_ID.into(),
    };
    let e = lock.acquire().unwrap_err();
    assert!(e.to_string().contains("/v1/pre-reboot"), "{e}");
}

/// A machine whose etcd member leads hands the leadership to another member when it takes the
/// lock (it is about to install or reboot); a follower's lock leaves the leader alone. Three
/// real members on 127.0.0.1.
#[test]
fn taking_the_etcd_lock_moves_the_leadership_off_this_machines_member() {
    let members = TestEtcd::cluster(3);
    let leader_url = |members: &[TestEtcd]| {
        members
            .iter()
            .find(|m| {
                let (me, leader) = member_status(&m.url);
                me == leader
            })
            .map(|m| m.url.clone())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        if let Some(url) = leader_url(&members) {
            break url;
        }
        assert!(Instant::now() < deadline, "no leader within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let follower = members.iter().find(|m| m.url != before).unwrap();
    let lock = etcd_lock(&follower.url, "a-follower");
    assert!(lock.acquire().unwrap());
    assert_eq!(leader_url(&members).as_deref(), Some(before.as_str()));
    lock.release().unwrap();

    // A worker whose gateway happens to reach the leader has no member to hand on.
    let lock = EtcdLock {
        local_member: false,
        ..etcd_lock(&before, "a-worker")
    };
    assert!(lock.acquire().unwrap());
    assert_eq!(leader_url(&members).as_deref(), Some(before.as_str()));
    lock.release().unwrap();

    let lock = etcd_lock(&before, "the-leader");
    assert!(lock.acquire().unwrap());
    let (me, leader) = member_status(&before);
    assert_ne!(me, leader, "the member at {before} still leads");
    lock.release().unwrap();
}
