//! `cargo xtask serve`: the update server with its state under `build/server/`, and the public
//! key of the local builds, so a developer can publish what `build-image` made.

use std::path::PathBuf;

use anyhow::Result;
use kiln_server::serve::{self, ServeConfig};

use crate::host;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The SQLite database (relative paths are under the workspace).
    #[arg(long, default_value = "build/server/kiln-server.db")]
    pub db: PathBuf,
    /// Where published payloads are kept.
    #[arg(long, default_value = "build/server/data")]
    pub data_dir: PathBuf,
    #[arg(long, default_value = serve::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// The admin API's bearer token (at least 16 characters).
    #[arg(long, env = "KILN_SERVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The public key payloads must be signed with [default: the newest
    /// build/<version>/update-key.pub.pem].
    #[arg(long)]
    pub public_key: Option<PathBuf>,
    /// The URL machines reach the server at (default: http://<listen>/).
    #[arg(long)]
    pub public_url: Option<String>,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let root = host::workspace_root();
    let db = root.join(&args.db);
    if let Some(parent) = db.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let public_key = args
        .public_key
        .as_ref()
        .map(|p| root.join(p))
        .or_else(|| newest_build_key(&root));
    if let Some(key) = &public_key {
        eprintln!("serve: payloads must be signed by {}", key.display());
    }
    serve::run(&ServeConfig {
        db,
        // Several servers on PostgreSQL: `kiln-server serve --postgres …`.
        postgres: None,
        postgres_ca: None,
        peer_url: None,
        data_dir: root.join(&args.data_dir),
        listen: args.listen,
        token: args.token.clone(),
        public_key,
        public_url: args.public_url.clone(),
        stale_after_days: 30,
        limits: Default::default(),
        tls: Default::default(),
    })
}

/// The public key beside the highest-versioned build, if any build made one.
fn newest_build_key(root: &std::path::Path) -> Option<PathBuf> {
    let mut keys: Vec<(String, PathBuf)> = std::fs::read_dir(root.join("build"))
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let key = entry.path().join(crate::release::KEY_FILE);
            key.is_file()
                .then(|| (entry.file_name().to_string_lossy().into_owned(), key))
        })
        .collect();
    keys.sort_by(|a, b| kiln_server::rollout::compare_versions(&a.0, &b.0));
    keys.pop().map(|(_, key)| key)
}
