//! Why the engine refuses an action, and the check of the names (app ids, channels, versions)
//! that the engine accepts: they become path components and URL segments. The lowest file of the
//! engine: every other one reports through [`EngineError`].

use kiln_updater::omaha::normalize_id;

use crate::store::StoreError;

/// Why an admin action was refused. Messages name the app, channel or version and what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown app {0}; publish a payload for it first or create it with `kiln-server app create`")]
    UnknownApp(String),
    #[error("app {app} has no channel {channel}; publish or promote a version to it first")]
    UnknownChannel { app: String, channel: String },
    #[error("app {app} has no published version {version}; publish it first")]
    UnknownVersion { app: String, version: String },
    #[error(
        "version {version} of app {app} is already published with other bytes (sha256 {published}, \
         this upload {uploaded}): publish the change as a new version, or replace it with --replace"
    )]
    AlreadyPublished {
        app: String,
        version: String,
        published: String,
        uploaded: String,
    },
    #[error("channel {channel} of app {app} has no version to promote")]
    EmptyChannel { app: String, channel: String },
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: String,
    },
    #[error("storing the change failed: {0}")]
    Store(String),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Store(e.to_string())
    }
}

/// App ids are stored normalized and checked like every other name, since the id becomes part
/// of payload paths and URLs.
pub(super) fn checked_app_id(id: &str) -> Result<String, EngineError> {
    let id = normalize_id(id);
    checked_name("app id", &id)?;
    Ok(id)
}

/// Versions, channels and app ids become path components and URL segments.
pub fn checked_name(what: &'static str, value: &str) -> Result<(), EngineError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::Invalid {
            what,
            value: value.to_owned(),
            why: "use 1 to 128 letters, digits, '.', '-', '_' or '+'".into(),
        })
    }
}
