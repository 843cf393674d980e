//! A user-data at first boot, whatever it is, as coreos-cloudinit took it (and Flatcar's
//! multipart): a cloud-config is applied; a script (`#!`) is kept for
//! `kiln-user-data.service`, which runs it once the network is up, its output in the journal and
//! its exit status in the report; a multipart user-data is each of its parts in order; an empty
//! one is nothing to do. Used by the init (first boot) and by `kiln-config fetch-url`.
//!
//! A cloud-config that says `$private_ipv4` or `$public_ipv4` is applied with a placeholder and
//! kept for its second pass (see [`crate::addresses`]).

use std::path::Path;

use crate::addresses::{self, Addresses, PENDING, PLACEHOLDER};
use crate::apply::{apply, rejected_report, ApplyError, ApplyOptions, Status, REPORT_FILE};
use crate::fsroot::{LastLink, Meta, Root};
use crate::parse::{parse, Parsed};
use crate::userdata::{read_user_data, PartKind, UserData};
use crate::CloudConfig;

/// Scripts waiting for their one run, and where they go after it.
pub const SCRIPTS: &str = kiln_contract::paths::USER_DATA_SCRIPTS;
pub const SCRIPTS_RAN: &str = kiln_contract::paths::USER_DATA_RAN;

/// What first boot did with a user-data.
#[derive(Debug)]
pub struct FirstBoot {
    pub status: Status,
    /// The report's text (also written to [`REPORT_FILE`]).
    pub report: String,
    /// What to say on the console: warnings and failed steps, one a line.
    pub console: Vec<String>,
    /// A document waits for the machine's addresses.
    pub addresses_pending: bool,
    /// Scripts wait for `kiln-user-data.service`.
    pub scripts: usize,
}

/// Reads `bytes` (from `source`, for messages), applies or keeps what it holds under `root`, and
/// writes the report. Fails only when `root` is unusable.
pub fn apply_user_data(
    bytes: &[u8],
    source: &str,
    root: &Path,
    opts: &ApplyOptions,
) -> Result<FirstBoot, ApplyError> {
    ApplyError::check_root(root)?;
    let mut run = Run {
        root,
        opts,
        status: Status::Applied,
        body: String::new(),
        console: Vec::new(),
        addresses_pending: false,
        scripts: 0,
    };
    match read_user_data(bytes) {
        Err(e) => {
            let text = rejected_report(source, &e.to_string());
            run.console
                .push(text.lines().last().unwrap_or_default().to_string());
            run.status = Status::Rejected;
            run.body = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        }
        Ok(UserData::Empty) => {
            run.say(format!(
                "the user-data from {source} is empty: nothing to apply"
            ));
        }
        Ok(UserData::CloudConfig(parsed)) => run.cloud_configs(&[(&parsed, source.to_string())])?,
        Ok(UserData::Script { interpreter }) => {
            run.script("user-data", &interpreter, bytes, source);
        }
        Ok(UserData::Multipart(parts)) => {
            run.say(format!(
                "the user-data from {source} is multipart: {} parts",
                parts.len()
            ));
            let mut documents = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                let what = format!("part {} (line {}, {})", i + 1, part.line, part.content_type);
                match &part.kind {
                    PartKind::CloudConfig(parsed) => {
                        documents.push((&**parsed, format!("{source}, {what}")))
                    }
                    PartKind::Script { interpreter, body } => run.script(
                        &format!("part-{:02}", i + 1),
                        interpreter,
                        body.as_bytes(),
                        &what,
                    ),
                    PartKind::Ignored(why) => run.say(format!("{what}: ignored, {why}")),
                }
            }
            if !documents.is_empty() {
                run.cloud_configs(&documents)?;
            }
        }
    }
    let report = format!("{}{}", run.status.header(), run.body);
    write_report(&Root::new(root, crate::fsroot::running_as_root()), &report);
    Ok(FirstBoot {
        status: run.status,
        report,
        console: run.console,
        addresses_pending: run.addresses_pending,
        scripts: run.scripts,
    })
}

struct Run<'a> {
    root: &'a Path,
    opts: &'a ApplyOptions,
    status: Status,
    body: String,
    console: Vec<String>,
    addresses_pending: bool,
    scripts: usize,
}

