//! `fleetctl`: fleet's command line, over the API (the machine's socket by default, or any
//! machine's `--endpoint`). Commands, flags, columns and messages follow fleet's, so scripts
//! written for CoreOS keep working. Exit status: 0 done, 1 failed (the message says why).

mod client;
mod table;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use crate::api::{ApiMachine, ApiUnit};
use crate::job::{glob_match, Requirements};
use crate::name::UnitName;
use crate::unit::UnitFile;
pub use client::{ApiClient, ClientError};

#[derive(Parser)]
#[command(
    name = "fleetctl",
    version,
    about = "fleet's command line: units across the cluster"
)]
pub struct Cli {
    /// The API: unix:///var/run/fleet.sock (this machine's daemon) or http://host:port.
    #[arg(
        long,
        env = "FLEETCTL_ENDPOINT",
        default_value = "unix:///var/run/fleet.sock",
        global = true
    )]
    endpoint: String,
    /// Seconds one request may take.
    #[arg(
        long,
        env = "FLEETCTL_REQUEST_TIMEOUT",
        default_value_t = 10.0,
        global = true
    )]
    request_timeout: f64,
    /// Only `api` (fleet's `etcd` driver reached etcd directly; Kiln's fleetctl always goes through the API).
    #[arg(long, env = "FLEETCTL_DRIVER", default_value = "api", global = true)]
    driver: String,
    /// Check the host keys of machines reached over ssh (`status`, `journal`): known hosts in
    /// ~/.fleetctl/known_hosts, a new machine's key trusted on first use, a changed one refused.
    #[arg(long, env = "FLEETCTL_STRICT_HOST_KEY_CHECKING", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    strict_host_key_checking: bool,
    /// The user ssh logs in as on other machines.
    #[arg(
        long,
        env = "FLEETCTL_SSH_USERNAME",
        default_value = "core",
        global = true
    )]
    ssh_username: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone, Default)]
struct ListFlags {
    /// Do not print the legend.
    #[arg(long)]
    no_legend: bool,
    /// Full machine ids and hashes.
    #[arg(short = 'l', long)]
    full: bool,
    /// Columns to print, comma-separated.
    #[arg(long)]
    fields: Option<String>,
}

