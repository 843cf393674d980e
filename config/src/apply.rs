//! Applying a cloud-config to a root directory (the machine's ROOT, mounted by the init at
//! `/sysroot` before systemd starts). Each step runs even when an earlier one failed, so a
//! machine with a half-bad document still boots and stays reachable; the report says what
//! happened, for the console and for `/var/lib/kiln/cloud-config.report`.

use crate::accounts::{self, Accounts};
use crate::fsroot::{running_as_root, LastLink, Meta, Root};
use crate::model::{CloudConfig, IdRef, User, WriteFile};
use crate::systemd::{self, UnitDir};
use kiln_contract::flannel_conf::OPTIONS_ENV;
use kiln_contract::fleet_conf::FLEET_CONF;
use std::fmt;
use std::path::{Path, PathBuf};

pub const APPLIED_COPY: &str = kiln_contract::paths::CLOUD_CONFIG_APPLIED;
pub const REPORT_FILE: &str = kiln_contract::paths::CLOUD_CONFIG_REPORT;
pub const UPDATE_CONF: &str = kiln_contract::paths::UPDATE_CONF;

/// The outcome the report file's first line records (`status: …`), for the booted system's
/// `kiln-cloud-config.service` to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Every step succeeded.
    Applied,
    /// The document was applied, but at least one step failed.
    Failed,
    /// The document was not applied at all (it did not parse, or could not be read).
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Applied => "ok",
            Status::Failed => "failed",
            Status::Rejected => "rejected",
        }
    }

    /// The report's first line.
    pub fn header(self) -> String {
        format!("status: {}\n", self.as_str())
    }

    /// Reads the first line of a report.
    pub fn of_report(report: &str) -> Option<Status> {
        match report.lines().next()?.strip_prefix("status: ")? {
            "ok" => Some(Status::Applied),
            "failed" => Some(Status::Failed),
            "rejected" => Some(Status::Rejected),
            _ => None,
        }
    }
}

/// The report for a document that was not applied: why, and where it came from.
pub fn rejected_report(source: &str, error: &str) -> String {
    format!(
        "{}cloud-config from {source} was NOT applied: {error}\n",
        Status::Rejected.header()
    )
}

/// How to apply.
#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    /// The directory that becomes `/run` on the booted machine, for `runtime: true` units.
    /// `None` means `<root>/run`.
    pub run_dir: Option<PathBuf>,
    /// Units of the document that use `$private_ipv4`/`$public_ipv4`: each gets a drop-in
    /// ordering it after `kiln-config-addresses.service`, which writes them again with the
    /// addresses in place.
    pub after_addresses: Vec<String>,
}

/// Why nothing at all could be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "cannot apply the cloud-config to {root}: it is not a directory; mount ROOT there first"
    )]
    RootMissing { root: PathBuf },
}

impl ApplyError {
    /// `root` must be a directory (ROOT mounted there).
    pub(crate) fn check_root(root: &Path) -> Result<(), ApplyError> {
        if root.is_dir() {
            Ok(())
        } else {
            Err(ApplyError::RootMissing {
                root: root.to_path_buf(),
            })
        }
    }
}

/// What one step did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepReport {
    /// `hostname`, `users`, `write_files`, `etcd`, `update`, `units`, `network`, `record`.
    pub name: &'static str,
    /// `None` when the step succeeded.
    pub error: Option<String>,
    /// Things worth knowing that are not failures.
    pub notes: Vec<String>,
}

impl StepReport {
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Every step, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub steps: Vec<StepReport>,
}

impl ApplyReport {
    pub fn all_ok(&self) -> bool {
        self.steps.iter().all(StepReport::is_ok)
    }

