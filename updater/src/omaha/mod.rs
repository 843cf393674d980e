//! The Omaha v3 protocol as Flatcar's update_engine and Nebraska speak it: request and response
//! types, a guarded parser, a writer, and the client- and server-side readings of a response.
//!
//! Shared by the on-device update agent and the host-side update server, so it stays free of HTTP
//! and async. Attributes are `@name` fields (the quick-xml serde convention); elements and
//! attributes this module does not know are ignored on input, as a compatible peer must.

mod client;
mod error;
mod request_reader;
mod safety;
mod server;
#[cfg(test)]
mod tests;
mod writer;

use serde::{Deserialize, Serialize};

pub use client::OfferedUpdate;
pub use error::OmahaError;
pub use safety::{MAX_DEPTH, MAX_DOCUMENT_BYTES};
pub use server::SERVER_NAME;

/// The protocol version Kiln writes; documents claiming any 3.x version are read.
pub const PROTOCOL_VERSION: &str = "3.0";

/// The XML declaration written at the top of every document, as update_engine writes it.
pub const XML_DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// An update agent's request: who it is, and per app an update check, a ping and/or events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    #[serde(rename = "@protocol")]
    pub protocol: String,
    #[serde(rename = "@version", default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(
        rename = "@updaterversion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub updaterversion: Option<String>,
    /// `scheduler` for periodic checks, `ondemandupdate` for checks an operator asked for.
    #[serde(
        rename = "@installsource",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub installsource: Option<String>,
    #[serde(
        rename = "@ismachine",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ismachine: Option<String>,
    #[serde(default)]
    pub os: Os,
    #[serde(rename = "app", default)]
    pub apps: Vec<App>,
}

/// The `<os>` element of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Os {
    #[serde(rename = "@platform", default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(rename = "@version", default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// update_engine puts `<version>_<arch>` here.
    #[serde(rename = "@sp", default, skip_serializing_if = "Option::is_none")]
    pub sp: Option<String>,
    #[serde(rename = "@arch", default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

/// One `<app>` of a request. Attributes are kept as text: a server must not refuse a machine
/// because it spells a flag differently (`delta_okay="false"` vs `"0"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    /// With or without braces; compare through [`normalize_id`].
    #[serde(rename = "@appid")]
    pub appid: String,
    #[serde(rename = "@version", default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The channel (`stable`, `beta`, `alpha`, ...).
    #[serde(rename = "@track", default, skip_serializing_if = "Option::is_none")]
    pub track: Option<String>,
    #[serde(rename = "@bootid", default, skip_serializing_if = "Option::is_none")]
    pub bootid: Option<String>,
    #[serde(
        rename = "@machineid",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machineid: Option<String>,
    #[serde(rename = "@oem", default, skip_serializing_if = "Option::is_none")]
    pub oem: Option<String>,
    #[serde(
        rename = "@oemversion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub oemversion: Option<String>,
    #[serde(
        rename = "@alephversion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub alephversion: Option<String>,
    #[serde(rename = "@lang", default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    #[serde(rename = "@board", default, skip_serializing_if = "Option::is_none")]
    pub board: Option<String>,
    #[serde(
        rename = "@hardware_class",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub hardware_class: Option<String>,
    #[serde(
        rename = "@delta_okay",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub delta_okay: Option<String>,
    // Field order is element order on output: ping, updatecheck, events, as update_engine writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping: Option<Ping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updatecheck: Option<UpdateCheck>,
    #[serde(rename = "event", default)]
    pub events: Vec<Event>,
}

/// `<updatecheck>` in a request: "is there something newer for me?".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateCheck {
    #[serde(
        rename = "@targetversionprefix",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub targetversionprefix: Option<String>,
}

/// `<ping>` in a request. update_engine sends `active="1"`; older clients add `a` and `r`
/// (days since the last active and roll-call ping, `-1` for never).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    #[serde(rename = "@active", default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    #[serde(rename = "@a", default, skip_serializing_if = "Option::is_none")]
    pub a: Option<String>,
    #[serde(rename = "@r", default, skip_serializing_if = "Option::is_none")]
    pub r: Option<String>,
}

