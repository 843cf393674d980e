//! Dashboard sessions: logging in with the admin token opens a session named by a random id,
//! held only in this server's memory and carried by an HttpOnly, SameSite=Strict cookie, so the
//! token itself never travels again and never appears in a URL. Each session has its own random
//! CSRF token that every state-changing form must echo.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{header, HeaderMap};

use crate::clock::Timestamp;

/// The cookie carrying the session id.
pub const SESSION_COOKIE: &str = "kiln_dashboard";

/// How long a session lasts after login.
const SESSION_SECS: u64 = 12 * 3600;

/// The most sessions kept; the oldest is closed beyond it, so memory stays bounded.
const MAX_SESSIONS: usize = 256;

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("reading random bytes from /dev/urandom for a session id: {0}; check that /dev/urandom is readable by the server")]
    Random(#[source] std::io::Error),
}

/// One logged-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The cookie's value: 32 random bytes in hex.
    pub id: String,
    /// The value every state-changing form carries: 32 other random bytes in hex.
    pub csrf: String,
    pub opened_at: Timestamp,
}

impl Session {
    /// Whether a form's `csrf` field is this session's token.
    pub fn csrf_matches(&self, given: Option<&str>) -> bool {
        given.is_some_and(|given| constant_time_eq(given, &self.csrf))
    }
}

/// The open sessions of one server.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Opens a new session. Its ids are random, not derived from the clock: a session id is a
    /// secret and must not be guessable.
    pub fn open(&self, now: Timestamp) -> Result<Session, SessionError> {
        let session = Session {
            id: random_hex()?,
            csrf: random_hex()?,
            opened_at: now,
        };
        let mut open = self.lock();
        open.retain(|_, s| !expired(s, now));
        while open.len() >= MAX_SESSIONS {
            let oldest = open
                .values()
                .min_by_key(|s| (s.opened_at, s.id.clone()))
                .map(|s| s.id.clone());
            match oldest {
                Some(id) => open.remove(&id),
                None => break,
            };
        }
        open.insert(session.id.clone(), session.clone());
        Ok(session)
    }

    /// The open, unexpired session named `id`.
    pub fn get(&self, id: &str, now: Timestamp) -> Option<Session> {
        let open = self.lock();
        // The map lookup is by a 256-bit random id: timing does not help guess one.
        open.get(id).filter(|s| !expired(s, now)).cloned()
    }

    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves the map consistent (every change is one call).
        self.open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

fn expired(session: &Session, now: Timestamp) -> bool {
    session.opened_at.saturating_add(SESSION_SECS) <= now
}

fn random_hex() -> Result<String, SessionError> {
    crate::random::secret(32).map_err(SessionError::Random)
}

/// Whether the login form's token is the server's; an empty server token opens nothing.
pub fn token_matches(given: &str, token: &str) -> bool {
    !token.is_empty() && constant_time_eq(given, token)
}

/// Compares without stopping at the first difference, so timing does not reveal the secret.
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `Set-Cookie` value opening a session. No `Secure` flag: the server is often reached over
/// plain HTTP on a management network, where a Secure cookie would never be sent back.
pub fn cookie(id: &str) -> String {
    format!(
        "{SESSION_COOKIE}={id}; Path={}; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}",
        super::BASE
    )
}

/// The `Set-Cookie` value that makes the browser forget the session.
pub fn expired_cookie() -> String {
    format!(
        "{SESSION_COOKIE}=; Path={}; HttpOnly; SameSite=Strict; Max-Age=0",
        super::BASE
    )
}

/// The session id in the request's `Cookie` headers, if any.
pub fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_expire_and_close() {
        let sessions = Sessions::default();
        let s = sessions.open(100).unwrap();
        assert_eq!(s.id.len(), 64);
        assert_ne!(s.id, s.csrf);
        assert_eq!(sessions.get(&s.id, 100 + SESSION_SECS - 1), Some(s.clone()));
        assert_eq!(sessions.get(&s.id, 100 + SESSION_SECS), None);
        assert_eq!(sessions.get("not-a-session", 100), None);
        sessions.close(&s.id);
        assert_eq!(sessions.get(&s.id, 100), None);
    }

    #[test]
    fn sessions_stay_bounded() {
        let sessions = Sessions::default();
        let first = sessions.open(1).unwrap();
        for _ in 0..MAX_SESSIONS {
            sessions.open(2).unwrap();
        }
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
        assert_eq!(sessions.get(&first.id, 2), None, "the oldest went first");
    }

    #[test]
    fn csrf_and_token_checks() {
        let sessions = Sessions::default();
        let s = sessions.open(0).unwrap();
        assert!(s.csrf_matches(Some(&s.csrf)));
        assert!(!s.csrf_matches(Some("")));
        assert!(!s.csrf_matches(None));
        assert!(token_matches("secret", "secret"));
        assert!(!token_matches("secreT", "secret"));
        assert!(!token_matches("", ""), "an empty token opens nothing");
    }

    #[test]
    fn finds_the_session_cookie_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; kiln_dashboard=abc ; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_value(&headers), Some("abc"));
        assert!(cookie("abc").contains("HttpOnly; SameSite=Strict"));
    }
}
