//! The real installer behind the agent's [`Installer`] seam: `kiln_updater::install` on the whole
//! disk that holds the `USR-A` partition, with the public key built into `/usr`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_contract::boot::Slot;
use kiln_updater::install::{self, Accept, InstallError, Refusal, SysPaths, Target};
use kiln_updater::keys::VerifyingKey;
use kiln_updater::payload::PayloadError;

use crate::identity::Paths;
use crate::installer::{InstallFailure, Installed, Installer, Phase};
use kiln_contract::errorcode;

/// Why the real installer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("reading the kernel command line {path}: {source}")]
    Cmdline {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel command line has no kiln.slot=a|b; was this machine booted by Kiln's boot entries?")]
    NoSlot,
    #[error("no block device has a partition named USR-A (looked in {sys}); is this a Kiln disk?")]
    NoDisk { sys: PathBuf },
    #[error("loading the update public key: {0}")]
    Key(#[from] kiln_updater::keys::KeyError),
}

/// `kiln_updater::install` for this machine.
pub struct RealInstaller {
    pub target: Target,
    pub key: VerifyingKey,
    /// See [`FREEZE_FILE`]: the power-cut scenarios' way to stop the agent at an exact point.
    pub freeze_file: Option<PathBuf>,
    /// The payload [`Installer::verify`] checked last, while it is the file checked.
    verified: Option<install::Verified>,
}

impl RealInstaller {
    /// The installer of `target`, trusting `key`, without a freeze file.
    pub fn new(target: Target, key: VerifyingKey) -> RealInstaller {
        RealInstaller {
            target,
            key,
            freeze_file: None,
            verified: None,
        }
    }

    /// The running slot from the kernel command line, the disk from sysfs, the key from `/usr`.
    pub fn for_machine(paths: &Paths, sys_class_block: &Path) -> Result<RealInstaller, SetupError> {
        let cmdline =
            std::fs::read_to_string(&paths.cmdline).map_err(|source| SetupError::Cmdline {
                path: paths.cmdline.clone(),
                source,
            })?;
        let running = install::running_slot(&cmdline).ok_or(SetupError::NoSlot)?;
        let disk =
            disk_with_partition(sys_class_block, Slot::A.partition_name()).ok_or_else(|| {
                SetupError::NoDisk {
                    sys: sys_class_block.to_path_buf(),
                }
            })?;
        let key = VerifyingKey::load_pem(&paths.update_key)?;
        Ok(RealInstaller {
            freeze_file: Some(paths.run_dir.join(FREEZE_FILE)),
            ..RealInstaller::new(Target { disk, running }, key)
        })
    }
}

/// `/dev/<disk>` for the whole disk one of whose partitions has GPT name `name`, found through
/// each partition's `uevent` (`PARTNAME=`), which the kernel fills without udev.
pub fn disk_with_partition(sys_class_block: &Path, name: &str) -> Option<PathBuf> {
    let wanted = format!("PARTNAME={name}");
    let mut entries: Vec<_> = std::fs::read_dir(sys_class_block).ok()?.flatten().collect();
    // Deterministic when two disks carry the label (a USB stick being flashed): first by name.
    entries.sort_by_key(|e| e.file_name());
    entries.into_iter().find_map(|entry| {
        let uevent = std::fs::read_to_string(entry.path().join("uevent")).ok()?;
        if !uevent.lines().any(|l| l.trim() == wanted) {
            return None;
        }
        // /sys/class/block/vda2 links to …/block/vda/vda2: the parent directory is the disk.
        let real = std::fs::canonicalize(entry.path()).ok()?;
        let disk = real.parent()?.file_name()?;
        Some(Path::new("/dev").join(disk))
    })
}

/// Fault injection for the power-cut scenarios (`ci/tests/power_cut.rs`): when root has written
/// `<phase>[:<percent>]` (`writing:50`, `readingback`, `esp`, `entry`) to this file under
/// `/run/kiln/update-agent/`, the agent stops itself with SIGSTOP as the install reaches that
/// point, after renaming the file to `frozen`, so the test can cut the power exactly there.
/// `/run` is empty after every boot, so it is one cut at most; nothing else writes it.
pub const FREEZE_FILE: &str = "freeze-at";

/// The install phase and percentage `text` names, as [`FREEZE_FILE`] holds them.
pub fn freeze_point(text: &str) -> Option<(install::Phase, u64)> {
    let text = text.trim();
    let (name, percent) = match text.split_once(':') {
        Some((name, percent)) => (name, percent.parse().ok()?),
        None => (text, 0),
    };
    let phase = match name {
        "verifying" => install::Phase::Verifying,
        "writing" => install::Phase::Writing,
        "readingback" => install::Phase::ReadingBack,
        "esp" => install::Phase::Esp,
        "entry" => install::Phase::Entry,
        _ => return None,
    };
    Some((phase, percent))
}

/// Stops this process if the freeze file names where the install is now.
fn maybe_freeze(file: &Path, now: install::Phase, done: u64, total: u64) {
    let Ok(text) = std::fs::read_to_string(file) else {
        return;
    };
    let Some((phase, percent)) = freeze_point(&text) else {
        eprintln!(
            "ignoring {}: {text:?} is not <phase>[:<percent>]",
            file.display()
        );
        let _ = std::fs::remove_file(file);
        return;
    };
    if phase != now || done.saturating_mul(100) < percent.saturating_mul(total) {
        return;
    }
    if std::fs::rename(file, file.with_file_name("frozen")).is_err() {
        return;
    }
    eprintln!(
        "freezing at {text:?} as {} asked ({done}/{total})",
        file.display()
    );
    // dash's builtin kill: no libc binding needed in this static binary.
    let _ = std::process::Command::new("/bin/sh")
        .args(["-c", &format!("kill -STOP {}", std::process::id())])
        .status();
}

/// An install step, when it began, and the most bytes it said it works through.
type Step = (install::Phase, Instant, u64);

/// The journal's line for a step that has ended.
fn log_step(step: Option<Step>) {
    if let Some((p, since, total)) = step {
        eprintln!(
            "install step {p:?}: {:.1} s ({} MiB)",
            since.elapsed().as_secs_f64(),
            total >> 20
        );
    }
}

/// Runs `work` with a progress callback that logs each step's wall time in the journal (where an
/// install's minutes go on this machine), stops at the freeze point if one is armed, and tells
/// `progress` the agent's phase.
fn steps<T, W>(
    freeze: Option<&Path>,
    progress: &mut dyn FnMut(Phase, u64, u64),
    work: W,
) -> Result<T, InstallError>
where
    W: FnOnce(&mut dyn FnMut(install::Phase, u64, u64)) -> Result<T, InstallError>,
{
    let mut step: Option<Step> = None;
    let result = work(&mut |p, done, total| {
        match &mut step {
            // A step may learn its size after its first report (the parts' check).
            Some((q, _, most)) if *q == p => *most = (*most).max(total),
            _ => {
                log_step(step);
                step = Some((p, Instant::now(), total));
            }
        }
        if let Some(file) = freeze {
            maybe_freeze(file, p, done, total);
        }
        progress(phase(p), done, total)
    });
    log_step(step);
    result
}

/// The agent's three install states over the installer's five phases: the signature check and
/// the write are "writing", the read-back is "verifying", the ESP files and entry "finalizing".
fn phase(p: install::Phase) -> Phase {
    match p {
        install::Phase::Verifying | install::Phase::Writing => Phase::Writing,
        install::Phase::ReadingBack => Phase::Verifying,
        install::Phase::Esp | install::Phase::Entry => Phase::Finalizing,
    }
}

/// The Omaha error code of an install error.
pub fn error_code(e: &InstallError) -> i64 {
    match e {
        InstallError::Payload(PayloadError::BadSignature { .. }) => errorcode::SIGNATURE,
        InstallError::Payload(PayloadError::PartMismatch { .. }) => {
            errorcode::PAYLOAD_HASH_MISMATCH
        }
        InstallError::Changed { .. }
        | InstallError::Payload(
            PayloadError::BadMagic { .. }
            | PayloadError::UnsupportedVersion { .. }
            | PayloadError::Malformed { .. },
        )
        | InstallError::Decompress { .. } => errorcode::PAYLOAD_VERIFICATION,
        InstallError::Mismatch { .. }
        | InstallError::ReadBack { .. }
        | InstallError::Verity { .. } => errorcode::ROOTFS_VERIFICATION,
        InstallError::OtherApp { .. } => errorcode::REFUSED_APP,
        InstallError::Refused {
            why: Refusal::FailedHere,
            ..
        } => errorcode::REFUSED_BAD_VERSION,
        InstallError::Refused { .. } => errorcode::REFUSED_VERSION,
        InstallError::InUse { .. }
        | InstallError::NoPartition { .. }
        | InstallError::TooLarge { .. }
        | InstallError::Io { .. } => errorcode::INSTALL_DEVICE,
        _ => errorcode::GENERIC,
    }
}

fn failure(e: InstallError) -> InstallFailure {
    InstallFailure {
        code: error_code(&e),
        message: e.to_string(),
    }
}

impl Installer for RealInstaller {
    fn running_slot(&self) -> Option<Slot> {
        Some(self.target.running)
    }

    fn verify(
        &mut self,
        payload: &Path,
        accept: &Accept,
        progress: &mut dyn FnMut(Phase, u64, u64),
    ) -> Result<(), InstallFailure> {
        if self.verified.as_ref().is_some_and(|v| v.covers(payload)) {
            return Ok(());
        }
        self.verified = None;
        let key = &self.key;
        let verified = steps(self.freeze_file.as_deref(), progress, |report| {
            install::verify(payload, key, accept, report)
        })
        .map_err(failure)?;
        self.verified = Some(verified);
        Ok(())
    }

    fn install(
        &mut self,
        payload: &Path,
        accept: &Accept,
        progress: &mut dyn FnMut(Phase, u64, u64),
    ) -> Result<Installed, InstallFailure> {
        let began = Instant::now();
        let verified = self.verified.take();
        let (target, key) = (&self.target, &self.key);
        let done = steps(self.freeze_file.as_deref(), progress, |report| {
            install::install_with(
                target,
                payload,
                key,
                accept,
                verified.as_ref(),
                &SysPaths::default(),
                report,
            )
        });
        eprintln!("install: {:.1} s in all", began.elapsed().as_secs_f64());
        let done = done.map_err(failure)?;
        Ok(Installed {
            slot: done.slot,
            version: done.manifest.version,
        })
    }

    fn payload_room(&self) -> Option<u64> {
        install::payload_room(&self.target).ok()
    }

    fn bless(&mut self) -> Result<bool, InstallFailure> {
        install::bless(&self.target).map_err(failure)
    }

    fn rollback(&mut self) -> Result<Slot, InstallFailure> {
        install::rollback(&self.target).map_err(failure)
    }

    fn boot_entries(&self) -> Result<Vec<String>, InstallFailure> {
        let entries = install::boot_entries(&self.target).map_err(failure)?;
        Ok(entries
            .iter()
            .map(|e| format!("{} (version {})", e.file_name(), e.version))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs tree as the kernel lays it out: class links into the device hierarchy.
    #[test]
    fn finds_the_disk_of_usr_a_through_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let devices = dir.path().join("devices/pci0/virtio1/block");
        let class = dir.path().join("class/block");
        std::fs::create_dir_all(&class).unwrap();
        for (disk, part, label) in [
            ("vda", "vda2", "USR-A"),
            ("vda", "vda3", "USR-B"),
            ("sda", "sda1", "DATA"),
        ] {
            let p = devices.join(disk).join(part);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(
                p.join("uevent"),
                format!("MAJOR=254\nDEVTYPE=partition\nPARTNAME={label}\n"),
            )
            .unwrap();
            std::os::unix::fs::symlink(&p, class.join(part)).unwrap();
        }
        assert_eq!(
            disk_with_partition(&class, "USR-A"),
            Some(PathBuf::from("/dev/vda"))
        );
        assert_eq!(disk_with_partition(&class, "USR-C"), None);
    }

    #[test]
    fn freeze_points() {
        assert_eq!(
            freeze_point("writing:50\n"),
            Some((install::Phase::Writing, 50))
        );
        assert_eq!(freeze_point("entry"), Some((install::Phase::Entry, 0)));
        assert_eq!(freeze_point("writing:half"), None);
        assert_eq!(freeze_point("rebooting"), None);
    }

    #[test]
    fn install_errors_map_to_omaha_codes() {
        let sig = InstallError::Payload(PayloadError::BadSignature { path: "p".into() });
        assert_eq!(error_code(&sig), errorcode::SIGNATURE);
        let busy = InstallError::InUse {
            path: "/dev/vda".into(),
            partition: "partition 2".into(),
            reason: "mounted".into(),
        };
        assert_eq!(error_code(&busy), errorcode::INSTALL_DEVICE);
    }
}
