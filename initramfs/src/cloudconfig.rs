//! The first-boot cloud-config: taken from the first source that has one (QEMU's fw_cfg item
//! `opt/org.kiln/config`, then `cloud-config.yml` on the OEM partition), parsed, and applied to
//! ROOT before systemd starts. A bad document never stops the boot: what went wrong goes to the
//! console and to the report file, and the machine comes up for an operator to log in.
//! (`kiln.config.url=` needs the network, so it is left to the booted system.)

use std::fs::File;
use std::path::Path;

use kiln_config::ApplyOptions;
use kiln_image::fat;
use kiln_image::gpt::Gpt;
use kiln_image::region::Region;

use crate::disk::BootDisk;
use crate::log;

/// The OEM partition's name and the file on it.
const OEM_PARTITION: &str = "OEM";
const OEM_FILE: &str = "/cloud-config.yml";

/// Finds, parses and applies the document; every outcome is said on the console.
pub fn apply_first_boot(sysroot: &Path, disk: &BootDisk) {
    let Some((source, bytes)) = find(disk) else {
        log::say(
            "cloud-config: none given (no fw_cfg opt/org.kiln/config, no cloud-config.yml on OEM)",
        );
        return;
    };
    log::say(&format!("cloud-config: applying the one from {source}"));
    let parsed = match kiln_config::parse_bytes(&bytes) {
        Ok(parsed) => parsed,
        Err(e) => {
            let text = format!("cloud-config from {source} was NOT applied: {e}");
            log::say(&text);
            record(sysroot, &text);
            return;
        }
    };
    for warning in &parsed.warnings {
        log::say(&warning.to_string());
    }
    // Runtime units go to the initramfs's /run, which becomes the system's /run at switch_root.
    let opts = ApplyOptions {
        run_dir: Some("/run".into()),
    };
    match kiln_config::apply(&parsed.config, sysroot, &opts) {
        Ok(report) => {
            for step in &report.steps {
                if let Some(error) = &step.error {
                    log::say(&format!("cloud-config: step {} failed: {error}", step.name));
                }
            }
            log::say(&format!(
                "cloud-config: {} steps, all ok: {}",
                report.steps.len(),
                report.all_ok()
            ));
        }
        Err(e) => {
            let text = format!("cloud-config from {source} was NOT applied: {e}");
            log::say(&text);
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

/// Reads the file from the OEM partition's FAT directly (no vfat module, no mount).
fn read_oem(disk: &BootDisk) -> Result<Option<Vec<u8>>, String> {
    let mut dev = File::open(&disk.disk.node)
        .map_err(|e| format!("opening {}: {e}", disk.disk.node.display()))?;
    let gpt = Gpt::read(&mut dev, disk.disk_bytes).map_err(|e| e.to_string())?;
    let Some((_, part)) = gpt.find_by_name(OEM_PARTITION) else {
        return Ok(None);
    };
    let mut region =
        Region::new(dev, part.start_bytes(), part.size_bytes()).map_err(|e| e.to_string())?;
    match fat::read_file(&mut region, OEM_FILE) {
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
        .and_then(|()| std::fs::write(&path, format!("{text}\n")));
    if let Err(e) = result {
        log::say(&format!(
            "cloud-config: cannot write {}: {e}",
            path.display()
        ));
    }
}
