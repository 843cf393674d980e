//! etcd v3 through its JSON gateway (`/v3/kv/...`, `/v3/lease/...`, `/v3/watch`), over plain
//! blocking HTTP: the one etcd client of the update agent's reboot lock, fleet and the benches.
//!
//! Why the gateway and not gRPC: no protoc in the build, the same small HTTP stack the agent
//! already carries, and it works unchanged through a worker's proxy (`proxy.rs`). The gateway's
//! quirks are handled here once: keys and values are base64, int64 fields are strings, and false
//! booleans and zero numbers are left out of answers (a txn that failed has no `succeeded`).

mod client;
pub mod discovery;
pub mod gateway;
pub mod proxy;
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
mod watch;

pub use client::{Client, Compare, EtcdError, Kv, Op, Range, TxnResult};
pub use watch::{Event, EventKind, Watch};

/// The end of the range that holds every key starting with `prefix` (as etcdctl's `--prefix`):
/// the prefix with its last byte that is not 0xff incremented; all keys (`\0`) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests;
