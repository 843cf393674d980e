//! Module selection by class: the modules under given paths, plus everything they need (hard
//! dependencies and soft dependencies by name or alias), and trimming a tree to them.

use std::collections::{BTreeMap, BTreeSet};

use super::error::KmodError;
use super::glob::glob_match;
use super::module::normalize_name;
use super::set::{modules_dir, ModuleSet};
use crate::tree::Tree;

impl ModuleSet {
    /// The modules whose path matches a class rule, plus everything they need: hard
    /// dependencies, and soft dependencies resolved by module name or alias (ext4 asks for
    /// `crypto-crc32c` that way). A rule is a path under the modules directory; it matches that
    /// file or everything below that directory.
    pub fn select(&self, rules: &[&str]) -> Result<ModuleSet, KmodError> {
        self.select_with_names(rules, &[])
    }

    /// [`ModuleSet::select`], also keeping the modules named in `names` (`-` and `_` alike;
    /// names no module has are ignored: they may be built into the kernel).
    pub fn select_with_names(
        &self,
        rules: &[&str],
        names: &[&str],
    ) -> Result<ModuleSet, KmodError> {
        let lists = self.dependency_lists()?;
        let by_name = self.by_name();
        let mut keep = BTreeSet::new();
        let mut todo: Vec<usize> = (0..self.modules.len())
            .filter(|&i| {
                rules
                    .iter()
                    .any(|r| path_matches_rule(&self.modules[i].path, r))
            })
            .collect();
        todo.extend(
            names
                .iter()
                .filter_map(|n| by_name.get(normalize_name(n).as_str()).copied()),
        );
        while let Some(i) = todo.pop() {
            if !keep.insert(i) {
                continue;
            }
            todo.extend(lists[i].iter().copied());
            for target in softdep_targets(&self.modules[i].info.softdeps) {
                todo.extend(self.resolve(target, &by_name));
            }
        }
        Ok(ModuleSet {
            kver: self.kver.clone(),
            modules: keep.into_iter().map(|i| self.modules[i].clone()).collect(),
        })
    }

    /// Modules a name or alias refers to: the module of that name, else every alias match.
    fn resolve(&self, target: &str, by_name: &BTreeMap<&str, usize>) -> Vec<usize> {
        if let Some(&i) = by_name.get(normalize_name(target).as_str()) {
            return vec![i];
        }
        (0..self.modules.len())
            .filter(|&i| {
                self.modules[i]
                    .info
                    .aliases
                    .iter()
                    .any(|a| glob_match(a, target))
            })
            .collect()
    }
}

/// Whether a module path falls under a class rule (a file, or a directory and all below it).
pub fn path_matches_rule(path: &str, rule: &str) -> bool {
    let rule = rule.trim_end_matches('/');
    path == rule || (path.starts_with(rule) && path.as_bytes().get(rule.len()) == Some(&b'/'))
}

/// The module names or aliases a module's `softdep=` values mention (`pre:`/`post:` dropped).
fn softdep_targets(softdeps: &[String]) -> impl Iterator<Item = &str> {
    softdeps
        .iter()
        .flat_map(|s| s.split_whitespace())
        .filter(|w| !w.ends_with(':'))
}

/// Keeps only the modules of `kver` that match `rules` (plus their dependencies) in `tree`,
/// drops the other `.ko` files, and writes fresh indices. Returns the kept set.
pub fn select_in_tree(tree: &mut Tree, kver: &str, rules: &[&str]) -> Result<ModuleSet, KmodError> {
    let all = ModuleSet::from_tree(tree, kver)?;
    let kept = all.select(rules)?;
    let keep: BTreeSet<&str> = kept.modules.iter().map(|m| m.path.as_str()).collect();
    let dir = modules_dir(kver);
    for m in &all.modules {
        if !keep.contains(m.path.as_str()) {
            tree.remove(format!("{dir}/{}", m.path));
        }
    }
    kept.write_indices(tree)?;
    Ok(kept)
}
