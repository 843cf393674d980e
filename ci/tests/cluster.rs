//! Three machines configured by their cloud-configs alone: a private network between them (a
//! QEMU socket netdev, UDP multicast on 127.0.0.1) with static addresses, an etcd cluster over
//! it, and a container on one node that registers its address in etcd for the others to find.
//! User networking (restricted) carries only ssh from the host.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_ci::{disk_under_test, guest, overlay, wait_in_guest, work_dir};
use kiln_qemu::{free_port, ssh_keygen, Accel, SocketMode, SocketNic, Vm, VmConfig};

const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(600);
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

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

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

/// One node's whole configuration, in the CoreOS shape. node1 also runs the announcing
/// container, from a unit and a script the document carries.
fn cloud_config(node: &Node, public_key: &str) -> String {
    let cluster: Vec<String> = NODES
        .iter()
        .map(|n| format!("{}=http://{}:2380", n.name, n.addr))
        .collect();
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
{script}coreos:
  etcd2:
    name: {name}
    initial-cluster: {cluster}
    initial-cluster-token: kiln-ci
    initial-cluster-state: new
    initial-advertise-peer-urls: http://{addr}:2380
    listen-peer-urls: http://{addr}:2380
    listen-client-urls: http://{addr}:2379,http://127.0.0.1:2379
    advertise-client-urls: http://{addr}:2379
  network:
    - mac: {mac}
      address: {addr}/24
  units:
    - name: etcd.service
      command: start
{unit}"#,
        name = node.name,
        addr = node.addr,
        cluster = cluster.join(","),
        mac = mac_text(&node.mac),
    )
}

fn start_node(node: &Node, work: &Path, disk: &Path, mcast_port: u16, config: &Path) -> Vm {
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
    Vm::start(&cfg).unwrap_or_else(|e| panic!("starting {}: {e}", node.name))
}

#[test]
fn three_nodes_form_an_etcd_cluster_and_find_each_others_services() {
    let disk = disk_under_test();
    let work = work_dir("cluster");
    let (key, public) = ssh_keygen(&work).unwrap();
    let mcast_port = free_port().unwrap();
    let started = Instant::now();
    let vms: Vec<Vm> = NODES
        .iter()
        .map(|node| {
            let doc = cloud_config(node, &public);
            let path = work.join(format!("{}.yml", node.name));
            std::fs::write(&path, doc).unwrap();
            start_node(node, &work, &disk, mcast_port, &path)
        })
        .collect();
    for vm in &vms {
        vm.wait_for_ssh(&key, "core", BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}: {e}", vm.name()));
        eprintln!(
            "{}: ssh after {:.0} s",
            vm.name(),
            started.elapsed().as_secs_f64()
        );
    }

    // Healthy from every node, with no flags: etcdctl's defaults reach the local member.
    for vm in &vms {
        wait_in_guest(
            vm,
            &key,
            "etcdctl endpoint health --cluster",
            CLUSTER_TIMEOUT,
            |out| out.matches("is healthy").count() == 3,
        );
    }
    eprintln!(
        "VM start to a healthy 3-node cluster: {:.0} s (TCG: {:?})",
        started.elapsed().as_secs_f64(),
        vms[0].accel()
    );
    for vm in &vms {
        let members = guest(vm, &key, "etcdctl member list");
        assert_eq!(members.lines().count(), 3, "{}: {members}", vm.name());
        for node in &NODES {
            assert!(
                members.contains(&format!("http://{}:2379", node.addr)),
                "{members}"
            );
        }
    }
    guest(
        &vms[0],
        &key,
        "etcdctl put /kiln-ci/greeting hello-from-node1",
    );
    assert_eq!(
        guest(
            &vms[2],
            &key,
            "etcdctl get --print-value-only /kiln-ci/greeting"
        ),
        "hello-from-node1"
    );

    // write_files: owner and mode as asked.
    assert_eq!(
        guest(&vms[1], &key, "stat -c '%U:%G %a' /etc/kiln/cluster-note"),
        "core:core 640"
    );

    // Service discovery: node1's container registered itself; node2 finds it.
    let found = wait_in_guest(
        &vms[1],
        &key,
        "etcdctl get --prefix /services/web/",
        CLUSTER_TIMEOUT,
        |out| out.contains("10.77.0.1:8080"),
    );
    assert!(found.contains("/services/web/node1"), "{found}");
    let unit = guest(&vms[0], &key, "systemctl is-active web-announce.service");
    assert_eq!(unit, "active");

    // One machine down: the other two still have a quorum and take writes.
    vms[2].kill();
    guest(
        &vms[0],
        &key,
        "etcdctl put /kiln-ci/after-loss still-writable",
    );
    assert_eq!(
        guest(
            &vms[1],
            &key,
            "etcdctl get --print-value-only /kiln-ci/after-loss"
        ),
        "still-writable"
    );
    let health = vms[0]
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
}
