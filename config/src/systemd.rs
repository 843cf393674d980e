//! Everything that ends up as systemd configuration: units and drop-ins, `enable` as the
//! `[Install]` links `systemctl enable` would make, masks, the start list, networkd files for
//! static addresses, and etcd's environment file.

use crate::accounts::Accounts;
use crate::fsroot::{LastLink, Meta, Root};
use crate::model::{Etcd, NetworkInterface, Unit};
use kiln_contract::paths::ENVIRONMENT;

/// Where `systemctl start` requests are left for the small unit that runs them after boot.
pub const UNITS_TO_START: &str = kiln_contract::paths::UNITS_TO_START;
/// Debian's etcd.service reads `EnvironmentFile=-/etc/default/%p`.
pub const ETCD_ENV_FILE: &str = "/etc/default/etcd";
pub const ETCD_DEFAULT_DATA_DIR: &str = "/var/lib/etcd/default";
/// A worker's etcd (`proxy: on`): `kiln-etcd gateway`, a proxy to the members, reading the
/// same environment file.
const ETCD_GATEWAY_UNIT: &str = "kiln-etcd-gateway.service";
/// Kiln's settings for Debian's etcd.service.
const ETCD_DROP_IN: &str = "/etc/systemd/system/etcd.service.d/10-kiln.conf";
/// The addresses etcd listens on may come up after it starts (static addresses are set by
/// networkd, which systemd does not wait for), and a member must come back by itself after any
/// failure: restart, forever, a few seconds apart. A document that says `$private_ipv4` has its
/// addresses written in by kiln-config-addresses.service, which etcd therefore waits for.
/// Before a member first starts with a discovery URL, `kiln-etcd check-discovery` says what the
/// URL answers for this machine (a token or not, the cluster full) in etcd's journal and the
/// report; it never fails the start (`-`), and runs as root (`+`) to write the report.
const ETCD_DROP_IN_TEXT: &str = "# Written by kiln-config from the cloud-config's etcd section.\n[Unit]\nWants=network-online.target\nAfter=network-online.target kiln-config-addresses.service\nStartLimitIntervalSec=0\n\n[Service]\nExecStartPre=-+/usr/bin/kiln-etcd check-discovery\nRestart=on-failure\nRestartSec=5s\n";
/// Where vendor units are looked for, most specific first. `/lib` is there for images whose
/// `/lib` is not yet a link to `/usr/lib`.
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// The `[Install]` section of a unit file, as far as enabling needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Install {
    pub wanted_by: Vec<String>,
    pub required_by: Vec<String>,
    pub alias: Vec<String>,
    pub default_instance: Option<String>,
}

/// Reads `[Install]`: list settings accumulate, an empty assignment clears, `\` continues.
pub(crate) fn parse_install(unit: &str) -> Install {
    let mut install = Install::default();
    let mut in_install = false;
    let mut joined = String::new();
    for raw in unit.lines() {
        if let Some(stripped) = raw.strip_suffix('\\') {
            joined.push_str(stripped);
            joined.push(' ');
            continue;
        }
        joined.push_str(raw);
        let line = std::mem::take(&mut joined);
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let words: Vec<String> = value.split_whitespace().map(str::to_string).collect();
        let list = match key.trim() {
            "WantedBy" => &mut install.wanted_by,
            "RequiredBy" => &mut install.required_by,
            "Alias" => &mut install.alias,
            "DefaultInstance" => {
                install.default_instance = words.first().cloned();
                continue;
            }
            _ => continue,
        };
        if words.is_empty() {
            list.clear();
        } else {
            list.extend(words);
        }
    }
    install
}

/// `foo@bar.service` → `foo@.service`, the file an instance comes from.
fn template_of(name: &str) -> Option<String> {
    let (prefix, rest) = name.split_once('@')?;
    let dot = rest.rfind('.')?;
    Some(format!("{prefix}@{}", &rest[dot..]))
}

/// Where units of one kind go: `/etc/systemd/system`, or `/run/systemd/system` for runtime
/// units (`fs` is then the directory that becomes `/run`).
pub(crate) struct UnitDir<'a> {
    pub fs: &'a Root,
    /// The directory inside `fs`.
    pub inner: &'static str,
    /// The same directory as the running machine sees it (for link targets).
    pub outer: &'static str,
}

impl UnitDir<'_> {
    fn inner_path(&self, name: &str) -> String {
        format!("{}/{name}", self.inner)
    }
}

