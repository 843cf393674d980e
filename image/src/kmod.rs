//! Kernel modules: reading each module's `.modinfo` and symbol table, writing the indices
//! `depmod` would write (text `modules.dep`, `modules.alias`, ... and libkmod's binary
//! `modules.*.bin`, see [`crate::kmod_index`]), choosing a subset of modules by class, and
//! parsing the text indices back (the initramfs init loads modules from them).
//!
//! Debian's kernel package ships no `modules.dep`: its maintainer script runs `depmod`, and the
//! image build runs no maintainer scripts. `depmod` resolves dependencies from symbol tables;
//! we take them from the `depends=` field that modpost wrote into `.modinfo` from the same
//! symbols, which gives the same set of dependencies per module, and order them as depmod does
//! from the symbol tables (checked byte for byte against Debian's `depmod` in the tests). The
//! booted system's `modprobe` and udev read only the binary indices, so those are written too.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::kmod_index::{normalize_alias, IndexBuilder};
use crate::tree::{Content, Entry, Kind, Meta, Tree, TreePath};

/// Path classes (under `/usr/lib/modules/<kver>/`) that the initramfs needs to find and mount
/// the boot disk: storage controllers of VMs and of real machines, dm-verity, ext4, FAT, the
/// virtio bus and console. Dependencies and soft dependencies are added by [`ModuleSet::select`].
pub const INITRAMFS_CLASSES: &[&str] = &[
    "kernel/drivers/ata",
    "kernel/drivers/nvme/host",
    "kernel/drivers/scsi/sd_mod.ko",
    "kernel/drivers/scsi/virtio_scsi.ko",
    "kernel/drivers/usb/storage",
    "kernel/drivers/usb/host",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/drivers/virtio",
    "kernel/drivers/char/virtio_console.ko",
    "kernel/drivers/md/dm-verity.ko",
    "kernel/fs/ext4",
    "kernel/fs/fat",
    "kernel/fs/nls/nls_cp437.ko",
    "kernel/fs/nls/nls_utf8.ko",
    "kernel/fs/nls/nls_iso8859-1.ko",
    // The cloud-config source of QEMU VMs (fw_cfg), read at first boot.
    "kernel/drivers/firmware/qemu_fw_cfg.ko",
    "kernel/crypto/crc32c_generic.ko",
    "kernel/arch/x86/crypto/crc32c-intel.ko",
];

/// Modules the init loads on every boot whatever devices are present (by module name): the
/// ones no device alias asks for. Controllers (virtio_pci, ahci, nvme, xhci_pci, usb-storage,
/// sd_mod, ...) are not listed: the init loads them when a device's `modalias` matches.
/// `crc32c_intel` is not listed either: the CPU's modalias loads it where the CPU has SSE4.2.
/// Written to `etc/kiln/modules` in the initramfs.
pub const INITRAMFS_ALWAYS_LOAD: &[&str] = &[
    "crc32c_generic",
    "dm_verity",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_utf8",
];

/// Where the fixed module list sits in the initramfs (one module name a line).
pub const ALWAYS_LOAD_FILE: &str = "etc/kiln/modules";

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
    Index(#[from] crate::kmod_index::IndexError),
    #[error("writing module indices into the tree: {0}")]
    Tree(#[from] crate::tree::TreeError),
}

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

/// Reads the `.modinfo` section of an uncompressed ELF64 little-endian module. `path` is for
/// messages only.
pub fn parse_modinfo(path: &str, elf: &[u8]) -> Result<ModInfo, KmodError> {
    let section = modinfo_section(elf).map_err(|reason| KmodError::BadElf {
        path: path.to_string(),
        reason: reason.to_string(),
    })?;
    let mut info = ModInfo::default();
    // Fields are NUL-terminated `key=value` strings; the linker pads between them with NULs.
    for field in section.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let field = String::from_utf8_lossy(field);
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        match key {
            "name" => info.name = Some(value.to_string()),
            "depends" => info.depends.extend(
                value
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(str::to_string),
            ),
            "alias" => info.aliases.push(value.to_string()),
            "softdep" => info.softdeps.push(value.to_string()),
            _ => {}
        }
    }
    Ok(info)
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

const TRUNCATED: &str = "truncated ELF headers";
/// `SHT_NOBITS`: a section (`.bss`) that occupies no bytes in the file.
const SHT_NOBITS: u32 = 8;

/// The section table of an ELF64 little-endian file: names and where each section's bytes lie.
/// Section data is checked against the file's end only when asked for, so a `.bss` whose size
/// reaches past the end does not spoil the others.
struct ElfSections<'a> {
    elf: &'a [u8],
    /// (name, type, offset, size) per section header.
    sections: Vec<(&'a [u8], u32, usize, usize)>,
}

impl<'a> ElfSections<'a> {
    fn parse(elf: &'a [u8]) -> Result<Self, &'static str> {
        if elf.get(..4) != Some(b"\x7fELF") {
            return Err("no ELF magic");
        }
        // ELFCLASS64 and ELFDATA2LSB: the kernels Kiln ships are x86-64.
        if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
            return Err("not a 64-bit little-endian ELF file");
        }
        let shoff = read_u64(elf, 0x28).ok_or(TRUNCATED)? as usize;
        let shentsize = read_u16(elf, 0x3A).ok_or(TRUNCATED)? as usize;
        let shnum = read_u16(elf, 0x3C).ok_or(TRUNCATED)? as usize;
        let shstrndx = read_u16(elf, 0x3E).ok_or(TRUNCATED)? as usize;
        if shentsize < 64 {
            return Err("section header entries are too small");
        }
        let header = |i: usize| -> Result<(u32, u32, usize, usize), &'static str> {
            let at = shoff
                .checked_add(i.checked_mul(shentsize).ok_or(TRUNCATED)?)
                .ok_or(TRUNCATED)?;
            Ok((
                read_u32(elf, at).ok_or(TRUNCATED)?,
                read_u32(elf, at + 4).ok_or(TRUNCATED)?,
                read_u64(elf, at + 24).ok_or(TRUNCATED)? as usize,
                read_u64(elf, at + 32).ok_or(TRUNCATED)? as usize,
            ))
        };
        let headers = (0..shnum).map(header).collect::<Result<Vec<_>, _>>()?;
        let &(_, _, names_at, names_len) = headers.get(shstrndx).ok_or(TRUNCATED)?;
        let names = data_at(elf, names_at, names_len)?;
        let sections = headers
            .into_iter()
            .map(|(name_at, ty, offset, size)| {
                let name = names.get(name_at as usize..).ok_or(TRUNCATED)?;
                let name = name.split(|&b| b == 0).next().unwrap_or_default();
                Ok((name, ty, offset, size))
            })
            .collect::<Result<_, &'static str>>()?;
        Ok(ElfSections { elf, sections })
    }

    /// The bytes of the first section called `name`, if there is one.
    fn get(&self, name: &str) -> Result<Option<&'a [u8]>, &'static str> {
        match self.sections.iter().find(|s| s.0 == name.as_bytes()) {
            Some(&(_, SHT_NOBITS, _, _)) => Ok(Some(&[])),
            Some(&(_, _, offset, size)) => data_at(self.elf, offset, size).map(Some),
            None => Ok(None),
        }
    }
}

