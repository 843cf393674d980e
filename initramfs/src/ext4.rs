//! The few ext4 superblock fields the init needs: the filesystem's size (where the dm-verity
//! area starts on a `/usr` partition) and its block size (for an online resize).

use std::io::{self, Read, Seek, SeekFrom};

/// The superblock sits 1024 bytes into the filesystem and is 1024 bytes long.
const SUPERBLOCK_OFFSET: u64 = 1024;
const SUPERBLOCK_LEN: usize = 1024;
const MAGIC: u16 = 0xEF53;
/// `s_feature_incompat` bit for 64-bit block numbers (`s_blocks_count_hi` is valid).
const INCOMPAT_64BIT: u32 = 0x80;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub blocks_count: u64,
    pub block_size: u64,
}

impl Superblock {
    /// The filesystem's size in bytes: on a `/usr` partition, where the verity area begins.
    pub fn fs_bytes(&self) -> u64 {
        self.blocks_count * self.block_size
    }

    /// Parses the 1024-byte superblock; `what` names the device in the error.
    pub fn parse(b: &[u8], what: &str) -> io::Result<Superblock> {
        let bad = |reason: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what}: no ext4 filesystem: {reason}"),
            )
        };
        if b.len() < SUPERBLOCK_LEN {
            return Err(bad(format!("superblock is {} bytes", b.len())));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let magic = u16::from_le_bytes([b[0x38], b[0x39]]);
        if magic != MAGIC {
            return Err(bad(format!("magic is {magic:#06x}, not {MAGIC:#06x}")));
        }
        let log_block_size = u32_at(0x18);
        if log_block_size > 6 {
            return Err(bad(format!(
                "block size 2^(10+{log_block_size}) is impossible"
            )));
        }
        let mut blocks_count = u64::from(u32_at(0x04));
        if u32_at(0x60) & INCOMPAT_64BIT != 0 {
            blocks_count |= u64::from(u32_at(0x150)) << 32;
        }
        Ok(Superblock {
            blocks_count,
            block_size: 1024u64 << log_block_size,
        })
    }

    /// Reads the superblock of the filesystem at the start of `dev`.
    pub fn read(dev: &mut (impl Read + Seek), what: &str) -> io::Result<Superblock> {
        let mut b = [0u8; SUPERBLOCK_LEN];
        dev.seek(SeekFrom::Start(SUPERBLOCK_OFFSET))?;
        dev.read_exact(&mut b).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{what}: reading the ext4 superblock: {e}"),
            )
        })?;
        Superblock::parse(&b, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn size_of_a_mkfs_ext4_image() {
        let mkfs = kiln_image::testutil::require_tool("mkfs.ext4", "e2fsprogs");
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        // 24 MiB file, 20000 blocks of 1 KiB: the filesystem is smaller than the file, as on a
        // /usr partition with the verity area after it.
        std::fs::write(&img, vec![0u8; 24 << 20]).unwrap();
        let st = Command::new(mkfs)
            .args(["-q", "-F", "-b", "1024", "-O", "64bit"])
            .arg(&img)
            .arg("20000")
            .status()
            .unwrap();
        assert!(st.success());
        let sb = Superblock::read(&mut std::fs::File::open(&img).unwrap(), "fs.img").unwrap();
        assert_eq!(
            sb,
            Superblock {
                blocks_count: 20000,
                block_size: 1024
            }
        );
        assert_eq!(sb.fs_bytes(), 20_480_000);
    }

    #[test]
    fn garbage_is_refused_with_the_device_name() {
        let err = Superblock::parse(&[0u8; 1024], "/dev/vda2")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/dev/vda2") && err.contains("magic"), "{err}");
        let mut b = [0u8; 1024];
        b[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        b[0x04..0x08].copy_from_slice(&5u32.to_le_bytes());
        b[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        // Without the 64bit feature the high word is ignored.
        assert_eq!(Superblock::parse(&b, "x").unwrap().blocks_count, 5);
        b[0x60] = 0x80;
        assert_eq!(
            Superblock::parse(&b, "x").unwrap().blocks_count,
            (1 << 32) + 5
        );
        b[0x18] = 9;
        assert!(Superblock::parse(&b, "x").is_err());
    }
}
