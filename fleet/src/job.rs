//! A unit's scheduling requirements: its `[X-Fleet]` section read with fleet's semantics, and
//! the glob matching `Conflicts=` and `Replaces=` use.
//!
//! How a value is read:
//! - a value that both starts and ends with `"` holds several quoted values separated by
//!   spaces (`MachineMetadata="region=eu" "disk=ssd"`); any other value is one value;
//! - in every value `%n` (full name), `%N` (name without suffix), `%p` (prefix) and `%i`
//!   (instance, empty when there is none) are replaced from the unit's name, in that order;
//! - the old spellings `X-ConditionMachineID`, `X-ConditionMachineBootID`,
//!   `X-ConditionMachineOf`, `X-ConditionMachineMetadata` and `X-Conflicts` still count (with a
//!   warning); any other unknown option is ignored with a warning naming it.
//!
//! What each option means is documented on the fields of [`Requirements`].

use std::collections::{BTreeMap, BTreeSet};

use crate::name::UnitName;
use crate::unit::UnitFile;

/// The section fleet reads.
pub const SECTION: &str = "X-Fleet";

/// Where and how a unit may be scheduled, from its `[X-Fleet]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// `MachineID=`: the only machine the unit may run on, by full ID or by the 8-character
    /// short ID. The first value counts; `X-ConditionMachineID=` and then
    /// `X-ConditionMachineBootID=` are read when there is no `MachineID=`.
    pub machine_id: Option<String>,
    /// `MachineOf=`: exact unit names (not globs) that must already be scheduled on a machine
    /// for this unit to go there. Every value of every line counts.
    pub machine_of: Vec<String>,
    /// `MachineMetadata=`: `key=value` pairs gathered into key → allowed values. A machine
    /// qualifies when it has every key, each with one of the key's values. Pairs without exactly
    /// one `=`, or with an empty side, are ignored (with a warning).
    pub metadata: BTreeMap<String, BTreeSet<String>>,
    /// `Conflicts=`: globs, whitespace-separated, from every line. Two units conflict when
    /// either one's patterns match the other's name; they never share a machine.
    pub conflicts: Vec<String>,
    /// `Global=`: the last value decides; `true`, `yes`, `1`, `on` and `t` (any case) mean yes.
    /// A global unit is not scheduled: every machine whose metadata matches runs it, unless it
    /// conflicts with what that machine runs.
    pub global: bool,
    /// `Replaces=`: globs, one per value (not split at blanks). When this unit and a unit it
    /// replaces meet on a machine, the replaced unit moves to another machine.
    pub replaces: Vec<String>,
}

/// A combination of `[X-Fleet]` options that can never be satisfied or is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Two options that fleet does not allow together.
    #[error("[X-Fleet] {first}= cannot be used together with {second}=: {advice}")]
    Incompatible {
        /// The first option.
        first: &'static str,
        /// The option it cannot accompany.
        second: &'static str,
        /// What to do instead.
        advice: &'static str,
    },
    /// A `MachineOf=` unit that the unit's own `Conflicts=` or `Replaces=` also names.
    #[error("[X-Fleet] MachineOf={peer} is also matched by {option}={pattern}: the unit must share a machine with {peer} and avoid it at once; remove one of the two")]
    PeerExcluded {
        /// The `MachineOf=` unit.
        peer: String,
        /// `Conflicts` or `Replaces`.
        option: &'static str,
        /// The matching pattern.
        pattern: String,
    },
    /// `MachineOf=` naming the unit itself.
    #[error(
        "[X-Fleet] MachineOf={0} names the unit itself: it could never be placed; remove the line"
    )]
    PeerIsSelf(String),
    /// `MachineID=` with an empty value.
    #[error("[X-Fleet] MachineID= is empty: give a machine ID (see fleetctl list-machines) or remove the line")]
    EmptyMachineId,
}

/// Truthy spellings of `Global=`.
fn truthy(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "true" | "yes" | "1" | "on" | "t"
    )
}

/// Splits a value into its quoted values when it starts and ends with `"`: quotes toggle
/// quoting and are dropped, a space outside quotes ends a value. Otherwise the value is whole.
pub fn split_quoted(line: &str) -> Vec<String> {
    if !(line.starts_with('"') && line.ends_with('"')) {
        return vec![line.to_string()];
    }
    let mut values = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => values.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    values.push(current);
    values
}

