//! `cargo xtask`: Kiln's build pipeline and developer commands. `main` only dispatches; each
//! command lives in its own module.

mod bench;
mod bench_boot;
mod bench_build;
mod bench_flash;
mod bench_fleet;
mod bench_server;
mod bench_update;
mod build;
mod flash;
mod host;
mod keygen;
mod measure;
mod parallel;
mod publish;
mod qemu;
mod release;
mod serve;
mod test;
mod validate;

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
    Lock(build::packages::LockConfig),
    /// Benchmarks against the reference tools, as ratios measured in one run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Write a built image to a whole disk (or --to-file), checked, with its cloud-config on OEM.
    Flash(flash::FlashConfig),
    /// Make the update signing key pair (private key 0600, public key for the image).
    Keygen(keygen::KeygenConfig),
    /// Boot a built image in QEMU on this terminal (serial console, ssh forwarded).
    Qemu(qemu::QemuConfig),
    /// Upload build/<version>/update.payload to an update server and point a channel at it.
    Publish(publish::PublishConfig),
    /// Run the update server (state under build/server/).
    Serve(serve::ServeArgs),
    /// Empty the build's stage cache (~/.cache/kiln/stages/); --packages also the downloaded
    /// Debian packages.
    Clean(CleanConfig),
    /// Run the unit tests, the format checks against the reference tools, and the VM scenarios.
    Test(test::TestConfig),
    /// Check cloud-config documents with the parser first boot uses (line and column in errors).
    ValidateConfig(validate::ValidateConfig),
}

#[derive(clap::Args)]
struct CleanConfig {
    /// Also remove the downloaded Debian packages and indices (~/.cache/kiln/).
    #[arg(long)]
    packages: bool,
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::BuildImage(cfg) => build::build_image(&cfg).map(drop),
        Command::Lock(cfg) => build::packages::lock(&cfg),
        Command::Bench(cmd) => bench::run(&cmd),
        Command::Flash(cfg) => flash::run(&cfg),
        Command::Keygen(cfg) => keygen::run(&cfg),
        Command::Qemu(cfg) => qemu::run(&cfg),
        Command::Publish(cfg) => publish::run(&cfg),
        Command::Serve(args) => serve::run(&args),
        Command::Clean(cfg) => build::cache::clean(cfg.packages),
        Command::Test(cfg) => test::run(&cfg),
        Command::ValidateConfig(cfg) => validate::run(&cfg),
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
