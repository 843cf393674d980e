//! The kernel state as the reference tools (`ip`, `bridge`) read it back, and packets through it,
//! on simulated machines ([`crate::testns`]). They need root, as the daemon does.

use std::net::Ipv4Addr;

use serde_json::Value;

use super::*;
use crate::testns::{ping_command, wire, Machine};

fn ip(a: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

fn net(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

fn peer(subnet: &str, public_ip: [u8; 4], mac: &str) -> VxlanPeer {
    VxlanPeer {
        subnet: net(subnet),
        public_ip: ip(public_ip),
        vtep_mac: mac.parse().unwrap(),
    }
}

/// The entry of a JSON list whose `key` is `value`.
fn entry<'v>(list: &'v Value, key: &str, value: &str) -> Option<&'v Value> {
    list.as_array()?.iter().find(|e| e[key] == value)
}

/// One machine's underlay: `v0` (10.9.0.1/24, up) with its veth peer `v1` up beside it.
fn underlay(m: &Machine) -> u32 {
    m.tool_line("ip link add v0 type veth peer name v1");
    m.tool(&["ip", "addr", "add", "10.9.0.1/24", "dev", "v0"]);
    m.tool(&["ip", "link", "set", "v0", "up"]);
    m.tool(&["ip", "link", "set", "v1", "up"]);
    m.index("v0")
}

fn vtep_config(vni: u32, port: u16, dev_index: u32, local: [u8; 4]) -> VtepConfig {
    VtepConfig {
        vni,
        port,
        dev_index,
        local: ip(local),
        mtu: 1450,
    }
}

/// The device as `ip -d` shows it: vxlan id, underlay, local address, port, nolearning, MTU,
/// MAC, up; and accept_ra off.
fn check_device(m: &Machine, vtep: &Vtep, vni: u32, port: u16) {
    let link = &m.json(&["ip", "-d", "-j", "link", "show", &vtep.name])[0];
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(link["ifindex"], vtep.index, "{link}");
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan", "{link}");
    assert_eq!(info["id"], vni, "{link}");
    assert_eq!(info["local"], "10.9.0.1", "{link}");
    assert_eq!(info["link"], "v0", "{link}");
    assert_eq!(info["port"], port, "{link}");
    assert_eq!(info["learning"], false, "{link}");
    assert_eq!(link["mtu"], 1450, "{link}");
    assert_eq!(link["address"], vtep.mac.to_string(), "{link}");
    assert!(
        link["flags"].as_array().unwrap().contains(&"UP".into()),
        "{link}"
    );
    let accept_ra = m.tool(&[
        "cat",
        &format!("/proc/sys/net/ipv6/conf/{}/accept_ra", vtep.name),
    ]);
    assert_eq!(accept_ra.trim(), "0");
}

/// The neighbour, FDB entry and route of `p` on flannel.1, as `ip` and `bridge` show them, or
/// that none of the three is there.
fn check_peer(m: &Machine, p: &VxlanPeer, present: bool) {
    let gw = p.subnet.addr.to_string();
    let mac = p.vtep_mac.to_string();
    let neighbours = m.json(&["ip", "-j", "neigh", "show", "dev", "flannel.1"]);
    let fdb = m.json(&["bridge", "-j", "fdb", "show", "dev", "flannel.1"]);
    let routes = m.json(&["ip", "-j", "route", "show", "dev", "flannel.1"]);
    let neighbour = entry(&neighbours, "dst", &gw);
    let fdb_entry = entry(&fdb, "mac", &mac);
    let route = entry(&routes, "dst", &p.subnet.to_string());
    if !present {
        assert_eq!(neighbour, None, "{neighbours}");
        assert_eq!(fdb_entry, None, "{fdb}");
        assert_eq!(route, None, "{routes}");
        return;
    }
    let neighbour = neighbour.unwrap_or_else(|| panic!("no neighbour {gw}: {neighbours}"));
    assert_eq!(neighbour["lladdr"], mac, "{neighbour}");
    assert_eq!(
        neighbour["state"],
        serde_json::json!(["PERMANENT"]),
        "{neighbour}"
    );
    let fdb_entry = fdb_entry.unwrap_or_else(|| panic!("no FDB entry {mac}: {fdb}"));
    assert_eq!(fdb_entry["dst"], p.public_ip.to_string(), "{fdb_entry}");
    assert_eq!(
        fdb_entry["flags"],
        serde_json::json!(["self"]),
        "{fdb_entry}"
    );
    assert_eq!(fdb_entry["state"], "permanent", "{fdb_entry}");
    let route = route.unwrap_or_else(|| panic!("no route {}: {routes}", p.subnet));
    assert_eq!(route["gateway"], gw, "{route}");
    assert_eq!(route["flags"], serde_json::json!(["onlink"]), "{route}");
}

