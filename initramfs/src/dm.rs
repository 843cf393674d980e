//! Device-mapper through its ioctls on `/dev/mapper/control` (no dmsetup, no libdevmapper):
//! create a device, load a one-target table, resume it. Layouts follow the kernel's
//! `include/uapi/linux/dm-ioctl.h`, interface version 4.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::sys;

const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_MAX_TYPE_NAME: usize = 16;

/// `struct dm_ioctl`: the header of every device-mapper ioctl buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DmIoctl {
    pub version: [u32; 3],
    pub data_size: u32,
    pub data_start: u32,
    pub target_count: u32,
    pub open_count: i32,
    pub flags: u32,
    pub event_nr: u32,
    pub padding: u32,
    pub dev: u64,
    pub name: [u8; DM_NAME_LEN],
    pub uuid: [u8; DM_UUID_LEN],
    pub data: [u8; 7],
}

/// `struct dm_target_spec`: one table line, its parameter string following it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DmTargetSpec {
    pub sector_start: u64,
    pub length: u64,
    pub status: i32,
    pub next: u32,
    pub target_type: [u8; DM_MAX_TYPE_NAME],
}

const DM_IOCTL: u64 = 0xfd;
const DM_DEV_CREATE_CMD: u64 = 3;
const DM_DEV_REMOVE_CMD: u64 = 4;
const DM_DEV_SUSPEND_CMD: u64 = 6;
const DM_TABLE_LOAD_CMD: u64 = 9;

/// `_IOWR(DM_IOCTL, nr, struct dm_ioctl)`.
const fn dm_iowr(nr: u64) -> u64 {
    const IOC_READ_WRITE: u64 = 3;
    (IOC_READ_WRITE << 30) | ((std::mem::size_of::<DmIoctl>() as u64) << 16) | (DM_IOCTL << 8) | nr
}

pub const DM_DEV_CREATE: u64 = dm_iowr(DM_DEV_CREATE_CMD);
pub const DM_DEV_REMOVE: u64 = dm_iowr(DM_DEV_REMOVE_CMD);
pub const DM_DEV_SUSPEND: u64 = dm_iowr(DM_DEV_SUSPEND_CMD);
pub const DM_TABLE_LOAD: u64 = dm_iowr(DM_TABLE_LOAD_CMD);

/// In: the table (and so the device) is read-only.
const DM_READONLY_FLAG: u32 = 1 << 0;

/// The `/dev/mapper/control` misc device number, for when devtmpfs has not made the node.
const CONTROL_MAJOR: u32 = 10;
const CONTROL_MINOR: u32 = 236;

/// A dm-verity target, as [`kiln_image::verity::dm_target`] makes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerityTarget {
    /// Length in 512-byte sectors.
    pub sectors: u64,
    /// The parameter string (everything after the target type).
    pub params: String,
}

/// An ioctl buffer: the header, then data, 8-byte aligned as the kernel expects.
struct Buffer {
    words: Vec<u64>,
}

impl Buffer {
    fn new(name: &str, flags: u32, payload: &[u8]) -> Result<Buffer> {
        let header_len = std::mem::size_of::<DmIoctl>();
        let total = (header_len + payload.len()).div_ceil(8) * 8;
        if name.is_empty() || name.len() >= DM_NAME_LEN || name.contains('/') {
            bail!("device-mapper name {name:?} must be 1 to 127 bytes without '/'");
        }
        // SAFETY: DmIoctl is plain integers and byte arrays; all zeros is a valid value.
        let mut header: DmIoctl = unsafe { std::mem::zeroed() };
        header.version = [4, 0, 0];
        header.data_size = total as u32;
        header.data_start = header_len as u32;
        header.flags = flags;
        header.name[..name.len()].copy_from_slice(name.as_bytes());
        let mut bytes = vec![0u8; total];
        // SAFETY: reading the bytes of a repr(C) plain-data struct.
        let raw = unsafe {
            std::slice::from_raw_parts(&header as *const DmIoctl as *const u8, header_len)
        };
        bytes[..header_len].copy_from_slice(raw);
        bytes[header_len..header_len + payload.len()].copy_from_slice(payload);
        let words = bytes
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        Ok(Buffer { words })
    }

