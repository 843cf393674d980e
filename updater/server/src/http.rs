//! The HTTP face of the server: the public Omaha endpoint and payload downloads, etcd discovery
//! (`discovery`'s routes), and the JSON admin API under `/admin/v1/`, which answers only
//! requests bearing the operator's token.

use std::io;
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use kiln_updater::omaha::{self, OmahaError, MAX_DOCUMENT_BYTES};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::context::{Refusal, ServerContext};
use crate::discovery::error::DiscoveryError;
use crate::engine::error::{checked_name, EngineError};
use crate::engine::Engine;
use crate::listen::Limits;
use crate::model::{PackageRecord, Policy, Status};
use crate::payloads;
use crate::range::{self, Span};
use crate::verify::PayloadVerifier;

/// The file name payloads published to this server are served under.
pub const PAYLOAD_FILE_NAME: &str = "update.payload";

type Ctx = State<Arc<ServerContext>>;

/// The whole application: public routes and the token-guarded admin API.
pub fn router(ctx: Arc<ServerContext>) -> Router {
    let public = Router::new()
        .route("/v1/update", post(update))
        .route("/v1/update/", post(update))
        .route("/v1/payloads/{app}/{version}/{file}", get(payload))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(crate::discovery::router());
    let admin = Router::new()
        .route("/apps", get(list_apps).post(create_app))
        .route("/apps/{app}", get(show_app))
        .route(
            "/apps/{app}/publish",
            post(publish).layer(DefaultBodyLimit::disable()),
        )
        .route("/apps/{app}/channels/{channel}/version", put(set_version))
        .route("/apps/{app}/channels/{channel}/promote", post(promote))
        .route("/apps/{app}/channels/{channel}/pause", post(pause))
        .route("/apps/{app}/channels/{channel}/resume", post(resume))
        .route("/apps/{app}/channels/{channel}/policy", put(set_policy))
        .route("/apps/{app}/instances", get(list_instances))
        .route("/apps/{app}/instances/{machine}", get(show_instance))
        .route("/apps/{app}/errors", get(recent_errors))
        .route("/expire", post(expire))
        .route("/discovery", get(list_tokens).post(create_token))
        .route("/discovery/{token}", get(show_token).delete(delete_token))
        .route("/discovery/{token}/{id}", delete(delete_registration))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&ctx),
            require_token,
        ));
    public
        .nest("/admin/v1", admin)
        .with_state(Arc::clone(&ctx))
        .merge(crate::dashboard::router(ctx))
}

/// How long a client has to send an Omaha request's body (at most [`MAX_DOCUMENT_BYTES`]).
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `POST /v1/update/`: an Omaha request in, an Omaha response out.
async fn update(State(ctx): Ctx, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let source = client_address(&ctx.token, &parts);
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_DOCUMENT_BYTES))
            .await
        {
            Ok(Ok(body)) => body,
            Ok(Err(_)) => {
                ctx.engine.counters.rejected();
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("an Omaha request is at most {MAX_DOCUMENT_BYTES} bytes"),
                );
            }
            Err(_) => {
                ctx.engine.counters.rejected();
                return plain(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request's body did not arrive within {} s",
                        BODY_TIMEOUT.as_secs()
                    ),
                );
            }
        };
    let Ok(text) = std::str::from_utf8(&body) else {
        ctx.engine.counters.rejected();
        return plain(StatusCode::BAD_REQUEST, "Omaha request is not UTF-8".into());
    };
    match omaha::Request::parse(text) {
        Ok(request) => {
            let xml = ctx.engine.handle(&request, source).to_xml();
            ([(header::CONTENT_TYPE, "application/xml")], xml).into_response()
        }
        Err(err @ OmahaError::TooLarge { .. }) => {
            ctx.engine.counters.rejected();
            plain(StatusCode::PAYLOAD_TOO_LARGE, err.to_string())
        }
        Err(err) => {
            ctx.engine.counters.rejected();
            plain(StatusCode::BAD_REQUEST, err.to_string())
        }
    }
}

