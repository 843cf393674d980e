//! Reboot strategies: when an installed update may reboot the machine. `immediate` and `off` need
//! nobody; `etcd-lock` and `fleetlock` take a cluster-wide lock first (one machine reboots at a time)
//! and give it back only once the rebooted machine is healthy. Any of them may add a window.

use std::io::Read;
use std::time::Duration;

use kiln_etcd::{Compare, Op};
use serde_json::{json, Value};

use crate::http::HttpError;
use kiln_contract::update_conf::Window;
use kiln_contract::update_conf::{RebootStrategy, Settings};

/// Why a lock could not be taken or given back.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{url} answered something that is not the expected JSON: {problem}")]
    Answer { url: String, problem: String },
    #[error(transparent)]
    Etcd(#[from] kiln_etcd::EtcdError),
    #[error("{} needs `{}` in {}", .0.as_str(), .0.required_key().unwrap_or("?"), kiln_contract::paths::UPDATE_CONF)]
    NotConfigured(RebootStrategy),
    #[error("lock_group {0:?} in {path}: FleetLock groups are letters, digits, `.` and `-` (e.g. \"default\")", path = kiln_contract::paths::UPDATE_CONF)]
    BadGroup(String),
}

/// A cluster-wide reboot lock.
pub trait RebootLock {
    /// Takes the lock for this machine: `true` if held now (also if it already was; a lock
    /// that expires is then renewed).
    fn acquire(&self) -> Result<bool, LockError>;
    /// Keeps a held lock from expiring: `false` if it is not this machine's any more. A lock
    /// that does not expire (FleetLock's) needs nothing.
    fn renew(&self) -> Result<bool, LockError> {
        Ok(true)
    }
    /// Gives it back, if this machine holds it.
    fn release(&self) -> Result<(), LockError>;
}

/// The configured strategy: whether to reboot at all, when, and under which lock.
pub struct Strategy {
    pub kind: RebootStrategy,
    pub window: Option<Window>,
    pub lock: Option<Box<dyn RebootLock>>,
}

impl Strategy {
    /// Builds the strategy of the config for machine `id`.
    pub fn from_config(
        config: &Settings,
        http: &ureq::Agent,
        id: &str,
    ) -> Result<Strategy, LockError> {
        let lock: Option<Box<dyn RebootLock>> = match config.reboot_strategy {
            RebootStrategy::Immediate | RebootStrategy::Off => None,
            RebootStrategy::EtcdLock => Some(Box::new(EtcdLock {
                etcd: kiln_etcd::Client::new(&config.etcd_endpoints, config.http_timeout),
                key: config.etcd_semaphore_key(),
                ttl: config.etcd_lock_ttl,
                holder: id.to_owned(),
                local_member: std::path::Path::new(kiln_contract::paths::ETCD_MEMBER_ENABLED)
                    .exists(),
            })),
            RebootStrategy::FleetLock if !fleetlock_group_ok(&config.lock_group) => {
                return Err(LockError::BadGroup(config.lock_group.clone()))
            }
            RebootStrategy::FleetLock => Some(Box::new(FleetLock {
                http: http.clone(),
                base: config
                    .fleetlock_url
                    .clone()
                    .ok_or(LockError::NotConfigured(RebootStrategy::FleetLock))?,
                group: config.lock_group.clone(),
                id: id.to_owned(),
            })),
        };
        Ok(Strategy {
            kind: config.reboot_strategy,
            window: config.window,
            lock,
        })
    }
}

