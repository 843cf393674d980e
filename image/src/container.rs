//! Container images made from the image's own packages: no registry is reachable from a Kiln
//! machine's build or its first boot, so a base image (busybox with the C library it links) is
//! cut out of the rootfs tree and written as a `docker load` archive under
//! `/usr/share/kiln/images/`. The archive is the `docker save` layout (`manifest.json`, an image
//! config named by its SHA-256, one layer tar); every byte depends only on the tree and the
//! build's epoch.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::tree::{Content, Entry, Kind, Meta, Tree, TreePath};

/// Where the archives go in the image, and where `kiln-container-images.service` loads them from.
pub const IMAGES_DIR: &str = kiln_contract::paths::under(kiln_contract::paths::CONTAINER_IMAGES);

/// Directories where the dynamic linker looks for libraries on Debian amd64 (merged `/usr`).
const LIBRARY_DIRS: &[&str] = &["usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib"];

/// One `[[container_images]]` entry of `image.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ContainerImageSpec {
    /// The archive's file name under [`IMAGES_DIR`] (`<name>.tar`).
    pub name: String,
    /// The repository tag `docker load` gives it, e.g. `kiln/busybox:latest`.
    pub tag: String,
    /// Executables taken from the image's tree (paths under `/`), with the shared libraries and
    /// the program interpreter their ELF headers name.
    pub binaries: Vec<String>,
    /// Symbolic links to add: path in the container → target (e.g. `usr/bin/sh` → `busybox`).
    #[serde(default)]
    pub links: BTreeMap<String, String>,
    /// The image's default command.
    pub cmd: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container image {image}: {path} is not a file in the image's tree; add the package that ships it to packages.include or fix `binaries`")]
    Missing { image: String, path: String },
    #[error("container image {image}: {path} needs {library}, which is in none of {dirs}; add the package that ships it")]
    Library {
        image: String,
        path: String,
        library: String,
        dirs: String,
    },
    #[error("container image {image}: {path} is not a 64-bit little-endian ELF file: {problem}")]
    Elf {
        image: String,
        path: String,
        problem: String,
    },
    #[error("container image {image}: bad path {path:?} in `links`: {problem}")]
    Link {
        image: String,
        path: String,
        problem: String,
    },
    #[error("container image {image}: reading {path}: {source}")]
    Io {
        image: String,
        path: String,
        source: std::io::Error,
    },
}

/// What an ELF executable asks of the dynamic linker.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ElfNeeds {
    /// `PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` entries, e.g. `libc.so.6`.
    pub needed: Vec<String>,
}

/// Reads the program interpreter and the needed libraries of an ELF64 little-endian file.
/// A static executable gives empty needs.
pub fn elf_needs(data: &[u8]) -> Result<ElfNeeds, String> {
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return Err("no ELF header".into());
    }
    if data[4] != 2 || data[5] != 1 {
        return Err("not ELFCLASS64 / ELFDATA2LSB".into());
    }
    let u16_at = |o: usize| -> Result<u64, String> {
        data.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as u64)
            .ok_or_else(|| format!("truncated at byte {o}"))
    };
    let u64_at = |o: usize| -> Result<u64, String> {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| format!("truncated at byte {o}"))
    };
    let phoff = u64_at(0x20)? as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    // (type, offset, vaddr, filesz) of every program header.
    let mut headers = Vec::with_capacity(phnum);
    for i in 0..phnum {
        let h = phoff + i * phentsize;
        let kind = u64_at(h)? & 0xffff_ffff;
        headers.push((kind, u64_at(h + 8)?, u64_at(h + 16)?, u64_at(h + 32)?));
    }
    const PT_LOAD: u64 = 1;
    const PT_DYNAMIC: u64 = 2;
    const PT_INTERP: u64 = 3;
    let c_string = |o: usize| -> Result<String, String> {
        let rest = data
            .get(o..)
            .ok_or_else(|| format!("string at {o} is past the end"))?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| format!("string at {o} has no end"))?;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    let mut needs = ElfNeeds::default();
    if let Some(&(_, off, _, _)) = headers.iter().find(|h| h.0 == PT_INTERP) {
        needs.interpreter = Some(c_string(off as usize)?);
    }
    let Some(&(_, dyn_off, _, dyn_size)) = headers.iter().find(|h| h.0 == PT_DYNAMIC) else {
        return Ok(needs);
    };
    const DT_NULL: u64 = 0;
    const DT_NEEDED: u64 = 1;
    const DT_STRTAB: u64 = 5;
    let mut strtab_vaddr = None;
    let mut needed_offsets = Vec::new();
    for i in 0..(dyn_size / 16) as usize {
        let e = dyn_off as usize + i * 16;
        let (tag, val) = (u64_at(e)?, u64_at(e + 8)?);
        match tag {
            DT_NULL => break,
            DT_NEEDED => needed_offsets.push(val),
            DT_STRTAB => strtab_vaddr = Some(val),
            _ => {}
        }
    }
    if needed_offsets.is_empty() {
        return Ok(needs);
    }
    let strtab_vaddr = strtab_vaddr.ok_or("DT_NEEDED without DT_STRTAB")?;
    // DT_STRTAB is an address: find the loaded segment that holds it to get its file offset.
    let (_, seg_off, seg_vaddr, _) = headers
        .iter()
        .find(|h| h.0 == PT_LOAD && h.2 <= strtab_vaddr && strtab_vaddr < h.2 + h.3)
        .ok_or("DT_STRTAB is in no loaded segment")?;
    let strtab = (strtab_vaddr - seg_vaddr + seg_off) as usize;
    for o in needed_offsets {
        needs.needed.push(c_string(strtab + o as usize)?);
    }
    Ok(needs)
}

