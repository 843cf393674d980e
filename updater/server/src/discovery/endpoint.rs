//! The discovery protocol's public routes, `/discovery/<token>[/<key>]`, answered exactly as
//! etcd's v2 keys API answers etcd's discovery client: GET (a node, or with `wait=true` the
//! first change from `waitIndex`, held until it comes), PUT with `prevExist=false` (register),
//! DELETE (remove a registration). No admin token: the token in the URL is the capability, as
//! with etcd's public discovery service. Every answer carries `X-Etcd-Index`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use http_body_util::{BodyExt, Limited};

use crate::context::ServerContext;
use crate::form;

use super::error::DiscoveryError;
use super::key::{checked_id, Key, MAX_VALUE_BYTES};
use super::v2::{self, Answer, INDEX_HEADER};
use super::{Discovery, Waiting, Watch};

/// The largest body read: a form with one value, percent-encoded (three bytes a character).
const MAX_BODY_BYTES: usize = 4 * MAX_VALUE_BYTES;

type Ctx = State<Arc<ServerContext>>;

/// The protocol's routes, to merge into the server's public routes.
pub fn router() -> Router<Arc<ServerContext>> {
    Router::new()
        .route("/discovery/{token}", any(directory))
        .route("/discovery/{token}/", any(directory))
        .route("/discovery/{token}/{*key}", any(below))
}

async fn directory(
    State(ctx): Ctx,
    method: Method,
    Path(token): Path<String>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    serve(ctx, method, token, String::new(), query, body).await
}

