use std::collections::HashMap;
use std::sync::Arc;
use std::thread;

use kiln_etcd::testutil::TestEtcd;
use serde_json::Value;

use super::*;
use crate::testns::{ping_command, wire, Machine};

fn net(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

#[test]
fn options_are_flanneds_variables_with_its_defaults() {
    let o = Options::from_env(env_of(&[])).unwrap();
    assert_eq!(o.etcd_endpoints, [DEFAULT_ETCD]);
    assert_eq!(o.prefix, "/coreos.com/network");
    assert_eq!((o.interface, o.public_ip, o.ip_masq), (None, None, true));
    assert_eq!(o.subnet_file, Path::new("/run/flannel/subnet.env"));

    let o = Options::from_env(env_of(&[
        (
            "FLANNELD_ETCD_ENDPOINTS",
            "http://10.0.0.1:2379/, http://10.0.0.2:2379",
        ),
        ("FLANNELD_ETCD_PREFIX", "/kiln/network"),
        ("FLANNELD_INTERFACE", "eth1"),
        ("FLANNELD_PUBLIC_IP", "10.0.0.7"),
        ("FLANNELD_IP_MASQ", "false"),
        ("FLANNELD_SUBNET_FILE", "/run/x.env"),
    ]))
    .unwrap();
    assert_eq!(
        o.etcd_endpoints,
        ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    );
    assert_eq!(o.prefix, "/kiln/network");
    assert_eq!(o.interface.as_deref(), Some("eth1"));
    assert_eq!(o.public_ip, Some(Ipv4Addr::new(10, 0, 0, 7)));
    assert!(!o.ip_masq);
    assert_eq!(o.subnet_file, Path::new("/run/x.env"));

    let e = Options::from_env(env_of(&[("FLANNELD_PUBLIC_IP", "10.0.0")])).unwrap_err();
    assert!(
        e.contains("FLANNELD_PUBLIC_IP=\"10.0.0\" is not an IPv4 address"),
        "{e}"
    );
    let o = Options::from_env(env_of(&[
        ("FLANNELD_NETWORK", "10.6.0.0/16"),
        ("FLANNELD_BACKEND", "host-gw"),
    ]))
    .unwrap();
    assert_eq!(
        o.network.as_deref(),
        Some(r#"{"Backend":{"Type":"host-gw"},"Network":"10.6.0.0/16"}"#)
    );
    let e = Options::from_env(env_of(&[("FLANNELD_NETWORK", "10.6.0.1/16")])).unwrap_err();
    assert!(e.starts_with("FLANNELD_NETWORK: "), "{e}");
    let e = Options::from_env(env_of(&[
        ("FLANNELD_NETWORK", "10.6.0.0/16"),
        ("FLANNELD_BACKEND", "udp"),
    ]))
    .unwrap_err();
    assert!(e.contains("udp"), "{e}");
    let e = Options::from_env(env_of(&[("FLANNELD_IP_MASQ", "yes")])).unwrap_err();
    assert!(
        e.contains("FLANNELD_IP_MASQ=\"yes\": write true or false"),
        "{e}"
    );
}

fn lease(subnet: &str, ip: [u8; 4], backend: &str, data: Value) -> Lease {
    Lease {
        subnet: net(subnet),
        attrs: LeaseAttrs {
            public_ip: Ipv4Addr::from(ip),
            public_ipv6: None,
            backend_type: backend.into(),
            backend_data: data,
        },
        etcd_lease: 1,
        mod_revision: 1,
    }
}

#[test]
fn each_other_lease_is_a_peer_and_a_changed_one_is_set_again() {
    let vxlan = Backend::Vxlan(crate::config::Vxlan {
        vni: 1,
        port: 0,
        direct_routing: false,
    });
    let mac = |m: &str| json!({ "VNI": 1, "VtepMAC": m });
    let leases = vec![
        lease(
            "10.5.1.0/24",
            [10, 9, 0, 1],
            "vxlan",
            mac("c6:d2:32:6f:8f:44"),
        ),
        lease(
            "10.5.2.0/24",
            [10, 9, 0, 2],
            "vxlan",
            mac("c6:d2:32:6f:8f:45"),
        ),
        lease("10.5.3.0/24", [10, 9, 0, 3], "host-gw", Value::Null),
        lease("10.5.4.0/24", [10, 9, 0, 4], "vxlan", json!({})),
    ];
    let (wanted, skipped) = wanted_peers(&leases, net("10.5.1.0/24"), &vxlan);
    assert_eq!(
        wanted.keys().copied().collect::<Vec<_>>(),
        [net("10.5.2.0/24")]
    );
    assert_eq!(
        wanted[&net("10.5.2.0/24")],
        Peer::Vxlan(VxlanPeer {
            subnet: net("10.5.2.0/24"),
            public_ip: Ipv4Addr::new(10, 9, 0, 2),
            vtep_mac: "c6:d2:32:6f:8f:45".parse().unwrap(),
        })
    );
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped[0].starts_with("10.5.3.0/24 (10.9.0.3): its backend is \"host-gw\""));
    assert!(skipped[1].contains("no VtepMAC"), "{skipped:?}");

    let (host_gw, _) = wanted_peers(&leases, net("10.5.1.0/24"), &Backend::HostGw);
    assert_eq!(
        host_gw.values().copied().collect::<Vec<_>>(),
        [Peer::HostGw {
            subnet: net("10.5.3.0/24"),
            via: Ipv4Addr::new(10, 9, 0, 3)
        }]
    );

    // 10.5.2.0 came back with a new MAC (its machine was set up again), 10.5.5.0 is new, and
    // 10.5.6.0 is gone.
    let held: BTreeMap<_, _> = [
        (net("10.5.2.0/24"), wanted[&net("10.5.2.0/24")]),
        (
            net("10.5.6.0/24"),
            Peer::HostGw {
                subnet: net("10.5.6.0/24"),
                via: Ipv4Addr::new(10, 9, 0, 6),
            },
        ),
    ]
    .into();
    let mut now = leases.clone();
    now[1].attrs.backend_data = mac("c6:d2:32:6f:8f:99");
    now.push(lease(
        "10.5.5.0/24",
        [10, 9, 0, 5],
        "vxlan",
        mac("c6:d2:32:6f:8f:55"),
    ));
    let (wanted, _) = wanted_peers(&now, net("10.5.1.0/24"), &vxlan);
    let (remove, add) = changes(&held, &wanted);
    let subnets = |ps: &[Peer]| ps.iter().map(subnet_of).collect::<Vec<_>>();
    assert_eq!(subnets(&remove), [net("10.5.2.0/24"), net("10.5.6.0/24")]);
    assert_eq!(subnets(&add), [net("10.5.2.0/24"), net("10.5.5.0/24")]);
    assert_eq!(changes(&wanted, &wanted), (vec![], vec![]));
}

#[test]
fn only_what_leaves_the_network_is_masqueraded() {
    let rules = iptables_rules(net("10.5.0.0/16"), net("10.5.7.0/24"), true);
    let text: Vec<String> = rules.iter().map(|r| r.join(" ")).collect();
    assert_eq!(
        text,
        [
            "filter FORWARD -s 10.5.0.0/16 -j ACCEPT",
            "filter FORWARD -d 10.5.0.0/16 -j ACCEPT",
            "nat POSTROUTING -s 10.5.0.0/16 -d 10.5.0.0/16 -j RETURN",
            "nat POSTROUTING -s 10.5.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE",
            "nat POSTROUTING ! -s 10.5.0.0/16 -d 10.5.7.0/24 -j RETURN",
            "nat POSTROUTING ! -s 10.5.0.0/16 -d 10.5.0.0/16 -j MASQUERADE",
        ]
    );
    // Without ip-masq, docker masquerades (its --ip-masq is the opposite) and flannel only
    // forwards.
    assert_eq!(
        iptables_rules(net("10.5.0.0/16"), net("10.5.7.0/24"), false).len(),
        2
    );
}

/// What `iptables-save` shows is kept; the rest goes to `iptables-restore` by table. The
/// daemon's test below checks the same against the real tools (a restart adds nothing).
#[test]
fn only_missing_rules_are_restored() {
    let rules = iptables_rules(net("10.5.0.0/16"), net("10.5.7.0/24"), true);
    // As iptables-save 1.8.9 printed a machine with two of the rules already there.
    let saved = "# Generated by iptables-nft-save v1.8.9 (nf_tables)\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n-A FORWARD -s 10.5.0.0/16 -j ACCEPT\n-A FORWARD -j DOCKER-USER\nCOMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.5.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE\n-A POSTROUTING -s 10.5.0.0/16 -d 10.5.0.0/16 -j ACCEPT\nCOMMIT\n";
    let missing = missing_rules(saved, &rules);
    assert_eq!(
        restore_input(&missing),
        "*filter\n-A FORWARD -d 10.5.0.0/16 -j ACCEPT\nCOMMIT\n*nat\n-A POSTROUTING -s 10.5.0.0/16 -d 10.5.0.0/16 -j RETURN\n-A POSTROUTING ! -s 10.5.0.0/16 -d 10.5.7.0/24 -j RETURN\n-A POSTROUTING ! -s 10.5.0.0/16 -d 10.5.0.0/16 -j MASQUERADE\nCOMMIT\n"
    );
    // A rule of one table is not taken for another's.
    let other = "*mangle\n-A FORWARD -d 10.5.0.0/16 -j ACCEPT\nCOMMIT\n";
    assert_eq!(missing_rules(other, &rules).len(), rules.len());
    let all: String = rules
        .iter()
        .map(|r| format!("*{}\n-A {}\nCOMMIT\n", r[0], r[1..].join(" ")))
        .collect();
    assert!(missing_rules(&all, &rules).is_empty());
    // Each table once, whatever the rules' order.
    let mixed: Vec<Vec<String>> = [
        "filter FORWARD -s 10.5.0.0/16 -j ACCEPT",
        "nat POSTROUTING -d 10.5.0.0/16 -j RETURN",
        "filter FORWARD -d 10.5.0.0/16 -j ACCEPT",
    ]
    .iter()
    .map(|r| r.split(' ').map(String::from).collect())
    .collect();
    assert_eq!(
        restore_input(&mixed.iter().collect::<Vec<_>>()),
        "*filter\n-A FORWARD -s 10.5.0.0/16 -j ACCEPT\n-A FORWARD -d 10.5.0.0/16 -j ACCEPT\nCOMMIT\n*nat\n-A POSTROUTING -d 10.5.0.0/16 -j RETURN\nCOMMIT\n"
    );
}

/// A tool that refuses its input: the error names the command, what it said and the input.
/// (`--test`: iptables-restore only checks, nothing on this machine changes.)
#[test]
fn a_refused_restore_names_the_command_and_its_input() {
    kiln_image::testutil::require_tool("iptables-restore", "iptables");
    let input = "*filter\n-A FORWARD --no-such-option 1 -j ACCEPT\nCOMMIT\n";
    let e = iptables_tool("iptables-restore", &["--noflush", "--test"], Some(input)).unwrap_err();
    assert!(
        e.starts_with("iptables-restore --noflush --test failed (exit status: ")
            && e.contains("unknown option \"--no-such-option\"")
            && e.ends_with(&format!("; its input:\n{input}")),
        "{e}"
    );
}

/// A daemon running on a simulated machine's namespace, stopped and joined when dropped.
struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<(), String>>>,
}

