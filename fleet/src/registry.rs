//! fleet's state in etcd: where every key lives, what it holds, and the reads and writes the API,
//! the engine and the agents make. The one home of the key layout (under `etcd_key_prefix`, `P`):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `P/unit/<sha1>` | the unit's text (content-addressed, immutable) | API |
//! | `P/job/<name>/object` | `{"Name","UnitHash"}` | API |
//! | `P/job/<name>/target-state` | `inactive` \| `loaded` \| `launched` | API |
//! | `P/job/<name>/target` | the machine it is scheduled to | engine |
//! | `P/job/<name>/reason` | why it is not scheduled | engine |
//! | `P/schedule/<machine>/<name>` | `{"hash","state"}`: what that machine runs | engine |
//! | `P/global/<name>` | `{"hash","state"}`: a `Global=true` unit | engine |
//! | `P/machines/<machine>/object` | `{"ID","PublicIP","Metadata","Version"}` | agent, under its lease |
//! | `P/states/<name>/<machine>` | systemd's states of the unit there | agent, under its lease |
//! | `P/lease/engine-leader` | `{"MachineID","Version"}` | engine, under the leader lease |
//!
//! Every engine write is a transaction that also compares the leader key's revision with the one
//! the engine created: an engine that lost its lease cannot schedule anything (fencing).
//! `P/schedule/<machine>/` lets each agent read and watch only its own units.

use std::collections::BTreeMap;

use kiln_etcd::{Client, Compare, EtcdError, Kv, Op};
use serde::{Deserialize, Serialize};

use crate::schedule::{Machine, TargetState};
use crate::unit::{UnitFile, UnitHash};

/// fleet's default `etcd_key_prefix`.
pub const DEFAULT_PREFIX: &str = "/_coreos.com/fleet/";

/// Version of this layout, written with the leader key (fleet's engine version was 1).
pub const LAYOUT_VERSION: u32 = 1;

/// The keys under one prefix.
#[derive(Debug, Clone)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Layout {
        Layout {
            prefix: format!("/{}/", prefix.trim_matches('/')),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn unit(&self, hash: &UnitHash) -> String {
        format!("{}unit/{}", self.prefix, hash.hex_digits())
    }
    pub fn jobs(&self) -> String {
        format!("{}job/", self.prefix)
    }
    pub fn job(&self, name: &str) -> String {
        format!("{}job/{name}/", self.prefix)
    }
    pub fn job_key(&self, name: &str, field: &str) -> String {
        format!("{}job/{name}/{field}", self.prefix)
    }
    pub fn schedules(&self) -> String {
        format!("{}schedule/", self.prefix)
    }
    pub fn schedule(&self, machine: &str) -> String {
        format!("{}schedule/{machine}/", self.prefix)
    }
    pub fn scheduled(&self, machine: &str, name: &str) -> String {
        format!("{}schedule/{machine}/{name}", self.prefix)
    }
    pub fn globals(&self) -> String {
        format!("{}global/", self.prefix)
    }
    pub fn global(&self, name: &str) -> String {
        format!("{}global/{name}", self.prefix)
    }
    pub fn machines(&self) -> String {
        format!("{}machines/", self.prefix)
    }
    pub fn machine_object(&self, machine: &str) -> String {
        format!("{}machines/{machine}/object", self.prefix)
    }
    pub fn states(&self) -> String {
        format!("{}states/", self.prefix)
    }
    pub fn state(&self, name: &str, machine: &str) -> String {
        format!("{}states/{name}/{machine}", self.prefix)
    }
    pub fn leader(&self) -> String {
        format!("{}lease/engine-leader", self.prefix)
    }
}

/// `P/job/<name>/object`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobObject {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "UnitHash")]
    pub unit_hash: String,
}

/// `P/machines/<id>/object`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MachineObject {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "PublicIP")]
    pub public_ip: String,
    #[serde(rename = "Metadata", default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(rename = "Version", default)]
    pub version: String,
}

