//! `cargo xtask bench server`: update checks per second and latency of the update server on
//! loopback, 64 concurrent clients each posting update_engine-shaped requests, against the same
//! HTTP stack answering a fixed response, in one run; then the server with its default limits
//! under a flood (hostile clients on another loopback address posting fresh machine ids and
//! requests stuffed with events) beside honest clients, with the honest clients' latency alone
//! measured in the same run. Printed, never asserted: the machine is shared.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln_server::clock::SystemClock;
use kiln_server::context::ServerContext;
use kiln_server::engine::AdmissionLimits;
use kiln_server::http::RunningServer;
use kiln_server::model::PackageRecord;
use kiln_server::store::SqliteStore;
use kiln_server::{Engine, EngineConfig};
use kiln_updater::omaha::{App, Event, Os, Ping, Request, Response, UpdateCheck};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::host;

#[derive(clap::Args)]
pub struct ServerBenchConfig {
    /// Concurrent clients, each on its own keep-alive connection.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Seconds of measurement per server (after one second of warm-up).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Distinct machines each client speaks for, in turn.
    #[arg(long, default_value_t = 200)]
    pub machines_per_client: usize,
    /// Server worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Seconds of the flood run (honest clients alone, then beside as many hostile ones); 0
    /// skips it.
    #[arg(long, default_value_t = 30)]
    pub flood_seconds: u64,
    /// Internal: serve this database as `kiln-server serve` would, print the address, and stop
    /// when stdin closes (the flood run's server, in a process of its own so that its memory
    /// is measured apart from the clients').
    #[arg(long, hide = true)]
    pub serve_db: Option<std::path::PathBuf>,
}

/// The honest machines per client in the flood run: few enough that the server's default
/// admission records them all within its first minute.
const FLOOD_MACHINES_PER_CLIENT: usize = 20;

/// The hostile clients' address: loopback, but not the honest ones'.
const HOSTILE_SOURCE: &str = "127.0.0.2";

const APP_ID: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";

pub fn server(cfg: &ServerBenchConfig) -> Result<()> {
    if let Some(db) = &cfg.serve_db {
        return serve_until_stdin_closes(db);
    }
    let dir = host::workspace_root().join("build/bench/server");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let bodies = request_bodies(cfg);

    // The real server on SQLite, with a version to offer on the requests' channel.
    let store = SqliteStore::open(&dir.join("bench.db"))?;
    let engine = Arc::new(Engine::open(
        Box::new(store),
        Arc::new(SystemClock),
        // Every client speaks for machines the server has not seen, from 127.0.0.1: the
        // admission of new machines (a defence against floods) would turn most away.
        EngineConfig {
            admission: AdmissionLimits::UNLIMITED,
            ..EngineConfig::new("http://127.0.0.1:8470/")
        },
    )?);
    engine.publish(bench_package(), Some("stable"))?;
    let ctx = Arc::new(ServerContext {
        engine: Arc::clone(&engine),
        token: "bench-token-not-used-0000".into(),
        data_dir: dir.clone(),
        verifier: None,
    });
    let real = RunningServer::start(ctx, "127.0.0.1:0".parse()?, cfg.threads)?;
    let ours = load(real.addr, &bodies, cfg)?;
    drop(real);
    engine.flush()?;
    let machines = engine.instances(APP_ID, None, None)?.len();

    // The same stack answering a fixed, pre-built response.
    let fixed = fixed_server(cfg.threads)?;
    let baseline = load(fixed.addr, &bodies, cfg)?;
    drop(fixed);

    let ratio = ours.per_second / baseline.per_second;
    println!(
        "server on SQLite: {:.0} checks/s, p50 {:.2} ms, p99 {:.2} ms ({} checks, {} machines tracked)",
        ours.per_second, ours.p50_ms, ours.p99_ms, ours.count, machines
    );
    println!(
        "fixed answer:     {:.0} checks/s, p50 {:.2} ms, p99 {:.2} ms ({} checks)",
        baseline.per_second, baseline.p50_ms, baseline.p99_ms, baseline.count
    );
    println!(
        "ratio {ratio:.2} of the fixed-answer baseline (target >= 0.5); targets >= 10000 checks/s, p99 < 20 ms; {} clients, {} server threads, 2 cores shared",
        cfg.clients, cfg.threads
    );
    if cfg.flood_seconds > 0 {
        flood(cfg, &dir)?;
    }
    Ok(())
}

