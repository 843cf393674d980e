//! Thin wrappers over the system calls the init needs that std does not offer (mount, mknod,
//! finit_module, ioctl, chroot, ...), each turning `-1` into an `io::Error` that carries errno.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `mount(2)`; `fstype` and `data` may be empty.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let source = CString::new(source)?;
    let target = cstr(target)?;
    let fstype = CString::new(fstype)?;
    let data = CString::new(data)?;
    let fstype_ptr = if fstype.as_bytes().is_empty() {
        std::ptr::null()
    } else {
        fstype.as_ptr()
    };
    let data_ptr = if data.as_bytes().is_empty() {
        std::ptr::null()
    } else {
        data.as_ptr() as *const libc::c_void
    };
    // SAFETY: every pointer is a valid NUL-terminated string or null, as mount(2) accepts.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype_ptr,
            flags,
            data_ptr,
        )
    })?;
    Ok(())
}

/// Moves the mount at `from` to `to` (`mount --move`).
pub fn move_mount(from: &Path, to: &Path) -> io::Result<()> {
    let from = cstr(from)?;
    let to = cstr(to)?;
    // SAFETY: valid strings; MS_MOVE ignores the type and data arguments.
    check(unsafe {
        libc::mount(
            from.as_ptr(),
            to.as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        )
    })?;
    Ok(())
}

/// Creates a block (`block == true`) or character device node.
pub fn mknod(path: &Path, block: bool, major: u32, minor: u32, mode: u32) -> io::Result<()> {
    let p = cstr(path)?;
    let kind = if block { libc::S_IFBLK } else { libc::S_IFCHR };
    // SAFETY: valid string; makedev has no preconditions.
    check(unsafe { libc::mknod(p.as_ptr(), kind | mode, libc::makedev(major, minor)) })?;
    Ok(())
}

/// Loads a kernel module from an open file (`finit_module(2)`, no parameters, no flags).
pub fn finit_module(file: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let params = c"";
    // SAFETY: a valid fd and an empty parameter string.
    let ret =
        unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `ioctl(fd, request, arg)` with a pointer argument.
///
/// # Safety
/// `arg` must point to memory of the size and layout `request` expects, valid for the kernel
/// to read and write.
pub unsafe fn ioctl_ptr<T>(fd: libc::c_int, request: libc::c_ulong, arg: *mut T) -> io::Result<()> {
    check(libc::ioctl(fd, request as _, arg))?;
    Ok(())
}

pub fn chroot(path: &Path) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: valid string.
    check(unsafe { libc::chroot(p.as_ptr()) })?;
    Ok(())
}

/// Changes the owner of a path without following a final symlink.
pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: valid string.
    check(unsafe { libc::lchown(p.as_ptr(), uid, gid) })?;
    Ok(())
}

/// Sets the process umask (the init wants exact modes on what it creates).
pub fn umask(mask: u32) {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) };
}

/// The kernel release (`uname -r`), which names the modules directory.
pub fn kernel_release() -> io::Result<String> {
    // SAFETY: utsname is plain data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    check(unsafe { libc::uname(&mut uts) })?;
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Makes `fd` the process's stdin, stdout and stderr.
pub fn dup_to_stdio(fd: libc::c_int) -> io::Result<()> {
    for target in 0..3 {
        if fd != target {
            // SAFETY: dup2 on descriptors we own.
            check(unsafe { libc::dup2(fd, target) })?;
        }
    }
    Ok(())
}

/// Restarts the machine at once: call [`sync`] first. Returns only on failure.
pub fn reboot() -> io::Error {
    // SAFETY: reboot(2) with a valid command; as PID 1 we may call it.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    io::Error::last_os_error()
}

/// Flushes filesystem buffers (before a partition table change the kernel must see).
pub fn sync() {
    // SAFETY: sync cannot fail.
    unsafe { libc::sync() };
}
