//! The host's apt sources: where the Debian mirror is. Reads both the one-line form
//! (`/etc/apt/sources.list`, `*.list`) and the deb822 form (`*.sources`), as sources.list(5)
//! describes them, and picks the base URI that carries a requested suite.

use std::path::{Path, PathBuf};

use super::error::{io_err, Error, Result};

/// The keyring apt uses for Debian when a source names none.
pub const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One suite of one mirror: everything needed to fetch and verify its indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// The base URI, without a trailing slash (`http://host/debian`).
    pub uri: String,
    pub suite: String,
    pub components: Vec<String>,
    /// The OpenPGP keyring its InRelease must be signed with.
    pub keyring: PathBuf,
}

impl Mirror {
    /// A mirror named by the caller rather than the host's sources (component `main`, Debian's
    /// keyring).
    pub fn new(uri: &str, suite: &str) -> Mirror {
        Mirror {
            uri: uri.trim_end_matches('/').to_string(),
            suite: suite.to_string(),
            components: vec!["main".to_string()],
            keyring: PathBuf::from(DEFAULT_KEYRING),
        }
    }

    /// The URL of a file below the mirror's base (`dists/...` or a pool `Filename`).
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.uri, path.trim_start_matches('/'))
    }
}

/// One `deb` entry of a sources file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceEntry {
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub signed_by: Option<PathBuf>,
    /// The file it came from, for messages.
    pub origin: PathBuf,
}

/// All `deb` entries of the host's apt configuration, in apt's reading order.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub entries: Vec<SourceEntry>,
    /// The files that were read, for the "no source carries suite" message.
    pub files: Vec<PathBuf>,
}

impl Sources {
    /// Reads `/etc/apt/sources.list` and `/etc/apt/sources.list.d/`.
    pub fn from_host() -> Result<Sources> {
        Sources::from_etc_apt(Path::new("/etc/apt"))
    }

    /// Reads `sources.list` and `sources.list.d/*.{list,sources}` below `dir`, in the order
    /// apt does (the main file, then the directory sorted by name). Files with other names, such
    /// as `x.sources.disabled`, are ignored as apt ignores them.
    pub fn from_etc_apt(dir: &Path) -> Result<Sources> {
        let mut files = vec![dir.join("sources.list")];
        let list_d = dir.join("sources.list.d");
        if list_d.is_dir() {
            let mut names: Vec<PathBuf> = std::fs::read_dir(&list_d)
                .map_err(io_err(format!("listing {}", list_d.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("list" | "sources")
                    )
                })
                .collect();
            names.sort();
            files.extend(names);
        }
        let mut sources = Sources::default();
        for path in files.into_iter().filter(|p| p.is_file()) {
            let text = std::fs::read_to_string(&path)
                .map_err(io_err(format!("reading {}", path.display())))?;
            let entries = if path.extension().is_some_and(|e| e == "sources") {
                parse_deb822(&text, &path)?
            } else {
                parse_one_line(&text, &path)?
            };
            sources.entries.extend(entries);
            sources.files.push(path);
        }
        Ok(sources)
    }

    /// The first entry carrying `suite`, as a [`Mirror`] (its first URI).
    pub fn mirror(&self, suite: &str) -> Result<Mirror> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.suites.iter().any(|s| s == suite) && !e.uris.is_empty())
            .ok_or_else(|| Error::NoMirror {
                suite: suite.to_string(),
                searched: if self.files.is_empty() {
                    "no sources file".to_string()
                } else {
                    self.files
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })?;
        Ok(Mirror {
            uri: entry.uris[0].trim_end_matches('/').to_string(),
            suite: suite.to_string(),
            components: entry.components.clone(),
            keyring: entry
                .signed_by
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_KEYRING)),
        })
    }

    /// [`Sources::mirror`] for each suite, in order.
    pub fn mirrors(&self, suites: &[&str]) -> Result<Vec<Mirror>> {
        suites.iter().map(|s| self.mirror(s)).collect()
    }
}

