//! The agent's reading of a response: which payload to fetch, how big it is, and what it hashes to,
//! following the rules update_engine applies (first package, codebase + name, postinstall sha256).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use kiln_contract::hex;

use super::{Manifest, OmahaError, Package, ResponseApp};

/// An update the server offers, reduced to what the agent needs to download and check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedUpdate {
    /// The manifest's version, the version the machine will run after the update.
    pub version: String,
    /// The first URL's codebase (with a trailing `/`) followed by the first package's name.
    pub url: String,
    /// The payload's size in bytes.
    pub size: u64,
    /// The payload's SHA-256.
    pub sha256: [u8; 32],
}

impl ResponseApp {
    /// What this app's update check offers: `None` for `noupdate`, the payload for `ok`, and an
    /// error naming the status for anything else (such as `error-unknownApplication`).
    ///
    /// As update_engine, the `<updatecheck>` decides: the app's own `status` is read only to name
    /// why there is no usable update check.
    pub fn update(&self) -> Result<Option<OfferedUpdate>, OmahaError> {
        let app_error = self.status.as_deref().filter(|s| *s != "ok");
        let Some(check) = self.updatecheck.as_ref() else {
            return Err(match app_error {
                Some(status) => self.status_error("app", status),
                None => self.missing("<updatecheck>"),
            });
        };
        match (check.status.as_str(), app_error) {
            ("noupdate", _) => return Ok(None),
            ("ok", _) => {}
            (_, Some(status)) => return Err(self.status_error("app", status)),
            ("", None) => return Err(self.missing("updatecheck status")),
            (other, None) => return Err(self.status_error("updatecheck", other)),
        }
        let manifest = check
            .manifest
            .as_ref()
            .ok_or_else(|| self.missing("<manifest>"))?;
        let package = self.payload_package(manifest)?;
        // update_engine refuses a response whose codebase is empty; it never skips to the next.
        let codebase = check
            .urls
            .first()
            .map(|u| u.codebase.as_str())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| self.missing("<url codebase>"))?;
        Ok(Some(OfferedUpdate {
            version: manifest.version.clone(),
            url: format!("{}{}", with_trailing_slash(codebase), package.name),
            size: package.size,
            sha256: self.payload_sha256(manifest, package)?,
        }))
    }

    /// The first package is the payload (the others are extras such as OEM images).
    fn payload_package<'a>(&self, manifest: &'a Manifest) -> Result<&'a Package, OmahaError> {
        let package = manifest
            .packages
            .first()
            .ok_or_else(|| self.missing("<package>"))?;
        if package.name.is_empty() {
            return Err(self.missing("package name"));
        }
        if package.size == 0 {
            return Err(self.missing("package size"));
        }
        Ok(package)
    }

    /// The postinstall action's base64 `sha256` (what update_engine reads), else the package's
    /// hex `hash_sha256` (what Nebraska adds); when both are given they must agree.
    fn payload_sha256(
        &self,
        manifest: &Manifest,
        package: &Package,
    ) -> Result<[u8; 32], OmahaError> {
        let from_action = manifest
            .actions
            .iter()
            .find(|a| a.event == "postinstall")
            .and_then(|a| a.sha256.as_deref())
            .map(|b64| self.decode_base64(b64))
            .transpose()?;
        let from_package = package
            .hash_sha256
            .as_deref()
            .map(|hex| self.package_digest(hex))
            .transpose()?;
        match (from_action, from_package) {
            (Some(a), Some(p)) if a != p => Err(OmahaError::HashMismatch {
                appid: self.appid.clone(),
                action: hex::encode(&a),
                package: hex::encode(&p),
            }),
            (Some(digest), _) | (None, Some(digest)) => Ok(digest),
            (None, None) => {
                Err(self.missing("SHA-256 (postinstall action sha256 or package hash_sha256)"))
            }
        }
    }

    fn decode_base64(&self, value: &str) -> Result<[u8; 32], OmahaError> {
        let bytes = BASE64
            .decode(value.trim())
            .map_err(|e| self.bad_hash("postinstall action sha256", value, e.to_string()))?;
        <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            let reason = format!("decodes to {} bytes, a SHA-256 has 32", bytes.len());
            self.bad_hash("postinstall action sha256", value, reason)
        })
    }

    fn package_digest(&self, value: &str) -> Result<[u8; 32], OmahaError> {
        hex::decode_digest(value.trim()).ok_or_else(|| {
            self.bad_hash(
                "package hash_sha256",
                value,
                "not 64 hexadecimal digits".into(),
            )
        })
    }

    fn status_error(&self, element: &'static str, status: &str) -> OmahaError {
        OmahaError::Status {
            appid: self.appid.clone(),
            element,
            status: status.to_owned(),
        }
    }

    fn missing(&self, what: &'static str) -> OmahaError {
        OmahaError::Missing {
            appid: self.appid.clone(),
            what,
        }
    }

    fn bad_hash(&self, what: &'static str, value: &str, reason: String) -> OmahaError {
        OmahaError::BadHash {
            appid: self.appid.clone(),
            what,
            value: value.to_owned(),
            reason,
        }
    }
}

/// update_engine appends `/` to a codebase that lacks one before appending the package name.
pub(super) fn with_trailing_slash(codebase: &str) -> String {
    if codebase.ends_with('/') {
        codebase.to_owned()
    } else {
        format!("{codebase}/")
    }
}
