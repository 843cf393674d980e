//! Debian version numbers (`[epoch:]upstream[-revision]`) and their ordering, as dpkg defines it
//! (Debian Policy §5.6.12): epochs compare as numbers, then the upstream part and the revision
//! each compare as alternating non-digit and digit runs, where `~` sorts before everything (even
//! the end of the string) and letters sort before other characters.

use std::cmp::Ordering;
use std::fmt;

/// A parsed version. Equality and ordering follow dpkg, so `1.0` and `0:1.0` are equal.
#[derive(Clone, Debug)]
pub struct Version {
    epoch: u64,
    upstream: String,
    revision: String,
    text: String,
}

impl Version {
    /// Parses a version string. Only what would make comparison meaningless is refused (an empty
    /// upstream part, a non-numeric epoch); dpkg's stricter character checks are not needed to
    /// order versions that come from a signed archive.
    pub fn parse(text: &str) -> Result<Version, String> {
        let text = text.trim();
        let (epoch, rest) = match text.split_once(':') {
            Some((e, rest)) => {
                let epoch = e
                    .parse::<u64>()
                    .map_err(|_| format!("version {text:?} has a non-numeric epoch {e:?}"))?;
                (epoch, rest)
            }
            None => (0, text),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((u, r)) => (u, r),
            None => (rest, ""),
        };
        if upstream.is_empty() {
            return Err(format!("version {text:?} has an empty upstream part"));
        }
        if text.chars().any(char::is_whitespace) {
            return Err(format!("version {text:?} contains white space"));
        }
        Ok(Version {
            epoch,
            upstream: upstream.to_string(),
            revision: revision.to_string(),
            text: text.to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| compare_part(&self.upstream, &other.upstream))
            .then_with(|| compare_part(&self.revision, &other.revision))
    }
}

/// The weight of one character in a non-digit run; `None` is the end of the run.
fn weight(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// Compares an upstream part or a revision the dpkg way.
fn compare_part(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        // A non-digit run, compared character by character with the weights above.
        loop {
            let (ca, cb) = (a.first().copied(), b.first().copied());
            let a_done = ca.is_none_or(|c| c.is_ascii_digit());
            let b_done = cb.is_none_or(|c| c.is_ascii_digit());
            if a_done && b_done {
                break;
            }
            let (wa, wb) = (
                weight(if a_done { None } else { ca }),
                weight(if b_done { None } else { cb }),
            );
            if wa != wb {
                return wa.cmp(&wb);
            }
            if !a_done {
                a = &a[1..];
            }
            if !b_done {
                b = &b[1..];
            }
        }
        // A digit run, compared as a number of any length (leading zeros ignored).
        let (da, rest_a) = split_digits(a);
        let (db, rest_b) = split_digits(b);
        let order = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
        if order != Ordering::Equal {
            return order;
        }
        a = rest_a;
        b = rest_b;
    }
    Ordering::Equal
}

/// The leading digits without leading zeros, and what follows them.
fn split_digits(s: &[u8]) -> (&[u8], &[u8]) {
    let end = s
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(s.len());
    let digits = &s[..end];
    let first_nonzero = digits
        .iter()
        .position(|&c| c != b'0')
        .unwrap_or(digits.len());
    (&digits[first_nonzero..], &s[end..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Pairs chosen to hit every rule: epochs, tildes before the end, letters before symbols,
    /// leading zeros, revisions, and real bookworm versions.
    const CASES: &[(&str, &str)] = &[
        ("1.0", "1.0"),
        ("1.0", "0:1.0"),
        ("1.0", "1.1"),
        ("1.0~rc1", "1.0"),
        ("1.0~~", "1.0~"),
        ("1.0~", "1.0"),
        ("1.0", "1.0a"),
        ("1.0a", "1.0+"),
        ("1.0+dfsg", "1.0"),
        ("1.0+dfsg-1", "1.0-1"),
        ("1:0.1", "9.9"),
        ("2:1.0", "10:0.1"),
        ("1.01", "1.1"),
        ("1.002", "1.10"),
        ("1.0-1", "1.0-1.1"),
        ("1.0-1", "1.0-1+deb12u1"),
        ("1.0-1+b1", "1.0-1+deb12u1"),
        ("252.22-1~deb12u1", "252.30-1~deb12u2"),
        ("6.1.0-18", "6.1.0-9"),
        ("20.10.24+dfsg1-1", "20.10.24+dfsg1-1+b3"),
        ("1.6.20~ds1-1", "1.6.20~ds1-1+b1"),
        ("3.4.23-1", "3.4.23-1+b5"),
        ("1:2.38.1-5", "1:2.38.1-5+deb12u1"),
        ("a", "b"),
        ("1.0.", "1.0"),
        ("0.0-0", "0"),
        ("1-2-3", "1-2"),
        ("1.2.3~beta", "1.2.3~alpha"),
        ("9", "10"),
        ("1.a", "1.+"),
    ];

    #[test]
    fn ordering_matches_dpkg_compare_versions() {
        let dpkg = crate::testutil::require_tool("dpkg", "dpkg");
        for (a, b) in CASES {
            let ours = Version::parse(a).unwrap().cmp(&Version::parse(b).unwrap());
            for (op, expected) in [
                ("lt", Ordering::Less),
                ("eq", Ordering::Equal),
                ("gt", Ordering::Greater),
            ] {
                let status = Command::new(&dpkg)
                    .args(["--compare-versions", a, op, b])
                    .status()
                    .unwrap();
                assert_eq!(
                    status.success(),
                    ours == expected,
                    "{a} {op} {b}: dpkg says {}, we say {ours:?}",
                    status.success()
                );
            }
        }
    }

    #[test]
    fn bad_versions_are_refused() {
        assert!(Version::parse("x:1.0").unwrap_err().contains("epoch"));
        assert!(Version::parse("1:-1")
            .unwrap_err()
            .contains("empty upstream"));
        assert!(Version::parse("").is_err());
    }
}
