//! The Kiln disk's partition layout: names, numbers, type GUIDs and sizes, as the build writes it,
//! the init and the update agent find it (by GPT name), and `flash` and the tests read it.
//!
//! Numbers and names are fixed for the life of deployed machines: an update never changes the
//! partition table, so a machine installed from the first image keeps this layout for ever.

pub const MIB: u64 = 1024 * 1024;

/// The EFI system partition: systemd-boot, its entries, each slot's kernel and initramfs.
pub const ESP: &str = "EFI-SYSTEM";
/// `/usr` of slot A and of slot B (`boot::Slot::partition_name`).
pub const USR_A: &str = "USR-A";
pub const USR_B: &str = "USR-B";
/// Provider files: `cloud-config.yml`, read by the init and never written on the machine.
pub const OEM: &str = "OEM";
/// Everything writable: `/etc`, `/var`, `/home`; grown to the disk at first boot.
pub const ROOT: &str = "ROOT";

/// The file on OEM's FAT filesystem that holds the provider's cloud-config.
pub const OEM_CLOUD_CONFIG: &str = "/cloud-config.yml";

pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// The Discoverable Partitions Specification's "/usr partition (x86-64)".
pub const USR_X86_64_TYPE: &str = "8484680C-9521-48C6-9C11-B0720656F69E";
pub const LINUX_DATA_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// "Root partition (x86-64)".
pub const ROOT_X86_64_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// Partition numbers.
pub const ESP_NUMBER: u32 = 1;
pub const USR_A_NUMBER: u32 = 2;
pub const USR_B_NUMBER: u32 = 3;
pub const OEM_NUMBER: u32 = 4;
pub const ROOT_NUMBER: u32 = 5;

/// The smallest size, in MiB, each `partitions.<key>` of `image.toml` may have: the ESP must hold
/// two kernels and initramfs images, `/usr` a whole system, OEM a FAT filesystem mtools and
/// the firmware read, ROOT the first boot's `/etc` and journal before it grows.
pub const MIN_MIB: [(&str, u64); 4] = [("esp", 64), ("usr", 256), ("oem", 33), ("root", 64)];

/// One partition of the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionSpec {
    pub number: u32,
    pub name: &'static str,
    /// The `image.toml` key its size comes from (`partitions.<key>`).
    pub key: &'static str,
    pub type_guid: &'static str,
    pub size_bytes: u64,
}

/// The five partitions, in disk order, sized in MiB.
pub fn layout(esp_mib: u64, usr_mib: u64, oem_mib: u64, root_mib: u64) -> Vec<PartitionSpec> {
    let spec = |number, name, key, type_guid, mib: u64| PartitionSpec {
        number,
        name,
        key,
        type_guid,
        size_bytes: mib * MIB,
    };
    vec![
        spec(ESP_NUMBER, ESP, "esp", ESP_TYPE, esp_mib),
        spec(USR_A_NUMBER, USR_A, "usr", USR_X86_64_TYPE, usr_mib),
        spec(USR_B_NUMBER, USR_B, "usr", USR_X86_64_TYPE, usr_mib),
        spec(OEM_NUMBER, OEM, "oem", LINUX_DATA_TYPE, oem_mib),
        spec(ROOT_NUMBER, ROOT, "root", ROOT_X86_64_TYPE, root_mib),
    ]
}

/// The disk size for a layout: 1 MiB in front (protective MBR, GPT, alignment), the partitions,
/// and 1 MiB behind for the backup GPT.
pub fn disk_bytes(layout: &[PartitionSpec]) -> u64 {
    2 * MIB + layout.iter().map(|p| p.size_bytes).sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_in_number_order_with_one_name_each() {
        let l = layout(64, 256, 33, 64);
        let numbers: Vec<u32> = l.iter().map(|p| p.number).collect();
        assert_eq!(numbers, [1, 2, 3, 4, 5]);
        let mut names: Vec<&str> = l.iter().map(|p| p.name).collect();
        names.dedup();
        assert_eq!(names.len(), 5);
        assert_eq!(disk_bytes(&l), (2 + 64 + 2 * 256 + 33 + 64) * MIB);
        for (key, _) in MIN_MIB {
            assert!(l.iter().any(|p| p.key == key), "{key}");
        }
    }
}
