//! File names on FAT: which names it can store, the 8.3 short name every entry has (with `~N`
//! tails for names that do not fit), and the VFAT long-name entries that carry the real name.

use std::collections::{HashMap, HashSet};

use super::dirent::{RawShort, ATTR_LFN};
use super::FatError;

/// The longest long name, in UTF-16 units.
const MAX_LFN_UNITS: usize = 255;
/// UTF-16 units in one long-name entry.
const UNITS_PER_ENTRY: usize = 13;
/// Byte offsets of the 13 UTF-16 units inside a long-name entry (5 + 6 + 2 of them).
const UNIT_OFFSETS: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

/// Checks that a name can be stored on FAT and returns it as text. `path` names the entry in
/// the error.
pub(super) fn check_name<'a>(
    name: &'a [u8],
    path: &dyn Fn() -> String,
) -> Result<&'a str, FatError> {
    let bad = |reason: &str| FatError::InvalidName {
        path: path(),
        reason: reason.to_string(),
    };
    let text = std::str::from_utf8(name).map_err(|_| bad("the name is not UTF-8"))?;
    if let Some(c) = text
        .chars()
        .find(|c| c.is_control() || "\"*/:<>?\\|".contains(*c))
    {
        return Err(bad(&format!(
            "FAT cannot store the character {c:?} (nor any of \"*/:<>?\\| or control characters)"
        )));
    }
    if text.ends_with('.') || text.ends_with(' ') {
        return Err(bad(
            "FAT drops trailing dots and spaces, so the name would change",
        ));
    }
    if text.encode_utf16().count() > MAX_LFN_UNITS {
        return Err(bad("longer than 255 UTF-16 units"));
    }
    Ok(text)
}

