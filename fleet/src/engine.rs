//! The engine: on one machine at a time (the holder of the leader lease), it reads every job and
//! every live machine, decides with [`crate::schedule::reconcile`] where each job runs, and writes
//! the decisions, each write fenced by the leader key so that an engine which lost its lease
//! cannot schedule.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kiln_etcd::{Client, Compare, EtcdError, Kv, Op};
use serde::{Deserialize, Serialize};

use crate::job::Requirements;
use crate::name::UnitName;
use crate::registry::{
    fetch_units, job_records, machine_objects, to_json, Assignment, JobRecord, Layout, UnitCache,
    LAYOUT_VERSION, MAX_TXN_OPS,
};
use crate::schedule::{self, Job, TargetState, Task};
use crate::unit::UnitHash;

/// `P/lease/engine-leader`.
#[derive(Debug, Serialize, Deserialize)]
struct Leader {
    #[serde(rename = "MachineID")]
    machine_id: String,
    #[serde(rename = "Version")]
    version: u32,
}

/// What one pass did.
#[derive(Debug, Default, Clone)]
pub struct Pass {
    /// Whether this engine led (and so reconciled) in this pass.
    pub leading: bool,
    pub jobs: usize,
    pub machines: usize,
    pub scheduled: usize,
    pub unscheduled: usize,
    pub unschedulable: usize,
    /// Transactions written (leadership and reads not counted).
    pub txns: usize,
    /// Keys put or deleted by those transactions.
    pub keys_written: usize,
}

/// One machine's engine.
pub struct Engine {
    etcd: Client,
    layout: Layout,
    machine_id: String,
    /// The leader lease's TTL (fleet: 5 × the reconcile interval).
    lease_ttl: Duration,
    /// While leading: the lease and the leader key's create revision every write compares.
    leading: Option<(i64, i64)>,
    units: UnitCache,
    requirements: HashMap<String, (UnitHash, Result<Requirements, String>)>,
}

impl Engine {
    pub fn new(
        etcd: Client,
        prefix: &str,
        machine_id: &str,
        reconcile_interval: Duration,
    ) -> Engine {
        Engine {
            etcd,
            layout: Layout::new(prefix),
            machine_id: machine_id.to_owned(),
            lease_ttl: reconcile_interval * 5,
            leading: None,
            units: UnitCache::new(),
            requirements: HashMap::new(),
        }
    }

    pub fn is_leading(&self) -> bool {
        self.leading.is_some()
    }

    /// One pass: keep or take the leadership, and if held, reconcile.
    pub fn pass(&mut self) -> Result<Pass, EtcdError> {
        if !self.lead()? {
            return Ok(Pass::default());
        }
        let result = self.reconcile();
        if let Err(e) = &result {
            // Whether we still lead is checked again at the next pass.
            if !e.is_transient() {
                self.leading = None;
            }
        }
        result
    }

    /// Gives the leadership back (a graceful stop), so another engine takes over at once.
    pub fn resign(&mut self) {
        if let Some((lease, _)) = self.leading.take() {
            let _ = self.etcd.revoke(lease);
        }
    }

    /// Renews the lease if held, else tries to take it; whether this engine leads now.
    fn lead(&mut self) -> Result<bool, EtcdError> {
        if let Some((lease, _)) = self.leading {
            if self.etcd.keep_alive(lease)?.is_some() {
                return Ok(true);
            }
            eprintln!("fleet engine: the leader lease expired; no longer leading");
            self.leading = None;
        }
        let key = self.layout.leader();
        // Another engine leads: a read, not a lease and a transaction (writes through the
        // cluster's log) every pass of every follower.
        if self.etcd.get(&key)?.is_some() {
            return Ok(false);
        }
        let lease = self.etcd.grant(self.lease_ttl)?;
        let leader = Leader {
            machine_id: self.machine_id.clone(),
            version: LAYOUT_VERSION,
        };
        let answer = self.etcd.txn(
            &[Compare::CreateRevision(key.clone(), 0)],
            &[Op::put_leased(key, to_json(&leader), lease)],
            &[],
        )?;
        if answer.succeeded {
            eprintln!(
                "fleet engine: this machine ({}) leads the engine now",
                self.machine_id
            );
            self.leading = Some((lease, answer.revision));
            // A new leader trusts nothing it cached as a follower.
            self.requirements.clear();
            Ok(true)
        } else {
            let _ = self.etcd.revoke(lease);
            Ok(false)
        }
    }

    fn fence(&self) -> Compare {
        let revision = self.leading.map_or(-1, |(_, revision)| revision);
        Compare::CreateRevision(self.layout.leader(), revision)
    }

