//! libkmod's binary module indices (`modules.dep.bin`, `modules.alias.bin`, ...): a trie of
//! ASCII keys, each with a list of prioritised values, which `modprobe` and udev read instead of
//! the text indices.
//!
//! The layout is the one kmod's `libkmod-index.c` documents (read there, written here from
//! scratch). All integers are 32-bit big-endian. The file starts with the magic `0xB007F457`,
//! the version `0x00020001` and the offset of the root node. A node is, in this order: its
//! prefix (the label characters after the one that leads to it, NUL-terminated, omitted when
//! empty); when it has children, the first and last child character and one node offset per
//! character in between (0 for none); when it has values, their count and, for each, the
//! priority and the NUL-terminated value. The top bits of a node offset say which parts are
//! present. Nodes are written children first, in character order, as depmod writes them, so
//! the same keys and values give depmod's bytes.

use std::collections::BTreeMap;

const MAGIC: u32 = 0xB007_F457;
const VERSION: u32 = 0x0002_0001;
const FLAG_PREFIX: u32 = 0x8000_0000;
const FLAG_VALUES: u32 = 0x4000_0000;
const FLAG_CHILDREN: u32 = 0x2000_0000;
/// Offsets share their word with the flags: a file must stay below 256 MiB.
const OFFSET_MASK: u32 = 0x0FFF_FFFF;

/// An index that cannot be written. Each names the offending text.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("module index: {text:?} has a character outside 7-bit ASCII (or a NUL), which libkmod's index cannot hold; rename the module or alias")]
    NotAscii { text: String },
    #[error("module index would be {bytes} bytes, beyond the 256 MiB its 28-bit offsets reach")]
    TooLarge { bytes: usize },
}

/// One trie node: the rest of its label, its values, and children by their first character.
#[derive(Debug, Default)]
struct Node {
    prefix: Vec<u8>,
    /// (priority, value), ascending priority; among equal priorities the latest insert first.
    values: Vec<(u32, String)>,
    children: BTreeMap<u8, Node>,
}

/// Builds one binary index in memory; [`IndexBuilder::to_bytes`] serialises it.
#[derive(Debug, Default)]
pub struct IndexBuilder {
    root: Node,
}

fn check_ascii(text: &str) -> Result<(), IndexError> {
    if text.bytes().all(|b| b != 0 && b < 0x80) {
        Ok(())
    } else {
        Err(IndexError::NotAscii {
            text: text.to_string(),
        })
    }
}

