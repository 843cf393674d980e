//! The kernel state flannel's backends set, over rtnetlink, as flannel sets it: the vxlan device
//! `flannel.<VNI>` and its /32 address, and per peer a permanent neighbour, an FDB entry and an
//! onlink route; for host-gw, a plain route per peer. Each call is blocking and idempotent
//! (`replace`), so the daemon can apply a lease again after a restart or a missed event.
//!
//! A [`Kernel`] works in the network namespace of the thread that made it: its netlink socket is
//! bound to that namespace for life, and the one setting netlink cannot make (IPv6 `accept_ra`)
//! is written under `/proc/sys`, which follows the calling thread, so [`Kernel`] refuses to write
//! it from a thread in another namespace.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::config::VXLAN_DEFAULT_PORT;
use crate::net::{Ipv4Net, MacAddr};

/// The name flannel gives the vxlan device of a VNI.
pub fn vtep_name(vni: u32) -> String {
    format!("flannel.{vni}")
}

/// What the vxlan device must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtepConfig {
    pub vni: u32,
    /// The UDP port; 0 means [`VXLAN_DEFAULT_PORT`], as in flannel's config.
    pub port: u16,
    /// The underlay ("external") interface the encapsulated packets leave by.
    pub dev_index: u32,
    /// The underlay address: the source of encapsulated packets, and a lease's `PublicIP`.
    pub local: Ipv4Addr,
    /// flannel uses the underlay's MTU less 50 (the vxlan, UDP, IP and Ethernet headers).
    pub mtu: u32,
}

impl VtepConfig {
    /// The device's MAC address, set when it is made, from the VNI and the underlay address:
    /// locally administered (`0e:`), unique in the overlay (each machine's `PublicIP` is), and
    /// the same after a restart or a reboot, so peers' entries stay right. Left to the kernel,
    /// the address is random, and udev (systemd's `MACAddressPolicy=persistent`) replaces it
    /// after the daemon has read it and put it in its lease: peers would send to the old one.
    /// flannel's `VtepMAC` is whatever the device has; any unicast address does.
    pub fn mac(&self) -> MacAddr {
        let [a, b, c, d] = self.local.octets();
        MacAddr([0x0e, self.vni as u8, a, b, c, d])
    }
}

/// The vxlan device as it is after [`Kernel::ensure_vxlan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vtep {
    pub index: u32,
    pub name: String,
    /// Its MAC address: the lease's `VtepMAC`, which peers put in their neighbour and FDB entries.
    pub mac: MacAddr,
    pub outcome: VtepOutcome,
}

/// What [`Kernel::ensure_vxlan`] found, for the daemon's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VtepOutcome {
    Created,
    /// A device of that name was there and matched; peers' entries on it were kept.
    Reused,
    /// A device of that name was there and did not match (the reason); it was deleted, and with
    /// it every neighbour, FDB entry and route through it.
    Recreated(String),
}

/// A remote machine of the vxlan backend, from its lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanPeer {
    pub subnet: Ipv4Net,
    /// The lease's `PublicIP`: where encapsulated packets for its subnet go.
    pub public_ip: Ipv4Addr,
    /// The lease's `VtepMAC`.
    pub vtep_mac: MacAddr,
}

/// An IPv4 address on an interface, with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// Why the kernel state could not be read or set.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("starting the netlink runtime: {0}")]
    Runtime(io::Error),
    #[error("opening a netlink socket: {0}")]
    Socket(io::Error),
    /// A request the kernel refused: what was asked (naming the device, subnet or peer) and its
    /// answer.
    #[error("{action}: {}{}", netlink_text(.error), hint(netlink_errno(.error)))]
    Netlink {
        action: String,
        error: rtnetlink::Error,
    },
    #[error("{action}: {error}{}", hint(.error.raw_os_error()))]
    Sysctl { action: String, error: io::Error },
    /// The kernel's answer was not what a request of that kind gives, or the caller broke a
    /// rule of this module (the message says which).
    #[error("{action}: {problem}")]
    Unexpected { action: String, problem: String },
}

impl KernelError {
    /// The kernel's errno, when it gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Runtime(e) | KernelError::Socket(e) => e.raw_os_error(),
            KernelError::Netlink { error, .. } => netlink_errno(error),
            KernelError::Sysctl { error, .. } => error.raw_os_error(),
            KernelError::Unexpected { .. } => None,
        }
    }
}

