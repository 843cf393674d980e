//! systemd unit files as fleet handles them: a list of `(section, name, value)` options read
//! from unit text, written back in one canonical text, and hashed over that text.
//!
//! The reader follows the unit syntax of systemd as fleet's own reader understood
//! it, so that a unit gives the same options (and so the same hash) here as it did there:
//!
//! - `[Section]` headers; nothing but blanks may follow the `]`;
//! - `Name=Value` options; blanks around the name and around the whole value are dropped; an
//!   empty value (`Name=`) is kept as an empty string; a repeated name is kept as another option,
//!   in file order;
//! - lines whose first non-blank character is `#` or `;` are comments; a comment line that ends
//!   in `\` swallows the next line too;
//! - a value line ending in `\` continues on the next line; the backslash and the line break are
//!   kept in the value (so the canonical text writes the same continuation back), and a blank
//!   line ends the value;
//! - a physical line may not reach 2048 bytes (systemd would cut it).
//!
//! Where that reader silently skipped text (an option before any section header, a line without
//! `=`, an empty option name, a header split over lines) this one reports an error with the
//! 1-based line, so a bad unit is refused at submission instead of losing options.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

/// The longest physical line accepted, in bytes, line break excluded (systemd's `LINE_MAX`
/// minus the terminator).
pub const MAX_LINE: usize = 2047;

/// One option of a unit file: `Name=Value` in `[Section]`.
///
/// The field names are those of the fleet v1 API's `options` array, so a list of these is
/// (de)serialized exactly as fleet clients send and expect it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnitOption {
    /// The section the option is in, without brackets (`Service`, `X-Fleet`).
    pub section: String,
    /// The option's name (`ExecStart`).
    pub name: String,
    /// The option's value, as read (continuations included).
    pub value: String,
}

impl UnitOption {
    /// An option from its three parts.
    pub fn new(
        section: impl Into<String>,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        UnitOption {
            section: section.into(),
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A unit file: its options in the order they were read or given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitFile {
    /// Every option, in order; the same name may appear more than once.
    pub options: Vec<UnitOption>,
}

/// What is wrong with a unit file's text, and on which line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct UnitError {
    /// The 1-based line where the problem starts.
    pub line: usize,
    /// The problem.
    pub kind: UnitErrorKind,
}

/// The problems [`UnitFile::parse`] reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitErrorKind {
    /// `Name=Value` before the first `[Section]` header.
    #[error(
        "option {0:?} is outside of any section: put a [Section] header (e.g. [Service]) above it"
    )]
    OutsideSection(String),
    /// `[` without `]` on the same line.
    #[error("section header has no closing ']'")]
    UnclosedSection,
    /// `[]`.
    #[error("section header has no name")]
    EmptySection,
    /// Text after a section header's `]`.
    #[error("unexpected text {text:?} after the section header [{section}]")]
    AfterSection {
        /// The section named by the header.
        section: String,
        /// What follows the `]`.
        text: String,
    },
    /// A line that is neither blank, a comment, a header nor `Name=Value`.
    #[error("expected Name=Value, a [Section] header or a comment, found {0:?}")]
    NotAnOption(String),
    /// `=Value`.
    #[error("option has no name before '='")]
    EmptyName,
    /// A physical line of 2048 bytes or more.
    #[error("line is {0} bytes long; systemd reads at most {MAX_LINE}")]
    LineTooLong(usize),
}

/// The SHA-1 of a unit's canonical text: how fleet names a unit's content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitHash(pub [u8; 20]);

/// A string that is not 40 hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unit hash {0:?} is not 40 hexadecimal digits")]
pub struct HashError(pub String);

impl UnitHash {
    /// The 40 lower-case hex digits.
    pub fn hex_digits(&self) -> String {
        kiln_contract::hex::encode(&self.0)
    }

    /// The first 7 hex digits, as `fleetctl list-unit-files` shows a hash.
    pub fn short(&self) -> String {
        let mut hex = self.hex_digits();
        hex.truncate(7);
        hex
    }
}

impl fmt::Display for UnitHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex_digits())
    }
}

impl fmt::Debug for UnitHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnitHash({})", self.hex_digits())
    }
}

impl FromStr for UnitHash {
    type Err = HashError;

    /// Reads 40 hex digits, either case.
    fn from_str(s: &str) -> Result<Self, HashError> {
        kiln_contract::hex::decode(s)
            .and_then(|bytes| bytes.try_into().ok())
            .map(UnitHash)
            .ok_or_else(|| HashError(s.to_string()))
    }
}

