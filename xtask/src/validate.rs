//! `cargo xtask validate-config FILE…`: checks cloud-configs on the host with the parser first
//! boot uses, so a typo is found before a machine boots with it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

#[derive(clap::Args)]
pub struct ValidateConfig {
    /// The cloud-config documents to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Prints each document's warnings (line, column, key) and fails on the first error.
pub fn run(cfg: &ValidateConfig) -> Result<()> {
    let mut bad = 0;
    for file in &cfg.files {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        match kiln_config::parse_bytes(&bytes) {
            Ok(parsed) => {
                for w in &parsed.warnings {
                    eprintln!("{}: {w}", file.display());
                }
                eprintln!(
                    "{}: valid ({} warning{})",
                    file.display(),
                    parsed.warnings.len(),
                    if parsed.warnings.len() == 1 { "" } else { "s" }
                );
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                bad += 1;
            }
        }
    }
    if bad > 0 {
        bail!(
            "{bad} of {} documents are not valid cloud-configs",
            cfg.files.len()
        );
    }
    Ok(())
}
