//! `cargo xtask publish --channel alpha build/<version>/`: uploads the build's update payload to
//! an update server, which checks its signature and app id and points the channel at it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kiln_image::definition::Definition;
use kiln_server::client::AdminClient;

use crate::host;

#[derive(clap::Args)]
pub struct PublishConfig {
    /// The build directory holding `update.payload`.
    pub build_dir: PathBuf,
    /// The channel to point at the new version.
    #[arg(long)]
    pub channel: String,
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8470/", env = "KILN_SERVER")]
    pub server: String,
    /// The admin API's bearer token.
    #[arg(long, env = "KILN_SERVER_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Check an https:// server against the CA certificates in this PEM file (default: the
    /// built-in Mozilla roots).
    #[arg(long, env = "KILN_SERVER_CA")]
    pub ca_file: Option<PathBuf>,
    /// The app id [default: image/image.toml's app_id].
    #[arg(long)]
    pub app: Option<String>,
    /// Machines download from this URL instead of from the server.
    #[arg(long)]
    pub url: Option<String>,
    /// Replace the version if it was published before with other bytes (machines that
    /// downloaded the old ones keep them).
    #[arg(long)]
    pub replace: bool,
}

pub fn run(cfg: &PublishConfig) -> Result<()> {
    let root = host::workspace_root();
    let payload = root.join(&cfg.build_dir).join(crate::release::PAYLOAD_FILE);
    if !payload.is_file() {
        bail!(
            "{} does not exist; build it with `cargo xtask build-image` first",
            payload.display()
        );
    }
    let app = match &cfg.app {
        Some(app) => app.clone(),
        None => {
            let path = root.join("image/image.toml");
            Definition::load(&path)
                .with_context(|| format!("reading the app id from {}", path.display()))?
                .image
                .app_id
        }
    };
    let client = AdminClient::with_ca_file(&cfg.server, &cfg.token, cfg.ca_file.as_deref())?;
    let package = client
        .publish(
            &app,
            Some(&cfg.channel),
            &payload,
            cfg.url.as_deref(),
            cfg.replace,
        )
        .with_context(|| format!("publishing {}", payload.display()))?;
    println!(
        "published {} {} ({} bytes, sha256 {}) to channel {}",
        app, package["version"], package["size"], package["sha256"], cfg.channel
    );
    Ok(())
}
