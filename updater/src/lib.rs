//! Omaha protocol types, the update agent (device side) and the update server (host side).

pub mod omaha;