    pub fn step(&self, name: &str) -> Option<&StepReport> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// Runs one step; `configured` false records it as having nothing to do.
    fn run(
        &mut self,
        name: &'static str,
        configured: bool,
        step: impl FnOnce(&mut Vec<String>) -> Result<(), String>,
    ) {
        let mut notes = Vec::new();
        let error = if configured {
            step(&mut notes).err()
        } else {
            notes.push("nothing to do".to_string());
            None
        };
        self.steps.push(StepReport { name, error, notes });
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            match &s.error {
                None => writeln!(f, "{}: ok", s.name)?,
                Some(e) => writeln!(f, "{}: FAILED: {e}", s.name)?,
            }
            for n in &s.notes {
                writeln!(f, "  {n}")?;
            }
        }
        Ok(())
    }
}

/// Errors of the items of one step, collected so one bad item does not stop the others.
#[derive(Default)]
struct Errors(Vec<String>);

impl Errors {
    fn check(&mut self, r: Result<(), String>) {
        if let Err(e) = r {
            self.0.push(e);
        }
    }

    fn finish(self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0.join("; "))
        }
    }
}

/// Applies `cfg` to the tree at `root`. Fails only when `root` is unusable; step failures are
/// in the report.
pub fn apply(
    cfg: &CloudConfig,
    root: &Path,
    opts: &ApplyOptions,
) -> Result<ApplyReport, ApplyError> {
    ApplyError::check_root(root)?;
    let as_root = running_as_root();
    let fs = Root::new(root, as_root);
    let run_dir = opts.run_dir.clone().unwrap_or_else(|| root.join("run"));
    let run = Root::new(&run_dir, as_root);
    let no_chown = |notes: &mut Vec<String>| {
        if !as_root {
            notes.push("not running as root: file owners were not set".into());
        }
    };
    let kiln = &cfg.kiln;
    let mut report = ApplyReport::default();
    report.run("hostname", cfg.hostname.is_some(), |_| hostname(cfg, &fs));
    let wanted = accounts::wanted_users(cfg);
    report.run("users", !wanted.is_empty(), |notes| {
        no_chown(notes);
        users(&wanted, &fs, notes)
    });
    report.run("write_files", !cfg.write_files.is_empty(), |notes| {
        no_chown(notes);
        write_files(cfg, &fs)
    });
    report.run("etcd", kiln.etcd.is_some(), |notes| match &kiln.etcd {
        Some(etcd) => systemd::apply_etcd(&fs, etcd, notes),
        None => Ok(()),
    });
    report.run("update", kiln.update_agent.is_some(), |_| update(cfg, &fs));
    report.run("fleet", kiln.fleet.is_some(), |_| match &kiln.fleet {
        Some(fleet) => fs
            .write(
                FLEET_CONF,
                fleet.render().as_bytes(),
                Meta::ROOT_FILE,
                LastLink::Follow,
            )
            .map(|_| ()),
        None => Ok(()),
    });
    report.run("flannel", kiln.flannel.is_some(), |_| match &kiln.flannel {
        Some(flannel) => fs
            .write(
                OPTIONS_ENV,
                flannel.render().as_bytes(),
                Meta::ROOT_FILE,
                LastLink::Follow,
            )
            .map(|_| ()),
        None => Ok(()),
    });
    // Always run: a start list left by an earlier document must go.
    report.run("units", true, |notes| units(cfg, &fs, &run, opts, notes));
    report.run("network", !kiln.network.is_empty(), |_| network(cfg, &fs));
    report.run("record", true, |_| {
        let meta = Meta {
            mode: 0o600,
            uid: 0,
            gid: 0,
        };
        fs.write(APPLIED_COPY, cfg.source.as_bytes(), meta, LastLink::Replace)
            .map(|_| ())
    });
    let status = if report.all_ok() {
        Status::Applied
    } else {
        Status::Failed
    };
    let text = format!("{}{report}", status.header());
    if let Err(e) = fs.write(
        REPORT_FILE,
        text.as_bytes(),
        Meta::ROOT_FILE,
        LastLink::Replace,
    ) {
        report.steps.push(StepReport {
            name: "report",
            error: Some(e),
            notes: Vec::new(),
        });
    }
    Ok(report)
}

