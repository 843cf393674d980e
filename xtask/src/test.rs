//! `cargo xtask test`: the README's test command, and what CI runs.
//!
//! 1. the host tools our formats are checked against are installed (as root) or named;
//! 2. every crate's tests (formats against their reference tools, protocol, harness), and
//!    beside them, in a child process at a lower priority (`images`): the image built as
//!    `cargo xtask build-image` builds it, two more versions of it for the update scenarios (a
//!    good one and a bad one), then the stage cache checked to give the bytes of a build
//!    without it (`build::rebuild`);
//! 3. the checks of the built image and the VM scenarios in `ci/`, two at a time and the
//!    cluster alone (`.config/nextest.toml`).

mod images;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::build::{self, BuildConfig};
use crate::host::{self, HostPackage};

#[derive(clap::Args)]
pub struct TestConfig {
    /// Only the crates' tests: no image build, no VM scenarios.
    #[arg(long)]
    pub unit_only: bool,
    /// Only build what the scenarios boot, and write what was built and each phase's time into
    /// FILE: how this command builds the images beside the crate tests (`images`).
    #[arg(long, hide = true, value_name = "FILE")]
    pub images_report: Option<PathBuf>,
    /// Extra arguments for the test runner (a filter, `--no-capture`, ...).
    #[arg(trailing_var_arg = true)]
    pub runner_args: Vec<String>,
}

/// The reference tools that define our formats, and the servers and browser the agent's and
/// server's tests run against. What boots images is `host::QEMU_PACKAGES`: both go in one apt
/// transaction.
pub const TEST_PACKAGES: &[HostPackage] = &[
    HostPackage {
        package: "e2fsprogs",
        provides: "e2fsck",
    },
    HostPackage {
        package: "cryptsetup-bin",
        provides: "veritysetup",
    },
    HostPackage {
        package: "dosfstools",
        provides: "fsck.fat",
    },
    HostPackage {
        package: "mtools",
        provides: "mtype",
    },
    HostPackage {
        package: "gdisk",
        provides: "sgdisk",
    },
    HostPackage {
        package: "cpio",
        provides: "cpio",
    },
    HostPackage {
        package: "zstd",
        provides: "zstd",
    },
    HostPackage {
        package: "kmod",
        provides: "depmod",
    },
    HostPackage {
        package: "busybox-static",
        provides: "/bin/busybox",
    },
    HostPackage {
        package: "openssh-client",
        provides: "ssh",
    },
    HostPackage {
        package: "libxml2-utils",
        provides: "xmllint",
    },
    HostPackage {
        package: "etcd-server",
        provides: "etcd",
    },
    // flannel's daemon sets its forward and masquerade rules with it (in a test namespace).
    HostPackage {
        package: "iptables",
        provides: "iptables",
    },
    // fleet's D-Bus client is checked against it.
    HostPackage {
        package: "dbus-daemon",
        provides: "dbus-daemon",
    },
    HostPackage {
        package: "postgresql",
        provides: "pg_ctlcluster",
    },
    HostPackage {
        package: "chromium",
        provides: "chromium",
    },
];

/// What a whole run writes into a fresh checkout, with a little room to spare: on a clean clone
/// (December 2026) `target/` (the crates and the static device binaries) grew to 11 GiB and
/// `build/` (three versions of the image and every scenario's disks) to 16 GiB.
const DISK_NEEDED_GIB: u64 = 30;

