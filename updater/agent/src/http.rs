//! The one HTTP client the agent uses (ureq, blocking; `https://` through rustls, see
//! `kiln_updater::tls`), and how its failures are sorted: worth retrying later (network,
//! timeouts, 5xx) or not (4xx, an answer we cannot use).

use std::time::Duration;

use kiln_contract::update_conf::Settings;
use kiln_updater::tls::TlsError;

/// The agent's HTTP client as `update.conf` sets it: `http_timeout`, and `https://` servers
/// checked against `ca_file` (or the built-in Mozilla roots).
pub fn agent_for(config: &Settings) -> Result<ureq::Agent, TlsError> {
    let tls = kiln_updater::tls::client_config(config.ca_file.as_deref())?;
    Ok(builder(config.http_timeout).tls_config(tls).build())
}

/// An HTTP agent whose every exchange is bounded by `timeout` (connect, and each read or
/// write); `https://` checked against the built-in Mozilla roots.
pub fn agent(timeout: Duration) -> ureq::Agent {
    builder(timeout).build()
}

fn builder(timeout: Duration) -> ureq::AgentBuilder {
    ureq::AgentBuilder::new()
        .timeout_connect(timeout)
        .timeout_read(timeout)
        .timeout_write(timeout)
        .user_agent(concat!("kiln-update-agent/", env!("CARGO_PKG_VERSION")))
}

/// Why an HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The server answered with a status that is not a success.
    #[error("{method} {url}: the server answered HTTP {status}{}", if *.status >= 500 { " (will retry)" } else { "" })]
    Status {
        method: &'static str,
        url: String,
        status: u16,
    },
    /// No answer: connection refused, reset, timed out, or the body broke off.
    #[error("{method} {url}: {reason} (will retry; check the network and that the server runs)")]
    Transport {
        method: &'static str,
        url: String,
        reason: String,
        /// No connection was made at all (no route, refused, the name not resolved): what a
        /// machine sees before its network is up.
        unreachable: bool,
    },
}

impl HttpError {
    /// Whether trying again later may succeed (5xx, timeouts, network trouble).
    pub fn is_transient(&self) -> bool {
        match self {
            HttpError::Status { status, .. } => *status >= 500 || *status == 429,
            HttpError::Transport { .. } => true,
        }
    }

    /// Whether no connection could be made at all (see `Transport::unreachable`).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            HttpError::Transport {
                unreachable: true,
                ..
            }
        )
    }

    pub fn from_ureq(method: &'static str, url: &str, e: ureq::Error) -> HttpError {
        match e {
            ureq::Error::Status(status, _) => HttpError::Status {
                method,
                url: url.to_owned(),
                status,
            },
            ureq::Error::Transport(t) => HttpError::Transport {
                method,
                url: url.to_owned(),
                unreachable: matches!(
                    t.kind(),
                    ureq::ErrorKind::Dns | ureq::ErrorKind::ConnectionFailed
                ),
                reason: t.to_string(),
            },
        }
    }

    pub fn from_io(method: &'static str, url: &str, e: &std::io::Error) -> HttpError {
        HttpError::Transport {
            method,
            url: url.to_owned(),
            reason: format!("reading the answer: {e}"),
            unreachable: false,
        }
    }
}
