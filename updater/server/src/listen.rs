//! The accept loop in front of the routes, speaking plain HTTP/1.1 or, given a certificate,
//! HTTPS (rustls; the handshake counts against the request-head deadline). It bounds what a client that never finishes its
//! request can hold: connections are capped (in all and per source address) below the process's
//! file-descriptor limit, and a connection that has not sent a whole request head within
//! [`Limits::header_timeout`] (a new connection, or a kept-alive one waiting for its next
//! request) is closed. A connection over a cap is closed at once, before anything is read, so
//! the server keeps the descriptors it needs to answer everyone else. The handlers see the
//! peer's address as `ConnectInfo<SocketAddr>`. On shutdown the listener closes and the
//! requests in flight finish (for at most [`GRACE`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tower::ServiceExt;

/// How long requests in flight may take to finish once the server is told to stop.
pub const GRACE: Duration = Duration::from_secs(10);

/// What one client may hold.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections in all; the file-descriptor limit lowers it (see [`Limits::effective`]).
    pub max_connections: usize,
    /// Open connections from one address.
    pub max_per_source: usize,
    /// Time to send a request's head, from the connection's start or the previous response.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_per_source: 256,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Descriptors kept free of connections: the database, payload files being served, logs.
const RESERVED_DESCRIPTORS: u64 = 64;

impl Limits {
    /// The connection cap, lowered to fit the process's file-descriptor limit (raised to its
    /// hard limit first).
    pub fn effective(&self) -> Limits {
        let descriptors = raise_descriptor_limit();
        let fit = descriptors.saturating_sub(RESERVED_DESCRIPTORS).max(1);
        Limits {
            max_connections: self
                .max_connections
                .min(usize::try_from(fit).unwrap_or(usize::MAX)),
            ..self.clone()
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one; returns the soft limit in force.
fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// The open connections, in all and per source; a slot is given back when its guard drops.
struct Slots {
    limits: Limits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// Connections refused since the last warning, and when the last warning was: one line a minute at most, whatever a flood does.
    refused: AtomicU64,
    warned_at: Mutex<Option<std::time::Instant>>,
}

struct Slot {
    slots: Arc<Slots>,
    source: IpAddr,
}

impl Slots {
    fn take(self: &Arc<Self>, source: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= self.limits.max_connections {
            drop(open);
            self.refuse(format_args!(
                "{} connections open, the cap",
                self.limits.max_connections
            ));
            return None;
        }
        let from_source = open.1.entry(source).or_insert(0);
        if *from_source >= self.limits.max_per_source {
            drop(open);
            self.refuse(format_args!(
                "{} connections open from {source}, the cap for one address",
                self.limits.max_per_source
            ));
            return None;
        }
        *from_source += 1;
        open.0 += 1;
        Some(Slot {
            slots: Arc::clone(self),
            source,
        })
    }
}

impl Slots {
    fn refuse(&self, why: std::fmt::Arguments) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut warned = self.warned_at.lock().unwrap_or_else(|p| p.into_inner());
        if warned.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
            return;
        }
        *warned = Some(std::time::Instant::now());
        self.refused.store(0, Ordering::Relaxed);
        eprintln!("kiln-server: refused {refused} connection(s) in the last minute at most: {why}");
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.source);
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes; over TLS when `tls` is given.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: &Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Slots {
        limits: limits.clone(),
        open: Mutex::new((0, HashMap::new())),
        refused: AtomicU64::new(0),
        warned_at: Mutex::new(None),
    });
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or memory: wait for connections to close rather
                    // than spin.
                    eprintln!("kiln-server: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = slots.take(peer.ip()) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        let deadline = limits.header_timeout;
        tokio::spawn(async move {
            // A client that goes away or times out ends its own connection; nothing to report.
            match tls {
                None => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(connection).await;
                }
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(deadline, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(connection).await;
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(GRACE) => {}
    }
}

/// The peer of a request this loop accepted (`None` for a request built in a test).
pub fn peer(request: &axum::http::request::Parts) -> Option<SocketAddr> {
    request
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}
