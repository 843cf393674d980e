//! `cargo xtask bench fleet`: the real fleet engine against a real etcd 3.4 on 127.0.0.1
//! (Debian's etcd-server), with simulated machines (their objects and leases written directly):
//! by default 1,000 machines and 10,000 units, a tenth with `Conflicts`, a tenth with
//! `MachineMetadata`. Printed, never asserted: the machine is shared.
//!
//! The reference, measured in the same run on the same etcd: one single-key write per unit, one
//! request after another (what the engine's placement cannot beat if it wrote each unit alone).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln_etcd::testutil::TestEtcd;
use kiln_etcd::Client;
use kiln_fleet::engine::{Engine, Pass};
use kiln_fleet::registry::{to_json, Layout, MachineObject, Registry};
use kiln_fleet::schedule::TargetState;
use kiln_fleet::unit::UnitFile;

use crate::host::{self, HostPackage};

#[derive(clap::Args)]
pub struct FleetBenchConfig {
    #[arg(long, default_value_t = 1000)]
    pub machines: usize,
    #[arg(long, default_value_t = 10_000)]
    pub units: usize,
    /// Threads submitting units (the API's writes) before the engine starts.
    #[arg(long, default_value_t = 4)]
    pub submitters: usize,
}

const PREFIX: &str = "/_coreos.com/fleet/";
const INTERVAL: Duration = Duration::from_secs(2);

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// This process's resident memory, in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn machine_id(i: usize) -> String {
    // 32 hex digits, like /etc/machine-id.
    format!("{:08x}{:024x}", 0x1000_0000 + i * 7919, i)
}

/// A unit of `kind`: `conf<g>` conflicts with the other instances of its group (groups of ten
/// replicas, kept on ten machines), `meta` wants region=eu, `web` goes anywhere.
fn unit_text(kind: &str) -> String {
    let xfleet = match kind {
        k if k.starts_with("conf") => format!("\n[X-Fleet]\nConflicts={k}@*.service\n"),
        "meta" => "\n[X-Fleet]\nMachineMetadata=region=eu\n".to_string(),
        _ => String::new(),
    };
    format!("[Unit]\nDescription={kind} %i\n\n[Service]\nExecStart=/bin/sleep infinity\n{xfleet}")
}

