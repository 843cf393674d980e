//! Sections read under a daemon's own key names (fleet.conf's, flanneld's flags), `-` and `_`
//! alike, and the `KEY="value"` files kiln-config writes them to.

use std::collections::BTreeMap;

use kiln_contract::Support;

use crate::read::{wrong_type, ConfigError, Ctx, Fields};
use crate::tree::{Kind, Node};

/// A `KEY="value"` file (as systemd's `EnvironmentFile=` and fleet.conf read it): `header`,
/// then one line each, `\` and `"` escaped.
pub(crate) fn env_file<'v>(header: &str, lines: impl Iterator<Item = (String, &'v str)>) -> String {
    let mut out = format!("{header}\n");
    for (key, value) in lines {
        let value = value.replace('\\', "\\\\").replace('"', "\\\"");
        out.push_str(&format!("{key}=\"{value}\"\n"));
    }
    out
}

/// One key of a section read under a daemon's own names (fleet.conf's, flanneld's flags).
pub(crate) struct NamedKey {
    pub name: &'static str,
    pub support: Support,
    /// A YAML list is taken too, joined with commas.
    pub list: bool,
}

/// A section of settings under a daemon's own names: each value is text (a list joined with
/// commas where the key takes one), checked by `check` (what to write, when wrong), and an
/// ignored key is warned at its line; unknown keys are warned by [`Fields::finish`].
pub(crate) fn named_settings(
    node: &Node,
    path: &str,
    ctx: &mut Ctx,
    keys: impl Iterator<Item = NamedKey>,
    check: impl Fn(&str, &str) -> Result<(), String>,
) -> Result<BTreeMap<&'static str, String>, ConfigError> {
    let mut f = Fields::new(node, path, ctx)?;
    let mut values = BTreeMap::new();
    for key in keys {
        let Some(value) = f.take_some(key.name) else {
            continue;
        };
        let key_path = f.path_of(key.name);
        let text = match &value.kind {
            Kind::Scalar(s) => s.clone(),
            Kind::Seq(items) if key.list => items
                .iter()
                .enumerate()
                .map(|(i, item)| crate::read::string(item, &format!("{key_path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            other => return Err(wrong_type(value, &key_path, "a string", other)),
        };
        check(key.name, &text).map_err(|e| ConfigError::invalid(value, &key_path, e))?;
        if let Support::Ignored(why) = key.support {
            ctx.warn(value.pos, &key_path, format!("ignored: {why}"));
            continue;
        }
        values.insert(key.name, text);
    }
    f.finish(ctx);
    Ok(values)
}
