//! `packages.lock`: the exact packages of the image, one line each, sorted by name, so that a
//! change of the package set reads as a small diff. The build installs exactly these files;
//! `cargo xtask lock` writes it anew from a fresh resolution. Mirror host names are never
//! written: a package is found by its suite's mirror from the host's sources and its
//! `Filename`, and trusted by its SHA-256.

use std::collections::BTreeSet;
use std::path::Path;

use super::error::{io_err, Error, Result};
use super::resolve::Resolution;

const MAGIC: &str = "# kiln packages.lock v1";

/// One locked package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub suite: String,
    pub size: u64,
    pub sha256: String,
    /// Path of the .deb below its suite's mirror.
    pub filename: String,
}

/// The whole lock: the suites packages come from and the packages, sorted by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    pub suites: Vec<String>,
    pub packages: Vec<LockedPackage>,
}

impl Lock {
    /// The lock of a resolution.
    pub fn from_resolution(resolution: &Resolution) -> Lock {
        let mut packages: Vec<LockedPackage> = resolution
            .packages
            .iter()
            .map(|p| LockedPackage {
                name: p.name.clone(),
                version: p.version.clone(),
                arch: p.arch.clone(),
                suite: p.suite.clone(),
                size: p.size,
                sha256: p.sha256.clone(),
                filename: p.filename.clone(),
            })
            .collect();
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        Lock {
            suites: resolution.suites.clone(),
            packages,
        }
    }

    /// The file's text: a header, the suites, then `name version arch suite size sha256
    /// filename` per line (fields never contain spaces in a Debian archive).
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "{MAGIC}: exact Debian packages of the image, written by `cargo xtask lock`; do not edit.\n\
             # name version arch suite size sha256 filename\n\
             suites {}\n",
            self.suites.join(" ")
        );
        for p in &self.packages {
            out.push_str(&format!(
                "{} {} {} {} {} {} {}\n",
                p.name, p.version, p.arch, p.suite, p.size, p.sha256, p.filename
            ));
        }
        out
    }

    /// Writes the lock atomically (temp file, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("lock.tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.to_text().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(io_err(format!("writing {}", path.display())))
    }

    /// Reads and checks a lock file.
    pub fn read(path: &Path) -> Result<Lock> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Lock {
            path: path.to_path_buf(),
            line: 0,
            reason: format!("cannot read it: {e}"),
        })?;
        Lock::parse(&text, path)
    }

    /// Parses lock text; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Lock> {
        let err = |line: usize, reason: String| Error::Lock {
            path: path.to_path_buf(),
            line,
            reason,
        };
        if !text.starts_with(MAGIC) {
            return Err(err(1, format!("it does not start with {MAGIC:?}")));
        }
        let mut suites: Option<Vec<String>> = None;
        let mut packages = Vec::new();
        let mut names = BTreeSet::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            if words[0] == "suites" {
                suites = Some(words[1..].iter().map(|s| s.to_string()).collect());
                continue;
            }
            let Some(suites) = &suites else {
                return Err(err(
                    line_no,
                    "package line before the `suites` line".to_string(),
                ));
            };
            let package = parse_package(&words).map_err(|r| err(line_no, r))?;
            if !suites.contains(&package.suite) {
                return Err(err(
                    line_no,
                    format!("suite {} is not in the suites line", package.suite),
                ));
            }
            if !names.insert(package.name.clone()) {
                return Err(err(
                    line_no,
                    format!("package {} is listed twice", package.name),
                ));
            }
            packages.push(package);
        }
        let suites = suites.ok_or_else(|| err(1, "it has no `suites` line".to_string()))?;
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Lock { suites, packages })
    }
}

fn parse_package(words: &[&str]) -> Result<LockedPackage, String> {
    let [name, version, arch, suite, size, sha256, filename] = words else {
        return Err(format!(
            "expected 7 fields (name version arch suite size sha256 filename), found {}",
            words.len()
        ));
    };
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(format!("{name}: bad SHA-256 {sha256:?}"));
    }
    if filename.starts_with('/') || filename.split('/').any(|c| c == "..") {
        return Err(format!("{name}: filename {filename:?} leaves the mirror"));
    }
    Ok(LockedPackage {
        name: name.to_string(),
        version: version.to_string(),
        arch: arch.to_string(),
        suite: suite.to_string(),
        size: size
            .parse()
            .map_err(|_| format!("{name}: bad size {size:?}"))?,
        sha256: sha256.to_string(),
        filename: filename.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debian::resolve::Resolved;

    fn resolution() -> Resolution {
        let p = |name: &str, suite: &str| Resolved {
            name: name.to_string(),
            version: "1.0-1+deb12u1".to_string(),
            arch: "amd64".to_string(),
            suite: suite.to_string(),
            filename: format!("pool/main/{name}_1.0_amd64.deb"),
            size: 42,
            sha256: "0f".repeat(32),
            why: "x".to_string(),
        };
        Resolution {
            suites: vec!["bookworm".into(), "bookworm-security".into()],
            packages: vec![
                p("zlib1g", "bookworm"),
                p("base-files", "bookworm-security"),
            ],
        }
    }

    #[test]
    fn lock_round_trips_sorted() {
        let lock = Lock::from_resolution(&resolution());
        let text = lock.to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], "suites bookworm bookworm-security");
        assert!(lines[3].starts_with("base-files 1.0-1+deb12u1 amd64 bookworm-security 42 0f0f"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("packages.lock");
        lock.write(&path).unwrap();
        assert_eq!(Lock::read(&path).unwrap(), lock);
    }

    #[test]
    fn bad_lines_name_file_line_and_the_fix() {
        let text = Lock::from_resolution(&resolution()).to_text();
        let p = Path::new("packages.lock");
        let err = Lock::parse(&text.replace(" 42 ", " 4x2 "), p)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "packages.lock:4: base-files: bad size \"4x2\"; run `cargo xtask lock` to write it anew");
        let err = Lock::parse(&text.replace("zlib1g", "base-files"), p)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":5: package base-files is listed twice"),
            "{err}"
        );
        let err = Lock::parse(&text.replace("pool/main/zlib1g", "../x"), p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("leaves the mirror"), "{err}");
        let err = Lock::parse("hello\n", p).unwrap_err().to_string();
        assert!(
            err.starts_with("packages.lock:1: it does not start with"),
            "{err}"
        );
    }
}
