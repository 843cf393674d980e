//! flannel on the 3-node cluster scenario's machines, checked on its one boot and again after its
//! rolling update: the leases in etcd, the kernel state each machine set for the others, docker
//! on each machine's subnet, containers reaching each other across machines by their own
//! addresses, and traffic leaving the overlay masqueraded. Every reading is what an operator
//! types on a machine (`etcdctl`, `ip`, `bridge`, `docker`).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_contract::flannel_conf::DEFAULT_PREFIX;
use kiln_qemu::Vm;

use crate::{guest, guest_waiting, on_each, wait_in_guest};

/// The overlay the scenario's cloud-configs ask for (`flannel: network:`).
pub const NETWORK: &str = "10.5.0.0/16";
/// flannel's vxlan defaults: VNI 1 (the device `flannel.1`), Linux's port, and the underlay's
/// 1500 less vxlan's 50 bytes.
const DEVICE: &str = "flannel.1";
const PORT: u16 = 8472;
const MTU: u32 = 1450;
/// How long a machine may take to come up on the overlay (etcd, a lease, docker restarted under
/// TCG), and to follow a change of the leases.
pub const SETTLE: Duration = Duration::from_secs(240);
const FOLLOW: Duration = Duration::from_secs(30);

/// One machine's lease, as etcd holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The subnet's network address; the prefix length is 24 (flannel's default `SubnetLen`).
    pub subnet: Ipv4Addr,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: String,
}

impl Lease {
    /// Whether `addr` is inside this lease's /24.
    pub fn holds(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & 0xffff_ff00 == u32::from(self.subnet)
    }
}

/// The leases of `etcdctl get --prefix <prefix>/subnets/` (key and value lines by turns).
pub fn parse_leases(text: &str) -> Result<Vec<Lease>, String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if !lines.len().is_multiple_of(2) {
        return Err(format!("keys and values do not pair up:\n{text}"));
    }
    lines
        .chunks(2)
        .map(|pair| {
            let name = pair[0]
                .rsplit('/')
                .next()
                .and_then(|n| n.strip_suffix("-24"))
                .ok_or_else(|| format!("{} is not a /24 lease key", pair[0]))?;
            let subnet: Ipv4Addr = name.parse().map_err(|e| format!("{}: {e}", pair[0]))?;
            let value: serde_json::Value =
                serde_json::from_str(pair[1]).map_err(|e| format!("{}: {e}", pair[1]))?;
            let public_ip = value["PublicIP"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("no PublicIP in {}", pair[1]))?;
            if value["BackendType"] != "vxlan" {
                return Err(format!("not a vxlan lease: {}", pair[1]));
            }
            let vtep_mac = value["BackendData"]["VtepMAC"]
                .as_str()
                .ok_or_else(|| format!("no VtepMAC in {}", pair[1]))?
                .to_owned();
            Ok(Lease {
                subnet,
                public_ip,
                vtep_mac,
            })
        })
        .collect()
}

/// Waits until each machine runs the daemon and etcd holds one lease per machine, at its
/// private address, and returns them in the machines' order. `addrs` are the machines'
/// private addresses.
pub fn leases(vms: &[&Vm], key: &Path, addrs: &[&str]) -> Vec<Lease> {
    on_each(vms, |_, vm| {
        wait_in_guest(
            vm,
            key,
            "systemctl is-active kiln-flanneld.service",
            SETTLE,
            |o| o.trim() == "active",
        )
    });
    let config = guest(
        vms[0],
        key,
        &format!("etcdctl get --print-value-only {DEFAULT_PREFIX}/config"),
    );
    let config: serde_json::Value = serde_json::from_str(&config)
        .unwrap_or_else(|e| panic!("the network config {config:?}: {e}"));
    assert_eq!(config["Network"], NETWORK, "{config}");
    let out = wait_in_guest(
        vms[0],
        key,
        &format!("etcdctl get --prefix {DEFAULT_PREFIX}/subnets/"),
        SETTLE,
        |o| parse_leases(o).is_ok_and(|l| l.len() == addrs.len()),
    );
    let all = parse_leases(&out).unwrap();
    let ours: Vec<Lease> = addrs
        .iter()
        .map(|a| {
            let lease = all
                .iter()
                .find(|l| l.public_ip.to_string() == *a)
                .unwrap_or_else(|| panic!("no lease with PublicIP {a}:\n{out}"));
            assert!(
                network_holds(NETWORK, lease.subnet),
                "{:?} is outside {NETWORK}",
                lease.subnet
            );
            lease.clone()
        })
        .collect();
    // Each machine's subnet.env names its own lease.
    on_each(vms, |i, vm| {
        let lease = &ours[i];
        let env = guest(vm, key, "cat /run/flannel/subnet.env");
        let want = [
            format!("FLANNEL_NETWORK={NETWORK}"),
            format!("FLANNEL_SUBNET={}/24", gateway(lease)),
            format!("FLANNEL_MTU={MTU}"),
        ];
        for line in &want {
            assert!(
                env.lines().any(|l| l == line),
                "{}: {line} missing:\n{env}",
                vm.name()
            );
        }
    });
    ours
}

