//! `kiln-config`: the cloud-config's side in the booted system (static, in `/usr/bin`).
//!
//! - `kiln-config boot` (kiln-cloud-config.service, every boot): prints what first boot applied
//!   to the journal, starts the units the document asked for (`command: start` …), and fails the
//!   unit when the document had errors, so `systemctl --failed` and the journal show them.
//! - `kiln-config fetch-url` (kiln-config-url.service): when first boot found no document and
//!   the kernel command line has `kiln.config.url=`, fetches it once the network is up, applies
//!   it to the running system, and starts its units.
//! - `kiln-config validate FILE`: checks a document the way first boot reads it.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use kiln_config::{ApplyOptions, Status, REPORT_FILE, UNITS_TO_START};

/// How long `fetch-url` keeps trying while the network or the server is not there yet.
const FETCH_DEADLINE: Duration = Duration::from_secs(300);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["boot"] => boot(Path::new("/")),
        ["fetch-url"] => fetch_url(),
        ["validate", file] => validate(Path::new(file)),
        _ => {
            eprintln!("usage: kiln-config boot | fetch-url | validate FILE");
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
    let mut failed = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        println!("systemctl --no-block {line}");
        let ok = Command::new("systemctl")
            .arg("--no-block")
            .args(&words)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            failed.push(line.to_string());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("systemctl failed for: {}", failed.join(", ")))
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
    let parsed = match kiln_config::parse_bytes(&bytes) {
        Ok(p) => p,
        Err(e) => {
            let report = kiln_config::rejected_report(&url, &e.to_string());
            write_report(&report)?;
            print!("{report}");
            return Err(format!("the cloud-config from {url} was not applied"));
        }
    };
    for w in &parsed.warnings {
        println!("{w}");
    }
    let opts = ApplyOptions {
        run_dir: Some("/run".into()),
    };
    let report =
        kiln_config::apply(&parsed.config, Path::new("/"), &opts).map_err(|e| e.to_string())?;
    println!("cloud-config from {url}:\n{report}");
    if let Some(name) = &parsed.config.hostname {
        // /etc/hostname is read at boot; the running kernel learns the name here.
        std::fs::write("/proc/sys/kernel/hostname", name)
            .map_err(|e| format!("setting the hostname: {e}"))?;
    }
    let reload = Command::new("systemctl").arg("daemon-reload").status();
    if !reload.map(|s| s.success()).unwrap_or(false) {
        return Err("systemctl daemon-reload failed".into());
    }
    start_units(Path::new("/"))?;
    if report.all_ok() {
        Ok(())
    } else {
        Err(format!(
            "the cloud-config from {url} was applied with errors"
        ))
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

fn write_report(text: &str) -> Result<(), String> {
    let path = Path::new(REPORT_FILE);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("writing {REPORT_FILE}: {e}"))
}

/// Parses a document and prints its warnings; an error is the exit status.
fn validate(file: &Path) -> Result<(), String> {
    let bytes = std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let parsed =
        kiln_config::parse_bytes(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    for w in &parsed.warnings {
        println!("{}: {w}", file.display());
    }
    println!("{}: valid", file.display());
    Ok(())
}
