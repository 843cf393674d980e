//! The operator's web dashboard under `/dashboard/`: server-rendered HTML pages showing each
//! app's channels and rollout state, the fleet per version and status, a chart of versions over
//! time, recent errors and the machines, with forms to promote a version and pause or resume a
//! channel; and the etcd discovery tokens with their registrations, with forms to delete them.
//! It shows fleet data and changes rollouts, so every page but the login form needs a session
//! opened with the admin token; every form that changes state also carries the session's CSRF
//! token.

mod auth;
mod chart;
mod discovery;
mod render;
mod text;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::context::{Refusal, ServerContext};
use crate::engine::error::EngineError;
use crate::engine::Engine;
use crate::form;

pub use auth::{Session, Sessions, SESSION_COOKIE};
pub use chart::{Chart, Series};
pub use text::escape;

/// Where the dashboard lives; the session cookie is limited to this path.
pub const BASE: &str = "/dashboard";

/// The largest form the dashboard accepts; its forms hold a few short fields.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// The most recent errors an app page lists.
const ERRORS_SHOWN: u32 = 50;

/// What the dashboard's handlers share: the server's context and the open sessions.
pub struct Dashboard {
    ctx: Arc<ServerContext>,
    sessions: Sessions,
}

type Dash = State<Arc<Dashboard>>;

/// The dashboard's routes, to merge into the server's router.
pub fn router(ctx: Arc<ServerContext>) -> Router {
    let dashboard = Arc::new(Dashboard {
        ctx,
        sessions: Sessions::default(),
    });
    Router::new()
        .route(BASE, get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard/", get(overview))
        .route("/dashboard/style.css", get(style))
        .route("/dashboard/login", post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/apps/{app}", get(app_page))
        .route("/dashboard/apps/{app}/promote", post(promote))
        .route(
            "/dashboard/apps/{app}/channels/{channel}/{action}",
            post(channel_action),
        )
        .route(discovery::PAGE, get(discovery_page))
        .route("/dashboard/discovery/{token}/delete", post(delete_token))
        .route(
            "/dashboard/discovery/{token}/members/{id}/delete",
            post(delete_registration),
        )
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(dashboard)
}

/// `GET /dashboard/style.css`: the one stylesheet, embedded so nothing is fetched from elsewhere.
async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("dashboard/style.css"),
    )
        .into_response()
}

/// `GET /dashboard/`: every app with its channels.
async fn overview(State(dash): Dash, headers: HeaderMap) -> Response {
    let Some(session) = dash.session(&headers) else {
        return login_page(StatusCode::UNAUTHORIZED, None);
    };
    let apps = dash.ctx.engine.apps();
    let now = dash.ctx.engine.now();
    html(StatusCode::OK, render::overview(&apps, now, &session))
}

/// `GET /dashboard/apps/<app>`: one app in full.
async fn app_page(State(dash): Dash, Path(app): Path<String>, headers: HeaderMap) -> Response {
    let Some(session) = dash.session(&headers) else {
        return login_page(StatusCode::UNAUTHORIZED, None);
    };
    let engine = Arc::clone(&dash.ctx.engine);
    // Reading events waits on the store, so it runs off the async workers.
    let page = tokio::task::spawn_blocking(move || gather(&engine, &app)).await;
    match page {
        Ok(Ok(data)) => html(StatusCode::OK, render::app_page(&data, &session)),
        Ok(Err(err)) => error_page(&err, &session),
        Err(join) => html(
            StatusCode::INTERNAL_SERVER_ERROR,
            render::message_page(
                "Dashboard error",
                &format!("rendering the page failed: {join}"),
                Some(&session),
            ),
        ),
    }
}

/// Everything an app page shows, read from the engine at one moment.
pub struct AppData {
    pub view: crate::engine::view::AppView,
    pub instances: Vec<crate::model::Instance>,
    pub errors: Vec<crate::model::InstanceEvent>,
    pub chart: Chart,
    pub now: crate::clock::Timestamp,
}

/// Reads one app's page data; blocking (it reads the store).
pub fn gather(engine: &Engine, app: &str) -> Result<AppData, EngineError> {
    let view = engine.app(app)?;
    let instances = engine.instances(app, None, None)?;
    let errors = engine.recent_errors(app, ERRORS_SHOWN)?;
    let now = engine.now();
    let chart = chart::from_history(engine, &view.record.id, &instances, now)?;
    Ok(AppData {
        view,
        instances,
        errors,
        chart,
        now,
    })
}

/// `POST /dashboard/login` with `token=…`: opens a session and sets its cookie.
async fn login(State(dash): Dash, body: Bytes) -> Response {
    let fields = form::parse(&body);
    let given = form::field(&fields, "token").unwrap_or_default();
    if !auth::token_matches(given, &dash.ctx.token) {
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("That is not the server's admin token."),
        );
    }
    let session = match dash.sessions.open(dash.ctx.engine.now()) {
        Ok(session) => session,
        Err(err) => {
            return html(
                StatusCode::INTERNAL_SERVER_ERROR,
                render::message_page("Login failed", &err.to_string(), None),
            )
        }
    };
    let mut response = Redirect::to("/dashboard/").into_response();
    set_cookie(&mut response, &auth::cookie(&session.id));
    response
}