pub fn fleet(cfg: &FleetBenchConfig) -> Result<()> {
    host::ensure_packages(
        &[HostPackage {
            package: "etcd-server",
            provides: "etcd",
        }],
        "the fleet benchmark",
    )?;
    let etcd = TestEtcd::start();
    let client = Client::new(std::slice::from_ref(&etcd.url), Duration::from_secs(30));
    let layout = Layout::new(PREFIX);
    println!(
        "fleet bench: {} machines, {} units (a tenth in conflict groups of ten, a tenth with MachineMetadata), etcd at {}",
        cfg.machines, cfg.units, etcd.url
    );

    // The reference: one single-key write per unit, one after another.
    let start = Instant::now();
    for i in 0..cfg.units {
        client.put(&format!("/reference/{i}"), b"x", 0)?;
    }
    let reference = start.elapsed();
    client.delete("/reference/", true)?;

    // The machines: every third in region eu; each under its own lease, kept alive by a thread.
    let mut leases = Vec::new();
    for i in 0..cfg.machines {
        let ttl = if i == 0 {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(120)
        };
        let lease = client.grant(ttl)?;
        let mut metadata = BTreeMap::new();
        metadata.insert(
            "region".into(),
            if i % 3 == 0 { "eu" } else { "us" }.to_string(),
        );
        let object = MachineObject {
            id: machine_id(i),
            public_ip: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            metadata,
            version: "bench".into(),
        };
        client.put(
            &layout.machine_object(&object.id),
            to_json(&object).as_bytes(),
            lease,
        )?;
        leases.push(lease);
    }
    let victim_alive = Arc::new(AtomicBool::new(true));
    let keeper = {
        let client = client.clone();
        let victim_alive = Arc::clone(&victim_alive);
        let leases = leases.clone();
        // The victim's 5 s lease every second, the others' 120 s leases every 30 s.
        std::thread::spawn(move || {
            for round in 0u64.. {
                for (i, lease) in leases.iter().enumerate() {
                    let due = if i == 0 {
                        victim_alive.load(Ordering::SeqCst)
                    } else {
                        round % 30 == 29
                    };
                    if due {
                        let _ = client.keep_alive(*lease);
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    drop(keeper);

    // The units, submitted as the API does (a unit, its job, its desired state).
    let names: Vec<(String, String)> = (0..cfg.units)
        .map(|i| {
            let kind = match i % 10 {
                0 => format!("conf{}", i / 100),
                1 => "meta".to_string(),
                _ => "web".to_string(),
            };
            (format!("{kind}@{i}.service"), kind)
        })
        .collect();
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = names
            .chunks(names.len().div_ceil(cfg.submitters.max(1)))
            .map(|chunk| {
                let registry = Registry::new(client.clone(), PREFIX);
                s.spawn(move || -> Result<()> {
                    for (name, kind) in chunk {
                        let unit = UnitFile::parse(&unit_text(kind))?;
                        registry.create(name, &unit)?;
                        registry.set_target_state(name, TargetState::Launched)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a submitter panicked"))??;
        }
        Ok(())
    })?;
    let submitted = start.elapsed();

    // The engine, until every unit has a machine.
    let rss_before = rss_mib();
    let mut engine = Engine::new(client.clone(), PREFIX, "bench-engine", INTERVAL);
    let start = Instant::now();
    let mut passes: Vec<(Pass, Duration, Duration)> = Vec::new();
    loop {
        let (wall, cpu) = (Instant::now(), thread_cpu());
        let pass = engine.pass().context("an engine pass")?;
        passes.push((pass, wall.elapsed(), thread_cpu() - cpu));
        let placed = client.count_prefix(&layout.schedules())?;
        if placed as usize >= cfg.units {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!(
                "after 600 s only {placed} of {} units have a machine",
                cfg.units
            );
        }
    }
    let placed_in = start.elapsed();
    let rss_after = rss_mib();
    let scheduled: usize = passes.iter().map(|p| p.0.scheduled).sum();
    let keys: usize = passes.iter().map(|p| p.0.keys_written).sum();
    let txns: usize = passes.iter().map(|p| p.0.txns).sum();

    // A steady pass (nothing to do).
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let steady = engine.pass()?;
    let (steady_wall, steady_cpu) = (wall.elapsed(), thread_cpu() - cpu);

    // Conflicts kept: no two units of one group on one machine.
    let jobs = Registry::new(client.clone(), PREFIX).jobs()?;
    let mut conf_machines = BTreeMap::new();
    for (name, record) in &jobs {
        if let Some(group) = name.strip_prefix("conf").and_then(|n| n.split('@').next()) {
            *conf_machines
                .entry((group.to_string(), record.target.clone()))
                .or_insert(0) += 1;
        }
    }
    let violations = conf_machines.values().filter(|n| **n > 1).count();

    println!();
    println!(
        "submission ({} threads): {:.1} s, {:.0} units/s",
        cfg.submitters,
        submitted.as_secs_f64(),
        cfg.units as f64 / submitted.as_secs_f64()
    );
    println!(
        "placement: every unit has a machine {:.1} s after the engine started, in {} passes",
        placed_in.as_secs_f64(),
        passes.len()
    );
    println!(
        "  reference, {} single-key writes one by one: {:.1} s; placement / reference = {:.2}",
        cfg.units,
        reference.as_secs_f64(),
        placed_in.as_secs_f64() / reference.as_secs_f64()
    );
    println!(
        "  etcd writes per scheduled unit: {:.2} keys in {:.3} transactions ({} units, {} keys, {} txns)",
        keys as f64 / scheduled.max(1) as f64,
        txns as f64 / scheduled.max(1) as f64,
        scheduled,
        keys,
        txns
    );
    let (big, big_wall, big_cpu) = passes
        .iter()
        .max_by_key(|p| p.2)
        .cloned()
        .unwrap_or_default();
    println!(
        "  engine pass placing {} units: {:.2} s wall, {:.2} s CPU; memory {:.0} → {:.0} MiB (process RSS)",
        big.scheduled,
        big_wall.as_secs_f64(),
        big_cpu.as_secs_f64(),
        rss_before,
        rss_after
    );
    println!(
        "  steady pass ({} jobs, {} machines, nothing to do, {} writes): {:.2} s wall, {:.2} s CPU",
        steady.jobs,
        steady.machines,
        steady.txns,
        steady_wall.as_secs_f64(),
        steady_cpu.as_secs_f64()
    );
    println!("  conflicting units sharing a machine: {violations}");

    // One machine lost: its lease is no longer renewed.
    let victim = machine_id(0);
    let victim_units: Vec<String> = jobs
        .iter()
        .filter(|(_, r)| r.target.as_deref() == Some(victim.as_str()))
        .map(|(n, _)| n.clone())
        .collect();
    victim_alive.store(false, Ordering::SeqCst);
    let expired_at = loop {
        if client.get(&layout.machine_object(&victim))?.is_none() {
            break Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut passes_after = 0;
    let moved_in = loop {
        let started = Instant::now();
        engine.pass()?;
        passes_after += 1;
        let jobs = Registry::new(client.clone(), PREFIX).jobs()?;
        let moved = victim_units.iter().all(|n| {
            jobs.get(n)
                .and_then(|r| r.target.as_deref())
                .is_some_and(|t| t != victim)
        });
        if moved {
            break expired_at.elapsed();
        }
        if passes_after >= 10 {
            bail!(
                "{} units of the lost machine still not moved after 10 passes",
                victim_units.len()
            );
        }
        std::thread::sleep(INTERVAL.saturating_sub(started.elapsed()));
    };

    println!(
        "lost machine: its {} units had new machines {:.1} s after its lease expired, {} engine pass(es) later",
        victim_units.len(),
        moved_in.as_secs_f64(),
        passes_after
    );
    println!("{} (at the end)", crate::measure::load_line());
    Ok(())
}
