//! fleet's HTTP API, version 1 (`/fleet/v1/...`), as fleetctl and fleet's other clients speak it,
//! on the machine's socket (`/var/run/fleet.sock`) or a TCP address. Every answer comes from the
//! registry in etcd, so any machine's API shows the whole cluster.

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::job::Requirements;
use crate::name::UnitName;
use crate::registry::{JobRecord, Registry, RegistryError, UnitCache};
use crate::schedule::TargetState;
use crate::unit::{UnitFile, UnitHash, UnitOption};

/// The largest request body taken (a unit file, in JSON).
const MAX_BODY: u64 = 1 << 20;

/// A unit as the API shows it (fleet's schema, plus `reason`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiUnit {
    pub name: String,
    #[serde(default)]
    pub options: Vec<UnitOption>,
    #[serde(rename = "desiredState", default)]
    pub desired_state: String,
    #[serde(rename = "currentState", default)]
    pub current_state: String,
    #[serde(
        rename = "machineID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub machine_id: String,
    /// Kiln: why the unit is not scheduled, when it is not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// One unit's state on one machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiState {
    pub name: String,
    pub hash: String,
    #[serde(rename = "machineID")]
    pub machine_id: String,
    #[serde(rename = "systemdLoadState")]
    pub load_state: String,
    #[serde(rename = "systemdActiveState")]
    pub active_state: String,
    #[serde(rename = "systemdSubState")]
    pub sub_state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiMachine {
    pub id: String,
    #[serde(rename = "primaryIP")]
    pub primary_ip: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// An answer: status and JSON body (none for 204).
pub struct Answer {
    pub status: u16,
    pub body: Option<serde_json::Value>,
}

fn error(status: u16, message: impl Into<String>) -> Answer {
    Answer {
        status,
        body: Some(json!({ "error": { "code": status, "message": message.into() } })),
    }
}

fn ok(body: serde_json::Value) -> Answer {
    Answer {
        status: 200,
        body: Some(body),
    }
}

impl From<RegistryError> for Answer {
    fn from(e: RegistryError) -> Answer {
        match e {
            RegistryError::Exists(_) => error(409, e.to_string()),
            RegistryError::NotFound(_) => error(404, e.to_string()),
            RegistryError::Etcd(e) => error(503, format!("the registry is unavailable: {e}")),
        }
    }
}

/// Checks a unit before it is stored: its name, its file, its [X-Fleet] section. fleet only
/// warned about an unknown or malformed `[X-Fleet]` option and scheduled the unit as if it were
/// not there (a misspelt `Conflicts=` put two copies on one machine); here it is refused.
pub fn validate(name: &str, unit: &UnitFile) -> Result<(), String> {
    let parsed = UnitName::parse(name).map_err(|e| e.to_string())?;
    unit.check()
        .map_err(|e| format!("{name}: the unit's file does not read back: {e}"))?;
    let (_, warnings) =
        Requirements::from_unit(&parsed, unit).map_err(|e| format!("{name}: {e}"))?;
    if !warnings.is_empty() {
        return Err(format!(
            "{name}: {}; correct the unit's [X-Fleet] section",
            warnings.join("; ")
        ));
    }
    Ok(())
}

/// Answers one request.
pub fn handle(registry: &Registry, method: &str, url: &str, body: &[u8]) -> Answer {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let query: BTreeMap<&str, &str> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let result = match (method, path.trim_end_matches('/')) {
        ("GET", "/fleet/v1/units") => {
            list_units(registry).map(|units| ok(json!({ "units": units })))
        }
        ("GET", "/fleet/v1/machines") => machines(registry).map(|m| ok(json!({ "machines": m }))),
        ("GET", "/fleet/v1/state") => states(
            registry,
            query.get("machineID").copied(),
            query.get("unitName").copied(),
        )
        .map(|s| ok(json!({ "states": s }))),
        ("GET", "/fleet/v1/discovery") => Ok(ok(
            json!({ "kind": "discovery#restDescription", "name": "fleet", "version": "v1" }),
        )),
        (method, path) => match path.strip_prefix("/fleet/v1/units/") {
            Some(name) if !name.is_empty() && !name.contains('/') => {
                let name = percent_decode(name);
                match method {
                    "GET" => get_unit(registry, &name),
                    "PUT" => put_unit(registry, &name, body),
                    "DELETE" => match registry.destroy(&name) {
                        Ok(true) => Ok(Answer {
                            status: 204,
                            body: None,
                        }),
                        Ok(false) => Ok(error(404, format!("unit {name} does not exist"))),
                        Err(e) => Err(e),
                    },
                    _ => Ok(error(405, format!("{method} is not allowed on a unit"))),
                }
            }
            _ => Ok(error(404, format!("no such API path: {path}"))),
        },
    };
    result.unwrap_or_else(Answer::from)
}

fn unit_of(name: &str, record: &JobRecord, units: &UnitCache) -> Option<ApiUnit> {
    let hash: UnitHash = record.object.as_ref()?.unit_hash.parse().ok()?;
    let options = units
        .get(&hash)
        .cloned()
        .flatten()
        .map(|u| u.options)
        .unwrap_or_default();
    Some(ApiUnit {
        name: name.to_owned(),
        options,
        desired_state: record
            .target_state
            .clone()
            .unwrap_or_else(|| "inactive".into()),
        current_state: String::new(),
        machine_id: record.target.clone().unwrap_or_default(),
        reason: record.reason.clone().unwrap_or_default(),
    })
}

/// fleet's derived state: what the unit's machine reports having done with it.
fn current_state(
    unit: &ApiUnit,
    states: &BTreeMap<(String, String), crate::registry::UnitState>,
) -> String {
    if unit.machine_id.is_empty() {
        return "inactive".into();
    }
    match states.get(&(unit.name.clone(), unit.machine_id.clone())) {
        Some(s) if !s.job_state.is_empty() => s.job_state.clone(),
        _ => "inactive".into(),
    }
}

fn list_units(registry: &Registry) -> Result<Vec<ApiUnit>, RegistryError> {
    let states = registry.states(None)?;
    let jobs = registry.jobs()?;
    let units = registry.units_of(jobs.values())?;
    Ok(jobs
        .iter()
        .filter_map(|(name, record)| {
            let mut unit = unit_of(name, record, &units)?;
            unit.current_state = current_state(&unit, &states);
            Some(unit)
        })
        .collect())
}

fn get_unit(registry: &Registry, name: &str) -> Result<Answer, RegistryError> {
    let record = registry.job(name)?;
    let units = registry.units_of(std::iter::once(&record))?;
    match unit_of(name, &record, &units) {
        Some(mut unit) => {
            unit.current_state = current_state(&unit, &registry.states(Some(name))?);
            Ok(ok(serde_json::to_value(unit).unwrap_or_default()))
        }
        None => Ok(error(404, format!("unit {name} does not exist"))),
    }
}

#[derive(Deserialize)]
struct PutBody {
    #[serde(rename = "desiredState", default)]
    desired_state: String,
    #[serde(default)]
    options: Vec<UnitOption>,
}

fn put_unit(registry: &Registry, name: &str, body: &[u8]) -> Result<Answer, RegistryError> {
    let put: PutBody = match serde_json::from_slice(body) {
        Ok(put) => put,
        Err(e) => {
            return Ok(error(
                400,
                format!("the body is not a unit as fleet's API takes it ({e})"),
            ))
        }
    };
    let state: TargetState = match put.desired_state.parse() {
        Ok(state) => state,
        Err(_) => {
            return Ok(error(
                400,
                format!(
                    "desiredState {:?} is not one of inactive, loaded, launched",
                    put.desired_state
                ),
            ))
        }
    };
    let exists = registry.job(name)?.object.is_some();
    let mut created = false;
    if !put.options.is_empty() {
        let unit = UnitFile::from_options(put.options);
        if let Err(problem) = validate(name, &unit) {
            return Ok(error(400, problem));
        }
        created = registry.create(name, &unit)?;
    } else if !exists {
        return Ok(error(
            409,
            format!(
                "unit {name} does not exist and the request has no options: submit the unit's file"
            ),
        ));
    }
    if state != TargetState::Inactive {
        if let Ok(parsed) = UnitName::parse(name) {
            if parsed.is_template() {
                return Ok(error(
                    400,
                    format!(
                        "{name} is a template: start an instance of it, e.g. {}",
                        name.replacen("@.", "@1.", 1)
                    ),
                ));
            }
        }
    }
    registry.set_target_state(name, state)?;
    Ok(Answer {
        status: if created { 201 } else { 204 },
        body: None,
    })
}

fn machines(registry: &Registry) -> Result<Vec<ApiMachine>, RegistryError> {
    let mut machines: Vec<ApiMachine> = registry
        .machines()?
        .into_iter()
        .map(|m| ApiMachine {
            id: m.id,
            primary_ip: m.public_ip,
            metadata: m.metadata,
        })
        .collect();
    machines.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(machines)
}

fn states(
    registry: &Registry,
    machine: Option<&str>,
    unit: Option<&str>,
) -> Result<Vec<ApiState>, RegistryError> {
    Ok(registry
        .states(unit)?
        .into_iter()
        .filter(|((n, m), _)| machine.is_none_or(|x| x == m) && unit.is_none_or(|x| x == n))
        .map(|((name, machine_id), s)| ApiState {
            name,
            hash: s.unit_hash,
            machine_id,
            load_state: s.load_state,
            active_state: s.active_state,
            sub_state: s.sub_state,
        })
        .collect())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves the API on `server` until it is closed, one request at a time.
pub fn serve(registry: &Registry, server: &tiny_http::Server) {
    for mut request in server.incoming_requests() {
        let mut body = Vec::new();
        if let Err(e) = request.as_reader().take(MAX_BODY).read_to_end(&mut body) {
            eprintln!("fleet api: reading a request: {e}");
            continue;
        }
        let answer = handle(registry, request.method().as_str(), request.url(), &body);
        let text = answer.body.map(|b| b.to_string()).unwrap_or_default();
        let mut response = tiny_http::Response::from_string(text).with_status_code(answer.status);
        if let Ok(header) = tiny_http::Header::from_bytes("Content-Type", "application/json") {
            response.add_header(header);
        }
        if let Err(e) = request.respond(response) {
            eprintln!("fleet api: answering: {e}");
        }
    }
}
