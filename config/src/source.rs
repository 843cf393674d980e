//! Where the init finds the document: QEMU's fw_cfg and the kernel command line. (The OEM
//! partition is read by the init itself, through the kernel's vfat.)

use std::path::Path;

/// The fw_cfg item `cargo xtask qemu` passes with `-fw_cfg name=opt/org.kiln/config,file=…`.
pub const FW_CFG_ITEM: &str = "opt/org.kiln/config";
/// The kernel command-line parameter naming a URL to fetch the document from.
pub const URL_PARAM: &str = "kiln.config.url";

/// The document from QEMU's fw_cfg, given the sysfs mount point (`/sys`). `None` when the
/// item is absent (not QEMU, `qemu_fw_cfg` not loaded, no config passed) or empty.
pub fn read_fw_cfg(sysfs: &Path) -> Option<Vec<u8>> {
    let raw = sysfs
        .join("firmware/qemu_fw_cfg/by_name")
        .join(FW_CFG_ITEM)
        .join("raw");
    std::fs::read(raw).ok().filter(|b| !b.is_empty())
}

/// The value of `kiln.config.url=` on a kernel command line (the last one wins, as for the
/// kernel's own parameters). Double quotes group a value with spaces, as the kernel allows.
pub fn config_url(cmdline: &str) -> Option<String> {
    let mut found = None;
    for param in kiln_contract::boot::split_kernel_cmdline(cmdline) {
        if let Some(value) = param
            .strip_prefix(URL_PARAM)
            .and_then(|r| r.strip_prefix('='))
        {
            found = Some(value.to_string());
        }
    }
    found.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_from_cmdline() {
        let c = "BOOT_IMAGE=/k root=x kiln.config.url=http://10.0.2.2:8080/c.yml quiet\n";
        assert_eq!(config_url(c).as_deref(), Some("http://10.0.2.2:8080/c.yml"));
        assert_eq!(
            config_url("a kiln.config.url=one kiln.config.url=two").as_deref(),
            Some("two")
        );
        assert_eq!(
            config_url("\"kiln.config.url=http://h/a b\" x").as_deref(),
            Some("http://h/a b")
        );
        assert_eq!(config_url("kiln.config.url= quiet"), None);
        assert_eq!(config_url("kiln.config.urlx=http://h/"), None);
        assert_eq!(config_url("quiet"), None);
    }

    #[test]
    fn fw_cfg_item() {
        let dir = std::env::temp_dir().join(format!("kiln-config-fwcfg-{}", std::process::id()));
        let item = dir.join("firmware/qemu_fw_cfg/by_name/opt/org.kiln/config");
        std::fs::create_dir_all(&item).unwrap();
        assert_eq!(read_fw_cfg(&dir), None);
        std::fs::write(item.join("raw"), b"#cloud-config\n").unwrap();
        assert_eq!(read_fw_cfg(&dir).as_deref(), Some(&b"#cloud-config\n"[..]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