    fn header(&self) -> DmIoctl {
        // SAFETY: the buffer starts with a DmIoctl and is at least that long and aligned.
        unsafe { std::ptr::read(self.words.as_ptr() as *const DmIoctl) }
    }
}

/// The payload of DM_TABLE_LOAD for one target.
fn table_payload(start: u64, length: u64, target_type: &str, params: &str) -> Vec<u8> {
    let spec_len = std::mem::size_of::<DmTargetSpec>();
    // The parameter string is NUL-terminated and the next spec (none here) 8-byte aligned.
    let next = (spec_len + params.len() + 1).div_ceil(8) * 8;
    // SAFETY: plain data; zeros are valid.
    let mut spec: DmTargetSpec = unsafe { std::mem::zeroed() };
    spec.sector_start = start;
    spec.length = length;
    spec.next = next as u32;
    let t = target_type.as_bytes();
    spec.target_type[..t.len().min(DM_MAX_TYPE_NAME - 1)]
        .copy_from_slice(&t[..t.len().min(DM_MAX_TYPE_NAME - 1)]);
    let mut out = vec![0u8; next];
    // SAFETY: reading the bytes of a repr(C) plain-data struct.
    let raw =
        unsafe { std::slice::from_raw_parts(&spec as *const DmTargetSpec as *const u8, spec_len) };
    out[..spec_len].copy_from_slice(raw);
    out[spec_len..spec_len + params.len()].copy_from_slice(params.as_bytes());
    out
}