pub fn run(cfg: &TestConfig) -> Result<()> {
    if let Some(report) = &cfg.images_report {
        return images::build_for_report(report, build_images);
    }
    let mut times = Timings::new();
    // A full disk fails a run deep inside some test with ENOSPC; say it first.
    let root = host::workspace_root();
    let free_gib = host::free_bytes(&root)? >> 30;
    if !cfg.unit_only && free_gib < DISK_NEEDED_GIB {
        eprintln!(
            "warning: {free_gib} GiB free on the filesystem of {}; a whole run writes about {DISK_NEEDED_GIB} GiB under target/ and build/ (free some, or expect `No space left on device`)",
            root.display()
        );
    }
    let packages: Vec<HostPackage> = TEST_PACKAGES
        .iter()
        .chain(host::QEMU_PACKAGES)
        .copied()
        .collect();
    times.phase("host packages", || {
        host::ensure_packages(&packages, "checking images against the reference tools")
    })?;
    // One KVM probe for the whole run instead of one in each test process that boots a VM.
    let accel = kiln_qemu::resolve_accel(kiln_qemu::Accel::Auto).qemu_name();
    let job = if cfg.unit_only {
        None
    } else {
        Some(images::Job::start()?)
    };
    let crates = times.phase(CRATE_TESTS, || {
        runner(
            &["--workspace", "--exclude", "kiln-ci"],
            &cfg.runner_args,
            &[(kiln_qemu::ACCEL_ENV, accel)],
        )
    });
    // A failed crate test ends the image builds (dropping the job) rather than waiting for them.
    let (Some(job), Ok(())) = (job, &crates) else {
        times.print();
        return crates;
    };
    let log = job.log().to_owned();
    let report = times.phase("the image builds, after the crate tests ended", || {
        job.wait()
    });
    let result = report.and_then(|report| {
        times.beside = report.phases;
        for note in &report.notes {
            eprintln!("{note}");
        }
        let images = report.images.with_context(|| {
            format!(
                "building the images failed (the end of its output above, all of it in {})",
                log.display()
            )
        })?;
        scenarios(&images, cfg, accel, &mut times)
    });
    times.print();
    result
}

/// The crate tests' phase, beside which the images are built (`images`).
const CRATE_TESTS: &str = "crate tests (compiling included)";

/// The image, its two update versions, and the stage cache's check (in the child process of
/// `images`): what the scenarios boot.
fn build_images(report: &mut images::Report) -> Result<images::Images> {
    let build_cfg = BuildConfig::image_defaults();
    let mut build = build::Build::new(&build_cfg)?;
    let phases = &mut report.phases;
    let artifacts = timed(phases, "image build", || build.run())?;
    let disk = artifacts.disk.to_string_lossy().into_owned();
    // The update scenarios need two more versions of the same commit: a good one, and a bad one
    // whose /usr carries a service that always fails (so it is never blessed and rolls back).
    let v2 = timed(phases, "image build (v2)", || {
        update_version(&build_cfg, &format!("{}.2", build.version), &[])
    })?;
    let v3 = timed(phases, "image build (broken v3)", || {
        update_version(
            &build_cfg,
            &format!("{}.3", build.version),
            &[PathBuf::from("ci/fixtures/broken-usr")],
        )
    })?;
    let same = timed(
        phases,
        "image build: the cache gives the same bytes",
        || {
            build::rebuild::check_same_bytes(
                &build_cfg,
                &host::workspace_root().join("build/ci/rebuild"),
            )
        },
    )?;
    report.notes.push(same);
    Ok(images::Images {
        disk,
        version: build.version.clone(),
        v2,
        v3,
    })
}

/// The checks of the built images and the VM scenarios.
fn scenarios(
    images: &images::Images,
    cfg: &TestConfig,
    accel: &str,
    times: &mut Timings,
) -> Result<()> {
    let junit = junit_path();
    let _ = std::fs::remove_file(&junit);
    let scenarios = times.phase("scenarios", || {
        runner(
            &["-p", "kiln-ci"],
            &cfg.runner_args,
            &[
                ("KILN_CI_DISK", &images.disk),
                ("KILN_CI_VERSION", &images.version),
                ("KILN_CI_V2", &images.v2),
                ("KILN_CI_V3_BROKEN", &images.v3),
                (kiln_qemu::ACCEL_ENV, accel),
            ],
        )
    });
    times.scenarios = std::fs::read_to_string(&junit)
        .map(|xml| junit_cases(&xml))
        .unwrap_or_default();
    times.vm_notes = count_vm_notes(&host::workspace_root().join("build/ci"));
    scenarios
}

/// Runs `f`, noting its wall time and whether it passed under `name` in `phases`.
fn timed<T>(
    phases: &mut Vec<images::Phase>,
    name: &str,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let start = Instant::now();
    let result = f();
    phases.push((name.to_owned(), start.elapsed(), result.is_ok()));
    result
}

/// Where nextest writes its JUnit report (`.config/nextest.toml`).
fn junit_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| host::workspace_root().join("target"));
    target.join("nextest/default/junit.xml")
}

