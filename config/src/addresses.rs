//! `$private_ipv4` and `$public_ipv4`: coreos-cloudinit replaced them, anywhere in the
//! cloud-config's text, with the machine's addresses before reading the document. Kiln does the
//! same, but the init applies the document before the network is up, so a document that uses
//! them is applied twice:
//!
//! 1. at first boot by the init, with a placeholder ([`PLACEHOLDER`]) in their place, so that
//!    everything that does not depend on them (accounts, keys, the network itself, units) is
//!    there when systemd starts. `write_files` entries that use them are held back, and the units
//!    that use them (and etcd, fleet and the cloud-config's unit starts) are ordered after
//!    `kiln-config-addresses.service`; the document is kept in [`PENDING`];
//! 2. by `kiln-config addresses` (that unit) once the addresses are known, with them in place:
//!    the whole document again, and the held-back files for the first time. The addresses also
//!    go into `/etc/environment` as `COREOS_PRIVATE_IPV4` / `COREOS_PUBLIC_IPV4`, as on CoreOS.
//!
//! Where the addresses come from ([`choose`]), in order:
//! - `$private_ipv4`: the interface `addresses: private-interface:` names; else the first static
//!   address of the document's `network:`; else the address of the interface that holds the
//!   default route; else the first address of any interface but loopback;
//! - `$public_ipv4`: the interface `addresses: public-interface:` names; else the address of the
//!   interface that holds the default route; else `$private_ipv4`.
//!
//! Kiln reads no platform metadata service yet (QEMU and bare metal have none), so these rules
//! are the whole answer. `$private_ipv6` and `$public_ipv6` are not replaced.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Documents waiting for the second pass, one file each.
pub const PENDING: &str = kiln_contract::paths::CLOUD_CONFIG_PENDING;

/// What stands in for both addresses in the first pass (and what a service ordered after the
/// second pass never sees).
pub const PLACEHOLDER: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

/// The variables, as coreos-cloudinit read them (also in the `${…}` form).
const PRIVATE: &str = "private_ipv4";
const PUBLIC: &str = "public_ipv4";

/// The two addresses a document's variables stand for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub private_ipv4: Ipv4Addr,
    pub public_ipv4: Ipv4Addr,
}

impl Addresses {
    pub fn both(addr: Ipv4Addr) -> Addresses {
        Addresses {
            private_ipv4: addr,
            public_ipv4: addr,
        }
    }

    /// `/etc/environment`'s lines for them, by CoreOS's names.
    pub fn environment(&self) -> [(&'static str, String); 2] {
        [
            ("COREOS_PRIVATE_IPV4", self.private_ipv4.to_string()),
            ("COREOS_PUBLIC_IPV4", self.public_ipv4.to_string()),
        ]
    }
}

/// Where each address came from, for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    pub addresses: Addresses,
    pub private_from: String,
    pub public_from: String,
}

/// The document's `addresses:` section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressSettings {
    pub private_interface: Option<String>,
    pub public_interface: Option<String>,
}

/// One IPv4 address of one interface, as the kernel lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub interface: String,
    pub address: Ipv4Addr,
}

/// Whether `text` uses `$private_ipv4` or `$public_ipv4` (not escaped with `\`).
pub fn uses_addresses(text: &str) -> bool {
    substitute(text, &Addresses::both(PLACEHOLDER)) != text
}

