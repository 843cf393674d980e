//! Scheduling scenarios: each builds machines and units, runs passes, and checks the tasks and
//! the schedule they lead to.

use super::*;
use crate::job::glob_match;
use crate::name::UnitName;
use crate::unit::UnitFile;

/// Machine IDs as machines have them: 32 hex digits; `n` picks the first 8.
fn mid(n: &str) -> String {
    format!("{n:0<8}{}", "0".repeat(24))
}

fn machine(short: &str, metadata: &[(&str, &str)]) -> Machine {
    Machine {
        id: mid(short),
        public_ip: format!("10.77.0.{}", short.len()),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn job_in(name: &str, xfleet: &str, state: TargetState, target: Option<&str>) -> Job {
    let unit = UnitFile::parse(&format!(
        "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\n{xfleet}"
    ))
    .unwrap();
    let (requirements, _) =
        Requirements::from_unit(&UnitName::parse(name).unwrap(), &unit).unwrap();
    Job {
        name: name.to_string(),
        requirements,
        target_state: state,
        target: target.map(mid),
    }
}

fn launched(name: &str, xfleet: &str) -> Job {
    job_in(name, xfleet, TargetState::Launched, None)
}

fn on(name: &str, xfleet: &str, machine: &str) -> Job {
    job_in(name, xfleet, TargetState::Launched, Some(machine))
}

/// Carries the tasks out on the jobs, as the engine writes them to the registry.
fn apply(jobs: &mut [Job], tasks: &[Task]) {
    for task in tasks {
        let find = |jobs: &mut [Job], name: &str| jobs.iter().position(|j| j.name == name).unwrap();
        match task {
            Task::Unschedule { job, machine, .. } => {
                let i = find(jobs, job);
                if jobs[i].target.as_deref() == Some(machine) {
                    jobs[i].target = None;
                }
            }
            Task::Schedule { job, machine, .. } => {
                let i = find(jobs, job);
                jobs[i].target = Some(machine.clone());
            }
            Task::Unschedulable { .. } => {}
        }
    }
}

/// One pass, carried out; a second pass must then change nothing.
fn settle(machines: &[Machine], jobs: &mut [Job]) -> Vec<Task> {
    let tasks = reconcile(machines, jobs);
    apply(jobs, &tasks);
    let again = reconcile(machines, jobs);
    assert!(
        again
            .iter()
            .all(|t| matches!(t, Task::Unschedulable { .. })),
        "a second pass still moves units: {again:#?}"
    );
    tasks
}

fn target_of<'j>(jobs: &'j [Job], name: &str) -> Option<&'j str> {
    jobs.iter()
        .find(|j| j.name == name)
        .unwrap()
        .target
        .as_deref()
}

fn schedule(job: &str, machine: &str) -> (String, String) {
    (job.to_string(), mid(machine))
}

/// The Schedule tasks as (job, machine) pairs.
fn scheduled(tasks: &[Task]) -> Vec<(String, String)> {
    tasks
        .iter()
        .filter_map(|t| match t {
            Task::Schedule { job, machine, .. } => Some((job.clone(), machine.clone())),
            _ => None,
        })
        .collect()
}

