//! What a user-data is, before it is read as a cloud-config: empty, a `#cloud-config` document,
//! a script (`#!`), or multipart MIME (Flatcar's user-data with several parts), as
//! coreos-cloudinit told them apart. Each cloud-config part of a multipart user-data is parsed
//! with [`crate::parse`], its lines counted in the whole user-data.

use crate::parse::{parse, Parsed, HEADER};
use crate::read::{base64_decode, ConfigError, ErrorKind, Warning};
use crate::tree::Pos;

/// A user-data, told apart.
#[derive(Clone, Debug, PartialEq)]
pub enum UserData {
    /// Nothing, or only blanks: nothing to apply, and not an error.
    Empty,
    CloudConfig(Box<Parsed>),
    /// A script; `interpreter` is its `#!` line without the `#!`.
    Script {
        interpreter: String,
    },
    Multipart(Vec<Part>),
}

/// One part of a multipart user-data.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    /// The part's `Content-Type` (without parameters), lower case.
    pub content_type: String,
    /// The line of the user-data where the part's content begins.
    pub line: u64,
    pub kind: PartKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PartKind {
    /// Warnings are placed on the lines of the whole user-data.
    CloudConfig(Box<Parsed>),
    Script {
        interpreter: String,
        /// The part's content, the `#!` line first.
        body: String,
    },
    /// What coreos-cloudinit also passed over (plain text, an Ignition config), and why.
    Ignored(String),
}

/// Tells the user-data apart and parses what is cloud-config in it.
pub fn read_user_data(bytes: &[u8]) -> Result<UserData, ConfigError> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        // A cloud-config must be UTF-8; the parser says where it is not.
        Err(_) => {
            return crate::parse::parse_bytes(bytes).map(|p| UserData::CloudConfig(Box::new(p)))
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Ok(UserData::Empty);
    }
    let first = text.lines().next().unwrap_or("").trim_end();
    if let Some(interpreter) = first.strip_prefix("#!") {
        return Ok(UserData::Script {
            interpreter: interpreter.trim().to_string(),
        });
    }
    if is_mime(first) {
        return multipart(text).map(UserData::Multipart);
    }
    parse(text).map(|p| UserData::CloudConfig(Box::new(p)))
}

fn is_mime(first_line: &str) -> bool {
    let lower = first_line.to_ascii_lowercase();
    lower.starts_with("content-type:") || lower.starts_with("mime-version:")
}

fn mime_error(line: u64, message: String) -> ConfigError {
    ConfigError::document(
        Pos { line, column: 1 },
        ErrorKind::Invalid(format!("multipart user-data: {message}")),
    )
}

/// Headers from `lines[start..]` up to the first empty line: (name lower case, value), and
/// the index of the first line after them. Continuation lines are joined.
fn headers(lines: &[&str], start: usize) -> (Vec<(String, String)>, usize) {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut i = start;
    while i < lines.len() {
        let line = lines[i].trim_end_matches('\r');
        i += 1;
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    (out, i)
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `multipart/mixed; boundary="x"` → (`multipart/mixed`, parameter `boundary`).
fn content_type(value: &str) -> (String, Option<String>) {
    let mut parts = value.split(';');
    let kind = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let boundary = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("boundary")).then(|| v.trim().trim_matches('"').to_string())
    });
    (kind, boundary)
}

