//! The scheduler's decisions, as a pure function of the cluster's state: which units to take
//! off machines, which to put where, and why some cannot be placed. No I/O; the engine reads a
//! snapshot, calls [`reconcile`], and writes the tasks out in order.
//!
//! One pass, as fleet's engine does it:
//!
//! 1. Every scheduled unit is looked at where it is. It is unscheduled when its target state
//!    is `inactive`, when its machine is gone, or when that machine can no longer run it (see
//!    below: metadata changed, a conflict, its `MachineOf` unit left).
//! 2. Every unscheduled unit whose target state is not `inactive` is then placed on the least
//!    loaded machine able to run it, in the same pass, so a unit lost with its machine is
//!    placed again at once.
//!
//! A machine's load is the number of units scheduled on it plus the global units that apply
//! to it; ties go to the lower machine ID. Each decision updates the loads and the schedule, so
//! later decisions in the pass see earlier ones.
//!
//! A machine can run a unit when, checked in this order: its ID is the unit's `MachineID` (in
//! full or the 8-character short form); its metadata has every `MachineMetadata` key with one
//! of the allowed values; every `MachineOf` unit is already on it (a scheduled unit or a global
//! one applying there); and no unit on it conflicts with this one (either's `Conflicts` globs
//! matching the other's name, global units included).
//!
//! `Replaces`: when a machine that can run unit A holds a unit B that A replaces, A may take
//! that machine, and B moves to the least loaded other machine that can run it; if there is
//! none, B stays. A machine holding a unit that replaces A is skipped for A. Two units that
//! replace each other are left alone. A machine is picked for A by load as always: A lands
//! next to B (and pushes it off) only when that machine is the least loaded one able to run A.
//!
//! Global units are never scheduled: each machine's agent runs those whose metadata it
//! matches and that conflict with nothing it runs ([`desired_on`]).
//!
//! Order: scheduled units are checked, and unscheduled ones placed, by `MachineOf` depth (a
//! unit after the units it must follow) and then by name; machines are compared by load and
//! then ID. The same input always gives the same tasks in the same order.
//!
//! Cost: a pass indexes units per machine and keeps machines ordered by load, so checking a
//! machine looks only at the units on it; placing a unit is O(machines) at worst, and a pass
//! O(units × machines) at worst.
//!
//! Where this differs from fleet, on purpose:
//! - fleet visited units in hash-map order, so a `MachineOf` follower sometimes waited a pass
//!   for its unit, and which of two units that replace one another moved depended on luck;
//!   here the order is fixed (above), a follower is placed in the same pass as its unit, and it
//!   is always the *replaced* unit that moves;
//! - fleet moved a replaced unit to the least loaded other machine without checking that the
//!   machine could run it, which could make it bounce back and forth between passes; here it
//!   goes only to a machine that can run it, and in the same pass as its replacement arrives
//!   (fleet waited for the next pass);
//! - fleet counted a global unit whose target state is `inactive` in loads and conflicts,
//!   though no agent runs it; here only global units that are not `inactive` count, the same
//!   ones [`desired_on`] gives the agents.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use crate::job::Requirements;

/// How many characters of a machine ID make its short form.
pub const SHORT_ID_LEN: usize = 8;

/// A machine of the cluster, as its agent publishes itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Machine {
    /// The machine ID (`/etc/machine-id`, 32 hex digits).
    pub id: String,
    /// The address other machines and fleetctl reach it at.
    pub public_ip: String,
    /// Its metadata, `MachineMetadata=` is matched against.
    pub metadata: BTreeMap<String, String>,
}

impl Machine {
    /// The first 8 characters of the ID (the whole ID when it is shorter), as fleetctl shows it.
    pub fn short_id(&self) -> &str {
        match self.id.char_indices().nth(SHORT_ID_LEN) {
            Some((end, _)) => &self.id[..end],
            None => &self.id,
        }
    }

    /// Whether `id` names this machine, in full or in short form.
    pub fn matches_id(&self, id: &str) -> bool {
        self.id == id || self.short_id() == id
    }
}

