//! Why a discovery request or an operator's action was refused. Each refusal carries the
//! token's index (v2 errors report it), and `v2` maps it to the status and error code etcd's
//! client expects.

/// Why a discovery request was refused. Messages name the input and what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "no discovery token {token}; create one with `kiln-server discovery new --size N` and \
         use the URL it prints"
    )]
    UnknownToken { token: String, key: String },
    #[error("no key {key}")]
    KeyNotFound { key: String, index: u64 },
    #[error(
        "{key} is already registered; if that machine was wiped and registers again, remove \
         its old entry with `kiln-server discovery delete <token> <member id>`"
    )]
    Exists { key: String, index: u64 },
    #[error(
        "discovery token {token} already holds {limit} registrations (its size {size} and \
         spares); remove stale ones with `kiln-server discovery delete <token> <member id>`"
    )]
    Full {
        token: String,
        limit: usize,
        size: u32,
        index: u64,
    },
    #[error(
        "{key} is the operator's (`kiln-server discovery new` and `delete`); a client may only \
         register and remove members"
    )]
    ReadOnly { key: String, index: u64 },
    #[error(
        "changes from index {wait_index} are no longer known (only from {kept_from}); read the \
         directory again and wait from its X-Etcd-Index + 1"
    )]
    Cleared {
        wait_index: u64,
        kept_from: u64,
        index: u64,
    },
    #[error("{0}; retry in a few seconds")]
    Busy(String),
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: String,
    },
    #[error(
        "reading random bytes from /dev/urandom for a token: {0}; check that /dev/urandom is \
         readable by the server"
    )]
    Random(String),
    #[error("storing the change failed: {0}")]
    Store(String),
}

impl DiscoveryError {
    /// The token's index when refused (0 when there is no such token).
    pub fn index(&self) -> u64 {
        match self {
            DiscoveryError::KeyNotFound { index, .. }
            | DiscoveryError::Exists { index, .. }
            | DiscoveryError::Full { index, .. }
            | DiscoveryError::ReadOnly { index, .. }
            | DiscoveryError::Cleared { index, .. } => *index,
            DiscoveryError::UnknownToken { .. }
            | DiscoveryError::Busy(_)
            | DiscoveryError::Invalid { .. }
            | DiscoveryError::Random(_)
            | DiscoveryError::Store(_) => 0,
        }
    }
}
