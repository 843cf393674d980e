//! fleetctl's side of the API: one HTTP/1.1 request at a time, to the machine's socket
//! (`unix:///var/run/fleet.sock`) or to an `http://` endpoint.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{ApiMachine, ApiState, ApiUnit};

/// Why a request failed; the message names the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("error reaching fleet at {endpoint}: {reason} (is kiln-fleet.service running there? see `journalctl -u kiln-fleet`)")]
    Unreachable { endpoint: String, reason: String },
    #[error("fleet at {endpoint} answered {status}: {message}")]
    Status {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("fleet at {endpoint} answered something that is not fleet's API: {problem}")]
    Answer { endpoint: String, problem: String },
}

pub struct ApiClient {
    endpoint: String,
    timeout: Duration,
    http: ureq::Agent,
}

impl ApiClient {
    pub fn new(endpoint: &str, timeout: Duration) -> ApiClient {
        ApiClient {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            timeout,
            http: ureq::AgentBuilder::new().timeout(timeout).build(),
        }
    }

    /// One exchange: the status and the body.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason,
        };
        let text = body.map(Value::to_string).unwrap_or_default();
        if let Some(socket) = self.endpoint.strip_prefix("unix://") {
            let mut stream = UnixStream::connect(socket).map_err(|e| unreachable(e.to_string()))?;
            stream
                .set_read_timeout(Some(self.timeout))
                .map_err(|e| unreachable(e.to_string()))?;
            stream
                .set_write_timeout(Some(self.timeout))
                .map_err(|e| unreachable(e.to_string()))?;
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            );
            stream
                .write_all(request.as_bytes())
                .map_err(|e| unreachable(e.to_string()))?;
            let mut answer = Vec::new();
            stream
                .read_to_end(&mut answer)
                .map_err(|e| unreachable(e.to_string()))?;
            return parse_response(&answer).ok_or_else(|| ClientError::Answer {
                endpoint: self.endpoint.clone(),
                problem: "not an HTTP response".into(),
            });
        }
        let url = format!("{}{path}", self.endpoint);
        let request = self
            .http
            .request(method, &url)
            .set("Content-Type", "application/json");
        let result = if body.is_some() {
            request.send_string(&text)
        } else {
            request.call()
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => return Err(unreachable(t.to_string())),
        };
        let status = response.status();
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(64 << 20)
            .read_to_end(&mut bytes)
            .map_err(|e| unreachable(e.to_string()))?;
        Ok((status, bytes))
    }

    fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<T>, ClientError> {
        let (status, bytes) = self.exchange(method, path, body)?;
        if status == 404 {
            return Ok(None);
        }
        self.check(status, &bytes)?;
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Answer {
                endpoint: self.endpoint.clone(),
                problem: e.to_string(),
            })
    }

    fn check(&self, status: u16, bytes: &[u8]) -> Result<(), ClientError> {
        if (200..300).contains(&status) {
            return Ok(());
        }
        let message = serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned());
        Err(ClientError::Status {
            endpoint: self.endpoint.clone(),
            status,
            message,
        })
    }

    pub fn units(&self) -> Result<Vec<ApiUnit>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            units: Vec<ApiUnit>,
        }
        Ok(self
            .json::<Page>("GET", "/fleet/v1/units", None)?
            .map(|p| p.units)
            .unwrap_or_default())
    }

    pub fn unit(&self, name: &str) -> Result<Option<ApiUnit>, ClientError> {
        self.json("GET", &format!("/fleet/v1/units/{}", encode(name)), None)
    }

    pub fn machines(&self) -> Result<Vec<ApiMachine>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            machines: Vec<ApiMachine>,
        }
        Ok(self
            .json::<Page>("GET", "/fleet/v1/machines", None)?
            .map(|p| p.machines)
            .unwrap_or_default())
    }

    pub fn states(&self) -> Result<Vec<ApiState>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            states: Vec<ApiState>,
        }
        Ok(self
            .json::<Page>("GET", "/fleet/v1/state", None)?
            .map(|p| p.states)
            .unwrap_or_default())
    }

    /// Creates or changes a unit (`options` empty: only its desired state).
    pub fn put(
        &self,
        name: &str,
        desired: &str,
        options: &[crate::unit::UnitOption],
    ) -> Result<(), ClientError> {
        let mut body = serde_json::json!({ "desiredState": desired });
        if !options.is_empty() {
            body["options"] = serde_json::to_value(options).unwrap_or_default();
        }
        let (status, bytes) = self.exchange(
            "PUT",
            &format!("/fleet/v1/units/{}", encode(name)),
            Some(&body),
        )?;
        self.check(status, &bytes)
    }

    /// Destroys a unit; `false` when there was none.
    pub fn destroy(&self, name: &str) -> Result<bool, ClientError> {
        let (status, bytes) =
            self.exchange("DELETE", &format!("/fleet/v1/units/{}", encode(name)), None)?;
        if status == 404 {
            return Ok(false);
        }
        self.check(status, &bytes).map(|()| true)
    }
}

fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Status and body of a whole HTTP/1.1 response (read until the connection closed).
fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = raw[end + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Some((status, body))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&data[..line_end])
                .ok()?
                .split(';')
                .next()?
                .trim(),
            16,
        )
        .ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain), Some((200, b"{}".to_vec())));
        let chunked = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((201, b"abcde".to_vec())));
        assert_eq!(encode("a@1.service"), "a%401.service");
    }

    #[test]
    fn an_unreachable_api_is_named() {
        let dir = std::env::temp_dir().join(format!("kiln-fleetctl-{}", std::process::id()));
        let endpoint = format!("unix://{}/fleet.sock", dir.display());
        let e = ApiClient::new(&endpoint, Duration::from_secs(1))
            .units()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&endpoint) && e.contains("kiln-fleet.service"),
            "{e}"
        );
        let e = ApiClient::new("http://127.0.0.1:9", Duration::from_secs(1))
            .machines()
            .unwrap_err()
            .to_string();
        assert!(e.contains("http://127.0.0.1:9"), "{e}");
    }
}
