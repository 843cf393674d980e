//! flannel for Kiln: every machine of the cluster gets a subnet of one container network, leased
//! in etcd under flannel's own keys (`<prefix>/config`, `<prefix>/subnets/a.b.c.d-len`), so an
//! operator's flannel knowledge and tools apply. This crate holds the parts that need no kernel:
//! the network config ([`config`]), subnet arithmetic ([`net`]), the leases ([`lease`]) and the
//! files docker is started with ([`env`]).

pub mod config;
pub mod env;
pub mod lease;
pub mod net;
