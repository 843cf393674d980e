//! Unit names as fleet accepts them: `prefix.suffix`, `prefix@instance.suffix`, or the
//! template `prefix@.suffix`.
//!
//! The rules, checked in this order (the first broken one is reported):
//! - not empty and at most 256 bytes;
//! - a `.` followed by a unit type: everything after the *last* dot is the suffix, and it must
//!   be one of the systemd types fleet knows (`automount busname device mount path scope service
//!   slice snapshot socket swap target timer`);
//! - a name with `@` is a template or an instance, allowed only for `path`, `service`, `socket`,
//!   `target` and `timer`;
//! - before the suffix only ASCII letters and digits and `:_.@-` (plus `\`, which systemd's own
//!   escaping writes, e.g. `\x2d`);
//! - not starting with `@`, and something before the suffix.
//!
//! The prefix is what comes before the *first* `@`; the instance is everything between that `@`
//! and the suffix (so `a@b@c.service` has prefix `a` and instance `b@c`).

use std::fmt;
use std::str::FromStr;

/// The longest unit name, in bytes (systemd's limit).
pub const MAX_NAME: usize = 256;

/// Unit types fleet schedules.
pub const UNIT_TYPES: &[&str] = &[
    "automount",
    "busname",
    "device",
    "mount",
    "path",
    "scope",
    "service",
    "slice",
    "snapshot",
    "socket",
    "swap",
    "target",
    "timer",
];

/// Unit types that may be templates or instances.
pub const TEMPLATE_TYPES: &[&str] = &["path", "service", "socket", "target", "timer"];

/// A valid unit name, with its parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitName {
    full: String,
    /// Byte offset of the last `.`.
    dot: usize,
    /// Byte offset of the first `@`, if any.
    at: Option<usize>,
}

/// Why a string is not a unit name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The empty string.
    #[error("unit name is empty")]
    Empty,
    /// More than [`MAX_NAME`] bytes.
    #[error("unit name {0:?} is longer than {MAX_NAME} bytes")]
    TooLong(String),
    /// No `.` at all, or nothing after the last one.
    #[error("unit name {0:?} has no unit type: add a suffix such as .service")]
    NoSuffix(String),
    /// A suffix that is not a unit type fleet knows.
    #[error("unit name {name:?}: {suffix:?} is not a unit type fleet can schedule (use one of: {})", UNIT_TYPES.join(", "))]
    UnknownType {
        /// The whole name.
        name: String,
        /// The suffix found.
        suffix: String,
    },
    /// `@` in a name whose type cannot be a template.
    #[error("unit name {name:?}: a .{suffix} unit cannot be a template or an instance (only {})", TEMPLATE_TYPES.join(", "))]
    NotTemplateType {
        /// The whole name.
        name: String,
        /// The suffix found.
        suffix: String,
    },
    /// A character outside `[a-zA-Z0-9:_.@\-]` before the suffix.
    #[error("unit name {name:?} contains {character:?}; allowed are letters, digits and :_.@-")]
    BadCharacter {
        /// The whole name.
        name: String,
        /// The first character not allowed.
        character: char,
    },
    /// `@` first, or nothing before the suffix.
    #[error("unit name {0:?} has no name before its instance or type")]
    NoPrefix(String),
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '@' | '-' | '\\')
}

impl UnitName {
    /// Checks `name` against fleet's rules (see the module documentation).
    pub fn parse(name: &str) -> Result<UnitName, NameError> {
        let owned = || name.to_string();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME {
            return Err(NameError::TooLong(owned()));
        }
        let dot = match name.rfind('.') {
            Some(dot) if dot + 1 < name.len() => dot,
            _ => return Err(NameError::NoSuffix(owned())),
        };
        let suffix = &name[dot + 1..];
        if !UNIT_TYPES.contains(&suffix) {
            return Err(NameError::UnknownType {
                name: owned(),
                suffix: suffix.to_string(),
            });
        }
        let at = name.find('@');
        if at.is_some() && !TEMPLATE_TYPES.contains(&suffix) {
            return Err(NameError::NotTemplateType {
                name: owned(),
                suffix: suffix.to_string(),
            });
        }
        if let Some(character) = name[..dot].chars().find(|&c| !allowed(c)) {
            return Err(NameError::BadCharacter {
                name: owned(),
                character,
            });
        }
        if dot == 0 || at == Some(0) {
            return Err(NameError::NoPrefix(owned()));
        }
        // An `@` only in the suffix is impossible: the suffix is a known type.
        Ok(UnitName {
            full: owned(),
            dot,
            at,
        })
    }

    /// The whole name (`foo@1.service`): systemd's `%n`.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The name without its suffix (`foo@1`): systemd's `%N`.
    pub fn stem(&self) -> &str {
        &self.full[..self.dot]
    }

    /// What comes before the first `@`, or the stem when there is none (`foo`): `%p`.
    pub fn prefix(&self) -> &str {
        &self.full[..self.at.unwrap_or(self.dot)]
    }

    /// The instance (`1` for `foo@1.service`), `Some("")` for a template `foo@.service`, `None`
    /// for a plain unit. As `%i` it expands to the empty string when `None`.
    pub fn instance(&self) -> Option<&str> {
        self.at.map(|at| &self.full[at + 1..self.dot])
    }

