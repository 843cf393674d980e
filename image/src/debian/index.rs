//! The package indices of the chosen suites (`main/binary-amd64/Packages.xz`), fetched,
//! checked against the signed Release, cached by SHA-256, and parsed into an [`Archive`]: every
//! amd64 and `all` package of every suite, with lookups by name and by provided name.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::AtomicU64;

use super::error::{io_err, Error, Result};
use super::http;
use super::relation::{parse_relations, Alternatives, Relation};
use super::release::{fetch_release, Release};
use super::sources::Mirror;
use super::version::Version;
use super::Cache;

/// The only architecture Kiln builds for.
pub const ARCH: &str = "amd64";

/// `Multi-Arch` of a package (the multiarch spec); it decides what `:any` may match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MultiArch {
    No,
    Same,
    Foreign,
    Allowed,
}

/// A provided name, optionally with the version it is provided at (`Provides: x (= 1.0)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provide {
    pub name: String,
    pub version: Option<Version>,
}

/// One binary package of one suite.
#[derive(Clone, Debug)]
pub struct Package {
    pub name: String,
    pub version: Version,
    pub arch: String,
    pub multi_arch: MultiArch,
    pub essential: bool,
    pub priority: String,
    pub pre_depends: Vec<Alternatives>,
    pub depends: Vec<Alternatives>,
    pub provides: Vec<Provide>,
    /// Path of the .deb below the mirror's base URI.
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    pub suite: String,
    /// The suite's position in the list given to [`Archive::open`]: later suites rank higher.
    pub suite_rank: usize,
}

/// The packages of several suites, with lookups.
#[derive(Debug, Default)]
pub struct Archive {
    pub mirrors: Vec<Mirror>,
    pub packages: Vec<Package>,
    by_name: HashMap<String, Vec<usize>>,
    by_provide: HashMap<String, Vec<usize>>,
    /// Things worth telling the user that do not stop the build (an expired `Valid-Until`).
    pub warnings: Vec<String>,
}

impl Archive {
    /// Fetches and verifies each mirror's Release and package indices. The order of `mirrors`
    /// is their priority, lowest first: pass the base suite, then `-updates`, then `-security`.
    /// `now` (seconds since the epoch) is only used for the `Valid-Until` warning.
    pub fn open(mirrors: &[Mirror], cache: &Cache, now: i64) -> Result<Archive> {
        let mut archive = Archive {
            mirrors: mirrors.to_vec(),
            ..Archive::default()
        };
        for (rank, mirror) in mirrors.iter().enumerate() {
            let release = fetch_release(mirror, now, &mut archive.warnings)?;
            for component in &mirror.components {
                let text = fetch_packages(mirror, &release, component, cache)?;
                archive.add_index(&text, mirror, rank)?;
            }
        }
        Ok(archive)
    }

    /// Builds an archive from Packages texts already in hand (tests, offline tools); each
    /// text's rank is its position.
    pub fn from_indices(indices: &[(Mirror, String)]) -> Result<Archive> {
        let mut archive = Archive::default();
        for (rank, (mirror, text)) in indices.iter().enumerate() {
            archive.mirrors.push(mirror.clone());
            archive.add_index(text, mirror, rank)?;
        }
        Ok(archive)
    }

    fn add_index(&mut self, text: &str, mirror: &Mirror, rank: usize) -> Result<()> {
        let origin = format!("Packages of {} from {}", mirror.suite, mirror.uri);
        for package in parse_packages(text, &mirror.suite, rank, &origin)? {
            let i = self.packages.len();
            self.by_name
                .entry(package.name.clone())
                .or_default()
                .push(i);
            for p in &package.provides {
                self.by_provide.entry(p.name.clone()).or_default().push(i);
            }
            self.packages.push(package);
        }
        Ok(())
    }

    /// Every version of a real package, in no particular order.
    pub fn named(&self, name: &str) -> impl Iterator<Item = &Package> {
        self.indices(&self.by_name, name)
    }