async fn below(
    State(ctx): Ctx,
    method: Method,
    Path((token, key)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    serve(ctx, method, token, key, query, body).await
}

/// One request; every outcome carries the token's index.
async fn serve(
    ctx: Arc<ServerContext>,
    method: Method,
    token: String,
    key: String,
    query: Option<String>,
    body: Body,
) -> Response {
    let key = Key::parse(&key);
    let params = form::parse(query.unwrap_or_default().as_bytes());
    let outcome = match method {
        Method::GET => read(&ctx, &token, &key, &params).await,
        Method::PUT => create(&ctx, &token, &key, &params, body).await,
        Method::DELETE => remove(&ctx, &token, &key).await,
        other => Err(DiscoveryError::Invalid {
            what: "method",
            value: other.to_string(),
            why: "a discovery directory answers GET, PUT and DELETE".into(),
        }),
    };
    let discovery = &ctx.engine.discovery;
    match outcome {
        Ok(reply) => reply.into_response(discovery, &token),
        Err(err) => refuse(discovery, &token, &err),
    }
}

/// What a request that was not refused gets.
enum Reply {
    Answer(StatusCode, Box<Answer>),
    /// A wait held as long as allowed with no change: 200 and no body, which etcd's client
    /// takes as "ask again".
    Empty,
}

impl Reply {
    fn into_response(self, discovery: &Discovery, token: &str) -> Response {
        let index = discovery.index(token);
        let mut response = match self {
            Reply::Answer(status, answer) => (status, axum::Json(*answer)).into_response(),
            Reply::Empty => StatusCode::OK.into_response(),
        };
        set_index(&mut response, index);
        response
    }
}

fn refuse(discovery: &Discovery, token: &str, err: &DiscoveryError) -> Response {
    let mut body = v2::error_body(err);
    if body.index == 0 {
        body.index = discovery.index(token);
    }
    let index = body.index;
    let mut response = (v2::status(err), axum::Json(body)).into_response();
    set_index(&mut response, index);
    if matches!(err, DiscoveryError::Busy(_)) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

fn set_index(response: &mut Response, index: u64) {
    response
        .headers_mut()
        .insert(INDEX_HEADER, HeaderValue::from(index));
}

/// GET: the node, or with `wait=true` the first change from `waitIndex`.
async fn read(
    ctx: &Arc<ServerContext>,
    token: &str,
    key: &Key,
    params: &[(String, String)],
) -> Result<Reply, DiscoveryError> {
    let discovery = &ctx.engine.discovery;
    let recursive = flag(params, "recursive")?;
    if !flag(params, "wait")? {
        let sorted = flag(params, "sorted")?;
        let (node, _) = discovery.get(token, key, recursive, sorted)?;
        return Ok(Reply::Answer(StatusCode::OK, Box::new(Answer::get(node))));
    }
    let wait_index = number(params, "waitIndex")?;
    match discovery.watch(token, key, recursive, wait_index)? {
        Watch::Ready(change) => Ok(Reply::Answer(StatusCode::OK, Box::new(change.answer()))),
        Watch::Pending(waiting) => hold(discovery, waiting).await,
    }
}

/// Holds a wait until its change comes, its token goes, or the hold is over. Only this
/// request's task waits: a held request costs a receiver and a place among the bounded waits.
/// When the client goes away the connection drops this future, and the place with it.
async fn hold(discovery: &Discovery, mut waiting: Waiting) -> Result<Reply, DiscoveryError> {
    let deadline = tokio::time::Instant::now() + discovery.limits().hold;
    loop {
        if tokio::time::timeout_at(deadline, waiting.changed())
            .await
            .is_err()
        {
            return Ok(Reply::Empty);
        }
        if let Some(change) = discovery.check(&mut waiting)? {
            return Ok(Reply::Answer(StatusCode::OK, Box::new(change.answer())));
        }
    }
}

/// PUT `<id>?prevExist=false` with `value=<name>=<peer URL>`: registers a member.
async fn create(
    ctx: &Arc<ServerContext>,
    token: &str,
    key: &Key,
    params: &[(String, String)],
    body: Body,
) -> Result<Reply, DiscoveryError> {
    let id = match key {
        Key::Member(id) => id.clone(),
        Key::Config | Key::Size => {
            return Err(DiscoveryError::ReadOnly {
                key: key.path(token),
                index: 0,
            })
        }
        Key::Dir => {
            return Err(DiscoveryError::Invalid {
                what: "key",
                value: key.path(token),
                why: "a member registers under its id: PUT /discovery/<token>/<member id>".into(),
            })
        }
        Key::Other(other) if other.contains('/') => {
            return Err(DiscoveryError::Invalid {
                what: "key",
                value: key.path(token),
                why: "members register directly under the token, one level deep".into(),
            })
        }
        Key::Other(other) => {
            // Not an id, or `Key::parse` would have said so: the check says what is wrong.
            checked_id(other)?;
            other.clone()
        }
    };
    match form::field(params, "prevExist") {
        Some("false") => {}
        other => {
            return Err(DiscoveryError::Invalid {
                what: "prevExist",
                value: other.unwrap_or_default().to_owned(),
                why: "this directory only takes new registrations: send prevExist=false, as \
                      etcd's discovery does"
                    .into(),
            })
        }
    }
    let body = read_body(body).await?;
    let fields = form::parse(&body);
    let value = form::field(&fields, "value")
        .or_else(|| form::field(params, "value"))
        .ok_or_else(|| DiscoveryError::Invalid {
            what: "request",
            value: String::new(),
            why: "it has no value: send the form value=<name>=<peer URL>".into(),
        })?
        .to_owned();
    let engine = Arc::clone(&ctx.engine);
    let token = token.to_owned();
    // Registering waits for the store to commit, so it runs off the async workers.
    let change = blocking(move || engine.discovery.register(&token, &id, &value)).await?;
    Ok(Reply::Answer(
        StatusCode::CREATED,
        Box::new(change.answer()),
    ))
}

/// DELETE `<id>`: removes a member's registration (the documented way to clear a stale one).
async fn remove(ctx: &Arc<ServerContext>, token: &str, key: &Key) -> Result<Reply, DiscoveryError> {
    let Key::Member(id) = key else {
        return Err(DiscoveryError::ReadOnly {
            key: key.path(token),
            index: 0,
        });
    };
    let engine = Arc::clone(&ctx.engine);
    let (token, id) = (token.to_owned(), id.clone());
    let change = blocking(move || engine.discovery.unregister(&token, &id)).await?;
    Ok(Reply::Answer(StatusCode::OK, Box::new(change.answer())))
}

async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, DiscoveryError> + Send + 'static,
) -> Result<T, DiscoveryError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|join| DiscoveryError::Store(format!("the handler failed: {join}")))?
}

async fn read_body(body: Body) -> Result<Bytes, DiscoveryError> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => Err(DiscoveryError::Invalid {
            what: "request body",
            value: String::new(),
            why: format!("{err} (at most {MAX_BODY_BYTES} bytes are read)"),
        }),
    }
}

/// A v2 boolean parameter: `true` or `false`, absent is false.
fn flag(params: &[(String, String)], name: &'static str) -> Result<bool, DiscoveryError> {
    match form::field(params, name) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(DiscoveryError::Invalid {
            what: name,
            value: other.to_owned(),
            why: "use true or false".into(),
        }),
    }
}

/// A v2 index parameter.
fn number(params: &[(String, String)], name: &'static str) -> Result<Option<u64>, DiscoveryError> {
    form::field(params, name)
        .map(|text| {
            text.parse().map_err(|_| DiscoveryError::Invalid {
                what: name,
                value: text.to_owned(),
                why: "use a whole number: an index from X-Etcd-Index or a node's".into(),
            })
        })
        .transpose()
}
