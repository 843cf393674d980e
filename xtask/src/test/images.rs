//! The images the scenarios boot, built beside the crate tests.
//!
//! The crate tests leave the host's cores idle for much of their run (tests waiting on QEMU
//! boots, etcd, PostgreSQL, Chromium and timers), and the images need none of them: so the test
//! command builds them in a child process, `cargo xtask test --images-report FILE`, started
//! when the crate tests are, at a lower priority ([`NICE`]) so that the tests, some of which
//! boot QEMU against a timeout, keep the CPU they would have had alone. The child writes what
//! it built and the time of each of its phases into the report; its output goes to a log of
//! its own ([`LOG`]) rather than between the tests' lines, and is shown when it fails.
//!
//! The child and every process it starts (cargo, rustc) are one process group of their own:
//! a failed crate test ends them all at once, and so does the test command's end by any other
//! means (the child asks the kernel for a signal when its parent dies, and ends its group then).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::host;

/// The child's priority: below the crate tests', so it takes what they leave.
const NICE: libc::c_int = 10;
/// The child's output, under the workspace.
const LOG: &str = "build/ci/images.log";
/// How much of a failed child's log is shown.
const LOG_TAIL_LINES: usize = 60;
/// The child's report, under the workspace.
const REPORT: &str = "build/ci/images.report";

/// What the scenarios boot: the image, and the two update versions' output directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    pub disk: String,
    pub version: String,
    pub v2: String,
    pub v3: String,
}

/// A phase of the child: its name, wall time and whether it passed.
pub type Phase = (String, Duration, bool);

/// What the child reported: its phases, the lines it wanted shown, and its images (none when a
/// phase failed).
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub phases: Vec<Phase>,
    pub notes: Vec<String>,
    pub images: Option<Images>,
}

impl Report {
    /// One line a field, tab-separated: `phase <seconds> <ok|failed> <name>`, `note <text>`,
    /// and `disk`, `version`, `v2`, `v3` with their values.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, took, ok) in &self.phases {
            let ok = if *ok { "ok" } else { "failed" };
            out += &format!("phase\t{:.3}\t{ok}\t{name}\n", took.as_secs_f64());
        }
        for note in &self.notes {
            for line in note.lines() {
                out += &format!("note\t{line}\n");
            }
        }
        if let Some(i) = &self.images {
            for (key, value) in [
                ("disk", &i.disk),
                ("version", &i.version),
                ("v2", &i.v2),
                ("v3", &i.v3),
            ] {
                out += &format!("{key}\t{value}\n");
            }
        }
        out
    }

    pub fn parse(text: &str) -> Result<Report> {
        let mut report = Report::default();
        let (mut disk, mut version, mut v2, mut v3) = (None, None, None, None);
        for line in text.lines() {
            let (key, value) = line.split_once('\t').unwrap_or((line, ""));
            match key {
                "phase" => {
                    let mut f = value.splitn(3, '\t');
                    let (Some(secs), Some(ok), Some(name)) = (f.next(), f.next(), f.next()) else {
                        bail!("a phase line without its three fields: {line:?}");
                    };
                    let secs: f64 = secs
                        .parse()
                        .with_context(|| format!("the seconds of {line:?}"))?;
                    report.phases.push((
                        name.to_owned(),
                        Duration::from_secs_f64(secs),
                        ok == "ok",
                    ));
                }
                "note" => report.notes.push(value.to_owned()),
                "disk" => disk = Some(value.to_owned()),
                "version" => version = Some(value.to_owned()),
                "v2" => v2 = Some(value.to_owned()),
                "v3" => v3 = Some(value.to_owned()),
                _ => bail!("an unknown line: {line:?}"),
            }
        }
        report.images = match (disk, version, v2, v3) {
            (Some(disk), Some(version), Some(v2), Some(v3)) => Some(Images {
                disk,
                version,
                v2,
                v3,
            }),
            (None, None, None, None) => None,
            _ => bail!("some of the images named, not all:\n{text}"),
        };
        Ok(report)
    }
}

/// In the child: builds the images with `build` and writes what it reports to `report`
/// (also when a phase failed: the phases before it and the failure are in it).
pub fn build_for_report(
    report: &Path,
    build: impl FnOnce(&mut Report) -> Result<Images>,
) -> Result<()> {
    end_the_group_with_the_parent();
    let mut out = Report::default();
    let built = build(&mut out);
    out.images = built.as_ref().ok().cloned();
    std::fs::write(report, out.render())
        .with_context(|| format!("writing {}", report.display()))?;
    built.map(drop)
}

