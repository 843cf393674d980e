//! Requests and answers: ranges, puts, deletes, transactions and leases, each POSTed to the first
//! endpoint that answers.

use std::io::Read;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// Why a request to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint could be reached (or every one answered 5xx): worth retrying.
    #[error("no etcd endpoint answered (tried {tried}): {reasons}; check that etcd runs there and that the endpoints are right")]
    Unreachable { tried: String, reasons: String },
    /// etcd refused the request itself (a 4xx with etcd's own message).
    #[error("{url}: etcd answered HTTP {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// An answer that is not what the gateway sends.
    #[error("{url}: etcd answered something that is not the expected JSON: {problem}")]
    Answer { url: String, problem: String },
}

impl EtcdError {
    /// Whether trying again later may succeed (no endpoint reachable, no leader, overloaded).
    pub fn is_transient(&self) -> bool {
        matches!(self, EtcdError::Unreachable { .. })
    }
}

/// One key as etcd stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The lease the key is attached to; 0 for none.
    pub lease: i64,
}

impl Kv {
    /// The value as text (lossy: etcd values are bytes).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }

    pub(crate) fn from_json(kv: &Value) -> Option<Kv> {
        Some(Kv {
            key: String::from_utf8(B64.decode(kv.get("key")?.as_str()?).ok()?).ok()?,
            value: match kv.get("value") {
                Some(v) => B64.decode(v.as_str()?).ok()?,
                None => Vec::new(),
            },
            create_revision: int(kv, "create_revision"),
            mod_revision: int(kv, "mod_revision"),
            lease: int(kv, "lease"),
        })
    }
}

/// The answer to a range: the keys found and the store's revision when it was read.
#[derive(Debug, Clone, Default)]
pub struct Range {
    pub kvs: Vec<Kv>,
    pub revision: i64,
}

/// A condition of a transaction, on one key.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key's create revision equals this (0: the key does not exist).
    CreateRevision(String, i64),
    /// The key's last modification revision equals this (0: the key does not exist).
    ModRevision(String, i64),
    /// The key's value equals this.
    Value(String, Vec<u8>),
}

/// An operation of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: String,
        prefix: bool,
    },
    Get {
        key: String,
        prefix: bool,
    },
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    pub fn put_leased(key: impl Into<String>, value: impl Into<Vec<u8>>, lease: i64) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease,
        }
    }

    /// Reads one key.
    pub fn get(key: impl Into<String>) -> Op {
        Op::Get {
            key: key.into(),
            prefix: false,
        }
    }

    /// Reads every key starting with `prefix`.
    pub fn get_prefix(prefix: impl Into<String>) -> Op {
        Op::Get {
            key: prefix.into(),
            prefix: true,
        }
    }

    pub fn delete(key: impl Into<String>) -> Op {
        Op::Delete {
            key: key.into(),
            prefix: false,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Op::Put { key, value, lease } => {
                let mut put = json!({ "key": B64.encode(key), "value": B64.encode(value) });
                if *lease != 0 {
                    put["lease"] = json!(lease.to_string());
                }
                json!({ "request_put": put })
            }
            Op::Delete { key, prefix } => {
                json!({ "request_delete_range": range_body(key, *prefix) })
            }
            Op::Get { key, prefix } => json!({ "request_range": range_body(key, *prefix) }),
        }
    }
}

impl Compare {
    fn to_json(&self) -> Value {
        let (key, target, field, value) = match self {
            Compare::CreateRevision(k, r) => (k, "CREATE", "create_revision", json!(r.to_string())),
            Compare::ModRevision(k, r) => (k, "MOD", "mod_revision", json!(r.to_string())),
            Compare::Value(k, v) => (k, "VALUE", "value", json!(B64.encode(v))),
        };
        let mut c = json!({ "key": B64.encode(key), "target": target, "result": "EQUAL" });
        c[field] = value;
        c
    }
}

/// The outcome of a transaction: which branch ran, and the ranges it read.
#[derive(Debug, Clone, Default)]
pub struct TxnResult {
    pub succeeded: bool,
    pub revision: i64,
    /// The keys of every `Op::Get` of the branch that ran, in order.
    pub ranges: Vec<Vec<Kv>>,
}

/// A client of one etcd cluster, given by its client URLs. Every request goes to the first
/// endpoint that answers; the others are tried when one is unreachable or has no leader.
#[derive(Clone)]
pub struct Client {
    http: ureq::Agent,
    endpoints: Vec<String>,
    timeout: Duration,
}

impl Client {
    /// A client of `endpoints` (`http://host:port`, as etcd's `--advertise-client-urls`), every
    /// exchange bounded by `timeout`.
    pub fn new(endpoints: &[String], timeout: Duration) -> Client {
        Client {
            http: ureq::AgentBuilder::new()
                .timeout_connect(timeout)
                .timeout_read(timeout)
                .timeout_write(timeout)
                .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
                .build(),
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_owned())
                .collect(),
            timeout,
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// POSTs `body` to `path` of the first endpoint that answers; its JSON answer.
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let mut reasons = Vec::new();
        for endpoint in &self.endpoints {
            let url = format!("{endpoint}{path}");
            match self.http.post(&url).send_string(&body.to_string()) {
                Ok(answer) => return read_json(&url, answer.into_reader()),
                Err(ureq::Error::Status(status, answer)) if status < 500 => {
                    let message = read_json(&url, answer.into_reader())
                        .ok()
                        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                        .unwrap_or_else(|| "(no message)".into());
                    return Err(EtcdError::Refused {
                        url,
                        status,
                        message,
                    });
                }
                Err(ureq::Error::Status(status, _)) => {
                    reasons.push(format!("{endpoint}: HTTP {status}"))
                }
                Err(ureq::Error::Transport(t)) => reasons.push(format!("{endpoint}: {t}")),
            }
        }
        Err(EtcdError::Unreachable {
            tried: self.endpoints.join(", "),
            reasons: if reasons.is_empty() {
                "no endpoint is configured".into()
            } else {
                reasons.join("; ")
            },
        })
    }