fn netlink_errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

/// rtnetlink's own text for a kernel error says "Received a netlink error message"; the errno's
/// text is what an operator needs.
fn netlink_text(error: &rtnetlink::Error) -> String {
    match error {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().to_string(),
        other => other.to_string(),
    }
}

fn hint(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::EPERM | libc::EACCES) => {
            "; the daemon needs CAP_NET_ADMIN: run it as root, or give its unit AmbientCapabilities=CAP_NET_ADMIN"
        }
        _ => "",
    }
}

fn netlink(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let action = action.into();
    move |error| KernelError::Netlink { action, error }
}

/// Whether a delete found nothing to delete: no such neighbour or FDB entry (ENOENT), no such
/// route (ESRCH), or no such device, which takes its entries with it (ENODEV).
fn is_missing(error: &rtnetlink::Error) -> bool {
    matches!(
        netlink_errno(error),
        Some(libc::ENOENT | libc::ESRCH | libc::ENODEV)
    )
}

/// Treats a delete that found nothing as done.
fn deleted(result: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match result {
        Err(e) if is_missing(&e) => Ok(()),
        other => other,
    }
}

/// A netlink connection in one network namespace, with the runtime that drives it.
pub struct Kernel {
    runtime: tokio::runtime::Runtime,
    handle: Handle,
    /// The namespace's inode, to check that `/proc/sys` writes go to the same namespace.
    netns: Option<u64>,
}

impl Kernel {
    /// Opens a netlink connection in the calling thread's network namespace.
    pub fn new() -> Result<Kernel, KernelError> {
        // `enable_io` is there because netlink-sys's tokio socket turns on tokio's `net`.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(KernelError::Runtime)?;
        // The socket registers with the runtime's reactor as it is made, and the connection task
        // runs whenever a call blocks on the runtime.
        let (connection, handle, _) = {
            let _reactor = runtime.enter();
            rtnetlink::new_connection().map_err(KernelError::Socket)?
        };
        runtime.spawn(connection);
        Ok(Kernel {
            runtime,
            handle,
            netns: thread_netns(),
        })
    }

    /// The index of the interface named `name`, if there is one.
    pub fn link_index(&self, name: &str) -> Result<Option<u32>, KernelError> {
        let link = self.runtime.block_on(link_by_name(&self.handle, name));
        Ok(link
            .map_err(netlink(format!("looking up interface {name}")))?
            .map(|l| l.header.index))
    }

    /// The MTU of interface `index`.
    pub fn link_mtu(&self, index: u32) -> Result<u32, KernelError> {
        let action = format!("reading the MTU of interface {index}");
        let link = self.link_by_index(index, &action)?;
        link.attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .ok_or_else(|| KernelError::Unexpected {
                action,
                problem: "the kernel's answer has no MTU".into(),
            })
    }

    /// The IPv4 addresses on interface `index`, in the kernel's order (the primary first).
    pub fn ipv4_addresses(&self, index: u32) -> Result<Vec<IfAddr>, KernelError> {
        Ok(self
            .ipv4_address_messages(index)?
            .iter()
            .filter_map(if_addr)
            .collect())
    }

    fn ipv4_address_messages(&self, index: u32) -> Result<Vec<AddressMessage>, KernelError> {
        self.runtime
            .block_on(ipv4_address_messages(&self.handle, index))
            .map_err(netlink(format!(
                "listing the addresses of interface {index}"
            )))
    }

