//! Reading the `fleet:` section: fleet's settings under their fleet.conf names (`-` and `_`
//! alike), checked by `kiln_contract::fleet_conf`, written to `/etc/fleet/fleet.conf`.

use std::collections::BTreeMap;

use kiln_contract::fleet_conf::{self, Support, KEYS};

use crate::read::{wrong_type, ConfigError, Ctx, Fields};
use crate::tree::{Kind, Node};

/// The settings of a `fleet:` section, by fleet.conf key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetSettings {
    pub values: BTreeMap<&'static str, String>,
}

impl FleetSettings {
    /// fleet.conf's text: the keys the document sets, values quoted.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# fleet's settings, from the cloud-config's fleet: section (kiln-config).\n",
        );
        for (key, value) in &self.values {
            let value = value.replace('\\', "\\\\").replace('"', "\\\"");
            out.push_str(&format!("{key}=\"{value}\"\n"));
        }
        out
    }
}

pub(crate) fn fleet_settings(
    node: &Node,
    path: &str,
    ctx: &mut Ctx,
) -> Result<FleetSettings, ConfigError> {
    let mut f = Fields::new(node, path, ctx)?;
    let mut settings = FleetSettings::default();
    for key in KEYS {
        let Some(value) = f.take_some(key.name) else {
            continue;
        };
        let key_path = f.path_of(key.name);
        let text = match &value.kind {
            Kind::Scalar(s) => s.clone(),
            Kind::Seq(items) if key.kind == fleet_conf::Kind::List => items
                .iter()
                .enumerate()
                .map(|(i, item)| crate::read::string(item, &format!("{key_path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            other => return Err(wrong_type(value, &key_path, "a string", other)),
        };
        fleet_conf::check(key, &text)
            .map_err(|e| ConfigError::invalid(value, &key_path, e.expected))?;
        if let Support::Ignored(why) = key.support {
            ctx.warn(value.pos, &key_path, format!("ignored: {why}"));
            continue;
        }
        settings.values.insert(key.name, text);
    }
    f.finish(ctx);
    Ok(settings)
}
