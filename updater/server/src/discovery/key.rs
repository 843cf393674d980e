//! Where a token's keys are: the URL path etcd's discovery client is given is a v2 keys
//! directory, `/discovery/<token>`, holding `_config/size` and one key per member id. This file
//! names them and checks what a client may write.

use super::error::DiscoveryError;

/// The path under which every token's directory is served (public routes, the URL handed out,
/// and the keys in answers).
pub const PREFIX: &str = "/discovery/";

/// The directory holding the token's settings, skipped by etcd when it counts members.
pub const CONFIG: &str = "_config";

/// The key under `_config` holding the cluster size.
pub const SIZE: &str = "size";

/// The longest member id accepted: etcd's are 64-bit numbers in hex (up to 16 digits).
pub const MAX_ID_DIGITS: usize = 32;

/// The longest value a member may register: etcd's `name=peerURL[,…]` is far shorter.
pub const MAX_VALUE_BYTES: usize = 1024;

/// A key below one token's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// The token's directory itself.
    Dir,
    /// `_config`.
    Config,
    /// `_config/size`.
    Size,
    /// A member's key, its id checked.
    Member(String),
    /// Anything else: no such key exists, and none may be written.
    Other(String),
}

impl Key {
    /// The key `rest` names below the token's directory (`""`, `_config/size`, `<id>`).
    pub fn parse(rest: &str) -> Key {
        match rest.trim_matches('/') {
            "" => Key::Dir,
            CONFIG => Key::Config,
            r if r.strip_prefix(CONFIG).and_then(|s| s.strip_prefix('/')) == Some(SIZE) => {
                Key::Size
            }
            r if checked_id(r).is_ok() => Key::Member(r.to_owned()),
            r => Key::Other(r.to_owned()),
        }
    }

    /// The key's full path, as answers name it: `/discovery/<token>/<id>`.
    pub fn path(&self, token: &str) -> String {
        let dir = format!("{PREFIX}{token}");
        match self {
            Key::Dir => dir,
            Key::Config => format!("{dir}/{CONFIG}"),
            Key::Size => format!("{dir}/{CONFIG}/{SIZE}"),
            Key::Member(id) | Key::Other(id) => format!("{dir}/{id}"),
        }
    }
}

/// A member id: 1 to 32 hex digits, as etcd names members.
pub fn checked_id(id: &str) -> Result<(), DiscoveryError> {
    if !id.is_empty() && id.len() <= MAX_ID_DIGITS && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    Err(DiscoveryError::Invalid {
        what: "member id",
        value: id.to_owned(),
        why: format!(
            "a member's key is its id directly under the token: 1 to {MAX_ID_DIGITS} hex digits"
        ),
    })
}

/// A registration's value: `name=peerURL`, several joined by `,`, at most 1 KiB, as etcd
/// registers a member; anything else would fail every member's bootstrap when they read it.
pub fn checked_value(value: &str) -> Result<(), DiscoveryError> {
    let why = if value.is_empty() {
        Some("it is empty: send value=<name>=<peer URL>".to_owned())
    } else if value.len() > MAX_VALUE_BYTES {
        Some(format!(
            "it is {} bytes long, more than {MAX_VALUE_BYTES}",
            value.len()
        ))
    } else if value.chars().any(char::is_control) {
        Some("it holds control characters".to_owned())
    } else {
        value
            .split(',')
            .find(|part| !is_member_url(part))
            .map(|part| {
                format!(
                    "{part:?} is not <name>=<peer URL> (http:// or https://); etcd registers \
                     name=http://host:port, several joined by ','"
                )
            })
    };
    match why {
        None => Ok(()),
        Some(why) => Err(DiscoveryError::Invalid {
            what: "registration value",
            // A value can be 1 KiB of anything: the message shows its start.
            value: value.chars().take(80).collect(),
            why,
        }),
    }
}

fn is_member_url(part: &str) -> bool {
    let Some((name, url)) = part.split_once('=') else {
        return false;
    };
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    !name.is_empty() && host.is_some_and(|h| !h.is_empty() && !h.contains(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_below_a_token() {
        assert_eq!(Key::parse(""), Key::Dir);
        assert_eq!(Key::parse("/"), Key::Dir);
        assert_eq!(Key::parse("_config"), Key::Config);
        assert_eq!(Key::parse("_config/size"), Key::Size);
        assert_eq!(
            Key::parse("8e9e05c52164694d"),
            Key::Member("8e9e05c52164694d".into())
        );
        assert_eq!(Key::parse("a/b"), Key::Other("a/b".into()));
        assert_eq!(Key::parse(&"a".repeat(33)), Key::Other("a".repeat(33)));
        assert_eq!(Key::Size.path("t"), "/discovery/t/_config/size");
    }

    #[test]
    fn values_are_what_etcd_registers() {
        assert!(checked_value("m1=http://127.0.0.1:2380").is_ok());
        assert!(checked_value("m1=http://10.0.0.1:2380,m1=https://[::1]:2380").is_ok());
        for bad in [
            "",
            "m1",
            "=http://h:1",
            "m1=ftp://h",
            "m1=http://",
            "m1=http://h\n",
        ] {
            assert!(checked_value(bad).is_err(), "{bad:?}");
        }
        let long = format!("m1=http://{}", "h".repeat(MAX_VALUE_BYTES));
        let err = checked_value(&long).unwrap_err().to_string();
        assert!(err.contains("more than 1024"), "{err}");
    }
}
