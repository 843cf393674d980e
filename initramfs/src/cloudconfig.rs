//! The first-boot user-data: taken from the first source that has one (QEMU's fw_cfg item
//! `opt/org.kiln/config`, then `cloud-config.yml` on the OEM partition), and applied to ROOT
//! before systemd starts (a cloud-config; a script is kept for kiln-user-data.service). A bad document never stops the boot: what went wrong goes to the
//! console and to the report file, and the machine comes up for an operator to log in.
//! (`kiln.config.url=` needs the network, so it is left to the booted system.)

use std::path::Path;

use kiln_config::ApplyOptions;
use kiln_image::fat;

use crate::disk::BootDisk;
use crate::log;

/// The OEM partition's name and the file on it.
const OEM_PARTITION: &str = kiln_contract::disk::OEM;
const OEM_FILE: &str = kiln_contract::disk::OEM_CLOUD_CONFIG;
/// Development keys on the OEM partition, and where sshd finds them.
const DEBUG_KEYS_FILE: &str = "/debug-ssh-keys";
const DEBUG_KEYS_DEST: &str = kiln_contract::paths::DEBUG_SSH_KEYS;

/// Finds, parses and applies the document; every outcome is said on the console.
pub fn apply_first_boot(sysroot: &Path, disk: &BootDisk) {
    let Some((source, bytes)) = find(disk) else {
        log::say(
            "cloud-config: none given (no fw_cfg opt/org.kiln/config, no cloud-config.yml on OEM)",
        );
        return;
    };
    log::say(&format!("cloud-config: applying the one from {source}"));
    // Runtime units go to the initramfs's /run, which becomes the system's /run at switch_root.
    let opts = ApplyOptions {
        run_dir: Some("/run".into()),
        ..Default::default()
    };
    match kiln_config::apply_user_data(&bytes, &source, sysroot, &opts) {
        Ok(done) => {
            for line in &done.console {
                log::say(line);
            }
        }
        Err(e) => {
            let text = kiln_config::rejected_report(&source, &e.to_string());
            log::say(text.lines().last().unwrap_or_default());
            record(sysroot, &text);
        }
    }
}

/// The first source that holds a document, and its name for messages.
fn find(disk: &BootDisk) -> Option<(String, Vec<u8>)> {
    if let Some(bytes) = kiln_config::read_fw_cfg(Path::new("/sys")) {
        return Some((format!("fw_cfg {}", kiln_config::FW_CFG_ITEM), bytes));
    }
    match read_oem(disk) {
        Ok(Some(bytes)) => Some((format!("the {OEM_PARTITION} partition's {OEM_FILE}"), bytes)),
        Ok(None) => None,
        Err(e) => {
            log::say(&format!(
                "cloud-config: cannot read the {OEM_PARTITION} partition: {e}"
            ));
            None
        }
    }
}

/// Puts the OEM partition's `debug-ssh-keys` (from `build-image --debug-ssh-key`) where sshd
/// looks for `core`'s keys besides `~/.ssh` (see `sshd_config.d/kiln.conf`), or removes a copy
/// whose source is gone. Every boot: a machine whose cloud-config failed stays reachable.
pub fn install_debug_keys(sysroot: &Path, disk: &BootDisk) {
    let dest = sysroot.join(DEBUG_KEYS_DEST.trim_start_matches('/'));
    match read_oem_file(disk, DEBUG_KEYS_FILE) {
        Ok(Some(keys)) => {
            let written = dest
                .parent()
                .map(std::fs::create_dir_all)
                .unwrap_or(Ok(()))
                .and_then(|()| std::fs::write(&dest, &keys));
            match written {
                Ok(()) => log::say(&format!(
                    "debug ssh keys from the {OEM_PARTITION} partition are installed for core: this machine is for development"
                )),
                Err(e) => log::say(&format!("cannot write {}: {e}", dest.display())),
            }
        }
        Ok(None) => {
            let _ = std::fs::remove_file(&dest);
        }
        Err(e) => log::say(&format!("cannot read the {OEM_PARTITION} partition: {e}")),
    }
}

fn read_oem(disk: &BootDisk) -> Result<Option<Vec<u8>>, String> {
    read_oem_file(disk, OEM_FILE)
}

/// Reads a file from the OEM partition's FAT directly (no vfat module, no mount).
fn read_oem_file(disk: &BootDisk, file: &str) -> Result<Option<Vec<u8>>, String> {
    let Some(mut region) = disk
        .partition(OEM_PARTITION)
        .map_err(|e| format!("{e:#}"))?
    else {
        return Ok(None);
    };
    match fat::read_file(&mut region, file) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(fat::FatError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes why the document was not applied where the applied report would have been, so the
/// booted system (and an operator) can find it.
fn record(sysroot: &Path, text: &str) {
    let path = sysroot.join(kiln_config::REPORT_FILE.trim_start_matches('/'));
    let result = path
        .parent()
        .map(std::fs::create_dir_all)
        .unwrap_or(Ok(()))
        .and_then(|()| std::fs::write(&path, text));
    if let Err(e) = result {
        log::say(&format!(
            "cloud-config: cannot write {}: {e}",
            path.display()
        ));
    }
}
