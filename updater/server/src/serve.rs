//! Running the server: open the store, load the public key, listen, expire stale instances
//! periodically, stop on Ctrl-C or SIGTERM. Shared by the `kiln-server serve` binary and `cargo xtask serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::clock::SystemClock;
use crate::http::{router, ServerContext};
use crate::store::SqliteStore;
use crate::verify::{KeyVerifier, PayloadVerifier};
use crate::{Engine, EngineConfig};

/// The address the server listens on unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";

/// How to run the server.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeConfig {
    /// The SQLite database (created if missing).
    #[arg(long, default_value = "kiln-server.db")]
    pub db: PathBuf,
    /// Where published payloads are stored.
    #[arg(long, default_value = "kiln-server-data")]
    pub data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// The admin API's bearer token.
    #[arg(long, env = "KILN_SERVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The public key (SPKI PEM) published payloads must be signed with; without it publishing
    /// is refused.
    #[arg(long)]
    pub public_key: Option<PathBuf>,
    /// The URL machines reach this server at (default: http://<listen>/).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Forget machines that have not checked in for this many days (0: never).
    #[arg(long, default_value_t = 30)]
    pub stale_after_days: u64,
}

/// Serves until Ctrl-C.
pub fn run(cfg: &ServeConfig) -> Result<()> {
    let ctx = context(cfg)?;
    let engine = Arc::clone(&ctx.engine);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("listening on {}", cfg.listen))?;
        serve(ctx, cfg, listener, stop_signal()).await
    });
    engine.shutdown();
    result
}

/// Ctrl-C or SIGTERM (systemd's and container runtimes' stop): the server stops taking
/// connections, finishes the requests it has, and commits its queued writes.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    // If a handler cannot be installed, that signal keeps its default action.
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = term => {}
        () = interrupt => {}
    }
}

/// A server running on a thread of its own (for the VM scenarios and tools that embed it); it
/// stops, committing what it has, when dropped.
pub struct Background {
    /// Where it listens (the port is the one the OS chose when `listen` said 0).
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

/// Starts the server of `cfg` in the background; returns once it listens.
pub fn spawn(cfg: &ServeConfig) -> Result<Background> {
    let ctx = context(cfg)?;
    let engine = Arc::clone(&ctx.engine);
    let listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr().context("the listening address")?;
    listener
        .set_nonblocking(true)
        .context("making the listener non-blocking")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cfg = cfg.clone();
    let thread = std::thread::Builder::new()
        .name("kiln-server".into())
        .spawn(move || {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .context("handing the listener to the runtime")?;
                serve(ctx, &cfg, listener, async {
                    let _ = stopped.await;
                })
                .await
            })
        })
        .context("starting the server thread")?;
    Ok(Background {
        addr,
        engine,
        stop: Some(stop),
        thread: Some(thread),
    })
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if let Ok(Err(e)) = thread.join() {
                eprintln!("kiln-server: {e:#}");
            }
        }
        self.engine.shutdown();
    }
}

/// The store, key and engine of `cfg`, checked.
fn context(cfg: &ServeConfig) -> Result<Arc<ServerContext>> {
    let token = match cfg.token.as_deref() {
        Some(t) if t.len() >= 16 => t.to_owned(),
        Some(_) => bail!("the admin token is shorter than 16 characters; choose a longer one"),
        None => bail!("no admin token: pass --token or set KILN_SERVER_TOKEN"),
    };
    let verifier: Option<Arc<dyn PayloadVerifier>> = match &cfg.public_key {
        Some(path) => Some(Arc::new(
            KeyVerifier::load(path).map_err(anyhow::Error::msg)?,
        )),
        None => {
            eprintln!("kiln-server: no --public-key given: publishing is refused until restarted with one");
            None
        }
    };
    let store = SqliteStore::open(&cfg.db)?;
    let public_url = cfg
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}/", cfg.listen));
    let engine = Arc::new(Engine::open(
        Box::new(store),
        Arc::new(SystemClock),
        EngineConfig { public_url },
    )?);
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    // Stored payload paths must not depend on the directory the server is started from.
    let data_dir = cfg
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", cfg.data_dir.display()))?;
    Ok(Arc::new(ServerContext {
        engine: Arc::clone(&engine),
        token,
        data_dir,
        verifier,
    }))
}

async fn serve(
    ctx: Arc<ServerContext>,
    cfg: &ServeConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener.local_addr().context("the listening address")?;
    eprintln!(
        "kiln-server: Omaha endpoint http://{addr}/v1/update/, admin API under /admin/v1/, database {}",
        cfg.db.display()
    );
    if cfg.stale_after_days > 0 {
        let engine = Arc::clone(&ctx.engine);
        let max_age = cfg.stale_after_days * 86_400;
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                every.tick().await;
                let engine = Arc::clone(&engine);
                match tokio::task::spawn_blocking(move || engine.expire(max_age)).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => eprintln!("kiln-server: forgot {n} stale instances"),
                    Ok(Err(e)) => eprintln!("kiln-server: expiring stale instances: {e}"),
                    Err(e) => eprintln!("kiln-server: expiring stale instances: {e}"),
                }
            }
        });
    }
    axum::serve(listener, router(ctx))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")
}
