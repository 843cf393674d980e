//! The guard in front of the readers: Omaha documents arrive from the network (at the server,
//! from any machine), so size, DTDs, entities, depth and well-formedness are checked before any
//! value is built. The walk hands each checked element and attribute to a [`Sink`]: the
//! server's request reader builds its request there in the same pass; responses are read by
//! serde after the walk.

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};
use serde::de::DeserializeOwned;

use super::OmahaError;

/// The largest document accepted. A request from update_engine is under 1 KiB and a response
/// with a few packages under 2 KiB; 64 KiB leaves room for many apps and nothing for abuse.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// The deepest element nesting accepted. Omaha documents nest six deep
/// (`response/app/updatecheck/manifest/packages/package`); the margin allows unknown extensions.
pub const MAX_DEPTH: usize = 32;

/// The five entities XML predefines; no others exist without a DTD, and DTDs are refused.
const PREDEFINED_ENTITIES: [&str; 5] = ["lt", "gt", "amp", "apos", "quot"];

/// Checks `xml` and reads it as a `T` whose root element must be `<root>`.
pub(super) fn parse_document<T: DeserializeOwned>(
    xml: &str,
    root: &'static str,
) -> Result<T, OmahaError> {
    check_document(xml, root, &mut ())?;
    quick_xml::de::from_str(xml).map_err(|source| OmahaError::Shape { root, source })
}

/// What sees the document's elements as the walk checks them, in document order.
pub(super) trait Sink {
    /// An element starts (its attributes follow, then its children, then `close`).
    fn open(&mut self, name: &str);
    /// An attribute of the element opened last, its value unescaped and normalized.
    fn attribute(&mut self, key: &str, value: Cow<'_, str>) -> Result<(), String>;
    /// The element opened last ends. `Err` says what the element lacks.
    fn close(&mut self) -> Result<(), String>;
}

/// The walk alone, for readers that build their values afterwards.
impl Sink for () {
    fn open(&mut self, _: &str) {}
    fn attribute(&mut self, _: &str, _: Cow<'_, str>) -> Result<(), String> {
        Ok(())
    }
    fn close(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// Walks the whole document once with the low-level reader, handing each element to `sink`.
/// The serde reader silently skips a DOCTYPE and tolerates a second root or trailing text;
/// this pass makes those errors. A sink's error is a [`OmahaError::Shape`] of `<expected_root>`.
pub(super) fn check_document(
    xml: &str,
    expected_root: &'static str,
    sink: &mut dyn Sink,
) -> Result<(), OmahaError> {
    if xml.len() > MAX_DOCUMENT_BYTES {
        return Err(OmahaError::TooLarge {
            size: xml.len(),
            max: MAX_DOCUMENT_BYTES,
        });
    }
    if let Some((at, c)) = first_non_xml_char(xml) {
        return Err(malformed(
            xml,
            at,
            format!("character U+{:04X} is not allowed in XML", u32::from(c)),
        ));
    }
    let mut walk = Walk {
        open: OpenNames::default(),
        root: None,
        sink,
        expected_root,
    };
    let mut reader = Reader::from_str(xml);
    loop {
        let start = offset(reader.buffer_position());
        let event = reader
            .read_event()
            .map_err(|e| malformed(xml, offset(reader.error_position()), e.to_string()))?;
        match event {
            Event::Eof => break,
            event => walk.visit(xml, start, &event)?,
        }
    }
    walk.finish(xml, expected_root)
}

/// What the walk has seen so far.
struct Walk<'s> {
    /// Names of the elements open at the current point, outermost first.
    open: OpenNames,
    root: Option<String>,
    sink: &'s mut dyn Sink,
    expected_root: &'static str,
}

impl Walk<'_> {
    fn visit(&mut self, xml: &str, at: usize, event: &Event) -> Result<(), OmahaError> {
        match event {
            Event::Decl(d) => {
                // The serde reader refused a broken declaration; so does the walk, for the
                // one-pass reader.
                let broken = |e: &dyn std::fmt::Display| {
                    malformed(xml, at, format!("the XML declaration: {e}"))
                };
                let version = d.version().map_err(|e| broken(&e))?;
                let known = version.strip_prefix("1.").is_some_and(|minor| {
                    !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit())
                });
                if !known {
                    return Err(broken(&format!("version {version:?} is not XML 1.x")));
                }
                if let Some(encoding) = d.encoding() {
                    encoding.map_err(|e| broken(&e))?;
                }
                if let Some(standalone) = d.standalone() {
                    standalone.map_err(|e| broken(&e))?;
                }
                Ok(())
            }
            Event::DocType(_) => Err(OmahaError::Doctype {
                line: line_column(xml, at).0,
            }),
            Event::Start(e) => {
                self.element(xml, at, e)?;
                self.open.push(e.name().into_inner());
                if self.open.len() > MAX_DEPTH {
                    return Err(OmahaError::TooDeep {
                        line: line_column(xml, at).0,
                        max: MAX_DEPTH,
                    });
                }
                Ok(())
            }
            Event::Empty(e) => {
                self.element(xml, at, e)?;
                self.close()
            }
            Event::End(_) => {
                // The reader already checked that the end name matches the open element.
                self.open.pop();
                self.close()
            }
            Event::GeneralRef(r) => {
                let text = String::from(&**r);
                if r.is_char_ref() {
                    match r.resolve_char_ref() {
                        Ok(Some(c)) if is_xml_char(c) => Ok(()),
                        Ok(_) | Err(_) => Err(malformed(
                            xml,
                            at,
                            format!("&{text}; is not a valid character reference"),
                        )),
                    }
                } else if PREDEFINED_ENTITIES.contains(&text.as_str()) {
                    Ok(())
                } else {
                    Err(OmahaError::Entity {
                        line: line_column(xml, at).0,
                        name: text,
                    })
                }
            }
            Event::Text(t) if self.open.is_empty() => {
                if t.bytes().all(|b| b.is_ascii_whitespace()) {
                    Ok(())
                } else {
                    Err(malformed(xml, at, "text outside the root element".into()))
                }
            }
            Event::CData(_) if self.open.is_empty() => {
                Err(malformed(xml, at, "CDATA outside the root element".into()))
            }
            _ => Ok(()),
        }
    }