fn hostname(cfg: &CloudConfig, fs: &Root) -> Result<(), String> {
    let Some(name) = &cfg.hostname else {
        return Ok(());
    };
    fs.write(
        "/etc/hostname",
        format!("{name}\n").as_bytes(),
        Meta::ROOT_FILE,
        LastLink::Follow,
    )?;
    // The name must resolve (sudo asks for it): Debian's installer puts it on 127.0.1.1;
    // `manage_etc_hosts: localhost` asks for the whole file, the name on the loopback addresses.
    let hosts = fs
        .read("/etc/hosts")?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let text = if cfg.manage_etc_hosts {
        managed_hosts(name)
    } else {
        hosts_with_name(hosts.as_deref(), name)
    };
    if hosts.as_deref() != Some(text.as_str()) {
        fs.write(
            "/etc/hosts",
            text.as_bytes(),
            Meta::ROOT_FILE,
            LastLink::Follow,
        )?;
    }
    Ok(())
}

/// `/etc/hosts` for `manage_etc_hosts: localhost`: `name` (and its first label) on 127.0.0.1
/// and ::1 besides localhost.
fn managed_hosts(name: &str) -> String {
    let short = name.split('.').next().unwrap_or(name);
    let names = if short == name {
        name.to_string()
    } else {
        format!("{name} {short}")
    };
    format!("# Written at first boot for `manage_etc_hosts: localhost` in the cloud-config.\n127.0.0.1\tlocalhost {names}\n::1\tlocalhost ip6-localhost ip6-loopback {names}\n")
}

/// `/etc/hosts` that resolves `name`: unchanged when a line already names it, else with a
/// `127.0.1.1` line added (or a new file with the usual loopback lines).
fn hosts_with_name(hosts: Option<&str>, name: &str) -> String {
    let short = name.split('.').next().unwrap_or(name);
    let line = if short == name {
        format!("127.0.1.1\t{name}\n")
    } else {
        format!("127.0.1.1\t{name} {short}\n")
    };
    match hosts {
        None => format!("127.0.0.1\tlocalhost\n{line}::1\tlocalhost ip6-localhost ip6-loopback\n"),
        Some(text) => {
            let named = text.lines().any(|l| {
                let l = l.split('#').next().unwrap_or_default();
                l.split_whitespace().skip(1).any(|n| n == name)
            });
            if named {
                text.to_string()
            } else if text.is_empty() || text.ends_with('\n') {
                format!("{text}{line}")
            } else {
                format!("{text}\n{line}")
            }
        }
    }
}

fn users(wanted: &[User], fs: &Root, notes: &mut Vec<String>) -> Result<(), String> {
    let mut db = Accounts::load(fs)?;
    let mut errors = Errors::default();
    let mut homes = Vec::new();
    for user in wanted {
        match db.ensure_user(user, notes) {
            Ok(home) => homes.push((user, home)),
            Err(e) => errors.0.push(e),
        }
    }
    // The databases first: home directories and keys are owned by the new ids.
    db.save(fs)?;
    for (user, home) in &homes {
        errors.check(accounts::make_home(fs, home, user, notes));
        errors.check(accounts::write_keys(fs, home, &user.ssh_authorized_keys));
    }
    errors.finish()
}

fn write_files(cfg: &CloudConfig, fs: &Root) -> Result<(), String> {
    // Read after the users step, so files can belong to users made by this document.
    let db = Accounts::load(fs)?;
    let mut errors = Errors::default();
    for f in &cfg.write_files {
        errors.check(write_file(fs, &db, f).map_err(|e| format!("{}: {e}", f.path)));
    }
    errors.finish()
}

fn write_file(fs: &Root, db: &Accounts, f: &WriteFile) -> Result<(), String> {
    let (uid, gid) = owner_ids(db, f)?;
    let meta = Meta {
        mode: f.permissions.unwrap_or(0o644),
        uid,
        gid,
    };
    let data = if f.append {
        let mut old = fs.read(&f.path)?.unwrap_or_default();
        // Appending what is already at the end again would make a second apply differ.
        if !old.ends_with(&f.content) || f.content.is_empty() {
            old.extend_from_slice(&f.content);
        }
        old
    } else {
        f.content.clone()
    };
    fs.write(&f.path, &data, meta, LastLink::Follow).map(|_| ())
}