/// `<event>` in a request: progress or outcome of an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "@eventtype")]
    pub eventtype: EventType,
    #[serde(rename = "@eventresult")]
    pub eventresult: EventResult,
    /// update_engine's action exit code, sent when the result is not a success. It prints the
    /// code with `%d`, so flag bits (1 << 31) can make it negative.
    #[serde(
        rename = "@errorcode",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub errorcode: Option<i64>,
    /// Sent with 3/2 on the first check after rebooting into a new version.
    #[serde(
        rename = "@previousversion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub previousversion: Option<String>,
}

impl Event {
    /// An event with no error code and no previous version.
    pub fn new(eventtype: EventType, eventresult: EventResult) -> Self {
        Self {
            eventtype,
            eventresult,
            errorcode: None,
            previousversion: None,
        }
    }

    /// 13/1: the payload download started.
    pub fn download_started() -> Self {
        Self::new(EventType::UpdateDownloadStarted, EventResult::Success)
    }

    /// 14/1: the payload download finished.
    pub fn download_finished() -> Self {
        Self::new(EventType::UpdateDownloadFinished, EventResult::Success)
    }

    /// 3/1: the update is installed and waits for a reboot.
    pub fn installed() -> Self {
        Self::new(EventType::UpdateComplete, EventResult::Success)
    }

    /// 3/2: the machine runs the new version after a reboot; `previous` is the version it left.
    pub fn updated_after_reboot(previous: &str) -> Self {
        Self {
            previousversion: Some(previous.to_owned()),
            ..Self::new(EventType::UpdateComplete, EventResult::SuccessReboot)
        }
    }

    /// 3/0: the update failed with this error code.
    pub fn error(errorcode: i64) -> Self {
        Self {
            errorcode: Some(errorcode),
            ..Self::new(EventType::UpdateComplete, EventResult::Error)
        }
    }

    /// 3/9: the update was deferred (for instance, outside the reboot window).
    pub fn deferred() -> Self {
        Self::new(EventType::UpdateComplete, EventResult::UpdateDeferred)
    }
}

/// `eventtype` numbers, as update_engine's `OmahaEvent` defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "u32", into = "u32")]
pub enum EventType {
    /// 1
    DownloadComplete,
    /// 2
    InstallComplete,
    /// 3: with result 1 "installed", 2 "running the new version after a reboot", 0 error.
    UpdateComplete,
    /// 13
    UpdateDownloadStarted,
    /// 14
    UpdateDownloadFinished,
    /// Any number this module does not name, kept so a server can log it.
    Other(u32),
}

impl From<u32> for EventType {
    fn from(n: u32) -> Self {
        match n {
            1 => Self::DownloadComplete,
            2 => Self::InstallComplete,
            3 => Self::UpdateComplete,
            13 => Self::UpdateDownloadStarted,
            14 => Self::UpdateDownloadFinished,
            other => Self::Other(other),
        }
    }
}

impl From<EventType> for u32 {
    fn from(t: EventType) -> u32 {
        match t {
            EventType::DownloadComplete => 1,
            EventType::InstallComplete => 2,
            EventType::UpdateComplete => 3,
            EventType::UpdateDownloadStarted => 13,
            EventType::UpdateDownloadFinished => 14,
            EventType::Other(n) => n,
        }
    }
}

/// `eventresult` numbers, as update_engine's `OmahaEvent` defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "u32", into = "u32")]
pub enum EventResult {
    /// 0, with an `errorcode`.
    Error,
    /// 1
    Success,
    /// 2: the machine rebooted into the new version (sent with `previousversion`).
    SuccessReboot,
    /// 9: the update was deferred.
    UpdateDeferred,
    /// Any number this module does not name.
    Other(u32),
}

impl From<u32> for EventResult {
    fn from(n: u32) -> Self {
        match n {
            0 => Self::Error,
            1 => Self::Success,
            2 => Self::SuccessReboot,
            9 => Self::UpdateDeferred,
            other => Self::Other(other),
        }
    }
}

impl From<EventResult> for u32 {
    fn from(r: EventResult) -> u32 {
        match r {
            EventResult::Error => 0,
            EventResult::Success => 1,
            EventResult::SuccessReboot => 2,
            EventResult::UpdateDeferred => 9,
            EventResult::Other(n) => n,
        }
    }
}

/// A server's response: one `<app>` per app of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    #[serde(rename = "@protocol")]
    pub protocol: String,
    #[serde(rename = "@server", default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daystart: Option<DayStart>,
    #[serde(rename = "app", default)]
    pub apps: Vec<ResponseApp>,
}