fn unschedulable<'t>(tasks: &'t [Task], name: &str) -> &'t str {
    tasks
        .iter()
        .find_map(|t| match t {
            Task::Unschedulable { job, reason } if job == name => Some(reason.as_str()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{name} is not unschedulable in {tasks:#?}"))
}

#[test]
fn machine_ids_and_states() {
    let m = machine("113f16a7", &[]);
    assert_eq!(m.short_id(), "113f16a7");
    assert!(m.matches_id("113f16a7"));
    assert!(m.matches_id(&mid("113f16a7")));
    assert!(!m.matches_id("113f16a"));
    let tiny = Machine {
        id: "abc".into(),
        ..Machine::default()
    };
    assert_eq!(tiny.short_id(), "abc");
    for state in [
        TargetState::Inactive,
        TargetState::Loaded,
        TargetState::Launched,
    ] {
        assert_eq!(state.as_str().parse::<TargetState>().unwrap(), state);
    }
    assert!("started"
        .parse::<TargetState>()
        .unwrap_err()
        .to_string()
        .contains("inactive, loaded or launched"));
}

#[test]
fn three_conflicting_instances_on_three_machines_and_a_fourth_waits() {
    let machines = [machine("cc", &[]), machine("aa", &[]), machine("bb", &[])];
    let mut jobs: Vec<Job> = (1..=4)
        .map(|i| {
            launched(
                &format!("example@{i}.service"),
                "Conflicts=example@*.service\n",
            )
        })
        .collect();
    let tasks = settle(&machines, &mut jobs);
    assert_eq!(
        scheduled(&tasks),
        [
            schedule("example@1.service", "aa"),
            schedule("example@2.service", "bb"),
            schedule("example@3.service", "cc")
        ]
    );
    assert_eq!(
        unschedulable(&tasks, "example@4.service"),
        "conflicts with example@1.service, example@2.service, example@3.service on every machine"
    );
    assert_eq!(tasks.len(), 4);
    // A machine joins: the fourth goes there in the next pass.
    let more = [machines.as_slice(), &[machine("dd", &[])]].concat();
    let tasks = settle(&more, &mut jobs);
    assert_eq!(scheduled(&tasks), [schedule("example@4.service", "dd")]);
}

#[test]
fn conflicts_are_symmetric() {
    // "calm" says nothing, but "loud" on aa names it: calm avoids aa.
    let machines = [machine("aa", &[]), machine("bb", &[])];
    let mut jobs = vec![
        on("loud.service", "Conflicts=calm.service\n", "aa"),
        launched("calm.service", ""),
    ];
    jobs.push(on("x.service", "", "bb"));
    let tasks = settle(&machines, &mut jobs);
    assert_eq!(scheduled(&tasks), [schedule("calm.service", "bb")]);
}

#[test]
fn metadata_and_across_keys_or_within_a_key() {
    let machines = [
        machine("m1", &[("region", "eu"), ("disk", "hdd")]),
        machine("m2", &[("region", "us"), ("disk", "ssd")]),
        machine("m3", &[("region", "eu"), ("disk", "ssd")]),
    ];
    let mut jobs = vec![
        launched(
            "a.service",
            "MachineMetadata=region=eu\nMachineMetadata=disk=ssd\n",
        ),
        launched(
            "b.service",
            "MachineMetadata=\"region=eu\" \"region=us\"\nMachineMetadata=disk=ssd\n",
        ),
        launched("c.service", "MachineMetadata=region=ap\n"),
        launched(
            "d.service",
            "MachineMetadata=region=eu\nMachineMetadata=disk=nvme\n",
        ),
    ];
    let tasks = settle(&machines, &mut jobs);
    // a only fits m3; b fits m2 and m3, and m2 is now the less loaded.
    assert_eq!(
        scheduled(&tasks),
        [schedule("a.service", "m3"), schedule("b.service", "m2")]
    );
    assert_eq!(
        unschedulable(&tasks, "c.service"),
        "no machine has metadata region=ap"
    );
    assert_eq!(
        unschedulable(&tasks, "d.service"),
        "no machine has metadata disk=nvme and region=eu"
    );
}

#[test]
fn machine_id_full_or_short() {
    let machines = [machine("aaaa1111", &[]), machine("bbbb2222", &[])];
    let mut jobs = vec![
        launched("full.service", &format!("MachineID={}\n", mid("bbbb2222"))),
        launched("short.service", "MachineID=bbbb2222\n"),
        launched("none.service", "MachineID=1234abcd\n"),
        launched(
            "meta.service",
            "MachineID=aaaa1111\nMachineMetadata=role=db\n",
        ),
    ];
    let tasks = settle(&machines, &mut jobs);
    assert_eq!(
        scheduled(&tasks),
        [
            schedule("full.service", "bbbb2222"),
            schedule("short.service", "bbbb2222")
        ]
    );
    assert_eq!(
        unschedulable(&tasks, "none.service"),
        "MachineID 1234abcd names no machine"
    );
    assert_eq!(
        unschedulable(&tasks, "meta.service"),
        "machine aaaa1111 does not have metadata role=db"
    );
}

#[test]
fn machine_of_co_locates_in_one_pass() {
    // "app" sorts before "db" but follows it: the pass places db first, then app with it,
    // although the other machine is less loaded.
    let machines = [machine("aa", &[]), machine("bb", &[])];
    let mut jobs = vec![
        launched("app.service", "MachineOf=db.service\n"),
        launched("cache.service", "MachineOf=app.service\n"),
        launched("db.service", ""),
        launched("orphan.service", "MachineOf=nothing.service\n"),
    ];
    let tasks = settle(&machines, &mut jobs);
    assert_eq!(
        scheduled(&tasks),
        [
            schedule("db.service", "aa"),
            schedule("app.service", "aa"),
            schedule("cache.service", "aa")
        ]
    );
    assert_eq!(
        unschedulable(&tasks, "orphan.service"),
        "MachineOf unit nothing.service is not scheduled"
    );
}

#[test]
fn machine_of_follower_moves_when_its_target_moves() {
    let machines = [
        machine("aa", &[("role", "db")]),
        machine("bb", &[("role", "db")]),
        machine("cc", &[]),
    ];
    let mut jobs = vec![
        on("app.service", "MachineOf=db.service\n", "aa"),
        on("db.service", "MachineMetadata=role=db\n", "aa"),
        on("other.service", "", "bb"),
    ];
    // aa loses its role: db must leave, and app with it, in the same pass.
    let changed = [machine("aa", &[]), machines[1].clone(), machines[2].clone()];
    let tasks = settle(&changed, &mut jobs);
    let kinds: Vec<(&str, &str)> = tasks
        .iter()
        .map(|t| {
            let kind = match t {
                Task::Unschedule { .. } => "unschedule",
                Task::Schedule { .. } => "schedule",
                Task::Unschedulable { .. } => "unschedulable",
            };
            (kind, t.job())
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("unschedule", "db.service"),
            ("unschedule", "app.service"),
            ("schedule", "db.service"),
            ("schedule", "app.service")
        ]
    );
    assert!(
        tasks[0]
            .reason()
            .contains("its metadata does not match role=db"),
        "{}",
        tasks[0]
    );
    assert!(
        tasks[1]
            .reason()
            .contains("MachineOf unit db.service is not on it"),
        "{}",
        tasks[1]
    );
    assert_eq!(target_of(&jobs, "db.service"), Some(mid("bb").as_str()));
    assert_eq!(target_of(&jobs, "app.service"), Some(mid("bb").as_str()));
}

#[test]
fn global_units_count_in_load_and_block_conflicts() {
    let machines = [machine("aa", &[("edge", "yes")]), machine("bb", &[])];
    let mut jobs = vec![
        launched("proxy.service", "Global=true\nMachineMetadata=edge=yes\n"),
        launched("web.service", ""),
        launched("x.service", ""),
    ];
    let tasks = settle(&machines, &mut jobs);
    // aa already runs the global proxy: web goes to bb; then both have 1 and x goes to aa.
    assert_eq!(
        scheduled(&tasks),
        [schedule("web.service", "bb"), schedule("x.service", "aa")]
    );
    assert_eq!(target_of(&jobs, "proxy.service"), None);

    // A global that conflicts with "bad*" everywhere: bad.service cannot go anywhere.
    let mut jobs = vec![
        launched("guard.service", "Global=yes\nConflicts=bad*.service\n"),
        launched("bad.service", ""),
    ];
    let tasks = settle(&machines, &mut jobs);
    assert_eq!(
        unschedulable(&tasks, "bad.service"),
        "conflicts with guard.service on every machine"
    );

    // An inactive global is not run, so it neither loads nor blocks.
    let mut jobs = vec![
        job_in(
            "guard.service",
            "Global=yes\nConflicts=bad*.service\n",
            TargetState::Inactive,
            None,
        ),
        launched("bad.service", ""),
    ];
    let tasks = settle(&machines, &mut jobs);
    assert_eq!(scheduled(&tasks), [schedule("bad.service", "aa")]);
}

#[test]
fn global_units_give_way_to_units_already_there() {
    // bad.service is on aa before the global arrives: the global skips aa, and counts only on bb.
    let machines = [machine("aa", &[]), machine("bb", &[])];
    let mut jobs = vec![
        on("bad.service", "", "aa"),
        launched("guard.service", "Global=yes\nConflicts=bad*.service\n"),
        launched("new.service", ""),
    ];
    let tasks = settle(&machines, &mut jobs);
    // Loads: aa 1 (bad), bb 1 (guard) → tie, aa wins by ID.
    assert_eq!(scheduled(&tasks), [schedule("new.service", "aa")]);
    let on_aa: Vec<&str> = desired_on(&machines[0], &jobs)
        .iter()
        .map(|j| j.name.as_str())
        .collect();
    let on_bb: Vec<&str> = desired_on(&machines[1], &jobs)
        .iter()
        .map(|j| j.name.as_str())
        .collect();
    assert_eq!(on_aa, ["bad.service", "new.service"]);
    assert_eq!(on_bb, ["guard.service"]);
    // bad leaves (made inactive): the global now applies to aa too.
    jobs[0].target_state = TargetState::Inactive;
    let tasks = settle(&machines, &mut jobs);
    assert!(
        matches!(&tasks[..], [Task::Unschedule { job, .. }] if job == "bad.service"),
        "{tasks:#?}"
    );
    let on_aa: Vec<&str> = desired_on(&machines[0], &jobs)
        .iter()
        .map(|j| j.name.as_str())
        .collect();
    assert_eq!(on_aa, ["guard.service", "new.service"]);
}

#[test]
fn machine_gone_unschedules_and_reschedules_in_the_same_pass() {
    let machines = [machine("aa", &[]), machine("bb", &[]), machine("cc", &[])];
    let mut jobs = vec![
        on("a.service", "", "aa"),
        on("b.service", "", "bb"),
        on("c.service", "", "cc"),
        on("d.service", "", "cc"),
        on("e.service", "", "bb"),
    ];
    let alive = [machines[0].clone(), machines[2].clone()];
    let tasks = settle(&alive, &mut jobs);
    assert_eq!(
        tasks,
        [
            Task::Unschedule {
                job: "b.service".into(),
                machine: mid("bb"),
                reason: format!("machine {} went away", mid("bb")),
            },
            Task::Unschedule {
                job: "e.service".into(),
                machine: mid("bb"),
                reason: format!("machine {} went away", mid("bb")),
            },
            Task::Schedule {
                job: "b.service".into(),
                machine: mid("aa"),
                reason: "target state launched and unit not scheduled".into(),
            },
            // aa and cc now both have 2: the tie goes to aa.
            Task::Schedule {
                job: "e.service".into(),
                machine: mid("aa"),
                reason: "target state launched and unit not scheduled".into(),
            },
        ]
    );
}

#[test]
fn ties_go_to_the_lowest_machine_id() {
    let machines = [machine("cc", &[]), machine("bb", &[]), machine("aa", &[])];
    let mut jobs: Vec<Job> = ["w", "x", "y", "z"]
        .iter()
        .map(|n| launched(&format!("{n}.service"), ""))
        .collect();
    let tasks = settle(&machines, &mut jobs);
    assert_eq!(
        scheduled(&tasks),
        [
            schedule("w.service", "aa"),
            schedule("x.service", "bb"),
            schedule("y.service", "cc"),
            schedule("z.service", "aa")
        ]
    );
}

#[test]
fn inactive_units_are_taken_off_and_not_placed() {
    let machines = [machine("aa", &[])];
    let mut jobs = vec![
        job_in("old.service", "", TargetState::Inactive, Some("aa")),
        job_in("idle.service", "", TargetState::Inactive, None),
        job_in("ready.service", "", TargetState::Loaded, None),
    ];
    let tasks = settle(&machines, &mut jobs);
    assert_eq!(
        tasks,
        [
            Task::Unschedule {
                job: "old.service".into(),
                machine: mid("aa"),
                reason: "target state inactive".into()
            },
            Task::Schedule {
                job: "ready.service".into(),
                machine: mid("aa"),
                reason: "target state loaded and unit not scheduled".into(),
            },
        ]
    );
}

#[test]
fn no_machines_at_all() {
    let tasks = reconcile(&[], &[launched("a.service", "")]);
    assert_eq!(
        tasks,
        [Task::Unschedulable {
            job: "a.service".into(),
            reason: "no machine is in the cluster".into()
        }]
    );
}

#[test]
fn a_global_unit_with_a_target_is_unscheduled() {
    let machines = [machine("aa", &[])];
    let jobs = [on("g.service", "Global=true\n", "aa")];
    let tasks = reconcile(&machines, &jobs);
    assert!(
        matches!(&tasks[..], [Task::Unschedule { job, .. }] if job == "g.service"),
        "{tasks:#?}"
    );
}

#[test]
fn replaces_takes_the_machine_and_moves_the_replaced_unit() {
    // As in fleet's own scenario: replace.0 alone on m0, replace.1 and replace.2 on m1; kick0,
    // which replaces replace.0, lands on the less loaded m0 and pushes replace.0 to m1.
    let machines = [machine("m0", &[]), machine("m1", &[])];
    let mut jobs = vec![
        on("replace.0.service", "", "m0"),
        on("replace.1.service", "", "m1"),
        on("replace.2.service", "MachineOf=replace.1.service\n", "m1"),
        launched("replace-kick0.service", "Replaces=replace.0.service\n"),
    ];
    let tasks = settle(&machines, &mut jobs);
    assert_eq!(
        tasks,
        [
            Task::Unschedule {
                job: "replace.0.service".into(),
                machine: mid("m0"),
                reason: "replaced by replace-kick0.service on m0000000".into(),
            },
            Task::Schedule {
                job: "replace.0.service".into(),
                machine: mid("m1"),
                reason: "moved off m0000000, where replace-kick0.service replaces it".into(),
            },
            Task::Schedule {
                job: "replace-kick0.service".into(),
                machine: mid("m0"),
                reason: "target state launched and unit not scheduled".into(),
            },
        ]
    );
}

#[test]
fn replaces_between_scheduled_units_and_when_placing_the_replaced_one() {
    let machines = [machine("aa", &[]), machine("bb", &[]), machine("cc", &[])];
    // Both already on aa: the replaced one moves, whichever is looked at first.
    let mut jobs = vec![
        on("new.service", "Replaces=old.service\n", "aa"),
        on("old.service", "", "aa"),
        on("z.service", "", "bb"),
    ];
    let tasks = settle(&machines, &mut jobs);
    assert_eq!(scheduled(&tasks), [schedule("old.service", "cc")]);
    assert_eq!(target_of(&jobs, "new.service"), Some(mid("aa").as_str()));

    // An unscheduled unit skips a machine holding a unit that replaces it.
    let machines = [machine("aa", &[]), machine("bb", &[])];
    let mut jobs = vec![
        on("new.service", "Replaces=old.service\n", "aa"),
        on("y.service", "", "bb"),
        on("z.service", "", "bb"),
        launched("old.service", ""),
    ];
    let tasks = settle(&machines, &mut jobs);
    assert_eq!(scheduled(&tasks), [schedule("old.service", "bb")]);

    // Units replacing each other are left alone.
    let mut jobs = vec![
        on("p.service", "Replaces=q.service\n", "aa"),
        on("q.service", "Replaces=p.service\n", "aa"),
    ];
    assert!(settle(&machines, &mut jobs).is_empty());

    // With nowhere else to go, the replaced unit stays.
    let single = [machine("aa", &[])];
    let mut jobs = vec![
        on("old.service", "", "aa"),
        launched("new.service", "Replaces=old.service\n"),
    ];
    let tasks = settle(&single, &mut jobs);
    assert_eq!(scheduled(&tasks), [schedule("new.service", "aa")]);
    assert_eq!(target_of(&jobs, "old.service"), Some(mid("aa").as_str()));
}

#[test]
fn same_input_in_any_order_gives_the_same_tasks() {
    let machines = vec![
        machine("aa", &[("r", "1")]),
        machine("bb", &[]),
        machine("cc", &[("r", "1")]),
    ];
    let jobs = vec![
        launched("a@1.service", "Conflicts=a@*.service\n"),
        launched("a@2.service", "Conflicts=a@*.service\n"),
        launched("b.service", "MachineMetadata=r=1\n"),
        launched("c.service", "MachineOf=b.service\n"),
        on("d.service", "", "zz"),
        launched("g.service", "Global=1\nMachineMetadata=r=1\n"),
    ];
    let expected = reconcile(&machines, &jobs);
    let mut machines_rev = machines.clone();
    machines_rev.reverse();
    let mut jobs_rev = jobs.clone();
    jobs_rev.reverse();
    assert_eq!(reconcile(&machines_rev, &jobs_rev), expected);
    assert_eq!(reconcile(&machines, &jobs), expected);
}

#[test]
fn desired_on_a_machine() {
    let m = machine("aa", &[("edge", "yes")]);
    let jobs = vec![
        on("mine.service", "", "aa"),
        job_in("stopped.service", "", TargetState::Inactive, Some("aa")),
        on("theirs.service", "", "bb"),
        launched("edge.service", "Global=true\nMachineMetadata=edge=yes\n"),
        launched("core.service", "Global=true\nMachineMetadata=edge=no\n"),
        launched("shy.service", "Global=true\nConflicts=mine.service\n"),
        launched("everywhere.service", "Global=true\n"),
        launched(
            "a-first.service",
            "Global=true\nConflicts=everywhere.service\n",
        ),
        job_in("off.service", "Global=true\n", TargetState::Inactive, None),
    ];
    let names: Vec<&str> = desired_on(&m, &jobs)
        .iter()
        .map(|j| j.name.as_str())
        .collect();
    // a-first comes before everywhere by name and keeps the machine; everywhere then conflicts.
    assert_eq!(names, ["a-first.service", "edge.service", "mine.service"]);
}

#[test]
fn engine_and_agent_agree_on_globals() {
    // The globals the engine counts on a machine are the ones its agent runs.
    let machines = [machine("aa", &[("edge", "yes")]), machine("bb", &[])];
    let mut jobs = vec![
        launched("edge.service", "Global=true\nMachineMetadata=edge=yes\n"),
        launched("all.service", "Global=true\n"),
        launched("x.service", "Conflicts=all.service\n"),
        launched("y.service", ""),
    ];
    let tasks = settle(&machines, &mut jobs);
    assert_eq!(
        unschedulable(&tasks, "x.service"),
        "conflicts with all.service on every machine"
    );
    // aa: edge + all = 2, bb: all = 1 → y on bb.
    assert_eq!(scheduled(&tasks), [schedule("y.service", "bb")]);
    let on_aa: Vec<&str> = desired_on(&machines[0], &jobs)
        .iter()
        .map(|j| j.name.as_str())
        .collect();
    assert_eq!(on_aa, ["all.service", "edge.service"]);
}

/// 1,000 machines and 10,000 units, a tenth with Conflicts and a tenth with metadata: every
/// unit gets a machine, none shares one with a unit it conflicts with, metadata holds, and a
/// second pass changes nothing.
#[test]
fn ten_thousand_units_on_a_thousand_machines() {
    let regions = ["eu", "us", "ap"];
    let machines: Vec<Machine> = (0..1000)
        .map(|i| Machine {
            id: format!("{:08x}{:024x}", i * 2654435761u64 % 4294967291, i),
            public_ip: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            metadata: BTreeMap::from([(
                "region".to_string(),
                regions[(i % 3) as usize].to_string(),
            )]),
        })
        .collect();
    let mut jobs: Vec<Job> = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let job = match i % 10 {
            // 100 groups of 10 instances that must all be apart.
            0 => launched(
                &format!("grp{}@{}.service", i / 100, (i / 10) % 10),
                "Conflicts=%p@*.service\n",
            ),
            1 => launched(
                &format!("meta{i}.service"),
                if i % 20 == 1 {
                    "MachineMetadata=region=eu\n"
                } else {
                    "MachineMetadata=\"region=us\" \"region=ap\"\n"
                },
            ),
            _ => launched(&format!("plain{i}.service"), ""),
        };
        jobs.push(job);
    }
    let started = std::time::Instant::now();
    let tasks = reconcile(&machines, &jobs);
    let elapsed = started.elapsed();
    eprintln!("one pass over 1,000 machines and 10,000 units: {elapsed:?}");
    assert!(
        tasks.iter().all(|t| matches!(t, Task::Schedule { .. })),
        "{:?}",
        tasks.iter().find(|t| !matches!(t, Task::Schedule { .. }))
    );
    assert_eq!(tasks.len(), 10_000);
    apply(&mut jobs, &tasks);

    let by_id: HashMap<&str, &Machine> = machines.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut per_machine: HashMap<&str, Vec<&Job>> = HashMap::new();
    for job in &jobs {
        let target = job.target.as_deref().expect("every unit placed");
        let machine = by_id[target];
        assert!(
            job.requirements.metadata_matches(&machine.metadata),
            "{} on {}",
            job.name,
            machine.id
        );
        per_machine.entry(target).or_default().push(job);
    }
    for (machine, units) in &per_machine {
        for (i, a) in units.iter().enumerate() {
            for b in &units[i + 1..] {
                assert!(
                    !a.conflicts_with(b),
                    "{} and {} share {machine}",
                    a.name,
                    b.name
                );
            }
        }
    }
    // Spread: 10 units per machine on average, least-loaded keeps it even.
    let most = per_machine.values().map(Vec::len).max().unwrap();
    assert!(most <= 12, "a machine has {most} units");
    assert!(glob_match("grp7@*.service", "grp7@3.service"));
    let again = reconcile(&machines, &jobs);
    assert!(again.is_empty(), "{:?}", &again[..again.len().min(3)]);
}
