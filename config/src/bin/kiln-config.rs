//! `kiln-config`: the cloud-config's side in the booted system (static, in `/usr/bin`).
//!
//! - `kiln-config boot` (kiln-cloud-config.service, every boot): prints what first boot applied
//!   to the journal, starts the units the document asked for (`command: start` …), and fails the
//!   unit when the document had errors, so `systemctl --failed` and the journal show them.
//! - `kiln-config fetch-url` (kiln-config-url.service): when first boot found no document and
//!   the kernel command line has `kiln.config.url=`, fetches it once the network is up, applies
//!   it to the running system, and starts its units.
//! - `kiln-config addresses` (kiln-config-addresses.service): when the document said
//!   `$private_ipv4` or `$public_ipv4`, waits for the machine's addresses and applies it again
//!   with them in place (see `addresses.rs`), before etcd, fleet and the document's units start.
//! - `kiln-config run-scripts` (kiln-user-data.service): runs the user-data's scripts once.
//! - `kiln-config validate FILE`: checks a document the way first boot reads it.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use kiln_config::{ApplyOptions, Status, REPORT_FILE, UNITS_TO_START};

/// How long `fetch-url` keeps trying while the network or the server is not there yet.
const FETCH_DEADLINE: Duration = Duration::from_secs(300);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `addresses` waits for the network to give the machine its addresses.
const ADDRESS_WAIT: Duration = Duration::from_secs(120);
/// Where the booted system's runtime units go.
const RUN_DIR: &str = "/run";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["boot"] => boot(Path::new("/")),
        ["fetch-url"] => fetch_url(),
        ["addresses"] => addresses(),
        ["run-scripts"] => kiln_config::run_scripts(Path::new("/")).map(|n| {
            println!("{n} user-data scripts ran");
        }),
        ["validate", file] => validate(Path::new(file)),
        _ => {
            eprintln!(
                "usage: kiln-config boot | fetch-url | addresses | run-scripts | validate FILE"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln-config: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Shows the first-boot report and starts the asked-for units; fails when the document had errors.
fn boot(root: &Path) -> Result<(), String> {
    let report_path = root.join(REPORT_FILE.trim_start_matches('/'));
    let report = std::fs::read_to_string(&report_path)
        .map_err(|e| format!("reading {}: {e}", report_path.display()))?;
    print!("{report}");
    start_units(root)?;
    match Status::of_report(&report) {
        Some(Status::Applied) => Ok(()),
        Some(status) => Err(format!(
            "the cloud-config {}: see the report above (also in {REPORT_FILE}); fix the document and reprovision, or apply the fix by hand",
            match status {
                Status::Rejected => "was not applied",
                _ => "was applied with errors",
            }
        )),
        None => Err(format!("{REPORT_FILE} has no status line")),
    }
}

/// `systemctl --no-block <command> <unit>` for each line of the start list (not waiting: a unit
/// ordered after this one must not deadlock it).
fn start_units(root: &Path) -> Result<(), String> {
    let list = root.join(UNITS_TO_START.trim_start_matches('/'));
    let text = match std::fs::read_to_string(&list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("reading {}: {e}", list.display())),
    };
    let failed: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|line| systemctl_no_block(line).is_err())
        .map(str::to_string)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("systemctl failed for: {}", failed.join(", ")))
    }
}

/// `systemctl --no-block <line>`, said on the console.
fn systemctl_no_block(line: &str) -> Result<(), String> {
    println!("systemctl --no-block {line}");
    systemctl(&format!("--no-block {line}"))
}

fn daemon_reload() -> Result<(), String> {
    systemctl("daemon-reload")
}

/// `systemctl <line>` (its words split at whitespace); an error names the command.
fn systemctl(line: &str) -> Result<(), String> {
    let ok = Command::new("systemctl")
        .args(line.split_whitespace())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(format!("systemctl {line} failed"))
    }
}

/// How `fetch-url` and `addresses` apply a document: to the running system, its runtime units
/// under `/run`.
fn running_system() -> ApplyOptions {
    ApplyOptions {
        run_dir: Some(RUN_DIR.into()),
        ..Default::default()
    }
}

