//! `kiln-etcd`: the device's etcd helpers, run by systemd units.
//!
//! - `kiln-etcd gateway` (kiln-etcd-gateway.service): a worker machine's etcd (`etcd2: proxy:
//!   on`). Finds the cluster's members from etcd's own settings (`/etc/default/etcd`, read by
//!   the unit), passes every connection on the machine's client address to one of them
//!   (`proxy.rs`), and follows the members as they change. Until a member answers it retries,
//!   saying why, every few seconds.
//! - `kiln-etcd check-discovery` (before a member's etcd starts, from kiln-config's drop-in):
//!   when the member has not joined yet and has a discovery URL, says what the URL answers for
//!   this machine (not a token, waiting for others, registered, the cluster full) in the
//!   member's journal and in the cloud-config report. Never fails: etcd decides.

use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread::sleep;
use std::time::Duration;

use kiln_contract::paths::CLOUD_CONFIG_REPORT;
use kiln_etcd::discovery;
use kiln_etcd::gateway::{self, GatewayConfig, GatewayError};
use kiln_etcd::proxy::{self, Members};

/// Every question to a member or the discovery service is bounded by this.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Between attempts while no member answers.
const RETRY: Duration = Duration::from_secs(5);
/// How often the members are asked again (etcd's v2 proxy refreshed every 30 s too).
const REFRESH: Duration = Duration::from_secs(30);
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
    // Members first: until one answers, local clients are refused at once rather than held.
    let urls = find_members(&cfg);
    let listener = match TcpListener::bind(&cfg.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kiln-etcd: listening on {}: {e}", cfg.listen);
            return ExitCode::FAILURE;
        }
    };
    let members = Members::new(&endpoints(&urls));
    eprintln!(
        "kiln-etcd: passing connections on {} to the members",
        cfg.listen
    );
    let refreshed = Arc::clone(&members);
    std::thread::spawn(move || {
        let mut urls = urls;
        loop {
            sleep(REFRESH);
            match gateway::current_client_urls(&urls, TIMEOUT) {
                Ok(now) if now != urls => {
                    eprintln!(
                        "kiln-etcd: the cluster's members changed: {} (were {})",
                        now.join(", "),
                        urls.join(", ")
                    );
                    refreshed.set(&endpoints(&now));
                    urls = now;
                }
                Ok(_) => {}
                // The proxy goes on with the members it has; they may be back soon.
                Err(e) => eprintln!("kiln-etcd: asking the cluster for its members: {e}"),
            }
        }
    });
    match proxy::serve(listener, members, |m| eprintln!("kiln-etcd: {m}")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln-etcd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Client URLs as the proxy dials them (`host:port`).
fn endpoints(urls: &[String]) -> Vec<String> {
    urls.iter()
        .map(|u| gateway::host_port(u).unwrap_or_else(|| u.clone()))
        .collect()
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
