//! etcd's v2 discovery protocol, served by the update server so that a cluster's machines
//! bootstrap etcd from a URL the operator got from `kiln-server discovery new`, with no public
//! discovery service. etcd's `--discovery` client treats the URL's path as a v2 keys directory:
//! it reads `_config/size`, registers itself as `<member id>` = `name=peerURL`, and waits for
//! the others; the first `size` registrations become the cluster, and a member that finds them
//! taken is told the cluster is full.
//!
//! This file is the facade: the tokens in memory (loaded with the engine's state and written
//! through its writer), each change committed before it is answered, and the waits: a wait that
//! cannot be answered yet holds a receiver of its token's change signal, within bounds (per
//! token and overall), so a client can neither exhaust the server nor block anything else.
//! `token` holds one token's rules, `key` its keys and what may be written, `v2` the protocol's
//! shapes, `endpoint` the public routes.

mod endpoint;
pub mod error;
pub mod key;
mod token;
pub mod v2;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::clock::{Clock, Timestamp};
use crate::model::{DiscoveryToken, Registration};
use crate::store::Write;
use crate::writer::{lock, Writer};

pub use endpoint::router;

use error::DiscoveryError;
use key::{checked_id, checked_value, Key, PREFIX};
use token::TokenState;
use v2::{Change, Node};

/// The largest cluster a token is made for.
pub const MAX_SIZE: u32 = 99;

/// The bounds on waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Waits held at once, over every token; one more is answered 503.
    pub max_waits: usize,
    /// How long a wait is held before it is answered with an empty body, which etcd's client
    /// takes as "ask again" (it does, from the same index). Below the minute a load balancer or
    /// proxy commonly cuts an idle request at.
    pub hold: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_waits: 1024,
            hold: Duration::from_secs(50),
        }
    }
}

/// A token as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenView {
    pub token: String,
    /// What the cluster's machines are given: `etcd2: discovery: <url>`.
    pub url: String,
    pub size: u32,
    pub index: u64,
    pub created_at: Timestamp,
    /// In the order they registered: the first `size` are the cluster.
    pub registrations: Vec<Registration>,
}

/// Every discovery token, and the waits held on them.
pub struct Discovery {
    tokens: Mutex<HashMap<String, TokenState>>,
    writer: Arc<Writer>,
    clock: Arc<dyn Clock>,
    /// The server's URL as machines reach it, ending in `/` (the engine's).
    public_url: String,
    limits: Mutex<Limits>,
    /// Waits held now, over every token.
    waits: Arc<AtomicUsize>,
}

/// The answer to a wait: the change, at once, or a place in line until one comes.
pub enum Watch {
    Ready(Change),
    Pending(Waiting),
}

/// A wait being held: a receiver of its token's change signal, and its place among the
/// bounded waits (given back when dropped).
pub struct Waiting {
    changed: watch::Receiver<u64>,
    token: String,
    key: Key,
    recursive: bool,
    from: u64,
    _slot: WaitSlot,
}

impl Waiting {
    /// Returns when the token changed or is gone; [`Discovery::check`] then says which.
    pub async fn changed(&mut self) {
        // An error is the token gone (its sender dropped): `check` answers "not found".
        let _ = self.changed.changed().await;
    }
}

