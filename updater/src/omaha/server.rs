//! The server's side: building the answers update_engine and the Kiln agent accept.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::client::with_trailing_slash;
use super::{
    Ack, Action, App, Manifest, Package, Response, ResponseApp, UpdateCheckResponse, Url,
    PROTOCOL_VERSION,
};
use kiln_contract::hex;

/// The `server` attribute Kiln writes on its responses.
pub const SERVER_NAME: &str = "kiln";

impl Response {
    /// A response holding these apps. `daystart` is left out: it is the server's clock, which would
    /// make the output depend on when it was built, and update_engine does not read it.
    pub fn new(apps: Vec<ResponseApp>) -> Self {
        Self {
            protocol: PROTOCOL_VERSION.to_owned(),
            server: Some(SERVER_NAME.to_owned()),
            daystart: None,
            apps,
        }
    }

    /// A response offering one payload; see [`ResponseApp::update_ok`].
    pub fn update_ok(
        appid: &str,
        version: &str,
        codebase: &str,
        package_name: &str,
        size: u64,
        sha256: &[u8; 32],
    ) -> Self {
        let app = ResponseApp::update_ok(appid, version, codebase, package_name, size, sha256);
        Self::new(vec![app])
    }

    /// A response saying the app is up to date.
    pub fn noupdate(appid: &str) -> Self {
        Self::new(vec![ResponseApp::noupdate(appid)])
    }

    /// A response saying the server does not know this app id.
    pub fn error_unknown_application(appid: &str) -> Self {
        Self::new(vec![ResponseApp::error_unknown_application(appid)])
    }
}

impl ResponseApp {
    /// An `ok` update check in the shape update_engine requires: a non-empty codebase, a first
    /// package with a name and a size above zero, and a `postinstall` action whose `sha256` is the
    /// payload's SHA-256 in base64. The package also carries `hash_sha256` in hex, as Nebraska
    /// writes it. Its SHA-1 `hash` is left out: update_engine does not read it and Kiln does not
    /// compute it. `DisablePayloadBackoff="true"` is what Nebraska sends, so that a client retries
    /// a failed download at its next check rather than backing off for days.
    pub fn update_ok(
        appid: &str,
        version: &str,
        codebase: &str,
        package_name: &str,
        size: u64,
        sha256: &[u8; 32],
    ) -> Self {
        let package = Package {
            name: package_name.to_owned(),
            hash: None,
            hash_sha256: Some(hex::encode(sha256)),
            size,
            required: true,
        };
        let action = Action {
            event: "postinstall".to_owned(),
            sha256: Some(BASE64.encode(sha256)),
            disable_payload_backoff: Some("true".to_owned()),
            ..Action::default()
        };
        let check = UpdateCheckResponse {
            status: "ok".to_owned(),
            urls: vec![Url {
                codebase: with_trailing_slash(codebase),
            }],
            manifest: Some(Manifest {
                version: version.to_owned(),
                packages: vec![package],
                actions: vec![action],
            }),
        };
        Self::with_check(appid, check)
    }

    /// `<app status="ok"><updatecheck status="noupdate"/></app>`.
    pub fn noupdate(appid: &str) -> Self {
        let check = UpdateCheckResponse {
            status: "noupdate".to_owned(),
            ..UpdateCheckResponse::default()
        };
        Self::with_check(appid, check)
    }

    /// `<app status="error-unknownApplication"/>`, the Omaha answer for an app id the server does
    /// not serve. update_engine treats it as an invalid response and retries later.
    pub fn error_unknown_application(appid: &str) -> Self {
        Self {
            appid: appid.to_owned(),
            status: Some("error-unknownApplication".to_owned()),
            ..Self::default()
        }
    }

    /// Adds what the request's app asks to be acknowledged: `<ping status="ok"/>` if it pinged, and
    /// one `<event status="ok"/>` per event it reported.
    pub fn acknowledge(mut self, request: &App) -> Self {
        if request.ping.is_some() {
            self.ping = Some(Ack::ok());
        }
        self.events
            .extend(std::iter::repeat_with(Ack::ok).take(request.events.len()));
        self
    }

    /// An app that answers nothing but acknowledgements (a request with only a ping or events).
    pub fn ack_only(request: &App) -> Self {
        Self {
            appid: request.appid.clone(),
            status: Some("ok".to_owned()),
            ..Self::default()
        }
        .acknowledge(request)
    }

    fn with_check(appid: &str, check: UpdateCheckResponse) -> Self {
        Self {
            appid: appid.to_owned(),
            status: Some("ok".to_owned()),
            ping: None,
            updatecheck: Some(check),
            events: Vec::new(),
        }
    }
}