impl MachineObject {
    pub fn machine(&self) -> Machine {
        Machine {
            id: self.id.clone(),
            public_ip: self.public_ip.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

/// `P/schedule/<machine>/<name>` and `P/global/<name>`: what an agent needs to run a unit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Assignment {
    pub hash: String,
    pub state: String,
}

/// `P/states/<name>/<machine>`: systemd's view of a unit on one machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct UnitState {
    #[serde(rename = "loadState")]
    pub load_state: String,
    #[serde(rename = "activeState")]
    pub active_state: String,
    #[serde(rename = "subState")]
    pub sub_state: String,
    #[serde(rename = "unitHash")]
    pub unit_hash: String,
    /// What the agent brought the unit to: `loaded` or `launched` (fleet's `job-state`).
    #[serde(rename = "jobState", default)]
    pub job_state: String,
}

/// Everything known of one job, as read from `P/job/<name>/`.
#[derive(Debug, Clone, Default)]
pub struct JobRecord {
    pub object: Option<JobObject>,
    pub target_state: Option<String>,
    pub target: Option<String>,
    pub reason: Option<String>,
}

/// Groups the keys under `P/job/` by job name.
pub fn job_records(layout: &Layout, kvs: &[Kv]) -> BTreeMap<String, JobRecord> {
    let mut jobs: BTreeMap<String, JobRecord> = BTreeMap::new();
    let base = layout.jobs();
    for kv in kvs {
        let Some(rest) = kv.key.strip_prefix(&base) else {
            continue;
        };
        let Some((name, field)) = rest.rsplit_once('/') else {
            continue;
        };
        let record = jobs.entry(name.to_owned()).or_default();
        match field {
            "object" => record.object = serde_json::from_slice(&kv.value).ok(),
            "target-state" => record.target_state = Some(kv.text()),
            "target" => record.target = Some(kv.text()),
            "reason" => record.reason = Some(kv.text()),
            _ => {}
        }
    }
    jobs
}

/// The live machines, from the keys under `P/machines/`.
pub fn machine_objects(layout: &Layout, kvs: &[Kv]) -> Vec<MachineObject> {
    let base = layout.machines();
    kvs.iter()
        .filter(|kv| {
            kv.key
                .strip_prefix(&base)
                .is_some_and(|rest| rest.ends_with("/object") && rest.matches('/').count() == 1)
        })
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect()
}

/// Why a write to the registry was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("unit {0} already exists with different content: destroy it first, or submit it under another name")]
    Exists(String),
    #[error("unit {0} does not exist: submit it first (fleetctl submit)")]
    NotFound(String),
}

/// The registry's writes and reads made by the API (and so by fleetctl).
pub struct Registry {
    pub etcd: Client,
    pub layout: Layout,
}

impl Registry {
    pub fn new(etcd: Client, prefix: &str) -> Registry {
        Registry {
            etcd,
            layout: Layout::new(prefix),
        }
    }

    /// Creates a job with its unit (`inactive`), or leaves an identical one as it is; `true` when
    /// it was created. A different unit under the same name is refused: units are immutable.
    pub fn create(&self, name: &str, unit: &UnitFile) -> Result<bool, RegistryError> {
        let hash = unit.hash();
        let object = JobObject {
            name: name.to_owned(),
            unit_hash: hash.hex_digits(),
        };
        let object_key = self.layout.job_key(name, "object");
        let answer = self.etcd.txn(
            &[Compare::CreateRevision(object_key.clone(), 0)],
            &[
                Op::put(self.layout.unit(&hash), unit.serialize()),
                Op::put(object_key.clone(), to_json(&object)),
                Op::put(self.layout.job_key(name, "target-state"), "inactive"),
            ],
            &[Op::get(object_key)],
        )?;
        if answer.succeeded {
            return Ok(true);
        }
        let existing: Option<JobObject> = answer
            .ranges
            .first()
            .and_then(|kvs| kvs.first())
            .and_then(|kv| serde_json::from_slice(&kv.value).ok());
        match existing {
            Some(existing) if existing == object => Ok(false),
            _ => Err(RegistryError::Exists(name.to_owned())),
        }
    }

    /// Sets the state a job should be in.
    pub fn set_target_state(&self, name: &str, state: TargetState) -> Result<(), RegistryError> {
        let object_key = self.layout.job_key(name, "object");
        let answer = self.etcd.txn(
            &[Compare::CreateRevision(object_key, 0)],
            &[],
            &[Op::put(
                self.layout.job_key(name, "target-state"),
                state.as_str(),
            )],
        )?;
        // The comparison holds when the job does not exist.
        if answer.succeeded {
            return Err(RegistryError::NotFound(name.to_owned()));
        }
        Ok(())
    }