/// As a hex string, the form the registry and the API carry.
impl Serialize for UnitHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.hex_digits())
    }
}

impl<'de> Deserialize<'de> for UnitHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether a comment line continues onto the next one: it ends in a backslash once one trailing
/// space is dropped (as fleet read comments).
fn comment_continues(line: &str) -> bool {
    line.strip_suffix(' ').unwrap_or(line).ends_with('\\')
}

impl UnitFile {
    /// Reads unit text into its options (see the module documentation for the syntax).
    pub fn parse(text: &str) -> Result<UnitFile, UnitError> {
        // Editors on other systems may start the file with a byte-order mark.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        // Physical lines, without their terminators; `last` marks a line with no line break
        // after it (it matters for continuations, as in the reference reader).
        let lines: Vec<&str> = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .collect();
        let count = lines.len();
        for (i, line) in lines.iter().enumerate() {
            if line.len() > MAX_LINE {
                return Err(UnitError {
                    line: i + 1,
                    kind: UnitErrorKind::LineTooLong(line.len()),
                });
            }
        }

        let mut options = Vec::new();
        let mut section: Option<String> = None;
        let mut i = 0;
        while i < count {
            let lineno = i + 1;
            let err = |kind| UnitError { line: lineno, kind };
            let body = lines[i].trim_start();
            if body.is_empty() {
                i += 1;
                continue;
            }
            if body.starts_with('#') || body.starts_with(';') {
                while comment_continues(lines[i]) && i + 1 < count {
                    i += 1;
                }
                i += 1;
                continue;
            }
            if let Some(header) = body.strip_prefix('[') {
                let close = header
                    .find(']')
                    .ok_or_else(|| err(UnitErrorKind::UnclosedSection))?;
                let name = &header[..close];
                if name.is_empty() {
                    return Err(err(UnitErrorKind::EmptySection));
                }
                let rest = header[close + 1..].trim();
                if !rest.is_empty() {
                    return Err(err(UnitErrorKind::AfterSection {
                        section: name.to_string(),
                        text: rest.to_string(),
                    }));
                }
                section = Some(name.to_string());
                i += 1;
                continue;
            }
            let Some(eq) = body.find('=') else {
                return Err(err(UnitErrorKind::NotAnOption(body.trim_end().to_string())));
            };
            let name = body[..eq].trim();
            let Some(current) = &section else {
                return Err(err(UnitErrorKind::OutsideSection(name.to_string())));
            };
            if name.is_empty() {
                return Err(err(UnitErrorKind::EmptyName));
            }

            // The value: the rest of this line, plus following lines while each ends in `\`.
            let mut value = String::new();
            let mut piece = &body[eq + 1..];
            loop {
                if piece.trim().is_empty() {
                    break;
                }
                value.push_str(piece);
                if !piece.ends_with('\\') {
                    break;
                }
                if i + 1 >= count {
                    break;
                }
                value.push('\n');
                i += 1;
                piece = lines[i];
            }
            // Blanks around the value go; a trailing line break (a continuation that met a
            // blank line) stays, as the reference reader keeps it.
            let value = if value.ends_with('\n') {
                format!("{}\n", value.trim())
            } else {
                value.trim().to_string()
            };
            options.push(UnitOption {
                section: current.clone(),
                name: name.to_string(),
                value,
            });
            i += 1;
        }
        Ok(UnitFile { options })
    }

    /// A unit file made of the given options, in that order.
    pub fn from_options(options: Vec<UnitOption>) -> UnitFile {
        UnitFile { options }
    }

