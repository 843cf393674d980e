//! Reading the `kiln:` section (also accepted as `coreos:`): etcd, units and network here;
//! fleet and flannel in their own files;
//! `update:` and `locksmith:` in `agent.rs`.

use crate::addresses::AddressSettings;
use crate::model::{DropIn, Etcd, KilnSection, NetworkInterface, Unit, UnitCommand};
use crate::read::{boolean, list, opt_string, string, string_list, ConfigError, Ctx, Fields};
use crate::tree::Node;
use std::net::IpAddr;

/// etcd 3.4 settings Kiln passes on as `ETCD_*` variables; `true` marks booleans, which are
/// normalised to `true`/`false` because etcd does not read `yes`.
const ETCD_KEYS: &[(&str, bool)] = &[
    ("name", false),
    ("data-dir", false),
    ("wal-dir", false),
    ("snapshot-count", false),
    ("heartbeat-interval", false),
    ("election-timeout", false),
    ("pre-vote", true),
    ("listen-peer-urls", false),
    ("listen-client-urls", false),
    ("max-snapshots", false),
    ("max-wals", false),
    ("cors", false),
    ("quota-backend-bytes", false),
    ("initial-advertise-peer-urls", false),
    ("initial-cluster", false),
    ("initial-cluster-state", false),
    ("initial-cluster-token", false),
    ("advertise-client-urls", false),
    ("discovery", false),
    ("discovery-srv", false),
    ("discovery-fallback", false),
    ("discovery-proxy", false),
    ("strict-reconfig-check", true),
    ("enable-v2", true),
    ("cert-file", false),
    ("key-file", false),
    ("client-cert-auth", true),
    ("trusted-ca-file", false),
    ("auto-tls", true),
    ("peer-cert-file", false),
    ("peer-key-file", false),
    ("peer-client-cert-auth", true),
    ("peer-trusted-ca-file", false),
    ("peer-auto-tls", true),
    ("log-level", false),
    ("logger", false),
    ("log-outputs", false),
    ("debug", true),
    ("enable-pprof", true),
    ("metrics", false),
    ("listen-metrics-urls", false),
    ("auto-compaction-retention", false),
    ("auto-compaction-mode", false),
];

/// etcd v1 settings (CoreOS's `etcd:`) and the etcd 3 setting that replaces each.
const ETCD_V1_KEYS: &[(&str, &str)] = &[
    ("addr", "advertise-client-urls: http://ADDRESS:2379"),
    (
        "peer_addr",
        "initial-advertise-peer-urls: http://ADDRESS:2380",
    ),
    ("bind_addr", "listen-client-urls: http://ADDRESS:2379"),
    ("peer_bind_addr", "listen-peer-urls: http://ADDRESS:2380"),
];

/// Reads `kiln:` or `coreos:` from the top-level mapping; a wrong type anywhere in it leaves
/// out what it is in (the section, one list, one entry), with a warning.
pub(crate) fn kiln_section(
    top: &mut Fields<'_>,
    ctx: &mut Ctx,
) -> Result<KilnSection, ConfigError> {
    let read = section(top, ctx);
    ctx.recover(read)
}