/// Cuts the container's filesystem out of the image's `tree`: the binaries, the libraries they
/// need (transitively), the links asked for, the merged-`/usr` top-level links and the few
/// directories and files a container runtime expects.
pub fn container_tree(
    tree: &Tree,
    spec: &ContainerImageSpec,
    epoch: i64,
) -> Result<Tree, ContainerError> {
    let dir = Meta::root(0o755, epoch);
    let mut out = Tree::new(dir.clone());
    let mut queue: Vec<String> = spec.binaries.clone();
    let mut seen = std::collections::BTreeSet::new();
    while let Some(path) = queue.pop() {
        let path = path.trim_start_matches('/').to_owned();
        if !seen.insert(path.clone()) {
            continue;
        }
        let (real, content) = resolve_file(tree, &path).ok_or_else(|| ContainerError::Missing {
            image: spec.name.clone(),
            path: path.clone(),
        })?;
        let data = content.read_all().map_err(|source| ContainerError::Io {
            image: spec.name.clone(),
            path: real.clone(),
            source,
        })?;
        let needs = elf_needs(&data).map_err(|problem| ContainerError::Elf {
            image: spec.name.clone(),
            path: real.clone(),
            problem,
        })?;
        copy_with_links(tree, &path, &mut out, &dir, spec)?;
        if let Some(interp) = needs.interpreter {
            queue.push(interp);
        }
        for lib in needs.needed {
            let found = LIBRARY_DIRS
                .iter()
                .map(|d| format!("{d}/{lib}"))
                .find(|p| resolve_file(tree, p).is_some())
                .ok_or_else(|| ContainerError::Library {
                    image: spec.name.clone(),
                    path: real.clone(),
                    library: lib.clone(),
                    dirs: LIBRARY_DIRS.join(", "),
                })?;
            queue.push(found);
        }
    }
    for (link, target) in &spec.links {
        let bad = |problem: &str| ContainerError::Link {
            image: spec.name.clone(),
            path: link.clone(),
            problem: problem.into(),
        };
        let path = TreePath::new(link.trim_start_matches('/')).map_err(|e| bad(&e.to_string()))?;
        let parent = path.parent().unwrap_or_else(TreePath::root);
        out.create_dirs(&parent, &dir)
            .map_err(|e| bad(&e.to_string()))?;
        out.insert_at(path, symlink(target, epoch))
            .map_err(|e| bad(&e.to_string()))?;
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        if out.get(link).is_none() {
            out.insert(link, symlink(target, epoch))
                .expect("top-level link");
        }
    }
    for (d, mode) in [
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("root", 0o700),
    ] {
        if out.get(d).is_none() {
            out.insert(d, Entry::new(Kind::Dir, Meta::root(mode, epoch)))
                .expect("top-level dir");
        }
    }
    let file = |text: &str| Entry::new(Kind::File(Content::bytes(text)), Meta::root(0o644, epoch));
    out.insert(
        "etc/passwd",
        file(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
    )
    .expect("passwd");
    out.insert("etc/group", file("root:x:0:\nnogroup:x:65534:\n"))
        .expect("group");
    Ok(out)
}

/// Follows symbolic links inside `tree` (at most 16) to a regular file.
fn resolve_file(tree: &Tree, path: &str) -> Option<(String, Content)> {
    let mut current = path.trim_start_matches('/').to_owned();
    for _ in 0..16 {
        current = canonical_parent(tree, &current);
        let entry = tree.get(&current)?;
        match &entry.kind {
            Kind::File(c) => return Some((current, c.clone())),
            Kind::Symlink(target) => {
                current = join_link(&current, &String::from_utf8_lossy(target))
            }
            _ => return None,
        }
    }
    None
}

/// The path a symbolic link at `link` with `target` points to, relative to the tree's root.
fn join_link(link: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        link.split('/').collect::<Vec<_>>()[..link.split('/').count() - 1].to_vec()
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// Copies `path` and every link on the way to its file (so `/lib64/ld-linux…` stays a link
/// to the file the image has).
fn copy_with_links(
    tree: &Tree,
    path: &str,
    out: &mut Tree,
    dir: &Meta,
    spec: &ContainerImageSpec,
) -> Result<(), ContainerError> {
    let mut current = path.to_owned();
    for _ in 0..16 {
        // Parents that are links in the image (`lib64` → `usr/lib64`) are made by the top-level
        // links; take the path through them.
        let canonical = canonical_parent(tree, &current);
        let Some(entry) = tree.get(&canonical) else {
            break;
        };
        let p = TreePath::new(&canonical).map_err(|e| ContainerError::Link {
            image: spec.name.clone(),
            path: canonical.clone(),
            problem: e.to_string(),
        })?;
        if let Some(parent) = p.parent() {
            out.create_dirs(&parent, dir)
                .expect("directories under a valid path");
        }
        if out.get(&canonical).is_none() {
            out.insert_at(p, entry.clone()).expect("parent made above");
        }
        match &entry.kind {
            Kind::Symlink(target) => {
                current = join_link(&canonical, &String::from_utf8_lossy(target))
            }
            _ => break,
        }
    }
    Ok(())
}

/// `path` with every directory component that is a symbolic link in `tree` resolved.
fn canonical_parent(tree: &Tree, path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    let mut resolved = String::new();
    for (i, part) in parts.iter().enumerate() {
        let candidate = if resolved.is_empty() {
            part.to_string()
        } else {
            format!("{resolved}/{part}")
        };
        let is_last = i + 1 == parts.len();
        resolved = match tree.get(&candidate).map(|e| &e.kind) {
            Some(Kind::Symlink(t)) if !is_last => {
                join_link(&candidate, &String::from_utf8_lossy(t))
            }
            _ => candidate,
        };
    }
    resolved
}

fn symlink(target: &str, mtime: i64) -> Entry {
    Entry::new(
        Kind::Symlink(target.as_bytes().to_vec()),
        Meta::root(0o777, mtime),
    )
}

/// The `docker load` archive of `rootfs` as one layer, tagged `spec.tag`.
pub fn docker_archive(
    rootfs: &Tree,
    spec: &ContainerImageSpec,
    epoch: i64,
) -> Result<Vec<u8>, ContainerError> {
    let io = |source| ContainerError::Io {
        image: spec.name.clone(),
        path: "(archive)".into(),
        source,
    };
    let layer = layer_tar(rootfs, epoch).map_err(io)?;
    let layer_digest = kiln_contract::hex::encode(&Sha256::digest(&layer));
    let created = crate::civil::rfc3339(epoch);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "Cmd": spec.cmd,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        "history": [{ "created": created, "created_by": "kiln build-image (from the image's own packages)" }],
    });
    let config = serde_json::to_vec(&config).expect("JSON of plain values");
    let config_name = format!(
        "{}.json",
        kiln_contract::hex::encode(&Sha256::digest(&config))
    );
    let layer_name = format!("{layer_digest}/layer.tar");
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [spec.tag],
        "Layers": [layer_name],
    }]))
    .expect("JSON of plain values");
    let mut out = tar::Builder::new(Vec::new());
    append_dir(&mut out, &format!("{layer_digest}/"), 0o755, epoch).map_err(io)?;
    append_file(&mut out, &layer_name, &layer, 0o644, epoch).map_err(io)?;
    append_file(&mut out, &config_name, &config, 0o644, epoch).map_err(io)?;
    append_file(&mut out, "manifest.json", &manifest, 0o644, epoch).map_err(io)?;
    out.into_inner().map_err(io)
}

