//! The rootfs stage: what dpkg and the packages' maintainer scripts would have done that matters
//! for an immutable image, done on the tree instead — merged `/usr`, the default `/etc` shipped in
//! `/usr`, users and groups, alternatives, enabled units, the default target, `os-release`.
//!
//! Kiln never runs maintainer scripts: they assume a mutable system and root. Each step here says
//! which script's job it takes over.

use crate::tree::{Content, Entry, Kind, Meta, Tree, TreeError, TreePath};

/// Where the default `/etc` lives inside `/usr`; the init copies what is missing into ROOT's
/// `/etc` at boot, so an update can bring new defaults without touching what the operator changed.
pub const FACTORY_ETC: &str = kiln_contract::paths::under(kiln_contract::paths::FACTORY_ETC);

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("{path}: {problem}")]
    Content { path: String, problem: String },
    #[error("unit {unit} cannot be enabled: {problem}")]
    Unit { unit: String, problem: String },
    #[error("no kernel found: the tree has no /boot/vmlinuz-* with a matching /usr/lib/modules/<version> (is linux-image-amd64 in packages.include?)")]
    NoKernel,
    #[error("several kernels found ({0}): keep one linux-image package in the image")]
    SeveralKernels(String),
}

fn dir_meta(mtime: i64) -> Meta {
    Meta::root(0o755, mtime)
}

fn symlink(target: &str, mtime: i64) -> Entry {
    Entry::new(
        Kind::Symlink(target.as_bytes().to_vec()),
        Meta::root(0o777, mtime),
    )
}

fn file(content: impl Into<Vec<u8>>, mode: u16, mtime: i64) -> Entry {
    Entry::new(Kind::File(Content::bytes(content)), Meta::root(mode, mtime))
}

fn text_of(tree: &Tree, path: &str) -> Result<Option<String>, RootfsError> {
    let Some(entry) = tree.get(path) else {
        return Ok(None);
    };
    let Kind::File(content) = &entry.kind else {
        return Err(RootfsError::Content {
            path: path.into(),
            problem: "is not a regular file".into(),
        });
    };
    let bytes = content.read_all().map_err(|e| RootfsError::Content {
        path: path.into(),
        problem: e.to_string(),
    })?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| RootfsError::Content {
            path: path.into(),
            problem: "is not UTF-8 text".into(),
        })
}

/// Merged `/usr`: the top-level `bin`, `sbin`, `lib`, `lib64` are symlinks into `/usr`
/// (the packages' files were already placed under `/usr` when they were extracted).
pub fn merged_usr_links(tree: &mut Tree, mtime: i64) -> Result<(), RootfsError> {
    for dir in ["bin", "sbin", "lib", "lib64"] {
        tree.create_dirs(&TreePath::new(format!("usr/{dir}"))?, &dir_meta(mtime))?;
        tree.insert(dir, symlink(&format!("usr/{dir}"), mtime))?;
    }
    Ok(())
}

/// Moves the packages' `/etc` into [`FACTORY_ETC`] and drops the other top-level directories that
/// belong to a running system (`/var`, `/run`, `/tmp`, ...): ROOT starts empty and systemd's
/// tmpfiles and sysusers create what the system needs. Returns the paths that were dropped.
pub fn move_etc_to_factory(tree: &mut Tree, mtime: i64) -> Result<Vec<String>, RootfsError> {
    let etc = TreePath::new("etc")?;
    if let Some(sub) = tree.subtree(&etc) {
        tree.create_dirs(&TreePath::new(FACTORY_ETC)?, &dir_meta(mtime))?;
        let base = TreePath::new(FACTORY_ETC)?;
        for (path, entry) in sub.iter().filter(|(p, _)| !p.is_root()) {
            let mut entry = entry.clone();
            if let Kind::HardLink(target) = &entry.kind {
                entry.kind = Kind::HardLink(TreePath::new(
                    [base.as_bytes(), b"/", target.as_bytes()].concat(),
                )?);
            }
            tree.insert([base.as_bytes(), b"/", path.as_bytes()].concat(), entry)?;
        }
    }
    let mut dropped = Vec::new();
    let top: Vec<TreePath> = tree
        .children(&TreePath::root())
        .map(|(p, _)| p.clone())
        .collect();
    for path in top {
        let keep = matches!(
            path.as_bytes(),
            b"usr" | b"boot" | b"bin" | b"sbin" | b"lib" | b"lib64"
        );
        if !keep {
            dropped.push(path.display());
            tree.remove(path.as_bytes());
        }
    }
    Ok(dropped)
}

