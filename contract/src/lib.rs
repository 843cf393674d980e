//! The agreements between Kiln's parts, each written once.
//!
//! The build writes a disk, the init finds its partitions, the update agent writes its slots and
//! reads `update.conf`, `kiln-config` writes that file from the cloud-config, and the update server
//! names the error codes machines report. Each of those is a contract between two programs built
//! at different times and running on different machines; this crate holds them, and every side
//! goes through it, so a new partition, agent setting or error code is one change here plus its
//! use. Tests (`tests/tidy.rs`) fail when one of them is written out anywhere else.
//!
//! Light on purpose: it is linked into the static device binaries (the init, `kiln-config`, the
//! agent), so pure Rust, no I/O beyond reading files, no host-only code.

pub mod boot;
pub mod digest;
pub mod disk;
pub mod errorcode;
pub mod flannel_conf;
pub mod fleet_conf;
pub mod hex;
pub mod paths;
pub mod release;
pub mod update_conf;
pub mod version;

/// Whether Kiln acts on a setting it reads under another project's name (fleet.conf's and
/// flannel's keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    Yes,
    /// Accepted, and the warning says why it has no effect.
    Ignored(&'static str),
}
