//! `kiln-fleetd`: fleet's daemon on one machine (engine, agent and API). Settings come from
//! `/etc/fleet/fleet.conf` and `FLEET_*` variables, as fleet read them.

use std::path::PathBuf;

use clap::Parser;
use kiln_contract::fleet_conf::{FleetConf, FLEET_CONF, FLEET_SOCKET};

#[derive(Parser)]
#[command(
    version,
    about = "fleet's daemon: schedules systemd units across the cluster through etcd"
)]
struct Args {
    /// The settings file (fleet.conf); a missing file means the defaults.
    #[arg(long, default_value = FLEET_CONF)]
    config: PathBuf,
    /// Where the API listens.
    #[arg(long, default_value = FLEET_SOCKET)]
    socket: PathBuf,
    /// This machine's id (by default /etc/machine-id).
    #[arg(long)]
    machine_id: Option<String>,
}

fn main() {
    let args = Args::parse();
    let file = match std::fs::read_to_string(&args.config) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            eprintln!(
                "fleet: reading {}: {e}; using the defaults",
                args.config.display()
            );
            String::new()
        }
    };
    let (conf, problems) = FleetConf::load(&file, std::env::vars());
    for problem in problems {
        eprintln!("fleet: {problem}");
    }
    let machine_id = match args.machine_id {
        Some(id) => id,
        None => match std::fs::read_to_string("/etc/machine-id") {
            Ok(id) if !id.trim().is_empty() => id.trim().to_owned(),
            _ => {
                eprintln!("fleet: /etc/machine-id is missing or empty: this machine has no id (run systemd-machine-id-setup, or pass --machine-id)");
                std::process::exit(1);
            }
        },
    };
    if let Err(e) = kiln_fleet::daemon::run(&conf, &machine_id, &args.socket) {
        eprintln!("fleet: {e}");
        std::process::exit(1);
    }
}