fn network_holds(network: &str, addr: Ipv4Addr) -> bool {
    let (base, len) = network.split_once('/').unwrap();
    let base: Ipv4Addr = base.parse().unwrap();
    let mask = u32::MAX << (32 - len.parse::<u32>().unwrap());
    u32::from(addr) & mask == u32::from(base)
}

/// The subnet's first address: docker's bridge.
fn gateway(lease: &Lease) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(lease.subnet) + 1)
}

/// What one machine's kernel must hold: the device, its /32, and per other machine the on-link
/// route, the permanent neighbour and the FDB entry; docker0 on the machine's own subnet.
pub fn kernel_state(text: &str, me: &Lease, others: &[Lease]) -> Result<(), String> {
    let parts: Vec<&str> = text.split("\n---\n").collect();
    let [link, addr, routes, neigh, fdb, docker] = parts[..] else {
        return Err(format!("six readings expected:\n{text}"));
    };
    let want_link = [
        format!("vxlan id 1 local {} ", me.public_ip),
        format!("dstport {PORT}"),
        "nolearning".into(),
        format!("mtu {MTU}"),
        format!("link/ether {}", me.vtep_mac),
    ];
    for w in &want_link {
        if !link.contains(w.as_str()) {
            return Err(format!("{DEVICE}: `{w}` missing:\n{link}"));
        }
    }
    if !addr.contains(&format!("inet {}/32", me.subnet)) {
        return Err(format!(
            "{DEVICE}'s address is not {}/32:\n{addr}",
            me.subnet
        ));
    }
    let routes_wanted = routes.lines().count() == others.len();
    for o in others {
        let route = format!("{}/24 via {} onlink", o.subnet, o.subnet);
        let entry = format!("{} lladdr {} PERMANENT", o.subnet, o.vtep_mac);
        let forward = format!("{} dst {} self permanent", o.vtep_mac, o.public_ip);
        for (what, text, line) in [
            ("route", routes, route),
            ("neighbour", neigh, entry),
            ("fdb entry", fdb, forward),
        ] {
            if !text.lines().any(|l| l.trim() == line) {
                return Err(format!("{what} `{line}` missing:\n{text}"));
            }
        }
    }
    if !routes_wanted {
        return Err(format!(
            "{} routes through {DEVICE}, one per other machine expected:\n{routes}",
            routes.lines().count()
        ));
    }
    if !docker.contains(&format!("inet {}/24", gateway(me))) {
        return Err(format!("docker0 is not on {}/24:\n{docker}", me.subnet));
    }
    Ok(())
}

const KERNEL_STATE: &str = "ip -d link show flannel.1; echo ---; ip -4 -o addr show dev flannel.1; echo ---; ip -4 route show dev flannel.1; echo ---; ip neigh show dev flannel.1; echo ---; /usr/sbin/bridge fdb show dev flannel.1; echo ---; ip -4 -o addr show dev docker0 2>&1 || true";

