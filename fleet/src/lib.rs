//! fleet for Kiln: systemd units scheduled across the cluster, all state in the machines' etcd.
//!
//! fleet runs ordinary systemd units across a cluster. An operator submits a unit file whose
//! `[X-Fleet]` section says where it may run; one engine in the cluster picks a machine for
//! each unit, and each machine's agent runs what was picked for it. This crate holds the parts
//! that are plain data and decisions, shared by the daemon (registry, engine loop, agent, API)
//! and by `fleetctl`:
//!
//! - [`unit`](mod@unit): unit files read into options, written back in one canonical text, and hashed
//!   (the hash names a unit's content in the registry);
//! - [`name`]: unit names, templates (`web@.service`) and instances (`web@1.service`);
//! - [`job`]: a unit's `[X-Fleet]` requirements, with fleet's reading of every option, and the
//!   glob matching `Conflicts=` and `Replaces=` use;
//! - [`schedule`]: one engine pass ([`reconcile`]) from machines and units to tasks, and what
//!   one machine should run ([`desired_on`]).
//!
//! Those are pure decisions. Around them, with I/O:
//!
//! - [`registry`]: the key layout in etcd and the API's reads and writes;
//! - [`engine`]: the leader's loop (one leader through an etcd lease, every write fenced by it);
//! - [`agent`] and [`systemd`]: each machine's presence and its units in systemd ([`dbus`]: the
//!   units' states asked of systemd on its private D-Bus socket);
//! - [`api`]: fleet's v1 HTTP API; [`daemon`]: `kiln-fleetd`, all of it in one loop;
//! - [`ctl`](mod@ctl): `fleetctl`.
//!
//! The semantics are fleet's, so units written for CoreOS schedule the same way; where this
//! crate differs on purpose (errors where fleet silently ignored text, a deterministic order
//! where fleet's depended on map iteration), the item's documentation says so.

pub mod agent;
pub mod api;
pub mod ctl;
pub mod daemon;
pub mod dbus;
pub mod engine;
pub mod job;
pub mod name;
pub mod registry;
pub mod schedule;
pub mod systemd;
pub mod unit;

pub use job::{glob_match, JobError, Requirements};
pub use name::{NameError, UnitName};
pub use schedule::{desired_on, reconcile, Job, Machine, StateError, TargetState, Task};
pub use unit::{HashError, UnitError, UnitErrorKind, UnitFile, UnitHash, UnitOption};