    /// The value of one key, if it exists.
    pub fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        Ok(self.range(key, false)?.kvs.into_iter().next())
    }

    /// Every key starting with `prefix`, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Result<Range, EtcdError> {
        self.range(prefix, true)
    }

    /// How many keys start with `prefix` (etcd counts; nothing is transferred).
    pub fn count_prefix(&self, prefix: &str) -> Result<i64, EtcdError> {
        let mut body = range_body(prefix, true);
        body["count_only"] = json!(true);
        Ok(int(&self.call("/v3/kv/range", &body)?, "count"))
    }

    fn range(&self, key: &str, prefix: bool) -> Result<Range, EtcdError> {
        let answer = self.call("/v3/kv/range", &range_body(key, prefix))?;
        Ok(Range {
            kvs: kvs_of(&answer),
            revision: answer.get("header").map_or(0, |h| int(h, "revision")),
        })
    }

    pub fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        let op = Op::put_leased(key, value, lease).to_json();
        self.call("/v3/kv/put", &op["request_put"]).map(|_| ())
    }

    /// Deletes one key (`prefix`: every key starting with it); how many were deleted.
    pub fn delete(&self, key: &str, prefix: bool) -> Result<i64, EtcdError> {
        let answer = self.call("/v3/kv/deleterange", &range_body(key, prefix))?;
        Ok(int(&answer, "deleted"))
    }

    /// If every comparison holds, runs `success`, else `failure`, atomically.
    pub fn txn(
        &self,
        compare: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnResult, EtcdError> {
        let ops = |ops: &[Op]| ops.iter().map(Op::to_json).collect::<Vec<_>>();
        let body = json!({
            "compare": compare.iter().map(Compare::to_json).collect::<Vec<_>>(),
            "success": ops(success),
            "failure": ops(failure),
        });
        let answer = self.call("/v3/kv/txn", &body)?;
        let ranges = answer
            .get("responses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("response_range").or_else(|| r.get("responseRange")))
            .map(kvs_of)
            .collect();
        Ok(TxnResult {
            // The gateway leaves out false booleans: no `succeeded` means the compare failed.
            succeeded: answer.get("succeeded").and_then(Value::as_bool) == Some(true),
            revision: answer.get("header").map_or(0, |h| int(h, "revision")),
            ranges,
        })
    }

    /// A new lease of `ttl`; its id.
    pub fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let answer = self.call(
            "/v3/lease/grant",
            &json!({ "TTL": ttl.as_secs().max(1).to_string() }),
        )?;
        match int(&answer, "ID") {
            0 => Err(EtcdError::Answer {
                url: "/v3/lease/grant".into(),
                problem: format!("no lease ID in {answer}"),
            }),
            id => Ok(id),
        }
    }

    /// Renews a lease once; the seconds it has left now, `None` when it has already expired.
    pub fn keep_alive(&self, lease: i64) -> Result<Option<i64>, EtcdError> {
        let answer = self.call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))?;
        let result = answer.get("result").unwrap_or(&answer);
        Ok(match int(result, "TTL") {
            ttl if ttl > 0 => Some(ttl),
            _ => None,
        })
    }

    /// Ends a lease now, deleting every key attached to it. A lease already gone is no error.
    pub fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        match self.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() })) {
            Ok(_) => Ok(()),
            Err(EtcdError::Refused { status: 404, .. }) => Ok(()),
            Err(EtcdError::Refused { message, .. }) if message.contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The seconds a lease has left; `None` when it has expired or never existed.
    pub fn time_to_live(&self, lease: i64) -> Result<Option<i64>, EtcdError> {
        let answer = self.call("/v3/lease/timetolive", &json!({ "ID": lease.to_string() }))?;
        Ok(match int(&answer, "TTL") {
            ttl if ttl > 0 => Some(ttl),
            _ => None,
        })
    }
}

pub(crate) fn range_body(key: &str, prefix: bool) -> Value {
    let mut body = Map::new();
    body.insert("key".into(), json!(B64.encode(key)));
    if prefix {
        body.insert(
            "range_end".into(),
            json!(B64.encode(crate::prefix_end(key.as_bytes()))),
        );
    }
    Value::Object(body)
}

fn kvs_of(answer: &Value) -> Vec<Kv> {
    answer
        .get("kvs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Kv::from_json)
        .collect()
}

/// An int64 field, which the gateway writes as a string and leaves out when it is 0.
pub(crate) fn int(value: &Value, name: &str) -> i64 {
    match value.get(name) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn read_json(url: &str, reader: impl Read) -> Result<Value, EtcdError> {
    let mut text = String::new();
    reader
        .take(64 << 20)
        .read_to_string(&mut text)
        .map_err(|e| EtcdError::Answer {
            url: url.to_owned(),
            problem: format!("reading it: {e}"),
        })?;
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| EtcdError::Answer {
        url: url.to_owned(),
        problem: e.to_string(),
    })
}