fn section(top: &mut Fields<'_>, ctx: &mut Ctx) -> Result<KilnSection, ConfigError> {
    let kiln = top.take("kiln");
    let coreos = top.take("coreos");
    let (node, name) = match (kiln, coreos) {
        (Some(k), Some(_)) => {
            if let Some(pos) = top.key_pos("coreos") {
                ctx.warn(
                    pos,
                    "coreos",
                    "both `kiln:` and `coreos:` are given; `coreos:` is ignored",
                );
            }
            (k, "kiln")
        }
        (Some(k), None) => (k, "kiln"),
        (None, Some(c)) => (c, "coreos"),
        (None, None) => return Ok(KilnSection::default()),
    };
    let mut f = Fields::new(node, name, ctx)?;
    let read = etcd_section(&mut f, ctx);
    let etcd = ctx.recover(read)?;
    let update = f.take_some("update").map(|n| (n, f.path_of("update")));
    let locksmith = f
        .take_some("locksmith")
        .map(|n| (n, f.path_of("locksmith")));
    let read = crate::agent::agent_settings(update, locksmith, etcd.is_some(), ctx);
    let update_agent = ctx.recover(read)?;
    let fleet = daemon_section(&mut f, "fleet", ctx, crate::fleet::fleet_settings)?;
    let flannel = daemon_section(&mut f, "flannel", ctx, crate::flannel::flannel_settings)?;
    let mut units = Vec::new();
    let units_path = f.path_of("units");
    for (i, n) in ctx
        .recover(list(f.take("units"), &units_path))?
        .iter()
        .enumerate()
    {
        let read = unit(n, &format!("{units_path}[{i}]"), ctx).map(Some);
        units.extend(ctx.recover(read)?);
    }
    let mut network = Vec::new();
    let net_path = f.path_of("network");
    for (i, n) in ctx
        .recover(list(f.take("network"), &net_path))?
        .iter()
        .enumerate()
    {
        let read = interface(n, &format!("{net_path}[{i}]"), ctx).map(Some);
        network.extend(ctx.recover(read)?);
    }
    let addresses = match f.take_some("addresses") {
        Some(node) => {
            let read = address_settings(node, &f.path_of("addresses"), ctx);
            ctx.recover(read)?
        }
        None => AddressSettings::default(),
    };
    not_in_kiln(&mut f, ctx);
    f.finish(ctx);
    Ok(KilnSection {
        etcd,
        update_agent,
        fleet,
        flannel,
        units,
        network,
        addresses,
    })
}

/// `addresses:`: the interfaces whose addresses `$private_ipv4` and `$public_ipv4` stand for.
fn address_settings(
    node: &Node,
    path: &str,
    ctx: &mut Ctx,
) -> Result<AddressSettings, ConfigError> {
    let mut f = Fields::new(node, path, ctx)?;
    let mut one = |key: &str| -> Result<Option<String>, ConfigError> {
        let kpath = f.path_of(key);
        let Some(n) = f.take_some(key) else {
            return Ok(None);
        };
        let name = string(n, &kpath)?;
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\t', '\n']) {
            return Err(ConfigError::invalid(
                n,
                &kpath,
                format!("{name:?} is not an interface name (like ens3 or eth0)"),
            ));
        }
        Ok(Some(name))
    };
    let settings = AddressSettings {
        private_interface: one("private-interface")?,
        public_interface: one("public-interface")?,
    };
    f.finish(ctx);
    Ok(settings)
}

/// A daemon's section (`fleet:`, `flannel:`) read by `read` where the document has it; a
/// wrong one is recovered from as every other section is.
fn daemon_section<T>(
    f: &mut Fields<'_>,
    name: &str,
    ctx: &mut Ctx,
    read: impl FnOnce(&Node, &str, &mut Ctx) -> Result<T, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    let path = f.path_of(name);
    match f.take(name) {
        Some(node) => {
            let got = read(node, &path, ctx).map(Some);
            ctx.recover(got)
        }
        None => Ok(None),
    }
}

/// Sections of coreos-cloudinit's `coreos:` that Kiln has no part for: each is named with what
/// Kiln does instead.
fn not_in_kiln(f: &mut Fields<'_>, ctx: &mut Ctx) {
    if let (Some(_), Some(pos)) = (f.take("oem"), f.key_pos("oem")) {
        ctx.warn(pos, &f.path_of("oem"), "`oem` told CoreOS's tools which cloud or vendor image this is; Kiln has one image for every platform and reads no OEM description. Put platform settings in this document (or in the OEM partition's cloud-config.yml). Ignored");
    }
}

/// `etcd2:` wins over `etcd:`; both configure Debian's etcd 3.4.
fn etcd_section(f: &mut Fields<'_>, ctx: &mut Ctx) -> Result<Option<Etcd>, ConfigError> {
    let v1 = f.take("etcd");
    let v2 = f.take("etcd2");
    let (node, path) = match (v1, v2) {
        (Some(_), Some(n)) => {
            if let Some(pos) = f.key_pos("etcd") {
                ctx.warn(
                    pos,
                    &f.path_of("etcd"),
                    "both `etcd:` and `etcd2:` are given; `etcd:` is ignored",
                );
            }
            (n, f.path_of("etcd2"))
        }
        (None, Some(n)) => (n, f.path_of("etcd2")),
        (Some(n), None) => (n, f.path_of("etcd")),
        (None, None) => return Ok(None),
    };
    etcd(node, &path, ctx).map(Some)
}