    /// Every interface: its index and name.
    pub fn links(&self) -> Result<Vec<(u32, String)>, KernelError> {
        let messages: Vec<LinkMessage> = self
            .runtime
            .block_on(self.handle.link().get().execute().try_collect())
            .map_err(netlink("listing the interfaces"))?;
        Ok(messages
            .iter()
            .map(|l| {
                let name = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                });
                (l.header.index, name.unwrap_or_default())
            })
            .collect())
    }

    /// The interface of the IPv4 default route in the main table (the first, as the kernel
    /// lists them), if there is one.
    pub fn default_route_link(&self) -> Result<Option<u32>, KernelError> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<RouteMessage> = self
            .runtime
            .block_on(self.handle.route().get(query).execute().try_collect())
            .map_err(netlink("listing the IPv4 routes"))?;
        Ok(routes
            .iter()
            .filter(|r| {
                r.header.destination_prefix_length == 0
                    && r.header.kind == RouteType::Unicast
                    && route_table(r) == u32::from(RouteHeader::RT_TABLE_MAIN)
            })
            .find_map(|r| {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(index) => Some(*index),
                    _ => None,
                })
            }))
    }

    fn link_by_index(&self, index: u32, action: &str) -> Result<LinkMessage, KernelError> {
        let get = async {
            let mut links = self.handle.link().get().match_index(index).execute();
            links.try_next().await
        };
        match self.runtime.block_on(get) {
            Ok(Some(link)) => Ok(link),
            Ok(None) => Err(KernelError::Unexpected {
                action: action.into(),
                problem: "the kernel answered with no interface".into(),
            }),
            Err(e) => Err(netlink(action)(e)),
        }
    }

    /// Makes `flannel.<VNI>` what `cfg` says (vxlan with that VNI, underlay device, local
    /// address and port, learning off), with the MTU set, up, and IPv6 router advertisements
    /// ignored. A device of that name that matches is kept with its entries; one that does not is
    /// deleted and made again.
    pub fn ensure_vxlan(&self, cfg: &VtepConfig) -> Result<Vtep, KernelError> {
        let name = vtep_name(cfg.vni);
        let port = match cfg.port {
            0 => VXLAN_DEFAULT_PORT,
            p => p,
        };
        let existing = self
            .runtime
            .block_on(link_by_name(&self.handle, &name))
            .map_err(netlink(format!("looking up {name}")))?;
        let outcome = match existing {
            None => VtepOutcome::Created,
            Some(link) => match vxlan_mismatch(&link, cfg, port) {
                None => VtepOutcome::Reused,
                Some(why) => {
                    let delete = self.handle.link().del(link.header.index).execute();
                    self.runtime
                        .block_on(delete)
                        .map_err(netlink(format!("deleting {name}, which {why}")))?;
                    VtepOutcome::Recreated(why)
                }
            },
        };
        if outcome != VtepOutcome::Reused {
            self.create_vxlan(&name, cfg, port)?;
        }
        let link = self
            .runtime
            .block_on(link_by_name(&self.handle, &name))
            .map_err(netlink(format!("looking up {name}")))?
            .ok_or_else(|| KernelError::Unexpected {
                action: format!("looking up {name}"),
                problem: "it is gone right after it was made; is another flannel running?".into(),
            })?;
        let index = link.header.index;
        let up = LinkUnspec::new_with_index(index).mtu(cfg.mtu).up().build();
        self.runtime
            .block_on(self.handle.link().set(up).execute())
            .map_err(netlink(format!(
                "setting the MTU of {name} to {} and bringing it up",
                cfg.mtu
            )))?;
        self.ignore_router_advertisements(&name)?;
        let mac = link_mac(&link).ok_or_else(|| KernelError::Unexpected {
            action: format!("reading the MAC address of {name}"),
            problem: "the kernel's answer has no 6-byte address".into(),
        })?;
        Ok(Vtep {
            index,
            name,
            mac,
            outcome,
        })
    }

    fn create_vxlan(&self, name: &str, cfg: &VtepConfig, port: u16) -> Result<(), KernelError> {
        let message = LinkVxlan::new(name, cfg.vni)
            .address(cfg.mac().0.to_vec())
            .dev(cfg.dev_index)
            .local(cfg.local)
            .port(port)
            .learning(false)
            .mtu(cfg.mtu)
            .build();
        let action = format!(
            "creating {name} (vxlan id {}, underlay interface {}, local {}, dstport {port}, nolearning)",
            cfg.vni, cfg.dev_index, cfg.local
        );
        match self.runtime.block_on(self.handle.link().add(message).execute()) {
            Ok(()) => Ok(()),
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => Err(KernelError::Unexpected {
                action,
                problem: format!(
                    "another vxlan device already uses VNI {} on port {port}; `ip -d link show type vxlan` shows it",
                    cfg.vni
                ),
            }),
            Err(e) => Err(netlink(action)(e)),
        }
    }

    /// `accept_ra=0` as flannel sets it: the device never takes an IPv6 router's advice. A
    /// kernel without IPv6 has nothing to set.
    fn ignore_router_advertisements(&self, name: &str) -> Result<(), KernelError> {
        let action = format!("setting net.ipv6.conf.{name}.accept_ra to 0");
        if thread_netns() != self.netns {
            return Err(KernelError::Unexpected {
                action,
                problem: "this thread is in another network namespace than the one the Kernel was made in; call it from that one".into(),
            });
        }
        if !Path::new("/proc/sys/net/ipv6").exists() {
            return Ok(());
        }
        let path = format!("/proc/sys/net/ipv6/conf/{name}/accept_ra");
        std::fs::write(&path, "0").map_err(|error| KernelError::Sysctl { action, error })
    }

    /// Puts `<subnet's network address>/32` on the vxlan device and takes every other IPv4
    /// address off it. The /32 keeps the kernel from adding broadcast and subnet routes; the
    /// address is the source of the machine's own packets into the overlay.
    pub fn set_vtep_address(&self, index: u32, subnet: Ipv4Net) -> Result<(), KernelError> {
        let want = IfAddr {
            addr: subnet.addr,
            prefix: 32,
        };
        let messages = self.ipv4_address_messages(index)?;
        let mut present = false;
        for message in messages {
            match if_addr(&message) {
                Some(a) if a == want => present = true,
                other => {
                    let shown =
                        other.map_or("an address".into(), |a| format!("{}/{}", a.addr, a.prefix));
                    let delete = self.handle.address().del(message).execute();
                    self.runtime.block_on(delete).map_err(netlink(format!(
                        "removing {shown} from interface {index} (it is to have only {}/32)",
                        subnet.addr
                    )))?;
                }
            }
        }
        if !present {
            let add = self
                .handle
                .address()
                .add(index, IpAddr::V4(subnet.addr), 32)
                .replace()
                .execute();
            self.runtime.block_on(add).map_err(netlink(format!(
                "adding {}/32 to interface {index}",
                subnet.addr
            )))?;
        }
        Ok(())
    }

    /// Makes `peer`'s subnet reachable through the vxlan device `vtep`, as flannel does: the
    /// neighbour `<subnet .0>` at the peer's VTEP MAC, the FDB entry sending that MAC to the
    /// peer's public address, and the route `<subnet> via <subnet .0> onlink`. Each replaces
    /// what was there. If the FDB entry or the route cannot be set, what was set before is taken
    /// away again and the error returned.
    pub fn add_vxlan_peer(&self, vtep: u32, peer: &VxlanPeer) -> Result<(), KernelError> {
        let gateway = peer.subnet.addr;
        let mac = peer.vtep_mac;
        let neighbour = self
            .handle
            .neighbours()
            .add(vtep, IpAddr::V4(gateway))
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .kind(RouteType::Unicast)
            .replace()
            .execute();
        self.runtime.block_on(neighbour).map_err(netlink(format!(
            "adding neighbour {gateway} lladdr {mac} on interface {vtep} for peer {}",
            peer.public_ip
        )))?;
        let fdb = self
            .handle
            .neighbours()
            .add_bridge(vtep, &mac.0)
            .destination(IpAddr::V4(peer.public_ip))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute();
        if let Err(e) = self.runtime.block_on(fdb) {
            self.undo(self.neighbour_deletion(vtep, gateway));
            return Err(netlink(format!(
                "adding FDB entry {mac} dst {} on interface {vtep} for subnet {}",
                peer.public_ip, peer.subnet
            ))(e));
        }
        let route = vxlan_route(vtep, peer.subnet);
        if let Err(e) = self
            .runtime
            .block_on(self.handle.route().add(route).replace().execute())
        {
            self.undo(self.fdb_deletion(vtep, peer));
            self.undo(self.neighbour_deletion(vtep, gateway));
            return Err(netlink(format!(
                "adding route {} via {gateway} onlink on interface {vtep} for peer {}",
                peer.subnet, peer.public_ip
            ))(e));
        }
        Ok(())
    }

    /// A rollback step: its own failure is not what the caller needs to hear about (the first
    /// error is), and what it could not remove, the next removal of the peer removes.
    fn undo(&self, step: impl Future<Output = Result<(), rtnetlink::Error>>) {
        let _ = self.runtime.block_on(step);
    }

    /// Takes `peer`'s route, FDB entry and neighbour off the vxlan device `vtep`; what is not
    /// there is not an error. All three are tried; the first failure is returned.
    pub fn remove_vxlan_peer(&self, vtep: u32, peer: &VxlanPeer) -> Result<(), KernelError> {
        let (gateway, mac, public_ip) = (peer.subnet.addr, peer.vtep_mac, peer.public_ip);
        let route = self.delete(
            self.route_deletion(vxlan_route(vtep, peer.subnet)),
            format!(
                "removing route {} via {gateway} on interface {vtep}",
                peer.subnet
            ),
        );
        let fdb = self.delete(
            self.fdb_deletion(vtep, peer),
            format!("removing FDB entry {mac} dst {public_ip} on interface {vtep}"),
        );
        let neighbour = self.delete(
            self.neighbour_deletion(vtep, gateway),
            format!("removing neighbour {gateway} on interface {vtep}"),
        );
        route.and(fdb).and(neighbour)
    }

    /// Runs a deletion; one that finds nothing to delete is done.
    fn delete(
        &self,
        deletion: impl Future<Output = Result<(), rtnetlink::Error>>,
        action: String,
    ) -> Result<(), KernelError> {
        deleted(self.runtime.block_on(deletion)).map_err(netlink(action))
    }

    /// host-gw: the route `<subnet> via <via> dev <dev>`, replacing any route to that subnet.
    /// vxlan's `DirectRouting` uses the same route, via the peer's public address on the
    /// underlay, for a peer on the same L2 network.
    pub fn add_host_gw_route(
        &self,
        subnet: Ipv4Net,
        via: Ipv4Addr,
        dev: u32,
    ) -> Result<(), KernelError> {
        let route = host_gw_route(subnet, via, dev);
        self.runtime
            .block_on(self.handle.route().add(route).replace().execute())
            .map_err(netlink(format!(
                "adding route {subnet} via {via} on interface {dev}"
            )))
    }

    /// host-gw: takes the route `<subnet> via <via> dev <dev>` away; a missing one is not an
    /// error.
    pub fn remove_host_gw_route(
        &self,
        subnet: Ipv4Net,
        via: Ipv4Addr,
        dev: u32,
    ) -> Result<(), KernelError> {
        self.delete(
            self.route_deletion(host_gw_route(subnet, via, dev)),
            format!("removing route {subnet} via {via} on interface {dev}"),
        )
    }

    fn route_deletion(
        &self,
        mut route: RouteMessage,
    ) -> impl Future<Output = Result<(), rtnetlink::Error>> {
        // As `ip route del` asks: any protocol and scope, so a route an operator wrote by hand
        // with the same destination, gateway and device goes too.
        route.header.protocol = RouteProtocol::Unspec;
        route.header.scope = RouteScope::NoWhere;
        self.handle.route().del(route).execute()
    }

    fn neighbour_deletion(
        &self,
        vtep: u32,
        ip: Ipv4Addr,
    ) -> impl Future<Output = Result<(), rtnetlink::Error>> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.ifindex = vtep;
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        self.handle.neighbours().del(message).execute()
    }

    fn fdb_deletion(
        &self,
        vtep: u32,
        peer: &VxlanPeer,
    ) -> impl Future<Output = Result<(), rtnetlink::Error>> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = vtep;
        message.header.flags = NeighbourFlags::Own;
        message.attributes.extend([
            NeighbourAttribute::LinkLayerAddress(peer.vtep_mac.0.to_vec()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(peer.public_ip)),
        ]);
        self.handle.neighbours().del(message).execute()
    }
}