    /// The canonical text: each section once, in the order sections first appear, as
    /// `[Section]` followed by its options as `Name=Value` lines in their order; a blank line
    /// between sections; nothing at all for a unit without options.
    ///
    /// Options of a section that appears twice are gathered under its first header, so parsing
    /// the canonical text gives the options grouped by section.
    pub fn serialize(&self) -> String {
        let mut sections: Vec<&str> = Vec::new();
        for option in &self.options {
            if !sections.contains(&option.section.as_str()) {
                sections.push(&option.section);
            }
        }
        let mut out = String::new();
        for (i, section) in sections.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push('[');
            out.push_str(section);
            out.push_str("]\n");
            for option in self.options.iter().filter(|o| o.section == *section) {
                out.push_str(&option.name);
                out.push('=');
                out.push_str(&option.value);
                out.push('\n');
            }
        }
        out
    }

    /// Checks that options received as a list (the API's `options`) make a unit file that
    /// reads back: the canonical text must parse (no line too long, no option outside a
    /// section, no empty name). The error's line is one of the canonical text.
    pub fn check(&self) -> Result<(), UnitError> {
        UnitFile::parse(&self.serialize()).map(|_| ())
    }

    /// SHA-1 of [`serialize`](Self::serialize): equal for units with the same options.
    pub fn hash(&self) -> UnitHash {
        UnitHash(Sha1::digest(self.serialize().as_bytes()).into())
    }

    /// The options of one section, in order.
    pub fn section<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a UnitOption> + 'a {
        self.options.iter().filter(move |o| o.section == name)
    }

    /// The values of every `name=` option in `section`, in order.
    pub fn values<'a>(
        &'a self,
        section: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.section(section)
            .filter(move |o| o.name == name)
            .map(|o| o.value.as_str())
    }

    /// The first `Description=` of `[Unit]`, as `list-unit-files` shows it.
    pub fn description(&self) -> Option<&str> {
        self.values("Unit", "Description").next()
    }
}

impl FromStr for UnitFile {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, UnitError> {
        UnitFile::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(section: &str, name: &str, value: &str) -> UnitOption {
        UnitOption::new(section, name, value)
    }

    #[test]
    fn sections_options_comments_and_blanks() {
        let text = "# leading comment\n\n[Unit]\nDescription = Hello World \n; another comment\n  \
                    After=docker.service\n\n[Service]\nExecStart=/bin/echo hi\nEnvironment=\n";
        let unit = UnitFile::parse(text).unwrap();
        assert_eq!(
            unit.options,
            vec![
                opt("Unit", "Description", "Hello World"),
                opt("Unit", "After", "docker.service"),
                opt("Service", "ExecStart", "/bin/echo hi"),
                opt("Service", "Environment", ""),
            ]
        );
        assert_eq!(unit.description(), Some("Hello World"));
        assert_eq!(unit.section("Service").count(), 2);
    }

    #[test]
    fn repeated_keys_stay_in_order() {
        let unit =
            UnitFile::parse("[Service]\nExecStartPre=a\nExecStart=b\nExecStartPre=c\n").unwrap();
        let pre: Vec<&str> = unit.values("Service", "ExecStartPre").collect();
        assert_eq!(pre, ["a", "c"]);
        assert_eq!(unit.options[1], opt("Service", "ExecStart", "b"));
    }

    #[test]
    fn continuation_keeps_backslash_and_break() {
        let text = "[Service]\nExecStart=/bin/sh -c \\\n   'echo hi'\nUser=core\n";
        let unit = UnitFile::parse(text).unwrap();
        assert_eq!(unit.options[0].value, "/bin/sh -c \\\n   'echo hi'");
        assert_eq!(unit.options[1], opt("Service", "User", "core"));
        // The canonical text writes the continuation back and reads the same.
        assert_eq!(unit.serialize(), text);
        assert_eq!(UnitFile::parse(&unit.serialize()).unwrap(), unit);
    }

    #[test]
    fn continuation_ended_by_blank_line_or_end() {
        let unit = UnitFile::parse("[Service]\nA=x \\\n\nB=y\\").unwrap();
        assert_eq!(unit.options[0].value, "x \\\n");
        assert_eq!(unit.options[1].value, "y\\");
        // A backslash followed by blanks does not continue.
        let unit = UnitFile::parse("[Service]\nA=x\\ \nB=y\n").unwrap();
        assert_eq!(unit.options.len(), 2);
        assert_eq!(unit.options[0].value, "x\\");
    }

    #[test]
    fn comment_continuation_swallows_next_line() {
        let unit = UnitFile::parse("[Unit]\n# note \\\nDescription=hidden\nAfter=a\n").unwrap();
        assert_eq!(unit.options, vec![opt("Unit", "After", "a")]);
    }