/// The state a unit should be in: fleet's desired states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetState {
    /// Known to the cluster, on no machine.
    Inactive,
    /// On a machine and linked into its systemd, not started.
    Loaded,
    /// On a machine and started.
    Launched,
}

/// A string that is not `inactive`, `loaded` or `launched`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a target state: use inactive, loaded or launched")]
pub struct StateError(pub String);

impl TargetState {
    /// The name fleet uses: `inactive`, `loaded`, `launched`.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Inactive => "inactive",
            TargetState::Loaded => "loaded",
            TargetState::Launched => "launched",
        }
    }
}

impl fmt::Display for TargetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TargetState {
    type Err = StateError;

    fn from_str(s: &str) -> Result<Self, StateError> {
        match s {
            "inactive" => Ok(TargetState::Inactive),
            "loaded" => Ok(TargetState::Loaded),
            "launched" => Ok(TargetState::Launched),
            other => Err(StateError(other.to_string())),
        }
    }
}

/// A submitted unit as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The unit's name.
    pub name: String,
    /// Its `[X-Fleet]` requirements.
    pub requirements: Requirements,
    /// Its desired state.
    pub target_state: TargetState,
    /// The machine ID it is scheduled to, if any.
    pub target: Option<String>,
}

impl Job {
    /// Whether the unit should be on a machine (its target state is not `inactive`).
    pub fn is_active(&self) -> bool {
        self.target_state != TargetState::Inactive
    }

    fn conflicts_with(&self, other: &Job) -> bool {
        self.requirements
            .conflicts_with(&self.name, &other.requirements, &other.name)
    }
}

/// One decision of a pass, to be carried out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// Take `job` off `machine` (clear its target if it is still `machine`).
    Unschedule {
        /// The unit.
        job: String,
        /// The machine ID it was scheduled to.
        machine: String,
        /// Why, for the engine's log.
        reason: String,
    },
    /// Put `job` on `machine` (set its target).
    Schedule {
        /// The unit.
        job: String,
        /// The machine ID.
        machine: String,
        /// Why, for the engine's log.
        reason: String,
    },
    /// `job` should run but no machine can take it now; it stays unscheduled.
    Unschedulable {
        /// The unit.
        job: String,
        /// Why, in words for `fleetctl` and the log.
        reason: String,
    },
}

impl Task {
    /// The unit the task is about.
    pub fn job(&self) -> &str {
        match self {
            Task::Unschedule { job, .. }
            | Task::Schedule { job, .. }
            | Task::Unschedulable { job, .. } => job,
        }
    }

    /// Why the task was decided.
    pub fn reason(&self) -> &str {
        match self {
            Task::Unschedule { reason, .. }
            | Task::Schedule { reason, .. }
            | Task::Unschedulable { reason, .. } => reason,
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Task::Unschedule {
                job,
                machine,
                reason,
            } => write!(f, "unschedule {job} from {machine}: {reason}"),
            Task::Schedule {
                job,
                machine,
                reason,
            } => write!(f, "schedule {job} to {machine}: {reason}"),
            Task::Unschedulable { job, reason } => write!(f, "cannot schedule {job}: {reason}"),
        }
    }
}

/// One engine pass over `machines` and `jobs` (see the module documentation). Machines and
/// jobs may come in any order; for a repeated machine ID or unit name the first one counts.
pub fn reconcile(machines: &[Machine], jobs: &[Job]) -> Vec<Task> {
    Pass::new(machines, jobs).run()
}

/// What one machine's agent should run: the non-global units scheduled to it whose target
/// state is not `inactive`, and the global units (not `inactive`) whose metadata it matches and
/// that conflict neither with those units nor with a global unit taken before them (by name).
/// Sorted by name.
pub fn desired_on<'a>(machine: &Machine, jobs: &'a [Job]) -> Vec<&'a Job> {
    let mut seen = HashSet::new();
    let unique: Vec<&Job> = jobs
        .iter()
        .filter(|j| seen.insert(j.name.as_str()))
        .collect();
    let mut desired: Vec<&Job> = unique
        .iter()
        .copied()
        .filter(|j| {
            !j.requirements.global
                && j.is_active()
                && j.target.as_deref() == Some(machine.id.as_str())
        })
        .collect();
    let mut globals: Vec<&Job> = unique
        .iter()
        .copied()
        .filter(|j| {
            j.requirements.global
                && j.is_active()
                && j.requirements.metadata_matches(&machine.metadata)
        })
        .collect();
    globals.sort_by(|a, b| a.name.cmp(&b.name));
    for global in globals {
        if !desired.iter().any(|other| global.conflicts_with(other)) {
            desired.push(global);
        }
    }
    desired.sort_by(|a, b| a.name.cmp(&b.name));
    desired
}