    /// Every package that lists `name` in its Provides.
    pub fn providers(&self, name: &str) -> impl Iterator<Item = &Package> {
        self.indices(&self.by_provide, name)
    }

    fn indices<'a>(
        &'a self,
        map: &'a HashMap<String, Vec<usize>>,
        name: &str,
    ) -> impl Iterator<Item = &'a Package> {
        map.get(name)
            .into_iter()
            .flatten()
            .map(move |&i| &self.packages[i])
    }

    /// The mirror a package of `suite` is downloaded from.
    pub fn mirror_of(&self, suite: &str) -> Option<&Mirror> {
        self.mirrors.iter().find(|m| m.suite == suite)
    }
}

/// Fetches a component's Packages index (xz, else gz, else plain) through the cache and
/// returns its text.
fn fetch_packages(
    mirror: &Mirror,
    release: &Release,
    component: &str,
    cache: &Cache,
) -> Result<String> {
    let base = format!("{component}/binary-{ARCH}/Packages");
    let (name, expected) = ["xz", "gz", ""]
        .iter()
        .map(|ext| {
            if ext.is_empty() {
                base.clone()
            } else {
                format!("{base}.{ext}")
            }
        })
        .find_map(|n| release.files.get(&n).map(|e| (n, e.clone())))
        .ok_or_else(|| Error::Release {
            suite: mirror.suite.clone(),
            mirror: mirror.uri.clone(),
            reason: format!(
                "it lists no {base}(.xz|.gz): the suite has no component {component:?} for {ARCH}"
            ),
        })?;
    let url = mirror.url(&format!("dists/{}/{name}", mirror.suite));
    let ext = name.rsplit_once('.').map_or("txt", |(_, e)| e);
    let path = cache
        .indices_dir()
        .join(format!("{}.{ext}", expected.sha256));
    let cached_ok =
        path.is_file() && http::hash_file(&path)? == (expected.size, expected.sha256.clone());
    if !cached_ok {
        let what = format!("index {name} of suite {}", mirror.suite);
        let by_hash = format!(
            "dists/{}/{}/by-hash/SHA256/{}",
            mirror.suite,
            name.rsplit_once('/').map_or("", |(dir, _)| dir),
            expected.sha256
        );
        // By hash first when the mirror offers it: a mirror that updates between our reading
        // of InRelease and of the index still serves the file InRelease names.
        let fetched = if release.by_hash {
            match http::download_verified(
                &mirror.url(&by_hash),
                &path,
                &expected,
                &what,
                "",
                &AtomicU64::new(0),
            ) {
                Err(Error::NotFound { .. }) => false,
                other => other.map(|()| true)?,
            }
        } else {
            false
        };
        if !fetched {
            http::download_verified(
                &url,
                &path,
                &expected,
                &what,
                "the mirror changed between reading InRelease and the index: run again",
                &AtomicU64::new(0),
            )?;
        }
    }
    let file = std::fs::File::open(&path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut reader: Box<dyn Read> = match ext {
        "xz" => Box::new(xz2::read::XzDecoder::new(file)),
        "gz" => Box::new(flate2::read::GzDecoder::new(file)),
        _ => Box::new(file),
    };
    let mut text = String::new();
    reader.read_to_string(&mut text).map_err(io_err(format!(
        "decompressing {} (cached from {url})",
        path.display()
    )))?;
    Ok(text)
}

/// Parses a Packages file into the packages of our architecture (and `all`).
pub fn parse_packages(text: &str, suite: &str, rank: usize, origin: &str) -> Result<Vec<Package>> {
    let mut out = Vec::new();
    let mut line_no = 1;
    for stanza in text.split("\n\n") {
        let start = line_no;
        line_no += stanza.matches('\n').count() + 2;
        if stanza.trim().is_empty() {
            continue;
        }
        let package = parse_stanza(stanza, suite, rank).map_err(|reason| Error::Parse {
            origin: format!("{origin}, stanza at line {start}"),
            reason,
        })?;
        if let Some(p) = package {
            out.push(p);
        }
    }
    Ok(out)
}

/// Parses one stanza; `None` for another architecture.
fn parse_stanza(stanza: &str, suite: &str, rank: usize) -> Result<Option<Package>, String> {
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for line in stanza.lines() {
        if line.starts_with([' ', '\t']) {
            continue; // continuation lines only occur in fields we do not read (Description)
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.insert(k, v.trim());
        }
    }
    let get = |k: &str| fields.get(k).copied();
    let need = |k: &str| get(k).ok_or_else(|| format!("missing field {k}"));
    let arch = need("Architecture")?;
    if arch != ARCH && arch != "all" {
        return Ok(None);
    }
    let name = need("Package")?;
    let relations = |k: &str| -> Result<Vec<Alternatives>, String> {
        get(k).map_or(Ok(Vec::new()), |v| {
            parse_relations(v).map_err(|e| format!("{name}: {k}: {e}"))
        })
    };
    let sha256 = need("SHA256")?.to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{name}: bad SHA256 {sha256:?}"));
    }
    Ok(Some(Package {
        name: name.to_string(),
        version: Version::parse(need("Version")?)?,
        arch: arch.to_string(),
        multi_arch: match get("Multi-Arch") {
            Some("same") => MultiArch::Same,
            Some("foreign") => MultiArch::Foreign,
            Some("allowed") => MultiArch::Allowed,
            _ => MultiArch::No,
        },
        essential: get("Essential") == Some("yes"),
        priority: get("Priority").unwrap_or("optional").to_string(),
        pre_depends: relations("Pre-Depends")?,
        depends: relations("Depends")?,
        provides: relations("Provides")?
            .into_iter()
            .flatten()
            .map(|r: Relation| Provide {
                name: r.name,
                version: r.constraint.map(|(_, v)| v),
            })
            .collect(),
        filename: need("Filename")?.to_string(),
        size: need("Size")?
            .parse()
            .map_err(|_| format!("{name}: bad Size"))?,
        sha256,
        suite: suite.to_string(),
        suite_rank: rank,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const PACKAGES: &str = "\
Package: foo
Version: 1.0-1
Architecture: amd64
Multi-Arch: allowed
Priority: important
Essential: yes
Depends: libc6 (>= 2.34), bar | baz
Pre-Depends: init-system-helpers (>= 1.54~)
Provides: foo-virtual (= 1.0), other
Description: a test
 with a second line: that looks like a field
Filename: pool/main/f/foo/foo_1.0-1_amd64.deb
Size: 1234
SHA256: 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff

Package: foo
Version: 1.0-1
Architecture: arm64
Filename: pool/main/f/foo/foo_1.0-1_arm64.deb
Size: 1
SHA256: 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
";

    #[test]
    fn stanzas_parse_and_other_architectures_are_dropped() {
        let pkgs = parse_packages(PACKAGES, "bookworm", 0, "test").unwrap();
        assert_eq!(pkgs.len(), 1);
        let p = &pkgs[0];
        assert_eq!((p.name.as_str(), p.version.as_str()), ("foo", "1.0-1"));
        assert_eq!(p.multi_arch, MultiArch::Allowed);
        assert!(p.essential);
        assert_eq!(p.depends.len(), 2);
        assert_eq!(p.depends[1].len(), 2);
        assert_eq!(p.pre_depends[0][0].name, "init-system-helpers");
        assert_eq!(p.provides[0].version.as_ref().unwrap().as_str(), "1.0");
        assert_eq!(p.provides[1].version, None);
        assert_eq!(p.size, 1234);
    }

    #[test]
    fn a_broken_stanza_names_where_it_is() {
        let text = PACKAGES.replace("Size: 1234\n", "");
        let err = parse_packages(&text, "bookworm", 0, "Packages of bookworm")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "Packages of bookworm, stanza at line 1: missing field Size"
        );
    }
}