fn data_at(elf: &[u8], offset: usize, size: usize) -> Result<&[u8], &'static str> {
    let end = offset.checked_add(size).ok_or(TRUNCATED)?;
    elf.get(offset..end)
        .ok_or("a section lies beyond the end of the file")
}

/// The bytes of the section named `.modinfo`, found through the section header table.
fn modinfo_section(elf: &[u8]) -> Result<&[u8], &'static str> {
    ElfSections::parse(elf)?
        .get(".modinfo")?
        .ok_or("it has no .modinfo section")
}

/// What a module's symbol table says, as depmod reads it: the symbols the module exports (which
/// make other modules depend on it) and the ones it needs, in symbol-table order (which decides
/// the order depmod lists dependencies in).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModSymbols {
    pub exports: Vec<String>,
    pub imports: Vec<String>,
}

/// Size of an `Elf64_Sym`, and of one `__versions` entry (a 64-bit CRC and a 56-byte name).
const SYM_SIZE: usize = 24;
const VERSION_SIZE: usize = 64;

/// Reads a module's exported and needed symbols the way libkmod does: exports are the
/// `__crc_<name>` symbols of `.symtab` (kernels with symbol versions), else the strings of
/// `__ksymtab_strings`; imports are the undefined named symbols of `.symtab`, then any
/// `__versions` entry the symbol table did not mention. A module without `.symtab` has none.
pub fn parse_symbols(path: &str, elf: &[u8]) -> Result<ModSymbols, KmodError> {
    let bad = |reason: &str| KmodError::BadElf {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    let sections = ElfSections::parse(elf).map_err(bad)?;
    let mut symbols = ModSymbols::default();
    let symtab = sections.get(".symtab").map_err(bad)?;
    let strtab = sections.get(".strtab").map_err(bad)?;
    if let (Some(symtab), Some(strtab)) = (symtab, strtab) {
        if symtab.len() % SYM_SIZE != 0 {
            return Err(bad(".symtab is not a whole number of symbols"));
        }
        // Entry 0 is the null symbol.
        for sym in symtab.chunks_exact(SYM_SIZE).skip(1) {
            let name_at = read_u32(sym, 0).unwrap_or_default() as usize;
            let shndx = read_u16(sym, 6).unwrap_or_default();
            let name = strtab
                .get(name_at..)
                .ok_or_else(|| bad("a symbol name lies beyond .strtab"))?;
            let name = c_str(name);
            if let Some(export) = name.strip_prefix("__crc_") {
                symbols.exports.push(export.to_string());
            }
            if shndx == 0 && !name.is_empty() {
                symbols.imports.push(name.to_string());
            }
        }
    }
    if symbols.exports.is_empty() {
        if let Some(strings) = sections.get("__ksymtab_strings").map_err(bad)? {
            symbols.exports = strings
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
        }
    }
    if let Some(versions) = sections.get("__versions").map_err(bad)? {
        if versions.len() % VERSION_SIZE == 0 {
            let seen: BTreeSet<String> = symbols.imports.iter().cloned().collect();
            let unseen: Vec<String> = versions
                .chunks_exact(VERSION_SIZE)
                .map(|v| c_str(&v[8..]).to_string())
                .filter(|n| !seen.contains(n))
                .collect();
            symbols.imports.extend(unseen);
        }
    }
    Ok(symbols)
}

/// The NUL-terminated string at the start of `bytes` (lossy: symbol names are ASCII).
fn c_str(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
}

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
    fn by_name(&self) -> BTreeMap<&str, usize> {
        let mut map = BTreeMap::new();
        for (i, m) in self.modules.iter().enumerate() {
            map.entry(m.name.as_str()).or_insert(i);
        }
        map
    }

    /// Every module's dependencies, transitive, ordered the way `modules.dep` lists them:
    /// a module before the modules it needs, so loading from the end of the list works.
    fn dependency_lists(&self) -> Result<Vec<Vec<usize>>, KmodError> {
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
    fn symbol_owners(&self) -> HashMap<&str, usize> {
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
fn devname_of(aliases: &[String]) -> Option<(&str, char, u32, u32)> {
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

/// A regular file's content, following one hard link.
fn file_content<'a>(tree: &'a Tree, entry: &'a Entry) -> Option<&'a Content> {
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
fn read_bytes(tree: &Tree, path: &str) -> Result<Option<Vec<u8>>, KmodError> {
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

/// What goes into the initramfs: module classes (path rules as for [`ModuleSet::select`]) and
/// the modules the init loads on every boot (by name; kept even when no class matches them).
#[derive(Clone, Copy, Debug)]
pub struct InitramfsModules<'a> {
    pub classes: &'a [&'a str],
    pub always_load: &'a [&'a str],
}

/// [`INITRAMFS_CLASSES`] and [`INITRAMFS_ALWAYS_LOAD`].
pub const DEFAULT_INITRAMFS_MODULES: InitramfsModules<'static> = InitramfsModules {
    classes: INITRAMFS_CLASSES,
    always_load: INITRAMFS_ALWAYS_LOAD,
};

/// Builds the module part of the initramfs with [`DEFAULT_INITRAMFS_MODULES`]; see
/// [`initramfs_modules_with`].
pub fn initramfs_modules(
    root: &Tree,
    kver: &str,
    mtime: i64,
) -> Result<(Tree, ModuleSet), KmodError> {
    initramfs_modules_with(root, kver, &DEFAULT_INITRAMFS_MODULES, mtime)
}

/// Builds the module part of the initramfs: a tree holding `lib/modules/<kver>/` with the
/// selected subset of the root tree's modules (plus dependencies and soft dependencies), its
/// own indices, a copy of `modules.builtin` (and `modules.builtin.modinfo`) when present, and
/// the [`ALWAYS_LOAD_FILE`] list of modules to load on every boot (those in the subset).
pub fn initramfs_modules_with(
    root: &Tree,
    kver: &str,
    spec: &InitramfsModules<'_>,
    mtime: i64,
) -> Result<(Tree, ModuleSet), KmodError> {
    let all = ModuleSet::from_tree(root, kver)?;
    let subset = all.select_with_names(spec.classes, spec.always_load)?;
    let mut out = Tree::new(Meta::root(0o755, mtime));
    let dir_meta = Meta::root(0o755, mtime);
    let src_dir = modules_dir(kver);
    let dst_dir = format!("lib/modules/{kver}");
    out.create_dirs(&TreePath::new(&dst_dir)?, &dir_meta)?;
    for m in &subset.modules {
        let src = format!("{src_dir}/{}", m.path);
        let content = root
            .get(&src)
            .and_then(|e| file_content(root, e))
            .cloned()
            .ok_or_else(|| KmodError::MissingFile { path: src.clone() })?;
        out.insert_with_parents(
            format!("{dst_dir}/{}", m.path),
            Entry::new(Kind::File(content), Meta::root(0o644, mtime)),
            &dir_meta,
        )?;
    }
    for name in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        if let Some(content) = root
            .get(format!("{src_dir}/{name}"))
            .and_then(|e| file_content(root, e))
        {
            out.insert(
                format!("{dst_dir}/{name}"),
                Entry::new(Kind::File(content.clone()), Meta::root(0o644, mtime)),
            )?;
        }
    }
    let indices = ModuleSet {
        kver: kver.to_string(),
        modules: subset.modules.clone(),
    };
    // write_indices puts them under usr/lib/modules; write them where the initramfs has them.
    for (name, text) in [
        ("modules.dep", indices.modules_dep()?),
        ("modules.alias", indices.modules_alias()),
        ("modules.softdep", indices.modules_softdep()),
    ] {
        out.insert(
            format!("{dst_dir}/{name}"),
            Entry::new(
                Kind::File(Content::bytes(text.into_bytes())),
                Meta::root(0o644, mtime),
            ),
        )?;
    }
    let present: BTreeSet<&str> = subset.modules.iter().map(|m| m.name.as_str()).collect();
    let mut list = String::new();
    for name in spec
        .always_load
        .iter()
        .map(|n| normalize_name(n))
        .filter(|n| present.contains(n.as_str()))
    {
        list.push_str(&name);
        list.push('\n');
    }
    out.insert_with_parents(
        ALWAYS_LOAD_FILE,
        Entry::new(
            Kind::File(Content::bytes(list.into_bytes())),
            Meta::root(0o644, mtime),
        ),
        &dir_meta,
    )?;
    Ok((out, subset))
}

/// Shell-style glob matching as `modules.alias` patterns use it (fnmatch without flags):
/// `*` any run of characters, `?` one character, `[...]` a set (`!` or `^` negates, `a-z`
/// ranges). Works on bytes; aliases are ASCII.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    glob_bytes(pattern.as_bytes(), text.as_bytes())
}