fn etcd(node: &Node, path: &str, ctx: &mut Ctx) -> Result<Etcd, ConfigError> {
    let mut f = Fields::new(node, path, ctx)?;
    let mut etcd = Etcd::default();
    for (old, new) in ETCD_V1_KEYS {
        if let (Some(_), Some(pos)) = (f.take(old), f.key_pos(old)) {
            ctx.warn(pos, &f.path_of(old), format!("an etcd v1 setting, which etcd 3 does not read; Kiln runs etcd 3, write `{new}` instead. Ignored"));
        }
    }
    if let Some(n) = f.take_some("proxy") {
        etcd.proxy = proxy(n, &f.path_of("proxy"), ctx)?;
    }
    for (key, is_bool) in ETCD_KEYS {
        let Some(n) = f.take_some(key) else { continue };
        let kpath = f.path_of(key);
        let value = if *is_bool {
            boolean(Some(n), &kpath)?.to_string()
        } else {
            // etcd reads URL lists comma-separated; a YAML list is accepted for them too.
            string_list(Some(n), &kpath)?.join(",")
        };
        if value.contains("$private_ipv6") || value.contains("$public_ipv6") {
            ctx.warn(n.place(), &kpath, "Kiln replaces $private_ipv4 and $public_ipv4 with the machine's addresses, but not the IPv6 ones; they are passed on as written: write the address itself");
        }
        if *key == "discovery" && !url_ok(&value) {
            ctx.warn(n.place(), &kpath, format!("{value:?} is not a URL; etcd's discovery needs one like http://discovery.example/TOKEN"));
        }
        if value.contains('\n') {
            return Err(ConfigError::invalid(n, &kpath, "must be one line"));
        }
        if *key == "initial-cluster-state" && value != "new" && value != "existing" {
            return Err(ConfigError::invalid(
                n,
                &kpath,
                format!("{value:?} is neither `new` nor `existing`"),
            ));
        }
        if *key == "discovery-fallback" && value == "proxy" {
            ctx.warn(n.place(), &kpath, "etcd's fallback proxy passes neither gRPC nor watches, which fleet and flannel need; a machine the cluster is full for should say so and stop (`exit`, Kiln's default). Give workers `proxy: on` instead");
        }
        etcd.settings.insert(key.to_string(), value);
    }
    let bootstraps: Vec<&str> = ["initial-cluster", "discovery", "discovery-srv"]
        .into_iter()
        .filter(|k| etcd.settings.contains_key(*k))
        .collect();
    if !etcd.proxy && bootstraps.len() > 1 {
        if let Some(pos) = f.key_pos(bootstraps[1]) {
            ctx.warn(pos, &f.path_of(bootstraps[1]), format!("etcd refuses to start a member given more than one of {}: give one (a discovery URL bootstraps a new cluster; `initial-cluster` names its members)", bootstraps.join(", ")));
        }
    }
    if etcd.proxy
        && !etcd.settings.contains_key("discovery")
        && !etcd.settings.contains_key("initial-cluster")
    {
        if let Some(pos) = f.key_pos("proxy") {
            ctx.warn(pos, &f.path_of("proxy"), "an etcd proxy needs the cluster's members: give `discovery` or `initial-cluster` too; until then the proxy says so and does not start");
        }
    }
    f.finish(ctx);
    Ok(etcd)
}

/// `proxy:` as CoreOS's etcd2 read it: `on` runs no member but a proxy to the cluster's
/// members (Kiln's; `readonly` is read as `on`, saying so), `off` a member; anything else is
/// read as `off`, saying so.
fn proxy(node: &Node, path: &str, ctx: &mut Ctx) -> Result<bool, ConfigError> {
    let text = string(node, path)?;
    match text.to_ascii_lowercase().as_str() {
        "readonly" => {
            ctx.warn(
                node.place(),
                path,
                "Kiln's etcd proxy passes writes too; `readonly` is read as `on`",
            );
            Ok(true)
        }
        // As coreos-cloudinit, which passed any value on: the document is applied, and the
        // machine runs a member, as without the key.
        _ => Ok(boolean(Some(node), path).unwrap_or_else(|_| {
            ctx.warn(
                node.place(),
                path,
                format!("{text:?} is none of `on`, `off`, `readonly`; read as `off`: this machine runs an etcd member"),
            );
            false
        })),
    }
}

