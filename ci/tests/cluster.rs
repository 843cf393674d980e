//! Three machines configured by their cloud-configs alone: a private network between them (a
//! QEMU socket netdev, UDP multicast on 127.0.0.1) with static addresses, an etcd cluster over
//! it, configured as the CoreOS documentation writes it (`$private_ipv4`) and bootstrapped from
//! a discovery URL the update server gives (no member named in any document), and a container on
//! one node that registers its address in etcd for the others to find. User networking
//! (restricted) carries ssh and etcd's client port (etcd listens on every address) from the
//! host, and the agents' and etcd's requests to the update server on the host.
//!
//! A fourth machine is a worker (`etcd2: proxy: on`): no member, Kiln's etcd proxy to the members
//! on 127.0.0.1:2379, flannel and the update agent through it. A fifth, given the same discovery URL
//! once the cluster is full, is refused and says why; at the end it is provisioned again as a new
//! member added to the running cluster, and removed again, while a writer runs.
//!
//! On the same boot, fleet (`kiln_ci::fleet`) and flannel (`kiln_ci::flannel`): the cloud-configs
//! ask for an overlay on the private network, and containers on different machines, fleet's
//! among them, reach each other at their own addresses.
//!
//! Then a rolling update of the cluster, reboot strategy `etcd-lock`, the members with
//! `lock_install` (one member at a time installs or reboots), the worker installing beside them
//! and rebooting under its own lock group's: all four reach v2, one member down at a time (from
//! the locks' history in etcd, and from each member's boot time against the host's probes of
//! its etcd member), while a writer on the host keeps writing to the cluster and never goes
//! more than 5 s without a write going through. Last, the leader is lost for good: the other
//! two elect another and keep taking writes. fleet and flannel are checked again after the
//! update (flannel: the same subnets after each reboot, and a deleted lease's routes gone).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use kiln_ci::update::{Evidence, UpdateServer, Version, INSTALL_STEPS, RUNNING};
use kiln_ci::{
    flannel, fleet, guest, guest_waiting, on_each, overlay, unit_ended, wait_in_guest, work_dir,
};
use kiln_contract::update_conf::DEFAULT_LOCK_GROUP;
use kiln_qemu::{
    format_mac, free_port, ssh_keygen, Accel, HostFwd, SocketMode, SocketNic, Vm, VmConfig,
};

const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
/// A boot's total, the chain of units `multi-user.target` waited for, the slowest units and
/// when the update agent began and ended its health wait (seconds since the boot), as a guest
/// command.
const BOOT_ON_V2: &str = "systemd-analyze time | head -n 1; systemd-analyze critical-chain --no-pager multi-user.target | tail -n +4 | head -n 8; systemd-analyze blame --no-pager | head -n 8; sudo journalctl -b -u kiln-update-agent -o short-monotonic --no-pager | grep -m 2 -E 'confirming' || true";
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(600);
/// Four downloads and writes under TCG, then the members' three reboots one after another (the
/// worker's beside them).
const ROLLING_TIMEOUT: Duration = Duration::from_secs(2400);
/// The worker's reboot-lock group: workers reboot one at a time among themselves, beside the
/// members' turns.
const WORKER_LOCK_GROUP: &str = "workers";
/// The longest the host's writer may go without a successful write (the issue's goal). Each
/// round of the writer sends one put to every member at once, with a 2 s timeout, every half
/// second: one failed round is a 2.5 s outage, two in a row pass the line. Measured with the
/// agents' `lock_install` and the agent's idle CPU weight: 2.5 s (one failed round in 837);
/// before them, while one member rebooted and the other two wrote their slots, 5.1 s, and
/// 32.8 s with the old one-member-after-another writer.
const WRITE_OUTAGE_GOAL: Duration = Duration::from_secs(5);
/// The smallest memory that ran etcd, containerd and docker without the OOM killer here.
const MEMORY_MIB: u32 = 1024;

struct Node {
    name: &'static str,
    addr: &'static str,
    mac: [u8; 6],
}

const NODES: [Node; 3] = [
    Node {
        name: "node1",
        addr: "10.77.0.1",
        mac: [0x52, 0x54, 0x00, 0x77, 0x00, 0x01],
    },
    Node {
        name: "node2",
        addr: "10.77.0.2",
        mac: [0x52, 0x54, 0x00, 0x77, 0x00, 0x02],
    },
    Node {
        name: "node3",
        addr: "10.77.0.3",
        mac: [0x52, 0x54, 0x00, 0x77, 0x00, 0x03],
    },
];

/// A worker: no etcd member, but a proxy to the members (`etcd2: proxy: on`), with
/// flannel and the update agent (its reboot lock, its group's, taken through the gateway) as on
/// a member.
const WORKER: Node = Node {
    name: "node4",
    addr: "10.77.0.4",
    mac: [0x52, 0x54, 0x00, 0x77, 0x00, 0x04],
};

/// A fifth machine: first given the same discovery URL as the members when the cluster is
/// already full (etcd refuses, the machine says why and stays reachable), then provisioned
/// again as a new member added to the running cluster (`etcdctl member add --learner`, then
/// `initial-cluster-state: existing`, then `etcdctl member promote`), and removed again, while a
/// writer runs.
const NEWCOMER: Node = Node {
    name: "node5",
    addr: "10.77.0.5",
    mac: [0x52, 0x54, 0x00, 0x77, 0x00, 0x05],
};

/// The script the container runs: find this machine's address on the private network and put it
/// under `/services/web/<node>` through etcd's v3 JSON gateway, until etcd takes it.
const ANNOUNCE: &str = r#"addr=$(ip -4 -o addr show | grep -o '10\.77\.0\.[0-9]*' | head -n 1)
key=$(printf '%s' "/services/web/$NODE" | base64)
value=$(printf '%s' "$addr:8080" | base64)
until wget -q -O - --post-data "{\"key\":\"$key\",\"value\":\"$value\"}" http://127.0.0.1:2379/v3/kv/put; do
  sleep 2
done
echo "announced $NODE at $addr:8080"
"#;

/// One node's whole configuration, in the CoreOS shape: its etcd and fleet settings as the
/// CoreOS documentation writes them, with `$private_ipv4` for the machine's address on the
/// private network (its static address there). node1 also runs the announcing container, from a
/// unit and a script the document carries.
/// A member's etcd section as the CoreOS documentation writes one: its own addresses, and the
/// cluster given by a discovery URL (`discovery`) or by its members (`initial-cluster` and the
/// cluster's state).
///
/// Its timing is etcd's, tuned for the machine it runs on as etcd's tuning guide asks (a
/// heartbeat near the members' round trip, an election timeout ten heartbeats long): under TCG
/// a member's ticks and heartbeats at etcd's default 100 ms kept about 30% of its one vCPU
/// busy with the cluster otherwise idle (measured: 8.6 s of CPU in 30 s), CPU the host's two
/// cores lacked for every other machine.
fn member_etcd(node: &Node, cluster: &str) -> String {
    format!(
        "  etcd2:\n    name: {name}\n{cluster}    initial-advertise-peer-urls: http://$private_ipv4:2380\n    listen-peer-urls: http://$private_ipv4:2380\n    listen-client-urls: http://0.0.0.0:2379\n    advertise-client-urls: http://$private_ipv4:2379\n    heartbeat-interval: {HEARTBEAT_MS}\n    election-timeout: {ELECTION_MS}\n",
        name = node.name
    )
}

