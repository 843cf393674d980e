//! `cloud_config FILE [ROOT]`: checks a cloud-config like the init would, prints warnings and
//! the error with its line and column, and with ROOT applies it there and prints the report.
//! Also the smallest binary that proves the crate links statically for the initramfs.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(file) = args.first() else {
        eprintln!("usage: cloud_config FILE [ROOT]");
        return ExitCode::from(2);
    };
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("reading {file}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let parsed = match kiln_config::parse_bytes(&bytes) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{file}: {e}");
            return ExitCode::FAILURE;
        }
    };
    for w in &parsed.warnings {
        eprintln!("{file}: {w}");
    }
    let Some(root) = args.get(1) else {
        return ExitCode::SUCCESS;
    };
    match kiln_config::apply(
        &parsed.config,
        Path::new(root),
        &kiln_config::ApplyOptions::default(),
    ) {
        Ok(report) => {
            print!("{report}");
            if report.all_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
