//! Running the server: open the store, load the public key, listen, expire stale instances
//! periodically, stop on Ctrl-C or SIGTERM. Shared by the `kiln-server serve` binary and `cargo xtask serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::Router;

use crate::clock::SystemClock;
use crate::context::ServerContext;
use crate::engine::AdmissionLimits;
use crate::http::router;
use crate::listen::Limits;
use crate::shared::{self, Shared};
use crate::store::{PostgresTarget, Protection, SqliteStore, Store};
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
    /// A PostgreSQL database instead of `--db` (`host=… user=… dbname=…` or a `postgresql://`
    /// URL). Servers given the same one share it: one leads and decides, the others forward
    /// to it and take over when it goes.
    /// Add `sslmode=require` for TLS; its certificate is always checked (chain and name).
    #[arg(long, env = "KILN_SERVER_POSTGRES", hide_env_values = true)]
    pub postgres: Option<String>,
    /// With `--postgres`: the CA that signed the database's certificate (PEM), instead of the
    /// public roots built in; TLS is then required.
    #[arg(long, env = "KILN_POSTGRES_CA", requires = "postgres")]
    pub postgres_ca: Option<PathBuf>,
    /// With `--postgres`: the URL the other servers reach this one at (default:
    /// http://<listen>/, which must then be a specific address).
    #[arg(long)]
    pub peer_url: Option<String>,
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
    #[command(flatten)]
    pub limits: ServeLimits,
    #[command(flatten)]
    pub tls: ServeTls,
}

/// HTTPS on the server itself.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeTls {
    /// Answer HTTPS with this certificate chain (PEM, the server's certificate first); with
    /// --tls-key. The default public URL is then https://<listen>/.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ServeTls {
    /// The server's TLS settings, if it speaks HTTPS.
    fn config(&self) -> Result<Option<Arc<rustls::ServerConfig>>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(kiln_updater::tls::server_config(cert, key)?)),
            (None, None) => Ok(None),
            _ => bail!("give --tls-cert and --tls-key together"),
        }
    }
}

/// What one client may cost the server (see `listen` and the engine's admission).
#[derive(clap::Args, Debug, Clone)]
pub struct ServeLimits {
    /// Open connections in all (lowered to fit the file-descriptor limit).
    #[arg(long, default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,
    /// Open connections from one address.
    #[arg(long, default_value_t = Limits::default().max_per_source)]
    pub max_connections_per_source: usize,
    /// New machines recorded per minute from one address (more are answered "no update" and
    /// recorded on a later check).
    #[arg(long, default_value_t = AdmissionLimits::default().per_source)]
    pub new_machines_per_source: u32,
    /// New machines recorded per minute per app, whatever their address.
    #[arg(long, default_value_t = AdmissionLimits::default().per_app)]
    pub new_machines_per_app: u32,
}

impl Default for ServeLimits {
    fn default() -> Self {
        let (connections, admission) = (Limits::default(), AdmissionLimits::default());
        Self {
            max_connections: connections.max_connections,
            max_connections_per_source: connections.max_per_source,
            new_machines_per_source: admission.per_source,
            new_machines_per_app: admission.per_app,
        }
    }
}

impl ServeLimits {
    fn connections(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            max_per_source: self.max_connections_per_source,
            ..Limits::default()
        }
    }

    fn admission(&self) -> AdmissionLimits {
        AdmissionLimits {
            per_source: self.new_machines_per_source,
            per_app: self.new_machines_per_app,
        }
    }
}

/// Serves until Ctrl-C.
pub fn run(cfg: &ServeConfig) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(cfg.listen))
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr().context("the listening address")?;
    let tls = cfg.tls.config()?;
    let mut front = Front::start(cfg, addr, tls.is_some())?;
    let result = runtime.block_on(serve(&front, cfg, listener, tls, stop_signal()));
    front.stop();
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
    front: Front,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

