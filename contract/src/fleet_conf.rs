//! fleet's settings: `/etc/fleet/fleet.conf` (written by `kiln-config` from the cloud-config's
//! `coreos.fleet:` section, or by an operator), overridden by `FLEET_<KEY>` environment variables,
//! as fleet read them. The keys keep fleet's names, so an existing fleet.conf or cloud-config
//! carries over; `-` and `_` are alike in a key.

use std::collections::BTreeMap;
use std::time::Duration;

/// Where the machine's fleet settings live.
pub const FLEET_CONF: &str = "/etc/fleet/fleet.conf";
/// The API socket fleetctl talks to.
pub const FLEET_SOCKET: &str = "/var/run/fleet.sock";

/// How a key's value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// Seconds, possibly fractional (`1.5`).
    Seconds,
    /// A Go duration (`30s`, `2m`) or a number of seconds.
    Duration,
    Bool,
    Integer,
    /// Comma-separated, or a bracketed list as fleet's sample config writes it.
    List,
    /// `k=v,k=v`.
    Metadata,
}

pub use crate::Support;

/// One key of fleet.conf.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    pub kind: Kind,
    /// Kiln's default, as text in the key's own syntax.
    pub default: &'static str,
    pub support: Support,
    pub doc: &'static str,
}

const NO_TLS: Support = Support::Ignored(
    "Kiln's fleet speaks plain http to etcd (TLS to etcd is not supported yet); keep etcd on the machines' private network",
);

/// Every key fleet read, in its documentation's order, plus Kiln's own.
pub const KEYS: &[Key] = &[
    Key { name: "agent_ttl", kind: Kind::Duration, default: "30s", support: Support::Yes, doc: "How long a machine may go silent before its units are moved elsewhere." },
    Key { name: "engine_reconcile_interval", kind: Kind::Seconds, default: "2", support: Support::Yes, doc: "Seconds between two passes of the scheduler." },
    Key { name: "etcd_servers", kind: Kind::List, default: "http://127.0.0.1:2379", support: Support::Yes, doc: "etcd client URLs." },
    Key { name: "etcd_request_timeout", kind: Kind::Seconds, default: "5.0", support: Support::Yes, doc: "Seconds one etcd request may take (fleet's default was 1.0)." },
    Key { name: "etcd_key_prefix", kind: Kind::Text, default: "/_coreos.com/fleet/", support: Support::Yes, doc: "Where in etcd fleet keeps its state." },
    Key { name: "etcd_cafile", kind: Kind::Text, default: "", support: NO_TLS, doc: "TLS to etcd." },
    Key { name: "etcd_certfile", kind: Kind::Text, default: "", support: NO_TLS, doc: "TLS to etcd." },
    Key { name: "etcd_keyfile", kind: Kind::Text, default: "", support: NO_TLS, doc: "TLS to etcd." },
    Key { name: "etcd_username", kind: Kind::Text, default: "", support: Support::Ignored("etcd authentication is not supported yet"), doc: "etcd user." },
    Key { name: "etcd_password", kind: Kind::Text, default: "", support: Support::Ignored("etcd authentication is not supported yet"), doc: "etcd password." },
    Key { name: "metadata", kind: Kind::Metadata, default: "", support: Support::Yes, doc: "This machine's metadata, `k=v,k=v`, for MachineMetadata=." },
    Key { name: "public_ip", kind: Kind::Text, default: "", support: Support::Yes, doc: "The address other machines reach this one at; by default the address of the interface with the default route." },
    Key { name: "verbosity", kind: Kind::Integer, default: "0", support: Support::Yes, doc: "More log lines above 0." },
    Key { name: "disable_engine", kind: Kind::Bool, default: "false", support: Support::Yes, doc: "Never lead the scheduler on this machine." },
    Key { name: "token_limit", kind: Kind::Integer, default: "100", support: Support::Yes, doc: "Units per page of the API." },
    Key { name: "units_directory", kind: Kind::Text, default: "/run/fleet/units", support: Support::Yes, doc: "Where unit files are kept while loaded." },
    Key { name: "api_address", kind: Kind::Text, default: "", support: Support::Yes, doc: "Kiln: also serve the API on this TCP address (host:port), for `fleetctl --endpoint http://host:port` from elsewhere. Unauthenticated, as fleet's API always was: only on a private network." },
    Key { name: "fence_on_lease_loss", kind: Kind::Bool, default: "true", support: Support::Yes, doc: "Kiln: stop this machine's scheduled units when it cannot renew its presence for agent_ttl (they are being moved elsewhere)." },
    Key { name: "authorized_keys_file", kind: Kind::Text, default: "", support: Support::Ignored("deprecated in fleet itself, and ignored"), doc: "Deprecated." },
    Key { name: "verify_units", kind: Kind::Bool, default: "false", support: Support::Ignored("deprecated in fleet itself, and ignored"), doc: "Deprecated." },
];

