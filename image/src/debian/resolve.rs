//! Dependency closure without apt: from the image's package list to the exact set of packages
//! to install, over `Pre-Depends` and `Depends` (Recommends are ignored), with alternatives,
//! version constraints, versioned virtual packages and `:any` qualifiers.
//!
//! Choices are deterministic and greedy (no backtracking): a group already satisfied by a
//! chosen package needs nothing; otherwise the first alternative that can be satisfied wins,
//! a real package before a provider, and among versions the highest, then the one from the
//! highest-ranked suite. Essential packages are not added by themselves: the image is not a
//! full Debian system, and the caller's list decides. Conflicts and Breaks are not checked.

use std::collections::{BTreeMap, HashSet, VecDeque};

use super::error::{Error, Result};
use super::index::{Archive, MultiArch, Package, ARCH};
use super::relation::{display_group, parse_relation, Relation};

/// One package chosen for the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub suite: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    /// How it came in: `docker.io → containerd (>= 1.6)`.
    pub why: String,
}

/// The packages to install, sorted by name, and the suites they may come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub suites: Vec<String>,
    pub packages: Vec<Resolved>,
}

/// The chosen packages so far, and how each came in.
struct State<'a> {
    archive: &'a Archive,
    exclude: HashSet<&'a str>,
    chosen: BTreeMap<&'a str, (&'a Package, Vec<String>)>,
    queue: VecDeque<&'a Package>,
}

/// Resolves `wanted` (package names, optionally with a constraint: `foo (>= 1.0)`) to the
/// full set of packages, never choosing a package named in `exclude` (dependencies on those
/// count as satisfied: Kiln does their job).
pub fn resolve(archive: &Archive, wanted: &[String], exclude: &[String]) -> Result<Resolution> {
    let mut state = State {
        archive,
        exclude: exclude.iter().map(String::as_str).collect(),
        chosen: BTreeMap::new(),
        queue: VecDeque::new(),
    };
    for want in wanted {
        let relation = parse_relation(want).map_err(|reason| Error::Resolve {
            chain: want.clone(),
            reason,
            hint: "write a package name, optionally with a version: `name (>= 1.0)`".to_string(),
        })?;
        if state.exclude.contains(relation.name.as_str()) {
            return Err(Error::Resolve {
                chain: want.clone(),
                reason: "it is also in the exclude list".to_string(),
                hint: "remove it from one of the two lists".to_string(),
            });
        }
        state.satisfy(std::slice::from_ref(&relation), &[])?;
    }
    while let Some(package) = state.queue.pop_front() {
        let chain = state.chosen[package.name.as_str()].1.clone();
        for group in package.pre_depends.iter().chain(&package.depends) {
            state.satisfy(group, &chain)?;
        }
    }
    Ok(Resolution {
        suites: archive.mirrors.iter().map(|m| m.suite.clone()).collect(),
        packages: state
            .chosen
            .values()
            .map(|(p, chain)| Resolved {
                name: p.name.clone(),
                version: p.version.to_string(),
                arch: p.arch.clone(),
                suite: p.suite.clone(),
                filename: p.filename.clone(),
                size: p.size,
                sha256: p.sha256.clone(),
                why: chain.join(" → "),
            })
            .collect(),
    })
}

impl<'a> State<'a> {
    /// Makes sure one group of alternatives is satisfied, choosing a package if needed.
    /// `chain` is how the package that has this dependency came in.
    fn satisfy(&mut self, group: &[Relation], chain: &[String]) -> Result<()> {
        if group.iter().any(|r| self.already_satisfied(r)) {
            return Ok(());
        }
        let mut reasons = Vec::new();
        for relation in group {
            match self.candidate(relation) {
                Ok(package) => {
                    let mut new_chain = chain.to_vec();
                    new_chain.push(display_group(group));
                    self.chosen.insert(&package.name, (package, new_chain));
                    self.queue.push_back(package);
                    return Ok(());
                }
                Err(reason) => reasons.push(reason),
            }
        }
        let mut full_chain = chain.to_vec();
        full_chain.push(display_group(group));
        Err(Error::Resolve {
            chain: full_chain.join(" → "),
            reason: reasons.join("; "),
            hint: "check the package name and version in image.toml, add the suite that has it, \
                   or exclude the package that needs it"
                .to_string(),
        })
    }

