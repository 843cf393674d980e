//! Against a real etcd on 127.0.0.1 (Debian's etcd-server, installed when missing).

use std::time::{Duration, Instant};

use crate::testutil::{free_port, TestEtcd};
use crate::*;

fn client(etcd: &TestEtcd) -> Client {
    // The first endpoint is down: every request must move on to the next.
    Client::new(
        &[
            format!("http://127.0.0.1:{}", free_port()),
            etcd.url.clone(),
        ],
        Duration::from_secs(5),
    )
}

#[test]
fn prefix_ends_as_etcdctl_computes_them() {
    assert_eq!(prefix_end(b"/a/"), b"/a0");
    assert_eq!(prefix_end(b"a\xff"), b"b");
    assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    assert_eq!(prefix_end(b""), b"\0");
}

#[test]
fn keys_ranges_and_transactions() {
    let etcd = TestEtcd::start();
    let c = client(&etcd);
    assert_eq!(c.get("/p/a").unwrap(), None);
    c.put("/p/a", b"1", 0).unwrap();
    c.put("/p/b", b"2", 0).unwrap();
    c.put("/q", b"3", 0).unwrap();
    let range = c.get_prefix("/p/").unwrap();
    let keys: Vec<_> = range.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/p/a", "/p/b"]);
    assert_eq!(c.count_prefix("/p/").unwrap(), 2);
    assert_eq!(c.count_prefix("/nothing/").unwrap(), 0);
    assert!(range.revision >= 3, "{range:?}");
    let a = c.get("/p/a").unwrap().expect("present");
    assert_eq!(a.text(), "1");

    // Create only if absent: fails, and the failure branch reads the key.
    let t = c
        .txn(
            &[Compare::CreateRevision("/p/a".into(), 0)],
            &[Op::put("/p/a", "x")],
            &[Op::get("/p/a")],
        )
        .unwrap();
    assert!(!t.succeeded);
    assert_eq!(t.ranges[0][0].text(), "1");
    // Guarded by a revision: holds once, not after another write.
    let guard = Compare::ModRevision("/p/a".into(), a.mod_revision);
    assert!(
        c.txn(std::slice::from_ref(&guard), &[Op::put("/p/a", "2")], &[])
            .unwrap()
            .succeeded
    );
    assert!(
        !c.txn(&[guard], &[Op::put("/p/a", "3")], &[])
            .unwrap()
            .succeeded
    );
    assert!(
        c.txn(
            &[Compare::Value("/p/a".into(), b"2".to_vec())],
            &[Op::delete("/p/b")],
            &[]
        )
        .unwrap()
        .succeeded
    );
    assert_eq!(c.get("/p/b").unwrap(), None);
    assert_eq!(c.delete("/p/", true).unwrap(), 1);
    assert_eq!(
        c.get("/q").unwrap().map(|kv| kv.text()).as_deref(),
        Some("3")
    );
}

#[test]
fn leases_keep_and_lose_their_keys() {
    let etcd = TestEtcd::start();
    let c = client(&etcd);
    let lease = c.grant(Duration::from_secs(2)).unwrap();
    c.put("/leased", b"v", lease).unwrap();
    assert_eq!(c.get("/leased").unwrap().unwrap().lease, lease);
    assert!(c.keep_alive(lease).unwrap().is_some());
    assert!(c.time_to_live(lease).unwrap().is_some());
    // Not renewed: the key goes with the lease.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get("/leased").unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the leased key outlived its lease"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.keep_alive(lease).unwrap(), None);
    assert_eq!(c.time_to_live(lease).unwrap(), None);
    c.revoke(lease).unwrap();

    let lease = c.grant(Duration::from_secs(60)).unwrap();
    c.put("/leased", b"v", lease).unwrap();
    c.revoke(lease).unwrap();
    assert_eq!(c.get("/leased").unwrap(), None);
}

#[test]
fn watches_see_puts_and_deletes_and_wake() {
    let etcd = TestEtcd::start();
    let c = client(&etcd);
    c.put("/w/old", b"0", 0).unwrap();
    let mut watch = c.watch("/w/", true, 0).unwrap();
    c.put("/w/a", b"1", 0).unwrap();
    c.delete("/w/old", false).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.extend(watch.next_events().unwrap());
    }
    assert_eq!(
        (
            seen[0].kind,
            seen[0].kv.key.as_str(),
            seen[0].kv.text().as_str()
        ),
        (EventKind::Put, "/w/a", "1")
    );
    assert_eq!(
        (seen[1].kind, seen[1].kv.key.as_str()),
        (EventKind::Delete, "/w/old")
    );

    let (tx, rx) = std::sync::mpsc::channel();
    c.spawn_waker(vec!["/x/".into()], tx, Duration::from_millis(200));
    // The waker's watch may not be open yet: keep writing until it wakes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        c.put("/x/k", b"v", 0).unwrap();
        if rx.recv_timeout(Duration::from_millis(500)).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no wake-up from a watched change"
        );
    }
}

#[test]
fn no_endpoint_names_every_endpoint_tried() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let c = Client::new(std::slice::from_ref(&dead), Duration::from_secs(2));
    let e = c.get("/k").unwrap_err();
    assert!(e.is_transient());
    let text = e.to_string();
    assert!(
        text.contains(&dead) && text.contains("check that etcd runs"),
        "{text}"
    );
}
