//! Reading values out of the spanned YAML tree: the mappings whose unknown keys become warnings
//! ([`Fields`]), the scalar and list readers every section uses, and the error and warning types
//! that carry the line and column of the node they are about.

use crate::tree::{Key, Kind, Node, Pos};
use std::fmt;

/// Something ignored or reinterpreted: an unknown key, a deprecated value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub line: u64,
    pub column: u64,
    /// Where in the document, e.g. `coreos.fleet` or `users[1].lock_passwd`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cloud-config line {}, column {}: warning: `{}`: {}",
            self.line, self.column, self.key, self.message
        )
    }
}

/// Why a document was refused. Displays as `cloud-config line L, column C: `key`: what`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub line: u64,
    pub column: u64,
    /// The offending key, e.g. `write_files[0].permissions`; `None` for document-level errors.
    pub key: Option<String>,
    pub kind: ErrorKind,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cloud-config line {}, column {}: ",
            self.line, self.column
        )?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for ConfigError {}

/// What is wrong, without the place.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("the document does not begin with `#cloud-config` (first line: {first_line:?}){hint}; put `#cloud-config` alone on the first line")]
    NotCloudConfig {
        first_line: String,
        hint: &'static str,
    },
    #[error("the document is not UTF-8 text (bad byte at offset {offset}); save it as UTF-8")]
    NotUtf8 { offset: usize },
    #[error("invalid YAML: {0}")]
    Syntax(String),
    #[error("expected {expected}, found {found}{}", type_hint(expected))]
    WrongType {
        expected: &'static str,
        /// The shape found, or the scalar as written.
        found: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// What to write instead, for a value of the wrong shape.
fn type_hint(expected: &str) -> &'static str {
    if expected.starts_with("a list") {
        "; write each item on its own line under the key, starting with `- `"
    } else if expected == "a mapping" {
        "; write `key: value` lines indented under it"
    } else if expected == "true or false" {
        "; write true or false"
    } else {
        "; write one value on the key's line"
    }
}

impl ConfigError {
    pub(crate) fn at(pos: Pos, key: &str, kind: ErrorKind) -> Self {
        ConfigError {
            line: pos.line,
            column: pos.column,
            key: Some(key.to_string()),
            kind,
        }
    }

    /// An error about `node`'s value, placed at its key (see [`Node::place`]).
    pub(crate) fn invalid(node: &Node, key: &str, message: impl Into<String>) -> Self {
        Self::at(node.place(), key, ErrorKind::Invalid(message.into()))
    }

    pub(crate) fn document(pos: Pos, kind: ErrorKind) -> Self {
        ConfigError {
            line: pos.line,
            column: pos.column,
            key: None,
            kind,
        }
    }
}

/// What the reading collects besides the config.
#[derive(Default)]
pub(crate) struct Ctx {
    pub warnings: Vec<Warning>,
}

impl Ctx {
    /// coreos-cloudinit's leniency: a value of the wrong type is reported and left out, and the
    /// rest of the document is applied (the machine must come up). Other errors stay errors.
    pub fn recover<T: Default>(&mut self, read: Result<T, ConfigError>) -> Result<T, ConfigError> {
        match read {
            Err(e) if matches!(e.kind, ErrorKind::WrongType { .. }) => {
                self.warnings.push(Warning {
                    line: e.line,
                    column: e.column,
                    key: e.key.clone().unwrap_or_default(),
                    message: format!(
                        "{}; this value is left out and the rest of the document is applied",
                        e.kind
                    ),
                });
                Ok(T::default())
            }
            other => other,
        }
    }

    pub fn warn(&mut self, pos: Pos, key: &str, message: impl Into<String>) {
        self.warnings.push(Warning {
            line: pos.line,
            column: pos.column,
            key: key.to_string(),
            message: message.into(),
        });
    }
}

/// Keys compare with `-` and `_` as the same character: CoreOS files use both.
fn normalize(key: &str) -> String {
    key.replace('-', "_")
}

/// The entries of one mapping, handed out by name; whatever is never asked for is an
/// unknown key.
pub(crate) struct Fields<'n> {
    path: String,
    entries: Vec<(&'n Key, &'n Node, bool)>,
}

impl<'n> Fields<'n> {
    /// Reads `node` as a mapping. Null counts as an empty mapping (`kiln:` with nothing).
    pub fn new(node: &'n Node, path: &str, ctx: &mut Ctx) -> Result<Self, ConfigError> {
        let entries: Vec<(&Key, &Node, bool)> = match &node.kind {
            Kind::Map(m) => m.iter().map(|(k, v)| (k, v, false)).collect(),
            Kind::Null => Vec::new(),
            other => return Err(wrong_type(node, path, "a mapping", other)),
        };
        for (i, (k, _, _)) in entries.iter().enumerate() {
            let later = entries[i + 1..]
                .iter()
                .find(|(l, _, _)| normalize(&l.name) == normalize(&k.name));
            if let Some((l, _, _)) = later {
                ctx.warn(
                    k.pos,
                    &join(path, &k.name),
                    format!(
                        "given again at line {} as `{}`; the later one is used",
                        l.pos.line, l.name
                    ),
                );
            }
        }
        Ok(Fields {
            path: path.to_string(),
            entries,
        })
    }

