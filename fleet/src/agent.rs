//! The agent: on every machine, it keeps the machine present in the registry (its object under a
//! lease of `agent_ttl`), runs what the engine scheduled here plus the global units that apply,
//! and publishes systemd's view of each.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kiln_etcd::{Client, EtcdError, Op};

use crate::job::Requirements;
use crate::name::UnitName;
use crate::registry::{
    fetch_units, to_json, Assignment, Layout, MachineObject, UnitCache, UnitState, MAX_TXN_OPS,
};
use crate::schedule::{desired_on, Job, TargetState};
use crate::systemd::{Systemd, SystemdState};
use crate::unit::{UnitFile, UnitHash};

/// What one reconcile did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AgentPass {
    pub loaded: Vec<String>,
    pub unloaded: Vec<String>,
    pub started: Vec<String>,
    pub stopped: Vec<String>,
}

pub struct Agent {
    etcd: Client,
    layout: Layout,
    me: MachineObject,
    ttl: Duration,
    fence_on_lease_loss: bool,
    systemd: Box<dyn Systemd>,
    lease: Option<i64>,
    last_renewed: Instant,
    fenced: bool,
    /// Unit texts by hash (they never change).
    units: UnitCache,
    published: BTreeMap<String, UnitState>,
}

impl Agent {
    pub fn new(
        etcd: Client,
        prefix: &str,
        me: MachineObject,
        ttl: Duration,
        fence_on_lease_loss: bool,
        systemd: Box<dyn Systemd>,
    ) -> Agent {
        Agent {
            etcd,
            layout: Layout::new(prefix),
            me,
            ttl,
            fence_on_lease_loss,
            systemd,
            lease: None,
            last_renewed: Instant::now(),
            fenced: false,
            units: UnitCache::new(),
            published: BTreeMap::new(),
        }
    }

    pub fn machine_id(&self) -> &str {
        &self.me.id
    }

    /// Renews this machine's presence, or registers it again if its lease is gone. When it has
    /// not been renewed for `agent_ttl`, the engine is moving this machine's units elsewhere:
    /// with `fence_on_lease_loss` the agent stops them here, so none runs twice.
    pub fn heartbeat(&mut self) -> Result<(), EtcdError> {
        let result = self.renew();
        match &result {
            Ok(()) => {
                self.last_renewed = Instant::now();
                self.fenced = false;
            }
            Err(e) if self.last_renewed.elapsed() >= self.ttl && !self.fenced => {
                self.fenced = true;
                if self.fence_on_lease_loss {
                    eprintln!("fleet agent: this machine's presence could not be renewed for {} s ({e}); its units are being moved elsewhere, so they are stopped here", self.ttl.as_secs());
                    self.unload_all(false);
                }
            }
            Err(_) => {}
        }
        result
    }

    fn renew(&mut self) -> Result<(), EtcdError> {
        if let Some(lease) = self.lease {
            if self.etcd.keep_alive(lease)?.is_some() {
                return Ok(());
            }
            eprintln!("fleet agent: this machine's presence lease expired; registering again");
            self.lease = None;
        }
        let lease = self.etcd.grant(self.ttl)?;
        self.etcd.put(
            &self.layout.machine_object(&self.me.id),
            to_json(&self.me).as_bytes(),
            lease,
        )?;
        self.lease = Some(lease);
        // The states published under the old lease went with it.
        self.published.clear();
        eprintln!(
            "fleet agent: machine {} ({}) registered",
            self.me.id, self.me.public_ip
        );
        Ok(())
    }

