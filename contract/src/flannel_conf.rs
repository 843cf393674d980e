//! flannel's settings and files, as CoreOS had them: the cloud-config's `coreos.flannel:` keys
//! become `FLANNELD_*` lines of an options file (coreos-cloudinit wrote `/run/flannel/options.env`
//! at every boot; Kiln applies a cloud-config once, so the file is under `/etc`), which the
//! daemon reads as flanneld read its flags, from the environment; the network config is JSON in etcd under
//! `<prefix>/config`, each machine's subnet lease under `<prefix>/subnets/`, and the daemon
//! writes `subnet.env` and docker's options for the machine's subnet. `kiln-config` writes the
//! options, the flannel daemon reads them; both take the names from here.

/// The environment file the cloud-config's `flannel:` section becomes; the daemon's unit runs
/// only where it is.
pub const OPTIONS_ENV: &str = "/etc/flannel/options.env";
/// What the daemon writes for the machine's subnet (flannel's `--subnet-file` default).
pub const SUBNET_ENV: &str = "/run/flannel/subnet.env";
/// docker's options for the machine's subnet (CoreOS's `mk-docker-opts.sh -d` output).
pub const DOCKER_OPTS_ENV: &str = "/run/flannel/flannel_docker_opts.env";
/// Where flannel keeps its state in etcd unless told otherwise.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

pub use crate::Support;

/// One key of the cloud-config's `flannel:` section.
#[derive(Debug)]
pub struct Key {
    /// The cloud-config's name (`-` and `_` alike).
    pub name: &'static str,
    pub support: Support,
    pub doc: &'static str,
}

impl Key {
    /// The environment variable of `options.env` (flanneld's `--flag` ↔ `FLANNELD_FLAG`).
    pub fn env(&self) -> String {
        format!(
            "FLANNELD_{}",
            self.name.to_ascii_uppercase().replace('-', "_")
        )
    }
}

const NO_TLS: Support = Support::Ignored(
    "Kiln's flannel speaks plain http to etcd (TLS to etcd is not supported yet); keep etcd on the machines' private network",
);
const NO_AUTH: Support =
    Support::Ignored("Kiln's etcd runs without users (etcd authentication is not supported yet)");

/// coreos-cloudinit's `flannel:` keys, in its order, then Kiln's.
pub const KEYS: &[Key] = &[
    Key { name: "etcd-endpoints", support: Support::Yes, doc: "etcd client URLs, comma-separated (default: this machine's etcd)." },
    Key { name: "etcd-cafile", support: NO_TLS, doc: "TLS to etcd." },
    Key { name: "etcd-certfile", support: NO_TLS, doc: "TLS to etcd." },
    Key { name: "etcd-keyfile", support: NO_TLS, doc: "TLS to etcd." },
    Key { name: "etcd-prefix", support: Support::Yes, doc: "Where in etcd the network config and the leases are (default /coreos.com/network)." },
    Key { name: "etcd-username", support: NO_AUTH, doc: "etcd authentication." },
    Key { name: "etcd-password", support: NO_AUTH, doc: "etcd authentication." },
    Key { name: "ip-masq", support: Support::Yes, doc: "Masquerade traffic that leaves the overlay (true or false; default true, as CoreOS's flanneld.service set it)." },
    Key { name: "subnet-file", support: Support::Yes, doc: "Where to write subnet.env (default /run/flannel/subnet.env)." },
    Key { name: "interface", support: Support::Yes, doc: "The interface (name or address) whose address peers reach this machine at (default: the interface of the default route)." },
    Key { name: "public-ip", support: Support::Yes, doc: "The address peers reach this machine at (default: the address of `interface`)." },
    // Kiln's own: CoreOS users wrote the network config with `etcdctl set` in an ExecStartPre.
    Key { name: "network", support: Support::Yes, doc: "Kiln's: the overlay network (like 10.5.0.0/16), written to etcd as the network config when etcd holds none." },
    Key { name: "backend", support: Support::Yes, doc: "Kiln's: with `network`, the backend of that config: vxlan (the default) or host-gw." },
];

/// The key of a cloud-config name, `-` and `_` alike.
pub fn key(name: &str) -> Option<&'static Key> {
    let name = name.replace('_', "-");
    KEYS.iter().find(|k| k.name == name)
}

/// Whether `value` is one `name` takes; else what to write.
pub fn check(name: &str, value: &str) -> Result<(), String> {
    let value = value.trim();
    let ok = match name {
        "public-ip" => value.parse::<std::net::Ipv4Addr>().is_ok(),
        "ip-masq" => matches!(value, "true" | "false"),
        "etcd-endpoints" => value
            .split(',')
            .all(|e| e.trim().starts_with("http://") || e.trim().starts_with("https://")),
        "network" => network(value).is_some(),
        "backend" => matches!(value, "vxlan" | "host-gw"),
        _ => true,
    };
    if ok {
        return Ok(());
    }
    Err(match name {
        "public-ip" => "an IPv4 address of this machine, like 10.0.0.7 (or $private_ipv4)",
        "ip-masq" => "true or false",
        "etcd-endpoints" => "etcd client URLs, like http://10.0.0.1:2379, comma-separated",
        "network" => "an IPv4 network with no host bits set, like 10.5.0.0/16",
        _ => "vxlan or host-gw",
    }
    .into())
}

/// An IPv4 network `a.b.c.d/len` with no host bits set: its address and prefix length.
fn network(text: &str) -> Option<(std::net::Ipv4Addr, u8)> {
    let (addr, len) = text.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    let host_bits = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
    (u32::from(addr) & host_bits == 0).then_some((addr, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_flanneld_variables() {
        assert_eq!(key("etcd_prefix").unwrap().env(), "FLANNELD_ETCD_PREFIX");
        assert_eq!(key("public-ip").unwrap().env(), "FLANNELD_PUBLIC_IP");
        assert_eq!(key("network").unwrap().env(), "FLANNELD_NETWORK");
        assert!(key("subnet").is_none());
        assert_eq!(KEYS.len(), 13);
    }

    #[test]
    fn values_are_checked_with_what_to_write() {
        assert!(check("public-ip", "10.0.0.7").is_ok());
        assert!(check("public-ip", "10.0.0")
            .unwrap_err()
            .contains("IPv4 address"));
        assert!(check("network", "10.5.0.0/16").is_ok());
        assert!(check("network", "10.5.0.1/16").is_err());
        assert!(check("network", "10.5.0.0/33").is_err());
        assert!(check("network", "0.0.0.0/0").is_ok());
        assert!(check("backend", "udp")
            .unwrap_err()
            .contains("vxlan or host-gw"));
        assert!(check("ip-masq", "yes").is_err());
        assert!(check("etcd-endpoints", "http://a:2379, https://b:2379").is_ok());
        assert!(check("etcd-endpoints", "a:2379").is_err());
        assert!(check("interface", "anything").is_ok());
    }
}