/// A FleetLock group name as the protocol allows it: `^[a-zA-Z0-9.-]+$`.
pub fn fleetlock_group_ok(group: &str) -> bool {
    !group.is_empty()
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// etcd v3 (through its JSON gateway, `kiln-etcd`): a semaphore key created only if absent
/// (compare-and-swap on `create_revision == 0`) under a lease, holding the machine's id. The
/// lease's TTL frees the lock if the machine never comes back; while the agent runs, each
/// `acquire` of a lock it holds renews the lease (the agent asks at least every third of the
/// TTL while it holds it); a healthy machine deletes the key itself.
pub struct EtcdLock {
    pub etcd: kiln_etcd::Client,
    pub key: String,
    pub ttl: Duration,
    pub holder: String,
    /// Whether this machine runs a member. A worker's endpoint is its gateway, which passes each
    /// connection to any member: there is no member of its own to hand the leadership from.
    pub local_member: bool,
}

impl EtcdLock {
    /// With the lock held, this machine is about to install or reboot. If the etcd member the
    /// agent talks to (the first endpoint that answers: the machine's own member by default)
    /// leads the cluster, it hands the leadership to another voting member first, as an operator
    /// would with `etcdctl move-leader`: a leader starved by its machine's install, or gone with
    /// its reboot, costs the cluster an election and its writes meanwhile. Best effort: the
    /// update goes on without it, and says why.
    fn hand_off_leadership(&self) {
        match self.move_leader() {
            // In hex, as etcdctl shows member ids (the gateway writes them in decimal).
            Ok(Some(to)) => eprintln!(
                "etcd: this machine's member led the cluster; leadership handed to member {} before the update",
                to.parse::<u64>().map_or(to.clone(), |id| format!("{id:x}"))
            ),
            Ok(None) => {}
            Err(e) => eprintln!("etcd: could not hand this machine's leadership on ({e}); the update goes on"),
        }
    }

    /// Moves the leadership away from the answering member if it leads; the new leader's id.
    fn move_leader(&self) -> Result<Option<String>, LockError> {
        let status = self.etcd.call("/v3/maintenance/status", &json!({}))?;
        let me = status.get("header").and_then(|h| int_field(h, "member_id"));
        if me.is_none() || me != int_field(&status, "leader") {
            return Ok(None);
        }
        let members = self.etcd.call("/v3/cluster/member/list", &json!({}))?;
        let target = members
            .get("members")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            // The gateway leaves out false booleans: `isLearner` is there only when true.
            .filter(|m| m.get("isLearner").and_then(Value::as_bool) != Some(true))
            .filter_map(|m| int_field(m, "ID"))
            .find(|id| Some(id) != me.as_ref());
        let Some(target) = target else {
            return Ok(None);
        };
        self.etcd.call(
            "/v3/maintenance/transfer-leadership",
            &json!({ "targetID": target }),
        )?;
        Ok(Some(target))
    }
}

impl EtcdLock {
    /// Takes the key, or renews its lease if this machine holds it: whether it holds it now.
    fn take(&self) -> Result<bool, LockError> {
        let lease = self.etcd.grant(self.ttl)?;
        let answer = self.etcd.txn(
            &[Compare::CreateRevision(self.key.clone(), 0)],
            &[Op::put_leased(
                self.key.as_str(),
                self.holder.as_str(),
                lease,
            )],
            &[Op::get(self.key.as_str())],
        )?;
        let held = answer.succeeded || {
            // Best effort: the unused lease expires by itself anyway.
            let _ = self.etcd.revoke(lease);
            match answer.ranges.first().and_then(|kvs| kvs.first()) {
                // Ours already: its lease renewed, or it would free itself a TTL after it was
                // taken, whatever this machine is doing. Gone meanwhile: not held.
                Some(kv) if kv.value == self.holder.as_bytes() => {
                    kv.lease == 0 || self.etcd.keep_alive(kv.lease)?.is_some()
                }
                _ => false,
            }
        };
        Ok(held)
    }
}

impl RebootLock for EtcdLock {
    fn acquire(&self) -> Result<bool, LockError> {
        let held = self.take()?;
        if held && self.local_member {
            self.hand_off_leadership();
        }
        Ok(held)
    }

    /// Renewing hands no leadership on: the machine is not about to go away because of it.
    fn renew(&self) -> Result<bool, LockError> {
        self.take()
    }

    fn release(&self) -> Result<(), LockError> {
        self.etcd
            .txn(
                &[Compare::Value(
                    self.key.clone(),
                    self.holder.as_bytes().to_vec(),
                )],
                &[Op::delete(self.key.as_str())],
                &[],
            )
            .map(|_| ())
            .map_err(LockError::from)
    }
}

/// The FleetLock protocol (as Zincati speaks it to airlock): POST `/v1/pre-reboot` before the
/// reboot, `/v1/steady-state` once healthy, each with `fleet-lock-protocol: true`.
pub struct FleetLock {
    pub http: ureq::Agent,
    pub base: String,
    pub group: String,
    pub id: String,
}

impl FleetLock {
    fn post(&self, path: &str) -> Result<bool, LockError> {
        let url = format!("{}{path}", self.base.trim_end_matches('/'));
        let body = json!({ "client_params": { "group": self.group, "id": self.id } });
        match post_json(&self.http, &url, &body, &[("fleet-lock-protocol", "true")]) {
            Ok((200, _)) => Ok(true),
            // The protocol's success is 200 and nothing else.
            Ok((status, answer)) => Err(LockError::Answer {
                url,
                problem: format!("status {status} ({answer}); FleetLock's success is 200"),
            }),
            // A refusal (lock held by another machine) is a normal answer, not an error.
            Err(LockError::Http(HttpError::Status { status, .. })) if status < 500 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl RebootLock for FleetLock {
    fn acquire(&self) -> Result<bool, LockError> {
        self.post("/v1/pre-reboot")
    }

    fn release(&self) -> Result<(), LockError> {
        match self.post("/v1/steady-state")? {
            true => Ok(()),
            false => Err(LockError::Answer {
                url: format!("{}/v1/steady-state", self.base),
                problem: "the server refused to release the lock".into(),
            }),
        }
    }
}

/// POSTs JSON, returns the status and the parsed JSON answer (`null` when the body is empty).
fn post_json(
    http: &ureq::Agent,
    url: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Result<(u16, Value), LockError> {
    let mut request = http.post(url).set("Content-Type", "application/json");
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let answer = request
        .send_string(&body.to_string())
        .map_err(|e| HttpError::from_ureq("POST", url, e))?;
    let status = answer.status();
    let mut text = String::new();
    answer
        .into_reader()
        .take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|e| HttpError::from_io("POST", url, &e))?;
    if text.trim().is_empty() {
        return Ok((status, Value::Null));
    }
    let value = serde_json::from_str(&text).map_err(|e| LockError::Answer {
        url: url.to_owned(),
        problem: e.to_string(),
    })?;
    Ok((status, value))
}

/// An int64 field, which the gateway writes as a string.
fn int_field(value: &Value, name: &str) -> Option<String> {
    match value.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