/// The layer: every entry of the tree in path order, owned by root, times set to the epoch.
fn layer_tar(rootfs: &Tree, epoch: i64) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, entry) in rootfs.iter() {
        if path.is_root() {
            continue;
        }
        let name = String::from_utf8_lossy(path.as_bytes()).into_owned();
        let mode = u32::from(entry.meta.mode) & 0o7777;
        match &entry.kind {
            Kind::Dir => append_dir(&mut b, &format!("{name}/"), mode, epoch)?,
            Kind::File(c) => append_file(&mut b, &name, &c.read_all()?, mode, epoch)?,
            Kind::Symlink(target) => {
                let mut h = header(tar::EntryType::Symlink, mode, epoch);
                h.set_size(0);
                b.append_link(&mut h, &name, String::from_utf8_lossy(target).as_ref())?;
            }
            other => {
                return Err(std::io::Error::other(format!(
                    "{name}: a {other:?} cannot go into a container layer"
                )))
            }
        }
    }
    b.into_inner()
}

fn header(kind: tar::EntryType, mode: u32, epoch: i64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(epoch.max(0) as u64);
    h
}

fn append_dir(
    b: &mut tar::Builder<Vec<u8>>,
    name: &str,
    mode: u32,
    epoch: i64,
) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Directory, mode, epoch);
    h.set_size(0);
    b.append_data(&mut h, name, std::io::empty())
}