    #[test]
    fn crlf_lines_and_byte_order_mark() {
        let unit = UnitFile::parse("\u{feff}[Unit]\r\nDescription=x\r\n").unwrap();
        assert_eq!(unit.options, vec![opt("Unit", "Description", "x")]);
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("Description=x\n[Unit]\n", 1, "outside of any section"),
            ("[Unit]\nDescription=x\n[Service\n", 3, "no closing ']'"),
            ("[Unit] junk\n", 1, "after the section header [Unit]"),
            (
                "[Unit]\n\nthis is not an option\n",
                3,
                "expected Name=Value",
            ),
            ("[Unit]\n=x\n", 2, "no name before '='"),
            ("[]\n", 1, "no name"),
        ];
        for (text, line, what) in cases {
            let err = UnitFile::parse(text).unwrap_err();
            assert_eq!(err.line, *line, "{text:?}: {err}");
            let message = err.to_string();
            assert!(message.starts_with(&format!("line {line}: ")), "{message}");
            assert!(message.contains(what), "{text:?}: {message}");
        }
        let long = format!("[Unit]\nDescription={}\n", "x".repeat(2100));
        let err = UnitFile::parse(&long).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(matches!(err.kind, UnitErrorKind::LineTooLong(2112)));
    }

    #[test]
    fn serialize_groups_sections_in_first_seen_order() {
        let unit = UnitFile::from_options(vec![
            opt("Unit", "Description", "d"),
            opt("Service", "ExecStart", "/bin/true"),
            opt("Unit", "After", "a.service"),
            opt("X-Fleet", "Conflicts", "x@*.service"),
        ]);
        assert_eq!(
            unit.serialize(),
            "[Unit]\nDescription=d\nAfter=a.service\n\n[Service]\nExecStart=/bin/true\n\n\
             [X-Fleet]\nConflicts=x@*.service\n"
        );
        assert_eq!(UnitFile::default().serialize(), "");
    }

    #[test]
    fn round_trip_of_canonical_text() {
        let text = "[Unit]\nDescription=Example %i\n\n[Service]\nExecStart=/usr/bin/docker run \
                    --rm --name example-%i kiln/busybox\nExecStop=/usr/bin/docker stop example-%i\n\n\
                    [X-Fleet]\nConflicts=example@*.service\n";
        let unit = UnitFile::parse(text).unwrap();
        assert_eq!(unit.serialize(), text);
        let again = UnitFile::parse(&unit.serialize()).unwrap();
        assert_eq!(again, unit);
        assert_eq!(again.hash(), unit.hash());
    }

    #[test]
    fn known_hash() {
        // printf '[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/sleep 1000\n' | sha1sum
        let unit = UnitFile::parse(
            "# comment is not hashed\n[Unit]\nDescription=Hello World\n[Service]\nExecStart=/bin/sleep 1000",
        )
        .unwrap();
        assert_eq!(
            unit.serialize(),
            "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/sleep 1000\n"
        );
        let hash = unit.hash();
        assert_eq!(
            hash.hex_digits(),
            "5b850b3c5247745aaeeec31eebcc5a068fc348af"
        );
        assert_eq!(hash.short(), hash.hex_digits()[..7]);
        assert_eq!(hash.hex_digits().parse::<UnitHash>().unwrap(), hash);
        assert_eq!(
            hash.hex_digits()
                .to_uppercase()
                .parse::<UnitHash>()
                .unwrap(),
            hash
        );
    }

    #[test]
    fn options_from_the_api_are_checked_by_reading_them_back() {
        let good = UnitFile::from_options(vec![opt("Service", "ExecStart", "/bin/true")]);
        assert_eq!(good.check(), Ok(()));
        let long = UnitFile::from_options(vec![
            opt("Unit", "Description", "d"),
            opt("Service", "ExecStart", &"x".repeat(3000)),
        ]);
        let err = long.check().unwrap_err();
        assert_eq!(err.line, 5);
        assert!(matches!(err.kind, UnitErrorKind::LineTooLong(_)));
        let nameless = UnitFile::from_options(vec![opt("Service", "", "x")]);
        assert_eq!(nameless.check().unwrap_err().kind, UnitErrorKind::EmptyName);
    }

    #[test]
    fn hash_parse_errors() {
        assert!("abc".parse::<UnitHash>().is_err());
        assert!("g".repeat(40).parse::<UnitHash>().is_err());
        assert!("0".repeat(41).parse::<UnitHash>().is_err());
    }

    #[test]
    fn json_shapes() {
        let option = opt("X-Fleet", "Global", "true");
        let json = serde_json::to_string(&option).unwrap();
        assert_eq!(
            json,
            r#"{"section":"X-Fleet","name":"Global","value":"true"}"#
        );
        assert_eq!(serde_json::from_str::<UnitOption>(&json).unwrap(), option);
        let hash = UnitFile::default().hash();
        let json = serde_json::to_string(&hash).unwrap();
        assert_eq!(json, format!("\"{}\"", hash.hex_digits()));
        assert_eq!(serde_json::from_str::<UnitHash>(&json).unwrap(), hash);
    }
}
