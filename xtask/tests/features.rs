//! The test command compiles the workspace in three commands: `cargo xtask` builds xtask alone,
//! its crate tests build the whole workspace but kiln-ci, its scenarios kiln-ci alone. cargo
//! resolves features for what each command builds, and a dependency that gets other features in
//! one is compiled again there, with everything above it. `kiln-workspace-hack` names the
//! workspace's features for what xtask and kiln-ci share with it; this checks, with
//! `cargo tree`, that it still covers them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Each package (`name vX.Y.Z`) the command builds, with the feature sets it is built with (a
/// package built for build scripts and for the target alike may have two).
fn resolved(selection: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "--prefix",
            "none",
            "--format",
            "{p}|{f}",
        ])
        .args(selection)
        .current_dir(root)
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree {selection:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut packages: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let Some((package, features)) = line.split_once('|') else {
            continue;
        };
        // "name vX.Y.Z (path)" and "name vX.Y.Z (proc-macro)": the name and version name it.
        let id: Vec<&str> = package.split_whitespace().take(2).collect();
        let features = features.trim_end_matches(" (*)").trim().to_owned();
        packages.entry(id.join(" ")).or_default().insert(features);
    }
    packages
}

#[test]
fn xtask_and_kiln_ci_build_shared_dependencies_with_the_workspace_features() {
    let workspace = resolved(&["--workspace", "--exclude", "kiln-ci"]);
    assert!(
        workspace.keys().any(|k| k.starts_with("libc v")),
        "cargo tree listed no libc: {workspace:?}"
    );
    let mut differ = Vec::new();
    for (command, selection) in [
        ("`cargo xtask` (xtask alone)", ["--package", "xtask"]),
        ("the scenarios (kiln-ci alone)", ["--package", "kiln-ci"]),
    ] {
        for (package, features) in resolved(&selection) {
            match workspace.get(&package) {
                Some(theirs) if *theirs != features => differ.push(format!(
                    "{package}: features {features:?} in {command}, {theirs:?} in the crate tests"
                )),
                _ => {}
            }
        }
    }
    assert!(
        differ.is_empty(),
        "packages the test command would compile twice; add the crate tests' features to \
         workspace-hack/Cargo.toml:\n{}",
        differ.join("\n")
    );
}