/// The address a request came from: the peer's, or the client's a server sharing the database
/// forwarded it for, when that server proves it is one (`shared::FORWARDED_BY`).
fn client_address(token: &str, parts: &axum::http::request::Parts) -> Option<std::net::IpAddr> {
    let header = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let vouched = header(crate::shared::FORWARDED_BY)
        .is_some_and(|by| constant_time_eq(by, &crate::shared::peer_proof(token)));
    let forwarded = header(crate::shared::FORWARDED_FOR).and_then(|ip| ip.parse().ok());
    match (vouched, forwarded) {
        (true, Some(ip)) => Some(ip),
        _ => crate::listen::peer(parts).map(|peer| peer.ip()),
    }
}

/// `GET /v1/payloads/<app>/<version>/<file>`, with `Range` for resuming.
async fn payload(
    State(ctx): Ctx,
    Path((app, version, file)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(package) = ctx.engine.package(&app, &version) else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("no payload {version} of app {app}"),
        );
    };
    let path = match (&package.path, package.file_name == file) {
        (Some(path), true) => PathBuf::from(path),
        _ => {
            return plain(
                StatusCode::NOT_FOUND,
                format!("no file {file} in payload {version}"),
            )
        }
    };
    match serve_file(&path, headers.get(header::RANGE)).await {
        Ok(response) => response,
        Err(err) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading payload {}: {err}", path.display()),
        ),
    }
}

async fn serve_file(path: &FsPath, range: Option<&HeaderValue>) -> io::Result<Response> {
    let mut file = tokio::fs::File::open(path).await?;
    let size = file.metadata().await?.len();
    let span = range::parse(range.and_then(|v| v.to_str().ok()), size);
    let (status, start, length) = match span {
        Span::Whole => (StatusCode::OK, 0, size),
        Span::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Span::Unsatisfiable => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response())
        }
    };
    file.seek(io::SeekFrom::Start(start)).await?;
    let body = Body::from_stream(ReaderStream::new(tokio::io::AsyncReadExt::take(
        file, length,
    )));
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{size}", start + length - 1);
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(header::CONTENT_RANGE, value);
        }
    }
    Ok(response)
}

/// Lets a request through only with `Authorization: Bearer <token>`.
async fn require_token(State(ctx): Ctx, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if !ctx.token.is_empty() && constant_time_eq(token, &ctx.token) => {
            next.run(request).await
        }
        _ => {
            // Read what the client is sending before answering: a client still writing a
            // payload would otherwise see its connection reset ("broken pipe") instead of the
            // 401 and its message. Bounded, and discarded as it arrives.
            drain(request.into_body(), MAX_DRAINED_BYTES).await;
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "the admin API needs the server's token: send Authorization: Bearer <token>".into(),
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// The most of a refused request's body [`require_token`] reads; beyond it the connection is
/// closed. Enough for any request but an upload, whose client checks its token first
/// (`client::AdminClient::publish`): a stranger cannot make the server read a payload's worth.
const MAX_DRAINED_BYTES: u64 = 64 << 10;

/// Reads and drops up to `limit` bytes of `body`.
async fn drain(body: axum::body::Body, limit: u64) {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut seen = 0u64;
    while seen < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    seen += data.len() as u64;
                }
            }
            _ => break,
        }
    }
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs an engine call that may wait on the store off the async workers.
async fn blocking<T: serde::Serialize + Send + 'static, E: Refusal + Send + 'static>(
    ctx: &Arc<ServerContext>,
    call: impl FnOnce(&Engine) -> Result<T, E> + Send + 'static,
) -> Response {
    let engine = Arc::clone(&ctx.engine);
    match tokio::task::spawn_blocking(move || call(&engine)).await {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(err)) => refused(&err),
        Err(join) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("handler failed: {join}"),
        ),
    }
}

