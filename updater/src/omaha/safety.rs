//! The guard in front of the serde reader: Omaha documents arrive from the network (at the server,
//! from any machine), so size, DTDs, entities, depth and well-formedness are checked before any
//! value is built.

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
    check_document(xml, root)?;
    quick_xml::de::from_str(xml).map_err(|source| OmahaError::Shape { root, source })
}

/// Walks the whole document once with the low-level reader. The serde reader silently skips
/// a DOCTYPE and tolerates a second root or trailing text; this pass makes those errors.
fn check_document(xml: &str, expected_root: &'static str) -> Result<(), OmahaError> {
    if xml.len() > MAX_DOCUMENT_BYTES {
        return Err(OmahaError::TooLarge {
            size: xml.len(),
            max: MAX_DOCUMENT_BYTES,
        });
    }
    if let Some((at, c)) = xml.char_indices().find(|&(_, c)| !is_xml_char(c)) {
        return Err(malformed(
            xml,
            at,
            format!("character U+{:04X} is not allowed in XML", u32::from(c)),
        ));
    }
    let mut walk = Walk::default();
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
#[derive(Default)]
struct Walk {
    /// Names of the elements open at the current point, outermost first.
    open: Vec<String>,
    root: Option<String>,
}

impl Walk {
    fn visit(&mut self, xml: &str, at: usize, event: &Event) -> Result<(), OmahaError> {
        match event {
            Event::DocType(_) => Err(OmahaError::Doctype {
                line: line_column(xml, at).0,
            }),
            Event::Start(e) => {
                self.element(xml, at, e)?;
                self.open.push(name(e));
                if self.open.len() > MAX_DEPTH {
                    return Err(OmahaError::TooDeep {
                        line: line_column(xml, at).0,
                        max: MAX_DEPTH,
                    });
                }
                Ok(())
            }
            Event::Empty(e) => self.element(xml, at, e),
            Event::End(_) => {
                // The reader already checked that the end name matches the open element.
                self.open.pop();
                Ok(())
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
        for attribute in e.attributes() {
            let attribute = attribute.map_err(|err| malformed(xml, at, err.to_string()))?;
            let key = attribute.key.into_inner();
            let value = attribute
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|err| malformed(xml, at, format!("attribute {key}: {err}")))?;
            if let Some(c) = value.chars().find(|&c| !is_xml_char(c)) {
                let message = format!(
                    "attribute {key} refers to U+{:04X}, not allowed in XML",
                    u32::from(c)
                );
                return Err(malformed(xml, at, message));
            }
        }
        Ok(())
    }

    fn finish(self, xml: &str, expected_root: &'static str) -> Result<(), OmahaError> {
        if let Some(open) = self.open.last() {
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