/// The members' etcd timing (see [`member_etcd`]), in milliseconds.
const HEARTBEAT_MS: u32 = 500;
const ELECTION_MS: u32 = 5000;

/// A worker's: a proxy to the members the discovery URL names.
fn worker_etcd(discovery: &str) -> String {
    format!("  etcd2:\n    proxy: on\n    discovery: {discovery}\n")
}

/// One machine's whole configuration, in the CoreOS shape, with `etcd` its etcd2 section.
fn cloud_config(
    node: &Node,
    server: &UpdateServer,
    public_key: &str,
    private_key: &str,
    etcd: &str,
) -> String {
    let announce = node.name == "node1";
    let script = if announce {
        let indented: String = ANNOUNCE.lines().map(|l| format!("      {l}\n")).collect();
        format!("  - path: /etc/kiln/announce.sh\n    permissions: \"0755\"\n    content: |\n{indented}")
    } else {
        String::new()
    };
    let unit = if announce {
        r#"    - name: web-announce.service
      command: start
      content: |
        [Unit]
        Description=Announce this node's web service in etcd, from a container
        After=kiln-container-images.service etcd.service
        Requires=kiln-container-images.service
        [Service]
        Type=oneshot
        RemainAfterExit=yes
        ExecStart=/usr/bin/docker run --rm --network host -e NODE=%H -v /etc/kiln/announce.sh:/announce.sh:ro kiln/busybox sh /announce.sh
"#
    } else {
        ""
    };
    // `fleetctl status` and `journal` reach the other machines over ssh, as core, with this key.
    let private: String = private_key
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    let role = if node.name == "node2" { "db" } else { "web" };
    // The worker, as CoreOS's large deployments had them, starts its proxy by the name CoreOS
    // documents used.
    let worker = node.name == WORKER.name;
    // fleet's checks below are written for the three members' machines; the worker leaves
    // fleet out (masked, as an operator would) and runs everything else a member does.
    let start = if worker {
        "    - name: etcd2.service\n      command: start\n    - name: kiln-fleet.service\n      mask: true\n"
    } else {
        "    - name: etcd.service\n      command: start\n"
    };
    let health = if worker {
        "    health-units: [kiln-etcd-gateway.service]\n"
    } else {
        "    health-units: [etcd.service]\n"
    };
    format!(
        r#"#cloud-config
hostname: {name}
ssh_authorized_keys:
  - {public_key}
write_files:
  - path: /etc/kiln/cluster-note
    owner: core:core
    permissions: "0640"
    content: "member of kiln-ci\n"
  - path: /home/core/.ssh/id_ed25519
    owner: core:core
    permissions: "0600"
    content: |
{private}{script}coreos:
{update}  fleet:
    public-ip: $private_ipv4
    metadata: "node={name},role={role}"
  flannel:
    interface: $private_ipv4
    network: {network}
{etcd}  network:
    - mac: {mac}
      address: {addr}/24
      ipv6-accept-ra: false
  units:
{start}{unit}"#,
        name = node.name,
        addr = node.addr,
        mac = format_mac(node.mac),
        network = flannel::NETWORK,
        update = server.agent_sections(
            "etcd-lock",
            health,
            // One member at a time installs or reboots: the two that are the quorum while
            // the third reboots are not also writing 600 MB under TCG. The worker holds no
            // part of the quorum: it installs when its update comes, beside a member's
            // install, and reboots under its own group's lock (as locksmith's groups had
            // it), not waiting for the members' turns (in the one group, its turn between
            // two members' lengthened the rolling update by 81 s). A machine waiting for the
            // lock asks again every 5 s (one small etcd read), so a handover is not a wait of
            // its own.
            &if worker {
                format!("    lock-retry: 5s\n    group: {WORKER_LOCK_GROUP}\n")
            } else {
                "    lock-retry: 5s\n    lock-install: true\n".to_owned()
            },
        ),
    )
}

struct Started {
    vm: Vm,
    /// 127.0.0.1:<port> reaches this member's etcd client port.
    etcd: SocketAddr,
}

fn start_node(
    node: &Node,
    work: &Path,
    disk: &Path,
    mcast_port: u16,
    config: &Path,
    server: &UpdateServer,
) -> Started {
    let disk = overlay(disk, &work.join(format!("{}.qcow2", node.name)), "6G").unwrap();
    let mut cfg = VmConfig::new(node.name, work);
    cfg.disk = Some(disk);
    cfg.persist = true;
    cfg.accel = Accel::Auto;
    cfg.memory_mib = MEMORY_MIB;
    // One vCPU each: three TCG guests share this machine's two cores.
    cfg.cpus = 1;
    cfg.ssh_forward = true;
    cfg.config_file = Some(config.to_owned());
    cfg.socket_nics = vec![SocketNic {
        mode: SocketMode::Mcast {
            group: Ipv4Addr::new(239, 255, 77, 1),
            port: mcast_port,
        },
        mac: Some(node.mac),
    }];
    let etcd_port = free_port().unwrap();
    cfg.extra_forwards = vec![HostFwd {
        host_port: etcd_port,
        guest_port: 2379,
    }];
    cfg.guest_forwards = vec![server.guest_forward()];
    let vm = Vm::start(&cfg).unwrap_or_else(|e| panic!("starting {}: {e}", node.name));
    Started {
        vm,
        etcd: SocketAddr::from(([127, 0, 0, 1], etcd_port)),
    }
}

/// One POST to etcd's v3 JSON gateway; `true` on a 200 answer within the timeout.
fn etcd_post(addr: SocketAddr, path: &str, body: &str) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        write!(
            stream,
            "POST {path} HTTP/1.0\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let head = String::from_utf8_lossy(&answer[..answer.len().min(16)]).into_owned();
        Ok(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"))
    };
    attempt().unwrap_or(false)
}

/// What the host saw of the cluster while it updated.
struct Watch {
    /// When watching began, on the monotonic and on the wall clock.
    started: Instant,
    started_at: SystemTime,
    /// (when, ok) of each round of writes: ok when at least one member answered 200.
    writes: Vec<(Instant, bool)>,
    /// (when, which members answered a read) of each probe round.
    probes: Vec<(Instant, Vec<bool>)>,
}