/// Users and groups: `base-passwd`'s preinst copies its `*.master` files to `/etc`; Kiln puts
/// them into the factory `/etc`. The users that other packages' postinst scripts add with
/// `adduser` are declared in `overlays/` as sysusers.d entries, which systemd creates at boot.
pub fn users_and_groups(tree: &mut Tree, mtime: i64) -> Result<(), RootfsError> {
    let passwd = text_of(tree, "usr/share/base-passwd/passwd.master")?;
    let group = text_of(tree, "usr/share/base-passwd/group.master")?;
    let (Some(passwd), Some(group)) = (passwd, group) else {
        return Err(RootfsError::Content {
            path: "/usr/share/base-passwd/passwd.master".into(),
            problem: "missing: add base-passwd to packages.include".into(),
        });
    };
    // Shadow entries: every account locked ("*"); keys, not passwords, open them.
    let shadow: String = passwd
        .lines()
        .filter_map(|l| l.split(':').next())
        .map(|user| format!("{user}:*:0:0:99999:7:::\n"))
        .collect();
    let gshadow: String = group
        .lines()
        .filter_map(|l| l.split(':').next())
        .map(|g| format!("{g}:*::\n"))
        .collect();
    let shadow_gid = group
        .lines()
        .find_map(|l| {
            l.strip_prefix("shadow:x:")
                .and_then(|r| r.split(':').next()?.parse().ok())
        })
        .unwrap_or(42);
    let etc = |name: &str| format!("{FACTORY_ETC}/{name}");
    tree.insert_with_parents(etc("passwd"), file(passwd, 0o644, mtime), &dir_meta(mtime))?;
    tree.insert(etc("group"), file(group, 0o644, mtime))?;
    for (name, content) in [("shadow", shadow), ("gshadow", gshadow)] {
        let mut entry = file(content, 0o640, mtime);
        entry.meta.gid = shadow_gid;
        tree.insert(etc(name), entry)?;
    }
    Ok(())
}

/// Removes each of `paths` and everything below it, except the packages' licence notices
/// (`usr/share/doc/<package>/copyright`), which stay with the binaries. Returns the entries
/// removed.
pub fn drop_paths(tree: &mut Tree, paths: &[String]) -> Result<usize, RootfsError> {
    let before = tree.len();
    for path in paths {
        let dir = TreePath::new(path)?;
        let doomed: Vec<TreePath> = std::iter::once(dir.clone())
            .chain(tree.descendants(&dir).map(|(p, _)| p.clone()))
            .filter(|p| tree.get_at(p).is_some())
            .collect();
        for p in doomed.iter().rev() {
            let keep =
                is_licence_notice(p) || tree.descendants(p).any(|(d, _)| is_licence_notice(d));
            if !keep {
                tree.remove(p.as_bytes());
            }
        }
    }
    Ok(before - tree.len())
}

fn is_licence_notice(path: &TreePath) -> bool {
    let text = path.as_bytes();
    text.starts_with(b"usr/share/doc/") && path.name() == b"copyright"
}

/// `update-alternatives` links that the default packages' postinst scripts would have made.
/// Each link points to the first candidate the tree has; a link with no candidate is skipped.
pub const ALTERNATIVES: &[(&str, &[&str])] = &[
    (
        "usr/sbin/iptables",
        &["/usr/sbin/iptables-nft", "/usr/sbin/iptables-legacy"],
    ),
    (
        "usr/sbin/iptables-save",
        &[
            "/usr/sbin/iptables-nft-save",
            "/usr/sbin/iptables-legacy-save",
        ],
    ),
    (
        "usr/sbin/iptables-restore",
        &[
            "/usr/sbin/iptables-nft-restore",
            "/usr/sbin/iptables-legacy-restore",
        ],
    ),
    (
        "usr/sbin/ip6tables",
        &["/usr/sbin/ip6tables-nft", "/usr/sbin/ip6tables-legacy"],
    ),
    (
        "usr/sbin/ip6tables-save",
        &[
            "/usr/sbin/ip6tables-nft-save",
            "/usr/sbin/ip6tables-legacy-save",
        ],
    ),
    (
        "usr/sbin/ip6tables-restore",
        &[
            "/usr/sbin/ip6tables-nft-restore",
            "/usr/sbin/ip6tables-legacy-restore",
        ],
    ),
    // /bin/sh: dash's preinst makes it (Debian ships it in no package's data); systemd units,
    // docker and scripts need it. bash when dash is not in the image.
    ("usr/bin/sh", &["/usr/bin/dash", "/usr/bin/bash"]),
    ("usr/bin/awk", &["/usr/bin/mawk", "/usr/bin/gawk"]),
    ("usr/bin/which", &["/usr/bin/which.debianutils"]),
    ("usr/bin/pager", &["/usr/bin/less", "/usr/bin/more"]),
];

