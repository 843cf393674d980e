//! The kernel command line: which `/usr` slot to boot, the root hash it must match, and the
//! switches that change what the init does (`kiln.debug`, `kiln.emergency`, `init=`).

pub use kiln_contract::boot::Slot;

/// What the init takes from `/proc/cmdline`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// `kiln.slot=a|b`.
    pub slot: Option<Slot>,
    /// `kiln.usrhash=<64 hex digits>`: the dm-verity root hash of the slot's `/usr`, lower case.
    pub usrhash: Option<String>,
    /// `kiln.debug`: say every step.
    pub debug: bool,
    /// `kiln.emergency`: go straight to the emergency shell.
    pub emergency: bool,
    /// `init=`: what to exec after switch_root instead of systemd.
    pub init: Option<String>,
    /// Problems found while parsing (bad values), reported when the value is needed.
    pub problems: Vec<String>,
}

/// The program exec'd after switch_root when the command line names none.
pub const DEFAULT_INIT: &str = "/usr/lib/systemd/systemd";

impl Cmdline {
    pub fn parse(text: &str) -> Cmdline {
        let mut c = Cmdline::default();
        for word in kiln_contract::boot::split_kernel_cmdline(text) {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word.as_str(), None),
            };
            match (key, value) {
                ("kiln.slot", Some(v)) => match v.to_ascii_lowercase().as_str() {
                    "a" => c.slot = Some(Slot::A),
                    "b" => c.slot = Some(Slot::B),
                    _ => c.problems.push(format!("kiln.slot={v}: expected a or b")),
                },
                ("kiln.usrhash", Some(v)) => {
                    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
                        c.usrhash = Some(v.to_ascii_lowercase());
                    } else {
                        c.problems.push(format!(
                            "kiln.usrhash={v}: expected 64 hex digits (a SHA-256 root hash)"
                        ));
                    }
                }
                ("kiln.debug", None) => c.debug = true,
                ("kiln.debug", Some(v)) => c.debug = v != "0",
                ("kiln.emergency", None) => c.emergency = true,
                ("kiln.emergency", Some(v)) => c.emergency = v != "0",
                ("init", Some(v)) if !v.is_empty() => c.init = Some(v.to_string()),
                _ => {}
            }
        }
        c
    }

    /// The program to exec as PID 1 of the real system.
    pub fn init_program(&self) -> &str {
        self.init.as_deref().unwrap_or(DEFAULT_INIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "4f1c0a0c9d3e1b7e2f6a5d4c3b2a190817263544536271809a8b7c6d5e4f3a2b";

    #[test]
    fn kiln_parameters_are_read() {
        let c = Cmdline::parse(&format!(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 kiln.slot=B kiln.usrhash={} kiln.debug quiet\n",
            HASH.to_uppercase()
        ));
        assert_eq!(c.slot, Some(Slot::B));
        assert_eq!(c.slot.unwrap().partition_name(), "USR-B");
        assert_eq!(c.usrhash.as_deref(), Some(HASH));
        assert!(c.debug && !c.emergency);
        assert_eq!(c.init_program(), DEFAULT_INIT);
        assert!(c.problems.is_empty());
    }

    #[test]
    fn quotes_init_and_emergency() {
        let c = Cmdline::parse("foo=\"a b\" init=/bin/sh kiln.emergency kiln.debug=0");
        assert!(c.emergency && !c.debug);
        assert_eq!(c.init_program(), "/bin/sh");
    }

    #[test]
    fn bad_values_are_kept_as_problems() {
        let c = Cmdline::parse("kiln.slot=c kiln.usrhash=abc");
        assert_eq!(c.slot, None);
        assert_eq!(c.usrhash, None);
        assert_eq!(c.problems.len(), 2);
        assert!(c.problems[0].contains("kiln.slot=c"));
        assert!(c.problems[1].contains("64 hex digits"));
    }
}