/// `<daystart>`: the server's clock, for clients that count ping days. update_engine ignores it,
/// so a value that is not a number is read as absent rather than refusing the response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayStart {
    #[serde(
        rename = "@elapsed_seconds",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::number"
    )]
    pub elapsed_seconds: Option<u64>,
    #[serde(
        rename = "@elapsed_days",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::number"
    )]
    pub elapsed_days: Option<u64>,
}

/// One `<app>` of a response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseApp {
    #[serde(rename = "@appid")]
    pub appid: String,
    /// `ok`, or an error such as `error-unknownApplication`.
    #[serde(rename = "@status", default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping: Option<Ack>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updatecheck: Option<UpdateCheckResponse>,
    /// One acknowledgement per event of the request.
    #[serde(rename = "event", default)]
    pub events: Vec<Ack>,
}

/// `<ping status="ok"/>` or `<event status="ok"/>` in a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    #[serde(rename = "@status", default)]
    pub status: String,
}

impl Ack {
    pub fn ok() -> Self {
        Self {
            status: "ok".to_owned(),
        }
    }
}

/// `<updatecheck>` in a response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateCheckResponse {
    /// `ok`, `noupdate`, or `error-…`; empty when the server left it out.
    #[serde(rename = "@status", default)]
    pub status: String,
    /// The `<url>`s inside `<urls>`; each `codebase` is a directory the package name is appended to.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "wrap::ser_urls",
        deserialize_with = "wrap::de_urls"
    )]
    pub urls: Vec<Url>,
    /// The first `<manifest>`: update_engine reads that one and passes over the others (Nebraska
    /// sends floor versions as further manifests to clients that ask for them).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::first"
    )]
    pub manifest: Option<Manifest>,
}

/// `<url codebase="…/"/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Url {
    #[serde(rename = "@codebase", default)]
    pub codebase: String,
}

/// `<manifest>`: the version on offer, its packages and the actions that carry its parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "@version", default)]
    pub version: String,
    /// The packages inside `<packages>`; the first one is the payload.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "wrap::ser_packages",
        deserialize_with = "wrap::de_packages"
    )]
    pub packages: Vec<Package>,
    /// The actions inside `<actions>`; update_engine reads only the `postinstall` one.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "wrap::ser_actions",
        deserialize_with = "wrap::de_actions"
    )]
    pub actions: Vec<Action>,
}

/// `<package>`: one file to download, relative to each URL's codebase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    #[serde(rename = "@name", default)]
    pub name: String,
    /// SHA-1 of the file, base64. update_engine does not read it, so Kiln leaves it out when unknown.
    #[serde(rename = "@hash", default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// SHA-256 of the file, hex (a Nebraska addition).
    #[serde(
        rename = "@hash_sha256",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub hash_sha256: Option<String>,
    #[serde(rename = "@size", default)]
    pub size: u64,
    #[serde(rename = "@required", default)]
    pub required: bool,
}

/// `<action>`: Omaha's bag of name/value pairs. Attributes not named here are ignored on input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// `postinstall` is the one update_engine reads.
    #[serde(rename = "@event", default)]
    pub event: String,
    /// SHA-256 of the payload, base64; update_engine requires it on the postinstall action.
    #[serde(rename = "@sha256", default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(
        rename = "@needsadmin",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub needsadmin: Option<String>,
    #[serde(
        rename = "@IsDeltaPayload",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub is_delta_payload: Option<String>,
    #[serde(
        rename = "@DisablePayloadBackoff",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub disable_payload_backoff: Option<String>,
    #[serde(
        rename = "@MaxFailureCountPerUrl",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_failure_count_per_url: Option<String>,
    #[serde(rename = "@deadline", default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
}

/// Omaha wraps lists in a parent element (`<urls><url/>…</urls>`); these helpers let the public
/// types hold plain `Vec`s while the XML keeps the wrapper.
/// Reading what update_engine reads and passing over what it ignores.
mod lenient {
    use serde::{Deserialize, Deserializer};

    /// A number attribute nobody relies on: not a number is `None`.
    pub(super) fn number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        Ok(text.and_then(|t| t.trim().parse().ok()))
    }

    /// The first of an element that may be repeated.
    pub(super) fn first<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        Ok(Vec::<T>::deserialize(d)?.into_iter().next())
    }
}

