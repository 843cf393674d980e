//! `kiln-update`: the operator's command line for the update agent.
//!
//! It talks to the daemon through files rather than a socket: `status` reads the state file the
//! daemon saves after every transition, `check` creates a trigger file the idle daemon polls each
//! second, and `rollback` / `bless` act on the boot entries directly (they are single renames on
//! the ESP and must work even when the daemon is stopped).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use kiln_agent::identity::Paths;
use kiln_agent::installer::Installer;
use kiln_agent::real::RealInstaller;
use kiln_agent::state::Status;

#[derive(Parser)]
#[command(
    name = "kiln-update",
    version,
    about = "Status and control of the Kiln update agent"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Where the update stands, and the boot entries.
    Status {
        /// Print the agent's state file as is.
        #[arg(long)]
        json: bool,
    },
    /// Ask the agent to check for an update now.
    Check {
        /// Seconds to wait for the agent to pick the request up.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Make the other slot the next boot (takes effect at the next reboot).
    Rollback,
    /// Mark the running slot good (remove its boot counter).
    Bless,
}

fn main() {
    // Like any other command, `kiln-update status | head` ends quietly when the reader goes away
    // (Rust ignores SIGPIPE, and println! would panic on the closed pipe).
    // SAFETY: setting a signal's disposition at the start of main, before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args = Args::parse();
    let paths = Paths::system();
    let result = match args.command {
        Command::Status { json } => status(&paths, json),
        Command::Check { wait } => check(&paths, Duration::from_secs(wait)),
        Command::Rollback => rollback(&paths),
        Command::Bless => bless(&paths),
    };
    if let Err(e) = result {
        eprintln!("kiln-update: {e:#}");
        std::process::exit(1);
    }
}

fn load(paths: &Paths) -> anyhow::Result<Status> {
    Ok(Status::load(&paths.state_file())?)
}

fn installer(paths: &Paths) -> anyhow::Result<RealInstaller> {
    RealInstaller::for_machine(paths, Path::new("/sys/class/block"))
        .context("finding the disk and the update key")
}

fn status(paths: &Paths, json: bool) -> anyhow::Result<()> {
    let s = load(paths)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("state:        {}", s.state.name());
    if let Some(p) = &s.progress {
        let pct = (p.done * 100).checked_div(p.total).unwrap_or(0);
        println!(
            "progress:     {} {}/{} bytes ({pct}%)",
            p.phase, p.done, p.total
        );
    }
    if let Some(t) = s.last_check {
        println!("last check:   {}", utc(t));
    }
    if s.next_check == 0 {
        println!("next check:   when the agent starts");
    } else {
        println!("next check:   {}", utc(s.next_check));
    }
    if let Some(e) = &s.last_error {
        println!("last error:   {e}");
    }
    if !s.bad_versions.is_empty() {
        let bad: Vec<&str> = s.bad_versions.iter().map(String::as_str).collect();
        println!("bad versions: {}", bad.join(", "));
    }
    if s.lock_held {
        println!("reboot lock:  held by this machine");
    }
    if !s.unsent_events.is_empty() {
        println!(
            "unsent:       {} event(s), sent before the next check",
            s.unsent_events.len()
        );
    }
    match installer(paths) {
        Ok(i) => {
            println!(
                "running slot: {} on {}",
                i.target.running,
                i.target.disk.display()
            );
            for entry in i.boot_entries().map_err(|e| anyhow::anyhow!(e))? {
                println!("boot entry:   {entry}");
            }
        }
        Err(e) => println!("boot entries: unavailable ({e:#})"),
    }
    Ok(())
}

fn check(paths: &Paths, wait: Duration) -> anyhow::Result<()> {
    let before = load(paths)?;
    let trigger = paths.check_trigger();
    std::fs::create_dir_all(&paths.run_dir)
        .with_context(|| format!("creating {}", paths.run_dir.display()))?;
    std::fs::write(&trigger, b"").with_context(|| format!("creating {}", trigger.display()))?;
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        if trigger.exists() {
            continue;
        }
        // Picked up: wait for the check itself to finish (bounded by the same deadline).
        let now = load(paths)?;
        if now.last_check != before.last_check && now.state.name() != "checking" {
            println!("checked: state {}", now.state.name());
            if let Some(e) = now.last_error {
                println!("last error: {e}");
            }
            return Ok(());
        }
    }
    if trigger.exists() {
        bail!(
            "the agent did not pick up the request within {}s (it stays queued; the agent \
             checks only when idle): see `kiln-update status` and `systemctl status kiln-update-agent`",
            wait.as_secs()
        );
    }
    println!("the agent took the request; `kiln-update status` shows its progress");
    Ok(())
}

fn rollback(paths: &Paths) -> anyhow::Result<()> {
    let s = load(paths)?;
    if s.state.is_installing() {
        bail!(
            "the agent is writing the other slot now ({}); try again when it is done",
            s.state.name()
        );
    }
    let slot = installer(paths)?
        .rollback()
        .map_err(|e| anyhow::anyhow!(e))?;
    println!("slot {slot} boots next; reboot to use it");
    Ok(())
}

fn bless(paths: &Paths) -> anyhow::Result<()> {
    let mut i = installer(paths)?;
    let changed = i.bless().map_err(|e| anyhow::anyhow!(e))?;
    let slot = i.target.running;
    if changed {
        println!("slot {slot} blessed");
    } else {
        println!("slot {slot} was already blessed");
    }
    Ok(())
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(secs: u64) -> String {
    let text = kiln_image::civil::rfc3339(i64::try_from(secs).unwrap_or(i64::MAX));
    format!("{} UTC", text.trim_end_matches('Z').replacen('T', " ", 1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            super::utc(1_795_046_400 + 4 * 3600 + 61),
            "2026-11-19 04:01:01 UTC"
        );
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