fn refused(err: &dyn Refusal) -> Response {
    error(err.status(), err.to_string())
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn plain(status: StatusCode, message: String) -> Response {
    (status, format!("{message}\n")).into_response()
}

#[derive(Deserialize)]
struct NewApp {
    id: String,
    name: Option<String>,
}

/// `GET /admin/v1/metrics`: Prometheus text format. Behind the token because the fleet's
/// versions are the operator's business (Prometheus sends it with `authorization: credentials`).
async fn metrics(State(ctx): Ctx) -> Response {
    let text = crate::metrics::render(&ctx.engine.counters, &ctx.engine.apps());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn list_apps(State(ctx): Ctx) -> Response {
    Json(ctx.engine.apps()).into_response()
}

async fn create_app(State(ctx): Ctx, Json(new): Json<NewApp>) -> Response {
    blocking(&ctx, move |e| {
        let name = new.name.clone().unwrap_or_else(|| new.id.clone());
        e.create_app(&new.id, &name)
    })
    .await
}

async fn show_app(State(ctx): Ctx, Path(app): Path<String>) -> Response {
    blocking(&ctx, move |e| e.app(&app)).await
}

#[derive(Deserialize)]
struct SetVersion {
    version: String,
}

async fn set_version(
    State(ctx): Ctx,
    Path((app, channel)): Path<(String, String)>,
    Json(body): Json<SetVersion>,
) -> Response {
    blocking(&ctx, move |e| {
        e.set_channel_version(&app, &channel, &body.version)
    })
    .await
}

#[derive(Deserialize)]
struct Promote {
    from: String,
}

async fn promote(
    State(ctx): Ctx,
    Path((app, channel)): Path<(String, String)>,
    Json(body): Json<Promote>,
) -> Response {
    blocking(&ctx, move |e| e.promote(&app, &body.from, &channel)).await
}

async fn pause(State(ctx): Ctx, Path((app, channel)): Path<(String, String)>) -> Response {
    blocking(&ctx, move |e| e.set_paused(&app, &channel, true)).await
}

async fn resume(State(ctx): Ctx, Path((app, channel)): Path<(String, String)>) -> Response {
    blocking(&ctx, move |e| e.set_paused(&app, &channel, false)).await
}

async fn set_policy(
    State(ctx): Ctx,
    Path((app, channel)): Path<(String, String)>,
    Json(policy): Json<Policy>,
) -> Response {
    blocking(&ctx, move |e| e.set_policy(&app, &channel, policy)).await
}

#[derive(Deserialize)]
struct InstanceFilter {
    channel: Option<String>,
    status: Option<String>,
    /// A page: at most `limit` instances (default and most [`MAX_INSTANCES_PAGE`]) whose
    /// machine ids come after `after`, in order.
    limit: Option<usize>,
    after: Option<String>,
}

/// The most instances one `GET …/instances` answers; the client asks for the next page with
/// `after=<the last machine id>`.
pub const MAX_INSTANCES_PAGE: usize = 1000;

async fn list_instances(
    State(ctx): Ctx,
    Path(app): Path<String>,
    Query(filter): Query<InstanceFilter>,
) -> Response {
    let status = match filter.status.as_deref().map(|s| (s, Status::parse(s))) {
        None => None,
        Some((_, Some(status))) => Some(status),
        Some((text, None)) => {
            let known: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown status {text:?}; use one of {}", known.join(", ")),
            );
        }
    };
    let limit = filter
        .limit
        .unwrap_or(MAX_INSTANCES_PAGE)
        .min(MAX_INSTANCES_PAGE);
    blocking(&ctx, move |e| {
        let all = e.instances(&app, filter.channel.as_deref(), status)?;
        let page: Vec<_> = all
            .into_iter()
            .filter(|i| {
                filter
                    .after
                    .as_deref()
                    .is_none_or(|after| i.machine_id.as_str() > after)
            })
            .take(limit)
            .collect();
        Ok::<_, EngineError>(page)
    })
    .await
}

async fn show_instance(State(ctx): Ctx, Path((app, machine)): Path<(String, String)>) -> Response {
    blocking(&ctx, move |e| {
        let (instance, events) = e.instance(&app, &machine, 100)?;
        Ok::<_, EngineError>(serde_json::json!({ "instance": instance, "events": events }))
    })
    .await
}

async fn recent_errors(State(ctx): Ctx, Path(app): Path<String>) -> Response {
    blocking(&ctx, move |e| e.recent_errors(&app, 50)).await
}

#[derive(Deserialize)]
struct Expire {
    max_age_secs: u64,
}

async fn expire(State(ctx): Ctx, Json(body): Json<Expire>) -> Response {
    blocking(&ctx, move |e| {
        let removed = e.expire(body.max_age_secs)?;
        Ok::<_, EngineError>(serde_json::json!({ "removed": removed }))
    })
    .await
}

#[derive(Deserialize)]
struct NewToken {
    size: u32,
}

/// `POST /admin/v1/discovery` with `{"size": N}`: a token for a cluster of N, and its URL.
async fn create_token(State(ctx): Ctx, Json(new): Json<NewToken>) -> Response {
    blocking(&ctx, move |e| e.discovery.create(new.size)).await
}

async fn list_tokens(State(ctx): Ctx) -> Response {
    Json(ctx.engine.discovery.tokens()).into_response()
}

async fn show_token(State(ctx): Ctx, Path(token): Path<String>) -> Response {
    match ctx.engine.discovery.token(&token) {
        Ok(view) => Json(view).into_response(),
        Err(err) => refused(&err),
    }
}

async fn delete_token(State(ctx): Ctx, Path(token): Path<String>) -> Response {
    blocking(&ctx, move |e| e.discovery.delete_token(&token)).await
}

/// `DELETE /admin/v1/discovery/<token>/<member id>`: a stale registration (a wiped machine
/// registering again under the same id would otherwise be refused as a duplicate).
async fn delete_registration(
    State(ctx): Ctx,
    Path((token, id)): Path<(String, String)>,
) -> Response {
    blocking(&ctx, move |e| {
        let change = e.discovery.unregister(&token, &id)?;
        Ok::<_, DiscoveryError>(change.answer())
    })
    .await
}

#[derive(Deserialize)]
struct PublishQuery {
    channel: Option<String>,
    /// Machines download from this URL instead of from this server.
    url: Option<String>,
    /// Replace a version published before with other bytes.
    #[serde(default)]
    replace: bool,
}

/// `POST /admin/v1/apps/<app>/publish?channel=…`: the payload file as the body.
async fn publish(
    State(ctx): Ctx,
    Path(app): Path<String>,
    Query(query): Query<PublishQuery>,
    body: Body,
) -> Response {
    let Some(verifier) = ctx.verifier.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server was started without a public key, so it cannot check payload \
             signatures; restart it with --public-key"
                .into(),
        );
    };
    if let Some(channel) = &query.channel {
        if let Err(err) = checked_name("channel", channel) {
            return refused(&err);
        }
    }
    let incoming = ctx.data_dir.join(crate::payloads::INCOMING_DIR);
    let received = match receive(body, &incoming).await {
        Ok(received) => received,
        Err(err) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("storing the upload in {}: {err}", incoming.display()),
            )
        }
    };
    let ctx2 = Arc::clone(&ctx);
    let result = tokio::task::spawn_blocking(move || {
        let outcome = register(&ctx2, &*verifier, &app, &received, &query);
        // The upload is either moved into place or no longer wanted.
        let _ = std::fs::remove_file(&received.path);
        outcome
    })
    .await;
    match result {
        Ok(Ok(package)) => Json(package).into_response(),
        Ok(Err(response)) => *response,
        Err(join) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("publish failed: {join}"),
        ),
    }
}