/// The server as deployed (`kiln-server serve`'s defaults, its own process) answering honest
/// clients alone, then beside as many hostile ones; prints the honest clients' latencies of
/// both, and the server process's memory.
fn flood(cfg: &ServerBenchConfig, dir: &std::path::Path) -> Result<()> {
    let honest = request_bodies(&ServerBenchConfig {
        machines_per_client: FLOOD_MACHINES_PER_CLIENT,
        serve_db: None,
        ..*cfg
    });
    let db = dir.join("flood.db");
    prepare_flood_db(&db, &honest)?;
    let server = FloodServer::start(&db)?;
    let hostile = hostile_bodies(cfg.clients);
    let run = ServerBenchConfig {
        seconds: cfg.flood_seconds,
        serve_db: None,
        ..*cfg
    };
    let before = server.memory_kib("VmRSS")?;
    let alone = load(server.addr, &honest, &run)?;
    let after_alone = server.memory_kib("VmHWM")?;
    let (beside, flooded) = load_beside(server.addr, &honest, &hostile, &run)?;
    let peak = server.memory_kib("VmHWM")?;
    server.stop()?;
    let engine = Engine::open(
        Box::new(SqliteStore::open(&db)?),
        Arc::new(SystemClock),
        EngineConfig::new("http://127.0.0.1:8470/"),
    )?;
    let machines = engine.instances(APP_ID, None, None)?.len();
    println!(
        "flood, honest alone: {:.0} checks/s, p50 {:.2} ms, p99 {:.2} ms ({} clients, {} machines known)",
        alone.per_second,
        alone.p50_ms,
        alone.p99_ms,
        cfg.clients,
        cfg.clients * FLOOD_MACHINES_PER_CLIENT
    );
    println!(
        "flood, honest beside {} hostile clients from {HOSTILE_SOURCE} ({:.0} hostile requests/s, each a fresh machine id with {} events): {:.0} checks/s, p50 {:.2} ms, p99 {:.2} ms (target p99 < 50 ms)",
        cfg.clients, flooded, HOSTILE_EVENTS, beside.per_second, beside.p50_ms, beside.p99_ms
    );
    println!(
        "flood: server process memory {} MiB at the start, peak {} MiB honest alone, peak {} MiB with the flood (target < 256 MiB); {machines} machines recorded in all",
        before / 1024,
        after_alone / 1024,
        peak / 1024
    );
    Ok(())
}

/// The flood run's database: the bench package on `stable`, and the honest machines known
/// (they checked in before: the flood is about machines the server has never seen).
fn prepare_flood_db(db: &std::path::Path, honest: &[Vec<Vec<u8>>]) -> Result<()> {
    let engine = Engine::open(
        Box::new(SqliteStore::open(db)?),
        Arc::new(SystemClock),
        EngineConfig {
            admission: AdmissionLimits::UNLIMITED,
            ..EngineConfig::new("http://127.0.0.1:8470/")
        },
    )?;
    engine.publish(bench_package(), Some("stable"))?;
    for body in honest.iter().flatten() {
        let request = Request::parse(std::str::from_utf8(body)?)?;
        engine.handle(&request, None);
    }
    engine.flush()?;
    engine.shutdown();
    Ok(())
}

/// `cargo xtask bench server --serve-db`: the child side of [`FloodServer`].
fn serve_until_stdin_closes(db: &std::path::Path) -> Result<()> {
    use kiln_server::serve::{self, ServeConfig};
    let dir = db.parent().context("the database's directory")?;
    let server = serve::spawn(&ServeConfig {
        db: db.to_owned(),
        postgres: None,
        postgres_ca: None,
        peer_url: None,
        data_dir: dir.join("flood-data"),
        listen: "127.0.0.1:0".parse()?,
        token: Some("bench-token-not-used-0000".into()),
        public_key: None,
        public_url: None,
        stale_after_days: 0,
        limits: Default::default(),
        tls: Default::default(),
    })?;
    println!("{}", server.addr);
    std::io::Write::flush(&mut std::io::stdout())?;
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest)?;
    drop(server);
    Ok(())
}

