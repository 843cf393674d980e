//! Subnet leases in etcd, on flannel's layout and rules (flannel ≥ 0.18 speaks etcd v3 with the
//! same keys as CoreOS's flannel did with v2):
//!
//! - `<prefix>/config`: the network config (JSON, see [`crate::config`]);
//! - `<prefix>/subnets/10.5.72.0-24`: one machine's lease,
//!   `{"PublicIP":"10.77.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{…}}`,
//!   attached to an etcd lease of [`LEASE_TTL`], renewed well before it ends. A key without an
//!   etcd lease is an operator's reservation: it is never taken by another machine, and the
//!   machine whose address it names takes it.
//!
//! A machine takes, in order: the lease that names its address, if it still fits the config
//! (else that lease is deleted); the subnet it had before (from `subnet.env`), if free; one of
//! the first 100 free subnets, chosen by its address (so machines that start together rarely
//! pick the same one). Every write is a transaction on the key's revision: two machines never
//! hold one subnet; the loser reads the leases again.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use kiln_etcd::{Client, Compare, EtcdError, Kv, Op};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::NetworkConfig;
use crate::net::Ipv4Net;

/// How long a lease lives without renewal (flannel's `subnetTTL`).
pub const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long before its end a lease is renewed (flannel's `--subnet-lease-renew-margin`).
pub const RENEW_MARGIN: Duration = Duration::from_secs(3600);
/// How many free subnets a new machine chooses among.
const CHOICES: usize = 100;
/// How many times a machine reads the leases again after losing a race for a subnet.
const ATTEMPTS: usize = 10;

/// A lease's value, as flannel writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<String>,
    #[serde(rename = "BackendType")]
    pub backend_type: String,
    #[serde(rename = "BackendData", default)]
    pub backend_data: Value,
}

/// One machine's subnet.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    pub subnet: Ipv4Net,
    pub attrs: LeaseAttrs,
    /// The etcd lease the key is attached to; 0 for a reservation.
    pub etcd_lease: i64,
    pub mod_revision: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("no network config at {key} in etcd: put one there, e.g. `etcdctl put {key} '{{\"Network\":\"10.5.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'` (or `flannel: network:` in the cloud-config)")]
    NoConfig { key: String },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{network} has no free /{len} subnet left for {ip} ({taken} are leased or reserved): make `Network` larger, `SubnetLen` longer, or widen `SubnetMin`/`SubnetMax`")]
    Full {
        network: Ipv4Net,
        len: u8,
        ip: Ipv4Addr,
        taken: usize,
    },
    #[error("{ip} lost the race for a subnet {ATTEMPTS} times in a row; another machine may be using the same address")]
    Contended { ip: Ipv4Addr },
}

/// flannel's keys under one prefix, in one etcd.
#[derive(Clone)]
pub struct Registry {
    pub etcd: Client,
    /// Without a trailing `/` (`/coreos.com/network`).
    pub prefix: String,
}

