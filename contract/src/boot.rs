//! Slots and boot entries: the A/B names shared by the build, the init and the update agent, and
//! the Boot Loader Specification entries systemd-boot reads, with automatic boot assessment
//! (boot counting) in their file names.
//!
//! Used on the device too: pure text, no I/O.

use std::fmt;
use std::str::FromStr;

/// One of the two `/usr` slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    /// The GPT partition name of the slot's `/usr`.
    pub fn partition_name(self) -> &'static str {
        match self {
            Slot::A => crate::disk::USR_A,
            Slot::B => crate::disk::USR_B,
        }
    }

    /// The lower-case letter used on the kernel command line (`kiln.slot=a`) and in file names.
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The ESP directory holding the slot's kernel and initramfs.
    pub fn esp_dir(self) -> String {
        format!("/kiln/{}", self.letter())
    }

    /// The boot entry id (the file name without counter and `.conf`).
    pub fn entry_id(self) -> String {
        format!("kiln-{}", self.letter())
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.letter())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootError {
    #[error("unknown slot {0:?}: expected a or b")]
    UnknownSlot(String),
    #[error("boot entry file name {0:?} is not kiln-<slot>[+LEFT[-DONE]].conf")]
    BadEntryName(String),
    #[error("boot entry {name}: {problem}")]
    BadEntry { name: String, problem: String },
}

impl FromStr for Slot {
    type Err = BootError;
    fn from_str(s: &str) -> Result<Slot, BootError> {
        match s {
            "a" | "A" => Ok(Slot::A),
            "b" | "B" => Ok(Slot::B),
            other => Err(BootError::UnknownSlot(other.to_owned())),
        }
    }
}

/// Boot counting state, as systemd-boot keeps it in the entry's file name:
/// `kiln-b+3.conf` (3 tries left), `kiln-b+2-1.conf` (2 left, 1 done), `kiln-b.conf` (blessed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// No counter: the entry is known good.
    Blessed,
    Counting {
        left: u32,
        done: u32,
    },
}

/// A Boot Loader Specification type #1 entry for one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootEntry {
    pub slot: Slot,
    pub version: String,
    pub title: String,
    /// Kernel and initramfs paths on the ESP.
    pub linux: String,
    pub initrd: String,
    /// The whole kernel command line.
    pub options: String,
    pub counter: Counter,
}

/// Entries of Kiln share one sort key, so systemd-boot orders them by version, newest first
/// (an entry with no tries left sorts last, which is how a failed update falls back).
pub const SORT_KEY: &str = "kiln";

impl BootEntry {
    /// The entry for a slot with its kernel command line: Kiln's own arguments first.
    pub fn new(
        slot: Slot,
        version: &str,
        usr_hash_hex: &str,
        extra_cmdline: &str,
        counter: Counter,
    ) -> BootEntry {
        BootEntry {
            slot,
            version: version.to_owned(),
            title: format!("Kiln {version} ({})", slot.partition_name()),
            linux: format!("{}/vmlinuz", slot.esp_dir()),
            initrd: format!("{}/initrd", slot.esp_dir()),
            options: format!(
                "kiln.slot={} kiln.usrhash={usr_hash_hex} {}",
                slot.letter(),
                extra_cmdline.trim()
            ),
            counter,
        }
    }

    /// The file name under `/loader/entries/`.
    pub fn file_name(&self) -> String {
        let id = self.slot.entry_id();
        match self.counter {
            Counter::Blessed => format!("{id}.conf"),
            Counter::Counting { left, done: 0 } => format!("{id}+{left}.conf"),
            Counter::Counting { left, done } => format!("{id}+{left}-{done}.conf"),
        }
    }

    /// The entry file's text.
    pub fn render(&self) -> String {
        format!(
            "title {}\nversion {}\nsort-key {SORT_KEY}\nlinux {}\ninitrd {}\noptions {}\n",
            self.title, self.version, self.linux, self.initrd, self.options
        )
    }

