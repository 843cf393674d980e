//! The answer offering a published package, built once when the package is published or loaded,
//! and the encodings of the payload's SHA-256: hexadecimal in the store and the admin API, bytes
//! in the answer, base64 where update_engine's postinstall action shows it.

use base64::Engine as _;
use kiln_updater::omaha::ResponseApp;

use crate::model::PackageRecord;

use super::error::EngineError;

/// The answer to one update check, as the engine decided it.
#[derive(Debug, Clone)]
pub(super) struct Offer {
    pub(super) min_from_version: Option<String>,
    /// The `<app>` answer offering it, built once: every machine granted the version gets the
    /// same one, with only its own app id spelling and acknowledgements added.
    pub(super) answer: ResponseApp,
}

/// The offer of a package: its payload is served by this server, under `public_url` (which
/// ends in `/`), unless the package names its own URL.
pub(super) fn offer_for(package: &PackageRecord, public_url: &str) -> Result<Offer, EngineError> {
    let sha256 = kiln_contract::hex::decode_digest(package.sha256.trim()).ok_or_else(|| {
        EngineError::Invalid {
            what: "package sha256",
            value: package.sha256.clone(),
            why: "not 64 hexadecimal digits".into(),
        }
    })?;
    let (codebase, file_name) = match &package.url {
        Some(url) => match url.rsplit_once('/') {
            Some((dir, name)) if !name.is_empty() => (format!("{dir}/"), name.to_owned()),
            _ => {
                return Err(EngineError::Invalid {
                    what: "payload URL",
                    value: url.clone(),
                    why: "it must end in the payload's file name".into(),
                })
            }
        },
        None => (
            format!(
                "{}v1/payloads/{}/{}/",
                public_url, package.app_id, package.version
            ),
            package.file_name.clone(),
        ),
    };
    let answer = ResponseApp::update_ok(
        &package.app_id,
        &package.version,
        &codebase,
        &file_name,
        package.size,
        &sha256,
    );
    Ok(Offer {
        min_from_version: package.min_from_version.clone(),
        answer,
    })
}

/// The payload's SHA-256 in base64, as the postinstall action carries it (for tests and logs).
pub fn sha256_base64(digest: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(digest)
}
