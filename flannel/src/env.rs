//! The files docker is started with, as flannel and CoreOS wrote them: `subnet.env`
//! (`FLANNEL_NETWORK`, `FLANNEL_SUBNET` the subnet's first address, `FLANNEL_MTU`,
//! `FLANNEL_IPMASQ`) and docker's options (`mk-docker-opts.sh -d`: `--bip`, `--mtu`, and
//! `--ip-masq` the opposite of flannel's, so exactly one of them masquerades).

use crate::net::Ipv4Net;

/// What a machine's subnet means for its containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Ipv4Net,
    pub subnet: Ipv4Net,
    pub mtu: u32,
    pub ip_masq: bool,
}

impl SubnetEnv {
    /// `subnet.env`'s text.
    pub fn render(&self) -> String {
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network,
            self.subnet.first_host(),
            self.subnet.prefix,
            self.mtu,
            self.ip_masq
        )
    }

    /// Reads `subnet.env` back (the subnet a machine had, to take it again).
    pub fn parse(text: &str) -> Option<SubnetEnv> {
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::trim)
        };
        let (host, prefix) = get("FLANNEL_SUBNET")?.split_once('/')?;
        let host: std::net::Ipv4Addr = host.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let probe = Ipv4Net { addr: host, prefix };
        let subnet = Ipv4Net::new(
            std::net::Ipv4Addr::from(u32::from(host) & probe.mask()),
            prefix,
        )?;
        Some(SubnetEnv {
            network: get("FLANNEL_NETWORK")?.parse().ok()?,
            subnet,
            mtu: get("FLANNEL_MTU")?.parse().ok()?,
            ip_masq: get("FLANNEL_IPMASQ")? == "true",
        })
    }

    /// docker's options file (`flannel_docker_opts.env`).
    pub fn docker_opts(&self) -> String {
        format!(
            "DOCKER_OPT_BIP=\"--bip={}/{}\"\nDOCKER_OPT_MTU=\"--mtu={}\"\nDOCKER_OPT_IPMASQ=\"--ip-masq={}\"\n",
            self.subnet.first_host(),
            self.subnet.prefix,
            self.mtu,
            !self.ip_masq
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_env_and_docker_opts_are_flannels() {
        let env = SubnetEnv {
            network: "10.5.0.0/16".parse().unwrap(),
            subnet: "10.5.72.0/24".parse().unwrap(),
            mtu: 1450,
            ip_masq: true,
        };
        let text = env.render();
        assert_eq!(text, "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n");
        assert_eq!(SubnetEnv::parse(&text), Some(env.clone()));
        assert_eq!(
            env.docker_opts(),
            "DOCKER_OPT_BIP=\"--bip=10.5.72.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\n"
        );
        assert_eq!(SubnetEnv::parse("FLANNEL_SUBNET=x\n"), None);
    }
}