impl Run<'_> {
    /// A line for the report and the console.
    fn say(&mut self, line: String) {
        self.body.push_str(&line);
        self.body.push('\n');
        self.console.push(line);
    }

    fn worsen(&mut self, status: Status) {
        self.status = worse(self.status, status);
    }

    /// Applies the cloud-configs of one user-data as one document (see [`CloudConfig::merge`]);
    /// when one says an address variable, all are kept for the second pass.
    fn cloud_configs(&mut self, documents: &[(&Parsed, String)]) -> Result<(), ApplyError> {
        for (parsed, _) in documents {
            for w in &parsed.warnings {
                self.console.push(w.to_string());
            }
        }
        let what = documents
            .iter()
            .map(|(_, what)| what.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let texts: Vec<&str> = documents
            .iter()
            .map(|(p, _)| p.config.source.as_str())
            .collect();
        let mut opts = self.opts.clone();
        let mut cfg = CloudConfig::default();
        if texts.iter().any(|t| addresses::uses_addresses(t)) {
            let mut held = 0;
            for (i, text) in texts.iter().enumerate() {
                match first_pass(text) {
                    Ok((part, n)) => {
                        held += n;
                        cfg.merge(part);
                    }
                    Err(e) => {
                        self.say(format!("{}: {e}", documents[i].1));
                        self.worsen(Status::Failed);
                        cfg.merge(documents[i].0.config.clone());
                    }
                }
                self.keep_pending(i + 1, text);
            }
            // Every unit of the document, not only those that say a variable: a unit may read
            // a file that does.
            opts.after_addresses = cfg
                .kiln
                .units
                .iter()
                .filter(|u| !u.mask && !u.is_networkd())
                .map(|u| u.name.clone())
                .collect();
            self.addresses_pending = true;
            self.want_network(crate::systemd::ADDRESSES_UNIT);
            self.say(format!("{what} says $private_ipv4 or $public_ipv4: applied now with {PLACEHOLDER} in their place, and again by kiln-config-addresses.service once the network is up ({held} write_files entries wait for it; the document's units start after it: {})", if opts.after_addresses.is_empty() { "none".to_string() } else { opts.after_addresses.join(", ") }));
        } else {
            for (parsed, _) in documents {
                cfg.merge(parsed.config.clone());
            }
        }
        let report = apply(&cfg, self.root, &opts)?;
        for step in &report.steps {
            if let Some(error) = &step.error {
                self.console
                    .push(format!("cloud-config: step {} failed: {error}", step.name));
            }
        }
        self.console.push(format!(
            "cloud-config: {} steps, all ok: {}",
            report.steps.len(),
            report.all_ok()
        ));
        self.body
            .push_str(&format!("cloud-config from {what}:\n{report}"));
        if !report.all_ok() {
            self.worsen(Status::Failed);
        }
        Ok(())
    }

    /// Keeps document `n` of this user-data for the second pass.
    fn keep_pending(&mut self, n: usize, text: &str) {
        let kept = Root::new(self.root, crate::fsroot::running_as_root()).write(
            &format!("{PENDING}/{n:02}.yml"),
            text.as_bytes(),
            Meta {
                mode: 0o600,
                uid: 0,
                gid: 0,
            },
            LastLink::Replace,
        );
        if let Err(e) = kept {
            self.say(format!(
                "cannot keep the cloud-config for its addresses: {e}"
            ));
            self.worsen(Status::Failed);
        }
    }

    fn want_network(&mut self, unit: &str) {
        let fs = Root::new(self.root, crate::fsroot::running_as_root());
        if let Err(e) = crate::systemd::want_network(&fs, unit) {
            self.say(format!("{unit} will not wait for the network: {e}"));
        }
    }

    /// Keeps a script for kiln-user-data.service.
    fn script(&mut self, name: &str, interpreter: &str, body: &[u8], what: &str) {
        let fs = Root::new(self.root, crate::fsroot::running_as_root());
        let meta = Meta {
            mode: 0o700,
            uid: 0,
            gid: 0,
        };
        match fs.write(&format!("{SCRIPTS}/{name}"), body, meta, LastLink::Replace) {
            Ok(_) => {
                self.scripts += 1;
                self.want_network(crate::systemd::SCRIPTS_UNIT);
                self.say(format!("{what}: a script (#!{interpreter}), {name}: kiln-user-data.service runs it once the network is up; its exit status follows here"));
            }
            Err(e) => {
                self.say(format!(
                    "{what}: a script (#!{interpreter}) that cannot be kept to run: {e}"
                ));
                self.worsen(Status::Failed);
            }
        }
    }
}

