//! The on-device update agent: reads `update.conf`, asks an Omaha server for updates, downloads and
//! checks the payload, hands it to the installer, reboots by the configured strategy, and blesses
//! the new slot once the machine is healthy, reporting each step to the server.

pub mod agent;
pub mod client;
pub mod download;
pub mod host;
pub mod http;
pub mod identity;
pub mod installer;
pub mod real;
pub mod state;
pub mod strategy;

#[cfg(test)]
mod tests;