/// The flood run's server: this program again, serving the database in a process of its own.
struct FloodServer {
    child: std::process::Child,
    addr: SocketAddr,
}

impl FloodServer {
    fn start(db: &std::path::Path) -> Result<FloodServer> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        // This program, as it runs now (the file behind it may be rebuilt meanwhile).
        let mut child = Command::new("/proc/self/exe")
            .args(["bench", "server", "--serve-db"])
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the flood run's server")?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let addr = line.trim().parse().with_context(|| {
            format!("the flood run's server did not say where it listens: {line:?}")
        })?;
        Ok(FloodServer { child, addr })
    }

    /// A line of the server process's `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
    fn memory_kib(&self, field: &str) -> Result<u64> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in {path}"))
    }

    /// Closes its stdin and waits for it to commit and stop.
    fn stop(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the flood run's server stopped with {status}");
        }
        Ok(())
    }
}

impl Drop for FloodServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Distinct error events in each hostile request.
const HOSTILE_EVENTS: usize = 200;

/// Per hostile client, requests each from a machine id never seen before (as far as the
/// pool goes), stuffed with distinct error events.
fn hostile_bodies(clients: usize) -> Vec<Vec<Vec<u8>>> {
    (0..clients)
        .map(|c| {
            (0..50)
                .map(|m| {
                    let app = App {
                        appid: APP_ID.into(),
                        version: Some("1.2.3".into()),
                        track: Some("stable".into()),
                        machineid: Some(format!("f100d{c:011x}{m:016x}")),
                        updatecheck: Some(UpdateCheck::default()),
                        events: (0..HOSTILE_EVENTS as i64).map(Event::error).collect(),
                        ..App::default()
                    };
                    Request::new("flood", Os::default(), vec![app])
                        .to_xml()
                        .into_bytes()
                })
                .collect()
        })
        .collect()
}

/// Honest and hostile clients at once; the honest clients' figures and the hostile requests
/// answered per second.
fn load_beside(
    addr: SocketAddr,
    honest: &[Vec<Vec<u8>>],
    hostile: &[Vec<Vec<u8>>],
    cfg: &ServerBenchConfig,
) -> Result<(Measured, f64)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let warmup = Duration::from_secs(1);
    let measure = Duration::from_secs(cfg.seconds);
    let (honest, hostile) = runtime.block_on(async {
        let start = Instant::now();
        let (from, until) = (start + warmup, start + warmup + measure);
        let spawn = |bodies: &[Vec<Vec<u8>>], source: Option<&'static str>| -> Vec<_> {
            bodies
                .iter()
                .cloned()
                .map(|mine| tokio::spawn(client(addr, source, mine, from, until)))
                .collect()
        };
        let hostile = spawn(hostile, Some(HOSTILE_SOURCE));
        let honest = spawn(honest, None);
        anyhow::Ok((gather(honest).await?, gather(hostile).await?))
    })?;
    let flooded = hostile.len() as f64 / measure.as_secs_f64();
    Ok((measured(honest, measure)?, flooded))
}

async fn gather(
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<Duration>>>>,
) -> Result<Vec<Duration>> {
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.context("a client task failed")??);
    }
    Ok(all)
}

fn bench_package() -> PackageRecord {
    PackageRecord {
        app_id: APP_ID.into(),
        version: "1.2.4".into(),
        file_name: "update.payload".into(),
        path: None,
        url: Some("http://127.0.0.1:8470/payloads/update.payload".into()),
        size: 382_137_917,
        sha256: "b2d2c6dd4fe8e00afc4cc1c5c13fd1581d2236469638ee90b4baeaebe00705b0".into(),
        min_from_version: None,
        manifest: "{}".into(),
        created_at: 0,
    }
}