mod wrap {
    use super::{Action, Package, Url};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    macro_rules! wrapper {
        ($ser:ident, $de:ident, $item:ty, $tag:literal) => {
            pub(super) fn $ser<S: Serializer>(items: &[$item], s: S) -> Result<S::Ok, S::Error> {
                #[derive(Serialize)]
                struct Out<'a> {
                    #[serde(rename = $tag)]
                    items: &'a [$item],
                }
                Out { items }.serialize(s)
            }

            pub(super) fn $de<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<$item>, D::Error> {
                #[derive(Deserialize)]
                struct In {
                    #[serde(rename = $tag, default)]
                    items: Vec<$item>,
                }
                Ok(In::deserialize(d)?.items)
            }
        };
    }

    wrapper!(ser_urls, de_urls, Url, "url");
    wrapper!(ser_packages, de_packages, Package, "package");
    wrapper!(ser_actions, de_actions, Action, "action");
}

impl Request {
    /// A protocol 3.0 request for these apps, marked as coming from a machine (`ismachine="1"`).
    pub fn new(updater: &str, os: Os, apps: Vec<App>) -> Self {
        Self {
            protocol: PROTOCOL_VERSION.to_owned(),
            version: Some(updater.to_owned()),
            updaterversion: Some(updater.to_owned()),
            installsource: Some("scheduler".to_owned()),
            ismachine: Some("1".to_owned()),
            os,
            apps,
        }
    }

    /// Reads a request, refusing DTDs, unknown entities, oversized and malformed documents.
    pub fn parse(xml: &str) -> Result<Request, OmahaError> {
        let mut sink = request_reader::RequestSink::new();
        safety::check_document(xml, "request", &mut sink)?;
        let request = sink.finish().map_err(|message| OmahaError::Shape {
            root: "request",
            source: quick_xml::DeError::Custom(message),
        })?;
        check_protocol("request", &request.protocol)?;
        Ok(request)
    }

    /// Writes the request with an XML declaration, two-space indented.
    pub fn to_xml(&self) -> String {
        write_document("request", self)
    }

    /// The app with this id, braces and case aside.
    pub fn app(&self, appid: &str) -> Option<&App> {
        self.apps.iter().find(|a| ids_equal(&a.appid, appid))
    }
}

impl Response {
    /// Reads a response, refusing DTDs, unknown entities, oversized and malformed documents.
    pub fn parse(xml: &str) -> Result<Response, OmahaError> {
        let response: Response = safety::parse_document(xml, "response")?;
        check_protocol("response", &response.protocol)?;
        Ok(response)
    }

    /// Writes the response with an XML declaration, two-space indented (by hand: see `writer`).
    pub fn to_xml(&self) -> String {
        writer::response(self)
    }

    /// The app with this id, braces and case aside.
    pub fn app(&self, appid: &str) -> Option<&ResponseApp> {
        self.apps.iter().find(|a| ids_equal(&a.appid, appid))
    }
}

fn check_protocol(root: &'static str, protocol: &str) -> Result<(), OmahaError> {
    if protocol == "3" || protocol.starts_with("3.") {
        Ok(())
    } else {
        Err(OmahaError::Protocol {
            root,
            protocol: protocol.to_owned(),
        })
    }
}

fn write_document<T: Serialize>(root: &str, value: &T) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str(XML_DECLARATION);
    out.push('\n');
    // Both calls fail only for a root name that is not an XML name or for types quick-xml cannot
    // write (maps, nested sequences); `root` is a constant and these types hold only strings,
    // numbers and structs, so a failure here is a bug in this module, not bad input.
    let mut ser = quick_xml::se::Serializer::with_root(&mut out, Some(root))
        .expect("the root element name is a constant XML name");
    ser.indent(' ', 2);
    value
        .serialize(ser)
        .expect("Omaha types hold only strings, numbers and structs");
    out.push('\n');
    out
}

/// An Omaha id (app id, boot id, machine id) in the form used for comparison: surrounding
/// whitespace and one pair of braces removed, ASCII lower case. update_engine sends
/// `{87efface-…}` where Flatcar sends `e96281a6-…`; both name the same app.
pub fn normalize_id(id: &str) -> String {
    let id = id.trim();
    let id = id
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or(id);
    id.trim().to_ascii_lowercase()
}

/// Whether two ids name the same thing, braces and case aside.
pub fn ids_equal(a: &str, b: &str) -> bool {
    normalize_id(a) == normalize_id(b)
}