    /// Reads an entry back from its file name and text.
    pub fn parse(file_name: &str, text: &str) -> Result<BootEntry, BootError> {
        let (slot, counter) = parse_entry_name(file_name)?;
        let bad = |problem: &str| BootError::BadEntry {
            name: file_name.to_owned(),
            problem: problem.to_owned(),
        };
        let mut fields = std::collections::HashMap::new();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            fields.insert(key, value.trim().to_owned());
        }
        let mut take = |key: &str| {
            fields
                .remove(key)
                .ok_or_else(|| bad(&format!("has no `{key}` line")))
        };
        Ok(BootEntry {
            slot,
            version: take("version")?,
            title: take("title")?,
            linux: take("linux")?,
            initrd: take("initrd")?,
            options: take("options")?,
            counter,
        })
    }
}

/// Splits `kiln-b+2-1.conf` into its slot and counter.
pub fn parse_entry_name(file_name: &str) -> Result<(Slot, Counter), BootError> {
    let bad = || BootError::BadEntryName(file_name.to_owned());
    let stem = file_name
        .strip_prefix("kiln-")
        .and_then(|s| s.strip_suffix(".conf"))
        .ok_or_else(bad)?;
    let (slot, counter) = match stem.split_once('+') {
        None => (stem, Counter::Blessed),
        Some((slot, count)) => {
            let (left, done) = count.split_once('-').unwrap_or((count, "0"));
            let left = left.parse().map_err(|_| bad())?;
            let done = done.parse().map_err(|_| bad())?;
            (slot, Counter::Counting { left, done })
        }
    };
    Ok((slot.parse().map_err(|_| bad())?, counter))
}

/// Splits a kernel command line into parameters the way the kernel's `next_arg` does:
/// whitespace separates, double quotes group (`key="a b"`) and are removed.
pub fn split_kernel_cmdline(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut has_word = false;
    for ch in text.chars() {
        match ch {
            '"' => {
                in_quotes = !in_quotes;
                has_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_word {
                    words.push(std::mem::take(&mut current));
                    has_word = false;
                }
            }
            c => {
                current.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        words.push(current);
    }
    words
}

/// `/loader/loader.conf`: no `default` line, so the entries' versions decide; the menu shows for
/// `timeout_seconds` (0: hidden, unless a key is held while systemd-boot starts).
pub fn loader_conf(timeout_seconds: u32) -> String {
    format!("timeout {timeout_seconds}\nconsole-mode keep\neditor no\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_follow_boot_counting() {
        let mut e = BootEntry::new(
            Slot::B,
            "2.0.0",
            "ab12",
            "console=ttyS0",
            Counter::Counting { left: 3, done: 0 },
        );
        assert_eq!(e.file_name(), "kiln-b+3.conf");
        e.counter = Counter::Counting { left: 2, done: 1 };
        assert_eq!(e.file_name(), "kiln-b+2-1.conf");
        e.counter = Counter::Blessed;
        assert_eq!(e.file_name(), "kiln-b.conf");
        for name in [
            "kiln-b+3.conf",
            "kiln-b+2-1.conf",
            "kiln-b+0-3.conf",
            "kiln-a.conf",
        ] {
            let (_, counter) = parse_entry_name(name).unwrap();
            e.counter = counter;
            e.slot = name[5..6].parse().unwrap();
            assert_eq!(e.file_name(), name);
        }
        for bad in ["kiln-c.conf", "kiln-a+x.conf", "other.conf", "kiln-a"] {
            assert!(parse_entry_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn command_lines_split_like_the_kernel() {
        assert_eq!(
            split_kernel_cmdline("a=\"x y\"  b \"\"\n"),
            ["a=x y", "b", ""]
        );
        assert!(split_kernel_cmdline("   ").is_empty());
    }

    #[test]
    fn entries_round_trip_and_carry_the_slot_and_hash() {
        let e = BootEntry::new(
            Slot::A,
            "1.0.0",
            "00ff",
            "console=ttyS0,115200n8 rw",
            Counter::Blessed,
        );
        let text = e.render();
        assert!(
            text.contains("options kiln.slot=a kiln.usrhash=00ff console=ttyS0,115200n8 rw\n"),
            "{text}"
        );
        assert!(text.contains("linux /kiln/a/vmlinuz\n"));
        assert_eq!(BootEntry::parse(&e.file_name(), &text).unwrap(), e);
        let err = BootEntry::parse("kiln-a.conf", "title x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("version"), "{err}");
    }
}