    fn reconcile(&mut self) -> Result<Pass, EtcdError> {
        // One consistent read of everything the decision needs.
        let read = self.etcd.txn(
            &[],
            &[
                Op::get_prefix(self.layout.jobs()),
                Op::get_prefix(self.layout.machines()),
                Op::get_prefix(self.layout.schedules()),
                Op::get_prefix(self.layout.globals()),
            ],
            &[],
        )?;
        let [jobs_kvs, machine_kvs, schedule_kvs, global_kvs]: [Vec<Kv>; 4] =
            read.ranges.try_into().map_err(|_| EtcdError::Answer {
                url: "/v3/kv/txn".into(),
                problem: "a read of four ranges answered with another number".into(),
            })?;
        let records = job_records(&self.layout, &jobs_kvs);
        let machines: Vec<_> = machine_objects(&self.layout, &machine_kvs)
            .iter()
            .map(|m| m.machine())
            .collect();
        self.load_units(&records)?;

        let mut jobs = Vec::new();
        let mut broken = BTreeMap::new();
        for (name, record) in &records {
            let Some(object) = &record.object else {
                continue;
            };
            match self.requirements_of(name, &object.unit_hash) {
                Ok(requirements) => jobs.push(Job {
                    name: name.clone(),
                    requirements,
                    target_state: record
                        .target_state
                        .as_deref()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(TargetState::Inactive),
                    target: record.target.clone(),
                }),
                Err(reason) => {
                    broken.insert(name.clone(), reason);
                }
            }
        }
        let tasks = schedule::reconcile(&machines, &jobs);

        let mut pass = Pass {
            leading: true,
            jobs: jobs.len(),
            machines: machines.len(),
            ..Pass::default()
        };
        // Unscheduling first: a job taken off a machine that went away is placed again in the
        // same pass, and its new target key is created only once the old one is gone.
        let mut unschedule = Vec::new();
        let mut place = Vec::new();
        let mut reasons: BTreeMap<String, String> = broken;
        for task in &tasks {
            match task {
                Task::Unschedule {
                    job,
                    machine,
                    reason,
                } => {
                    eprintln!("fleet engine: unscheduling {job} from {machine}: {reason}");
                    unschedule.push(Write {
                        compare: vec![Compare::Value(
                            self.layout.job_key(job, "target"),
                            machine.as_bytes().to_vec(),
                        )],
                        ops: vec![
                            Op::delete(self.layout.job_key(job, "target")),
                            Op::delete(self.layout.scheduled(machine, job)),
                        ],
                    });
                    pass.unscheduled += 1;
                }
                Task::Schedule { job, machine, .. } => {
                    let mut ops = vec![
                        Op::put(self.layout.job_key(job, "target"), machine.as_str()),
                        Op::put(
                            self.layout.scheduled(machine, job),
                            to_json(&assignment(&records[job])),
                        ),
                    ];
                    if records[job].reason.is_some() {
                        ops.push(Op::delete(self.layout.job_key(job, "reason")));
                    }
                    place.push(Write {
                        compare: vec![Compare::CreateRevision(
                            self.layout.job_key(job, "target"),
                            0,
                        )],
                        ops,
                    });
                    pass.scheduled += 1;
                }
                Task::Unschedulable { job, reason } => {
                    reasons.insert(job.clone(), reason.clone());
                }
            }
        }
        pass.unschedulable = reasons.len();
        let unplaced: std::collections::HashSet<&str> = tasks
            .iter()
            .filter_map(|t| match t {
                Task::Unschedule { job, .. } => Some(job.as_str()),
                _ => None,
            })
            .collect();

        // The agents' indexes follow the jobs: a changed desired state, a job destroyed, a
        // schedule entry whose job went elsewhere.
        let mut tidy = Vec::new();
        let mut wanted_schedule = BTreeMap::new();
        let mut wanted_global = BTreeMap::new();
        for job in &jobs {
            let record = &records[&job.name];
            if job.requirements.global {
                if job.target_state != TargetState::Inactive {
                    wanted_global
                        .insert(self.layout.global(&job.name), to_json(&assignment(record)));
                }
            } else if let Some(target) = &job.target {
                if !unplaced.contains(job.name.as_str()) {
                    wanted_schedule.insert(
                        self.layout.scheduled(target, &job.name),
                        to_json(&assignment(record)),
                    );
                }
            }
        }
        for (have, wanted) in [
            (&schedule_kvs, &wanted_schedule),
            (&global_kvs, &wanted_global),
        ] {
            for kv in have.iter() {
                match wanted.get(&kv.key) {
                    Some(value) if value.as_bytes() == kv.value => {}
                    Some(value) => tidy.push(Op::put(kv.key.clone(), value.clone())),
                    None => tidy.push(Op::delete(kv.key.clone())),
                }
            }
            let present: std::collections::HashSet<&str> =
                have.iter().map(|kv| kv.key.as_str()).collect();
            for (key, value) in wanted.iter() {
                if !present.contains(key.as_str()) {
                    tidy.push(Op::put(key.clone(), value.clone()));
                }
            }
        }
        // Reasons: written when they change, removed once a job is placed or gone.
        for (name, record) in &records {
            let reason = reasons.get(name);
            if record.object.is_none() {
                // Leftovers of a destroyed job (a target written while it was destroyed).
                tidy.push(Op::Delete {
                    key: self.layout.job(name),
                    prefix: true,
                });
            } else if reason != record.reason.as_ref() {
                match reason {
                    Some(reason) => {
                        eprintln!("fleet engine: {name} cannot be scheduled: {reason}");
                        tidy.push(Op::put(
                            self.layout.job_key(name, "reason"),
                            reason.as_str(),
                        ))
                    }
                    None if record.target.is_some()
                        || record.target_state.as_deref() == Some("inactive") =>
                    {
                        tidy.push(Op::delete(self.layout.job_key(name, "reason")))
                    }
                    None => {}
                }
            }
        }

        self.write(unschedule, &mut pass)?;
        self.write(place, &mut pass)?;
        let tidy: Vec<Write> = tidy
            .into_iter()
            .map(|op| Write {
                compare: Vec::new(),
                ops: vec![op],
            })
            .collect();
        self.write(tidy, &mut pass)?;
        Ok(pass)
    }