impl Running {
    fn start(m: &Machine, opts: Options) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // A thread started from the machine's thread is in the machine's namespace.
        let thread = m.run(move |_| {
            thread::Builder::new()
                .name("flanneld".into())
                .spawn(move || run(&opts, &flag))
                .expect("spawning the daemon")
        });
        Running {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let result = self
            .thread
            .take()
            .unwrap()
            .join()
            .expect("the daemon panicked");
        result.expect("the daemon's end");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls `check` each 200 ms for up to `secs`; the time it took, or a panic saying `what`.
fn within(secs: u64, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

fn subnet_in(path: &Path) -> Option<Ipv4Net> {
    Some(SubnetEnv::parse(&std::fs::read_to_string(path).ok()?)?.subnet)
}

/// Whether `m` routes `subnet` by flannel.1 (vxlan's on-link route).
fn routes_by_vtep(m: &Machine, subnet: Ipv4Net) -> bool {
    let routes = m.json(&["ip", "-j", "route", "show", &subnet.to_string()]);
    routes
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["dev"] == "flannel.1"))
}

#[test]
fn two_daemons_lease_subnets_reach_each_other_and_follow_the_leases() {
    kiln_image::testutil::require_tool("iptables", "iptables");
    let a = Machine::start("flanneld-a");
    let b = Machine::start("flanneld-b");
    wire(&a, &b);
    // A finds its address by its default route, B is told its interface by address.
    a.tool(&[
        "ip", "route", "add", "default", "via", "10.9.0.2", "dev", "v0",
    ]);
    // etcd runs on A, where both reach it over the wire.
    let etcd = a.run(|_| TestEtcd::start_on("10.9.0.1"));
    let url = etcd.url.clone();
    let registry = move || {
        Registry::new(
            Client::new(std::slice::from_ref(&url), Duration::from_secs(5)),
            DEFAULT_PREFIX,
        )
    };

    let dir = tempfile::tempdir().unwrap();
    let opts = |name: &str, interface: Option<&str>| Options {
        etcd_endpoints: vec![etcd.url.clone()],
        prefix: DEFAULT_PREFIX.into(),
        interface: interface.map(String::from),
        public_ip: None,
        ip_masq: true,
        subnet_file: dir.path().join(format!("{name}/subnet.env")),
        docker_opts_file: dir.path().join(format!("{name}/docker_opts.env")),
        network: None,
        required: true,
    };
    // etcd holds no network config: B waits for it, A writes it from its options.
    let (mut a_opts, b_opts) = (opts("a", None), opts("b", Some("10.9.0.2")));
    // Where no flannel: section asked for it and etcd holds no config, the daemon ends at once
    // and sets nothing up.
    let unasked = Options {
        required: false,
        ..b_opts.clone()
    };
    let idle = unasked.clone();
    assert_eq!(b.run(move |_| run(&idle, &AtomicBool::new(false))), Ok(()));
    assert_eq!(subnet_in(&b_opts.subnet_file), None);
    assert!(!b.tool_line("ip -o link show").contains("flannel.1"));
    a_opts.network = Options::from_env(env_of(&[("FLANNELD_NETWORK", "10.5.0.0/16")]))
        .unwrap()
        .network;
    let da = Running::start(&a, a_opts.clone());
    let db = Running::start(&b, b_opts.clone());
    within(30, "both machines' subnet.env", || {
        subnet_in(&a_opts.subnet_file).is_some() && subnet_in(&b_opts.subnet_file).is_some()
    });
    let (sa, sb) = (
        subnet_in(&a_opts.subnet_file).unwrap(),
        subnet_in(&b_opts.subnet_file).unwrap(),
    );
    assert_ne!(sa, sb);
    let env = std::fs::read_to_string(&a_opts.subnet_file).unwrap();
    assert!(
        env.contains("FLANNEL_NETWORK=10.5.0.0/16\n") && env.contains("FLANNEL_MTU=1450\n"),
        "{env}"
    );
    let docker = std::fs::read_to_string(&a_opts.docker_opts_file).unwrap();
    assert!(
        docker.contains(&format!("--bip={}/24", sa.first_host())),
        "{docker}"
    );

    // The leases name each machine's address and its device's MAC.
    let reg = registry.clone();
    let (leases, _) = a.run(move |_| reg().leases()).unwrap();
    assert_eq!(leases.len(), 2, "{leases:?}");
    for (m, subnet, ip) in [(&a, sa, "10.9.0.1"), (&b, sb, "10.9.0.2")] {
        let l = leases.iter().find(|l| l.subnet == subnet).unwrap();
        assert_eq!(l.attrs.public_ip.to_string(), ip);
        let link = &m.json(&["ip", "-j", "link", "show", "flannel.1"])[0];
        assert_eq!(l.attrs.backend_data["VtepMAC"], link["address"], "{l:?}");
        assert_eq!(link["mtu"], 1450);
    }

    within(10, "each machine's route to the other's subnet", || {
        routes_by_vtep(&a, sb) && routes_by_vtep(&b, sa)
    });
    let mut ping = ping_command();
    let (from, to) = (sa.addr.to_string(), sb.addr.to_string());
    ping.extend(["-c", "2", "-W", "2", "-I", &from, &to]);
    a.tool(&ping);
    let nat = a.tool(&["iptables", "-t", "nat", "-S", "POSTROUTING"]);
    assert!(
        nat.contains("-A POSTROUTING -s 10.5.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE"),
        "{nat}"
    );

    // B goes away and its lease ends: A takes B's entries away within seconds.
    db.stop();
    let reg = registry.clone();
    a.run(move |_| reg().etcd.delete(&reg().lease_key(&sb), false))
        .unwrap();
    let took = within(10, "A forgetting B's subnet", || !routes_by_vtep(&a, sb));
    eprintln!(
        "A removed B's route {} ms after its lease went",
        took.as_millis()
    );

    // B comes back with its subnet.env: the same subnet, and A routes it again. Without a
    // flannel: section now (a machine updated from a version without flannel): etcd holds a
    // config, so it is on the overlay all the same.
    let db = Running::start(&b, unasked);
    within(10, "A routing B's subnet again", || routes_by_vtep(&a, sb));
    assert_eq!(subnet_in(&b_opts.subnet_file), Some(sb));

    // An operator deletes A's own lease while it runs: A takes the same subnet again.
    let reg = registry.clone();
    a.run(move |_| reg().etcd.delete(&reg().lease_key(&sa), false))
        .unwrap();
    let reg = registry.clone();
    within(15, "A's lease taken again", || {
        let reg = reg.clone();
        a.run(move |_| reg().leases()).is_ok_and(|(l, _)| {
            l.iter()
                .any(|l| l.subnet == sa && l.attrs.public_ip == Ipv4Addr::new(10, 9, 0, 1))
        })
    });
    // A restart sets nothing twice.
    da.stop();
    use std::os::unix::fs::MetadataExt;
    let inode = |p: &Path| std::fs::metadata(p).map(|m| m.ino()).ok();
    let before = inode(&a_opts.subnet_file);
    let da = Running::start(&a, a_opts.clone());
    // subnet.env is written (a new file renamed over the old) after the rules are set.
    within(10, "A set up again", || {
        inode(&a_opts.subnet_file) != before
    });
    assert_eq!(subnet_in(&a_opts.subnet_file), Some(sa));
    let nat = a.tool(&["iptables", "-t", "nat", "-S", "POSTROUTING"]);
    assert_eq!(nat.matches("MASQUERADE").count(), 2, "{nat}");
    da.stop();
    db.stop();
}