const UNIT_SUFFIXES: &[&str] = &[
    ".service",
    ".socket",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".target",
    ".path",
    ".timer",
    ".slice",
    ".scope",
    ".network",
    ".netdev",
    ".link",
];

fn unit_name_ok(name: &str) -> bool {
    name.len() <= 255
        && UNIT_SUFFIXES
            .iter()
            .any(|s| name.len() > s.len() && name.ends_with(s))
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.@-\\".contains(c))
}

fn unit(node: &Node, path: &str, ctx: &mut Ctx) -> Result<Unit, ConfigError> {
    let mut f = Fields::new(node, path, ctx)?;
    let name = match f.take_some("name") {
        Some(n) => {
            let name = string(n, &f.path_of("name"))?;
            if !unit_name_ok(&name) {
                let hint = if UnitCommand::from_name(&name).is_some() {
                    format!(" (`{name}` is a command: write `command: {name}` in the unit it is for)")
                } else {
                    String::new()
                };
                return Err(ConfigError::invalid(n, &f.path_of("name"), format!("{name:?} is not a unit name like foo.service (letters, digits, `:_.@-`, and a type suffix){hint}; write the unit's file name, e.g. `name: {name}.service`")));
            }
            name
        }
        None => return Err(ConfigError::invalid(node, path, "a unit needs a `name` (Kiln does not skip a nameless unit as coreos-cloudinit did): add `name:` with the unit's file name, e.g. `name: etcd.service`, or remove the entry")),
    };
    let content = opt_string(f.take("content"), &f.path_of("content"))?;
    let mut drop_ins = Vec::new();
    let dpath = f.path_of("drop_ins");
    for (i, n) in list(f.take("drop_ins"), &dpath)?.iter().enumerate() {
        drop_ins.push(drop_in(n, &format!("{dpath}[{i}]"), ctx)?);
    }
    let command = match f.take_some("command") {
        Some(n) => {
            let c = string(n, &f.path_of("command"))?;
            Some(UnitCommand::from_name(&c).ok_or_else(|| {
                ConfigError::invalid(
                    n,
                    &f.path_of("command"),
                    format!(
                        "unknown command {c:?}; use start, stop, restart, reload or try-restart"
                    ),
                )
            })?)
        }
        None => None,
    };
    let unit = Unit {
        content,
        drop_ins,
        enable: boolean(f.take("enable"), &f.path_of("enable"))?,
        mask: boolean(f.take("mask"), &f.path_of("mask"))?,
        runtime: boolean(f.take("runtime"), &f.path_of("runtime"))?,
        command,
        name,
    };
    if unit.mask && unit.content.is_some() {
        ctx.warn(
            node.pos,
            path,
            "both `mask` and `content` are given; the unit is masked and its content not written",
        );
    }
    if unit.is_networkd() && (unit.enable || unit.mask || unit.command.is_some()) {
        ctx.warn(
            node.pos,
            path,
            "a networkd file cannot be enabled, masked or started; only its content is written",
        );
    }
    f.finish(ctx);
    Ok(unit)
}

fn drop_in(node: &Node, path: &str, ctx: &mut Ctx) -> Result<DropIn, ConfigError> {
    let mut f = Fields::new(node, path, ctx)?;
    let name = match f.take_some("name") {
        Some(n) => {
            let name = string(n, &f.path_of("name"))?;
            let ok = name.len() > 5
                && name.ends_with(".conf")
                && !name.contains('/')
                && !name.starts_with('.');
            if !ok {
                return Err(ConfigError::invalid(
                    n,
                    &f.path_of("name"),
                    format!("{name:?} is not a drop-in name like 10-override.conf"),
                ));
            }
            name
        }
        None => return Err(ConfigError::invalid(node, path, "a drop-in needs a `name`")),
    };
    let content = opt_string(f.take("content"), &f.path_of("content"))?.unwrap_or_default();
    f.finish(ctx);
    Ok(DropIn { name, content })
}