/// Each machine's kernel state, as [`kernel_state`] wants it (waited for: a machine follows
/// the others' leases within its watch). A failure shows the leases and every daemon's journal.
pub fn check_kernels(vms: &[&Vm], key: &Path, leases: &[Lease]) {
    on_each(vms, |i, vm| {
        let others: Vec<Lease> = leases
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, l)| l.clone())
            .collect();
        // docker starts at its first use (its socket): started here as a `docker run` would,
        // with the built-in images its start loads, which the containers below run (as a unit
        // that runs one orders itself after kiln-container-images.service). `systemctl start`
        // waits only for the jobs it names: docker alone once answered a `docker run` that
        // found no kiln/busybox yet. Both at once on every machine took over 90 s in CI (a
        // guest's command limit), so this one waits as long as the kernel state may settle.
        let started = Instant::now();
        guest_waiting(
            vm,
            key,
            SETTLE.as_secs(),
            "sudo systemctl start docker.service kiln-container-images.service",
        );
        eprintln!(
            "{}: docker and its built-in images started in {:.0} s",
            vm.name(),
            started.elapsed().as_secs_f64()
        );
        let deadline = Instant::now() + SETTLE;
        let mut state = guest(vm, key, KERNEL_STATE);
        while let Err(e) = kernel_state(&state, &leases[i], &others) {
            if Instant::now() > deadline {
                let now = guest(
                    vms[0],
                    key,
                    &format!("etcdctl get --prefix {DEFAULT_PREFIX}/subnets/"),
                );
                let journals: String = vms
                    .iter()
                    .map(|v| format!("{}:\n{}\n", v.name(), guest(v, key, DAEMON_JOURNAL)))
                    .collect();
                panic!(
                    "{}: {e}\nits state:\n{state}\nleases expected: {leases:?}\nleases now:\n{now}\n{journals}",
                    vm.name()
                );
            }
            std::thread::sleep(Duration::from_secs(3));
            state = guest(vm, key, KERNEL_STATE);
        }
    });
}

/// The daemon's journal on a machine, for a failure's message.
pub const DAEMON_JOURNAL: &str =
    "sudo journalctl -u kiln-flanneld.service -o short-monotonic --no-pager | tail -n 40";

/// A CGI server in a container that answers with the address the request came from (the
/// scenario's way of seeing what a server sees), and serves `/big` for [`measure`]. `$1` is
/// the port; on IPv4 alone, so the address is `10.5.1.2` rather than `[::ffff:10.5.1.2]`.
/// (Debian's busybox `wget -T` crashes: the clients have no timeout of their own, ssh's bounds
/// them.)
const SERVE: &str = r#"busybox mkdir -p /www/cgi-bin
busybox dd if=/dev/zero of=/www/big bs=1M count=32 2>/dev/null
printf '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho "$REMOTE_ADDR"\n' > /www/cgi-bin/ip
busybox chmod 755 /www/cgi-bin/ip
exec busybox httpd -f -p "0.0.0.0:$1" -h /www
"#;
const OVERLAY_PORT: u16 = 8080;
/// [`check_containers`]' servers: on the docker bridge (the overlay), on the host's network.
const WEB: &str = "flannel-web";
const HOST_WEB: &str = "flannel-host";
const HOST_PORT: u16 = 8082;

/// Two servers on `server` (index into `vms`): one in a container on its docker bridge, one
/// in a container on the host's network; a container on `client` fetches both. The overlay's
/// server sees the client container's own address; the host-network server, outside the
/// overlay, sees the client machine's address (masqueraded). Returns the server container's
/// address.
pub fn check_containers(
    vms: &[&Vm],
    key: &Path,
    leases: &[Lease],
    (client, server): (usize, usize),
) -> Ipv4Addr {
    let run = format!(
        "cat > /tmp/serve.sh <<'EOF'\n{SERVE}EOF\n\
         sudo docker rm -f {WEB} {HOST_WEB} >/dev/null 2>&1; \
         sudo docker run -d --name {WEB} -v /tmp/serve.sh:/serve.sh:ro kiln/busybox sh /serve.sh {OVERLAY_PORT} >/dev/null && \
         sudo docker run -d --name {HOST_WEB} --network host -v /tmp/serve.sh:/serve.sh:ro kiln/busybox sh /serve.sh {HOST_PORT} >/dev/null"
    );
    guest(vms[server], key, &run);
    let at = container_address(vms[server], key, &leases[server], WEB);
    let host = leases[server].public_ip;
    let fetch = format!(
        "sudo docker run --rm kiln/busybox sh -c 'ip -4 -o addr show dev eth0; wget -q -O - http://{at}:{OVERLAY_PORT}/cgi-bin/ip; wget -q -O - http://{host}:{HOST_PORT}/cgi-bin/ip'"
    );
    let out = wait_in_guest(vms[client], key, &fetch, SETTLE, |o| o.lines().count() == 3);
    let lines: Vec<&str> = out.lines().collect();
    let own: Ipv4Addr = lines[0]
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the client container's address: {out}"));
    assert!(
        leases[client].holds(own),
        "the client container on {} has {own}, outside {:?}",
        vms[client].name(),
        leases[client].subnet
    );
    assert_eq!(
        lines[1],
        own.to_string(),
        "the server container saw another address than the client container's own"
    );
    assert_eq!(
        lines[2],
        leases[client].public_ip.to_string(),
        "a server outside the overlay saw another address than the client machine's"
    );
    eprintln!(
        "flannel: container {own} on {} fetched from container {at} on {} (seen as itself) and from {host} outside the overlay (seen as {})",
        vms[client].name(),
        vms[server].name(),
        lines[2]
    );
    at
}

