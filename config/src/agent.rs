//! Reading the `update:` and `locksmith:` sections: every update agent setting, under the names
//! of `kiln_contract::update_conf::KEYS` (CoreOS's where CoreOS had the setting). What a value
//! means, and whether it is valid, is the contract's to say; this file finds the values in the
//! document and places each error and note at its key.

use kiln_contract::update_conf::{
    Given, Key, Kind as KeyKind, Raw, Refused, Section, Window, WindowError, KEYS,
};

use crate::read::{wrong_type, ConfigError, Ctx, Fields};
use crate::tree::{Kind, Node};

/// locksmith's TLS settings for etcd. The agent speaks plain http to etcd, so these are read
/// and refused with a warning rather than called unknown.
const LOCKSMITH_TLS: [&str; 3] = ["etcd_cafile", "etcd_certfile", "etcd_keyfile"];

/// The agent settings of `update:` and `locksmith:` (each with its path in the document);
/// `None` when neither section is given. `etcd_here` decides the strategy `best-effort`.
pub(crate) fn agent_settings(
    update: Option<(&Node, String)>,
    locksmith: Option<(&Node, String)>,
    etcd_here: bool,
    ctx: &mut Ctx,
) -> Result<Option<Given>, ConfigError> {
    if update.is_none() && locksmith.is_none() {
        return Ok(None);
    }
    let mut given = Given::default();
    for (section, found) in [(Section::Update, update), (Section::Locksmith, locksmith)] {
        if let Some((node, path)) = found {
            let mut f = Fields::new(node, &path, ctx)?;
            read_section(&mut f, section, &mut given, etcd_here, ctx)?;
            if section == Section::Locksmith {
                window(&mut f, &path, &mut given)?;
                for name in LOCKSMITH_TLS {
                    if f.take(name).is_some() {
                        let pos = f.key_pos(name).unwrap_or(node.pos);
                        ctx.warn(pos, &f.path_of(name), "Kiln's update agent reaches etcd over plain http; TLS settings are not supported yet, ignored");
                    }
                }
            }
            f.finish(ctx);
        }
    }
    Ok(Some(given))
}

/// Every key of `section` but the window's.
fn read_section(
    f: &mut Fields<'_>,
    section: Section,
    given: &mut Given,
    etcd_here: bool,
    ctx: &mut Ctx,
) -> Result<(), ConfigError> {
    let keys = KEYS.iter().filter(|k| {
        k.section == section && !matches!(k.kind, KeyKind::WindowStart | KeyKind::WindowLength)
    });
    for key in keys {
        let Some((name, node)) = value_of(f, key, ctx) else {
            continue;
        };
        let path = f.path_of(name);
        let raw = raw(node, key.kind, &path)?;
        let note = given
            .set(key, &raw, etcd_here)
            .map_err(|Refused(why)| ConfigError::invalid(node, &path, why))?;
        if let Some(note) = note {
            ctx.warn(node.pos, &path, note);
        }
    }
    Ok(())
}

/// The value of `key` under whichever of its names the document uses; when it uses several, the
/// last of the key's names wins, with a warning.
fn value_of<'n>(f: &mut Fields<'n>, key: &Key, ctx: &mut Ctx) -> Option<(&'static str, &'n Node)> {
    let found: Vec<(&'static str, &'n Node)> = key
        .cloud_config
        .iter()
        .filter_map(|name| f.take_some(name).map(|node| (*name, node)))
        .collect();
    let (used, node) = *found.last()?;
    for (name, _) in &found[..found.len() - 1] {
        if let Some(pos) = f.key_pos(name) {
            let message = format!("both `{name}` and `{used}` are given; `{used}` is used");
            ctx.warn(pos, &f.path_of(name), message);
        }
    }
    Some((used, node))
}

/// `window-start` and `window-length`, which mean something only together.
fn window(f: &mut Fields<'_>, path: &str, given: &mut Given) -> Result<(), ConfigError> {
    let [start_key, length_key] = [KeyKind::WindowStart, KeyKind::WindowLength].map(|kind| {
        KEYS.iter()
            .find(|k| k.kind == kind)
            .expect("the window's keys are in KEYS")
    });
    let start_name = start_key.cloud_config[0];
    let length_name = length_key.cloud_config[0];
    match (f.take_some(start_name), f.take_some(length_name)) {
        (None, None) => Ok(()),
        (Some(start), Some(length)) => {
            let start_path = f.path_of(start_name);
            let length_path = f.path_of(length_name);
            let start_text = crate::read::string(start, &start_path)?;
            let length_text = crate::read::string(length, &length_path)?;
            let window = Window::parse(&start_text, &length_text).map_err(|e| match e {
                WindowError::Start(_) => ConfigError::invalid(start, &start_path, e.to_string()),
                WindowError::Length(_) => ConfigError::invalid(length, &length_path, e.to_string()),
            })?;
            given.set_window(window);
            Ok(())
        }
        (Some(n), None) | (None, Some(n)) => Err(ConfigError::invalid(
            n,
            path,
            format!("a reboot window needs both `{start_name}` and `{length_name}`"),
        )),
    }
}

/// A YAML value as the contract takes it: lists as lists, booleans as YAML 1.1 spells them, a
/// bare number of seconds as a number, everything else as text.
fn raw(node: &Node, kind: KeyKind, path: &str) -> Result<Raw, ConfigError> {
    let text = match &node.kind {
        Kind::Scalar(s) => s.clone(),
        Kind::Seq(items) if kind == KeyKind::List => {
            let strings = items
                .iter()
                .enumerate()
                .map(|(i, item)| crate::read::string(item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?;
            return Ok(Raw::List(strings));
        }
        other => {
            let expected = if kind == KeyKind::List {
                "a list of strings"
            } else {
                "a string"
            };
            return Err(wrong_type(node, path, expected, other));
        }
    };
    Ok(match kind {
        KeyKind::Bool => Raw::Bool(crate::read::boolean(Some(node), path)?),
        KeyKind::Duration => match text.parse::<i64>() {
            Ok(secs) => Raw::Int(secs),
            Err(_) => Raw::Text(text),
        },
        _ => Raw::Text(text),
    })
}
