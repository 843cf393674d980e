//! Reading the `fleet:` section: fleet's settings under their fleet.conf names (`-` and `_`
//! alike), checked by `kiln_contract::fleet_conf`, written to `/etc/fleet/fleet.conf`.

use std::collections::BTreeMap;

use kiln_contract::fleet_conf::{self, KEYS};

use crate::named::{env_file, named_settings, NamedKey};
use crate::read::{ConfigError, Ctx};
use crate::tree::Node;

/// The settings of a `fleet:` section, by fleet.conf key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetSettings {
    pub values: BTreeMap<&'static str, String>,
}

impl FleetSettings {
    /// fleet.conf's text: the keys the document sets, values quoted.
    pub fn render(&self) -> String {
        env_file(
            "# fleet's settings, from the cloud-config's fleet: section (kiln-config).",
            self.values.iter().map(|(k, v)| (k.to_string(), v.as_str())),
        )
    }
}

pub(crate) fn fleet_settings(
    node: &Node,
    path: &str,
    ctx: &mut Ctx,
) -> Result<FleetSettings, ConfigError> {
    let keys = KEYS.iter().map(|k| NamedKey {
        name: k.name,
        support: k.support,
        list: k.kind == fleet_conf::Kind::List,
    });
    let values = named_settings(node, path, ctx, keys, |name, text| {
        let key = fleet_conf::key(name).expect("one of KEYS");
        fleet_conf::check(key, text).map_err(|e| e.expected)
    })?;
    Ok(FleetSettings { values })
}
