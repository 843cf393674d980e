//! One discovery token as the protocol sees it: a v2 keys directory holding `_config/size` and
//! one key per registered member, the token's index, and the recent changes a wait is answered
//! from. Pure state: the facade (`super`) locks it, persists it and wakes the waiters.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio::sync::watch;

use crate::clock::Timestamp;
use crate::model::{DiscoveryToken, Registration};

use super::error::DiscoveryError;
use super::key::Key;
use super::v2::{Change, Node};

/// The most changes a token remembers for waits (etcd v2 keeps 1000 events too); a wait from
/// an index older than them is answered "cleared", and the client reads the directory again.
pub const HISTORY: usize = 1000;

/// Registrations a token holds beyond its size: members that failed and re-registered under a
/// new id, or a proxy's. A client cannot make it store more.
pub const SPARE_REGISTRATIONS: u32 = 16;

/// A token and its registrations in memory.
pub(super) struct TokenState {
    pub(super) record: DiscoveryToken,
    /// By member id.
    pub(super) registrations: BTreeMap<String, Registration>,
    /// The newest changes, oldest first.
    history: VecDeque<Change>,
    /// Every change at this index or above is in `history`.
    complete_from: u64,
    /// Sent the token's index at each change; a waiter holds a receiver. Dropped with the
    /// token, which ends every wait on it.
    pub(super) changed: watch::Sender<u64>,
    /// Waits held on this token now.
    pub(super) waits: Arc<AtomicUsize>,
}

impl TokenState {
    /// A token as created or loaded, with the changes that can be rebuilt from its
    /// registrations: their creations after the token's latest removal.
    pub(super) fn new(record: DiscoveryToken, registrations: Vec<Registration>) -> Self {
        let complete_from = record.last_delete_index + 1;
        let mut history: Vec<Change> = registrations
            .iter()
            .filter(|r| r.index >= complete_from)
            .map(|r| Change::create(&record.token, r))
            .collect();
        history.sort_by_key(|c| c.index);
        let (changed, _) = watch::channel(record.index);
        let mut state = Self {
            registrations: registrations
                .into_iter()
                .map(|r| (r.id.clone(), r))
                .collect(),
            history: history.into(),
            complete_from,
            changed,
            waits: Arc::new(AtomicUsize::new(0)),
            record,
        };
        state.trim();
        state
    }

    /// How many registrations this token accepts at most.
    pub(super) fn capacity(&self) -> usize {
        (self.record.size + SPARE_REGISTRATIONS) as usize
    }

    /// How many waits may be held on this token at once: two per registration it can hold,
    /// while each etcd member holds one at a time.
    pub(super) fn wait_capacity(&self) -> usize {
        2 * self.capacity()
    }

    /// Registers member `id` (checked by the caller) with `value`; the change made.
    pub(super) fn register(
        &mut self,
        id: &str,
        value: &str,
        now: Timestamp,
    ) -> Result<Change, DiscoveryError> {
        let key = Key::Member(id.to_owned()).path(&self.record.token);
        if self.registrations.contains_key(id) {
            return Err(DiscoveryError::Exists {
                key,
                index: self.record.index,
            });
        }
        if self.registrations.len() >= self.capacity() {
            return Err(DiscoveryError::Full {
                token: self.record.token.clone(),
                limit: self.capacity(),
                size: self.record.size,
                index: self.record.index,
            });
        }
        self.record.index += 1;
        let registration = Registration {
            token: self.record.token.clone(),
            id: id.to_owned(),
            value: value.to_owned(),
            index: self.record.index,
            created_at: now,
        };
        let change = Change::create(&self.record.token, &registration);
        self.registrations.insert(id.to_owned(), registration);
        self.remember(change.clone());
        Ok(change)
    }

    /// Removes member `id`'s registration; the change made.
    pub(super) fn unregister(&mut self, id: &str) -> Result<Change, DiscoveryError> {
        let Some(registration) = self.registrations.remove(id) else {
            return Err(self.not_found(&Key::Member(id.to_owned())));
        };
        self.record.index += 1;
        self.record.last_delete_index = self.record.index;
        let change = Change::delete(&self.record.token, &registration, self.record.index);
        self.remember(change.clone());
        Ok(change)
    }

    fn remember(&mut self, change: Change) {
        self.history.push_back(change);
        self.trim();
        // Waiters compare nothing but whether it changed; none listening is fine.
        self.changed.send_replace(self.record.index);
    }

    fn trim(&mut self) {
        while self.history.len() > HISTORY {
            if let Some(oldest) = self.history.pop_front() {
                self.complete_from = oldest.index + 1;
            }
        }
    }

    /// The node at `key`: the directory (its registrations in order of registration, after
    /// `_config`, or by key when `sorted`), `_config` or its `size`, or a member's key.
    pub(super) fn node(
        &self,
        key: &Key,
        recursive: bool,
        sorted: bool,
    ) -> Result<Node, DiscoveryError> {
        let token = &self.record.token;
        match key {
            Key::Dir => {
                let mut nodes = vec![self.config_node(recursive)];
                let mut members: Vec<&Registration> = self.registrations.values().collect();
                members.sort_by_key(|r| r.index);
                nodes.extend(members.into_iter().map(|r| Node::of(token, r)));
                if sorted {
                    nodes.sort_by(|a, b| a.key.cmp(&b.key));
                }
                Ok(Node::dir(Key::Dir.path(token), 1, nodes))
            }
            Key::Config => Ok(self.config_node(true)),
            Key::Size => Ok(self.size_node()),
            Key::Member(id) => self
                .registrations
                .get(id)
                .map(|r| Node::of(token, r))
                .ok_or_else(|| self.not_found(key)),
            Key::Other(_) => Err(self.not_found(key)),
        }
    }