/// Numbers for `owner:`: names through the root's passwd/group, numbers as they are;
/// no group means the user's primary group.
fn owner_ids(db: &Accounts, f: &WriteFile) -> Result<(u32, u32), String> {
    let Some(owner) = &f.owner else {
        return Ok((0, 0));
    };
    let (uid, primary) = match &owner.user {
        IdRef::Id(u) => (*u, None),
        IdRef::Name(n) => {
            let (u, g) = db
                .uid_gid_of(n)
                .ok_or_else(|| format!("owner {n} is not in /etc/passwd"))?;
            (u, Some(g))
        }
    };
    let gid = match &owner.group {
        Some(IdRef::Id(g)) => *g,
        Some(IdRef::Name(n)) => db
            .gid_of(n)
            .ok_or_else(|| format!("group {n} is not in /etc/group"))?,
        None => primary.unwrap_or(uid),
    };
    Ok((uid, gid))
}

/// `/etc/kiln/update.conf`, with only the keys the document sets.
fn update(cfg: &CloudConfig, fs: &Root) -> Result<(), String> {
    let Some(given) = &cfg.kiln.update_agent else {
        return Ok(());
    };
    fs.write(
        UPDATE_CONF,
        given.render().as_bytes(),
        Meta::ROOT_FILE,
        LastLink::Follow,
    )
    .map(|_| ())
}

fn units(
    cfg: &CloudConfig,
    fs: &Root,
    run: &Root,
    opts: &ApplyOptions,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let etc = UnitDir {
        fs,
        inner: "/etc/systemd/system",
        outer: "/etc/systemd/system",
    };
    let runtime = UnitDir {
        fs: run,
        inner: "/systemd/system",
        outer: "/run/systemd/system",
    };
    let mut errors = Errors::default();
    let mut start = Vec::new();
    for u in &cfg.kiln.units {
        let dir = if u.runtime { &runtime } else { &etc };
        match systemd::apply_unit(fs, dir, u, notes) {
            Ok(Some(line)) => start.push(line),
            Ok(None) => {}
            Err(e) => errors.0.push(format!("{}: {e}", u.name)),
        }
        if opts.after_addresses.contains(&u.name) {
            errors.check(systemd::order_after_addresses(fs, &u.name));
        }
    }
    for line in &start {
        notes.push(format!("after boot: systemctl {line}"));
    }
    errors.check(systemd::write_start_list(fs, &start));
    errors.finish()
}

fn network(cfg: &CloudConfig, fs: &Root) -> Result<(), String> {
    let mut errors = Errors::default();
    for iface in &cfg.kiln.network {
        let text = systemd::network_unit(iface);
        let path = systemd::network_file(iface);
        errors.check(
            fs.write(&path, text.as_bytes(), Meta::ROOT_FILE, LastLink::Replace)
                .map(|_| ()),
        );
    }
    errors.finish()
}

#[cfg(test)]
mod hosts_tests {
    use super::hosts_with_name;

    #[test]
    fn the_hostname_resolves_once() {
        let new = hosts_with_name(None, "node1");
        assert!(new.contains("127.0.1.1\tnode1\n") && new.starts_with("127.0.0.1\tlocalhost\n"));
        assert_eq!(hosts_with_name(Some(&new), "node1"), new);
        assert_eq!(
            hosts_with_name(Some("127.0.0.1 localhost"), "a.example"),
            "127.0.0.1 localhost\n127.0.1.1\ta.example a\n"
        );
        // A name in a comment does not count.
        assert!(hosts_with_name(Some("# 1.2.3.4 b\n"), "b").ends_with("127.0.1.1\tb\n"));
    }
}