/// Starts the server of `cfg` in the background; returns once it listens.
pub fn spawn(cfg: &ServeConfig) -> Result<Background> {
    let listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr().context("the listening address")?;
    listener
        .set_nonblocking(true)
        .context("making the listener non-blocking")?;
    let tls = cfg.tls.config()?;
    let front = Front::start(cfg, addr, tls.is_some())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cfg = cfg.clone();
    let serving = front.clone_for_serving();
    let thread = std::thread::Builder::new()
        .name("kiln-server".into())
        .spawn(move || {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .context("handing the listener to the runtime")?;
                serve(&serving, &cfg, listener, tls, async {
                    let _ = stopped.await;
                })
                .await
            })
        })
        .context("starting the server thread")?;
    Ok(Background {
        addr,
        front,
        stop: Some(stop),
        thread: Some(thread),
    })
}

impl Background {
    /// The engine, while this server decides (always, unless it shares a database and follows).
    pub fn engine(&self) -> Option<Arc<Engine>> {
        self.front.engine()
    }

    /// Whether this server leads the servers sharing its database (or is alone).
    pub fn leads(&self) -> bool {
        self.engine().is_some()
    }
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
        self.front.stop();
    }
}

/// What answers the requests: one server with its own database, or one of several sharing a
/// PostgreSQL database (see `shared`).
enum Front {
    Alone(Arc<ServerContext>),
    Shared {
        shared: Arc<Shared>,
        stop: Arc<AtomicBool>,
        election: Option<std::thread::JoinHandle<()>>,
    },
}

impl Front {
    fn start(cfg: &ServeConfig, addr: SocketAddr, https: bool) -> Result<Self> {
        let parts = Parts::checked(cfg, addr, https)?;
        let Some(params) = &cfg.postgres else {
            let store = SqliteStore::open(&cfg.db)?;
            return Ok(Front::Alone(parts.context(Box::new(store))?));
        };
        let database = PostgresTarget::new(params, cfg.postgres_ca.as_deref())?;
        if database.protection() == Protection::Plain {
            eprintln!(
                "kiln-server: warning: PostgreSQL {} is reached without TLS (no sslmode= in --postgres): \
                 add sslmode=require, and --postgres-ca for a private CA",
                database.name()
            );
        }
        let peer_url = match &cfg.peer_url {
            Some(url) => url.clone(),
            None if addr.ip().is_unspecified() => bail!(
                "--listen {addr} is every address of this machine: pass --peer-url with the URL \
                 the other servers sharing the database reach this one at"
            ),
            None => format!("http://{addr}/"),
        };
        if !peer_url.starts_with("http://") {
            bail!(
                "--peer-url {peer_url:?}: the servers talk plain http://host:port/ to each other"
            );
        }
        let shared = Arc::new(Shared::new(&parts.token));
        let stop = Arc::new(AtomicBool::new(false));
        let election = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("kiln-server-election".into())
                .spawn(move || {
                    shared::elect(
                        &shared,
                        &database,
                        &peer_url,
                        &|store| parts.context(store),
                        &|ctx| router(ctx),
                        &stop,
                    );
                })
                .context("starting the election thread")?
        };
        Ok(Front::Shared {
            shared,
            stop,
            election: Some(election),
        })
    }

    /// The same front for the serving thread (it shares the role and the engine).
    fn clone_for_serving(&self) -> Front {
        match self {
            Front::Alone(ctx) => Front::Alone(Arc::clone(ctx)),
            Front::Shared { shared, stop, .. } => Front::Shared {
                shared: Arc::clone(shared),
                stop: Arc::clone(stop),
                election: None,
            },
        }
    }

    fn router(&self) -> Router {
        match self {
            Front::Alone(ctx) => router(Arc::clone(ctx)),
            Front::Shared { shared, .. } => shared::router(Arc::clone(shared)),
        }
    }

    fn engine(&self) -> Option<Arc<Engine>> {
        match self {
            Front::Alone(ctx) => Some(Arc::clone(&ctx.engine)),
            Front::Shared { shared, .. } => shared.engine(),
        }
    }

    /// Commits what is queued; a leader then gives up the lock.
    fn stop(&mut self) {
        match self {
            Front::Alone(ctx) => ctx.engine.shutdown(),
            Front::Shared { stop, election, .. } => {
                stop.store(true, Ordering::SeqCst);
                if let Some(election) = election.take() {
                    let _ = election.join();
                }
            }
        }
    }
}