/// Per client, one request body per machine, shaped like Flatcar's (flatcar-request.xml):
/// ping, update check and a 3/1 event in one `<app>`.
fn request_bodies(cfg: &ServerBenchConfig) -> Vec<Vec<Vec<u8>>> {
    (0..cfg.clients)
        .map(|c| {
            (0..cfg.machines_per_client)
                .map(|m| {
                    let app = App {
                        appid: APP_ID.into(),
                        version: Some("1.2.3".into()),
                        track: Some("stable".into()),
                        bootid: Some("{965fb4c5-ad3e-4eb7-a4c2-ca0c0e31ec84}".into()),
                        machineid: Some(format!("{c:016x}{m:016x}")),
                        oem: Some("ami".into()),
                        oemversion: Some("0.1.1-r1".into()),
                        alephversion: Some("1688.5.3".into()),
                        lang: Some("en-US".into()),
                        board: Some("amd64-usr".into()),
                        hardware_class: Some(String::new()),
                        delta_okay: Some("false".into()),
                        ping: Some(Ping {
                            active: Some("1".into()),
                            ..Ping::default()
                        }),
                        updatecheck: Some(UpdateCheck::default()),
                        events: vec![Event::installed()],
                    };
                    let os = Os {
                        platform: Some("CoreOS".into()),
                        version: Some("Chateau".into()),
                        sp: Some("2512.2.0_x86_64".into()),
                        arch: None,
                    };
                    Request::new("update_engine-0.4.10", os, vec![app])
                        .to_xml()
                        .into_bytes()
                })
                .collect()
        })
        .collect()
}

fn fixed_server(threads: usize) -> Result<FixedServer> {
    let answer = Response::update_ok(
        APP_ID,
        "1.2.4",
        "http://127.0.0.1:8470/payloads/",
        "update.payload",
        382_137_917,
        &[0x5a; 32],
    )
    .to_xml();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            let answer: &'static str = Box::leak(answer.into_boxed_str());
            // Reads the body like the real endpoint does, then answers the same thing every time.
            let app = axum::Router::new().route(
                "/v1/update/",
                axum::routing::post(move |_body: axum::body::Bytes| async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/xml")],
                        answer,
                    )
                }),
            );
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
    });
    Ok(FixedServer {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

struct FixedServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FixedServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Measured {
    count: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs the clients for a warm-up second plus `cfg.seconds`, counting only the measured part.
fn load(addr: SocketAddr, bodies: &[Vec<Vec<u8>>], cfg: &ServerBenchConfig) -> Result<Measured> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let warmup = Duration::from_secs(1);
    let measure = Duration::from_secs(cfg.seconds);
    let latencies = runtime.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = bodies
            .iter()
            .cloned()
            .map(|mine| {
                tokio::spawn(client(
                    addr,
                    None,
                    mine,
                    start + warmup,
                    start + warmup + measure,
                ))
            })
            .collect();
        gather(tasks).await
    })?;
    measured(latencies, measure)
}

/// Rate and quantiles of the latencies measured over `measure`.
fn measured(mut latencies: Vec<Duration>, measure: Duration) -> Result<Measured> {
    if latencies.is_empty() {
        bail!("no request finished in the measured window");
    }
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok(Measured {
        count: latencies.len(),
        per_second: latencies.len() as f64 / measure.as_secs_f64(),
        p50_ms: pick(0.50).as_secs_f64() * 1e3,
        p99_ms: pick(0.99).as_secs_f64() * 1e3,
    })
}

/// One keep-alive connection (from `source`, default 127.0.0.1) posting its machines' requests
/// in turn; the latencies of requests that started inside the measured window.
async fn client(
    addr: SocketAddr,
    source: Option<&str>,
    bodies: Vec<Vec<u8>>,
    from: Instant,
    until: Instant,
) -> Result<Vec<Duration>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(source) = source {
        socket.bind(format!("{source}:0").parse()?)?;
    }
    let mut stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut latencies = Vec::new();
    let mut buffer = Vec::with_capacity(4096);
    for body in bodies.iter().cycle() {
        let started = Instant::now();
        if started >= until {
            break;
        }
        let head = format!(
            "POST /v1/update/ HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        read_response(&mut stream, &mut buffer).await?;
        if started >= from {
            latencies.push(started.elapsed());
        }
    }
    Ok(latencies)
}

/// Reads one response with a Content-Length body; anything but 200 is an error.
async fn read_response(stream: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) -> Result<()> {
    buffer.clear();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection mid-response");
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        bail!("the server answered {}", head.lines().next().unwrap_or(""));
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .context("a response without Content-Length")?;
    while buffer.len() < header_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection mid-body");
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}