/// The first pass of a document with address variables: the document with [`PLACEHOLDER`] for
/// them, without the `write_files` entries that use them, and how many those are.
fn first_pass(text: &str) -> Result<(CloudConfig, usize), String> {
    let (a, b) = two_readings(text)?;
    let uses = uses_of(&a, &b);
    let held = uses.iter().filter(|u| **u).count();
    let mut cfg = a;
    cfg.write_files = keep(cfg.write_files, &uses, false);
    cfg.source = text.to_string();
    Ok((cfg, held))
}

/// For each `write_files` entry, whether it uses an address variable: whether it differs between
/// the two readings.
fn uses_of(a: &CloudConfig, b: &CloudConfig) -> Vec<bool> {
    a.write_files
        .iter()
        .zip(&b.write_files)
        .map(|(x, y)| x != y)
        .collect()
}

/// The entries whose `uses` is `wanted`.
fn keep<T>(items: Vec<T>, uses: &[bool], wanted: bool) -> Vec<T> {
    items
        .into_iter()
        .zip(uses)
        .filter(|(_, u)| **u == wanted)
        .map(|(item, _)| item)
        .collect()
}

/// The document read with the placeholder and with another address for the variables: what
/// differs between the two is what uses them.
fn two_readings(text: &str) -> Result<(CloudConfig, CloudConfig), String> {
    let read = |addr: Addresses| {
        parse(&addresses::substitute(text, &addr))
            .map(|p| p.config)
            .map_err(|e| {
                format!("with its address variables replaced, the document does not read: {e}")
            })
    };
    let a = read(Addresses::both(PLACEHOLDER))?;
    let b = read(Addresses::both(std::net::Ipv4Addr::new(192, 0, 2, 1)))?;
    if a.write_files.len() != b.write_files.len() || a.kiln.units.len() != b.kiln.units.len() {
        return Err("its address variables change which write_files or units it has; write them in values only".into());
    }
    Ok((a, b))
}

/// The second pass of a kept document: with `addresses` in place of the variables, only the
/// `write_files` entries that use them (the others were written in the first pass).
pub fn second_pass(text: &str, addresses: &Addresses) -> Result<CloudConfig, String> {
    let (a, b) = two_readings(text)?;
    let parsed = parse(&addresses::substitute(text, addresses))
        .map_err(|e| format!("with the addresses in place, the document does not read: {e}"))?;
    let mut cfg = parsed.config;
    cfg.write_files = keep(cfg.write_files, &uses_of(&a, &b), true);
    Ok(cfg)
}

/// Writes the report; a failure is said on stderr (the console at first boot): the machine
/// boots on either way.
pub(crate) fn write_report(fs: &Root, text: &str) {
    if let Err(e) = fs.write(
        REPORT_FILE,
        text.as_bytes(),
        Meta::ROOT_FILE,
        LastLink::Replace,
    ) {
        eprintln!("cloud-config: cannot write {REPORT_FILE}: {e}");
    }
}

/// The documents waiting for their addresses, in the order they were kept.
pub fn pending_documents(root: &Path) -> Result<Vec<(std::path::PathBuf, String)>, String> {
    let dir = root.join(kiln_contract::paths::under(PENDING));
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading {}: {e}", dir.display())),
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            std::fs::read_to_string(&p)
                .map(|t| (p.clone(), t))
                .map_err(|e| format!("reading {}: {e}", p.display()))
        })
        .collect()
}

/// What the kept documents say about where their addresses come from: the `addresses:`
/// settings and the static addresses, of all of them as one document.
pub fn address_rules(
    texts: &[String],
) -> Result<(addresses::AddressSettings, Vec<std::net::Ipv4Addr>), String> {
    let mut cfg = CloudConfig::default();
    for text in texts {
        cfg.merge(two_readings(text)?.0);
    }
    let statics = cfg
        .kiln
        .network
        .iter()
        .flat_map(|n| &n.addresses)
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect();
    Ok((cfg.kiln.addresses, statics))
}

