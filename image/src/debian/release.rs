//! A suite's signed `InRelease`: fetched, checked with `gpgv` against the suite's keyring,
//! and parsed for the SHA-256 of every index file (the Debian repository format's Release
//! file). Everything else a build downloads is checked against these hashes, so this signature
//! is the whole chain of trust; the transport may be plain http.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{io_err, Error, Result};
use super::http::{self, Expected};
use super::sources::Mirror;
use crate::civil::days_from_civil;

/// The parts of a Release file a build uses.
#[derive(Clone, Debug)]
pub struct Release {
    /// `Suite` (`stable`, `oldstable-security`, ...).
    pub suite: String,
    /// `Codename` (`bookworm`, `bookworm-security`, ...).
    pub codename: String,
    pub date: Option<String>,
    pub valid_until: Option<String>,
    /// `Acquire-By-Hash: yes`: index files can also be fetched by their hash, which stays
    /// right while the mirror updates.
    pub by_hash: bool,
    /// Index files by path below `dists/<suite>/`, from the `SHA256` field.
    pub files: BTreeMap<String, Expected>,
}

/// Fetches `dists/<suite>/InRelease`, verifies its signature and parses it. Warnings (a
/// `Valid-Until` in the past, which snapshot mirrors always have) are appended to `warnings`.
pub fn fetch_release(mirror: &Mirror, now: i64, warnings: &mut Vec<String>) -> Result<Release> {
    let url = mirror.url(&format!("dists/{}/InRelease", mirror.suite));
    let signed = http::get_bytes(
        &url,
        "the mirror does not carry this suite (or has no InRelease): check the suite name and the mirror",
    )?;
    let text = verify_inrelease(&signed, mirror)?;
    let release = Release::parse(&text, mirror)?;
    if let Some(w) = release.expiry_warning(now, mirror) {
        warnings.push(w);
    }
    Ok(release)
}

/// Checks the cleartext signature of an InRelease file with `gpgv` against the mirror's
/// keyring and returns the signed text as gpgv extracted it. Using gpgv's output rather than
/// our own reading of the cleartext frame means text outside the signed part can never be
/// taken for signed.
pub fn verify_inrelease(signed: &[u8], mirror: &Mirror) -> Result<String> {
    let bad = |detail: String| Error::BadSignature {
        suite: mirror.suite.clone(),
        mirror: mirror.uri.clone(),
        keyring: mirror.keyring.clone(),
        detail,
    };
    if !mirror.keyring.is_file() {
        return Err(bad("the keyring file does not exist".to_string()));
    }
    let input = TempFile::new("InRelease")?;
    std::fs::write(&input.0, signed).map_err(io_err(format!("writing {}", input.0.display())))?;
    let output = Command::new("gpgv")
        .arg("--status-fd")
        .arg("2")
        .arg("--keyring")
        .arg(absolute(&mirror.keyring))
        .arg("--output")
        .arg("-")
        .arg(&input.0)
        .output()
        .map_err(|e| Error::Gpgv(format!("gpgv --keyring {}: {e}", mirror.keyring.display())))?;
    let status: Vec<&str> = std::str::from_utf8(&output.stderr)
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.strip_prefix("[GNUPG:] "))
        .collect();
    let good = status.iter().any(|l| l.starts_with("VALIDSIG "));
    if !output.status.success() || !good {
        let detail = status
            .iter()
            .find(|l| {
                [
                    "BADSIG",
                    "ERRSIG",
                    "NO_PUBKEY",
                    "EXPKEYSIG",
                    "REVKEYSIG",
                    "NODATA",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .map(|l| format!("gpgv reports {l}"))
            .unwrap_or_else(|| format!("gpgv exited with {}", output.status));
        return Err(bad(detail));
    }
    String::from_utf8(output.stdout).map_err(|_| Error::Release {
        suite: mirror.suite.clone(),
        mirror: mirror.uri.clone(),
        reason: "the signed text is not UTF-8".to_string(),
    })
}

/// gpgv reads a keyring without a slash from its home directory; an absolute path avoids that.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(stem: &str) -> Result<TempFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Ok(TempFile(
            std::env::temp_dir().join(format!("kiln-{stem}-{}-{n}", std::process::id())),
        ))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Release {
    /// Parses the (already verified) text of a Release file and checks that it is the suite
    /// that was asked for, so a mirror cannot answer one suite with another's signed file.
    pub fn parse(text: &str, mirror: &Mirror) -> Result<Release> {
        let err = |reason: String| Error::Release {
            suite: mirror.suite.clone(),
            mirror: mirror.uri.clone(),
            reason,
        };
        let mut fields: BTreeMap<String, String> = BTreeMap::new();
        let mut files = BTreeMap::new();
        let mut in_sha256 = false;
        for line in text.lines() {
            if let Some(item) = line.strip_prefix(' ') {
                if in_sha256 {
                    let (path, expected) = parse_hash_line(item)
                        .ok_or_else(|| err(format!("bad SHA256 line {line:?}")))?;
                    files.insert(path, expected);
                }
                continue;
            }
            in_sha256 = false;
            if let Some((key, value)) = line.split_once(':') {
                in_sha256 = key == "SHA256";
                fields.insert(key.to_string(), value.trim().to_string());
            }
        }
        let suite = fields.remove("Suite").unwrap_or_default();
        let codename = fields.remove("Codename").unwrap_or_default();
        if suite != mirror.suite && codename != mirror.suite {
            return Err(err(format!(
                "it is the Release of suite {suite:?} (codename {codename:?}), not of the suite asked for"
            )));
        }
        if files.is_empty() {
            return Err(err("it has no SHA256 list of index files".to_string()));
        }
        Ok(Release {
            suite,
            codename,
            date: fields.remove("Date"),
            valid_until: fields.remove("Valid-Until"),
            by_hash: fields.get("Acquire-By-Hash").is_some_and(|v| v == "yes"),
            files,
        })
    }

    /// A warning when `Valid-Until` is present and in the past. Snapshot mirrors serve old
    /// Release files on purpose, so this does not fail the build; the signature still holds.
    pub fn expiry_warning(&self, now: i64, mirror: &Mirror) -> Option<String> {
        let until = self.valid_until.as_deref()?;
        match parse_rfc2822(until) {
            Some(t) if t < now => Some(format!(
                "Release of suite {} from {} expired at {until} (Valid-Until); fine for a snapshot mirror, otherwise the mirror is stale",
                mirror.suite, mirror.uri
            )),
            Some(_) => None,
            None => Some(format!(
                "Release of suite {} from {} has an unreadable Valid-Until {until:?}",
                mirror.suite, mirror.uri
            )),
        }
    }
}

