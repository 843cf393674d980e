//! Tidy checks over the workspace's sources: each agreement and each small helper this crate
//! owns is written here and nowhere else. A partition name, a hex helper or an `update.conf` key
//! written out in another crate's code is the drift this crate exists to end, so these fail
//! with the file and line to change. Tests may spell names out; the production code may not.

use std::path::{Path, PathBuf};

use kiln_contract::update_conf::KEYS;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Every `.rs` file of the workspace, as (path from the workspace root, text).
fn sources() -> Vec<(String, String)> {
    let root = workspace();
    let mut out = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "build" {
                    dirs.push(path);
                }
            } else if name.ends_with(".rs") {
                let rel = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    assert!(
        out.len() > 100,
        "found only {} sources under {}",
        out.len(),
        root.display()
    );
    out
}

/// Whether a file is test code: the VM scenarios, test folders and files, test helpers.
fn is_test_file(rel: &str) -> bool {
    rel.starts_with("ci/")
        || rel.contains("/tests/")
        || ["tests.rs", "testutil.rs", "testkit.rs", "testrepo.rs"]
            .iter()
            .any(|t| rel.ends_with(t))
}

/// The production part of a file: everything before its first `#[cfg(test)]`.
fn production(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// `file:line: line` for each line of `text` that `bad` matches.
fn offending(rel: &str, text: &str, bad: impl Fn(&str) -> bool) -> Vec<String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//") && bad(line))
        .map(|(i, line)| format!("{rel}:{}: {}", i + 1, line.trim()))
        .collect()
}

fn assert_none(what: &str, home: &str, found: Vec<String>) {
    assert!(
        found.is_empty(),
        "{what} written outside {home}; use the contract's name instead:\n{}",
        found.join("\n")
    );
}

#[test]
fn partition_names_are_written_only_in_the_layout() {
    let names = [
        "\"EFI-SYSTEM\"",
        "\"USR-A\"",
        "\"USR-B\"",
        "\"OEM\"",
        "\"ROOT\"",
    ];
    let mut found = Vec::new();
    for (rel, text) in sources() {
        if rel == "contract/src/disk.rs" || is_test_file(&rel) {
            continue;
        }
        found.extend(offending(&rel, production(&text), |l| {
            names.iter().any(|n| l.contains(n))
        }));
    }
    assert_none("a partition name", "contract/src/disk.rs", found);
}

#[test]
fn hex_and_file_hashing_have_one_home() {
    let helpers = [
        "fn hex(",
        "fn unhex(",
        "fn to_hex(",
        "fn from_hex(",
        "fn decode_hex(",
        "fn parse_hex",
        "fn sha256_file(",
        ":02x}",
        "struct HashingReader",
        "struct HashingWriter",
        "struct Hashing<",
    ];
    let homes = [
        "contract/src/hex.rs",
        "contract/src/digest.rs",
        "contract/tests/tidy.rs",
    ];
    let mut found = Vec::new();
    for (rel, text) in sources() {
        if homes.contains(&rel.as_str()) {
            continue;
        }
        // Test code too: a test that hexes its own way can disagree with what it checks.
        found.extend(offending(&rel, &text, |l| {
            helpers.iter().any(|h| l.contains(h))
        }));
    }
    assert_none(
        "a hex or hashing helper",
        "contract/src/{hex,digest}.rs",
        found,
    );
}

#[test]
fn update_conf_keys_are_written_only_in_the_contract() {
    // Keys that are also ordinary words (`server`, `channel`, Omaha's `app_id`) are left to review.
    let keys: Vec<&str> = KEYS
        .iter()
        .map(|k| k.name)
        .filter(|n| n.contains('_') && *n != "app_id")
        .collect();
    let mut found = Vec::new();
    for (rel, text) in sources() {
        if rel.starts_with("contract/") || is_test_file(&rel) {
            continue;
        }
        found.extend(offending(&rel, production(&text), |l| {
            keys.iter().any(|k| {
                let spelled = [
                    format!("\"{k}\""),
                    format!("\"{k} = "),
                    format!("\\n{k} = "),
                ];
                spelled.iter().any(|p| l.contains(p.as_str()))
            })
        }));
    }
    assert_none("an update.conf key", "contract/src/update_conf", found);
    let shipped = workspace().join("overlays/usr/lib/kiln/update.conf");
    assert!(
        !shipped.exists(),
        "{} would replace the defaults the build renders from update_conf::KEYS",
        shipped.display()
    );
}