/// A route's table: `RTA_TABLE` when there (tables above 255), else the header's.
fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// `<subnet> via <subnet .0> dev <vtep> onlink`. The protocol is `boot`, as flannel's netlink
/// library wrote it, so `ip route` shows the same lines as on a machine running flannel.
fn vxlan_route(vtep: u32, subnet: Ipv4Net) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(subnet.addr, subnet.prefix)
        .gateway(subnet.addr)
        .output_interface(vtep)
        .onlink()
        .protocol(RouteProtocol::Boot)
        .build()
}

fn host_gw_route(subnet: Ipv4Net, via: Ipv4Addr, dev: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(subnet.addr, subnet.prefix)
        .gateway(via)
        .output_interface(dev)
        .protocol(RouteProtocol::Boot)
        .build()
}

/// The inode of the calling thread's network namespace (`None` where `/proc` is not mounted).
fn thread_netns() -> Option<u64> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

/// The interface named `name`, or `None` (the kernel answers ENODEV).
async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name).execute();
    match links.try_next().await {
        Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
        other => other,
    }
}

async fn ipv4_address_messages(
    handle: &Handle,
    index: u32,
) -> Result<Vec<AddressMessage>, rtnetlink::Error> {
    let mut request = handle.address().get().set_link_index_filter(index);
    request.message_mut().header.family = AddressFamily::Inet;
    request.execute().try_collect().await
}

