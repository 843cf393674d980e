//! The text indices read back (`modules.dep`, `modules.alias`, `modules.softdep`): what the
//! initramfs init needs to load a module with its dependencies, or the modules a device's
//! modalias asks for.

use std::collections::BTreeMap;

use super::error::KmodError;
use super::glob::glob_match;
use super::module::{name_from_path, normalize_name};

/// `modules.dep`, `modules.alias` and `modules.softdep` read back: what a module loader needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModIndex {
    /// Module name → (path relative to the modules directory, dependency paths as listed).
    pub deps: BTreeMap<String, (String, Vec<String>)>,
    /// (pattern, module name), in file order.
    pub aliases: Vec<(String, String)>,
    /// Module name → names or aliases to load before it (`pre:` part of its softdeps).
    pub pre_softdeps: BTreeMap<String, Vec<String>>,
}

impl ModIndex {
    /// Parses the three index texts (`softdep` may be empty).
    pub fn parse(dep: &str, alias: &str, softdep: &str) -> Result<Self, KmodError> {
        let mut index = ModIndex::default();
        for (n, line) in dep.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (path, rest) = line.split_once(':').ok_or(KmodError::BadIndex {
                file: "modules.dep",
                line: n + 1,
                reason: "no ':' after the module path",
            })?;
            let deps = rest.split_whitespace().map(str::to_string).collect();
            index
                .deps
                .insert(name_from_path(path), (path.to_string(), deps));
        }
        for (n, line) in alias.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("alias"), Some(pattern), Some(module)) => index
                    .aliases
                    .push((pattern.to_string(), normalize_name(module))),
                _ => {
                    return Err(KmodError::BadIndex {
                        file: "modules.alias",
                        line: n + 1,
                        reason: "expected `alias <pattern> <module>`",
                    })
                }
            }
        }
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            let mut pre = false;
            for w in words {
                match w {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    target if pre => index
                        .pre_softdeps
                        .entry(normalize_name(module))
                        .or_default()
                        .push(target.to_string()),
                    _ => {}
                }
            }
        }
        Ok(index)
    }

    /// The module names whose aliases match `modalias` (a device's or a requested name).
    pub fn lookup_alias(&self, modalias: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (pattern, module) in &self.aliases {
            if glob_match(pattern, modalias) && !out.contains(&module.as_str()) {
                out.push(module);
            }
        }
        out
    }

    /// Paths to load for `module`, dependencies first and the module last; `None` when the
    /// index does not know the module (it may be built in).
    pub fn load_order(&self, module: &str) -> Option<Vec<&str>> {
        let (path, deps) = self.deps.get(&normalize_name(module))?;
        let mut order: Vec<&str> = deps.iter().rev().map(String::as_str).collect();
        order.push(path);
        Some(order)
    }
}
