//! Kiln's cloud-config: the first-boot document in the shape CoreOS used (`hostname`,
//! `ssh_authorized_keys`, `users`, `write_files`, and a `kiln:` / `coreos:` section with etcd,
//! update, locksmith, fleet, units and network), parsed with line and column in every error, and
//! applied to a mounted root before systemd starts.
//!
//! Used by the initramfs init (device side: pure Rust, small) and by `cargo xtask
//! validate-config` / `flash --config` (host side: [`parse`] only).

mod accounts;
pub mod addresses;
mod agent;
mod apply;
pub mod fetch;
mod firstboot;
mod flannel;
mod fleet;
mod fsroot;
mod model;
mod named;
mod parse;
mod read;
mod sections;
mod source;
mod systemd;
mod tree;
mod userdata;

pub use apply::{
    apply, rejected_report, ApplyError, ApplyOptions, ApplyReport, Status, StepReport,
    APPLIED_COPY, REPORT_FILE, UPDATE_CONF,
};
pub use firstboot::{
    address_rules, apply_user_data, complete_addresses, pending_documents, run_scripts, FirstBoot,
    SCRIPTS, SCRIPTS_RAN,
};
pub use flannel::FlannelSettings;
pub use fleet::FleetSettings;
pub use model::*;
pub use parse::{parse, parse_bytes, Parsed, HEADER};
pub use read::{ConfigError, ErrorKind, Warning};
pub use source::{config_url, read_fw_cfg, FW_CFG_ITEM, URL_PARAM};
pub use systemd::{ETCD_ENV_FILE, UNITS_TO_START};
pub use userdata::{describe, read_user_data, Part, PartKind, UserData};

#[cfg(test)]
mod tests;
