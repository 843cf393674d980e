//! Reading a cloud-config document into [`CloudConfig`]: header check, YAML, then a typed
//! reading of the tree that records unknown keys as warnings and reports semantic errors with
//! the line and column of the offending node.

use crate::model::{CloudConfig, Encoding, IdRef, Owner, User, WriteFile};
use crate::read::{
    base64_decode, binary, boolean, list, opt_string, strict_string_list, string, string_list,
    ConfigError, Ctx, ErrorKind, Fields, Warning,
};
use crate::sections;
use crate::tree::{parse_tree, Kind, Node, Pos};
use std::io::Read;

/// The first line every document must have.
pub const HEADER: &str = "#cloud-config";

/// Decoded `write_files` content larger than this is refused: a gzip bomb in a config must
/// not fill the root file system of a machine that is still booting.
const MAX_DECODED: u64 = 64 << 20;

/// A parsed document and what was odd but harmless about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub config: CloudConfig,
    pub warnings: Vec<Warning>,
}

/// Parses a document given as bytes (fw_cfg, the OEM partition): it must be UTF-8.
pub fn parse_bytes(bytes: &[u8]) -> Result<Parsed, ConfigError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text),
        Err(e) => {
            let before = &bytes[..e.valid_up_to()];
            let line = before.iter().filter(|b| **b == b'\n').count() as u64 + 1;
            let column = before.iter().rev().take_while(|b| **b != b'\n').count() as u64 + 1;
            Err(ConfigError::document(
                Pos { line, column },
                ErrorKind::NotUtf8 {
                    offset: e.valid_up_to(),
                },
            ))
        }
    }
}

/// Parses and checks a cloud-config document.
pub fn parse(text: &str) -> Result<Parsed, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    check_header(text)?;
    let root =
        parse_tree(text).map_err(|e| ConfigError::document(e.pos, ErrorKind::Syntax(e.message)))?;
    let mut ctx = Ctx::default();
    tab_only_lines(text, &mut ctx);
    let mut config = read_root(&root, &mut ctx)?;
    config.source = text.to_string();
    let mut warnings = ctx.warnings;
    warnings.sort_by_key(|w| (w.line, w.column));
    Ok(Parsed { config, warnings })
}

fn check_header(text: &str) -> Result<(), ConfigError> {
    let first = text.lines().next().unwrap_or("").trim_end();
    if first == HEADER {
        return Ok(());
    }
    let hint = if first.starts_with("#!") {
        " — it is a script, which Kiln does not run"
    } else if first.starts_with('{') {
        " — it looks like JSON (Ignition?), which Kiln does not read"
    } else {
        ""
    };
    let shown: String = first.chars().take(40).collect();
    Err(ConfigError::document(
        Pos { line: 1, column: 1 },
        ErrorKind::NotCloudConfig {
            first_line: shown,
            hint,
        },
    ))
}

/// A line holding only blanks with a tab among them: go-yaml (coreos-cloudinit) refuses the
/// whole document for it, the YAML library here lets it pass; say so, so that the file works
/// on both.
fn tab_only_lines(text: &str, ctx: &mut Ctx) {
    for (i, line) in text.lines().enumerate() {
        if line.contains('\t') && line.trim().is_empty() {
            let line_no = i as u64 + 1;
            ctx.warn(
                Pos { line: line_no, column: 1 },
                "",
                "this line holds only a tab; YAML does not allow tabs as indentation and coreos-cloudinit refuses the document for it: remove the tab",
            );
        }
    }
}

/// Each top-level key is read on its own: a value of the wrong type is left out with a warning
/// (`Ctx::recover`) and the rest is applied, as coreos-cloudinit does.
fn read_root(root: &Node, ctx: &mut Ctx) -> Result<CloudConfig, ConfigError> {
    let mut f = Fields::new(root, "", ctx)?;
    let mut cfg = CloudConfig::default();
    if let Some(n) = f.take_some("hostname") {
        cfg.hostname = ctx.recover(hostname(n).map(Some))?;
    }
    cfg.ssh_authorized_keys = ctx.recover(ssh_keys(
        f.take("ssh_authorized_keys"),
        "ssh_authorized_keys",
    ))?;
    for (i, n) in ctx
        .recover(list(f.take("users"), "users"))?
        .iter()
        .enumerate()
    {
        let read = user(n, &format!("users[{i}]"), ctx).map(Some);
        cfg.users.extend(ctx.recover(read)?);
    }
    let files = ctx.recover(list(f.take("write_files"), "write_files"))?;
    for (i, n) in files.iter().enumerate() {
        let read = write_file(n, &format!("write_files[{i}]"), ctx);
        cfg.write_files.extend(ctx.recover(read)?);
    }
    cfg.manage_etc_hosts = manage_etc_hosts(&mut f, cfg.hostname.is_some(), ctx)?;
    cfg.kiln = sections::kiln_section(&mut f, ctx)?;
    f.finish(ctx);
    Ok(cfg)
}