/// Writes to the cluster and probes each member every half second until `stop`.
fn watch_cluster(members: Vec<SocketAddr>, stop: Arc<AtomicBool>) -> Arc<Mutex<Watch>> {
    let watch = Arc::new(Mutex::new(Watch {
        started: Instant::now(),
        started_at: SystemTime::now(),
        writes: Vec::new(),
        probes: Vec::new(),
    }));
    let record = Arc::clone(&watch);
    let writer_members = members.clone();
    let writer_stop = Arc::clone(&stop);
    let writes = Arc::clone(&watch);
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !writer_stop.load(Ordering::SeqCst) {
            n += 1;
            // base64 of "/kiln-ci/writer" and of the counter.
            let body = format!(
                "{{\"key\":\"L2tpbG4tY2kvd3JpdGVy\",\"value\":\"{}\"}}",
                base64::engine::general_purpose::STANDARD.encode(n.to_string())
            );
            let at = Instant::now();
            // The same put to every member at once: the round fails only when no member got
            // it committed within the 2 s timeout, so an outage is the cluster's and not the
            // time spent trying one member after another.
            let ok = std::thread::scope(|s| {
                let tries: Vec<_> = writer_members
                    .iter()
                    .map(|m| s.spawn(|| etcd_post(*m, "/v3/kv/put", &body)))
                    .collect();
                tries
                    .into_iter()
                    .map(|t| t.join().unwrap())
                    .collect::<Vec<bool>>()
                    .contains(&true)
            });
            writes.lock().unwrap().writes.push((at, ok));
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let at = Instant::now();
            // A serializable read is answered by the member itself, leader or not.
            let up: Vec<bool> = members
                .iter()
                .map(|m| {
                    etcd_post(
                        *m,
                        "/v3/kv/range",
                        "{\"key\":\"L2tpbG4tY2kvd3JpdGVy\",\"serializable\":true}",
                    )
                })
                .collect();
            record.lock().unwrap().probes.push((at, up));
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    watch
}

impl Watch {
    /// The writer's outages (see [`write_outages`]), the longest of them, and how many rounds
    /// failed.
    fn outages(&self) -> (Vec<(Instant, Instant)>, Duration, usize) {
        let outages = write_outages(&self.writes);
        let longest = outages
            .iter()
            .map(|(a, b)| *b - *a)
            .max()
            .unwrap_or_default();
        let failed = self.writes.iter().filter(|(_, ok)| !ok).count();
        (outages, longest, failed)
    }
}

/// Each stretch from a failed write to the next successful one (or the last write).
fn write_outages(writes: &[(Instant, bool)]) -> Vec<(Instant, Instant)> {
    let mut outages = Vec::new();
    let mut failing_since: Option<Instant> = None;
    for &(at, ok) in writes {
        match (ok, failing_since) {
            (false, None) => failing_since = Some(at),
            (true, Some(since)) => {
                outages.push((since, at));
                failing_since = None;
            }
            _ => {}
        }
    }
    if let (Some(since), Some(&(last, _))) = (failing_since, writes.last()) {
        outages.push((since, last));
    }
    outages
}

/// Each member advertises its own private address (`$private_ipv4` in the document), for its
/// peers and its clients, and `/etc/environment` says it as CoreOS did.
fn check_addresses(vms: &[&Vm], key: &Path) {
    on_each(vms, |i, vm| {
        let node = &NODES[i];
        let members = guest(vm, key, "etcdctl member list");
        assert_eq!(members.lines().count(), 3, "{}: {members}", vm.name());
        for n in &NODES {
            assert!(
                members.contains(&format!(
                    ", started, {}, http://{a}:2380, http://{a}:2379",
                    n.name,
                    a = n.addr
                )),
                "{}: {members}",
                vm.name()
            );
        }
        let env = guest(vm, key, "cat /etc/environment");
        assert!(
            env.contains(&format!("COREOS_PRIVATE_IPV4={}\n", node.addr))
                && env.contains(&format!("ETCDCTL_ENDPOINTS=http://{}:2379", node.addr)),
            "{}: {env}",
            vm.name()
        );
        let report = guest(vm, key, "sudo cat /var/lib/kiln/cloud-config.report");
        assert!(
            report.starts_with("status: ok\n")
                && report.contains(&format!("addresses: $private_ipv4 is {} (", node.addr)),
            "{}: {report}",
            vm.name()
        );
    });
}

/// The discovery token holds the three members' registrations (`name=peer URL`), as the
/// server's admin API lists it, and each member's report says what its check before etcd's
/// first start found there.
fn check_registrations(server: &UpdateServer, discovery: &str, vms: &[&Vm], key: &Path) {
    let tokens = server.admin.discovery_list().expect("the discovery tokens");
    let token = tokens
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| discovery.ends_with(t["token"].as_str().unwrap_or("-")))
        .unwrap_or_else(|| panic!("{discovery} is not listed: {tokens:#}"));
    let mut values: Vec<&str> = token["registrations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["value"].as_str())
        .collect();
    values.sort();
    let want: Vec<String> = NODES
        .iter()
        .map(|n| format!("{}=http://{}:2380", n.name, n.addr))
        .collect();
    assert_eq!(values, want, "{token:#}");
    for vm in vms {
        let report = guest(vm, key, "sudo cat /var/lib/kiln/cloud-config.report");
        let line = report
            .lines()
            .find(|l| l.starts_with("etcd discovery: "))
            .unwrap_or_else(|| panic!("{}: no discovery line in the report:\n{report}", vm.name()));
        assert!(
            line.contains(discovery) && !line.contains("full"),
            "{}: {line}",
            vm.name()
        );
    }
    eprintln!("discovery: the token lists {values:?}");
}

/// A machine given the discovery URL of a full cluster: etcd refuses to start a member and
/// says so in its journal, the report says why and what to do, and the machine is reachable.
fn check_refused(vm: &Vm, key: &Path, discovery: &str) {
    vm.wait_for_ssh(key, "core", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}: {e}", vm.name()));
    let journal = wait_in_guest(
        vm,
        key,
        "sudo journalctl -u etcd.service -o cat --no-pager | grep -E 'cluster is full|kiln-etcd' || true",
        CLUSTER_TIMEOUT,
        |o| o.contains("discovery: cluster is full") && o.contains("kiln-etcd: discovery: the cluster at"),
    );
    let report = guest(vm, key, "sudo cat /var/lib/kiln/cloud-config.report");
    let line = report
        .lines()
        .find(|l| l.starts_with("etcd discovery: "))
        .unwrap_or_else(|| panic!("no discovery line in the report:\n{report}"));
    assert!(
        line.contains(&format!("the cluster at {discovery} is full"))
            && line.contains("(http://10.77.0.5:2380) is not one of them")
            && line.contains("proxy: on"),
        "{line}"
    );
    assert_ne!(
        guest(vm, key, "systemctl is-active etcd.service || true"),
        "active"
    );
    eprintln!(
        "{}: refused, the cluster being full:\n{}\n{line}",
        vm.name(),
        journal
            .lines()
            .rfind(|l| l.contains("cluster is full"))
            .unwrap_or_default()
    );
}

/// The worker runs no member: its proxy on 127.0.0.1:2379 answers for the cluster with
/// etcdctl's defaults, and passes a watch of a key written on a member (`tag` names the key).
fn check_worker(worker: &Vm, member: &Vm, key: &Path, tag: &str) {
    wait_in_guest(
        worker,
        key,
        "systemctl is-active kiln-etcd-gateway.service",
        CLUSTER_TIMEOUT,
        |o| o.trim() == "active",
    );
    assert_eq!(
        guest(worker, key, "systemctl is-active etcd.service || true"),
        "inactive"
    );
    let listening = guest(worker, key, "ss -Hltn");
    assert!(
        listening.contains("127.0.0.1:2379 ") && !listening.contains(":2380 "),
        "the gateway on 127.0.0.1:2379 and no member's peer port:\n{listening}"
    );
    let env = guest(worker, key, "cat /etc/environment");
    assert!(
        env.contains("ETCDCTL_ENDPOINTS=http://127.0.0.1:2379\n"),
        "{env}"
    );
    wait_in_guest(
        worker,
        key,
        "etcdctl endpoint health 2>&1 || true",
        CLUSTER_TIMEOUT,
        |o| o.contains("127.0.0.1:2379 is healthy"),
    );
    let members = guest(worker, key, "etcdctl member list");
    assert_eq!(members.lines().count(), 3, "{members}");
    // A watch from the worker, through the gateway, of a key a member writes: from the
    // revision after the current one, so the event comes whether the watch is open before
    // the put or just after it.
    let rev = guest(worker, key, "etcdctl get /kiln-ci -w json")
        .split("\"revision\":")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|r| r.parse::<u64>().ok())
        .expect("a revision in etcdctl's JSON");
    let path = format!("/kiln-ci/worker/{tag}");
    guest(
        worker,
        key,
        &format!(
            "(timeout 120 etcdctl watch --rev={} {path} > /tmp/watch-{tag} 2>&1 < /dev/null &)",
            rev + 1
        ),
    );
    guest(
        member,
        key,
        &format!("etcdctl put {path} seen-by-the-worker"),
    );
    wait_in_guest(
        worker,
        key,
        &format!("cat /tmp/watch-{tag}"),
        Duration::from_secs(60),
        |o| o.contains("seen-by-the-worker"),
    );
    eprintln!(
        "{}: the worker's gateway answers and passes a watch ({tag})",
        worker.name()
    );
}