/// The checked settings a server's context is made of, whichever store it gets.
struct Parts {
    token: String,
    verifier: Option<Arc<dyn PayloadVerifier>>,
    data_dir: PathBuf,
    public_url: String,
    admission: AdmissionLimits,
}

impl Parts {
    /// `https`: whether the server answers HTTPS (its default public URL).
    fn checked(cfg: &ServeConfig, addr: SocketAddr, https: bool) -> Result<Self> {
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
        crate::payloads::private_data_dir(&cfg.data_dir)
            .with_context(|| format!("creating {} (mode 0700)", cfg.data_dir.display()))?;
        // Stored payload paths must not depend on the directory the server is started from.
        let data_dir = cfg
            .data_dir
            .canonicalize()
            .with_context(|| format!("resolving {}", cfg.data_dir.display()))?;
        if https && cfg.postgres.is_some() {
            bail!(
                "--tls-cert with --postgres: servers sharing a database forward requests to \
                 each other over plain HTTP; terminate TLS in front of them (the load balancer)"
            );
        }
        let scheme = if https { "https" } else { "http" };
        let public_url = cfg
            .public_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{addr}/"));
        Ok(Self {
            token,
            verifier,
            data_dir,
            public_url,
            admission: cfg.limits.admission(),
        })
    }

    /// The engine on `store`, loaded, and what the handlers share.
    fn context(&self, store: Box<dyn Store>) -> Result<Arc<ServerContext>> {
        let engine = Arc::new(Engine::open(
            store,
            Arc::new(SystemClock),
            EngineConfig {
                public_url: self.public_url.clone(),
                admission: self.admission,
            },
        )?);
        let referenced = engine.payload_paths();
        match crate::payloads::sweep(&self.data_dir, &referenced, crate::payloads::SWEEP_MIN_AGE) {
            Ok(0) => {}
            Ok(n) => eprintln!(
                "kiln-server: removed {n} files under {} that no package refers to (unfinished uploads, replaced payloads)",
                self.data_dir.display()
            ),
            Err(e) => eprintln!(
                "kiln-server: sweeping {}: {e} (the files stay; nothing served is affected)",
                self.data_dir.display()
            ),
        }
        Ok(Arc::new(ServerContext {
            engine,
            token: self.token.clone(),
            data_dir: self.data_dir.clone(),
            verifier: self.verifier.clone(),
        }))
    }
}

async fn serve(
    front: &Front,
    cfg: &ServeConfig,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener.local_addr().context("the listening address")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let database = match &cfg.postgres {
        Some(_) => "PostgreSQL, shared".to_owned(),
        None => cfg.db.display().to_string(),
    };
    eprintln!(
        "kiln-server: Omaha endpoint {scheme}://{addr}/v1/update/, admin API under /admin/v1/, database {database}"
    );
    if cfg.stale_after_days > 0 {
        let front = front.clone_for_serving();
        let max_age = cfg.stale_after_days * 86_400;
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                every.tick().await;
                // A follower has nothing to expire: the leader does it.
                let Some(engine) = front.engine() else {
                    continue;
                };
                match tokio::task::spawn_blocking(move || engine.expire(max_age)).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => eprintln!("kiln-server: forgot {n} stale instances"),
                    Ok(Err(e)) => eprintln!("kiln-server: expiring stale instances: {e}"),
                    Err(e) => eprintln!("kiln-server: expiring stale instances: {e}"),
                }
            }
        });
    }
    crate::listen::serve(
        listener,
        front.router(),
        &cfg.limits.connections().effective(),
        tls,
        shutdown,
    )
    .await;
    Ok(())
}