/// Replaces `%n %N %p %i` in `value` from `name`, one specifier after the other.
pub fn expand_specifiers(value: &str, name: &UnitName) -> String {
    if !value.contains('%') {
        return value.to_string();
    }
    value
        .replace("%n", name.as_str())
        .replace("%N", name.stem())
        .replace("%p", name.prefix())
        .replace("%i", name.instance().unwrap_or(""))
}

impl Requirements {
    /// Reads the `[X-Fleet]` section of `unit`, submitted as `name`, into requirements and
    /// warnings (unknown options, deprecated spellings, ignored metadata pairs, patterns that
    /// can match nothing). Combinations fleet refuses are errors:
    /// `MachineID` with `MachineOf`, `Conflicts`, `Global` or `Replaces`; `Global` with
    /// `MachineOf` or `Replaces`; `Conflicts` with `Replaces`; a `MachineOf` unit that the
    /// unit's own `Conflicts` or `Replaces` matches.
    pub fn from_unit(
        name: &UnitName,
        unit: &UnitFile,
    ) -> Result<(Requirements, Vec<String>), JobError> {
        let mut req = Requirements::default();
        let mut warnings = Vec::new();
        let mut machine_ids: Vec<String> = Vec::new();
        let mut condition_ids: Vec<String> = Vec::new();
        let mut boot_ids: Vec<String> = Vec::new();
        let mut global_values: Vec<String> = Vec::new();

        for option in unit.section(SECTION) {
            let values: Vec<String> = split_quoted(&option.value)
                .iter()
                .map(|v| expand_specifiers(v, name))
                .collect();
            let key = option.name.as_str();
            let modern = match key {
                "X-ConditionMachineID" => Some("MachineID"),
                "X-ConditionMachineBootID" => Some("MachineID"),
                "X-ConditionMachineOf" => Some("MachineOf"),
                "X-ConditionMachineMetadata" => Some("MachineMetadata"),
                "X-Conflicts" => Some("Conflicts"),
                _ => None,
            };
            if let Some(modern) = modern {
                warnings.push(format!("[X-Fleet] {key}= is deprecated; use {modern}="));
            }
            match key {
                "MachineID" => machine_ids.extend(values),
                "X-ConditionMachineID" => condition_ids.extend(values),
                "X-ConditionMachineBootID" => boot_ids.extend(values),
                "MachineOf" | "X-ConditionMachineOf" => req.machine_of.extend(values),
                "MachineMetadata" | "X-ConditionMachineMetadata" => {
                    for pair in values {
                        match pair.split_once('=') {
                            Some((k, v)) if !k.is_empty() && !v.is_empty() && !v.contains('=') => {
                                req.metadata.entry(k.to_string()).or_default().insert(v.to_string());
                            }
                            _ => warnings.push(format!(
                                "[X-Fleet] {key}={pair:?} ignored: expected key=value with both sides non-empty"
                            )),
                        }
                    }
                }
                "Conflicts" | "X-Conflicts" => {
                    for value in &values {
                        req.conflicts
                            .extend(value.split_whitespace().map(str::to_string));
                    }
                }
                "Global" => global_values.extend(values),
                "Replaces" => {
                    for value in values {
                        if value.chars().any(char::is_whitespace) {
                            warnings.push(format!(
                                "[X-Fleet] Replaces={value:?} is one pattern with blanks in it and matches no unit; \
                                 put each unit on its own Replaces= line"
                            ));
                        }
                        req.replaces.push(value);
                    }
                }
                other => warnings.push(format!("[X-Fleet] unknown option {other}= ignored")),
            }
        }

        for (option, patterns) in [("Conflicts", &req.conflicts), ("Replaces", &req.replaces)] {
            for pattern in patterns.iter().filter(|p| !valid_pattern(p)) {
                warnings.push(format!(
                    "[X-Fleet] {option}={pattern} is not a valid pattern and matches no unit"
                ));
            }
        }

        // The first value wins, MachineID before the old spellings.
        let chosen = [machine_ids, condition_ids, boot_ids]
            .into_iter()
            .find_map(|ids| ids.into_iter().next());
        if let Some(id) = chosen {
            if id.is_empty() {
                return Err(JobError::EmptyMachineId);
            }
            req.machine_id = Some(id);
        }
        req.global = global_values.last().is_some_and(|v| truthy(v));

        if req.machine_of.iter().any(|peer| peer == name.as_str()) {
            return Err(JobError::PeerIsSelf(name.to_string()));
        }
        req.check()?;
        Ok((req, warnings))
    }