/// Removes [`check_containers`]' two servers from `vm`. Left running, one of them outlived
/// docker at the machine's next shutdown, and systemd waited its 90 s for it before the reboot.
pub fn remove_servers(vm: &Vm, key: &Path) {
    guest(
        vm,
        key,
        &format!("sudo docker rm -f {WEB} {HOST_WEB} >/dev/null"),
    );
}

/// The overlay's measuring client container.
const PROBE: &str = "flannel-probe";

/// The size of `/big`.
const BIG_MIB: f64 = 32.0;

/// Fetches `$1` twice, each time printing the uptime before and after (seconds, 10 ms steps).
const FETCH: &str = r#"for i in 1 2; do
  a=$(cut -d' ' -f1 /proc/uptime)
  busybox wget -q -O /dev/null "$1" || exit 1
  b=$(cut -d' ' -f1 /proc/uptime)
  echo "$a $b"
done
"#;

/// MiB/s of each `before after` line [`FETCH`] printed.
fn rates(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            let secs = b.trim().parse::<f64>().ok()? - a.trim().parse::<f64>().ok()?;
            Some(BIG_MIB / secs.max(0.01))
        })
        .collect()
}

/// The median of the round trips busybox ping printed (`... seq=0 ttl=64 time=0.412 ms`), in
/// ms. Not its average: a slow reply moves an average of a few (the first reply of a ping run
/// by `docker exec` came 2 to 3 times later than the others when looked at by hand).
fn rtt(text: &str) -> Option<f64> {
    let times: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split_once(" time=")?.1.strip_suffix(" ms")?.parse().ok())
        .collect();
    (!times.is_empty()).then(|| median(times))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The overlay's TCP throughput and round trip beside the underlay's, in the same minutes: a
/// container on `client` downloads 32 MiB from [`check_containers`]' server container on
/// `server` at its overlay address `at`, and the client machine itself the same from the
/// host-network server at the server machine's own address, by turns; then pings each.
/// Printed, never asserted (the machine is shared, and TCG's costs are not a network's).
pub fn measure(
    vms: &[&Vm],
    key: &Path,
    leases: &[Lease],
    (client, server): (usize, usize),
    at: Ipv4Addr,
) {
    let host = leases[server].public_ip;
    // The overlay's client runs for the whole measurement, each run a `docker exec` in it (a
    // container started per run cost 20 to 60 s under TCG); the underlay's is the machine
    // itself, with the image's busybox: the network a host-network container would have.
    guest(
        vms[client],
        key,
        &format!(
            "cat > /tmp/fetch.sh <<'EOF'\n{FETCH}EOF\n\
             sudo docker rm -f {PROBE} >/dev/null 2>&1; \
             sudo docker run -d --name {PROBE} -v /tmp/fetch.sh:/fetch.sh:ro kiln/busybox sleep 3600 >/dev/null"
        ),
    );
    let run = |in_container: bool, url: String| {
        let command = if in_container {
            format!("sudo docker exec {PROBE} sh /fetch.sh {url}")
        } else {
            format!("sh /tmp/fetch.sh {url}")
        };
        guest(vms[client], key, &command)
    };
    let (mut over, mut under) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        over.extend(rates(&run(true, format!("http://{at}:{OVERLAY_PORT}/big"))));
        under.extend(rates(&run(false, format!("http://{host}:{HOST_PORT}/big"))));
    }
    let ping = |prefix: &str, to: Ipv4Addr| {
        let out = guest(
            vms[client],
            key,
            &format!("sudo {prefix}busybox ping -c 7 {to}"),
        );
        rtt(&out).unwrap_or_else(|| panic!("no round trip in {out:?}"))
    };
    let in_probe = format!("docker exec {PROBE} ");
    let (rtt_over, rtt_under) = (ping(&in_probe, at), ping("", host));
    guest(
        vms[client],
        key,
        &format!("sudo docker rm -f {PROBE} >/dev/null"),
    );
    let (o, u) = (median(over.clone()), median(under.clone()));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "flannel: the host's load while measuring (/proc/loadavg): {}",
        load.trim()
    );
    eprintln!(
        "flannel throughput, {} -> {}: overlay {o:.1} MiB/s (runs {over:.1?}), underlay {u:.1} MiB/s (runs {under:.1?}): {:.2}x the underlay; round trip overlay {rtt_over:.2} ms, underlay {rtt_under:.2} ms ({:.2}x)",
        vms[client].name(),
        vms[server].name(),
        o / u,
        rtt_over / rtt_under
    );
}