    /// Checks a start or empty element: a single root, and attributes that are well-formed,
    /// not repeated, and refer to no entity beyond the predefined ones.
    fn element(&mut self, xml: &str, at: usize, e: &BytesStart) -> Result<(), OmahaError> {
        if self.open.is_empty() {
            if let Some(first) = &self.root {
                return Err(malformed(
                    xml,
                    at,
                    format!("a second root element <{}> after <{first}>", name(e)),
                ));
            }
            self.root = Some(name(e));
        }
        self.sink.open(e.name().into_inner());
        for attribute in e.attributes() {
            let attribute = attribute.map_err(|err| malformed(xml, at, err.to_string()))?;
            let key = attribute.key.into_inner();
            // The raw text passed the document's character check; only a character
            // reference can bring in another character.
            let has_reference = attribute.value.contains('&');
            let value = attribute
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|err| malformed(xml, at, format!("attribute {key}: {err}")))?;
            if let Some(c) = value.chars().find(|&c| has_reference && !is_xml_char(c)) {
                let message = format!(
                    "attribute {key} refers to U+{:04X}, not allowed in XML",
                    u32::from(c)
                );
                return Err(malformed(xml, at, message));
            }
            self.sink
                .attribute(key, value)
                .map_err(|message| self.shape(message))?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), OmahaError> {
        self.sink.close().map_err(|message| self.shape(message))
    }

    fn shape(&self, message: String) -> OmahaError {
        OmahaError::Shape {
            root: self.expected_root,
            source: quick_xml::DeError::Custom(message),
        }
    }

    fn finish(self, xml: &str, expected_root: &'static str) -> Result<(), OmahaError> {
        if let Some(open) = self.open.innermost() {
            return Err(malformed(
                xml,
                xml.len(),
                format!("the document ends inside <{open}>"),
            ));
        }
        match self.root {
            None => Err(malformed(xml, xml.len(), "no root element".into())),
            Some(found) if found != expected_root => Err(OmahaError::WrongRoot {
                expected: expected_root,
                found,
            }),
            Some(_) => Ok(()),
        }
    }
}

/// A stack of element names in one buffer: a document's walk allocates it once, not once per
/// element.
#[derive(Default)]
struct OpenNames {
    names: String,
    /// Where each name ends in `names`.
    ends: Vec<usize>,
}

impl OpenNames {
    fn push(&mut self, name: &str) {
        self.names.push_str(name);
        self.ends.push(self.names.len());
    }

    fn pop(&mut self) {
        self.ends.pop();
        self.names.truncate(self.ends.last().copied().unwrap_or(0));
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn innermost(&self) -> Option<&str> {
        let end = *self.ends.last()?;
        let start = self.ends.len().checked_sub(2).map_or(0, |i| self.ends[i]);
        Some(&self.names[start..end])
    }
}

/// The first character of `xml` that XML does not allow, with its offset. ASCII, nearly all of
/// an Omaha document, is checked a byte at a time without decoding.
fn first_non_xml_char(xml: &str) -> Option<(usize, char)> {
    let bytes = xml.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'\t' | b'\n' | b'\r' | 0x20..=0x7f => at += 1,
            _ => {
                let c = xml[at..].chars().next()?;
                if !is_xml_char(c) {
                    return Some((at, c));
                }
                at += c.len_utf8();
            }
        }
    }
    None
}

/// XML 1.0's `Char` production. Control characters other than tab, line feed and carriage return
/// are refused on input, so that nothing this module parsed can make `to_xml` write invalid XML.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn name(e: &BytesStart) -> String {
    e.name().into_inner().to_owned()
}

/// Reader positions are `u64`; the document is at most `MAX_DOCUMENT_BYTES`, so they fit.
fn offset(position: u64) -> usize {
    usize::try_from(position).unwrap_or(usize::MAX)
}

fn malformed(xml: &str, at: usize, message: String) -> OmahaError {
    let (line, column) = line_column(xml, at);
    OmahaError::Malformed {
        line,
        column,
        message,
    }
}

/// 1-based line and column (in bytes) of byte offset `at`, clamped to the document.
fn line_column(xml: &str, at: usize) -> (usize, usize) {
    let before = &xml.as_bytes()[..at.min(xml.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.len()
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_scan_finds_what_the_char_scan_finds() {
        let texts = [
            "plain <a b=\"c\"/>\t\r\n\u{7f}",
            "é and ü, then \u{1}",
            "\u{fffe} first",
            "ok \u{10000} \u{d7ff} \u{e000} \u{fffd}",
            "tail \u{0}",
            "mixed ä\u{b}",
            "",
        ];
        for text in texts {
            let by_char = text.char_indices().find(|&(_, c)| !is_xml_char(c));
            assert_eq!(first_non_xml_char(text), by_char, "{text:?}");
        }
    }
}
