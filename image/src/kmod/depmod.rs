//! The indices `depmod` writes for a module set: the text ones (`modules.dep`,
//! `modules.alias`, `modules.softdep`, `modules.symbols`, `modules.devname`) and libkmod's
//! binary ones (`modules.*.bin`, in the [`super::trie`] format), and writing them all into
//! the tree.

use std::collections::BTreeMap;

use super::error::KmodError;
use super::module::normalize_name;
use super::set::{modules_dir, read_bytes, ModuleSet};
use super::trie::{normalize_alias, IndexBuilder};
use crate::tree::{Content, Entry, Kind, Meta, Tree};

impl ModuleSet {
    /// `modules.dep`: `path: dep dep ...`, one line per module.
    pub fn modules_dep(&self) -> Result<String, KmodError> {
        let mut out = String::new();
        for line in self.dep_lines()? {
            out.push_str(&line);
            out.push('\n');
        }
        Ok(out)
    }

    /// One `modules.dep` line per module (without the newline), in module order.
    fn dep_lines(&self) -> Result<Vec<String>, KmodError> {
        let lists = self.dependency_lists()?;
        let lines = self.modules.iter().zip(lists).map(|(m, deps)| {
            let mut line = format!("{}:", m.path);
            for d in deps {
                line.push(' ');
                line.push_str(&self.modules[d].path);
            }
            line
        });
        Ok(lines.collect())
    }

    /// `modules.dep.bin`: module name → its `modules.dep` line, prioritised by module order.
    pub fn modules_dep_bin(&self) -> Result<Vec<u8>, KmodError> {
        let mut index = IndexBuilder::new();
        for (i, (m, line)) in self.modules.iter().zip(self.dep_lines()?).enumerate() {
            index.insert(&m.name, &line, priority(i))?;
        }
        Ok(index.to_bytes()?)
    }

    /// `modules.alias.bin`: normalised alias pattern → module name. Patterns with an unmatched
    /// bracket are left out, as depmod leaves them out (libkmod could not match them).
    pub fn modules_alias_bin(&self) -> Result<Vec<u8>, KmodError> {
        let mut index = IndexBuilder::new();
        for (i, m) in self.modules.iter().enumerate() {
            for alias in m.info.aliases.iter().filter_map(|a| normalize_alias(a)) {
                index.insert(&alias, &m.name, priority(i))?;
            }
        }
        Ok(index.to_bytes()?)
    }

    /// `modules.symbols`: `alias symbol:<name> <module>` for every exported symbol, by name
    /// (depmod's order is its hash table's; only the `.bin` form is read by libkmod).
    pub fn modules_symbols(&self) -> String {
        let owners: BTreeMap<&str, usize> = self.symbol_owners().into_iter().collect();
        let mut out = String::from("# Aliases for symbols, used by symbol_request().\n");
        for (sym, owner) in owners {
            out.push_str(&format!(
                "alias symbol:{sym} {}\n",
                self.modules[owner].name
            ));
        }
        out
    }

    /// `modules.symbols.bin`: `symbol:<name>` → the module exporting it, which is how
    /// `symbol_request()` finds a module to load.
    pub fn modules_symbols_bin(&self) -> Result<Vec<u8>, KmodError> {
        let mut index = IndexBuilder::new();
        for (sym, owner) in self.symbol_owners() {
            let key = format!("symbol:{sym}");
            index.insert(&key, &self.modules[owner].name, priority(owner))?;
        }
        Ok(index.to_bytes()?)
    }

    /// `modules.devname`: `<module> <device node> <c|b><major>:<minor>` for modules with a
    /// `devname:` alias and a `char-major-` or `block-major-` one; systemd-tmpfiles creates
    /// those nodes at boot so that opening one loads the module (`/dev/fuse`, `/dev/loop-control`).
    pub fn modules_devname(&self) -> String {
        let mut out = String::new();
        for m in &self.modules {
            let Some((devname, kind, major, minor)) = devname_of(&m.info.aliases) else {
                continue;
            };
            if out.is_empty() {
                out.push_str("# Device nodes to trigger on-demand module loading.\n");
            }
            out.push_str(&format!("{} {devname} {kind}{major}:{minor}\n", m.name));
        }
        out
    }

    /// `modules.alias`: `alias <pattern> <module name>`.
    pub fn modules_alias(&self) -> String {
        let mut out = String::from("# Aliases extracted from modules themselves.\n");
        for m in &self.modules {
            for a in &m.info.aliases {
                out.push_str(&format!("alias {a} {}\n", m.name));
            }
        }
        out
    }

    /// `modules.softdep`: `softdep <module name> <value as written>`.
    pub fn modules_softdep(&self) -> String {
        let mut out = String::from("# Soft dependencies extracted from modules themselves.\n");
        for m in &self.modules {
            for s in &m.info.softdeps {
                out.push_str(&format!("softdep {} {s}\n", m.name));
            }
        }
        out
    }

