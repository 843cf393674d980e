//! Users and groups: `/etc/passwd`, `/etc/group`, `/etc/shadow` (and `/etc/gshadow` when the
//! image has one) edited as text, home directories, and `authorized_keys`.
//!
//! No `useradd`: the init has no shadow-utils, and editing the four files is what useradd does.
//! Existing lines are kept byte for byte; users that exist are not recreated, so applying the
//! same document twice changes nothing.

use crate::fsroot::{LastLink, Meta, Root};
use crate::model::{CloudConfig, User};
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// CoreOS's `core` user; the image's sysusers entry uses the same numbers.
pub const CORE_UID: u32 = 500;
const CORE_GECOS: &str = "Kiln Admin";
/// The primary group of a user made with `no_user_group` (useradd's GROUP default on Debian).
const USERS_GROUP: &str = "users";
const USERS_GID: u32 = 100;
/// First uid/gid for ordinary users, and the system range below it, as Debian's login.defs.
const FIRST_UID: u32 = 1000;
const LAST_UID: u32 = 59999;
const FIRST_SYSTEM_ID: u32 = 100;
const LAST_SYSTEM_ID: u32 = 999;

/// One colon-separated database file, lines kept as they were.
#[derive(Clone, Debug, Default)]
pub(crate) struct Table {
    lines: Vec<String>,
    changed: bool,
}

impl Table {
    pub fn parse(text: &str) -> Table {
        Table {
            lines: text.lines().map(str::to_string).collect(),
            changed: false,
        }
    }

    pub fn render(&self) -> String {
        self.lines.iter().map(|l| format!("{l}\n")).collect()
    }

    fn fields(line: &str) -> Vec<&str> {
        line.split(':').collect()
    }

    /// The fields of the entry called `name`.
    pub fn get(&self, name: &str) -> Option<Vec<String>> {
        self.index(name).map(|i| {
            Self::fields(&self.lines[i])
                .into_iter()
                .map(str::to_string)
                .collect()
        })
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.lines
            .iter()
            .position(|l| l.split(':').next() == Some(name))
    }

    /// Numbers in field 2 (uid or gid) already taken.
    pub fn ids(&self) -> BTreeSet<u32> {
        self.lines
            .iter()
            .filter_map(|l| Self::fields(l).get(2).and_then(|f| f.parse().ok()))
            .collect()
    }

    pub fn push(&mut self, fields: &[&str]) {
        self.lines.push(fields.join(":"));
        self.changed = true;
    }

    /// Sets field `n` of entry `name`, padding missing fields.
    pub fn set_field(&mut self, name: &str, n: usize, value: &str) {
        let Some(i) = self.index(name) else { return };
        let mut f: Vec<String> = Self::fields(&self.lines[i])
            .into_iter()
            .map(str::to_string)
            .collect();
        while f.len() <= n {
            f.push(String::new());
        }
        if f[n] != value {
            f[n] = value.to_string();
            self.lines[i] = f.join(":");
            self.changed = true;
        }
    }

    /// Adds `member` to the comma list in field `n` of group `name`.
    pub fn add_member(&mut self, name: &str, n: usize, member: &str) {
        let Some(f) = self.get(name) else { return };
        let current = f.get(n).cloned().unwrap_or_default();
        let mut members: Vec<&str> = current.split(',').filter(|m| !m.is_empty()).collect();
        if !members.contains(&member) {
            members.push(member);
            self.set_field(name, n, &members.join(","));
        }
    }
}

/// The four account files of a root.
pub(crate) struct Accounts {
    pub passwd: Table,
    pub group: Table,
    pub shadow: Table,
    /// `None` when the image has no `/etc/gshadow`.
    pub gshadow: Option<Table>,
}

impl Accounts {
    pub fn load(fs: &Root) -> Result<Accounts, String> {
        let read = |p: &str| -> Result<Option<Table>, String> {
            Ok(fs
                .read(p)?
                .map(|b| Table::parse(&String::from_utf8_lossy(&b))))
        };
        Ok(Accounts {
            passwd: read("/etc/passwd")?.unwrap_or_default(),
            group: read("/etc/group")?.unwrap_or_default(),
            shadow: read("/etc/shadow")?.unwrap_or_default(),
            gshadow: read("/etc/gshadow")?,
        })
    }

    /// Writes back the files that changed, keeping each file's mode and owner (new ones:
    /// passwd/group 0644, shadow/gshadow 0640 root:shadow as on Debian).
    pub fn save(&self, fs: &Root) -> Result<(), String> {
        let shadow_gid = self.gid_of("shadow").unwrap_or(0);
        let secret = Meta {
            mode: 0o640,
            uid: 0,
            gid: shadow_gid,
        };
        let files = [
            ("/etc/passwd", Some(&self.passwd), Meta::ROOT_FILE),
            ("/etc/group", Some(&self.group), Meta::ROOT_FILE),
            ("/etc/shadow", Some(&self.shadow), secret),
            ("/etc/gshadow", self.gshadow.as_ref(), secret),
        ];
        for (path, table, default) in files {
            if let Some(t) = table.filter(|t| t.changed) {
                let meta = fs.meta_of(path).unwrap_or(default);
                fs.write(path, t.render().as_bytes(), meta, LastLink::Follow)?;
            }
        }
        Ok(())
    }

