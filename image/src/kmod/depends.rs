//! Dependency resolution: each module's dependencies, transitive, in the order depmod lists
//! them (from `depends=`, ordered by the symbols that lead to each, ranked as depmod ranks
//! them), with missing dependencies and cycles as errors.

use std::collections::HashMap;

use super::error::KmodError;
use super::module::normalize_name;
use super::set::ModuleSet;

impl ModuleSet {
    /// Every module's dependencies, transitive, ordered the way `modules.dep` lists them:
    /// a module before the modules it needs, so loading from the end of the list works.
    pub(super) fn dependency_lists(&self) -> Result<Vec<Vec<usize>>, KmodError> {
        let direct = self.direct_dependencies()?;
        let rank = self.dependency_rank(&direct)?;
        // Every module reachable from i, each once, listed by rank as depmod lists them.
        let mut seen = vec![usize::MAX; self.modules.len()];
        let lists = (0..self.modules.len())
            .map(|i| {
                let mut list = Vec::new();
                let mut todo = direct[i].clone();
                while let Some(d) = todo.pop() {
                    if seen[d] != i {
                        seen[d] = i;
                        list.push(d);
                        todo.extend(&direct[d]);
                    }
                }
                list.sort_by_key(|&d| rank[d]);
                list
            })
            .collect();
        Ok(lists)
    }

    /// Each module's direct dependencies (from `depends=`), ordered as depmod finds them: by
    /// the first needed symbol each one exports, in symbol-table order; dependencies no symbol
    /// leads to follow in `depends=` order.
    fn direct_dependencies(&self) -> Result<Vec<Vec<usize>>, KmodError> {
        let by_name = self.by_name();
        let owners = self.symbol_owners();
        self.modules
            .iter()
            .map(|m| {
                let depends = m
                    .info
                    .depends
                    .iter()
                    .map(|d| {
                        by_name
                            .get(normalize_name(d).as_str())
                            .copied()
                            .ok_or_else(|| KmodError::MissingDependency {
                                module: m.path.clone(),
                                dependency: d.clone(),
                            })
                    })
                    .collect::<Result<Vec<usize>, _>>()?;
                let by_symbol = m
                    .symbols
                    .imports
                    .iter()
                    // As depmod does for PPC64's function descriptors: `.foo` is `foo`.
                    .filter_map(|s| owners.get(s.strip_prefix('.').unwrap_or(s)).copied())
                    .filter(|o| depends.contains(o));
                let mut ordered: Vec<usize> = Vec::with_capacity(depends.len());
                for d in by_symbol.chain(depends.iter().copied()) {
                    if !ordered.contains(&d) {
                        ordered.push(d);
                    }
                }
                Ok(ordered)
            })
            .collect()
    }

    /// Exported symbol → index of the module exporting it; when two modules export one symbol
    /// the later one wins, as in depmod's symbol table.
    pub(super) fn symbol_owners(&self) -> HashMap<&str, usize> {
        let mut owners = HashMap::new();
        for (i, m) in self.modules.iter().enumerate() {
            for s in &m.symbols.exports {
                owners.insert(s.as_str(), i);
            }
        }
        owners
    }

    /// A topological rank per module, dependents before their dependencies, computed as depmod
    /// computes it (Kahn's algorithm over a stack seeded with the unused modules in index
    /// order), so that dependency lists come out in depmod's order.
    fn dependency_rank(&self, direct: &[Vec<usize>]) -> Result<Vec<usize>, KmodError> {
        let n = self.modules.len();
        let mut users = vec![0usize; n];
        for &d in direct.iter().flatten() {
            users[d] += 1;
        }
        let mut stack: Vec<usize> = (0..n).filter(|&i| users[i] == 0).collect();
        let mut rank = vec![usize::MAX; n];
        let mut next = 0;
        while let Some(src) = stack.pop() {
            rank[src] = next;
            next += 1;
            for &d in &direct[src] {
                users[d] -= 1;
                if users[d] == 0 {
                    stack.push(d);
                }
            }
        }
        match rank.iter().position(|&r| r == usize::MAX) {
            Some(i) => Err(KmodError::Cycle {
                module: self.modules[i].path.clone(),
            }),
            None => Ok(rank),
        }
    }
}
