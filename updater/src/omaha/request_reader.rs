//! The server's reader of requests: builds the [`Request`] in the same pass that checks the
//! document (see `safety`), instead of a second pass through serde. Requests are what every
//! machine of a fleet sends every few minutes, so this is the update server's hot path.
//!
//! It reads what the serde derive of [`Request`] reads, and a test holds the two to the same
//! answers: the known elements at their places (`request`, `request/os`, `request/app`,
//! `app/ping`, `app/updatecheck`, `app/event`), their known attributes; anything else, and
//! everything inside an element it does not know, is skipped. A repeated `os`, `ping` or
//! `updatecheck`, a missing required attribute, or a number that is not one is an error.

use std::borrow::Cow;

use super::safety::Sink;
use super::{App, Event, EventResult, EventType, Ping, Request, UpdateCheck};

/// What an open element is to the reader.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Request,
    Os,
    App,
    Ping,
    UpdateCheck,
    Event,
    /// Not an element the reader knows here: it and everything in it are skipped.
    Skipped,
}

/// An `<event>` being read: its two required numbers may come in any order.
#[derive(Default)]
struct PartialEvent {
    eventtype: Option<u32>,
    eventresult: Option<u32>,
    errorcode: Option<i64>,
    previousversion: Option<String>,
}

/// Builds a [`Request`] from the walk's elements.
pub(super) struct RequestSink {
    open: Vec<Place>,
    protocol: Option<String>,
    request: Request,
    seen_os: bool,
    /// Of the app being read: whether it has its `appid`, a `<ping>`, an `<updatecheck>`.
    has_appid: bool,
    seen_ping: bool,
    seen_check: bool,
    event: PartialEvent,
}

impl RequestSink {
    pub(super) fn new() -> Self {
        Self {
            open: Vec::with_capacity(8),
            protocol: None,
            request: Request {
                protocol: String::new(),
                version: None,
                updaterversion: None,
                installsource: None,
                ismachine: None,
                os: Default::default(),
                apps: Vec::new(),
            },
            seen_os: false,
            has_appid: false,
            seen_ping: false,
            seen_check: false,
            event: PartialEvent::default(),
        }
    }

    /// The request read, once the walk has ended without an error.
    pub(super) fn finish(self) -> Result<Request, String> {
        let protocol = self.protocol.ok_or("missing field `@protocol`")?;
        Ok(Request {
            protocol,
            ..self.request
        })
    }

    fn app(&mut self) -> &mut App {
        self.request
            .apps
            .last_mut()
            .expect("an <app> is open while its children are read")
    }
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    // As serde reads numbers: XML whitespace around them is not part of them.
    value
        .trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
        .parse()
        .map_err(|e| format!("`@{key}` is {value:?}: {e}"))
}

fn duplicate(name: &str) -> Result<(), String> {
    Err(format!("duplicate field `{name}`"))
}

impl Sink for RequestSink {
    fn open(&mut self, name: &str) {
        let place = match (self.open.last(), name) {
            (None, "request") => Place::Request,
            (Some(Place::Request), "os") => Place::Os,
            (Some(Place::Request), "app") => {
                self.request.apps.push(App::default());
                (self.has_appid, self.seen_ping, self.seen_check) = (false, false, false);
                Place::App
            }
            (Some(Place::App), "ping") => Place::Ping,
            (Some(Place::App), "updatecheck") => Place::UpdateCheck,
            (Some(Place::App), "event") => {
                self.event = PartialEvent::default();
                Place::Event
            }
            _ => Place::Skipped,
        };
        self.open.push(place);
    }

    fn attribute(&mut self, key: &str, value: Cow<'_, str>) -> Result<(), String> {
        let Some(&place) = self.open.last() else {
            return Ok(());
        };
        let slot = match place {
            Place::Request => {
                let r = &mut self.request;
                match key {
                    "protocol" => {
                        self.protocol = Some(value.into_owned());
                        return Ok(());
                    }
                    "version" => &mut r.version,
                    "updaterversion" => &mut r.updaterversion,
                    "installsource" => &mut r.installsource,
                    "ismachine" => &mut r.ismachine,
                    _ => return Ok(()),
                }
            }
            Place::Os => {
                let os = &mut self.request.os;
                match key {
                    "platform" => &mut os.platform,
                    "version" => &mut os.version,
                    "sp" => &mut os.sp,
                    "arch" => &mut os.arch,
                    _ => return Ok(()),
                }
            }
            Place::App => {
                if key == "appid" {
                    self.has_appid = true;
                    self.app().appid = value.into_owned();
                    return Ok(());
                }
                let app = self.app();
                match key {
                    "version" => &mut app.version,
                    "track" => &mut app.track,
                    "bootid" => &mut app.bootid,
                    "machineid" => &mut app.machineid,
                    "oem" => &mut app.oem,
                    "oemversion" => &mut app.oemversion,
                    "alephversion" => &mut app.alephversion,
                    "lang" => &mut app.lang,
                    "board" => &mut app.board,
                    "hardware_class" => &mut app.hardware_class,
                    "delta_okay" => &mut app.delta_okay,
                    _ => return Ok(()),
                }
            }
            Place::Ping => {
                let ping = self.app().ping.get_or_insert_with(Ping::default);
                match key {
                    "active" => &mut ping.active,
                    "a" => &mut ping.a,
                    "r" => &mut ping.r,
                    _ => return Ok(()),
                }
            }
            Place::UpdateCheck => {
                let check = self
                    .app()
                    .updatecheck
                    .get_or_insert_with(UpdateCheck::default);
                match key {
                    "targetversionprefix" => &mut check.targetversionprefix,
                    _ => return Ok(()),
                }
            }
            Place::Event => {
                let e = &mut self.event;
                match key {
                    "eventtype" => e.eventtype = Some(number(key, &value)?),
                    "eventresult" => e.eventresult = Some(number(key, &value)?),
                    "errorcode" => e.errorcode = Some(number(key, &value)?),
                    "previousversion" => e.previousversion = Some(value.into_owned()),
                    _ => {}
                }
                return Ok(());
            }
            Place::Skipped => return Ok(()),
        };
        *slot = Some(value.into_owned());
        Ok(())
    }

    fn close(&mut self) -> Result<(), String> {
        match self.open.pop() {
            Some(Place::Os) if std::mem::replace(&mut self.seen_os, true) => {
                return duplicate("os");
            }
            Some(Place::App) if !self.has_appid => return Err("missing field `@appid`".into()),
            Some(Place::Ping) => {
                if std::mem::replace(&mut self.seen_ping, true) {
                    return duplicate("ping");
                }
                // An empty <ping/> is a ping too.
                self.app().ping.get_or_insert_with(Ping::default);
            }
            Some(Place::UpdateCheck) => {
                if std::mem::replace(&mut self.seen_check, true) {
                    return duplicate("updatecheck");
                }
                self.app()
                    .updatecheck
                    .get_or_insert_with(UpdateCheck::default);
            }
            Some(Place::Event) => {
                let e = std::mem::take(&mut self.event);
                let (Some(eventtype), Some(eventresult)) = (e.eventtype, e.eventresult) else {
                    let missing = if e.eventtype.is_none() {
                        "eventtype"
                    } else {
                        "eventresult"
                    };
                    return Err(format!("missing field `@{missing}`"));
                };
                self.app().events.push(Event {
                    eventtype: EventType::from(eventtype),
                    eventresult: EventResult::from(eventresult),
                    errorcode: e.errorcode,
                    previousversion: e.previousversion,
                });
            }
            _ => {}
        }
        Ok(())
    }
}