    /// Every index depmod writes, as (file name, bytes): the text indices (`modules.dep`,
    /// `modules.alias`, `modules.softdep`, `modules.symbols`, `modules.devname`) and libkmod's
    /// binary ones (`modules.dep.bin`, `modules.alias.bin`, `modules.symbols.bin`, and
    /// `modules.builtin.bin` / `modules.builtin.alias.bin` when the kernel's `modules.builtin`
    /// / `modules.builtin.modinfo` are given).
    pub fn index_files(
        &self,
        builtin: Option<&[u8]>,
        builtin_modinfo: Option<&[u8]>,
    ) -> Result<Vec<(&'static str, Vec<u8>)>, KmodError> {
        let mut files = vec![
            ("modules.dep", self.modules_dep()?.into_bytes()),
            ("modules.dep.bin", self.modules_dep_bin()?),
            ("modules.alias", self.modules_alias().into_bytes()),
            ("modules.alias.bin", self.modules_alias_bin()?),
            ("modules.softdep", self.modules_softdep().into_bytes()),
            ("modules.symbols", self.modules_symbols().into_bytes()),
            ("modules.symbols.bin", self.modules_symbols_bin()?),
            ("modules.devname", self.modules_devname().into_bytes()),
        ];
        if let Some(builtin) = builtin {
            files.push(("modules.builtin.bin", builtin_index(builtin)?));
        }
        if let Some(modinfo) = builtin_modinfo {
            files.push(("modules.builtin.alias.bin", builtin_alias_index(modinfo)?));
        }
        Ok(files)
    }

    /// Writes [`ModuleSet::index_files`] into the modules directory of `tree` (reading
    /// `modules.builtin` and `modules.builtin.modinfo` from there), owned by root, mode 0644,
    /// with the directory's mtime (reproducible).
    pub fn write_indices(&self, tree: &mut Tree) -> Result<(), KmodError> {
        let dir = modules_dir(&self.kver);
        let mtime = tree.get(&dir).map_or(0, |e| e.meta.mtime);
        let builtin = read_bytes(tree, &format!("{dir}/modules.builtin"))?;
        let modinfo = read_bytes(tree, &format!("{dir}/modules.builtin.modinfo"))?;
        for (name, bytes) in self.index_files(builtin.as_deref(), modinfo.as_deref())? {
            let entry = Entry::new(Kind::File(Content::bytes(bytes)), Meta::root(0o644, mtime));
            tree.insert(format!("{dir}/{name}"), entry)?;
        }
        Ok(())
    }
}

/// A module's position as an index priority: libkmod prefers the lowest, which is the module
/// depmod lists first (modules.order). Kernels have far fewer than 2^32 modules.
fn priority(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// The device node a module serves, from its aliases as depmod reads them: the `devname:`
/// alias and the major and minor of a `char-major-M-N` (`c`) or `block-major-M-N` (`b`) one.
pub(super) fn devname_of(aliases: &[String]) -> Option<(&str, char, u32, u32)> {
    let mut devname = None;
    let mut node = None;
    for a in aliases {
        if let Some(d) = a.strip_prefix("devname:") {
            devname = Some(d);
        } else if let Some(n) = major_minor(a, "char-major-") {
            node = Some(('c', n.0, n.1));
        } else if let Some(n) = major_minor(a, "block-major-") {
            node = Some(('b', n.0, n.1));
        }
        if let (Some(d), Some((kind, major, minor))) = (devname, node) {
            return Some((d, kind, major, minor));
        }
    }
    None
}

/// `<prefix>M-N` with decimal M and N (N may be followed by more text, as sscanf allows).
fn major_minor(alias: &str, prefix: &str) -> Option<(u32, u32)> {
    let (major, rest) = alias.strip_prefix(prefix)?.split_once('-')?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    Some((major.parse().ok()?, rest[..digits].parse().ok()?))
}

/// `modules.builtin.bin` from the kernel's `modules.builtin` (one path a line): each built-in
/// module's name with an empty value, so modprobe says "builtin" rather than "not found".
pub fn builtin_index(modules_builtin: &[u8]) -> Result<Vec<u8>, KmodError> {
    let mut index = IndexBuilder::new();
    for line in String::from_utf8_lossy(modules_builtin).lines() {
        // depmod skips lines that do not start with a letter (blank lines, comments).
        if !line.starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        let file = line.rsplit('/').next().unwrap_or(line);
        let name = file.split('.').next().unwrap_or(file);
        index.insert(&normalize_name(name), "", 0)?;
    }
    Ok(index.to_bytes()?)
}

/// `modules.builtin.alias.bin` from the kernel's `modules.builtin.modinfo` (NUL-separated
/// `module.key=value` records): each `alias` of a built-in module → the module, so a device
/// served by built-in code is not looked for among loadable modules.
pub fn builtin_alias_index(modinfo: &[u8]) -> Result<Vec<u8>, KmodError> {
    let mut index = IndexBuilder::new();
    for record in modinfo.split(|&b| b == 0) {
        let record = String::from_utf8_lossy(record);
        let Some((module, field)) = record.split_once('.') else {
            continue;
        };
        let Some(("alias", value)) = field.split_once('=') else {
            continue;
        };
        if module.is_empty() || value.is_empty() {
            continue;
        }
        if let Some(alias) = normalize_alias(value) {
            // depmod stores the module name as written there, without normalising it.
            index.insert(&alias, module, 0)?;
        }
    }
    Ok(index.to_bytes()?)
}
