//! Leases against a real etcd (Debian's, on 127.0.0.1).

use super::*;
use kiln_etcd::testutil::TestEtcd;

fn registry(etcd: &TestEtcd) -> Registry {
    Registry::new(
        Client::new(std::slice::from_ref(&etcd.url), Duration::from_secs(5)),
        "/coreos.com/network",
    )
}

fn attrs(ip: [u8; 4]) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: Ipv4Addr::from(ip),
        public_ipv6: None,
        backend_type: "vxlan".into(),
        backend_data: serde_json::json!({"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}),
    }
}

fn put_config(r: &Registry, json: &str) -> NetworkConfig {
    r.etcd.put(&r.config_key(), json.as_bytes(), 0).unwrap();
    r.config().unwrap()
}

#[test]
fn machines_get_distinct_subnets_and_their_own_again() {
    let etcd = TestEtcd::start();
    let r = registry(&etcd);
    assert!(matches!(r.config(), Err(LeaseError::NoConfig { .. })));
    let cfg = put_config(
        &r,
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    let leases: Vec<Lease> = (1..=3)
        .map(|i| r.acquire(&cfg, &attrs([10, 77, 0, i]), None).unwrap())
        .collect();
    let subnets: BTreeSet<Ipv4Net> = leases.iter().map(|l| l.subnet).collect();
    assert_eq!(subnets.len(), 3);
    assert!(leases
        .iter()
        .all(|l| cfg.fits(&l.subnet) && l.etcd_lease != 0));
    // The value is flannel's JSON, the key flannel's name, under an etcd lease of a day.
    let kv = r
        .etcd
        .get(&r.lease_key(&leases[0].subnet))
        .unwrap()
        .unwrap();
    assert!(
        kv.key.starts_with("/coreos.com/network/subnets/10.5.") && kv.key.ends_with("-24"),
        "{}",
        kv.key
    );
    let json: Value = serde_json::from_slice(&kv.value).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"PublicIP":"10.77.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}})
    );
    let ttl = r.etcd.time_to_live(kv.lease).unwrap().unwrap();
    assert!(ttl > 86000 && ttl <= 86400, "{ttl}");
    // A machine that comes back (a reboot) gets its subnet again, under a fresh etcd lease.
    let again = r.acquire(&cfg, &attrs([10, 77, 0, 2]), None).unwrap();
    assert_eq!(again.subnet, leases[1].subnet);
    assert_ne!(again.etcd_lease, leases[1].etcd_lease);
    assert_eq!(
        r.etcd.time_to_live(leases[1].etcd_lease).unwrap(),
        None,
        "the old etcd lease was ended"
    );
    assert_eq!(r.leases().unwrap().0.len(), 3);
    assert!(r.renew(&again).unwrap());
    // Its lease deleted by an operator: renewing says so, and acquiring takes one again.
    r.etcd.delete(&r.lease_key(&again.subnet), false).unwrap();
    assert!(!r.renew(&again).unwrap());
    assert_eq!(r.leases().unwrap().0.len(), 2);
    let back = r
        .acquire(&cfg, &attrs([10, 77, 0, 2]), Some(again.subnet))
        .unwrap();
    assert_eq!(
        back.subnet, again.subnet,
        "the subnet of subnet.env, still free, is taken again"
    );
}

#[test]
fn a_full_network_says_so_and_reservations_are_kept() {
    let etcd = TestEtcd::start();
    let r = registry(&etcd);
    // Three /26 subnets: 10.6.0.64, .128, .192.
    let cfg = put_config(
        &r,
        r#"{"Network":"10.6.0.0/24","Backend":{"Type":"host-gw"}}"#,
    );
    // An operator reserves .128 for 10.77.0.9 (a key without an etcd lease).
    let reserved: Ipv4Net = "10.6.0.128/26".parse().unwrap();
    r.etcd
        .put(
            &r.lease_key(&reserved),
            &serde_json::to_vec(&attrs([10, 77, 0, 9])).unwrap(),
            0,
        )
        .unwrap();
    let a = r.acquire(&cfg, &attrs([10, 77, 0, 1]), None).unwrap();
    let b = r.acquire(&cfg, &attrs([10, 77, 0, 2]), None).unwrap();
    assert!(a.subnet != reserved && b.subnet != reserved && a.subnet != b.subnet);
    let e = r
        .acquire(&cfg, &attrs([10, 77, 0, 3]), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "10.6.0.0/24 has no free /26 subnet left for 10.77.0.3 (3 are leased or reserved)"
        ),
        "{e}"
    );
    let owner = r.acquire(&cfg, &attrs([10, 77, 0, 9]), None).unwrap();
    assert_eq!((owner.subnet, owner.etcd_lease), (reserved, 0));
    assert_eq!(
        r.etcd.get(&r.lease_key(&reserved)).unwrap().unwrap().lease,
        0,
        "still a reservation"
    );
    assert!(r.renew(&owner).unwrap());
}

#[test]
fn a_lease_of_an_older_config_is_replaced() {
    let etcd = TestEtcd::start();
    let r = registry(&etcd);
    let old = put_config(&r, r#"{"Network":"10.5.0.0/16"}"#);
    let first = r.acquire(&old, &attrs([10, 77, 0, 1]), None).unwrap();
    let new = put_config(&r, r#"{"Network":"10.8.0.0/16"}"#);
    let second = r
        .acquire(&new, &attrs([10, 77, 0, 1]), Some(first.subnet))
        .unwrap();
    assert!(new.fits(&second.subnet), "{}", second.subnet);
    let (leases, _) = r.leases().unwrap();
    assert_eq!(
        leases.iter().map(|l| l.subnet).collect::<Vec<_>>(),
        [second.subnet]
    );
}

#[test]
fn machines_starting_together_never_share_a_subnet() {
    let etcd = TestEtcd::start();
    let r = registry(&etcd);
    // Few subnets, many machines at once: the races are real.
    let cfg = put_config(&r, r#"{"Network":"10.7.0.0/24","SubnetLen":28}"#);
    let handles: Vec<_> = (1..=12u8)
        .map(|i| {
            let (r, cfg) = (r.clone(), cfg.clone());
            std::thread::spawn(move || {
                r.acquire(&cfg, &attrs([10, 77, 1, i]), None)
                    .unwrap()
                    .subnet
            })
        })
        .collect();
    let subnets: BTreeSet<Ipv4Net> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(subnets.len(), 12);
    assert_eq!(r.leases().unwrap().0.len(), 12);
}
