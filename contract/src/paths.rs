//! Well-known paths on a Kiln machine, as absolute paths. The build writes them into the image,
//! the init and `kiln-config` write them at first boot, the agent reads them. Where a path is
//! joined onto a root (the build's tree, a mounted ROOT, a test's directory), use [`under`].

/// The public key update payloads must be signed with (the build puts it in `/usr`).
pub const UPDATE_KEY: &str = "/usr/share/kiln/update-key.pem";
/// The update agent's defaults (the image's own; rendered from `update_conf::KEYS`).
pub const UPDATE_CONF_DEFAULTS: &str = "/usr/lib/kiln/update.conf";
/// The machine's own agent settings, key by key over the defaults (the cloud-config writes it).
pub const UPDATE_CONF: &str = "/etc/kiln/update.conf";
/// The agent's persisted state (`state.json`, the download being resumed).
pub const UPDATE_STATE_DIR: &str = "/var/lib/kiln/update";
/// The agent's per-boot files (the fault-injection hook of the power-cut scenarios).
pub const UPDATE_RUN_DIR: &str = "/run/kiln/update-agent";

/// What the packages put in `/etc`, shipped in `/usr` and laid onto ROOT by the init.
pub const FACTORY_ETC: &str = "/usr/share/kiln/etc";
/// Built-in container images (`docker load` archives).
pub const CONTAINER_IMAGES: &str = "/usr/share/kiln/images";

/// Kiln's state on ROOT.
pub const STATE_DIR: &str = "/var/lib/kiln";
/// Present once the init finished a first boot.
pub const FIRST_BOOT_DONE: &str = "/var/lib/kiln/first-boot-done";
/// The cloud-config as given, kept by the init.
pub const CLOUD_CONFIG_APPLIED: &str = "/var/lib/kiln/cloud-config.applied";
/// What applying the cloud-config did; first line `status: ok|failed|rejected`.
pub const CLOUD_CONFIG_REPORT: &str = "/var/lib/kiln/cloud-config.report";
/// Units the cloud-config asked to start once systemd runs (`kiln-config boot`).
pub const UNITS_TO_START: &str = "/var/lib/kiln/units-to-start";
/// Cloud-config documents that say `$private_ipv4` or `$public_ipv4`, kept until the booted
/// system knows the addresses (`kiln-config addresses`, kiln-config-addresses.service).
pub const CLOUD_CONFIG_PENDING: &str = "/var/lib/kiln/cloud-config.pending";
/// The machine's addresses as the cloud-config's variables took them (`COREOS_*` lines), in the
/// file CoreOS kept them in.
/// Present when this machine runs an etcd member (kiln-config enables etcd.service); a worker
/// (`proxy: on`) has the etcd gateway's link instead. Units' conditions name both by hand.
pub const ETCD_MEMBER_ENABLED: &str = "/etc/systemd/system/multi-user.target.wants/etcd.service";
pub const ENVIRONMENT: &str = "/etc/environment";
/// User-data scripts waiting for their one run (`kiln-config run-scripts`,
/// kiln-user-data.service), and where each goes once it ran.
pub const USER_DATA_SCRIPTS: &str = "/var/lib/kiln/user-data/scripts";
pub const USER_DATA_RAN: &str = "/var/lib/kiln/user-data/ran";
/// A development image's ssh keys for `core`, kept apart from what the cloud-config writes.
pub const DEBUG_SSH_KEYS: &str = "/var/lib/kiln/debug-ssh-keys/core";

/// `path` without its leading `/`, to join onto a root directory or name a tree entry.
pub const fn under(path: &str) -> &str {
    match path.as_bytes() {
        [b'/', rest @ ..] => match core::str::from_utf8(rest) {
            Ok(rest) => rest,
            Err(_) => path,
        },
        _ => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_drops_one_leading_slash() {
        assert_eq!(under(UPDATE_CONF), "etc/kiln/update.conf");
        assert_eq!(under("relative/path"), "relative/path");
        assert_eq!(under("/"), "");
    }
}