/// The interface's own address of an IPv4 address message (`IFA_LOCAL`; `IFA_ADDRESS` is the
/// peer's on point-to-point links).
fn if_addr(message: &AddressMessage) -> Option<IfAddr> {
    let pick = |local: bool| {
        message.attributes.iter().find_map(|a| match (a, local) {
            (AddressAttribute::Local(IpAddr::V4(ip)), true)
            | (AddressAttribute::Address(IpAddr::V4(ip)), false) => Some(*ip),
            _ => None,
        })
    };
    let addr = pick(true).or_else(|| pick(false))?;
    Some(IfAddr {
        addr,
        prefix: message.header.prefix_len,
    })
}

fn link_mac(link: &LinkMessage) -> Option<MacAddr> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => Some(MacAddr(bytes.as_slice().try_into().ok()?)),
        _ => None,
    })
}

/// How an existing link differs from the vxlan device `cfg` asks for, in words for the log, or
/// `None` when it can be kept. The MTU is not compared: it is set on the kept device.
fn vxlan_mismatch(link: &LinkMessage, cfg: &VtepConfig, port: u16) -> Option<String> {
    let infos = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    });
    let infos = infos.map(Vec::as_slice).unwrap_or_default();
    if !infos
        .iter()
        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)))
    {
        return Some("is not a vxlan device".into());
    }
    let data: &[InfoVxlan] = infos
        .iter()
        .find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(data)) => Some(data.as_slice()),
            _ => None,
        })
        .unwrap_or_default();
    let mut id = None;
    let mut dev = None;
    let mut local = None;
    let mut dst_port = None;
    let mut learning = None;
    let mut gbp = false;
    for attr in data {
        match attr {
            InfoVxlan::Id(v) => id = Some(*v),
            InfoVxlan::Link(v) => dev = Some(*v),
            InfoVxlan::Local(v) => local = Some(*v),
            InfoVxlan::Port(v) => dst_port = Some(*v),
            InfoVxlan::Learning(v) => learning = Some(*v),
            InfoVxlan::Gbp => gbp = true,
            _ => {}
        }
    }
    let shown = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    if id != Some(cfg.vni) {
        return Some(format!(
            "has VNI {}, not {}",
            shown(id.map(|v| v.to_string())),
            cfg.vni
        ));
    }
    if dev != Some(cfg.dev_index) {
        let was = shown(dev.map(|v| v.to_string()));
        return Some(format!("is on interface {was}, not {}", cfg.dev_index));
    }
    if local != Some(cfg.local) {
        let was = shown(local.map(|v| v.to_string()));
        return Some(format!("has local address {was}, not {}", cfg.local));
    }
    if dst_port != Some(port) {
        let was = shown(dst_port.map(|v| v.to_string()));
        return Some(format!("has dstport {was}, not {port}"));
    }
    if learning != Some(false) {
        return Some("learns addresses (flannel's device has nolearning)".into());
    }
    if gbp {
        return Some("has group-based policy on (flannel's device has not)".into());
    }
    // Made with its address set (see `VtepConfig::mac`); another one is the kernel's random
    // choice replaced by udev, or a device made by hand.
    let mac = link_mac(link);
    if mac != Some(cfg.mac()) {
        return Some(format!(
            "has MAC address {}, not {}",
            shown(mac.map(|m| m.to_string())),
            cfg.mac()
        ));
    }
    None
}

#[cfg(test)]
mod tests;
