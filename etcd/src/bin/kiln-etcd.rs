//! `kiln-etcd`: the device's etcd helpers, run by systemd units.
//!
//! - `kiln-etcd gateway` (kiln-etcd-gateway.service): a worker machine's etcd (`etcd2: proxy:
//!   on`). Finds the cluster's members from etcd's own settings (`/etc/default/etcd`, read by
//!   the unit), runs `etcd gateway start` to them on the machine's client address, and starts it
//!   again when the members change. Until a member answers it retries, saying why, every few
//!   seconds.
//! - `kiln-etcd check-discovery` (before a member's etcd starts, from kiln-config's drop-in):
//!   when the member has not joined yet and has a discovery URL, says what the URL answers for
//!   this machine (not a token, waiting for others, registered, the cluster full) in the
//!   member's journal and in the cloud-config report. Never fails: etcd decides.

use std::process::{Child, Command, ExitCode};
use std::thread::sleep;
use std::time::{Duration, Instant};

use kiln_contract::paths::CLOUD_CONFIG_REPORT;
use kiln_etcd::discovery;
use kiln_etcd::gateway::{self, GatewayConfig, GatewayError};

/// Every question to a member or the discovery service is bounded by this.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Between attempts while no member answers.
const RETRY: Duration = Duration::from_secs(5);
/// How often the members are asked again (etcd's v2 proxy refreshed every 30 s too).
const REFRESH: Duration = Duration::from_secs(30);
const ETCD: &str = "/usr/bin/etcd";
/// The report's line this writes (one, replaced at each check).
const REPORT_LINE: &str = "etcd discovery: ";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["gateway"] => gateway_main(),
        ["check-discovery"] => {
            check_discovery();
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: kiln-etcd gateway | check-discovery");
            ExitCode::from(2)
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn check_discovery() {
    let Some(url) = env("ETCD_DISCOVERY") else {
        return;
    };
    // A member that has joined reads its cluster from its data, not from discovery.
    if let Some(dir) = env("ETCD_DATA_DIR") {
        if std::path::Path::new(&dir).join("member").exists() {
            return;
        }
    }
    let mine: Vec<String> = env("ETCD_INITIAL_ADVERTISE_PEER_URLS")
        .unwrap_or_else(|| "http://localhost:2380".into())
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .collect();
    let message = discovery::check(&url, &mine, TIMEOUT).message(&url, &mine);
    eprintln!("kiln-etcd: discovery: {message}");
    let report = std::fs::read_to_string(CLOUD_CONFIG_REPORT).unwrap_or_default();
    if report.is_empty() {
        return;
    }
    let mut text: String = report
        .lines()
        .filter(|l| !l.starts_with(REPORT_LINE))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("{REPORT_LINE}{message}\n"));
    let tmp = format!("{CLOUD_CONFIG_REPORT}.tmp");
    if let Err(e) =
        std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, CLOUD_CONFIG_REPORT))
    {
        eprintln!("kiln-etcd: writing {CLOUD_CONFIG_REPORT}: {e}");
    }
}

fn gateway_main() -> ExitCode {
    let cfg = match GatewayConfig::from_env(|name| std::env::var(name).ok()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("kiln-etcd: {e}");
            // Not retried: the settings do not change by waiting.
            return ExitCode::from(2);
        }
    };
    let mut members = find_members(&cfg);
    loop {
        let mut child = start(&cfg, &members);
        let mut next = Instant::now() + REFRESH;
        loop {
            sleep(Duration::from_millis(500));
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("kiln-etcd: etcd gateway ended ({status}); starting it again");
                sleep(Duration::from_secs(1));
                break;
            }
            if Instant::now() < next {
                continue;
            }
            next = Instant::now() + REFRESH;
            match gateway::current_client_urls(&members, TIMEOUT) {
                Ok(now) if now != members => {
                    eprintln!(
                        "kiln-etcd: the cluster's members changed: {} (were {}); starting the gateway again",
                        now.join(", "),
                        members.join(", ")
                    );
                    members = now;
                    stop(&mut child);
                    break;
                }
                Ok(_) => {}
                // The gateway goes on with the members it has; they may be back soon.
                Err(e) => eprintln!("kiln-etcd: asking the cluster for its members: {e}"),
            }
        }
    }
}

/// The members' client URLs, retried until some member answers.
fn find_members(cfg: &GatewayConfig) -> Vec<String> {
    let mut said = None::<String>;
    loop {
        let found = gateway::peer_urls(&cfg.seeds, TIMEOUT)
            .and_then(|peers| gateway::client_urls(&peers, TIMEOUT));
        match found {
            Ok(urls) => {
                eprintln!("kiln-etcd: the cluster's members: {}", urls.join(", "));
                return urls;
            }
            Err(GatewayError::Config(e)) => {
                eprintln!("kiln-etcd: {e}");
                std::process::exit(2);
            }
            Err(GatewayError::Unreachable(e)) => {
                // Said once per distinct reason, not every few seconds.
                if said.as_deref() != Some(e.as_str()) {
                    eprintln!("kiln-etcd: {e}; retrying every {} s", RETRY.as_secs());
                    said = Some(e);
                }
                sleep(RETRY);
            }
        }
    }
}

fn start(cfg: &GatewayConfig, members: &[String]) -> Child {
    let args = gateway::gateway_args(cfg, members);
    eprintln!("kiln-etcd: {ETCD} {}", args.join(" "));
    let mut cmd = Command::new(ETCD);
    cmd.args(&args);
    // The member settings in the environment are not the gateway's.
    for (name, _) in std::env::vars() {
        if name.starts_with("ETCD_") {
            cmd.env_remove(name);
        }
    }
    match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("kiln-etcd: starting {ETCD}: {e}; is etcd-server in the image?");
            std::process::exit(1);
        }
    }
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