/// The wall time of each phase of the test command and of each scenario, printed at its end so
/// a slow one shows in CI's output.
struct Timings {
    started: Instant,
    /// How long this process ran before `started`: `cargo xtask` compiles xtask and then
    /// replaces itself with it (exec), so the process began when `cargo` did.
    before: Option<Duration>,
    phases: Vec<images::Phase>,
    /// The image builds' phases, which ran beside the crate tests (`images`).
    beside: Vec<images::Phase>,
    /// (test binary and name, seconds, passed) from nextest's JUnit report.
    scenarios: Vec<(String, f64, bool)>,
    /// How often the harness started QEMU again after a guest reboot, and how often its reset
    /// watchdog had to power-cycle a VM.
    vm_notes: (usize, usize),
}

impl Timings {
    fn new() -> Self {
        Timings {
            started: Instant::now(),
            before: process_age(),
            phases: Vec::new(),
            beside: Vec::new(),
            scenarios: Vec::new(),
            vm_notes: (0, 0),
        }
    }

    fn phase<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        timed(&mut self.phases, name, f)
    }

    fn print(&self) {
        let mark = |ok: bool| if ok { "" } else { "  FAILED" };
        eprintln!("\n== cargo xtask test: wall time ==");
        if let Some(before) = self.before {
            eprintln!(
                "{:>8.1} s  before this command's clock: cargo compiling xtask",
                before.as_secs_f64()
            );
        }
        for (name, took, ok) in &self.phases {
            eprintln!("{:>8.1} s  {name}{}", took.as_secs_f64(), mark(*ok));
            if name == CRATE_TESTS && !self.beside.is_empty() {
                eprintln!("           beside them:");
                for (name, took, ok) in &self.beside {
                    eprintln!("{:>8.1} s    {name}{}", took.as_secs_f64(), mark(*ok));
                }
            }
        }
        for (name, secs, ok) in &self.scenarios {
            eprintln!("{secs:>8.1} s    {name}{}", mark(*ok));
        }
        let (restarts, watchdog) = self.vm_notes;
        if !self.scenarios.is_empty() {
            eprintln!(
                "           QEMU started again after a guest reboot: {restarts} times; reset \
                 watchdog fired: {watchdog} times"
            );
        }
        let total = self.started.elapsed() + self.before.unwrap_or_default();
        eprintln!("{:>8.1} s  total", total.as_secs_f64());
    }
}

/// How long ago this process started, from `/proc` (its start time in clock ticks after boot,
/// against the uptime); `None` where `/proc` does not say.
fn process_age() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    process_age_from(&stat, &uptime, u64::try_from(ticks).ok()?)
}

/// [`process_age`] from the texts of `/proc/self/stat` and `/proc/uptime`, and the clock ticks
/// a second. The process's name (field 2) may hold spaces and parentheses: the fields are
/// counted after its last `)`, where `starttime` (field 22) is the 20th.
fn process_age_from(stat: &str, uptime: &str, ticks_per_s: u64) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let start_ticks: u64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    let up: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    if ticks_per_s == 0 || !up.is_finite() {
        return None;
    }
    let started = start_ticks as f64 / ticks_per_s as f64;
    Some(Duration::from_secs_f64((up - started).max(0.0)))
}

/// `(classname::name, seconds, passed)` of every `<testcase>` in a JUnit report.
fn junit_cases(xml: &str) -> Vec<(String, f64, bool)> {
    let attr = |tag: &str, key: &str| -> Option<String> {
        let at = tag.find(&format!(" {key}=\""))? + key.len() + 3;
        Some(tag[at..].split('"').next()?.to_owned())
    };
    let mut cases = Vec::new();
    let mut rest = xml;
    while let Some(at) = rest.find("<testcase ") {
        rest = &rest[at..];
        let end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..end];
        let self_closing = tag.ends_with('/');
        let body_end = if self_closing {
            end
        } else {
            rest.find("</testcase>").unwrap_or(end)
        };
        let body = &rest[end..body_end];
        let passed = !body.contains("<failure") && !body.contains("<error");
        if let (Some(class), Some(name), Some(time)) =
            (attr(tag, "classname"), attr(tag, "name"), attr(tag, "time"))
        {
            let secs = time.parse().unwrap_or(0.0);
            cases.push((format!("{class}::{name}"), secs, passed));
        }
        rest = &rest[end..];
    }
    cases
}