/// ` <sha256> <size> <path>` → (path, expected).
fn parse_hash_line(item: &str) -> Option<(String, Expected)> {
    let mut words = item.split_whitespace();
    let sha256 = words.next()?.to_ascii_lowercase();
    let size = words.next()?.parse().ok()?;
    let path = words.next()?.to_string();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((path, Expected { size, sha256 }))
}

/// Parses the Release date form `Sat, 20 May 2025 08:12:13 UTC` into seconds since the epoch.
fn parse_rfc2822(s: &str) -> Option<i64> {
    let s = s.split_once(',').map_or(s, |(_, rest)| rest).trim();
    let mut w = s.split_whitespace();
    let day: i64 = w.next()?.parse().ok()?;
    let month = match w.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = w.next()?.parse().ok()?;
    let mut hms = w.next()?.split(':').map(|x| x.parse::<i64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if !matches!(w.next(), None | Some("UTC" | "GMT" | "+0000")) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debian::testrepo::TestKey;

    const RELEASE: &str = "\
Origin: Debian
Suite: stable-security
Codename: bookworm-security
Date: Sat, 20 May 2025 08:12:13 UTC
Valid-Until: Sat, 27 May 2025 08:12:13 UTC
MD5Sum:
 0ed6d4c8891eb86358b94bb35d9e4da4  1484322 main/binary-amd64/Packages.xz
SHA256:
 9E0B5AABB2465B3D2E7A7FE27F9913846277833F7A2826E7767ACCCFF5B588C5  8790396 main/binary-amd64/Packages.xz
 515e692f2c4121c6fcec444ef100cc18f79a991910615f3a88c8b7becfc94d2f 50060337 main/binary-amd64/Packages
";

    #[test]
    fn parses_sha256_and_checks_the_suite() {
        let m = Mirror::new("http://mirror.invalid/debian-security", "bookworm-security");
        let r = Release::parse(RELEASE, &m).unwrap();
        assert_eq!(r.files.len(), 2);
        let xz = &r.files["main/binary-amd64/Packages.xz"];
        assert_eq!(xz.size, 8790396);
        assert!(xz.sha256.starts_with("9e0b5aab"));
        let other = Mirror::new("http://mirror.invalid/debian", "bookworm");
        let err = Release::parse(RELEASE, &other).unwrap_err().to_string();
        assert!(err.contains("not of the suite asked for"), "{err}");
    }

    #[test]
    fn valid_until_in_the_past_is_a_warning_only() {
        let m = Mirror::new("http://mirror.invalid/debian-security", "bookworm-security");
        let r = Release::parse(RELEASE, &m).unwrap();
        let until = parse_rfc2822("Sat, 27 May 2025 08:12:13 UTC").unwrap();
        // `date -u -d '2025-05-27 08:12:13' +%s`
        assert_eq!(until, 1748333533);
        assert!(r.expiry_warning(until - 1, &m).is_none());
        let w = r.expiry_warning(until + 1, &m).unwrap();
        assert!(
            w.contains("expired") && w.contains("bookworm-security"),
            "{w}"
        );
    }

    #[test]
    fn good_signature_passes_and_tampering_is_refused() {
        let key = TestKey::new();
        let text = RELEASE.replace("stable-security", "stable");
        let signed = key.clearsign(text.as_bytes());
        let mut m = Mirror::new("file:///nowhere", "bookworm-security");
        m.keyring = key.keyring.clone();
        assert_eq!(verify_inrelease(&signed, &m).unwrap(), text);

        let tampered = String::from_utf8(signed)
            .unwrap()
            .replace("8790396", "8790397");
        let err = verify_inrelease(tampered.as_bytes(), &m)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "InRelease of suite bookworm-security from file:///nowhere is not validly signed"
            ),
            "{err}"
        );
        assert!(err.contains("BADSIG"), "{err}");

        // Signed, but by a key that is not in the keyring given.
        m.keyring = PathBuf::from(crate::debian::sources::DEFAULT_KEYRING);
        let err = verify_inrelease(&key.clearsign(b"x\n"), &m)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not validly signed"), "{err}");
    }
}