/// The key of this name (`-` and `_` alike, case-insensitive).
pub fn key(name: &str) -> Option<&'static Key> {
    let name = name.trim().replace('-', "_").to_ascii_lowercase();
    KEYS.iter().find(|k| k.name == name)
}

/// A value refused, naming the key and what it should look like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value:?}: {expected}")]
pub struct Refused {
    pub key: String,
    pub value: String,
    pub expected: String,
}

/// Checks a value for `key`, as the daemon will read it.
pub fn check(key: &Key, value: &str) -> Result<(), Refused> {
    let refuse = |expected: &str| Refused {
        key: key.name.to_owned(),
        value: value.to_owned(),
        expected: expected.to_owned(),
    };
    match key.kind {
        Kind::Text | Kind::List => Ok(()),
        Kind::Seconds => seconds(value)
            .map(|_| ())
            .ok_or_else(|| refuse("a number of seconds, like 2 or 1.5")),
        Kind::Duration => duration(value)
            .map(|_| ())
            .ok_or_else(|| refuse("a duration like 30s or 2m, or a number of seconds")),
        Kind::Bool => boolean(value)
            .map(|_| ())
            .ok_or_else(|| refuse("true or false")),
        Kind::Integer => value
            .trim()
            .parse::<u64>()
            .map(|_| ())
            .map_err(|_| refuse("a whole number")),
        Kind::Metadata => metadata(value).map(|_| ()).map_err(|e| refuse(&e)),
    }
}

/// The settings the daemon runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConf {
    pub agent_ttl: Duration,
    pub engine_reconcile_interval: Duration,
    pub etcd_servers: Vec<String>,
    pub etcd_request_timeout: Duration,
    pub etcd_key_prefix: String,
    pub metadata: BTreeMap<String, String>,
    pub public_ip: Option<String>,
    pub verbosity: u64,
    pub disable_engine: bool,
    pub token_limit: u64,
    pub units_directory: String,
    pub fence_on_lease_loss: bool,
    /// Where the API also listens over TCP; `None`: only on the socket.
    pub api_address: Option<String>,
}

impl FleetConf {
    /// The settings of `file` (fleet.conf's text, `key=value` lines, `#` comments, values
    /// optionally quoted), then of `env` (`FLEET_<KEY>` pairs), over the defaults. Problems are
    /// returned beside the settings (the default is kept for a refused value): a daemon starts
    /// with what it can read and says what it could not.
    pub fn load(
        file: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> (FleetConf, Vec<String>) {
        let mut given: BTreeMap<&'static str, String> = BTreeMap::new();
        let mut problems = Vec::new();
        for (n, line) in file.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                problems.push(format!(
                    "{FLEET_CONF} line {}: {line:?} is not key=value",
                    n + 1
                ));
                continue;
            };
            match key(name) {
                Some(k) => {
                    given.insert(k.name, unquote(value));
                }
                None => problems.push(format!(
                    "{FLEET_CONF} line {}: unknown key {:?}, ignored",
                    n + 1,
                    name.trim()
                )),
            }
        }
        for (name, value) in env {
            if let Some(k) = name.strip_prefix("FLEET_").and_then(key) {
                given.insert(k.name, value);
            }
        }
        let mut get = |name: &'static str| -> String {
            let k = key(name).expect("a key of KEYS");
            match given.get(name) {
                Some(v) => match (check(k, v), k.support) {
                    (Err(e), _) => {
                        problems.push(format!("{e}; the default {:?} is used", k.default));
                        k.default.to_owned()
                    }
                    (Ok(()), Support::Ignored(why)) => {
                        if !v.is_empty() {
                            problems.push(format!("{name} is set but ignored: {why}"));
                        }
                        v.clone()
                    }
                    (Ok(()), Support::Yes) => v.clone(),
                },
                None => k.default.to_owned(),
            }
        };
        let conf = FleetConf {
            agent_ttl: duration(&get("agent_ttl")).unwrap_or(Duration::from_secs(30)),
            engine_reconcile_interval: seconds(&get("engine_reconcile_interval"))
                .unwrap_or(Duration::from_secs(2)),
            etcd_servers: list(&get("etcd_servers")),
            etcd_request_timeout: seconds(&get("etcd_request_timeout"))
                .unwrap_or(Duration::from_secs(5)),
            etcd_key_prefix: get("etcd_key_prefix"),
            metadata: metadata(&get("metadata")).unwrap_or_default(),
            public_ip: Some(get("public_ip")).filter(|ip| !ip.is_empty()),
            verbosity: get("verbosity").trim().parse().unwrap_or(0),
            disable_engine: boolean(&get("disable_engine")).unwrap_or(false),
            token_limit: get("token_limit").trim().parse().unwrap_or(100),
            units_directory: get("units_directory"),
            fence_on_lease_loss: boolean(&get("fence_on_lease_loss")).unwrap_or(true),
            api_address: Some(get("api_address")).filter(|a| !a.is_empty()),
        };
        for k in KEYS {
            if matches!(k.support, Support::Ignored(_)) {
                get(k.name);
            }
        }
        (conf, problems)
    }
}

