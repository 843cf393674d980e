//! Conformance with what Kiln replaces: runs the conformance runners kept beside the checkout
//! (`../shared/conformance/`, there in CI) against this checkout and fails when fewer documents
//! pass than the figures below, which are the ones reached when they were written. The
//! documents that still fail are Kiln's deliberate deviations, listed with their reasons in
//! `config/CONFORMANCE.md`. Without that folder the test says so and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A runner, the environment it runs with, the fewest passes it may report, and of how many.
type Floor = (
    &'static str,
    &'static [(&'static str, &'static str)],
    u32,
    u32,
);

const FLOORS: &[Floor] = &[
    ("cloud-config/run.sh", &[], 158, 163),
    ("cloud-config/run.sh", &[("STRICT", "1")], 154, 163),
    ("omaha/run-responses.sh", &[], 30, 37),
];

fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the checkout")
        .to_path_buf()
}

/// `N passed, M failed` from a runner's last line.
fn figures(output: &str) -> Option<(u32, u32)> {
    let last = output.lines().rev().find(|l| !l.trim().is_empty())?;
    let (passed, failed) = last.trim().split_once(" passed, ")?;
    Some((
        passed.parse().ok()?,
        failed.strip_suffix(" failed")?.parse().ok()?,
    ))
}

#[test]
fn figures_are_read_from_the_last_line() {
    assert_eq!(figures("table\n\n158 passed, 5 failed\n"), Some((158, 5)));
    assert_eq!(figures("cargo failed\n"), None);
}

#[test]
fn conformance_runners_pass_at_least_the_recorded_figures() {
    let root = checkout();
    let shared = root.join("../shared/conformance");
    if !shared.is_dir() {
        println!(
            "skipped: {} is not there (it is in CI, beside the checkout)",
            shared.display()
        );
        return;
    }
    let mut short = Vec::new();
    for (runner, env, floor, total) in FLOORS {
        let script = shared.join(runner);
        let mut cmd = Command::new("bash");
        // The runners call `cargo xtask`: as from a shell, not with this test's cargo variables
        // (which would have cargo build xtask's dependencies again).
        kiln_qemu::without_cargo_run_env(&mut cmd);
        cmd.arg(&script).arg(&root).current_dir(&root);
        // The responses runner's throwaway project, inside this checkout's target directory.
        cmd.env(
            "CHECK_DIR",
            root.join("target/conformance/omaha-client-check"),
        );
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let label = format!(
            "{runner}{}",
            env.iter()
                .map(|(k, v)| format!(" {k}={v}"))
                .collect::<String>()
        );
        match figures(&stdout) {
            Some((passed, failed)) => {
                println!("{label}: {passed} passed, {failed} failed (at least {floor} of {total} must pass)");
                if passed < *floor {
                    let fails: Vec<&str> =
                        stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
                    short.push(format!(
                        "{label}: {passed} passed, fewer than {floor}; failures:\n{}",
                        fails.join("\n")
                    ));
                }
            }
            None => short.push(format!(
                "{label} printed no `N passed, M failed` line (exit {:?}):\n{stdout}\n{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }
    assert!(
        short.is_empty(),
        "conformance dropped below the recorded figures (a new failure must be fixed, or be a deliberate deviation listed in config/CONFORMANCE.md with the floor lowered):\n{}",
        short.join("\n\n")
    );
}