/// Which of the three members leads, from `etcdctl endpoint status --cluster` on `vm` (its
/// fifth column: is leader).
fn leader_index(vm: &Vm, key: &Path) -> usize {
    let out = guest(vm, key, "etcdctl endpoint status --cluster");
    let leader = out
        .lines()
        .find(|line| line.split(", ").nth(4) == Some("true"))
        .unwrap_or_else(|| panic!("no leader in `etcdctl endpoint status`: {out}"));
    NODES
        .iter()
        .position(|node| leader.starts_with(&format!("http://{}:2379,", node.addr)))
        .unwrap_or_else(|| panic!("the leader is not one of the three: {leader}"))
}

/// The reboot lock's etcd key for the machines of `group` (the agents' default key, or a
/// group's own), as the agent reads it from its settings.
fn lock_key(group: &str) -> String {
    kiln_contract::update_conf::Settings {
        lock_group: group.to_owned(),
        ..Default::default()
    }
    .etcd_semaphore_key()
}

/// The history of the lock at `lock` as etcd keeps it: `PUT <holder>` and `DELETE`, oldest
/// first.
fn lock_history(vm: &Vm, key: &Path, lock: &str) -> Vec<String> {
    let out = guest(
        vm,
        key,
        &format!("timeout 10 etcdctl watch --rev=1 {lock} || true"),
    );
    let mut events = Vec::new();
    let mut lines = out.lines();
    while let Some(line) = lines.next() {
        match line.trim() {
            "PUT" => {
                let _key = lines.next();
                events.push(format!("PUT {}", lines.next().unwrap_or("").trim()));
            }
            "DELETE" => {
                let _key = lines.next();
                events.push("DELETE".to_owned());
            }
            _ => {}
        }
    }
    events
}