#[test]
fn vxlan_device_address_and_peers_are_flannels() {
    let m = Machine::start("machine");
    let v0 = underlay(&m);
    assert_eq!(m.run(|k| k.link_index("eth9")).unwrap(), None);
    assert_eq!(m.run(move |k| k.link_mtu(v0)).unwrap(), 1500);
    assert_eq!(
        m.run(move |k| k.ipv4_addresses(v0)).unwrap(),
        [IfAddr {
            addr: ip([10, 9, 0, 1]),
            prefix: 24
        }]
    );

    let cfg = vtep_config(1, 8472, v0, [10, 9, 0, 1]);
    let vtep = m.run(move |k| k.ensure_vxlan(&cfg)).unwrap();
    assert_eq!(
        (vtep.name.as_str(), &vtep.outcome),
        ("flannel.1", &VtepOutcome::Created)
    );
    check_device(&m, &vtep, 1, 8472);
    assert_eq!(vtep.mac.to_string(), "0e:01:0a:09:00:01");

    // A leftover address (another subnet, another prefix) is replaced by the /32.
    let index = vtep.index;
    m.run(move |k| k.set_vtep_address(index, net("10.5.99.0/24")))
        .unwrap();
    m.run(move |k| k.set_vtep_address(index, net("10.5.1.0/24")))
        .unwrap();
    m.run(move |k| k.set_vtep_address(index, net("10.5.1.0/24")))
        .unwrap();
    let addrs = &m.json(&["ip", "-j", "-4", "addr", "show", "flannel.1"])[0]["addr_info"];
    assert_eq!(addrs.as_array().unwrap().len(), 1, "{addrs}");
    assert_eq!(
        (&addrs[0]["local"], &addrs[0]["prefixlen"]),
        (&"10.5.1.0".into(), &32.into())
    );

    let p2 = peer("10.5.2.0/24", [10, 9, 0, 2], "aa:bb:cc:00:00:02");
    let p3 = peer("10.5.3.0/24", [10, 9, 0, 3], "aa:bb:cc:00:00:03");
    for p in [p2, p3] {
        m.run(move |k| k.add_vxlan_peer(index, &p)).unwrap();
    }
    // Again, as after a restart: replaced, not refused.
    m.run(move |k| k.add_vxlan_peer(index, &p2)).unwrap();
    check_peer(&m, &p2, true);
    check_peer(&m, &p3, true);

    // A peer that moved to another address and MAC: its entries follow.
    let p3_moved = peer("10.5.3.0/24", [10, 9, 0, 33], "aa:bb:cc:00:00:33");
    m.run(move |k| k.add_vxlan_peer(index, &p3_moved)).unwrap();
    check_peer(&m, &p3_moved, true);

    // The same config keeps the device and its entries.
    let again = m.run(move |k| k.ensure_vxlan(&cfg)).unwrap();
    assert_eq!((again.index, &again.outcome), (index, &VtepOutcome::Reused));
    check_peer(&m, &p2, true);
    // Its address changed behind the daemon's back (as udev's persistent MAC policy does to a
    // device whose address the kernel chose): made again with its own.
    m.tool_line("ip link set flannel.1 address 02:00:00:00:00:07");
    let again = m.run(move |k| k.ensure_vxlan(&cfg)).unwrap();
    assert_eq!(
        again.outcome,
        VtepOutcome::Recreated("has MAC address 02:00:00:00:00:07, not 0e:01:0a:09:00:01".into())
    );
    assert_eq!(again.mac, vtep.mac);
    check_peer(&m, &p2, false);
    let index = again.index;

    // Another port: a new device, without the old one's entries.
    let other_port = vtep_config(1, 4789, v0, [10, 9, 0, 1]);
    let moved = m.run(move |k| k.ensure_vxlan(&other_port)).unwrap();
    assert_ne!(moved.index, index);
    assert_eq!(
        moved.outcome,
        VtepOutcome::Recreated("has dstport 8472, not 4789".into())
    );
    check_device(&m, &moved, 1, 4789);
    check_peer(&m, &p2, false);

    // A flannel.1 with another VNI (made by hand), and one that learns: both made again.
    m.tool(&["ip", "link", "del", "flannel.1"]);
    m.tool_line(
        "ip link add flannel.1 type vxlan id 7 dev v0 local 10.9.0.1 dstport 8472 nolearning",
    );
    let vtep = m.run(move |k| k.ensure_vxlan(&cfg)).unwrap();
    assert_eq!(
        vtep.outcome,
        VtepOutcome::Recreated("has VNI 7, not 1".into())
    );
    check_device(&m, &vtep, 1, 8472);
    m.tool(&["ip", "link", "del", "flannel.1"]);
    m.tool_line("ip link add flannel.1 type vxlan id 1 dev v0 local 10.9.0.1 dstport 8472");
    let vtep = m.run(move |k| k.ensure_vxlan(&cfg)).unwrap();
    assert!(
        matches!(&vtep.outcome, VtepOutcome::Recreated(why) if why.contains("learns")),
        "{vtep:?}"
    );
    check_device(&m, &vtep, 1, 8472);

    // Removing a peer takes its three entries and leaves the other's; twice is no error.
    let index = vtep.index;
    m.run(move |k| k.set_vtep_address(index, net("10.5.1.0/24")))
        .unwrap();
    for p in [p2, p3] {
        m.run(move |k| k.add_vxlan_peer(index, &p)).unwrap();
    }
    m.run(move |k| k.remove_vxlan_peer(index, &p2)).unwrap();
    check_peer(&m, &p2, false);
    check_peer(&m, &p3, true);
    m.run(move |k| k.remove_vxlan_peer(index, &p2)).unwrap();
}