/// `manage_etc_hosts: localhost` (the one value coreos-cloudinit knew): true when given.
fn manage_etc_hosts(
    f: &mut Fields<'_>,
    have_hostname: bool,
    ctx: &mut Ctx,
) -> Result<bool, ConfigError> {
    let Some(n) = f.take_some("manage_etc_hosts") else {
        return Ok(false);
    };
    let value = ctx.recover(string(n, "manage_etc_hosts"))?;
    if value != "localhost" {
        return Err(ConfigError::invalid(
            n,
            "manage_etc_hosts",
            format!("{value:?} is not supported; write `manage_etc_hosts: localhost` (the hostname on 127.0.0.1 and ::1) or leave the key out"),
        ));
    }
    if !have_hostname {
        ctx.warn(
            n.place(),
            "manage_etc_hosts",
            "there is no `hostname:` in this document, so /etc/hosts keeps only localhost; add `hostname:`",
        );
    }
    Ok(true)
}

fn hostname(node: &Node) -> Result<String, ConfigError> {
    let name = string(node, "hostname")?;
    // The kernel keeps at most 64 bytes; systemd refuses anything but these characters.
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if name.len() > 64 || !name.split('.').all(label_ok) {
        return Err(ConfigError::invalid(
            node,
            "hostname",
            format!("{name:?} is not a valid host name (letters, digits and `-` in dot-separated labels, at most 64 characters)"),
        ));
    }
    Ok(name)
}

fn ssh_keys(node: Option<&Node>, path: &str) -> Result<Vec<String>, ConfigError> {
    let keys = strict_string_list(node, path)?;
    // A key with a line break would become two lines of authorized_keys.
    if let (Some(n), Some(bad)) = (node, keys.iter().position(|k| k.trim().contains('\n'))) {
        return Err(ConfigError::invalid(
            n,
            &format!("{path}[{bad}]"),
            "an SSH key must be one line",
        ));
    }
    Ok(keys
        .into_iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect())
}

/// A user or group name as shadow-utils accept it, and that cannot break `/etc/passwd`.
pub(crate) fn valid_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && !name.chars().all(|c| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c) || (c == '$'))
}

fn account_name(node: &Node, path: &str) -> Result<String, ConfigError> {
    let name = string(node, path)?;
    if !valid_account_name(&name) {
        return Err(ConfigError::invalid(
            node,
            path,
            format!("{name:?} is not a valid user or group name (letters, digits, `_`, `-`, `.`; not all digits; at most 32)"),
        ));
    }
    Ok(name)
}

/// A field of an `/etc/passwd` line: no `:` and no line break.
fn passwd_field(node: Option<&Node>, path: &str) -> Result<Option<String>, ConfigError> {
    let value = opt_string(node, path)?;
    if let (Some(v), Some(n)) = (&value, node) {
        if v.contains(':') || v.contains('\n') {
            return Err(ConfigError::invalid(
                n,
                path,
                "must not contain `:` or a line break",
            ));
        }
    }
    Ok(value)
}

fn absolute_path_field(node: Option<&Node>, path: &str) -> Result<Option<String>, ConfigError> {
    let value = passwd_field(node, path)?;
    if let (Some(v), Some(n)) = (&value, node) {
        if !v.starts_with('/') {
            return Err(ConfigError::invalid(
                n,
                path,
                format!("{v:?} must be an absolute path"),
            ));
        }
    }
    Ok(value)
}