    /// The unit type, without the dot (`service`).
    pub fn suffix(&self) -> &str {
        &self.full[self.dot + 1..]
    }

    /// `foo@.service`: a template, which cannot run itself.
    pub fn is_template(&self) -> bool {
        self.instance() == Some("")
    }

    /// `foo@1.service`: an instance of a template.
    pub fn is_instance(&self) -> bool {
        matches!(self.instance(), Some(i) if !i.is_empty())
    }

    /// The template this name belongs to: `foo@.service` for `foo@1.service` and for
    /// `foo@.service` itself; `None` for a plain unit.
    pub fn template(&self) -> Option<String> {
        self.at
            .map(|_| format!("{}@.{}", self.prefix(), self.suffix()))
    }

    /// The instance of this template (or of this instance's template) named `instance`:
    /// `foo@.service` with `web` gives `foo@web.service`. `None` for a plain unit.
    pub fn with_instance(&self, instance: &str) -> Option<Result<UnitName, NameError>> {
        self.at
            .map(|_| UnitName::parse(&format!("{}@{}.{}", self.prefix(), instance, self.suffix())))
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl FromStr for UnitName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        UnitName::parse(s)
    }
}

impl AsRef<str> for UnitName {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_of_plain_template_and_instance() {
        let plain = UnitName::parse("hello.service").unwrap();
        assert_eq!(
            (plain.prefix(), plain.instance(), plain.suffix()),
            ("hello", None, "service")
        );
        assert!(!plain.is_template() && !plain.is_instance());
        assert_eq!(plain.template(), None);
        assert_eq!(plain.stem(), "hello");

        let template = UnitName::parse("example@.service").unwrap();
        assert_eq!(template.instance(), Some(""));
        assert!(template.is_template() && !template.is_instance());
        assert_eq!(template.template().as_deref(), Some("example@.service"));
        assert_eq!(
            template.with_instance("3").unwrap().unwrap().as_str(),
            "example@3.service"
        );

        let instance = UnitName::parse("example@1.service").unwrap();
        assert_eq!(instance.prefix(), "example");
        assert_eq!(instance.instance(), Some("1"));
        assert_eq!(instance.stem(), "example@1");
        assert!(instance.is_instance() && !instance.is_template());
        assert_eq!(instance.template().as_deref(), Some("example@.service"));

        let nested = UnitName::parse("a@b@c.timer").unwrap();
        assert_eq!((nested.prefix(), nested.instance()), ("a", Some("b@c")));
        let dotted = UnitName::parse("yo.yo.service").unwrap();
        assert_eq!((dotted.prefix(), dotted.suffix()), ("yo.yo", "service"));
    }

    #[test]
    fn accepted_names() {
        for name in [
            "foo.service",
            "hello.mount",
            "foo@123.service",
            "foo@.service",
            "hello@world.path",
            "hello:world.service",
            "yes@no\\x2d.service",
            "foo-bar.mount",
            "jalapeno_chips.service",
            "foo@1.socket",
            "foo@1.target",
            "foo@1.timer",
        ] {
            assert!(UnitName::parse(name).is_ok(), "{name}");
        }
        let longest = format!("{}.service", "a".repeat(MAX_NAME - 8));
        assert!(UnitName::parse(&longest).is_ok());
    }

    #[test]
    fn refused_names() {
        type Expect = fn(&NameError) -> bool;
        let cases: &[(&str, Expect)] = &[
            ("", |e| matches!(e, NameError::Empty)),
            ("fooservice", |e| matches!(e, NameError::NoSuffix(_))),
            ("bar@foo", |e| matches!(e, NameError::NoSuffix(_))),
            ("foo.service.", |e| matches!(e, NameError::NoSuffix(_))),
            ("foo.bar", |e| matches!(e, NameError::UnknownType { .. })),
            ("foo.servICE", |e| {
                matches!(e, NameError::UnknownType { .. })
            }),
            ("foo%.service", |e| {
                matches!(e, NameError::BadCharacter { character: '%', .. })
            }),
            ("yes/no.service", |e| {
                matches!(e, NameError::BadCharacter { character: '/', .. })
            }),
            ("this+that.mount", |e| {
                matches!(e, NameError::BadCharacter { .. })
            }),
            ("@foo.service", |e| matches!(e, NameError::NoPrefix(_))),
            (".service", |e| matches!(e, NameError::NoPrefix(_))),
            ("foo@1.mount", |e| {
                matches!(e, NameError::NotTemplateType { .. })
            }),
            ("foo@1.device", |e| {
                matches!(e, NameError::NotTemplateType { .. })
            }),
            ("foo@.swap", |e| {
                matches!(e, NameError::NotTemplateType { .. })
            }),
        ];
        for (name, expected) in cases {
            let err = UnitName::parse(name).unwrap_err();
            assert!(expected(&err), "{name:?}: {err:?}");
        }
        let too_long = format!("{}.service", "a".repeat(MAX_NAME));
        assert!(matches!(
            UnitName::parse(&too_long),
            Err(NameError::TooLong(_))
        ));
        let message = UnitName::parse("foo@1.mount").unwrap_err().to_string();
        assert!(message.contains("cannot be a template"), "{message}");
    }
}