/// `text` with `$private_ipv4`, `${private_ipv4}`, `$public_ipv4` and `${public_ipv4}` replaced;
/// a variable right after a `\` is left as it is.
pub fn substitute(text: &str, addresses: &Addresses) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let escaped = out.ends_with('\\');
        let found = [
            (PRIVATE, addresses.private_ipv4),
            (PUBLIC, addresses.public_ipv4),
        ]
        .into_iter()
        .find_map(|(name, addr)| {
            let braced = format!("{{{name}}}");
            if after.starts_with(&braced) {
                Some((braced.len(), addr))
            } else if after.starts_with(name)
                && !after[name.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            {
                Some((name.len(), addr))
            } else {
                None
            }
        });
        match found {
            Some((len, addr)) if !escaped => {
                out.push_str(&addr.to_string());
                rest = &after[len..];
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The addresses by the rules above, or why they are not known yet. `static_addresses` are the
/// document's own (`network:` entries' `address:`), `interfaces` what the kernel has,
/// `default_route` the interface that holds the IPv4 default route.
pub fn choose(
    settings: &AddressSettings,
    static_addresses: &[Ipv4Addr],
    interfaces: &[InterfaceAddress],
    default_route: Option<&str>,
) -> Result<Chosen, String> {
    let on = |name: &str| {
        interfaces
            .iter()
            .find(|i| i.interface == name)
            .map(|i| i.address)
    };
    let named =
        |name: &Option<String>, which: &str| -> Result<Option<(Ipv4Addr, String)>, String> {
            match name {
                None => Ok(None),
                Some(n) => on(n)
                    .map(|a| {
                        Some((
                            a,
                            format!("interface {n}, as `addresses: {which}-interface:` says"),
                        ))
                    })
                    .ok_or_else(|| {
                        format!(
                        "interface {n} (`addresses: {which}-interface:`) has no IPv4 address yet"
                    )
                    }),
            }
        };
    let routed = default_route
        .and_then(|n| on(n).map(|a| (a, format!("interface {n}, which holds the default route"))));
    let private = match named(&settings.private_interface, "private")? {
        Some(found) => found,
        None => match static_addresses.first() {
            Some(a) => (
                *a,
                "the document's first static address (`network:`)".to_string(),
            ),
            None => match (
                &routed,
                interfaces.iter().find(|i| !i.address.is_loopback()),
            ) {
                (Some(r), _) => r.clone(),
                (None, Some(i)) if default_route.is_none() => (
                    i.address,
                    format!(
                        "interface {}, the first with an address (no default route)",
                        i.interface
                    ),
                ),
                _ => return Err("no interface has an IPv4 address yet".into()),
            },
        },
    };
    let public = match named(&settings.public_interface, "public")? {
        Some(found) => found,
        None => {
            routed.unwrap_or_else(|| (private.0, "the private address (no default route)".into()))
        }
    };
    Ok(Chosen {
        addresses: Addresses {
            private_ipv4: private.0,
            public_ipv4: public.0,
        },
        private_from: private.1,
        public_from: public.1,
    })
}

/// The interface of the IPv4 default route in `/proc/net/route`'s text.
pub fn default_route_interface(route_table: &str) -> Option<String> {
    route_table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags …; RTF_UP is 0x1.
        let up = fields
            .get(3)
            .and_then(|f| u32::from_str_radix(f, 16).ok())
            .is_some_and(|f| f & 1 == 1);
        (fields.len() > 7 && fields[1] == "00000000" && fields[7] == "00000000" && up)
            .then(|| fields[0].to_string())
    })
}

/// How long a machine without a default route is given to get one (DHCP) before
/// `$public_ipv4` falls back to the private address.
const ROUTE_GRACE: Duration = Duration::from_secs(10);

/// The addresses on the running system by [`choose`]'s rules, polled each second for up to
/// `wait` while they are not there yet (the network comes up as this runs).
pub fn wait_for(
    settings: &AddressSettings,
    static_addresses: &[Ipv4Addr],
    wait: Duration,
) -> Result<Chosen, String> {
    let start = Instant::now();
    loop {
        let interfaces =
            system_interfaces().map_err(|e| format!("listing the interfaces' addresses: {e}"))?;
        let route = std::fs::read_to_string("/proc/net/route")
            .ok()
            .and_then(|t| default_route_interface(&t));
        let waited = start.elapsed();
        match choose(settings, static_addresses, &interfaces, route.as_deref()) {
            Ok(c) if route.is_some() || settings.public_interface.is_some() => return Ok(c),
            Ok(c) if waited >= ROUTE_GRACE.min(wait) => return Ok(c),
            Err(e) if waited >= wait => return Err(format!("{e} after {} s", waited.as_secs())),
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// The running system's IPv4 addresses, interface by interface (getifaddrs(3)).
pub fn system_interfaces() -> std::io::Result<Vec<InterfaceAddress>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we walk read-only and free once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null()
            // SAFETY: a non-null ifa_addr points at a sockaddr of at least its family's size.
            && i32::from(unsafe { (*ifa.ifa_addr).sa_family }) == libc::AF_INET
        {
            // SAFETY: AF_INET means the sockaddr is a sockaddr_in; the name is a C string.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
            out.push(InterfaceAddress {
                interface: name.to_string_lossy().into_owned(),
                address: Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
            });
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn variables_are_replaced_in_both_forms_but_not_escaped_or_longer_names() {
        let addrs = Addresses {
            private_ipv4: a("10.0.0.5"),
            public_ipv4: a("203.0.113.7"),
        };
        assert_eq!(
            substitute("http://$private_ipv4:2379,http://${public_ipv4}:4001 $private_ipv6 \\$private_ipv4 $private_ipv4x $", &addrs),
            "http://10.0.0.5:2379,http://203.0.113.7:4001 $private_ipv6 \\$private_ipv4 $private_ipv4x $"
        );
        assert!(uses_addresses("a: $public_ipv4\n"));
        assert!(!uses_addresses("a: \\$public_ipv4 $HOME\n"));
    }

    #[test]
    fn the_rules_pick_named_static_routed_then_any() {
        let ifs = vec![
            InterfaceAddress {
                interface: "lo".into(),
                address: a("127.0.0.1"),
            },
            InterfaceAddress {
                interface: "ens3".into(),
                address: a("10.0.2.15"),
            },
            InterfaceAddress {
                interface: "ens4".into(),
                address: a("10.77.0.1"),
            },
        ];
        let none = AddressSettings::default();
        // The document's static address is private; the routed interface is public.
        let c = choose(&none, &[a("10.77.0.1")], &ifs, Some("ens3")).unwrap();
        assert_eq!(
            (c.addresses.private_ipv4, c.addresses.public_ipv4),
            (a("10.77.0.1"), a("10.0.2.15"))
        );
        // DHCP on one interface: both are its address.
        let c = choose(&none, &[], &ifs, Some("ens3")).unwrap();
        assert_eq!(c.addresses, Addresses::both(a("10.0.2.15")));
        // Named interfaces win, and one without an address is not ready yet.
        let named = AddressSettings {
            private_interface: Some("ens4".into()),
            public_interface: Some("ens4".into()),
        };
        let c = choose(&named, &[a("192.0.2.1")], &ifs, Some("ens3")).unwrap();
        assert_eq!(c.addresses, Addresses::both(a("10.77.0.1")));
        let missing = AddressSettings {
            private_interface: Some("eth9".into()),
            ..Default::default()
        };
        assert!(choose(&missing, &[], &ifs, Some("ens3"))
            .unwrap_err()
            .contains("eth9"));
        // No route: the first address but loopback, for both.
        let c = choose(&none, &[], &ifs, None).unwrap();
        assert_eq!(c.addresses, Addresses::both(a("10.0.2.15")));
        assert!(choose(&none, &[], &ifs[..1], None).is_err());
    }

    #[test]
    fn the_default_route_is_read_from_proc_net_route() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
ens4\t004D0A0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
ens3\t00000000\t0202000A\t0003\t0\t0\t1024\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_interface(table).as_deref(), Some("ens3"));
        assert_eq!(default_route_interface("Iface\tDestination\n"), None);
    }

    #[test]
    fn this_machine_lists_its_loopback_address() {
        let ifs = system_interfaces().unwrap();
        assert!(
            ifs.iter().any(|i| i.address == Ipv4Addr::LOCALHOST),
            "{ifs:?}"
        );
    }
}
