//! A worker's etcd: a proxy on the machine's client address to the cluster's members
//! (`proxy.rs`), so everything local that talks to etcd (the update agent's lock, fleet,
//! flannel, containers) works unchanged on a machine that runs no member.
//!
//! Why not etcd's `--proxy on`: that v2 proxy passes neither gRPC nor the JSON gateway's
//! streaming watches, which fleet and flannel live on; a layer-4 proxy passes bytes.
//!
//! This module finds the members: from the cloud-config's `initial-cluster` or discovery URL
//! (the members' peer URLs), then each member's client URLs from a peer's `/members`; and, while
//! the proxy runs, from the cluster's own member list, asked every little while, so a member
//! added or removed is followed.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::Client;

/// Where a worker's gateway listens unless `listen-client-urls` says otherwise: where a member
/// would, so local clients need no setting of their own.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2379";

/// How a worker finds the cluster's members, from etcd's own settings (`ETCD_*`, as kiln-config
/// writes them to `/etc/default/etcd`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// `host:port` the gateway listens on.
    pub listen: String,
    pub seeds: Seeds,
}

/// Where the members' peer URLs come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seeds {
    /// `initial-cluster`'s URLs.
    PeerUrls(Vec<String>),
    /// A discovery URL (an etcd v2 keys directory of `name=peerURL` registrations).
    Discovery(String),
}

/// Why the members could not be found (yet). Each message names what was asked and what to do.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Unreachable(String),
}

impl GatewayConfig {
    /// Reads etcd's settings (`ETCD_INITIAL_CLUSTER`, `ETCD_DISCOVERY`, `ETCD_LISTEN_CLIENT_URLS`)
    /// through `var`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<GatewayConfig, GatewayError> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let listen = match set("ETCD_LISTEN_CLIENT_URLS") {
            Some(urls) => {
                let first = urls.split(',').next().unwrap_or_default().trim();
                host_port(first).ok_or_else(|| {
                    GatewayError::Config(format!(
                        "listen-client-urls {first:?} is not an http://HOST:PORT URL; write one, \
                         or leave it out to listen on {DEFAULT_LISTEN}"
                    ))
                })?
            }
            None => DEFAULT_LISTEN.to_string(),
        };
        let seeds = match (set("ETCD_DISCOVERY"), set("ETCD_INITIAL_CLUSTER")) {
            (Some(url), _) => Seeds::Discovery(url.trim().trim_end_matches('/').to_string()),
            (None, Some(cluster)) => {
                let urls = peer_urls_of(&cluster);
                if urls.is_empty() {
                    return Err(GatewayError::Config(format!(
                        "initial-cluster {cluster:?} names no member; write NAME=http://HOST:2380 for each"
                    )));
                }
                Seeds::PeerUrls(urls)
            }
            (None, None) => {
                return Err(GatewayError::Config(
                    "an etcd proxy (`proxy: on`) needs the cluster's members: give `discovery` or \
                     `initial-cluster` in the cloud-config's etcd2 section"
                        .into(),
                ))
            }
        };
        Ok(GatewayConfig { listen, seeds })
    }
}

/// The URLs of `name=url,name=url` (etcd's `initial-cluster`, and the values of discovery
/// registrations).
pub(crate) fn peer_urls_of(list: &str) -> Vec<String> {
    list.split(',')
        .filter_map(|entry| entry.split_once('='))
        .map(|(_, url)| url.trim().trim_end_matches('/').to_string())
        .filter(|url| !url.is_empty())
        .collect()
}

/// `http://host:port[/]` → `host:port` (the gateway's endpoint form).
pub fn host_port(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?.trim_end_matches('/');
    (!rest.is_empty() && !rest.contains('/') && rest.contains(':')).then(|| rest.to_string())
}

/// An HTTP agent for the short questions asked of members and discovery services.
pub(crate) fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(timeout)
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// An answer's body as JSON.
pub(crate) fn json_of(answer: ureq::Response) -> Result<Value, String> {
    let text = answer.into_string().map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// The members' peer URLs, as `seeds` give them.
pub fn peer_urls(seeds: &Seeds, timeout: Duration) -> Result<Vec<String>, GatewayError> {
    let url = match seeds {
        Seeds::PeerUrls(urls) => return Ok(urls.clone()),
        Seeds::Discovery(url) => url,
    };
    let answer = match http_agent(timeout).get(url).call() {
        Ok(answer) => answer,
        Err(ureq::Error::Status(404, _)) => {
            return Err(GatewayError::Unreachable(format!(
                "discovery URL {url} does not exist (HTTP 404): check the URL, or make a token \
                 with `kiln-server discovery new`"
            )))
        }
        Err(e) => {
            return Err(GatewayError::Unreachable(format!(
                "discovery URL {url}: {e}"
            )))
        }
    };
    let body: Value = json_of(answer).map_err(|e| {
        GatewayError::Unreachable(format!(
            "discovery URL {url} did not answer with etcd's discovery JSON ({e}); check the URL"
        ))
    })?;
    let urls: Vec<String> = body
        .pointer("/node/nodes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|n| n.get("dir").and_then(Value::as_bool) != Some(true))
        .filter_map(|n| n.get("value").and_then(Value::as_str))
        .flat_map(peer_urls_of)
        .collect();
    if urls.is_empty() {
        return Err(GatewayError::Unreachable(format!(
            "discovery URL {url} has no member registered yet; the members register when they \
             first start"
        )));
    }
    Ok(urls)
}

/// The client URLs of the cluster's members, asked of the first peer URL that answers
/// (`GET <peer>/members`, which every member serves on its peer port).
pub fn client_urls(peers: &[String], timeout: Duration) -> Result<Vec<String>, GatewayError> {
    let http = http_agent(timeout);
    let mut reasons = Vec::new();
    for peer in peers {
        let url = format!("{peer}/members");
        match http.get(&url).call().map(json_of) {
            Ok(Ok(members)) => {
                let urls = urls_of_members(&members, "clientURLs");
                if !urls.is_empty() {
                    return Ok(urls);
                }
                reasons.push(format!("{url}: no member with a client URL"));
            }
            Ok(Err(e)) => reasons.push(format!("{url}: {e}")),
            Err(e) => reasons.push(format!("{url}: {e}")),
        }
    }
    Err(GatewayError::Unreachable(format!(
        "no member of the cluster answered ({})",
        reasons.join("; ")
    )))
}

/// The client URLs of the members now, asked of the cluster through `endpoints` (the v3
/// member list, which also answers through the gateway).
pub fn current_client_urls(
    endpoints: &[String],
    timeout: Duration,
) -> Result<Vec<String>, GatewayError> {
    let answer = Client::new(endpoints, timeout)
        .call("/v3/cluster/member/list", &json!({}))
        .map_err(|e| GatewayError::Unreachable(e.to_string()))?;
    let urls = urls_of_members(&answer["members"], "clientURLs");
    if urls.is_empty() {
        return Err(GatewayError::Unreachable(
            "the cluster's member list has no client URL".into(),
        ));
    }
    Ok(urls)
}

/// The URLs under `field` of every member in a JSON array, sorted and without duplicates.
fn urls_of_members(members: &Value, field: &str) -> Vec<String> {
    let set: BTreeSet<String> = members
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.get(field).and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str)
        .map(|u| u.trim_end_matches('/').to_string())
        .collect();
    set.into_iter().collect()
}

#[cfg(test)]
mod tests;