/// Makes the [`ALTERNATIVES`] links; returns the links made.
pub fn alternatives(tree: &mut Tree, mtime: i64) -> Result<Vec<String>, RootfsError> {
    let mut made = Vec::new();
    for (link, candidates) in ALTERNATIVES {
        if tree.get(link).is_some() {
            continue;
        }
        if let Some(target) = candidates
            .iter()
            .find(|c| tree.get(c.trim_start_matches('/')).is_some())
        {
            tree.insert(link, symlink(target, mtime))?;
            made.push(format!("/{link} -> {target}"));
        }
    }
    Ok(made)
}

/// Configuration files that postinst scripts generate from a template in `/usr` instead of
/// shipping them as conffiles: (template, path under `/etc`).
pub const GENERATED_CONFIGS: &[(&str, &str)] =
    &[("usr/share/openssh/sshd_config", "ssh/sshd_config")];

/// Copies the [`GENERATED_CONFIGS`] templates into the factory `/etc`; returns the files made.
pub fn generated_configs(tree: &mut Tree, mtime: i64) -> Result<Vec<String>, RootfsError> {
    let mut made = Vec::new();
    for (template, dest) in GENERATED_CONFIGS {
        let Some(entry) = tree.get(template).cloned() else {
            continue;
        };
        let dest = format!("{FACTORY_ETC}/{dest}");
        if tree.get(&dest).is_none() {
            tree.insert_with_parents(&dest, entry, &dir_meta(mtime))?;
            made.push(format!("/{dest}"));
        }
    }
    Ok(made)
}

