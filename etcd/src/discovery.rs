//! What a discovery URL says about this machine, before its etcd member first starts: whether
//! the URL is a token at all, how many of its members have registered, and whether this machine
//! is one of them or finds the cluster full. etcd says the same in its own words, and retries or
//! exits; this says it once, in the terms of the cloud-config, in the member's journal and in
//! the cloud-config report.

use std::time::Duration;

use serde_json::Value;

use crate::gateway::{http_agent, json_of, peer_urls_of};

/// One registration: the member's name and its peer URLs (`name=url,name=url` in the value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// What the discovery URL answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The service did not answer; etcd retries by itself.
    Unreachable(String),
    /// The URL is not a token (or not a discovery service): etcd will not start.
    NotAToken(String),
    /// `registered` of `size`, this machine not among them; etcd waits for the rest.
    Waiting {
        size: usize,
        registered: Vec<Registration>,
    },
    /// This machine is among the first `size` registered.
    Registered {
        size: usize,
        registered: Vec<Registration>,
        me: String,
    },
    /// `size` are registered and this machine is not one of them: etcd refuses to start.
    Full {
        size: usize,
        registered: Vec<Registration>,
    },
}

/// Asks the token at `url` about the machine whose member advertises `my_peer_urls`.
pub fn check(url: &str, my_peer_urls: &[String], timeout: Duration) -> Finding {
    let url = url.trim_end_matches('/');
    let http = http_agent(timeout);
    let get = |u: &str| -> Result<Value, Finding> {
        match http.get(u).call() {
            Ok(answer) => json_of(answer).map_err(|e| {
                Finding::NotAToken(format!(
                    "{u} did not answer with etcd's discovery JSON ({e})"
                ))
            }),
            Err(ureq::Error::Status(status, _)) if status < 500 => {
                Err(Finding::NotAToken(format!("{u} answered HTTP {status}")))
            }
            Err(e) => Err(Finding::Unreachable(format!("{u}: {e}"))),
        }
    };
    let size = match get(&format!("{url}/_config/size")) {
        Ok(v) => v
            .pointer("/node/value")
            .and_then(Value::as_str)
            .and_then(|s| s.trim().parse::<usize>().ok()),
        Err(f) => return f,
    };
    let Some(size) = size.filter(|n| *n > 0) else {
        return Finding::NotAToken(format!("{url}/_config/size holds no cluster size"));
    };
    let dir = match get(url) {
        Ok(v) => v,
        Err(f) => return f,
    };
    // In the order they registered, as etcd counts them (the first `size` are the cluster).
    let mut nodes: Vec<&Value> = dir
        .pointer("/node/nodes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|n| n.get("dir").and_then(Value::as_bool) != Some(true))
        .collect();
    nodes.sort_by_key(|n| {
        n.get("createdIndex")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX)
    });
    let registered: Vec<Registration> = nodes
        .iter()
        .filter_map(|n| n.get("value").and_then(Value::as_str))
        .take(size)
        .map(|value| Registration {
            name: value.split('=').next().unwrap_or_default().to_string(),
            peer_urls: peer_urls_of(value),
        })
        .collect();
    let mine = |r: &Registration| r.peer_urls.iter().any(|u| my_peer_urls.contains(u));
    if let Some(me) = registered.iter().find(|r| mine(r)) {
        let me = me.name.clone();
        return Finding::Registered {
            size,
            registered,
            me,
        };
    }
    if registered.len() >= size {
        Finding::Full { size, registered }
    } else {
        Finding::Waiting { size, registered }
    }
}

fn names(registered: &[Registration]) -> String {
    registered
        .iter()
        .map(|r| format!("{} ({})", r.name, r.peer_urls.join(" ")))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Finding {
    /// One line for the journal and the report, naming the URL and what to do.
    pub fn message(&self, url: &str, my_peer_urls: &[String]) -> String {
        let me = my_peer_urls.join(" ");
        match self {
            Finding::Unreachable(e) => format!(
                "the discovery URL cannot be reached ({e}); etcd keeps trying. Check that this machine reaches {url}"
            ),
            Finding::NotAToken(e) => format!(
                "{e}: it is not a discovery token, and etcd will not start. Check the URL in the cloud-config's etcd2 section, or make a token with `kiln-server discovery new --size N`"
            ),
            Finding::Waiting { size, registered } => format!(
                "{} of the {size} members registered at {url}{}; etcd waits for {} more to start (a token made for more machines than the cluster has leaves it waiting: make one of the right size with `kiln-server discovery new --size N`)",
                registered.len(),
                if registered.is_empty() { String::new() } else { format!(" ({})", names(registered)) },
                size - registered.len()
            ),
            Finding::Registered { size, registered, me } => format!(
                "this machine is {me}, registered at {url} with {} of {size} members ({})",
                registered.len(),
                names(registered)
            ),
            Finding::Full { size, registered } => format!(
                "the cluster at {url} is full: its {size} members are {}, and this machine ({me}) is not one of them, so etcd refuses to start a member here. Make this machine a worker (`proxy: on`), or add it to the cluster as a new member (`etcdctl member add`, then `initial-cluster-state: existing` in its cloud-config)",
                names(registered)
            ),
        }
    }
}

#[cfg(test)]
mod tests;