    /// The path of a child key, for messages.
    pub fn path_of(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// Takes the value of `name` (any spelling of `-`/`_`); the last one wins.
    pub fn take(&mut self, name: &str) -> Option<&'n Node> {
        let want = normalize(name);
        let mut found = None;
        for (k, v, used) in &mut self.entries {
            if normalize(&k.name) == want {
                *used = true;
                found = Some(*v);
            }
        }
        found
    }

    /// Like `take`, but a null value counts as absent.
    pub fn take_some(&mut self, name: &str) -> Option<&'n Node> {
        self.take(name).filter(|n| n.kind != Kind::Null)
    }

    /// The key node of `name`, for placing warnings about a key rather than its value.
    pub fn key_pos(&self, name: &str) -> Option<Pos> {
        let want = normalize(name);
        self.entries
            .iter()
            .rev()
            .find(|(k, _, _)| normalize(&k.name) == want)
            .map(|(k, _, _)| k.pos)
    }

    /// Warns about every key nobody asked for.
    pub fn finish(self, ctx: &mut Ctx) {
        for (k, _, used) in self.entries {
            if !used {
                ctx.warn(k.pos, &join(&self.path, &k.name), "unknown key, ignored");
            }
        }
    }
}

pub(crate) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

pub(crate) fn wrong_type(
    node: &Node,
    path: &str,
    expected: &'static str,
    found: &Kind,
) -> ConfigError {
    ConfigError::at(
        node.place(),
        path,
        ErrorKind::WrongType {
            expected,
            found: found.describe().to_string(),
        },
    )
}

/// A scalar as text. Numbers and booleans come as written (`0644`, `yes`); `!!binary` comes
/// decoded, as go-yaml gave it to coreos-cloudinit, when it is text.
pub(crate) fn string(node: &Node, path: &str) -> Result<String, ConfigError> {
    match &node.kind {
        Kind::Scalar(s) => Ok(s.clone()),
        Kind::Binary(_) => String::from_utf8(binary(node, path)?).map_err(|_| {
            ConfigError::invalid(
                node,
                path,
                "this !!binary value is not text; give it as text (!!binary is for write_files content)",
            )
        }),
        other => Err(wrong_type(node, path, "a string", other)),
    }
}

/// The bytes of a `!!binary` node.
pub(crate) fn binary(node: &Node, path: &str) -> Result<Vec<u8>, ConfigError> {
    match &node.kind {
        Kind::Binary(text) => base64_decode(text).map_err(|e| {
            ConfigError::invalid(
                node,
                path,
                format!("the !!binary value is not valid base64 ({e}); give the base64 text of the data"),
            )
        }),
        other => Err(wrong_type(node, path, "binary data (!!binary)", other)),
    }
}

/// Standard base64, line breaks and blanks ignored, padding optional (as `base64 -d` and Go
/// read it).
pub(crate) fn base64_decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine;
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
    .decode(compact.as_bytes())
}

pub(crate) fn opt_string(node: Option<&Node>, path: &str) -> Result<Option<String>, ConfigError> {
    match node {
        None => Ok(None),
        Some(n) if n.kind == Kind::Null => Ok(None),
        Some(n) => string(n, path).map(Some),
    }
}

/// A YAML 1.1 boolean, as cloud-init reads them: `yes`/`no`, `on`/`off`, `true`/`false`, `y`/`n`.
/// An empty value is false, as go-yaml read it for CoreOS.
pub(crate) fn boolean(node: Option<&Node>, path: &str) -> Result<bool, ConfigError> {
    let Some(node) = node else { return Ok(false) };
    let text = match &node.kind {
        Kind::Null => return Ok(false),
        Kind::Scalar(s) => s.as_str(),
        other => return Err(wrong_type(node, path, "true or false", other)),
    };
    match text.to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "on" => Ok(true),
        "false" | "no" | "n" | "off" => Ok(false),
        // A type error for coreos-cloudinit too (go-yaml does not make a bool of it).
        _ => Err(ConfigError::at(
            node.place(),
            path,
            ErrorKind::WrongType {
                expected: "true or false",
                found: format!("{text:?}"),
            },
        )),
    }
}

/// A list of strings where a single string counts as a list of one (etcd's comma-separated
/// URLs, an interface's one address); nothing is an empty list.
pub(crate) fn string_list(node: Option<&Node>, path: &str) -> Result<Vec<String>, ConfigError> {
    match node.map(|n| &n.kind) {
        Some(Kind::Scalar(s)) => Ok(vec![s.clone()]),
        _ => strict_string_list(node, path),
    }
}

/// A list of strings, and nothing else (`ssh_authorized_keys: true` is an error, as for
/// coreos-cloudinit, not a key named "true"); nothing is an empty list.
pub(crate) fn strict_string_list(
    node: Option<&Node>,
    path: &str,
) -> Result<Vec<String>, ConfigError> {
    let Some(node) = node else {
        return Ok(Vec::new());
    };
    match &node.kind {
        Kind::Null => Ok(Vec::new()),
        Kind::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| string(item, &format!("{path}[{i}]")))
            .collect(),
        other => Err(wrong_type(node, path, "a list of strings", other)),
    }
}

/// The items of a list; nothing counts as an empty list.
pub(crate) fn list<'n>(node: Option<&'n Node>, path: &str) -> Result<&'n [Node], ConfigError> {
    let Some(node) = node else { return Ok(&[]) };
    match &node.kind {
        Kind::Null => Ok(&[]),
        Kind::Seq(items) => Ok(items),
        other => Err(wrong_type(node, path, "a list", other)),
    }
}
