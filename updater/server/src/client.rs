//! A blocking client of the admin API, shared by the `kiln-server` CLI and `cargo xtask publish`.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::model::Policy;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{method} {url}: the server answered {status}: {message}")]
    Refused {
        method: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{method} {url}: {source}; check that the server runs and the URL is right")]
    Transport {
        method: &'static str,
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{method} {url}: the answer is not JSON: {source}")]
    Answer {
        method: &'static str,
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] kiln_updater::tls::TlsError),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The admin API of one server.
pub struct AdminClient {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl AdminClient {
    /// `server` is the server's base URL (`http://127.0.0.1:8470/`); an `https://` server is
    /// checked against the built-in Mozilla roots.
    pub fn new(server: &str, token: &str) -> Self {
        Self::with_agent(server, token, ureq::AgentBuilder::new())
    }

    /// The same, checking an `https://` server against the CAs in `ca_file` instead (a pinned
    /// CA) when one is given.
    pub fn with_ca_file(
        server: &str,
        token: &str,
        ca_file: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let builder = ureq::AgentBuilder::new();
        let builder = match ca_file {
            Some(path) => builder.tls_config(kiln_updater::tls::client_config(Some(path))?),
            None => builder,
        };
        Ok(Self::with_agent(server, token, builder))
    }

    fn with_agent(server: &str, token: &str, builder: ureq::AgentBuilder) -> Self {
        let base = format!("{}/admin/v1", server.trim_end_matches('/'));
        let agent = builder
            .timeout_connect(Duration::from_secs(10))
            // Publishing streams hundreds of MiB; the read timeout covers the server's check.
            .timeout_read(Duration::from_secs(600))
            .build();
        Self {
            base,
            token: token.to_owned(),
            agent,
        }
    }

    /// Uploads a payload; the server checks its signature and app id, then points `channel` at it.
    pub fn publish(
        &self,
        app: &str,
        channel: Option<&str>,
        payload: &Path,
        download_url: Option<&str>,
        replace: bool,
    ) -> Result<Value, ClientError> {
        let io = |source| ClientError::Io {
            path: payload.display().to_string(),
            source,
        };
        let file = File::open(payload).map_err(io)?;
        let length = file.metadata().map_err(io)?.len();
        // A refused token is learned before the upload: the server reads only a little of a
        // refused request's body before it closes the connection.
        self.apps()?;
        let url = format!("{}/apps/{app}/publish", self.base);
        let mut request = self
            .request("POST", &url)
            .set("Content-Type", "application/octet-stream")
            .set("Content-Length", &length.to_string());
        if let Some(channel) = channel {
            request = request.query("channel", channel);
        }
        if let Some(download_url) = download_url {
            request = request.query("url", download_url);
        }
        if replace {
            request = request.query("replace", "true");
        }
        finish("POST", &url, request.send(file))
    }

    pub fn create_app(&self, id: &str, name: &str) -> Result<Value, ClientError> {
        self.json(
            "POST",
            "/apps",
            serde_json::json!({ "id": id, "name": name }),
        )
    }

    pub fn apps(&self) -> Result<Value, ClientError> {
        self.get("/apps")
    }

    pub fn app(&self, app: &str) -> Result<Value, ClientError> {
        self.get(&format!("/apps/{app}"))
    }

    pub fn set_version(
        &self,
        app: &str,
        channel: &str,
        version: &str,
    ) -> Result<Value, ClientError> {
        let path = format!("/apps/{app}/channels/{channel}/version");
        self.json("PUT", &path, serde_json::json!({ "version": version }))
    }

    pub fn promote(&self, app: &str, from: &str, to: &str) -> Result<Value, ClientError> {
        let path = format!("/apps/{app}/channels/{to}/promote");
        self.json("POST", &path, serde_json::json!({ "from": from }))
    }

    pub fn pause(&self, app: &str, channel: &str) -> Result<Value, ClientError> {
        self.json(
            "POST",
            &format!("/apps/{app}/channels/{channel}/pause"),
            Value::Null,
        )
    }

    pub fn resume(&self, app: &str, channel: &str) -> Result<Value, ClientError> {
        self.json(
            "POST",
            &format!("/apps/{app}/channels/{channel}/resume"),
            Value::Null,
        )
    }

    pub fn set_policy(
        &self,
        app: &str,
        channel: &str,
        policy: &Policy,
    ) -> Result<Value, ClientError> {
        let path = format!("/apps/{app}/channels/{channel}/policy");
        let body = serde_json::to_value(policy).unwrap_or(Value::Null);
        self.json("PUT", &path, body)
    }

    pub fn instances(
        &self,
        app: &str,
        channel: Option<&str>,
        status: Option<&str>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}/apps/{app}/instances", self.base);
        let mut all = Vec::new();
        // Page by page (the server answers at most `http::MAX_INSTANCES_PAGE` at a time), each
        // after the last machine id of the one before.
        loop {
            let mut request = self.request("GET", &url);
            if let Some(channel) = channel {
                request = request.query("channel", channel);
            }
            if let Some(status) = status {
                request = request.query("status", status);
            }
            let after = all
                .last()
                .and_then(|i: &Value| i["machine_id"].as_str().map(str::to_owned));
            if let Some(after) = &after {
                request = request.query("after", after);
            }
            let page = finish("GET", &url, request.call())?;
            let page = page.as_array().cloned().unwrap_or_default();
            let full = page.len() >= crate::http::MAX_INSTANCES_PAGE;
            all.extend(page);
            if !full {
                return Ok(Value::Array(all));
            }
        }
    }

    pub fn instance(&self, app: &str, machine: &str) -> Result<Value, ClientError> {
        self.get(&format!("/apps/{app}/instances/{machine}"))
    }

    pub fn expire(&self, max_age_secs: u64) -> Result<Value, ClientError> {
        self.json(
            "POST",
            "/expire",
            serde_json::json!({ "max_age_secs": max_age_secs }),
        )
    }

    /// Creates an etcd discovery token for a cluster of `size`; the answer has its `url`.
    pub fn discovery_new(&self, size: u32) -> Result<Value, ClientError> {
        self.json("POST", "/discovery", serde_json::json!({ "size": size }))
    }

    /// Every discovery token with its registrations.
    pub fn discovery_list(&self) -> Result<Value, ClientError> {
        self.get("/discovery")
    }

    /// Deletes a discovery token, or only member `id`'s registration under it.
    pub fn discovery_delete(&self, token: &str, id: Option<&str>) -> Result<Value, ClientError> {
        let path = match id {
            Some(id) => format!("/discovery/{token}/{id}"),
            None => format!("/discovery/{token}"),
        };
        self.json("DELETE", &path, Value::Null)
    }

    fn get(&self, path: &str) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        finish("GET", &url, self.request("GET", &url).call())
    }

    fn json(&self, method: &'static str, path: &str, body: Value) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let request = self.request(method, &url);
        let result = if body.is_null() {
            request.call()
        } else {
            request.send_json(body)
        };
        finish(method, &url, result)
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        self.agent
            .request(method, url)
            .set("Authorization", &format!("Bearer {}", self.token))
    }
}

fn finish(
    method: &'static str,
    url: &str,
    result: Result<ureq::Response, ureq::Error>,
) -> Result<Value, ClientError> {
    match result {
        Ok(response) => response.into_json().map_err(|source| ClientError::Answer {
            method,
            url: url.to_owned(),
            source,
        }),
        Err(ureq::Error::Status(status, response)) => {
            let text = response.into_string().unwrap_or_default();
            // The server's errors are `{"error": "…"}`; anything else is shown as it came.
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(text);
            Err(ClientError::Refused {
                method,
                url: url.to_owned(),
                status,
                message,
            })
        }
        Err(source) => Err(ClientError::Transport {
            method,
            url: url.to_owned(),
            source: Box::new(source),
        }),
    }
}
