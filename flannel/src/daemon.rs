//! `kiln-flanneld`: one machine's part of the overlay, in one loop.
//!
//! 1. Read the options (`FLANNELD_*`, from `options.env`), pick the underlay: the interface and
//!    address peers reach this machine at.
//! 2. Read the network config from etcd, waiting (and saying so) while etcd is away or the
//!    config is missing or wrong.
//! 3. Set up the backend's own device (vxlan: `flannel.<VNI>`), take a subnet lease naming this
//!    machine's address (and the device's MAC), put the subnet's /32 on the device.
//! 4. Write `subnet.env` and docker's options, set the masquerade and forward rules, tell systemd
//!    it is ready.
//! 5. From then on: every lease of another machine becomes that machine's entries here (vxlan:
//!    neighbour, FDB entry and on-link route; host-gw: a route via it), and a lease that goes
//!    takes its entries with it. A watch on the leases wakes the loop at once; a full read every
//!    [`RESYNC`] covers whatever a broken watch missed. The lease is renewed [`RENEW_MARGIN`]
//!    before its end; a lease that vanished (an operator deleted it) is taken again.
//!
//! Nothing is lost while etcd is away: the entries stay as they were, each step is tried again,
//! and the journal says what failed, once, and when it works again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln_contract::flannel_conf::{self, DEFAULT_PREFIX, DOCKER_OPTS_ENV, SUBNET_ENV};
use kiln_etcd::{Client, Compare, Op};
use serde_json::json;

use crate::config::{Backend, NetworkConfig};
use crate::env::SubnetEnv;
use crate::kernel::{IfAddr, Kernel, VtepConfig, VtepOutcome, VxlanPeer};
use crate::lease::{Lease, LeaseAttrs, LeaseError, Registry, LEASE_TTL, RENEW_MARGIN};
use crate::net::{Ipv4Net, MacAddr};

/// How often every lease is read again, whatever the watch says.
pub const RESYNC: Duration = Duration::from_secs(60);
/// How long to wait before trying a failed step again.
pub const RETRY: Duration = Duration::from_secs(5);
/// vxlan's headers (outer Ethernet, IP, UDP, vxlan): the overlay's MTU is the underlay's less this.
pub const VXLAN_OVERHEAD: u32 = 50;
/// flannel's default etcd endpoints.
pub const DEFAULT_ETCD: &str = "http://127.0.0.1:2379";

/// The daemon's settings: flanneld's flags, as `FLANNELD_*` variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub etcd_endpoints: Vec<String>,
    pub prefix: String,
    /// An interface name or one of its addresses.
    pub interface: Option<String>,
    pub public_ip: Option<Ipv4Addr>,
    pub ip_masq: bool,
    pub subnet_file: PathBuf,
    /// Kiln's: the network config written to etcd when it holds none.
    pub network: Option<String>,
    /// docker's options (not a flanneld flag: CoreOS's `mk-docker-opts.sh` wrote them).
    pub docker_opts_file: PathBuf,
    /// Whether the machine is to be on the overlay whatever etcd holds: its cloud-config has a
    /// `flannel:` section (the options file is there). Otherwise the daemon sets the machine
    /// up only where etcd holds a network config (a machine updated from a version without
    /// flannel joins its cluster's overlay), and else ends, having set nothing up.
    pub required: bool,
}

