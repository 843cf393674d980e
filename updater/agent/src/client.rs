//! The Omaha v3 client: builds the update check and event requests update_engine would send for
//! this machine, posts them, and reads the answer with `kiln_updater::omaha`.

use std::io::Read;

use kiln_updater::omaha::{
    App, Event, OfferedUpdate, OmahaError, Os, Ping, Request, Response, UpdateCheck,
    MAX_DOCUMENT_BYTES,
};

use crate::http::HttpError;
use crate::identity::Identity;

/// What the agent calls itself in `version` / `updaterversion`.
pub const UPDATER: &str = concat!("kiln-update-agent-", env!("CARGO_PKG_VERSION"));

/// Why an update check or event report failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The server's answer is not a usable Omaha response.
    #[error("Omaha server {url}: {source}")]
    Omaha {
        url: String,
        #[source]
        source: OmahaError,
    },
    /// The response has no `<app>` for our app id.
    #[error("Omaha server {url} answered without an <app> for {appid}; check the server's app id")]
    NoApp { url: String, appid: String },
}

impl ClientError {
    /// Whether a later retry may succeed: network trouble and 5xx, not a refusal.
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Http(e) if e.is_transient())
    }

    /// Whether the server could not be reached at all (no network yet, say).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Http(e) if e.is_unreachable())
    }
}

/// Talks to one Omaha endpoint on behalf of one machine.
pub struct OmahaClient {
    http: ureq::Agent,
    url: String,
    identity: Identity,
}

impl OmahaClient {
    pub fn new(http: ureq::Agent, url: &str, identity: Identity) -> OmahaClient {
        OmahaClient {
            http,
            url: url.to_owned(),
            identity,
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The update check request (with a ping), as update_engine sends it from the scheduler.
    pub fn check_request(&self, on_demand: bool) -> Request {
        let mut app = self.app();
        app.ping = Some(Ping {
            active: Some("1".to_owned()),
            ..Ping::default()
        });
        app.updatecheck = Some(UpdateCheck::default());
        let mut request = Request::new(UPDATER, self.os(), vec![app]);
        if on_demand {
            request.installsource = Some("ondemandupdate".to_owned());
        }
        request
    }

    /// An event-only request, as update_engine reports progress.
    pub fn event_request(&self, event: Event) -> Request {
        let mut app = self.app();
        app.events.push(event);
        Request::new(UPDATER, self.os(), vec![app])
    }

    /// Asks the server whether there is an update: `None` for `noupdate`.
    pub fn check(&self, on_demand: bool) -> Result<Option<OfferedUpdate>, ClientError> {
        let response = self.post(&self.check_request(on_demand))?;
        let app = response
            .app(&self.identity.app_id)
            .ok_or_else(|| ClientError::NoApp {
                url: self.url.clone(),
                appid: self.identity.app_id.clone(),
            })?;
        app.update().map_err(|source| ClientError::Omaha {
            url: self.url.clone(),
            source,
        })
    }

    /// Reports one event; the answer only acknowledges it.
    pub fn report(&self, event: Event) -> Result<(), ClientError> {
        self.post(&self.event_request(event)).map(|_| ())
    }

    fn post(&self, request: &Request) -> Result<Response, ClientError> {
        let answer = self
            .http
            .post(&self.url)
            .set("Content-Type", "text/xml; charset=utf-8")
            .send_string(&request.to_xml())
            .map_err(|e| HttpError::from_ureq("POST", &self.url, e))?;
        // Read one byte more than the parser accepts, so an oversized answer is refused by it
        // rather than silently cut.
        let limit = u64::try_from(MAX_DOCUMENT_BYTES).unwrap_or(u64::MAX) + 1;
        let mut text = String::new();
        answer
            .into_reader()
            .take(limit)
            .read_to_string(&mut text)
            .map_err(|e| HttpError::from_io("POST", &self.url, &e))?;
        Response::parse(&text).map_err(|source| ClientError::Omaha {
            url: self.url.clone(),
            source,
        })
    }

    fn app(&self) -> App {
        let id = &self.identity;
        App {
            appid: id.app_id.clone(),
            version: Some(id.version.clone()),
            track: Some(id.channel.clone()),
            bootid: Some(id.boot_id.clone()),
            machineid: Some(id.machine_id.clone()),
            lang: Some("en-US".to_owned()),
            board: Some(format!("{}-usr", board_arch())),
            hardware_class: Some(String::new()),
            delta_okay: Some("false".to_owned()),
            ..App::default()
        }
    }

    fn os(&self) -> Os {
        Os {
            platform: Some("Kiln".to_owned()),
            version: Some(self.identity.version.clone()),
            sp: Some(format!(
                "{}_{}",
                self.identity.version,
                std::env::consts::ARCH
            )),
            arch: Some(std::env::consts::ARCH.to_owned()),
        }
    }
}

/// Flatcar's board names: `amd64-usr`, `arm64-usr`.
fn board_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
