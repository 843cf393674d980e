//! The etcd v2 keys API's shapes, as etcd's discovery client reads them: nodes (a key with a
//! value, or a directory with its nodes, each with its created and modified index), the answer
//! to a read, a write or a wait (`action`, `node`, `prevNode`), and errors (`errorCode`,
//! `message`, `cause`, `index`) with the HTTP status v2 gives each.

use axum::http::StatusCode;
use serde::Serialize;

use crate::model::Registration;

use super::error::DiscoveryError;
use super::key::Key;

/// The header carrying the token's index on every answer.
pub const INDEX_HEADER: &str = "X-Etcd-Index";

/// A v2 node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<Node>,
    #[serde(rename = "modifiedIndex")]
    pub modified_index: u64,
    #[serde(rename = "createdIndex")]
    pub created_index: u64,
}

impl Node {
    /// A member's key.
    pub fn of(token: &str, registration: &Registration) -> Node {
        Node::value(
            Key::Member(registration.id.clone()).path(token),
            registration.value.clone(),
            registration.index,
        )
    }

    /// A key holding `value`, written once at `index`.
    pub fn value(key: String, value: String, index: u64) -> Node {
        Node {
            key,
            value: Some(value),
            dir: false,
            nodes: Vec::new(),
            modified_index: index,
            created_index: index,
        }
    }

    /// A directory made at `index`, listing `nodes`.
    pub fn dir(key: String, index: u64, nodes: Vec<Node>) -> Node {
        Node {
            key,
            value: None,
            dir: true,
            nodes,
            modified_index: index,
            created_index: index,
        }
    }
}

/// What a change did to a member's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Delete => "delete",
        }
    }
}

/// One change to a token's directory, as a wait reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub action: Action,
    /// The token's index this change made.
    pub index: u64,
    /// The member whose key changed.
    pub id: String,
    pub node: Node,
    pub prev_node: Option<Node>,
}

impl Change {
    pub fn create(token: &str, registration: &Registration) -> Change {
        Change {
            action: Action::Create,
            index: registration.index,
            id: registration.id.clone(),
            node: Node::of(token, registration),
            prev_node: None,
        }
    }

    /// The removal, at `index`, of `registration`: the node without its value, as v2 reports
    /// a deleted key, and the node as it was.
    pub fn delete(token: &str, registration: &Registration, index: u64) -> Change {
        let before = Node::of(token, registration);
        let node = Node {
            value: None,
            modified_index: index,
            ..before.clone()
        };
        Change {
            action: Action::Delete,
            index,
            id: registration.id.clone(),
            node,
            prev_node: Some(before),
        }
    }

    pub fn answer(&self) -> Answer {
        Answer {
            action: self.action.as_str(),
            node: self.node.clone(),
            prev_node: self.prev_node.clone(),
        }
    }
}

/// A successful answer's body.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub action: &'static str,
    pub node: Node,
    #[serde(rename = "prevNode", skip_serializing_if = "Option::is_none")]
    pub prev_node: Option<Node>,
}

impl Answer {
    pub fn get(node: Node) -> Answer {
        Answer {
            action: "get",
            node,
            prev_node: None,
        }
    }
}

/// A refusal's body.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    #[serde(rename = "errorCode")]
    pub code: u32,
    pub message: String,
    pub cause: String,
    pub index: u64,
}

/// v2's codes for what etcd also refuses; see etcd's `error` package.
const KEY_NOT_FOUND: u32 = 100;
const NODE_EXIST: u32 = 105;
const ROOT_READ_ONLY: u32 = 107;
const INVALID_FIELD: u32 = 209;
const RAFT_INTERNAL: u32 = 300;
const EVENT_INDEX_CLEARED: u32 = 401;
/// Kiln's own codes, beyond etcd's, for the bounds of a service anyone holding a token may use.
const REGISTRATIONS_FULL: u32 = 1000;
const TOO_MANY_WAITS: u32 = 1001;

/// The HTTP status a refusal is answered with, on the protocol's routes, the admin API and the
/// dashboard alike.
pub fn status(err: &DiscoveryError) -> StatusCode {
    match err {
        DiscoveryError::UnknownToken { .. } | DiscoveryError::KeyNotFound { .. } => {
            StatusCode::NOT_FOUND
        }
        DiscoveryError::Exists { .. } => StatusCode::PRECONDITION_FAILED,
        DiscoveryError::Full { .. } | DiscoveryError::ReadOnly { .. } => StatusCode::FORBIDDEN,
        DiscoveryError::Cleared { .. } | DiscoveryError::Invalid { .. } => StatusCode::BAD_REQUEST,
        DiscoveryError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        DiscoveryError::Random(_) | DiscoveryError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A refusal as v2 writes it: etcd's own message where etcd has the code (its client matches
/// codes, and people search for the messages), ours otherwise.
pub fn error_body(err: &DiscoveryError) -> ErrorBody {
    let (code, message, cause) = match err {
        DiscoveryError::UnknownToken { key, .. } | DiscoveryError::KeyNotFound { key, .. } => {
            (KEY_NOT_FOUND, "Key not found".to_owned(), key.clone())
        }
        DiscoveryError::Exists { key, .. } => {
            (NODE_EXIST, "Key already exists".to_owned(), key.clone())
        }
        DiscoveryError::ReadOnly { key, .. } => (ROOT_READ_ONLY, err.to_string(), key.clone()),
        DiscoveryError::Cleared { wait_index, .. } => {
            (EVENT_INDEX_CLEARED, err.to_string(), wait_index.to_string())
        }
        DiscoveryError::Full { token, .. } => (REGISTRATIONS_FULL, err.to_string(), token.clone()),
        DiscoveryError::Busy(_) => (TOO_MANY_WAITS, err.to_string(), String::new()),
        DiscoveryError::Invalid { value, .. } => (INVALID_FIELD, err.to_string(), value.clone()),
        DiscoveryError::Random(_) | DiscoveryError::Store(_) => {
            (RAFT_INTERNAL, err.to_string(), String::new())
        }
    };
    ErrorBody {
        code,
        message,
        cause,
        index: err.index(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_serialize_as_v2_writes_them() {
        let registration = Registration {
            token: "t".into(),
            id: "a1".into(),
            value: "m1=http://h:2380".into(),
            index: 2,
            created_at: 0,
        };
        let created = serde_json::to_value(Change::create("t", &registration).answer()).unwrap();
        assert_eq!(
            created,
            serde_json::json!({"action": "create", "node": {"key": "/discovery/t/a1",
                "value": "m1=http://h:2380", "modifiedIndex": 2, "createdIndex": 2}})
        );
        let deleted = serde_json::to_value(Change::delete("t", &registration, 5).answer()).unwrap();
        assert_eq!(
            deleted,
            serde_json::json!({"action": "delete",
                "node": {"key": "/discovery/t/a1", "modifiedIndex": 5, "createdIndex": 2},
                "prevNode": {"key": "/discovery/t/a1", "value": "m1=http://h:2380",
                    "modifiedIndex": 2, "createdIndex": 2}})
        );
        let dir = serde_json::to_value(Node::dir("/discovery/t".into(), 1, Vec::new())).unwrap();
        assert_eq!(
            dir,
            serde_json::json!({"key": "/discovery/t", "dir": true, "modifiedIndex": 1,
                "createdIndex": 1})
        );
    }
}
