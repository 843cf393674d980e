//! Assembling partition images into one sparse `disk.raw` under a GPT, in the partition layout of
//! `kiln_contract::disk`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::gpt::{Gpt, Guid};

use kiln_contract::disk::{disk_bytes, PartitionSpec};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("partition table: {0}")]
    Gpt(#[from] crate::gpt::GptError),
    #[error("{name} image {path} is {size} bytes; the partition holds only {room} bytes (raise partitions.{key} in image.toml, which changes the disk layout)")]
    TooLarge {
        name: String,
        key: String,
        path: PathBuf,
        size: u64,
        room: u64,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DiskError {
    let what = what.into();
    move |source| DiskError::Io { what, source }
}

/// What goes into one partition: an image file, or nothing (left zero, like USR-B).
pub struct PartitionContent<'a> {
    pub number: u32,
    pub image: Option<&'a Path>,
}

/// Writes `out` (created or truncated): the GPT with the layout, then each image at its
/// partition's offset, skipping all-zero blocks so the file stays sparse. GUIDs come from
/// `guid_for` (derived from the build's inputs, for reproducible bytes). Returns the table.
pub fn assemble(
    out: &Path,
    layout: &[PartitionSpec],
    contents: &[PartitionContent],
    guid_for: impl Fn(&str) -> Guid,
) -> Result<Gpt, DiskError> {
    let total = disk_bytes(layout);
    let mut gpt = Gpt::new(total, guid_for("disk"))?;
    for p in layout {
        let type_guid: Guid = p.type_guid.parse().map_err(DiskError::Gpt)?;
        gpt.add(
            p.number,
            type_guid,
            guid_for(p.name),
            p.name,
            p.size_bytes,
            0,
        )?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(io_err(format!("creating {}", out.display())))?;
    file.set_len(total)
        .map_err(io_err(format!("sizing {}", out.display())))?;
    for content in contents {
        let Some(image) = content.image else { continue };
        let spec = layout
            .iter()
            .find(|p| p.number == content.number)
            .expect("content for a partition of the layout");
        let (_, part) = gpt.find_by_name(spec.name).expect("partition just added");
        let (offset, room) = (part.start_bytes(), part.size_bytes());
        let src = File::open(image).map_err(io_err(format!("opening {}", image.display())))?;
        let size = src
            .metadata()
            .map_err(io_err(format!("reading {}", image.display())))?
            .len();
        if size > room {
            return Err(DiskError::TooLarge {
                name: spec.name.into(),
                key: spec.key.into(),
                path: image.to_owned(),
                size,
                room,
            });
        }
        copy_sparse(&src, &file, offset).map_err(io_err(format!(
            "copying {} into {}",
            image.display(),
            out.display()
        )))?;
    }
    let mut writer = &file;
    gpt.write(&mut writer)?;
    file.sync_all()
        .map_err(io_err(format!("syncing {}", out.display())))?;
    Ok(gpt)
}

/// Copies all of `src` into `dst` at `offset`, leaving all-zero 64 KiB blocks unwritten (they
/// read as zeros in a fresh sparse file). Returns the bytes actually written.
pub fn copy_sparse(src: &File, dst: &File, offset: u64) -> io::Result<u64> {
    const BLOCK: usize = 64 * 1024;
    let mut reader = io::BufReader::with_capacity(4 * 1024 * 1024, src);
    reader.seek(SeekFrom::Start(0))?;
    let mut writer = dst;
    let mut buf = vec![0u8; BLOCK];
    let mut pos = offset;
    let mut written = 0;
    loop {
        let n = read_full(&mut reader, &mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            writer.seek(SeekFrom::Start(pos))?;
            writer.write_all(&buf[..n])?;
            written += n as u64;
        }
        pos += n as u64;
    }
    Ok(written)
}

/// Fills `buf` from `r` as far as it goes (short only at the end of input); returns the count.
pub fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::require_tool;
    use kiln_contract::disk::{layout, ESP_NUMBER, MIB, OEM_NUMBER, USR_B_NUMBER};
    use std::process::Command;

    fn guid(name: &str) -> Guid {
        Guid::from_hash(format!("test/{name}").as_bytes())
    }

    #[test]
    fn assembled_disk_passes_sgdisk_and_holds_the_images() {
        let sgdisk = require_tool("sgdisk", "gdisk");
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("esp.img");
        let mut data = vec![0u8; 3 * 65536];
        data[70000] = 0xEE;
        std::fs::write(&esp, &data).unwrap();
        let layout = layout(2, 3, 1, 2);
        let disk = dir.path().join("disk.raw");
        let contents = [
            PartitionContent {
                number: ESP_NUMBER,
                image: Some(&esp),
            },
            PartitionContent {
                number: USR_B_NUMBER,
                image: None,
            },
        ];
        let gpt = assemble(&disk, &layout, &contents, guid).unwrap();
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), disk_bytes(&layout));
        let out = Command::new(&sgdisk).arg("-v").arg(&disk).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("No problems found"),
            "{text}"
        );
        let out = Command::new(&sgdisk).arg("-p").arg(&disk).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for name in ["EFI-SYSTEM", "USR-A", "USR-B", "OEM", "ROOT"] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        let (_, part) = gpt.find_by_name("EFI-SYSTEM").unwrap();
        let bytes = std::fs::read(&disk).unwrap();
        let start = part.start_bytes() as usize;
        assert_eq!(&bytes[start..start + data.len()], &data[..]);
        // Twice the same inputs, the same bytes.
        let again = dir.path().join("again.raw");
        assemble(&again, &layout, &contents, guid).unwrap();
        assert_eq!(std::fs::read(&again).unwrap(), bytes);
    }

    #[test]
    fn an_image_larger_than_its_partition_is_refused_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("oem.img");
        std::fs::write(&big, vec![1u8; 2 * MIB as usize]).unwrap();
        let layout = layout(2, 3, 1, 2);
        let err = assemble(
            &dir.path().join("d.raw"),
            &layout,
            &[PartitionContent {
                number: OEM_NUMBER,
                image: Some(&big),
            }],
            guid,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("OEM") && err.contains("partitions.oem"),
            "{err}"
        );
    }
}
