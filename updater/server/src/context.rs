//! What every request handler shares, whether it serves the Omaha endpoint and the admin API
//! (`http`), the dashboard (`dashboard`), etcd discovery (`discovery`) or a follower's
//! forwarding (`shared`): the engine, the operator's token, where payloads are kept and how they
//! are verified, and the HTTP status each kind of refusal is answered with. It sits below all of
//! them, so the routes can be assembled from parts that each take it.

use std::path::PathBuf;
use std::sync::Arc;

use axum::http::StatusCode;

use crate::discovery::error::DiscoveryError;
use crate::engine::error::EngineError;
use crate::engine::Engine;
use crate::verify::PayloadVerifier;

/// Everything the handlers share.
pub struct ServerContext {
    pub engine: Arc<Engine>,
    /// The admin API's bearer token.
    pub token: String,
    /// Where published payloads are kept (`payloads/<app>/<version>/update.payload`).
    pub data_dir: PathBuf,
    /// Checks published payloads; `None` refuses publishing (no public key given).
    pub verifier: Option<Arc<dyn PayloadVerifier>>,
}

/// A refused action, as the admin API and the dashboard answer it: a status, and the message.
pub trait Refusal: std::fmt::Display {
    fn status(&self) -> StatusCode;
}

impl Refusal for EngineError {
    fn status(&self) -> StatusCode {
        match self {
            EngineError::UnknownApp(_)
            | EngineError::UnknownChannel { .. }
            | EngineError::UnknownVersion { .. } => StatusCode::NOT_FOUND,
            EngineError::EmptyChannel { .. } | EngineError::Invalid { .. } => {
                StatusCode::BAD_REQUEST
            }
            EngineError::AlreadyPublished { .. } => StatusCode::CONFLICT,
            EngineError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl Refusal for DiscoveryError {
    fn status(&self) -> StatusCode {
        crate::discovery::v2::status(self)
    }
}
