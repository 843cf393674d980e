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
    use kiln_config::{PartKind, UserData};
    let mut bad = 0;
    for file in &cfg.files {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let shown = file.display();
        let warnings = match kiln_config::read_user_data(&bytes) {
            Ok(UserData::Empty) => {
                eprintln!("{shown}: an empty user-data: nothing to apply");
                Vec::new()
            }
            Ok(UserData::CloudConfig(parsed)) => parsed.warnings,
            Ok(UserData::Script { interpreter }) => {
                eprintln!("{shown}: {}", script_note(&interpreter));
                Vec::new()
            }
            Ok(UserData::Multipart(parts)) => {
                eprintln!("{shown}: a multipart user-data; its parts are checked below, but first boot of this version of Kiln does not read multipart user-data yet (put the cloud-config alone in the file)");
                let mut warnings = Vec::new();
                for part in parts {
                    let what = match part.kind {
                        PartKind::CloudConfig(parsed) => {
                            warnings.extend(parsed.warnings);
                            "a cloud-config, checked".to_string()
                        }
                        PartKind::Script { interpreter } => script_note(&interpreter),
                        PartKind::Ignored(why) => format!("ignored ({why})"),
                    };
                    eprintln!(
                        "{shown}: multipart part at line {} ({}): {what}",
                        part.line, part.content_type
                    );
                }
                warnings
            }
            Err(e) => {
                eprintln!("{shown}: {e}");
                bad += 1;
                continue;
            }
        };
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

/// What first boot does with a user-data script.
fn script_note(interpreter: &str) -> String {
    format!("a user-data script (#!{interpreter}), which coreos-cloudinit ran once at first boot; this version of Kiln does not run user-data scripts yet: first boot applies nothing from it")
}
