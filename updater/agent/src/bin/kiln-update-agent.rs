//! `kiln-update-agent`: the update daemon (run by kiln-update-agent.service). All the work is in
//! the `kiln_agent` library; this file only wires the real machine to it.

use std::path::Path;

use anyhow::Context;
use clap::Parser;
use kiln_agent::agent::{Agent, Parts};
use kiln_agent::client::OmahaClient;
use kiln_agent::host::SystemHost;
use kiln_agent::identity::{Identity, Paths};
use kiln_agent::real::RealInstaller;
use kiln_agent::strategy::Strategy;
use kiln_contract::update_conf::Settings;

/// Checks the Omaha server, installs updates into the inactive slot, reboots by the configured
/// strategy and blesses the new slot once healthy. Configured by /usr/lib/kiln/update.conf and
/// /etc/kiln/update.conf.
#[derive(Parser)]
#[command(name = "kiln-update-agent", version)]
struct Args {}

fn main() {
    let _ = Args::parse();
    if let Err(e) = run() {
        eprintln!("kiln-update-agent: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let paths = Paths::system();
    let files: Vec<&Path> = paths.config_files.iter().map(|p| p.as_path()).collect();
    let (config, warnings) = Settings::load(&files).context("reading the update configuration")?;
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    let identity = Identity::read(&paths, &config).context("reading the machine's identity")?;
    let http = kiln_agent::http::agent_for(&config).context("setting up HTTPS")?;
    let strategy = Strategy::from_config(&config, &http, &identity.machine_id)
        .context("setting up the reboot strategy")?;
    let mut installer = RealInstaller::for_machine(&paths, Path::new("/sys/class/block"))
        .context("finding the disk and the update key")?;
    let mut host = SystemHost {
        boot_id_path: paths.boot_id.clone(),
    };
    eprintln!(
        "kiln-update-agent {}: version {} on slot {}, channel {}, strategy {}",
        env!("CARGO_PKG_VERSION"),
        identity.version,
        installer.target.running,
        identity.channel,
        config.reboot_strategy.as_str()
    );
    let url = config.server.clone().unwrap_or_default();
    let client = OmahaClient::new(http.clone(), &url, identity);
    let mut agent = Agent::new(Parts {
        config,
        paths,
        client,
        http,
        strategy,
        installer: &mut installer,
        host: &mut host,
    })
    .context("loading the update state")?;
    agent.run().context("saving the update state")?;
    Ok(())
}