impl Options {
    /// The options from the environment `var` reads (the process's, in the daemon).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Options, String> {
        let get = |name: &str| {
            let key = flannel_conf::key(name).expect("a flannel key of the contract");
            var(&key.env())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .map(|v| (key.env(), v))
        };
        let public_ip = match get("public-ip") {
            Some((env, v)) => Some(v.parse().map_err(|_| {
                format!("{env}={v:?} is not an IPv4 address: set it to this machine's address, or leave it out")
            })?),
            None => None,
        };
        let ip_masq = match get("ip-masq") {
            None => true,
            Some((_, v)) if v == "true" || v == "1" => true,
            Some((_, v)) if v == "false" || v == "0" => false,
            Some((env, v)) => return Err(format!("{env}={v:?}: write true or false")),
        };
        let network = match get("network") {
            None => None,
            Some((env, net)) => {
                let net: Ipv4Net = net.parse().map_err(|e| format!("{env}: {e}"))?;
                let backend = get("backend").map_or("vxlan".to_string(), |(_, b)| b);
                let json = json!({ "Network": net.to_string(), "Backend": { "Type": backend } })
                    .to_string();
                // The same checks as the config read from etcd, now rather than at first use.
                NetworkConfig::parse(&json)
                    .map_err(|e| format!("{env} and FLANNELD_BACKEND: {e}"))?;
                Some(json)
            }
        };
        Ok(Options {
            etcd_endpoints: get("etcd-endpoints")
                .map_or(DEFAULT_ETCD.to_string(), |(_, v)| v)
                .split(',')
                .map(|e| e.trim().trim_end_matches('/').to_string())
                .filter(|e| !e.is_empty())
                .collect(),
            prefix: get("etcd-prefix").map_or(DEFAULT_PREFIX.to_string(), |(_, v)| v),
            interface: get("interface").map(|(_, v)| v),
            public_ip,
            ip_masq,
            subnet_file: get("subnet-file").map_or(SUBNET_ENV.into(), |(_, v)| v.into()),
            network,
            docker_opts_file: DOCKER_OPTS_ENV.into(),
            required: true,
        })
    }
}

/// The interface and address peers reach this machine at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Underlay {
    pub index: u32,
    pub name: String,
    pub addr: Ipv4Addr,
    pub mtu: u32,
}

/// Picks the underlay as flanneld did: `interface` (a name, or an address on one), else the
/// interface of the default route; its first IPv4 address, unless `public_ip` names another
/// address of this machine.
pub fn underlay(kernel: &Kernel, opts: &Options) -> Result<Underlay, String> {
    let links = kernel.links().map_err(|e| e.to_string())?;
    let addresses = |index: u32| -> Result<Vec<IfAddr>, String> {
        kernel.ipv4_addresses(index).map_err(|e| e.to_string())
    };
    let index = match &opts.interface {
        Some(wanted) => {
            let by_name = links.iter().find(|(_, name)| name == wanted);
            let by_addr = match wanted.parse::<Ipv4Addr>() {
                Ok(ip) => {
                    let mut found = None;
                    for (index, name) in &links {
                        if addresses(*index)?.iter().any(|a| a.addr == ip) {
                            found = Some((*index, name.clone()));
                        }
                    }
                    found
                }
                Err(_) => None,
            };
            match by_name.cloned().or(by_addr) {
                Some((index, _)) => index,
                None => {
                    return Err(format!(
                        "interface {wanted:?} (FLANNELD_INTERFACE) is neither an interface nor an address of this machine; it has {}",
                        links.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join(", ")
                    ))
                }
            }
        }
        None => match &opts.public_ip {
            // The interface that holds the public address.
            Some(ip) => {
                let mut found = None;
                for (index, _) in &links {
                    if addresses(*index)?.iter().any(|a| a.addr == *ip) {
                        found = Some(*index);
                    }
                }
                found.ok_or_else(|| {
                    format!("public-ip {ip} (FLANNELD_PUBLIC_IP) is not an address of this machine: set it to one, or leave it out to use the default route's")
                })?
            }
            None => kernel
                .default_route_link()
                .map_err(|e| e.to_string())?
                .ok_or("this machine has no IPv4 default route: name the interface flannel uses with `flannel: interface:`")?,
        },
    };
    let name = links
        .iter()
        .find(|(i, _)| *i == index)
        .map(|(_, n)| n.clone())
        .unwrap_or_else(|| index.to_string());
    let own = addresses(index)?;
    let addr = match opts.public_ip {
        Some(ip) if own.iter().any(|a| a.addr == ip) => ip,
        Some(ip) => {
            return Err(format!(
                "public-ip {ip} (FLANNELD_PUBLIC_IP) is not an address of {name}, the interface flannel uses: set it to one of {}",
                list(&own)
            ))
        }
        None => own
            .first()
            .map(|a| a.addr)
            .ok_or_else(|| format!("{name}, the interface flannel uses, has no IPv4 address yet"))?,
    };
    let mtu = kernel.link_mtu(index).map_err(|e| e.to_string())?;
    Ok(Underlay {
        index,
        name,
        addr,
        mtu,
    })
}