impl Registry {
    pub fn new(etcd: Client, prefix: &str) -> Registry {
        Registry {
            etcd,
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// The prefix of the leases, with its `/`.
    pub fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    pub fn lease_key(&self, subnet: &Ipv4Net) -> String {
        format!("{}{}", self.subnets_prefix(), subnet.key_name())
    }

    /// The network config, read and checked.
    pub fn config(&self) -> Result<NetworkConfig, LeaseError> {
        let key = self.config_key();
        match self.etcd.get(&key)? {
            Some(kv) => Ok(NetworkConfig::parse(&kv.text())?),
            None => Err(LeaseError::NoConfig { key }),
        }
    }

    /// A lease from one of its keys; `None` for a key that is not one (or whose value does not
    /// read: such a key still holds its subnet, see [`Registry::taken`]).
    pub fn lease_of(&self, kv: &Kv) -> Option<Lease> {
        let name = kv.key.strip_prefix(&self.subnets_prefix())?;
        Some(Lease {
            subnet: Ipv4Net::from_key_name(name)?,
            attrs: serde_json::from_slice(&kv.value).ok()?,
            etcd_lease: kv.lease,
            mod_revision: kv.mod_revision,
        })
    }

    /// Every lease, and the revision they were read at (to watch from).
    pub fn leases(&self) -> Result<(Vec<Lease>, i64), LeaseError> {
        let range = self.etcd.get_prefix(&self.subnets_prefix())?;
        Ok((
            range
                .kvs
                .iter()
                .filter_map(|kv| self.lease_of(kv))
                .collect(),
            range.revision,
        ))
    }

    /// Takes a subnet for `attrs.public_ip` under `cfg` (see the module's rules); `previous` is
    /// the subnet this machine had (from its `subnet.env`).
    pub fn acquire(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: Option<Ipv4Net>,
    ) -> Result<Lease, LeaseError> {
        let value = serde_json::to_vec(attrs).expect("a lease serializes");
        for _ in 0..ATTEMPTS {
            let range = self.etcd.get_prefix(&self.subnets_prefix())?;
            let mut taken = BTreeSet::new();
            let mut mine = None;
            for kv in &range.kvs {
                let Some(subnet) = kv
                    .key
                    .strip_prefix(&self.subnets_prefix())
                    .and_then(Ipv4Net::from_key_name)
                else {
                    continue;
                };
                taken.insert(subnet);
                if self
                    .lease_of(kv)
                    .is_some_and(|l| l.attrs.public_ip == attrs.public_ip)
                {
                    mine = Some((subnet, kv.clone()));
                }
            }
            if let Some((subnet, kv)) = mine {
                if cfg.fits(&subnet) {
                    if let Some(lease) = self.take(
                        subnet,
                        &value,
                        attrs,
                        Compare::ModRevision(kv.key.clone(), kv.mod_revision),
                        kv.lease,
                    )? {
                        return Ok(lease);
                    }
                    continue;
                }
                // Left from another network config: it goes, unless an operator reserved it.
                if kv.lease != 0 {
                    self.etcd.txn(
                        &[Compare::ModRevision(kv.key.clone(), kv.mod_revision)],
                        &[Op::delete(kv.key.clone())],
                        &[],
                    )?;
                    taken.remove(&subnet);
                }
            }
            let free: Vec<Ipv4Net> = cfg
                .subnets()
                .filter(|s| !taken.contains(s))
                .take(CHOICES)
                .collect();
            let pick = match previous.filter(|p| cfg.fits(p) && !taken.contains(p)) {
                Some(p) => p,
                None if free.is_empty() => {
                    return Err(LeaseError::Full {
                        network: cfg.network,
                        len: cfg.subnet_len,
                        ip: attrs.public_ip,
                        taken: taken.len(),
                    })
                }
                None => free[spread(attrs.public_ip) % free.len()],
            };
            let key = self.lease_key(&pick);
            if let Some(lease) =
                self.take(pick, &value, attrs, Compare::CreateRevision(key, 0), 0)?
            {
                return Ok(lease);
            }
        }
        Err(LeaseError::Contended {
            ip: attrs.public_ip,
        })
    }

    /// Writes `subnet`'s key with `value` under a new etcd lease if `condition` holds; `None`
    /// when it did not (another machine was first). A reservation (`old_lease` 0 on a key that
    /// exists) stays a key without a lease.
    fn take(
        &self,
        subnet: Ipv4Net,
        value: &[u8],
        attrs: &LeaseAttrs,
        condition: Compare,
        old_lease: i64,
    ) -> Result<Option<Lease>, LeaseError> {
        let reserved = matches!(condition, Compare::ModRevision(..)) && old_lease == 0;
        let etcd_lease = if reserved {
            0
        } else {
            self.etcd.grant(LEASE_TTL)?
        };
        let key = self.lease_key(&subnet);
        let result = self.etcd.txn(
            &[condition],
            &[
                Op::put_leased(key.clone(), value.to_vec(), etcd_lease),
                Op::get(key),
            ],
            &[],
        )?;
        if !result.succeeded {
            if etcd_lease != 0 {
                self.etcd.revoke(etcd_lease)?;
            }
            return Ok(None);
        }
        if old_lease != 0 && old_lease != etcd_lease {
            // The old etcd lease holds no key now; ending it is tidier than waiting a day.
            let _ = self.etcd.revoke(old_lease);
        }
        let mod_revision = result
            .ranges
            .first()
            .and_then(|r| r.first())
            .map_or(result.revision, |kv| kv.mod_revision);
        Ok(Some(Lease {
            subnet,
            attrs: attrs.clone(),
            etcd_lease,
            mod_revision,
        }))
    }

    /// Renews `lease`; `false` when it is gone (expired, or its key deleted by an operator):
    /// the machine must acquire again.
    pub fn renew(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let key = self.lease_key(&lease.subnet);
        let still = self
            .etcd
            .get(&key)?
            .and_then(|kv| self.lease_of(&kv))
            .is_some_and(|l| l.attrs.public_ip == lease.attrs.public_ip);
        if !still {
            return Ok(false);
        }
        if lease.etcd_lease == 0 {
            return Ok(true);
        }
        Ok(self.etcd.keep_alive(lease.etcd_lease)?.is_some())
    }
}

/// A number from an address, to spread machines over the free subnets.
fn spread(ip: Ipv4Addr) -> usize {
    // FNV-1a: stable across builds and machines, unlike std's hasher.
    ip.octets().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    }) as usize
}

#[cfg(test)]
mod tests;