#[test]
fn a_peer_whose_route_fails_leaves_nothing_behind() {
    let m = Machine::start("machine");
    let v0 = underlay(&m);
    let cfg = vtep_config(1, 8472, v0, [10, 9, 0, 1]);
    let vtep = m.run(move |k| k.ensure_vxlan(&cfg)).unwrap();
    // The kernel refuses an onlink route through a device that is down (ENETDOWN).
    m.tool(&["ip", "link", "set", "flannel.1", "down"]);
    let p2 = peer("10.5.2.0/24", [10, 9, 0, 2], "aa:bb:cc:00:00:02");
    let index = vtep.index;
    let err = m.run(move |k| k.add_vxlan_peer(index, &p2)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("10.5.2.0/24") && text.contains("10.9.0.2") && text.contains("route"),
        "{text}"
    );
    assert_eq!(err.errno(), Some(libc::ENETDOWN), "{text}");
    check_peer(&m, &p2, false);
}

/// Clears CAP_NET_ADMIN from the calling thread's effective set (capabilities are per thread).
fn drop_net_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: the header and the two data words are the layout capget/capset take for version 3.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << CAP_NET_ADMIN);
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            0
        );
    }
}

#[test]
fn without_cap_net_admin_the_error_says_so() {
    let m = Machine::start("machine");
    let v0 = underlay(&m);
    let cfg = vtep_config(1, 8472, v0, [10, 9, 0, 1]);
    let err = m
        .run(move |k| {
            drop_net_admin();
            k.ensure_vxlan(&cfg)
        })
        .unwrap_err();
    let text = err.to_string();
    assert_eq!(err.errno(), Some(libc::EPERM), "{text}");
    assert!(
        text.contains("flannel.1") && text.contains("CAP_NET_ADMIN"),
        "{text}"
    );
    assert_eq!(m.run(|k| k.link_index("flannel.1")).unwrap(), None);
}

