//! flannel's settings and files, as CoreOS had them: the cloud-config's `coreos.flannel:` keys
//! become `FLANNELD_*` lines of `/run/flannel/options.env` (coreos-cloudinit wrote that file,
//! flanneld read its flags from the environment), the network config is JSON in etcd under
//! `<prefix>/config`, each machine's subnet lease under `<prefix>/subnets/`, and the daemon
//! writes `subnet.env` and docker's options for the machine's subnet. `kiln-config` writes the
//! options, the flannel daemon reads them; both take the names from here.

/// The environment file the cloud-config's `flannel:` section becomes.
pub const OPTIONS_ENV: &str = "/run/flannel/options.env";
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

/// coreos-cloudinit's `flannel:` keys, in its order.
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
];

/// The key of a cloud-config name, `-` and `_` alike.
pub fn key(name: &str) -> Option<&'static Key> {
    let name = name.replace('_', "-");
    KEYS.iter().find(|k| k.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_flanneld_variables() {
        assert_eq!(key("etcd_prefix").unwrap().env(), "FLANNELD_ETCD_PREFIX");
        assert_eq!(key("public-ip").unwrap().env(), "FLANNELD_PUBLIC_IP");
        assert!(key("network").is_none());
        assert_eq!(KEYS.len(), 11);
    }
}
