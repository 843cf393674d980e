//! The network config: JSON at `<prefix>/config`, read as flannel read it (key names in any
//! case, as Go's JSON decoder matched them; unknown keys passed over), with flannel's defaults
//! and checks, and errors that name the key and say what to write.

use std::net::Ipv4Addr;

use serde_json::Value;

use crate::net::Ipv4Net;

/// The kernel's vxlan port when the config says 0 (flannel's default).
pub const VXLAN_DEFAULT_PORT: u16 = 8472;

/// A checked network config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    pub network: Ipv4Net,
    /// The prefix length of each machine's subnet.
    pub subnet_len: u8,
    /// The first and the last subnet a machine may get.
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub backend: Backend,
    /// What Kiln read differently from flannel, for the daemon's log.
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Vxlan(Vxlan),
    /// Routes to each machine's subnet through the machine itself (one L2 network).
    HostGw,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: u32,
    /// The UDP port; [`VXLAN_DEFAULT_PORT`] when the config says 0 or nothing.
    pub port: u16,
    /// Plain routes to peers on the same L2 network, vxlan to the others.
    pub direct_routing: bool,
}

impl Backend {
    /// The name a lease records (`BackendType`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Vxlan(_) => "vxlan",
            Backend::HostGw => "host-gw",
        }
    }
}

/// Why a network config cannot be used: the key, and what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the network config: {0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// `obj[name]`, the name matched without regard to case.
fn field<'v>(obj: &'v serde_json::Map<String, Value>, name: &str) -> Option<&'v Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn text<'v>(
    obj: &'v serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<&'v str>, ConfigError> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(bad(format!("`{name}` is {other}, not a string"))),
    }
}

fn number(
    obj: &serde_json::Map<String, Value>,
    name: &str,
    max: u64,
) -> Result<Option<u64>, ConfigError> {
    match field(obj, name) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(bad(format!(
                "`{name}` is {v}; write a whole number from 0 to {max}"
            ))),
        },
    }
}

fn flag(obj: &serde_json::Map<String, Value>, name: &str) -> Result<bool, ConfigError> {
    match field(obj, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(format!("`{name}` is {other}; write true or false"))),
    }
}

impl NetworkConfig {
    /// Reads and checks the JSON text of `<prefix>/config`.
    pub fn parse(json: &str) -> Result<NetworkConfig, ConfigError> {
        let value: Value = serde_json::from_str(json).map_err(|e| {
            bad(format!(
                "it is not JSON ({e}); write it like {{\"Network\":\"10.5.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}"
            ))
        })?;
        let obj = value.as_object().ok_or_else(|| {
            bad("it is not a JSON object; write it like {\"Network\":\"10.5.0.0/16\"}")
        })?;
        let mut notes = Vec::new();
        let network: Ipv4Net = text(obj, "Network")?
            .ok_or_else(|| bad("`Network` is missing; add the overlay's IPv4 network, e.g. \"Network\":\"10.5.0.0/16\""))?
            .parse()
            .map_err(|e| bad(format!("`Network`: {e}")))?;
        if network.prefix > 28 {
            return Err(bad(format!(
                "`Network` {network} is too small: flannel needs at least a /28"
            )));
        }
        let subnet_len = match number(obj, "SubnetLen", 32)? {
            Some(n) => n as u8,
            None if network.prefix <= 22 => 24,
            None => network.prefix + 2,
        };
        if subnet_len > 30 {
            return Err(bad(format!(
                "`SubnetLen` {subnet_len} leaves no room for containers: write 30 or less"
            )));
        }
        if subnet_len < network.prefix + 2 {
            return Err(bad(format!(
                "`SubnetLen` {subnet_len} gives {network} fewer than four subnets: write at least {}",
                network.prefix + 2
            )));
        }
        let step = 1u32 << (32 - u32::from(subnet_len));
        let boundary = |name: &str, default: u32| -> Result<Ipv4Addr, ConfigError> {
            let Some(t) = text(obj, name)? else {
                return Ok(Ipv4Addr::from(default));
            };
            let a: Ipv4Addr = t
                .parse()
                .map_err(|_| bad(format!("`{name}` {t:?} is not an IPv4 address")))?;
            if !network.contains(a) {
                return Err(bad(format!("`{name}` {a} is outside `Network` {network}")));
            }
            if u32::from(a) % step != 0 {
                return Err(bad(format!(
                    "`{name}` {a} is not on a /{subnet_len} boundary (`SubnetLen`)"
                )));
            }
            Ok(a)
        };
        let first = u32::from(network.addr);
        let subnet_min = boundary("SubnetMin", first + step)?;
        let subnet_max = boundary("SubnetMax", u32::from(network.last()) - step + 1)?;
        if subnet_min > subnet_max {
            return Err(bad(format!(
                "`SubnetMin` {subnet_min} is after `SubnetMax` {subnet_max}"
            )));
        }
        for key in ["EnableIPv6", "IPv6Network"] {
            if field(obj, key).is_some_and(|v| v != &Value::Bool(false)) {
                notes.push(format!(
                    "`{key}` is passed over: Kiln's flannel is IPv4 only"
                ));
            }
        }
        let backend = match field(obj, "Backend") {
            None => {
                notes.push("no `Backend`: flannel's default was udp, which Kiln does not have; vxlan is used (write \"Backend\":{\"Type\":\"vxlan\"} to say so)".into());
                Backend::Vxlan(Vxlan {
                    vni: 1,
                    port: VXLAN_DEFAULT_PORT,
                    direct_routing: false,
                })
            }
            Some(Value::Object(b)) => backend(b)?,
            Some(other) => {
                return Err(bad(format!(
                    "`Backend` is {other}; write an object like {{\"Type\":\"vxlan\"}}"
                )))
            }
        };
        Ok(NetworkConfig {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
            notes,
        })
    }