/// Why a machine cannot take a unit, in the order the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal<'a> {
    MachineId,
    Metadata,
    Peer(&'a str),
    Conflict(&'a str),
    /// A unit on the machine replaces this one.
    ReplacedBy(&'a str),
}

impl Refusal<'_> {
    fn rank(self) -> u8 {
        match self {
            Refusal::MachineId => 0,
            Refusal::Metadata => 1,
            Refusal::Peer(_) => 2,
            Refusal::Conflict(_) => 3,
            Refusal::ReplacedBy(_) => 4,
        }
    }
}

/// What a machine says to a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict<'a> {
    Able,
    /// Able, and the unit replaces this scheduled job there.
    Replaces(usize),
    Refused(Refusal<'a>),
}

/// What is on one machine during a pass.
#[derive(Debug, Default)]
struct Slot {
    /// Scheduled non-global jobs (indices in name order).
    jobs: BTreeSet<usize>,
    /// Global units applying here, in name order.
    globals: Vec<usize>,
    /// Scheduled jobs here with `Conflicts`.
    jobs_with_conflicts: usize,
    /// Global units here with `Conflicts`.
    globals_with_conflicts: usize,
    /// Scheduled jobs here with `Replaces`.
    jobs_with_replaces: usize,
}

impl Slot {
    fn load(&self) -> usize {
        self.jobs.len() + self.globals.len()
    }
}

/// The state of one pass: the snapshot, indexed, and the schedule as decided so far.
struct Pass<'a> {
    /// Machines by ID, ascending; an index into this is a machine.
    machines: Vec<&'a Machine>,
    by_id: HashMap<&'a str, usize>,
    by_short: HashMap<&'a str, Vec<usize>>,
    /// Non-global jobs by name; an index into this is a job.
    jobs: Vec<&'a Job>,
    job_index: HashMap<&'a str, usize>,
    /// Global jobs that are not inactive, by name.
    globals: Vec<&'a Job>,
    global_index: HashMap<&'a str, usize>,
    /// Global jobs that have a stale target.
    targeted_globals: Vec<&'a Job>,
    /// Per machine: the globals whose metadata it matches.
    global_candidates: Vec<Vec<usize>>,
    /// Per job: whether it conflicts with some global unit (its placement can change which
    /// globals apply to a machine).
    touches_globals: Vec<bool>,
    /// Per job: the machine it is on now.
    target: Vec<Option<usize>>,
    slots: Vec<Slot>,
    /// (load, machine), ascending: the least loaded machine first, ties by ID.
    order: BTreeSet<(usize, usize)>,
    tasks: Vec<Task>,
}