    /// Removes a job; the engine then takes it off its machine and the agent stops it there.
    pub fn destroy(&self, name: &str) -> Result<bool, RegistryError> {
        Ok(self.etcd.delete(&self.layout.job(name), true)? > 0)
    }

    /// Every job, by name.
    pub fn jobs(&self) -> Result<BTreeMap<String, JobRecord>, RegistryError> {
        let range = self.etcd.get_prefix(&self.layout.jobs())?;
        Ok(job_records(&self.layout, &range.kvs))
    }

    /// One job, as read from `P/job/<name>/` (empty when there is none).
    pub fn job(&self, name: &str) -> Result<JobRecord, RegistryError> {
        let range = self.etcd.get_prefix(&self.layout.job(name))?;
        Ok(job_records(&self.layout, &range.kvs)
            .remove(name)
            .unwrap_or_default())
    }

    /// The units of these jobs, read in batches.
    pub fn units_of<'a>(
        &self,
        records: impl Iterator<Item = &'a JobRecord>,
    ) -> Result<UnitCache, RegistryError> {
        let mut cache = UnitCache::new();
        let hashes = records.filter_map(|r| r.object.as_ref()?.unit_hash.parse().ok());
        fetch_units(&self.etcd, &self.layout, &mut cache, hashes)?;
        Ok(cache)
    }

    /// The unit text stored under a hash.
    pub fn unit(&self, hash: &UnitHash) -> Result<Option<String>, RegistryError> {
        Ok(self.etcd.get(&self.layout.unit(hash))?.map(|kv| kv.text()))
    }

    /// The live machines, by id.
    pub fn machines(&self) -> Result<Vec<MachineObject>, RegistryError> {
        let range = self.etcd.get_prefix(&self.layout.machines())?;
        Ok(machine_objects(&self.layout, &range.kvs))
    }

    /// Every published unit state (of one unit, when named): (unit, machine) → state.
    pub fn states(
        &self,
        unit: Option<&str>,
    ) -> Result<BTreeMap<(String, String), UnitState>, RegistryError> {
        let base = self.layout.states();
        let range = match unit {
            Some(name) => self.etcd.get_prefix(&format!("{base}{name}/"))?,
            None => self.etcd.get_prefix(&base)?,
        };
        Ok(range
            .kvs
            .iter()
            .filter_map(|kv| {
                let (name, machine) = kv.key.strip_prefix(&base)?.rsplit_once('/')?;
                let state = serde_json::from_slice(&kv.value).ok()?;
                Some(((name.to_owned(), machine.to_owned()), state))
            })
            .collect())
    }
}

/// Units are immutable and named by their hash: the cache every reader keeps of them (`None`
/// for a hash whose unit is missing or does not parse).
pub type UnitCache = std::collections::HashMap<UnitHash, Option<UnitFile>>;

/// etcd refuses a transaction with more operations than this on either side (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// Reads the units of `hashes` not in `cache` yet into it, in as few transactions as etcd takes.
pub fn fetch_units(
    etcd: &Client,
    layout: &Layout,
    cache: &mut UnitCache,
    hashes: impl Iterator<Item = UnitHash>,
) -> Result<(), EtcdError> {
    let mut missing: Vec<UnitHash> = hashes.filter(|h| !cache.contains_key(h)).collect();
    missing.sort_by_key(|h| h.0);
    missing.dedup();
    for chunk in missing.chunks(MAX_TXN_OPS) {
        let gets: Vec<Op> = chunk.iter().map(|h| Op::get(layout.unit(h))).collect();
        let answer = etcd.txn(&[], &gets, &[])?;
        for (hash, kvs) in chunk.iter().zip(answer.ranges) {
            let unit = kvs.first().and_then(|kv| UnitFile::parse(&kv.text()).ok());
            cache.insert(*hash, unit);
        }
    }
    Ok(())
}

/// Serializes a registry value (these types cannot fail to serialize).
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
