//! All modules of one kernel version, read from a tree: the set every other part of `kmod`
//! works on (dependencies, indices, selection), and reading module files out of the tree.

use std::collections::BTreeMap;

use super::elf::{parse_modinfo, parse_symbols};
use super::error::KmodError;
use super::module::{name_from_path, normalize_name, Module};
use crate::tree::{Content, Entry, Kind, Tree, TreePath};

/// All modules of one kernel version, read from a tree, with what `depmod` needs.
#[derive(Clone, Debug)]
pub struct ModuleSet {
    pub kver: String,
    /// Modules by path relative to the modules directory, in `modules.order` order where that
    /// file lists them, then by path.
    pub modules: Vec<Module>,
}

/// The modules directory of `kver` inside a root tree.
pub fn modules_dir(kver: &str) -> String {
    format!("usr/lib/modules/{kver}")
}

/// The kernel versions with a modules directory in the tree, sorted.
pub fn kernel_versions(tree: &Tree) -> Vec<String> {
    let Ok(dir) = TreePath::new("usr/lib/modules") else {
        return Vec::new();
    };
    tree.children(&dir)
        .filter(|(_, e)| e.is_dir())
        .map(|(p, _)| String::from_utf8_lossy(p.name()).into_owned())
        .collect()
}

impl ModuleSet {
    /// Reads every `*.ko` below `usr/lib/modules/<kver>/` in `tree`.
    pub fn from_tree(tree: &Tree, kver: &str) -> Result<Self, KmodError> {
        let dir_text = modules_dir(kver);
        let dir = TreePath::new(&dir_text).map_err(KmodError::Tree)?;
        if !tree.get_at(&dir).is_some_and(Entry::is_dir) {
            return Err(KmodError::NoModulesDir { dir: dir.display() });
        }
        let prefix_len = dir_text.len() + 1;
        let mut modules = Vec::new();
        for (path, entry) in tree.descendants(&dir) {
            let full = String::from_utf8_lossy(path.as_bytes()).into_owned();
            let rel = full[prefix_len..].to_string();
            let Some(content) = file_content(tree, entry) else {
                continue;
            };
            if rel.ends_with(".ko.xz") || rel.ends_with(".ko.zst") || rel.ends_with(".ko.gz") {
                return Err(KmodError::Compressed {
                    path: path.display(),
                });
            }
            if !rel.ends_with(".ko") {
                continue;
            }
            let bytes = content.read_all().map_err(|source| KmodError::Read {
                path: path.display(),
                source,
            })?;
            let info = parse_modinfo(&path.display(), &bytes)?;
            let symbols = parse_symbols(&path.display(), &bytes)?;
            let name = match &info.name {
                Some(n) => normalize_name(n),
                None => name_from_path(&rel),
            };
            modules.push(Module {
                path: rel,
                name,
                info,
                symbols,
            });
        }
        let order = read_text(tree, &format!("{dir_text}/modules.order"));
        sort_by_order(&mut modules, order.as_deref());
        Ok(ModuleSet {
            kver: kver.to_string(),
            modules,
        })
    }

    /// Index of each module by name. The first module of a name wins (as with depmod when no
    /// `updates/` override exists).
    pub(super) fn by_name(&self) -> BTreeMap<&str, usize> {
        let mut map = BTreeMap::new();
        for (i, m) in self.modules.iter().enumerate() {
            map.entry(m.name.as_str()).or_insert(i);
        }
        map
    }
}

/// A regular file's content, following one hard link.
pub(super) fn file_content<'a>(tree: &'a Tree, entry: &'a Entry) -> Option<&'a Content> {
    match &entry.kind {
        Kind::File(c) => Some(c),
        Kind::HardLink(target) => match &tree.get_at(target)?.kind {
            Kind::File(c) => Some(c),
            _ => None,
        },
        _ => None,
    }
}

/// The bytes of a file in the tree, `None` when there is no such file.
pub(super) fn read_bytes(tree: &Tree, path: &str) -> Result<Option<Vec<u8>>, KmodError> {
    let Some(content) = tree.get(path).and_then(|e| file_content(tree, e)) else {
        return Ok(None);
    };
    let bytes = content.read_all().map_err(|source| KmodError::Read {
        path: path.to_string(),
        source,
    })?;
    Ok(Some(bytes))
}

fn read_text(tree: &Tree, path: &str) -> Option<String> {
    let content = file_content(tree, tree.get(path)?)?;
    Some(String::from_utf8_lossy(&content.read_all().ok()?).into_owned())
}

/// Puts modules listed in `modules.order` first, in that order, then the rest by path.
fn sort_by_order(modules: &mut [Module], order: Option<&str>) {
    let rank: BTreeMap<&str, usize> = order
        .unwrap_or("")
        .lines()
        .enumerate()
        .map(|(i, l)| (l.trim(), i))
        .collect();
    let rank: BTreeMap<String, usize> = rank.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    modules.sort_by(|a, b| {
        let ra = rank.get(&a.path).copied().unwrap_or(usize::MAX);
        let rb = rank.get(&b.path).copied().unwrap_or(usize::MAX);
        ra.cmp(&rb).then_with(|| a.path.cmp(&b.path))
    });
}