    /// Whether a chosen (or excluded) package already satisfies `relation`.
    fn already_satisfied(&self, relation: &Relation) -> bool {
        if self.exclude.contains(relation.name.as_str()) {
            return true;
        }
        if let Some((p, _)) = self.chosen.get(relation.name.as_str()) {
            if matches_real(p, relation) {
                return true;
            }
        }
        self.archive
            .providers(&relation.name)
            .any(|p| self.is_chosen(p) && matches_provide(p, relation))
    }

    fn is_chosen(&self, p: &Package) -> bool {
        self.chosen
            .get(p.name.as_str())
            .is_some_and(|(c, _)| std::ptr::eq(*c, p))
    }

    /// The package to choose for `relation`, or why there is none.
    fn candidate(&self, relation: &Relation) -> Result<&'a Package, String> {
        let real: Vec<&Package> = self.archive.named(&relation.name).collect();
        if let Some(best) = best(real.iter().copied().filter(|p| matches_real(p, relation))) {
            if let Some((chosen, why)) = self.chosen.get(best.name.as_str()) {
                return Err(format!(
                    "{} {} is already chosen (for {}) and does not satisfy {relation}",
                    chosen.name,
                    chosen.version,
                    why.join(" → ")
                ));
            }
            return Ok(best);
        }
        let providers = self
            .archive
            .providers(&relation.name)
            .filter(|p| matches_provide(p, relation))
            .filter(|p| !self.exclude.contains(p.name.as_str()))
            .filter(|p| !self.chosen.contains_key(p.name.as_str()));
        if let Some(p) = best_provider(providers) {
            return Ok(p);
        }
        Err(
            if real.is_empty() && self.archive.providers(&relation.name).next().is_none() {
                format!(
                    "no package named {:?} in suites {} (and none provides it)",
                    relation.name,
                    self.suites()
                )
            } else {
                let available: Vec<String> = real
                    .iter()
                    .map(|p| format!("{} {} ({})", p.name, p.version, p.suite))
                    .chain(
                        self.archive
                            .providers(&relation.name)
                            .map(|p| format!("{} {} provides it ({})", p.name, p.version, p.suite)),
                    )
                    .collect();
                format!(
                    "no package satisfies {relation}: available {}",
                    available.join(", ")
                )
            },
        )
    }

    fn suites(&self) -> String {
        self.archive
            .mirrors
            .iter()
            .map(|m| m.suite.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Whether the real package `p` satisfies `relation` (name, version, architecture).
fn matches_real(p: &Package, relation: &Relation) -> bool {
    p.name == relation.name
        && arch_ok(p, relation)
        && relation
            .constraint
            .as_ref()
            .is_none_or(|(op, v)| op.holds(&p.version, v))
}

/// Whether `p`'s Provides satisfies `relation`. A versioned dependency is only satisfied by a
/// versioned provide (Policy §7.5).
fn matches_provide(p: &Package, relation: &Relation) -> bool {
    arch_ok(p, relation)
        && p.provides.iter().any(|prov| {
            prov.name == relation.name
                && match (&relation.constraint, &prov.version) {
                    (None, _) => true,
                    (Some((op, want)), Some(have)) => op.holds(have, want),
                    (Some(_), None) => false,
                }
        })
}

/// The architecture qualifier rule of the multiarch spec, on a single-architecture system:
/// `:any` only matches `Multi-Arch: allowed` packages; `:native` and `:amd64` match ours.
fn arch_ok(p: &Package, relation: &Relation) -> bool {
    match relation.arch.as_deref() {
        None | Some("native") => true,
        Some("any") => p.multi_arch == MultiArch::Allowed,
        Some(a) => a == ARCH && p.arch == ARCH,
    }
}

/// The highest version, then the highest-ranked suite.
fn best<'a>(candidates: impl Iterator<Item = &'a Package>) -> Option<&'a Package> {
    candidates.max_by(|a, b| {
        a.version
            .cmp(&b.version)
            .then(a.suite_rank.cmp(&b.suite_rank))
    })
}

