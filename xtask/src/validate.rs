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

/// Prints each document's warnings (line, column, key) and fails on the first error. A
/// user-data that is not a `#cloud-config` (empty, a script, multipart MIME) is told apart as
/// first boot does, and the cloud-config parts of a multipart one are checked.
pub fn run(cfg: &ValidateConfig) -> Result<()> {
    let mut bad = 0;
    for file in &cfg.files {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let shown = file.display();
        let (lines, warnings) = match kiln_config::read_user_data(&bytes) {
            Ok(user_data) => kiln_config::describe(user_data),
            Err(e) => {
                eprintln!("{shown}: {e}");
                bad += 1;
                continue;
            }
        };
        for line in &lines {
            eprintln!("{shown}: {line}");
        }
        for w in &warnings {
            eprintln!("{shown}: {w}");
        }
        eprintln!(
            "{shown}: valid ({} warning{})",
            warnings.len(),
            if warnings.len() == 1 { "" } else { "s" }
        );
    }
    if bad > 0 {
        bail!(
            "{bad} of {} documents are not valid cloud-configs",
            cfg.files.len()
        );
    }
    Ok(())
}