#[test]
fn three_nodes_form_an_etcd_cluster_find_each_others_services_and_update_one_at_a_time() {
    let v1 = Version::under_test();
    let v2 = Version::from_env("KILN_CI_V2");
    let work = work_dir("cluster");
    let (key, public) = ssh_keygen(&work).unwrap();
    let server = UpdateServer::start(&work, &v1.public_key());
    // The members' cloud-configs name no member: only the discovery URL the update server
    // gives for a cluster of three.
    let token = server.admin.discovery_new(3).expect("a discovery token");
    let discovery = token["url"].as_str().expect("the token's URL").to_owned();
    eprintln!("discovery URL: {discovery}");
    let mcast_port = free_port().unwrap();
    let private_key = std::fs::read_to_string(&key).unwrap();
    // Writes `node`'s cloud-config with `etcd` as its etcd2 section and starts it on a fresh
    // copy of `v`'s disk.
    let provision = |node: &Node, etcd: &str, v: &Version| {
        let doc = cloud_config(node, &server, &public, &private_key, etcd);
        kiln_config::parse(&doc).expect("the scenario's cloud-config is valid");
        assert!(kiln_config::addresses::uses_addresses(&doc));
        let path = work.join(format!("{}.yml", node.name));
        std::fs::write(&path, doc).unwrap();
        start_node(node, &work, &v.disk(), mcast_port, &path, &server)
    };
    let started = Instant::now();
    let nodes: Vec<Started> = NODES
        .iter()
        .map(|node| {
            provision(
                node,
                &member_etcd(node, &format!("    discovery: {discovery}\n")),
                &v1,
            )
        })
        .chain([provision(&WORKER, &worker_etcd(&discovery), &v1)])
        .collect();
    // `all`: the four machines; `vms`: the three members.
    let all: Vec<&Vm> = nodes.iter().map(|n| &n.vm).collect();
    let vms: Vec<&Vm> = all[..NODES.len()].to_vec();
    let worker = all[NODES.len()];
    let _evidence = Evidence::new(&work, &server, &all, &key);
    for vm in &all {
        vm.wait_for_ssh(&key, "core", BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}: {e}", vm.name()));
        eprintln!(
            "{}: ssh after {:.0} s",
            vm.name(),
            started.elapsed().as_secs_f64()
        );
    }

    // Healthy from every node, with no flags: etcdctl's defaults reach the local member.
    on_each(&vms, |_, vm| {
        wait_in_guest(
            vm,
            &key,
            "etcdctl endpoint health --cluster",
            CLUSTER_TIMEOUT,
            |out| out.matches("is healthy").count() == 3,
        );
        // The cloud-config's timing reached etcd itself (its first words at start).
        let timing = guest(
            vm,
            &key,
            "sudo journalctl -b -u etcd --no-pager | grep -E 'heartbeat = |election = '",
        );
        assert!(
            timing.contains(&format!("heartbeat = {HEARTBEAT_MS}ms"))
                && timing.contains(&format!("election = {ELECTION_MS}ms")),
            "{}: etcd's timing is not the cloud-config's:\n{timing}",
            vm.name()
        );
    });
    eprintln!(
        "VM start to a healthy 3-node cluster: {:.0} s (TCG: {:?})",
        started.elapsed().as_secs_f64(),
        vms[0].accel()
    );
    // `$private_ipv4` became each machine's address: etcd advertises it, etcdctl's defaults
    // and CoreOS's variable in /etc/environment hold it (fleet's public-ip: below).
    check_addresses(&vms, &key);
    check_registrations(&server, &discovery, &vms, &key);
    // A fifth machine with the same URL, now that the cluster is full: it boots while the
    // checks below run, and is looked at after them.
    let refused = provision(
        &NEWCOMER,
        &member_etcd(&NEWCOMER, &format!("    discovery: {discovery}\n")),
        &v1,
    );
    check_worker(worker, vms[0], &key, "first");
    guest(
        vms[0],
        &key,
        "etcdctl put /kiln-ci/greeting hello-from-node1",
    );
    assert_eq!(
        guest(
            vms[2],
            &key,
            "etcdctl get --print-value-only /kiln-ci/greeting"
        ),
        "hello-from-node1"
    );

    // write_files: owner and mode as asked.
    assert_eq!(
        guest(vms[1], &key, "stat -c '%U:%G %a' /etc/kiln/cluster-note"),
        "core:core 640"
    );

    // Service discovery: node1's container registered itself; node2 finds it.
    let found = wait_in_guest(
        vms[1],
        &key,
        "etcdctl get --prefix /services/web/",
        CLUSTER_TIMEOUT,
        |out| out.contains("10.77.0.1:8080"),
    );
    assert!(found.contains("/services/web/node1"), "{found}");
    // The oneshot ends when its container has gone, after the announcement.
    let unit = unit_ended(vms[0], &key, "web-announce.service", CLUSTER_TIMEOUT);
    assert_eq!(unit, "active");

    // flannel: one lease each, the kernel state for the others, docker on the subnet, and
    // containers reaching each other across machines.
    let t = Instant::now();
    let addrs: Vec<&str> = NODES.iter().chain([&WORKER]).map(|n| n.addr).collect();
    let leases = flannel::leases(&all, &key, &addrs);
    flannel::check_kernels(&all, &key, &leases);
    let at = flannel::check_containers(&all, &key, &leases, (0, 1));
    flannel::measure(&all, &key, &leases, (0, 1), at);
    flannel::remove_servers(all[1], &key);
    eprintln!("flannel checks before the update: {:.0} s", fleet::secs(t));
    check_refused(&refused.vm, &key, &discovery);
    // Off until it is provisioned again as a new member, at the end.
    drop(refused);

    // fleet, on the same three machines: scheduling, the CLI, and the engine's failover.
    let t = Instant::now();
    // The four machines' ids: fleet's for the members, the update server's for all four.
    let machine_ids = fleet::machine_ids(&all, &key);
    let ids = machine_ids[..NODES.len()].to_vec();
    fleet_scheduling(&vms, &key, &ids);
    examples_on_overlay(&vms, &key, &ids, &leases[..NODES.len()]);
    eprintln!("fleet checks before the update: {:.0} s", fleet::secs(t));

    // The rolling update: publish v2 and let the agents coordinate through etcd.
    let t = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let members: Vec<SocketAddr> = nodes.iter().map(|n| n.etcd).collect();
    // Followed from the update server, not over ssh: a machine polled over ssh every few
    // seconds spent on the logins the CPU its install (at idle weight) waits for, and took four
    // times as long as the others (569 s against 106 to 212 s).
    let watch = watch_cluster(members, Arc::clone(&stop));
    std::thread::sleep(Duration::from_secs(5));
    server.publish(&v2);
    let mut pending: Vec<usize> = (0..all.len()).collect();
    while !pending.is_empty() {
        assert!(
            t.elapsed() < ROLLING_TIMEOUT,
            "not on v2 within {ROLLING_TIMEOUT:?}: {:?}",
            pending.iter().map(|&i| all[i].name()).collect::<Vec<_>>()
        );
        pending.retain(|&i| {
            let done = server
                .admin
                .instance(&server.app, &machine_ids[i])
                .is_ok_and(|r| {
                    r["instance"]["status"] == "complete"
                        && r["instance"]["version"] == v2.version.as_str()
                });
            if done {
                eprintln!(
                    "{}: on v2 after {:.0} s (the server's record)",
                    all[i].name(),
                    t.elapsed().as_secs_f64()
                );
            }
            !done
        });
        std::thread::sleep(Duration::from_secs(3));
    }
    on_each(&all, |_, vm| {
        assert_eq!(guest(vm, &key, RUNNING), format!("{} b", v2.version));
        wait_in_guest(vm, &key, "sudo kiln-update status", CLUSTER_TIMEOUT, |s| {
            s.contains("state:        idle")
                && s.contains(&format!("kiln-b.conf (version {})", v2.version))
        })
    });
    stop.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(4));
    eprintln!(
        "rolling update of 4 machines: {:.0} s",
        t.elapsed().as_secs_f64()
    );
    // Where each install's time went, as the agents logged it before their reboot.
    for (vm, steps) in all
        .iter()
        .zip(on_each(&all, |_, vm| guest(vm, &key, INSTALL_STEPS)))
    {
        eprintln!("{} installing v2:\n{steps}", vm.name());
    }
    // Where each machine's boot on v2 went: the agent's health wait lasts until systemd says
    // the boot is over, and that wait holds the lock.
    for (vm, boot) in all
        .iter()
        .zip(on_each(&all, |_, vm| guest(vm, &key, BOOT_ON_V2)))
    {
        eprintln!("{} booting v2:\n{boot}", vm.name());
    }

    // One holder at a time: every PUT of the lock is followed by its DELETE before the next PUT.
    // The members share the default group's lock, each taking it once; the worker takes its
    // group's, through its gateway.
    let groups = [
        (DEFAULT_LOCK_GROUP, &machine_ids[..NODES.len()]),
        (WORKER_LOCK_GROUP, &machine_ids[NODES.len()..]),
    ];
    for (group, machines) in groups {
        let history = lock_history(vms[0], &key, &lock_key(group));
        eprintln!("reboot lock history of group {group}: {history:?}");
        for pair in history.windows(2) {
            assert!(
                !(pair[0].starts_with("PUT") && pair[1].starts_with("PUT")),
                "group {group}'s lock was taken while held: {history:?}"
            );
        }
        let mut holders: Vec<&str> = history
            .iter()
            .filter_map(|e| e.strip_prefix("PUT "))
            .collect();
        holders.sort_unstable();
        let mut want: Vec<&str> = machines.iter().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(
            holders, want,
            "each machine of group {group} takes its lock once: {history:?}"
        );
    }

    // Never two machines down at once, from their boot times: each machine's outage runs from
    // its last answer to the host's probes before its new boot started to its first answer
    // after. (A probe missed while a machine is busy installing is not an outage: it still
    // runs its old boot.)
    let boots: Vec<SystemTime> = on_each(&vms, |_, vm| {
        let secs: u64 = guest(
            vm,
            &key,
            "echo $(( $(date +%s) - $(cut -d. -f1 /proc/uptime) ))",
        )
        .parse()
        .expect("a boot time in seconds");
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    });
    let watch = watch.lock().unwrap();
    let outages: Vec<(Instant, Instant)> = boots
        .iter()
        .enumerate()
        .map(|(member, boot)| {
            // The host's clock is the guests' (their RTC): a boot time is a host instant.
            let boot_at = match boot.duration_since(watch.started_at) {
                Ok(after) => watch.started + after,
                Err(_) => panic!("{} did not reboot during the update", NODES[member].name),
            };
            let before = watch
                .probes
                .iter()
                .filter(|(at, up)| up[member] && *at < boot_at)
                .map(|(at, _)| *at)
                .max()
                .unwrap_or(watch.started);
            let after = watch
                .probes
                .iter()
                .filter(|(at, up)| up[member] && *at > boot_at)
                .map(|(at, _)| *at)
                .min()
                .unwrap_or_else(|| {
                    panic!("{} never answered after its reboot", NODES[member].name)
                });
            (before, after)
        })
        .collect();
    for (i, (from, to)) in outages.iter().enumerate() {
        eprintln!(
            "{} down from {:.0} s to {:.0} s into the update",
            NODES[i].name,
            (*from - t).as_secs_f64(),
            (*to - t).as_secs_f64()
        );
    }
    for i in 0..outages.len() {
        for j in i + 1..outages.len() {
            let (a, b) = (outages[i], outages[j]);
            assert!(
                a.1 <= b.0 || b.1 <= a.0,
                "{} and {} were down at the same time: {:?} and {:?} after the update began",
                NODES[i].name,
                NODES[j].name,
                (a.0 - t, a.1 - t),
                (b.0 - t, b.1 - t)
            );
        }
    }
    let (outages, outage, failed) = watch.outages();
    eprintln!(
        "writer: {} writes, {failed} failed, longest outage {:.1} s (at most {} s); outages (s into the update): {:?}",
        watch.writes.len(),
        outage.as_secs_f64(),
        WRITE_OUTAGE_GOAL.as_secs(),
        outages
            .iter()
            .map(|(a, b)| format!("{:.1}..{:.1}", (*a - t).as_secs_f64(), (*b - t).as_secs_f64()))
            .collect::<Vec<_>>()
    );
    // Leader elections as each member logged them, on the guests' clocks: what a long
    // outage lines up with.
    let logs = on_each(&vms, |_, vm| {
        let elections = guest(
            vm,
            &key,
            "sudo journalctl -u etcd --no-pager -o short-iso-precise | grep -E 'elected leader|lost leader|became candidate|became pre-candidate' | tail -n 20 || true",
        );
        // etcd's own words on why a commit was slow: a slow disk (WAL sync), or a starved
        // process (heartbeats late, requests that took too long).
        let slow = guest(
            vm,
            &key,
            "sudo journalctl -u etcd --no-pager -o short-iso-precise | grep -E 'sync duration|slow fdatasync|heartbeat on time|took too long|overloaded' > /tmp/slow; echo \"$(wc -l < /tmp/slow) lines\"; tail -n 12 /tmp/slow",
        );
        (elections, slow)
    });
    for (vm, (elections, slow)) in vms.iter().zip(logs) {
        eprintln!("{} etcd elections:\n{elections}", vm.name());
        eprintln!("{} etcd slowness:\n{slow}", vm.name());
    }
    eprintln!(
        "update began at {} s since the epoch",
        watch
            .started_at
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );
    assert!(
        outage <= WRITE_OUTAGE_GOAL,
        "writes failed for {outage:?} in a row (at most {WRITE_OUTAGE_GOAL:?})"
    );
    drop(watch);
    server.wait_instance(
        &machine_ids[0],
        Duration::from_secs(120),
        "complete on v2",
        |r| r["instance"]["status"] == "complete",
    );

    // The addresses first boot wrote in are still what every member says after the update.
    check_addresses(&vms, &key);
    check_worker(worker, vms[2], &key, "updated");

    // flannel after each machine's reboot: the same subnets, the same state, the same reach.
    let t = Instant::now();
    let after = flannel::leases(&all, &key, &addrs);
    assert_eq!(
        subnets(&after),
        subnets(&leases),
        "a machine came back from its reboot with another subnet"
    );
    flannel::check_kernels(&all, &key, &after);
    flannel::check_containers(&all, &key, &after, (2, 0));
    // A machine's lease deleted: the others drop its route; its daemon, started again, takes
    // the same subnet back and the others follow.
    let dropped = flannel::check_lease_deleted(&all, &key, &after, 2);
    let back = flannel::leases(&all, &key, &addrs);
    assert_eq!(
        subnets(&back),
        subnets(&leases),
        "node3 took another subnet"
    );
    flannel::check_kernels(&all, &key, &back);
    eprintln!(
        "flannel checks after the update: {:.0} s (a deleted lease's route gone from the others in {:.1} s)",
        fleet::secs(t),
        dropped.as_secs_f64()
    );

    // fleet's units ran through the rolling update and are where they belong after it.
    let t = Instant::now();
    fleet_after_update(&vms, &key, &ids);
    examples_on_overlay(&vms, &key, &ids, &back[..NODES.len()]);
    eprintln!("fleet checks after the update: {:.0} s", fleet::secs(t));
    let before_loss = fleet::wait_rows(vms[0], &key, fleet::SETTLE, |rows| {
        (1..=fleet::PLAIN).all(|i| fleet::running(rows, &format!("plain@{i}.service")).len() == 1)
    });

    // The leader down for good (the harder loss: the other two must elect a new one first):
    // they still have a quorum and take writes once they have. A put during the election is
    // refused (etcdctl's 5 s deadline), so it is tried again, for at most a minute.
    let leader = leader_index(vms[0], &key);
    let (a, b) = match leader {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let lost = Instant::now();
    vms[leader].kill();
    wait_in_guest(
        vms[a],
        &key,
        "etcdctl put /kiln-ci/after-loss still-writable",
        Duration::from_secs(60),
        |out| out.contains("OK"),
    );
    eprintln!(
        "{} (the leader) killed: the other two took a write {:.1} s later",
        vms[leader].name(),
        lost.elapsed().as_secs_f64()
    );
    assert_eq!(
        guest(
            vms[b],
            &key,
            "etcdctl get --print-value-only /kiln-ci/after-loss"
        ),
        "still-writable"
    );
    let health = vms[a]
        .ssh(
            &key,
            "core",
            "etcdctl endpoint health --cluster",
            Duration::from_secs(60),
        )
        .unwrap();
    let text = String::from_utf8_lossy(&health.stdout).into_owned()
        + &String::from_utf8_lossy(&health.stderr);
    assert_eq!(text.matches("is healthy").count(), 2, "{text}");
    // The worker's proxy passes over the lost member (its machine gone: no answer at all).
    assert_eq!(
        guest(
            worker,
            &key,
            "etcdctl get --print-value-only /kiln-ci/after-loss"
        ),
        "still-writable"
    );

    // fleet: the lost machine's units without a conflict run elsewhere within 90 s of the
    // power-off; its example instance waits (both other machines hold one).
    let dead = ids[leader].clone();
    let on_dead: Vec<String> = (1..=fleet::PLAIN)
        .map(|i| format!("plain@{i}.service"))
        .filter(|u| fleet::running(&before_loss, u) == [dead.clone()])
        .collect();
    assert!(
        !on_dead.is_empty(),
        "no plain unit ran on the machine lost: {before_loss:?}"
    );
    let rows = fleet::wait_rows(
        vms[a],
        &key,
        fleet::MOVED.saturating_sub(lost.elapsed()),
        |rows| {
            on_dead.iter().all(|u| {
                let on = fleet::running(rows, u);
                on.len() == 1 && on[0] != dead
            })
        },
    );
    eprintln!(
        "fleet: {} unit(s) of the lost machine run elsewhere {:.0} s after its power-off",
        on_dead.len(),
        fleet::secs(lost)
    );
    fleet::nothing_twice(&rows).unwrap();
    let files = guest(
        vms[a],
        &key,
        "fleetctl list-unit-files --no-legend --fields unit,target",
    );
    let waiting = files
        .lines()
        .filter(|l| {
            l.starts_with("example@")
                && !l.starts_with("example@.")
                && l.split_whitespace().last() == Some("-")
        })
        .count();
    assert_eq!(
        waiting, 2,
        "example@4 and the lost machine's instance wait:\n{files}"
    );

    // Powered on again: it takes its example instance back, and nothing runs twice.
    let back = Instant::now();
    drop(vms);
    drop(all);
    let mut nodes = nodes;
    nodes[leader]
        .vm
        .restart()
        .expect("powering the lost machine on");
    let vms: Vec<&Vm> = nodes.iter().map(|n| &n.vm).collect();
    vms[leader]
        .wait_for_ssh(&key, "core", BOOT_TIMEOUT)
        .unwrap();
    fleet::examples_spread(vms[a], &key);
    fleet::wait_rows(vms[a], &key, fleet::SETTLE, |rows| {
        fleet::nothing_twice(rows).is_ok() && fleet::running(rows, "everywhere.service").len() == 3
    });
    // And on the machine itself: none of the units that moved away still runs there.
    for u in &on_dead {
        let state = guest(
            vms[leader],
            &key,
            &format!("systemctl is-active {u} || true"),
        );
        assert_ne!(
            state, "active",
            "{u} runs again on the machine that came back"
        );
    }
    eprintln!(
        "fleet: the lost machine back and settled in {:.0} s",
        fleet::secs(back)
    );

    // Membership, as an operator changes it: a new member added to the running cluster as a
    // learner (`etcdctl member add --learner` on a member, then the new machine provisioned with
    // the cluster it printed and `initial-cluster-state: existing`), promoted once it has caught
    // up (`etcdctl member promote`), then removed (`etcdctl member remove`), while the host's
    // writer keeps writing to the three: never more than 5 s without a write. A voting member
    // added before its machine runs makes four, whose quorum of three is every member up, so
    // one of them slow on the loaded host stops writes: they stopped for 10.7 s while the new
    // machine booted, in a run of the test command here. A learner does not count toward the
    // quorum until promoted.
    let t = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let members: Vec<SocketAddr> = nodes[..NODES.len()].iter().map(|n| n.etcd).collect();
    let watch = watch_cluster(members, Arc::clone(&stop));
    std::thread::sleep(Duration::from_secs(3));
    let added = guest(
        vms[a],
        &key,
        &format!(
            "etcdctl member add {} --learner --peer-urls=http://{}:2380",
            NEWCOMER.name, NEWCOMER.addr
        ),
    );
    // `Member 5bd1e4a3c0b2f9d7 added to cluster ...`
    let id = added
        .lines()
        .find_map(|l| l.strip_prefix("Member ")?.split_whitespace().next())
        .unwrap_or_else(|| panic!("no member id in `etcdctl member add`'s answer:\n{added}"))
        .to_owned();
    let initial = added
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| {
            panic!("no ETCD_INITIAL_CLUSTER in `etcdctl member add`'s answer:\n{added}")
        });
    // A new machine is provisioned with the version the cluster runs (v2), not updated into it.
    let newcomer = provision(
        &NEWCOMER,
        &member_etcd(
            &NEWCOMER,
            &format!("    initial-cluster: {initial}\n    initial-cluster-state: existing\n"),
        ),
        &v2,
    );
    newcomer
        .vm
        .wait_for_ssh(&key, "core", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}: {e}", NEWCOMER.name));
    let joined = format!(
        ", started, {}, http://{a}:2380, http://{a}:2379",
        NEWCOMER.name,
        a = NEWCOMER.addr
    );
    wait_in_guest(vms[a], &key, "etcdctl member list", CLUSTER_TIMEOUT, |o| {
        o.lines().count() == 4 && o.contains(&joined)
    });
    // etcd refuses the promotion until the learner's log has caught up with the leader's.
    wait_in_guest(
        vms[a],
        &key,
        &format!("etcdctl member promote {id} 2>&1 || true"),
        CLUSTER_TIMEOUT,
        |o| o.contains("promoted"),
    );
    wait_in_guest(vms[a], &key, "etcdctl member list", CLUSTER_TIMEOUT, |o| {
        o.lines()
            .any(|l| l.starts_with(&id) && l.contains(&joined) && l.ends_with(", false"))
    });
    // The new member serves the cluster's data from its own copy.
    assert_eq!(
        wait_in_guest(
            &newcomer.vm,
            &key,
            "etcdctl get --consistency=s --print-value-only /kiln-ci/after-loss || true",
            CLUSTER_TIMEOUT,
            |o| o.trim() == "still-writable",
        )
        .trim(),
        "still-writable"
    );
    eprintln!(
        "{} added as a learner, promoted, and serving {:.0} s after `etcdctl member add`",
        NEWCOMER.name,
        t.elapsed().as_secs_f64()
    );
    guest(vms[a], &key, &format!("etcdctl member remove {id}"));
    wait_in_guest(vms[a], &key, "etcdctl member list", CLUSTER_TIMEOUT, |o| {
        o.lines().count() == 3 && !o.contains(NEWCOMER.name)
    });
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(4));
    let watch = watch.lock().unwrap();
    let (outages, outage, failed) = watch.outages();
    eprintln!(
        "membership change (added, joined, removed) in {:.0} s; writer: {} writes, {failed} failed, longest outage {:.1} s; outages (s into the change): {:?}",
        t.elapsed().as_secs_f64(),
        watch.writes.len(),
        outage.as_secs_f64(),
        outages
            .iter()
            .map(|(a, b)| format!("{:.1}..{:.1}", (*a - t).as_secs_f64(), (*b - t).as_secs_f64()))
            .collect::<Vec<_>>()
    );
    assert!(
        outage <= WRITE_OUTAGE_GOAL,
        "writes failed for {outage:?} in a row while a member was added and removed (at most {WRITE_OUTAGE_GOAL:?})"
    );
}

