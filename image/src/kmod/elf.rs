//! Reading a module file: the `.modinfo` fields and the exported and needed symbols of an
//! uncompressed ELF64 little-endian `.ko`, through its section header table.

use std::collections::BTreeSet;

use super::error::KmodError;
use super::module::{ModInfo, ModSymbols};

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
