//! flannel for Kiln: every machine of the cluster gets a subnet of one container network, leased
//! in etcd under flannel's own keys (`<prefix>/config`, `<prefix>/subnets/a.b.c.d-len`), so an
//! operator's flannel knowledge and tools apply. This crate holds the network config
//! ([`config`]), subnet arithmetic ([`net`]), the leases ([`lease`]), the files docker is started
//! with ([`env`]), the kernel state the backends set over netlink ([`kernel`]), and the daemon
//! that holds one machine's part of it all ([`daemon`], `kiln-flanneld`).

pub mod config;
pub mod daemon;
pub mod env;
pub mod kernel;
pub mod lease;
pub mod net;
#[cfg(test)]
mod testns;