impl IndexBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value` under `key` with `priority` (lower sorts first; libkmod takes the first
    /// value of a key as the answer for `modules.dep.bin`). A repeated value is kept, as depmod
    /// keeps it.
    pub fn insert(&mut self, key: &str, value: &str, priority: u32) -> Result<(), IndexError> {
        check_ascii(key)?;
        check_ascii(value)?;
        let mut node = &mut self.root;
        let mut rest = key.as_bytes();
        loop {
            let common = node
                .prefix
                .iter()
                .zip(rest)
                .take_while(|(a, b)| a == b)
                .count();
            if common < node.prefix.len() {
                split(node, common);
            }
            rest = &rest[common..];
            let Some((&ch, tail)) = rest.split_first() else {
                add_value(&mut node.values, value, priority);
                return Ok(());
            };
            node = node.children.entry(ch).or_insert_with(|| Node {
                prefix: tail.to_vec(),
                ..Node::default()
            });
            // A new child's prefix is the whole tail, so the next round ends in it.
            rest = tail;
        }
    }

    /// The index file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, IndexError> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes()); // root offset, patched below
        let root = write_node(&self.root, &mut out)?;
        out[8..12].copy_from_slice(&root.to_be_bytes());
        Ok(out)
    }
}

/// Splits `node` after `at` characters of its prefix: the node keeps the first `at`, and a new
/// child (reached by the character at `at`) takes the rest, the values and the children.
fn split(node: &mut Node, at: usize) {
    let ch = node.prefix[at];
    let child = Node {
        prefix: node.prefix[at + 1..].to_vec(),
        values: std::mem::take(&mut node.values),
        children: std::mem::take(&mut node.children),
    };
    node.prefix.truncate(at);
    node.children.insert(ch, child);
}

/// Inserts before the first value of equal or higher priority, as depmod does: values of one
/// priority end up newest first.
fn add_value(values: &mut Vec<(u32, String)>, value: &str, priority: u32) {
    let at = values.iter().take_while(|(p, _)| *p < priority).count();
    values.insert(at, (priority, value.to_string()));
}

/// Writes `node` after its children (post order) and returns its offset word with flags.
fn write_node(node: &Node, out: &mut Vec<u8>) -> Result<u32, IndexError> {
    let mut child_offsets = Vec::new();
    if let (Some((&first, _)), Some((&last, _))) = (
        node.children.first_key_value(),
        node.children.last_key_value(),
    ) {
        for ch in first..=last {
            child_offsets.push(match node.children.get(&ch) {
                Some(child) => write_node(child, out)?,
                None => 0,
            });
        }
    }
    let offset = u32::try_from(out.len())
        .ok()
        .filter(|&o| o <= OFFSET_MASK)
        .ok_or(IndexError::TooLarge { bytes: out.len() })?;
    let mut word = offset;
    if !node.prefix.is_empty() {
        out.extend_from_slice(&node.prefix);
        out.push(0);
        word |= FLAG_PREFIX;
    }
    if let (Some((&first, _)), Some((&last, _))) = (
        node.children.first_key_value(),
        node.children.last_key_value(),
    ) {
        out.push(first);
        out.push(last);
        for o in child_offsets {
            out.extend_from_slice(&o.to_be_bytes());
        }
        word |= FLAG_CHILDREN;
    }
    if !node.values.is_empty() {
        let count = node.values.len() as u32;
        out.extend_from_slice(&count.to_be_bytes());
        for (priority, value) in &node.values {
            out.extend_from_slice(&priority.to_be_bytes());
            out.extend_from_slice(value.as_bytes());
            out.push(0);
        }
        word |= FLAG_VALUES;
    }
    Ok(word)
}

/// An alias as the index stores it: `-` becomes `_` outside `[...]` sets, as libkmod normalises
/// the names it looks up. `None` for an unmatched bracket, which depmod leaves out of the index.
pub fn normalize_alias(alias: &str) -> Option<String> {
    let mut out = String::with_capacity(alias.len());
    let mut in_set = false;
    for c in alias.chars() {
        match c {
            '[' if !in_set => in_set = true,
            ']' if in_set => in_set = false,
            ']' => return None,
            '-' if !in_set => {
                out.push('_');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    (!in_set).then_some(out)
}

/// Reads the values stored under exactly `key` (for tests of the writer; modprobe is the
/// reader that counts). `None` when the bytes are not an index.
#[cfg(test)]
pub(crate) fn lookup(index: &[u8], key: &str) -> Option<Vec<(u32, String)>> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(index.get(at..at + 4)?.try_into().ok()?))
    };
    if word(0)? != MAGIC || word(4)? != VERSION {
        return None;
    }
    let mut node = word(8)?;
    let mut rest = key.as_bytes();
    loop {
        let mut at = (node & OFFSET_MASK) as usize;
        if node & FLAG_PREFIX != 0 {
            let len = index.get(at..)?.iter().position(|&b| b == 0)?;
            let prefix = &index[at..at + len];
            let Some(after) = rest.strip_prefix(prefix) else {
                return Some(Vec::new());
            };
            rest = after;
            at += len + 1;
        }
        let mut children = None;
        if node & FLAG_CHILDREN != 0 {
            let (first, last) = (*index.get(at)?, *index.get(at + 1)?);
            children = Some((first, last, at + 2));
            at += 2 + 4 * (last as usize + 1 - first as usize);
        }
        let Some((&ch, tail)) = rest.split_first() else {
            let mut values = Vec::new();
            if node & FLAG_VALUES != 0 {
                let count = word(at)?;
                at += 4;
                for _ in 0..count {
                    let priority = word(at)?;
                    let len = index.get(at + 4..)?.iter().position(|&b| b == 0)?;
                    values.push((
                        priority,
                        String::from_utf8_lossy(&index[at + 4..at + 4 + len]).into_owned(),
                    ));
                    at += 4 + len + 1;
                }
            }
            return Some(values);
        };
        let Some((first, last, table)) = children else {
            return Some(Vec::new());
        };
        if ch < first || ch > last {
            return Some(Vec::new());
        }
        node = word(table + 4 * (ch - first) as usize)?;
        if node == 0 {
            return Some(Vec::new());
        }
        rest = tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(entries: &[(&str, &str, u32)]) -> Vec<u8> {
        let mut b = IndexBuilder::new();
        for (k, v, p) in entries {
            b.insert(k, v, *p).unwrap();
        }
        b.to_bytes().unwrap()
    }

    #[test]
    fn keys_read_back_with_values_in_priority_order() {
        let entries = [
            ("ask", "1", 0),
            ("ate", "2", 0),
            ("on", "3", 0),
            ("once", "4", 0),
            ("one", "5", 7),
            ("one", "6", 3),
            ("one", "7", 3),
            ("o", "8", 0),
        ];
        let index = build(&entries);
        assert_eq!(lookup(&index, "ask").unwrap(), [(0, "1".to_string())]);
        assert_eq!(lookup(&index, "once").unwrap(), [(0, "4".to_string())]);
        assert_eq!(lookup(&index, "o").unwrap(), [(0, "8".to_string())]);
        // Equal priorities: newest first, as depmod orders them.
        assert_eq!(
            lookup(&index, "one").unwrap(),
            [(3, "7".into()), (3, "6".into()), (7, "5".into())]
        );
        assert!(lookup(&index, "a").unwrap().is_empty());
        assert!(lookup(&index, "onc").unwrap().is_empty());
        assert!(lookup(&index, "zzz").unwrap().is_empty());
    }

    #[test]
    fn layout_of_a_small_trie_is_the_documented_one() {
        // Root "" with children 'a'..'b'; "ab" → x (prefix "b"), "b" → y (no prefix).
        let index = build(&[("ab", "x", 1), ("b", "y", 2)]);
        let mut expected = Vec::new();
        expected.extend_from_slice(&MAGIC.to_be_bytes());
        expected.extend_from_slice(&VERSION.to_be_bytes());
        expected.extend_from_slice(&[0, 0, 0, 34]); // root, patched
                                                    // Node "ab" at 12: prefix "b\0", 1 value (1, "x\0").
        expected.extend_from_slice(b"b\0\0\0\0\x01\0\0\0\x01x\0");
        // Node "b" at 24: no prefix, 1 value (2, "y\0").
        expected.extend_from_slice(b"\0\0\0\x01\0\0\0\x02y\0");
        // Root at 34: children 'a'..'b'.
        expected.extend_from_slice(b"ab");
        expected.extend_from_slice(&(12 | FLAG_PREFIX | FLAG_VALUES).to_be_bytes());
        expected.extend_from_slice(&(24 | FLAG_VALUES).to_be_bytes());
        expected[8..12].copy_from_slice(&(34 | FLAG_CHILDREN).to_be_bytes());
        assert_eq!(index, expected);
    }

    #[test]
    fn insertion_order_of_keys_does_not_change_the_bytes() {
        let a = build(&[
            ("on", "1", 0),
            ("once", "2", 1),
            ("one", "3", 2),
            ("ask", "4", 3),
        ]);
        let b = build(&[
            ("ask", "4", 3),
            ("one", "3", 2),
            ("once", "2", 1),
            ("on", "1", 0),
        ]);
        assert_eq!(a, b);
    }

    #[test]
    fn non_ascii_text_is_refused_with_the_text() {
        let err = IndexBuilder::new().insert("caf\u{e9}", "x", 0).unwrap_err();
        assert!(err.to_string().contains("caf\u{e9}"), "{err}");
    }

    #[test]
    fn aliases_normalise_dashes_outside_sets() {
        assert_eq!(normalize_alias("fs-ext4").unwrap(), "fs_ext4");
        assert_eq!(
            normalize_alias("scsi:t-0x0[0-7]*").unwrap(),
            "scsi:t_0x0[0-7]*"
        );
        assert!(normalize_alias("a]b").is_none());
        assert!(normalize_alias("a[b").is_none());
    }
}
