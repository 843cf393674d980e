//! Whether a failed boot was a slot on trial. A new slot's boot entry counts its tries
//! (`kiln-b+2-1.conf`) until the update agent blesses it (`kiln-b.conf`). When such a boot fails
//! in the initramfs, nobody is at the console to act: the init reboots, so that systemd-boot
//! counts the failed try and, after the last one, starts the other slot. A blessed slot's
//! failure stops in the emergency shell as before, where an operator can look.
//!
//! Read from the ESP's entries, the same files systemd-boot and the agent read, with our own
//! FAT reader: no vfat module, no mount.

use std::path::Path;

use anyhow::{Context, Result};
use kiln_contract::boot::{parse_entry_name, Counter, Slot};

use crate::disk;

const ESP_NAME: &str = kiln_contract::disk::ESP;
const ENTRIES_DIR: &str = "/loader/entries";

/// What the boot entry of the slot that failed says.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// Still counting tries: the file name.
    OnTrial(String),
    /// Blessed, or not found: stop for an operator.
    Settled(String),
}

/// Looks at the ESP of the boot disk for `slot`'s entry. Errors say why it cannot be told (no
/// disk found, no ESP, unreadable): the caller then stops for an operator.
pub fn slot_entry(slot: Slot) -> Result<Entry> {
    let sys_block = Path::new("/sys/class/block");
    let boot = disk::find_boot_disk(sys_block, slot.partition_name())?
        .context("the boot disk was not found")?;
    let mut esp = boot
        .partition(ESP_NAME)?
        .with_context(|| format!("{} has no {ESP_NAME} partition", boot.disk.node.display()))?;
    let names: Vec<String> = kiln_image::fat::list_dir(&mut esp, ENTRIES_DIR)
        .with_context(|| format!("listing {ENTRIES_DIR} on {ESP_NAME}"))?
        .into_iter()
        .filter(|e| !e.is_dir)
        .map(|e| e.name)
        .collect();
    Ok(judge(slot, &names))
}

/// The slot's entry among the ESP's file names: the first by name, as the agent picks it.
///
/// systemd-boot takes a try before the boot (`+1-2` becomes `+0-3`), so the last try runs with
/// none left; a reboot then starts the other slot. Only when that one has no tries left either
/// would rebooting go round for ever (systemd-boot picks among spent entries all the same): then
/// the boot stops for an operator.
fn judge(slot: Slot, names: &[String]) -> Entry {
    let first_of = |want: Slot| {
        let mut of_slot: Vec<(&String, Counter)> = names
            .iter()
            .filter_map(|n| match parse_entry_name(n) {
                Ok((s, counter)) if s == want => Some((n, counter)),
                _ => None,
            })
            .collect();
        of_slot.sort_by(|a, b| a.0.cmp(b.0));
        of_slot.first().map(|(n, c)| ((*n).clone(), *c))
    };
    let other_can_boot = matches!(
        first_of(slot.other()),
        Some((_, Counter::Blessed)) | Some((_, Counter::Counting { left: 1.., .. }))
    );
    match first_of(slot) {
        Some((name, Counter::Counting { left, .. })) if left > 0 || other_can_boot => {
            Entry::OnTrial(name)
        }
        Some((name, Counter::Counting { .. })) => Entry::Settled(format!(
            "{name} has no tries left and slot {} has no bootable entry either",
            slot.other()
        )),
        Some((name, Counter::Blessed)) => Entry::Settled(format!("{name} is blessed")),
        None => Entry::Settled(format!("no boot entry for slot {slot} in {ENTRIES_DIR}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_counting_entry_is_on_trial_a_blessed_one_is_not() {
        let esp = names(&["kiln-a.conf", "kiln-b+2-1.conf", "README"]);
        assert_eq!(
            judge(Slot::B, &esp),
            Entry::OnTrial("kiln-b+2-1.conf".into())
        );
        assert!(matches!(judge(Slot::A, &esp), Entry::Settled(why) if why.contains("blessed")));
        // The last try: a reboot starts the other slot.
        let esp = names(&["kiln-a+0-3.conf", "kiln-b.conf"]);
        assert_eq!(
            judge(Slot::A, &esp),
            Entry::OnTrial("kiln-a+0-3.conf".into())
        );
        // Both spent: rebooting would go round for ever.
        let esp = names(&["kiln-a+0-3.conf", "kiln-b+0-1.conf"]);
        assert!(
            matches!(judge(Slot::A, &esp), Entry::Settled(why) if why.contains("no tries left"))
        );
        assert!(
            matches!(judge(Slot::A, &names(&["kiln-b.conf"])), Entry::Settled(why) if why.contains("no boot entry"))
        );
    }
}