/// Open `/dev/mapper/control`, making the node when devtmpfs has not.
fn control() -> Result<File> {
    let path = Path::new("/dev/mapper/control");
    if !path.exists() {
        std::fs::create_dir_all("/dev/mapper").context("creating /dev/mapper")?;
        sys::mknod(path, false, CONTROL_MAJOR, CONTROL_MINOR, 0o600)
            .context("creating /dev/mapper/control")?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .context("opening /dev/mapper/control (is dm_mod loaded?)")
}

fn run(ctl: &File, request: u64, buf: &mut Buffer) -> io::Result<DmIoctl> {
    // SAFETY: the buffer is a dm_ioctl header followed by data_size - header bytes, as every
    // DM ioctl takes; the kernel writes back at most data_size bytes.
    unsafe {
        sys::ioctl_ptr(
            ctl.as_raw_fd(),
            request as libc::c_ulong,
            buf.words.as_mut_ptr(),
        )?
    };
    Ok(buf.header())
}

/// Creates the read-only dm-verity device `name` and returns its (major, minor). On failure
/// the half-made device is removed, so a retry from the emergency shell starts clean.
pub fn create_verity(name: &str, target: &VerityTarget) -> Result<(u32, u32)> {
    let ctl = control()?;
    let mut create = Buffer::new(name, 0, &[])?;
    let created =
        run(&ctl, DM_DEV_CREATE, &mut create).with_context(|| format!("DM_DEV_CREATE {name}"))?;
    let dev = created.dev as libc::dev_t;
    let result = load_and_resume(&ctl, name, target);
    if result.is_err() {
        if let Ok(mut remove) = Buffer::new(name, 0, &[]) {
            let _ = run(&ctl, DM_DEV_REMOVE, &mut remove);
        }
    }
    result?;
    Ok((libc::major(dev), libc::minor(dev)))
}

fn load_and_resume(ctl: &File, name: &str, target: &VerityTarget) -> Result<()> {
    let params = &target.params;
    let payload = table_payload(0, target.sectors, "verity", params);
    let mut load = Buffer::new(name, DM_READONLY_FLAG, &payload)?;
    // target_count sits at byte 12 of the header.
    let mut header = load.header();
    header.target_count = 1;
    // SAFETY: writing a DmIoctl back over the buffer's header, same size and alignment.
    unsafe { std::ptr::write(load.words.as_mut_ptr() as *mut DmIoctl, header) };
    run(ctl, DM_TABLE_LOAD, &mut load)
        .with_context(|| format!("DM_TABLE_LOAD {name}: verity {params}"))?;
    // DM_DEV_SUSPEND without the suspend flag resumes, making the loaded table live.
    let mut resume = Buffer::new(name, 0, &[])?;
    run(ctl, DM_DEV_SUSPEND, &mut resume).with_context(|| format!("resuming {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_and_ioctl_numbers_match_the_uapi_header() {
        // sizeof(struct dm_ioctl) = 312 and sizeof(struct dm_target_spec) = 40 on every ABI.
        assert_eq!(std::mem::size_of::<DmIoctl>(), 312);
        assert_eq!(std::mem::size_of::<DmTargetSpec>(), 40);
        assert_eq!(std::mem::offset_of!(DmIoctl, dev), 40);
        assert_eq!(std::mem::offset_of!(DmIoctl, name), 48);
        assert_eq!(std::mem::offset_of!(DmIoctl, uuid), 176);
        // _IOWR(0xfd, n, struct dm_ioctl) as the kernel computes them.
        assert_eq!(DM_DEV_CREATE, 0xC138_FD03);
        assert_eq!(DM_DEV_REMOVE, 0xC138_FD04);
        assert_eq!(DM_DEV_SUSPEND, 0xC138_FD06);
        assert_eq!(DM_TABLE_LOAD, 0xC138_FD09);
    }

    fn target() -> VerityTarget {
        let (sectors, params) = kiln_image::verity::dm_target(
            "254:2",
            "254:2",
            25600,
            25600 * 4096,
            &"ab".repeat(32),
            &[0xcd; 32],
        );
        VerityTarget { sectors, params }
    }

    #[test]
    fn verity_line_matches_the_image_builders_table() {
        let t = target();
        assert_eq!(
            t.params,
            format!(
                "1 254:2 254:2 4096 4096 25600 25601 sha256 {} {}",
                "ab".repeat(32),
                "cd".repeat(32)
            )
        );
        // The host side computes the same table for `dmsetup create`; the two must agree.
        let info = kiln_image::verity::VerityInfo {
            root_hash: [0xab; 32],
            data_blocks: 25600,
            hash_offset: 25600 * 4096,
            hash_bytes: 0,
            salt: vec![0xcd; 32],
            uuid: [0; 16],
        };
        assert_eq!(
            info.dm_table("254:2", "254:2"),
            format!("0 {} verity {}", t.sectors, t.params)
        );
    }

    #[test]
    fn table_load_buffer_layout() {
        let t = target();
        let payload = table_payload(0, t.sectors, "verity", &t.params);
        let buf = Buffer::new("usr", DM_READONLY_FLAG, &payload).unwrap();
        let h = buf.header();
        assert_eq!(h.version, [4, 0, 0]);
        assert_eq!(h.data_start, 312);
        assert_eq!(h.data_size as usize, buf.words.len() * 8);
        assert_eq!(h.data_size % 8, 0);
        assert_eq!(&h.name[..4], b"usr\0");
        let bytes: Vec<u8> = buf.words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let spec = &bytes[312..];
        assert_eq!(
            u64::from_ne_bytes(spec[8..16].try_into().unwrap()),
            25600 * 8
        );
        let next = u32::from_ne_bytes(spec[20..24].try_into().unwrap()) as usize;
        assert_eq!(next % 8, 0);
        assert_eq!(&spec[24..31], b"verity\0");
        let params_end = 40 + t.params.len();
        assert_eq!(&spec[40..params_end], t.params.as_bytes());
        assert_eq!(spec[params_end], 0, "parameters are NUL-terminated");
        assert!(Buffer::new("a/b", 0, &[]).is_err());
    }
}