    /// Refuses the combinations fleet refuses, and `MachineOf` units excluded by the unit's
    /// own patterns or naming itself. Called by [`from_unit`](Self::from_unit).
    fn check(&self) -> Result<(), JobError> {
        let has_id = self.machine_id.is_some();
        let has_peers = !self.machine_of.is_empty();
        let has_conflicts = !self.conflicts.is_empty();
        let has_replaces = !self.replaces.is_empty();
        for peer in &self.machine_of {
            for (option, patterns) in [("Conflicts", &self.conflicts), ("Replaces", &self.replaces)]
            {
                if let Some(pattern) = patterns.iter().find(|p| glob_match(p, peer)) {
                    return Err(JobError::PeerExcluded {
                        peer: peer.clone(),
                        option,
                        pattern: pattern.clone(),
                    });
                }
            }
        }
        let rules: [(bool, &'static str, &'static str, &'static str); 7] = [
            (
                has_id && has_peers,
                "MachineID",
                "MachineOf",
                "the unit follows its MachineOf unit wherever that goes; pin the MachineOf unit instead",
            ),
            (
                has_id && has_conflicts,
                "MachineID",
                "Conflicts",
                "a pinned unit cannot move away from a conflict; keep only one of them",
            ),
            (
                has_id && self.global,
                "MachineID",
                "Global",
                "a global unit runs on every machine; use MachineMetadata= to narrow it, or drop Global=",
            ),
            (
                has_id && has_replaces,
                "MachineID",
                "Replaces",
                "a pinned unit cannot move away from the unit it replaces; keep only one of them",
            ),
            (
                self.global && has_peers,
                "Global",
                "MachineOf",
                "a global unit runs on every machine; only MachineMetadata= and Conflicts= may narrow it",
            ),
            (
                self.global && has_replaces,
                "Global",
                "Replaces",
                "a global unit runs on every machine and cannot push others off; drop one of them",
            ),
            (
                has_conflicts && has_replaces,
                "Conflicts",
                "Replaces",
                "use Conflicts= to keep units apart, or Replaces= to push one off a machine, not both",
            ),
        ];
        match rules.into_iter().find(|rule| rule.0) {
            Some((_, first, second, advice)) => Err(JobError::Incompatible {
                first,
                second,
                advice,
            }),
            None => Ok(()),
        }
    }

    /// Whether a machine with `metadata` satisfies `MachineMetadata=`: every key present, each
    /// with one of its allowed values.
    pub fn metadata_matches(&self, metadata: &BTreeMap<String, String>) -> bool {
        self.metadata.iter().all(|(key, allowed)| {
            metadata
                .get(key)
                .is_some_and(|value| allowed.contains(value))
        })
    }

    /// Whether a unit with these requirements named `name` and a unit with `other`'s named
    /// `other_name` may not share a machine: either's `Conflicts=` matches the other's name.
    pub fn conflicts_with(&self, name: &str, other: &Requirements, other_name: &str) -> bool {
        self.conflicts.iter().any(|p| glob_match(p, other_name))
            || other.conflicts.iter().any(|p| glob_match(p, name))
    }

    /// `MachineMetadata=` as text: `disk=ssd and (region=eu or region=us)`.
    pub fn metadata_text(&self) -> String {
        let keys: Vec<String> = self
            .metadata
            .iter()
            .map(|(key, values)| {
                let pairs: Vec<String> = values.iter().map(|v| format!("{key}={v}")).collect();
                if pairs.len() == 1 || self.metadata.len() == 1 {
                    pairs.join(" or ")
                } else {
                    format!("({})", pairs.join(" or "))
                }
            })
            .collect();
        keys.join(" and ")
    }
}

/// One element of a character class, read from a pattern.
enum ClassItem {
    Single(char),
    Range(char, char),
}

/// Reads one class character at the start of `rest` (escaped or plain); `None` when the class
/// is malformed there (`-` or `]` unescaped, a lone `\`, or the end of the pattern).
fn class_char(rest: &str) -> Option<(char, &str)> {
    let mut chars = rest.chars();
    let c = chars.next()?;
    let c = match c {
        '-' | ']' => return None,
        '\\' => chars.next()?,
        c => c,
    };
    let after = chars.as_str();
    // A class must still be closed after this character.
    if after.is_empty() {
        return None;
    }
    Some((c, after))
}

/// Reads a character class after its `[`: whether it is negated, its items, and the pattern
/// after its `]`. `None` when malformed (empty, unclosed, bad range).
fn read_class(rest: &str) -> Option<(bool, Vec<ClassItem>, &str)> {
    let (negated, mut rest) = match rest.strip_prefix('^') {
        Some(after) => (true, after),
        None => (false, rest),
    };
    let mut items = Vec::new();
    loop {
        if let Some(after) = rest.strip_prefix(']') {
            if !items.is_empty() {
                return Some((negated, items, after));
            }
        }
        let (lo, after) = class_char(rest)?;
        rest = after;
        if let Some(after) = rest.strip_prefix('-') {
            let (hi, after) = class_char(after)?;
            items.push(ClassItem::Range(lo, hi));
            rest = after;
        } else {
            items.push(ClassItem::Single(lo));
        }
    }
}

/// Whether `pattern` is well-formed: every `\` escapes something, every class is non-empty,
/// closed, and has no bare `-` or `]`.
fn valid_pattern(pattern: &str) -> bool {
    if !pattern.bytes().any(|b| b == b'[' || b == b'\\') {
        return true;
    }
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match c {
            '\\' => match rest.chars().next() {
                Some(escaped) => rest = &rest[escaped.len_utf8()..],
                None => return false,
            },
            '[' => match read_class(rest) {
                Some((_, _, after)) => rest = after,
                None => return false,
            },
            _ => {}
        }
    }
    true
}