fn subnets(leases: &[flannel::Lease]) -> Vec<Ipv4Addr> {
    leases.iter().map(|l| l.subnet).collect()
}

/// fleet's example instances reach each other at their overlay addresses.
fn examples_on_overlay(vms: &[&Vm], key: &Path, ids: &[String], leases: &[flannel::Lease]) {
    let rows = fleet::examples_spread(vms[0], key);
    let hosts: Vec<usize> = (1..=3)
        .map(|i| {
            let on = fleet::running(&rows, &format!("example@{i}.service"));
            ids.iter()
                .position(|id| *id == on[0])
                .expect("one of the three")
        })
        .collect();
    let names: Vec<&str> = NODES.iter().map(|n| n.name).collect();
    flannel::check_examples(vms, key, leases, &hosts, &names);
}

/// fleet's scheduling on the fresh cluster, through `fleetctl` on node1 as an operator uses it.
fn fleet_scheduling(vms: &[&Vm], key: &Path, ids: &[String]) {
    let expect: Vec<(String, &str, String)> = NODES
        .iter()
        .zip(ids)
        .map(|(n, id)| {
            let role = if n.name == "node2" { "db" } else { "web" };
            (id.clone(), n.addr, format!("node={},role={role}", n.name))
        })
        .collect();
    let expect: Vec<(String, &str, &str)> = expect
        .iter()
        .map(|(i, a, m)| (i.clone(), *a, m.as_str()))
        .collect();
    fleet::check_machines(vms[0], key, &expect);
    for (name, text) in fleet::UNITS {
        guest(vms[0], key, &format!("cat > {name} <<'EOF'\n{text}EOF"));
    }
    assert_eq!(
        guest(vms[0], key, "fleetctl submit example@.service"),
        "Unit example@.service inactive"
    );
    // Started from the template in the cluster: three instances on three machines.
    guest_waiting(
        vms[0],
        key,
        600,
        "fleetctl start example@1.service example@2.service example@3 --block-attempts 200",
    );
    let rows = fleet::examples_spread(vms[0], key);
    let nodes: Vec<(&str, &str)> = NODES.iter().map(|n| (n.name, n.addr)).collect();
    fleet::check_http(vms[0], key, &nodes);
    // A fourth cannot be placed, and says why.
    assert_eq!(
        guest(vms[0], key, "fleetctl start --no-block example@4.service"),
        "Triggered unit example@4.service start"
    );
    let reason = wait_in_guest(
        vms[0],
        key,
        "fleetctl list-unit-files --no-legend --fields unit,state,target,reason | grep '^example@4'",
        fleet::SETTLE,
        |out| out.contains("conflicts with"),
    );
    let fields: Vec<&str> = reason.split_whitespace().collect();
    assert_eq!(
        fields[..3],
        ["example@4.service", "inactive", "-"],
        "{reason}"
    );

    // Global everywhere; metadata on node2 alone; MachineOf beside example@2.
    guest_waiting(
        vms[0],
        key,
        600,
        "fleetctl start everywhere.service db.service side.service",
    );
    let rows2 = fleet::wait_rows(vms[0], key, fleet::SETTLE, |rows| {
        fleet::running(rows, "everywhere.service").len() == 3
            && fleet::running(rows, "db.service") == [ids[1].clone()]
            && fleet::running(rows, "side.service") == fleet::running(rows, "example@2.service")
    });
    fleet::nothing_twice(&rows2).unwrap();
    drop(rows);

    // cat, status and journal of a unit on another machine (over ssh, as fleet did).
    assert_eq!(
        guest(vms[0], key, "fleetctl cat example@2.service") + "\n",
        fleet::EXAMPLE
    );
    let elsewhere = (1..=3)
        .map(|i| format!("example@{i}.service"))
        .find(|u| fleet::running(&rows2, u) != [ids[0].clone()])
        .expect("an instance on another machine");
    let status = guest(
        vms[0],
        key,
        &format!("fleetctl --strict-host-key-checking=false status {elsewhere}"),
    );
    assert!(status.contains("Active: active (running)"), "{status}");
    let journal = guest(
        vms[0],
        key,
        &format!("fleetctl --strict-host-key-checking=false journal --sudo --lines 5 {elsewhere}"),
    );
    assert!(
        journal.lines().count() >= 2 && journal.contains(&elsewhere.replace(".service", "")),
        "{journal}"
    );

    // stop keeps it loaded, unload takes it off its machine, destroy forgets it.
    let side_on = fleet::running(&rows2, "side.service")[0].clone();
    let side_vm = vms[ids.iter().position(|i| *i == side_on).unwrap()];
    guest_waiting(vms[0], key, 300, "fleetctl stop side.service");
    wait_in_guest(
        side_vm,
        key,
        "systemctl is-active side.service || true",
        fleet::SETTLE,
        |o| o.trim() == "inactive",
    );
    let files = guest(
        vms[0],
        key,
        "fleetctl list-unit-files --no-legend --fields unit,dstate",
    );
    assert!(
        fleet::has_row(&files, &["side.service", "loaded"]),
        "{files}"
    );
    guest_waiting(vms[0], key, 300, "fleetctl unload side.service");
    wait_in_guest(
        side_vm,
        key,
        "test -e /run/fleet/units/side.service && echo loaded || echo gone",
        fleet::SETTLE,
        |o| o.trim() == "gone",
    );
    assert_eq!(
        guest(vms[0], key, "fleetctl destroy side.service"),
        "Destroyed side.service"
    );
    assert!(!guest(vms[0], key, "fleetctl list-unit-files --no-legend").contains("side.service"));

    // The engine's leader dies (its daemon killed, no goodbye): another machine leads within
    // 30 s, and scheduling goes on.
    let leader = fleet::engine_leader(vms[0], key);
    let at = ids
        .iter()
        .position(|i| *i == leader)
        .expect("the leader is one of the three");
    let killed = Instant::now();
    guest(
        vms[at],
        key,
        "sudo systemctl kill -s SIGKILL kiln-fleet.service; sudo systemctl stop kiln-fleet.service",
    );
    let other = (at + 1) % 3;
    wait_in_guest(
        vms[other],
        key,
        "etcdctl get --print-value-only /_coreos.com/fleet/lease/engine-leader",
        Duration::from_secs(30),
        |out| out.contains("MachineID") && !out.contains(&leader),
    );
    eprintln!(
        "fleet: engine leader killed; another leads {:.0} s later",
        fleet::secs(killed)
    );
    guest(vms[at], key, "sudo systemctl start kiln-fleet.service");
    guest(
        vms[other],
        key,
        &format!("cat > plain@.service <<'EOF'\n{}EOF", fleet::UNITS[4].1),
    );
    let plain: Vec<String> = (1..=fleet::PLAIN)
        .map(|i| format!("plain@{i}.service"))
        .collect();
    guest_waiting(
        vms[other],
        key,
        600,
        &format!("fleetctl start --block-attempts 200 {}", plain.join(" ")),
    );
    fleet::check_machines(vms[0], key, &expect);
    let rows = fleet::examples_spread(vms[0], key);
    fleet::nothing_twice(&rows).unwrap();
}