struct WaitSlot {
    token: Arc<AtomicUsize>,
    all: Arc<AtomicUsize>,
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        self.token.fetch_sub(1, Ordering::SeqCst);
        self.all.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Discovery {
    /// The tokens the store holds, written through `writer`.
    pub(crate) fn load(
        tokens: Vec<DiscoveryToken>,
        registrations: Vec<Registration>,
        writer: Arc<Writer>,
        clock: Arc<dyn Clock>,
        public_url: &str,
    ) -> Self {
        let mut by_token: HashMap<String, Vec<Registration>> = HashMap::new();
        for registration in registrations {
            by_token
                .entry(registration.token.clone())
                .or_default()
                .push(registration);
        }
        let tokens = tokens
            .into_iter()
            .map(|record| {
                let registrations = by_token.remove(&record.token).unwrap_or_default();
                (record.token.clone(), TokenState::new(record, registrations))
            })
            .collect();
        Self {
            tokens: Mutex::new(tokens),
            writer,
            clock,
            public_url: public_url.to_owned(),
            limits: Mutex::new(Limits::default()),
            waits: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The bounds on waits now.
    pub fn limits(&self) -> Limits {
        *lock(&self.limits)
    }

    /// Changes the bounds on waits (for tests, and servers embedding this one).
    pub fn set_limits(&self, limits: Limits) {
        *lock(&self.limits) = limits;
    }

    /// The URL a token's machines are given: the server's public URL, `discovery/<token>`.
    pub fn url(&self, token: &str) -> String {
        format!("{}{PREFIX}{token}", self.public_url.trim_end_matches('/'))
    }

    /// Makes a token for a cluster of `size` members.
    pub fn create(&self, size: u32) -> Result<TokenView, DiscoveryError> {
        if !(1..=MAX_SIZE).contains(&size) {
            return Err(DiscoveryError::Invalid {
                what: "cluster size",
                value: size.to_string(),
                why: format!("a token is made for 1 to {MAX_SIZE} members"),
            });
        }
        let token = crate::random::secret(16).map_err(|e| DiscoveryError::Random(e.to_string()))?;
        let record = DiscoveryToken {
            token: token.clone(),
            size,
            index: 1,
            last_delete_index: 0,
            created_at: self.clock.now(),
        };
        let view = {
            let mut tokens = lock(&self.tokens);
            self.writer.send(Write::DiscoveryToken(record.clone()));
            let state = TokenState::new(record, Vec::new());
            let view = self.view(&state);
            tokens.insert(token, state);
            view
        };
        self.flush()?;
        Ok(view)
    }

    /// Every token, oldest first.
    pub fn tokens(&self) -> Vec<TokenView> {
        let tokens = lock(&self.tokens);
        let mut views: Vec<TokenView> = tokens.values().map(|t| self.view(t)).collect();
        views.sort_by(|a, b| (a.created_at, &a.token).cmp(&(b.created_at, &b.token)));
        views
    }

    /// One token.
    pub fn token(&self, token: &str) -> Result<TokenView, DiscoveryError> {
        let tokens = lock(&self.tokens);
        let state = tokens.get(token).ok_or_else(|| unknown(token, &Key::Dir))?;
        Ok(self.view(state))
    }

    /// Deletes a token with its registrations; its waits are answered "not found".
    pub fn delete_token(&self, token: &str) -> Result<TokenView, DiscoveryError> {
        let view = {
            let mut tokens = lock(&self.tokens);
            let state = tokens
                .remove(token)
                .ok_or_else(|| unknown(token, &Key::Dir))?;
            self.writer.send(Write::DeleteDiscoveryToken {
                token: token.to_owned(),
            });
            self.view(&state)
        };
        self.flush()?;
        Ok(view)
    }

    /// Registers member `id` with `value` (`name=peerURL`); answered once stored.
    pub fn register(&self, token: &str, id: &str, value: &str) -> Result<Change, DiscoveryError> {
        checked_id(id)?;
        checked_value(value)?;
        let now = self.clock.now();
        self.change(token, &Key::Member(id.to_owned()), |state| {
            let change = state.register(id, value, now)?;
            if let Some(registration) = state.registrations.get(id) {
                self.writer.send(Write::Registration(registration.clone()));
            }
            Ok(change)
        })
    }

    /// Removes member `id`'s registration; answered once stored.
    pub fn unregister(&self, token: &str, id: &str) -> Result<Change, DiscoveryError> {
        self.change(token, &Key::Member(id.to_owned()), |state| {
            let change = state.unregister(id)?;
            self.writer.send(Write::DeleteRegistration {
                token: token.to_owned(),
                id: id.to_owned(),
            });
            Ok(change)
        })
    }

    /// Applies `change` to the token, queues its new index with what `change` queued, and
    /// waits until the store has it.
    fn change(
        &self,
        token: &str,
        key: &Key,
        change: impl FnOnce(&mut TokenState) -> Result<Change, DiscoveryError>,
    ) -> Result<Change, DiscoveryError> {
        let made = {
            let mut tokens = lock(&self.tokens);
            let state = tokens.get_mut(token).ok_or_else(|| unknown(token, key))?;
            let made = change(state)?;
            self.writer
                .send(Write::DiscoveryToken(state.record.clone()));
            made
        };
        self.flush()?;
        Ok(made)
    }

    /// The node at `key` and the token's index.
    pub fn get(
        &self,
        token: &str,
        key: &Key,
        recursive: bool,
        sorted: bool,
    ) -> Result<(Node, u64), DiscoveryError> {
        let tokens = lock(&self.tokens);
        let state = tokens.get(token).ok_or_else(|| unknown(token, key))?;
        Ok((state.node(key, recursive, sorted)?, state.record.index))
    }

    /// The token's index now (0 when there is no such token).
    pub fn index(&self, token: &str) -> u64 {
        lock(&self.tokens)
            .get(token)
            .map_or(0, |state| state.record.index)
    }

    /// A wait on `key` for the first change at `wait_index` or later (the next change when
    /// `None`): the change if it happened, else a place in line, if there is room.
    pub fn watch(
        &self,
        token: &str,
        key: &Key,
        recursive: bool,
        wait_index: Option<u64>,
    ) -> Result<Watch, DiscoveryError> {
        let tokens = lock(&self.tokens);
        let state = tokens.get(token).ok_or_else(|| unknown(token, key))?;
        let from = wait_index
            .filter(|&i| i > 0)
            .unwrap_or(state.record.index + 1);
        if let Some(change) = state.change_since(key, recursive, from)? {
            return Ok(Watch::Ready(change));
        }
        let max_waits = self.limits().max_waits;
        if self.waits.load(Ordering::SeqCst) >= max_waits {
            return Err(DiscoveryError::Busy(format!(
                "this server already holds {max_waits} discovery waits, its limit"
            )));
        }
        if state.waits.load(Ordering::SeqCst) >= state.wait_capacity() {
            return Err(DiscoveryError::Busy(format!(
                "discovery token {token} already has {} waits held, its limit",
                state.wait_capacity()
            )));
        }
        // Admissions happen under the tokens' lock, so no two pass the same last place.
        state.waits.fetch_add(1, Ordering::SeqCst);
        self.waits.fetch_add(1, Ordering::SeqCst);
        Ok(Watch::Pending(Waiting {
            changed: state.changed.subscribe(),
            token: token.to_owned(),
            key: key.clone(),
            recursive,
            from,
            _slot: WaitSlot {
                token: Arc::clone(&state.waits),
                all: Arc::clone(&self.waits),
            },
        }))
    }

    /// Whether the change a held wait waits for has come (after its token signalled).
    pub fn check(&self, waiting: &mut Waiting) -> Result<Option<Change>, DiscoveryError> {
        let tokens = lock(&self.tokens);
        let state = tokens
            .get(&waiting.token)
            .ok_or_else(|| unknown(&waiting.token, &waiting.key))?;
        // Marked seen under the lock changes are made under: a later change signals again.
        waiting.changed.borrow_and_update();
        state.change_since(&waiting.key, waiting.recursive, waiting.from)
    }

    /// Waits held now, over every token.
    pub fn waits_held(&self) -> usize {
        self.waits.load(Ordering::SeqCst)
    }

    fn view(&self, state: &TokenState) -> TokenView {
        let mut registrations: Vec<Registration> = state.registrations.values().cloned().collect();
        registrations.sort_by_key(|r| r.index);
        TokenView {
            token: state.record.token.clone(),
            url: self.url(&state.record.token),
            size: state.record.size,
            index: state.record.index,
            created_at: state.record.created_at,
            registrations,
        }
    }

    fn flush(&self) -> Result<(), DiscoveryError> {
        self.writer.flush().map_err(DiscoveryError::Store)
    }
}

fn unknown(token: &str, key: &Key) -> DiscoveryError {
    DiscoveryError::UnknownToken {
        token: token.to_owned(),
        key: key.path(token),
    }
}
