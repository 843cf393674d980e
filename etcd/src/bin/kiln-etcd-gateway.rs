//! `kiln-etcd-gateway`: a worker machine's etcd (`etcd2: proxy: on`). Finds the cluster's
//! members from etcd's own settings (`/etc/default/etcd`, read by the unit), runs
//! `etcd gateway start` to them on the machine's client address, and starts it again when the
//! members change. Until a member answers it retries, saying why, every few seconds.

use std::process::{Child, Command};
use std::thread::sleep;
use std::time::{Duration, Instant};

use kiln_etcd::gateway::{self, GatewayConfig, GatewayError};

/// Every question to a member or the discovery service is bounded by this.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Between attempts while no member answers.
const RETRY: Duration = Duration::from_secs(5);
/// How often the members are asked again (etcd's v2 proxy refreshed every 30 s too).
const REFRESH: Duration = Duration::from_secs(30);
const ETCD: &str = "/usr/bin/etcd";

fn main() {
    let cfg = match GatewayConfig::from_env(|name| std::env::var(name).ok()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("kiln-etcd-gateway: {e}");
            // Not retried: the settings do not change by waiting.
            std::process::exit(2);
        }
    };
    let mut members = find_members(&cfg);
    loop {
        let mut child = start(&cfg, &members);
        let mut next = Instant::now() + REFRESH;
        loop {
            sleep(Duration::from_millis(500));
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("kiln-etcd-gateway: etcd gateway ended ({status}); starting it again");
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
                        "kiln-etcd-gateway: the cluster's members changed: {} (were {}); starting the gateway again",
                        now.join(", "),
                        members.join(", ")
                    );
                    members = now;
                    stop(&mut child);
                    break;
                }
                Ok(_) => {}
                // The gateway goes on with the members it has; they may be back soon.
                Err(e) => eprintln!("kiln-etcd-gateway: asking the cluster for its members: {e}"),
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
                eprintln!("kiln-etcd-gateway: the cluster's members: {}", urls.join(", "));
                return urls;
            }
            Err(GatewayError::Config(e)) => {
                eprintln!("kiln-etcd-gateway: {e}");
                std::process::exit(2);
            }
            Err(GatewayError::Unreachable(e)) => {
                // Said once per distinct reason, not every few seconds.
                if said.as_deref() != Some(e.as_str()) {
                    eprintln!("kiln-etcd-gateway: {e}; retrying every {} s", RETRY.as_secs());
                    said = Some(e);
                }
                sleep(RETRY);
            }
        }
    }
}

fn start(cfg: &GatewayConfig, members: &[String]) -> Child {
    let args = gateway::gateway_args(cfg, members);
    eprintln!("kiln-etcd-gateway: {ETCD} {}", args.join(" "));
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
            eprintln!("kiln-etcd-gateway: starting {ETCD}: {e}; is etcd-server in the image?");
            std::process::exit(1);
        }
    }
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