fn list(addresses: &[IfAddr]) -> String {
    if addresses.is_empty() {
        return "(none)".into();
    }
    addresses
        .iter()
        .map(|a| a.addr.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What this machine sets for another machine's lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Vxlan(VxlanPeer),
    /// A route to the subnet via the machine's address.
    HostGw {
        subnet: Ipv4Net,
        via: Ipv4Addr,
    },
}

/// The entries this machine should hold for `leases` (its own subnet `mine` left out), by
/// subnet; leases of another backend, or whose backend data does not read, are left out with
/// the reason.
pub fn wanted_peers(
    leases: &[Lease],
    mine: Ipv4Net,
    backend: &Backend,
) -> (BTreeMap<Ipv4Net, Peer>, Vec<String>) {
    let mut peers = BTreeMap::new();
    let mut skipped = Vec::new();
    for lease in leases.iter().filter(|l| l.subnet != mine) {
        let a = &lease.attrs;
        if a.backend_type != backend.type_name() {
            skipped.push(format!(
                "{} ({}): its backend is {:?}, this network's is {:?}",
                lease.subnet,
                a.public_ip,
                a.backend_type,
                backend.type_name()
            ));
            continue;
        }
        let peer = match backend {
            Backend::HostGw => Peer::HostGw {
                subnet: lease.subnet,
                via: a.public_ip,
            },
            Backend::Vxlan(_) => {
                let mac = a
                    .backend_data
                    .get("VtepMAC")
                    .and_then(|m| m.as_str())
                    .and_then(|m| m.parse::<MacAddr>().ok());
                match mac {
                    Some(vtep_mac) => Peer::Vxlan(VxlanPeer {
                        subnet: lease.subnet,
                        public_ip: a.public_ip,
                        vtep_mac,
                    }),
                    None => {
                        skipped.push(format!(
                            "{} ({}): its BackendData has no VtepMAC like c6:d2:32:6f:8f:44",
                            lease.subnet, a.public_ip
                        ));
                        continue;
                    }
                }
            }
        };
        peers.insert(lease.subnet, peer);
    }
    (peers, skipped)
}

/// What to take away and what to set to go from `held` to `wanted`: a peer whose entries
/// changed (a new address or MAC) is taken away and set again.
pub fn changes(
    held: &BTreeMap<Ipv4Net, Peer>,
    wanted: &BTreeMap<Ipv4Net, Peer>,
) -> (Vec<Peer>, Vec<Peer>) {
    let remove = held
        .iter()
        .filter(|(s, p)| wanted.get(s) != Some(p))
        .map(|(_, p)| *p)
        .collect();
    let add = wanted
        .iter()
        .filter(|(s, p)| held.get(s) != Some(p))
        .map(|(_, p)| *p)
        .collect();
    (remove, add)
}

/// The iptables rules flannel sets for `network` (each as `iptables` arguments after the
/// table): the machine's own subnet's traffic inside the network is forwarded as it is, and
/// only what leaves the network is masqueraded (to the underlay's address).
pub fn iptables_rules(network: Ipv4Net, subnet: Ipv4Net, ip_masq: bool) -> Vec<Vec<String>> {
    let (n, s) = (network, subnet);
    let mut rules = vec![
        format!("filter FORWARD -s {n} -j ACCEPT"),
        format!("filter FORWARD -d {n} -j ACCEPT"),
    ];
    if ip_masq {
        rules.extend([
            // Inside the network: as it is.
            format!("nat POSTROUTING -s {n} -d {n} -j RETURN"),
            // Leaving it (multicast aside): masqueraded.
            format!("nat POSTROUTING -s {n} ! -d 224.0.0.0/4 -j MASQUERADE"),
            // Into this machine's subnet from outside the network: as it is.
            format!("nat POSTROUTING ! -s {n} -d {s} -j RETURN"),
            // From outside the network into another machine's subnet: masqueraded.
            format!("nat POSTROUTING ! -s {n} -d {n} -j MASQUERADE"),
        ]);
    }
    rules
        .iter()
        .map(|r| r.split(' ').map(String::from).collect())
        .collect()
}

/// Sets `rules`: one `iptables-save` shows what is there, one `iptables-restore --noflush`
/// appends what is missing, so a restart adds nothing twice. flannel's own iptables library
/// runs `iptables -C` for each rule and `-A` for each missing one: twelve processes at every
/// boot, each 0.15 to 0.35 s on a loaded cluster member under TCG, on the boot's path to docker.
fn set_iptables(rules: &[Vec<String>]) -> Result<(), String> {
    let saved = iptables_tool("iptables-save", &[], None)?;
    let missing = missing_rules(&saved, rules);
    if missing.is_empty() {
        return Ok(());
    }
    iptables_tool(
        "iptables-restore",
        &["--noflush", "-w", "5"],
        Some(&restore_input(&missing)),
    )
    .map(|_| ())
}

/// Runs an iptables tool (`input` on its stdin) and returns its output; an error names the
/// command and what it said.
fn iptables_tool(tool: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let command = [&[tool], args].concat().join(" ");
    let fail = |e: std::io::Error| format!("running {command}: {e}");
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(fail)?;
    let mut stdin = child.stdin.take().expect("piped");
    // A tool that fails before reading its input closes the pipe: its own words say more.
    let wrote = input.map_or(Ok(()), |text| stdin.write_all(text.as_bytes()));
    drop(stdin);
    let out = child.wait_with_output().map_err(fail)?;
    if out.status.success() {
        wrote.map_err(fail)?;
    } else {
        return Err(format!(
            "{command} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            input
                .map(|i| format!("; its input:\n{i}"))
                .unwrap_or_default()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The rules (`table chain spec…`) that `saved`, what `iptables-save` printed (`*table`, then
/// `-A chain spec` lines), does not hold.
fn missing_rules<'r>(saved: &str, rules: &'r [Vec<String>]) -> Vec<&'r Vec<String>> {
    let mut table = "";
    let mut present = BTreeSet::new();
    for line in saved.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name.trim();
        } else if line.starts_with("-A ") {
            present.insert((table, line.trim_end()));
        }
    }
    rules
        .iter()
        .filter(|r| {
            !present.contains(&(r[0].as_str(), format!("-A {}", r[1..].join(" ")).as_str()))
        })
        .collect()
}

/// `iptables-restore` input appending `rules`, each table's in one transaction.
fn restore_input(rules: &[&Vec<String>]) -> String {
    let mut tables: Vec<&str> = Vec::new();
    for r in rules {
        if !tables.contains(&r[0].as_str()) {
            tables.push(&r[0]);
        }
    }
    let mut text = String::new();
    for table in tables {
        text.push_str(&format!("*{table}\n"));
        for r in rules.iter().filter(|r| r[0] == table) {
            text.push_str(&format!("-A {}\n", r[1..].join(" ")));
        }
        text.push_str("COMMIT\n");
    }
    text
}

/// Writes `text` to `path` whole (a temporary file renamed over it), making its directory.
fn write_file(path: &Path, text: &str) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("writing {}: {e}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Tells systemd how the unit is (`Type=notify`: `READY=1`, or `STATUS=…` for the line
/// `systemctl status` shows), when it runs under one.
fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = socket.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&socket))
    };
    if let Err(e) = sent {
        eprintln!("flannel: telling systemd {state}: {e}");
    }
}

