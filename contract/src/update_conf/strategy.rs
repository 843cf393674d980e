//! The reboot strategies and every name they are written with: Kiln's, CoreOS's (`reboot`,
//! `best-effort`) and FleetLock's as Zincati and the agent's first versions wrote it.

/// How the agent reboots into a new version once it is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootStrategy {
    /// Reboot as soon as the update is installed (inside the window, if one is set).
    Immediate,
    /// Never reboot: stop at reboot-needed and let an operator decide.
    Off,
    /// Take a semaphore key in etcd first; release it once the rebooted machine is healthy.
    EtcdLock,
    /// Ask a FleetLock server first (`/v1/pre-reboot`), release with `/v1/steady-state`.
    FleetLock,
}

/// What a strategy's name stands for.
#[derive(Clone, Copy)]
enum Spelling {
    Is(RebootStrategy),
    /// An older name, read with a note.
    Old(RebootStrategy),
    /// CoreOS's `best-effort`: etcd-lock where etcd runs on the machine, else immediate.
    BestEffort,
}

/// Every name of a strategy: Kiln's, CoreOS's (`reboot`, `best-effort`), and FleetLock's as
/// Zincati and the agent's first versions wrote it.
const STRATEGY_NAMES: [(&str, Spelling); 8] = [
    ("immediate", Spelling::Is(RebootStrategy::Immediate)),
    ("off", Spelling::Is(RebootStrategy::Off)),
    ("etcd-lock", Spelling::Is(RebootStrategy::EtcdLock)),
    ("fleetlock", Spelling::Is(RebootStrategy::FleetLock)),
    ("fleet-lock", Spelling::Is(RebootStrategy::FleetLock)),
    ("fleet_lock", Spelling::Is(RebootStrategy::FleetLock)),
    ("reboot", Spelling::Old(RebootStrategy::Immediate)),
    ("best-effort", Spelling::BestEffort),
];

impl RebootStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            RebootStrategy::Immediate => "immediate",
            RebootStrategy::Off => "off",
            RebootStrategy::EtcdLock => "etcd-lock",
            RebootStrategy::FleetLock => "fleetlock",
        }
    }

    /// The key the strategy cannot work without (it has no default).
    pub fn required_key(self) -> Option<&'static str> {
        match self {
            RebootStrategy::FleetLock => Some("fleetlock_url"),
            _ => None,
        }
    }

    /// Reads a strategy's name, with a note when the name is an old one. `etcd_here` says whether
    /// etcd runs on this machine, which decides `best-effort`; `None` where that is not known
    /// (the agent's own files), which refuses `best-effort` with what to write instead.
    pub fn read(
        text: &str,
        etcd_here: Option<bool>,
    ) -> Result<(RebootStrategy, Option<String>), String> {
        let spelling = STRATEGY_NAMES
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, s)| *s)
            .ok_or_else(|| {
                format!(
                    "unknown reboot strategy {text:?}; use immediate, etcd-lock, fleetlock or off"
                )
            })?;
        Ok(match (spelling, etcd_here) {
            (Spelling::Is(s), _) => (s, None),
            (Spelling::Old(s), _) => (
                s,
                Some(format!(
                    "`{text}` is the old name of `{}`; using `{}`",
                    s.as_str(),
                    s.as_str()
                )),
            ),
            (Spelling::BestEffort, Some(etcd)) => {
                let s = if etcd {
                    RebootStrategy::EtcdLock
                } else {
                    RebootStrategy::Immediate
                };
                let why = if etcd { "" } else { "not " };
                let note = format!(
                    "`best-effort` is an old CoreOS strategy; using `{}` because etcd is {why}configured",
                    s.as_str()
                );
                (s, Some(note))
            }
            (Spelling::BestEffort, None) => {
                return Err(
                    "`best-effort` is decided from the cloud-config's etcd section; \
                    write etcd-lock or immediate here"
                        .to_owned(),
                )
            }
        })
    }
}