/// Parses a deb822 `.sources` file: paragraphs of `Field: value` lines, continuation lines
/// starting with white space, `#` comments. Entries with `Enabled: no` or without type `deb`
/// are dropped.
pub fn parse_deb822(text: &str, origin: &Path) -> Result<Vec<SourceEntry>> {
    let mut entries = Vec::new();
    for (first_line, fields) in paragraphs(text, origin)? {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let words = |name: &str| -> Vec<String> {
            get(name)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        if get("Enabled").is_some_and(|v| v.trim().eq_ignore_ascii_case("no")) {
            continue;
        }
        if !words("Types").iter().any(|t| t == "deb") {
            continue;
        }
        let (uris, suites) = (words("URIs"), words("Suites"));
        if uris.is_empty() || suites.is_empty() {
            return Err(Error::Sources {
                path: origin.to_path_buf(),
                line: first_line,
                reason: "a deb entry needs URIs and Suites".to_string(),
            });
        }
        entries.push(SourceEntry {
            uris,
            suites,
            components: words("Components"),
            // An inline key block (several lines) cannot be a path; such an entry falls back to
            // the default keyring.
            signed_by: get("Signed-By")
                .map(str::trim)
                .filter(|v| v.starts_with('/') && !v.contains('\n'))
                .map(PathBuf::from),
            origin: origin.to_path_buf(),
        });
    }
    Ok(entries)
}

type Paragraph = (usize, Vec<(String, String)>);

/// Splits deb822 text into paragraphs of (field, value), each with its first line number.
fn paragraphs(text: &str, origin: &Path) -> Result<Vec<Paragraph>> {
    let mut out: Vec<Paragraph> = Vec::new();
    let mut current: Option<Paragraph> = None;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            out.extend(current.take());
            continue;
        }
        let para = current.get_or_insert_with(|| (line_no, Vec::new()));
        if line.starts_with([' ', '\t']) {
            match para.1.last_mut() {
                Some((_, value)) => {
                    value.push('\n');
                    value.push_str(line.trim());
                }
                None => {
                    return Err(Error::Sources {
                        path: origin.to_path_buf(),
                        line: line_no,
                        reason: "continuation line before any field".to_string(),
                    })
                }
            }
            continue;
        }
        let (key, value) = line.split_once(':').ok_or_else(|| Error::Sources {
            path: origin.to_path_buf(),
            line: line_no,
            reason: format!("expected `Field: value`, found {line:?}"),
        })?;
        para.1
            .push((key.trim().to_string(), value.trim().to_string()));
    }
    out.extend(current);
    Ok(out)
}

/// Parses the one-line form: `deb [options] uri suite [component ...]`.
pub fn parse_one_line(text: &str, origin: &Path) -> Result<Vec<SourceEntry>> {
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue; // deb-src lines and blank lines
        };
        let bad = |reason: &str| Error::Sources {
            path: origin.to_path_buf(),
            line: i + 1,
            reason: reason.to_string(),
        };
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let (opts, after) = opts
                .split_once(']')
                .ok_or_else(|| bad("unclosed `[` options"))?;
            for opt in opts.split_whitespace() {
                if let Some(v) = opt.strip_prefix("signed-by=") {
                    signed_by = Some(PathBuf::from(v));
                }
            }
            rest = after;
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            return Err(bad("a deb line needs a URI and a suite"));
        };
        entries.push(SourceEntry {
            uris: vec![uri.to_string()],
            suites: vec![suite.to_string()],
            components: words.map(str::to_string).collect(),
            signed_by,
            origin: origin.to_path_buf(),
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shaped like the host's own debian.sources (snapshot comment lines included); the host
    // names are placeholders under the reserved .invalid domain.
    const DEB822: &str = "\
Types: deb
# http://snapshot.invalid/archive/debian/20250520T000000Z
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror.invalid/debian-security/
Suites: bookworm-security
Components: main contrib

Types: deb
Enabled: no
URIs: http://disabled.invalid/debian
Suites: trixie
";

    #[test]
    fn deb822_entries_pick_the_suite_s_uri() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sources.list.d")).unwrap();
        std::fs::write(dir.path().join("sources.list.d/debian.sources"), DEB822).unwrap();
        std::fs::write(
            dir.path()
                .join("sources.list.d/other.sources.disabled-by-farm"),
            "Types: deb\nURIs: http://ignored.invalid/\nSuites: bookworm\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("sources.list"),
            "# comment\ndeb-src http://src.invalid/debian bookworm main\n\
             deb [arch=amd64 signed-by=/k.gpg] http://vendor.invalid/apt nodistro main\n",
        )
        .unwrap();
        let s = Sources::from_etc_apt(dir.path()).unwrap();
        assert_eq!(s.entries.len(), 3, "{s:#?}");
        let base = s.mirror("bookworm-updates").unwrap();
        assert_eq!(base.uri, "http://mirror.invalid/debian");
        assert_eq!(base.components, ["main"]);
        let sec = s.mirror("bookworm-security").unwrap();
        assert_eq!(sec.uri, "http://mirror.invalid/debian-security");
        assert_eq!(sec.keyring, Path::new(DEFAULT_KEYRING));
        assert_eq!(
            sec.url("/dists/x"),
            "http://mirror.invalid/debian-security/dists/x"
        );
        let vendor = s.mirror("nodistro").unwrap();
        assert_eq!(vendor.keyring, Path::new("/k.gpg"));
        let err = s.mirror("trixie").unwrap_err().to_string();
        assert!(
            err.contains("no apt source carries suite \"trixie\""),
            "{err}"
        );
        assert!(err.contains("debian.sources"), "{err}");
    }

    #[test]
    fn malformed_sources_name_file_and_line() {
        let err = parse_deb822("Types: deb\nnot a field\n", Path::new("x.sources"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("x.sources:2: expected `Field: value`"),
            "{err}"
        );
        let err = parse_one_line("\ndeb http://only-uri.invalid\n", Path::new("s.list"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "s.list:2: a deb line needs a URI and a suite");
    }
}