/// Fetches, applies and starts the document of `kiln.config.url=`, once.
fn fetch_url() -> Result<(), String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("reading /proc/cmdline: {e}"))?;
    let Some(url) = kiln_config::config_url(&cmdline) else {
        println!("no {}= on the kernel command line", kiln_config::URL_PARAM);
        return Ok(());
    };
    if Path::new(REPORT_FILE).exists() {
        println!("a cloud-config was already taken at first boot (see {REPORT_FILE}); {url} is not fetched");
        return Ok(());
    }
    let bytes = fetch_with_retries(&url)?;
    let opts = running_system();
    let done = kiln_config::apply_user_data(&bytes, &url, Path::new("/"), &opts)
        .map_err(|e| e.to_string())?;
    for line in &done.console {
        println!("{line}");
    }
    print!("{}", done.report);
    if done.status == Status::Rejected {
        return Err(format!("the user-data from {url} was not applied"));
    }
    // /etc/hostname is read at boot; the running kernel learns the name here.
    if let Ok(name) = std::fs::read_to_string("/etc/hostname") {
        std::fs::write("/proc/sys/kernel/hostname", name.trim())
            .map_err(|e| format!("setting the hostname: {e}"))?;
    }
    if done.addresses_pending {
        // The network is up: the addresses are written in right away.
        addresses()?;
    }
    daemon_reload()?;
    start_units(Path::new("/"))?;
    if done.scripts > 0 {
        systemctl_no_block("start kiln-user-data.service")?;
    }
    if done.status == Status::Applied {
        Ok(())
    } else {
        Err(format!("the user-data from {url} was applied with errors"))
    }
}

/// Waits for the machine's addresses and applies the kept documents again with them in place.
fn addresses() -> Result<(), String> {
    let root = Path::new("/");
    let docs = kiln_config::pending_documents(root)?;
    if docs.is_empty() {
        println!("no cloud-config waits for the machine's addresses");
        return Ok(());
    }
    let texts: Vec<String> = docs.into_iter().map(|(_, text)| text).collect();
    let (settings, statics) = kiln_config::address_rules(&texts)?;
    let chosen = kiln_config::addresses::wait_for(&settings, &statics, ADDRESS_WAIT).map_err(|e| {
        format!(
            "{e}; the services that use them run with {} (name the interfaces with `addresses: private-interface:` / `public-interface:`)",
            kiln_config::addresses::PLACEHOLDER
        )
    });
    let opts = running_system();
    let (added, all_ok) =
        kiln_config::complete_addresses(root, &opts, chosen.as_ref().map_err(String::as_str))
            .map_err(|e| e.to_string())?;
    print!("{added}");
    daemon_reload()?;
    if !all_ok {
        Err(format!(
            "applying the cloud-config with its addresses failed: see {REPORT_FILE}"
        ))
    } else {
        Ok(())
    }
}

/// Tries until [`FETCH_DEADLINE`]: at boot the server or the route may come up a little later.
fn fetch_with_retries(url: &str) -> Result<Vec<u8>, String> {
    let start = Instant::now();
    let mut wait = Duration::from_secs(1);
    loop {
        match kiln_config::fetch::fetch(url, FETCH_TIMEOUT) {
            Ok(body) => return Ok(body),
            Err(e) if start.elapsed() + wait < FETCH_DEADLINE => {
                println!("{e}; trying again in {} s", wait.as_secs());
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            // No report is written: the next boot tries again.
            Err(e) => {
                return Err(format!(
                    "giving up after {} s: {e}",
                    start.elapsed().as_secs()
                ))
            }
        }
    }
}

/// Reads a user-data as first boot does and prints what first boot does with it and its
/// warnings; an error is the exit status.
fn validate(file: &Path) -> Result<(), String> {
    let bytes = std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let user_data =
        kiln_config::read_user_data(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    let (lines, warnings) = kiln_config::describe(user_data);
    for line in &lines {
        println!("{}: {line}", file.display());
    }
    for w in &warnings {
        println!("{}: {w}", file.display());
    }
    println!("{}: valid", file.display());
    Ok(())
}
