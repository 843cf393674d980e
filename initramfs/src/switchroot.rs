//! Handing the machine to the real system: move the API filesystems into the new root, free
//! the initramfs's memory by deleting its files, make the new root `/`, and exec its init.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::log;
use crate::sys;

/// The API filesystems mounted by the init, moved (not remounted) into the new root.
const MOVED_MOUNTS: &[&str] = &["/proc", "/sys", "/dev", "/run"];

/// Switches to `new_root` and execs `init` there. Checks what can be checked before the
/// point of no return (deleting the initramfs also deletes the emergency shell).
pub fn switch_root(new_root: &Path, init: &str) -> Result<Infallible> {
    let init_in_root = new_root.join(init.trim_start_matches('/'));
    if init_in_root.symlink_metadata().is_err() {
        bail!("{init} does not exist in the new root (is /usr mounted and complete?)");
    }
    for m in MOVED_MOUNTS {
        let target = new_root.join(m.trim_start_matches('/'));
        fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
        sys::move_mount(Path::new(m), &target)
            .with_context(|| format!("moving {m} to {}", target.display()))?;
    }
    std::env::set_current_dir(new_root)
        .with_context(|| format!("changing directory to {}", new_root.display()))?;
    let root_dev = fs::symlink_metadata("/").context("stat /")?.dev();
    delete_tree(Path::new("/"), root_dev);
    sys::move_mount(Path::new("."), Path::new("/"))
        .with_context(|| format!("moving {} to /", new_root.display()))?;
    sys::chroot(Path::new(".")).context("chroot into the new root")?;
    std::env::set_current_dir("/").context("changing directory to the new /")?;
    log::debug(&format!("executing {init}"));
    exec(init)
}

/// Deletes everything below `dir` on the filesystem `dev` (the initramfs), not descending into
/// other mounts (the new root is one). Failures are ignored: the files only cost memory.
fn delete_tree(dir: &Path, dev: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            delete_tree(&path, dev);
            let _ = fs::remove_dir(&path);
        } else {
            let _ = fs::remove_file(&path);
        }
    }
}

fn exec(program: &str) -> Result<Infallible> {
    let prog = CString::new(program).context("init= contains a NUL byte")?;
    let argv = [prog.as_ptr(), std::ptr::null()];
    // SAFETY: a NUL-terminated path and a NULL-terminated argv of valid strings.
    unsafe { libc::execv(prog.as_ptr(), argv.as_ptr()) };
    Err(std::io::Error::last_os_error()).with_context(|| format!("executing {program}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_tree_removes_files_links_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        fs::create_dir_all(root.join("lib/modules/x")).unwrap();
        fs::write(root.join("lib/modules/x/a.ko"), "x").unwrap();
        std::os::unix::fs::symlink("/nonexistent", root.join("link")).unwrap();
        let dev = fs::metadata(&root).unwrap().dev();
        delete_tree(&root, dev);
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
        // A different device number (another mount) is left alone.
        fs::write(root.join("keep"), "x").unwrap();
        delete_tree(&root, dev + 1);
        assert!(root.join("keep").exists());
    }

    #[test]
    fn a_missing_init_is_refused_before_anything_changes() {
        let dir = tempfile::tempdir().unwrap();
        let err = switch_root(dir.path(), "/usr/lib/systemd/systemd").unwrap_err();
        assert!(
            err.to_string()
                .contains("/usr/lib/systemd/systemd does not exist"),
            "{err}"
        );
    }
}