/// (QEMU restarts after a guest reboot, reset-watchdog power cycles) noted in the serial logs
/// under `dir`.
fn count_vm_notes(dir: &Path) -> (usize, usize) {
    let mut counts = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return counts;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            let (r, w) = count_vm_notes(&path);
            counts = (counts.0 + r, counts.1 + w);
        } else if path.to_string_lossy().ends_with(".serial.log") {
            let text =
                String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
            counts.0 += text.matches(kiln_qemu::RESTART_NOTE).count();
            counts.1 += text.matches(kiln_qemu::WATCHDOG_NOTE).count();
        }
    }
    counts
}

/// Builds `version` of this commit under `build/ci/versions/` for the update scenarios; returns
/// its output directory (with `update.payload`).
fn update_version(base: &BuildConfig, version: &str, usr_overlays: &[PathBuf]) -> Result<String> {
    let cfg = BuildConfig {
        version: Some(version.to_owned()),
        out: "build/ci/versions".into(),
        usr_overlays: usr_overlays.to_vec(),
        ..base.clone()
    };
    let mut build = build::Build::new(&cfg)?;
    // Only its update.payload is used: no qcow2, no compressed release files.
    build.release_files = false;
    build.run()?;
    Ok(build.out_dir.to_string_lossy().into_owned())
}

/// Runs the tests of `scope` under nextest (cargo test where nextest is missing).
fn runner(scope: &[&str], extra: &[String], env: &[(&str, &str)]) -> Result<()> {
    let mut cmd = host::cargo_command();
    if nextest_available() {
        cmd.args(["nextest", "run", "--no-fail-fast"])
            .args(scope)
            .args(extra);
    } else {
        eprintln!("cargo-nextest is not installed: running `cargo test` instead");
        cmd.args(["test", "--no-fail-fast"])
            .args(scope)
            .arg("--")
            .args(extra);
    }
    cmd.envs(env.iter().copied())
        .current_dir(host::workspace_root());
    host::run(&mut cmd)
}

fn nextest_available() -> bool {
    host::cargo_command()
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::{process_age, process_age_from};
    use std::time::Duration;

    #[test]
    fn a_process_age_is_the_uptime_less_its_start_time() {
        // A name with spaces and a parenthesis; starttime 123456 ticks (1234.56 s at 100 Hz).
        let stat = "4242 (cargo (x) y) R 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 123456 1000 100";
        let age = process_age_from(stat, "1644.56 3000.00\n", 100).unwrap();
        assert_eq!(age.as_millis(), 410_000);
        // Started after the uptime's reckoning (clocks read apart): a zero age, not a negative.
        assert_eq!(
            process_age_from(stat, "1000.00 1.0\n", 100),
            Some(Duration::ZERO)
        );
        assert_eq!(process_age_from("4242 (cargo) R 1", "1.0 1.0", 100), None);
        assert_eq!(process_age_from(stat, "", 100), None);
        assert_eq!(process_age_from(stat, "1.0 1.0", 0), None);
        // This process: an age from /proc, no longer than the machine has been up.
        let own = process_age().expect("/proc on Linux");
        let up: f64 = std::fs::read_to_string("/proc/uptime")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            own.as_secs_f64() <= up,
            "{own:?} against an uptime of {up} s"
        );
    }

    #[test]
    fn junit_cases_give_each_tests_time_and_outcome() {
        let xml = r#"<testsuites><testsuite name="kiln-ci::boot" tests="2">
<testcase name="boots" classname="kiln-ci::boot" timestamp="2026-12-04T10:00:00Z" time="146.25">
<system-out>ok</system-out></testcase>
<testcase name="verity" classname="kiln-ci::boot" time="22.5"><failure type="test failure">x</failure></testcase>
<testcase name="quick" classname="kiln-ci::image" time="3"/>
</testsuite></testsuites>"#;
        assert_eq!(
            super::junit_cases(xml),
            vec![
                ("kiln-ci::boot::boots".to_owned(), 146.25, true),
                ("kiln-ci::boot::verity".to_owned(), 22.5, false),
                ("kiln-ci::image::quick".to_owned(), 3.0, true),
            ]
        );
    }

    /// The README opens with two commands; CI must run the second one, as written.
    #[test]
    fn ci_runs_the_readme_test_command() {
        let root = crate::host::workspace_root();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let block = readme
            .split("```sh\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("a ```sh block in the README");
        let commands: Vec<&str> = block
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(
            commands.len(),
            2,
            "the README's first block should hold two commands: {commands:?}"
        );
        let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
        assert!(
            ci.lines().any(|l| l.trim() == commands[1]),
            ".ci/run does not run `{}`",
            commands[1]
        );
    }
}
