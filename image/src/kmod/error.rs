//! What can go wrong in reading kernel modules and writing or reading their indices.

/// An error in reading modules or writing their indices. Each names the module or file.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("no kernel modules directory {dir} in the tree (is the kernel package installed?)")]
    NoModulesDir { dir: String },
    #[error("{path} is listed as a module but is not a regular file in the tree")]
    MissingFile { path: String },
    #[error("{path}: compressed modules are not supported; use a kernel package with uncompressed .ko files (CONFIG_MODULE_COMPRESS_NONE)")]
    Compressed { path: String },
    #[error("{path}: not a kernel module: {reason}")]
    BadElf { path: String, reason: String },
    #[error("{path}: reading the module: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("module {module} depends on {dependency:?}, which is not among the modules (the kernel package looks incomplete)")]
    MissingDependency { module: String, dependency: String },
    #[error("module dependencies form a cycle through {module}")]
    Cycle { module: String },
    #[error("{file}: line {line}: {reason}")]
    BadIndex {
        file: &'static str,
        line: usize,
        reason: &'static str,
    },
    #[error(transparent)]
    Index(#[from] super::trie::IndexError),
    #[error("writing module indices into the tree: {0}")]
    Tree(#[from] crate::tree::TreeError),
}
