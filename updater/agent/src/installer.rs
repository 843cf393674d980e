//! The seam between the state machine and the write path: what the agent asks of the installer
//! (`kiln_updater::install`, shaped after its `install`, `bless`, `rollback`, `running_slot`), and
//! the Omaha error codes a failure is reported with.

use std::path::Path;

use kiln_contract::boot::Slot;
pub use kiln_updater::install::{Accept, Refusal};

/// The step of an installation, for progress and for the persisted state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Streaming the USR image to the inactive partition.
    Writing,
    /// Reading it back: what was written, and the dm-verity tree against the root hash.
    Verifying,
    /// Kernel and initramfs in the ESP, then the boot entry with tries left.
    Finalizing,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Writing => "writing",
            Phase::Verifying => "verifying",
            Phase::Finalizing => "finalizing",
        }
    }
}

/// What an installation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The slot written (the one the next boot tries).
    pub slot: Slot,
    /// The version the payload's signed manifest names.
    pub version: String,
}

/// An installer failure with the Omaha error code to report it under.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InstallFailure {
    pub code: i64,
    pub message: String,
}

/// What the state machine needs from the write path. The real one wraps
/// `kiln_updater::install`; tests use a fake.
pub trait Installer {
    /// The slot the running system booted from.
    fn running_slot(&self) -> Option<Slot>;

    /// The checks [`Installer::install`] makes before its first write (the signature, the
    /// board, every part's hash, `accept`), made ahead of it: the agent makes them before it
    /// waits for a cluster's lock, and `install` then does not read the whole payload again
    /// while it is the file checked. Writes nothing.
    fn verify(
        &mut self,
        payload: &Path,
        accept: &Accept,
        progress: &mut dyn FnMut(Phase, u64, u64),
    ) -> Result<(), InstallFailure>;

    /// Checks the payload's signature and its signed manifest against `accept`, writes the
    /// inactive slot, verifies it and makes it the next boot with tries left. Never writes the
    /// running slot.
    fn install(
        &mut self,
        payload: &Path,
        accept: &Accept,
        progress: &mut dyn FnMut(Phase, u64, u64),
    ) -> Result<Installed, InstallFailure>;

    /// The most bytes a payload can hold on this machine (`None`: not known).
    fn payload_room(&self) -> Option<u64> {
        None
    }

    /// Removes the running slot's boot counter; `true` if there was one.
    fn bless(&mut self) -> Result<bool, InstallFailure>;

    /// Makes the other slot the next boot; returns it.
    fn rollback(&mut self) -> Result<Slot, InstallFailure>;

    /// The boot entries' file names, for `kiln-update status`.
    fn boot_entries(&self) -> Result<Vec<String>, InstallFailure>;
}