/// Splits a (valid) pattern at its first run of `*`: the part before, whether a star follows,
/// and the pattern after the run. Stars inside classes or escaped do not count.
fn split_at_star(pattern: &str) -> (&str, bool, &str) {
    let mut i = 0;
    let bytes = pattern.as_bytes();
    let mut in_class = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'[' if !in_class => in_class = true,
            b']' if in_class => in_class = false,
            b'*' if !in_class => {
                let after = pattern[i..].trim_start_matches('*');
                return (&pattern[..i], true, after);
            }
            _ => {}
        }
        i += 1;
    }
    (pattern, false, "")
}

/// Matches a star-free pattern piece at the start of `name`; gives what is left of `name`.
fn match_piece<'n>(piece: &str, name: &'n str) -> Option<&'n str> {
    let mut p = piece;
    let mut s = name;
    while let Some(pc) = p.chars().next() {
        p = &p[pc.len_utf8()..];
        let sc = s.chars().next()?;
        let ok = match pc {
            '?' => sc != '/',
            '\\' => {
                let lit = p.chars().next()?;
                p = &p[lit.len_utf8()..];
                sc == lit
            }
            '[' => {
                let (negated, items, after) = read_class(p)?;
                p = after;
                let inside = items.iter().any(|item| match *item {
                    ClassItem::Single(c) => c == sc,
                    ClassItem::Range(lo, hi) => lo <= sc && sc <= hi,
                });
                inside != negated
            }
            lit => lit == sc,
        };
        if !ok {
            return None;
        }
        s = &s[sc.len_utf8()..];
    }
    Some(s)
}