/// One end of the tunnel: its underlay address, subnet and device.
struct Side {
    machine: Machine,
    underlay: &'static str,
    public_ip: Ipv4Addr,
    subnet: Ipv4Net,
    vtep: Option<Vtep>,
}

impl Side {
    /// flannel.1 on the underlay, with the machine's /32, through the library only.
    fn bring_up(&mut self) {
        let dev = self.machine.index(self.underlay);
        let (public_ip, subnet) = (self.public_ip, self.subnet);
        let vtep = self.machine.run(move |k| {
            let mtu = k.link_mtu(dev)? - 50;
            let vtep = k.ensure_vxlan(&VtepConfig {
                vni: 1,
                port: 8472,
                dev_index: dev,
                local: public_ip,
                mtu,
            })?;
            k.set_vtep_address(vtep.index, subnet)?;
            Ok::<_, KernelError>(vtep)
        });
        self.vtep = Some(vtep.unwrap());
    }

    fn as_peer(&self) -> VxlanPeer {
        VxlanPeer {
            subnet: self.subnet,
            public_ip: self.public_ip,
            vtep_mac: self.vtep.as_ref().unwrap().mac,
        }
    }

    fn vtep_index(&self) -> u32 {
        self.vtep.as_ref().unwrap().index
    }

    /// Whether `ping -c 3 -W 2` from this side's /32 reaches `to`; with its output.
    fn ping(&self, to: Ipv4Net, count: &str) -> (bool, String) {
        let from = self.subnet.addr.to_string();
        let to = to.addr.to_string();
        let mut args = ping_command();
        args.extend(["-c", count, "-W", "2", "-I", &from, &to]);
        let (_, out) = self.machine.command(&args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    fn tx_packets(&self) -> u64 {
        let link = &self
            .machine
            .json(&["ip", "-s", "-j", "link", "show", "flannel.1"])[0];
        link["stats64"]["tx"]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("{link}"))
    }
}

#[test]
fn two_machines_reach_each_others_subnet_through_the_tunnel() {
    let mut a = Side {
        machine: Machine::start("machine-a"),
        underlay: "v0",
        public_ip: ip([10, 9, 0, 1]),
        subnet: net("10.5.1.0/24"),
        vtep: None,
    };
    let mut b = Side {
        machine: Machine::start("machine-b"),
        underlay: "v1",
        public_ip: ip([10, 9, 0, 2]),
        subnet: net("10.5.2.0/24"),
        vtep: None,
    };
    wire(&a.machine, &b.machine);

    a.bring_up();
    b.bring_up();
    let (ma, mb) = (&a.machine, &b.machine);
    for (side, other) in [(&a, b.as_peer()), (&b, a.as_peer())] {
        let vtep = side.vtep_index();
        side.machine
            .run(move |k| k.add_vxlan_peer(vtep, &other))
            .unwrap();
    }

    let before = a.tx_packets();
    let (ok, out) = a.ping(b.subnet, "3");
    assert!(ok, "ping through the tunnel failed:\n{out}");
    // iputils says "3 received", busybox "3 packets received".
    assert!(
        out.contains(" 3 received") || out.contains(" 3 packets received"),
        "{out}"
    );
    assert!(
        a.tx_packets() >= before + 3,
        "the pings did not leave by flannel.1"
    );

    let (vtep, gone) = (a.vtep_index(), b.as_peer());
    a.machine
        .run(move |k| k.remove_vxlan_peer(vtep, &gone))
        .unwrap();
    let (ok, out) = a.ping(b.subnet, "1");
    assert!(
        !ok,
        "ping still answered after the peer was removed:\n{out}"
    );

    // host-gw between the same two: plain routes over the underlay reach the same addresses,
    // and the route's removal cuts them off again.
    let (a_dev, b_dev) = (ma.index("v0"), mb.index("v1"));
    let (a_subnet, b_subnet) = (a.subnet, b.subnet);
    ma.run(move |k| k.add_host_gw_route(b_subnet, ip([10, 9, 0, 2]), a_dev))
        .unwrap();
    mb.run(move |k| k.add_host_gw_route(a_subnet, ip([10, 9, 0, 1]), b_dev))
        .unwrap();
    let route = &ma.json(&["ip", "-j", "route", "show", "10.5.2.0/24"])[0];
    assert_eq!(
        (&route["gateway"], &route["dev"]),
        (&"10.9.0.2".into(), &"v0".into())
    );
    let (ok, out) = a.ping(b.subnet, "1");
    assert!(ok, "ping over host-gw routes failed:\n{out}");
    ma.run(move |k| k.remove_host_gw_route(b_subnet, ip([10, 9, 0, 2]), a_dev))
        .unwrap();
    ma.run(move |k| k.remove_host_gw_route(b_subnet, ip([10, 9, 0, 2]), a_dev))
        .unwrap();
    let (ok, out) = a.ping(b.subnet, "1");
    assert!(
        !ok,
        "ping still answered after the host-gw route was removed:\n{out}"
    );
}

#[test]
fn a_kept_device_must_match_every_setting() {
    let cfg = vtep_config(1, 8472, 3, [10, 9, 0, 1]);
    let link = |data: Vec<InfoVxlan>| {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        link.attributes
            .push(LinkAttribute::Address(cfg.mac().0.to_vec()));
        link
    };
    let good = || {
        vec![
            InfoVxlan::Id(1),
            InfoVxlan::Link(3),
            InfoVxlan::Local(ip([10, 9, 0, 1])),
            InfoVxlan::Port(8472),
            InfoVxlan::Learning(false),
        ]
    };
    assert_eq!(vxlan_mismatch(&link(good()), &cfg, 8472), None);
    let changed = |i: usize, v: InfoVxlan| {
        let mut d = good();
        d[i] = v;
        vxlan_mismatch(&link(d), &cfg, 8472).unwrap()
    };
    assert_eq!(changed(0, InfoVxlan::Id(2)), "has VNI 2, not 1");
    assert_eq!(changed(1, InfoVxlan::Link(4)), "is on interface 4, not 3");
    assert_eq!(
        changed(2, InfoVxlan::Local(ip([10, 9, 0, 9]))),
        "has local address 10.9.0.9, not 10.9.0.1"
    );
    assert_eq!(
        changed(3, InfoVxlan::Port(4789)),
        "has dstport 4789, not 8472"
    );
    assert!(changed(4, InfoVxlan::Learning(true)).contains("learns"));
    let mut gbp = good();
    gbp.push(InfoVxlan::Gbp);
    assert!(vxlan_mismatch(&link(gbp), &cfg, 8472)
        .unwrap()
        .contains("group-based"));
    let mut other_mac = link(good());
    other_mac.attributes.pop();
    assert_eq!(
        vxlan_mismatch(&other_mac, &cfg, 8472).unwrap(),
        "has MAC address none, not 0e:01:0a:09:00:01"
    );
    assert_eq!(
        vxlan_mismatch(&LinkMessage::default(), &cfg, 8472).unwrap(),
        "is not a vxlan device"
    );
}