/// After the rolling update (each machine rebooted once): fleet's units are all back where their
/// rules put them, each running once.
fn fleet_after_update(vms: &[&Vm], key: &Path, ids: &[String]) {
    fleet::examples_spread(vms[0], key);
    fleet::wait_rows(vms[0], key, fleet::SETTLE, |rows| {
        fleet::nothing_twice(rows).is_ok()
            && fleet::running(rows, "everywhere.service").len() == 3
            && fleet::running(rows, "db.service") == [ids[1].clone()]
            && (1..=fleet::PLAIN)
                .all(|i| fleet::running(rows, &format!("plain@{i}.service")).len() == 1)
    });
    let nodes: Vec<(&str, &str)> = NODES.iter().map(|n| (n.name, n.addr)).collect();
    fleet::check_http(vms[0], key, &nodes);
    assert_eq!(
        guest(vms[1], key, "fleetctl list-machines --no-legend")
            .lines()
            .count(),
        3
    );
    // The states fleetctl showed came from systemd over D-Bus, on both versions' boots: the
    // daemon's journal has no failure of it, or (a call that timed out on a busy machine) only
    // failures it recovered from.
    on_each(vms, |_, vm| {
        let said = guest(
            vm,
            key,
            "sudo journalctl -u kiln-fleet.service -o cat --no-pager | grep 'over D-Bus' || true",
        );
        let last = said.lines().last().unwrap_or_default();
        assert!(
            said.is_empty() || last.ends_with("over D-Bus again"),
            "{}: fleet's daemon reads unit states without D-Bus:\n{said}",
            vm.name()
        );
    });
}