/// Among providers: the most important `Priority`, then the first name, then [`best`].
fn best_provider<'a>(candidates: impl Iterator<Item = &'a Package>) -> Option<&'a Package> {
    let mut by_name: BTreeMap<(usize, &str), Vec<&Package>> = BTreeMap::new();
    for p in candidates {
        by_name
            .entry((priority_rank(&p.priority), &p.name))
            .or_default()
            .push(p);
    }
    by_name
        .into_values()
        .next()
        .and_then(|v| best(v.into_iter()))
}

fn priority_rank(priority: &str) -> usize {
    match priority {
        "required" => 0,
        "important" => 1,
        "standard" => 2,
        "optional" => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debian::sources::Mirror;

    fn stanza(name: &str, version: &str, extra: &str) -> String {
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: amd64\n{extra}\
             Filename: pool/{name}_{version}.deb\nSize: 10\nSHA256: {}\n\n",
            "ab".repeat(32)
        )
    }

    /// A base suite and a security suite, shaped like bookworm's dbus and containerd.
    fn archive() -> Archive {
        let base = [
            stanza(
                "docker.io",
                "20.10.24",
                "Depends: containerd (>= 1.6), runc (>= 1.0) | crun, iptables\n",
            ),
            stanza("containerd", "1.6.20~ds1-1", "Depends: libc6 (>= 2.34)\n"),
            stanza("runc", "1.1.5", "Depends: libc6\n"),
            stanza("libc6", "2.36-9", ""),
            stanza("iptables", "1.8.9", "Depends: libxtables12 (= 1.8.9)\n"),
            stanza("libxtables12", "1.8.9", ""),
            stanza(
                "dbus",
                "1.14.6-1",
                "Depends: default-dbus-system-bus | dbus-system-bus, dbus-bin\n",
            ),
            stanza("any-foreign", "1", "Depends: dbus-bin:any\n"),
            stanza(
                "dbus-daemon",
                "1.14.6-1",
                "Priority: standard\nProvides: dbus-system-bus\n",
            ),
            stanza(
                "dbus-broker",
                "33-1",
                "Priority: optional\nProvides: dbus-system-bus\n",
            ),
            stanza("dbus-bin", "1.14.6-1", "Multi-Arch: foreign\n"),
            stanza("needs-new", "1", "Depends: containerd (>= 9)\n"),
            stanza("needs-virtual-version", "1", "Depends: awk (>= 2)\n"),
            stanza("mawk", "1.3.4", "Provides: awk\n"),
            stanza("uses-any", "1", "Depends: python3:any\n"),
            stanza("python3", "3.11.2-1", "Multi-Arch: allowed\n"),
            stanza("wants-systemd", "1", "Depends: systemd\n"),
            stanza("systemd", "252.17-1", "Depends: libc6\n"),
        ]
        .concat();
        let security = [
            stanza("libc6", "2.36-9+deb12u4", ""),
            stanza("systemd", "252.17-1", "Depends: libc6\n"),
        ]
        .concat();
        Archive::from_indices(&[
            (
                Mirror::new("http://mirror.invalid/debian", "bookworm"),
                base,
            ),
            (
                Mirror::new("http://mirror.invalid/debian-security", "bookworm-security"),
                security,
            ),
        ])
        .unwrap()
    }

    fn names(r: &Resolution) -> Vec<String> {
        r.packages
            .iter()
            .map(|p| format!("{}={}@{}", p.name, p.version, p.suite))
            .collect()
    }

    fn wants(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn closure_takes_first_alternative_and_newest_version() {
        let a = archive();
        let r = resolve(&a, &wants(&["docker.io"]), &[]).unwrap();
        assert_eq!(
            names(&r),
            [
                "containerd=1.6.20~ds1-1@bookworm",
                "docker.io=20.10.24@bookworm",
                "iptables=1.8.9@bookworm",
                "libc6=2.36-9+deb12u4@bookworm-security",
                "libxtables12=1.8.9@bookworm",
                "runc=1.1.5@bookworm",
            ]
        );
        let libc = r.packages.iter().find(|p| p.name == "libc6").unwrap();
        assert_eq!(
            libc.why,
            "docker.io → containerd (>= 1.6) → libc6 (>= 2.34)"
        );
        assert_eq!(r.suites, ["bookworm", "bookworm-security"]);
    }

    #[test]
    fn same_version_prefers_the_higher_suite() {
        let r = resolve(&archive(), &wants(&["wants-systemd"]), &[]).unwrap();
        assert!(
            names(&r).contains(&"systemd=252.17-1@bookworm-security".to_string()),
            "{r:?}"
        );
    }

    #[test]
    fn virtual_packages_pick_one_provider_and_any_needs_multi_arch_allowed() {
        let a = archive();
        let r = resolve(&a, &wants(&["dbus-broker", "dbus"]), &[]).unwrap();
        // dbus-broker, already chosen, provides dbus-system-bus: no second provider comes in.
        assert!(
            !names(&r).iter().any(|n| n.starts_with("dbus-daemon")),
            "{r:?}"
        );
        // dbus-bin is Multi-Arch: foreign, so `dbus-bin:any` cannot be satisfied by it.
        let err = resolve(&a, &wants(&["any-foreign"]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("any-foreign → dbus-bin:any: no package satisfies dbus-bin:any"),
            "{err}"
        );
        let r = resolve(&a, &wants(&["dbus"]), &[]).unwrap();
        assert!(
            names(&r).contains(&"dbus-daemon=1.14.6-1@bookworm".to_string()),
            "{r:?}"
        );
        let r = resolve(&a, &wants(&["uses-any"]), &[]).unwrap();
        assert_eq!(r.packages.len(), 2);
        // Unversioned Provides never satisfy a versioned dependency.
        let err = resolve(&a, &wants(&["needs-virtual-version"]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no package satisfies awk (>= 2): available mawk 1.3.4 provides it"),
            "{err}"
        );
    }

    #[test]
    fn excluded_packages_are_never_chosen() {
        let a = archive();
        let r = resolve(&a, &wants(&["docker.io"]), &wants(&["iptables", "libc6"])).unwrap();
        assert_eq!(names(&r).len(), 3, "{r:?}");
        let err = resolve(&a, &wants(&["iptables"]), &wants(&["iptables"])).unwrap_err();
        assert!(
            err.to_string().contains("also in the exclude list"),
            "{err}"
        );
    }

    #[test]
    fn unknown_package_error_prints_the_chain() {
        let err = resolve(&archive(), &wants(&["docker.io", "no-such-thing"]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "image.toml wants no-such-thing: no package named \"no-such-thing\" in suites bookworm, bookworm-security (and none provides it); check the package name"
            ),
            "{err}"
        );
    }

    #[test]
    fn unsatisfiable_constraint_error_prints_the_chain_and_what_exists() {
        let err = resolve(&archive(), &wants(&["needs-new"]), &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "image.toml wants needs-new → containerd (>= 9): no package satisfies containerd (>= 9): \
             available containerd 1.6.20~ds1-1 (bookworm); check the package name and version in \
             image.toml, add the suite that has it, or exclude the package that needs it"
        );
        // A constraint that the already chosen version cannot meet.
        let err = resolve(
            &archive(),
            &wants(&["libc6 (<< 2.36-9+deb12u1)", "libc6 (>= 2.36-9+deb12u1)"]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("libc6 2.36-9 is already chosen"), "{err}");
    }
}