    pub fn uid_gid_of(&self, user: &str) -> Option<(u32, u32)> {
        let f = self.passwd.get(user)?;
        Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
    }

    pub fn gid_of(&self, group: &str) -> Option<u32> {
        self.group.get(group)?.get(2)?.parse().ok()
    }

    fn free_id(taken: &BTreeSet<u32>, system: bool) -> Option<u32> {
        if system {
            (FIRST_SYSTEM_ID..=LAST_SYSTEM_ID)
                .rev()
                .find(|i| !taken.contains(i))
        } else {
            (FIRST_UID..=LAST_UID).find(|i| !taken.contains(i))
        }
    }

    /// Creates group `name` unless it exists, preferring gid `want`. Returns its gid.
    fn ensure_group(&mut self, name: &str, want: Option<u32>, system: bool) -> Result<u32, String> {
        if let Some(gid) = self.gid_of(name) {
            return Ok(gid);
        }
        let taken = self.group.ids();
        let gid = match want.filter(|g| !taken.contains(g)) {
            Some(g) => g,
            None => Self::free_id(&taken, system)
                .ok_or_else(|| format!("no free gid for group {name}"))?,
        };
        self.group.push(&[name, "x", &gid.to_string(), ""]);
        if let Some(gs) = &mut self.gshadow {
            gs.push(&[name, "!", "", ""]);
        }
        Ok(gid)
    }

    /// Adds the user if absent and makes the rest of `user` true (groups, password).
    /// Returns what the home-directory step needs.
    pub fn ensure_user(&mut self, user: &User, notes: &mut Vec<String>) -> Result<Home, String> {
        let name = user.name.as_str();
        if self.passwd.get(name).is_none() {
            self.add_user(user)?;
        }
        for g in &user.groups {
            if self.gid_of(g).is_none() {
                self.ensure_group(g, None, true)?;
                notes.push(format!("created group {g} for {name}"));
            }
            self.group.add_member(g, 3, name);
            if let Some(gs) = &mut self.gshadow {
                gs.add_member(g, 3, name);
            }
        }
        if self.shadow.get(name).is_none() {
            self.shadow.push(&[name, "*", "", "", "", "", "", "", ""]);
        }
        if let Some(hash) = &user.passwd {
            self.shadow.set_field(name, 1, hash);
        }
        let f = self
            .passwd
            .get(name)
            .ok_or_else(|| format!("user {name} vanished"))?;
        let (uid, gid) = self
            .uid_gid_of(name)
            .ok_or_else(|| format!("/etc/passwd entry of {name} has no numeric uid/gid"))?;
        Ok(Home {
            user: name.to_string(),
            uid,
            gid,
            dir: f.get(5).cloned().unwrap_or_default(),
        })
    }

    fn add_user(&mut self, user: &User) -> Result<(), String> {
        let name = user.name.as_str();
        let is_core = name == "core";
        let taken = self.passwd.ids();
        let uid = if is_core && !taken.contains(&CORE_UID) {
            CORE_UID
        } else {
            Self::free_id(&taken, user.system)
                .ok_or_else(|| format!("no free uid for user {name}"))?
        };
        // A private group named like the user, as Debian's useradd makes, unless one is named
        // or `no_user_group` asks for useradd's `--no-user-group`: then `users` (gid 100).
        let (group_name, want_gid) = match (&user.primary_group, user.no_user_group) {
            (Some(g), _) => (g.as_str(), Some(uid)),
            (None, true) => (USERS_GROUP, Some(USERS_GID)),
            (None, false) => (name, Some(uid)),
        };
        let gid = self.ensure_group(group_name, want_gid, user.system)?;
        let default_gecos = if is_core { CORE_GECOS } else { "" };
        let home = user
            .homedir
            .clone()
            .unwrap_or_else(|| format!("/home/{name}"));
        let shell = user.shell.as_deref().unwrap_or("/bin/bash");
        let gecos = user.gecos.as_deref().unwrap_or(default_gecos);
        self.passwd.push(&[
            name,
            "x",
            &uid.to_string(),
            &gid.to_string(),
            gecos,
            &home,
            shell,
        ]);
        Ok(())
    }
}

/// Where a user's files go.
pub(crate) struct Home {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub dir: String,
}

/// The users to make: those of `users:`, plus `core` when top-level keys are given (merged
/// into a `core` entry of `users:` if there is one).
pub(crate) fn wanted_users(cfg: &CloudConfig) -> Vec<User> {
    let mut users = cfg.users.clone();
    if cfg.ssh_authorized_keys.is_empty() {
        return users;
    }
    match users.iter_mut().find(|u| u.name == "core") {
        Some(core) => {
            for k in &cfg.ssh_authorized_keys {
                if !core.ssh_authorized_keys.contains(k) {
                    core.ssh_authorized_keys.push(k.clone());
                }
            }
        }
        None => users.insert(
            0,
            User {
                name: "core".into(),
                ssh_authorized_keys: cfg.ssh_authorized_keys.clone(),
                ..User::default()
            },
        ),
    }
    users
}

