//! `fleetctl`: fleet's command line (see `kiln_fleet::ctl`).

fn main() {
    std::process::exit(kiln_fleet::ctl::main());
}
