//! flannel for Kiln: every machine of the cluster gets a subnet of one container network, leased
//! in etcd under flannel's own keys (`<prefix>/config`, `<prefix>/subnets/a.b.c.d-len`), so an
//! operator's flannel knowledge and tools apply. This crate holds the network config
//! ([`config`]), subnet arithmetic ([`net`]), the leases ([`lease`]), the files docker is started
//! with ([`env`]), and the kernel state the backends set over netlink ([`kernel`]).

pub mod config;
pub mod env;
pub mod kernel;
pub mod lease;
pub mod net;
