//! Kernel modules: reading each module's `.modinfo` and symbol table, writing the indices
//! `depmod` would write (text `modules.dep`, `modules.alias`, ... and libkmod's binary
//! `modules.*.bin`, see [`trie`]), choosing a subset of modules by class, and
//! parsing the text indices back (the initramfs init loads modules from them).
//!
//! Debian's kernel package ships no `modules.dep`: its maintainer script runs `depmod`, and the
//! image build runs no maintainer scripts. `depmod` resolves dependencies from symbol tables;
//! we take them from the `depends=` field that modpost wrote into `.modinfo` from the same
//! symbols, which gives the same set of dependencies per module, and order them as depmod does
//! from the symbol tables (checked byte for byte against Debian's `depmod` in the tests). The
//! booted system's `modprobe` and udev read only the binary indices, so those are written too.
//!
//! The files, in the order a module's data flows through them: `module.rs` (one module),
//! `elf.rs` (reading it from its `.ko`), `set.rs` (all modules of a kernel, read from a tree),
//! `depends.rs` (dependency resolution in depmod's order), `depmod.rs` (the indices depmod
//! writes; `trie.rs` is libkmod's binary format), `select.rs` (selection by class),
//! `initramfs.rs` (the initramfs's modules), `mod_index.rs` and `glob.rs` (the text indices read
//! back, and alias matching). Other crates take the items re-exported here; inside `kmod`,
//! each file imports from the file that defines what it needs, and nothing runs back up.

mod depends;
mod depmod;
mod elf;
mod error;
mod glob;
mod initramfs;
mod mod_index;
mod module;
mod select;
mod set;
pub mod trie;

#[cfg(test)]
mod tests;

pub use depmod::{builtin_alias_index, builtin_index};
pub use elf::{parse_modinfo, parse_symbols};
pub use error::KmodError;
pub use glob::glob_match;
pub use initramfs::{
    initramfs_modules, initramfs_modules_with, InitramfsModules, ALWAYS_LOAD_FILE,
    DEFAULT_INITRAMFS_MODULES, INITRAMFS_ALWAYS_LOAD, INITRAMFS_CLASSES,
};
pub use mod_index::ModIndex;
pub use module::{name_from_path, normalize_name, ModInfo, ModSymbols, Module};
pub use select::{path_matches_rule, select_in_tree};
pub use set::{kernel_versions, modules_dir, ModuleSet};