    /// The subnets machines may get, first to last.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let step = 1u64 << (32 - u32::from(self.subnet_len));
        (u64::from(u32::from(self.subnet_min))..=u64::from(u32::from(self.subnet_max)))
            .step_by(step as usize)
            .filter_map(|a| Ipv4Net::new(Ipv4Addr::from(a as u32), self.subnet_len))
    }

    /// Whether a machine may hold `subnet` under this config.
    pub fn fits(&self, subnet: &Ipv4Net) -> bool {
        subnet.prefix == self.subnet_len
            && self.network.covers(subnet)
            && subnet.addr >= self.subnet_min
            && subnet.addr <= self.subnet_max
    }
}

fn backend(b: &serde_json::Map<String, Value>) -> Result<Backend, ConfigError> {
    let kind = text(b, "Type")?.unwrap_or("udp").to_ascii_lowercase();
    match kind.as_str() {
        "vxlan" => {
            let vni = number(b, "VNI", (1 << 24) - 1)?.unwrap_or(1) as u32;
            let port = match number(b, "Port", 65535)? {
                None | Some(0) => VXLAN_DEFAULT_PORT,
                Some(p) => p as u16,
            };
            if flag(b, "GBP")? {
                return Err(bad("`Backend.GBP` (group policy) is not supported by Kiln's flannel: remove it"));
            }
            Ok(Backend::Vxlan(Vxlan { vni, port, direct_routing: flag(b, "DirectRouting")? }))
        }
        "host-gw" => Ok(Backend::HostGw),
        other => Err(bad(format!(
            "`Backend.Type` {other:?} is not a backend Kiln's flannel has; write \"vxlan\" (any network) or \"host-gw\" (machines on one L2 network)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coreos_examples_read_with_flannels_defaults() {
        let c = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 5, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 5, 255, 0));
        assert_eq!(
            c.backend,
            Backend::Vxlan(Vxlan {
                vni: 1,
                port: 8472,
                direct_routing: false
            })
        );
        assert_eq!(c.subnets().count(), 255);
        assert!(c.notes.is_empty());
        // Go's decoder matched names in any case; a small network gets /prefix+2 subnets.
        let c = NetworkConfig::parse(r#"{"network":"10.6.0.0/24","backend":{"type":"host-gw"}}"#)
            .unwrap();
        assert_eq!((c.subnet_len, c.backend.type_name()), (26, "host-gw"));
        assert_eq!(
            c.subnets().map(|s| s.to_string()).collect::<Vec<_>>(),
            ["10.6.0.64/26", "10.6.0.128/26", "10.6.0.192/26"]
        );
        let c = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","SubnetLen":20,"SubnetMin":"10.5.16.0","SubnetMax":"10.5.48.0","Backend":{"Type":"vxlan","VNI":4096,"Port":4789}}"#).unwrap();
        assert_eq!(c.subnets().count(), 3);
        assert!(
            c.fits(&"10.5.32.0/20".parse().unwrap()) && !c.fits(&"10.5.64.0/20".parse().unwrap())
        );
        assert_eq!(
            c.backend,
            Backend::Vxlan(Vxlan {
                vni: 4096,
                port: 4789,
                direct_routing: false
            })
        );
        let c = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16"}"#).unwrap();
        assert!(c.notes[0].contains("udp"), "{:?}", c.notes);
    }

    #[test]
    fn bad_configs_name_the_key_and_what_to_write() {
        for (json, says) in [
            ("{", "not JSON"),
            ("[]", "not a JSON object"),
            ("{}", "`Network` is missing"),
            (r#"{"Network":"10.5.0.1/16"}"#, "host bits"),
            (r#"{"Network":"10.5.0.0/29"}"#, "at least a /28"),
            (
                r#"{"Network":"10.5.0.0/16","SubnetLen":17}"#,
                "fewer than four subnets",
            ),
            (r#"{"Network":"10.5.0.0/16","SubnetLen":31}"#, "30 or less"),
            (
                r#"{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0"}"#,
                "outside `Network`",
            ),
            (
                r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.0.128"}"#,
                "boundary",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}"#,
                "\"udp\" is not a backend",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":-1}}"#,
                "`VNI` is -1",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":"vxlan"}"#,
                "write an object",
            ),
        ] {
            let e = NetworkConfig::parse(json).unwrap_err().to_string();
            assert!(e.contains(says), "{json}: {e}");
        }
    }
}
