//! Package relationship fields (`Depends`, `Pre-Depends`, `Provides`) as Debian Policy §7.1
//! writes them: comma-separated groups of `|` alternatives, each `name[:arch] [(op version)]`.

use std::fmt;

use super::version::Version;

/// A version relation operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "<<" => Op::Lt,
            // `<` and `>` are obsolete spellings of `<=` and `>=` (Policy §7.1).
            "<=" | "<" => Op::Le,
            "=" => Op::Eq,
            ">=" | ">" => Op::Ge,
            ">>" => Op::Gt,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<<",
            Op::Le => "<=",
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Gt => ">>",
        }
    }

    /// Whether `have op want` holds.
    pub fn holds(self, have: &Version, want: &Version) -> bool {
        let o = have.cmp(want);
        match self {
            Op::Lt => o.is_lt(),
            Op::Le => o.is_le(),
            Op::Eq => o.is_eq(),
            Op::Ge => o.is_ge(),
            Op::Gt => o.is_gt(),
        }
    }
}

/// One alternative: a package name, an optional architecture qualifier, an optional version
/// constraint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub name: String,
    /// `any`, `native` or an architecture name, from `name:arch`.
    pub arch: Option<String>,
    pub constraint: Option<(Op, Version)>,
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(arch) = &self.arch {
            write!(f, ":{arch}")?;
        }
        if let Some((op, v)) = &self.constraint {
            write!(f, " ({} {v})", op.as_str())?;
        }
        Ok(())
    }
}

/// A group of alternatives, any one of which satisfies it.
pub type Alternatives = Vec<Relation>;

/// Writes a group as Debian does (`a (>= 1) | b`).
pub fn display_group(group: &[Relation]) -> String {
    group
        .iter()
        .map(Relation::to_string)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Parses a whole relationship field. Architecture restrictions (`[amd64]`) and build
/// profiles (`<!nocheck>`) belong to source packages and are dropped.
pub fn parse_relations(field: &str) -> Result<Vec<Alternatives>, String> {
    field
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(|group| group.split('|').map(parse_relation).collect())
        .collect()
}

/// Parses one `name[:arch] [(op version)]`.
pub fn parse_relation(text: &str) -> Result<Relation, String> {
    let text = strip_restrictions(text);
    let text = text.trim();
    let (head, constraint) = match text.split_once('(') {
        Some((head, rest)) => {
            let inner = rest
                .strip_suffix(')')
                .ok_or_else(|| format!("unclosed `(` in {text:?}"))?
                .trim();
            let split = inner
                .find(|c: char| !matches!(c, '<' | '>' | '='))
                .unwrap_or(inner.len());
            let (op, version) = inner.split_at(split);
            let op = Op::parse(op.trim()).ok_or_else(|| format!("bad operator in {text:?}"))?;
            (head.trim(), Some((op, Version::parse(version.trim())?)))
        }
        None => (text, None),
    };
    let (name, arch) = match head.split_once(':') {
        Some((n, a)) => (n, Some(a.to_string())),
        None => (head, None),
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("bad package name in {text:?}"));
    }
    Ok(Relation {
        name: name.to_string(),
        arch,
        constraint,
    })
}

/// Removes `[...]` and `<...>` spans that stand outside the version parentheses (where `<`
/// is an operator).
fn strip_restrictions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_parens, mut skipping) = (false, None);
    for c in text.chars() {
        match (skipping, c) {
            (Some(close), c) if c == close => skipping = None,
            (Some(_), _) => {}
            (None, '[') if !in_parens => skipping = Some(']'),
            (None, '<') if !in_parens => skipping = Some('>'),
            (None, c) => {
                if c == '(' {
                    in_parens = true;
                } else if c == ')' {
                    in_parens = false;
                }
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups_ops_and_qualifiers() {
        let r = parse_relations(
            "libc6 (>= 2.34), default-dbus-system-bus | dbus-system-bus, python3:any (<< 3.12~), \
             foo [amd64] <!nocheck>, bar (<< 2:1.0-1)",
        )
        .unwrap();
        assert_eq!(r.len(), 5);
        assert_eq!(r[0][0].to_string(), "libc6 (>= 2.34)");
        assert_eq!(
            display_group(&r[1]),
            "default-dbus-system-bus | dbus-system-bus"
        );
        assert_eq!(r[2][0].arch.as_deref(), Some("any"));
        assert_eq!(r[2][0].constraint.as_ref().unwrap().0, Op::Lt);
        assert_eq!(r[3][0].to_string(), "foo");
        assert_eq!(r[4][0].constraint.as_ref().unwrap().1.as_str(), "2:1.0-1");
        let v = |s| Version::parse(s).unwrap();
        assert!(Op::Lt.holds(&v("3.11.2-1"), &v("3.12~")));
        assert!(!Op::Gt.holds(&v("1.0"), &v("1.0")));
        assert!(Op::Le.holds(&v("1.0"), &v("1.0")));
    }

    #[test]
    fn bad_relations_are_reported() {
        assert!(parse_relation("foo (>= 1")
            .unwrap_err()
            .contains("unclosed"));
        assert!(parse_relation("foo (~ 1)")
            .unwrap_err()
            .contains("operator"));
        assert!(parse_relation("(>= 1)").unwrap_err().contains("name"));
    }
}