/// The PAM stacks `pam-auth-update` (libpam-runtime's postinst) writes: `/etc/pam.d/common-*`
/// from the templates in `/usr/share/pam` and the profiles in `/usr/share/pam-configs` that say
/// `Default: yes`. Without them every PAM service (sshd, login, sudo) refuses everyone.
pub fn pam_auth_update(tree: &mut Tree, mtime: i64) -> Result<Vec<String>, RootfsError> {
    let profiles_dir = TreePath::new("usr/share/pam-configs")?;
    let names: Vec<String> = tree
        .children(&profiles_dir)
        .map(|(p, _)| String::from_utf8_lossy(p.name()).into_owned())
        .collect();
    let mut profiles = Vec::new();
    for name in names {
        let path = format!("usr/share/pam-configs/{name}");
        let text = text_of(tree, &path)?.unwrap_or_default();
        let profile = PamProfile::parse(&text);
        if profile.field("Default").as_deref() == Some("yes") {
            profiles.push(profile);
        }
    }
    // Highest priority first; pam-auth-update breaks ties by name, which is our read order.
    profiles.sort_by_key(|p| {
        std::cmp::Reverse(
            p.field("Priority")
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    let mut made = Vec::new();
    for (file, kind, interactive) in [
        ("common-auth", "Auth", true),
        ("common-account", "Account", true),
        ("common-password", "Password", true),
        ("common-session", "Session", true),
        ("common-session-noninteractive", "Session", false),
    ] {
        let Some(template) = text_of(tree, &format!("usr/share/pam/{file}"))? else {
            continue;
        };
        let stack: Vec<&PamProfile> = profiles
            .iter()
            .filter(|p| {
                interactive || p.field("Session-Interactive-Only").as_deref() != Some("yes")
            })
            .collect();
        let var = kind.to_lowercase();
        let text = template
            .replace(
                &format!("${var}_primary"),
                &pam_block(&stack, kind, "Primary"),
            )
            .replace(
                &format!("${var}_additional"),
                &pam_block(&stack, kind, "Additional"),
            );
        tree.insert_with_parents(
            format!("{FACTORY_ETC}/pam.d/{file}"),
            file_entry(text, mtime),
            &dir_meta(mtime),
        )?;
        made.push(format!("/etc/pam.d/{file}"));
    }
    Ok(made)
}

fn file_entry(text: String, mtime: i64) -> Entry {
    file(text.into_bytes(), 0o644, mtime)
}

/// The lines of one block of a stack. In the primary block the first module takes its
/// `-Initial` variant, and `end` in a jump becomes the count of lines to the block's end; an
/// empty primary block is one `pam_permit` that jumps over the fallback `pam_deny`.
fn pam_block(stack: &[&PamProfile], kind: &str, block: &str) -> String {
    let type_key = format!("{kind}-Type");
    let members: Vec<&&PamProfile> = stack
        .iter()
        .filter(|p| p.field(&type_key).as_deref() == Some(block))
        .collect();
    let module = kind.to_lowercase();
    if members.is_empty() {
        return if block == "Primary" {
            format!("{module}\t[default=1]\t\t\tpam_permit.so")
        } else {
            String::new()
        };
    }
    let mut lines = Vec::new();
    for (i, p) in members.iter().enumerate() {
        let initial = p.field(&format!("{kind}-Initial"));
        let body = if i == 0 {
            initial.or_else(|| p.field(kind))
        } else {
            p.field(kind)
        };
        for line in body
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let line = if block == "Primary" {
                line.replace("=end", &format!("={}", members.len() - i))
            } else {
                line.to_owned()
            };
            lines.push(format!("{module}\t{line}"));
        }
    }
    lines.join("\n")
}

/// A `/usr/share/pam-configs` profile: RFC 822-style fields, continuation lines indented.
struct PamProfile {
    fields: Vec<(String, String)>,
}

impl PamProfile {
    fn parse(text: &str) -> PamProfile {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = fields.last_mut() {
                    value.push('\n');
                    value.push_str(line.trim());
                }
            } else if let Some((key, value)) = line.split_once(':') {
                fields.push((key.trim().to_owned(), value.trim().to_owned()));
            }
        }
        PamProfile { fields }
    }

    fn field(&self, key: &str) -> Option<String> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    }
}

const UNIT_DIR: &str = "usr/lib/systemd/system";

/// The `[Install]` section of a unit file: the keys `systemctl enable` acts on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InstallSection {
    pub wanted_by: Vec<String>,
    pub required_by: Vec<String>,
    pub alias: Vec<String>,
    pub also: Vec<String>,
    pub default_instance: Option<String>,
}

pub fn parse_install_section(unit_text: &str) -> InstallSection {
    let mut install = InstallSection::default();
    let mut in_install = false;
    for line in unit_text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        let Some((key, value)) = line.split_once('=').filter(|_| in_install) else {
            continue;
        };
        let words = value.split_whitespace().map(str::to_owned);
        match key.trim() {
            "WantedBy" => install.wanted_by.extend(words),
            "RequiredBy" => install.required_by.extend(words),
            "Alias" => install.alias.extend(words),
            "Also" => install.also.extend(words),
            "DefaultInstance" => install.default_instance = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    install
}

/// `systemctl enable`, done at build time in `/usr/lib/systemd/system`: the vendor's enablement
/// travels with `/usr` on every update, and an operator still disables a unit with `mask`.
/// (The maintainer scripts would have called `deb-systemd-helper enable`, writing `/etc`.)
pub fn enable_units(tree: &mut Tree, units: &[String], mtime: i64) -> Result<(), RootfsError> {
    let mut pending: Vec<String> = units.to_vec();
    let mut done = std::collections::BTreeSet::new();
    while let Some(unit) = pending.pop() {
        if !done.insert(unit.clone()) {
            continue;
        }
        let (template, instance) = match unit.split_once('@') {
            Some((prefix, rest)) if !rest.starts_with('.') => {
                let suffix = rest.rsplit_once('.').map(|(_, s)| s).unwrap_or("service");
                (format!("{prefix}@.{suffix}"), Some(unit.clone()))
            }
            _ => (unit.clone(), None),
        };
        let path = format!("{UNIT_DIR}/{template}");
        let text = text_of(tree, &path)?.ok_or_else(|| RootfsError::Unit {
            unit: unit.clone(),
            problem: format!("/{path} is not in the image"),
        })?;
        let install = parse_install_section(&text);
        if install.wanted_by.is_empty()
            && install.required_by.is_empty()
            && install.alias.is_empty()
            && install.also.is_empty()
        {
            return Err(RootfsError::Unit {
                unit,
                problem: "its [Install] section is empty".into(),
            });
        }
        let instance = instance.or_else(|| {
            install
                .default_instance
                .as_ref()
                .map(|i| template.replacen("@.", &format!("@{i}."), 1))
        });
        let name = instance.as_deref().unwrap_or(&template);
        for (targets, kind) in [
            (&install.wanted_by, "wants"),
            (&install.required_by, "requires"),
        ] {
            for target in targets {
                let link = format!("{UNIT_DIR}/{target}.{kind}/{name}");
                tree.insert_with_parents(
                    &link,
                    symlink(&format!("../{template}"), mtime),
                    &dir_meta(mtime),
                )?;
            }
        }
        for alias in &install.alias {
            if alias != &template && tree.get(format!("{UNIT_DIR}/{alias}")).is_none() {
                tree.insert(format!("{UNIT_DIR}/{alias}"), symlink(&template, mtime))?;
            }
        }
        pending.extend(install.also.iter().cloned());
    }
    Ok(())
}

/// The target systemd boots into (`default.target`).
pub fn set_default_target(tree: &mut Tree, target: &str, mtime: i64) -> Result<(), RootfsError> {
    if tree.get(format!("{UNIT_DIR}/{target}")).is_none() {
        return Err(RootfsError::Unit {
            unit: target.into(),
            problem: "is not in the image".into(),
        });
    }
    tree.insert(format!("{UNIT_DIR}/default.target"), symlink(target, mtime))?;
    Ok(())
}

/// What `os-release` says about the image.
pub struct OsRelease<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub app_id: &'a str,
    pub channel: &'a str,
}