fn unquote(value: &str) -> String {
    let v = value.trim();
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
        .to_owned()
}

/// `a,b`, or `["a","b"]` as fleet's sample config writes it.
pub fn list(value: &str) -> Vec<String> {
    value
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|s| s.trim().trim_matches('"').trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `k=v,k=v` as fleet reads it: spaces around `=` and `,` stripped, the last duplicate wins.
pub fn metadata(value: &str) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                map.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            _ => {
                return Err(format!(
                    "{pair:?} is not key=value (write metadata as \"k=v,k=v\")"
                ))
            }
        }
    }
    Ok(map)
}

fn seconds(value: &str) -> Option<Duration> {
    let s: f64 = value.trim().parse().ok()?;
    (s.is_finite() && s > 0.0).then(|| Duration::from_secs_f64(s))
}

fn boolean(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" => Some(true),
        "false" | "0" | "no" | "off" | "f" | "" => Some(false),
        _ => None,
    }
}

/// A Go duration (`30s`, `1m30s`, `500ms`) or a plain number of seconds.
fn duration(value: &str) -> Option<Duration> {
    if let Some(d) = seconds(value) {
        return Some(d);
    }
    crate::update_conf::duration_secs(value.trim())
        .map(Duration::from_secs)
        .filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_over_defaults() {
        let file = "# fleet.conf\nmetadata=\"region=eu, disk = ssd\"\netcd_servers=[\"http://10.0.0.1:2379\",\"http://10.0.0.2:2379\"]\nagent-ttl=60s\nbogus=1\n";
        let env = vec![
            ("FLEET_PUBLIC_IP".to_string(), "10.0.0.5".to_string()),
            (
                "FLEET_ENGINE_RECONCILE_INTERVAL".to_string(),
                "0.5".to_string(),
            ),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let (conf, problems) = FleetConf::load(file, env);
        assert_eq!(conf.agent_ttl, Duration::from_secs(60));
        assert_eq!(conf.engine_reconcile_interval, Duration::from_millis(500));
        assert_eq!(
            conf.etcd_servers,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(conf.public_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(conf.metadata.get("disk").map(String::as_str), Some("ssd"));
        assert_eq!(conf.etcd_key_prefix, "/_coreos.com/fleet/");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("line 5") && problems[0].contains("bogus"),
            "{problems:?}"
        );
    }

    #[test]
    fn bad_values_keep_the_default_and_say_so() {
        let (conf, problems) = FleetConf::load("agent_ttl=soon\netcd_cafile=/etc/ca.pem\n", []);
        assert_eq!(conf.agent_ttl, Duration::from_secs(30));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("agent_ttl") && problems[0].contains("30s"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("etcd_cafile") && problems[1].contains("ignored"),
            "{problems:?}"
        );
    }

    #[test]
    fn every_default_passes_its_own_check() {
        for k in KEYS {
            assert_eq!(check(k, k.default), Ok(()), "{}", k.name);
        }
        assert!(check(key("metadata").unwrap(), "region").is_err());
    }
}