fn multipart(text: &str) -> Result<Vec<Part>, ConfigError> {
    let lines: Vec<&str> = text.split('\n').collect();
    let (top, _) = headers(&lines, 0);
    let (kind, boundary) = content_type(header(&top, "content-type").unwrap_or(""));
    if !kind.starts_with("multipart/") {
        return Err(mime_error(1, format!("the Content-Type is {kind:?}, not multipart/mixed; begin a cloud-config with `#cloud-config`, a script with `#!`")));
    }
    let boundary = boundary.filter(|b| !b.is_empty()).ok_or_else(|| {
        mime_error(
            1,
            "the Content-Type has no `boundary=`; add the boundary that separates the parts".into(),
        )
    })?;
    let delimiter = format!("--{boundary}");
    let close = format!("{delimiter}--");
    // The index of each delimiter line, up to the closing one.
    let mut marks = Vec::new();
    let mut closed = false;
    for (i, l) in lines.iter().enumerate() {
        let l = l.trim_end();
        if l == close {
            marks.push(i);
            closed = true;
            break;
        }
        if l == delimiter {
            marks.push(i);
        }
    }
    if marks.is_empty() {
        return Err(mime_error(
            1,
            format!("no part begins with `{delimiter}`; separate the parts with that line"),
        ));
    }
    if !closed {
        marks.push(lines.len());
    }
    let mut parts = Vec::new();
    for pair in marks.windows(2) {
        let (h, body_start) = headers(&lines, pair[0] + 1);
        let body_end = pair[1].max(body_start);
        let body = lines[body_start..body_end].join("\n");
        let line = body_start as u64 + 1;
        let (kind, _) = content_type(header(&h, "content-type").unwrap_or("text/plain"));
        let body = match header(&h, "content-transfer-encoding").map(str::to_ascii_lowercase) {
            None => body,
            Some(e) if ["7bit", "8bit", "binary"].contains(&e.as_str()) => body,
            Some(e) if e == "base64" => {
                let bytes = base64_decode(&body).map_err(|err| {
                    mime_error(line, format!("the part is not valid base64 ({err})"))
                })?;
                String::from_utf8(bytes).map_err(|_| {
                    mime_error(line, "the part's base64 content is not UTF-8 text".into())
                })?
            }
            Some(e) => {
                return Err(mime_error(
                    line.saturating_sub(1),
                    format!("Content-Transfer-Encoding {e:?} is not supported; use 7bit or base64"),
                ))
            }
        };
        parts.push(Part {
            kind: part_kind(&kind, &body, line)?,
            content_type: kind,
            line,
        });
    }
    Ok(parts)
}

fn part_kind(content_type: &str, body: &str, line: u64) -> Result<PartKind, ConfigError> {
    let first = body.lines().next().unwrap_or("").trim_end();
    if content_type == "text/x-shellscript" || first.starts_with("#!") {
        return Ok(PartKind::Script {
            interpreter: first.strip_prefix("#!").unwrap_or("").trim().to_string(),
            body: body.to_string(),
        });
    }
    if content_type == "text/cloud-config" || first == HEADER {
        // The header is optional in a part whose type says what it is.
        let (doc, shift) = if first == HEADER {
            (body.to_string(), line - 1)
        } else {
            (format!("{HEADER}\n{body}"), line - 2)
        };
        let moved = |l: u64| l + shift;
        return match parse(&doc) {
            Ok(mut parsed) => {
                for w in &mut parsed.warnings {
                    *w = Warning {
                        line: moved(w.line),
                        ..w.clone()
                    };
                }
                Ok(PartKind::CloudConfig(Box::new(parsed)))
            }
            Err(mut e) => {
                e.line = moved(e.line);
                Err(e)
            }
        };
    }
    let why = if content_type == "application/json" || first.starts_with('{') {
        "JSON (an Ignition config?), which Kiln does not read"
    } else {
        "neither a cloud-config nor a script"
    };
    Ok(PartKind::Ignored(format!("{content_type}: {why}")))
}