/// `POST /dashboard/logout`: closes the session.
async fn logout(State(dash): Dash, headers: HeaderMap, body: Bytes) -> Response {
    let fields = form::parse(&body);
    if let Some(session) = dash.session(&headers) {
        if !session.csrf_matches(form::field(&fields, "csrf")) {
            return csrf_refused(&session);
        }
        dash.sessions.close(&session.id);
    }
    let mut response = Redirect::to("/dashboard/").into_response();
    set_cookie(&mut response, &auth::expired_cookie());
    response
}

/// `POST /dashboard/apps/<app>/promote` with `from`, `to` and `csrf`.
async fn promote(
    State(dash): Dash,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fields = form::parse(&body);
    let from = form::field(&fields, "from").unwrap_or_default().to_owned();
    let to = form::field(&fields, "to")
        .unwrap_or_default()
        .trim()
        .to_owned();
    dash.act(&headers, &fields, render::app_href(&app), move |engine| {
        engine.promote(&app, &from, &to).map(|_| ())
    })
    .await
}

/// `POST /dashboard/apps/<app>/channels/<channel>/{pause,resume}` with `csrf`.
async fn channel_action(
    State(dash): Dash,
    Path((app, channel, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => {
            return html(
                StatusCode::NOT_FOUND,
                render::message_page(
                    "Not found",
                    &format!("no channel action {action:?}; use pause or resume"),
                    None,
                ),
            )
        }
    };
    let fields = form::parse(&body);
    dash.act(&headers, &fields, render::app_href(&app), move |engine| {
        engine.set_paused(&app, &channel, paused).map(|_| ())
    })
    .await
}

/// `GET /dashboard/discovery`: every etcd discovery token with its registrations.
async fn discovery_page(State(dash): Dash, headers: HeaderMap) -> Response {
    let Some(session) = dash.session(&headers) else {
        return login_page(StatusCode::UNAUTHORIZED, None);
    };
    let tokens = dash.ctx.engine.discovery.tokens();
    let now = dash.ctx.engine.now();
    html(StatusCode::OK, discovery::page(&tokens, now, &session))
}

/// `POST /dashboard/discovery/<token>/delete` with `csrf`.
async fn delete_token(
    State(dash): Dash,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fields = form::parse(&body);
    dash.act(&headers, &fields, discovery::PAGE.into(), move |engine| {
        engine.discovery.delete_token(&token).map(|_| ())
    })
    .await
}

/// `POST /dashboard/discovery/<token>/members/<id>/delete` with `csrf`.
async fn delete_registration(
    State(dash): Dash,
    Path((token, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fields = form::parse(&body);
    dash.act(&headers, &fields, discovery::PAGE.into(), move |engine| {
        engine.discovery.unregister(&token, &id).map(|_| ())
    })
    .await
}

impl Dashboard {
    /// The session the request's cookie names, if it is open.
    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let id = auth::cookie_value(headers)?;
        self.sessions.get(id, self.ctx.engine.now())
    }

    /// Runs a state-changing action for a logged-in operator whose form carries the CSRF token,
    /// then sends the browser back to the page `back` (POST, redirect, GET).
    async fn act<E: Refusal + Send + 'static>(
        &self,
        headers: &HeaderMap,
        fields: &[(String, String)],
        back: String,
        action: impl FnOnce(&Engine) -> Result<(), E> + Send + 'static,
    ) -> Response {
        let Some(session) = self.session(headers) else {
            return login_page(StatusCode::UNAUTHORIZED, None);
        };
        if !session.csrf_matches(form::field(fields, "csrf")) {
            return csrf_refused(&session);
        }
        let engine = Arc::clone(&self.ctx.engine);
        // Engine actions wait for the store to commit, so they run off the async workers.
        let outcome = tokio::task::spawn_blocking(move || action(&engine)).await;
        match outcome {
            Ok(Ok(())) => Redirect::to(&back).into_response(),
            Ok(Err(err)) => error_page(&err, &session),
            Err(join) => html(
                StatusCode::INTERNAL_SERVER_ERROR,
                render::message_page(
                    "Action failed",
                    &format!("the action failed: {join}"),
                    Some(&session),
                ),
            ),
        }
    }
}

fn csrf_refused(session: &Session) -> Response {
    html(
        StatusCode::FORBIDDEN,
        render::message_page(
            "Form refused",
            "The form did not carry this session's CSRF token. Reload the page and submit it again.",
            Some(session),
        ),
    )
}

fn error_page(err: &dyn Refusal, session: &Session) -> Response {
    html(
        err.status(),
        render::message_page("Refused", &err.to_string(), Some(session)),
    )
}

fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    html(status, render::login_page(message))
}

/// An HTML answer with the headers that keep the page from being framed, cached or made to run
/// anything: the dashboard needs no script at all, so the policy allows none.
fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn set_cookie(response: &mut Response, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}