fn append_file(
    b: &mut tar::Builder<Vec<u8>>,
    name: &str,
    data: &[u8],
    mode: u32,
    epoch: i64,
) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, epoch);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, name, data)
}

/// Writes an archive into `tree` at `usr/share/kiln/images/<name>.tar`, and its tag beside it in
/// `<name>.tags` (one a line), which the loader checks docker still has.
pub fn install_archive(
    tree: &mut Tree,
    spec: &ContainerImageSpec,
    archive: Vec<u8>,
    epoch: i64,
) -> Result<(), ContainerError> {
    let files = [
        (format!("{IMAGES_DIR}/{}.tar", spec.name), archive),
        (
            format!("{IMAGES_DIR}/{}.tags", spec.name),
            format!("{}\n", spec.tag).into_bytes(),
        ),
    ];
    for (path, data) in files {
        tree.insert_with_parents(
            &path,
            Entry::new(Kind::File(Content::bytes(data)), Meta::root(0o644, epoch)),
            &Meta::root(0o755, epoch),
        )
        .map_err(|e| ContainerError::Link {
            image: spec.name.clone(),
            path,
            problem: e.to_string(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_like_the_kernel() {
        assert_eq!(
            join_link("usr/lib64/ld.so", "../lib/x/ld.so"),
            "usr/lib/x/ld.so"
        );
        assert_eq!(join_link("lib64/ld.so", "/usr/lib/ld.so"), "usr/lib/ld.so");
    }

    #[test]
    fn the_hosts_own_programs_read_as_elf() {
        // A dynamic executable of this (Debian amd64) machine names its interpreter and libc.
        let data = std::fs::read("/usr/bin/ls").expect("/usr/bin/ls");
        let needs = elf_needs(&data).unwrap();
        assert_eq!(
            needs.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert!(needs.needed.iter().any(|n| n == "libc.so.6"), "{needs:?}");
        assert!(elf_needs(b"#!/bin/sh\n").is_err());
    }
}
