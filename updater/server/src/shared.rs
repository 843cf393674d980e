//! Several servers on one PostgreSQL database, behind a load balancer. One of them leads: it
//! holds the database's leader lock, keeps the engine, and so makes every rollout decision
//! (grants, limits, safe mode, halts) from one memory, exactly as a lone server does. The others
//! follow: they forward each request to the leader unchanged, and ask for the lock every second,
//! so that when the leader stops or loses the database one of them loads the state from the
//! database and leads.
//!
//! Why not decide in the database on every server: a check would then cost transactions
//! against shared rows on the hot path, and the engine's rules would need a second, SQL form.
//! One decider keeps one set of rules, and an update check costs the leader microseconds; what
//! grows with a fleet is payload traffic, which any server can carry (payloads at a URL of the
//! operator's, or a data directory the servers share).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::TokioIo;
use tower::ServiceExt as _;

use crate::clock::{Clock, SystemClock};
use crate::context::ServerContext;
use crate::store::{PostgresStore, PostgresTarget, Store};
use crate::Engine;

/// Set on a forwarded request, so that a server that is no longer the leader answers 503
/// rather than forwarding it again.
pub const FORWARDED: &str = "x-kiln-forwarded";
/// How often a follower asks for the lock, and a leader checks it still has the database.
const TICK: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a leader waits for its database to answer before it stops leading.
const PING_LIMIT: Duration = Duration::from_secs(5);

/// What this server is doing among those sharing the database.
#[derive(Clone)]
pub enum Role {
    /// No leader known yet (or this server just stopped leading).
    Waiting,
    /// Forwarding to the leader at this URL.
    Following(String),
    /// Deciding.
    Leading(Arc<ServerContext>, Router),
}

/// The role, as the HTTP handlers and the election thread share it.
pub struct Shared {
    role: RwLock<Role>,
    /// What this server sends the leader with a forwarded request to vouch for the client
    /// address it names ([`peer_proof`] of the token).
    proof: String,
}

impl Shared {
    /// A server that has not yet joined the election; `token` is the admin token every server
    /// sharing the database is started with.
    pub fn new(token: &str) -> Self {
        Self {
            role: RwLock::new(Role::Waiting),
            proof: peer_proof(token),
        }
    }
}

/// The headers with which a follower tells the leader the address of the client it forwards
/// for (the admission of new machines counts by it), and proves it is one of the servers: a
/// hash of the admin token they share, so that a client cannot name an address of its choice.
pub const FORWARDED_FOR: &str = "x-kiln-forwarded-for";
pub const FORWARDED_BY: &str = "x-kiln-forwarded-by";

/// The value of [`FORWARDED_BY`] for servers started with `token`.
pub fn peer_proof(token: &str) -> String {
    use sha2::{Digest, Sha256};
    kiln_contract::hex::encode(&Sha256::digest(
        format!("kiln-server peer {token}").as_bytes(),
    ))
}

impl Shared {
    pub fn role(&self) -> Role {
        self.role.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, role: Role) {
        *self.role.write().unwrap_or_else(|e| e.into_inner()) = role;
    }

    /// The engine, while this server leads.
    pub fn engine(&self) -> Option<Arc<Engine>> {
        match self.role() {
            Role::Leading(ctx, _) => Some(Arc::clone(&ctx.engine)),
            _ => None,
        }
    }
}

/// The router of a server that shares its database: every route goes to the leader.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(dispatch).with_state(shared)
}

async fn dispatch(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    match shared.role() {
        Role::Leading(_, router) => match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        Role::Following(leader) if !request.headers().contains_key(FORWARDED) => {
            match forward(&leader, &shared.proof, request).await {
                Ok(response) => response,
                Err(why) => (
                    StatusCode::BAD_GATEWAY,
                    format!("forwarding to the leading server {leader}: {why}; retry in a few seconds\n"),
                )
                    .into_response(),
            }
        }
        _ => {
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                "no server leads yet (one takes over within seconds); retry\n",
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            response
        }
    }
}