/// The second pass: every kept document applied again with `chosen`'s addresses in place (its
/// held-back files written for the first time), the addresses in `/etc/environment`, the report
/// extended; the kept documents are removed when all of it was done. When the addresses could
/// not be found (`chosen` is why), the report says so. Returns what was added to the report, and
/// whether all of it succeeded.
pub fn complete_addresses(
    root: &Path,
    opts: &ApplyOptions,
    chosen: Result<&addresses::Chosen, &str>,
) -> Result<(String, bool), ApplyError> {
    let fs = Root::new(root, crate::fsroot::running_as_root());
    let chosen = match chosen {
        Ok(c) => c,
        Err(why) => {
            // The documents stay kept: the next boot tries again.
            let line = format!(
                "addresses: not known, the cloud-config was not applied with them: {why}\n"
            );
            extend_report(&fs, &line, true);
            return Ok((line, false));
        }
    };
    // Read first: applying writes a report of its own.
    let before = read_report(&fs);
    let mut failed = false;
    let a = chosen.addresses;
    let mut added = format!(
        "addresses: $private_ipv4 is {} ({}), $public_ipv4 is {} ({})\n",
        a.private_ipv4, chosen.private_from, a.public_ipv4, chosen.public_from
    );
    let mut done = true;
    let docs = match pending_documents(root) {
        Ok(d) => d,
        Err(e) => {
            added.push_str(&format!("{e}\n"));
            done = false;
            Vec::new()
        }
    };
    let mut cfg = CloudConfig::default();
    for (path, text) in &docs {
        match second_pass(text, &a) {
            Ok(part) => cfg.merge(part),
            Err(e) => {
                added.push_str(&format!("{}: {e}\n", path.display()));
                failed = true;
                done = false;
            }
        }
    }
    if !docs.is_empty() {
        let report = apply(&cfg, root, opts)?;
        failed |= !report.all_ok();
        added.push_str(&format!(
            "cloud-config again, with the addresses:\n{report}"
        ));
    }
    if let Err(e) = crate::systemd::set_environment(&fs, &a.environment()) {
        added.push_str(&format!("{}: {e}\n", kiln_contract::paths::ENVIRONMENT));
        failed = true;
    }
    write_extended(&fs, &before, &added, failed);
    if done {
        for (path, _) in &docs {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok((added, !failed))
}

/// The report as it is (a bare `ok` header when there is none).
fn read_report(fs: &Root) -> String {
    fs.read(REPORT_FILE)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|| Status::Applied.header())
}

/// Adds `text` to the report; `failed` makes its status `failed`.
fn extend_report(fs: &Root, text: &str, failed: bool) {
    write_extended(fs, &read_report(fs), text, failed);
}

fn write_extended(fs: &Root, before: &str, text: &str, failed: bool) {
    let mut status = Status::of_report(before).unwrap_or(Status::Failed);
    if failed {
        status = worse(status, Status::Failed);
    }
    let body: String = before.lines().skip(1).map(|l| format!("{l}\n")).collect();
    write_report(fs, &format!("{}{body}{text}", status.header()));
}

fn worse(a: Status, b: Status) -> Status {
    if a == Status::Applied {
        b
    } else {
        a
    }
}

/// Runs each kept script once, in name order, with no input and its output on this process's
/// (the unit's journal); each one's exit status is added to the report (a failure makes its
/// status `failed`), and each moves to [`SCRIPTS_RAN`] once it ended. Returns how many ran; an
/// error names those that failed.
pub fn run_scripts(root: &Path) -> Result<usize, String> {
    let fs = Root::new(root, crate::fsroot::running_as_root());
    let dir = root.join(kiln_contract::paths::under(SCRIPTS));
    let ran = root.join(kiln_contract::paths::under(SCRIPTS_RAN));
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("reading {}: {e}", dir.display())),
    };
    names.sort();
    std::fs::create_dir_all(&ran).map_err(|e| format!("creating {}: {e}", ran.display()))?;
    let mut failed = Vec::new();
    for name in &names {
        let path = dir.join(name);
        println!("running the user-data's script {name}");
        let outcome = match std::process::Command::new(&path)
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .status()
        {
            Ok(s) if s.success() => Ok("exit status 0".to_string()),
            Ok(s) => Err(
                match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                    (Some(code), _) => format!("exit status {code}"),
                    (None, Some(sig)) => format!("killed by signal {sig}"),
                    (None, None) => format!("{s}"),
                },
            ),
            Err(e) => Err(format!(
                "could not start: {e} (is its #! interpreter in the image?)"
            )),
        };
        let line = match &outcome {
            Ok(s) | Err(s) => format!("script {name}: {s}"),
        };
        println!("{line}");
        extend_report(&fs, &format!("{line}\n"), outcome.is_err());
        if outcome.is_err() {
            failed.push(line);
        }
        if let Err(e) = std::fs::rename(&path, ran.join(name)) {
            return Err(format!(
                "moving {} to {} after its run: {e}",
                path.display(),
                ran.display()
            ));
        }
    }
    if failed.is_empty() {
        Ok(names.len())
    } else {
        Err(failed.join("; "))
    }
}