    /// `_config`, with its `size` inside when `recursive` (as v2 lists a directory's
    /// directories only one level deep otherwise).
    fn config_node(&self, recursive: bool) -> Node {
        let nodes = if recursive {
            vec![self.size_node()]
        } else {
            Vec::new()
        };
        Node::dir(Key::Config.path(&self.record.token), 1, nodes)
    }

    fn size_node(&self) -> Node {
        Node::value(
            Key::Size.path(&self.record.token),
            self.record.size.to_string(),
            1,
        )
    }

    /// The first change at `from` or later that a wait on `key` sees (every change below the
    /// directory when `recursive`, else those of the key itself), if it has happened.
    pub(super) fn change_since(
        &self,
        key: &Key,
        recursive: bool,
        from: u64,
    ) -> Result<Option<Change>, DiscoveryError> {
        if from < self.complete_from {
            return Err(DiscoveryError::Cleared {
                wait_index: from,
                kept_from: self.complete_from,
                index: self.record.index,
            });
        }
        let seen = |change: &&Change| match key {
            Key::Dir => recursive,
            Key::Member(id) => change.id == *id,
            // `_config` never changes, and other keys do not exist.
            Key::Config | Key::Size | Key::Other(_) => false,
        };
        Ok(self
            .history
            .iter()
            .filter(|c| c.index >= from)
            .find(seen)
            .cloned())
    }

    pub(super) fn not_found(&self, key: &Key) -> DiscoveryError {
        DiscoveryError::KeyNotFound {
            key: key.path(&self.record.token),
            index: self.record.index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::v2::Action;

    fn token(size: u32) -> TokenState {
        TokenState::new(
            DiscoveryToken {
                token: "t".into(),
                size,
                index: 1,
                last_delete_index: 0,
                created_at: 0,
            },
            Vec::new(),
        )
    }

    #[test]
    fn changes_count_up_and_waits_find_the_first_at_their_index() {
        let mut t = token(3);
        assert_eq!(t.register("a1", "m1=http://h:1", 5).unwrap().index, 2);
        assert_eq!(t.register("b2", "m2=http://h:2", 5).unwrap().index, 3);
        assert!(matches!(
            t.register("a1", "m1=http://h:1", 5),
            Err(DiscoveryError::Exists { index: 3, .. })
        ));
        let removed = t.unregister("a1").unwrap();
        assert_eq!((removed.action, removed.index), (Action::Delete, 4));
        assert_eq!(t.record.last_delete_index, 4);
        let first = |key: &Key, recursive, from| {
            t.change_since(key, recursive, from)
                .unwrap()
                .map(|c| (c.action, c.index))
        };
        assert_eq!(first(&Key::Dir, true, 1), Some((Action::Create, 2)));
        assert_eq!(first(&Key::Dir, true, 3), Some((Action::Create, 3)));
        assert_eq!(first(&Key::Dir, false, 1), None, "not recursive");
        let a1 = Key::Member("a1".into());
        assert_eq!(first(&a1, false, 3), Some((Action::Delete, 4)));
        assert_eq!(first(&Key::Dir, true, 5), None, "not yet");
    }

    #[test]
    fn a_reloaded_token_answers_waits_only_after_its_last_removal() {
        let mut t = token(3);
        t.register("a1", "m1=http://h:1", 5).unwrap();
        t.register("b2", "m2=http://h:2", 5).unwrap();
        t.unregister("a1").unwrap();
        t.register("c3", "m3=http://h:3", 5).unwrap();
        let kept: Vec<Registration> = t.registrations.values().cloned().collect();
        let loaded = TokenState::new(t.record.clone(), kept);
        assert!(matches!(
            loaded.change_since(&Key::Dir, true, 3),
            Err(DiscoveryError::Cleared { kept_from: 5, .. })
        ));
        let next = loaded.change_since(&Key::Dir, true, 5).unwrap().unwrap();
        assert_eq!((next.id.as_str(), next.index), ("c3", 5));
    }

    #[test]
    fn registrations_stop_at_the_size_and_its_spares_and_history_is_bounded() {
        let mut t = token(1);
        for n in 0..t.capacity() {
            t.register(&format!("{n:x}"), "m=http://h:1", 0).unwrap();
        }
        assert!(matches!(
            t.register("ffff", "m=http://h:1", 0),
            Err(DiscoveryError::Full { limit: 17, .. })
        ));
        for _ in 0..HISTORY {
            t.unregister("0").unwrap();
            t.register("0", "m=http://h:1", 0).unwrap();
        }
        assert_eq!(t.history.len(), HISTORY);
        assert!(t.change_since(&Key::Dir, true, 2).is_err());
        assert!(t
            .change_since(&Key::Dir, true, t.record.index)
            .unwrap()
            .is_some());
    }
}