    /// Brings systemd to what the registry wants of this machine, and publishes the states.
    pub fn reconcile(&mut self) -> Result<AgentPass, AgentError> {
        let Some(lease) = self.lease else {
            return Ok(AgentPass::default());
        };
        let read = self.etcd.txn(
            &[],
            &[
                Op::get_prefix(self.layout.schedule(&self.me.id)),
                Op::get_prefix(self.layout.globals()),
            ],
            &[],
        )?;
        let mut assigned: BTreeMap<String, (Assignment, bool)> = BTreeMap::new();
        for (kvs, base, global) in [
            (&read.ranges[0], self.layout.schedule(&self.me.id), false),
            (&read.ranges[1], self.layout.globals(), true),
        ] {
            for kv in kvs {
                let (Some(name), Ok(a)) = (
                    kv.key.strip_prefix(&base),
                    serde_json::from_slice::<Assignment>(&kv.value),
                ) else {
                    continue;
                };
                assigned.insert(name.to_owned(), (a, global));
            }
        }
        let hashes = assigned.values().filter_map(|(a, _)| a.hash.parse().ok());
        fetch_units(&self.etcd, &self.layout, &mut self.units, hashes)?;

        // What runs here: fleet's rules on the jobs this machine knows of.
        let mut jobs = Vec::new();
        for (name, (a, global)) in &assigned {
            let Some(requirements) = self.requirements(name, &a.hash) else {
                eprintln!(
                    "fleet agent: {name}: its unit {} is missing or invalid; not run",
                    a.hash
                );
                continue;
            };
            if requirements.global != *global {
                continue;
            }
            jobs.push(Job {
                name: name.clone(),
                requirements,
                target_state: a.state.parse().unwrap_or(TargetState::Inactive),
                target: (!global).then(|| self.me.id.clone()),
            });
        }
        let desired: BTreeMap<String, (TargetState, String)> =
            desired_on(&self.me.machine(), &jobs)
                .into_iter()
                .filter_map(|job| {
                    let hash: UnitHash = assigned[&job.name].0.hash.parse().ok()?;
                    let text = self.units.get(&hash)?.as_ref()?.serialize();
                    Some((job.name.clone(), (job.target_state, text)))
                })
                .collect();

        let mut pass = AgentPass::default();
        let loaded = self.systemd.loaded().map_err(AgentError::Systemd)?;
        for (name, text) in &loaded {
            if desired.get(name).is_none_or(|(_, want)| want != text) {
                match self.systemd.unload(name) {
                    Ok(()) => pass.unloaded.push(name.clone()),
                    Err(e) => eprintln!("fleet agent: unloading {name}: {e}"),
                }
            }
        }
        for (name, (_, text)) in &desired {
            if loaded.get(name) != Some(text) {
                match self.systemd.load(name, text) {
                    Ok(()) => pass.loaded.push(name.clone()),
                    Err(e) => eprintln!("fleet agent: loading {name}: {e}"),
                }
            }
        }
        if !pass.loaded.is_empty() || !pass.unloaded.is_empty() {
            if let Err(e) = self.systemd.reload() {
                eprintln!("fleet agent: {e}");
            }
        }
        let names: Vec<String> = desired.keys().cloned().collect();
        let states = self.systemd.states(&names).map_err(AgentError::Systemd)?;
        for (name, (state, _)) in &desired {
            let active = states.get(name).map_or("", |s| s.active.as_str());
            let running = matches!(active, "active" | "activating" | "reloading");
            let result = match state {
                TargetState::Launched if !running => self
                    .systemd
                    .start(name)
                    .map(|()| pass.started.push(name.clone())),
                TargetState::Loaded if running => self
                    .systemd
                    .stop(name)
                    .map(|()| pass.stopped.push(name.clone())),
                _ => Ok(()),
            };
            if let Err(e) = result {
                eprintln!("fleet agent: {name}: {e}");
            }
        }
        // Read again only where this pass started or stopped a unit: the states it just read
        // are what the machine runs otherwise.
        let states = if pass.started.is_empty() && pass.stopped.is_empty() {
            states
        } else {
            self.systemd.states(&names).map_err(AgentError::Systemd)?
        };
        self.publish(lease, &desired, &assigned, states)?;
        Ok(pass)
    }

    /// Writes the states that changed since the last pass; removes those of units gone.
    fn publish(
        &mut self,
        lease: i64,
        desired: &BTreeMap<String, (TargetState, String)>,
        assigned: &BTreeMap<String, (Assignment, bool)>,
        states: BTreeMap<String, SystemdState>,
    ) -> Result<(), AgentError> {
        let mut ops = Vec::new();
        let mut now = BTreeMap::new();
        for (name, (state, _)) in desired {
            let s = states.get(name).cloned().unwrap_or_default();
            let published = UnitState {
                load_state: s.load,
                active_state: s.active,
                sub_state: s.sub,
                unit_hash: assigned[name].0.hash.clone(),
                job_state: state.as_str().to_owned(),
            };
            if self.published.get(name) != Some(&published) {
                ops.push(Op::put_leased(
                    self.layout.state(name, &self.me.id),
                    to_json(&published),
                    lease,
                ));
            }
            now.insert(name.clone(), published);
        }
        for name in self.published.keys().filter(|n| !now.contains_key(*n)) {
            ops.push(Op::delete(self.layout.state(name, &self.me.id)));
        }
        for chunk in ops.chunks(MAX_TXN_OPS) {
            self.etcd.txn(&[], chunk, &[])?;
        }
        self.published = now;
        Ok(())
    }

    /// A graceful stop: every unit unloaded, the presence given up, so the engine moves this
    /// machine's units at once.
    pub fn leave(&mut self) {
        self.unload_all(true);
        if let Some(lease) = self.lease.take() {
            let _ = self.etcd.revoke(lease);
        }
    }

    fn unload_all(&mut self, globals_too: bool) {
        let Ok(loaded) = self.systemd.loaded() else {
            return;
        };
        let names: Vec<String> = loaded
            .keys()
            .filter(|name| {
                let global = UnitFile::parse(&loaded[name.as_str()]).ok().and_then(|u| {
                    let n = UnitName::parse(name).ok()?;
                    Requirements::from_unit(&n, &u).ok().map(|(r, _)| r.global)
                });
                globals_too || global != Some(true)
            })
            .cloned()
            .collect();
        let failed = self.systemd.unload_many(&names);
        for (name, e) in &failed {
            eprintln!("fleet agent: unloading {name}: {e}");
        }
        if failed.len() < names.len() {
            let _ = self.systemd.reload();
        }
    }

    fn requirements(&self, name: &str, hash: &str) -> Option<Requirements> {
        let hash: UnitHash = hash.parse().ok()?;
        let unit = self.units.get(&hash)?.as_ref()?;
        let name = UnitName::parse(name).ok()?;
        Requirements::from_unit(&name, unit).ok().map(|(r, _)| r)
    }
}

/// Why a reconcile could not be finished (it is tried again at the next one).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("systemd: {0}")]
    Systemd(String),
}