    /// Writes in as few fenced transactions as etcd allows; a batch whose own comparisons fail
    /// (someone else changed one of its keys) is written again one by one, and what still fails
    /// is left for the next pass.
    fn write(&mut self, writes: Vec<Write>, pass: &mut Pass) -> Result<(), EtcdError> {
        let mut batch: Vec<Write> = Vec::new();
        let mut ops = 0;
        let mut compares = 1;
        for w in writes {
            if ops + w.ops.len() > MAX_TXN_OPS || compares + w.compare.len() > MAX_TXN_OPS {
                self.commit(std::mem::take(&mut batch), pass)?;
                ops = 0;
                compares = 1;
            }
            ops += w.ops.len();
            compares += w.compare.len();
            batch.push(w);
        }
        self.commit(batch, pass)
    }

    fn commit(&mut self, batch: Vec<Write>, pass: &mut Pass) -> Result<(), EtcdError> {
        if batch.is_empty() {
            return Ok(());
        }
        let fence = self.fence();
        let mut compare = vec![fence.clone()];
        let mut ops = Vec::new();
        for w in &batch {
            compare.extend(w.compare.iter().cloned());
            ops.extend(w.ops.iter().cloned());
        }
        pass.txns += 1;
        if self.etcd.txn(&compare, &ops, &[])?.succeeded {
            pass.keys_written += ops.len();
            return Ok(());
        }
        for w in batch {
            let mut compare = vec![fence.clone()];
            compare.extend(w.compare);
            pass.txns += 1;
            if self.etcd.txn(&compare, &w.ops, &[])?.succeeded {
                pass.keys_written += w.ops.len();
            } else if !self.still_leading()? {
                eprintln!("fleet engine: another engine leads now; this one stops writing");
                self.leading = None;
                return Ok(());
            }
        }
        Ok(())
    }

    fn still_leading(&self) -> Result<bool, EtcdError> {
        let Some((_, revision)) = self.leading else {
            return Ok(false);
        };
        Ok(self
            .etcd
            .get(&self.layout.leader())?
            .is_some_and(|kv| kv.create_revision == revision))
    }

    /// Fetches the unit text of every hash not seen yet.
    fn load_units(&mut self, records: &BTreeMap<String, JobRecord>) -> Result<(), EtcdError> {
        let hashes = records
            .values()
            .filter_map(|r| r.object.as_ref()?.unit_hash.parse().ok());
        fetch_units(&self.etcd, &self.layout, &mut self.units, hashes)
    }

    /// A job's [X-Fleet] requirements, parsed once per unit content.
    fn requirements_of(&mut self, name: &str, hash: &str) -> Result<Requirements, String> {
        let hash: UnitHash = hash
            .parse()
            .map_err(|_| format!("its unit hash {hash:?} is not a SHA-1"))?;
        if let Some((cached, result)) = self.requirements.get(name) {
            if *cached == hash {
                return result.clone();
            }
        }
        let result = match self.units.get(&hash) {
            Some(Some(unit)) => UnitName::parse(name)
                .map_err(|e| e.to_string())
                .and_then(|n| Requirements::from_unit(&n, unit).map_err(|e| e.to_string()))
                .map(|(r, _warnings)| r),
            _ => Err(format!(
                "its unit {} is missing or does not parse",
                hash.hex_digits()
            )),
        };
        self.requirements
            .insert(name.to_owned(), (hash, result.clone()));
        result
    }
}

struct Write {
    compare: Vec<Compare>,
    ops: Vec<Op>,
}

fn assignment(record: &JobRecord) -> Assignment {
    Assignment {
        hash: record
            .object
            .as_ref()
            .map(|o| o.unit_hash.clone())
            .unwrap_or_default(),
        state: record
            .target_state
            .clone()
            .unwrap_or_else(|| "inactive".into()),
    }
}
