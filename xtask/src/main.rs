//! `cargo xtask`: Kiln's build pipeline and developer commands. `main` only dispatches; each
//! command lives in its own module.

mod bench;
mod build;
mod host;
mod qemu;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Kiln's build pipeline and developer commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the image: build/<version>/disk.raw (+ disk.qcow2) and a report.
    BuildImage(build::BuildConfig),
    /// Resolve image.toml's packages against the mirror and write image/packages.lock.
    Lock(build::LockConfig),
    /// Benchmarks against the reference tools, as ratios measured in one run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Boot a built image in QEMU on this terminal (serial console, ssh forwarded).
    Qemu(qemu::QemuConfig),
    /// Run the unit tests, the format checks against the reference tools, and the VM scenarios.
    Test(test::TestConfig),
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::BuildImage(cfg) => build::build_image(&cfg).map(drop),
        Command::Lock(cfg) => build::lock(&cfg),
        Command::Bench(cmd) => bench::run(&cmd),
        Command::Qemu(cfg) => qemu::run(&cfg),
        Command::Test(cfg) => test::run(&cfg),
    };
    if let Err(err) = result {
        // The whole cause chain, one cause a line: the top says what failed, the rest why.
        eprintln!("error: {err}");
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}
