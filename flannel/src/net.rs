//! IPv4 networks as flannel writes them: `10.5.0.0/16` in the config, `10.5.72.0-24` in a
//! lease's key; and the MAC addresses of vxlan endpoints, `c6:d2:32:6f:8f:44` in a lease's
//! `BackendData`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network: its first address and prefix length (the address has no host bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    /// The network of `addr/prefix`; `None` when `prefix` is over 32 or host bits are set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Net> {
        let net = Ipv4Net { addr, prefix };
        (prefix <= 32 && u32::from(addr) & !net.mask() == 0).then_some(net)
    }

    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// How many addresses it spans.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.addr)
    }

    /// Whether `other` lies wholly inside this network.
    pub fn covers(&self, other: &Ipv4Net) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// The last address.
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// The first address after the network address (docker's bridge takes it).
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }

    /// flannel's key form, `10.5.72.0-24`.
    pub fn key_name(&self) -> String {
        format!("{}-{}", self.addr, self.prefix)
    }

    /// Reads the key form back.
    pub fn from_key_name(name: &str) -> Option<Ipv4Net> {
        let (a, p) = name.split_once('-')?;
        Ipv4Net::new(a.parse().ok()?, p.parse().ok()?)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a text is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an IPv4 network like 10.5.0.0/16 ({why})")]
pub struct NetError {
    pub text: String,
    pub why: &'static str,
}

impl FromStr for Ipv4Net {
    type Err = NetError;

    fn from_str(text: &str) -> Result<Ipv4Net, NetError> {
        let err = |why| NetError {
            text: text.to_string(),
            why,
        };
        let (a, p) = text.split_once('/').ok_or_else(|| err("no /prefix"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| err("not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| err("the prefix is not 0 to 32"))?;
        Ipv4Net::new(addr, prefix).ok_or_else(|| err("host bits are set after the prefix"))
    }
}

/// An Ethernet address, written as flannel writes a `VtepMAC`: six lower-case hex pairs with colons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&kiln_contract::hex::mac(&self.0))
    }
}

/// Why a text is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address like c6:d2:32:6f:8f:44")]
pub struct MacError(pub String);

impl FromStr for MacAddr {
    type Err = MacError;

    /// Reads six hex pairs separated by colons (Go's `net.ParseMAC` also takes dashes; flannel
    /// only ever wrote colons).
    fn from_str(text: &str) -> Result<MacAddr, MacError> {
        let mut mac = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut mac {
            // `from_str_radix` alone would take "+f".
            let part = parts
                .next()
                .filter(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
            *byte = part
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| MacError(text.to_string()))?;
        }
        match parts.next() {
            None => Ok(MacAddr(mac)),
            Some(_) => Err(MacError(text.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_read_write_and_contain() {
        let n: Ipv4Net = "10.5.0.0/16".parse().unwrap();
        assert_eq!(n.size(), 65536);
        assert_eq!(n.last(), Ipv4Addr::new(10, 5, 255, 255));
        let s: Ipv4Net = "10.5.72.0/24".parse().unwrap();
        assert!(n.covers(&s) && !s.covers(&n));
        assert_eq!(s.key_name(), "10.5.72.0-24");
        assert_eq!(Ipv4Net::from_key_name("10.5.72.0-24"), Some(s));
        assert_eq!(s.first_host(), Ipv4Addr::new(10, 5, 72, 1));
        assert!("10.5.1.0/16"
            .parse::<Ipv4Net>()
            .unwrap_err()
            .to_string()
            .contains("host bits"));
        assert!("10.5.0.0".parse::<Ipv4Net>().is_err());
        assert!("10.5.0.0/33".parse::<Ipv4Net>().is_err());
        assert_eq!(Ipv4Net::from_key_name("10.5.72.1-24"), None);
    }

    #[test]
    fn mac_addresses_read_and_write() {
        let mac: MacAddr = "c6:d2:32:6f:8F:44".parse().unwrap();
        assert_eq!(mac, MacAddr([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]));
        assert_eq!(mac.to_string(), "c6:d2:32:6f:8f:44");
        for bad in [
            "c6:d2:32:6f:8f",
            "c6:d2:32:6f:8f:44:00",
            "c6-d2-32-6f-8f-44",
            "c6:d2:32:6f:8f:4g",
            "c6:d2:32:6f:8f:+4",
            "",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
    }
}