/// SIGTERM (which the kernel sends when the test command ends, see [`Job::start`]) ends the
/// child's whole process group: its cargo and rustc too.
fn end_the_group_with_the_parent() {
    extern "C" fn end_group(_: libc::c_int) {
        // SAFETY: kill is async-signal-safe; 0 is the caller's own process group.
        unsafe {
            libc::kill(0, libc::SIGKILL);
        }
    }
    // SAFETY: the handler only calls kill.
    unsafe {
        libc::signal(libc::SIGTERM, end_group as *const () as libc::sighandler_t);
    }
}

/// The child building the images, from [`Job::start`] to [`Job::wait`]; dropped before that,
/// it ends the child's process group.
pub struct Job {
    child: Child,
    log: PathBuf,
    report: PathBuf,
}

impl Job {
    pub fn start() -> Result<Job> {
        let root = host::workspace_root();
        let (log, report) = (root.join(LOG), root.join(REPORT));
        std::fs::create_dir_all(log.parent().expect("under build/"))?;
        let _ = std::fs::remove_file(&report);
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let exe = std::env::current_exe().context("finding xtask's own binary")?;
        let mut cmd = Command::new(exe);
        cmd.args(["test", "--images-report"])
            .arg(&report)
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: between fork and exec only async-signal-safe calls (setpgid, prctl,
        // getppid, setpriority), and no allocation.
        let parent = std::process::id() as libc::pid_t;
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                if libc::setpgid(0, 0) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0
                    || libc::setpriority(libc::PRIO_PROCESS, 0, NICE) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died before the request was made: no signal would come.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the test command ended"));
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", host::command_line(&cmd)))?;
        eprintln!(
            "building the images beside the crate tests (nice {NICE}); their output: {}",
            log.display()
        );
        Ok(Job { child, log, report })
    }

    /// Waits for the child and reads its report. When it failed (or left none), the end of its
    /// log is shown first.
    pub fn wait(mut self) -> Result<Report> {
        let status = self.child.wait().context("waiting for the image builds")?;
        let report = std::fs::read_to_string(&self.report)
            .map_err(anyhow::Error::from)
            .and_then(|text| Report::parse(&text));
        let failed = match &report {
            Ok(r) => !status.success() || r.images.is_none(),
            Err(_) => true,
        };
        if failed {
            eprintln!(
                "the end of {}:\n{}",
                self.log.display(),
                kiln_qemu::log_tail(&self.log, LOG_TAIL_LINES)
            );
        }
        report.with_context(|| {
            format!(
                "the image builds ({status}) left no report at {}; their output: {}",
                self.report.display(),
                self.log.display()
            )
        })
    }

    /// The child's whole log.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: the child leads its own process group (setpgid in `start`).
            unsafe {
                libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_as_written() {
        let full = Report {
            phases: vec![
                ("image build".into(), Duration::from_millis(196_250), true),
                (
                    "image build (v2)".into(),
                    Duration::from_millis(16_500),
                    true,
                ),
            ],
            notes: vec!["same bytes: cold 20 s\nchanged 9 s".into()],
            images: Some(Images {
                disk: "/w/build/0.1.0/disk.raw".into(),
                version: "0.1.0".into(),
                v2: "/w/build/ci/versions/0.1.0.2".into(),
                v3: "/w/build/ci/versions/0.1.0.3".into(),
            }),
        };
        let back = Report::parse(&full.render()).unwrap();
        assert_eq!(back.images, full.images);
        assert_eq!(back.notes, ["same bytes: cold 20 s", "changed 9 s"]);
        assert_eq!(back.phases, full.phases);
        // A failed build: its phases, the failed one last, and no images.
        let failed = Report {
            phases: vec![("image build".into(), Duration::from_secs(3), false)],
            ..Report::default()
        };
        assert_eq!(Report::parse(&failed.render()).unwrap(), failed);
        assert!(
            Report::parse("disk\t/x\n").is_err(),
            "half the images named"
        );
        assert!(
            Report::parse("phase\t1.0\n").is_err(),
            "a phase without its name"
        );
        assert!(Report::parse("what\n").is_err());
    }
}
