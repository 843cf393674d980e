//! Omaha protocol types, the update agent (device side) and the update server (host side).

pub mod install;
pub mod keys;
pub mod omaha;
pub mod payload;
pub mod tls;
