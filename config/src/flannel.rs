//! Reading the `flannel:` section: flanneld's settings under their flag names (`-` and `_`
//! alike), and Kiln's `network:`/`backend:`, checked by `kiln_contract::flannel_conf`, written
//! as `FLANNELD_*` lines to the options file the daemon's unit reads.

use std::collections::BTreeMap;

use kiln_contract::flannel_conf::{self, KEYS};

use crate::named::{env_file, named_settings, NamedKey};
use crate::read::{ConfigError, Ctx};
use crate::tree::Node;

/// The settings of a `flannel:` section, by flag name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlannelSettings {
    pub values: BTreeMap<&'static str, String>,
}

impl FlannelSettings {
    /// The options file's text: a `FLANNELD_*` line for each key the document sets.
    pub fn render(&self) -> String {
        env_file(
            "# flannel's settings, from the cloud-config's flannel: section (kiln-config).",
            self.values.iter().map(|(name, value)| {
                let key = flannel_conf::key(name).expect("one of KEYS");
                (key.env(), value.as_str())
            }),
        )
    }
}

pub(crate) fn flannel_settings(
    node: &Node,
    path: &str,
    ctx: &mut Ctx,
) -> Result<FlannelSettings, ConfigError> {
    let keys = KEYS.iter().map(|k| NamedKey {
        name: k.name,
        support: k.support,
        list: k.name == "etcd-endpoints",
    });
    let values = named_settings(node, path, ctx, keys, flannel_conf::check)?;
    Ok(FlannelSettings { values })
}
