//! fleet on the 3-node cluster scenario's machines: the checks run on its one boot, before the
//! rolling update, after it, and around the loss of a machine. Every command is what an operator
//! types on a machine (`fleetctl …` as `core`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_qemu::Vm;

use crate::{guest, on_each, wait_in_guest};

/// How long fleet may take to settle after a change (engine pass, agent pass, docker under TCG).
pub const SETTLE: Duration = Duration::from_secs(240);
/// A machine lost: its non-conflicting units run elsewhere within this (the issue's budget).
pub const MOVED: Duration = Duration::from_secs(90);

/// The README's example: a template running a container that answers HTTP with its machine's
/// name, one instance per machine, on its machine's bridge (flannel's subnet) and published on
/// the machine's port 8081. Without comments: `fleetctl cat` gives the stored, canonical
/// text back, which has none.
pub const EXAMPLE: &str = r#"[Unit]
Description=Example web server %i
After=docker.service kiln-container-images.service
Requires=docker.service kiln-container-images.service

[Service]
ExecStartPre=-/usr/bin/docker rm -f example-%i
ExecStart=/usr/bin/docker run --rm --init --name example-%i -p 8081:8081 -e HOST=%H kiln/busybox sh -c 'busybox mkdir -p /www && echo "$$HOST" > /www/index.html && exec busybox httpd -f -p 8081 -h /www'
ExecStop=/usr/bin/docker stop example-%i

[X-Fleet]
Conflicts=example@*.service
"#;

/// Units of the scheduling checks: (file name, text).
pub const UNITS: &[(&str, &str)] = &[
    ("example@.service", EXAMPLE),
    (
        "everywhere.service",
        "[Unit]\nDescription=On every machine\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[X-Fleet]\nGlobal=true\n",
    ),
    (
        "db.service",
        "[Unit]\nDescription=Only where role=db\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[X-Fleet]\nMachineMetadata=role=db\n",
    ),
    (
        "side.service",
        "[Unit]\nDescription=Beside example@2\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[X-Fleet]\nMachineOf=example@2.service\n",
    ),
    (
        "plain@.service",
        "[Unit]\nDescription=Anywhere %i\n\n[Service]\nExecStart=/bin/sleep infinity\n",
    ),
];

/// The plain units started for the loss of a machine: enough that every machine has some.
pub const PLAIN: usize = 6;

/// One row of `fleetctl list-units -l --no-legend --fields unit,machine,active`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub unit: String,
    pub machine: String,
    pub active: String,
}

pub fn rows(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(Row {
                unit: f.first()?.to_string(),
                machine: f.get(1)?.split('/').next()?.to_string(),
                active: f.get(2)?.to_string(),
            })
        })
        .collect()
}

pub const LIST_UNITS: &str = "fleetctl list-units -l --no-legend --fields unit,machine,active";

/// Whether a table's rows (`--no-legend`) hold one whose columns are `fields`.
pub fn has_row(table: &str, fields: &[&str]) -> bool {
    table
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == fields)
}

/// The machines running `unit` now (active), by machine id.
pub fn running(rows: &[Row], unit: &str) -> Vec<String> {
    rows.iter()
        .filter(|r| r.unit == unit && r.active == "active")
        .map(|r| r.machine.clone())
        .collect()
}

/// Waits until `done` accepts the units' rows, seen from `vm`.
pub fn wait_rows(
    vm: &Vm,
    key: &Path,
    timeout: Duration,
    done: impl Fn(&[Row]) -> bool,
) -> Vec<Row> {
    rows(&wait_in_guest(vm, key, LIST_UNITS, timeout, |out| {
        done(&rows(out))
    }))
}

/// Every unit runs on at most one machine (global ones aside).
pub fn nothing_twice(rows: &[Row]) -> Result<(), String> {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.active == "active" && r.unit != "everywhere.service")
    {
        *count.entry(&r.unit).or_default() += 1;
    }
    match count.iter().find(|(_, n)| **n > 1) {
        Some((unit, n)) => Err(format!("{unit} runs on {n} machines")),
        None => Ok(()),
    }
}

/// The machine ids of `vms`, in their order.
pub fn machine_ids(vms: &[&Vm], key: &Path) -> Vec<String> {
    on_each(vms, |_, vm| guest(vm, key, "cat /etc/machine-id"))
}

/// `fleetctl list-machines` lists the three, with their private addresses and metadata.
pub fn check_machines(vm: &Vm, key: &Path, expect: &[(String, &str, &str)]) {
    let out = wait_in_guest(
        vm,
        key,
        "fleetctl list-machines -l --no-legend",
        SETTLE,
        |out| out.lines().count() == expect.len(),
    );
    for (id, addr, metadata) in expect {
        let line = out
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("machine {id} missing from list-machines:\n{out}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields, [id.as_str(), addr, metadata], "{out}");
    }
}

/// Each machine's port 8081 answers with its own name (the example's containers), asked from
/// `vm` over the private network (by the image's own busybox: a container started per request
/// cost 20 to 60 s under TCG).
pub fn check_http(vm: &Vm, key: &Path, nodes: &[(&str, &str)]) {
    for (name, addr) in nodes {
        let got = wait_in_guest(
            vm,
            key,
            &format!("busybox wget -q -O - http://{addr}:8081/"),
            SETTLE,
            |out| out.trim() == *name,
        );
        assert_eq!(got, *name);
    }
}

/// Waits until the three example instances run on three machines.
pub fn examples_spread(vm: &Vm, key: &Path) -> Vec<Row> {
    wait_rows(vm, key, SETTLE, |rows| {
        let mut hosts: Vec<String> = (1..=3)
            .flat_map(|i| running(rows, &format!("example@{i}.service")))
            .collect();
        let n = hosts.len();
        hosts.sort();
        hosts.dedup();
        n == 3 && hosts.len() == 3
    })
}

/// The leader of the engine, from its key in etcd: the machine id.
pub fn engine_leader(vm: &Vm, key: &Path) -> String {
    let out = guest(
        vm,
        key,
        "etcdctl get --print-value-only /_coreos.com/fleet/lease/engine-leader",
    );
    let value: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("leader key {out:?}: {e}"));
    value["MachineID"].as_str().unwrap_or_default().to_owned()
}

/// Seconds since `t`, for the log.
pub fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    /// The README's `example@.service`, its comment lines aside, is the one the scenario runs.
    #[test]
    fn the_readmes_example_is_the_one_tested() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("```ini\n# example@.service\n")
            .expect("the README's example@.service");
        let text = &readme[start + "```ini\n".len()..];
        let text: String = text[..text.find("```").unwrap()]
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(text, super::EXAMPLE);
    }
}
