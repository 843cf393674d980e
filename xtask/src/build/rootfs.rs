//! The rootfs stage: the extracted packages made into the image's tree, as dpkg and the
//! maintainer scripts would have left it, plus the module selection, the overlays, the update
//! key, the static binaries, container images, enabled units and os-release.

use anyhow::{Context, Result};

use kiln_contract::paths;
use kiln_image::hostdir::{self, HostDirOptions};
use kiln_image::rootfs::{self, OsRelease};
use kiln_image::tree::{Content, Entry, Kind, Meta, Tree, TreePath};
use kiln_image::{container, kmod};

use super::binaries::STATIC_BINARIES;
use super::Build;
use crate::host;

impl Build {
    /// What dpkg would have done, the overlays, the module selection and os-release.
    pub(super) fn rootfs(&mut self, mut tree: Tree) -> Result<(Tree, String, Content)> {
        let t = self.epoch;
        tree.clamp_mtimes(t);
        let (kver, kernel) = rootfs::take_kernel(&mut tree)?;
        let rules: Vec<&str> = self
            .def
            .kernel
            .keep_modules
            .iter()
            .map(String::as_str)
            .collect();
        kmod::select_in_tree(&mut tree, &kver, &rules)?;
        // Dropped after the selection, and selected again: a kept module that needs a dropped
        // one fails here, naming both.
        let modules = kmod::modules_dir(&kver);
        let dropped: Vec<String> = self
            .def
            .kernel
            .drop_modules
            .iter()
            .map(|m| format!("{modules}/{m}"))
            .collect();
        rootfs::drop_paths(&mut tree, &dropped)?;
        let kept = kmod::select_in_tree(&mut tree, &kver, &rules)
            .context("selecting modules after kernel.drop_modules: remove from drop_modules what a kept module needs")?;
        eprintln!("    kernel {kver}: kept {} modules", kept.modules.len());
        let removed = rootfs::drop_paths(&mut tree, &self.def.rootfs.drop)?;
        eprintln!("    dropped {removed} entries (rootfs.drop)");
        rootfs::merged_usr_links(&mut tree, t)?;
        rootfs::users_and_groups(&mut tree, t)?;
        rootfs::generated_configs(&mut tree, t)?;
        rootfs::pam_auth_update(&mut tree, t)?;
        let dropped = rootfs::move_etc_to_factory(&mut tree, t)?;
        eprintln!("    not in the image (made at boot): {}", dropped.join(" "));
        rootfs::alternatives(&mut tree, t)?;
        let opts = HostDirOptions {
            uid: 0,
            gid: 0,
            mtime: t,
        };
        // Before the overlays, so that an image's own overlay may replace the defaults.
        self.install_update_defaults(&mut tree)?;
        let overlays = std::iter::once(host::workspace_root().join("overlays/usr"))
            .chain(self.usr_overlays.iter().cloned());
        for dir in overlays {
            hostdir::add_host_dir(&mut tree, &dir, &TreePath::new("usr")?, &opts)
                .with_context(|| format!("applying {}", dir.display()))?;
        }
        self.install_update_key(&mut tree)?;
        let bin_dir = self.static_binaries()?;
        for (_, bin) in STATIC_BINARIES.iter().filter(|(_, b)| *b != "init") {
            // Read now: a later cargo run must not change a file the tree points at.
            let path = bin_dir.join(bin);
            let data =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            tree.insert(
                format!("usr/bin/{bin}"),
                Entry::new(Kind::File(Content::bytes(data)), Meta::root(0o755, t)),
            )?;
        }
        for spec in &self.def.container_images {
            let rootfs = container::container_tree(&tree, spec, t)?;
            let archive = container::docker_archive(&rootfs, spec, t)?;
            eprintln!(
                "    container image {} ({} entries, {} KiB) → /{}/{}.tar",
                spec.tag,
                rootfs.len(),
                archive.len() / 1024,
                container::IMAGES_DIR,
                spec.name
            );
            container::install_archive(&mut tree, spec, archive, t)?;
        }
        rootfs::enable_units(&mut tree, &self.def.systemd.enable, t)?;
        rootfs::set_default_target(&mut tree, &self.def.systemd.default_target, t)?;
        let os = OsRelease {
            name: &self.def.image.name,
            version: &self.version,
            app_id: &self.def.image.app_id,
            channel: &self.def.image.channel,
        };
        rootfs::write_os_release(&mut tree, &os, t)?;
        tree.validate()?;
        Ok((tree, kver, kernel))
    }

    /// The update agent's defaults, `/usr/lib/kiln/update.conf`, from the keys of the contract
    /// that `kiln-config` writes and the agent reads.
    fn install_update_defaults(&self, tree: &mut Tree) -> Result<()> {
        let text = kiln_contract::update_conf::defaults_file();
        self.put_file(tree, paths::UPDATE_CONF_DEFAULTS, text.into_bytes())
    }

    /// The public update key where the update agent looks ([`paths::UPDATE_KEY`]).
    fn install_update_key(&self, tree: &mut Tree) -> Result<()> {
        let pem = self.signing.key.verifying_key().to_pem()?;
        self.put_file(tree, paths::UPDATE_KEY, pem.into_bytes())
    }

    /// A root-owned 0644 file at the absolute `path`, its missing parents made 0755.
    fn put_file(&self, tree: &mut Tree, path: &str, bytes: Vec<u8>) -> Result<()> {
        let t = self.epoch;
        let entry = Entry::new(Kind::File(Content::bytes(bytes)), Meta::root(0o644, t));
        tree.insert_with_parents(paths::under(path), entry, &Meta::root(0o755, t))?;
        Ok(())
    }
}
