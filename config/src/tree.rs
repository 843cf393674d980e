//! The YAML document as a tree of nodes that remember where they were written.
//!
//! serde-saphyr parses; we read its output into our own tree instead of into derived structs
//! because a cloud-config needs things derived structs do badly: every node's line and column
//! for semantic errors, unknown keys as warnings (not errors), keys spelled with `-` or `_`, and
//! scalars kept exactly as written (`0644` must stay `0644`, `yes` stays `yes` where a string is
//! expected) so the typed reading in `parse` decides what a scalar means, like YAML 1.1
//! cloud-init did.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DuplicateKeyPolicy, NonFiniteFloatPolicy, Spanned};
use std::fmt;

/// A place in the document, both counted from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// One node of the document.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    /// For the value of a mapping entry, where its key is written: messages about the value
    /// name the key's line and column, as coreos-cloudinit does (`users:` on one line and a
    /// bad value indented below it is an error at `users:`).
    pub key: Option<Pos>,
    pub kind: Kind,
}

impl Node {
    /// Where messages about this node point: its key when it is a mapping's value, else itself.
    pub fn place(&self) -> Pos {
        self.key.unwrap_or(self.pos)
    }
}

/// What a node holds. Scalars are kept as text; the reader decides their type.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Null,
    Scalar(String),
    /// A `!!binary` scalar, as its base64 text (decoded by the reader that wants it).
    Binary(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key with its place, so warnings can point at it.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

impl Kind {
    /// A short name of the node's shape for "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Kind::Null => "nothing (null)",
            Kind::Scalar(_) => "a scalar",
            Kind::Binary(_) => "binary data (!!binary)",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error as serde-saphyr reports it, split into place and message.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses `text` into a tree. `text` must be the whole document so scalars can be recovered
/// from their byte spans.
pub fn parse_tree(text: &str) -> Result<Node, SyntaxError> {
    // Duplicate keys pass through to our visitor, which keeps the last one like PyYAML and
    // go-yaml did (existing files may rely on it); `parse` warns about them.
    // Non-finite floats (`.nan`) stay text: no cloud-config key wants a float.
    // `!!binary` scalars come as their base64 text, and `to_node` finds the tag in the source:
    // the library would otherwise refuse binary that is not UTF-8, with a hint about its own
    // options that means nothing to a user.
    let options = serde_saphyr::options! {
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
        non_finite_float_policy: NonFiniteFloatPolicy::AsString,
        ignore_binary_tag_for_string: true,
        with_snippet: false,
    };
    let raw: Spanned<Raw> = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let pos = e
            .location()
            .map(|l| Pos {
                line: l.line(),
                column: l.column(),
            })
            .unwrap_or(Pos { line: 1, column: 1 });
        SyntaxError {
            pos,
            message: strip_location(&e.to_string(), pos),
        }
    })?;
    Ok(to_node(raw, text))
}

/// serde-saphyr appends " at line L, column C" to its messages; we print the place first.
fn strip_location(message: &str, pos: Pos) -> String {
    let suffix = format!(" at line {}, column {}", pos.line, pos.column);
    message.strip_suffix(&suffix).unwrap_or(message).to_string()
}

/// The shape serde hands us, before positions are attached.
enum Raw {
    Null,
    Str(String),
    /// A plain scalar that serde-saphyr read as a bool or number; the text is recovered from
    /// the source span, this is only the fallback spelling.
    Typed(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<String>, Spanned<Raw>)>),
}

fn pos_of<T>(s: &Spanned<T>) -> Pos {
    Pos {
        line: s.referenced.line(),
        column: s.referenced.column(),
    }
}

fn to_node(raw: Spanned<Raw>, text: &str) -> Node {
    let pos = pos_of(&raw);
    let kind = match raw.value {
        Raw::Null => Kind::Null,
        Raw::Str(s) if binary_tagged(&raw.defined, text) => Kind::Binary(s),
        Raw::Str(s) => Kind::Scalar(s),
        Raw::Typed(fallback) => Kind::Scalar(source_text(&raw.defined, text).unwrap_or(fallback)),
        Raw::Seq(items) => Kind::Seq(items.into_iter().map(|i| to_node(i, text)).collect()),
        Raw::Map(entries) => Kind::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = Key {
                        pos: pos_of(&k),
                        name: k.value,
                    };
                    let mut value = to_node(v, text);
                    value.key = Some(key.pos);
                    (key, value)
                })
                .collect(),
        ),
    };
    Node {
        pos,
        key: None,
        kind,
    }
}