/// Sends `request` to the leader and streams its answer back, bodies unbuffered both ways
/// (a payload download or a publish passes through as it comes).
async fn forward(leader: &str, proof: &str, request: Request) -> Result<Response, String> {
    let authority = leader
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .filter(|a| !a.is_empty())
        .ok_or("its URL is not http://host:port/")?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| format!("connecting timed out after {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("connecting: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("starting HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let (mut parts, body) = request.into_parts();
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|e| format!("the request's path: {e}"))?;
    parts
        .headers
        .insert(FORWARDED, HeaderValue::from_static("1"));
    parts.headers.remove(FORWARDED_FOR);
    if let Some(peer) = crate::listen::peer(&parts) {
        if let (Ok(for_), Ok(by)) = (
            HeaderValue::from_str(&peer.ip().to_string()),
            HeaderValue::from_str(proof),
        ) {
            parts.headers.insert(FORWARDED_FOR, for_);
            parts.headers.insert(FORWARDED_BY, by);
        }
    }
    let response = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| format!("{e}"))?;
    Ok(response.map(Body::new))
}

/// Takes part in the election until `stop` (`lead` makes a leader's context out of the
/// database it won): connects, asks for the lock every second, follows
/// the leader the database names meanwhile, and leads when it wins; a leader that loses the
/// database stops leading and starts over. Runs on a thread of its own (the PostgreSQL client
/// blocks). On `stop` a leader commits its queued writes and gives the lock up.
pub fn elect(
    shared: &Shared,
    database: &PostgresTarget,
    peer_url: &str,
    lead: &dyn Fn(Box<dyn Store>) -> anyhow::Result<Arc<ServerContext>>,
    router: &dyn Fn(Arc<ServerContext>) -> Router,
    stop: &AtomicBool,
) {
    let mut complained = false;
    while !stop.load(Ordering::SeqCst) {
        let mut store = match PostgresStore::connect(database) {
            Ok(store) => store,
            Err(e) => {
                if !complained {
                    eprintln!("kiln-server: {e}; retrying every second");
                    complained = true;
                }
                shared.set(Role::Waiting);
                std::thread::sleep(TICK);
                continue;
            }
        };
        complained = false;
        let tls = match store.encrypted() {
            Ok(true) => "encrypted (TLS)",
            Ok(false) => "in the clear",
            Err(_) => "encryption unknown",
        };
        eprintln!(
            "kiln-server: connected to PostgreSQL {}, {tls}",
            database.name()
        );
        let won = loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let now = i64::try_from(SystemClock.now()).unwrap_or(i64::MAX);
            match store.try_lead(peer_url, now) {
                Ok(true) => break true,
                Ok(false) => match store.leader_url() {
                    Ok(Some(url)) if url != peer_url => {
                        if !matches!(shared.role(), Role::Following(ref u) if *u == url) {
                            eprintln!("kiln-server: following the leading server {url}");
                        }
                        shared.set(Role::Following(url));
                    }
                    Ok(_) => shared.set(Role::Waiting),
                    Err(e) => {
                        eprintln!("kiln-server: {e}");
                        break false;
                    }
                },
                Err(e) => {
                    eprintln!("kiln-server: {e}");
                    break false;
                }
            }
            std::thread::sleep(TICK);
        };
        if !won {
            shared.set(Role::Waiting);
            continue;
        }
        let ctx = match lead(Box::new(store)) {
            Ok(ctx) => ctx,
            Err(e) => {
                // The store (and so the lock) went with the failed attempt.
                eprintln!("kiln-server: taking the lead: {e:#}");
                shared.set(Role::Waiting);
                std::thread::sleep(TICK);
                continue;
            }
        };
        eprintln!("kiln-server: leading the servers that share the database, as {peer_url}");
        shared.set(Role::Leading(Arc::clone(&ctx), router(Arc::clone(&ctx))));
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
            if let Err(e) = answers_within(&ctx.engine, PING_LIMIT) {
                eprintln!("kiln-server: {e}; no longer leading");
                shared.set(Role::Waiting);
                // Its writer may be stuck on the dead connection until TCP gives up: let it
                // finish on its own thread while this one rejoins the election.
                let engine = Arc::clone(&ctx.engine);
                std::thread::spawn(move || engine.shutdown());
                break;
            }
        }
        if stop.load(Ordering::SeqCst) {
            shared.set(Role::Waiting);
            // Commits what is queued and closes the connection, which releases the lock.
            ctx.engine.shutdown();
        }
    }
}

/// Whether the engine's store answers (after committing what is queued) within `limit`.
fn answers_within(engine: &Arc<Engine>, limit: Duration) -> Result<(), String> {
    let (done, answer) = std::sync::mpsc::channel();
    let engine = Arc::clone(engine);
    std::thread::spawn(move || {
        let _ = done.send(engine.ping());
    });
    match answer.recv_timeout(limit) {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("the database did not answer within {limit:?}")),
    }
}