fn user(node: &Node, path: &str, ctx: &mut Ctx) -> Result<User, ConfigError> {
    let mut f = Fields::new(node, path, ctx)?;
    let name = match f.take_some("name") {
        Some(n) => account_name(n, &f.path_of("name"))?,
        None => return Err(ConfigError::invalid(node, path, "a user needs a `name`")),
    };
    let groups = groups(f.take("groups"), &f.path_of("groups"))?;
    let passwd = passwd_field(f.take("passwd"), &f.path_of("passwd"))?;
    if let Some(p) = &passwd {
        if !(p.starts_with('$') || p.starts_with('!') || p.starts_with('*')) {
            let pos = f.key_pos("passwd").unwrap_or(node.pos);
            ctx.warn(pos, &f.path_of("passwd"), "does not look like a crypt hash (make one with `mkpasswd -m sha-512`); written to /etc/shadow as is");
        }
    }
    let primary_group = match f.take_some("primary_group") {
        Some(n) => Some(account_name(n, &f.path_of("primary_group"))?),
        None => None,
    };
    let user = User {
        gecos: passwd_field(f.take("gecos"), &f.path_of("gecos"))?,
        groups,
        passwd,
        ssh_authorized_keys: ssh_keys(
            f.take("ssh_authorized_keys"),
            &f.path_of("ssh_authorized_keys"),
        )?,
        primary_group,
        homedir: absolute_path_field(f.take("homedir"), &f.path_of("homedir"))?,
        shell: absolute_path_field(f.take("shell"), &f.path_of("shell"))?,
        no_create_home: boolean(f.take("no_create_home"), &f.path_of("no_create_home"))?,
        system: boolean(f.take("system"), &f.path_of("system"))?,
        no_user_group: boolean(f.take("no_user_group"), &f.path_of("no_user_group"))?,
        name,
    };
    // useradd's --no-log-init keeps a large uid out of lastlog/faillog; Kiln's account writer
    // never writes those files, so every user is made that way.
    boolean(f.take("no_log_init"), &f.path_of("no_log_init"))?;
    for key in [
        "coreos_ssh_import_github",
        "coreos_ssh_import_github_users",
        "coreos_ssh_import_url",
    ] {
        if let (Some(_), Some(pos)) = (f.take(key), f.key_pos(key)) {
            ctx.warn(pos, &f.path_of(key), "Kiln does not fetch SSH keys from GitHub or a URL at boot (the machine may not reach it yet); put the keys themselves under this user's `ssh_authorized_keys`. Ignored");
        }
    }
    f.finish(ctx);
    Ok(user)
}

/// `groups:` as a list or as `"sudo, docker"`.
fn groups(node: Option<&Node>, path: &str) -> Result<Vec<String>, ConfigError> {
    let Some(node) = node else {
        return Ok(Vec::new());
    };
    let names: Vec<String> = match &node.kind {
        Kind::Scalar(s) => s
            .split(',')
            .map(|g| g.trim().to_string())
            .filter(|g| !g.is_empty())
            .collect(),
        _ => string_list(Some(node), path)?,
    };
    if let Some(bad) = names.iter().find(|g| !valid_account_name(g)) {
        return Err(ConfigError::invalid(
            node,
            path,
            format!("{bad:?} is not a valid group name"),
        ));
    }
    Ok(names)
}

/// One `write_files` entry; `None` (with a warning) for an entry without `path`, which
/// coreos-cloudinit also skips. Its other fields are checked all the same.
fn write_file(node: &Node, path: &str, ctx: &mut Ctx) -> Result<Option<WriteFile>, ConfigError> {
    let mut f = Fields::new(node, path, ctx)?;
    let target = match f.take_some("path") {
        Some(n) => Some(file_path(n, &f.path_of("path"))?),
        None => None,
    };
    let encoding = match f.take_some("encoding") {
        Some(n) => encoding(n, &f.path_of("encoding"))?,
        None => Encoding::Plain,
    };
    let content = match f.take("content") {
        Some(n) => decode(n, &f.path_of("content"), encoding)?,
        None => Vec::new(),
    };
    let permissions = match f.take_some("permissions") {
        Some(n) => Some(permissions(n, &f.path_of("permissions"))?),
        None => None,
    };
    let owner = match f.take_some("owner") {
        Some(n) => Some(owner(n, &f.path_of("owner"))?),
        None => None,
    };
    let append = boolean(f.take("append"), &f.path_of("append"))?;
    f.finish(ctx);
    let Some(target) = target else {
        ctx.warn(
            node.place(),
            path,
            "this entry has no `path`, so it is skipped; add `path:` with the absolute path of the file to write, e.g. /etc/foo.conf",
        );
        return Ok(None);
    };
    Ok(Some(WriteFile {
        path: target,
        content,
        permissions,
        owner,
        encoding,
        append,
    }))
}