/// Whether the scalar at `loc` carries the `!!binary` tag: the source just before it, past a
/// block indicator (`|`, `>-`, …) and an opening quote, ends with the tag.
fn binary_tagged(loc: &serde_saphyr::Location, text: &str) -> bool {
    let Some(start) = loc
        .span()
        .byte_offset()
        .and_then(|o| usize::try_from(o).ok())
    else {
        return false;
    };
    let Some(before) = text.get(..start) else {
        return false;
    };
    let before = before.trim_end();
    let before = before
        .strip_suffix(['"', '\''])
        .unwrap_or(before)
        .trim_end();
    let block = before.trim_end_matches(|c: char| c == '-' || c == '+' || c.is_ascii_digit());
    let before = block
        .strip_suffix(['|', '>'])
        .map(str::trim_end)
        .unwrap_or(before);
    before.ends_with("!!binary") || before.ends_with("!<tag:yaml.org,2002:binary>")
}

/// The exact spelling of a plain scalar, taken from the document by its byte span.
fn source_text(loc: &serde_saphyr::Location, text: &str) -> Option<String> {
    let span = loc.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    let slice = text.get(start..start.checked_add(len)?)?.trim();
    // A bool or number is a single token; anything else means the span is not what we think.
    if slice.is_empty() || slice.contains(char::is_whitespace) {
        return None;
    }
    Some(slice.to_string())
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Typed(v.to_string()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Typed(v.to_string()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Typed(v.to_string()))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Raw, E> {
        Ok(Raw::Typed(v.to_string()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
        Ok(Raw::Typed(v.to_string()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Typed(v.to_string()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Raw, E> {
        // Not reached (`!!binary` comes as text, see `parse_tree`); kept total.
        Ok(Raw::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Raw::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(n: &Node) -> &str {
        match &n.kind {
            Kind::Scalar(s) => s,
            other => panic!("not a scalar: {other:?}"),
        }
    }

    fn map(n: &Node) -> &[(Key, Node)] {
        match &n.kind {
            Kind::Map(m) => m,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn scalars_keep_their_spelling_and_place() {
        let text =
            "#cloud-config\na: yes\nb: 0644\nc: 1.10\nd: \"q\"\ne: 0x1F\nf: ~\ng: &x on\nh: *x\n";
        let root = parse_tree(text).unwrap();
        let m = map(&root);
        let got: Vec<(&str, &str)> = m
            .iter()
            .filter(|(_, v)| v.kind != Kind::Null)
            .map(|(k, v)| (k.name.as_str(), scalar(v)))
            .collect();
        assert_eq!(
            got,
            [
                ("a", "yes"),
                ("b", "0644"),
                ("c", "1.10"),
                ("d", "q"),
                ("e", "0x1F"),
                ("g", "on"),
                ("h", "on")
            ]
        );
        assert_eq!(m[1].0.pos, Pos { line: 3, column: 1 });
        assert_eq!(m[1].1.pos, Pos { line: 3, column: 4 });
        assert_eq!(m[5].1.kind, Kind::Null);
    }

    #[test]
    fn duplicate_keys_all_reach_the_reader() {
        let root = parse_tree("a: 1\na: 2\n").unwrap();
        let m = map(&root);
        assert_eq!(m.len(), 2);
        assert_eq!(scalar(&m[1].1), "2");
    }

    #[test]
    fn binary_scalars_are_recognised_by_their_tag() {
        let text = "a: !!binary aGVsbG8K\nb: !!binary |\n  aGVs\n  bG8K\nc: !!binary \"aGk=\"\nd: plain\ne: |\n  !!binary\nf: '!!binary'\n";
        let root = parse_tree(text).unwrap();
        let kinds: Vec<(&str, &Kind)> = map(&root)
            .iter()
            .map(|(k, v)| (k.name.as_str(), &v.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("a", &Kind::Binary("aGVsbG8K".into())),
                ("b", &Kind::Binary("aGVs\nbG8K\n".into())),
                ("c", &Kind::Binary("aGk=".into())),
                ("d", &Kind::Scalar("plain".into())),
                ("e", &Kind::Scalar("!!binary\n".into())),
                ("f", &Kind::Scalar("!!binary".into())),
            ]
        );
        // A value's messages go to its key.
        let b = &map(&root)[1].1;
        assert_eq!(b.pos.line, 3);
        assert_eq!(b.place(), Pos { line: 2, column: 1 });
    }

    #[test]
    fn syntax_error_has_place_without_suffix() {
        let err = parse_tree("a: [b\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 1, column: 4 });
        assert_eq!(err.message, "unclosed bracket '['");
    }
}