/// What first boot does with a user-data, a line each (for `validate-config`), and the warnings
/// of its cloud-config parts.
pub fn describe(user_data: UserData) -> (Vec<String>, Vec<Warning>) {
    let script = |interpreter: &str| {
        format!("a script (#!{interpreter}): first boot keeps it, and kiln-user-data.service runs it once the network is up, its output in that unit's journal")
    };
    match user_data {
        UserData::Empty => (
            vec!["an empty user-data: nothing to apply".into()],
            Vec::new(),
        ),
        UserData::CloudConfig(parsed) => (Vec::new(), parsed.warnings),
        UserData::Script { interpreter } => (vec![script(&interpreter)], Vec::new()),
        UserData::Multipart(parts) => {
            let mut lines = vec![format!(
                "a multipart user-data of {} parts, each applied or kept in order",
                parts.len()
            )];
            let mut warnings = Vec::new();
            for part in parts {
                let what = match part.kind {
                    PartKind::CloudConfig(parsed) => {
                        warnings.extend(parsed.warnings);
                        "a cloud-config, checked".to_string()
                    }
                    PartKind::Script { interpreter, .. } => script(&interpreter),
                    PartKind::Ignored(why) => format!("ignored ({why})"),
                };
                lines.push(format!(
                    "part at line {} ({}): {what}",
                    part.line, part.content_type
                ));
            }
            (lines, warnings)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_script_and_cloud_config_are_told_apart() {
        assert_eq!(read_user_data(b"").unwrap(), UserData::Empty);
        assert_eq!(read_user_data(b" \n\n").unwrap(), UserData::Empty);
        assert_eq!(
            read_user_data(b"#!/bin/bash\necho hi\n").unwrap(),
            UserData::Script {
                interpreter: "/bin/bash".into()
            }
        );
        match read_user_data(b"#cloud-config\nhostname: a\n").unwrap() {
            UserData::CloudConfig(p) => assert_eq!(p.config.hostname.as_deref(), Some("a")),
            other => panic!("{other:?}"),
        }
        let e = read_user_data(b"hostname: a\n").unwrap_err();
        assert!(e.to_string().contains("#cloud-config"), "{e}");
    }

    const MIME: &str = "Content-Type: multipart/mixed; boundary=\"XX\"\nMIME-Version: 1.0\n\n--XX\nContent-Type: text/cloud-config\n\nhostname: a\nbogus: 1\n\n--XX\nContent-Type: text/x-shellscript\n\n#!/bin/sh\ntouch /x\n\n--XX\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\nI2Nsb3VkLWNvbmZpZwpob3N0bmFtZTogYgo=\n--XX\nContent-Type: application/json\n\n{}\n--XX--\n";

    #[test]
    fn multipart_parts_are_read_with_their_lines() {
        let UserData::Multipart(parts) = read_user_data(MIME.as_bytes()).unwrap() else {
            panic!("not multipart");
        };
        let kinds: Vec<&str> = parts.iter().map(|p| p.content_type.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "text/cloud-config",
                "text/x-shellscript",
                "text/plain",
                "application/json"
            ]
        );
        let PartKind::CloudConfig(first) = &parts[0].kind else {
            panic!("{:?}", parts[0].kind)
        };
        assert_eq!(first.config.hostname.as_deref(), Some("a"));
        // `bogus:` is line 8 of the whole user-data.
        assert_eq!(first.warnings.len(), 1);
        assert_eq!(
            (first.warnings[0].line, first.warnings[0].key.as_str()),
            (8, "bogus")
        );
        assert_eq!(
            parts[1].kind,
            PartKind::Script {
                interpreter: "/bin/sh".into(),
                body: "#!/bin/sh\ntouch /x\n".into()
            }
        );
        let PartKind::CloudConfig(third) = &parts[2].kind else {
            panic!("{:?}", parts[2].kind)
        };
        assert_eq!(third.config.hostname.as_deref(), Some("b"));
        assert!(matches!(parts[3].kind, PartKind::Ignored(_)));
    }

    #[test]
    fn an_error_in_a_part_names_the_line_of_the_whole_user_data() {
        let doc = MIME.replace("hostname: a", "hostname: -bad-");
        let e = read_user_data(doc.as_bytes()).unwrap_err();
        assert_eq!(e.line, 7, "{e}");
        let e = read_user_data(b"Content-Type: text/plain\n\nx\n").unwrap_err();
        assert!(e.to_string().contains("not multipart/mixed"), "{e}");
        let e = read_user_data(b"Content-Type: multipart/mixed\n\n").unwrap_err();
        assert!(e.to_string().contains("boundary"), "{e}");
    }
}