/// Makes the links `systemctl enable` would for `name`, whose file is at `target` (as the
/// machine sees it) with `content`.
pub(crate) fn enable(
    dir: &UnitDir<'_>,
    name: &str,
    target: &str,
    content: &str,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let install = parse_install(content);
    let is_template = name.contains("@.");
    let link_name = if is_template {
        match &install.default_instance {
            Some(inst) => name.replacen("@.", &format!("@{inst}."), 1),
            None => {
                notes.push(format!(
                    "{name} is a template without DefaultInstance=; not enabled"
                ));
                return Ok(());
            }
        }
    } else {
        name.to_string()
    };
    if install.wanted_by.is_empty() && install.required_by.is_empty() && install.alias.is_empty() {
        notes.push(format!(
            "{name} has no [Install] section; nothing to enable"
        ));
        return Ok(());
    }
    for (targets, suffix) in [
        (&install.wanted_by, "wants"),
        (&install.required_by, "requires"),
    ] {
        for t in targets {
            dir.fs
                .symlink(&format!("{}/{t}.{suffix}/{link_name}", dir.inner), target)?;
        }
    }
    // Aliases of instances name other instances; systemctl does not link those either.
    if !name.contains('@') {
        for a in &install.alias {
            dir.fs.symlink(&dir.inner_path(a), target)?;
        }
    }
    Ok(())
}

/// Finds an installed unit file for `name` (its template for an instance): the path as the
/// machine sees it and its content.
fn find_unit(fs: &Root, name: &str) -> Option<(String, String)> {
    let file = template_of(name).unwrap_or_else(|| name.to_string());
    UNIT_DIRS.iter().find_map(|d| {
        let path = format!("{d}/{file}");
        let bytes = fs.read(&path).ok()??;
        Some((path, String::from_utf8_lossy(&bytes).into_owned()))
    })
}

/// Writes, masks and enables one unit. Returns the start-list line, if any.
pub(crate) fn apply_unit(
    root: &Root,
    dir: &UnitDir<'_>,
    unit: &Unit,
    notes: &mut Vec<String>,
) -> Result<Option<String>, String> {
    if unit.is_networkd() {
        let inner = if unit.runtime {
            "/systemd/network"
        } else {
            "/etc/systemd/network"
        };
        write_with_dropins(dir.fs, inner, unit)?;
        return Ok(None);
    }
    let name = &unit.name;
    if unit.mask {
        dir.fs.symlink(&dir.inner_path(name), "/dev/null")?;
    } else {
        write_with_dropins(dir.fs, dir.inner, unit)?;
    }
    if unit.enable && !unit.mask {
        match &unit.content {
            Some(content) => enable(dir, name, &format!("{}/{name}", dir.outer), content, notes)?,
            None => {
                let (path, content) = find_unit(root, name).ok_or_else(|| {
                    format!(
                        "cannot enable {name}: no such unit in the image and no `content` given"
                    )
                })?;
                enable(dir, name, &path, &content, notes)?;
            }
        }
    }
    Ok(unit.command.map(|c| format!("{} {name}", c.as_str())))
}

fn write_with_dropins(fs: &Root, inner: &str, unit: &Unit) -> Result<(), String> {
    if let Some(content) = &unit.content {
        fs.write(
            &format!("{inner}/{}", unit.name),
            content.as_bytes(),
            Meta::ROOT_FILE,
            LastLink::Replace,
        )?;
    }
    for d in &unit.drop_ins {
        let path = format!("{inner}/{}.d/{}", unit.name, d.name);
        fs.write(
            &path,
            d.content.as_bytes(),
            Meta::ROOT_FILE,
            LastLink::Replace,
        )?;
    }
    Ok(())
}

/// Writes the start list, or removes a stale one when there is nothing to start.
pub(crate) fn write_start_list(fs: &Root, lines: &[String]) -> Result<(), String> {
    if lines.is_empty() {
        return fs.remove(UNITS_TO_START);
    }
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    fs.write(
        UNITS_TO_START,
        text.as_bytes(),
        Meta::ROOT_FILE,
        LastLink::Replace,
    )
    .map(|_| ())
}

/// A networkd file name for an interface name or glob.
pub(crate) fn network_file(iface: &NetworkInterface) -> String {
    let key = match (&iface.mac, iface.name.is_empty()) {
        (Some(mac), true) => mac.as_str(),
        _ => iface.name.as_str(),
    };
    let safe: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("/etc/systemd/network/10-kiln-{safe}.network")
}

pub(crate) fn network_unit(iface: &NetworkInterface) -> String {
    let mut s = String::from("# Written by kiln-config from the cloud-config.\n[Match]\n");
    if !iface.name.is_empty() {
        s.push_str(&format!("Name={}\n", iface.name));
    }
    if let Some(mac) = &iface.mac {
        s.push_str(&format!("MACAddress={mac}\n"));
    }
    s.push_str("\n[Network]\n");
    for a in &iface.addresses {
        s.push_str(&format!("Address={a}\n"));
    }
    if let Some(g) = &iface.gateway {
        s.push_str(&format!("Gateway={g}\n"));
    }
    for d in &iface.dns {
        s.push_str(&format!("DNS={d}\n"));
    }
    if let Some(accept) = iface.ipv6_accept_ra {
        s.push_str(if accept {
            "IPv6AcceptRA=yes\n"
        } else {
            "IPv6AcceptRA=no\n"
        });
    }
    s
}

