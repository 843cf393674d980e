//! Watches: `/v3/watch` answers with one JSON document per line, for as long as the connection
//! lasts. Kiln uses them only to wake a loop early; correctness comes from the loop's periodic
//! full read, so a watch that breaks is simply opened again.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::Sender;
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::{int, range_body, Client, EtcdError, Kv};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    pub kv: Kv,
}

/// An open watch on a key or a prefix.
pub struct Watch {
    lines: BufReader<Box<dyn Read + Send + Sync>>,
    url: String,
    /// The revision after the last event seen: where to start again after a break.
    pub next_revision: i64,
}

/// How long a watch waits for a line before it is opened again (etcd sends none while nothing
/// changes; a connection to a machine that vanished would otherwise hang for ever).
const QUIET: Duration = Duration::from_secs(60);

impl Client {
    /// Watches `key` (`prefix`: every key starting with it) from `start_revision` (0: from now).
    pub fn watch(&self, key: &str, prefix: bool, start_revision: i64) -> Result<Watch, EtcdError> {
        let mut create = range_body(key, prefix);
        if start_revision > 0 {
            create["start_revision"] = json!(start_revision.to_string());
        }
        let body = json!({ "create_request": create });
        let http = ureq::AgentBuilder::new()
            .timeout_connect(self.timeout())
            .timeout_read(QUIET)
            .build();
        let mut reasons = Vec::new();
        for endpoint in self.endpoints() {
            let url = format!("{endpoint}/v3/watch");
            match http.post(&url).send_string(&body.to_string()) {
                Ok(answer) => {
                    let mut watch = Watch {
                        lines: BufReader::new(answer.into_reader()),
                        url,
                        next_revision: start_revision,
                    };
                    // The first line confirms the watch (`created`); events follow.
                    watch.next_events()?;
                    return Ok(watch);
                }
                Err(e) => reasons.push(format!("{endpoint}: {e}")),
            }
        }
        Err(EtcdError::Unreachable {
            tried: self.endpoints().join(", "),
            reasons: reasons.join("; "),
        })
    }

    /// A thread that sends `()` on `wake` whenever a key under one of `prefixes` changes, opening
    /// its watches again (after `retry`) whenever they break. It ends when `wake`'s receiver is gone.
    pub fn spawn_waker(&self, prefixes: Vec<String>, wake: Sender<()>, retry: Duration) {
        for prefix in prefixes {
            let client = self.clone();
            let wake = wake.clone();
            std::thread::spawn(move || {
                let mut from = 0;
                loop {
                    if let Ok(mut watch) = client.watch(&prefix, true, from) {
                        while let Ok(events) = watch.next_events() {
                            if !events.is_empty() && wake.send(()).is_err() {
                                return;
                            }
                        }
                        from = watch.next_revision;
                    }
                    // A broken watch may have missed changes: wake the loop to read everything.
                    if wake.send(()).is_err() {
                        return;
                    }
                    std::thread::sleep(retry);
                }
            });
        }
    }
}

impl Watch {
    /// The events of the next answer line (empty for a progress or confirmation line). An error
    /// when the stream ended, stayed quiet too long, or etcd cancelled the watch (for instance
    /// because the revision asked for was compacted).
    pub fn next_events(&mut self) -> Result<Vec<Event>, EtcdError> {
        let mut line = String::new();
        let broken = |problem: String| EtcdError::Unreachable {
            tried: self.url.clone(),
            reasons: problem,
        };
        match self.lines.read_line(&mut line) {
            Ok(0) => return Err(broken("the watch stream ended".into())),
            Ok(_) => {}
            Err(e) => return Err(broken(format!("reading the watch stream: {e}"))),
        }
        let answer: Value = serde_json::from_str(&line).map_err(|e| EtcdError::Answer {
            url: self.url.clone(),
            problem: e.to_string(),
        })?;
        let result = answer.get("result").unwrap_or(&answer);
        if let Some(error) = answer.get("error") {
            return Err(broken(format!("etcd ended the watch: {error}")));
        }
        if result.get("canceled").and_then(Value::as_bool) == Some(true) {
            let compacted = int(result, "compact_revision");
            // Start again from what is left; the caller's full read covers the gap.
            self.next_revision = compacted;
            return Err(broken(format!(
                "etcd cancelled the watch (compacted to revision {compacted})"
            )));
        }
        let events: Vec<Event> = result
            .get("events")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some(Event {
                    // PUT is the zero value of the enum, which the gateway leaves out.
                    kind: match e.get("type").and_then(Value::as_str) {
                        Some("DELETE") => EventKind::Delete,
                        _ => EventKind::Put,
                    },
                    kv: Kv::from_json(e.get("kv")?)?,
                })
            })
            .collect();
        if let Some(last) = events.iter().map(|e| e.kv.mod_revision).max() {
            self.next_revision = last + 1;
        } else if let Some(header) = result.get("header") {
            self.next_revision = self.next_revision.max(int(header, "revision") + 1);
        }
        Ok(events)
    }
}