/// The address of the container `name` on `vm`'s bridge, which is inside the machine's subnet.
fn container_address(vm: &Vm, key: &Path, lease: &Lease, name: &str) -> Ipv4Addr {
    let text = guest(
        vm,
        key,
        &format!("sudo docker inspect -f '{{{{.NetworkSettings.IPAddress}}}}' {name}"),
    );
    let at: Ipv4Addr = text
        .parse()
        .unwrap_or_else(|e| panic!("{}: {name}'s address {text:?}: {e}", vm.name()));
    assert!(
        lease.holds(at),
        "{name} on {} has {at}, outside its subnet {:?}",
        vm.name(),
        lease.subnet
    );
    at
}

/// fleet's example instances, containers on each machine's bridge, reach each other by their
/// overlay addresses: each fetches the next one's page (its machine's name). `hosts[i]` is the
/// index into `vms` of the machine running `example@{i+1}`; `names` the machines' host names.
pub fn check_examples(vms: &[&Vm], key: &Path, leases: &[Lease], hosts: &[usize], names: &[&str]) {
    // Instance i's machine, each machine asked at once.
    let on: Vec<&Vm> = hosts.iter().map(|&m| vms[m]).collect();
    let addrs: Vec<Ipv4Addr> = on_each(&on, |i, vm| {
        container_address(vm, key, &leases[hosts[i]], &format!("example-{}", i + 1))
    });
    on_each(&on, |i, vm| {
        let j = (i + 1) % hosts.len();
        let got = wait_in_guest(
            vm,
            key,
            &format!(
                "sudo docker exec example-{} wget -q -O - http://{}:8081/",
                i + 1,
                addrs[j]
            ),
            SETTLE,
            |o| o.trim() == names[hosts[j]],
        );
        assert_eq!(got, names[hosts[j]]);
    });
    eprintln!(
        "flannel: example@1..{} fetched from each other at {addrs:?}",
        hosts.len()
    );
}