/// An absolute path with no `..`, so the file cannot land outside the root.
pub(crate) fn file_path(node: &Node, path: &str) -> Result<String, ConfigError> {
    let p = string(node, path)?;
    if !p.starts_with('/') {
        return Err(ConfigError::invalid(
            node,
            path,
            format!(
                "{p:?} is a relative path; Kiln takes only absolute paths (coreos-cloudinit put a relative one under /): write {:?}",
                format!("/{p}")
            ),
        ));
    }
    if p == "/usr" || p.starts_with("/usr/") {
        return Err(ConfigError::invalid(
            node,
            path,
            format!("{p:?} is under /usr, which is read-only (the verified system image, replaced whole by each update); write the file under /etc, /opt or /var instead"),
        ));
    }
    if p.split('/').any(|c| c == "..") || p.contains('\0') {
        return Err(ConfigError::invalid(
            node,
            path,
            format!("{p:?} contains `..`; give the path without it"),
        ));
    }
    if p.ends_with('/') {
        return Err(ConfigError::invalid(
            node,
            path,
            format!("{p:?} names a directory; give a file name"),
        ));
    }
    Ok(p)
}

fn encoding(node: &Node, path: &str) -> Result<Encoding, ConfigError> {
    let e = string(node, path)?;
    match e.to_ascii_lowercase().as_str() {
        "" | "plain" | "text/plain" => Ok(Encoding::Plain),
        "b64" | "base64" => Ok(Encoding::Base64),
        "gz" | "gzip" => Ok(Encoding::Gzip),
        "gz+b64" | "gzip+b64" | "gz+base64" | "gzip+base64" => Ok(Encoding::GzipBase64),
        _ => Err(ConfigError::invalid(
            node,
            path,
            format!(
                "unknown encoding {e:?}; use plain, b64 (base64), gzip (gz, for !!binary content) or gzip+b64 (gz+b64, gzip+base64)"
            ),
        )),
    }
}

/// The content's bytes, as coreos-cloudinit made them: the YAML value (a `!!binary` value
/// decoded to its bytes), then the `encoding` undone (base64, then gzip).
fn decode(node: &Node, path: &str, encoding: Encoding) -> Result<Vec<u8>, ConfigError> {
    let value = match &node.kind {
        Kind::Null => return Ok(Vec::new()),
        Kind::Binary(_) => binary(node, path)?,
        _ => string(node, path)?.into_bytes(),
    };
    let bytes = match encoding {
        Encoding::Plain | Encoding::Gzip => value,
        Encoding::Base64 | Encoding::GzipBase64 => {
            let text = String::from_utf8(value).map_err(|_| {
                ConfigError::invalid(node, path, "content is not base64 text; give the base64 text, or drop `encoding` for !!binary content")
            })?;
            base64_decode(&text).map_err(|e| {
                ConfigError::invalid(node, path, format!("content is not valid base64 ({e}); give the output of `base64`, or fix `encoding`"))
            })?
        }
    };
    if matches!(encoding, Encoding::Plain | Encoding::Base64) {
        return Ok(bytes);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes.as_slice())
        .take(MAX_DECODED + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            ConfigError::invalid(
                node,
                path,
                format!(
                    "content is not valid gzip ({e}); give the output of `gzip`, or fix `encoding`"
                ),
            )
        })?;
    if out.len() as u64 > MAX_DECODED {
        return Err(ConfigError::invalid(
            node,
            path,
            format!(
                "content decompresses to more than {} MiB",
                MAX_DECODED >> 20
            ),
        ));
    }
    Ok(out)
}

/// An octal mode, as CoreOS read it: `'0644'`, `0644`, `644` and `0o644` all mean rw-r--r--.
fn permissions(node: &Node, path: &str) -> Result<u32, ConfigError> {
    let text = string(node, path)?;
    let t = text.trim();
    let digits = t
        .strip_prefix("0o")
        .or_else(|| t.strip_prefix("0O"))
        .unwrap_or(t);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if !digits.is_empty() && !digits.starts_with('+') && mode <= 0o7777 => Ok(mode),
        _ => Err(ConfigError::invalid(
            node,
            path,
            format!("{text:?} is not an octal file mode; write it quoted, like '0644'"),
        )),
    }
}

fn owner(node: &Node, path: &str) -> Result<Owner, ConfigError> {
    let text = string(node, path)?;
    let (user, group) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text.as_str(), None),
    };
    let part = |p: &str| -> Result<IdRef, ConfigError> {
        let p = p.trim();
        if let Ok(id) = p.parse::<u32>() {
            Ok(IdRef::Id(id))
        } else if valid_account_name(p) {
            Ok(IdRef::Name(p.to_string()))
        } else {
            Err(ConfigError::invalid(
                node,
                path,
                format!("{text:?} is not `user:group` (names or numbers)"),
            ))
        }
    };
    Ok(Owner {
        user: part(user)?,
        group: group.map(part).transpose()?,
    })
}
