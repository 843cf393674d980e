//! What every request handler shares, whether it serves the Omaha endpoint and the admin API
//! (`http`), the dashboard (`dashboard`) or a follower's forwarding (`shared`): the engine, the
//! operator's token, where payloads are kept and how they are verified. It sits below all of
//! them, so the routes can be assembled from parts that each take it.

use std::path::PathBuf;
use std::sync::Arc;

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