/// Shell-style matching of a unit name, with the rules of fleet's matcher:
/// `*` is any run of characters except `/`, `?` one character except `/`, `[abc]`, `[a-z]`,
/// `[^a-z]` a class (which may match `/`), `\x` the character `x`. A malformed pattern
/// matches nothing.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    // The common shapes, `exact.service` and `prefix*suffix`, without the general walk.
    if !pattern.bytes().any(|b| matches!(b, b'[' | b'\\' | b'?')) {
        match pattern.split_once('*') {
            None => return pattern == name,
            Some((prefix, suffix)) if !suffix.contains('*') => {
                return name.len() >= prefix.len() + suffix.len()
                    && name.starts_with(prefix)
                    && name.ends_with(suffix)
                    && !name[prefix.len()..name.len() - suffix.len()].contains('/');
            }
            Some(_) => {}
        }
    }
    if !valid_pattern(pattern) {
        return false;
    }
    // The pattern is a first piece, then pieces each preceded by a star. A piece after a star
    // is tried at the earliest position the star allows (the star never takes a `/`); the last
    // piece must reach the end of the name.
    let (first, mut star, mut pattern) = split_at_star(pattern);
    let Some(mut name) = match_piece(first, name) else {
        return false;
    };
    if !star {
        return name.is_empty();
    }
    loop {
        let (piece, next_star, rest) = split_at_star(pattern);
        debug_assert!(star);
        let last = !next_star;
        if piece.is_empty() && last {
            // A trailing star takes the rest, if it holds no `/`.
            return !name.contains('/');
        }
        let mut start = name;
        let found = loop {
            if let Some(left) = match_piece(piece, start) {
                if !last || left.is_empty() {
                    break Some(left);
                }
            }
            match start.chars().next() {
                Some(c) if c != '/' => start = &start[c.len_utf8()..],
                _ => break None,
            }
        };
        let Some(left) = found else {
            return false;
        };
        if last {
            return true;
        }
        name = left;
        star = next_star;
        pattern = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reqs(name: &str, xfleet: &str) -> Result<(Requirements, Vec<String>), JobError> {
        let unit = UnitFile::parse(&format!(
            "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\n{xfleet}"
        ))
        .unwrap();
        Requirements::from_unit(&UnitName::parse(name).unwrap(), &unit)
    }

    fn ok(name: &str, xfleet: &str) -> (Requirements, Vec<String>) {
        reqs(name, xfleet).unwrap()
    }

    #[test]
    fn no_section_no_requirements() {
        let (r, w) = ok("a.service", "");
        assert_eq!(r, Requirements::default());
        assert!(w.is_empty());
    }

    #[test]
    fn machine_id_first_value_and_old_spellings() {
        assert_eq!(
            ok("a.service", "MachineID=abc\nMachineID=def\n")
                .0
                .machine_id
                .as_deref(),
            Some("abc")
        );
        assert_eq!(
            ok("a.service", "MachineID=\"abc\" \"def\"\n")
                .0
                .machine_id
                .as_deref(),
            Some("abc")
        );
        let (r, w) = ok("a.service", "X-ConditionMachineID=old\nMachineID=new\n");
        assert_eq!(r.machine_id.as_deref(), Some("new"));
        assert!(
            w[0].contains("X-ConditionMachineID= is deprecated"),
            "{w:?}"
        );
        assert_eq!(
            ok("a.service", "X-ConditionMachineBootID=boot\n")
                .0
                .machine_id
                .as_deref(),
            Some("boot")
        );
        assert_eq!(
            ok(
                "a.service",
                "X-ConditionMachineBootID=boot\nX-ConditionMachineID=cond\n"
            )
            .0
            .machine_id
            .as_deref(),
            Some("cond")
        );
        assert_eq!(
            reqs("a.service", "MachineID=\n").unwrap_err(),
            JobError::EmptyMachineId
        );
    }

    #[test]
    fn machine_of_values_and_specifiers() {
        let (r, _) = ok(
            "web@3.service",
            "MachineOf=db@%i.service\nX-ConditionMachineOf=\"log.service\" \"x.service\"\n",
        );
        assert_eq!(r.machine_of, ["db@3.service", "log.service", "x.service"]);
    }

    #[test]
    fn every_specifier_expands_in_every_value() {
        let (r, _) = ok("web@eu-1.service", "Conflicts=%p@*.service other-%i.service\nMachineMetadata=unit=%n\nMachineOf=db-%N.service\n");
        assert_eq!(r.conflicts, ["web@*.service", "other-eu-1.service"]);
        assert_eq!(
            r.metadata["unit"],
            BTreeSet::from(["web@eu-1.service".to_string()])
        );
        assert_eq!(r.machine_of, ["db-web@eu-1.service"]);
        // A plain unit's %i is empty.
        assert_eq!(
            ok("plain.service", "MachineOf=a%ib.service\n").0.machine_of,
            ["ab.service"]
        );
    }

    #[test]
    fn metadata_pairs_merge_and_bad_pairs_warn() {
        let (r, w) = ok(
            "a.service",
            "MachineMetadata=region=eu\nMachineMetadata=\"region=us\" \"disk=ssd\"\n\
             X-ConditionMachineMetadata=disk=nvme\nMachineMetadata=noequals\nMachineMetadata=a=b=c\nMachineMetadata==x\n",
        );
        assert_eq!(r.metadata.len(), 2);
        assert_eq!(
            r.metadata["region"],
            BTreeSet::from(["eu".to_string(), "us".to_string()])
        );
        assert_eq!(
            r.metadata["disk"],
            BTreeSet::from(["ssd".to_string(), "nvme".to_string()])
        );
        let ignored: Vec<&String> = w.iter().filter(|w| w.contains("ignored")).collect();
        assert_eq!(ignored.len(), 3, "{w:?}");
        assert!(ignored[0].contains("\"noequals\""));
        assert_eq!(
            r.metadata_text(),
            "(disk=nvme or disk=ssd) and (region=eu or region=us)"
        );
    }

    #[test]
    fn metadata_and_across_keys_or_within() {
        let (r, w) = ok(
            "a.service",
            "MachineMetadata=region=eu region=us\nMachineMetadata=disk=ssd\n",
        );
        // An unquoted value is one value, and "region=eu region=us" has two '=': ignored.
        assert!(!r.metadata.contains_key("region"));
        assert!(w[0].contains("\"region=eu region=us\" ignored"), "{w:?}");
        let (r, _) = ok(
            "a.service",
            "MachineMetadata=\"region=eu\" \"region=us\"\nMachineMetadata=disk=ssd\n",
        );
        let m = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(r.metadata_matches(&m(&[("region", "us"), ("disk", "ssd")])));
        assert!(!r.metadata_matches(&m(&[("region", "us"), ("disk", "hdd")])));
        assert!(!r.metadata_matches(&m(&[("region", "us")])));
        assert!(!r.metadata_matches(&m(&[("region", "ap"), ("disk", "ssd")])));
    }

    #[test]
    fn conflicts_accumulate_and_are_symmetric() {
        let (r, w) = ok("a.service", "Conflicts=x.service  y*.service\nX-Conflicts=z.service\nConflicts=\"q.service\" \"r.service\"\n");
        assert_eq!(
            r.conflicts,
            [
                "x.service",
                "y*.service",
                "z.service",
                "q.service",
                "r.service"
            ]
        );
        assert!(w[0].contains("X-Conflicts"));
        let none = Requirements::default();
        assert!(r.conflicts_with("a.service", &none, "y1.service"));
        assert!(none.conflicts_with("y1.service", &r, "a.service"));
        assert!(!r.conflicts_with("a.service", &none, "b.service"));
    }

    #[test]
    fn global_truthy_last_wins() {
        for v in ["true", "TRUE", "yes", "Yes", "1", "on", "ON", "t", "T"] {
            assert!(ok("g.service", &format!("Global={v}\n")).0.global, "{v}");
        }
        for v in ["false", "no", "0", "off", "", "y", "enabled"] {
            assert!(!ok("g.service", &format!("Global={v}\n")).0.global, "{v}");
        }
        assert!(!ok("g.service", "Global=true\nGlobal=false\n").0.global);
        assert!(ok("g.service", "Global=false\nGlobal=yes\n").0.global);
        assert!(ok("g.service", "Global=\"no\" \"on\"\n").0.global);
        let (r, w) = ok(
            "g.service",
            "Global=true\nMachineMetadata=role=edge\nConflicts=old.service\n",
        );
        assert!(r.global && w.is_empty());
    }

    #[test]
    fn replaces_one_pattern_per_value() {
        let (r, w) = ok(
            "new.service",
            "Replaces=old.service\nReplaces=\"a.service\" \"b.service\"\n",
        );
        assert_eq!(r.replaces, ["old.service", "a.service", "b.service"]);
        assert!(w.is_empty());
        let (r, w) = ok("new.service", "Replaces=a.service b.service\n");
        assert_eq!(r.replaces, ["a.service b.service"]);
        assert!(w[0].contains("own Replaces= line"), "{w:?}");
    }

    #[test]
    fn unknown_keys_and_bad_patterns_warn() {
        let (r, w) = ok("a.service", "MachineMetaData=x=y\nConflicts=[\n");
        assert!(r.metadata.is_empty());
        assert!(
            w.iter()
                .any(|w| w.contains("unknown option MachineMetaData=")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|w| w.contains("Conflicts=[ is not a valid pattern")),
            "{w:?}"
        );
    }

    #[test]
    fn refused_combinations_name_both_options() {
        let cases = [
            (
                "MachineID=m\nMachineOf=b.service\n",
                "MachineID",
                "MachineOf",
            ),
            (
                "MachineID=m\nConflicts=b.service\n",
                "MachineID",
                "Conflicts",
            ),
            ("MachineID=m\nGlobal=true\n", "MachineID", "Global"),
            ("MachineID=m\nReplaces=b.service\n", "MachineID", "Replaces"),
            ("Global=true\nMachineOf=b.service\n", "Global", "MachineOf"),
            ("Global=true\nReplaces=b.service\n", "Global", "Replaces"),
            (
                "Conflicts=b.service\nReplaces=c.service\n",
                "Conflicts",
                "Replaces",
            ),
        ];
        for (xfleet, a, b) in cases {
            let err = reqs("a.service", xfleet).unwrap_err();
            match &err {
                JobError::Incompatible { first, second, .. } => {
                    assert_eq!((*first, *second), (a, b), "{xfleet}")
                }
                other => panic!("{xfleet}: {other:?}"),
            }
            let message = err.to_string();
            assert!(
                message.contains(&format!("{a}= cannot be used together with {b}=")),
                "{message}"
            );
        }
        // Global=false is no Global: MachineID is fine with it.
        assert!(reqs("a.service", "MachineID=m\nGlobal=false\n").is_ok());
        // Global with metadata and conflicts is fine.
        assert!(reqs(
            "a.service",
            "Global=1\nMachineMetadata=a=b\nConflicts=x.service\n"
        )
        .is_ok());
    }

    #[test]
    fn peer_excluded_by_own_patterns() {
        let err = reqs(
            "a@1.service",
            "MachineOf=db.service\nConflicts=d*.service\n",
        )
        .unwrap_err();
        assert_eq!(
            err,
            JobError::PeerExcluded {
                peer: "db.service".into(),
                option: "Conflicts",
                pattern: "d*.service".into()
            }
        );
        let err = reqs("a.service", "MachineOf=db.service\nReplaces=db.service\n").unwrap_err();
        assert!(err.to_string().contains("Replaces=db.service"), "{err}");
        let err = reqs("a@1.service", "MachineOf=%n\n").unwrap_err();
        assert_eq!(err, JobError::PeerIsSelf("a@1.service".into()));
    }

    #[test]
    fn quoted_value_splitting() {
        assert_eq!(split_quoted("plain value"), ["plain value"]);
        assert_eq!(split_quoted("\"a=b\" \"c=d\""), ["a=b", "c=d"]);
        assert_eq!(split_quoted("\"a b\" \"c\""), ["a b", "c"]);
        assert_eq!(split_quoted("\"a\"  \"b\""), ["a", "", "b"]);
        assert_eq!(split_quoted("\"only\""), ["only"]);
        assert_eq!(split_quoted("\"open"), ["\"open"]);
    }

    /// Every rule of the matcher, including malformed patterns, and unit-name cases.
    #[test]
    fn glob_like_go_path_match() {
        let cases: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("[\\-x]", "-", true),
            ("[\\-x]", "a", false),
            // Malformed patterns match nothing.
            ("[]a]", "]", false),
            ("[-]", "-", false),
            ("[x-]", "x", false),
            ("[x-]", "-", false),
            ("[-x]", "x", false),
            ("\\", "a", false),
            ("[a-b-c]", "a", false),
            ("[", "a", false),
            ("[^", "a", false),
            ("[^bc", "a", false),
            ("a[", "a", false),
            ("a[", "ab", false),
            ("a[", "x", false),
            ("a/b[", "x", false),
            ("*x", "xxx", true),
            // Unit names.
            ("example@*.service", "example@1.service", true),
            ("example@*.service", "example@.service", true),
            ("example@*.service", "example.service", false),
            ("example@?.service", "example@12.service", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("[/]", "/", true),
            ("ab*ba", "aba", false),
            ("ab*ba", "abba", true),
            ("a*", "a/", false),
            ("*/*", "a/b", true),
            ("x@*.service", "x@a/b.service", false),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(
                glob_match(pattern, name),
                *expected,
                "{pattern:?} vs {name:?}"
            );
        }
    }
}