/// Creates the home directory (from `/etc/skel`) unless it exists or the user asked not to.
pub(crate) fn make_home(
    fs: &Root,
    home: &Home,
    user: &User,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    if user.no_create_home || home.dir.is_empty() || home.dir == "/" || fs.exists(&home.dir) {
        return Ok(());
    }
    let meta = Meta {
        mode: 0o755,
        uid: home.uid,
        gid: home.gid,
    };
    let host = fs.mkdir_all(&home.dir, meta)?;
    let skel = fs.resolve("/etc/skel", LastLink::Follow)?;
    if skel.is_dir() {
        copy_skel(fs, &skel, &host, home)?;
    }
    notes.push(format!("created {} for {}", home.dir, home.user));
    Ok(())
}

/// Copies `/etc/skel` (files and directories; links are not followed) owned by the user.
fn copy_skel(fs: &Root, from: &Path, to: &Path, home: &Home) -> Result<(), String> {
    let entries = fs::read_dir(from).map_err(|e| crate::fsroot::err("reading", from, e))?;
    let mut names: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let (src, dst) = (from.join(&name), to.join(&name));
        let Ok(m) = fs::symlink_metadata(&src) else {
            continue;
        };
        let meta = Meta {
            mode: m.mode() & 0o7777,
            uid: home.uid,
            gid: home.gid,
        };
        if m.is_dir() {
            fs::create_dir_all(&dst).map_err(|e| crate::fsroot::err("creating", &dst, e))?;
            fs.set_meta(&dst, meta)?;
            copy_skel(fs, &src, &dst, home)?;
        } else if m.is_file() && !dst.exists() {
            fs::copy(&src, &dst).map_err(|e| crate::fsroot::err("copying to", &dst, e))?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode))
                .map_err(|e| crate::fsroot::err("chmod", &dst, e))?;
            fs.set_meta(&dst, meta)?;
        }
    }
    Ok(())
}

/// Adds `keys` to `<home>/.ssh/authorized_keys` (0700 / 0600, the user's), keeping keys that
/// are already there.
pub(crate) fn write_keys(fs: &Root, home: &Home, keys: &[String]) -> Result<(), String> {
    if keys.is_empty() {
        return Ok(());
    }
    if !fs.exists(&home.dir) {
        return Err(format!(
            "{} has no home directory {} for its SSH keys",
            home.user, home.dir
        ));
    }
    let ssh = format!("{}/.ssh", home.dir.trim_end_matches('/'));
    let dir_meta = Meta {
        mode: 0o700,
        uid: home.uid,
        gid: home.gid,
    };
    let dir = fs.mkdir_all(&ssh, dir_meta)?;
    fs.set_meta(&dir, dir_meta)?;
    let path = format!("{ssh}/authorized_keys");
    let existing = fs
        .read(&path)?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let mut lines: Vec<String> = existing.lines().map(str::to_string).collect();
    for k in keys {
        if !lines.iter().any(|l| l == k) {
            lines.push(k.clone());
        }
    }
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    fs.write(
        &path,
        text.as_bytes(),
        Meta {
            mode: 0o600,
            uid: home.uid,
            gid: home.gid,
        },
        LastLink::Replace,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_edits_keep_other_lines() {
        let mut t = Table::parse("root:x:0:\n# comment\nsudo:x:27:alice\n");
        t.add_member("sudo", 3, "bob");
        t.add_member("sudo", 3, "bob");
        t.add_member("root", 3, "core");
        assert_eq!(
            t.render(),
            "root:x:0:core\n# comment\nsudo:x:27:alice,bob\n"
        );
        assert_eq!(t.ids(), [0, 27].into());
    }

    #[test]
    fn ids_avoid_existing_ones() {
        let mut a = Accounts {
            passwd: Table::parse("root:x:0:0::/root:/bin/sh\nold:x:1000:1000::/home/old:/bin/sh\n"),
            group: Table::parse("root:x:0:\nold:x:1000:\nx:x:1001:\n"),
            shadow: Table::default(),
            gshadow: None,
        };
        let mut notes = Vec::new();
        let h = a
            .ensure_user(
                &User {
                    name: "new".into(),
                    ..User::default()
                },
                &mut notes,
            )
            .unwrap();
        // uid 1001 is free in passwd, gid 1001 is taken in group: the group gets the next one.
        assert_eq!((h.uid, h.gid), (1001, 1002));
        let s = a
            .ensure_user(
                &User {
                    name: "svc".into(),
                    system: true,
                    ..User::default()
                },
                &mut notes,
            )
            .unwrap();
        assert_eq!((s.uid, s.gid), (999, 999));
    }
}