/// The etcd environment file: every setting as `ETCD_*`, data dir and pre-vote defaulted.
pub(crate) fn etcd_env(etcd: &Etcd) -> String {
    let mut s =
        String::from("# Written by kiln-config from the cloud-config; read by etcd.service.\n");
    let mut settings = etcd.settings.clone();
    settings
        .entry("data-dir".into())
        .or_insert_with(|| ETCD_DEFAULT_DATA_DIR.into());
    // etcd 3.5's default, off in Debian's 3.4: a member that rejoins after a reboot asks
    // before it campaigns, instead of deposing a healthy leader with a higher term.
    settings
        .entry("pre-vote".into())
        .or_insert_with(|| "true".into());
    // etcd's default (`proxy`) makes a machine the cluster is full for a v2 proxy, silently;
    // Kiln's says so and stops. Workers are proxies by `proxy: on`.
    if settings.contains_key("discovery") {
        settings
            .entry("discovery-fallback".into())
            .or_insert_with(|| "exit".into());
    }
    for (k, v) in &settings {
        s.push_str(&format!(
            "ETCD_{}={}\n",
            k.to_ascii_uppercase().replace('-', "_"),
            env_quote(v)
        ));
    }
    s
}

/// A value for a systemd `EnvironmentFile=` (also fine for a shell): bare when safe,
/// otherwise double-quoted with `\`, `"`, `$` and `` ` `` escaped.
fn env_quote(v: &str) -> String {
    let safe = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:,=@%+-".contains(c));
    if safe {
        return v.to_string();
    }
    let mut out = String::from("\"");
    for c in v.chars() {
        if "\\\"$`".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Where `etcdctl` should talk by default: this member's client URLs.
pub(crate) fn etcdctl_endpoints(etcd: &Etcd) -> String {
    let unspecified = |u: &str| u.contains("0.0.0.0") || u.contains("[::]");
    // A proxy advertises nothing: etcdctl talks to the gateway where it listens.
    if let Some(a) = etcd.get("advertise-client-urls").filter(|_| !etcd.proxy) {
        return a.to_string();
    }
    match etcd.get("listen-client-urls") {
        Some(l) if !unspecified(l) => l.to_string(),
        _ => "http://127.0.0.1:2379".to_string(),
    }
}

/// `/etc/environment` with `settings` (name, value) replacing earlier lines of those names, other
/// lines kept.
pub(crate) fn environment_with(existing: &str, settings: &[(&str, String)]) -> String {
    let mut out: String = existing
        .lines()
        .filter(|l| {
            !settings
                .iter()
                .any(|(name, _)| l.strip_prefix(name).is_some_and(|r| r.starts_with('=')))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    for (name, value) in settings {
        out.push_str(&format!("{name}={value}\n"));
    }
    out
}

/// Sets `settings` in the machine's `/etc/environment`.
pub(crate) fn set_environment(fs: &Root, settings: &[(&str, String)]) -> Result<(), String> {
    let existing = fs
        .read(ENVIRONMENT)?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    fs.write(
        ENVIRONMENT,
        environment_with(&existing, settings).as_bytes(),
        Meta::ROOT_FILE,
        LastLink::Follow,
    )
    .map(|_| ())
}

/// The unit that writes a document's `$private_ipv4`/`$public_ipv4` in (see `addresses.rs`).
pub(crate) const ADDRESSES_UNIT: &str = "kiln-config-addresses.service";
/// The unit that runs the user-data's scripts.
pub(crate) const SCRIPTS_UNIT: &str = "kiln-user-data.service";

/// A drop-in that starts `unit` only after [`ADDRESSES_UNIT`] wrote its addresses in.
pub(crate) fn order_after_addresses(fs: &Root, unit: &str) -> Result<(), String> {
    drop_in(
        fs,
        unit,
        "10-kiln-addresses.conf",
        &format!("# Written by kiln-config: the cloud-config of {unit} says $private_ipv4 or $public_ipv4.\n[Unit]\nWants={ADDRESSES_UNIT}\nAfter={ADDRESSES_UNIT}\n"),
    )
}

/// A drop-in that has `unit` (ordered after network-online.target in /usr) pull in the wait for
/// the network, on the machines that need it.
pub(crate) fn want_network(fs: &Root, unit: &str) -> Result<(), String> {
    drop_in(
        fs,
        unit,
        "10-kiln-network.conf",
        "# Written by kiln-config at first boot: this machine's user-data needs the network.\n[Unit]\nWants=network-online.target\n",
    )
}

fn drop_in(fs: &Root, unit: &str, name: &str, text: &str) -> Result<(), String> {
    fs.write(
        &format!("/etc/systemd/system/{unit}.d/{name}"),
        text.as_bytes(),
        Meta::ROOT_FILE,
        LastLink::Replace,
    )
    .map(|_| ())
}

/// The etcd step: environment file, `etcdctl` defaults, data directory, and enabling.
pub(crate) fn apply_etcd(fs: &Root, etcd: &Etcd, notes: &mut Vec<String>) -> Result<(), String> {
    fs.write(
        ETCD_ENV_FILE,
        etcd_env(etcd).as_bytes(),
        Meta::ROOT_FILE,
        LastLink::Follow,
    )?;
    set_environment(
        fs,
        &[
            ("ETCDCTL_API", "3".into()),
            ("ETCDCTL_ENDPOINTS", etcdctl_endpoints(etcd)),
        ],
    )?;
    let dir = UnitDir {
        fs,
        inner: "/etc/systemd/system",
        outer: "/etc/systemd/system",
    };
    if etcd.proxy {
        notes.push(format!("etcd proxy: {ETCD_GATEWAY_UNIT} to the cluster's members; no member on this machine (etcd.service not enabled)"));
        return match find_unit(fs, ETCD_GATEWAY_UNIT) {
            Some((path, content)) => enable(&dir, ETCD_GATEWAY_UNIT, &path, &content, notes),
            None => Err(format!(
                "{ETCD_GATEWAY_UNIT} is not in the image; this image cannot be an etcd proxy"
            )),
        };
    }
    make_data_dir(fs, etcd, notes)?;
    fs.write(
        ETCD_DROP_IN,
        ETCD_DROP_IN_TEXT.as_bytes(),
        Meta::ROOT_FILE,
        LastLink::Replace,
    )?;
    match find_unit(fs, "etcd.service") {
        Some((path, content)) => enable(&dir, "etcd.service", &path, &content, notes),
        None => {
            notes.push(
                "etcd.service is not in the image; linked for multi-user.target anyway".into(),
            );
            fs.symlink(
                "/etc/systemd/system/multi-user.target.wants/etcd.service",
                "/usr/lib/systemd/system/etcd.service",
            )
        }
    }
}

/// Debian's postinst makes `/var/lib/etcd` for the `etcd` user; Kiln runs no maintainer
/// scripts, so the data directory is made here when the image has that user.
fn make_data_dir(fs: &Root, etcd: &Etcd, notes: &mut Vec<String>) -> Result<(), String> {
    let dir = etcd.get("data-dir").unwrap_or(ETCD_DEFAULT_DATA_DIR);
    let accounts = Accounts::load(fs)?;
    match accounts.uid_gid_of("etcd") {
        Some((uid, gid)) => {
            let meta = Meta {
                mode: 0o700,
                uid,
                gid,
            };
            let host = fs.mkdir_all(dir, meta)?;
            fs.set_meta(&host, meta)
        }
        None => {
            notes.push(format!("no `etcd` user in /etc/passwd: {dir} not created (the image must provide the user)"));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_section() {
        let unit = "[Unit]\nWantedBy=ignored.target\n[Install]\nWantedBy=a.target \\\n  b.target\nRequiredBy=c.target\nAlias=x.service\nWantedBy=\nWantedBy=d.target\n";
        let i = parse_install(unit);
        assert_eq!(i.wanted_by, ["d.target"]);
        assert_eq!(i.required_by, ["c.target"]);
        assert_eq!(i.alias, ["x.service"]);
    }

    #[test]
    fn templates() {
        assert_eq!(
            template_of("getty@tty1.service").as_deref(),
            Some("getty@.service")
        );
        assert_eq!(template_of("etcd.service"), None);
    }

    #[test]
    fn env_values_are_quoted_when_needed() {
        assert_eq!(
            env_quote("http://10.0.0.1:2380,b=http://x:2380"),
            "http://10.0.0.1:2380,b=http://x:2380"
        );
        assert_eq!(env_quote("a b$c\"d"), "\"a b\\$c\\\"d\"");
        assert_eq!(env_quote(""), "\"\"");
    }

    #[test]
    fn environment_lines_are_replaced() {
        let e = environment_with(
            "PATH=/usr/bin\nETCDCTL_API=2\nETCDCTL_API_X=1\n",
            &[
                ("ETCDCTL_API", "3".into()),
                ("ETCDCTL_ENDPOINTS", "http://a:2379".into()),
            ],
        );
        assert_eq!(
            e,
            "PATH=/usr/bin\nETCDCTL_API_X=1\nETCDCTL_API=3\nETCDCTL_ENDPOINTS=http://a:2379\n"
        );
    }
}