/// Writes `/usr/lib/os-release` and the factory `/etc/os-release` link to it.
pub fn write_os_release(tree: &mut Tree, os: &OsRelease, mtime: i64) -> Result<(), RootfsError> {
    let pretty = format!("Kiln {}", os.version);
    let text = format!(
        "NAME=\"Kiln\"\nID={id}\nID_LIKE=debian\nVERSION=\"{v}\"\nVERSION_ID={v}\n\
         PRETTY_NAME=\"{pretty}\"\nIMAGE_ID={id}\nIMAGE_VERSION={v}\n\
         KILN_APP_ID={app}\nKILN_CHANNEL={channel}\n",
        id = os.name,
        v = os.version,
        app = os.app_id,
        channel = os.channel,
    );
    tree.insert_with_parents(
        "usr/lib/os-release",
        file(text, 0o644, mtime),
        &dir_meta(mtime),
    )?;
    tree.insert_with_parents(
        format!("{FACTORY_ETC}/os-release"),
        symlink("../usr/lib/os-release", mtime),
        &dir_meta(mtime),
    )?;
    Ok(())
}

/// The kernel the packages installed: its version and `vmlinuz`. `/boot` is removed from the tree
/// (the kernel goes to the ESP, not into `/usr`).
pub fn take_kernel(tree: &mut Tree) -> Result<(String, Content), RootfsError> {
    let boot = TreePath::new("boot")?;
    let kernels: Vec<(String, Content)> = tree
        .children(&boot)
        .filter_map(|(p, e)| {
            let name = String::from_utf8(p.name().to_vec()).ok()?;
            let version = name.strip_prefix("vmlinuz-")?.to_owned();
            match &e.kind {
                Kind::File(c) => Some((version, c.clone())),
                _ => None,
            }
        })
        .filter(|(v, _)| tree.get(format!("usr/lib/modules/{v}")).is_some())
        .collect();
    let kernel = match kernels.len() {
        0 => return Err(RootfsError::NoKernel),
        1 => kernels.into_iter().next().expect("one kernel"),
        _ => {
            let names: Vec<_> = kernels.iter().map(|(v, _)| v.as_str()).collect();
            return Err(RootfsError::SeveralKernels(names.join(", ")));
        }
    };
    tree.remove("boot");
    Ok(kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_with(files: &[(&str, &str)]) -> Tree {
        let mut t = Tree::new(Meta::root(0o755, 0));
        for (path, text) in files {
            t.insert_with_parents(path, file(text.as_bytes().to_vec(), 0o644, 0), &dir_meta(0))
                .unwrap();
        }
        t
    }

    fn link_target(t: &Tree, path: &str) -> String {
        match &t.get(path).unwrap_or_else(|| panic!("{path} missing")).kind {
            Kind::Symlink(target) => String::from_utf8(target.clone()).unwrap(),
            other => panic!("{path} is {other:?}"),
        }
    }

    #[test]
    fn install_sections_are_read_like_systemctl() {
        let unit = "[Unit]\nWantedBy=nope\n[Install]\nWantedBy=multi-user.target sockets.target\nAlias=sshd.service\nAlso=ssh.socket\n";
        let i = parse_install_section(unit);
        assert_eq!(i.wanted_by, ["multi-user.target", "sockets.target"]);
        assert_eq!(i.alias, ["sshd.service"]);
        assert_eq!(i.also, ["ssh.socket"]);
    }

    #[test]
    fn enabling_makes_wants_links_aliases_and_follows_also() {
        let mut t = tree_with(&[
            (
                "usr/lib/systemd/system/ssh.service",
                "[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\nAlso=ssh.socket\n",
            ),
            (
                "usr/lib/systemd/system/ssh.socket",
                "[Install]\nWantedBy=sockets.target\n",
            ),
            (
                "usr/lib/systemd/system/getty@.service",
                "[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n",
            ),
            (
                "usr/lib/systemd/system/static.service",
                "[Service]\nExecStart=/bin/true\n",
            ),
        ]);
        enable_units(&mut t, &["ssh.service".into(), "getty@.service".into()], 0).unwrap();
        assert_eq!(
            link_target(
                &t,
                "usr/lib/systemd/system/multi-user.target.wants/ssh.service"
            ),
            "../ssh.service"
        );
        assert_eq!(
            link_target(&t, "usr/lib/systemd/system/sockets.target.wants/ssh.socket"),
            "../ssh.socket"
        );
        assert_eq!(
            link_target(&t, "usr/lib/systemd/system/sshd.service"),
            "ssh.service"
        );
        assert_eq!(
            link_target(
                &t,
                "usr/lib/systemd/system/getty.target.wants/getty@tty1.service"
            ),
            "../getty@.service"
        );
        let err = enable_units(&mut t, &["static.service".into()], 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("static.service") && err.contains("[Install]"),
            "{err}"
        );
        let err = enable_units(&mut t, &["nope.service".into()], 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope.service") && err.contains("not in the image"),
            "{err}"
        );
    }

    #[test]
    fn etc_moves_into_usr_and_runtime_dirs_are_dropped() {
        let mut t = tree_with(&[
            ("etc/ssh/sshd_config", "Port 22\n"),
            ("var/lib/x", ""),
            ("usr/bin/true", ""),
        ]);
        merged_usr_links(&mut t, 0).unwrap();
        let dropped = move_etc_to_factory(&mut t, 0).unwrap();
        assert_eq!(dropped, ["/etc", "/var"]);
        assert!(t.get("usr/share/kiln/etc/ssh/sshd_config").is_some());
        assert_eq!(link_target(&t, "bin"), "usr/bin");
        assert!(t.get("usr/sbin").unwrap().is_dir());
    }

    #[test]
    fn users_come_from_base_passwd_and_shadow_locks_them() {
        let mut t = tree_with(&[
            (
                "usr/share/base-passwd/passwd.master",
                "root:x:0:0:root:/root:/bin/sh\n",
            ),
            (
                "usr/share/base-passwd/group.master",
                "root:x:0:\nshadow:x:42:\n",
            ),
        ]);
        users_and_groups(&mut t, 0).unwrap();
        let shadow = t.get("usr/share/kiln/etc/shadow").unwrap();
        assert_eq!((shadow.meta.mode, shadow.meta.gid), (0o640, 42));
        assert_eq!(
            text_of(&t, "usr/share/kiln/etc/shadow").unwrap().unwrap(),
            "root:*:0:0:99999:7:::\n"
        );
        let err = users_and_groups(&mut tree_with(&[]), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("base-passwd"), "{err}");
    }

    /// The profiles and templates of bookworm's libpam-runtime (abridged to the lines that
    /// matter); the expected stacks are what pam-auth-update writes for them on Debian 12.
    #[test]
    fn pam_stacks_are_generated_like_pam_auth_update() {
        let unix = "Name: Unix authentication\nDefault: yes\nPriority: 256\nAuth-Type: Primary\nAuth:\n\t[success=end default=ignore]\tpam_unix.so nullok try_first_pass\nAuth-Initial:\n\t[success=end default=ignore]\tpam_unix.so nullok\nAccount-Type: Primary\nAccount:\n\t[success=end new_authtok_reqd=done default=ignore]\tpam_unix.so\nSession-Type: Additional\nSession:\n\trequired\tpam_unix.so\n";
        let mkhomedir = "Name: Create home directory on login\nDefault: no\nPriority: 0\nSession-Type: Additional\nSession:\n\toptional\tpam_mkhomedir.so\n";
        let mut t = tree_with(&[
            ("usr/share/pam-configs/unix", unix),
            ("usr/share/pam-configs/mkhomedir", mkhomedir),
            ("usr/share/pam/common-auth", "# head\n$auth_primary\nauth\trequisite\t\t\tpam_deny.so\nauth\trequired\t\t\tpam_permit.so\n$auth_additional\n"),
            ("usr/share/pam/common-session", "$session_primary\nsession\trequisite\t\t\tpam_deny.so\nsession\trequired\t\t\tpam_permit.so\n$session_additional\n"),
        ]);
        let made = pam_auth_update(&mut t, 0).unwrap();
        assert_eq!(
            made,
            ["/etc/pam.d/common-auth", "/etc/pam.d/common-session"]
        );
        let auth = text_of(&t, "usr/share/kiln/etc/pam.d/common-auth")
            .unwrap()
            .unwrap();
        assert_eq!(
            auth,
            "# head\nauth\t[success=1 default=ignore]\tpam_unix.so nullok\nauth\trequisite\t\t\tpam_deny.so\nauth\trequired\t\t\tpam_permit.so\n\n"
        );
        let session = text_of(&t, "usr/share/kiln/etc/pam.d/common-session")
            .unwrap()
            .unwrap();
        assert_eq!(
            session,
            "session\t[default=1]\t\t\tpam_permit.so\nsession\trequisite\t\t\tpam_deny.so\nsession\trequired\t\t\tpam_permit.so\nsession\trequired\tpam_unix.so\n"
        );
        assert!(
            !session.contains("mkhomedir"),
            "a Default: no profile was used"
        );
    }

    #[test]
    fn dropped_paths_go_but_licence_notices_stay() {
        let mut t = tree_with(&[
            ("usr/share/doc/bash/copyright", "GPL"),
            ("usr/share/doc/bash/changelog.gz", ""),
            ("usr/share/locale/de/LC_MESSAGES/bash.mo", ""),
            ("usr/bin/dnet", ""),
            ("usr/bin/bash", ""),
        ]);
        let removed = drop_paths(
            &mut t,
            &[
                "usr/share/doc".into(),
                "usr/share/locale".into(),
                "usr/bin/dnet".into(),
            ],
        )
        .unwrap();
        assert_eq!(removed, 6);
        assert!(t.get("usr/share/doc/bash/copyright").is_some());
        assert!(t.get("usr/share/doc/bash/changelog.gz").is_none());
        assert!(t.get("usr/share/locale").is_none());
        assert!(t.get("usr/bin/dnet").is_none() && t.get("usr/bin/bash").is_some());
    }

    #[test]
    fn alternatives_point_at_the_first_present_candidate() {
        let mut t = tree_with(&[
            ("usr/sbin/iptables-legacy", ""),
            ("usr/sbin/iptables-nft", ""),
        ]);
        let made = alternatives(&mut t, 0).unwrap();
        assert_eq!(
            link_target(&t, "usr/sbin/iptables"),
            "/usr/sbin/iptables-nft"
        );
        assert_eq!(made.len(), 1);
    }

    #[test]
    fn exactly_one_kernel_is_taken_out_of_boot() {
        let mut t = tree_with(&[
            ("boot/vmlinuz-6.1.0-9-amd64", "kernel"),
            ("usr/lib/modules/6.1.0-9-amd64/modules.order", ""),
        ]);
        let (version, content) = take_kernel(&mut t).unwrap();
        assert_eq!(version, "6.1.0-9-amd64");
        assert_eq!(content.read_all().unwrap(), b"kernel");
        assert!(t.get("boot").is_none());
        assert!(matches!(take_kernel(&mut t), Err(RootfsError::NoKernel)));
    }
}
