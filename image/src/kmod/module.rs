//! One kernel module as the indices see it: its file, its name (`-` and `_` alike), and what
//! its `.modinfo` and symbol table say about the modules and devices it relates to.

/// What a module's `.modinfo` says about how it relates to other modules and devices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// The `name=` field (modules since Linux 5.x carry it); `None` in older modules.
    pub name: Option<String>,
    /// Names of modules this one needs loaded first, in the order modpost wrote them.
    pub depends: Vec<String>,
    /// Device and feature patterns (shell globs) this module serves.
    pub aliases: Vec<String>,
    /// `softdep=` values as written (`pre: a b post: c`).
    pub softdeps: Vec<String>,
}

/// What a module's symbol table says, as depmod reads it: the symbols the module exports (which
/// make other modules depend on it) and the ones it needs, in symbol-table order (which decides
/// the order depmod lists dependencies in).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModSymbols {
    pub exports: Vec<String>,
    pub imports: Vec<String>,
}

/// One module file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Path relative to the kernel's modules directory, e.g. `kernel/fs/ext4/ext4.ko`.
    pub path: String,
    /// The module name as the kernel and the indices spell it (`-` replaced by `_`).
    pub name: String,
    pub info: ModInfo,
    /// Exported and needed symbols, from the ELF symbol table.
    pub symbols: ModSymbols,
}

/// Module names compare with `-` and `_` as the same character, as the kernel does.
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name a file path gives: its file name without `.ko`, normalised.
pub fn name_from_path(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    normalize_name(file.strip_suffix(".ko").unwrap_or(file))
}