impl<'a> Pass<'a> {
    fn new(machine_list: &'a [Machine], job_list: &'a [Job]) -> Pass<'a> {
        let mut machines: Vec<&Machine> = machine_list.iter().collect();
        machines.sort_by(|a, b| a.id.cmp(&b.id));
        machines.dedup_by(|later, first| later.id == first.id);
        let by_id: HashMap<&str, usize> = machines
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.as_str(), i))
            .collect();
        let mut by_short: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, m) in machines.iter().enumerate() {
            by_short.entry(m.short_id()).or_default().push(i);
        }

        let mut seen = HashSet::new();
        let mut jobs: Vec<&Job> = Vec::new();
        let mut globals: Vec<&Job> = Vec::new();
        let mut targeted_globals: Vec<&Job> = Vec::new();
        for job in job_list.iter().filter(|j| seen.insert(j.name.as_str())) {
            if !job.requirements.global {
                jobs.push(job);
                continue;
            }
            if job.target.is_some() {
                targeted_globals.push(job);
            }
            if job.is_active() {
                globals.push(job);
            }
        }
        jobs.sort_by(|a, b| a.name.cmp(&b.name));
        globals.sort_by(|a, b| a.name.cmp(&b.name));
        targeted_globals.sort_by(|a, b| a.name.cmp(&b.name));
        let job_index = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.name.as_str(), i))
            .collect();
        let global_index = globals
            .iter()
            .enumerate()
            .map(|(i, j)| (j.name.as_str(), i))
            .collect();

        let global_candidates = machines
            .iter()
            .map(|m| {
                (0..globals.len())
                    .filter(|&g| globals[g].requirements.metadata_matches(&m.metadata))
                    .collect()
            })
            .collect();
        let any_global_conflicts = globals.iter().any(|g| !g.requirements.conflicts.is_empty());
        let touches_globals = jobs
            .iter()
            .map(|j| {
                (any_global_conflicts || !j.requirements.conflicts.is_empty())
                    && globals.iter().any(|g| j.conflicts_with(g))
            })
            .collect();

        let mut pass = Pass {
            target: vec![None; jobs.len()],
            slots: machines.iter().map(|_| Slot::default()).collect(),
            machines,
            by_id,
            by_short,
            jobs,
            job_index,
            globals,
            global_index,
            targeted_globals,
            global_candidates,
            touches_globals,
            order: BTreeSet::new(),
            tasks: Vec::new(),
        };
        // The schedule as it stands: active jobs on machines that exist.
        for ji in 0..pass.jobs.len() {
            let job = pass.jobs[ji];
            if !job.is_active() {
                continue;
            }
            if let Some(&mi) = job.target.as_deref().and_then(|t| pass.by_id.get(t)) {
                pass.target[ji] = Some(mi);
                let slot = &mut pass.slots[mi];
                slot.jobs.insert(ji);
                slot.jobs_with_conflicts += usize::from(!job.requirements.conflicts.is_empty());
                slot.jobs_with_replaces += usize::from(!job.requirements.replaces.is_empty());
            }
        }
        for mi in 0..pass.machines.len() {
            pass.apply_globals(mi);
            pass.order.insert((pass.slots[mi].load(), mi));
        }
        pass
    }

    /// Works out which globals apply to machine `mi` from what is scheduled there: in name
    /// order, those whose metadata it matches and that conflict with none of its jobs nor with
    /// a global taken before. Does not touch `order`.
    fn apply_globals(&mut self, mi: usize) {
        let slot = &self.slots[mi];
        let mut chosen: Vec<usize> = Vec::new();
        for &gi in &self.global_candidates[mi] {
            let global = self.globals[gi];
            let blocked = slot
                .jobs
                .iter()
                .any(|&ji| global.conflicts_with(self.jobs[ji]))
                || chosen
                    .iter()
                    .any(|&other| global.conflicts_with(self.globals[other]));
            if !blocked {
                chosen.push(gi);
            }
        }
        let with_conflicts = chosen
            .iter()
            .filter(|&&g| !self.globals[g].requirements.conflicts.is_empty())
            .count();
        let slot = &mut self.slots[mi];
        slot.globals = chosen;
        slot.globals_with_conflicts = with_conflicts;
    }

    /// Adds (`add`) or removes job `ji` on machine `mi`, keeping loads, counts and globals.
    fn change(&mut self, ji: usize, mi: usize, add: bool) {
        let before = self.slots[mi].load();
        let requirements = &self.jobs[ji].requirements;
        let with_conflicts = usize::from(!requirements.conflicts.is_empty());
        let with_replaces = usize::from(!requirements.replaces.is_empty());
        let slot = &mut self.slots[mi];
        if add {
            slot.jobs.insert(ji);
            slot.jobs_with_conflicts += with_conflicts;
            slot.jobs_with_replaces += with_replaces;
            self.target[ji] = Some(mi);
        } else {
            slot.jobs.remove(&ji);
            slot.jobs_with_conflicts -= with_conflicts;
            slot.jobs_with_replaces -= with_replaces;
            self.target[ji] = None;
        }
        if self.touches_globals[ji] {
            self.apply_globals(mi);
        }
        let after = self.slots[mi].load();
        if before != after {
            self.order.remove(&(before, mi));
            self.order.insert((after, mi));
        }
    }

    fn place(&mut self, ji: usize, mi: usize, reason: String) {
        self.change(ji, mi, true);
        let task = Task::Schedule {
            job: self.jobs[ji].name.clone(),
            machine: self.machines[mi].id.clone(),
            reason,
        };
        self.tasks.push(task);
    }

    fn unplace(&mut self, ji: usize, reason: String) {
        let Some(mi) = self.target[ji] else { return };
        self.change(ji, mi, false);
        let task = Task::Unschedule {
            job: self.jobs[ji].name.clone(),
            machine: self.machines[mi].id.clone(),
            reason,
        };
        self.tasks.push(task);
    }

    /// Whether the unit `name` is on machine `mi`: a job scheduled there or a global applying.
    fn is_on(&self, name: &str, mi: usize) -> bool {
        if let Some(&ji) = self.job_index.get(name) {
            return self.target[ji] == Some(mi);
        }
        if let Some(&gi) = self.global_index.get(name) {
            return self.slots[mi].globals.contains(&gi);
        }
        false
    }

    /// Whether machine `mi` can run job `ji` (which may already be there).
    fn able(&self, ji: usize, mi: usize) -> Verdict<'a> {
        let job = self.jobs[ji];
        let req = &job.requirements;
        let machine = self.machines[mi];
        if let Some(id) = &req.machine_id {
            if !machine.matches_id(id) {
                return Verdict::Refused(Refusal::MachineId);
            }
        }
        if !req.metadata_matches(&machine.metadata) {
            return Verdict::Refused(Refusal::Metadata);
        }
        if let Some(peer) = req.machine_of.iter().find(|peer| !self.is_on(peer, mi)) {
            return Verdict::Refused(Refusal::Peer(peer));
        }
        let slot = &self.slots[mi];
        if !req.conflicts.is_empty()
            || slot.jobs_with_conflicts > 0
            || slot.globals_with_conflicts > 0
        {
            for &other in slot.jobs.iter().filter(|&&other| other != ji) {
                if job.conflicts_with(self.jobs[other]) {
                    return Verdict::Refused(Refusal::Conflict(&self.jobs[other].name));
                }
            }
            for &gi in &slot.globals {
                if job.conflicts_with(self.globals[gi]) {
                    return Verdict::Refused(Refusal::Conflict(&self.globals[gi].name));
                }
            }
        }
        if !req.replaces.is_empty() || slot.jobs_with_replaces > 0 {
            for &other in slot.jobs.iter().filter(|&&other| other != ji) {
                let other_job = self.jobs[other];
                let mine = req
                    .replaces
                    .iter()
                    .any(|p| crate::job::glob_match(p, &other_job.name));
                let theirs = other_job
                    .requirements
                    .replaces
                    .iter()
                    .any(|p| crate::job::glob_match(p, &job.name));
                match (mine, theirs) {
                    (true, false) => return Verdict::Replaces(other),
                    (false, true) => return Verdict::Refused(Refusal::ReplacedBy(&other_job.name)),
                    _ => {}
                }
            }
        }
        Verdict::Able
    }

    /// The machines that may take job `ji`, least loaded first: the ones its `MachineID`
    /// names, or all.
    fn candidates(&self, ji: usize) -> Vec<usize> {
        match &self.jobs[ji].requirements.machine_id {
            Some(id) => {
                let mut named: Vec<usize> =
                    self.by_id.get(id.as_str()).copied().into_iter().collect();
                named.extend(
                    self.by_short
                        .get(id.as_str())
                        .into_iter()
                        .flatten()
                        .copied(),
                );
                named.sort_by_key(|&mi| (self.slots[mi].load(), mi));
                named.dedup();
                named
            }
            None => Vec::new(),
        }
    }

    /// The least loaded machine that can take unscheduled job `ji`, and the job it replaces
    /// there if any; or, when none can, every refusal met (for [`explain`](Self::explain)).
    fn decide(&self, ji: usize) -> Result<(usize, Option<usize>), Vec<Refusal<'a>>> {
        let mut refusals = Vec::new();
        let mut pick = |mi: usize| match self.able(ji, mi) {
            Verdict::Able => Some((mi, None)),
            Verdict::Replaces(other) => Some((mi, Some(other))),
            Verdict::Refused(refusal) => {
                refusals.push(refusal);
                None
            }
        };
        let found = if self.jobs[ji].requirements.machine_id.is_some() {
            self.candidates(ji).into_iter().find_map(pick)
        } else {
            self.order.iter().find_map(|&(_, mi)| pick(mi))
        };
        found.ok_or(refusals)
    }

    /// Moves job `ji`, replaced by `winner` on machine `mi`, to the least loaded other machine
    /// that can run it. Leaves it where it is when there is none.
    fn displace(&mut self, ji: usize, winner: usize, mi: usize) {
        let destination = self
            .order
            .iter()
            .map(|&(_, other)| other)
            .find(|&other| other != mi && self.able(ji, other) == Verdict::Able);
        let Some(destination) = destination else {
            return;
        };
        let winner = self.jobs[winner].name.clone();
        let short = self.machines[mi].short_id().to_string();
        self.unplace(ji, format!("replaced by {winner} on {short}"));
        self.place(
            ji,
            destination,
            format!("moved off {short}, where {winner} replaces it"),
        );
    }

    /// Jobs in the order a pass visits them: by `MachineOf` depth (a unit after the units it
    /// follows), then by name. Units in a `MachineOf` cycle count the cycle as no depth.
    fn visit_order(&self) -> Vec<usize> {
        const NEW: u8 = 0;
        const OPEN: u8 = 1;
        const DONE: u8 = 2;
        let n = self.jobs.len();
        let mut state = vec![NEW; n];
        let mut depth = vec![0usize; n];
        let peers_of = |ji: usize| {
            self.jobs[ji]
                .requirements
                .machine_of
                .iter()
                .filter_map(|p| self.job_index.get(p.as_str()).copied())
        };
        for start in 0..n {
            if state[start] != NEW || self.jobs[start].requirements.machine_of.is_empty() {
                continue;
            }
            state[start] = OPEN;
            let mut stack = vec![(start, 0usize)];
            while let Some(top) = stack.last_mut() {
                let (ji, next) = *top;
                if let Some(peer) = peers_of(ji).nth(next) {
                    top.1 += 1;
                    if state[peer] == NEW {
                        state[peer] = OPEN;
                        stack.push((peer, 0));
                    }
                } else {
                    depth[ji] = peers_of(ji)
                        .filter(|&p| state[p] == DONE)
                        .map(|p| depth[p] + 1)
                        .max()
                        .unwrap_or(0);
                    state[ji] = DONE;
                    stack.pop();
                }
            }
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&ji| (depth[ji], ji));
        order
    }

    fn run(mut self) -> Vec<Task> {
        for global in std::mem::take(&mut self.targeted_globals) {
            self.tasks.push(Task::Unschedule {
                job: global.name.clone(),
                machine: global.target.clone().unwrap_or_default(),
                reason: "a global unit is not scheduled: every machine it applies to runs it"
                    .to_string(),
            });
        }
        let order = self.visit_order();

        // 1. Scheduled units, where they are.
        for &ji in &order {
            let job = self.jobs[ji];
            let Some(target) = job.target.as_deref() else {
                continue;
            };
            if !job.is_active() {
                self.tasks.push(Task::Unschedule {
                    job: job.name.clone(),
                    machine: target.to_string(),
                    reason: "target state inactive".to_string(),
                });
                continue;
            }
            if !self.by_id.contains_key(target) {
                self.tasks.push(Task::Unschedule {
                    job: job.name.clone(),
                    machine: target.to_string(),
                    reason: format!("machine {target} went away"),
                });
                continue;
            }
            // Where it is now: an earlier replacement in this pass may have moved it.
            let Some(mi) = self.target[ji] else { continue };
            match self.able(ji, mi) {
                Verdict::Able => {}
                Verdict::Replaces(other) => self.displace(other, ji, mi),
                Verdict::Refused(Refusal::ReplacedBy(winner)) => {
                    let winner = self.job_index[winner];
                    self.displace(ji, winner, mi);
                }
                Verdict::Refused(refusal) => {
                    let reason = format!(
                        "machine {} can no longer run it: {}",
                        self.machines[mi].short_id(),
                        self.refusal_text(ji, refusal)
                    );
                    self.unplace(ji, reason);
                }
            }
        }

        // 2. Unscheduled units that should run.
        for &ji in &order {
            let job = self.jobs[ji];
            if self.target[ji].is_some() || !job.is_active() {
                continue;
            }
            match self.decide(ji) {
                Ok((mi, replaced)) => {
                    if let Some(replaced) = replaced {
                        self.displace(replaced, ji, mi);
                    }
                    self.place(
                        ji,
                        mi,
                        format!("target state {} and unit not scheduled", job.target_state),
                    );
                }
                Err(refusals) => {
                    let reason = self.explain(ji, &refusals);
                    self.tasks.push(Task::Unschedulable {
                        job: job.name.clone(),
                        reason,
                    });
                }
            }
        }
        self.tasks
    }

    /// A refusal in words, for a job already on a machine.
    fn refusal_text(&self, ji: usize, refusal: Refusal<'_>) -> String {
        let req = &self.jobs[ji].requirements;
        match refusal {
            Refusal::MachineId => {
                format!("MachineID is {}", req.machine_id.as_deref().unwrap_or(""))
            }
            Refusal::Metadata => format!("its metadata does not match {}", req.metadata_text()),
            Refusal::Peer(peer) => format!("MachineOf unit {peer} is not on it"),
            Refusal::Conflict(other) => format!("conflicts with {other}"),
            Refusal::ReplacedBy(other) => format!("replaced by {other}"),
        }
    }

    /// Why no machine can take job `ji`, from the refusals of the machines it was tried on
    /// (those its `MachineID` names, or all): the check that failed furthest along.
    fn explain(&self, ji: usize, refusals: &[Refusal<'_>]) -> String {
        if self.machines.is_empty() {
            return "no machine is in the cluster".to_string();
        }
        let req = &self.jobs[ji].requirements;
        let rank = refusals.iter().map(|r| r.rank()).max();
        let furthest: Vec<Refusal<'_>> = refusals
            .iter()
            .copied()
            .filter(|r| Some(r.rank()) == rank)
            .collect();
        let deepest = furthest.first().copied();
        let reached = furthest.len();
        let names: BTreeSet<&str> = furthest
            .iter()
            .filter_map(|r| match *r {
                Refusal::Conflict(name) | Refusal::ReplacedBy(name) => Some(name),
                _ => None,
            })
            .collect();
        let everywhere = if reached == self.machines.len() {
            "on every machine"
        } else {
            "on every machine that meets its other requirements"
        };
        let list = |names: &BTreeSet<&str>| {
            let shown: Vec<&str> = names.iter().copied().take(3).collect();
            match names.len() {
                0..=3 => shown.join(", "),
                n => format!("{} and {} more", shown.join(", "), n - 3),
            }
        };
        match deepest {
            // Only a MachineID naming no machine leaves no machine to try.
            None | Some(Refusal::MachineId) => {
                format!(
                    "MachineID {} names no machine",
                    req.machine_id.as_deref().unwrap_or("")
                )
            }
            Some(Refusal::Metadata) => match &req.machine_id {
                Some(id) => format!(
                    "machine {id} does not have metadata {}",
                    req.metadata_text()
                ),
                None => format!("no machine has metadata {}", req.metadata_text()),
            },
            Some(Refusal::Peer(peer)) => {
                let placed = (0..self.machines.len()).any(|mi| self.is_on(peer, mi));
                if placed {
                    format!("MachineOf unit {peer} is on a machine that does not meet its other requirements")
                } else {
                    format!("MachineOf unit {peer} is not scheduled")
                }
            }
            Some(Refusal::Conflict(_)) => format!("conflicts with {} {everywhere}", list(&names)),
            Some(Refusal::ReplacedBy(_)) => format!("replaced by {} {everywhere}", list(&names)),
        }
    }
}

#[cfg(test)]
mod tests;