#[derive(Args, Clone, Default)]
struct BlockFlags {
    /// Do not wait for the units to reach the state.
    #[arg(long)]
    no_block: bool,
    /// Tries (of about 2 s each) before giving up waiting; 0 waits for ever.
    #[arg(long, default_value_t = 0)]
    block_attempts: u32,
    /// Replace units already in the cluster whose file changed.
    #[arg(long)]
    replace: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// The machines of the cluster.
    ListMachines(ListFlags),
    /// The units' states on their machines.
    ListUnits(ListFlags),
    /// The units in the cluster and where they are scheduled.
    ListUnitFiles(ListFlags),
    /// Adds units to the cluster (inactive).
    Submit {
        #[command(flatten)]
        block: BlockFlags,
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Schedules units to machines and loads them there.
    Load {
        #[command(flatten)]
        block: BlockFlags,
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Schedules, loads and starts units.
    Start {
        #[command(flatten)]
        block: BlockFlags,
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Stops units (they stay loaded on their machines).
    Stop {
        #[command(flatten)]
        block: BlockFlags,
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Stops units and unloads them from their machines.
    Unload {
        #[command(flatten)]
        block: BlockFlags,
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Removes units from the cluster.
    Destroy {
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Prints a unit's file as stored in the cluster.
    Cat { unit: String },
    /// `systemctl status` of units, on the machines that run them.
    Status {
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// The journal of a unit, on the machine that runs it.
    Journal {
        #[arg(long, default_value_t = 10)]
        lines: u32,
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(long, default_value = "short")]
        output: String,
        /// Run journalctl with sudo (a user who may not read the system journal).
        #[arg(long)]
        sudo: bool,
        unit: String,
    },
}

/// A failure with fleetctl's exit status 1.
type Outcome = Result<(), String>;

/// Runs the command line; the exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn run(cli: &Cli) -> Outcome {
    if cli.driver != "api" {
        return Err(format!("--driver {}: Kiln's fleetctl speaks only to fleet's API (--driver api, the default); point --endpoint at a machine's API", cli.driver));
    }
    let timeout = Duration::from_secs_f64(cli.request_timeout.max(0.1));
    let api = ApiClient::new(&cli.endpoint, timeout);
    let err = |e: ClientError| e.to_string();
    match &cli.command {
        Cmd::ListMachines(f) => list_machines(&api.machines().map_err(err)?, f),
        Cmd::ListUnits(f) => list_units(&api, f),
        Cmd::ListUnitFiles(f) => list_unit_files(&api, f),
        Cmd::Submit { block, units } => {
            for name in create_units(&api, units, block.replace)? {
                println!("Unit {name} inactive");
            }
            Ok(())
        }
        Cmd::Load { block, units } => {
            let names = create_units(&api, units, block.replace)?;
            set_state(&api, &names, "loaded", block)
        }
        Cmd::Start { block, units } => {
            let names = create_units(&api, units, block.replace)?;
            set_state(&api, &names, "launched", block)
        }
        Cmd::Stop { block, units } => {
            let names = existing(&api, units)?;
            for name in &names {
                let unit = api
                    .unit(name)
                    .map_err(err)?
                    .ok_or_else(|| format!("Unit {name} does not exist."))?;
                if unit.desired_state == "inactive" {
                    return Err(format!("Unable to stop unit {name} in state inactive"));
                }
            }
            set_state(&api, &names, "loaded", block)?;
            eprintln!("Successfully stopped units {names:?}.");
            Ok(())
        }
        Cmd::Unload { block, units } => {
            let names = existing(&api, units)?;
            set_state(&api, &names, "inactive", block)?;
            eprintln!("Successfully unloaded units {names:?}.");
            Ok(())
        }
        Cmd::Destroy { units } => {
            for name in existing(&api, units)? {
                api.destroy(&name).map_err(err)?;
                println!("Destroyed {name}");
            }
            Ok(())
        }
        Cmd::Cat { unit } => {
            let name = mangle(unit);
            let unit = api
                .unit(&name)
                .map_err(err)?
                .ok_or_else(|| format!("Unit {name} not found"))?;
            print!("{}", UnitFile::from_options(unit.options).serialize());
            Ok(())
        }
        Cmd::Status { units } => {
            let mut failed = false;
            for name in existing(&api, units)? {
                let args = vec![
                    "systemctl".to_string(),
                    "status".into(),
                    "-l".into(),
                    name.clone(),
                ];
                if let Err(e) = on_unit_machine(cli, &api, &name, &args) {
                    eprintln!("{e}");
                    failed = true;
                }
            }
            if failed {
                Err("status of some units could not be shown".into())
            } else {
                Ok(())
            }
        }
        Cmd::Journal {
            lines,
            follow,
            output,
            sudo,
            unit,
        } => {
            let name = mangle(unit);
            let mut args: Vec<String> = Vec::new();
            if *sudo {
                args.push("sudo".into());
            }
            args.extend(
                ["journalctl", "--unit", name.as_str(), "--no-pager", "-n"]
                    .iter()
                    .map(|s| s.to_string()),
            );
            args.push(lines.to_string());
            args.extend(["--output".to_string(), output.clone()]);
            if *follow {
                args.push("-f".into());
            }
            on_unit_machine(cli, &api, &name, &args)
        }
    }
}

/// fleet's name mangling: a unit given without a type is a service.
fn mangle(name: &str) -> String {
    let base = Path::new(name)
        .file_name()
        .map_or(name.to_string(), |n| n.to_string_lossy().into_owned());
    if UnitName::parse(&base).is_ok() {
        base
    } else {
        format!("{base}.service")
    }
}

/// The units named (globs allowed) that exist in the cluster; an error names any that do not.
fn existing(api: &ApiClient, args: &[String]) -> Result<Vec<String>, String> {
    let all: Vec<String> = api
        .units()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|u| u.name)
        .collect();
    let mut names = Vec::new();
    for arg in args {
        let pattern = mangle(arg);
        let matched: Vec<&String> = all.iter().filter(|n| glob_match(&pattern, n)).collect();
        if matched.is_empty() {
            return Err(format!("Unit {pattern} does not exist."));
        }
        for name in matched {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    Ok(names)
}

/// Makes sure each named unit is in the cluster, as fleetctl did: the unit itself if there, else
/// a local file of that name, else (for an instance) its template from the cluster or a local
/// file. Returns the unit names.
fn create_units(api: &ApiClient, args: &[String], replace: bool) -> Result<Vec<String>, String> {
    let err = |e: ClientError| e.to_string();
    let mut names = Vec::new();
    for arg in args {
        let name = mangle(arg);
        let parsed = UnitName::parse(&name).map_err(|e| format!("{arg}: {e}"))?;
        let local = Path::new(arg);
        let local_file = if local.is_file() {
            Some(local.to_path_buf())
        } else {
            None
        };
        let existing = api.unit(&name).map_err(err)?;
        let from_file = |path: &Path| -> Result<UnitFile, String> {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            UnitFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
        };
        match (&existing, &local_file) {
            (Some(unit), Some(path)) if replace => {
                let new = from_file(path)?;
                if new.options != unit.options {
                    api.destroy(&name).map_err(err)?;
                    api.put(&name, "inactive", &new.options).map_err(err)?;
                }
            }
            (Some(_), _) => {}
            (None, Some(path)) => {
                api.put(&name, "inactive", &from_file(path)?.options)
                    .map_err(err)?;
            }
            (None, None) => {
                let template = parsed.template().filter(|_| parsed.is_instance());
                let options = match template {
                    Some(template) => match api.unit(&template).map_err(err)? {
                        Some(t) => t.options,
                        None => {
                            let dir = local.parent().unwrap_or(Path::new("."));
                            let path = dir.join(&template);
                            if path.is_file() {
                                from_file(&path)?.options
                            } else {
                                return Err(format!("Unable to find unit {name}: neither it nor its template {template} is in the cluster or here"));
                            }
                        }
                    },
                    None => return Err(format!("Unable to find unit {name}: it is not in the cluster and there is no such file here")),
                };
                api.put(&name, "inactive", &options).map_err(err)?;
            }
        }
        names.push(name);
    }
    Ok(names)
}

/// The cluster's machines by id.
fn machine_map(api: &ApiClient) -> Result<BTreeMap<String, ApiMachine>, String> {
    Ok(api
        .machines()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect())
}

fn machine_label(machines: &BTreeMap<String, ApiMachine>, id: &str, full: bool) -> String {
    let shown = if full {
        id.to_string()
    } else {
        format!("{}...", &id[..id.len().min(8)])
    };
    match machines.get(id) {
        Some(m) if !m.primary_ip.is_empty() => format!("{shown}/{}", m.primary_ip),
        _ => shown,
    }
}

/// Sets the desired state and, unless `--no-block`, waits for each unit to reach it.
fn set_state(api: &ApiClient, names: &[String], state: &str, block: &BlockFlags) -> Outcome {
    let err = |e: ClientError| e.to_string();
    let mut globals = Vec::new();
    for name in names {
        api.put(name, state, &[]).map_err(err)?;
        let unit = api.unit(name).map_err(err)?;
        if unit.as_ref().is_some_and(is_global) {
            globals.push(name.clone());
        }
    }
    let verb = match state {
        "launched" => "start",
        "loaded" => "load",
        _ => "unload",
    };
    if block.no_block {
        for name in names {
            let kind = if globals.contains(name) {
                "global unit"
            } else {
                "unit"
            };
            println!("Triggered {kind} {name} {verb}");
        }
        return Ok(());
    }
    for name in names {
        if globals.contains(name) {
            println!("Triggered global unit {name} {verb}");
            continue;
        }
        wait_for(api, name, state, block.block_attempts)?;
    }
    Ok(())
}

/// Whether a unit is `Global=true`, read as the engine and the agents read it.
fn is_global(unit: &ApiUnit) -> bool {
    let file = UnitFile::from_options(unit.options.clone());
    UnitName::parse(&unit.name)
        .ok()
        .and_then(|name| Requirements::from_unit(&name, &file).ok())
        .is_some_and(|(requirements, _)| requirements.global)
}

/// Polls until `name` reports `state` (and, for launched, systemd says active).
fn wait_for(api: &ApiClient, name: &str, state: &str, attempts: u32) -> Outcome {
    let err = |e: ClientError| e.to_string();
    let mut told = String::new();
    for attempt in 1.. {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let Some(unit) = api.unit(name).map_err(err)? else {
                return Err(format!("Unit {name} does not exist."));
            };
            let active = || -> Result<bool, String> {
                Ok(api.states().map_err(err)?.iter().any(|s| {
                    s.name == name && s.machine_id == unit.machine_id && s.active_state == "active"
                }))
            };
            if unit.current_state == state && (state != "launched" || active()?) {
                let machines = machine_map(api)?;
                match state {
                    "inactive" => println!("Unit {name} inactive"),
                    _ => println!(
                        "Unit {name} {state} on {}",
                        machine_label(&machines, &unit.machine_id, false)
                    ),
                }
                return Ok(());
            }
            if !unit.reason.is_empty() && unit.reason != told {
                eprintln!("Unit {name} is not scheduled yet: {}", unit.reason);
                told = unit.reason.clone();
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        if attempts > 0 && attempt >= attempts {
            return Err(format!(
                "Unit {name} did not reach {state} within {attempts} attempts"
            ));
        }
    }
    Ok(())
}

fn fields(
    f: &ListFlags,
    default: &[&'static str],
    all: &[&'static str],
) -> Result<Vec<String>, String> {
    let Some(given) = &f.fields else {
        return Ok(default.iter().map(|s| s.to_string()).collect());
    };
    let chosen: Vec<String> = given
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for field in &chosen {
        if !all.contains(&field.as_str()) {
            return Err(format!(
                "Invalid key in output fields: {field} (one of {})",
                all.join(", ")
            ));
        }
    }
    if chosen.is_empty() {
        return Err("no fields given to --fields".into());
    }
    Ok(chosen)
}

fn print_table(
    f: &ListFlags,
    columns: &[String],
    rows: Vec<BTreeMap<&'static str, String>>,
) -> Outcome {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            columns
                .iter()
                .map(|c| r.get(c.as_str()).cloned().unwrap_or_else(|| "-".into()))
                .collect()
        })
        .collect();
    let legend: Vec<&str> = columns.iter().map(String::as_str).collect();
    print!(
        "{}",
        table::render((!f.no_legend).then_some(legend.as_slice()), &rows)
    );
    Ok(())
}

fn list_machines(machines: &[ApiMachine], f: &ListFlags) -> Outcome {
    let columns = fields(
        f,
        &["machine", "ip", "metadata"],
        &["machine", "ip", "metadata"],
    )?;
    let rows = machines
        .iter()
        .map(|m| {
            let metadata = if m.metadata.is_empty() {
                "-".to_string()
            } else {
                m.metadata
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            BTreeMap::from([
                (
                    "machine",
                    if f.full {
                        m.id.clone()
                    } else {
                        format!("{}...", &m.id[..m.id.len().min(8)])
                    },
                ),
                ("ip", m.primary_ip.clone()),
                ("metadata", metadata),
            ])
        })
        .collect();
    print_table(f, &columns, rows)
}

fn list_units(api: &ApiClient, f: &ListFlags) -> Outcome {
    let err = |e: ClientError| e.to_string();
    let columns = fields(
        f,
        &["unit", "machine", "active", "sub"],
        &["unit", "machine", "active", "sub", "load", "hash"],
    )?;
    let machines = machine_map(api)?;
    let mut states = api.states().map_err(err)?;
    states.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
    let rows = states
        .iter()
        .map(|s| {
            BTreeMap::from([
                ("unit", s.name.clone()),
                ("machine", machine_label(&machines, &s.machine_id, f.full)),
                ("active", s.active_state.clone()),
                ("sub", s.sub_state.clone()),
                ("load", s.load_state.clone()),
                (
                    "hash",
                    if f.full {
                        s.hash.clone()
                    } else {
                        s.hash.chars().take(7).collect()
                    },
                ),
            ])
        })
        .collect();
    print_table(f, &columns, rows)
}

fn list_unit_files(api: &ApiClient, f: &ListFlags) -> Outcome {
    let err = |e: ClientError| e.to_string();
    let all = [
        "unit", "hash", "dstate", "state", "target", "tmachine", "desc", "global", "reason",
    ];
    let columns = fields(f, &["unit", "hash", "dstate", "state", "target"], &all)?;
    let machines = machine_map(api)?;
    let rows = api
        .units()
        .map_err(err)?
        .into_iter()
        .map(|u| {
            let unit = UnitFile::from_options(u.options.clone());
            let hash = unit.hash().hex_digits();
            let global = is_global(&u);
            let target = if global {
                "global".to_string()
            } else if u.machine_id.is_empty() {
                "-".to_string()
            } else {
                machine_label(&machines, &u.machine_id, f.full)
            };
            BTreeMap::from([
                ("unit", u.name.clone()),
                (
                    "hash",
                    if f.full {
                        hash
                    } else {
                        hash.chars().take(7).collect()
                    },
                ),
                ("dstate", u.desired_state.clone()),
                (
                    "state",
                    if global {
                        "-".to_string()
                    } else {
                        u.current_state.clone()
                    },
                ),
                ("tmachine", target.clone()),
                ("target", target),
                ("desc", unit.description().unwrap_or("-").to_string()),
                ("global", global.to_string()),
                (
                    "reason",
                    if u.reason.is_empty() {
                        "-".into()
                    } else {
                        u.reason.clone()
                    },
                ),
            ])
        })
        .collect();
    print_table(f, &columns, rows)
}

/// Runs `args` where `name` runs: here if this is its machine, else over ssh to its machine.
fn on_unit_machine(cli: &Cli, api: &ApiClient, name: &str, args: &[String]) -> Outcome {
    let err = |e: ClientError| e.to_string();
    let unit = api
        .unit(name)
        .map_err(err)?
        .ok_or_else(|| format!("Unit {name} does not exist."))?;
    let machine = if is_global(&unit) {
        // A global unit runs everywhere: show this machine's.
        local_machine_id().unwrap_or_default()
    } else if unit.machine_id.is_empty() {
        let why = if unit.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", unit.reason)
        };
        return Err(format!("Unit {name} does not appear to be running{why}."));
    } else {
        unit.machine_id.clone()
    };
    let mut command = if local_machine_id().as_deref() == Some(machine.as_str()) {
        let mut c = Command::new(&args[0]);
        c.args(&args[1..]);
        c
    } else {
        let ip = api
            .machines()
            .map_err(err)?
            .into_iter()
            .find(|m| m.id == machine)
            .map(|m| m.primary_ip)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| {
                format!("Unit {name} runs on machine {machine}, which is not in the cluster now")
            })?;
        ssh(cli, &ip, args)
    };
    let status = command
        .status()
        .map_err(|e| format!("running {}: {e}", args[0]))?;
    // systemctl status exits 3 for a unit that is not running: that is an answer, not a failure.
    match status.code() {
        Some(0) | Some(3) => Ok(()),
        _ => Err(format!(
            "{} for {name} exited with {status}",
            args.join(" ")
        )),
    }
}

fn ssh(cli: &Cli, ip: &str, args: &[String]) -> Command {
    let mut c = Command::new("ssh");
    if cli.strict_host_key_checking {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let dir = Path::new(&home).join(".fleetctl");
        let _ = std::fs::create_dir_all(&dir);
        c.args(["-o", "StrictHostKeyChecking=accept-new", "-o"])
            .arg(format!(
                "UserKnownHostsFile={}",
                dir.join("known_hosts").display()
            ));
    } else {
        c.args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ]);
    }
    c.args([
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-l",
        &cli.ssh_username,
        ip,
        "--",
    ]);
    c.args(args);
    c
}

fn local_machine_id() -> Option<String> {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
}