struct Received {
    path: PathBuf,
    size: u64,
    sha256: [u8; 32],
}

static UPLOADS: AtomicU64 = AtomicU64::new(0);

/// Streams the body to a file under `dir`, hashing as it goes.
async fn receive(body: Body, dir: &FsPath) -> io::Result<Received> {
    use http_body_util::BodyExt;
    tokio::fs::create_dir_all(dir).await?;
    let n = UPLOADS.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("upload-{}-{n}", std::process::id()));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .await?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| io::Error::other(format!("receiving the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            hasher.update(&data);
            size += data.len() as u64;
            file.write_all(&data).await?;
        }
    }
    file.sync_all().await?;
    Ok(Received {
        path,
        size,
        sha256: hasher.finalize().into(),
    })
}

/// Verifies the upload, moves it to its content path and registers it (see `payloads`).
fn register(
    ctx: &ServerContext,
    verifier: &dyn PayloadVerifier,
    app: &str,
    received: &Received,
    query: &PublishQuery,
) -> Result<PackageRecord, Box<Response>> {
    let manifest = verifier.verify(&received.path).map_err(|why| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("payload refused: {why}"),
        ))
    })?;
    if !omaha::ids_equal(&manifest.app_id, app) {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!(
                "payload refused: its signed manifest is for app {}, not app {app}; \
                 publish it to its own app",
                manifest.app_id
            ),
        )));
    }
    let app_id = omaha::normalize_id(app);
    checked_name("app id", &app_id).map_err(|e| Box::new(refused(&e)))?;
    checked_name("version", &manifest.version).map_err(|e| Box::new(refused(&e)))?;
    let target =
        payloads::content_path(&ctx.data_dir, &app_id, &manifest.version, &received.sha256);
    let before = ctx.engine.package(&app_id, &manifest.version);
    let sha256 = kiln_contract::hex::encode(&received.sha256);
    if let Some(before) = &before {
        if before.sha256 != sha256 && !query.replace {
            // Refused before anything moves (the engine checks again, under its lock).
            let err = EngineError::AlreadyPublished {
                app: app_id,
                version: manifest.version,
                published: before.sha256.clone(),
                uploaded: sha256,
            };
            return Err(Box::new(refused(&err)));
        }
    }
    payloads::place(&received.path, &target).map_err(|e| {
        Box::new(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("moving the payload to {}: {e}", target.display()),
        ))
    })?;
    let package = PackageRecord {
        app_id,
        version: manifest.version,
        file_name: PAYLOAD_FILE_NAME.to_owned(),
        path: Some(target.display().to_string()),
        url: query.url.clone(),
        size: received.size,
        sha256,
        min_from_version: manifest.min_from_version,
        manifest: manifest.manifest_json,
        created_at: ctx.engine.now(),
    };
    let registered = if query.replace {
        ctx.engine.republish(package, query.channel.as_deref())
    } else {
        ctx.engine.publish(package, query.channel.as_deref())
    }
    .map_err(|e| Box::new(refused(&e)))?;
    // The bytes a replaced version had are no longer served (a download under way keeps its
    // open file); a file left by a failure here is swept at the next start.
    if let Some(old) = before.and_then(|b| b.path) {
        if FsPath::new(&old) != target && FsPath::new(&old).starts_with(&ctx.data_dir) {
            let _ = std::fs::remove_file(old);
        }
    }
    Ok(registered)
}