/// A machine's lease deleted from etcd while its daemon is stopped (a machine taken out of the
/// network): the others drop its route within seconds. Then its daemon starts again and takes
/// a lease again (the caller checks it is the same subnet). Returns how long the slower of the
/// others took to drop the route.
pub fn check_lease_deleted(vms: &[&Vm], key: &Path, leases: &[Lease], victim: usize) -> Duration {
    let lease = &leases[victim];
    // Stopped first: a running daemon would take its lease back within its watch, and the
    // others would put the route back before a poll could see it gone.
    guest(
        vms[victim],
        key,
        "sudo systemctl stop kiln-flanneld.service",
    );
    let gone = Instant::now();
    guest(
        vms[(victim + 1) % vms.len()],
        key,
        &format!("etcdctl del {DEFAULT_PREFIX}/subnets/{}-24", lease.subnet),
    );
    let route = format!("{}/24 ", lease.subnet);
    // Watched on every other machine at once, so each one's time is its own.
    let slowest = on_each(vms, |i, vm| {
        if i == victim {
            return Duration::ZERO;
        }
        wait_in_guest(vm, key, "ip -4 route show dev flannel.1", FOLLOW, |o| {
            !o.contains(&route)
        });
        let took = gone.elapsed();
        eprintln!(
            "flannel: {} dropped {}'s route {:.1} s after its lease was deleted",
            vm.name(),
            vms[victim].name(),
            took.as_secs_f64()
        );
        took
    })
    .into_iter()
    .max()
    .unwrap_or_default();
    guest(
        vms[victim],
        key,
        "sudo systemctl start kiln-flanneld.service",
    );
    slowest
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: &str = "/coreos.com/network/subnets/10.5.7.0-24\n{\"PublicIP\":\"10.77.0.2\",\"BackendType\":\"vxlan\",\"BackendData\":{\"VtepMAC\":\"aa:bb:cc:dd:ee:02\"}}\n";

    fn lease(n: u8) -> Lease {
        Lease {
            subnet: Ipv4Addr::new(10, 5, n, 0),
            public_ip: Ipv4Addr::new(10, 77, 0, n),
            vtep_mac: format!("aa:bb:cc:dd:ee:0{n}"),
        }
    }

    #[test]
    fn measurements_are_read_as_busybox_prints_them() {
        assert_eq!(rates("100.25 102.25\n7.00 6.99\n"), [16.0, 3200.0]);
        let ping = "PING 10.5.2.2 (10.5.2.2): 56 data bytes\n64 bytes from 10.5.2.2: seq=0 ttl=63 time=41.204 ms\n64 bytes from 10.5.2.2: seq=1 ttl=63 time=0.412 ms\n64 bytes from 10.5.2.2: seq=2 ttl=63 time=0.744 ms\n\n--- 10.5.2.2 ping statistics ---\n3 packets transmitted, 3 packets received, 0% packet loss\nround-trip min/avg/max = 0.412/14.120/41.204 ms\n";
        assert_eq!(rtt(ping), Some(0.744));
        assert_eq!(rtt("ping: sendto: Network unreachable\n"), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn leases_are_read_as_etcdctl_prints_them() {
        let l = parse_leases(LEASE).unwrap();
        assert_eq!(
            l,
            [Lease {
                subnet: Ipv4Addr::new(10, 5, 7, 0),
                public_ip: Ipv4Addr::new(10, 77, 0, 2),
                vtep_mac: "aa:bb:cc:dd:ee:02".into()
            }]
        );
        assert!(l[0].holds(Ipv4Addr::new(10, 5, 7, 9)));
        assert!(!l[0].holds(Ipv4Addr::new(10, 5, 8, 9)));
        assert!(parse_leases(&LEASE.replace("vxlan", "udp")).is_err());
        assert!(parse_leases("/a/b/10.5.7.0-24\n").is_err());
    }

    /// The readings as iproute2 6.1 prints them on a machine with two peers.
    fn readings(me: &Lease, others: &[Lease]) -> String {
        let routes: String = others
            .iter()
            .map(|o| format!("{}/24 via {} onlink \n", o.subnet, o.subnet))
            .collect();
        let neigh: String = others
            .iter()
            .map(|o| format!("{} lladdr {} PERMANENT\n", o.subnet, o.vtep_mac))
            .collect();
        let fdb: String = others
            .iter()
            .map(|o| format!("{} dst {} self permanent\n", o.vtep_mac, o.public_ip))
            .collect();
        format!(
            "5: flannel.1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UNKNOWN mode DEFAULT group default \n    link/ether {} brd ff:ff:ff:ff:ff:ff promiscuity 0 minmtu 68 maxmtu 65535 \n    vxlan id 1 local {} dev ens4 srcport 0 0 dstport 8472 nolearning ttl auto ageing 300 udpcsum noudp6zerocsumtx noudp6zerocsumrx\n---\n5: flannel.1    inet {}/32 scope global flannel.1\\       valid_lft forever preferred_lft forever\n---\n{routes}---\n{neigh}---\n{fdb}---\n4: docker0    inet 10.5.{}.1/24 brd 10.5.{}.255 scope global docker0\\       valid_lft forever preferred_lft forever",
            me.vtep_mac,
            me.public_ip,
            me.subnet,
            me.subnet.octets()[2],
            me.subnet.octets()[2]
        )
    }

    #[test]
    fn kernel_state_wants_every_entry() {
        let (me, others) = (lease(1), [lease(2), lease(3)]);
        let text = readings(&me, &others);
        kernel_state(&text, &me, &others).unwrap();
        // One peer's entries missing (its lease gone): not the state wanted.
        assert!(kernel_state(&text, &me, &[lease(2), lease(3), lease(4)]).is_err());
        // A route left over for a machine that is gone.
        assert!(kernel_state(&text, &me, &others[..1]).is_err());
        let learning = text.replace("nolearning", "learning");
        assert!(kernel_state(&learning, &me, &others).is_err());
        let default_bridge = text.replace("inet 10.5.1.1/24", "inet 172.17.0.1/16");
        assert!(kernel_state(&default_bridge, &me, &others)
            .unwrap_err()
            .contains("docker0"));
    }
}