/// Says a failing step once, and when it works again.
struct Trouble {
    last: Option<String>,
}

impl Trouble {
    fn new() -> Trouble {
        Trouble { last: None }
    }

    fn failed(&mut self, what: &str, why: &str) {
        let line = format!("{what}: {why}");
        if self.last.as_deref() != Some(&line) {
            let said = format!("{line}; trying again every {} s", RETRY.as_secs());
            eprintln!("flannel: {said}");
            notify(&format!("STATUS={said}"));
            self.last = Some(line);
        }
    }

    fn worked(&mut self, what: &str) {
        if self.last.take().is_some() {
            eprintln!("flannel: {what} works again");
            notify(&format!("STATUS={what} works again"));
        }
    }
}

/// One machine's overlay once its lease is held.
struct Machine<'a> {
    kernel: &'a Kernel,
    registry: Registry,
    opts: &'a Options,
    underlay: Underlay,
    cfg: NetworkConfig,
    attrs: LeaseAttrs,
    vtep: Option<u32>,
    lease: Lease,
    held: BTreeMap<Ipv4Net, Peer>,
    /// The leases passed over at the last read, and why.
    passed_over: BTreeSet<String>,
}

impl Machine<'_> {
    /// Sets (`add`) or takes away a peer's entries.
    fn change(&self, peer: &Peer, add: bool) -> Result<(), String> {
        let k = self.kernel;
        let dev = self.underlay.index;
        match (peer, self.vtep, add) {
            (Peer::Vxlan(p), Some(vtep), true) => k.add_vxlan_peer(vtep, p),
            (Peer::Vxlan(p), Some(vtep), false) => k.remove_vxlan_peer(vtep, p),
            (Peer::HostGw { subnet, via }, _, true) => k.add_host_gw_route(*subnet, *via, dev),
            (Peer::HostGw { subnet, via }, _, false) => k.remove_host_gw_route(*subnet, *via, dev),
            (Peer::Vxlan(_), None, _) => return Ok(()),
        }
        .map_err(|e| e.to_string())
    }

    /// Makes the entries those of `leases`; what failed stays out of `held`, to be tried again.
    fn apply(&mut self, leases: &[Lease]) {
        let (wanted, skipped) = wanted_peers(leases, self.lease.subnet, &self.cfg.backend);
        let (remove, add) = changes(&self.held, &wanted);
        for peer in remove {
            let subnet = subnet_of(&peer);
            match self.change(&peer, false) {
                Ok(()) => {
                    eprintln!("flannel: {subnet} is gone: its entries are removed");
                    self.held.remove(&subnet);
                }
                Err(e) => eprintln!("flannel: {e}"),
            }
        }
        for peer in add {
            let subnet = subnet_of(&peer);
            match self.change(&peer, true) {
                Ok(()) => {
                    eprintln!("flannel: {subnet} is at {}", via_of(&peer));
                    self.held.insert(subnet, peer);
                }
                Err(e) => eprintln!("flannel: {e}"),
            }
        }
        // Said once per lease, not at every read.
        let skipped: BTreeSet<String> = skipped.into_iter().collect();
        for why in skipped.difference(&self.passed_over) {
            eprintln!("flannel: passed over the lease of {why}");
        }
        self.passed_over = skipped;
    }

    /// Renews the lease, or takes one again when it is gone; `true` when the subnet changed.
    fn keep_lease(&mut self) -> Result<bool, LeaseError> {
        if self.registry.renew(&self.lease)? {
            return Ok(false);
        }
        eprintln!(
            "flannel: the lease of {} is gone (expired or deleted): taking one again",
            self.lease.subnet
        );
        let lease = self
            .registry
            .acquire(&self.cfg, &self.attrs, Some(self.lease.subnet))?;
        let changed = lease.subnet != self.lease.subnet;
        self.lease = lease;
        Ok(changed)
    }
}