/// A server running on its own threads, stopped when dropped.
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// Binds `listen` (port 0 picks one) and serves on a runtime of `threads` workers, with the
    /// default connection limits.
    pub fn start(ctx: Arc<ServerContext>, listen: SocketAddr, threads: usize) -> io::Result<Self> {
        Self::start_with(ctx, listen, threads, Limits::default())
    }

    /// The same, with the connection limits given.
    pub fn start_with(
        ctx: Arc<ServerContext>,
        listen: SocketAddr,
        threads: usize,
        limits: Limits,
    ) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()?;
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kiln-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                        return;
                    };
                    crate::listen::serve(listener, router(ctx), &limits.effective(), None, async {
                        let _ = stopped.await;
                    })
                    .await;
                });
            })?;
        Ok(Self {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:port/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> axum::http::request::Parts {
        let mut request = axum::http::Request::builder().uri("/v1/update/");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        let peer: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        parts.extensions.insert(axum::extract::ConnectInfo(peer));
        parts
    }

    #[test]
    fn a_forwarded_client_address_counts_only_when_a_server_vouches_for_it() {
        let token = "server-token-0123456789";
        let proof = crate::shared::peer_proof(token);
        let from = crate::shared::FORWARDED_FOR;
        let by = crate::shared::FORWARDED_BY;
        let peer = Some("10.0.0.5".parse().unwrap());
        let client = Some("192.0.2.7".parse().unwrap());
        assert_eq!(client_address(token, &parts(&[])), peer);
        assert_eq!(
            client_address(token, &parts(&[(from, "192.0.2.7"), (by, &proof)])),
            client
        );
        assert_eq!(
            client_address(token, &parts(&[(from, "192.0.2.7")])),
            peer,
            "no proof"
        );
        let forged = crate::shared::peer_proof("another-token-0123456789");
        assert_eq!(
            client_address(token, &parts(&[(from, "192.0.2.7"), (by, &forged)])),
            peer
        );
    }
}