/// Upper case the way FAT compares names: character by character, keeping characters whose
/// upper case is not a single character (such as `ß`), as FAT's up-case table does.
pub(super) fn upcase(s: &str) -> String {
    s.chars()
        .map(|c| {
            let mut up = c.to_uppercase();
            match (up.next(), up.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

/// The short name chosen for an entry, and whether the entry also needs long-name entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ShortName {
    pub raw: RawShort,
    pub needs_lfn: bool,
}

/// Hands out short names unique within one directory, deterministically: the same names in
/// the same order get the same short names.
#[derive(Default)]
pub(super) struct ShortNames {
    taken: HashSet<RawShort>,
    next_tail: HashMap<RawShort, u32>,
}

impl ShortNames {
    /// Marks a short name already present in the directory.
    pub fn reserve(&mut self, raw: RawShort) {
        self.taken.insert(raw);
    }

    /// Short names for all of one directory's names, in order. Names whose basis needs no
    /// tail go first, so a tail never steals the plain name of a later entry ("FOO~1.TXT"
    /// stays with the file of that name). Names must already be unique case-insensitively.
    pub fn assign_all(&mut self, names: &[&str]) -> Result<Vec<ShortName>, String> {
        let bases: Vec<(RawShort, bool)> = names.iter().map(|n| basis(n)).collect();
        let mut out: Vec<Option<ShortName>> = vec![None; names.len()];
        for (i, (raw, lossy)) in bases.iter().enumerate() {
            if !lossy && self.taken.insert(*raw) {
                out[i] = Some(ShortName {
                    raw: *raw,
                    needs_lfn: display(raw, 0) != names[i],
                });
            }
        }
        for (i, (raw, _)) in bases.iter().enumerate() {
            if out[i].is_none() {
                out[i] = Some(self.with_tail(raw, names[i])?);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// The short name for one more name.
    pub fn assign(&mut self, name: &str) -> Result<ShortName, String> {
        let mut all = self.assign_all(&[name])?;
        all.pop().ok_or_else(|| "no short name".to_string())
    }

    /// `BASIS~N.EXT` with the smallest N not yet taken for this basis.
    fn with_tail(&mut self, basis: &RawShort, name: &str) -> Result<ShortName, String> {
        let base_len = basis[..8].iter().position(|&b| b == b' ').unwrap_or(8);
        let start = self.next_tail.get(basis).copied().unwrap_or(1);
        for n in start..1_000_000 {
            let tail = format!("~{n}");
            let keep = base_len.min(8 - tail.len());
            let mut raw = *basis;
            raw[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
            raw[keep + tail.len()..8].fill(b' ');
            if self.taken.insert(raw) {
                self.next_tail.insert(*basis, n + 1);
                return Ok(ShortName {
                    raw,
                    needs_lfn: true,
                });
            }
        }
        Err(format!("no free short name for {name:?} (a million taken)"))
    }
}

/// The basis name of fatgen103 ("Basis-Name Generation"): upper-cased; characters a short name
/// cannot hold become `_`; spaces and leading periods dropped; the base is what comes before
/// the last period without periods, up to 8 characters, the extension up to 3 after it.
/// Returns the basis and whether it lost anything (then the name gets a `~N` tail).
fn basis(name: &str) -> (RawShort, bool) {
    let up = upcase(name);
    let trimmed: String = up
        .trim_start_matches(['.', ' '])
        .chars()
        .filter(|&c| c != ' ')
        .collect();
    let (base, ext) = match trimmed.rfind('.') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (trimmed.as_str(), ""),
    };
    let mut raw = [b' '; 11];
    let short_char = |c: char| if is_short_char(c) { c as u8 } else { b'_' };
    for (i, c) in base.chars().filter(|&c| c != '.').take(8).enumerate() {
        raw[i] = short_char(c);
    }
    for (i, c) in ext.chars().take(3).enumerate() {
        raw[8 + i] = short_char(c);
    }
    if raw[0] == b' ' {
        raw[0] = b'_';
    }
    let lossy = display(&raw, 0) != up;
    (raw, lossy)
}

/// Characters a short name may hold (besides bytes of an OEM code page, which we never write).
fn is_short_char(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || "!#$%&'()-@^_`{}~".contains(c)
}

/// The short name as text: `BASE.EXT`, or `BASE` with no extension. `ntres` carries the
/// Windows NT flags for an all-lower-case base (0x08) or extension (0x10).
pub(super) fn display(raw: &RawShort, ntres: u8) -> String {
    let part = |bytes: &[u8], lower: bool| -> String {
        let s: String = bytes
            .iter()
            .map(|&b| char::from(b)) // bytes above 0x7F shown as Latin-1: good enough to see
            .collect::<String>()
            .trim_end_matches(' ')
            .to_string();
        if lower {
            s.to_ascii_lowercase()
        } else {
            s
        }
    };
    let mut first = *raw;
    if first[0] == 0x05 {
        first[0] = 0xE5;
    }
    let base = part(&first[..8], ntres & 0x08 != 0);
    let ext = part(&first[8..], ntres & 0x10 != 0);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// The checksum of a short name that every long-name entry of it carries.
pub(super) fn lfn_checksum(raw: &RawShort) -> u8 {
    raw.iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// The long-name entries for `name`, in the order they precede the short entry on disk (the
/// last part first, flagged 0x40).
pub(super) fn lfn_entries(name: &str, checksum: u8) -> Vec<[u8; 32]> {
    let units: Vec<u16> = name.encode_utf16().collect();
    let count = units.len().div_ceil(UNITS_PER_ENTRY);
    (0..count)
        .rev()
        .map(|i| {
            let mut e = [0u8; 32];
            e[0] = (i + 1) as u8 | if i + 1 == count { 0x40 } else { 0 };
            e[11] = ATTR_LFN;
            e[13] = checksum;
            for (k, &at) in UNIT_OFFSETS.iter().enumerate() {
                let idx = i * UNITS_PER_ENTRY + k;
                // The name ends with one NUL unless it fills the entry, then 0xFFFF padding.
                let unit = match idx.cmp(&units.len()) {
                    std::cmp::Ordering::Less => units[idx],
                    std::cmp::Ordering::Equal => 0,
                    std::cmp::Ordering::Greater => 0xFFFF,
                };
                e[at..at + 2].copy_from_slice(&unit.to_le_bytes());
            }
            e
        })
        .collect()
}

/// The 13 UTF-16 units of one long-name entry.
pub(super) fn lfn_units(entry: &[u8]) -> [u16; 13] {
    let mut out = [0u16; 13];
    for (k, &at) in UNIT_OFFSETS.iter().enumerate() {
        out[k] = u16::from_le_bytes([entry[at], entry[at + 1]]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(names: &[&str]) -> Vec<String> {
        ShortNames::default()
            .assign_all(names)
            .unwrap()
            .iter()
            .map(|s| display(&s.raw, 0) + if s.needs_lfn { "+lfn" } else { "" })
            .collect()
    }

    #[test]
    fn short_names_follow_the_basis_rules_with_tails() {
        assert_eq!(
            short(&[
                "README.TXT",
                "readme.md",
                "Long File Name.txt",
                "longfilename.txt",
                ".bashrc",
                "a.b.c",
                "x+y",
                "日本"
            ]),
            [
                "README.TXT",
                "README.MD+lfn",
                "LONGFI~1.TXT+lfn",
                "LONGFI~2.TXT+lfn",
                "BASHRC~1+lfn",
                "AB~1.C+lfn",
                "X_Y~1+lfn",
                "__~1+lfn"
            ]
        );
    }

    #[test]
    fn tails_shorten_the_base_and_leave_exact_names_alone() {
        let names: Vec<String> = (0..120).map(|i| format!("file-number-{i}.conf")).collect();
        let mut refs: Vec<&str> = names.iter().map(String::as_str).collect();
        refs.push("FILE-N~1.CON");
        let got = short(&refs);
        assert_eq!(got[0], "FILE-N~2.CON+lfn");
        assert_eq!(got[8], "FILE-~10.CON+lfn");
        assert_eq!(got[99], "FILE~101.CON+lfn");
        assert_eq!(got[120], "FILE-N~1.CON");
        let unique: HashSet<&String> = got.iter().collect();
        assert_eq!(unique.len(), got.len());
    }

    #[test]
    fn bad_names_are_refused() {
        let p = || "/x".to_string();
        for bad in ["a:b", "a*", "q?", "tab\t", "dot.", "space ", "back\\slash"] {
            assert!(check_name(bad.as_bytes(), &p).is_err(), "{bad}");
        }
        assert!(check_name("ok name [1], 日本.txt".as_bytes(), &p).is_ok());
        assert!(check_name(b"\xff", &p).is_err());
    }

    #[test]
    fn long_name_entries_hold_the_name_in_reverse_order() {
        let name = "exactly-13-ch";
        let e = lfn_entries(name, 0x42);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0][0], 0x41);
        assert_eq!(String::from_utf16_lossy(&lfn_units(&e[0])), name);
        let e = lfn_entries("fourteen chars", 1);
        assert_eq!((e.len(), e[0][0], e[1][0]), (2, 0x42, 0x01));
        let last = lfn_units(&e[0]);
        assert_eq!(&last[..3], &[u16::from(b's'), 0, 0xFFFF]);
    }

    #[test]
    fn checksum_matches_the_specs_rotate_and_add() {
        // Worked by hand: for each byte, sum = (sum >> 1 | sum << 7) + byte, modulo 256.
        let mut expected: u8 = 0;
        for &b in b"FOO     BAR" {
            expected = ((expected & 1) << 7)
                .wrapping_add(expected >> 1)
                .wrapping_add(b);
        }
        assert_eq!(lfn_checksum(b"FOO     BAR"), expected);
    }
}