fn glob_bytes(p: &[u8], t: &[u8]) -> bool {
    // Iterative matcher with one backtrack point for the last `*`: linear enough for aliases.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = match_class(&p[pi..], t[ti]) {
                        if matched {
                            pi += next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == b'[' {
                        // An unterminated `[` is an ordinary character.
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches one character against the `[...]` class at the start of `p`; returns whether it
/// matched and the class's length, or `None` when the class is not terminated.
fn match_class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&h| h != b']') {
            let hi = p[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A minimal ELF64 relocatable file whose only sections are the null section, `.modinfo`
    /// holding `fields`, and the section name table: the layout the kernel's modpost produces,
    /// without code. Built by hand here so the tests need no toolchain.
    pub(crate) fn fake_module(fields: &[&str]) -> Vec<u8> {
        let mut modinfo = Vec::new();
        for f in fields {
            modinfo.extend_from_slice(f.as_bytes());
            modinfo.push(0);
            // The linker aligns some fields; padding NULs must be ignored.
            modinfo.push(0);
        }
        let shstrtab = b"\0.modinfo\0.shstrtab\0".to_vec();
        let modinfo_off = 64usize;
        let shstr_off = modinfo_off + modinfo.len();
        let shoff = (shstr_off + shstrtab.len() + 7) & !7;
        let mut elf = vec![0u8; shoff + 3 * 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // ELFCLASS64
        elf[5] = 1; // little endian
        elf[6] = 1; // EV_CURRENT
        elf[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3E..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf[modinfo_off..shstr_off].copy_from_slice(&modinfo);
        elf[shstr_off..shstr_off + shstrtab.len()].copy_from_slice(&shstrtab);
        let mut section = |i: usize, name: u32, ty: u32, off: usize, size: usize| {
            let at = shoff + i * 64;
            elf[at..at + 4].copy_from_slice(&name.to_le_bytes());
            elf[at + 4..at + 8].copy_from_slice(&ty.to_le_bytes());
            elf[at + 24..at + 32].copy_from_slice(&(off as u64).to_le_bytes());
            elf[at + 32..at + 40].copy_from_slice(&(size as u64).to_le_bytes());
        };
        section(1, 1, 1, modinfo_off, modinfo.len()); // PROGBITS
        section(2, 10, 3, shstr_off, shstrtab.len()); // STRTAB
        elf
    }

    fn tree_with(modules: &[(&str, Vec<u8>)]) -> Tree {
        let mut tree = Tree::new(Meta::root(0o755, 5));
        let dir = Meta::root(0o755, 5);
        tree.create_dirs(&TreePath::new("usr/lib/modules/6.1.0-test").unwrap(), &dir)
            .unwrap();
        for (path, bytes) in modules {
            tree.insert_with_parents(
                format!("usr/lib/modules/6.1.0-test/{path}"),
                Entry::new(
                    Kind::File(Content::bytes(bytes.clone())),
                    Meta::root(0o644, 5),
                ),
                &dir,
            )
            .unwrap();
        }
        tree
    }

    fn synthetic_tree() -> Tree {
        tree_with(&[
            (
                "kernel/fs/ext4/ext4.ko",
                fake_module(&[
                    "softdep=pre: crypto-crc32c",
                    "alias=fs-ext4",
                    "depends=jbd2,mbcache",
                    "name=ext4",
                ]),
            ),
            (
                "kernel/fs/jbd2/jbd2.ko",
                fake_module(&["depends=", "name=jbd2"]),
            ),
            ("kernel/fs/mbcache.ko", fake_module(&["name=mbcache"])),
            (
                "kernel/crypto/crc32c_generic.ko",
                fake_module(&["alias=crypto-crc32c", "alias=crc32c", "name=crc32c_generic"]),
            ),
            (
                "kernel/drivers/block/virtio_blk.ko",
                fake_module(&[
                    "alias=virtio:d00000002v*",
                    "depends=virtio,virtio_ring",
                    "name=virtio_blk",
                ]),
            ),
            (
                "kernel/drivers/virtio/virtio.ko",
                fake_module(&["name=virtio"]),
            ),
            (
                "kernel/drivers/virtio/virtio_ring.ko",
                fake_module(&["depends=virtio", "name=virtio_ring"]),
            ),
            (
                "kernel/drivers/md/dm-verity.ko",
                fake_module(&["depends=dm-bufio,dm-mod", "name=dm_verity"]),
            ),
            (
                "kernel/drivers/md/dm-bufio.ko",
                fake_module(&["depends=dm-mod", "name=dm_bufio"]),
            ),
            (
                "kernel/drivers/md/dm-mod.ko",
                fake_module(&["alias=devname:mapper/control", "name=dm_mod"]),
            ),
            ("kernel/sound/snd.ko", fake_module(&["name=snd"])),
        ])
    }

    #[test]
    fn modinfo_fields_are_read_from_a_synthetic_module() {
        let elf = fake_module(&[
            "alias=fs-ext4",
            "depends=jbd2,mbcache",
            "softdep=pre: crc32c",
            "name=ext4",
            "license=GPL",
        ]);
        let info = parse_modinfo("ext4.ko", &elf).unwrap();
        assert_eq!(info.name.as_deref(), Some("ext4"));
        assert_eq!(info.depends, ["jbd2", "mbcache"]);
        assert_eq!(info.aliases, ["fs-ext4"]);
        assert_eq!(info.softdeps, ["pre: crc32c"]);
    }

    #[test]
    fn broken_and_compressed_modules_are_refused_with_the_path() {
        let err = parse_modinfo("x.ko", b"not elf").unwrap_err().to_string();
        assert!(err.contains("x.ko") && err.contains("ELF"), "{err}");
        let mut elf = fake_module(&["name=x"]);
        elf.truncate(100);
        let err = parse_modinfo("x.ko", &elf).unwrap_err().to_string();
        assert!(err.contains("truncated") || err.contains("beyond"), "{err}");
        let tree = tree_with(&[("kernel/a.ko.xz", b"xz".to_vec())]);
        let err = ModuleSet::from_tree(&tree, "6.1.0-test")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.ko.xz") && err.contains("compressed"),
            "{err}"
        );
        let err = ModuleSet::from_tree(&tree, "9.9").unwrap_err().to_string();
        assert!(err.contains("usr/lib/modules/9.9"), "{err}");
    }

    #[test]
    fn indices_list_transitive_dependencies_in_load_order() {
        let set = ModuleSet::from_tree(&synthetic_tree(), "6.1.0-test").unwrap();
        let dep = set.modules_dep().unwrap();
        assert!(dep.contains("kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko\n"), "{dep}");
        assert!(dep.contains("kernel/fs/mbcache.ko:\n"), "{dep}");
        assert!(dep.contains("kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n"), "{dep}");
        let alias = set.modules_alias();
        assert!(
            alias.contains("alias virtio:d00000002v* virtio_blk\n"),
            "{alias}"
        );
        assert!(
            alias.contains("alias devname:mapper/control dm_mod\n"),
            "{alias}"
        );
        let soft = set.modules_softdep();
        assert!(soft.contains("softdep ext4 pre: crypto-crc32c\n"), "{soft}");

        let index = ModIndex::parse(&dep, &alias, &soft).unwrap();
        assert_eq!(
            index.load_order("dm-verity").unwrap(),
            [
                "kernel/drivers/md/dm-mod.ko",
                "kernel/drivers/md/dm-bufio.ko",
                "kernel/drivers/md/dm-verity.ko"
            ]
        );
        assert_eq!(
            index.lookup_alias("virtio:d00000002v00001AF4"),
            ["virtio_blk"]
        );
        assert_eq!(index.pre_softdeps["ext4"], ["crypto-crc32c"]);
        assert!(index.load_order("snd_hda").is_none());
    }

    #[test]
    fn missing_dependency_and_cycles_are_errors() {
        let tree = tree_with(&[("kernel/a.ko", fake_module(&["depends=b", "name=a"]))]);
        let err = ModuleSet::from_tree(&tree, "6.1.0-test")
            .unwrap()
            .modules_dep()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kernel/a.ko") && err.contains("\"b\""),
            "{err}"
        );
        let tree = tree_with(&[
            ("kernel/a.ko", fake_module(&["depends=b", "name=a"])),
            ("kernel/b.ko", fake_module(&["depends=a", "name=b"])),
        ]);
        let err = ModuleSet::from_tree(&tree, "6.1.0-test")
            .unwrap()
            .modules_dep()
            .unwrap_err();
        assert!(matches!(err, KmodError::Cycle { .. }), "{err}");
    }

    #[test]
    fn selection_keeps_matches_dependencies_and_softdeps_and_drops_the_rest() {
        let mut tree = synthetic_tree();
        let kept = select_in_tree(
            &mut tree,
            "6.1.0-test",
            &[
                "kernel/fs/ext4",
                "kernel/drivers/md/dm-verity.ko",
                "kernel/drivers/bl",
            ],
        )
        .unwrap();
        let names: BTreeSet<&str> = kept.modules.iter().map(|m| m.name.as_str()).collect();
        let expected: BTreeSet<&str> = [
            "ext4",
            "jbd2",
            "mbcache",
            "crc32c_generic",
            "dm_verity",
            "dm_bufio",
            "dm_mod",
        ]
        .into();
        // "kernel/drivers/bl" is not a directory boundary: virtio_blk stays out.
        assert_eq!(names, expected);
        let d = "usr/lib/modules/6.1.0-test";
        assert!(tree.get(format!("{d}/kernel/sound/snd.ko")).is_none());
        assert!(tree
            .get(format!("{d}/kernel/drivers/block/virtio_blk.ko"))
            .is_none());
        assert!(tree.get(format!("{d}/kernel/fs/jbd2/jbd2.ko")).is_some());
        let Kind::File(dep) = &tree.get(format!("{d}/modules.dep")).unwrap().kind else {
            panic!("modules.dep is not a file")
        };
        let dep = String::from_utf8(dep.read_all().unwrap()).unwrap();
        assert_eq!(dep.lines().count(), 7, "{dep}");
        assert!(!dep.contains("snd"));
    }

    #[test]
    fn modules_named_in_the_load_list_are_kept_with_their_dependencies() {
        let spec = InitramfsModules {
            classes: &["kernel/fs/ext4"],
            always_load: &["virtio-blk", "ext4", "not_a_module"],
        };
        let (tree, subset) =
            initramfs_modules_with(&synthetic_tree(), "6.1.0-test", &spec, 0).unwrap();
        let names: BTreeSet<&str> = subset.modules.iter().map(|m| m.name.as_str()).collect();
        let expected: BTreeSet<&str> = [
            "ext4",
            "jbd2",
            "mbcache",
            "crc32c_generic",
            "virtio_blk",
            "virtio",
            "virtio_ring",
        ]
        .into();
        assert_eq!(names, expected);
        let Kind::File(list) = &tree.get(ALWAYS_LOAD_FILE).unwrap().kind else {
            panic!("the load list is not a file")
        };
        assert_eq!(list.read_all().unwrap(), b"virtio_blk\next4\n");
    }

    #[test]
    fn initramfs_subset_has_its_own_indices_and_load_list() {
        let (tree, subset) = initramfs_modules(&synthetic_tree(), "6.1.0-test", 9).unwrap();
        assert!(subset.modules.iter().all(|m| m.name != "snd"));
        let read = |p: &str| match &tree.get(p).unwrap_or_else(|| panic!("{p} missing")).kind {
            Kind::File(c) => String::from_utf8(c.read_all().unwrap()).unwrap(),
            k => panic!("{p} is {k:?}"),
        };
        let list = read(ALWAYS_LOAD_FILE);
        assert_eq!(list, "crc32c_generic\ndm_verity\next4\n");
        let index = ModIndex::parse(
            &read("lib/modules/6.1.0-test/modules.dep"),
            &read("lib/modules/6.1.0-test/modules.alias"),
            &read("lib/modules/6.1.0-test/modules.softdep"),
        )
        .unwrap();
        for m in list.lines() {
            for path in index.load_order(m).unwrap() {
                assert!(
                    tree.get(format!("lib/modules/6.1.0-test/{path}")).is_some(),
                    "{path}"
                );
            }
        }
    }

    #[test]
    fn binary_indices_of_a_synthetic_set_hold_names_aliases_and_builtins() {
        use crate::kmod_index::lookup;
        let set = ModuleSet::from_tree(&synthetic_tree(), "6.1.0-test").unwrap();
        let dep = set.modules_dep_bin().unwrap();
        let line = lookup(&dep, "dm_verity").unwrap();
        assert_eq!(line.len(), 1);
        assert_eq!(
            line[0].1,
            "kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko"
        );
        let alias = set.modules_alias_bin().unwrap();
        // Looked up by the normalised pattern, with the module's position as priority.
        let found = lookup(&alias, "crypto_crc32c").unwrap();
        assert_eq!(
            found.iter().map(|v| v.1.as_str()).collect::<Vec<_>>(),
            ["crc32c_generic"]
        );
        assert_eq!(
            lookup(&alias, "virtio:d00000002v*").unwrap()[0].1,
            "virtio_blk"
        );
        assert!(
            lookup(&alias, "fs-ext4").unwrap().is_empty(),
            "dashes are stored as _"
        );
        // No symbol tables in the synthetic modules: an empty but valid index.
        let symbols = set.modules_symbols_bin().unwrap();
        assert_eq!(lookup(&symbols, "symbol:x").unwrap(), []);

        let builtin =
            builtin_index(b"kernel/net/unix/unix.ko\nkernel/fs/nls/nls-base.ko\n\n").unwrap();
        assert_eq!(lookup(&builtin, "unix").unwrap(), [(0, String::new())]);
        assert_eq!(lookup(&builtin, "nls_base").unwrap().len(), 1);
        let modinfo =
            b"unix.license=GPL\0unix.alias=net-pf-1\0\0\0dh_generic.alias=crypto-dh\0bad\0";
        let aliases = builtin_alias_index(modinfo).unwrap();
        assert_eq!(
            lookup(&aliases, "net_pf_1").unwrap(),
            [(0, "unix".to_string())]
        );
        assert_eq!(lookup(&aliases, "crypto_dh").unwrap()[0].1, "dh_generic");
        assert!(lookup(&aliases, "GPL").unwrap().is_empty());

        let aliases = [
            "devname:fuse".to_string(),
            "char-major-10-*".to_string(),
            "char-major-10-229".to_string(),
        ];
        let devname = devname_of(&aliases);
        assert_eq!(devname, Some(("fuse", 'c', 10, 229)));
        assert_eq!(devname_of(&["devname:mapper/control".to_string()]), None);
    }

    #[test]
    fn glob_matching_follows_fnmatch() {
        assert!(glob_match(
            "pci:v00001AF4d00001001sv*sd*bc*sc*i*",
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"
        ));
        assert!(!glob_match(
            "pci:v00001AF4d00001001sv*",
            "pci:v00001AF4d00001000sv0"
        ));
        assert!(glob_match(
            "usb:v*p*d*dc*dsc*dp*ic08isc06ip50in*",
            "usb:v0781p5567d0100dc00dsc00dp00ic08isc06ip50in00"
        ));
        assert!(glob_match("scsi:t-0x0[07]*", "scsi:t-0x00"));
        assert!(!glob_match("scsi:t-0x0[07]*", "scsi:t-0x05"));
        assert!(glob_match("a[!b]c", "axc") && !glob_match("a[!b]c", "abc"));
        assert!(glob_match("x[a-c]?", "xbz") && !glob_match("x[a-c]?", "xdz"));
        assert!(glob_match("*", "") && glob_match("a*b*c", "aXbYbc") && !glob_match("a*b", "ab c"));
        assert!(glob_match("[", "[") && !glob_match("?", ""));
    }

    fn dep_map(text: &str) -> BTreeMap<String, BTreeSet<String>> {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(m, deps)| {
                (
                    m.to_string(),
                    deps.split_whitespace().map(str::to_string).collect(),
                )
            })
            .collect()
    }

    fn line_set(text: &str) -> BTreeSet<String> {
        text.lines().map(str::to_string).collect()
    }

    /// Debian's kernel as the image build sees it (read into a tree at `usr/lib/modules/<kver>`)
    /// next to a hard-linked copy of the package on which Debian's `depmod` has run. Returns
    /// the work directory (keep it alive), the copy's root, the kernel version, the tree and
    /// the module set read from it.
    fn debian_kernel_and_depmod() -> (tempfile::TempDir, PathBuf, String, Tree, ModuleSet) {
        let depmod = crate::testutil::require_tool("depmod", "kmod");
        let (extracted, kver) = crate::testutil::debian_kernel();
        let work = tempfile::Builder::new()
            .prefix("kiln-depmod")
            .tempdir_in(crate::testutil::TEST_CACHE)
            .unwrap();
        // depmod writes into the directory it reads: give it a hard-linked copy.
        let copy = work.path().join("depmod");
        hard_link_copy(&extracted, &copy);
        let st = Command::new(&depmod)
            .arg("-b")
            .arg(&copy)
            .arg(&kver)
            .status()
            .unwrap();
        assert!(st.success(), "depmod failed");

        let mut tree = Tree::new(Meta::root(0o755, 0));
        let opts = crate::hostdir::HostDirOptions {
            uid: 0,
            gid: 0,
            mtime: 0,
        };
        let src = extracted.join("lib/modules").join(&kver);
        crate::hostdir::add_host_dir(
            &mut tree,
            &src,
            &TreePath::new(modules_dir(&kver)).unwrap(),
            &opts,
        )
        .unwrap();
        let set = ModuleSet::from_tree(&tree, &kver).unwrap();
        assert!(
            set.modules.len() > 3000,
            "only {} modules",
            set.modules.len()
        );
        (work, copy, kver, tree, set)
    }

    fn hard_link_copy(from: &Path, to: &Path) {
        let st = Command::new("cp")
            .arg("-al")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(st.success(), "cp -al {} {}", from.display(), to.display());
    }

    /// Runs a kmod tool and returns its exit status, stdout and stderr with `base` replaced by
    /// `BASE`, so runs over two directories compare.
    fn run_kmod_tool(tool: &Path, args: &[&str], base: &Path) -> String {
        let out = Command::new(tool).args(args).output().unwrap();
        let text = format!(
            "{}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        text.replace(&base.display().to_string(), "BASE")
    }

    #[test]
    fn binary_indices_answer_modprobe_and_modinfo_as_depmods_do() {
        let modprobe = crate::testutil::require_tool("modprobe", "kmod");
        let modinfo = crate::testutil::require_tool("modinfo", "kmod");
        let (work, reference, kver, mut tree, set) = debian_kernel_and_depmod();
        let (extracted, _) = crate::testutil::debian_kernel();
        set.write_indices(&mut tree).unwrap();
        let dir = modules_dir(&kver);
        let read = |name: &str| match tree.get(format!("{dir}/{name}")).map(|e| &e.kind) {
            Some(Kind::File(c)) => c.read_all().unwrap(),
            k => panic!("{name} is {k:?}"),
        };

        // Same input, same bytes.
        let builtin = std::fs::read(
            extracted
                .join("lib/modules")
                .join(&kver)
                .join("modules.builtin"),
        )
        .unwrap();
        let builtin_modinfo = std::fs::read(
            extracted
                .join("lib/modules")
                .join(&kver)
                .join("modules.builtin.modinfo"),
        )
        .unwrap();
        let files = set
            .index_files(Some(&builtin), Some(&builtin_modinfo))
            .unwrap();
        assert_eq!(files.len(), 10);
        for (name, bytes) in &files {
            assert_eq!(&read(name), bytes, "{name} differs between two runs");
        }

        // Byte for byte what Debian's depmod writes, except modules.symbols, whose line order
        // is depmod's hash table's.
        let ref_dir = reference.join("lib/modules").join(&kver);
        for (name, ours) in &files {
            let theirs = std::fs::read(ref_dir.join(name)).unwrap();
            if *name == "modules.symbols" {
                let lines = |b: &[u8]| line_set(&String::from_utf8_lossy(b));
                assert_eq!(lines(ours), lines(&theirs), "{name}");
            } else {
                assert!(
                    ours == &theirs,
                    "{name} differs from depmod's ({} vs {} bytes)",
                    ours.len(),
                    theirs.len()
                );
            }
        }
        assert!(read("modules.symbols.bin").len() > 100_000);
        assert!(String::from_utf8(read("modules.devname"))
            .unwrap()
            .contains("fuse fuse c10:229\n"));

        // modprobe and modinfo give the same answers from our indices as from depmod's. Host
        // configuration is left out (-C an empty directory).
        let ours = work.path().join("ours");
        hard_link_copy(&extracted, &ours);
        let our_dir = ours.join("lib/modules").join(&kver);
        for (name, bytes) in &files {
            std::fs::write(our_dir.join(name), bytes).unwrap();
        }
        let no_config = work.path().join("modprobe.d");
        std::fs::create_dir(&no_config).unwrap();
        let no_config = no_config.display().to_string();
        let names = [
            "virtio_net",
            "virtio-net",
            "ext4",
            "br_netfilter",
            "overlay",
            "nf_tables",
            "dm_verity",
            "pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00",
            "fs-overlay",
            "net-pf-16-proto-12",
            "crypto-crc32c",
            "char-major-10-229",
            "symbol:jbd2_journal_start",
            "unix",
            "net-pf-1",
            "fs-debugfs",
            "no_such_module",
        ];
        let answers = |base: &Path| -> Vec<String> {
            let base_s = base.display().to_string();
            let mut out = Vec::new();
            for name in names {
                out.push(run_kmod_tool(
                    &modprobe,
                    &[
                        "-C",
                        &no_config,
                        "-d",
                        &base_s,
                        "-S",
                        &kver,
                        "--show-depends",
                        name,
                    ],
                    base,
                ));
                out.push(run_kmod_tool(
                    &modinfo,
                    &["-b", &base_s, "-k", &kver, "-F", "filename", name],
                    base,
                ));
            }
            out
        };
        let (ours_said, theirs_said) = (answers(&ours), answers(&reference));
        for (i, (o, t)) in ours_said.iter().zip(&theirs_said).enumerate() {
            assert_eq!(o, t, "{} answers differently", names[i / 2]);
        }
        let said = ours_said.join("");
        assert!(said.contains("insmod BASE/lib/modules/"), "{said}");
        assert!(said.contains("virtio_net.ko"), "{said}");
        assert!(said.contains("builtin unix"), "{said}");

        // Without the binary indices modprobe finds nothing: they are what it reads.
        for (name, _) in files.iter().filter(|(n, _)| n.ends_with(".bin")) {
            std::fs::remove_file(our_dir.join(name)).unwrap();
        }
        let base_s = ours.display().to_string();
        let without = run_kmod_tool(
            &modprobe,
            &[
                "-C",
                &no_config,
                "-d",
                &base_s,
                "-S",
                &kver,
                "--show-depends",
                "virtio_net",
            ],
            &ours,
        );
        assert!(!without.contains("virtio_net.ko"), "{without}");
    }

    #[test]
    fn indices_of_debians_kernel_match_depmod() {
        let (_work, copy, kver, tree, set) = debian_kernel_and_depmod();
        let ref_dir = copy.join("lib/modules").join(&kver);
        let reference = |name: &str| std::fs::read_to_string(ref_dir.join(name)).unwrap();
        let ours = set.modules_dep().unwrap();
        let theirs = reference("modules.dep");
        // Same lines in the same order (modules.order), each listing its dependencies in
        // depmod's order.
        assert_eq!(ours, theirs);
        assert_eq!(
            line_set(&set.modules_alias()),
            line_set(&reference("modules.alias"))
        );
        assert_eq!(
            line_set(&set.modules_softdep()),
            line_set(&reference("modules.softdep"))
        );

        // Our order is a valid load order: each listed dependency's own dependencies come
        // after it in the line (modprobe loads from the end).
        let deps = dep_map(&ours);
        for line in ours.lines() {
            let (_, list) = line.split_once(':').unwrap();
            let list: Vec<&str> = list.split_whitespace().collect();
            for (i, d) in list.iter().enumerate() {
                for dd in &deps[*d] {
                    assert!(
                        list[i + 1..].contains(&dd.as_str()),
                        "{line}: {dd} should follow {d}"
                    );
                }
            }
        }

        let (initrd, subset) = initramfs_modules(&tree, &kver, 0).unwrap();
        let names: BTreeSet<&str> = subset.modules.iter().map(|m| m.name.as_str()).collect();
        for needed in [
            "virtio_blk",
            "virtio_pci",
            "dm_verity",
            "dm_mod",
            "ext4",
            "jbd2",
            "vfat",
            "nvme",
            "ahci",
            "usb_storage",
            "sd_mod",
            "crc32c_generic",
            "qemu_fw_cfg",
            "uas",
            "nls_iso8859_1",
        ] {
            assert!(
                names.contains(needed),
                "{needed} missing from the initramfs subset"
            );
        }
        let bytes: u64 = initrd.content_bytes();
        assert!(bytes < 40 << 20, "initramfs modules take {bytes} bytes");
        assert!(initrd
            .get(format!("lib/modules/{kver}/modules.builtin"))
            .is_some());
    }
}