fn subnet_of(peer: &Peer) -> Ipv4Net {
    match peer {
        Peer::Vxlan(p) => p.subnet,
        Peer::HostGw { subnet, .. } => *subnet,
    }
}

fn via_of(peer: &Peer) -> Ipv4Addr {
    match peer {
        Peer::Vxlan(p) => p.public_ip,
        Peer::HostGw { via, .. } => *via,
    }
}

/// Tries `step` every [`RETRY`] until it works or `stop` is set; `None` when stopped.
fn until_it_works<T>(
    stop: &AtomicBool,
    what: &str,
    mut step: impl FnMut() -> Result<T, String>,
) -> Option<T> {
    let mut trouble = Trouble::new();
    loop {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        match step() {
            Ok(v) => {
                trouble.worked(what);
                return Some(v);
            }
            Err(e) => trouble.failed(what, &e),
        }
        sleep_unless(stop, RETRY);
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100).min(end - Instant::now()));
    }
}

/// Sets up this machine's device, lease, files and rules (see the module), then keeps the
/// peers' entries and the lease until `stop` is set. An error only for what waiting cannot
/// mend (the netlink socket cannot be opened).
pub fn run(opts: &Options, stop: &AtomicBool) -> Result<(), String> {
    let kernel = Kernel::new().map_err(|e| e.to_string())?;
    let etcd = Client::new(&opts.etcd_endpoints, Duration::from_secs(5));
    let registry = Registry::new(etcd.clone(), &opts.prefix);
    eprintln!(
        "flannel: etcd {}, prefix {}",
        opts.etcd_endpoints.join(","),
        registry.prefix
    );
    if !opts.required {
        let Some(found) = until_it_works(stop, "asking etcd for a network config", || {
            match registry.config() {
                Err(LeaseError::NoConfig { .. }) => Ok(false),
                Err(LeaseError::Etcd(e)) => Err(e.to_string()),
                // A config, usable or not: the steps below use it or say why not.
                _ => Ok(true),
            }
        }) else {
            return Ok(());
        };
        if !found {
            let line = format!(
                "not used on this machine: its cloud-config has no flannel: section and etcd no network config at {}",
                registry.config_key()
            );
            eprintln!("flannel: {line}");
            notify(&format!("READY=1\nSTATUS={line}"));
            return Ok(());
        }
    }
    let Some(underlay) = until_it_works(stop, "finding this machine's address", || {
        underlay(&kernel, opts)
    }) else {
        return Ok(());
    };
    eprintln!(
        "flannel: peers reach this machine at {} on {} (MTU {})",
        underlay.addr, underlay.name, underlay.mtu
    );
    let Some(cfg) = until_it_works(stop, "reading the network config", || {
        match (registry.config(), &opts.network) {
            (Err(LeaseError::NoConfig { key }), Some(json)) => {
                // Only where there is none: a config an operator put there wins.
                let put = registry
                    .etcd
                    .txn(
                        &[Compare::CreateRevision(key.clone(), 0)],
                        &[Op::put(key.clone(), json.as_bytes().to_vec())],
                        &[],
                    )
                    .map_err(|e| e.to_string())?;
                if put.succeeded {
                    eprintln!(
                        "flannel: wrote the network config {json} to {key} (FLANNELD_NETWORK)"
                    );
                }
                registry.config().map_err(|e| e.to_string())
            }
            (read, _) => read.map_err(|e| e.to_string()),
        }
    }) else {
        return Ok(());
    };
    for note in &cfg.notes {
        eprintln!("flannel: {note}");
    }
    let (vtep, mtu, backend_data) = match &cfg.backend {
        Backend::Vxlan(v) => {
            let want = VtepConfig {
                vni: v.vni,
                port: v.port,
                dev_index: underlay.index,
                local: underlay.addr,
                mtu: underlay.mtu.saturating_sub(VXLAN_OVERHEAD),
            };
            let Some(vtep) = until_it_works(stop, "setting up the vxlan device", || {
                kernel.ensure_vxlan(&want).map_err(|e| e.to_string())
            }) else {
                return Ok(());
            };
            let how = match &vtep.outcome {
                VtepOutcome::Created => "made".to_string(),
                VtepOutcome::Reused => "kept as it was".to_string(),
                VtepOutcome::Recreated(why) => format!("made again ({why})"),
            };
            eprintln!("flannel: {} {how}, MAC {}", vtep.name, vtep.mac);
            (
                Some(vtep.index),
                want.mtu,
                json!({ "VNI": v.vni, "VtepMAC": vtep.mac.to_string() }),
            )
        }
        Backend::HostGw => (None, underlay.mtu, serde_json::Value::Null),
    };
    let attrs = LeaseAttrs {
        public_ip: underlay.addr,
        public_ipv6: None,
        backend_type: cfg.backend.type_name().to_string(),
        backend_data,
    };
    let previous = std::fs::read_to_string(&opts.subnet_file)
        .ok()
        .and_then(|t| SubnetEnv::parse(&t))
        .map(|e| e.subnet);
    let Some(lease) = until_it_works(stop, "taking a subnet lease", || {
        registry
            .acquire(&cfg, &attrs, previous)
            .map_err(|e| e.to_string())
    }) else {
        return Ok(());
    };
    let mut m = Machine {
        kernel: &kernel,
        registry,
        opts,
        underlay,
        cfg,
        attrs,
        vtep,
        lease,
        held: BTreeMap::new(),
        passed_over: BTreeSet::new(),
    };
    let Some(()) = until_it_works(stop, "setting up this machine's subnet", || {
        publish(&m, mtu)
    }) else {
        return Ok(());
    };
    notify("READY=1\nSTATUS=serving this machine's subnet");

    let (wake_tx, wake) = mpsc::channel();
    etcd.spawn_waker(vec![m.registry.subnets_prefix()], wake_tx, RETRY);
    let renew_every = LEASE_TTL - RENEW_MARGIN;
    let mut renewed = Instant::now();
    let mut renew_now = false;
    let mut etcd_trouble = Trouble::new();
    let mut lease_trouble = Trouble::new();
    while !stop.load(Ordering::SeqCst) {
        match m.registry.leases() {
            Ok((leases, _)) => {
                etcd_trouble.worked("reading the leases");
                // Our own lease vanished: take it again at once, not at the renewal.
                renew_now |= !leases.iter().any(|l| l.subnet == m.lease.subnet);
                m.apply(&leases);
            }
            Err(e) => etcd_trouble.failed("reading the leases", &e.to_string()),
        }
        if renew_now || renewed.elapsed() >= renew_every {
            match m.keep_lease() {
                Ok(changed) => {
                    lease_trouble.worked("renewing the lease");
                    renewed = Instant::now();
                    renew_now = false;
                    if changed {
                        if let Err(e) = publish(&m, mtu) {
                            eprintln!("flannel: {e}");
                        }
                    }
                }
                Err(e) => lease_trouble.failed("renewing the lease", &e.to_string()),
            }
        }
        // Woken by a change, or at the next full read; a retry sooner while renewing fails.
        let wait = if lease_trouble.last.is_some() {
            RETRY
        } else {
            RESYNC
        };
        let end = Instant::now() + wait;
        while !stop.load(Ordering::SeqCst) && Instant::now() < end {
            match wake.recv_timeout(Duration::from_millis(200)) {
                Ok(()) => {
                    // Let a burst of changes settle into one read.
                    while wake.recv_timeout(Duration::from_millis(50)).is_ok() {}
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    }
    Ok(())
}

/// The subnet's address on the device, `subnet.env`, docker's options, and the rules.
fn publish(m: &Machine, mtu: u32) -> Result<(), String> {
    let subnet = m.lease.subnet;
    if let Some(vtep) = m.vtep {
        m.kernel
            .set_vtep_address(vtep, subnet)
            .map_err(|e| e.to_string())?;
    }
    let env = SubnetEnv {
        network: m.cfg.network,
        subnet,
        mtu,
        ip_masq: m.opts.ip_masq,
    };
    set_iptables(&iptables_rules(m.cfg.network, subnet, m.opts.ip_masq))?;
    // Last: docker is started from these.
    write_file(&m.opts.docker_opts_file, &env.docker_opts())?;
    write_file(&m.opts.subnet_file, &env.render())?;
    eprintln!(
        "flannel: this machine has {subnet} of {} (MTU {mtu}); wrote {}",
        m.cfg.network,
        m.opts.subnet_file.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests;
