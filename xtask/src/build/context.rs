//! The build's context from the command line: the definition, the version, where it writes,
//! the time every artifact carries (`SOURCE_DATE_EPOCH`), the checked `--debug-ssh-key` and
//! `--usr-overlay` inputs, and the signing key.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use kiln_image::definition::Definition;

use super::key::BuildKey;
use super::{Build, BuildConfig};
use crate::host;

impl Build {
    pub fn new(cfg: &BuildConfig) -> Result<Build> {
        let root = host::workspace_root();
        let def_path = root.join(&cfg.definition);
        let def = Definition::load(&def_path)?;
        let version = cfg
            .version
            .clone()
            .unwrap_or_else(|| def.image.version.clone());
        kiln_image::definition::check_version(&version)
            .map_err(|p| anyhow::anyhow!("--version {version:?} {p}"))?;
        let out_dir = root.join(&cfg.out).join(&version);
        let work_dir = out_dir.join("work");
        std::fs::create_dir_all(&work_dir)
            .with_context(|| format!("creating {}", work_dir.display()))?;
        Ok(Build {
            def,
            def_path,
            version,
            mirror_flag: cfg.mirror.clone(),
            static_dir: None,
            debug_ssh_keys: cfg
                .debug_ssh_key
                .as_ref()
                .map(|p| debug_keys(p))
                .transpose()?,
            usr_overlays: cfg
                .usr_overlays
                .iter()
                .map(|d| {
                    let dir = root.join(d);
                    if dir.is_dir() {
                        Ok(dir)
                    } else {
                        Err(anyhow::anyhow!(
                            "--usr-overlay {}: not a directory; give a directory whose contents go under /usr",
                            d.display()
                        ))
                    }
                })
                .collect::<Result<_>>()?,
            boot_menu_timeout: cfg.boot_menu_timeout,
            release_files: true,
            out_dir,
            work_dir,
            epoch: source_date_epoch(&root)?,
            timings: Vec::new(),
            reused: false,
            cache: super::cache::StageCache::open(cfg.no_cache)?,
            digests: Default::default(),
            disk_hashing: None,
            report_header: None,
            // The development key lives in the checkout's build/, whatever --out says: every build
            // of one checkout trusts the same key (and gives the same bytes).
            signing: BuildKey::load(cfg.signing_key.as_deref(), &root)?,
        })
    }
}

/// `SOURCE_DATE_EPOCH` from the environment, else the time of the checkout's last commit, so
/// that two builds of one commit agree.
fn source_date_epoch(root: &Path) -> Result<i64> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"));
    }
    let out = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(root)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let s = String::from_utf8_lossy(&o.stdout);
            s.trim()
                .parse()
                .with_context(|| format!("git gave a commit time of {s:?}"))
        }
        _ => {
            bail!("no SOURCE_DATE_EPOCH and no git history to take it from: set SOURCE_DATE_EPOCH")
        }
    }
}

/// The public keys of `--debug-ssh-key`, checked to look like an `authorized_keys` file (a
/// private key given by mistake must not land on a disk).
fn debug_keys(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --debug-ssh-key {}", path.display()))?;
    let keys: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if keys.is_empty()
        || keys
            .iter()
            .any(|k| !(k.starts_with("ssh-") || k.starts_with("ecdsa-") || k.starts_with("sk-")))
    {
        bail!(
            "--debug-ssh-key {}: expected public keys (lines like `ssh-ed25519 AAAA… comment`); give the .pub file",
            path.display()
        );
    }
    Ok(keys
        .iter()
        .map(|k| format!("{k}\n"))
        .collect::<String>()
        .into_bytes())
}