fn interface(node: &Node, path: &str, ctx: &mut Ctx) -> Result<NetworkInterface, ConfigError> {
    let mut f = Fields::new(node, path, ctx)?;
    let name_node = f.take_some("name").or(f.take_some("match"));
    let mac_node = f.take_some("mac");
    if name_node.is_none() && mac_node.is_none() {
        return Err(ConfigError::invalid(
            node,
            path,
            "an interface needs a `name` (or `match`), e.g. eth0 or en*, or a `mac`",
        ));
    }
    let name = match name_node {
        Some(n) => string(n, &f.path_of("name"))?,
        None => String::new(),
    };
    if let Some(name_node) = name_node {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:*?[]".contains(c))
        {
            return Err(ConfigError::invalid(
                name_node,
                &f.path_of("name"),
                format!("{name:?} is not an interface name or glob"),
            ));
        }
    }
    let mac = match mac_node {
        Some(n) => {
            let mac = string(n, &f.path_of("mac"))?.to_ascii_lowercase();
            let ok = mac.split(':').count() == 6
                && mac
                    .split(':')
                    .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()));
            if !ok {
                return Err(ConfigError::invalid(
                    n,
                    &f.path_of("mac"),
                    format!("{mac:?} is not a MAC address like 52:54:00:12:34:56"),
                ));
            }
            Some(mac)
        }
        None => None,
    };
    let mut addresses = Vec::new();
    for key in ["address", "addresses"] {
        let n = f.take(key);
        for a in string_list(n, &f.path_of(key))? {
            if !cidr_ok(&a) {
                let at = n.unwrap_or(node);
                return Err(ConfigError::invalid(
                    at,
                    &f.path_of(key),
                    format!("{a:?} is not an address in CIDR form like 192.0.2.10/24"),
                ));
            }
            addresses.push(a);
        }
    }
    let gateway_node = f.take("gateway");
    let gateway = opt_string(gateway_node, &f.path_of("gateway"))?;
    if let (Some(g), Some(n)) = (&gateway, gateway_node) {
        if g.parse::<IpAddr>().is_err() {
            return Err(ConfigError::invalid(
                n,
                &f.path_of("gateway"),
                format!("{g:?} is not an IP address"),
            ));
        }
    }
    let dns_node = f.take("dns");
    let dns = string_list(dns_node, &f.path_of("dns"))?;
    if let Some(bad) = dns.iter().find(|d| d.parse::<IpAddr>().is_err()) {
        return Err(ConfigError::invalid(
            dns_node.unwrap_or(node),
            &f.path_of("dns"),
            format!("{bad:?} is not an IP address"),
        ));
    }
    let ra_path = f.path_of("ipv6-accept-ra");
    let ipv6_accept_ra = f
        .take_some("ipv6-accept-ra")
        .map(|n| boolean(Some(n), &ra_path))
        .transpose()?;
    f.finish(ctx);
    Ok(NetworkInterface {
        name,
        mac,
        addresses,
        gateway,
        dns,
        ipv6_accept_ra,
    })
}

/// An absolute `http` or `https` URL with a host, as etcd's discovery wants.
fn url_ok(text: &str) -> bool {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

fn cidr_ok(text: &str) -> bool {
    let Some((ip, prefix)) = text.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    matches!(prefix.parse::<u8>(), Ok(p) if p <= max && !prefix.starts_with('+'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert!(cidr_ok("192.0.2.10/24"));
        assert!(cidr_ok("2001:db8::1/64"));
        assert!(!cidr_ok("192.0.2.10"));
        assert!(!cidr_ok("192.0.2.10/33"));
        assert!(!cidr_ok("host/24"));
    }

    #[test]
    fn unit_names() {
        assert!(unit_name_ok("etcd.service"));
        assert!(unit_name_ok("getty@tty1.service"));
        assert!(unit_name_ok("10-eth.network"));
        assert!(!unit_name_ok("etcd"));
        assert!(!unit_name_ok(".service"));
        assert!(!unit_name_ok("../x.service"));
    }
}
